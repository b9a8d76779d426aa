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
    RemoteError,
    RoutingError,
    SchedulerError,
    UndeliverableError,
)
from engine.messages import AgentId, Envelope, Kind, Message, MessageId, TopicId
from engine.routing import Router, RouterC, RouterPy
from engine.scheduling import Scheduler, SchedulerC, SchedulerPy

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
    "RemoteError",
    "Router",
    "RouterC",
    "RouterPy",
    "RoutingError",
    "Scheduler",
    "SchedulerC",
    "SchedulerError",
    "SchedulerPy",
    "TopicId",
    "UndeliverableError",
    "__version__",
    "errors",
    "native_info",
]
