"""The orchestrator: build a sandbox step by step, watch it, and release it in one place.

``STEPS`` is the order of a start. Each step prepares from the frozen spec into the ``Build``
it shares with the others, and has a ``release(spec)`` that is idempotent and works from the
spec alone, so the same release serves a failed start (only the steps that ran), an exit, a
removal, crash recovery and ``sandboxd cleanup``:

  1. image     the root's layers: the built-in host image, or a hold on an OCI image and its
               layers with the tenant's id maps (``image.py``)
  2. rundir    the run dir: FIFOs for the output, mount points, bwrap's status file
  3. volumes   the tenant's volumes, opened by fd and checked (``volumes.open_mounts``)
  4. network   netns, veth and nft rules (``network/manager.py``), on the net lane
  5. cgroup    user level, then sandbox level (``cgroups.py``)
  6. seccomp   the compiled filter in a sealed memfd (``seccomp.py``)
  7. launch    the launcher helper (``launcher.py``): joins, mounts, drops, execs bwrap

Every blocking call runs in a thread lane (``blocking``); the loop only waits. A step's
transient fds (volumes, seccomp, the network namespace) are closed once bwrap runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import blocking, faults
from ..errors import InvalidRequest, LaunchError, SandboxdError
from ..spec import Limits, SandboxSpec
from ..units import format_size
from . import bwrap, cgroups, idmap, launch, netns, output, rootfs, seccomp
from .image import IdmapSupport, ImageSource, ImageStep
from .plan import MountFd, RunDir
from .stdin import StdinWriter
from .step import Step

log = logging.getLogger("sandboxd.runtime")

START_TIMEOUT = 20.0
EXIT_CODE_WAIT = 2.0  # the launcher reports its child's exit right after the pidfd fires


@dataclass
class Exit:
    code: int
    oom_killed: bool
    reason: str
    finished: float
    oom_kills: int = 0  # the cgroup's count, read before the cgroup goes


@dataclass
class LiveSandbox:
    """A sandbox whose processes the daemon is watching."""

    spec: SandboxSpec
    pid: int  # the outer bwrap process on the host
    init_pid: int | None  # PID 1 of the sandbox's pid namespace, as seen from the host
    directory: str
    exited: asyncio.Future[Exit]
    pump: output.OutputPump
    launched_here: bool = False  # a child of this daemon's launcher: it reports the exit code
    stdin: StdinWriter | None = None
    pidfd: int | None = None
    stopping: bool = False
    started: float = field(default_factory=time.time)
    on_exit: list[Callable[[LiveSandbox, Exit], None]] = field(default_factory=list)

    def command_pid(self) -> int | None:
        """The user's command: the only child of the sandbox's init."""
        return None if self.init_pid is None else _first_child(self.init_pid)


class Networks(Protocol):
    """What the runtime needs of the network manager (it runs these on the net lane)."""

    def attach(self, spec: SandboxSpec) -> Any: ...

    def release(self, sid: str) -> list[str]: ...


#: opens a spec's volumes as detached mount trees: [(fd, "dir"|"file")] in spec order
VolumeOpener = Callable[[SandboxSpec], list[tuple[int, str]]]


@dataclass
class Build:
    """What the steps of one start share."""

    spec: SandboxSpec
    user_limits: Limits
    directory: str
    run_dirs: tuple[RunDir, ...]
    image: rootfs.Image | None = None
    etc: tuple[tuple[str, str], ...] = ()
    mounts: list[MountFd] = field(default_factory=list)
    net_mode: str = "none"
    net_fd: int | None = None
    seccomp_fd: int | None = None
    transient: list[int] = field(default_factory=list)  # closed once bwrap runs
    live: LiveSandbox | None = None

    def close_transient(self) -> None:
        for fd in self.transient:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.transient.clear()


class Runtime:
    """Host side of every sandbox of one instance."""

    def __init__(
        self,
        *,
        instance: str,
        run_dir: str,
        state_dir: str,
        networks: Networks,
        open_volumes: VolumeOpener,
        cgroup_driver: cgroups.CgroupDriver | None = None,
        log_max_bytes: int = 1 << 20,
        log_rate: int = 8 << 20,
        stdin_buffer: int = 1 << 20,
        images: ImageSource | None = None,
        id_span: int = idmap.SPAN,
    ) -> None:
        self.instance = instance
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.logs_dir = os.path.join(state_dir, "logs")
        self.networks = networks
        self.open_volumes = open_volumes
        self.log_max_bytes = log_max_bytes
        self.log_rate = log_rate
        self.stdin_buffer = stdin_buffer
        os.makedirs(run_dir, mode=0o711, exist_ok=True)
        os.chmod(run_dir, 0o711)
        # root-only: layers are read through the overlay the launcher (root) mounts
        os.makedirs(os.path.join(state_dir, "images"), mode=0o700, exist_ok=True)
        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        # the tenant's bwrap must traverse to its root: every parent of run_dir must allow it
        parent = os.path.dirname(run_dir)
        while parent != "/":
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
            parent = os.path.dirname(parent)
        self.cgroups = cgroup_driver or cgroups.probe(instance)
        self.builtin = {"host": rootfs.host_image(os.path.join(state_dir, "images"))}
        self.images = images  # the OCI image store (None: only the built-in image)
        self.id_span = id_span  # on-disk ids below it map to themselves in image layers
        # probed in the store's tmp/ (its filesystem; leftovers of a crash go at the next start)
        self.idmap = IdmapSupport(os.path.join(state_dir, "images", "tmp"))
        self.host_proc = tuple(
            p
            for p in (*bwrap.MASKED_FILES, *bwrap.MASKED_DIRS, *bwrap.READONLY_PATHS)
            if os.path.exists(p)
        )
        self.empty_file = rootfs.empty_file(run_dir)
        self.live: dict[str, LiveSandbox] = {}
        self.launcher = launch.Launcher()
        self.steps: tuple[Step, ...] = (
            ImageStep(self),
            RunDirStep(self),
            VolumesStep(self),
            NetworkStep(self),
            CgroupStep(self),
            SeccompStep(self),
            LaunchStep(self),
        )

    # paths ----------------------------------------------------------------------------------

    def directory(self, sid: str) -> str:
        return os.path.join(self.run_dir, sid)

    def log_file(self, sid: str) -> output.LogFile:
        return output.LogFile(os.path.join(self.logs_dir, f"{sid}.log"), self.log_max_bytes)

    def image(self, name: str) -> rootfs.Image:
        from ..errors import NotFound

        try:
            return self.builtin[name]
        except KeyError:
            raise NotFound(f"unknown image {name!r}", reason="unknown-image") from None

    # start -----------------------------------------------------------------------------------

    async def start(
        self, spec: SandboxSpec, *, user_limits: Limits, run_dirs: tuple[RunDir, ...] = ()
    ) -> LiveSandbox:
        """Create and start ``spec``; on any failure release what was made, then raise."""
        build = Build(spec, user_limits, self.directory(spec.id), run_dirs)
        done: list[Step] = []
        try:
            for step in self.steps:
                done.append(step)
                await step.prepare(build)
                faults.point(f"create:{step.name}")
        except BaseException:
            build.close_transient()
            for step in reversed(done):
                with contextlib.suppress(Exception):
                    await step.release(spec)
            with contextlib.suppress(Exception):  # no record will keep it (bwrap's error in it)
                await blocking.run(self.log_file(spec.id).remove)
            raise
        build.close_transient()
        assert build.live is not None
        self.live[spec.id] = build.live
        return build.live

    async def release(self, spec: SandboxSpec) -> None:
        """Remove every host object of a sandbox that no longer runs (idempotent). The one
        teardown: exit, removal, failed start, recovery and cleanup all end here."""
        for step in reversed(self.steps):
            try:
                await step.release(spec)
            except SandboxdError as exc:
                log.error("releasing %s (%s): %s", spec.id, step.name, exc.message)

    # watching and exit -------------------------------------------------------------------------

    def watch(self, live: LiveSandbox) -> None:
        loop = asyncio.get_running_loop()
        if live.pidfd is None:
            try:
                live.pidfd = os.pidfd_open(live.pid)
            except ProcessLookupError:
                loop.call_soon(self._exited, live)
                return
        loop.add_reader(live.pidfd, self._exited, live)

    def _exited(self, live: LiveSandbox) -> None:
        loop = asyncio.get_running_loop()
        if live.pidfd is not None:
            loop.remove_reader(live.pidfd)
            os.close(live.pidfd)
            live.pidfd = None
        loop.create_task(self._finish(live))

    async def _finish(self, live: LiveSandbox) -> None:
        """Drain the output, read the exit, kill what is left, then tell the listeners."""
        status = None
        if live.launched_here:
            status = await self.launcher.exit_code(live.pid, EXIT_CODE_WAIT)
        if live.stdin is not None:
            live.stdin.close()
        with contextlib.suppress(SandboxdError):
            await blocking.run(self.cgroups.kill, live.spec.user, live.spec.id)
        await live.pump.finish()
        result = await blocking.run(self._exit_result, live.spec, status, live.stopping)
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
            kills = self.cgroups.oom_kills(spec.user, spec.id)
        except SandboxdError:
            kills = 0
        oom = kills > 0
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
        return Exit(
            code=code,
            oom_killed=oom and code != 0,
            reason=reason,
            finished=time.time(),
            oom_kills=kills,
        )

    def _status_exit_code(self, sid: str) -> int | None:
        try:
            with open(os.path.join(self.directory(sid), "status.json")) as fh:
                text = fh.read(65536)
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
        self.signal_command(live, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(live.exited), grace)
        except TimeoutError:
            with contextlib.suppress(SandboxdError):
                await blocking.run(self.cgroups.kill, live.spec.user, live.spec.id)
            return await asyncio.wait_for(asyncio.shield(live.exited), 15)

    def signal_command(self, live: LiveSandbox, signum: int) -> bool:
        """Signal the sandbox's command, never a stranger that took a pid meanwhile: each pid
        on the way (init, then the command) is pinned with a pidfd and then checked to still be
        the child of the process above it, starting from the outer bwrap we watch."""
        if live.pidfd is None or live.init_pid is None or _ended(live.pidfd):
            return False
        fds: list[int] = []
        try:
            for parent, pid in ((live.pid, live.init_pid), (live.init_pid, live.command_pid())):
                if pid is None:
                    return False
                fds.append(os.pidfd_open(pid))
                if _first_child(parent) != pid:
                    return False
            signal.pidfd_send_signal(fds[-1], signum)
            return True
        except ProcessLookupError:
            return False
        finally:
            for fd in fds:
                os.close(fd)

    async def root_fd(self, live: LiveSandbox) -> int:
        """An O_PATH fd of the sandbox's own ``/`` (for ``safefs.open_in_root``).

        Opened through ``/proc/<init>/root`` after checking, with a pidfd taken first, that
        the pid is this sandbox's init (in its cgroup) and still alive once the fd is open, so
        a pid reused by someone else cannot hand us another root.
        """
        init = live.init_pid or _first_child(live.pid)
        if init is None:
            raise LaunchError(f"sandbox {live.spec.id} has no init process", reason="not-running")
        try:
            pidfd = os.pidfd_open(init)
        except ProcessLookupError:
            raise LaunchError("the sandbox ended", reason="not-running") from None
        try:
            members = await blocking.run(self.cgroups.pids, live.spec.user, live.spec.id)
            if init not in members:
                raise LaunchError("the sandbox's init left its cgroup", reason="not-running")
            fd = os.open(f"/proc/{init}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                signal.pidfd_send_signal(pidfd, 0)
            except ProcessLookupError:
                os.close(fd)
                raise LaunchError("the sandbox ended", reason="not-running") from None
            return fd
        finally:
            os.close(pidfd)

    # restart ----------------------------------------------------------------------------------

    async def adopt(self, spec: SandboxSpec, pid: int | None) -> LiveSandbox | None:
        """After a daemon restart, watch a sandbox that is still running; None if it is gone."""
        if pid is None or not _is_bwrap(pid):
            return None
        members = await blocking.run(self._cgroup_pids, spec)
        if pid not in members:
            return None
        log_file = self.log_file(spec.id)
        pump = output.OutputPump(log_file, self.log_rate, await blocking.run(log_file.last_seq) + 1)
        directory = self.directory(spec.id)
        pump.start({s: output.open_reader(directory, s) for s in output.STREAMS})
        live = LiveSandbox(
            spec=spec,
            pid=pid,
            init_pid=_first_child(pid),
            directory=directory,
            exited=asyncio.get_running_loop().create_future(),
            pump=pump,
        )
        self.live[spec.id] = live
        self.watch(live)
        return live

    def _cgroup_pids(self, spec: SandboxSpec) -> list[int]:
        try:
            return self.cgroups.pids(spec.user, spec.id)
        except SandboxdError:
            return []

    async def exit_of_lost(self, spec: SandboxSpec) -> Exit:
        """The exit of a sandbox that ended while the daemon was down (from its status file)."""
        return await blocking.run(self._exit_result, spec, None, False)

    def orphans(self, known: set[str]) -> list[tuple[str, str]]:
        """cgroups and run dirs this instance made that no record knows: crash leftovers."""
        found = [(u, s) for u, s in self.cgroups.sandbox_groups() if s not in known]
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


# -- steps ----------------------------------------------------------------------------------


class RunDirStep(Step):
    name = "rundir"

    async def prepare(self, build: Build) -> None:
        await blocking.run(self._make, build.directory)

    @staticmethod
    def _make(directory: str) -> None:
        os.mkdir(directory, 0o711)
        output.make_fifos(directory)
        rootfs.make_mount_points(directory)

    async def release(self, spec: SandboxSpec) -> None:
        await blocking.run(shutil.rmtree, self.rt.directory(spec.id), True)


class VolumesStep(Step):
    name = "volumes"

    async def prepare(self, build: Build) -> None:
        opened = await blocking.run(self.rt.open_volumes, build.spec)
        for vol, (fd, kind) in zip(build.spec.volumes, opened, strict=True):
            build.transient.append(fd)
            build.mounts.append(MountFd(vol.container, fd, kind))


class NetworkStep(Step):
    name = "network"

    async def prepare(self, build: Build) -> None:
        attached = await blocking.run_net(self.rt.networks.attach, build.spec)
        build.etc = rootfs.etc_files(build.spec, attached.etc_hosts, attached.etc_resolv)
        plan: netns.NetnsPlan = attached.plan
        if plan.mode == "none" or plan.mode == "host":
            build.net_mode = plan.mode
            return
        build.net_mode = "fd"
        build.net_fd = await blocking.run(_open_netns, plan.path or "")
        build.transient.append(build.net_fd)

    async def release(self, spec: SandboxSpec) -> None:
        await blocking.run_net(self.rt.networks.release, spec.id)


def _open_netns(path: str) -> int:
    """The netns to join: a file the daemon made (/run/netns/…) or, for ``container:<id>``,
    ``fd:N``, a pidfd of that sandbox's process taken when it started (setns on a pidfd: no
    pid-reuse race; a process that ended makes setns fail)."""
    if path.startswith("fd:"):
        return os.dup(int(path[3:]))
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class CgroupStep(Step):
    name = "cgroup"

    async def prepare(self, build: Build) -> None:
        spec = build.spec
        await blocking.run(self.rt.cgroups.ensure_user, spec.user, build.user_limits)
        await blocking.run(self.rt.cgroups.create, spec.user, spec.id, spec.limits)

    async def release(self, spec: SandboxSpec) -> None:
        await blocking.run(self.rt.cgroups.remove, spec.user, spec.id)


class SeccompStep(Step):
    name = "seccomp"

    async def prepare(self, build: Build) -> None:
        bpf = await blocking.run(seccomp.compiled, build.spec.seccomp_profile)
        build.seccomp_fd = seccomp.seccomp_fd(bpf)
        build.transient.append(build.seccomp_fd)


class LaunchStep(Step):
    name = "launch"

    async def prepare(self, build: Build) -> None:
        spec, rt = build.spec, self.rt
        image = build.image
        assert image is not None
        log_file = rt.log_file(spec.id)
        await blocking.run(log_file.remove)  # a reused id never shows an old log
        pump = output.OutputPump(log_file, rt.log_rate)
        assert build.seccomp_fd is not None
        prepared = await blocking.run(
            launch.prepare,
            launch.Request(
                spec=spec,
                directory=build.directory,
                root=rootfs.plan(
                    spec,
                    image,
                    build.directory,
                    mounts=tuple(build.mounts),
                    etc=build.etc,
                    run_dirs=build.run_dirs,
                ),
                cgroup_procs=tuple(rt.cgroups.join_paths(spec.user, spec.id)),
                net_mode=build.net_mode,
                net_fd=build.net_fd,
                seccomp_fd=build.seccomp_fd,
                empty_file=rt.empty_file,
                python_bin=os.path.dirname(image.python) if image.python else None,
                host_proc=rt.host_proc,
            ),
        )
        pidfd: int | None = None
        try:
            pid, pidfd = await rt.launcher.launch(prepared)
            prepared.close_sent()
            pump.start(prepared.readers)
            prepared.readers = {}
            await launch.wait_launched(prepared)
            init_pid = await _read_info(prepared.info_r, pidfd)
            await _wait_exec(init_pid, pidfd, pump)
        except BaseException:
            prepared.close_all()
            if pidfd is not None:
                await _kill(pidfd)
                os.close(pidfd)
            pump.close()
            with contextlib.suppress(Exception):
                await pump.flushed()  # nothing may write the log after the start's release
            raise
        _close_quietly(prepared.info_r)
        live = LiveSandbox(
            spec=spec,
            pid=pid,
            init_pid=init_pid,
            directory=build.directory,
            exited=asyncio.get_running_loop().create_future(),
            pump=pump,
            launched_here=True,
            stdin=None
            if prepared.stdin_w is None
            else StdinWriter(prepared.stdin_w, rt.stdin_buffer),
            pidfd=pidfd,
        )
        rt.watch(live)
        build.live = live

    async def release(self, spec: SandboxSpec) -> None:
        live = self.rt.live.get(spec.id)
        if live is not None and live.pidfd is not None and not _ended(live.pidfd):
            await _kill(live.pidfd)


def _ended(pidfd: int) -> bool:
    """True once the process behind ``pidfd`` has exited (its pidfd polls readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


async def _kill(pidfd: int, timeout: float = 10.0) -> None:
    """SIGKILL the process behind ``pidfd`` and wait (on the loop, polling) until it ended."""
    if not _ended(pidfd):
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not _ended(pidfd) and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _read_info(info_r: int, pidfd: int) -> int:
    """bwrap's --info-fd JSON; EOF without it means bwrap failed to set up."""
    raw = await launch.read_to_eof(info_r, START_TIMEOUT, "bwrap did not start in time")
    try:
        return int(json.loads(raw)["child-pid"])
    except (ValueError, KeyError):
        raise LaunchError("bwrap failed before starting the sandbox") from None


async def _wait_exec(init_pid: int, pidfd: int, pump: output.OutputPump) -> None:
    """Wait until bwrap has exec'd the command; a bwrap that exits first failed its set-up.

    The command is the child of the sandbox's init; it has been exec'd once its executable is
    no longer bwrap. A command that already ran and exited is fine too. Polled with backoff.
    """
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.0005
    while time.monotonic() < deadline:
        child = _first_child(init_pid)
        if child is not None and _has_execd(child):
            return
        if _ended(pidfd):
            pump.drain_now()
            message = _bwrap_error(pump)
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
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.02)
    raise LaunchError("the command did not start in time")


def _bwrap_error(pump: output.OutputPump) -> str:
    lines = pump.stderr_tail.decode(errors="replace").strip().splitlines()
    bw = [line for line in lines if line.startswith("bwrap:")]
    return (bw or lines or ["no message"])[-1]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


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
