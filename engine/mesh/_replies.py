"""What a mesh client makes of a REPLY or ERROR envelope (:func:`decode_reply`)."""

from __future__ import annotations

from typing import Any

from engine.errors import DecodeError, RemoteError
from engine.messages import (
    Envelope,
    ErrorInfo,
    Kind,
    decode_payload,
    message_class,
)
from engine.runtime._wire import error_from_info

__all__ = ["decode_reply"]


def decode_reply(env: Envelope, reply_type: Any = None) -> Any:
    """The message inside a REPLY envelope; an ERROR envelope raises the sender's error.

    Engine errors keep their class (``UndeliverableError``, ``DeadlineExceeded``, ...),
    a handler's own exception arrives as :class:`RemoteError` — the same mapping
    ``Runtime(mesh=...)`` uses (``engine.runtime._wire``).
    """
    if env.kind is Kind.ERROR:
        try:
            info = decode_payload(env.payload, ErrorInfo)
        except DecodeError:
            raise RemoteError("UnknownError", "undecodable error reply") from None
        raise error_from_info(info)
    if reply_type is None:
        if env.payload_type == "" or env.payload == b"\xc0" or not bytes(env.payload):
            return None
        reply_type = message_class(env.payload_type)  # MessageTypeConflict if ambiguous
        if reply_type is None:
            return env.payload
    return decode_payload(env.payload, reply_type)
