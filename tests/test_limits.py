"""Resource limits enforced by the kernel: memory (OOM), pids, CPU, disk, and the user quota."""

from __future__ import annotations

import time

import pytest
from conftest import PYTHON, Client, Daemon
from helpers import sh

pytestmark = pytest.mark.root

HOG = (
    "b = bytearray(512 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"
)


def test_memory_hog_is_oom_killed_and_sibling_survives(alice: Client) -> None:
    sibling = alice.run(["sleep", "120"], memory="64m")
    try:
        hog = alice.run([PYTHON, "-c", HOG], memory="64m")
        result = alice.wait(hog["id"])
        assert result["exit_code"] == 137
        assert result["oom_killed"] is True
        assert "OOM" in result["reason"] and "64MiB" in result["reason"]
        model = alice.call("GET", f"/api/sandboxes/{hog['id']}")
        assert model["state"] == "exited" and model["oom_killed"] is True
        assert "survived" not in alice.logs(hog["id"])["stdout"]
        alive = alice.call("GET", f"/api/sandboxes/{sibling['id']}")
        assert alive["state"] == "running"
        alice.call("DELETE", f"/api/sandboxes/{hog['id']}")
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sibling['id']}?force=1")


def test_fork_bomb_is_contained_and_daemon_answers(daemon: Daemon, alice: Client) -> None:
    bomb = alice.run(["/bin/sh", "-c", "b() { b | b & }; b; sleep 5"], pids=64)
    try:
        time.sleep(1.0)
        stats = alice.call("GET", f"/api/sandboxes/{bomb['id']}/stats")
        assert stats["pids_limit"] == 64
        assert stats["pids_current"] <= 64
        assert daemon.admin.call("GET", "/api/status")["running"] >= 1
        code, out, _ = sh(alice, "echo still-fine")
        assert out.strip() == "still-fine"
    finally:
        alice.call("DELETE", f"/api/sandboxes/{bomb['id']}?force=1")


def test_cpu_half_a_core(alice: Client) -> None:
    busy = alice.run([PYTHON, "-c", "while True: pass"], cpus=0.5)
    try:
        time.sleep(0.5)
        first = alice.call("GET", f"/api/sandboxes/{busy['id']}/stats")
        t0 = time.monotonic()
        time.sleep(3.0)
        second = alice.call("GET", f"/api/sandboxes/{busy['id']}/stats")
        elapsed = time.monotonic() - t0
        share = (second["cpu_usage_seconds"] - first["cpu_usage_seconds"]) / elapsed
        assert 0.3 < share < 0.7, share  # about half a core, measured by the cgroup itself
        assert second["cpu_throttled_periods"] > first["cpu_throttled_periods"]
    finally:
        alice.call("DELETE", f"/api/sandboxes/{busy['id']}?force=1")


def test_disk_cap_gives_enospc(alice: Client) -> None:
    code, out, err = sh(
        alice, "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo rc=$?", disk="16m"
    )
    assert "No space left on device" in out, out
    assert "rc=1" in out


def test_user_memory_quota_rejects_with_429(daemon: Daemon) -> None:
    carol = daemon.user("carol")
    daemon.admin.call("PUT", "/api/users/carol/quota", json={"memory": "1g"})
    first = carol.run(["sleep", "60"], memory="768m")
    try:
        resp = carol.request("POST", "/api/sandboxes", json={"command": ["true"], "memory": "512m"})
        assert resp.status_code == 429
        body = resp.json()
        assert body["reason"] == "memory-quota" and "memory quota" in body["message"]
        # the kernel enforces the same aggregate at the user level of the cgroup tree
        quota = daemon.admin.call("GET", "/api/users/carol/quota")
        assert quota["usage"]["memory"] == 768 * 1024 * 1024
        assert quota["source"] == "api"
    finally:
        carol.call("DELETE", f"/api/sandboxes/{first['id']}?force=1")
        daemon.admin.call("DELETE", "/api/users/carol/quota")


def test_max_sandboxes_quota(daemon: Daemon) -> None:
    dave = daemon.user("dave")
    daemon.admin.call("PUT", "/api/users/dave/quota", json={"max_sandboxes": 1})
    first = dave.run(["sleep", "60"])
    try:
        resp = dave.request("POST", "/api/sandboxes", json={"command": ["true"]})
        assert resp.status_code == 429 and resp.json()["reason"] == "max-sandboxes"
    finally:
        dave.call("DELETE", f"/api/sandboxes/{first['id']}?force=1")
        daemon.admin.call("DELETE", "/api/users/dave/quota")


def test_limits_of_a_running_sandbox_change(alice: Client) -> None:
    sb = alice.run(["sleep", "60"], memory="64m", pids=32)
    try:
        updated = alice.call(
            "PATCH", f"/api/sandboxes/{sb['id']}", json={"memory": "128m", "pids": 48}
        )
        assert updated["limits"]["memory"] == 128 * 1024 * 1024
        stats = alice.call("GET", f"/api/sandboxes/{sb['id']}/stats")
        assert stats["memory_limit"] == 128 * 1024 * 1024 and stats["pids_limit"] == 48
        resp = alice.request("PATCH", f"/api/sandboxes/{sb['id']}", json={"memory": "99g"})
        assert resp.status_code == 429
        # cpu_weight is live too, up to the profile's (100 by default); cpu.shares on v1
        updated = alice.call("PATCH", f"/api/sandboxes/{sb['id']}", json={"cpu_weight": 50})
        assert updated["limits"]["cpu_weight"] == 50
        for body, status, reason in (
            ({"cpu_weight": 101}, 429, "profile-limit"),
            ({"memory_high": "1g"}, 400, "invalid"),  # above the sandbox's memory
            ({"swap": "1g"}, 400, "invalid"),  # not a live limit
        ):
            resp = alice.request("PATCH", f"/api/sandboxes/{sb['id']}", json=body)
            assert (resp.status_code, resp.json()["reason"]) == (status, reason), body
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_stats_report_io_and_memory(alice: Client) -> None:
    sb = alice.run(
        [
            PYTHON,
            "-c",
            (
                "import time\nb = bytearray(40 * 1024 * 1024)\n"
                "for i in range(0, len(b), 4096): b[i] = 1\n"
                "print('ready', flush=True)\ntime.sleep(60)"
            ),
        ],
        memory="256m",
    )
    try:
        from helpers import wait_until

        wait_until(lambda: "ready" in alice.logs(sb["id"])["stdout"])
        stats = alice.call("GET", f"/api/sandboxes/{sb['id']}/stats")
        assert stats["memory_usage"] >= 40 * 1024 * 1024
        assert stats["memory_limit"] == 256 * 1024 * 1024
        assert 0 < stats["memory_percent"] < 100
        assert stats["pids_current"] >= 2
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
