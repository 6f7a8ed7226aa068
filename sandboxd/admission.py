"""Admission: turn an API request into a frozen SandboxSpec, or refuse it with a reason.

Validation (400), profile limits and user quotas (429) and permissions (403) are decided here,
before anything is made on the host. Quotas count running sandboxes *and* starts in flight.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from typing import Any

from .config import Config, Profile, Quota
from .errors import Forbidden, InvalidRequest, QuotaExceeded
from .network import settings as network_settings
from .runtime.rootfs import HOME, parse_volume
from .spec import DeviceRate, Limits, SandboxSpec, Volume
from .state import User
from .units import format_size, parse_size

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
USER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KNOWN_FIELDS = {
    "name",
    "command",
    "profile",
    "cpus",
    "memory",
    "swap",
    "pids",
    "disk",
    "device_read_bps",
    "device_write_bps",
    "device_read_iops",
    "device_write_iops",
    "volumes",
    "env",
    "workdir",
    "stdin",
    "auto_remove",
    "user",
    "network",
    "labels",
    "kind",
    "image",
    "entrypoint",
    "ports",
}
MAX_COMMAND_BYTES = 128 * 1024
MAX_VOLUMES = 32


@dataclass
class Usage:
    """What a user holds now: running sandboxes plus starts in flight."""

    sandboxes: int = 0
    memory: int = 0
    cpus: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, limits: Limits, kind: str) -> None:
        self.sandboxes += 1
        self.memory += limits.memory or 0
        self.cpus += limits.cpus or 0.0
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "sandboxes": self.sandboxes,
            "kernels": self.by_kind.get("kernel", 0),
            "memory": self.memory,
            "cpus": round(self.cpus, 3),
        }


def _str(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"{key}: expected a string")
    return value


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidRequest(f"{key}: {value!r} is not a number") from None
        else:
            raise InvalidRequest(f"{key}: expected a number")
    if value != value or value <= 0:
        raise InvalidRequest(f"{key}: must be a positive number")
    return float(value)


def _command(body: dict[str, Any]) -> tuple[str, ...]:
    """The request's argv; empty (or absent) means the image's Cmd (``images/run.py`` refuses
    an empty command where there is none)."""
    cmd = body.get("command", [])
    if not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
        raise InvalidRequest("command: expected a list of strings")
    if any("\0" in c for c in cmd) or sum(len(c) for c in cmd) > MAX_COMMAND_BYTES:
        raise InvalidRequest("command: NUL bytes or too long")
    return tuple(cmd)


def _env(body: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = body.get("env", {})
    if isinstance(raw, list):
        pairs = []
        for item in raw:
            if not isinstance(item, str) or "=" not in item:
                raise InvalidRequest(f"env: {item!r} is not KEY=VALUE")
            pairs.append(tuple(item.split("=", 1)))
        raw = dict(pairs)
    if not isinstance(raw, dict):
        raise InvalidRequest("env: expected an object or a list of KEY=VALUE")
    for key, value in raw.items():
        if not ENV_KEY.fullmatch(key):
            raise InvalidRequest(f"env: {key!r} is not a valid variable name")
        if not isinstance(value, str) or "\0" in value or len(value) > 65536:
            raise InvalidRequest(f"env: value of {key} must be a string without NUL")
    return tuple(sorted(raw.items()))


def device_rates(values: Any, key: str, is_rate: bool) -> tuple[DeviceRate, ...]:
    """``["/dev/vda:1mb"]`` → DeviceRate("254:0", 1048576); the path must be a block device."""
    if values in (None, []):
        return ()
    if not isinstance(values, list):
        raise InvalidRequest(f"{key}: expected a list of DEVICE:RATE")
    out = []
    for item in values:
        if not isinstance(item, str) or ":" not in item:
            raise InvalidRequest(f"{key}: {item!r} is not DEVICE:RATE")
        path, rate = item.rsplit(":", 1)
        if not path.startswith("/dev/") or ".." in path.split("/"):
            raise InvalidRequest(f"{key}: {path!r} is not a device under /dev")
        try:
            st = os.stat(path)  # /dev is root's: no tenant can plant a link there
        except OSError:
            raise InvalidRequest(f"{key}: no such device {path!r}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidRequest(f"{key}: {path!r} is not a block device")
        if is_rate:
            value = parse_size(rate, key)
        elif rate.isdigit():
            value = int(rate)
        else:
            raise InvalidRequest(f"{key}: {rate!r} is not a number of operations")
        if value <= 0:
            raise InvalidRequest(f"{key}: rate must be positive")
        out.append(DeviceRate(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", value))
    return tuple(out)


def limits_for(body: dict[str, Any], profile: Profile) -> Limits:
    """Requested limits over the profile's defaults; above the profile's maximum is refused."""
    cpus = _number(body, "cpus", profile.cpus)
    memory = parse_size(body.get("memory", profile.memory), "memory")
    swap = parse_size(body.get("swap", profile.swap), "swap")
    disk = parse_size(body.get("disk", profile.disk), "disk")
    pids = body.get("pids", profile.pids)
    if isinstance(pids, bool) or not isinstance(pids, int) or pids < 1:
        raise InvalidRequest("pids: expected a positive integer")
    if memory < 4 * 1024 * 1024:
        raise InvalidRequest("memory: must be at least 4m")
    if disk < 1024 * 1024:
        raise InvalidRequest("disk: must be at least 1m")
    if pids < 8:
        raise InvalidRequest("pids: must be at least 8 (bwrap and its init need some)")
    for key, value, most, show in (
        ("cpus", cpus, profile.max_cpus, str),
        ("memory", memory, profile.max_memory, format_size),
        ("pids", pids, profile.max_pids, str),
        ("disk", disk, profile.max_disk, format_size),
    ):
        if value > most:
            raise QuotaExceeded(
                f"{key} {show(value)} is above the maximum of profile {profile.name!r} "
                f"({show(most)})",
                reason="profile-limit",
            )
    return Limits(
        cpus=cpus,
        memory=memory,
        swap=swap,
        pids=pids,
        disk=disk,
        io_read_bps=device_rates(body.get("device_read_bps"), "device_read_bps", True),
        io_write_bps=device_rates(body.get("device_write_bps"), "device_write_bps", True),
        io_read_iops=device_rates(body.get("device_read_iops"), "device_read_iops", False),
        io_write_iops=device_rates(body.get("device_write_iops"), "device_write_iops", False),
    )


def check_quota(
    user: str, quota: Quota, usage: Usage, limits: Limits, kind: str = "sandbox"
) -> None:
    """Refuse with 429 if one more sandbox of ``limits`` would put ``user`` over ``quota``."""
    kernels = usage.by_kind.get("kernel", 0)
    if kind == "kernel" and kernels + 1 > quota.max_kernels:
        raise QuotaExceeded(
            f"user {user} already has {kernels} of {quota.max_kernels} kernels",
            reason="max-kernels",
        )
    if usage.sandboxes + 1 > quota.max_sandboxes:
        raise QuotaExceeded(
            f"user {user} already has {usage.sandboxes} of {quota.max_sandboxes} sandboxes",
            reason="max-sandboxes",
        )
    if usage.memory + (limits.memory or 0) > quota.memory:
        raise QuotaExceeded(
            f"memory quota of user {user} exceeded: {format_size(usage.memory)} in use + "
            f"{format_size(limits.memory or 0)} requested > {format_size(quota.memory)}",
            reason="memory-quota",
        )
    if usage.cpus + (limits.cpus or 0) > quota.cpus + 1e-9:
        raise QuotaExceeded(
            f"cpu quota of user {user} exceeded: {usage.cpus:g} in use + {limits.cpus:g} "
            f"requested > {quota.cpus:g}",
            reason="cpu-quota",
        )


def new_id() -> str:
    return secrets.token_hex(8)


def volumes_for(raw: Any, admin: bool) -> tuple[Volume, ...]:
    """``-v`` entries: the owner's named volumes for everyone, host paths for admins only."""
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise InvalidRequest("volumes: expected a list of SOURCE:TARGET[:ro]")
    if len(raw) > MAX_VOLUMES:
        raise InvalidRequest(f"volumes: at most {MAX_VOLUMES}")
    out = tuple(parse_volume(v) for v in raw)
    for vol in out:
        if vol.host and not admin:
            raise Forbidden(
                f"volume {vol.text()!r}: binding a host path needs an admin token; "
                "name one of your volumes instead (NAME[/SUBPATH]:TARGET)",
                reason="host-path-denied",
            )
    targets = [v.container for v in out]
    if len(set(targets)) != len(targets):
        raise InvalidRequest("volumes: two volumes have the same target", reason="bad-volume")
    return out


