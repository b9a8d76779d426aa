"""The mesh wire protocol (version 1): frames, kinds, bodies, limits.

Peers (nodes, clients) hold a ZeroMQ DEALER socket connected to the broker's ROUTER.
Every ZeroMQ message, in either direction, is a multipart message::

    frame 0   b"AEM\\x01" + kind    header: signature, protocol version, kind (5 bytes);
                                   kind bit 0x80 set = signed (HMAC)
    frame 1.. bodies               MessagePack, kind-specific (zero or more)
    last      trailer              only when signed: session, counter and HMAC-SHA256
                                   (``engine.mesh._signing``)

The ROUTER side additionally sees (and prepends) the peer's routing id, as ZeroMQ does.
``docs/protocol.md`` is the normative description for implementers in other languages;
this module is the reference implementation and imports nothing but msgspec and the
engine's wire envelope. Every decoder here bounds what it reads and raises only
:class:`~engine.errors.ProtocolError`, whatever the bytes.
"""

from __future__ import annotations

import enum
from typing import Final, TypeVar

import msgspec

from engine.errors import ProtocolError
from engine.messages import MessageId

__all__ = [
    "MAX_BODIES",
    "MAX_FRAME",
    "SIGNATURE",
    "VERSION",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "FrameKind",
    "NackCode",
    "NackItem",
    "Notice",
    "Register",
    "Role",
    "Welcome",
    "check_register",
    "decode_ids",
    "decode_nacks",
    "encode_ids",
    "encode_nacks",
    "frames",
    "header",
    "parse",
]

VERSION: Final = 1
SIGNATURE: Final = b"AEM" + bytes([VERSION])
#: Default maximum size of one ZeroMQ message in bytes (``ZMQ_MAXMSGSIZE`` on the broker).
MAX_FRAME: Final = 16 * 1024 * 1024
#: Maximum number of body frames in one message (batches larger than this are split).
MAX_BODIES: Final = 4096
SIGNED: Final = 0x80
HEADER_SIZE: Final = 5
#: Size of the trailer of a signed message: session (8) + counter (8) + HMAC-SHA256 (32).
TRAILER_SIZE: Final = 48

# -- limits on what a peer may declare (docs/protocol.md "Errors and limits") -------------
MAX_NAME: Final = 256  # peer name, characters
MAX_TYPE: Final = 256  # agent type, characters (REGISTER types and envelope recipients)
MAX_KEY: Final = 1024  # agent key, characters
MAX_TYPES: Final = 64  # agent types per REGISTER
MAX_PATTERNS: Final = 64  # topic patterns per REGISTER
MAX_PATTERN: Final = 256  # one topic pattern, characters
MAX_ORIGINS: Final = 4  # reply origins per REGISTER
MAX_ORIGIN: Final = 64  # one origin, characters
MAX_INSTANCE: Final = 64  # instance token, characters
MAX_HELD: Final = 4096  # ids in Register.held / Register.resume
MAX_TENANT: Final = 64  # Envelope.tenant, characters
MAX_REASON: Final = 1024  # NACK / notice reasons are cut to this many characters
#: Largest REGISTER, ACK, NACK, CREDIT or DISCONNECT body, in bytes (checked before decoding).
MAX_CONTROL: Final = 1024 * 1024


class FrameKind(enum.IntEnum):
    """Frame 1 of every message (low 7 bits)."""

    REGISTER = 1  # peer -> broker: Register; broker -> peer: Welcome
    HEARTBEAT = 2  # both ways, no body
    DELIVER = 3  # bodies are Envelopes: peer -> broker submits, broker -> node delivers
    ACK = 4  # one body: [MessageId, ...] done (node -> broker) / accepted (broker -> peer)
    NACK = 5  # one body: [[MessageId, code, reason, retry_ms], ...]
    REPLY = 6  # bodies are Envelopes of kind REPLY/ERROR, correlation = the request id
    CREDIT = 7  # one body: int, the peer's new delivery window
    DISCONNECT = 8  # one body: Disconnect; graceful leave / "register again"
    ERROR = 9  # broker -> peer, one body: Notice (a message of yours was dropped, and why)


