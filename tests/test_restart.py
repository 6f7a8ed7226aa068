"""A daemon killed with SIGKILL finds its running sandboxes again, and their exit codes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from conftest import Daemon, other_instance, running_daemon
from helpers import wait_until

pytestmark = pytest.mark.root


@pytest.fixture
def restartable() -> Iterator[Daemon]:
    with running_daemon(other_instance("r")) as d:
        yield d


def test_sigkill_restart_readopts_and_records_exit(restartable: Daemon) -> None:
    alice = restartable.user("alice")
    sb = alice.run(["/bin/sh", "-c", "sleep 4; echo done; exit 42"])
    restartable.kill(signal.SIGKILL)
    assert os.path.exists(f"/proc/{sb['pid']}"), "the sandbox must survive the daemon"
    restartable.start()
    model = alice.call("GET", f"/api/sandboxes/{sb['id']}")
    assert model["state"] == "running" and model["pid"] == sb["pid"]
    result = alice.call("POST", f"/api/sandboxes/{sb['id']}/wait")
    assert result["exit_code"] == 42
    assert alice.logs(sb["id"])["stdout"] == "done\n"
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}")


def test_exit_while_daemon_is_down_is_recorded(restartable: Daemon) -> None:
    alice = restartable.user("alice")
    sb = alice.run(["/bin/sh", "-c", "sleep 1; exit 5"])
    restartable.kill(signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{sb['pid']}"), timeout=20)
    restartable.start()
    model = alice.call("GET", f"/api/sandboxes/{sb['id']}")
    assert model["state"] == "exited" and model["exit_code"] == 5
    cgroups = [
        p for p in os.popen(f"find /sys/fs/cgroup -maxdepth 4 -name {sb['id']}").read().split()
    ]
    assert cgroups == []
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}")


def test_half_made_sandbox_is_removed_on_start(restartable: Daemon) -> None:
    """A record left in 'created' (daemon died mid-create) is cleaned up at the next start."""
    import sqlite3

    alice = restartable.user("alice")
    sb = alice.run(["sleep", "60"])
    restartable.kill(signal.SIGKILL)
    db = sqlite3.connect(os.path.join(restartable.state_dir, "state.db"))
    db.execute("UPDATE sandboxes SET state = 'created' WHERE id = ?", (sb["id"],))
    db.commit()
    db.close()
    restartable.start()
    assert alice.request("GET", f"/api/sandboxes/{sb['id']}").status_code == 404
    wait_until(lambda: not os.path.exists(f"/proc/{sb['pid']}"), timeout=20)
    assert not os.path.exists(os.path.join(restartable.run_dir, sb["id"]))
    time.sleep(0.1)
