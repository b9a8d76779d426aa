"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules.
"""

from __future__ import annotations

from engine import errors
from engine._native import HAS_NATIVE, native_info
from engine.errors import (
    AuditError,
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
    TraceContextError,
    UndeliverableError,
)
from engine.messages import AgentId, Envelope, Kind, Message, MessageId, TopicId
from engine.observe import (
    AuditLog,
    Metrics,
    ObserveServer,
    Sampler,
    Tracer,
    configure_logging,
    log_context,
)
from engine.routing import Router, RouterC, RouterPy
from engine.scheduling import Scheduler, SchedulerC, SchedulerPy

__version__ = "0.1.0"

__all__ = [
    "HAS_NATIVE",
    "AgentId",
    "AuditError",
    "AuditLog",
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
    "Metrics",
    "NativeUnavailable",
    "ObserveServer",
    "RemoteError",
    "Router",
    "RouterC",
    "RouterPy",
    "RoutingError",
    "Sampler",
    "Scheduler",
    "SchedulerC",
    "SchedulerError",
    "SchedulerPy",
    "TopicId",
    "TraceContextError",
    "Tracer",
    "UndeliverableError",
    "__version__",
    "configure_logging",
    "errors",
    "log_context",
    "native_info",
]