class Role(enum.StrEnum):
    """What a peer may send (enforced by the broker; bound to its key under CURVE)."""

    ORCHESTRATOR = "orchestrator"  # submits work, hosts agents, everything
    WORKER = "worker"  # hosts agents: replies, acks, nacks, credit; submits nothing
    MONITOR = "monitor"  # registers and may subscribe; sends no work and no replies


_PEER_KINDS: Final = frozenset(FrameKind) - {FrameKind.ERROR}
#: Frame kinds each role may send to the broker.
ALLOWED: Final[dict[Role, frozenset[FrameKind]]] = {
    Role.ORCHESTRATOR: _PEER_KINDS,
    Role.WORKER: _PEER_KINDS - {FrameKind.DELIVER},
    Role.MONITOR: frozenset(
        {FrameKind.REGISTER, FrameKind.HEARTBEAT, FrameKind.ACK, FrameKind.DISCONNECT}
    ),
}


class NackCode(enum.IntEnum):
    """Why a message was refused (NACK body items)."""

    BUSY = 1  # broker: over a bound (window, bytes, rate); resubmit after retry_ms
    UNROUTABLE = 2  # broker: no node hosts the type / bad recipient; final
    DEAD_LETTERED = 3  # broker: attempts exhausted; final, stored in the DLQ
    FORBIDDEN = 4  # broker: the sender may not submit this (role, foreign id); final
    REJECTED = 5  # node: cannot take it now (shutting down, unknown type); broker re-routes
    EXPIRED = 6  # broker or node: the envelope's deadline passed; final
    INVALID = 7  # broker: the envelope breaks a rule or limit (kind, field length); final
    CANCELLED = 8  # broker: its submitter cancelled it before a node got it; final


#: Codes a node may send; any other code from a node counts as REJECTED.
NODE_NACKS: Final = frozenset({NackCode.REJECTED, NackCode.EXPIRED})


