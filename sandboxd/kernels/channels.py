"""The daemon's ZMQ sockets to one kernel process, over ``ipc://`` sockets in ``/run/kernel``.

``/run/kernel`` is a small tmpfs of the sandbox's own (made by the launcher, owned by the
tenant, size-capped), so the tenant can rename or replace anything in it. The daemon therefore
never connects by a path: ``open_sockets`` opens each socket file with ``openat2`` inside the
sandbox's root fd (``RESOLVE_IN_ROOT``, no symlinks at all), checks on that fd that it is a
socket owned by the tenant's uid (only the tenant's own processes can have bound it), and ZMQ
connects to ``/proc/self/fd/N`` of that fd: the very inode checked, whatever the path says
later. Every message from the kernel is then checked against the kernel's key (``Signer.verified``):
one signed with another kernel's key is dropped and counted. No TCP and no network namespace
plumbing: this works with ``network = "none"``.

One SUB socket per kernel watches iopub (execution state, activity) and fans messages out to
every WebSocket client; each client gets its own shell/control/stdin DEALERs sharing one
identity, so replies and ``input_request`` go back to the client that asked, as in
jupyter_server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from .. import metrics
from ..errors import LaunchError, ResourcesExhausted
from ..runtime import safefs
from ..service import iso
from . import wire
from .zsocket import ZSocket

CONNECTION_FILE = "connection.json"
PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
USED = ("shell", "iopub", "stdin", "control")  # the daemon never pings hb
KERNEL_DIR = "/run/kernel"  # inside the sandbox
SOCKET_PREFIX = "kernel-ipc"
RECONNECT_IVL_MS = 5
MAX_SOCKETS = 65536  # ZMQ's own limit (default 1023), sized with the WebSocket limits
FD_GRACE_SECONDS = 5.0


def configure_zmq() -> None:
    """Raise ZMQ's socket limit before the first socket: the WebSocket limits bound the use."""
    zmq.Context.instance().set(zmq.MAX_SOCKETS, MAX_SOCKETS)


class NotReady(Exception):
    """A socket file is not there yet."""


def _open_socket(rootfd: int, channel: str, uid: int) -> int:
    """O_PATH fd of the kernel's socket for ``channel``; refuses anything but the tenant's
    own socket inode (a symlink anywhere, a FIFO, a file, another uid's socket)."""
    path = f"{KERNEL_DIR}/{SOCKET_PREFIX}-{PORTS[channel]}"
    try:
        fd = safefs.open_in_root(rootfd, path, os.O_PATH | os.O_NOFOLLOW, symlinks=False)
    except FileNotFoundError:
        raise NotReady(path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LaunchError(f"{path} is a symlink", reason="kernel-socket") from None
        raise LaunchError(f"{path}: {exc.strerror}", reason="kernel-socket") from None
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
        os.close(fd)
        raise LaunchError(
            f"{path} is not a socket of the kernel's own user", reason="kernel-socket"
        )
    return fd


async def open_sockets(
    root_fd: Callable[[], Awaitable[int]],
    uid: int,
    exited: asyncio.Future[Any],
    timeout: float,
) -> dict[str, int]:
    """Wait until the kernel has bound its sockets, then open each by fd (see the module doc)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    rootfd = await root_fd()
    fds: dict[str, int] = {}
    try:
        while True:
            try:
                for channel in USED:
                    if channel not in fds:
                        fds[channel] = _open_socket(rootfd, channel, uid)
                return fds
            except NotReady:
                pass
            if exited.done():
                raise LaunchError("the kernel exited during start-up", reason="kernel-died")
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"the kernel did not open its sockets within {timeout:g}s",
                    reason="kernel-timeout",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        os.close(rootfd)


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
    """Connections to one running kernel process, through fds of its socket inodes."""

    def __init__(
        self, sockets: dict[str, int], key: bytes, on_iopub: Callable[[list[bytes]], None]
    ):
        self.sockets = sockets  # channel -> O_PATH fd, owned (closed) by this object
        self.signer = wire.Signer(key)
        self.context = zmq.Context.instance()
        self.closed = False
        try:
            sub = self._socket(zmq.SUB, "iopub")
            sub.setsockopt(zmq.SUBSCRIBE, b"")
        except BaseException:
            self._close_fds()
            raise
        self.iopub = ZSocket(sub)
        self.iopub.on_recv(on_iopub)

    def url(self, channel: str) -> str:
        return f"ipc:///proc/self/fd/{self.sockets[channel]}"

    def _socket(self, kind: int, channel: str, identity: bytes | None = None) -> zmq.Socket:
        try:
            sock = self.context.socket(kind)
        except zmq.ZMQError as exc:
            metrics.resource_refusal("zmq-sockets")
            raise ResourcesExhausted(
                f"the daemon is out of ZMQ sockets ({exc})", reason="zmq-sockets"
            ) from None
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

        def on_reply(msg: list[bytes]) -> None:
            try:
                self.signer.verified(msg)
            except wire.BadFrame:
                metrics.kernel_message_dropped("bad-signature")
                return
            if not reply.done():
                reply.set_result(msg)

        stream.on_recv(on_reply)
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

    def _close_fds(self) -> None:
        for fd in self.sockets.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sockets = {}

    def close(self) -> None:
        """Close the sockets now and the socket fds a little later: ZMQ tears a socket down in
        its own thread, and a reconnect racing that must not find the fd number reused."""
        if not self.closed:
            self.closed = True
            if hasattr(self, "iopub"):
                self.iopub.close()
            try:
                asyncio.get_running_loop().call_later(FD_GRACE_SECONDS, self._close_fds)
            except RuntimeError:
                self._close_fds()
