"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules.
"""

from __future__ import annotations

from engine import errors
from engine._native import HAS_NATIVE, native_info
from engine.errors import (
    CycleError,
    DecodeError,
    EncodeError,
    EngineError,
    InvalidTransition,
    MailboxFull,
    NativeUnavailable,
    ProtocolError,
    RemoteError,
    RoutingError,
    SchedulerError,
    UndeliverableError,
)
from engine.messages import AgentId, Envelope, Kind, Message, MessageId, TopicId

__version__ = "0.1.0"

__all__ = [
    "HAS_NATIVE",
    "AgentId",
    "CycleError",
    "DecodeError",
    "EncodeError",
    "EngineError",
    "Envelope",
    "InvalidTransition",
    "Kind",
    "MailboxFull",
    "Message",
    "MessageId",
    "NativeUnavailable",
    "ProtocolError",
    "RemoteError",
    "RoutingError",
    "SchedulerError",
    "TopicId",
    "UndeliverableError",
    "__version__",
    "errors",
    "native_info",
]