class Register(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """Body of REGISTER sent by a peer (a MessagePack map with these string keys)."""

    name: str
    role: Role = Role.WORKER
    types: list[str] = []  # agent types this peer hosts
    subscriptions: list[str] = []  # topic patterns ("pings.*", "#") this peer receives
    origins: list[str] = []  # MessageId origins this peer submits under / receives replies for
    credit: int = 0  # delivery window: max unacknowledged deliveries to this peer
    heartbeat_ms: int = 0  # the peer's heartbeat interval (0 = use the broker's)
    instance: str = ""  # random per peer process: a reconnect of the same process takes over
    held: list[MessageId] = []  # node: deliveries it runs or answered lately (after a restart)
    resume: list[MessageId] = []  # client: submissions it is about to send again


class Welcome(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=False):
    """Body of REGISTER sent by the broker in answer to a peer's REGISTER."""

    broker: str  # random id of this broker run: a change means the broker restarted
    heartbeat_ms: int  # the interval this peer must keep (its own, bounded by the broker)
    max_frame: int
    credit: int  # submission window: max submitted-but-unacknowledged envelopes
    version: int = VERSION
    session: str = ""  # with HMAC: hex of the 8-byte session every later message is signed in


class Disconnect(msgspec.Struct, forbid_unknown_fields=False):
    """Body of DISCONNECT."""

    code: int
    reason: str = ""


class DisconnectCode(enum.IntEnum):
    LEAVING = 1  # graceful: the sender goes away
    UNKNOWN_PEER = 2  # broker: I do not know you (e.g. I restarted): send REGISTER again
    BAD_VERSION = 3  # broker: unsupported protocol version
    FORBIDDEN = 4  # broker: registration refused (role not allowed for this key)
    SHUTDOWN = 5  # broker is stopping
    RETRY = 6  # broker: not now (name or origin held by a live connection, broker full)
    INVALID = 7  # broker: the REGISTER breaks a rule or limit; fix it before retrying


class Notice(msgspec.Struct, forbid_unknown_fields=False):
    """Body of ERROR (broker -> peer): one of your messages was dropped, and why."""

    code: int
    reason: str = ""


class ErrorCode(enum.IntEnum):
    MALFORMED = 1  # the message did not parse (header, body, envelope)
    FORBIDDEN = 2  # your role may not send this kind of frame
    UNSOLICITED = 3  # a REPLY/ACK/NACK for something not delivered to you
    LIMIT = 4  # over a limit (size, count)


class NackItem(msgspec.Struct, array_like=True, frozen=True, gc=False, omit_defaults=True):
    id: MessageId
    code: int
    reason: str = ""
    retry_ms: int = 0  # BUSY: resubmit after about this long


_enc = msgspec.msgpack.Encoder()
_ids_dec = msgspec.msgpack.Decoder(list[MessageId])
_nacks_dec = msgspec.msgpack.Decoder(list[NackItem])
_register_dec = msgspec.msgpack.Decoder(Register)
_welcome_dec = msgspec.msgpack.Decoder(Welcome)
_disconnect_dec = msgspec.msgpack.Decoder(Disconnect)
_notice_dec = msgspec.msgpack.Decoder(Notice)
_int_dec = msgspec.msgpack.Decoder(int)

# PERF: signature and kind share one header frame: each frame is a zmq_msg_send/recv,
# and 3 -> 2 frames saved ~6 us per hop (in-process DEALER->ROUTER loop, 2026-11).
_HEADERS: Final = [SIGNATURE + bytes([k]) for k in range(256)]

_KIND_OF: Final[list[FrameKind | None]] = [
    FrameKind(k) if k in FrameKind._value2member_map_ else None for k in range(128)
]

#: Unsigned header frame -> kind: :func:`parse`'s fast path (any other first frame is
#: validated step by step, naming the problem).
#: PERF: one dict lookup instead of the checks, 0.40 -> 0.14 us per message
#: (benches/mesh_seq_profile.py --python).
UNSIGNED: Final[dict[bytes, FrameKind]] = {SIGNATURE + bytes([k]): k for k in FrameKind}


def header(kind: int) -> bytes:
    """Frame 0 of a message of ``kind``."""
    return _HEADERS[kind]


def frames(kind: FrameKind, *bodies: bytes) -> list[bytes]:
    """The frames of one unsigned message (without the routing id)."""
    return [_HEADERS[kind], *bodies]


def parse(msg: list[bytes]) -> tuple[FrameKind, list[bytes], bytes | None]:
    """Validate the frames of one message; return its kind, body frames and trailer.

    ``msg`` excludes the routing id. The trailer is None for an unsigned message; a signed
    one must end in a :data:`TRAILER_SIZE`-byte trailer, which the caller verifies
    (``engine.mesh._signing``). Raises :class:`ProtocolError` naming the problem.
    """
    if msg:
        kind = UNSIGNED.get(msg[0])
        if kind is not None:
            if len(msg) > MAX_BODIES + 1:
                raise ProtocolError(f"{len(msg) - 1} bodies exceed the limit of {MAX_BODIES}")
            return kind, msg[1:], None
    return _parse_slow(msg)


def _parse_slow(msg: list[bytes]) -> tuple[FrameKind, list[bytes], bytes | None]:
    if not msg:
        raise ProtocolError("empty message: a header frame is expected")
    head = msg[0]
    if len(head) != HEADER_SIZE or head[:4] != SIGNATURE:
        if len(head) >= 4 and head[:3] == b"AEM" and head[3] != VERSION:
            raise ProtocolError(f"unsupported protocol version {head[3]} (speaking {VERSION})")
        raise ProtocolError("bad header frame: not an agent-engine mesh message")
    raw = head[4]
    kind = _KIND_OF[raw & 0x7F]
    if kind is None:
        raise ProtocolError(f"unknown frame kind {raw & 0x7F}")
    if not raw & SIGNED:  # unreachable through parse() (the fast path), kept for clarity
        bodies, trailer = msg[1:], None
    else:
        if len(msg) < 2 or len(msg[-1]) != TRAILER_SIZE:
            raise ProtocolError(f"signed message without a {TRAILER_SIZE}-byte trailer")
        bodies, trailer = msg[1:-1], msg[-1]
    if len(bodies) > MAX_BODIES:
        raise ProtocolError(f"{len(bodies)} bodies exceed the limit of {MAX_BODIES}")
    return kind, bodies, trailer


def _one(kind: str, bodies: list[bytes]) -> bytes:
    if len(bodies) != 1:
        raise ProtocolError(f"{kind} needs exactly 1 body frame, got {len(bodies)}")
    body = bodies[0]
    if len(body) > MAX_CONTROL:
        raise ProtocolError(f"{kind} body of {len(body)} bytes exceeds {MAX_CONTROL}")
    return body


T = TypeVar("T")


def _decode(dec: msgspec.msgpack.Decoder[T], what: str, data: bytes) -> T:
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"invalid {what} body: {exc}") from None
    except RecursionError:  # msgspec skips unknown map values recursively
        raise ProtocolError(f"invalid {what} body: nested too deep") from None


