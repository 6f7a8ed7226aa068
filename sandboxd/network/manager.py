"""The network manager: user networks, per-sandbox attachments, the instance's nft table.

The daemon calls ``attach`` before ``Runtime.start`` (it returns the NetnsPlan the launcher
enters and the /etc files the sandbox sees) and ``release`` when a sandbox exits, is removed
or fails to start. Every allocation is a row in SQLite, written before the host objects are
made and deleted after they are gone, so ``restore`` after a restart or a crash can tell what
belongs to whom and remove the rest. Host objects are named from the instance:
netns ``<inst>-<id>``, bridge ``<inst>br-<n>``, veth ``<inst>v<id…>``, table ``inet <inst>``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import faults
from ..config import Config
from ..errors import (
    Conflict,
    InvalidRequest,
    NetworkError,
    NotFound,
    QuotaExceeded,
    SandboxdError,
)
from ..runtime import netlink, nft
from ..runtime.netns import NetnsPlan
from ..spec import SandboxSpec
from . import ipam
from .db import MACVLAN_NETWORK, Attachment, Network, NetworkDB
from .settings import DEFAULT_NAME, RESERVED, format_port, host_resolvers, parse_port

log = logging.getLogger("sandboxd.network")

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}")
SANDBOX_ID = re.compile(r"[0-9a-f]{16}")

#: (user, ref) → (sandbox id, path of its network namespace) of a running sandbox, or None
FindRunning = Callable[[str, str], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Attached:
    """What the launcher and the rootfs need from an attachment."""

    plan: NetnsPlan
    etc_hosts: str = ""
    etc_resolv: str | None = None


def _hosts(address: str | None, hostname: str) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
    lines.append(f"{address}\t{hostname}" if address else f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def _chain_name(profile: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", profile)


class NetworkManager:
    """Changes (attach, release, networks, the nft table) run on the daemon's single net lane
    with their own SQLite connection (``db``); ``view`` reads on the loop's connection."""

    def __init__(
        self,
        config: Callable[[], Config],
        db: sqlite3.Connection,
        own_db: sqlite3.Connection | None = None,
    ) -> None:
        self._config = config
        self.view = NetworkDB(db)
        self.db = NetworkDB(own_db or db)
        self._up: set[str] = set()  # bridges brought up by this daemon run

    @property
    def config(self) -> Config:
        return self._config()

    @property
    def instance(self) -> str:
        return self.config.instance

    # names --------------------------------------------------------------------------------------

    def netns_name(self, sid: str) -> str:
        return f"{self.instance}-{sid}"

    def link_name(self, sid: str, kind: str = "v") -> str:
        return f"{self.instance}{kind}{sid[: 15 - len(self.instance) - 1]}"

    def bridge_name(self, net: Network) -> str:
        return f"{self.instance}br-{net.id}"

    # networks -----------------------------------------------------------------------------------

    def _check_pool(self) -> None:
        ours = f"{self.instance}br-"
        bad = [
            str(net)
            for net, dev in netlink.route_devices().items()
            if not dev.startswith(ours) and ipam.overlapping(self.config.network.pool, [net])
        ]
        if bad:
            raise NetworkError(
                f"the network pool {self.config.network.pool} overlaps host routes "
                f"({', '.join(bad)}); choose another [network] pool",
                reason="pool-overlap",
            )

    def _bring_up(self, net: Network, force: bool = False) -> None:
        """The network's bridge, up, with its gateway address; done once per daemon run
        (``restore`` and ``create_network`` force it), so an attach costs no netlink dumps."""
        name = self.bridge_name(net)
        if name in self._up and not force:
            return
        netlink.set_forwarding()
        netlink.ensure_bridge(name, ipam.gateway_of(net.subnet), int(net.subnet.split("/")[1]))
        self._up.add(name)

    def create_network(self, user: str, name: str, *, is_default: bool = False) -> Network:
        if not is_default and (
            not NAME.fullmatch(name) or name in RESERVED or name.startswith("container")
        ):
            raise InvalidRequest(
                f"network name {name!r} is reserved or not {NAME.pattern}",
                reason="bad-network-name",
            )
        if self.db.network(user, name) is not None:
            raise Conflict(f"network {name!r} exists", reason="network-exists")
        cfg = self.config.network
        if len(self.db.networks(user)) >= cfg.max_networks:
            raise QuotaExceeded(
                f"user {user} already has {cfg.max_networks} networks", reason="max-networks"
            )
        self._check_pool()
        subnet = ipam.next_subnet(
            cfg.pool, cfg.subnet_prefix, [n.subnet for n in self.db.networks()]
        )
        net = self.db.add_network(user, name, subnet, is_default)
        try:
            self._bring_up(net)
            self.apply()
        except BaseException:
            with contextlib.suppress(SandboxdError):
                netlink.delete_link(self.bridge_name(net))
            self.db.delete_network(net.id)
            raise
        log.info("network %s/%s: %s on %s", user, name, subnet, self.bridge_name(net))
        return net

    def _network_of(self, user: str, name: str) -> Network:  # net lane: its own connection
        net = self.db.network(user, name)
        if net is None:
            raise NotFound(f"no network {name!r}", reason="unknown-network")
        return net

    def lookup_network(self, user: str, name: str) -> Network:  # loop
        net = self.view.network(user, name)
        if net is None:
            raise NotFound(f"no network {name!r}", reason="unknown-network")
        return net

    def default_network(self, user: str) -> Network:
        net = self.db.network(user, DEFAULT_NAME)
        return net or self.create_network(user, DEFAULT_NAME, is_default=True)

    def remove_network(self, user: str, name: str) -> None:  # net lane
        net = self._network_of(user, name)
        users = [a.sandbox for a in self.db.attachments(net.id)]
        if users:
            raise Conflict(
                f"network {name!r} is in use by {', '.join(users)}", reason="network-in-use"
            )
        netlink.delete_link(self.bridge_name(net))
        self._up.discard(self.bridge_name(net))
        self.db.delete_network(net.id)
        self.apply()

    def remove_user(self, user: str) -> None:
        """Drop all of a user's networks (their sandboxes are already removed)."""
        nets = self.db.networks(user)
        for net in nets:
            with contextlib.suppress(SandboxdError):
                netlink.delete_link(self.bridge_name(net))
            self._up.discard(self.bridge_name(net))
            self.db.delete_network(net.id)
        if nets:
            self.apply()

    def network_model(self, net: Network) -> dict[str, Any]:
        return {
            "name": net.name,
            "user": net.user,
            "subnet": net.subnet,
            "gateway": ipam.gateway_of(net.subnet),
            "bridge": self.bridge_name(net),
            "default": net.is_default,
            "created": net.created,
            "sandboxes": {a.sandbox: a.address for a in self.view.attachments(net.id)},
        }

    # attachments --------------------------------------------------------------------------------

    def resolvers(self) -> tuple[str, ...]:
        configured = self.config.network.resolvers
        return configured if configured is not None else host_resolvers()

    def _resolv(self) -> str:
        return "".join(f"nameserver {r}\n" for r in self.resolvers())

    def attach(self, spec: SandboxSpec, find_running: FindRunning) -> Attached:  # net lane
        """Make the sandbox's network as ``spec.network`` says; nothing is left if it fails."""
        mode = spec.network
        if mode == "none":
            return Attached(NetnsPlan("none"), _hosts(None, spec.name), "")
        if mode == "host":
            return Attached(NetnsPlan("host"), "", None)
        if mode.startswith("container:"):
            return self._join(spec, mode.split(":", 1)[1], find_running)
        if mode == "macvlan":
            return self._macvlan(spec)
        net = (
            self.default_network(spec.user)
            if mode == "bridge"
            else self._network_of(spec.user, mode)
        )
        return self._bridge(spec, net)

    def _reserve_ports(self, spec: SandboxSpec) -> None:
        for text in spec.ports:
            port = parse_port(text)
            owner = self.db.port_owner(port.proto, port.host_port)
            if owner is not None or not _port_free(port.proto, port.host_port, port.host_ip):
                raise Conflict(
                    f"host port {port.host_port}/{port.proto} is already in use",
                    reason="port-taken",
                )
            self.db.add_port(spec.id, port.proto, port.host_port, port.host_ip, port.ctr_port)

    def _bridge(self, spec: SandboxSpec, net: Network) -> Attached:
        address = ipam.next_address(net.subnet, self.db.used_addresses(net.id))
        ns_name, link = self.netns_name(spec.id), self.link_name(spec.id)
        att = Attachment(
            sandbox=spec.id,
            user=spec.user,
            mode="bridge",
            network=net.id,
            address=address,
            netns=ns_name,
            link=link,
            mac="",
            policy=_chain_name(spec.profile),
            joined="",
        )
        with contextlib.ExitStack() as undo:
            self.db.db.execute("BEGIN")
            try:
                self.db.add_attachment(att)
                self._reserve_ports(spec)
                self.db.db.execute("COMMIT")
            except BaseException:
                self.db.db.execute("ROLLBACK")
                raise
            undo.callback(self._forget, spec.id)
            self._bring_up(net)
            path = netlink.create_netns(ns_name)
            undo.callback(netlink.remove_netns, ns_name)
            faults.point("network:netns")
            mac = netlink.add_veth(
                ns_name,
                link,
                self.bridge_name(net),
                address,
                int(net.subnet.split("/")[1]),
                ipam.gateway_of(net.subnet),
            )
            undo.callback(netlink.delete_link, link)
            faults.point("network:veth")
            self.db.set_mac(spec.id, mac)
            self.apply()
            faults.point("network:rules")
            undo.pop_all()
        return Attached(NetnsPlan("path", path), _hosts(address, spec.name), self._resolv())

    def _macvlan(self, spec: SandboxSpec) -> Attached:
        mv = self.config.network.macvlan
        if not mv.enabled:
            raise InvalidRequest(
                "network macvlan is not configured on this host", reason="no-macvlan"
            )
        used = self.db.used_addresses(MACVLAN_NETWORK)
        address = ipam.next_address(
            mv.subnet, used, within=mv.range, reserved=[mv.gateway] if mv.gateway else []
        )
        ns_name, link = self.netns_name(spec.id), self.link_name(spec.id, "m")
        att = Attachment(
            sandbox=spec.id,
            user=spec.user,
            mode="macvlan",
            network=MACVLAN_NETWORK,
            address=address,
            netns=ns_name,
            link="",
            mac="",
            policy=_chain_name(spec.profile),
            joined="",
        )
        self.db.add_attachment(att)
        with contextlib.ExitStack() as undo:
            undo.callback(self._forget, spec.id)
            path = netlink.create_netns(ns_name)
            undo.callback(netlink.remove_netns, ns_name)
            undo.callback(netlink.delete_link, link)
            mac = netlink.add_macvlan(
                ns_name, link, mv.parent, address, int(mv.subnet.split("/")[1]), mv.gateway or None
            )
            self.db.set_mac(spec.id, mac)
            undo.pop_all()
        return Attached(NetnsPlan("path", path), _hosts(address, spec.name), self._resolv())

    def _join(self, spec: SandboxSpec, ref: str, find_running: FindRunning) -> Attached:
        found = find_running(spec.user, ref)
        if found is None:
            raise NotFound(
                f"network container:{ref}: no running sandbox {ref!r} of yours",
                reason="unknown-sandbox",
            )
        target, path = found
        other = self.db.attachment(target)
        self.db.add_attachment(
            Attachment(
                sandbox=spec.id,
                user=spec.user,
                mode="container",
                network=None,
                address=None,
                netns="",
                link="",
                mac="",
                policy="",
                joined=target,
            )
        )
        address = other.address if other else None
        resolv = self._resolv() if other else ""
        return Attached(NetnsPlan("path", path), _hosts(address, spec.name), resolv)

    def _forget(self, sid: str) -> None:
        self.db.delete_attachment(sid)

    def release(self, sid: str) -> list[str]:
        """Remove a sandbox's network (idempotent); returns the sandboxes that joined it."""
        att = self.db.attachment(sid)
        joiners = self.db.joiners(sid)
        if att is None:  # rows are written before host objects: no row, nothing of ours
            return joiners
        if att.link:
            with contextlib.suppress(SandboxdError):
                netlink.delete_link(att.link)
        with contextlib.suppress(SandboxdError):
            netlink.remove_netns(self.netns_name(sid))
        self.db.delete_attachment(sid)
        if att.mode == "bridge":
            with contextlib.suppress(SandboxdError):
                self.apply()
        return joiners

    # the nft table --------------------------------------------------------------------------------

    def ruleset(self) -> nft.Ruleset:
        cfg = self.config
        nets = {n.id: n for n in self.db.networks()}
        policies = tuple(
            nft.EgressPolicy(
                name=_chain_name(p.name),
                mode=p.egress.mode,
                allow=p.egress.allow,
                allow_private=p.egress.allow_private,
                host_ports=p.egress.host_ports,
            )
            for p in cfg.profiles.values()
        )
        sandboxes = []
        for att in self.db.attachments():
            net = nets.get(att.network or 0)
            if att.mode != "bridge" or net is None or att.address is None:
                continue
            ports = tuple(_published(p) for p in self.db.ports(att.sandbox))
            sandboxes.append(
                nft.SandboxRules(
                    sid=att.sandbox,
                    bridge=self.bridge_name(net),
                    address=att.address,
                    policy=att.policy,
                    ports=ports,
                    link=att.link,
                )
            )
        return nft.Ruleset(
            table=self.instance,
            pool=cfg.network.pool,
            networks=tuple(nft.NetworkRules(self.bridge_name(n), n.subnet) for n in nets.values()),
            policies=policies,
            sandboxes=tuple(sandboxes),
            host_ports=cfg.network.host_ports,
            resolvers=self.resolvers(),
        )

    def apply(self) -> int:
        return nft.apply(self.ruleset())

    def restore(self, active: set[str]) -> None:
        """After a start: drop allocations of sandboxes that are gone, remove host objects no
        row explains, recreate bridges, and re-apply the nft table."""
        for att in self.db.attachments():
            if att.sandbox not in active:
                log.info("releasing the network of %s (no longer running)", att.sandbox)
                self.release(att.sandbox)
        keep_ns = {a.netns for a in self.db.attachments() if a.netns}
        for name in netlink.list_netns(f"{self.instance}-"):
            sid = name[len(self.instance) + 1 :]
            if SANDBOX_ID.fullmatch(sid) and name not in keep_ns:
                log.warning("removing leftover netns %s", name)
                netlink.remove_netns(name)
        keep = {a.link for a in self.db.attachments() if a.link}
        nets = self.db.networks()
        keep |= {self.bridge_name(n) for n in nets}
        for link in netlink.list_links(self.instance):
            if link not in keep and re.fullmatch(rf"{self.instance}(v|m|br-)\S+", link):
                log.warning("removing leftover link %s", link)
                netlink.delete_link(link)
        if not nets:
            nft.remove(self.instance)
            return
        try:
            self._check_pool()
        except NetworkError as exc:
            log.error("%s", exc.message)
            return
        self._up.clear()
        for net in nets:
            self._bring_up(net, force=True)
        self.apply()

    # read side --------------------------------------------------------------------------------

    def links_of(self, sids: set[str]) -> dict[str, str]:
        """The host veth of each bridged sandbox among ``sids`` (on the loop: a table read)."""
        return {
            a.sandbox: a.link
            for a in self.view.attachments()
            if a.sandbox in sids and a.mode == "bridge" and a.link
        }

    @staticmethod
    def counters(links: dict[str, str]) -> dict[str, dict[str, int]]:
        """veth counters by sandbox id, from one netlink dump (blocking: run it in a lane)."""
        found = netlink.link_counters(links.values())
        return {sid: found[link].to_json() for sid, link in links.items() if link in found}

    def describe(self, sid: str) -> dict[str, Any] | None:
        att = self.view.attachment(sid)
        if att is None:
            return None
        net = self.view.network_by_id(att.network) if att.network else None
        return {
            "mode": att.mode,
            "network": net.name if net else None,
            "address": att.address,
            "gateway": ipam.gateway_of(net.subnet) if net else None,
            "mac": att.mac or None,
            "joined": att.joined or None,
            "ports": [format_port(_published(p)) for p in self.view.ports(sid)],
        }


def _published(row: dict[str, Any]) -> nft.Published:
    return nft.Published(
        host_port=row["host_port"],
        ctr_port=row["ctr_port"],
        proto=row["proto"],
        host_ip=row["host_ip"] or None,
    )


def _port_free(proto: str, port: int, host_ip: str | None) -> bool:
    """True if nothing on the host listens on the port (a brief bind tells)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host_ip or "0.0.0.0", port))
        except OSError as exc:
            return exc.errno not in (errno.EADDRINUSE, errno.EACCES)
    return True
