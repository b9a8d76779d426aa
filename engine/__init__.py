"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules.
"""

from __future__ import annotations

from engine import errors
from engine._native import HAS_NATIVE, native_info
from engine.agents import Agent, Context, handler
from engine.errors import (
    CycleError,
    DeadlineExceeded,
    DecodeError,
    EncodeError,
    EngineError,
    InvalidTransition,
    MailboxFull,
    NativeUnavailable,
    ProtocolError,
    QueryCancelled,
    RemoteError,
    RoutingError,
    SchedulerError,
    ToolError,
    ToolNotFound,
    ToolTimeout,
    ToolValidationError,
    UndeliverableError,
)
from engine.messages import AgentId, Envelope, Kind, Message, MessageId, TopicId
from engine.routing import Router, RouterC, RouterPy
from engine.runtime import Query, QueryState, Runtime, Spawn, Transport, run
from engine.scheduling import Scheduler, SchedulerC, SchedulerPy
from engine.tools import Tool, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "HAS_NATIVE",
    "Agent",
    "AgentId",
    "Context",
    "CycleError",
    "DeadlineExceeded",
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
    "Query",
    "QueryCancelled",
    "QueryState",
    "RemoteError",
    "Router",
    "RouterC",
    "RouterPy",
    "RoutingError",
    "Runtime",
    "Scheduler",
    "SchedulerC",
    "SchedulerError",
    "SchedulerPy",
    "Spawn",
    "Tool",
    "ToolError",
    "ToolNotFound",
    "ToolRegistry",
    "ToolTimeout",
    "ToolValidationError",
    "TopicId",
    "Transport",
    "UndeliverableError",
    "__version__",
    "errors",
    "handler",
    "native_info",
    "run",
    "tool",
]
