"""Shared set-up of the kernel tests (no tests here): a daemon of its own and a WebSocket client.

The kernel tests need profiles and kernelspecs the engine tests do not (short idle timeouts, a
small memory limit, a volume), so they run their own daemon instance (``<prefix>k``), covered
by the session's leak check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websocket
from conftest import (
    PREFIX,
    Client,
    Daemon,
    make_daemon,
    other_instance,
    running_daemon,
    stop_daemon,
)
from helpers import wait_until

pytestmark = pytest.mark.root

KERNELSPEC_ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
V1 = "v1.kernel.websocket.jupyter.org"


def config(ksdir: str, volume_root: str) -> str:
    return f"""
volume_roots = ["{volume_root}"]
stop_grace_seconds = 2
kernelspec_dirs = ["{ksdir}"]
env_allow = ["ALLOWED_VAR"]

[profiles.default]
cpus = 1.0
memory = "512m"
pids = 256
network = "none"            # kernels must work without any network
disk = "256m"
max_cpus = 2.0
max_memory = "2g"

[profiles.cull]
idle_timeout = 3
cull_busy = false
cull_connected = true

[profiles.cullbusy]
idle_timeout = 3
cull_busy = true
cull_connected = true

[profiles.small]
memory = "160m"

[profiles.net]
network = "bridge"

[network]
pool = "10.215.0.0/16"      # daemons sharing the test netns need pools of their own

