"""Network settings: the ``[network]`` config table, per-profile egress, and ``-p`` specs.

``NetworkSettings`` is the shape of ``[network]`` (validated with the rest of the config, so a
bad value is refused at load with its key); the parsers below turn the strings people write
into what nft and the manager use. Rules across keys are ``check_network``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, SkipValidation, StrictInt, StrictStr

from ..errors import InvalidRequest, Reason
from ..models.types import Model
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
class Egress:
    """A profile's egress policy (see nft.EgressPolicy)."""

    mode: str = "nat"
    allow: tuple[Allow, ...] = ()
    allow_private: tuple[str, ...] = ()
    host_ports: tuple[tuple[str, int], ...] = ()  # besides [network] host_ports (a Hub's API)


def _bad(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"config: {key}: {why}", reason=Reason.BAD_CONFIG)


def _value_error(parse: Any) -> Any:
    """A parser that raises InvalidRequest, as a pydantic validator (which needs ValueError)."""

    def run(value: Any) -> Any:
        try:
            return parse(value, "")
        except InvalidRequest as exc:
            raise ValueError(exc.message.removeprefix("config: : ")) from None

    return run


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


def _proto_port(text: Any, key: str) -> tuple[str, int]:
    """``tcp/8890``, ``8890/udp`` or ``8890`` (tcp)."""
    parts = str(text).replace("/", " ").split()
    proto = next((p for p in parts if p in ("tcp", "udp")), "tcp")
    nums = [p for p in parts if p not in ("tcp", "udp")]
    if len(nums) != 1 or not nums[0].isdigit() or not 0 < int(nums[0]) < 65536:
        raise _bad(key, f"{text!r} is not PORT[/tcp|/udp]")
    return proto, int(nums[0])


def _cidr(text: Any, key: str) -> str:
    return str(_net(text, key))


Cidr = Annotated[StrictStr, AfterValidator(_value_error(_cidr))]
OptionalCidr = Annotated[StrictStr, AfterValidator(lambda v: _value_error(_cidr)(v) if v else "")]
Address = Annotated[StrictStr, AfterValidator(_value_error(_ip))]
#: ``tcp/8890``, ``8890/udp`` or ``8890`` → ("tcp", 8890)
HostPort = Annotated[
    SkipValidation[tuple[str, int]],
    BeforeValidator(
        _value_error(_proto_port),
        json_schema_input_type=Annotated[
            str, Field(pattern=r"^((tcp|udp)/)?[0-9]{1,5}(/(tcp|udp))?$")
        ],
    ),
]
#: ``CIDR``, ``CIDR:PORT`` (tcp) or ``CIDR:PORT/udp`` → nft.Allow
AllowRule = Annotated[
    SkipValidation[Allow],
    BeforeValidator(lambda v: _value_error(parse_allow)(v), json_schema_input_type=str),
]


def _no_resolvers(value: tuple[str, ...]) -> tuple[str, ...] | None:
    return value or None


class NetworkSettings(Model):
    """``[network]``: where user networks come from and what sandboxes may reach."""

    pool: Cidr = Field(
        DEFAULT_POOL,
        description="user networks' subnets are cut from it; must not overlap host routes",
    )
    subnet_prefix: StrictInt = Field(
        24, description="prefix length of each user network (from the pool's length to 29)"
    )
    resolvers: Annotated[tuple[Address, ...], AfterValidator(_no_resolvers)] | None = Field(
        (), description="nameservers written to the sandbox's resolv.conf; [] = the host's"
    )
    host_ports: tuple[HostPort, ...] = Field(
        (), description='host ports sandboxes may reach, e.g. ["tcp/8890"]'
    )
    max_networks: Annotated[StrictInt, Field(ge=1)] = Field(
        5, description="networks per user, the default network included"
    )
    macvlan_parent: Annotated[StrictStr, Field(max_length=15)] = Field(
        "", description='a host link; "" = no macvlan mode'
    )
    macvlan_subnet: OptionalCidr = Field(
        "", description='the LAN\'s subnet, e.g. "192.168.50.0/24"'
    )
    macvlan_range: OptionalCidr = Field(
        "", description='addresses handed out, e.g. "192.168.50.128/25" ("" = the subnet)'
    )
    macvlan_gateway: Annotated[
        StrictStr, AfterValidator(lambda v: _value_error(_ip)(v) if v else "")
    ] = Field("", description="the LAN's gateway")

    @property
    def macvlan(self) -> Macvlan:
        if not self.macvlan_parent:
            return Macvlan()
        return Macvlan(
            parent=self.macvlan_parent,
            subnet=self.macvlan_subnet,
            range=self.macvlan_range or self.macvlan_subnet,
            gateway=self.macvlan_gateway,
        )


#: the name the rest of the code knows the validated ``[network]`` table by
NetworkConfig = NetworkSettings


def check_network(net: NetworkSettings, where: str = "network") -> None:
    """Rules across ``[network]`` keys, refused with the key that breaks them."""
    pool = ipaddress.IPv4Network(net.pool)
    if not pool.prefixlen <= net.subnet_prefix <= 29:
        raise _bad(f"{where}.subnet_prefix", f"must be between {pool.prefixlen} and 29")
    if net.macvlan_parent:
        if not net.macvlan_subnet:
            raise _bad(f"{where}.macvlan_subnet", "required with macvlan_parent")
        subnet = ipaddress.IPv4Network(net.macvlan_subnet)
        rng = ipaddress.IPv4Network(net.macvlan_range or net.macvlan_subnet)
        if not rng.subnet_of(subnet):
            raise _bad(f"{where}.macvlan_range", f"{rng} is not inside {subnet}")


def egress_of(mode: str, allow: Any, private: Any, host_ports: Any) -> Egress:
    return Egress(
        mode=mode, allow=tuple(allow), allow_private=tuple(private), host_ports=tuple(host_ports)
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


def parse_port(text: Any) -> Published:
    """``[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]`` → Published; 400 with the reason otherwise."""
    if not isinstance(text, str):
        raise InvalidRequest("ports: expected strings like 8080:80/tcp", reason=Reason.BAD_PORT)
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    parts = spec.split(":")
    host_ip = None
    if len(parts) == 3:
        try:
            host_ip = str(ipaddress.IPv4Address(parts[0]))
        except ValueError:
            raise InvalidRequest(
                f"ports: {text!r}: {parts[0]!r} is not an IPv4 address", reason=Reason.BAD_PORT
            ) from None
        parts = parts[1:]
    if (
        proto not in ("tcp", "udp")
        or len(parts) != 2
        or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts)
    ):
        raise InvalidRequest(
            f"ports: {text!r} is not [HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]", reason=Reason.BAD_PORT
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
            reason=Reason.BAD_NETWORK,
        )
    if not isinstance(ports, list):
        raise InvalidRequest('ports: expected a list like ["8080:80/tcp"]', reason=Reason.BAD_PORT)
    parsed = [parse_port(p) for p in ports]
    if parsed and (network in ("none", "host", "macvlan") or network.startswith("container:")):
        raise InvalidRequest(
            f"ports: cannot publish ports with network {network}", reason=Reason.BAD_PORT
        )
    keys = [(p.proto, p.host_port) for p in parsed]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("ports: a host port is published twice", reason=Reason.BAD_PORT)
    return tuple(format_port(p) for p in parsed)
