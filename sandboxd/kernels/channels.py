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
import logging
import os
import stat
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from .. import metrics
from ..errors import LaunchError, ResourcesExhausted, SandboxdError
from ..runtime import safefs
from ..service import iso
from . import wire
from .zsocket import ZSocket

log = logging.getLogger("sandboxd.kernels")

CONNECTION_FILE = "connection.json"
PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
USED = ("shell", "iopub", "stdin", "control")  # the daemon never pings hb
KERNEL_DIR = "/run/kernel"  # inside the sandbox
SOCKET_PREFIX = "kernel-ipc"
RECONNECT_IVL_MS = 5
MAX_SOCKETS = 65536  # ZMQ's own limit (default 1023); a kernel uses four
FD_GRACE_SECONDS = 5.0
DEALER_CHANNELS = ("shell", "control", "stdin")
MAX_MESSAGE = 16 << 20  # bytes of one message from a kernel (the WebSocket frame limit too)
OUTPUT_RATE = 32 << 20  # bytes per second a kernel's messages may cost the daemon
IOPUB_HWM = 64  # messages ZMQ holds for us per socket: we drain as they come
DEALER_HWM = 16
SEND_HWM = 8  # messages queued to a kernel that does not read; then ZSocket's pending bound
MAX_ROUTES = 4096  # requests whose replies are still awaited, per kernel
REOPEN_DELAY = 0.05  # seconds before a socket ZMQ dropped is made again


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


def stream_message(text: str, name: str = "stderr") -> wire.Parts:
    """An iopub ``stream`` message made by the daemon (to tell clients about dropped output)."""
    h = json.dumps(header("stream", "sandboxd")).encode()
    content = json.dumps({"name": name, "text": text}).encode()
    return wire.Parts("iopub", h, b"{}", b"{}", content, [])


