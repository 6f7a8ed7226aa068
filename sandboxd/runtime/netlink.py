"""Netlink (pyroute2) operations on namespaces, links, addresses and routes.

A thin OS wrapper: names and addresses in, typed results out. Every NetlinkError / OSError is
mapped to ``NetworkError`` here, so callers above never see a pyroute2 exception. The daemon's
own network namespace is "the host"; sandbox namespaces are files under /run/netns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import NetworkError
from . import syscalls

NETNS_DIR = "/run/netns"
AF_INET = 2

P = ParamSpec("P")
R = TypeVar("R")
_worker = ThreadPoolExecutor(1, thread_name_prefix="netlink")


def off_loop(fn: Callable[P, R]) -> Callable[P, R]:
    """pyroute2's synchronous API drives an asyncio loop of its own, which cannot run inside the
    daemon's running loop; from there, the call runs on one worker thread (and still blocks)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return _worker.submit(fn, *args, **kwargs).result()

    return wrapper


@dataclass(frozen=True)
class Counters:
    """Traffic of a sandbox, seen from inside it (host end's rx is the sandbox's tx)."""

    rx_bytes: int = 0
    rx_packets: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0

    def to_json(self, prefix: str = "net_") -> dict[str, int]:
        return {prefix + k: v for k, v in self.__dict__.items()}


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise NetworkError(f"{what}: netlink error {exc.code} ({os.strerror(exc.code)})") from exc
    except OSError as exc:
        raise NetworkError(f"{what}: {exc}") from exc


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


@off_loop
def create_netns(name: str) -> str:
    """Make a named namespace (owned by the init user namespace) and return its path.

    Done on this thread (unshare, bind-mount, setns back), never in a forked helper: a child
    forked from the daemon shares its asyncio signal wake-up fd, so a signal the helper gets
    would reach the daemon's own handlers (pyroute2's netns.create does fork).
    """
    path = netns_path(name)
    with _mapped(f"create netns {name}"):
        os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
        try:
            with _thread_netns(None):
                syscalls.unshare(syscalls.CLONE_NEWNET)
                syscalls.mount(
                    f"/proc/self/task/{threading.get_native_id()}/ns/net",
                    path,
                    None,
                    syscalls.MS_BIND,
                )
        except BaseException:
            os.unlink(path)
            raise
    return path


@contextlib.contextmanager
def _thread_netns(path: str | None) -> Iterator[None]:
    """Run the block with this thread in ``path``'s netns (None: where it unshares to)."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        if path is not None:
            target = os.open(path, os.O_RDONLY)
            try:
                syscalls.setns(target, syscalls.CLONE_NEWNET)
            finally:
                os.close(target)
        yield
    finally:
        syscalls.setns(own, syscalls.CLONE_NEWNET)
        os.close(own)


def _ipr_in(name: str) -> IPRoute:
    """An IPRoute whose netlink socket lives in netns ``name`` (made while the thread is in it;
    a socket stays in the namespace it was made in)."""
    with _thread_netns(netns_path(name)):
        return IPRoute()


@off_loop
def remove_netns(name: str) -> None:
    """Unmount and unlink a named namespace; a missing one is fine (idempotent)."""
    path = netns_path(name)
    if not os.path.exists(path):
        return
    with _mapped(f"remove netns {name}"):
        with contextlib.suppress(OSError):
            syscalls.umount(path, syscalls.MNT_DETACH)
        os.unlink(path)


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


@off_loop
def link_exists(name: str) -> bool:
    with IPRoute() as ipr, _mapped(f"look up {name}"):
        return _index(ipr, name) is not None


@off_loop
def list_links(prefix: str) -> list[str]:
    with IPRoute() as ipr, _mapped("list links"):
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if n and n.startswith(prefix))


@off_loop
def delete_link(name: str) -> None:
    """Delete a link of the host namespace (a veth's peer goes with it); missing is fine."""
    with IPRoute() as ipr, _mapped(f"delete link {name}"):
        idx = _index(ipr, name)
        if idx is None:
            return
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


@off_loop
def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """A bridge holding the gateway address, up; re-applying it changes nothing."""
    with IPRoute() as ipr, _mapped(f"bridge {name}"):
        idx = _index(ipr, name)
        if idx is None:
            ipr.link("add", ifname=name, kind="bridge")
            idx = _index(ipr, name)
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(index=idx, family=AF_INET)
        }
        if (gateway, prefixlen) not in have:
            ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")


@off_loop
def host_routes() -> list[ipaddress.IPv4Network]:
    """Destinations of the host's IPv4 routes, in all tables, without the default route."""
    out: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr, _mapped("dump routes"):
        for route in ipr.route("dump", family=AF_INET):
            dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
            if dst and plen:
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False))
    return out


@off_loop
def route_devices() -> dict[ipaddress.IPv4Network, str]:
    """Host route destination → device name (to tell our bridges' routes from others)."""
    out: dict[ipaddress.IPv4Network, str] = {}
    with IPRoute() as ipr, _mapped("dump routes"):
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.route("dump", family=AF_INET):
            dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
            if dst and plen:
                net = ipaddress.IPv4Network(f"{dst}/{plen}", strict=False)
                out[net] = names.get(route.get_attr("RTA_OIF"), "")
    return out


