"""sandboxctl's argument parser: every command, its options and its help text."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sandboxd.cli import commands as c
from sandboxd.cli.client import Client
from sandboxd.cli.image_cmds import add_image_commands
from sandboxd.cli.kernel_cmds import add_kernel_commands
from sandboxd.cli.network_cmds import add_network_commands
from sandboxd.cli.volume_cmds import add_volume_commands


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
    p = _command(sub, "run", c.cmd_run, "run a command in a new sandbox")
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
    p = _command(sub, "ps", c.cmd_ps, "list sandboxes")
    p.add_argument("-a", "--all", action="store_true", help="include exited sandboxes")
    _json_flag(p)
    p = _command(sub, "inspect", c.cmd_inspect, "show everything known about sandboxes (JSON)")
    p.add_argument("ids", nargs="+", metavar="ID")
    _json_flag(p)
    p = _command(sub, "stats", c.cmd_stats, "resource usage of running sandboxes")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--no-stream", action="store_true", help="accepted; output is one-shot")
    _json_flag(p)
    p = _command(sub, "top", c.cmd_top, "live view of running sandboxes, refreshed")
    p.add_argument("-s", "--sort", choices=("cpu", "mem", "pids", "io"), default="cpu")
    p.add_argument("-d", "--interval", type=float, default=2.0, help="seconds between screens")
    p.add_argument("-n", "--iterations", type=int, help="stop after N screens")
    p.add_argument("--limit", type=int, help="show at most N sandboxes")
    p = _command(sub, "logs", c.cmd_logs, "print a sandbox's output")
    p.add_argument("id", metavar="ID")
    p.add_argument("--tail", type=int)
    p = _command(sub, "stop", c.cmd_stop, "stop sandboxes")
    p.add_argument("-t", "--time", type=float, help="seconds before SIGKILL")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = _command(sub, "rm", c.cmd_rm, "remove sandboxes")
    p.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = _command(sub, "wait", c.cmd_wait, "wait for sandboxes to exit; print their exit codes")
    p.add_argument("ids", nargs="+", metavar="ID")


def _add_user(sub: Any) -> None:
    users = _command(sub, "user", c._needs_subcommand, "manage users (admin)")
    usub = users.add_subparsers(title="user commands", metavar="COMMAND")
    p = _command(usub, "add", c.cmd_user_add, "create a user; prints its token")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--service", action="store_true")
    p = _command(usub, "ls", c.cmd_user_ls, "list users")
    _json_flag(p)
    _command(usub, "rm", c.cmd_user_rm, "remove a user and its sandboxes").add_argument("name")
    _command(usub, "token", c.cmd_user_token, "issue a new token").add_argument("name")


def _add_quota(sub: Any) -> None:
    quota = _command(sub, "quota", c._needs_subcommand, "read and change user quotas")
    qsub = quota.add_subparsers(title="quota commands", metavar="COMMAND")
    p = _command(qsub, "get", c.cmd_quota_get, "show a user's quota and usage")
    p.add_argument("user")
    _json_flag(p)
    p = _command(qsub, "set", c.cmd_quota_set, "change a user's quota (stored)")
    p.add_argument("user")
    p.add_argument("--max-sandboxes", type=int)
    p.add_argument("--max-kernels", type=int)
    p.add_argument("--memory", help="e.g. 8g")
    p.add_argument("--cpus", type=float)
    p.add_argument("--pids", type=int, help="processes of all the user's sandboxes together")
    _json_flag(p)
    p = _command(qsub, "reset", c.cmd_quota_reset, "back to the quota from the config")
    p.add_argument("user")
    _json_flag(p)


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
    p = _command(sub, "status", c.cmd_status, "show the daemon's status")
    _json_flag(p)
    return parser