class KernelChannels:
    """Connections to one running kernel process, through fds of its socket inodes.

    One socket per channel for the whole kernel, whatever the number of clients: the shell,
    control and stdin DEALERs are shared, and a reply goes to the client whose request its
    ``parent_header.msg_id`` names (``routes``, bounded). So a kernel costs the daemon four ZMQ
    sockets, not three per WebSocket. Every socket refuses messages over ``max_message``
    (ZMQ drops the peer), holds at most a few of them, and every byte from the kernel counts
    against the kernel's ``rate`` (a token bucket): beyond it, messages are read and dropped
    unhashed, so a kernel flooding its output costs the loop little and the daemon no memory.
    """

    def __init__(
        self,
        sockets: dict[str, int],
        key: bytes,
        on_iopub: Callable[[list[bytes]], None],
        *,
        max_message: int = MAX_MESSAGE,
        rate: int = OUTPUT_RATE,
        on_trouble: Callable[[str], None] = lambda text: None,
    ):
        self.sockets = sockets  # channel -> O_PATH fd, owned (closed) by this object
        self.signer = wire.Signer(key)
        self.context = zmq.Context.instance()
        self.max_message = max_message
        self.rate = float(rate)
        self.tokens = float(rate)
        self.stamp = time.monotonic()
        self.routes: OrderedDict[bytes, Callable[[str, list[bytes]], None]] = OrderedDict()
        self.closed = False
        self.on_iopub = on_iopub
        self.on_trouble = on_trouble
        self.identity = uuid.uuid4().bytes
        self.streams: dict[str, ZSocket] = {}
        self.monitors: dict[str, ZSocket] = {}
        self.reopening: set[str] = set()
        try:
            for channel in ("iopub", *DEALER_CHANNELS):
                self._open(channel)
        except BaseException:
            self.close()
            raise

    @property
    def iopub(self) -> ZSocket:
        return self.streams["iopub"]

    @property
    def dealers(self) -> dict[str, ZSocket]:
        return {c: s for c, s in self.streams.items() if c != "iopub"}

    def _open(self, channel: str) -> None:
        """The socket for ``channel`` with a monitor: ZMQ drops a peer that sent a message over
        ``max_message`` and does not reconnect on its own, so the monitor's disconnect event
        makes a fresh socket (``_reopen``) and the kernel's clients hear why."""
        if channel == "iopub":
            sock = self._socket(zmq.SUB, channel, rcvhwm=IOPUB_HWM)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            callback: Callable[[list[bytes]], None] = self._on_iopub
        else:
            sock = self._socket(zmq.DEALER, channel, self.identity, rcvhwm=DEALER_HWM)
            callback = self._on_reply(channel)
        monitor = ZSocket(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        stream = ZSocket(sock)
        self.streams[channel], self.monitors[channel] = stream, monitor
        monitor.on_recv(lambda event: self._disconnected(channel))
        stream.on_recv(callback)

    def _on_iopub(self, msg: list[bytes]) -> None:
        if self.admit(msg):
            self.on_iopub(msg)

    def _disconnected(self, channel: str) -> None:
        if self.closed or channel in self.reopening:
            return
        self.reopening.add(channel)
        metrics.kernel_message_dropped("too-large")
        self.on_trouble(
            f"[sandboxd: a message from the kernel on {channel} was over the "
            f"{self.max_message >> 20} MiB limit and was dropped]\n"
        )
        asyncio.get_running_loop().call_later(REOPEN_DELAY, self._reopen, channel)

    def _reopen(self, channel: str) -> None:
        self.reopening.discard(channel)
        if self.closed:
            return
        self._close_channel(channel)
        try:
            self._open(channel)
        except SandboxdError as exc:
            log.error("reopening %s to a kernel: %s", channel, exc.message)

    def _close_channel(self, channel: str) -> None:
        monitor, stream = self.monitors.pop(channel, None), self.streams.pop(channel, None)
        if stream is not None:
            with contextlib.suppress(zmq.ZMQError):
                stream.socket.disable_monitor()
            stream.close()
        if monitor is not None:
            monitor.close()

    def url(self, channel: str) -> str:
        return f"ipc:///proc/self/fd/{self.sockets[channel]}"

    def _socket(
        self, kind: int, channel: str, identity: bytes | None = None, rcvhwm: int = 16
    ) -> zmq.Socket:
        try:
            sock = self.context.socket(kind)
        except zmq.ZMQError as exc:
            metrics.resource_refusal("zmq-sockets")
            raise ResourcesExhausted(
                f"the daemon is out of ZMQ sockets ({exc})", reason="zmq-sockets"
            ) from None
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(self.url(channel))
        return sock

    # -- from the kernel -------------------------------------------------------------------

    def admit(self, msg: list[bytes]) -> bool:
        """Charge a message from the kernel to its byte budget; False: drop it unread."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        size = sum(len(f) for f in msg)
        if size > self.tokens:
            metrics.kernel_message_dropped("rate-limited")
            return False
        self.tokens -= size
        return True

    def _on_reply(self, channel: str) -> Callable[[list[bytes]], None]:
        def on_recv(msg: list[bytes]) -> None:
            if not self.admit(msg):
                return
            try:
                _, body = self.signer.verified(msg)
                parent = json.loads(body[1]).get("msg_id", "")
            except wire.BadSignature:
                metrics.kernel_message_dropped("bad-signature")
                return
            except (wire.BadFrame, ValueError, AttributeError):
                metrics.kernel_message_dropped("malformed")
                return
            deliver = self.routes.get(str(parent).encode())
            if deliver is None:
                metrics.kernel_message_dropped("unrouted")
                return
            deliver(channel, body)

        return on_recv

    # -- to the kernel ---------------------------------------------------------------------

    def send(self, parts: wire.Parts, deliver: Callable[[str, list[bytes]], None]) -> None:
        """Sign and send a client's message; replies to it go to ``deliver``. Raises
        ``Backpressure`` when the kernel stopped taking messages."""
        dealer = self.dealers.get(parts.channel)
        if dealer is None:
            raise wire.BadFrame(f"no channel {parts.channel!r} to the kernel")
        try:
            msg_id = str(json.loads(parts.header).get("msg_id", ""))
        except (ValueError, AttributeError):
            raise wire.BadFrame("the header is not a JSON object") from None
        if msg_id:
            self.routes[msg_id.encode()] = deliver
            self.routes.move_to_end(msg_id.encode())
            while len(self.routes) > MAX_ROUTES:
                self.routes.popitem(last=False)
        dealer.send_multipart(self.signer.to_zmq(parts))

    def forget(self, deliver: Callable[[str, list[bytes]], None]) -> None:
        """A client went away: its pending replies have nowhere to go."""
        for msg_id in [m for m, d in self.routes.items() if d == deliver]:
            del self.routes[msg_id]

    async def kernel_info(self, exited: asyncio.Future[Any], timeout: float) -> dict[str, Any]:
        """Ask for ``kernel_info`` until the kernel answers: the kernel is ready when it does."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[bytes]] = loop.create_future()

        def on_reply(channel: str, body: list[bytes]) -> None:
            if not reply.done():
                reply.set_result(body)

        h = json.dumps(header("kernel_info_request", "sandboxd")).encode()
        self.send(wire.Parts("shell", h, b"{}", b"{}", b"{}", []), on_reply)
        try:
            done, _ = await asyncio.wait(
                {reply, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reply in done:
                return json.loads(reply.result()[3])
            if exited in done:
                raise LaunchError("the kernel exited during start-up", reason="kernel-died")
            raise LaunchError(
                f"the kernel did not answer within {timeout:g}s", reason="kernel-timeout"
            )
        finally:
            self.forget(on_reply)
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
            for channel in list(self.streams):
                self._close_channel(channel)
            self.routes.clear()
            try:
                asyncio.get_running_loop().call_later(FD_GRACE_SECONDS, self._close_fds)
            except RuntimeError:
                self._close_fds()
