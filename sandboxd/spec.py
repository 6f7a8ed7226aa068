"""Frozen descriptions of what to build; every runtime step reads one of these, none writes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class DeviceRate:
    """A per-block-device IO limit: ``device`` is ``MAJ:MIN``, ``rate`` bytes/s or ops/s."""

    device: str
    rate: int


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox (or, for the user level, of all a user's sandboxes).

    ``None`` means unlimited. ``swap`` is swap allowed *beyond* ``memory`` (0 = no swap).
    ``memory_high`` is the throttle point below ``memory`` (cgroup v2 ``memory.high``: reclaim
    and slow down, never kill); ``cpu_weight`` the share under contention (1..10000, 100 =
    the kernel's default). Both ``None`` = not set.
    """

    cpus: float | None = None
    memory: int | None = None
    swap: int = 0
    pids: int | None = None
    disk: int | None = None
    io_read_bps: tuple[DeviceRate, ...] = ()
    io_write_bps: tuple[DeviceRate, ...] = ()
    io_read_iops: tuple[DeviceRate, ...] = ()
    io_write_iops: tuple[DeviceRate, ...] = ()
    memory_high: int | None = None
    cpu_weight: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        io: dict[str, Any] = {
            key: tuple(DeviceRate(**item) for item in data.get(key, ()))
            for key in ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops")
        }
        plain = {k: v for k, v in data.items() if k not in io}
        return cls(**plain, **io)


@dataclass(frozen=True)
class Volume:
    """What to bind at ``container``: the owner's volume ``name`` (and ``subpath`` in it), or an
    admin's ``host`` path. Only a description: the source is opened by fd at start and checked
    there (``sandboxd/volumes.py``), never trusted from here."""

    container: str
    read_only: bool = False
    name: str = ""
    subpath: str = ""
    host: str = ""

    @property
    def source(self) -> str:
        if self.host:
            return self.host
        return f"{self.name}/{self.subpath}" if self.subpath else self.name

    def text(self) -> str:
        """The ``-v`` form, as a user would write it."""
        return f"{self.source}:{self.container}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Guest:
    """Who the command runs as *inside* the sandbox. On the host it is always the tenant's own
    uid; for an OCI image this is the image's user (``images/guest.py``), whose files the
    image's layers are idmapped to the tenant for. Never root: an image whose user is root
    runs as 1000 (``jovyan``) like the built-in image."""

    uid: int = 1000
    gid: int = 1000
    name: str = "jovyan"
    home: str = "/home/jovyan"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to build one sandbox; made once by admission, then only read."""

    id: str
    name: str
    user: str
    uid: int  # the tenant's unprivileged host uid (also its gid)
    command: tuple[str, ...]
    kind: str = "sandbox"  # "sandbox" | "kernel" | "server"
    profile: str = "default"
    image: str = "host"  # the reference as asked for
    image_id: str = ""  # the store's image it resolved to ("" for the built-in host image)
    guest: Guest = field(default_factory=Guest)
    limits: Limits = field(default_factory=Limits)
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/home/jovyan"
    volumes: tuple[Volume, ...] = ()
    network: str = "none"
    stdin: bool = False
    auto_remove: bool = False
    seccomp_profile: str | None = None  # path of a Docker-format JSON profile; None = built-in
    lifetime: float | None = None  # seconds; None = no limit
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[str, ...] = ()  # published ports, "[HOSTIP:]HOSTPORT:CTRPORT/PROTO"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["limits"] = self.limits.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSpec:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # records of older versions
        data["limits"] = Limits.from_json(data.get("limits", {}))
        data["guest"] = Guest(**data.get("guest", {}))
        data["volumes"] = tuple(Volume(**v) for v in data.get("volumes", ()))
        data["ports"] = tuple(data.get("ports", ()))
        data["command"] = tuple(data["command"])
        data["env"] = tuple(tuple(pair) for pair in data.get("env", ()))
        data["labels"] = tuple(tuple(pair) for pair in data.get("labels", ()))
        return cls(**data)
