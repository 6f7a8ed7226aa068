"""Fault injection for the crash tests: the daemon SIGKILLs itself at a named point.

``SANDBOXD_FAULT=create:cgroup`` (set only by a test, in the daemon's environment) kills the
daemon right after that step of a create, the way a power cut or an OOM kill would, so the
test can check what a restart finds. ``SANDBOXD_FAULT_AFTER=N`` skips the first N passes.
Points are named ``<operation>:<step>``; ``POINTS`` lists them (the tests iterate over it).
Without the variable, ``point`` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "create:admitted",
    "create:image",
    "create:rundir",
    "create:volumes",
    "create:network",
    "create:cgroup",
    "create:seccomp",
    "create:launch",
    "create:running",
    "network:netns",
    "network:veth",
    "network:rules",
    "remove:stopped",
    "remove:released",
    "kernel:sandbox",
    "kernel:channels",
    "kernel:recorded",
)

_WANTED = os.environ.get("SANDBOXD_FAULT", "")
_skip = int(os.environ.get("SANDBOXD_FAULT_AFTER", "0") or 0)


def point(name: str) -> None:
    """Die here if the test asked for this point."""
    global _skip
    if not _WANTED or name != _WANTED:
        return
    if _skip > 0:
        _skip -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
