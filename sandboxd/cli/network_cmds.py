"""``sandboxctl network ls|create|inspect|rm``: the caller's networks (``--user`` for admins)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .client import Client
from .common import for_each

HEADERS = ("NAME", "SUBNET", "GATEWAY", "BRIDGE", "SANDBOXES", "USER")


def network_row(model: dict[str, Any]) -> list[str]:
    return [
        str(model.get("name", "")),
        str(model.get("subnet", "")),
        str(model.get("gateway", "")),
        str(model.get("bridge", "")),
        str(len(model.get("sandboxes") or {})),
        str(model.get("user", "")),
    ]


def _params(args: argparse.Namespace) -> dict[str, str] | None:
    return {"user": args.user} if getattr(args, "user", None) else None


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    from .tables import format_table

    nets = client.request("GET", "/api/networks", params=_params(args))
    if args.json:
        print(json.dumps(nets, indent=2))
    else:
        print(format_table(HEADERS, [network_row(n) for n in nets]))
    return 0


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    body = {"name": args.name, **({"user": args.user} if args.user else {})}
    net = client.request("POST", "/api/networks", body=body)
    print(net["name"], net["subnet"])
    return 0


def cmd_inspect(client: Client, args: argparse.Namespace) -> int:
    out: list[Any] = []
    code = for_each(
        args.names,
        lambda name: out.append(
            client.request("GET", f"/api/networks/{name}", params=_params(args))
        ),
    )
    print(json.dumps(out, indent=2))
    return code


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    def remove(name: str) -> None:
        client.request("DELETE", f"/api/networks/{name}", params=_params(args))
        print(name)

    return for_each(args.names, remove)


Command = Callable[
    [Any, str, Callable[[Client, argparse.Namespace], int], str], argparse.ArgumentParser
]


def add_network_commands(sub: Any, command: Command) -> None:
    """Wire ``network`` into sandboxctl's parser (``command`` is its ``_command`` helper)."""
    p = sub.add_parser("network", help="manage your networks", description="manage networks")
    nsub = p.add_subparsers(title="network commands", metavar="COMMAND", dest="network_cmd")
    nsub.required = True
    c = command(nsub, "ls", cmd_ls, "list networks")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--user", help="admin only: that user's networks")
    c = command(nsub, "create", cmd_create, "create a network (a bridge and a subnet)")
    c.add_argument("name")
    c.add_argument("--user", help="admin only: for that user")
    c = command(nsub, "inspect", cmd_inspect, "show networks as JSON")
    c.add_argument("names", nargs="+", metavar="NAME")
    c.add_argument("--user", help="admin only: that user's network")
    c = command(nsub, "rm", cmd_rm, "remove unused networks")
    c.add_argument("names", nargs="+", metavar="NAME")
    c.add_argument("--user", help="admin only: that user's network")
