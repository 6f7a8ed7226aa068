"""Admission: turn an API request into a frozen SandboxSpec, or refuse it with a reason.

The request's shape is ``models.requests.SandboxCreate`` (400 naming the field). What is left
here is policy over the validated model: profile defaults and maxima, who may use which profile
and network, volume sources (host paths are an admin's), devices, and user quotas (429). All
of it is decided before anything is made on the host. Quotas count running sandboxes *and*
starts in flight.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from typing import Any

from .config import Config, Profile, Quota
from .errors import Forbidden, InvalidRequest, QuotaExceeded, Reason
from .models.requests import LimitsUpdate, SandboxCreate
from .models.types import NAME_PATTERN, USER_PATTERN, validate
from .network import settings as network_settings
from .runtime.rootfs import HOME, parse_volume
from .spec import DeviceRate, Limits, SandboxSpec, Volume
from .state import User
from .units import format_size, parse_size

NAME = re.compile(NAME_PATTERN.strip("^$"))
USER_NAME = re.compile(USER_PATTERN.strip("^$"))


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


def device_rates(values: list[str], key: str, is_rate: bool) -> tuple[DeviceRate, ...]:
    """``["/dev/vda:1mb"]`` → DeviceRate("254:0", 1048576); the path must be a block device."""
    BAD = Reason.BAD_DEVICE
    out = []
    for item in values:
        path, rate = item.rsplit(":", 1)
        if not path.startswith("/dev/") or ".." in path.split("/"):
            raise InvalidRequest(f"{key}: {path!r} is not a device under /dev", reason=BAD)
        try:
            st = os.stat(path)  # /dev is root's: no tenant can plant a link there
        except OSError:
            raise InvalidRequest(f"{key}: no such device {path!r}", reason=BAD) from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidRequest(f"{key}: {path!r} is not a block device", reason=BAD)
        if is_rate:
            try:
                value = parse_size(rate, key)
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, reason=BAD) from None
        elif rate.isdigit():
            value = int(rate)
        else:
            raise InvalidRequest(f"{key}: {rate!r} is not a number of operations", reason=BAD)
        if value <= 0:
            raise InvalidRequest(f"{key}: rate must be positive", reason=BAD)
        out.append(DeviceRate(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", value))
    return tuple(out)


def limits_for(req: SandboxCreate, profile: Profile) -> Limits:
    """Requested limits over the profile's defaults; above the profile's maximum is refused."""
    cpus = req.cpus if req.cpus is not None else profile.cpus
    memory = req.memory if req.memory is not None else profile.memory
    pids = req.pids if req.pids is not None else profile.pids
    disk = req.disk if req.disk is not None else profile.disk
    check_profile_limits(profile, cpus, memory, pids, disk)
    return Limits(
        cpus=cpus,
        memory=memory,
        swap=req.swap if req.swap is not None else profile.swap,
        pids=pids,
        disk=disk,
        io_read_bps=device_rates(req.device_read_bps, "device_read_bps", True),
        io_write_bps=device_rates(req.device_write_bps, "device_write_bps", True),
        io_read_iops=device_rates(req.device_read_iops, "device_read_iops", False),
        io_write_iops=device_rates(req.device_write_iops, "device_write_iops", False),
    )


def updated_limits(old: Limits, req: LimitsUpdate, profile: Profile) -> Limits:
    """A running sandbox's limits with ``req`` applied, within its profile's maxima."""
    cpus = req.cpus if req.cpus is not None else old.cpus or profile.cpus
    memory = req.memory if req.memory is not None else old.memory or profile.memory
    pids = req.pids if req.pids is not None else old.pids or profile.pids
    check_profile_limits(profile, cpus, memory, pids, old.disk or 0)
    return dataclasses.replace(old, cpus=cpus, memory=memory, pids=pids)


def check_profile_limits(profile: Profile, cpus: float, memory: int, pids: int, disk: int) -> None:
    """429 ``profile-limit`` above what the profile allows a request to ask for."""
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
                reason=Reason.PROFILE_LIMIT,
            )


def check_quota(
    user: str, quota: Quota, usage: Usage, limits: Limits, kind: str = "sandbox"
) -> None:
    """Refuse with 429 if one more sandbox of ``limits`` would put ``user`` over ``quota``."""
    kernels = usage.by_kind.get("kernel", 0)
    if kind == "kernel" and kernels + 1 > quota.max_kernels:
        raise QuotaExceeded(
            f"user {user} already has {kernels} of {quota.max_kernels} kernels",
            reason=Reason.MAX_KERNELS,
        )
    if usage.sandboxes + 1 > quota.max_sandboxes:
        raise QuotaExceeded(
            f"user {user} already has {usage.sandboxes} of {quota.max_sandboxes} sandboxes",
            reason=Reason.MAX_SANDBOXES,
        )
    if usage.memory + (limits.memory or 0) > quota.memory:
        raise QuotaExceeded(
            f"memory quota of user {user} exceeded: {format_size(usage.memory)} in use + "
            f"{format_size(limits.memory or 0)} requested > {format_size(quota.memory)}",
            reason=Reason.MEMORY_QUOTA,
        )
    if usage.cpus + (limits.cpus or 0) > quota.cpus + 1e-9:
        raise QuotaExceeded(
            f"cpu quota of user {user} exceeded: {usage.cpus:g} in use + {limits.cpus:g} "
            f"requested > {quota.cpus:g}",
            reason=Reason.CPU_QUOTA,
        )


def new_id() -> str:
    return secrets.token_hex(8)


def volumes_for(raw: list[str], admin: bool) -> tuple[Volume, ...]:
    """``-v`` entries: the owner's named volumes for everyone, host paths for admins only."""
    out = tuple(parse_volume(v) for v in raw)
    for vol in out:
        if vol.host and not admin:
            raise Forbidden(
                f"volume {vol.text()!r}: binding a host path needs an admin token; "
                "name one of your volumes instead (NAME[/SUBPATH]:TARGET)",
                reason=Reason.HOST_PATH_DENIED,
            )
    targets = [v.container for v in out]
    if len(set(targets)) != len(targets):
        raise InvalidRequest("volumes: two volumes have the same target", reason=Reason.BAD_VOLUME)
    return out


def check_profile_allowed(config: Config, owner: User, profile: Profile) -> None:
    allowed = config.user_profiles.get(owner.name)
    if allowed is not None and profile.name not in allowed and not owner.admin:
        raise Forbidden(
            f"user {owner.name} may not use profile {profile.name!r}",
            reason=Reason.PROFILE_DENIED,
        )


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
    req = validate(SandboxCreate, body)
    profile = config.profile(req.profile)
    check_profile_allowed(config, owner, profile)
    sid = sid or new_id()
    network = req.network or profile.network
    if network == "host" and not profile.allow_host_network:
        raise Forbidden("network host is not allowed by this profile", reason=Reason.HOST_NETWORK)
    ports = network_settings.check_mode(network, req.ports)
    return SandboxSpec(
        id=sid,
        name=req.name or f"sbx-{sid[:8]}",
        user=owner.name,
        uid=owner.uid,
        command=tuple(req.command),
        kind=kind,
        profile=profile.name,
        image=req.image or profile.image,
        limits=limits_for(req, profile),
        env=tuple(sorted(req.env.items())),
        workdir=req.workdir or HOME,
        volumes=volumes_for(req.volumes, admin),
        network=network,
        stdin=req.stdin,
        auto_remove=req.auto_remove,
        seccomp_profile=profile.seccomp_profile,
        lifetime=profile.lifetime or None,
        labels=tuple(sorted(req.labels.items())),
        ports=ports,
    )