def set_forwarding() -> None:
    """IPv4 forwarding in the daemon's namespace (needed to route sandboxes' traffic)."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "r+") as fh:
            if fh.read().strip() != "1":
                fh.seek(0)
                fh.write("1")
    except OSError as exc:
        raise NetworkError(f"cannot enable IPv4 forwarding: {exc}") from exc


def _configure_inside(ns_name: str, address: str, prefixlen: int, gateway: str | None) -> None:
    with _ipr_in(ns_name) as ns:
        lo = _index(ns, "lo")
        ns.link("set", index=lo, state="up")
        eth = _index(ns, "eth0")
        if eth is None:
            raise NetworkError(f"eth0 did not arrive in {ns_name}")
        ns.addr("add", index=eth, address=address, prefixlen=prefixlen)
        ns.link("set", index=eth, state="up")
        if gateway:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)


def mac_for(address: str) -> str:
    """A locally administered MAC derived from the IPv4 address (as Docker does): a reused
    address keeps its MAC, so neighbour caches on the bridge never point at a gone veth."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


@off_loop
def add_veth(
    ns_name: str, host_end: str, bridge: str, address: str, prefixlen: int, gateway: str
) -> str:
    """A veth pair: ``host_end`` on ``bridge``, ``eth0`` in the sandbox netns with ``address``.

    Returns the sandbox end's MAC address (set here, derived from the address: no read back).
    On failure the pair is deleted before raising.
    """
    mac = mac_for(address)
    with IPRoute() as ipr, _mapped(f"veth {host_end}"):
        ipr.link(
            "add",
            ifname=host_end,
            kind="veth",
            peer={"ifname": "eth0", "net_ns_fd": ns_name, "address": mac},
        )
        try:
            idx = _index(ipr, host_end)
            ipr.link("set", index=idx, master=_index(ipr, bridge), state="up")
            _configure_inside(ns_name, address, prefixlen, gateway)
            return mac
        except BaseException:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=host_end)
            raise


@off_loop
def add_macvlan(
    ns_name: str, tmp_name: str, parent: str, address: str, prefixlen: int, gateway: str | None
) -> str:
    """A macvlan (bridge mode) on ``parent``, moved into the sandbox netns as ``eth0``."""
    with IPRoute() as ipr, _mapped(f"macvlan on {parent}"):
        parent_idx = _index(ipr, parent)
        if parent_idx is None:
            raise NetworkError(f"macvlan parent {parent!r} does not exist")
        ipr.link("add", ifname=tmp_name, kind="macvlan", link=parent_idx, macvlan_mode="bridge")
        try:
            idx = _index(ipr, tmp_name)
            ipr.link("set", index=idx, net_ns_fd=ns_name)
        except BaseException:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=tmp_name)
            raise
    with _mapped(f"macvlan in {ns_name}"), _ipr_in(ns_name) as ns:
        idx = _index(ns, tmp_name)
        ns.link("set", index=idx, ifname="eth0")
    with _mapped(f"macvlan in {ns_name}"):
        _configure_inside(ns_name, address, prefixlen, gateway)
        return _mac_inside(ns_name)


def _mac_inside(ns_name: str) -> str:
    with _ipr_in(ns_name) as ns:
        link = ns.get_links(_index(ns, "eth0"))[0]
        return str(link.get_attr("IFLA_ADDRESS"))


@off_loop
def link_counters(names: Collection[str]) -> dict[str, Counters]:
    """The traffic of several sandboxes from one dump of the host's links, keyed by the host
    end of each veth; a link that is gone is simply absent. One dump serves a whole scrape:
    opening a netlink socket per sandbox cost about 4 ms each."""
    wanted = set(names)
    if not wanted:
        return {}
    found: dict[str, Counters] = {}
    try:
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name in wanted:
                    found[name] = _seen_from_inside(link.get_attr("IFLA_STATS64") or {})
    except (NetlinkError, OSError):
        return {}
    return found


def _seen_from_inside(stats: dict[str, int]) -> Counters:
    # host end rx = what the sandbox sent; host end tx = what the sandbox received
    return Counters(
        rx_bytes=stats.get("tx_bytes", 0),
        rx_packets=stats.get("tx_packets", 0),
        rx_dropped=stats.get("tx_dropped", 0),
        rx_errors=stats.get("tx_errors", 0),
        tx_bytes=stats.get("rx_bytes", 0),
        tx_packets=stats.get("rx_packets", 0),
        tx_dropped=stats.get("rx_dropped", 0),
        tx_errors=stats.get("rx_errors", 0),
    )


@off_loop
def host_addresses() -> list[str]:
    """The IPv4 addresses of the daemon's namespace (for 'the host's own addresses')."""
    with IPRoute() as ipr, _mapped("dump addresses"):
        return sorted({a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=AF_INET)})
