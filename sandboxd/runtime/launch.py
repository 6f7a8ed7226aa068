"""Daemon side of a launch: build the plan, exec the launcher helper, learn how it went.

``start`` (blocking, run in the io lane) opens the sandbox's stdio, bwrap's info and status
fds, writes the ``LaunchPlan`` into a sealed memfd and execs ``launcher.py`` with
``subprocess`` (no ``preexec_fn``: nothing runs between fork and exec in this threaded
process). ``wait_launched`` (on the loop) reads the launcher's error pipe: a JSON line is the
failed step, EOF with no data means bwrap was exec'd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from ..errors import LaunchError, MountError
from ..spec import SandboxSpec
from . import bwrap, output
from .plan import LaunchPlan, RootPlan

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
LAUNCH_TIMEOUT = 20.0
NOFILE = (4096, 65536)


@dataclass(frozen=True)
class Request:
    spec: SandboxSpec
    directory: str
    root: RootPlan
    cgroup_procs: tuple[str, ...]
    net_mode: str
    net_fd: int | None
    seccomp_fd: int
    empty_file: str
    python_bin: str | None
    host_proc: tuple[str, ...]


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    info_r: int  # bwrap's --info-fd: {"child-pid": N} once the sandbox exists
    error_r: int  # the launcher's report; EOF alone = bwrap exec'd
    stdin_w: int | None
    readers: dict[str, int | None]  # the daemon's ends of the stdout/stderr FIFOs


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    import fcntl

    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
    )
    return fd


def start(req: Request) -> Launched:
    """Exec the launcher for ``req``; the caller waits with ``wait_launched``."""
    spec, directory = req.spec, req.directory
    opened: list[int] = []

    def keep(fd: int) -> int:
        opened.append(fd)
        return fd

    try:
        out_w = keep(output.open_sandbox_end(directory, "stdout"))
        err_w = keep(output.open_sandbox_end(directory, "stderr"))
        if spec.stdin:
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            keep(stdin_r)
        else:
            stdin_r, stdin_w = keep(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)), None
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        keep(info_w)
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        keep(error_w)
        status_fd = keep(
            os.open(
                os.path.join(directory, "status.json"),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                0o600,
            )
        )
        argv = bwrap.build_argv(
            spec,
            req.root,
            bwrap.BwrapFds(seccomp=req.seccomp_fd, info=info_w, status=status_fd),
            empty_file=req.empty_file,
            python_bin=req.python_bin,
            host_proc=req.host_proc,
        )
        plan = LaunchPlan(
            argv=tuple(argv),
            cgroup_procs=req.cgroup_procs,
            net_mode=req.net_mode,
            net_fd=req.net_fd,
            root=req.root,
            uid=spec.uid,
            error_fd=error_w,
            nofile=NOFILE,
            keep_fds=(req.seccomp_fd, info_w, status_fd),
        )
        plan_fd = keep(_memfd("sandboxd-plan", plan.to_json().encode()))
        extra = [req.net_fd] if req.net_fd is not None else []
        pass_fds = (plan_fd, error_w, req.seccomp_fd, info_w, status_fd, *extra)
        pass_fds += tuple(m.fd for m in req.root.mounts)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, str(plan_fd), str(os.getpid())],
                stdin=stdin_r,
                stdout=out_w,
                stderr=err_w,
                pass_fds=pass_fds,
                close_fds=True,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(info_r)
            os.close(error_r)
            if stdin_w is not None:
                os.close(stdin_w)
            raise LaunchError(f"cannot exec the launcher: {exc}") from exc
        readers = {s: output.open_reader(directory, s) for s in output.STREAMS}
    finally:
        for fd in opened:
            os.close(fd)
    if stdin_w is not None:
        os.set_blocking(stdin_w, False)
    return Launched(proc, info_r, error_r, stdin_w, readers)


async def wait_launched(launched: Launched) -> None:
    """Raise with the launcher's own reason if a root-side step failed."""
    from .sandbox import read_to_eof

    try:
        raw = await read_to_eof(launched.error_r, LAUNCH_TIMEOUT, "the launcher did not finish")
    finally:
        os.close(launched.error_r)
    if not raw:
        return
    try:
        report = json.loads(raw.decode(errors="replace").splitlines()[0])
        step, error = str(report["step"]), str(report["error"])
    except (ValueError, KeyError, IndexError):
        step, error = "launcher", raw.decode(errors="replace")[:500]
    if step == "root filesystem":
        raise MountError(f"building the sandbox's root failed: {error}")
    raise LaunchError(f"launcher failed at {step}: {error}")
