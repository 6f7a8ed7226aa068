"""``sandboxctl image pull|load|ls|inspect|rm|prune``: the daemon's image store.

``pull`` shows per-layer progress like ``docker pull``: redrawn in place on a terminal, one
line per state change otherwise (logs stay short). ``load -i`` takes an archive file (docker
save, OCI archive, maybe gzip/zstd) or an OCI layout directory, which is sent as a tar.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from sandboxd.units import format_size

from .client import ApiError, Client, error_from_response

HEADERS = ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")
STATUS_TEXT = {
    "waiting": "Waiting",
    "exists": "Already exists",
    "downloading": "Downloading",
    "verifying": "Verifying",
    "extracting": "Extracting",
    "complete": "Pull complete",
}
BAR = 30


def _connection(client: Client) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(client.url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=30), parts.path.rstrip("/")


def _send(
    client: Client,
    method: str,
    path: str,
    body: bytes | IO[bytes],
    headers: dict[str, str],
    read_timeout: float | None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn, prefix = _connection(client)
    try:
        conn.connect()
        conn.request(method, prefix + path, body=body, headers={**client.headers, **headers})
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise ApiError(0, "unreachable", f"cannot reach sandboxd at {client.url}: {exc}") from exc
    if resp.status >= 400:
        content = resp.read()
        conn.close()
        raise error_from_response(resp.status, content, f"{method} {path}")
    return conn, resp


def stream_pull(client: Client, ref: str, profile: str | None) -> Iterator[dict[str, Any]]:
    """The progress events of a pull, as the daemon streams them (one JSON object a line)."""
    body = {"ref": ref, "stream": True, **({"profile": profile} if profile else {})}
    conn, resp = _send(
        client,
        "POST",
        "/api/images/pull",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        None,
    )
    try:
        for line in resp:
            if line.strip():
                yield json.loads(line)
    finally:
        conn.close()


class PullDisplay:
    """docker-pull-like lines, one per layer: redrawn in place on a tty, else on changes."""

    def __init__(self, out: IO[str], tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self.last_status: dict[str, str] = {}

    def event(self, event: dict[str, Any]) -> None:
        layer, status = event.get("layer"), event.get("status", "")
        if status == "resolving":
            self._print(f"Pulling {event.get('ref')}")
        elif layer and status in STATUS_TEXT:
            self.lines[layer] = f"{layer}: {self._text(event)}"
            if self.tty:
                self._redraw()
            elif self.last_status.get(layer) != status:
                self._print(self.lines[layer])
            self.last_status[layer] = status

    def _text(self, event: dict[str, Any]) -> str:
        text = STATUS_TEXT[event["status"]]
        total, current = event.get("total") or 0, event.get("current")
        if event["status"] == "downloading" and current is not None and total:
            done = min(BAR, int(BAR * current / total))
            bar = "=" * max(done - 1, 0) + (">" if done < BAR else "=") + " " * (BAR - done)
            text += f" [{bar}] {format_size(current)}/{format_size(total)}"
        return text

    def _redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}A")
        for line in self.lines.values():
            self.out.write(f"\x1b[2K{line}\n")
        self.drawn = len(self.lines)
        self.out.flush()

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()
        if self.tty:
            self.drawn = 0
            self.lines.clear()


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    display = PullDisplay(sys.stdout, sys.stdout.isatty() and not args.quiet and not args.json)
    final: dict[str, Any] | None = None
    for event in stream_pull(client, args.ref, args.profile):
        if event.get("status") in ("done", "error"):
            final = event
        elif not args.quiet and not args.json:
            display.event(event)
    if final is None:
        raise ApiError(0, "interrupted", "the daemon closed the pull stream early")
    if final["status"] == "error":
        raise ApiError(0, final.get("reason", "error"), final.get("message", "pull failed"))
    image = final["image"]
    if args.json:
        print(json.dumps(image, indent=2))
    elif args.quiet:
        print(image["id"])
    else:
        print(f"Digest: {(image.get('digests') or [''])[0].rpartition('@')[2]}")
        print(f"Status: pulled {args.ref} ({image['id'][:19]})")
    return 0


def _tar_of_dir(path: str) -> IO[bytes]:
    fh = tempfile.TemporaryFile()  # noqa: SIM115 - returned, closed by the caller
    with tarfile.open(fileobj=fh, mode="w") as tar:
        tar.add(path, arcname=".")
    fh.seek(0)
    return fh


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    source = args.input
    fh = _tar_of_dir(source) if os.path.isdir(source) else open(source, "rb")  # noqa: SIM115
    try:
        size = os.fstat(fh.fileno()).st_size
        query = f"?{urlencode({'tag': args.tag})}" if args.tag else ""
        conn, resp = _send(
            client,
            "POST",
            f"/api/images/load{query}",
            fh,
            {"Content-Type": "application/x-tar", "Content-Length": str(size)},
            None,
        )
        try:
            answer = json.loads(resp.read())
        finally:
            conn.close()
    finally:
        fh.close()
    if args.json:
        print(json.dumps(answer["images"], indent=2))
    else:
        for image in answer["images"]:
            names = ", ".join(image["names"]) or "(no name)"
            print(f"Loaded image: {names} ({image['id'][:19]})")
    return 0


def _ago(ts: float | None) -> str:
    if not ts:
        return ""
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"


def image_rows(images: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for image in images:
        short = image["id"].split(":", 1)[1][:12]
        for name in image["names"] or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":")
            rows.append([repo, tag, short, _ago(image.get("added")), format_size(image["size"])])
    return rows


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    from .tables import format_table

    images = client.request("GET", "/api/images")
    if args.json:
        print(json.dumps(images, indent=2))
    elif args.quiet:
        print("\n".join(dict.fromkeys(i["id"] for i in images)))
    else:
        print(format_table(HEADERS, image_rows(images)))
    return 0


def _path(ref: str) -> str:
    return f"/api/images/{quote(ref, safe='')}"


def cmd_inspect(client: Client, args: argparse.Namespace) -> int:
    out, code = [], 0
    for ref in args.refs:
        try:
            out.append(client.request("GET", _path(ref)))
        except ApiError as exc:
            print(f"sandboxctl: error: {exc}", file=sys.stderr, flush=True)
            code = 1
    print(json.dumps(out, indent=2))
    return code


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    code, results = 0, []
    for ref in args.refs:
        try:
            params = {"force": "1"} if args.force else None
            result = client.request("DELETE", _path(ref), params=params)
        except ApiError as exc:
            print(f"sandboxctl: error: {exc}", file=sys.stderr, flush=True)
            code = 1
            continue
        results.append(result)
        if not args.json:
            for name in result["untagged"]:
                print(f"Untagged: {name}")
            for image in result["deleted"]:
                print(f"Deleted: {image}")
            for layer in result["layers"]:
                print(f"Deleted layer: {layer}")
    if args.json:
        print(json.dumps(results, indent=2))
    return code


def cmd_prune(client: Client, args: argparse.Namespace) -> int:
    result = client.request("POST", "/api/images/prune")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for image in result["images"]:
            print(f"Deleted: {image}")
        for layer in result["layers"]:
            print(f"Deleted layer: {layer}")
        print(f"Total reclaimed space: {format_size(result['bytes_freed'])}")
    return 0


Command = Callable[
    [Any, str, Callable[[Client, argparse.Namespace], int], str], argparse.ArgumentParser
]


def add_image_commands(sub: Any, command: Command) -> None:
    """Wire ``image`` into sandboxctl's parser (``command`` is its ``_command`` helper)."""
    p = sub.add_parser("image", help="manage images", description="manage the image store")
    isub = p.add_subparsers(title="image commands", metavar="COMMAND", dest="image_cmd")
    isub.required = True
    c = command(isub, "pull", cmd_pull, "pull an image from a registry")
    c.add_argument("ref", metavar="REF", help="[registry/]name[:tag][@digest]")
    c.add_argument("--profile", help="the profile whose allow_pull lets you pull")
    c.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    c.add_argument("--json", action="store_true", help="print the image as JSON")
    c = command(isub, "load", cmd_load, "load images from an archive or an OCI layout (admin)")
    c.add_argument("-i", "--input", required=True, help="docker save / OCI archive, or layout dir")
    c.add_argument("--tag", help="name the (single) loaded image")
    c.add_argument("--json", action="store_true", help="print the images as JSON")
    c = command(isub, "ls", cmd_ls, "list images")
    c.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c = command(isub, "inspect", cmd_inspect, "show images as JSON")
    c.add_argument("refs", nargs="+", metavar="REF")
    c.add_argument("--json", action="store_true", help="accepted; output is JSON")
    c = command(isub, "rm", cmd_rm, "remove image names; images and layers left unused go")
    c.add_argument("refs", nargs="+", metavar="REF")
    c.add_argument("-f", "--force", action="store_true", help="untag even if sandboxes use it")
    c.add_argument("--json", action="store_true", help="print the results as JSON")
    c = command(isub, "prune", cmd_prune, "remove unnamed, unused images and unused layers")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