def build_spec(
    body: Any,
    owner: User,
    config: Config,
    *,
    kind: str = "sandbox",
    sid: str | None = None,
    admin: bool = False,
) -> SandboxSpec:
    """Validate a create request for ``owner`` (the user the sandbox will belong to);
    ``admin``: the request comes from an admin token (host-path volumes allowed)."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    unknown = set(body) - KNOWN_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}")
    profile = config.profile(_str(body, "profile", "default"))
    allowed = config.user_profiles.get(owner.name)
    if allowed is not None and profile.name not in allowed and not owner.admin:
        raise Forbidden(
            f"user {owner.name} may not use profile {profile.name!r}", reason="profile-denied"
        )
    sid = sid or new_id()
    name = _str(body, "name", "") or f"sbx-{sid[:8]}"
    if not NAME.fullmatch(name):
        raise InvalidRequest(f"name: {name!r} must match {NAME.pattern}")
    network = _str(body, "network", profile.network)
    if network == "host" and not profile.allow_host_network:
        raise Forbidden("network host is not allowed by this profile", reason="host-network")
    ports = network_settings.check_mode(network, body.get("ports", []))
    volumes = volumes_for(body.get("volumes", []), admin)
    workdir = _str(body, "workdir", HOME)
    if not os.path.isabs(workdir) or ".." in workdir.split("/"):
        raise InvalidRequest("workdir: must be an absolute path without '..'")
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidRequest("labels: expected an object of strings")
    for key in ("stdin", "auto_remove"):
        if not isinstance(body.get(key, False), bool):
            raise InvalidRequest(f"{key}: expected true or false")
    image = _str(body, "image", profile.image)
    return SandboxSpec(
        id=sid,
        name=name,
        user=owner.name,
        uid=owner.uid,
        command=_command(body),
        kind=kind,
        profile=profile.name,
        image=image,
        limits=limits_for(body, profile),
        env=_env(body),
        workdir=workdir,
        volumes=volumes,
        network=network,
        stdin=body.get("stdin", False),
        auto_remove=body.get("auto_remove", False),
        seccomp_profile=profile.seccomp_profile,
        lifetime=profile.lifetime or None,
        labels=tuple(sorted(labels.items())),
        ports=ports,
    )
