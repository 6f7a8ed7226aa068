"""kernels/wire.py against the reference implementations it must agree with: jupyter_server's
WebSocket serializers (both protocols) and jupyter_client's ``Session`` signing. Pure: no daemon.
"""

from __future__ import annotations

import json
import random
import struct

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from sandboxd.kernels import wire

KEY = b"5ad1c4e0-test-key"


def message(msg_type: str = "execute_request", **content: object) -> dict[str, object]:
    session = Session(key=KEY)
    msg = session.msg(msg_type, content=content or {"code": "1 + 1"})
    msg["parent_header"] = {"msg_id": "parent-1", "msg_type": "x"}
    msg["metadata"] = {"m": 1}
    return msg


def body_of(msg: dict[str, object], buffers: list[bytes] = []) -> list[bytes]:  # noqa: B006
    """The raw JSON parts, as a kernel would send them after the signature."""
    return [
        json.dumps(msg[k], default=str).encode()
        for k in ("header", "parent_header", "metadata", "content")
    ] + list(buffers)


BODIES = [
    [],
    [b"\x00\x01binary"],
    [b"", b"x" * 70000, b"\xff" * 3],
]


@pytest.mark.parametrize("buffers", BODIES)
@pytest.mark.parametrize("channel", ["shell", "iopub", "control", "stdin"])
def test_to_v1_is_byte_for_byte_what_jupyter_server_sends(channel: str, buffers: list) -> None:
    body = body_of(message(), buffers)
    frame = wire.to_v1(channel, body)
    assert frame == serialize_msg_to_ws_v1(body, channel)
    assert deserialize_msg_from_ws_v1(frame) == (channel, body)


@pytest.mark.parametrize("buffers", BODIES)
@pytest.mark.parametrize("channel", ["shell", "control", "stdin"])
def test_from_v1_reads_what_jupyter_server_sends(channel: str, buffers: list) -> None:
    body = body_of(message(), buffers)
    parts = wire.from_v1(serialize_msg_to_ws_v1(body, channel))
    assert parts.channel == channel
    assert [*parts.frames(), *parts.buffers] == body


@pytest.mark.parametrize("buffers", BODIES)
def test_to_legacy_is_a_message_jupyter_server_parses(buffers: list) -> None:
    msg = message()
    frame, binary = wire.to_legacy("iopub", body_of(msg, buffers), msg["header"])  # type: ignore[arg-type]
    assert binary == bool(buffers)
    parsed = deserialize_binary_message(frame) if binary else json.loads(frame)
    for key in ("header", "parent_header", "metadata", "content"):
        assert json.loads(json.dumps(parsed[key], default=str)) == json.loads(
            json.dumps(msg[key], default=str)
        )
    assert parsed["channel"] == "iopub"
    assert parsed["msg_id"] == msg["header"]["msg_id"]  # type: ignore[index]
    assert parsed["msg_type"] == "execute_request"
    if binary:
        assert parsed["buffers"] == buffers


def test_from_legacy_reads_text_and_binary_frames() -> None:
    msg = message()
    msg["channel"] = "control"
    text = json.dumps(msg, default=str)
    parts = wire.from_legacy(text)
    assert parts.channel == "control"
    assert json.loads(parts.header)["msg_id"] == msg["header"]["msg_id"]  # type: ignore[index]
    assert json.loads(parts.content) == {"code": "1 + 1"}
    msg = json.loads(text)
    msg["buffers"] = [b"abc", b"\x00" * 10]
    parts = wire.from_legacy(serialize_binary_message(msg))
    assert parts.buffers == [b"abc", b"\x00" * 10]
    assert json.loads(parts.parent) == {"msg_id": "parent-1", "msg_type": "x"}


def test_a_legacy_frame_without_a_channel_goes_to_shell() -> None:
    msg = message()
    assert wire.from_legacy(json.dumps(msg, default=str)).channel == "shell"


def test_signatures_are_jupyter_clients() -> None:
    session = Session(key=KEY)
    msg = message()
    signed = session.serialize(msg, ident=[b"client-7"])
    signer = wire.Signer(KEY)
    idents, body = signer.verified(signed)
    assert idents == [b"client-7"]
    assert signer.sign(body[:4]) == signed[signed.index(wire.DELIM) + 1]
    # and a message the daemon signs is one jupyter_client accepts
    parts = wire.Parts("shell", *body[:4], [])
    _, out = session.feed_identities(signer.to_zmq(parts))
    assert session.deserialize(out)["header"]["msg_id"] == msg["header"]["msg_id"]  # type: ignore[index]


