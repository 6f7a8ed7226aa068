"""sandboxctl against a real daemon: exit codes, streaming, listings, users and quotas."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PYTHON, SANDBOXCTL, Daemon

pytestmark = pytest.mark.root

HOG = "b = bytearray(256 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1"


def ctl(
    daemon: Daemon,
    *args: str,
    token: str | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDBOXCTL, *args],
        env=daemon.env(token),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
    )


def test_run_streams_output_and_propagates_exit_code(daemon: Daemon) -> None:
    r = ctl(daemon, "run", "--rm", "--", "/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "to-out\n" and r.stderr == "to-err\n"


def test_run_true_and_rm_leaves_nothing(daemon: Daemon) -> None:
    before = json.loads(ctl(daemon, "ps", "-a", "--json").stdout)
    r = ctl(daemon, "run", "--rm", "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    after = json.loads(ctl(daemon, "ps", "-a", "--json").stdout)
    assert len(after) == len(before)


def test_run_oom_exits_137(daemon: Daemon) -> None:
    r = ctl(daemon, "run", "--rm", "--memory", "64m", "--", PYTHON, "-c", HOG)
    assert r.returncode == 137


def test_run_refused_exits_125_with_one_line(daemon: Daemon) -> None:
    r = ctl(daemon, "run", "--memory", "64g", "--", "true")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "profile" in r.stderr and "Traceback" not in r.stderr
    r = ctl(daemon, "run", "--", "no-such-command-xyz")
    assert r.returncode == 125 and "Traceback" not in r.stderr


def test_run_interactive_stdin(daemon: Daemon) -> None:
    r = ctl(daemon, "run", "-i", "--rm", "--", "/bin/sh", "-c", "tr a-z A-Z", stdin="hello\n")
    assert r.returncode == 0 and r.stdout == "HELLO\n"


def test_detached_ps_inspect_stats_logs_stop_rm(daemon: Daemon) -> None:
    r = ctl(
        daemon,
        "run",
        "-d",
        "--name",
        "cli-detached",
        "--memory",
        "96m",
        "--cpus",
        "0.5",
        "--pids",
        "40",
        "--",
        "/bin/sh",
        "-c",
        "echo started; sleep 120",
    )
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    try:
        ps = ctl(daemon, "ps")
        assert "cli-detached" in ps.stdout and sid[:12] in ps.stdout and "Up" in ps.stdout
        info = json.loads(ctl(daemon, "inspect", sid).stdout)
        info = info[0] if isinstance(info, list) else info
        assert info["state"] == "running" and info["limits"]["memory"] == 96 * 1024 * 1024
        assert info["uid"] > 0
        stats = ctl(daemon, "stats", "--no-stream")
        assert "cli-detached" in stats.stdout and "MEM USAGE / LIMIT" in stats.stdout
        assert "96MiB" in stats.stdout and "/ 40" in stats.stdout
        stats_json = json.loads(ctl(daemon, "stats", "--json", sid).stdout)
        assert stats_json[0]["pids_limit"] == 40
        assert ctl(daemon, "logs", sid).stdout == "started\n"
        assert ctl(daemon, "stop", "-t", "1", sid).returncode == 0
        ps_all = json.loads(ctl(daemon, "ps", "-a", "--json").stdout)
        mine = [s for s in ps_all if s["id"] == sid][0]
        assert mine["state"] == "exited"
    finally:
        assert ctl(daemon, "rm", "-f", sid).returncode == 0
    assert ctl(daemon, "inspect", sid).returncode == 1


def test_user_add_and_isolation_through_cli(daemon: Daemon) -> None:
    r = ctl(daemon, "user", "add", "gina")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    mine = ctl(daemon, "run", "-d", "--", "sleep", "60", token=token).stdout.strip()
    try:
        assert mine[:12] in ctl(daemon, "ps", token=token).stdout
        other = daemon.user("alice").token
        r = ctl(daemon, "inspect", mine, token=other)
        assert r.returncode == 1 and "no such sandbox" in r.stderr
        r = ctl(daemon, "user", "ls", token=token)
        assert r.returncode == 1 and "admin" in r.stderr
        assert "gina" in ctl(daemon, "user", "ls").stdout
    finally:
        ctl(daemon, "rm", "-f", mine, token=token)


def test_quota_get_set(daemon: Daemon) -> None:
    daemon.user("hank")
    assert (
        ctl(daemon, "quota", "set", "hank", "--memory", "2g", "--max-sandboxes", "3").returncode
        == 0
    )
    got = json.loads(ctl(daemon, "quota", "get", "hank", "--json").stdout)
    assert got["quota"]["memory"] == 2 * 1024**3 and got["quota"]["max_sandboxes"] == 3
    assert ctl(daemon, "quota", "reset", "hank").returncode == 0


def test_bad_token_is_one_clear_line(daemon: Daemon) -> None:
    r = ctl(daemon, "ps", token="wrong")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "token" in r.stderr


def test_volume_commands_and_named_binds(daemon: Daemon) -> None:
    alice = daemon.user("alice")
    r = ctl(daemon, "volume", "create", "clivol", token=alice.token)
    assert r.returncode == 0 and r.stdout.strip() == "clivol", r.stderr
    listed = json.loads(ctl(daemon, "volume", "ls", "--json", token=alice.token).stdout)
    mine = [v for v in listed if v["name"] == "clivol"]
    assert mine and mine[0]["user"] == "alice" and mine[0]["mode"] == "0700"
    table = ctl(daemon, "volume", "ls", token=alice.token).stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "USER"] and "clivol" in table
    r = ctl(
        daemon,
        "run",
        "--rm",
        "-v",
        "clivol:/d",
        "--",
        "sh",
        "-c",
        "echo hi > /d/f",
        token=alice.token,
    )
    assert r.returncode == 0, r.stderr
    r = ctl(daemon, "run", "--rm", "-v", "clivol/f:/f:ro", "--", "cat", "/f", token=alice.token)
    assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
    # another user cannot name it: bob's "clivol" is his own (made empty), not alice's
    bob = daemon.user("bob")
    r = ctl(daemon, "run", "--rm", "-v", "clivol/f:/f", "--", "cat", "/f", token=bob.token)
    assert r.returncode == 125 and "does not exist" in r.stderr
    host = mine[0]["host"]
    r = ctl(daemon, "run", "--rm", "-v", f"{host}:/x", "--", "true", token=bob.token)
    assert r.returncode == 125 and "host-path-denied" in r.stderr
    inspected = json.loads(ctl(daemon, "volume", "inspect", "clivol", token=alice.token).stdout)
    assert inspected[0]["host"] == host
    r = ctl(daemon, "volume", "rm", "clivol", token=alice.token)
    assert r.returncode == 0, r.stderr
    r = ctl(daemon, "volume", "inspect", "clivol", token=alice.token)
    assert r.returncode == 1 and "unknown-volume" in r.stderr
    ctl(daemon, "volume", "rm", "clivol", token=bob.token)
