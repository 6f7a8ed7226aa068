"""Jupyter message framing: ZMQ multipart <-> the two kernel WebSocket protocols.

Pure functions, no sockets. The bridge never re-parses message bodies it only forwards: the
kernel's header, parent header, metadata and content JSON travel as the bytes the kernel wrote,
so a forwarded message costs a few concatenations, not a JSON round trip (the gateway's budget
is 1 ms per execute round trip).

ZMQ side (messaging spec): ``[*idents, b"<IDS|MSG>", hmac, header, parent, metadata, content,
*buffers]``.

WebSocket side (jupyter_server ``services/kernels/connection/base.py``):
  * legacy / no subprotocol: a JSON text frame with a ``channel`` key, or, when the message has
    buffers, a binary frame ``nbufs`` (uint32 BE), ``nbufs`` uint32 BE offsets, the JSON, the
    buffers (nbufs counts the JSON too);
  * ``v1.kernel.websocket.jupyter.org``: ``n`` (uint64 LE), ``n`` uint64 LE offsets, then the
    channel name, header, parent header, metadata, content and buffers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

DELIM = b"<IDS|MSG>"
V1 = "v1.kernel.websocket.jupyter.org"
CHANNELS = ("shell", "control", "stdin", "iopub")


class BadFrame(ValueError):
    """A WebSocket frame that is not a Jupyter message."""


class BadSignature(BadFrame):
    """A kernel message whose HMAC does not match the kernel's key."""


@dataclass
class Parts:
    """A message as raw JSON parts (no signature), plus its channel."""

    channel: str
    header: bytes
    parent: bytes
    metadata: bytes
    content: bytes
    buffers: list[bytes]

    def frames(self) -> list[bytes]:
        return [self.header, self.parent, self.metadata, self.content]


class Signer:
    """HMAC-SHA256 signing with a pre-keyed HMAC object (copying it is cheaper than re-keying)."""

    def __init__(self, key: bytes) -> None:
        self._auth = hmac.new(key, digestmod=hashlib.sha256) if key else None

    def sign(self, frames: list[bytes]) -> bytes:
        if self._auth is None:
            return b""
        h = self._auth.copy()
        for frame in frames:
            h.update(frame)
        return h.hexdigest().encode()

    def to_zmq(self, parts: Parts) -> list[bytes]:
        frames = parts.frames()
        return [DELIM, self.sign(frames), *frames, *parts.buffers]

    def verified(self, msg: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``split_zmq`` of a message from the kernel, refused (BadSignature) unless it is
        signed with this kernel's key: a message from any other kernel, or forged, is dropped."""
        idents, body = split_zmq(msg)
        if self._auth is not None:
            i = msg.index(DELIM)
            if not hmac.compare_digest(msg[i + 1], self.sign(body[:4])):
                raise BadSignature("bad HMAC signature")
        return idents, body


def split_zmq(msg: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """``(idents, [header, parent, metadata, content, *buffers])`` of a signed ZMQ message."""
    try:
        i = msg.index(DELIM)
    except ValueError:
        raise BadFrame("no <IDS|MSG> delimiter") from None
    body = msg[i + 2 :]
    if len(body) < 4:
        raise BadFrame("short message")
    return msg[:i], body


# --- kernel -> client ---------------------------------------------------------------------------


def to_v1(channel: str, body: list[bytes]) -> bytes:
    """ZMQ body frames -> one v1 binary WebSocket frame (no JSON work at all)."""
    chan = channel.encode()
    offsets = [8 * (3 + len(body))]
    offsets.append(offsets[-1] + len(chan))
    for part in body:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, chan, *body])


def to_legacy(channel: str, body: list[bytes], header: dict[str, Any]) -> tuple[bytes, bool]:
    """ZMQ body frames -> ``(frame, is_binary)`` in the legacy protocol.

    The JSON is assembled from the raw parts; ``msg_id``/``msg_type`` are repeated at the top
    level as jupyter_client's ``Session.deserialize`` does (clients read either).
    """
    h, p, m, c, *buffers = body
    top = json.dumps(
        {
            "msg_id": header.get("msg_id", ""),
            "msg_type": header.get("msg_type", ""),
            "channel": channel,
        }
    ).encode()
    text = b"".join(
        [
            b'{"header":',
            h,
            b',"parent_header":',
            p,
            b',"metadata":',
            m,
            b',"content":',
            c,
            b',"buffers":[],',
            top[1:],
        ]
    )
    if not buffers:
        return text, False
    parts = [text, *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts), True


# --- client -> kernel ---------------------------------------------------------------------------


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _from_dict(msg: Any, buffers: list[bytes]) -> Parts:
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        raise BadFrame("expected a JSON object with a header")
    channel = msg.get("channel") or "shell"
    if channel not in CHANNELS or channel == "iopub":
        raise BadFrame(f"cannot send on channel {channel!r}")
    return Parts(
        channel,
        _dump(msg["header"]),
        _dump(msg.get("parent_header") or {}),
        _dump(msg.get("metadata") or {}),
        _dump(msg.get("content") or {}),
        buffers,
    )


def from_legacy(frame: str | bytes) -> Parts:
    """A legacy text frame, or a legacy binary frame with buffers."""
    try:
        if isinstance(frame, str):
            return _from_dict(json.loads(frame), [])
        (nbufs,) = struct.unpack("!I", frame[:4])
        if nbufs < 1 or 4 * (nbufs + 1) > len(frame):
            raise BadFrame("bad offset table")
        offsets = list(struct.unpack(f"!{nbufs}I", frame[4 : 4 * (nbufs + 1)])) + [len(frame)]
        chunks = [frame[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return _from_dict(json.loads(chunks[0]), [bytes(c) for c in chunks[1:]])
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        if isinstance(exc, BadFrame):
            raise
        raise BadFrame(f"not a Jupyter message: {exc}") from None


def from_v1(frame: bytes) -> Parts:
    """A ``v1.kernel.websocket.jupyter.org`` binary frame."""
    if isinstance(frame, str):
        raise BadFrame("the v1 protocol uses binary frames")
    try:
        (n,) = struct.unpack("<Q", frame[:8])
        if n < 6 or 8 * (n + 1) > len(frame):
            raise BadFrame("bad offset table")
        offsets = list(struct.unpack(f"<{n}Q", frame[8 : 8 * (n + 1)]))
    except struct.error:
        raise BadFrame("bad offset table") from None
    chunks = [bytes(frame[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    channel = chunks[0].decode(errors="replace")
    if channel not in CHANNELS or channel == "iopub":
        raise BadFrame(f"cannot send on channel {channel!r}")
    h, p, m, c, *buffers = chunks[1:]
    return Parts(channel, h, p, m, c, buffers)
