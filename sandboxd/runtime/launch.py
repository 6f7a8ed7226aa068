"""Daemon side of a launch: the plan, the fds, and the conversation with the launcher server.

``prepare`` (blocking, run in the io lane) opens the sandbox's stdio, bwrap's info and status
fds and writes the ``LaunchPlan`` into a sealed memfd. ``Launcher.launch`` (on the loop) hands
those fds to the launcher server (``launcher.py``), which forks the child that builds and enters
the sandbox; it answers with the child's pid and a pidfd, and later with its exit code.
``wait_launched`` reads the child's error pipe: a JSON line is the failed step, EOF with no
data means bwrap was exec'd.

No ``fork`` or ``preexec_fn`` in the daemon: the only process it execs itself is the launcher
server, once (and again only if that one died).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import LaunchError, MountError
from ..spec import SandboxSpec
from . import bwrap, output
from .plan import LaunchPlan, RootPlan

log = logging.getLogger("sandboxd.runtime")

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
LAUNCH_TIMEOUT = 20.0
NOFILE = (4096, 65536)
MAX_MESSAGE = 4096
KEPT_EXITS = 4096  # exit codes kept for sandboxes nobody asked about yet


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
class Prepared:
    """What one launch needs: fds for the launcher (closed here once sent) and the daemon's."""

    send: list[int]  # plan memfd, stdin, stdout, stderr, then the fds the plan names
    names: list[int]  # the numbers the plan names those last ones by (the daemon's)
    close_after: list[int]  # our copies of what was sent
    info_r: int  # bwrap's --info-fd: {"child-pid": N} once the sandbox exists
    error_r: int  # the child's report; EOF alone = bwrap exec'd
    stdin_w: int | None
    readers: dict[str, int | None] = field(default_factory=dict)  # the FIFOs' daemon ends

    def close_sent(self) -> None:
        for fd in self.close_after:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.close_after = []

    def close_all(self) -> None:
        self.close_sent()
        for fd in (self.info_r, self.error_r, self.stdin_w, *self.readers.values()):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
    )
    return fd


