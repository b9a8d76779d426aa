"""Wire format: round trips, correlation ids, and hostile input to the decoder."""

from __future__ import annotations

import concurrent.futures

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import DecodeError, EncodeError
from engine.messages import (
    AgentId,
    Codec,
    Envelope,
    ErrorInfo,
    Kind,
    Message,
    MessageId,
    MessageIds,
    TopicId,
    decode,
    decode_payload,
    encode,
    encode_into,
    encode_payload,
)


class Ping(Message):
    n: int
    type: str = "ping"  # a user field named `type` must not clash with the tag


def make_envelope(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "id": MessageId("0123456789abcdef", 7),
        "kind": Kind.SEND,
        "sender": AgentId("client", "c1"),
        "recipient": AgentId("echo", "a"),
        "priority": 3,
        "deadline": 1.5e9,
        "tenant": "acme",
        "attempt": 1,
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "payload_type": "Ping",
        "payload": encode_payload(Ping(41)),
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_header_and_the_raw_payload() -> None:
    env = make_envelope(topic=TopicId("pings.eu", "s"), correlation=MessageId("ffff", 2))
    back = decode(encode(env))
    assert back.id == env.id and back.kind is Kind.SEND
    assert back.sender == env.sender and back.recipient == env.recipient
    assert back.topic == TopicId("pings.eu", "s") and back.correlation == MessageId("ffff", 2)
    assert (back.priority, back.deadline, back.tenant, back.attempt) == (3, 1.5e9, "acme", 1)
    assert back.traceparent == env.traceparent and back.payload_type == "Ping"
    assert bytes(back.payload) == bytes(env.payload)
    assert decode_payload(back.payload, Ping) == Ping(41)


def test_envelope_without_payload_round_trips() -> None:
    env = Envelope(MessageId("o", 1), Kind.CANCEL, correlation=MessageId("o", 0))
    back = decode(encode(env))
    assert back.kind is Kind.CANCEL and back.correlation == MessageId("o", 0)
    assert decode_payload(back.payload, type(None)) is None


def test_envelope_is_a_versioned_array_on_the_wire() -> None:
    raw = msgspec.msgpack.decode(encode(make_envelope()))
    assert isinstance(raw, list) and raw[0] == "v1"


def test_router_reads_headers_without_decoding_payload() -> None:
    # A payload the header decoder cannot type-check still passes through untouched.
    junk = msgspec.msgpack.encode({"anything": [1, 2, {"x": None}]})
    back = decode(encode(make_envelope(payload=msgspec.Raw(junk))))
    assert bytes(back.payload) == junk


def test_encode_into_appends_at_offset() -> None:
    buf = bytearray(b"HDR")
    end = encode_into(make_envelope(), buf, 3)
    assert end == len(buf) and buf[:3] == b"HDR"
    assert decode(bytes(buf[3:])) == decode(encode(make_envelope()))


def test_message_ids_never_collide_across_senders_or_threads() -> None:
    sources = [MessageIds() for _ in range(8)]
    assert len({s.origin for s in sources}) == 8

    def draw(src: MessageIds) -> list[MessageId]:
        return [src.next() for _ in range(2000)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(draw, sources + sources) for i in batch]
    assert len(ids) == len(set(ids)) == 32000


def test_error_info_payload_round_trip() -> None:
    raw = encode_payload(ErrorInfo("ValueError", "bad n"))
    assert decode_payload(raw, ErrorInfo) == ErrorInfo("ValueError", "bad n")


def test_agent_id_parse_and_str() -> None:
    assert AgentId.parse("echo/a") == AgentId("echo", "a")
    assert AgentId.parse("echo") == AgentId("echo", "default")
    assert str(AgentId("echo", "a")) == "echo/a"
    with pytest.raises(ValueError, match="empty type"):
        AgentId.parse("/a")


# --- hostile input -------------------------------------------------------------------


def test_oversized_input_is_refused_before_parsing() -> None:
    codec = Codec(max_size=64)
    data = encode(make_envelope(payload=msgspec.Raw(msgspec.msgpack.encode("x" * 100))))
    with pytest.raises(DecodeError, match=r"exceeds the 64-byte limit"):
        codec.decode(data)


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        Codec(max_size=0)


def test_empty_input() -> None:
    with pytest.raises(DecodeError, match="empty input"):
        decode(b"")


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_truncated_input_names_the_problem(cut: int) -> None:
    data = encode(make_envelope())
    with pytest.raises(DecodeError, match="malformed envelope"):
        decode(data[:cut])


def test_invalid_utf8_in_a_name() -> None:
    data = bytearray(encode(make_envelope()))
    at = data.index(b"client")
    data[at] = 0x80
    with pytest.raises(DecodeError, match="UTF-8"):
        decode(bytes(data))


def test_garbage_input() -> None:
    with pytest.raises(DecodeError, match="malformed envelope"):
        decode(b"\xc1\xc1\xc1")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"not": "an array"}, "invalid envelope"),
        (["v2", ["o", 1], 1], "invalid envelope"),  # unknown version tag
        (["v1", ["o", 1], 99], "invalid envelope"),  # unknown kind
        (["v1", ["o", "seq"], 1], "invalid envelope"),  # wrong type inside
        (["v1", ["o", 1], 1, ["", "k"]], "invalid envelope"),  # empty agent type
    ],
)
def test_wrong_types_are_reported(value: object, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        decode(msgspec.msgpack.encode(value))


def test_deeply_nested_payload_is_an_error_not_a_crash() -> None:
    depth = 100_000
    data = b"\x9e\xa2v1\x92\xa1o\x01\x01" + b"\x91" * depth + b"\xc0"
    with pytest.raises(DecodeError):
        decode(data)


def test_unencodable_payload_raises_encode_error() -> None:
    with pytest.raises(EncodeError, match="object"):
        encode_payload(object())


def test_bad_payload_type_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="invalid payload"):
        decode_payload(encode_payload(ErrorInfo("a", "b")), Ping)


@given(st.binary(max_size=512))
def test_random_bytes_never_crash_or_hang_the_decoder(data: bytes) -> None:
    try:
        env = decode(data)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert isinstance(env, Envelope)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=200))
def test_mutated_valid_envelopes_decode_or_raise_decode_error(noise: bytes, at: int) -> None:
    data = bytearray(encode(make_envelope()))
    at %= len(data)
    data[at : at + len(noise)] = noise
    try:
        env = decode(bytes(data))
    except DecodeError as exc:
        assert str(exc).startswith(("malformed envelope", "invalid envelope"))
    else:
        assert isinstance(env.kind, Kind) and isinstance(env.id, MessageId)


_names = st.text(min_size=1, max_size=20)


@given(
    origin=st.text(max_size=20),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    kind=st.sampled_from(list(Kind)),
    rtype=_names,
    rkey=st.text(max_size=30),
    priority=st.integers(min_value=-(2**31), max_value=2**31),
    payload=st.binary(max_size=64),
)
def test_any_valid_envelope_round_trips(
    origin: str, seq: int, kind: Kind, rtype: str, rkey: str, priority: int, payload: bytes
) -> None:
    env = Envelope(
        MessageId(origin, seq),
        kind,
        recipient=AgentId(rtype, rkey),
        priority=priority,
        payload=encode_payload(payload),
    )
    back = decode(encode(env))
    assert back.id == env.id and back.kind == kind and back.recipient == env.recipient
    assert back.priority == priority
    assert decode_payload(back.payload, bytes) == payload
