"""The orchestrator: build a sandbox step by step, watch it, tear it down in reverse.

Order of ``start`` (each step a module with its own prepare/attach/release):
  1. run dir and log files     (here)
  2. cgroups                   (cgroups.py)   user level, then sandbox level
  3. seccomp program           (seccomp.py)   compiled once per profile file, handed over as a memfd
  4. network namespace         (netns.py)     entered by the launcher child
  5. root filesystem           (rootfs.py)    mounted by the launcher child in its own mount ns
  6. launch                    (launch.py + bwrap.py)
Each release is pushed on an ExitStack as soon as its step succeeded, so a failure at any step
releases exactly what was made, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InvalidRequest, LaunchError, SandboxdError
from ..spec import Limits, SandboxSpec
from ..units import format_size
from . import bwrap, cgroups, launch, netns, rootfs, seccomp

log = logging.getLogger("sandboxd.runtime")

START_TIMEOUT = 20.0


@dataclass
class Exit:
    code: int
    oom_killed: bool
    reason: str
    finished: float


@dataclass
class LiveSandbox:
    """A sandbox whose processes the daemon is watching."""

    spec: SandboxSpec
    pid: int  # the outer bwrap process on the host
    init_pid: int | None  # PID 1 of the sandbox's pid namespace, as seen from the host
    directory: str
    exited: asyncio.Future[Exit]
    proc: subprocess.Popen[bytes] | None = None
    stdin_fd: int | None = None
    pidfd: int | None = None
    stopping: bool = False
    started: float = field(default_factory=time.time)
    on_exit: list[Callable[[LiveSandbox, Exit], None]] = field(default_factory=list)

    def command_pid(self) -> int | None:
        """The user's command: the only child of the sandbox's init."""
        return None if self.init_pid is None else _first_child(self.init_pid)


class Runtime:
    """Host side of every sandbox of one instance."""

    def __init__(
        self,
        *,
        instance: str,
        run_dir: str,
        state_dir: str,
        cgroup_driver: cgroups.CgroupDriver | None = None,
    ) -> None:
        self.instance = instance
        self.run_dir = run_dir
        self.state_dir = state_dir
        for path in (run_dir, os.path.join(state_dir, "images")):
            os.makedirs(path, mode=0o711, exist_ok=True)
            os.chmod(path, 0o711)
        # the tenant's bwrap must traverse to its root: every parent of run_dir must allow it
        parent = os.path.dirname(run_dir)
        while parent != "/":
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
            parent = os.path.dirname(parent)
        self.cgroups = cgroup_driver or cgroups.probe(instance)
        self.images = {"host": rootfs.host_image(os.path.join(state_dir, "images"))}
        self.host_proc = tuple(
            p
            for p in (*bwrap.MASKED_FILES, *bwrap.MASKED_DIRS, *bwrap.READONLY_PATHS)
            if os.path.exists(p)
        )
        self.empty_file = rootfs.empty_file(run_dir)
        self.live: dict[str, LiveSandbox] = {}

    # paths ----------------------------------------------------------------------------------

    def directory(self, sid: str) -> str:
        return os.path.join(self.run_dir, sid)

    def log_path(self, sid: str, stream: str) -> str:
        return os.path.join(self.directory(sid), f"{stream}.log")

    def image(self, name: str) -> rootfs.Image:
        from ..errors import NotFound

        try:
            return self.images[name]
        except KeyError:
            raise NotFound(f"unknown image {name!r}", reason="unknown-image") from None

    # start -----------------------------------------------------------------------------------

    async def start(
        self,
        spec: SandboxSpec,
        *,
        user_limits: Limits,
        net: netns.NetnsPlan | None = None,
        extra_dirs: tuple[str, ...] = (),
        prepare: Callable[[str], None] | None = None,
    ) -> LiveSandbox:
        """Create and start ``spec``; on any failure release what was made and raise.

        ``prepare(directory)`` runs once the run dir and ``extra_dirs`` exist and before the
        command starts, so files the command reads at once (a kernel's connection file) are there.
        """
        image = self.image(spec.image)
        with contextlib.ExitStack() as undo:
            directory = self.directory(spec.id)
            os.mkdir(directory, 0o711)
            undo.callback(shutil.rmtree, directory, True)
            for sub in extra_dirs:
                path = os.path.join(directory, sub)
                os.mkdir(path, 0o700)
                os.chown(path, spec.uid, spec.uid)
            if prepare is not None:
                prepare(directory)

            self.cgroups.ensure_user(spec.user, user_limits)
            self.cgroups.create(spec.user, spec.id, spec.limits)
            undo.callback(self.cgroups.remove, spec.user, spec.id)

            bpf = seccomp.compiled(spec.seccomp_profile)
            seccomp_fd = seccomp.seccomp_fd(bpf)
            undo.callback(os.close, seccomp_fd)

            plan_root = rootfs.plan(spec, image, directory, extra_dirs)
            rootfs.prepare(plan_root)

            info_r, info_w = os.pipe2(os.O_CLOEXEC)
            undo.callback(_close_quietly, info_r)
            status_fd = os.open(
                os.path.join(directory, "status.json"),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                0o600,
            )
            out_fd = os.open(
                self.log_path(spec.id, "stdout"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            err_fd = os.open(
                self.log_path(spec.id, "stderr"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            stdin_r, stdin_w = (
                os.pipe2(os.O_CLOEXEC)
                if spec.stdin
                else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), None)
            )
            fds = bwrap.BwrapFds(seccomp=seccomp_fd, info=info_w, status=status_fd)
            argv = bwrap.build_argv(
                spec,
                plan_root,
                fds,
                empty_file=self.empty_file,
                python_bin=os.path.dirname(image.python),
                host_proc=self.host_proc,
            )
            plan = launch.LaunchPlan(
                argv=tuple(argv),
                cgroup_procs=tuple(self.cgroups.join_paths(spec.user, spec.id)),
                net=net or netns.NetnsPlan("none"),
                rootfs=plan_root,
                uid=spec.uid,
                pass_fds=(seccomp_fd, info_w, status_fd),
            )
            try:
                proc = launch.spawn(plan, stdin=stdin_r, stdout=out_fd, stderr=err_fd)
            finally:
                for fd in (info_w, status_fd, out_fd, err_fd, stdin_r):
                    os.close(fd)
            if stdin_w is not None:
                undo.callback(_close_quietly, stdin_w)
            undo.callback(_reap, proc)
            init_pid = await self._read_info(info_r, proc, spec.id)
            await self._wait_exec(init_pid, proc, spec.id)
            live = LiveSandbox(
                spec=spec,
                pid=proc.pid,
                init_pid=init_pid,
                directory=directory,
                exited=asyncio.get_running_loop().create_future(),
                proc=proc,
                stdin_fd=stdin_w,
            )
            self._watch(live)
            undo.pop_all()
        if stdin_w is not None:
            os.set_blocking(stdin_w, False)
        self.live[spec.id] = live
        return live

    async def _read_info(self, info_r: int, proc: subprocess.Popen[bytes], sid: str) -> int:
        """Wait for bwrap's --info-fd JSON; EOF without it means bwrap failed to set up."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        chunks: list[bytes] = []

        def readable() -> None:
            data = os.read(info_r, 65536)
            if data:
                chunks.append(data)
            else:
                loop.remove_reader(info_r)
                if not done.done():
                    done.set_result(b"".join(chunks))

        loop.add_reader(info_r, readable)
        try:
            raw = await asyncio.wait_for(done, START_TIMEOUT)
        except TimeoutError:
            loop.remove_reader(info_r)
            raise LaunchError("bwrap did not start in time") from None
        try:
            return int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError):
            proc.wait(timeout=5)
            raise LaunchError(f"bwrap failed: {self._bwrap_error(sid)}") from None

    async def _wait_exec(self, init_pid: int, proc: subprocess.Popen[bytes], sid: str) -> None:
        """Wait until bwrap has exec'd the command; a bwrap that exits first failed its set-up.

        The command is the child of the sandbox's init; it has been exec'd once its executable
        is no longer bwrap. A command that already ran and exited is fine too.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            child = _first_child(init_pid)
            if child is not None and _has_execd(child):
                return
            if proc.poll() is not None:
                message = self._bwrap_error(sid)
                if message.startswith("bwrap:"):
                    if "execvp" in message:
                        raise InvalidRequest(
                            f"cannot run the command: {message[7:]}", reason="bad-command"
                        )
                    if "chdir" in message:
                        raise InvalidRequest(
                            f"bad working directory: {message[7:]}", reason="bad-workdir"
                        )
                    raise LaunchError(f"bwrap failed: {message}")
                return
            await asyncio.sleep(0.0005)
        raise LaunchError("the command did not start in time")

    def _bwrap_error(self, sid: str) -> str:
        try:
            with open(self.log_path(sid, "stderr"), "rb") as fh:
                lines = fh.read()[-2000:].decode(errors="replace").strip().splitlines()
        except OSError:
            return "no message"
        bw = [line for line in lines if line.startswith("bwrap:")]
        return (bw or lines or ["no message"])[-1]

    # watching and exit -------------------------------------------------------------------------

    def _watch(self, live: LiveSandbox) -> None:
        loop = asyncio.get_running_loop()
        try:
            live.pidfd = os.pidfd_open(live.pid)
        except ProcessLookupError:
            loop.call_soon(self._finish, live)
            return
        loop.add_reader(live.pidfd, self._finish, live)

    def _finish(self, live: LiveSandbox) -> None:
        loop = asyncio.get_running_loop()
        if live.pidfd is not None:
            loop.remove_reader(live.pidfd)
            os.close(live.pidfd)
            live.pidfd = None
        status = None
        if live.proc is not None:
            status = live.proc.wait()
        result = self._exit_result(live.spec, status, stopped=live.stopping)
        with contextlib.suppress(SandboxdError):
            self.cgroups.kill(live.spec.user, live.spec.id)
        if live.stdin_fd is not None:
            _close_quietly(live.stdin_fd)
            live.stdin_fd = None
        self.live.pop(live.spec.id, None)
        if not live.exited.done():
            live.exited.set_result(result)
        for callback in live.on_exit:
            try:
                callback(live, result)
            except Exception:  # a listener must not break the others
                log.exception("exit callback failed for %s", live.spec.id)

    def _exit_result(self, spec: SandboxSpec, returncode: int | None, stopped: bool) -> Exit:
        code = self._status_exit_code(spec.id)
        if code is None:
            if returncode is None:
                code = 137
            else:
                code = 128 - returncode if returncode < 0 else returncode
        try:
            oom = self.cgroups.oom_kills(spec.user, spec.id) > 0
        except SandboxdError:
            oom = False
        if oom and code != 0:
            limit = format_size(spec.limits.memory) if spec.limits.memory else "the host's"
            reason = f"killed by the OOM killer: memory limit {limit} reached"
        elif stopped:
            reason = "stopped"
        elif code > 128:
            try:
                name = signal.Signals(code - 128).name
            except ValueError:
                name = f"signal {code - 128}"
            reason = f"killed by {name}"
        else:
            reason = f"exited with code {code}"
        return Exit(code=code, oom_killed=oom and code != 0, reason=reason, finished=time.time())

    def _status_exit_code(self, sid: str) -> int | None:
        try:
            with open(os.path.join(self.directory(sid), "status.json")) as fh:
                text = fh.read()
        except OSError:
            return None
        code = None
        decoder = json.JSONDecoder()
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except ValueError:
                break
            if isinstance(obj, dict) and "exit-code" in obj:
                code = int(obj["exit-code"])
        return code

    # operations on running sandboxes -------------------------------------------------------------

    async def stop(self, live: LiveSandbox, grace: float) -> Exit:
        """SIGTERM the command, wait ``grace`` seconds, then kill the whole cgroup."""
        live.stopping = True
        pid = live.command_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(live.exited), grace)
        except TimeoutError:
            self.cgroups.kill(live.spec.user, live.spec.id)
            return await asyncio.wait_for(asyncio.shield(live.exited), 10)

    def signal_command(self, live: LiveSandbox, signum: int) -> bool:
        pid = live.command_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True

    def release(self, spec: SandboxSpec) -> None:
        """Remove every host object of a sandbox that is no longer running (idempotent)."""
        with contextlib.suppress(SandboxdError):
            self.cgroups.remove(spec.user, spec.id)
        shutil.rmtree(self.directory(spec.id), ignore_errors=True)

    # restart ----------------------------------------------------------------------------------

    def adopt(self, spec: SandboxSpec, pid: int | None) -> LiveSandbox | None:
        """After a daemon restart, watch a sandbox that is still running; None if it is gone."""
        if pid is None or not _is_bwrap(pid) or pid not in self._cgroup_pids(spec):
            return None
        loop = asyncio.get_running_loop()
        live = LiveSandbox(
            spec=spec,
            pid=pid,
            init_pid=_first_child(pid),
            directory=self.directory(spec.id),
            exited=loop.create_future(),
        )
        self.live[spec.id] = live
        self._watch(live)
        return live

    def _cgroup_pids(self, spec: SandboxSpec) -> list[int]:
        try:
            return self.cgroups.pids(spec.user, spec.id)
        except SandboxdError:
            return []

    def exit_of_lost(self, spec: SandboxSpec) -> Exit:
        """The exit of a sandbox that ended while the daemon was down (from its status file)."""
        return self._exit_result(spec, None, stopped=False)

    def orphans(self, known: set[str]) -> list[tuple[str, str]]:
        """cgroups and run dirs this instance made that no record knows: crash leftovers."""
        found = [(u, s) for u, s in self.cgroups.list() if s not in known]
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.run_dir):
                if name not in known and os.path.isdir(os.path.join(self.run_dir, name)):
                    found.append(("", name))
        return found

    def remove_orphan(self, user: str, sid: str) -> None:
        if user:
            with contextlib.suppress(SandboxdError):
                self.cgroups.remove(user, sid)
        shutil.rmtree(self.directory(sid), ignore_errors=True)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.path.basename(fh.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def _has_execd(pid: int) -> bool:
    """True once ``pid`` runs something other than bwrap (a dead or dying one tells nothing)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "bwrap"
    except OSError:
        return False


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = fh.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None
