"""Network settings: the ``[network]`` config table, per-profile egress, and ``-p`` specs.

Pure parsing and validation; ``config.py`` calls these so a bad value is refused at load with
its key, the same way as every other setting.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..runtime.nft import Allow, Published

DEFAULT_POOL = "10.213.0.0/16"
MODES = ("nat", "none", "allow")
RESERVED = ("bridge", "none", "host", "macvlan", "default")
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class Macvlan:
    """Admin-configured macvlan: a parent link and the LAN range handed out on it."""

    parent: str = ""
    subnet: str = ""
    range: str = ""
    gateway: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.parent)


@dataclass(frozen=True)
class NetworkConfig:
    pool: str = DEFAULT_POOL
    subnet_prefix: int = 24
    resolvers: tuple[str, ...] | None = None  # None = the host's
    host_ports: tuple[tuple[str, int], ...] = ()
    max_networks: int = 5
    macvlan: Macvlan = field(default_factory=Macvlan)


@dataclass(frozen=True)
class Egress:
    """A profile's egress policy (see nft.EgressPolicy)."""

    mode: str = "nat"
    allow: tuple[Allow, ...] = ()
    allow_private: tuple[str, ...] = ()
    host_ports: tuple[tuple[str, int], ...] = ()  # besides [network] host_ports (a Hub's API)


def _bad(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"config: {key}: {why}", reason="bad-config")


def _net(text: Any, key: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(text), strict=False)
    except ValueError:
        raise _bad(key, f"{text!r} is not an IPv4 CIDR") from None


def _ip(text: Any, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(text)))
    except ValueError:
        raise _bad(key, f"{text!r} is not an IPv4 address") from None


def _proto_port(text: str, key: str) -> tuple[str, int]:
    """``tcp/8890``, ``8890/udp`` or ``8890`` (tcp)."""
    parts = text.replace("/", " ").split()
    proto = next((p for p in parts if p in ("tcp", "udp")), "tcp")
    nums = [p for p in parts if p not in ("tcp", "udp")]
    if len(nums) != 1 or not nums[0].isdigit() or not 0 < int(nums[0]) < 65536:
        raise _bad(key, f"{text!r} is not PORT[/tcp|/udp]")
    return proto, int(nums[0])


def parse_network(raw: Any) -> NetworkConfig:
    where = "network"
    if not isinstance(raw, dict):
        raise _bad(where, "expected a table")
    known = {
        "pool",
        "subnet_prefix",
        "resolvers",
        "host_ports",
        "max_networks",
        "macvlan_parent",
        "macvlan_subnet",
        "macvlan_range",
        "macvlan_gateway",
    }
    unknown = set(raw) - known
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", "unknown key")
    pool = _net(raw.get("pool", DEFAULT_POOL), f"{where}.pool")
    prefix = raw.get("subnet_prefix", 24)
    if (
        isinstance(prefix, bool)
        or not isinstance(prefix, int)
        or not pool.prefixlen <= prefix <= 29
    ):
        raise _bad(f"{where}.subnet_prefix", f"must be between {pool.prefixlen} and 29")
    resolvers = raw.get("resolvers", [])
    if not isinstance(resolvers, list):
        raise _bad(f"{where}.resolvers", "expected a list of IPv4 addresses")
    ports = raw.get("host_ports", [])
    if not isinstance(ports, list):
        raise _bad(f"{where}.host_ports", 'expected a list like ["tcp/8890"]')
    host_ports = tuple(_proto_port(str(p), f"{where}.host_ports") for p in ports)
    most = raw.get("max_networks", 5)
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise _bad(f"{where}.max_networks", "must be a positive integer")
    mv = Macvlan(parent=str(raw.get("macvlan_parent", "")))
    if mv.parent:
        subnet = _net(raw.get("macvlan_subnet", ""), f"{where}.macvlan_subnet")
        rng = _net(raw.get("macvlan_range") or str(subnet), f"{where}.macvlan_range")
        if not rng.subnet_of(subnet):
            raise _bad(f"{where}.macvlan_range", f"{rng} is not inside {subnet}")
        gw = raw.get("macvlan_gateway", "")
        mv = Macvlan(
            parent=mv.parent,
            subnet=str(subnet),
            range=str(rng),
            gateway=_ip(gw, f"{where}.macvlan_gateway") if gw else "",
        )
        if len(mv.parent) > 15:
            raise _bad(f"{where}.macvlan_parent", "not a link name")
    return NetworkConfig(
        pool=str(pool),
        subnet_prefix=prefix,
        resolvers=tuple(_ip(r, f"{where}.resolvers") for r in resolvers) or None,
        host_ports=host_ports,
        max_networks=most,
        macvlan=mv,
    )


