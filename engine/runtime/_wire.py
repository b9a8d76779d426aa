"""What the runtime needs at its transport boundary: message classes by wire name, errors.

This is the one place errors cross the wire, both ways: :func:`error_info` turns an
exception into the ERROR envelope's payload, :func:`error_from_info` turns that payload back
into the exception a sender raises. ``Runtime(mesh=...)`` and ``engine.mesh.MeshClient`` both
use it, so the same ERROR reply raises the same class in either.

A :class:`~engine.messages.Message` travels as ``payload_type`` (its wire name: the msgspec
tag, the class name by default) plus the encoded payload. :class:`MessageTypes` maps names
back to classes: the message classes of the runtime's registered agents first, then the one
live ``Message`` subclass of that name; an ambiguous name is refused, never guessed.
"""

from __future__ import annotations

from typing import Any, Final

from engine.errors import (
    DeadlineExceeded,
    EngineError,
    MailboxFull,
    MessageTypeConflict,
    ProtocolError,
    RemoteError,
    UndeliverableError,
)
from engine.messages import (
    Envelope,
    ErrorInfo,
    Message,
    decode_payload,
    message_class,
    same_definition,
    wire_name,
)

__all__ = ["MessageTypes", "error_from_info", "error_info"]


class MessageTypes:
    """Per-runtime map of wire names to message classes (grows with what it has seen).

    Classes registered through the runtime's agents win over a lookup among all loaded
    ``Message`` subclasses; two different registered classes may not share a wire name.
    """

    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name: dict[str, type] = {}

    def add(self, cls: type) -> None:
        """Register ``cls``; :class:`MessageTypeConflict` if another class has its name."""
        if isinstance(cls, type) and issubclass(cls, Message):
            name = wire_name(cls)
            other = self._by_name.setdefault(name, cls)
            if other is not cls:
                if not same_definition(other, cls):
                    raise MessageTypeConflict(name, [other, cls])
                self._by_name[name] = cls  # defined again (notebook cell, reload): newest

    def get(self, name: str) -> type | None:
        """The class for ``name``: registered, else the one loaded class of that name."""
        cls = self._by_name.get(name)
        if cls is None:
            try:
                cls = message_class(name)
            except MessageTypeConflict as exc:
                raise UndeliverableError(str(exc)) from None
            if cls is not None:
                self._by_name[name] = cls
        return cls

    def decode(self, env: Envelope) -> Any:
        """The envelope's message object (DecodeError/UndeliverableError if impossible)."""
        if not env.payload_type:
            return decode_payload(env.payload, Any)
        cls = self.get(env.payload_type)
        if cls is None:
            raise UndeliverableError(f"unknown message type {env.payload_type!r} in envelope")
        return decode_payload(env.payload, cls)


#: Engine errors that keep their class across the wire (each takes one message argument).
_ERRORS: Final[dict[str, type[EngineError]]] = {
    cls.__name__: cls for cls in (UndeliverableError, MailboxFull, DeadlineExceeded, ProtocolError)
}


def error_info(exc: BaseException) -> ErrorInfo:
    """The ``Kind.ERROR`` payload for ``exc`` (a RemoteError keeps the original type)."""
    if isinstance(exc, RemoteError):
        return ErrorInfo(exc.type_name, exc.message)
    return ErrorInfo(type(exc).__name__, str(exc))


def error_from_info(info: ErrorInfo) -> EngineError:
    """The exception a sender sees for an ERROR reply: engine errors keep their class."""
    cls = _ERRORS.get(info.type_name)
    if cls is not None:
        return cls(info.message)
    return RemoteError(info.type_name, info.message)
