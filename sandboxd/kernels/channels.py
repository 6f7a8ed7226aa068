"""The daemon's ZMQ sockets to one kernel process, over ``ipc://`` sockets in its run dir.

The kernel binds its five sockets under ``/run/kernel`` inside the sandbox, which is
``<run_dir>/<sandbox>/kernel`` on the host; the daemon (root) connects to the host paths. No TCP
and no network namespace plumbing: this works with ``network = "none"``.

One SUB socket per kernel watches iopub (execution state, activity) and fans messages out to
every WebSocket client; each client gets its own shell/control/stdin DEALERs sharing one
identity, so replies and ``input_request`` go back to the client that asked, as in
jupyter_server.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from ..errors import LaunchError
from ..service import iso
from . import wire
from .zsocket import ZSocket

CONNECTION_FILE = "connection.json"
PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
KERNEL_DIR = "/run/kernel"  # inside the sandbox
RECONNECT_IVL_MS = 5  # the kernel binds ~1 s after we connect; retry often, not every 100 ms


def connection_info(ip: str, key: str, kernel_name: str) -> dict[str, Any]:
    """A jupyter connection file for ipc transport (``ip`` is the socket path prefix)."""
    return {
        "transport": "ipc",
        "ip": ip,
        "key": key,
        "signature_scheme": "hmac-sha256",
        "kernel_name": kernel_name,
        **{f"{c}_port": p for c, p in PORTS.items()},
    }


def write_connection_file(host_dir: str, info: dict[str, Any], uid: int) -> str:
    """Write the kernel's view of the connection info, 0600 and owned by the tenant uid."""
    path = os.path.join(host_dir, CONNECTION_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.chown(path, uid, uid)
    return path


def header(msg_type: str, session: str) -> dict[str, Any]:
    return {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "sandboxd",
        "session": session,
        "date": iso(time.time()),
        "version": "5.3",
    }


def status_message(state: str, session: str = "sandboxd") -> wire.Parts:
    """An iopub status message made by the daemon (``dead`` when the kernel's sandbox died)."""
    h = json.dumps(header("status", session)).encode()
    return wire.Parts("iopub", h, b"{}", b"{}", json.dumps({"execution_state": state}).encode(), [])


class KernelChannels:
    """Connections to one running kernel process (host-side ipc paths)."""

    def __init__(self, host_dir: str, key: bytes, on_iopub: Callable[[list[bytes]], None]):
        self.ip = os.path.join(host_dir, "kernel-ipc")
        self.signer = wire.Signer(key)
        self.context = zmq.Context.instance()
        sub = self._socket(zmq.SUB, "iopub")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub = ZSocket(sub)
        self.iopub.on_recv(on_iopub)
        self.closed = False

    def url(self, channel: str) -> str:
        return f"ipc://{self.ip}-{PORTS[channel]}"

    def _socket(self, kind: int, channel: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(self.url(channel))
        return sock

    def dealer(self, channel: str, identity: bytes) -> ZSocket:
        return ZSocket(self._socket(zmq.DEALER, channel, identity))

    async def kernel_info(self, exited: asyncio.Future[Any], timeout: float) -> dict[str, Any]:
        """Ask for ``kernel_info`` until the kernel answers: the kernel is ready when it does."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[bytes]] = loop.create_future()
        stream = self.dealer("shell", uuid.uuid4().bytes)
        stream.on_recv(lambda msg: reply.done() or reply.set_result(msg))
        h = json.dumps(header("kernel_info_request", "sandboxd")).encode()
        stream.send_multipart(self.signer.to_zmq(wire.Parts("shell", h, b"{}", b"{}", b"{}", [])))
        try:
            done, _ = await asyncio.wait(
                {reply, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reply in done:
                _, body = wire.split_zmq(reply.result())
                return json.loads(body[3])
            if exited in done:
                raise LaunchError("the kernel exited during start-up", reason="kernel-died")
            raise LaunchError(
                f"the kernel did not answer within {timeout:g}s", reason="kernel-timeout"
            )
        finally:
            stream.close()
            if not reply.done():
                reply.cancel()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.iopub.close()
