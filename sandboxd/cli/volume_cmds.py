"""``sandboxctl volume ls|create|inspect|rm``: your persistent volumes (``--user`` for admins
and services). A sandbox binds one by name: ``sandboxctl run -v NAME[/SUBPATH]:TARGET[:ro]``."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .client import Client
from .common import for_each

HEADERS = ("NAME", "USER", "MODE", "MODIFIED", "HOST PATH")


def _owner(client: Client, args: argparse.Namespace) -> str:
    return args.user or client.request("GET", "/api/whoami")["name"]


def volume_row(model: dict[str, Any]) -> list[str]:
    modified = datetime.datetime.fromtimestamp(model.get("modified", 0), datetime.UTC)
    return [
        str(model.get("name", "")),
        str(model.get("user", "")),
        str(model.get("mode", "")),
        modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
        str(model.get("host", "")),
    ]


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    from .tables import format_table

    user = _owner(client, args)
    vols = client.request("GET", f"/api/users/{user}/volumes")
    if args.json:
        print(json.dumps(vols, indent=2))
    else:
        print(format_table(HEADERS, [volume_row(v) for v in vols]))
    return 0


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    user = _owner(client, args)
    model = client.request("PUT", f"/api/users/{user}/volumes/{quote(args.name)}")
    print(json.dumps(model, indent=2) if args.json else model["name"])
    return 0


def cmd_inspect(client: Client, args: argparse.Namespace) -> int:
    user = _owner(client, args)
    out: list[Any] = []
    code = for_each(
        args.names,
        lambda name: out.append(client.request("GET", f"/api/users/{user}/volumes/{quote(name)}")),
    )
    print(json.dumps(out, indent=2))
    return code


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    user = _owner(client, args)
    params = {"force": "1"} if args.force else None

    def remove(name: str) -> None:
        client.request("DELETE", f"/api/users/{user}/volumes/{quote(name)}", params=params)
        print(name)

    return for_each(args.names, remove)


Command = Callable[
    [Any, str, Callable[[Client, argparse.Namespace], int], str], argparse.ArgumentParser
]


def add_volume_commands(sub: Any, command: Command) -> None:
    """Wire ``volume`` into sandboxctl's parser (``command`` is its ``_command`` helper)."""
    p = sub.add_parser(
        "volume",
        help="manage your persistent volumes",
        description="Persistent volumes: <volume root>/<user>/<name>, owned by you. Bind one "
        "with `run -v NAME[/SUBPATH]:TARGET[:ro]`.",
    )
    vsub = p.add_subparsers(title="volume commands", metavar="COMMAND", dest="volume_cmd")
    vsub.required = True
    c = command(vsub, "ls", cmd_ls, "list volumes")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--user", help="admin or service: that user's volumes")
    c = command(vsub, "create", cmd_create, "create a volume (nothing happens if it exists)")
    c.add_argument("name")
    c.add_argument("--json", action="store_true", help="print the volume as JSON")
    c.add_argument("--user", help="admin or service: for that user")
    c = command(vsub, "inspect", cmd_inspect, "show volumes as JSON")
    c.add_argument("names", nargs="+", metavar="NAME")
    c.add_argument("--user", help="admin or service: that user's volume")
    c = command(vsub, "rm", cmd_rm, "remove volumes and everything in them")
    c.add_argument("names", nargs="+", metavar="NAME")
    c.add_argument("-f", "--force", action="store_true", help="even while a sandbox binds it")
    c.add_argument("--user", help="admin or service: that user's volume")
