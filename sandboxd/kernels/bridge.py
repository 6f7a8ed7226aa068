"""One WebSocket client of a kernel: its framing, and its own shell/control/stdin sockets.

Transport-free: the WebSocket handler gives ``send`` (write one frame) and ``close``; the
kernel manager attaches the client to the current kernel process and re-attaches it after a
restart, so a client stays connected across restarts and sees ``dead`` when the kernel dies.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from .. import metrics
from . import wire
from .channels import KernelChannels
from .zsocket import ZSocket

log = logging.getLogger("sandboxd.kernels")

Send = Callable[[bytes | str, bool], None]
DEALER_CHANNELS = ("shell", "control", "stdin")


class ClientConnection:
    """Frames between one WebSocket and the kernel's ZMQ sockets."""

    def __init__(
        self,
        protocol: str | None,
        send: Send,
        close: Callable[[int, str], None],
        session_id: str = "",
    ) -> None:
        self.v1 = protocol == wire.V1
        self.send = send
        self.close = close
        self.session_id = session_id
        self.identity = uuid.uuid4().bytes
        self.streams: dict[str, ZSocket] = {}
        self.signer: wire.Signer | None = None

    # kernel -> client -------------------------------------------------------------------------

    def frame(
        self, channel: str, body: list[bytes], header: dict[str, Any] | None = None
    ) -> tuple[bytes | str, bool]:
        if self.v1:
            return wire.to_v1(channel, body), True
        if header is None:
            header = json.loads(body[0])
        data, binary = wire.to_legacy(channel, body, header)
        return (data, True) if binary else (data.decode(), False)

    def deliver(
        self, channel: str, body: list[bytes], header: dict[str, Any] | None = None
    ) -> None:
        data, binary = self.frame(channel, body, header)
        self.send(data, binary)

    def deliver_parts(self, parts: wire.Parts) -> None:
        self.deliver(parts.channel, [*parts.frames(), *parts.buffers])

    def _on_reply(self, channel: str, signer: wire.Signer) -> Callable[[list[bytes]], None]:
        def on_recv(msg: list[bytes]) -> None:
            try:
                _, body = signer.verified(msg)
            except wire.BadSignature:
                metrics.kernel_message_dropped("bad-signature")
                return
            except wire.BadFrame:
                metrics.kernel_message_dropped("malformed")
                return
            self.deliver(channel, body)

        return on_recv

    # client -> kernel -------------------------------------------------------------------------

    def parse(self, frame: bytes | str) -> wire.Parts:
        if self.v1 and isinstance(frame, bytes):
            return wire.from_v1(frame)
        return wire.from_legacy(frame)

    def forward(self, parts: wire.Parts) -> bool:
        """Send to the kernel; False when no kernel process is attached (dead or restarting)."""
        stream = self.streams.get(parts.channel)
        if stream is None or self.signer is None:
            return False
        stream.send_multipart(self.signer.to_zmq(parts))
        return True

    # attachment -------------------------------------------------------------------------------

    def attach(self, chans: KernelChannels) -> None:
        self.detach()
        self.signer = chans.signer
        for channel in DEALER_CHANNELS:
            stream = chans.dealer(channel, self.identity)
            stream.on_recv(self._on_reply(channel, chans.signer))
            self.streams[channel] = stream

    def detach(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()
        self.signer = None
