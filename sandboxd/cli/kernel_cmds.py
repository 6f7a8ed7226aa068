"""``sandboxctl kernel …`` and ``sandboxctl kernelspec …``: kernels from the command line, and a
local kernelspec that uses the ``sandboxd`` kernel provisioner."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from .client import Client

Command = Callable[..., argparse.ArgumentParser]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    )


def _print(data: Any, as_json: bool, render: Callable[[Any], str]) -> int:
    print(json.dumps(data, indent=2) if as_json else render(data))
    return 0


def kernel_rows(kernels: list[dict[str, Any]]) -> str:
    return _table(
        ["KERNEL ID", "NAME", "USER", "STATE", "CONNECTIONS", "LAST ACTIVITY"],
        [
            [
                k["id"],
                k["name"],
                k.get("user", ""),
                k["execution_state"],
                str(k["connections"]),
                k["last_activity"],
            ]
            for k in kernels
        ],
    )


def cmd_kernel_ls(client: Client, args: argparse.Namespace) -> int:
    return _print(client.request("GET", "/api/kernels"), args.json, kernel_rows)


def cmd_kernel_start(client: Client, args: argparse.Namespace) -> int:
    env = dict(item.split("=", 1) for item in args.env or [] if "=" in item)
    model = client.request("POST", "/api/kernels", body={"name": args.name, "env": env})
    return _print(model, args.json, lambda m: m["id"])


def cmd_kernel_inspect(client: Client, args: argparse.Namespace) -> int:
    return _print(client.request("GET", f"/api/kernels/{args.kernel}"), True, str)


def cmd_kernel_interrupt(client: Client, args: argparse.Namespace) -> int:
    client.request("POST", f"/api/kernels/{args.kernel}/interrupt", body={})
    return 0


def cmd_kernel_restart(client: Client, args: argparse.Namespace) -> int:
    model = client.request("POST", f"/api/kernels/{args.kernel}/restart", body={})
    return _print(model, False, lambda m: f"{m['id']} {m['execution_state']}")


def cmd_kernel_rm(client: Client, args: argparse.Namespace) -> int:
    for kernel in args.kernels:
        client.request("DELETE", f"/api/kernels/{kernel}")
        print(kernel)
    return 0


def cmd_kernelspec_ls(client: Client, args: argparse.Namespace) -> int:
    data = client.request("GET", "/api/kernelspecs")

    def render(d: dict[str, Any]) -> str:
        rows = []
        for name, ks in d["kernelspecs"].items():
            meta = (ks["spec"].get("metadata") or {}).get("sandboxd") or {}
            rows.append(
                [
                    name + (" *" if name == d["default"] else ""),
                    ks["spec"].get("display_name", ""),
                    meta.get("profile", "default"),
                ]
            )
        return _table(["NAME", "DISPLAY NAME", "PROFILE"], rows)

    return _print(data, args.json, render)


def install_kernelspec(
    url: str, kernelspec: str, name: str, display_name: str | None, user: bool, prefix: str | None
) -> str:
    """Write a local kernelspec whose kernels run in sandboxd through the provisioner."""
    from jupyter_client.kernelspec import KernelSpecManager

    shipped = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "kernelspec",
        "python3",
    )
    spec = {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name or f"Python 3 (sandboxd: {kernelspec})",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "sandboxd",
                "config": {"url": url, "kernelspec": kernelspec},
            }
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as fh:
            json.dump(spec, fh, indent=1)
        if os.path.isdir(shipped):
            for fname in os.listdir(shipped):
                if fname.startswith("logo"):
                    shutil.copy(os.path.join(shipped, fname), tmp)
        return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)


def cmd_kernelspec_install(client: Client, args: argparse.Namespace) -> int:
    path = install_kernelspec(
        client.url, args.kernelspec, args.name, args.display_name, args.user, args.prefix
    )
    print(f"installed kernelspec {args.name} in {path}")
    return 0


def add_kernel_commands(sub: Any, command: Command) -> None:
    kernel = command(sub, "kernel", _needs_sub, "Jupyter kernels running in sandboxes")
    ksub = kernel.add_subparsers(title="kernel commands", metavar="COMMAND")
    p = command(ksub, "ls", cmd_kernel_ls, "list your kernels")
    p.add_argument("--json", action="store_true")
    p = command(ksub, "start", cmd_kernel_start, "start a kernel; prints its id")
    p.add_argument("name", nargs="?", default=None, help="kernelspec (default: the default)")
    p.add_argument("-e", "--env", action="append", help="KERNEL_*=VALUE")
    p.add_argument("--json", action="store_true")
    for name, func, text in (
        ("inspect", cmd_kernel_inspect, "a kernel's model"),
        ("interrupt", cmd_kernel_interrupt, "SIGINT the kernel"),
        ("restart", cmd_kernel_restart, "a fresh kernel, same id"),
    ):
        p = command(ksub, name, func, text)
        p.add_argument("kernel")
    p = command(ksub, "rm", cmd_kernel_rm, "shut kernels down")
    p.add_argument("kernels", nargs="+")

    spec = command(sub, "kernelspec", _needs_sub, "kernelspecs of the daemon")
    ssub = spec.add_subparsers(title="kernelspec commands", metavar="COMMAND")
    p = command(ssub, "ls", cmd_kernelspec_ls, "list the daemon's kernelspecs")
    p.add_argument("--json", action="store_true")
    p = command(
        ssub,
        "install",
        cmd_kernelspec_install,
        "install a local kernelspec that runs its kernels in sandboxd (provisioner)",
    )
    p.add_argument("--user", action="store_true", help="install for the current user only")
    p.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels")
    p.add_argument("--name", default="sandboxd-python3", help="local kernelspec name")
    p.add_argument("--kernelspec", default="python3", help="the daemon's kernelspec to use")
    p.add_argument("--display-name", default=None)


def _needs_sub(client: Client, args: argparse.Namespace) -> int:
    raise SystemExit("sandboxctl: give a subcommand (see --help)")
