"""The shape of the TOML config: every key, its type, its default and what it means.

The defaults here *are* the embedded default config (``sandboxd serve`` needs no file), and
``docs/config.md`` is generated from these models (``python -m sandboxd.models.docs``).
Rules across keys (a profile's default above its maximum, ...) are plain functions in
``sandboxd/config.py``, which also loads and merges the files.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, StrictBool, StrictStr, model_validator

from ..images.settings import ImageSettings
from ..network.settings import AllowRule, Cidr, Egress, HostPort, NetworkSettings, egress_of
from .requests import NetworkMode
from .types import (
    ENV_KEY_PATTERN,
    AbsolutePath,
    Model,
    NonNegativeFloat,
    PositiveFloat,
    count,
    size,
)

G = 1 << 30
M = 1 << 20


def _seccomp_file(path: str) -> str | None:
    if path and not os.path.isfile(path):
        raise ValueError(f"no such file {path!r}")
    return path or None


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError("host must be an IP address") from None
    return value


def _realpaths(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in paths)


class Profile(Model):
    """``[profiles.NAME]``: a named set of limits and policies a sandbox is created under.
    Every profile inherits the keys set in ``[profiles.default]``."""

    cpus: PositiveFloat = Field(1.0, description="cores a sandbox gets unless it asks")
    memory: size(4 * M) = Field(G, description="memory limit unless asked")
    swap: size() = Field(0, description="swap beyond memory")
    pids: count(8) = Field(512, description="most processes at once")
    disk: size() = Field(G, description="size of the writable layer")
    image: StrictStr = Field("host", description="image unless asked")
    network: NetworkMode = Field(
        "bridge", description='the default network: "bridge" (the user\'s), "none" = loopback only'
    )
    lifetime: NonNegativeFloat = Field(0, description="seconds a sandbox may run; 0 = unlimited")
    idle_timeout: NonNegativeFloat = Field(
        0, description="seconds of kernel inactivity before it is culled; 0 = never"
    )
    cull_busy: StrictBool = Field(False, description="cull kernels that are busy too")
    cull_connected: StrictBool = Field(True, description="cull kernels with clients connected")
    max_cpus: PositiveFloat = Field(4.0, description="the most a request may ask for")
    max_memory: size() = Field(16 * G, description="the most memory a request may ask for")
    max_pids: count(8) = Field(4096, description="the most pids a request may ask for")
    max_disk: size() = Field(20 * G, description="the most disk a request may ask for")
    allow_host_network: StrictBool = Field(False, description='allow network = "host"')
    seccomp_profile: Annotated[StrictStr, AfterValidator(_seccomp_file)] | None = Field(
        "",
        validate_default=True,
        description='path of a Docker-format JSON profile; "" = built-in',
    )
    description: StrictStr = Field("", description="shown to people choosing a profile")
    egress_mode: Literal["nat", "none", "allow"] = Field(
        "nat", alias="egress", description="nat | none | allow (only egress_allow)"
    )
    egress_allow: tuple[AllowRule, ...] = Field(
        (), description='"CIDR[:PORT[/tcp|/udp]]" reachable under egress = "allow"'
    )
    egress_allow_private: tuple[Cidr, ...] = Field(
        (),
        description="CIDRs of 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16 let through",
    )
    host_ports: tuple[HostPort, ...] = Field(
        (), description="host ports this profile's sandboxes may reach besides [network] ones"
    )
    allow_pull: StrictBool = Field(
        False, description="users of this profile may pull images (admins always may)"
    )
    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    @property
    def egress(self) -> Egress:
        return egress_of(
            self.egress_mode, self.egress_allow, self.egress_allow_private, self.host_ports
        )


class Quota(Model):
    """``[quotas.default]``, ``[groups.NAME]``, ``[users.NAME]``, ``PUT /api/users/{name}/quota``:
    what one user may hold at once, across all their running sandboxes."""

    max_sandboxes: count(0) = Field(20, description="sandboxes running at once (kernels included)")
    max_kernels: count(0) = Field(10, description="kernels running at once")
    memory: size() = Field(16 * G, description="memory of all running sandboxes together")
    cpus: PositiveFloat = Field(8.0, description="cores of all running sandboxes together")
    pids: count(64) = Field(
        4096, description="processes and threads of all running sandboxes together"
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


class QuotaPatch(Model):
    """Some keys of a quota, laid over another one (a group's, a user's, a live change)."""

    max_sandboxes: count(0) | None = None
    max_kernels: count(0) | None = None
    memory: size() | None = None
    cpus: PositiveFloat | None = None
    pids: count(64) | None = None

    def over(self, base: Quota) -> Quota:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Quotas(Model):
    default: Quota = Field(default_factory=Quota, description="everyone's, unless overridden")


class UserTable(QuotaPatch):
    """``[users.NAME]``: the user's groups, the profiles they may use, quota keys of their own."""

    groups: tuple[StrictStr, ...] = Field((), description="groups whose quotas apply")
    profiles: tuple[StrictStr, ...] | None = Field(
        None, description="profiles the user may use (default: all)"
    )


