"""The launcher's plan: everything the exec'd launcher helper does for one sandbox, as data.

The daemon builds it from a frozen ``SandboxSpec`` (pure functions, unit-tested without root),
writes it as JSON into a sealed memfd and execs ``launcher.py`` with that fd. File descriptors
named in the plan are numbers in the launcher process (``pass_fds`` keeps them).

The plan never names a path a tenant can write: tenant sources (volumes) arrive as detached
mount trees the daemon made from file descriptors; targets are paths *inside* the sandbox's
root, resolved there with ``RESOLVE_IN_ROOT``. Stdlib only: the launcher runs ``python -I -S``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MountFd:
    """A detached mount tree (a volume) to attach at ``target`` inside the root."""

    target: str
    fd: int
    kind: str  # "dir" | "file"


@dataclass(frozen=True)
class RunFile:
    name: str
    text: str
    mode: int = 0o600


@dataclass(frozen=True)
class RunDir:
    """A small size-capped tmpfs owned by the tenant (``/run/kernel``), with files put in it
    before the tenant's first process exists (the kernel's connection file)."""

    target: str
    size: int
    files: tuple[RunFile, ...] = ()


@dataclass(frozen=True)
class RootPlan:
    root: str  # overlay mount point, in the daemon's own run dir
    rw: str  # tmpfs mount point holding upper/ and work/
    lowers: tuple[str, ...]  # overlay lowerdirs, top first (image layers, root-owned)
    disk: int | None  # size of the writable layer
    binds: tuple[str, ...]  # the admin's host dirs, bound read-only at the same path
    mounts: tuple[MountFd, ...] = ()  # tenant volumes, attached in order
    etc: tuple[tuple[str, str], ...] = ()  # files the daemon provides (path in root, text)
    run_dirs: tuple[RunDir, ...] = ()
    home: str = "/home/jovyan"
    workdir: str = "/home/jovyan"
    # an OCI image: its layers are mounted idmapped with these maps (``idmap.py``), and the
    # image's own ownership of ``/`` and the home is kept; "" = the built-in host image
    uid_map: str = ""
    gid_map: str = ""


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]  # bubblewrap's command line
    cgroup_procs: tuple[str, ...]  # cgroupfs files the launcher writes its pid to
    net_mode: str  # "none" (a fresh netns) | "fd" (setns to net_fd) | "host"
    root: RootPlan
    uid: int  # the tenant's host uid (also its gid)
    error_fd: int  # one JSON line on failure; closes on exec
    net_fd: int | None = None
    nofile: tuple[int, int] = (4096, 65536)
    keep_fds: tuple[int, ...] = field(default=())  # fds bwrap must inherit (seccomp, info, ...)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LaunchPlan:
        data: dict[str, Any] = json.loads(text)
        root = dict(data.pop("root"))
        root["mounts"] = tuple(MountFd(**m) for m in root.get("mounts", ()))
        root["run_dirs"] = tuple(
            RunDir(r["target"], r["size"], tuple(RunFile(**f) for f in r.get("files", ())))
            for r in root.get("run_dirs", ())
        )
        root["etc"] = tuple(tuple(pair) for pair in root.get("etc", ()))
        for key in ("lowers", "binds"):
            root[key] = tuple(root.get(key, ()))
        return cls(
            argv=tuple(data["argv"]),
            cgroup_procs=tuple(data["cgroup_procs"]),
            net_mode=data["net_mode"],
            root=RootPlan(**root),
            uid=data["uid"],
            error_fd=data["error_fd"],
            net_fd=data.get("net_fd"),
            nofile=tuple(data.get("nofile", (4096, 65536))),
            keep_fds=tuple(data.get("keep_fds", ())),
        )