def test_a_forged_or_foreign_message_is_refused() -> None:
    msg = message()
    foreign = Session(key=b"another kernel's key").serialize(msg)
    with pytest.raises(wire.BadSignature):
        wire.Signer(KEY).verified(foreign)
    tampered = Session(key=KEY).serialize(msg)
    i = tampered.index(wire.DELIM)
    tampered[i + 5] = b'{"code": "import os; os.system(\\"x\\")"}'
    with pytest.raises(wire.BadSignature):
        wire.Signer(KEY).verified(tampered)
    unsigned = Session(key=b"").serialize(msg)
    with pytest.raises(wire.BadSignature):
        wire.Signer(KEY).verified(unsigned)


def test_no_key_signs_nothing() -> None:
    assert wire.Signer(b"").sign([b"a", b"b"]) == b""


@pytest.mark.parametrize("channel", ["iopub", "nope", ""])
def test_clients_cannot_send_on_iopub_or_unknown_channels(channel: str) -> None:
    body = body_of(message())
    with pytest.raises(wire.BadFrame, match="cannot send"):
        wire.from_v1(serialize_msg_to_ws_v1(body, channel))
    msg = message()
    msg["channel"] = channel
    if channel:
        with pytest.raises(wire.BadFrame, match="cannot send"):
            wire.from_legacy(json.dumps(msg, default=str))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00" * 7,
        struct.pack("<Q", 2) + b"\x00" * 16,  # too few parts
        struct.pack("<Q", 1 << 40),  # an offset table longer than the frame
        struct.pack("<Q", 6) + b"\x00" * 8,  # table cut short
        # a well-formed frame on a real channel with fewer than the four JSON parts
        *(serialize_msg_to_ws_v1([b"{}"] * k, "shell") for k in range(4)),
    ],
)
def test_bad_v1_frames_are_bad_frames(frame: bytes) -> None:
    with pytest.raises(wire.BadFrame):
        wire.from_v1(frame)


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "[]",
        '{"header": 3}',
        "{not json",
        b"",
        struct.pack("!I", 0),
        struct.pack("!I", 5) + b"\x00\x00\x00\x08",
        struct.pack("!II", 1, 8) + b"\xff\xfe",  # not UTF-8
    ],
)
def test_bad_legacy_frames_are_bad_frames(frame: str | bytes) -> None:
    with pytest.raises(wire.BadFrame):
        wire.from_legacy(frame)


def test_a_v1_frame_as_text_is_refused() -> None:
    with pytest.raises(wire.BadFrame, match="binary"):
        wire.from_v1("text")  # type: ignore[arg-type]


def test_split_zmq_needs_the_delimiter_and_four_parts() -> None:
    with pytest.raises(wire.BadFrame, match="delimiter"):
        wire.split_zmq([b"a", b"b"])
    with pytest.raises(wire.BadFrame, match="short"):
        wire.split_zmq([b"id", wire.DELIM, b"sig", b"h", b"p"])
    assert wire.split_zmq([b"id", wire.DELIM, b"sig", b"h", b"p", b"m", b"c", b"buf"]) == (
        [b"id"],
        [b"h", b"p", b"m", b"c", b"buf"],
    )


def test_hostile_bytes_only_ever_raise_bad_frame() -> None:
    """What a tenant's client may send: mutations of real frames and random bytes raise
    BadFrame or parse; never another exception (which would close the socket uncleanly)."""
    rng = random.Random(20261202)
    good_v1 = serialize_msg_to_ws_v1(body_of(message(), [b"buf"]), "shell")
    legacy = dict(message(), buffers=[b"buf"])
    good_legacy = serialize_binary_message(
        json.loads(json.dumps(legacy, default=str)) | {"buffers": [b"buf"]}
    )
    for _ in range(3000):
        for good, parse in ((good_v1, wire.from_v1), (good_legacy, wire.from_legacy)):
            frame = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(frame))
                frame[at] = rng.randrange(256)
            if rng.random() < 0.3:
                frame = frame[: rng.randrange(len(frame))]
            try:
                parse(bytes(frame))
            except wire.BadFrame:
                pass
        noise = rng.randbytes(rng.randrange(64))
        for parse in (wire.from_v1, wire.from_legacy):
            try:
                parse(noise)
            except wire.BadFrame:
                pass
