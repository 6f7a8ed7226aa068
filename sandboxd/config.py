"""Configuration: one TOML file over an embedded default; refused at load with the key and reason.

The embedded default (``DEFAULT_TOML``) is complete, so ``sandboxd serve`` needs no file. A file
only names what it changes; tables are merged key by key over the default.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest
from .network.settings import Egress, NetworkConfig, parse_egress, parse_network
from .units import parse_size

DEFAULT_TOML = """
instance = "sbx"
listen = "127.0.0.1:8890"
state_dir = ""            # default /var/lib/sandboxd/<instance>
run_dir = ""              # default /run/sandboxd/<instance>
tenant_uid_base = 800000  # tenant host uids are base, base+1, ... (one per user, never 0)
tenant_uid_count = 100000
log_max_bytes = 1048576   # output kept per sandbox (stdout + stderr), at all times
log_rate_bytes = 8388608  # output read per second per sandbox; a faster writer just blocks
max_exited_per_user = 50  # exited sandboxes kept per user (their logs and exit); oldest go first
stop_grace_seconds = 10
volume_roots = []         # host directories holding per-user volumes (<root>/<user>/<name>)
metrics_token = ""        # if set, /metrics needs this read-only token (or an admin token)
metrics_public = false    # true: /metrics without a token (it names every user and sandbox)
max_request_body = 1048576        # bytes of a JSON request body, checked before the token
max_websockets_per_user = 64      # kernel channels and attaches open at once, per user
max_websockets_per_kernel = 16    # channel WebSockets open at once on one kernel
attach_stdin_buffer = 1048576     # stdin bytes held for a slow sandbox before the attach closes
kernel_run_size = "16m"   # the tmpfs at /run/kernel (connection file and ZMQ sockets)

[profiles.default]
cpus = 1.0
memory = "1g"
swap = 0
memory_high = 0           # cgroup v2 memory.high: throttle (never kill) above this; 0 = off
cpu_weight = 100          # cgroup v2 cpu.weight (1..10000): share of CPU under contention
pids = 512
disk = "1g"
image = "host"
network = "bridge"          # the user's default network; "none" = loopback only
lifetime = 0              # seconds, 0 = unlimited
idle_timeout = 0          # seconds, 0 = never culled (kernels)
cull_busy = false
cull_connected = true
max_cpus = 4.0            # the most a request may ask for
max_memory = "16g"
max_pids = 4096
max_disk = "20g"
allow_host_network = false
seccomp_profile = ""      # path of a Docker-format JSON profile; "" = built-in
egress = "nat"            # nat | none | allow (only egress_allow)
egress_allow = []         # "CIDR[:PORT[/tcp|/udp]]" reachable under egress = "allow"
egress_allow_private = [] # CIDRs of 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16 let through
host_ports = []           # host ports this profile's sandboxes may reach besides [network] ones

[network]
pool = "10.213.0.0/16"    # user networks' subnets are cut from it; must not overlap host routes
subnet_prefix = 24
resolvers = []            # nameservers written to the sandbox's resolv.conf; [] = the host's
host_ports = []           # host ports sandboxes may reach, e.g. ["tcp/8890"]
max_networks = 5          # per user, the default network included
macvlan_parent = ""       # a host link; "" = no macvlan mode
macvlan_subnet = ""       # the LAN's subnet, e.g. "192.168.50.0/24"
macvlan_range = ""        # addresses handed out, e.g. "192.168.50.128/25" ("" = the subnet)
macvlan_gateway = ""

