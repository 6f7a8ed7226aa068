"""sandboxctl's pure parts, without a daemon: argv → request body, status strings, the stats
table, token resolution and error rendering. The end-to-end CLI tests run against a real
daemon elsewhere; these pin down the formats scripts and people read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandboxd.cli.attach import exit_code_of
from sandboxd.cli.client import ApiError, Client, error_from_response
from sandboxd.cli.commands import quota_request, run_request
from sandboxd.cli.common import EXIT_DAEMON, UsageError, resolve_token, resolve_url
from sandboxd.cli.parser import build_parser
from sandboxd.cli.sandboxctl import main
from sandboxd.cli.tables import (
    format_table,
    human_duration,
    ps_row,
    stats_row,
    stats_table,
    status_string,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def iso(delta: timedelta) -> str:
    return (NOW - delta).isoformat().replace("+00:00", "Z")


def body_of(*argv: str, environ: dict[str, str] | None = None) -> dict:
    return run_request(build_parser().parse_args(["run", *argv]), environ or {})


# -- run arguments → request body -----------------------------------------------------------


def test_run_minimal_sends_only_the_command() -> None:
    assert body_of("--", "echo", "hi") == {"command": ["echo", "hi"]}


def test_run_without_dashdash_keeps_the_command_options() -> None:
    assert body_of("-d", "ls", "-la", "/tmp") == {"command": ["ls", "-la", "/tmp"]}


def test_run_options_after_dashdash_belong_to_the_command() -> None:
    assert body_of("--", "sh", "--rm", "-d") == {"command": ["sh", "--rm", "-d"]}


def test_run_image_with_or_without_a_command() -> None:
    assert body_of("--image", "python:3") == {"image": "python:3"}
    assert body_of("--image", "python:3", "--", "id") == {"image": "python:3", "command": ["id"]}
    assert body_of("--image", "x", "--entrypoint", "/bin/sh", "--", "-c", "id") == {
        "image": "x",
        "entrypoint": ["/bin/sh"],
        "command": ["-c", "id"],
    }
    assert body_of("--image", "x", "--entrypoint", "") == {"image": "x", "entrypoint": []}
    with pytest.raises(UsageError):
        body_of("--name", "x")  # the host image needs a command


def test_run_every_option() -> None:
    body = body_of(
        *("--name", "job1", "--profile", "small", "--cpus", "0.5", "--memory", "512m"),
        *("--swap", "0", "--pids", "64", "--disk", "1g"),
        *("--device-read-bps", "/dev/vda:1mb", "--device-read-bps", "/dev/vdb:2mb"),
        *("--device-write-bps", "/dev/vda:1mb", "--device-read-iops", "/dev/vda:100"),
        *("--device-write-iops", "/dev/vda:50"),
        *("-v", "/srv/data:/data:ro", "-v", "/srv/out:/out"),
        *("-e", "A=1", "-e", "B=x=y", "-w", "/tmp", "--user", "bob", "--network", "none"),
        *("--label", "team=ml", "--label", "empty=", "-i"),
        *("--", "python3", "-c", "print(1)"),
    )
    assert body == {
        "command": ["python3", "-c", "print(1)"],
        "name": "job1",
        "profile": "small",
        "cpus": 0.5,
        "memory": "512m",
        "swap": "0",
        "disk": "1g",
        "pids": 64,
        "workdir": "/tmp",
        "user": "bob",
        "network": "none",
        "device_read_bps": ["/dev/vda:1mb", "/dev/vdb:2mb"],
        "device_write_bps": ["/dev/vda:1mb"],
        "device_read_iops": ["/dev/vda:100"],
        "device_write_iops": ["/dev/vda:50"],
        "volumes": ["/srv/data:/data:ro", "/srv/out:/out"],
        "env": ["A=1", "B=x=y"],
        "labels": {"team": "ml", "empty": ""},
        "stdin": True,
    }


def test_run_sizes_are_sent_as_typed() -> None:
    assert body_of("--memory", "1.5G", "--", "true")["memory"] == "1.5G"


def test_run_detach_rm_asks_the_daemon_to_auto_remove() -> None:
    assert body_of("-d", "--rm", "--", "true")["auto_remove"] is True


def test_run_rm_while_attached_removes_client_side() -> None:
    assert "auto_remove" not in body_of("--rm", "--", "true")


def test_run_env_without_value_comes_from_our_environment() -> None:
    body = body_of("-e", "HOME", "-e", "UNSET", "--", "env", environ={"HOME": "/root"})
    assert body["env"] == ["HOME=/root"]


@pytest.mark.parametrize(
    "argv", [["--label", "novalue", "--", "true"], ["--label", "=x", "--", "true"], ["-d"]]
)
def test_run_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        body_of(*argv)


def test_global_options_work_after_the_command() -> None:
    args = build_parser().parse_args(["--url", "http://a", "ps", "--url", "http://b", "-a"])
    assert args.url == "http://b" and args.all
    args = build_parser().parse_args(["--token", "t1", "ps"])
    assert args.token == "t1" and args.token_file is None


def test_quota_set_body_has_only_what_was_given() -> None:
    args = build_parser().parse_args(["quota", "set", "alice", "--memory", "8g", "--cpus", "2"])
    assert quota_request(args) == {"memory": "8g", "cpus": 2.0}
    with pytest.raises(UsageError):
        quota_request(build_parser().parse_args(["quota", "set", "alice"]))


# -- status strings and tables --------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (86400 * 3, "3d"),
        (-5, "0s"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_running() -> None:
    model = {"state": "running", "started": iso(timedelta(minutes=3, seconds=10))}
    assert status_string(model, NOW) == "Up 3m"


def test_status_exited() -> None:
    model = {"state": "exited", "exit_code": 0, "finished": iso(timedelta(minutes=2))}
    assert status_string(model, NOW) == "Exited (0) 2m ago"


def test_status_oom_killed_shows_the_reason_once() -> None:
    model = {
        "state": "exited",
        "exit_code": 137,
        "oom_killed": True,
        "reason": "OOM-killed: memory limit 64MiB",
        "finished": iso(timedelta(hours=2)),
    }
    assert status_string(model, NOW) == "Exited (137) 2h ago (OOM-killed: memory limit 64MiB)"
    model["reason"] = "killed by signal 9"
    assert status_string(model, NOW).endswith("(OOM killed: killed by signal 9)")


def test_status_created_and_unknown_times() -> None:
    assert status_string({"state": "created"}, NOW) == "Created"
    assert status_string({"state": "running", "started": None}, NOW) == "Up"
    assert status_string({"state": "exited", "exit_code": None}, NOW) == "Exited (?)"


def test_ps_row_truncates_id_and_command() -> None:
    model = {
        "id": "3f2a9c1e0b7d4a55",
        "name": "sbx-3f2a9c1e",
        "user": "alice",
        "state": "running",
        "started": iso(timedelta(seconds=5)),
        "command": ["python3", "-c", "print('a rather long program text here')"],
    }
    row = ps_row(model, NOW)
    assert row[:5] == ["3f2a9c1e0b7d", "sbx-3f2a9c1e", "alice", "running", "Up 5s"]
    assert len(row[5]) == 30 and row[5].startswith("python3 -c ") and row[5].endswith("…")


STATS = {
    "id": "3f2a9c1e0b7d4a55",
    "name": "sbx-3f2a9c1e",
    "cpu_percent": 49.8,
    "memory_usage": int(12.3 * 1024**2),
    "memory_limit": 64 * 1024**2,
    "memory_percent": 19.21875,
    "pids_current": 3,
    "pids_limit": 64,
    "io_read_bytes": int(1.2 * 1024**2),
    "io_write_bytes": 0,
}


def test_stats_row_like_docker() -> None:
    assert stats_row(STATS) == [
        "3f2a9c1e0b7d",
        "sbx-3f2a9c1e",
        "49.80%",
        "12.3MiB / 64MiB",
        "19.22%",
        "-",
        "1.2MiB / 0B",
        "3 / 64",
    ]
    bridged = {**STATS, "net_rx_bytes": 2048, "net_tx_bytes": 3 * 1024 * 1024}
    assert stats_row(bridged)[5] == "2KiB / 3MiB"


def test_stats_row_without_limits() -> None:
    row = stats_row({**STATS, "memory_limit": None, "pids_limit": None, "memory_percent": None})
    assert row[3] == "12.3MiB / -" and row[4] == "-" and row[7] == "3 / -"


def test_stats_table_aligns_columns() -> None:
    lines = stats_table([STATS, {**STATS, "id": "ab", "name": "n"}]).splitlines()
    assert lines[0].startswith("ID             NAME           CPU %")
    assert lines[0].index("CPU %") == lines[1].index("49.80%") == lines[2].index("49.80%")


def test_format_table_strips_trailing_space() -> None:
    assert format_table(("A", "B"), [["xyz", ""]]) == "A     B\nxyz"


@pytest.mark.parametrize(
    ("result", "code"),
    [
        ({"exit_code": 0, "oom_killed": False}, 0),
        ({"exit_code": 3, "oom_killed": False}, 3),
        ({"exit_code": 1, "oom_killed": True}, 137),
        ({"exit_code": None, "oom_killed": False}, EXIT_DAEMON),
    ],
)
def test_exit_code_of(result: dict, code: int) -> None:
    assert exit_code_of(result) == code


# -- token and URL resolution ---------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("flag", "env", "admin"):
        out[name] = tmp_path / name
        out[name].write_text(f"{name}-file-token\n")
    return out


def test_token_flag_wins(files: dict[str, Path]) -> None:
    env = {"SANDBOXD_TOKEN": "env-token", "SANDBOXD_TOKEN_FILE": str(files["env"])}
    assert resolve_token("flag-token", str(files["flag"]), env, files["admin"]) == "flag-token"


def test_token_file_flag_beats_env(files: dict[str, Path]) -> None:
    env = {"SANDBOXD_TOKEN": "env-token"}
    assert resolve_token(None, str(files["flag"]), env, files["admin"]) == "flag-file-token"


def test_token_env_beats_files(files: dict[str, Path]) -> None:
    env = {"SANDBOXD_TOKEN": "env-token", "SANDBOXD_TOKEN_FILE": str(files["env"])}
    assert resolve_token(None, None, env, files["admin"]) == "env-token"
    env = {"SANDBOXD_TOKEN_FILE": str(files["env"])}
    assert resolve_token(None, None, env, files["admin"]) == "env-file-token"


def test_token_falls_back_to_admin_file_then_none(files: dict[str, Path]) -> None:
    assert resolve_token(None, None, {}, files["admin"]) == "admin-file-token"
    assert resolve_token(None, None, {}, files["admin"].with_name("missing")) is None


def test_unreadable_explicit_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read token file"):
        resolve_token(None, str(tmp_path / "missing"), {}, tmp_path / "admin")


def test_url_resolution() -> None:
    assert resolve_url("http://flag", {"SANDBOXD_URL": "http://env"}) == "http://flag"
    assert resolve_url(None, {"SANDBOXD_URL": "http://env"}) == "http://env"
    assert resolve_url(None, {}) == "http://127.0.0.1:8890"


# -- errors ---------------------------------------------------------------------------------


def test_error_from_json_body() -> None:
    err = error_from_response(429, b'{"reason": "quota", "message": "too many sandboxes"}')
    assert (err.status, err.reason, str(err)) == (429, "quota", "too many sandboxes (quota)")


def test_error_from_html_body_is_one_line() -> None:
    err = error_from_response(502, b"<html><body>Bad Gateway</body></html>", "GET /api/status")
    assert str(err) == "GET /api/status: HTTP 502 (http-502)"


def test_unreachable_daemon_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    code = main(["--url", "http://127.0.0.1:1", "--token", "t", "ps"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("sandboxctl: error: cannot reach sandboxd at http://127.0.0.1:1")
    assert err.rstrip().endswith("(unreachable)")


def test_run_failures_exit_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://127.0.0.1:1", "--token", "t", "run", "--", "true"]) == 125
    assert main(["--url", "http://127.0.0.1:1", "--token", "t", "run"]) == 125
    assert capsys.readouterr().err.count("sandboxctl: error:") == 2


def test_client_sends_the_token_header() -> None:
    assert Client("http://x/", "abc").headers["Authorization"] == "token abc"
    assert "Authorization" not in Client("http://x", None).headers
    assert Client("http://x/", None).url == "http://x"


def test_api_error_str() -> None:
    assert str(ApiError(404, "not-found", "no sandbox 'x'")) == "no sandbox 'x' (not-found)"
