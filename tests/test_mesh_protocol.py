"""Frame layer of the mesh protocol: building, signing, validating; bad input is typed."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ProtocolError
from engine.mesh import protocol as P
from engine.mesh.protocol import FrameKind
from engine.messages import MessageId


def test_frames_roundtrip_and_bodies() -> None:
    msg = P.frames(FrameKind.DELIVER, b"a", b"b")
    assert msg[0] == b"AEM\x01\x03" and len(msg) == 3
    kind, bodies = P.parse(msg)
    assert kind is FrameKind.DELIVER and bodies == [b"a", b"b"]
    ids = [MessageId("o", 1), MessageId("o", 2)]
    assert P.decode_ids([P.encode_ids(ids)]) == ids
    nacks = [P.NackItem(MessageId("o", 3), P.NackCode.BUSY, "full")]
    assert P.decode_nacks([P.encode_nacks(nacks)]) == nacks
    reg = P.decode_register([P.encode(P.Register("n", types=["echo"], credit=4))])
    assert reg.types == ["echo"] and reg.credit == 4 and reg.role is P.Role.WORKER


def test_register_is_a_forward_compatible_map() -> None:
    body = msgspec.msgpack.encode({"name": "x", "role": "monitor", "future_key": [1, 2]})
    reg = P.decode_register([body])
    assert reg.name == "x" and reg.role is P.Role.MONITOR


def test_signed_messages_verify_and_tampering_is_caught() -> None:
    key = b"secret"
    msg = P.sign(P.frames(FrameKind.REPLY, b"body"), key)
    assert msg[0][4] & 0x80 and len(msg[-1]) == 32
    assert P.unsign(list(msg)) == P.frames(FrameKind.REPLY, b"body")
    kind, bodies = P.parse(list(msg), key)
    assert kind is FrameKind.REPLY and bodies == [b"body"]
    tampered = list(msg)
    tampered[2] = b"bodY"
    with pytest.raises(ProtocolError, match="bad HMAC"):
        P.parse(tampered, key)
    with pytest.raises(ProtocolError, match="unsigned"):
        P.parse(P.frames(FrameKind.REPLY, b"body"), key)
    with pytest.raises(ProtocolError, match="bad HMAC"):
        P.parse(list(msg), b"other key")


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        ([], "empty message"),
        ([b"HTTP/"], "bad header"),
        ([b"AEM\x01"], "bad header"),
        ([b"AEM\x01\x01\x02"], "bad header"),
        ([b"AEM\x02\x01"], "unsupported protocol version 2"),
        ([b"AEM\x01\x63"], "unknown frame kind 99"),
        ([b"AEM\x01\x83"], "without a MAC"),
        ([b"AEM\x01\x03", *[b"x"] * (P.MAX_BODIES + 1)], "exceed the limit"),
    ],
)
def test_bad_frames_raise_protocol_error(msg: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        P.parse(msg)


@pytest.mark.parametrize(
    ("decoder", "bodies", "match"),
    [
        (P.decode_register, [], "exactly 1 body"),
        (P.decode_register, [b"\xc1"], "invalid REGISTER"),
        (P.decode_register, [msgspec.msgpack.encode({"role": "worker"})], "invalid REGISTER"),
        (P.decode_register, [msgspec.msgpack.encode({"name": "a", "role": "root"})], "invalid"),
        (P.decode_ids, [msgspec.msgpack.encode([["o"]])], "invalid ACK"),
        (P.decode_nacks, [msgspec.msgpack.encode([1, 2])], "invalid NACK"),
        (P.decode_credit, [msgspec.msgpack.encode(-1)], ">= 0"),
        (P.decode_disconnect, [b"", b""], "exactly 1 body"),
    ],
)
def test_bad_bodies_raise_protocol_error(decoder: object, bodies: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decoder(bodies)  # type: ignore[operator]


@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans())
def test_random_frames_only_ever_raise_protocol_error(msg: list[bytes], keyed: bool) -> None:
    try:
        kind, bodies = P.parse(msg, b"k" if keyed else None)
    except ProtocolError:
        return
    assert isinstance(kind, FrameKind) and isinstance(bodies, list)
    for decoder in (P.decode_register, P.decode_ids, P.decode_nacks, P.decode_credit):
        with contextlib.suppress(ProtocolError):
            decoder(bodies)