[quotas.default]
max_sandboxes = 20
max_kernels = 10
memory = "16g"
cpus = 8.0
"""

_PROFILE_KEYS = {
    "cpus",
    "memory",
    "swap",
    "memory_high",
    "cpu_weight",
    "pids",
    "disk",
    "image",
    "network",
    "lifetime",
    "idle_timeout",
    "cull_busy",
    "cull_connected",
    "max_cpus",
    "max_memory",
    "max_pids",
    "max_disk",
    "allow_host_network",
    "seccomp_profile",
    "description",
    "egress",
    "egress_allow",
    "egress_allow_private",
    "host_ports",
}
_QUOTA_KEYS = {"max_sandboxes", "max_kernels", "memory", "cpus"}
_TOP_KEYS = {
    "instance",
    "listen",
    "state_dir",
    "run_dir",
    "tenant_uid_base",
    "tenant_uid_count",
    "log_max_bytes",
    "log_rate_bytes",
    "max_exited_per_user",
    "max_request_body",
    "max_websockets_per_user",
    "max_websockets_per_kernel",
    "attach_stdin_buffer",
    "kernel_run_size",
    "stop_grace_seconds",
    "volume_roots",
    "metrics_token",
    "metrics_public",
    "profiles",
    "quotas",
    "users",
    "groups",
    "env_allow",
    "kernelspec_dirs",
    "network",
}


@dataclass(frozen=True)
class Profile:
    """A named set of limits and policies a sandbox is created under."""

    name: str
    cpus: float
    memory: int
    swap: int
    pids: int
    disk: int
    image: str
    network: str
    lifetime: float
    idle_timeout: float
    cull_busy: bool
    cull_connected: bool
    max_cpus: float
    max_memory: int
    max_pids: int
    max_disk: int
    allow_host_network: bool
    seccomp_profile: str | None
    description: str = ""
    egress: Egress = field(default_factory=Egress)
    memory_high: int = 0  # 0 = not set
    cpu_weight: int = 100


@dataclass(frozen=True)
class Quota:
    """What one user may hold at once, across all their running sandboxes."""

    max_sandboxes: int
    memory: int
    cpus: float
    max_kernels: int = 10

    def to_json(self) -> dict[str, Any]:
        return {
            "max_sandboxes": self.max_sandboxes,
            "max_kernels": self.max_kernels,
            "memory": self.memory,
            "cpus": self.cpus,
        }


@dataclass(frozen=True)
class Config:
    instance: str
    listen: str
    state_dir: str
    run_dir: str
    tenant_uid_base: int
    tenant_uid_count: int
    log_max_bytes: int
    stop_grace_seconds: float
    volume_roots: tuple[str, ...]
    metrics_token: str
    metrics_public: bool
    env_allow: tuple[str, ...]
    profiles: dict[str, Profile]
    default_quota: Quota
    user_quotas: dict[str, Quota] = field(default_factory=dict)
    group_quotas: dict[str, Quota] = field(default_factory=dict)
    user_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    user_profiles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kernelspec_dirs: tuple[str, ...] = ()  # searched before the shipped kernelspec/ dir
    network: NetworkConfig = field(default_factory=NetworkConfig)
    source: str = "<embedded>"
    log_rate_bytes: int = 8 << 20
    max_exited_per_user: int = 50
    max_request_body: int = 1 << 20
    max_websockets_per_user: int = 64
    max_websockets_per_kernel: int = 16
    attach_stdin_buffer: int = 1 << 20
    kernel_run_size: int = 16 << 20

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def profile(self, name: str) -> Profile:
        from .errors import NotFound

        try:
            return self.profiles[name]
        except KeyError:
            raise NotFound(f"unknown profile {name!r}", reason="unknown-profile") from None

    def quota_for(self, user: str) -> Quota:
        """Per-user quota, else the largest of the user's groups', else the default."""
        if user in self.user_quotas:
            return self.user_quotas[user]
        groups = [
            self.group_quotas[g] for g in self.user_groups.get(user, ()) if g in self.group_quotas
        ]
        if groups:
            return max(groups, key=lambda q: (q.memory, q.cpus, q.max_sandboxes))
        return self.default_quota


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _bad(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"config: {key}: {why}", reason="bad-config")


def _typed(table: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise _bad(f"{where}.{key}", f"expected {kind}, got a boolean")
    if not isinstance(value, kind):
        raise _bad(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _size(table: dict[str, Any], key: str, where: str) -> int:
    try:
        return parse_size(table[key], what=f"{where}.{key}")
    except InvalidRequest as exc:
        raise _bad(f"{where}.{key}", exc.message) from None


def _at_least(value: int, least: int, key: str) -> int:
    if value < least:
        raise _bad(key, f"must be at least {least}")
    return value


def _count(data: dict[str, Any], key: str, least: int) -> int:
    value = _typed(data, key, "", int)
    if value < least:
        raise _bad(key, f"must be at least {least}")
    return int(value)


def _positive(value: float, key: str) -> float:
    if value <= 0:
        raise _bad(key, "must be positive")
    return value


def _profile(name: str, raw: dict[str, Any], base: dict[str, Any]) -> Profile:
    where = f"profiles.{name}"
    unknown = set(raw) - _PROFILE_KEYS
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", "unknown key")
    table = {**base, **raw}
    cpus = float(_typed(table, "cpus", where, (int, float)))
    max_cpus = float(_typed(table, "max_cpus", where, (int, float)))
    _positive(cpus, f"{where}.cpus")
    pids = _typed(table, "pids", where, int)
    max_pids = _typed(table, "max_pids", where, int)
    memory, max_memory = _size(table, "memory", where), _size(table, "max_memory", where)
    disk, max_disk = _size(table, "disk", where), _size(table, "max_disk", where)
    if memory < 4 * 1024 * 1024:
        raise _bad(f"{where}.memory", "must be at least 4m")
    for key, value, most in (
        ("cpus", cpus, max_cpus),
        ("memory", memory, max_memory),
        ("pids", pids, max_pids),
        ("disk", disk, max_disk),
    ):
        if value > most:
            raise _bad(f"{where}.{key}", f"default {value} is above max_{key} {most}")
    if pids < 8:
        raise _bad(f"{where}.pids", "must be at least 8")
    memory_high = _size(table, "memory_high", where)
    if memory_high and not 4 * 1024 * 1024 <= memory_high <= max_memory:
        raise _bad(f"{where}.memory_high", "must be 0 (off) or between 4m and max_memory")
    cpu_weight = _typed(table, "cpu_weight", where, int)
    if not 1 <= cpu_weight <= 10000:
        raise _bad(f"{where}.cpu_weight", "must be between 1 and 10000")
    seccomp = _typed(table, "seccomp_profile", where, str)
    if seccomp and not os.path.isfile(seccomp):
        raise _bad(f"{where}.seccomp_profile", f"no such file {seccomp!r}")
    lifetime = float(_typed(table, "lifetime", where, (int, float)))
    idle = float(_typed(table, "idle_timeout", where, (int, float)))
    if lifetime < 0 or idle < 0:
        raise _bad(f"{where}.lifetime", "must not be negative")
    return Profile(
        name=name,
        cpus=cpus,
        memory=memory,
        swap=_size(table, "swap", where),
        pids=pids,
        disk=disk,
        image=_typed(table, "image", where, str),
        network=_typed(table, "network", where, str),
        lifetime=lifetime,
        idle_timeout=idle,
        cull_busy=_typed(table, "cull_busy", where, bool),
        cull_connected=_typed(table, "cull_connected", where, bool),
        max_cpus=max_cpus,
        max_memory=max_memory,
        max_pids=max_pids,
        max_disk=max_disk,
        allow_host_network=_typed(table, "allow_host_network", where, bool),
        seccomp_profile=seccomp or None,
        description=str(table.get("description", "")),
        egress=parse_egress(table, where),
        memory_high=memory_high,
        cpu_weight=cpu_weight,
    )


def parse_quota(raw: dict[str, Any], where: str, base: Quota | None = None) -> Quota:
    """Validate a quota table (also used by the admin API for live changes)."""
    if not isinstance(raw, dict):
        raise _bad(where, "expected a table")
    unknown = set(raw) - _QUOTA_KEYS
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", "unknown key")
    merged = {**(base.to_json() if base else {}), **raw}
    missing = _QUOTA_KEYS - set(merged)
    if missing:
        raise _bad(f"{where}.{sorted(missing)[0]}", "missing")
    max_sandboxes = _typed(merged, "max_sandboxes", where, int)
    if max_sandboxes < 0:
        raise _bad(f"{where}.max_sandboxes", "must not be negative")
    cpus = float(_typed(merged, "cpus", where, (int, float)))
    max_kernels = _typed(merged, "max_kernels", where, int)
    if max_kernels < 0:
        raise _bad(f"{where}.max_kernels", "must not be negative")
    return Quota(
        max_sandboxes=max_sandboxes,
        memory=_size(merged, "memory", where),
        cpus=_positive(cpus, f"{where}.cpus"),
        max_kernels=max_kernels,
    )


def _user_tables(data: dict[str, Any], default_quota: Quota):
    user_quotas: dict[str, Quota] = {}
    user_groups: dict[str, tuple[str, ...]] = {}
    user_profiles: dict[str, tuple[str, ...]] = {}
    for user, raw in data.get("users", {}).items():
        where = f"users.{user}"
        if not isinstance(raw, dict):
            raise _bad(where, "expected a table")
        groups = raw.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise _bad(f"{where}.groups", "expected a list of group names")
        user_groups[user] = tuple(groups)
        if "profiles" in raw:
            user_profiles[user] = tuple(raw["profiles"])
        quota = {k: v for k, v in raw.items() if k not in ("groups", "profiles")}
        if quota:
            user_quotas[user] = parse_quota(quota, where, default_quota)
    group_quotas = {
        name: parse_quota(raw, f"groups.{name}", default_quota)
        for name, raw in data.get("groups", {}).items()
    }
    return user_quotas, group_quotas, user_groups, user_profiles


def build(data: dict[str, Any], source: str = "<embedded>") -> Config:
    """Validate a merged TOML document into a Config, naming the first bad key."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _bad(sorted(unknown)[0], "unknown key")
    instance = _typed(data, "instance", "", str)
    if not instance.replace("-", "").isalnum() or not instance[:1].isalpha() or len(instance) > 8:
        raise _bad("instance", "must be 1-8 letters/digits, starting with a letter")
    listen = _typed(data, "listen", "", str)
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise _bad("listen", "expected HOST:PORT")
    try:
        ipaddress.ip_address(listen.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        raise _bad("listen", "host must be an IP address") from None
    base_profile = data["profiles"].get("default")
    if not isinstance(base_profile, dict):
        raise _bad("profiles.default", "a default profile is required")
    profiles = {name: _profile(name, raw, base_profile) for name, raw in data["profiles"].items()}
    default_quota = parse_quota(data["quotas"].get("default", {}), "quotas.default")
    uid_base = _typed(data, "tenant_uid_base", "", int)
    if uid_base < 1000:
        raise _bad("tenant_uid_base", "must be at least 1000 (never a system uid, never 0)")
    roots = _typed(data, "volume_roots", "", list)
    for root in roots:
        if not isinstance(root, str) or not os.path.isabs(root):
            raise _bad("volume_roots", f"{root!r} is not an absolute path")
    env_allow = data.get("env_allow", [])
    if not isinstance(env_allow, list):
        raise _bad("env_allow", "expected a list of variable names")
    quotas = _user_tables(data, default_quota)
    kernelspec_dirs = data.get("kernelspec_dirs", [])
    if not isinstance(kernelspec_dirs, list) or not all(
        isinstance(d, str) and os.path.isabs(d) for d in kernelspec_dirs
    ):
        raise _bad("kernelspec_dirs", "expected a list of absolute paths")
    return Config(
        instance=instance,
        listen=listen,
        state_dir=data["state_dir"] or f"/var/lib/sandboxd/{instance}",
        run_dir=data["run_dir"] or f"/run/sandboxd/{instance}",
        tenant_uid_base=uid_base,
        tenant_uid_count=_typed(data, "tenant_uid_count", "", int),
        log_max_bytes=_at_least(_size(data, "log_max_bytes", ""), 16384, "log_max_bytes"),
        log_rate_bytes=_at_least(_size(data, "log_rate_bytes", ""), 65536, "log_rate_bytes"),
        max_exited_per_user=_count(data, "max_exited_per_user", 0),
        max_request_body=_at_least(_size(data, "max_request_body", ""), 4096, "max_request_body"),
        max_websockets_per_user=_count(data, "max_websockets_per_user", 1),
        max_websockets_per_kernel=_count(data, "max_websockets_per_kernel", 1),
        attach_stdin_buffer=_at_least(
            _size(data, "attach_stdin_buffer", ""), 4096, "attach_stdin_buffer"
        ),
        kernel_run_size=_at_least(_size(data, "kernel_run_size", ""), 1 << 20, "kernel_run_size"),
        stop_grace_seconds=float(_typed(data, "stop_grace_seconds", "", (int, float))),
        volume_roots=tuple(os.path.realpath(r) for r in roots),
        metrics_token=_typed(data, "metrics_token", "", str),
        metrics_public=_typed(data, "metrics_public", "", bool),
        env_allow=tuple(env_allow),
        profiles=profiles,
        default_quota=default_quota,
        user_quotas=quotas[0],
        group_quotas=quotas[1],
        user_groups=quotas[2],
        user_profiles=quotas[3],
        kernelspec_dirs=tuple(kernelspec_dirs),
        network=parse_network(data.get("network", {})),
        source=source,
    )


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the embedded default, merge ``path`` (if any) and ``overrides`` over it, validate."""
    data = tomllib.loads(DEFAULT_TOML)
    source = "<embedded>"
    if path:
        try:
            with open(path, "rb") as fh:
                data = _merge(data, tomllib.load(fh))
        except OSError as exc:
            raise _bad(path, f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise _bad(path, f"not valid TOML: {exc}") from None
        source = path
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    return build(data, source)
