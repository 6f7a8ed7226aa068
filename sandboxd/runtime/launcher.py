"""The launcher: a single-threaded root process that forks one child per sandbox.

The daemon starts it once (``python -I -S launcher.py SOCK_FD DAEMON_PID``) and talks to it
over a ``SOCK_SEQPACKET`` socketpair. For each sandbox the daemon sends a token and file
descriptors (the plan's memfd, stdin, stdout, stderr, and the fds the plan names). The
launcher forks; the child, as root, joins the sandbox's cgroups and network namespace, mounts
its root in a private mount namespace (``mounts.build_root``), sets rlimits, drops to the
tenant's uid and execs bubblewrap, which becomes the sandbox's outer process. The launcher
answers with the child's pid and a pidfd of it, and later with its exit status.

Why a separate program: the daemon has threads (its blocking lanes), and running Python between
fork and exec in a threaded process can deadlock on a lock another thread held at fork time.
This process has one thread and imports only the standard library and these runtime modules,
so forking it is safe and cheap (~1 ms, no interpreter start per sandbox). A warm pool or a
template uses the same ``launch`` request with another plan.

Child protocol: on failure one JSON line ``{"step": ..., "error": ...}`` goes to the plan's
error fd and the child exits 121; on success that fd, close-on-exec, closes when bwrap is
exec'd: EOF with no data means launched. The launcher dies with the daemon
(``PR_SET_PDEATHSIG``), and a child dies with the launcher until it drops privileges (the uid
change clears it), so a daemon killed mid-launch leaves no half-built sandbox running unseen;
sandboxes already launched keep running and are re-adopted by the next daemon.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import resource
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sandboxd.runtime import mounts, netns, syscalls  # noqa: E402
from sandboxd.runtime.plan import LaunchPlan  # noqa: E402

FAILED = 121
MAX_FDS = 200
MAX_MESSAGE = 4096


# -- the child: one sandbox ------------------------------------------------------------------


class StepFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def _read_plan(fd: int) -> LaunchPlan:
    chunks = []
    offset = 0
    while True:
        data = os.pread(fd, 1 << 20, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    os.close(fd)
    return LaunchPlan.from_json(b"".join(chunks).decode())


def _join_cgroups(plan: LaunchPlan) -> None:
    for procs in plan.cgroup_procs:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _enter_network(plan: LaunchPlan) -> None:
    if plan.net_mode == "none":
        syscalls.unshare(syscalls.CLONE_NEWNET)
        netns.loopback_up()
    elif plan.net_mode == "fd":
        assert plan.net_fd is not None
        syscalls.setns(plan.net_fd, syscalls.CLONE_NEWNET)  # a netns file or a pidfd
        os.close(plan.net_fd)


def _limits(plan: LaunchPlan) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = plan.nofile
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


def _only_inherit(keep: tuple[int, ...]) -> None:
    """Mark every fd close-on-exec but stdio and ``keep``: nothing else crosses into bwrap."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, already closed
    for fd in keep:
        os.set_inheritable(fd, True)


def _drop(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def run(plan: LaunchPlan) -> None:
    """Every root-side step, in order, then exec bwrap; raises StepFailed naming the step."""
    steps = (
        ("cgroup", lambda: _join_cgroups(plan)),
        ("network", lambda: _enter_network(plan)),
        ("mount namespace", lambda: syscalls.unshare(syscalls.CLONE_NEWNS)),
        ("root filesystem", lambda: mounts.build_root(plan.root, plan.uid)),
        ("limits", lambda: _limits(plan)),
        ("privileges", lambda: _drop(plan.uid)),
    )
    for name, action in steps:
        try:
            action()
        except OSError as exc:
            raise StepFailed(name, str(exc)) from exc
    _only_inherit(plan.keep_fds)
    os.execv(plan.argv[0], list(plan.argv))


def renumber(received: list[int], targets: list[int]) -> None:
    """Give each received fd the number the plan names it by (the daemon's number: SCM_RIGHTS
    hands over new numbers). Moved above every number involved first, so none is clobbered."""
    top = max([*received, *targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in received]
    for fd in received:
        os.close(fd)
    for target, fd in zip(targets, moved, strict=True):
        os.dup2(fd, target, inheritable=False)
        os.close(fd)


def child(fds: list[int], targets: list[int]) -> None:
    """In the forked child: never returns (exec or _exit). ``fds``: plan memfd, stdin, stdout,
    stderr, then the fds the plan names, which get the numbers in ``targets``."""
    report: dict[str, str]
    error_fd = -1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        for target, fd in enumerate(fds[1:4]):
            os.dup2(fd, target)
            os.close(fd)
        plan = _read_plan(fds[0])  # before renumbering: a target may reuse its number
        renumber(fds[4:], targets)
        error_fd = plan.error_fd
        os.set_inheritable(error_fd, False)
        run(plan)
        report = {"step": "exec", "error": "execv returned"}
    except StepFailed as exc:
        report = {"step": exc.step, "error": exc.error}
    except BaseException as exc:  # a bug or a malformed plan: still one line, never a traceback
        report = {"step": "launcher", "error": f"{type(exc).__name__}: {exc}"}
    try:
        if error_fd >= 0:
            os.write(error_fd, (json.dumps(report) + "\n").encode())
    finally:
        os._exit(FAILED)


# -- the server ------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def _receive(sock: socket.socket) -> tuple[dict[str, object], list[int]] | None:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), list(fds)


def _launch(sock: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    """``fds``: plan memfd, stdin, stdout, stderr, then whatever the plan names."""
    targets = [int(t) for t in request.get("fds", [])]  # type: ignore[attr-defined]
    if len(targets) != len(fds) - 4 or any(t <= 2 for t in targets):
        _send(sock, {"token": request["token"], "error": "fd numbers do not match"})
        for fd in fds:
            os.close(fd)
        return
    try:
        pid = os.fork()
    except OSError as exc:
        _send(sock, {"token": request["token"], "error": f"fork: {exc}"})
        for fd in fds:
            os.close(fd)
        return
    if pid == 0:
        sock.close()
        child(fds, targets)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        _send(sock, {"token": request["token"], "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        _send(sock, {"exited": pid, "code": 128 - code if code < 0 else code})


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == wake_r:
                while os.read(wake_r, 512) == 512:
                    pass
                _reap(sock)
                continue
            got = _receive(sock)
            if got is None:  # the daemon is gone
                return
            request, fds = got
            if request.get("op") == "launch" and len(fds) >= 4:
                _launch(sock, request, fds)
            else:
                for extra in fds:
                    os.close(extra)
        _reap(sock)


def main(argv: list[str]) -> int:
    """``launcher.py SOCK_FD DAEMON_PID``."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(argv[2]):  # the daemon died before the line above took effect
        return FAILED
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # not the daemon loop's priority: sandboxes get 0
    sock = socket.socket(fileno=int(argv[1]))
    os.set_inheritable(sock.fileno(), False)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
