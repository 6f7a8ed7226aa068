"""One WebSocket client of a kernel: its framing, and its requests to the kernel's channels.

Transport-free: the WebSocket handler gives ``send`` (write one frame) and ``close``; the
kernel manager attaches the client to the current kernel process and re-attaches it after a
restart, so a client stays connected across restarts and sees ``dead`` when the kernel dies.
The kernel's sockets are shared by all its clients (``KernelChannels``); replies come back to
the client that sent the request, and ``input_request`` to the one whose cell asks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from . import wire
from .channels import KernelChannels

log = logging.getLogger("sandboxd.kernels")

Send = Callable[[bytes | str, bool], None]


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
        self.chans: KernelChannels | None = None

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

    # client -> kernel -------------------------------------------------------------------------

    def parse(self, frame: bytes | str) -> wire.Parts:
        if self.v1 and isinstance(frame, bytes):
            return wire.from_v1(frame)
        return wire.from_legacy(frame)

    def forward(self, parts: wire.Parts) -> bool:
        """Send to the kernel; False when no kernel process is attached (dead or restarting).
        Raises ``Backpressure`` when the kernel stopped reading."""
        if self.chans is None:
            return False
        self.chans.send(parts, self.deliver)
        return True

    # attachment -------------------------------------------------------------------------------

    def attach(self, chans: KernelChannels) -> None:
        self.detach()
        self.chans = chans

    def detach(self) -> None:
        if self.chans is not None:
            self.chans.forget(self.deliver)
            self.chans = None
