"""Frame layer of the mesh protocol: building, signing, validating; bad input is typed."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ProtocolError
from engine.mesh import protocol as P
from engine.mesh._signing import TO_BROKER, TO_PEER, Keys, Session, new_session
from engine.mesh.protocol import FrameKind
from engine.messages import MessageId


def test_frames_roundtrip_and_bodies() -> None:
    msg = P.frames(FrameKind.DELIVER, b"a", b"b")
    assert msg[0] == b"AEM\x01\x03" and len(msg) == 3
    kind, bodies, trailer = P.parse(msg)
    assert kind is FrameKind.DELIVER and bodies == [b"a", b"b"] and trailer is None
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
    keys = Keys([b"secret"])
    session = new_session()
    msg = keys.sign(P.frames(FrameKind.REPLY, b"body"), TO_PEER, session, 7)
    assert msg[0][4] & 0x80 and len(msg[-1]) == P.TRAILER_SIZE
    kind, bodies, trailer = P.parse(list(msg))
    assert kind is FrameKind.REPLY and bodies == [b"body"] and trailer is not None
    assert keys.verify(msg[:-1], trailer, TO_PEER) == (session, 7)
    tampered = list(msg)
    tampered[1] = b"bodY"
    with pytest.raises(ProtocolError, match="bad HMAC"):
        keys.verify(tampered[:-1], trailer, TO_PEER)
    with pytest.raises(ProtocolError, match="bad HMAC"):  # the other direction
        keys.verify(msg[:-1], trailer, TO_BROKER)
    with pytest.raises(ProtocolError, match="bad HMAC"):
        Keys([b"other key"]).verify(msg[:-1], trailer, TO_PEER)
    # rotation: a second key verifies, the first signs
    assert Keys([b"new", b"secret"]).verify(msg[:-1], trailer, TO_PEER) == (session, 7)


def test_a_session_refuses_replays_and_other_sessions() -> None:
    keys = Keys([b"k"])
    s = new_session()
    peer = Session(keys, s, broker=False)
    broker = Session(keys, s, broker=True)
    first = peer.seal(P.frames(FrameKind.HEARTBEAT))
    second = peer.seal(P.frames(FrameKind.HEARTBEAT))
    broker.open(first[:-1], first[-1])
    broker.open(second[:-1], second[-1])
    with pytest.raises(ProtocolError, match="replayed"):
        broker.open(first[:-1], first[-1])
    other = Session(keys, new_session(), broker=False).seal(P.frames(FrameKind.HEARTBEAT))
    with pytest.raises(ProtocolError, match="another session"):
        broker.open(other[:-1], other[-1])
    with pytest.raises(ProtocolError, match="unsigned"):
        broker.open(P.frames(FrameKind.HEARTBEAT), None)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        ([], "empty message"),
        ([b"HTTP/"], "bad header"),
        ([b"AEM\x01"], "bad header"),
        ([b"AEM\x01\x01\x02"], "bad header"),
        ([b"AEM\x02\x01"], "unsupported protocol version 2"),
        ([b"AEM\x01\x63"], "unknown frame kind 99"),
        ([b"AEM\x01\x83"], "without a 48-byte trailer"),
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
        kind, bodies, trailer = P.parse(msg)
        if keyed and trailer is not None:
            Keys([b"k"]).verify(msg[:-1], trailer, TO_BROKER)
    except ProtocolError:
        return
    assert isinstance(kind, FrameKind) and isinstance(bodies, list)
    for decoder in (
        P.decode_register,
        P.decode_ids,
        P.decode_nacks,
        P.decode_credit,
        P.decode_notice,
        P.decode_welcome,
        P.decode_disconnect,
    ):
        with contextlib.suppress(ProtocolError):
            decoder(bodies)


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # [[[...nil...]]]


@pytest.mark.parametrize(
    "decoder",
    [P.decode_register, P.decode_ids, P.decode_nacks, P.decode_credit, P.decode_welcome],
)
def test_deeply_nested_bodies_are_protocol_errors(decoder: object) -> None:
    """Regression: a body nested ~1,000 deep raised RecursionError out of the decoders."""
    deep_map = b"\x82\xa4name\xa1x\xa4junk" + _nested(5000)  # {"name": "x", "junk": [[[...]]]}
    for body in (_nested(5000), deep_map):
        with pytest.raises(ProtocolError):
            decoder([body])  # type: ignore[operator]


def test_register_limits_are_protocol_errors() -> None:
    """Regression: a 4 MiB type name, or thousands of types, were accepted."""
    with pytest.raises(ProtocolError, match="types"):
        P.decode_register([P.encode(P.Register("n", types=["t" * (P.MAX_TYPE + 1)]))])
    with pytest.raises(ProtocolError, match="types"):
        P.decode_register(
            [P.encode(P.Register("n", types=[f"t{i}" for i in range(P.MAX_TYPES + 1)]))]
        )
    with pytest.raises(ProtocolError, match="exceeds"):
        P.decode_register([b"\x00" * (P.MAX_CONTROL + 1)])
    with pytest.raises(ProtocolError, match="origins"):
        P.decode_register([P.encode(P.Register("n", origins=["o"] * (P.MAX_ORIGINS + 1)))])
