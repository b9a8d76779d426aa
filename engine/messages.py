"""Wire messages: identities, the envelope every message travels in, and its codec.

An :class:`Envelope` carries routing headers plus the user's message as ``msgspec.Raw``
bytes, so routers and brokers read the header and never decode the payload.
Everything is MessagePack (msgspec), one shared encoder/decoder created once.
"""

from __future__ import annotations

import enum
import itertools
import os
import sys
from typing import Annotated, Any, Final, TypeVar

import msgspec

from engine.errors import DecodeError, EncodeError, MessageTypeConflict

__all__ = [
    "DEFAULT_MAX_SIZE",
    "AgentId",
    "Codec",
    "Envelope",
    "Kind",
    "Message",
    "MessageId",
    "MessageIds",
    "TopicId",
    "decode",
    "decode_payload",
    "encode",
    "encode_into",
    "encode_payload",
    "message_class",
    "same_definition",
    "wire_name",
]

#: Default limit for one encoded envelope (bytes); ``Codec(max_size=...)`` overrides it.
DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Key = Annotated[str, msgspec.Meta(max_length=1024)]


class AgentId(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An agent instance: its ``type`` (what code runs) and ``key`` (which instance)."""

    type: Name
    key: Key = "default"

    def __str__(self) -> str:
        return f"{self.type}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Parse ``"type/key"`` (or ``"type"`` for the default key)."""
        type_, _, key = text.partition("/")
        if not type_:
            raise ValueError(f"agent id {text!r} has an empty type")
        return cls(type_, key or "default")


class TopicId(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A pub/sub topic: dotted ``type`` (``"pings.eu"``) and the ``source`` it concerns."""

    type: Name
    source: Key = "default"

    def __str__(self) -> str:
        return f"{self.type}/{self.source}"


class MessageId(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Globally unique message id: the sending runtime's random ``origin`` and its ``seq``.

    Two senders never collide because each draws a 64-bit random origin; one sender never
    repeats because ``seq`` only grows. Replies carry the request's id as ``correlation``;
    the mesh uses it as the idempotency key.
    """

    origin: str
    seq: int


class MessageIds:
    """Allocates :class:`MessageId` values for one sender (a runtime, node or client)."""

    __slots__ = ("_counter", "origin")

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin or os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> MessageId:
        return MessageId(self.origin, next(self._counter))


class Kind(enum.IntEnum):
    """What an envelope is for."""

    SEND = 1  # request to one agent; expects a REPLY or ERROR
    REPLY = 2
    ERROR = 3  # a handler raised: payload is ErrorInfo
    PUBLISH = 4  # fan-out to a topic's subscribers; no reply
    CANCEL = 5  # cancel the request named by ``correlation``


class Envelope(msgspec.Struct, tag="v1", array_like=True, gc=False):
    """The one message envelope, in process and on the wire.

    ``payload`` holds the encoded user message (``payload_type`` names its class) as raw
    bytes. The tag ``"v1"`` (first array element on the wire) is the envelope version.
    ``deadline`` is a UNIX time in seconds (0 = none); ``traceparent`` is W3C trace context.
    """

    id: MessageId
    kind: Kind
    sender: AgentId | None = None
    recipient: AgentId | None = None
    topic: TopicId | None = None
    correlation: MessageId | None = None
    priority: int = 0
    deadline: float = 0.0
    tenant: str = ""
    attempt: int = 0
    traceparent: str = ""
    payload_type: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"\xc0")  # MessagePack nil: an empty Raw is not valid


_by_wire_name: dict[str, type] = {}


class Message(msgspec.Struct, tag=True, tag_field="@type"):
    """Base class of user messages: subclass it with typed fields.

    The wire name is the msgspec tag (field ``"@type"``, so users may name a field
    ``type``): the class name unless the class sets ``tag="app.Name"``, which is how two
    classes of the same name in different modules stay apart. An explicit tag is inherited
    (msgspec), so a subclass of a tagged class needs its own. Subclasses are encoded as
    tagged MessagePack maps; envelopes carry the wire name as ``payload_type``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _by_wire_name.clear()  # the new class may redefine or shadow a looked-up name


def wire_name(cls: type) -> str:
    """The name ``cls`` travels under: a tagged struct's msgspec tag, else the class name."""
    config = getattr(cls, "__struct_config__", None)
    tag = config.tag if config is not None else None
    return tag if isinstance(tag, str) else cls.__name__


def message_class(name: str) -> type | None:
    """The :class:`Message` subclass whose wire name is ``name`` (None if there is none).

    A class defined again (same qualified name and module or source file: a re-run notebook
    cell, a reloaded module) replaces the older one. Two *different* classes sharing the name
    raise :class:`~engine.errors.MessageTypeConflict`: the receiver cannot tell which one
    was meant, so it refuses to guess.
    """
    cls = _by_wire_name.get(name)
    if cls is not None:
        return cls
    found: list[type] = []
    todo = list(Message.__subclasses__())
    while todo:
        c = todo.pop(0)  # breadth first, in definition order: a redefinition comes later
        todo.extend(c.__subclasses__())
        if wire_name(c) == name:
            found = [f for f in found if not same_definition(f, c)] + [c]
    if len(found) > 1:
        raise MessageTypeConflict(name, found)
    if found:
        cls = found[0]
        _by_wire_name[name] = cls
        return cls
    return None


def same_definition(a: type, b: type) -> bool:
    """Whether ``a`` and ``b`` are one class defined twice: same qualified name, and the same
    module or the same source file (a module imported under two names)."""
    if a.__qualname__ != b.__qualname__:
        return False
    if a.__module__ == b.__module__:
        return True
    fa = getattr(sys.modules.get(a.__module__), "__file__", None)
    fb = getattr(sys.modules.get(b.__module__), "__file__", None)
    return fa is not None and fa == fb


class ErrorInfo(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Payload of a ``Kind.ERROR`` envelope."""

    type_name: str
    message: str


class Codec:
    """Encoder/decoder for envelopes with a size limit on untrusted input.

    Create one per limit and reuse it; the module-level :func:`encode`/:func:`decode`
    use a shared default instance.
    """

    __slots__ = ("_decoder", "_encoder", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Envelope)

    def encode(self, envelope: Envelope) -> bytes:
        try:
            return self._encoder.encode(envelope)
        except (TypeError, msgspec.EncodeError) as exc:
            raise EncodeError(f"cannot encode envelope: {exc}") from None

    def encode_into(self, envelope: Envelope, buffer: bytearray, offset: int = 0) -> int:
        """Encode into ``buffer`` at ``offset`` (the buffer grows as needed); returns the end."""
        try:
            self._encoder.encode_into(envelope, buffer, offset)
        except (TypeError, msgspec.EncodeError) as exc:
            raise EncodeError(f"cannot encode envelope: {exc}") from None
        return len(buffer)

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """Decode one envelope; any problem raises :class:`DecodeError` naming it."""
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if size > self.max_size:
            raise DecodeError(f"envelope of {size} bytes exceeds the {self.max_size}-byte limit")
        if size == 0:
            raise DecodeError("empty input: expected an encoded envelope")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"invalid envelope: {exc}") from None
        except msgspec.DecodeError as exc:
            raise DecodeError(f"malformed envelope: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DecodeError(f"malformed envelope: invalid UTF-8 ({exc.reason})") from None
        except RecursionError:
            raise DecodeError("malformed envelope: nesting too deep") from None


_default = Codec()
encode = _default.encode
encode_into = _default.encode_into
decode = _default.decode

_payload_encoder = msgspec.msgpack.Encoder()
M = TypeVar("M")


def encode_payload(message: Any) -> msgspec.Raw:
    """Encode a user message for ``Envelope.payload``."""
    try:
        return msgspec.Raw(_payload_encoder.encode(message))
    except (TypeError, msgspec.EncodeError) as exc:
        raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from None


def decode_payload(raw: msgspec.Raw | bytes, type_: type[M]) -> M:
    """Decode an envelope payload as ``type_`` (a Message subclass or a union of them)."""
    try:
        return msgspec.msgpack.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid payload: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed payload: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"malformed payload: invalid UTF-8 ({exc.reason})") from None
