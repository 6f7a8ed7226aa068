"""The sandbox, user, quota and status commands: argv → one request → a printed answer.

``run_request`` (argv → the create body) is a pure function, unit-tested without a daemon."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sandboxd.cli.attach import attach, exit_code_of, write_out
from sandboxd.cli.client import ApiError, Client, Json
from sandboxd.cli.common import EXIT_INTERRUPTED, UsageError, error_line, for_each, print_json
from sandboxd.cli.tables import (
    PS_HEADERS,
    format_table,
    ps_row,
    quota_table,
    stats_table,
    yes_no,
)


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


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    sandboxes = client.list_sandboxes(include_exited=args.all)
    if args.json:
        print_json(sandboxes)
    else:
        now = datetime.now(UTC)
        print(format_table(PS_HEADERS, [ps_row(s, now) for s in sandboxes]))
    return 0


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
    write_out(sys.stdout, logs.get("stdout") or "")
    write_out(sys.stderr, logs.get("stderr") or "")
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
        [u.get("name", ""), u.get("uid", ""), yes_no(u.get("admin")), yes_no(u.get("service")),
         u.get("created", "")]
        for u in users
    ]  # fmt: skip
    print(format_table(("NAME", "UID", "ADMIN", "SERVICE", "CREATED"), rows))
    return 0


def cmd_user_rm(client: Client, args: argparse.Namespace) -> int:
    client.remove_user(args.name)
    return 0


def cmd_user_token(client: Client, args: argparse.Namespace) -> int:
    print(client.new_token(args.name)["token"])
    return 0


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
    for field in ("max_sandboxes", "max_kernels", "memory", "cpus", "pids"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if not body:
        raise UsageError(
            "quota set: give at least one of --max-sandboxes, --max-kernels, --memory, --cpus, "
            "--pids"
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


def _needs_subcommand(client: Client, args: argparse.Namespace) -> int:
    raise UsageError(f"{args.command_name}: a subcommand is required (see --help)")
