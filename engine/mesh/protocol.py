"""The mesh wire protocol (version 1): frames, kinds, bodies, limits.

Peers (nodes, clients) hold a ZeroMQ DEALER socket connected to the broker's ROUTER.
Every ZeroMQ message, in either direction, is a multipart message::

    frame 0   b"AEM\\x01" + kind    header: signature, protocol version, kind (5 bytes);
                                   kind bit 0x80 set = signed (HMAC)
    frame 1.. bodies               MessagePack, kind-specific (zero or more)
    last      mac                  only when signed: HMAC-SHA256 over the frames before it

The ROUTER side additionally sees (and prepends) the peer's routing id, as ZeroMQ does.
``docs/protocol.md`` is the normative description for implementers in other languages;
this module is the reference implementation and imports nothing but msgspec and the
engine's wire envelope.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
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
    "FrameKind",
    "NackCode",
    "NackItem",
    "Register",
    "Role",
    "Welcome",
    "decode_ids",
    "decode_nacks",
    "encode_ids",
    "encode_nacks",
    "frames",
    "header",
    "parse",
    "sign",
]

VERSION: Final = 1
SIGNATURE: Final = b"AEM" + bytes([VERSION])
#: Default maximum size of one ZeroMQ message in bytes (``ZMQ_MAXMSGSIZE`` on the broker).
MAX_FRAME: Final = 16 * 1024 * 1024
#: Maximum number of body frames in one message (batches larger than this are split).
MAX_BODIES: Final = 4096
#: Size of the HMAC-SHA256 trailer of a signed message.
MAC_SIZE: Final = 32
SIGNED: Final = 0x80
HEADER_SIZE: Final = 5


class FrameKind(enum.IntEnum):
    """Frame 1 of every message (low 7 bits)."""

    REGISTER = 1  # peer -> broker: Register; broker -> peer: Welcome
    HEARTBEAT = 2  # both ways, no body
    DELIVER = 3  # bodies are Envelopes: peer -> broker submits, broker -> node delivers
    ACK = 4  # one body: [MessageId, ...] done (node -> broker) / accepted (broker -> peer)
    NACK = 5  # one body: [[MessageId, code, reason], ...]
    REPLY = 6  # bodies are Envelopes of kind REPLY/ERROR, correlation = the request id
    CREDIT = 7  # one body: int, the peer's new delivery window
    DISCONNECT = 8  # one body: Disconnect; graceful leave / "register again"


class Role(enum.StrEnum):
    """What a peer may send (enforced by the broker; bound to its key under CURVE)."""

    ORCHESTRATOR = "orchestrator"  # submits work, hosts agents, everything
    WORKER = "worker"  # hosts agents: replies, acks, nacks, credit; submits nothing
    MONITOR = "monitor"  # registers and may subscribe; sends no work and no replies


#: Frame kinds each role may send to the broker.
ALLOWED: Final[dict[Role, frozenset[FrameKind]]] = {
    Role.ORCHESTRATOR: frozenset(FrameKind),
    Role.WORKER: frozenset(FrameKind) - {FrameKind.DELIVER},
    Role.MONITOR: frozenset(
        {FrameKind.REGISTER, FrameKind.HEARTBEAT, FrameKind.ACK, FrameKind.DISCONNECT}
    ),
}


class NackCode(enum.IntEnum):
    """Why a message was refused (NACK body items)."""

    BUSY = 1  # broker: over its queue bound, resubmit later
    UNROUTABLE = 2  # broker: no node hosts the type / bad recipient; final
    DEAD_LETTERED = 3  # broker: attempts exhausted; final, stored in the DLQ
    FORBIDDEN = 4  # broker: the sender's role may not submit this; final
    REJECTED = 5  # node: cannot take it now (shutting down, unknown type); broker re-routes
    EXPIRED = 6  # broker or node: the envelope's deadline passed; final


class Register(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """Body of REGISTER sent by a peer (a MessagePack map with these string keys)."""

    name: str
    role: Role = Role.WORKER
    types: list[str] = []  # agent types this peer hosts
    subscriptions: list[str] = []  # topic patterns ("pings.*", "#") this peer receives
    origins: list[str] = []  # MessageId origins whose replies must be routed here
    credit: int = 0  # delivery window: max unacknowledged deliveries to this peer
    heartbeat_ms: int = 0  # the peer's heartbeat interval (0 = use the broker's)


class Welcome(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=False):
    """Body of REGISTER sent by the broker in answer to a peer's REGISTER."""

    broker: str  # random id of this broker run: a change means the broker restarted
    heartbeat_ms: int
    max_frame: int
    credit: int  # submission window: max submitted-but-unacknowledged envelopes
    version: int = VERSION


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


