"""``sandboxctl``: the docker-like command-line client of sandboxd.

Why it looks like this: people who know ``docker run/ps/stats/logs`` should feel at home, and
scripts should be able to rely on it. So ``run`` propagates the command's exit code (125 when
sandboxd itself refused or failed), every listing takes ``--json``, and every failure is one
line ``sandboxctl: error: <message> (<reason>)`` on stderr, never a traceback.

The pure parts (argv → request body, status strings, the stats table, token resolution) are
plain functions so they can be unit-tested without a daemon; the command functions only call
``Client`` and print.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxd.cli.client import ApiError, Client, Json
from sandboxd.cli.image_cmds import add_image_commands
from sandboxd.cli.kernel_cmds import add_kernel_commands
from sandboxd.cli.network_cmds import add_network_commands
from sandboxd.cli.volume_cmds import add_volume_commands
from sandboxd.units import format_size

DEFAULT_URL = "http://127.0.0.1:8890"
DEFAULT_TOKEN_FILE = Path("/var/lib/sandboxd/sbx/admin-token")

#: Exit code when sandboxd refused or failed a ``run`` (as docker does).
EXIT_DAEMON = 125
#: Exit code of a command killed by the OOM killer (128 + SIGKILL).
EXIT_OOM = 137
EXIT_INTERRUPTED = 130

COMMAND_WIDTH = 30


class UsageError(Exception):
    """A bad argument found after argparse (e.g. a label without ``=``)."""

    reason = "usage"


# -- token resolution -----------------------------------------------------------------------


def read_token_file(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror or exc}") from exc


def resolve_token(
    token: str | None,
    token_file: str | None,
    env: Mapping[str, str],
    default_file: Path = DEFAULT_TOKEN_FILE,
) -> str | None:
    """Pick the token: ``--token`` > ``--token-file`` > ``$SANDBOXD_TOKEN`` >
    ``$SANDBOXD_TOKEN_FILE`` > the admin token file if it is readable > none."""
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if env.get("SANDBOXD_TOKEN"):
        return env["SANDBOXD_TOKEN"]
    if env.get("SANDBOXD_TOKEN_FILE"):
        return read_token_file(env["SANDBOXD_TOKEN_FILE"])
    if os.access(default_file, os.R_OK):
        try:
            return default_file.read_text().strip() or None
        except OSError:
            return None
    return None


def resolve_url(url: str | None, env: Mapping[str, str]) -> str:
    return url or env.get("SANDBOXD_URL") or DEFAULT_URL


# -- run: arguments → request body ----------------------------------------------------------


def _key_values(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _env_list(items: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """``-e K=V`` as given; ``-e K`` takes K from our own environment (skipped if unset)."""
    out = []
    for item in items:
        if "=" in item:
            out.append(item)
        elif item in environ:
            out.append(f"{item}={environ[item]}")
    return out


def command_of(args: argparse.Namespace) -> list[str]:
    """The argv after ``--``; may be empty with ``--image`` (the image's Cmd runs)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command and not getattr(args, "image", None):
        raise UsageError("run: a command is required (sandboxctl run [OPTIONS] -- CMD...)")
    return command


_RUN_SCALARS = {
    "name": "name",
    "profile": "profile",
    "cpus": "cpus",
    "memory": "memory",
    "swap": "swap",
    "disk": "disk",
    "pids": "pids",
    "workdir": "workdir",
    "user": "user",
    "network": "network",
    "image": "image",
}
_RUN_LISTS = {
    "device_read_bps": "device_read_bps",
    "device_write_bps": "device_write_bps",
    "device_read_iops": "device_read_iops",
    "device_write_iops": "device_write_iops",
    "volumes": "volumes",
    "ports": "ports",
}


def run_request(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Json:
    """The ``POST /api/sandboxes`` body for ``sandboxctl run``; unset options are left out so
    the profile's defaults apply. Sizes go as typed (``512m``): the daemon parses them."""
    body: Json = {}
    command = command_of(args)
    if command:
        body["command"] = command
    if getattr(args, "entrypoint", None) is not None:  # docker's --entrypoint: "" clears it
        body["entrypoint"] = [args.entrypoint] if args.entrypoint else []
    for attr, field in _RUN_SCALARS.items():
        value = getattr(args, attr, None)
        if value is not None:
            body[field] = value
    for attr, field in _RUN_LISTS.items():
        if getattr(args, attr, None):
            body[field] = list(getattr(args, attr))
    if args.env:
        body["env"] = _env_list(args.env, os.environ if environ is None else environ)
    if args.label:
        body["labels"] = _key_values(args.label, "label")
    if args.interactive:
        body["stdin"] = True
    if args.detach and args.rm:
        body["auto_remove"] = True
    return body


# -- formatting -----------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """Compact, one unit, like ``docker ps`` but short: ``45s``, ``3m``, ``2h``, ``5d``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _since(value: str | None, now: datetime) -> str | None:
    when = parse_time(value)
    return None if when is None else human_duration((now - when).total_seconds())


def status_string(model: Json, now: datetime | None = None) -> str:
    """``Up 3m``, ``Created``, ``Exited (0) 2m ago``, ``Exited (137) 1h ago (OOM killed …)``."""
    now = now or datetime.now(UTC)
    state = model.get("state")
    if state == "running":
        since = _since(model.get("started"), now)
        return f"Up {since}" if since else "Up"
    if state == "created":
        return "Created"
    if state != "exited":
        return str(state or "unknown").capitalize()
    code = model.get("exit_code")
    text = f"Exited ({'?' if code is None else code})"
    ago = _since(model.get("finished"), now)
    if ago:
        text += f" {ago} ago"
    if model.get("oom_killed"):
        text += f" ({oom_reason(model.get('reason'))})"
    return text


def oom_reason(reason: str | None) -> str:
    """Say "OOM" exactly once, whether or not the daemon's reason already does."""
    if not reason:
        return "OOM killed"
    return reason if "oom" in reason.lower() else f"OOM killed: {reason}"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like docker's tables."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def ps_row(model: Json, now: datetime | None = None) -> list[str]:
    command = shlex.join(model.get("command") or [])
    return [
        str(model.get("id", ""))[:12],
        str(model.get("name", "")),
        str(model.get("user", "")),
        str(model.get("state", "")),
        status_string(model, now),
        truncate(command, COMMAND_WIDTH),
    ]


PS_HEADERS = ("ID", "NAME", "USER", "STATE", "STATUS", "COMMAND")
STATS_HEADERS = (
    "ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
)


def _size_or_dash(value: Any) -> str:
    return format_size(value) if isinstance(value, (int, float)) else "-"


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "-"


def stats_row(stats: Json) -> list[str]:
    """One ``docker stats`` line: limits that are unset show as ``-`` rather than a number."""
    memory_limit = stats.get("memory_limit")
    limit = _size_or_dash(memory_limit) if memory_limit else "-"
    pids_limit = stats.get("pids_limit")
    return [
        str(stats.get("id", ""))[:12],
        str(stats.get("name", "")),
        _percent(stats.get("cpu_percent")),
        f"{_size_or_dash(stats.get('memory_usage'))} / {limit}",
        _percent(stats.get("memory_percent")),
        _net_io(stats),
        _block_io(stats),
        f"{stats.get('pids_current', '-')} / {pids_limit if pids_limit else '-'}",
    ]


def _net_io(stats: Json) -> str:
    """Received / sent by the sandbox (its veth); ``-`` without a network of its own."""
    rx, tx = stats.get("net_rx_bytes"), stats.get("net_tx_bytes")
    if rx is None and tx is None:
        return "-"
    return f"{_size_or_dash(rx)} / {_size_or_dash(tx)}"


def _block_io(stats: Json) -> str:
    read, write = stats.get("io_read_bytes"), stats.get("io_write_bytes")
    return f"{_size_or_dash(read)} / {_size_or_dash(write)}"


def stats_table(stats: Sequence[Json]) -> str:
    return format_table(STATS_HEADERS, [stats_row(s) for s in stats])


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def error_line(message: str) -> None:
    print(f"sandboxctl: error: {message}", file=sys.stderr, flush=True)


# -- run and attach -------------------------------------------------------------------------


def exit_code_of(result: Json) -> int:
    """The code ``run`` exits with, from an exit frame or a wait answer."""
    if result.get("oom_killed"):
        return EXIT_OOM
    code = result.get("exit_code")
    return code if isinstance(code, int) else EXIT_DAEMON


def _pump_stdin(ws: Any, stdin: Any) -> None:
    """Thread body for ``-i``: forward our stdin as ``\\x00`` frames, then ``\\x00`` at EOF."""
    try:
        while True:
            chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            if not chunk:
                break
            ws.send_binary(b"\x00" + chunk)
        ws.send_binary(b"\x00")
    except Exception:  # the socket closed under us: the sandbox has exited
        return


class _Interrupts:
    """SIGINT while attached: the first asks sandboxd to stop the sandbox (we keep reading
    until the exit frame); the second detaches. The stop runs in a thread so the WebSocket
    read is never torn mid-frame."""

    def __init__(self, client: Client, ref: str) -> None:
        self.client, self.ref, self.count = client, ref, 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        print("sandboxctl: stopping the sandbox…", file=sys.stderr, flush=True)
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        try:
            self.client.stop_sandbox(self.ref)
        except ApiError as exc:
            error_line(str(exc))


def _write(stream: Any, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def receive_until_exit(ws: Any) -> Json | None:
    """Copy output frames to our stdout/stderr; return the exit frame (None if none came)."""
    import websocket

    while True:
        try:
            opcode, data = ws.recv_data()
        except (websocket.WebSocketException, OSError):
            return None  # the connection dropped: the caller asks ``wait`` instead
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return json.loads(data)
        if data[:1] == b"\x01":
            _write(sys.stdout.buffer, data[1:])
        elif data[:1] == b"\x02":
            _write(sys.stderr.buffer, data[1:])


def attach(client: Client, ref: str, interactive: bool) -> int:
    """Stream the sandbox's output until it exits; return its exit code."""
    ws = client.attach(ref)
    if interactive:
        threading.Thread(target=_pump_stdin, args=(ws, sys.stdin.buffer), daemon=True).start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _Interrupts(client, ref)) if in_main else None
    try:
        result = receive_until_exit(ws)
        if result is None:  # closed without an exit frame: ask for it
            result = client.wait_sandbox(ref)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        ws.close()
    return exit_code_of(result)


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    model = client.create_sandbox(run_request(args))
    sandbox_id = model["id"]
    if args.detach:
        print(sandbox_id)
        return 0
    try:
        return attach(client, sandbox_id, args.interactive)
    except KeyboardInterrupt:
        error_line(f"detached; sandbox {sandbox_id} may still be running")
        return EXIT_INTERRUPTED
    finally:
        if args.rm:
            _remove_quietly(client, sandbox_id)


def _remove_quietly(client: Client, sandbox_id: str) -> None:
    try:
        client.remove_sandbox(sandbox_id, force=True)
    except ApiError as exc:
        if exc.status != 404:  # already gone (e.g. auto-removed) is fine
            error_line(f"could not remove {sandbox_id}: {exc}")


# -- other commands -------------------------------------------------------------------------


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    sandboxes = client.list_sandboxes(include_exited=args.all)
    if args.json:
        print_json(sandboxes)
    else:
        now = datetime.now(UTC)
        print(format_table(PS_HEADERS, [ps_row(s, now) for s in sandboxes]))
    return 0


def for_each(refs: Sequence[str], action: Callable[[str], None]) -> int:
    """Apply ``action`` to every ref; report failures one line each, exit 1 if any failed."""
    failed = False
    for ref in refs:
        try:
            action(ref)
        except ApiError as exc:
            error_line(f"{ref}: {exc}")
            failed = True
    return 1 if failed else 0


def cmd_inspect(client: Client, args: argparse.Namespace) -> int:
    found: list[Json] = []
    code = for_each(args.ids, lambda ref: found.append(client.get_sandbox(ref)))
    if found or code == 0:
        print_json(found)
    return code


def cmd_top(client: Client, args: argparse.Namespace) -> int:
    from sandboxd.cli import top

    return top.run(
        client.stats,
        sort=args.sort,
        interval=args.interval,
        iterations=args.iterations,
        limit=args.limit,
    )


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    if args.ids:
        found: list[Json] = []
        code = for_each(args.ids, lambda ref: found.append(client.sandbox_stats(ref)))
    else:
        found, code = client.stats(), 0
    if args.json:
        print_json(found)
    else:
        print(stats_table(found))
    return code


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    logs = client.logs(args.id, tail=args.tail)
    _write(sys.stdout, logs.get("stdout") or "")
    _write(sys.stderr, logs.get("stderr") or "")
    if logs.get("truncated"):
        print("sandboxctl: note: the logs were truncated by sandboxd", file=sys.stderr)
    return 0


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    def stop(ref: str) -> None:
        client.stop_sandbox(ref, timeout=args.time)
        print(ref)

    return for_each(args.ids, stop)


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    def remove(ref: str) -> None:
        client.remove_sandbox(ref, force=args.force)
        print(ref)

    return for_each(args.ids, remove)


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    return for_each(args.ids, lambda ref: print(exit_code_of(client.wait_sandbox(ref))))


def cmd_user_add(client: Client, args: argparse.Namespace) -> int:
    user = client.create_user(args.name, admin=args.admin, service=args.service)
    print(user["token"])
    return 0


def cmd_user_ls(client: Client, args: argparse.Namespace) -> int:
    users = client.list_users()
    if args.json:
        print_json(users)
        return 0
    rows = [
        [u.get("name", ""), u.get("uid", ""), _yes(u.get("admin")), _yes(u.get("service")),
         u.get("created", "")]
        for u in users
    ]  # fmt: skip
    print(format_table(("NAME", "UID", "ADMIN", "SERVICE", "CREATED"), rows))
    return 0


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def cmd_user_rm(client: Client, args: argparse.Namespace) -> int:
    client.remove_user(args.name)
    return 0


def cmd_user_token(client: Client, args: argparse.Namespace) -> int:
    print(client.new_token(args.name)["token"])
    return 0


def _limit(value: Any, size: bool = False) -> str:
    if value is None:
        return "unlimited"
    return format_size(value) if size and isinstance(value, (int, float)) else str(value)


def quota_table(model: Json) -> str:
    quota, usage = model.get("quota") or {}, model.get("usage") or {}
    rows = [
        ["sandboxes", _limit(usage.get("sandboxes")), _limit(quota.get("max_sandboxes"))],
        ["kernels", _limit(usage.get("kernels")), _limit(quota.get("max_kernels"))],
        ["memory", _limit(usage.get("memory"), True), _limit(quota.get("memory"), True)],
        ["cpus", _limit(usage.get("cpus")), _limit(quota.get("cpus"))],
    ]
    title = f"user {model.get('user', '?')} (quota from {model.get('source', '?')})"
    return title + "\n" + format_table(("RESOURCE", "USAGE", "QUOTA"), rows)


def _show_quota(model: Json | None, as_json: bool) -> None:
    if model is None:
        return
    if as_json:
        print_json(model)
    else:
        print(quota_table(model))


def cmd_quota_get(client: Client, args: argparse.Namespace) -> int:
    _show_quota(client.get_quota(args.user), args.json)
    return 0


def quota_request(args: argparse.Namespace) -> Json:
    body: Json = {}
    for field in ("max_sandboxes", "max_kernels", "memory", "cpus"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if not body:
        raise UsageError(
            "quota set: give at least one of --max-sandboxes, --max-kernels, --memory, --cpus"
        )
    return body


def cmd_quota_set(client: Client, args: argparse.Namespace) -> int:
    _show_quota(client.set_quota(args.user, quota_request(args)), args.json)
    return 0


def cmd_quota_reset(client: Client, args: argparse.Namespace) -> int:
    _show_quota(client.reset_quota(args.user), args.json)
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        print_json(status)
    else:
        width = max((len(k) for k in status), default=0)
        for key, value in status.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


# -- argument parser ------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``--url/--token/--token-file`` work before or after the command; under a command they
    default to SUPPRESS so they do not overwrite a value given before it."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default, help="sandboxd URL ($SANDBOXD_URL)")
    parser.add_argument("--token", default=default, help="API token ($SANDBOXD_TOKEN)")
    parser.add_argument(
        "--token-file", default=default, help="file holding the token ($SANDBOXD_TOKEN_FILE)"
    )


def _command(
    sub: Any, name: str, func: Callable[[Client, argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    _global_options(parser, suppress=True)
    parser.set_defaults(func=func)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_run(sub: Any) -> None:
    p = _command(sub, "run", cmd_run, "run a command in a new sandbox")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("--rm", action="store_true", help="remove the sandbox when it exits")
    p.add_argument("--name")
    p.add_argument("--profile")
    p.add_argument(
        "--image", help="host (built-in) or an image of the store: NAME[:TAG], NAME@DIGEST, ID"
    )
    p.add_argument(
        "--entrypoint",
        metavar="CMD",
        help='replace the image\'s Entrypoint (and drop its Cmd); "" clears it',
    )
    p.add_argument("--cpus", type=float)
    p.add_argument("--memory", help="e.g. 512m")
    p.add_argument("--swap", help="swap beyond memory, e.g. 0")
    p.add_argument("--pids", type=int)
    p.add_argument("--disk", help="e.g. 1g")
    for flag in ("read-bps", "write-bps", "read-iops", "write-iops"):
        p.add_argument(f"--device-{flag}", action="append", default=[], metavar="DEV:RATE")
    p.add_argument(
        "-v",
        "--volume",
        dest="volumes",
        action="append",
        default=[],
        metavar="NAME[/SUBPATH]:TARGET[:ro]",
        help="bind one of your volumes (made if missing), or a path in it; an absolute host "
        "path instead of NAME needs an admin token",
    )
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-w", "--workdir")
    p.add_argument("--user", help="admin only: run for this user")
    p.add_argument(
        "--network", help="bridge (default), a network name, none, host, container:ID, macvlan"
    )
    p.add_argument(
        "-p",
        "--publish",
        dest="ports",
        action="append",
        default=[],
        metavar="[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]",
        help="publish a port",
    )
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")


def _add_sandbox_commands(sub: Any) -> None:
    p = _command(sub, "ps", cmd_ps, "list sandboxes")
    p.add_argument("-a", "--all", action="store_true", help="include exited sandboxes")
    _json_flag(p)
    p = _command(sub, "inspect", cmd_inspect, "show everything known about sandboxes (JSON)")
    p.add_argument("ids", nargs="+", metavar="ID")
    _json_flag(p)
    p = _command(sub, "stats", cmd_stats, "resource usage of running sandboxes")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--no-stream", action="store_true", help="accepted; output is one-shot")
    _json_flag(p)
    p = _command(sub, "top", cmd_top, "live view of running sandboxes, refreshed")
    p.add_argument("-s", "--sort", choices=("cpu", "mem", "pids", "io"), default="cpu")
    p.add_argument("-d", "--interval", type=float, default=2.0, help="seconds between screens")
    p.add_argument("-n", "--iterations", type=int, help="stop after N screens")
    p.add_argument("--limit", type=int, help="show at most N sandboxes")
    p = _command(sub, "logs", cmd_logs, "print a sandbox's output")
    p.add_argument("id", metavar="ID")
    p.add_argument("--tail", type=int)
    p = _command(sub, "stop", cmd_stop, "stop sandboxes")
    p.add_argument("-t", "--time", type=float, help="seconds before SIGKILL")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = _command(sub, "rm", cmd_rm, "remove sandboxes")
    p.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = _command(sub, "wait", cmd_wait, "wait for sandboxes to exit; print their exit codes")
    p.add_argument("ids", nargs="+", metavar="ID")


def _add_user(sub: Any) -> None:
    users = _command(sub, "user", _needs_subcommand, "manage users (admin)")
    usub = users.add_subparsers(title="user commands", metavar="COMMAND")
    p = _command(usub, "add", cmd_user_add, "create a user; prints its token")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--service", action="store_true")
    p = _command(usub, "ls", cmd_user_ls, "list users")
    _json_flag(p)
    _command(usub, "rm", cmd_user_rm, "remove a user and its sandboxes").add_argument("name")
    _command(usub, "token", cmd_user_token, "issue a new token").add_argument("name")


def _add_quota(sub: Any) -> None:
    quota = _command(sub, "quota", _needs_subcommand, "read and change user quotas")
    qsub = quota.add_subparsers(title="quota commands", metavar="COMMAND")
    p = _command(qsub, "get", cmd_quota_get, "show a user's quota and usage")
    p.add_argument("user")
    _json_flag(p)
    p = _command(qsub, "set", cmd_quota_set, "change a user's quota (stored)")
    p.add_argument("user")
    p.add_argument("--max-sandboxes", type=int)
    p.add_argument("--max-kernels", type=int)
    p.add_argument("--memory", help="e.g. 8g")
    p.add_argument("--cpus", type=float)
    _json_flag(p)
    p = _command(qsub, "reset", cmd_quota_reset, "back to the quota from the config")
    p.add_argument("user")
    _json_flag(p)


def _needs_subcommand(client: Client, args: argparse.Namespace) -> int:
    raise UsageError(f"{args.command_name}: a subcommand is required (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandboxctl", description="Client of sandboxd: run and manage sandboxes."
    )
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command_name")
    sub.required = True
    _add_run(sub)
    _add_sandbox_commands(sub)
    _add_user(sub)
    _add_quota(sub)
    add_network_commands(sub, _command)
    add_volume_commands(sub, _command)
    add_kernel_commands(sub, _command)
    add_image_commands(sub, _command)
    p = _command(sub, "status", cmd_status, "show the daemon's status")
    _json_flag(p)
    return parser


# -- main -----------------------------------------------------------------------------------


def _failure_code(args: argparse.Namespace) -> int:
    return EXIT_DAEMON if getattr(args, "command_name", None) == "run" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        token = resolve_token(args.token, args.token_file, os.environ)
        client = Client(resolve_url(args.url, os.environ), token)
        return args.func(client, args)
    except (ApiError, UsageError) as exc:
        error_line(str(exc) if isinstance(exc, ApiError) else f"{exc} ({exc.reason})")
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except OSError as exc:  # should be mapped by Client; never a traceback
        error_line(f"request failed: {exc} (request-failed)")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return _failure_code(args)


def _silence_stdout() -> None:
    """After a closed pipe (``sandboxctl ps | head``), stop Python's flush at exit failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