def decode_register(bodies: list[bytes]) -> Register:
    """The peer's REGISTER body, decoded and checked against the limits."""
    return check_register(_decode(_register_dec, "REGISTER", _one("REGISTER", bodies)))


def check_register(reg: Register) -> Register:
    """``reg`` if every field is within the protocol's limits, else :class:`ProtocolError`."""
    if not 0 < len(reg.name) <= MAX_NAME:
        raise ProtocolError(f"REGISTER name must be 1..{MAX_NAME} characters")
    _check_names("types", reg.types, MAX_TYPES, MAX_TYPE)
    _check_names("subscriptions", reg.subscriptions, MAX_PATTERNS, MAX_PATTERN)
    _check_names("origins", reg.origins, MAX_ORIGINS, MAX_ORIGIN)
    if len(reg.instance) > MAX_INSTANCE:
        raise ProtocolError(f"REGISTER instance is longer than {MAX_INSTANCE} characters")
    if reg.credit < 0 or reg.heartbeat_ms < 0:
        raise ProtocolError("REGISTER credit and heartbeat_ms must be >= 0")
    for what, ids in (("held", reg.held), ("resume", reg.resume)):
        if len(ids) > MAX_HELD:
            raise ProtocolError(f"REGISTER {what} lists more than {MAX_HELD} ids")
        if any(len(m.origin) > MAX_ORIGIN for m in ids):
            raise ProtocolError(f"REGISTER {what}: an origin is longer than {MAX_ORIGIN}")
    return reg


def _check_names(what: str, names: list[str], count: int, length: int) -> None:
    if len(names) > count:
        raise ProtocolError(f"REGISTER {what}: {len(names)} entries exceed the limit of {count}")
    for name in names:
        if not 0 < len(name) <= length:
            raise ProtocolError(f"REGISTER {what}: each entry must be 1..{length} characters")


def decode_welcome(bodies: list[bytes]) -> Welcome:
    return _decode(_welcome_dec, "REGISTER (welcome)", _one("REGISTER", bodies))


def decode_disconnect(bodies: list[bytes]) -> Disconnect:
    return _decode(_disconnect_dec, "DISCONNECT", _one("DISCONNECT", bodies))


def decode_notice(bodies: list[bytes]) -> Notice:
    return _decode(_notice_dec, "ERROR", _one("ERROR", bodies))


def decode_credit(bodies: list[bytes]) -> int:
    window = _decode(_int_dec, "CREDIT", _one("CREDIT", bodies))
    if window < 0:
        raise ProtocolError(f"CREDIT window must be >= 0, got {window}")
    return window


def encode_ids(ids: list[MessageId]) -> bytes:
    return _enc.encode(ids)


def decode_ids(bodies: list[bytes]) -> list[MessageId]:
    return _decode(_ids_dec, "ACK", _one("ACK", bodies))


def encode_nacks(items: list[NackItem]) -> bytes:
    return _enc.encode(items)


def decode_nacks(bodies: list[bytes]) -> list[NackItem]:
    return _decode(_nacks_dec, "NACK", _one("NACK", bodies))


def encode(obj: object) -> bytes:
    """MessagePack-encode a body (Register, Welcome, Disconnect, Notice, int)."""
    return _enc.encode(obj)


def disconnect(code: DisconnectCode, reason: str) -> list[bytes]:
    """A DISCONNECT message."""
    return frames(FrameKind.DISCONNECT, _enc.encode(Disconnect(int(code), reason[:MAX_REASON])))


def notice(code: ErrorCode, reason: str) -> list[bytes]:
    """An ERROR message (broker -> peer)."""
    return frames(FrameKind.ERROR, _enc.encode(Notice(int(code), reason[:MAX_REASON])))
