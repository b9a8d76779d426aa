"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules.
"""

from __future__ import annotations

from engine import errors
from engine._native import HAS_NATIVE, native_info
from engine.agents import Agent, Context, handler
from engine.errors import (
    AuditError,
    CorruptFileError,
    CycleError,
    DeadlineExceeded,
    DecodeError,
    DimensionError,
    EmbeddingError,
    EncodeError,
    EngineError,
    InvalidTransition,
    InvalidVectorError,
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
    TraceContextError,
    UndeliverableError,
    UnknownIdError,
    VectorStoreError,
)
from engine.memory import (
    ConversationMemory,
    HashingEmbedder,
    HybridRetriever,
    OpenAIEmbedder,
    SemanticCache,
    SentenceTransformerEmbedder,
    VectorStore,
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
from engine.runtime import Query, QueryState, Runtime, Spawn, Transport, run
from engine.scheduling import Scheduler, SchedulerC, SchedulerPy
from engine.tools import Tool, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "HAS_NATIVE",
    "Agent",
    "AgentId",
    "AuditError",
    "AuditLog",
    "Context",
    "ConversationMemory",
    "CorruptFileError",
    "CycleError",
    "DeadlineExceeded",
    "DecodeError",
    "DimensionError",
    "EmbeddingError",
    "EncodeError",
    "EngineError",
    "Envelope",
    "HashingEmbedder",
    "HybridRetriever",
    "InvalidTransition",
    "InvalidVectorError",
    "Kind",
    "MailboxFull",
    "Message",
    "MessageId",
    "Metrics",
    "NativeUnavailable",
    "ObserveServer",
    "OpenAIEmbedder",
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
    "Sampler",
    "Scheduler",
    "SchedulerC",
    "SchedulerError",
    "SchedulerPy",
    "SemanticCache",
    "SentenceTransformerEmbedder",
    "Spawn",
    "Tool",
    "ToolError",
    "ToolNotFound",
    "ToolRegistry",
    "ToolTimeout",
    "ToolValidationError",
    "TopicId",
    "TraceContextError",
    "Tracer",
    "Transport",
    "UndeliverableError",
    "UnknownIdError",
    "VectorStore",
    "VectorStoreError",
    "__version__",
    "configure_logging",
    "errors",
    "handler",
    "log_context",
    "native_info",
    "run",
    "tool",
]
