"""The launcher helper: ``python -I -S launcher.py PLAN_FD``, exec'd by the daemon per sandbox.

As root it joins the sandbox's cgroups and network namespace, unshares a private mount
namespace and mounts the sandbox's root there (``mounts.build_root``), sets rlimits, drops to
the tenant's uid and execs bubblewrap, which becomes the sandbox's outer process.

Why a separate exec'd program rather than ``preexec_fn``: the daemon has threads (its blocking
pool), and running Python between fork and exec in a threaded process can deadlock on a lock
another thread held at fork time. This program is single-threaded and stdlib-only, so it
starts in ~20 ms and imports nothing a tenant can influence. A later warm pool or template can
exec it the same way with another plan.

Protocol: the plan is JSON in a memfd (``plan.LaunchPlan``). On failure one JSON line
``{"step": ..., "error": ...}`` goes to the plan's error fd and the exit code is 121. On
success that fd, close-on-exec, closes when bwrap is exec'd: EOF with no data means launched.
The launcher dies with the daemon until it drops privileges (``PR_SET_PDEATHSIG``; the uid
change clears it), so a daemon killed mid-launch leaves no half-built sandbox running unseen.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sandboxd.runtime import mounts, netns, syscalls  # noqa: E402
from sandboxd.runtime.plan import LaunchPlan  # noqa: E402

FAILED = 121


def _read_plan(fd: int) -> LaunchPlan:
    chunks = []
    while True:
        data = os.pread(fd, 1 << 20, sum(len(c) for c in chunks))
        if not data:
            break
        chunks.append(data)
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
    """Every root-side step, in order; raises with the failing step's name in ``step``."""
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


class StepFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def main(argv: list[str]) -> int:
    """``launcher.py PLAN_FD DAEMON_PID``."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(argv[2]):  # the daemon died before the line above took effect
        return FAILED
    plan = _read_plan(int(argv[1]))
    os.set_inheritable(plan.error_fd, False)
    try:
        run(plan)
    except StepFailed as exc:
        report = {"step": exc.step, "error": exc.error}
    except Exception as exc:  # a bug or a malformed plan: still one line, never a traceback
        report = {"step": "launcher", "error": f"{type(exc).__name__}: {exc}"}
    os.write(plan.error_fd, (json.dumps(report) + "\n").encode())
    return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