def prepare(req: Request) -> Prepared:
    """Open everything the launch needs (blocking: run in the io lane)."""
    spec, directory = req.spec, req.directory
    ours: list[int] = []

    def keep(fd: int) -> int:
        ours.append(fd)
        return fd

    stdin_w = info_r = error_r = None
    try:
        out_w = keep(output.open_sandbox_end(directory, "stdout"))
        err_w = keep(output.open_sandbox_end(directory, "stderr"))
        if spec.stdin:
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            keep(stdin_r)
        else:
            stdin_r = keep(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
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
            net_fd=None,
            root=req.root,
            uid=spec.uid,
            error_fd=error_w,
            nofile=NOFILE,
            keep_fds=(req.seccomp_fd, info_w, status_fd),
        )
        # the plan and bwrap's argv name fds by the daemon's numbers; SCM_RIGHTS renumbers
        # them, so the launcher's child gives them these numbers back (``renumber``)
        if req.net_fd is not None:
            plan = _with_net(plan, req.net_fd)
        plan_fd = keep(_memfd("sandboxd-plan", plan.to_json().encode()))
        named = [error_w, req.seccomp_fd, info_w, status_fd]
        if req.net_fd is not None:
            named.append(req.net_fd)
        named += [m.fd for m in req.root.mounts]
        readers = {s: output.open_reader(directory, s) for s in output.STREAMS}
    except BaseException:
        for fd in (*ours, info_r, error_r, stdin_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        raise
    if stdin_w is not None:
        os.set_blocking(stdin_w, False)
    return Prepared(
        send=[plan_fd, stdin_r, out_w, err_w, *named],
        names=named,
        close_after=ours,
        info_r=info_r,
        error_r=error_r,
        stdin_w=stdin_w,
        readers=readers,
    )


def _with_net(plan: LaunchPlan, fd: int) -> LaunchPlan:
    from dataclasses import replace

    return replace(plan, net_fd=fd)


async def read_to_eof(fd: int, timeout: float, what: str, limit: int = 65536) -> bytes:
    """Read a pipe on the loop until EOF (at most ``limit`` bytes kept)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    chunks: list[bytes] = []

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data and sum(map(len, chunks)) < limit:
            chunks.append(data)
        elif not data:
            loop.remove_reader(fd)
            if not done.done():
                done.set_result(b"".join(chunks))

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise LaunchError(what) from None
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)


async def wait_launched(prepared: Prepared) -> None:
    """Raise with the launcher child's own reason if a root-side step failed."""
    try:
        raw = await read_to_eof(prepared.error_r, LAUNCH_TIMEOUT, "the launcher did not finish")
    finally:
        os.close(prepared.error_r)
        prepared.error_r = -1
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


class Launcher:
    """The daemon's end of the launcher server: started on first use, restarted if it died."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.tokens = itertools.count(1)
        self.pending: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self.exits: OrderedDict[int, int] = OrderedDict()
        self.exit_waiters: dict[int, asyncio.Future[int]] = {}

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        except OSError as exc:
            ours.close()
            raise LaunchError(f"cannot start the launcher: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)
        log.info("launcher server started (pid %d)", self.proc.pid)

    async def launch(self, prepared: Prepared) -> tuple[int, int]:
        """Hand the prepared fds to the launcher; (pid, pidfd) of the child it forked."""
        if self.sock is None:
            self._start()
        assert self.sock is not None
        token = next(self.tokens)
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.pending[token] = fut
        message = json.dumps({"op": "launch", "token": token, "fds": prepared.names}).encode()
        try:
            await self._sendmsg(message, prepared.send)
            return await asyncio.wait_for(asyncio.shield(fut), LAUNCH_TIMEOUT)
        except TimeoutError:
            raise LaunchError("the launcher did not answer in time") from None
        finally:
            self.pending.pop(token, None)

    async def _sendmsg(self, data: bytes, fds: list[int]) -> None:
        assert self.sock is not None
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.sock.sendmsg([data], anc)
                return
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self.sock.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.sock.fileno())
            except OSError as exc:
                self._died()
                raise LaunchError(f"the launcher is gone: {exc}") from exc

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            fds = array.array("i")
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize)
                )
            except BlockingIOError:
                return
            except OSError:
                data, anc = b"", []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
            if not data:
                for fd in fds:
                    os.close(fd)
                self._died()
                return
            self._dispatch(json.loads(data), list(fds))

    def _dispatch(self, msg: dict[str, object], fds: list[int]) -> None:
        if "exited" in msg:
            pid, code = int(msg["exited"]), int(msg["code"])  # type: ignore[call-overload]
            waiter = self.exit_waiters.pop(pid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(code)
            else:
                self.exits[pid] = code
                while len(self.exits) > KEPT_EXITS:
                    self.exits.popitem(last=False)
            return
        fut = self.pending.get(int(msg.get("token", 0)))  # type: ignore[call-overload]
        if fut is None or fut.done():
            for fd in fds:
                os.close(fd)
            return
        if "error" in msg or not fds:
            fut.set_exception(LaunchError(f"launcher: {msg.get('error', 'no pidfd')}"))
            for fd in fds:
                os.close(fd)
            return
        fut.set_result((int(msg["pid"]), fds[0]))  # type: ignore[call-overload]

    async def exit_code(self, pid: int, timeout: float) -> int | None:
        """The exit code the launcher saw for ``pid`` (its child), or None if it does not
        come within ``timeout`` (a sandbox of an earlier daemon is nobody's child here)."""
        if pid in self.exits:
            return self.exits.pop(pid)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exit_waiters[pid] = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self.exit_waiters.pop(pid, None)

    def _died(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            log.warning("the launcher server ended; it restarts at the next launch")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()  # it was killed above; this does not wait long
            self.proc = None
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(LaunchError("the launcher server ended"))

    def close(self) -> None:
        self._died()
