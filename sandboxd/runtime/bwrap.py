"""The bubblewrap command line, built by a pure function from a frozen spec.

bwrap runs as the tenant's unprivileged host uid, inside the cgroup and network namespace the
launcher child already joined, with the root the child already mounted. It adds the user, pid,
ipc, uts and cgroup namespaces, /proc and a minimal /dev, Docker's masked and read-only /proc
paths, drops every capability, forbids new user namespaces and loads our seccomp program.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..spec import SandboxSpec
from .plan import RootPlan

BWRAP = "/usr/bin/bwrap"

#: Docker's masked /proc files (bound over with an empty read-only file when present on the host)
MASKED_FILES = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/interrupts",
)
#: Docker's masked /proc directories (covered by an empty read-only tmpfs)
MASKED_DIRS = ("/proc/acpi", "/proc/asound", "/proc/scsi")
#: Docker's read-only /proc paths
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BwrapFds:
    seccomp: int
    info: int
    status: int


def environment(spec: SandboxSpec, python_bin: str | None) -> list[tuple[str, str]]:
    """The sandbox's environment: a clean base, then the spec's variables on top (for an OCI
    image those start with the image's Env, merged at admission: ``images/run.py``)."""
    path = DEFAULT_PATH if not python_bin else f"{python_bin}:{DEFAULT_PATH}"
    guest = spec.guest
    base = [
        ("PATH", path),
        ("HOME", guest.home),
        ("USER", guest.name),
        ("LOGNAME", guest.name),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        ("HOSTNAME", spec.name),
        ("SANDBOXD_SANDBOX_ID", spec.id),
    ]
    given = dict(spec.env)
    return [(k, v) for k, v in base if k not in given] + list(spec.env)


def build_argv(
    spec: SandboxSpec,
    rootfs: RootPlan,
    fds: BwrapFds,
    *,
    empty_file: str,
    python_bin: str | None = None,
    host_proc: tuple[str, ...] | None = None,
) -> list[str]:
    """bwrap argv for ``spec``; ``host_proc`` lists the /proc entries that exist on this host."""
    exists = (lambda p: p in host_proc) if host_proc is not None else os.path.exists
    argv = [
        BWRAP,
        "--unshare-user",
        "--uid",
        str(spec.guest.uid),
        "--gid",
        str(spec.guest.gid),
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--new-session",
        "--hostname",
        spec.name,
        "--bind",
        rootfs.root,
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
    ]
    for path in MASKED_FILES:
        if exists(path):
            argv += ["--ro-bind", empty_file, path]
    for path in MASKED_DIRS:
        if exists(path):
            argv += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    for path in READONLY_PATHS:
        if exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--clearenv"]
    for key, value in environment(spec, python_bin):
        argv += ["--setenv", key, value]
    argv += [
        "--chdir",
        spec.workdir,
        "--seccomp",
        str(fds.seccomp),
        "--info-fd",
        str(fds.info),
        "--json-status-fd",
        str(fds.status),
        "--",
        *spec.command,
    ]
    return argv