def parse_allow(text: Any, key: str) -> Allow:
    """``CIDR``, ``CIDR:PORT`` (tcp) or ``CIDR:PORT/udp``."""
    if not isinstance(text, str):
        raise _bad(key, f"{text!r}: expected CIDR[:PORT[/tcp|/udp]]")
    cidr, _, rest = text.partition(":")
    net = str(_net(cidr, key))
    if not rest:
        return Allow(net)
    port, _, proto = rest.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(key, f"{text!r}: expected CIDR[:PORT[/tcp|/udp]]")
    return Allow(net, proto, int(port))


def parse_egress(table: dict[str, Any], where: str) -> Egress:
    mode = table.get("egress", "nat")
    if mode not in MODES:
        raise _bad(f"{where}.egress", f"{mode!r} is not one of {', '.join(MODES)}")
    allow = table.get("egress_allow", [])
    private = table.get("egress_allow_private", [])
    host_ports = table.get("host_ports", [])
    for key, value in (
        ("egress_allow", allow),
        ("egress_allow_private", private),
        ("host_ports", host_ports),
    ):
        if not isinstance(value, list):
            raise _bad(f"{where}.{key}", "expected a list")
    return Egress(
        mode=mode,
        allow=tuple(parse_allow(a, f"{where}.egress_allow") for a in allow),
        allow_private=tuple(str(_net(p, f"{where}.egress_allow_private")) for p in private),
        host_ports=tuple(_proto_port(str(p), f"{where}.host_ports") for p in host_ports),
    )


def parse_port(text: Any) -> Published:
    """``[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]`` → Published; 400 with the reason otherwise."""
    if not isinstance(text, str):
        raise InvalidRequest("ports: expected strings like 8080:80/tcp", reason="bad-port")
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    parts = spec.split(":")
    host_ip = None
    if len(parts) == 3:
        try:
            host_ip = str(ipaddress.IPv4Address(parts[0]))
        except ValueError:
            raise InvalidRequest(
                f"ports: {text!r}: {parts[0]!r} is not an IPv4 address", reason="bad-port"
            ) from None
        parts = parts[1:]
    if (
        proto not in ("tcp", "udp")
        or len(parts) != 2
        or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts)
    ):
        raise InvalidRequest(
            f"ports: {text!r} is not [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]", reason="bad-port"
        )
    return Published(host_port=int(parts[0]), ctr_port=int(parts[1]), proto=proto, host_ip=host_ip)


def format_port(p: Published) -> str:
    host = f"{p.host_ip}:" if p.host_ip else ""
    return f"{host}{p.host_port}:{p.ctr_port}/{p.proto}"


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's nameservers a sandbox can use (loopback ones cannot be reached from it)."""
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        addr = ipaddress.IPv4Address(words[1])
                    except ValueError:
                        continue
                    if not addr.is_loopback:
                        out.append(str(addr))
    except OSError:
        pass
    return tuple(out)


NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}")
SANDBOX_REF = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_mode(network: str, ports: Any) -> tuple[str, ...]:
    """Admission of ``network`` and ``ports`` (whether a named network exists is the manager's
    business); returns the ports in canonical form. 400 for anything malformed."""
    ok = (
        network in ("none", "host", "bridge", "macvlan")
        or (network.startswith("container:") and SANDBOX_REF.fullmatch(network[10:]))
        or (NETWORK_NAME.fullmatch(network) and network not in RESERVED)
    )
    if not ok:
        raise InvalidRequest(
            f"network: {network!r} is not bridge, none, host, macvlan, container:<id> or a "
            "network name",
            reason="bad-network",
        )
    if not isinstance(ports, list):
        raise InvalidRequest('ports: expected a list like ["8080:80/tcp"]', reason="bad-port")
    parsed = [parse_port(p) for p in ports]
    if parsed and (network in ("none", "host", "macvlan") or network.startswith("container:")):
        raise InvalidRequest(
            f"ports: cannot publish ports with network {network}", reason="bad-port"
        )
    keys = [(p.proto, p.host_port) for p in parsed]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("ports: a host port is published twice", reason="bad-port")
    return tuple(format_port(p) for p in parsed)