class ConfigFile(Model):
    """The whole config file; a file names only what it changes (tables merge key by key)."""

    instance: Annotated[StrictStr, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,7}$")] = Field(
        "sbx", description="prefix of every host object (netns, links, cgroups, nft table)"
    )
    listen: Annotated[StrictStr, AfterValidator(_listen)] = Field(
        "127.0.0.1:8890", description="HOST:PORT of the API (an IP address)"
    )
    state_dir: StrictStr = Field("", description='"" = /var/lib/sandboxd/<instance>')
    run_dir: StrictStr = Field("", description='"" = /run/sandboxd/<instance>')
    tenant_uid_base: count(1000) = Field(
        800000, description="tenant host uids are base, base+1, ... (one per user, never 0)"
    )
    tenant_uid_count: count(1) = Field(100000, description="how many tenant uids")
    log_max_bytes: size(16384) = Field(
        M, description="output kept per sandbox (stdout + stderr), at all times"
    )
    log_rate_bytes: size(65536) = Field(
        8 * M, description="output read per second per sandbox; a faster writer just blocks"
    )
    max_exited_per_user: count(0) = Field(
        50, description="exited sandboxes kept per user (their logs and exit); oldest go first"
    )
    stop_grace_seconds: NonNegativeFloat = Field(
        10, description="seconds between SIGTERM and killing the cgroup"
    )
    volume_roots: Annotated[tuple[AbsolutePath, ...], AfterValidator(_realpaths)] = Field(
        (), description="host directories holding per-user volumes (<root>/<user>/<name>)"
    )
    metrics_token: StrictStr = Field(
        "", description="if set, /metrics needs this read-only token (or an admin token)"
    )
    metrics_public: StrictBool = Field(
        False, description="true: /metrics without a token (it names every user and sandbox)"
    )
    max_request_body: size(4096) = Field(
        M, description="bytes of a JSON request body, checked before the token"
    )
    max_websockets_per_user: count(1) = Field(
        64, description="kernel channels and attaches open at once, per user"
    )
    max_websockets_per_kernel: count(1) = Field(
        16, description="channel WebSockets open at once on one kernel"
    )
    attach_stdin_buffer: size(4096) = Field(
        M, description="stdin bytes held for a slow sandbox before the attach closes"
    )
    kernel_run_size: size(M) = Field(
        16 * M, description="the tmpfs at /run/kernel (connection file and ZMQ sockets)"
    )
    env_allow: tuple[Annotated[StrictStr, Field(pattern=ENV_KEY_PATTERN)], ...] = Field(
        (), description="variables a kernel start request may set besides KERNEL_*"
    )
    kernelspec_dirs: tuple[AbsolutePath, ...] = Field(
        (), description="searched before the shipped kernelspec/ directory"
    )
    profiles: dict[str, Profile] = Field(
        default_factory=lambda: {"default": Profile()}, description="[profiles.NAME] tables"
    )
    quotas: Quotas = Field(default_factory=Quotas, description="[quotas.default]")
    groups: dict[str, QuotaPatch] = Field({}, description="[groups.NAME]: quota keys")
    users: dict[str, UserTable] = Field({}, description="[users.NAME] tables")
    network: NetworkSettings = Field(default_factory=NetworkSettings, description="[network]")
    images: ImageSettings = Field(default_factory=ImageSettings, description="[images]")

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """Profiles inherit ``[profiles.default]``; the directories default from the instance."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        profiles = data.get("profiles", {})
        if isinstance(profiles, dict):
            base = profiles.get("default", {})
            if isinstance(base, dict):
                data["profiles"] = {
                    name: {**base, **raw} if isinstance(raw, dict) else raw
                    for name, raw in {"default": base, **profiles}.items()
                }
        instance = data.get("instance", "sbx")
        data["state_dir"] = data.get("state_dir") or f"/var/lib/sandboxd/{instance}"
        data["run_dir"] = data.get("run_dir") or f"/run/sandboxd/{instance}"
        return data
