"""The launcher child: fork, join the sandbox's cgroups and netns as root, mount its root in a
private mount namespace, drop to the tenant's uid, and exec bubblewrap.

Everything between fork and exec runs in ``_child_setup`` (subprocess's ``preexec_fn``), which
only makes syscalls. A failure there is written to an error pipe, so the daemon can report the
real cause instead of subprocess's generic "Exception occurred in preexec_fn".
"""

from __future__ import annotations

import os
import resource
import subprocess
from dataclasses import dataclass

from ..errors import LaunchError
from . import netns, rootfs, syscalls

NOFILE = (4096, 65536)


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]
    cgroup_procs: tuple[str, ...]
    net: netns.NetnsPlan
    rootfs: rootfs.RootfsPlan
    uid: int
    pass_fds: tuple[int, ...]


def _child_setup(plan: LaunchPlan, err_fd: int) -> None:
    try:
        for procs in plan.cgroup_procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        netns.enter(plan.net)
        syscalls.unshare(syscalls.CLONE_NEWNS)
        rootfs.mount_plan(plan.rootfs)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY:
            hard = min(hard, NOFILE[1])
        else:
            hard = NOFILE[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE[0], hard), hard))
        os.setgroups([])
        os.setresgid(plan.uid, plan.uid, plan.uid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except BaseException as exc:  # report the cause, then let subprocess fail the spawn
        try:
            os.write(err_fd, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            raise


def spawn(plan: LaunchPlan, *, stdin: int, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
    """Start bwrap for ``plan``; raise LaunchError with the child's own reason if set-up fails."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            list(plan.argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            pass_fds=plan.pass_fds,
            cwd="/",
            preexec_fn=lambda: _child_setup(plan, err_w),
        )
    except (subprocess.SubprocessError, OSError) as exc:
        os.close(err_w)
        detail = os.read(err_r, 4096).decode(errors="replace")
        os.close(err_r)
        raise LaunchError(f"launcher failed: {detail or exc}") from exc
    os.close(err_w)
    os.close(err_r)
    return proc