class NackItem(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: MessageId
    code: int
    reason: str = ""


_enc = msgspec.msgpack.Encoder()
_ids_dec = msgspec.msgpack.Decoder(list[MessageId])
_nacks_dec = msgspec.msgpack.Decoder(list[NackItem])
_register_dec = msgspec.msgpack.Decoder(Register)
_welcome_dec = msgspec.msgpack.Decoder(Welcome)
_disconnect_dec = msgspec.msgpack.Decoder(Disconnect)
_int_dec = msgspec.msgpack.Decoder(int)

# PERF: signature and kind share one header frame: each frame is a zmq_msg_send/recv,
# and 3 -> 2 frames saved ~6 us per hop (in-process DEALER->ROUTER loop, 2026-11).
_HEADERS: Final = [SIGNATURE + bytes([k]) for k in range(256)]


_KIND_OF: Final[list[FrameKind | None]] = [
    FrameKind(k) if k in FrameKind._value2member_map_ else None for k in range(128)
]


#: Unsigned header frame -> kind: :func:`parse`'s fast path when no HMAC key is in use (any
#: other first frame is validated step by step, naming the problem).
#: PERF: one dict lookup for the common message (benches/mesh_seq_profile.py).
UNSIGNED: Final[dict[bytes, FrameKind]] = {SIGNATURE + bytes([k]): k for k in FrameKind}


def header(kind: int) -> bytes:
    """Frame 0 of a message of ``kind``."""
    return _HEADERS[kind]


def frames(kind: FrameKind, *bodies: bytes) -> list[bytes]:
    """The frames of one unsigned message (without the routing id)."""
    return [_HEADERS[kind], *bodies]


def sign(msg: list[bytes], key: bytes) -> list[bytes]:
    """Sign ``msg`` (as built by :func:`frames`) in place: set bit 0x80, append the MAC."""
    msg[0] = _HEADERS[msg[0][4] | SIGNED]
    msg.append(_mac(key, msg))
    return msg


def unsign(msg: list[bytes]) -> list[bytes]:
    """Undo :func:`sign` (to re-sign after a failed send)."""
    msg[0] = _HEADERS[msg[0][4] & ~SIGNED]
    msg.pop()
    return msg


def _mac(key: bytes, msg: list[bytes]) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in msg:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def parse(msg: list[bytes], key: bytes | None = None) -> tuple[FrameKind, list[bytes]]:
    """Validate the envelope frames of one message; return its kind and body frames.

    ``msg`` excludes the routing id. With ``key`` set, only correctly signed messages
    pass. Raises :class:`ProtocolError` naming the problem.
    """
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
    signed = bool(raw & SIGNED)
    if key is not None:
        if not signed:
            raise ProtocolError("unsigned message while HMAC signatures are required")
        if len(msg) < 2 or not hmac.compare_digest(msg[-1], _mac(key, msg[:-1])):
            raise ProtocolError("bad HMAC signature")
        bodies = msg[1:-1]
    elif signed:
        if len(msg) < 2 or len(msg[-1]) != MAC_SIZE:
            raise ProtocolError("signed message without a MAC trailer")
        bodies = msg[1:-1]
    else:
        bodies = msg[1:]
    if len(bodies) > MAX_BODIES:
        raise ProtocolError(f"{len(bodies)} bodies exceed the limit of {MAX_BODIES}")
    return kind, bodies


def _one(kind: str, bodies: list[bytes]) -> bytes:
    if len(bodies) != 1:
        raise ProtocolError(f"{kind} needs exactly 1 body frame, got {len(bodies)}")
    return bodies[0]


T = TypeVar("T")


def _decode(dec: msgspec.msgpack.Decoder[T], what: str, data: bytes) -> T:
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"invalid {what} body: {exc}") from None


def decode_register(bodies: list[bytes]) -> Register:
    return _decode(_register_dec, "REGISTER", _one("REGISTER", bodies))


def decode_welcome(bodies: list[bytes]) -> Welcome:
    return _decode(_welcome_dec, "REGISTER (welcome)", _one("REGISTER", bodies))


def decode_disconnect(bodies: list[bytes]) -> Disconnect:
    return _decode(_disconnect_dec, "DISCONNECT", _one("DISCONNECT", bodies))


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
    """MessagePack-encode a body (Register, Welcome, Disconnect, int)."""
    return _enc.encode(obj)