[quotas.default]
max_sandboxes = 20
max_kernels = 6
memory = "16g"
cpus = 16.0
"""


@contextlib.contextmanager
def kernel_daemon_of(letter: str) -> Iterator[Daemon]:
    """A started daemon with the kernel tests' config, its own kernelspec and volume dirs."""
    ksdir = tempfile.mkdtemp(prefix=f"{PREFIX}-ks{letter}-")
    vol = tempfile.mkdtemp(prefix=f"{PREFIX}-kvol{letter}-")
    os.chmod(vol, 0o755)
    try:
        with running_daemon(other_instance(letter), config(ksdir, vol)) as d:
            yield d
    finally:
        shutil.rmtree(ksdir, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


def write_kernelspec(ksdir: str, name: str, profile: str, volumes: list[str] | None = None) -> None:
    os.makedirs(os.path.join(ksdir, name), exist_ok=True)
    with open(os.path.join(ksdir, name, "kernel.json"), "w") as fh:
        json.dump(
            {
                "argv": KERNELSPEC_ARGV,
                "display_name": f"Python ({profile})",
                "language": "python",
                "interrupt_mode": "signal",
                "metadata": {"sandboxd": {"profile": profile, "volumes": volumes or []}},
            },
            fh,
        )


LETTERS = {"test_kernels": "k", "test_gateway": "g", "test_notebooks": "n", "test_provisioner": "p"}


@pytest.fixture(scope="module")
def kd(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon with the kernel tests' profiles and kernelspecs (one instance per module)."""
    instance = other_instance(LETTERS.get(request.module.__name__, "x"))
    ksdir = tempfile.mkdtemp(prefix=f"{PREFIX}-ks-")
    vol = tempfile.mkdtemp(prefix=f"{PREFIX}-kvol-")
    os.chmod(vol, 0o755)
    write_kernelspec(ksdir, "python3-cull", "cull")
    write_kernelspec(ksdir, "python3-cullbusy", "cullbusy")
    write_kernelspec(ksdir, "python3-small", "small")
    write_kernelspec(ksdir, "python3-net", "net")
    write_kernelspec(ksdir, "python3-vol", "default", ["work:/home/jovyan/work"])
    d = make_daemon(instance, config(ksdir, vol))
    d.volume_root = vol  # type: ignore[attr-defined]
    d.start()
    yield d
    for name, client in d.users.items():
        for k in client.call("GET", "/api/kernels") or []:
            client.request("DELETE", f"/api/kernels/{k['id']}")
        del name
    stop_daemon(d)
    shutil.rmtree(ksdir, ignore_errors=True)
    shutil.rmtree(vol, ignore_errors=True)


def start_kernel(client: Client, name: str = "python3", **env: str) -> dict[str, Any]:
    return client.call("POST", "/api/kernels", expect=201, json={"name": name, "env": env})


def ws_connect(
    d: Daemon, client: Client, kernel_id: str, v1: bool = False, token: str | None = None
) -> websocket.WebSocket:
    url = d.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id=t"
    return websocket.create_connection(
        url,
        header=[f"Authorization: token {token or client.token}"],
        subprotocols=[V1] if v1 else None,
        timeout=60,
    )


def message(msg_type: str, content: dict[str, Any], channel: str = "shell") -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "t",
            "session": "t",
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


# --- framing, as a client sees it (independent of sandboxd.kernels.wire on purpose) ---------


def encode(msg: dict[str, Any], v1: bool, buffers: list[bytes] = ()) -> tuple[Any, int]:
    """(frame, opcode) for websocket-client's ``send``."""
    if v1:
        parts = [
            json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")
        ] + list(buffers)
        chan = msg["channel"].encode()
        offsets = [8 * (3 + len(parts)), 8 * (3 + len(parts)) + len(chan)]
        for p in parts:
            offsets.append(offsets[-1] + len(p))
        head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
        return head + chan + b"".join(parts), websocket.ABNF.OPCODE_BINARY
    if not buffers:
        return json.dumps(msg), websocket.ABNF.OPCODE_TEXT
    body = json.dumps({k: v for k, v in msg.items() if k != "buffers"}).encode()
    chunks = [body, *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for c in chunks[:-1]:
        offsets.append(offsets[-1] + len(c))
    return (
        struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets) + b"".join(chunks),
        websocket.ABNF.OPCODE_BINARY,
    )


def decode(opcode: int, data: Any, v1: bool) -> dict[str, Any]:
    if v1:
        n = struct.unpack("<Q", data[:8])[0]
        offs = struct.unpack(f"<{n}Q", data[8 : 8 * (n + 1)])
        chunks = [data[a:b] for a, b in zip(offs[:-1], offs[1:], strict=True)]
        msg = {
            k: json.loads(c)
            for k, c in zip(
                ("header", "parent_header", "metadata", "content"), chunks[1:5], strict=True
            )
        }
        msg["channel"] = chunks[0].decode()
        msg["buffers"] = list(chunks[5:])
        return msg
    if opcode == websocket.ABNF.OPCODE_TEXT:
        return json.loads(data)
    n = struct.unpack("!I", data[:4])[0]
    offs = list(struct.unpack(f"!{n}I", data[4 : 4 * (n + 1)])) + [len(data)]
    chunks = [data[a:b] for a, b in zip(offs[:-1], offs[1:], strict=True)]
    msg = json.loads(chunks[0])
    msg["buffers"] = chunks[1:]
    return msg


def send(ws: websocket.WebSocket, msg: dict[str, Any], v1: bool, buffers: list[bytes] = ()) -> None:
    frame, opcode = encode(msg, v1, buffers)
    ws.send(frame, opcode)


def recv(ws: websocket.WebSocket, v1: bool) -> dict[str, Any]:
    opcode, data = ws.recv_data()
    return decode(opcode, data, v1)


def execute(
    ws: websocket.WebSocket, code: str, v1: bool = False, timeout: float = 60
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; (execute_reply, iopub messages of that request up to status idle)."""
    msg = message(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
    )
    send(ws, msg, v1)
    msg_id = msg["header"]["msg_id"]
    reply, iopub, idle = None, [], False
    deadline = time.monotonic() + timeout
    while (reply is None or not idle) and time.monotonic() < deadline:
        got = recv(ws, v1)
        if got.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if got["channel"] == "shell":
            reply = got
        elif got["channel"] == "iopub":
            iopub.append(got)
            if (
                got["header"]["msg_type"] == "status"
                and got["content"]["execution_state"] == "idle"
            ):
                idle = True
    assert reply is not None and idle, "no execute_reply / idle in time"
    return reply, iopub


def stdout_of(iopub: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"].get("text", "") for m in iopub if m["header"]["msg_type"] == "stream"
    )


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    return wait_until(predicate, timeout=timeout, interval=interval)
