"""Small helpers shared by the engine tests."""

from __future__ import annotations

import os
import time
from typing import Any

from conftest import Client


def host_pids(sandbox: dict[str, Any]) -> tuple[int, int]:
    """(init pid, command pid) of a running sandbox, as seen from the host."""
    outer = sandbox["pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{outer}/task/{outer}/children") as fh:
                init = int(fh.read().split()[0])
            with open(f"/proc/{init}/task/{init}/children") as fh:
                return init, int(fh.read().split()[0])
        except (OSError, IndexError):
            time.sleep(0.02)
    raise AssertionError("sandbox processes not found")


def status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(key)


def sh(client: Client, script: str, **fields: Any) -> tuple[int, str, str]:
    """Run ``sh -c script`` to completion; (exit code, stdout, stderr)."""
    result, out, err = client.run_to_end(["/bin/sh", "-c", script], **fields)
    return result["exit_code"], out, err


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def probe_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "syscall_probe.py")
