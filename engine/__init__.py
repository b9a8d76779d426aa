"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules. Only the exception classes
load with ``import engine``; every other name loads its module on first use, so that a
service importing the engine pays for the parts it uses (FAISS, the openai client,
prometheus-client, OpenTelemetry and rich load only with the features that need them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import errors
from engine._lazy import lazy
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
    MessageTypeConflict,
    MissingExtraError,
    NativeFallbackWarning,
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

if TYPE_CHECKING:
    from engine._native import (
        HAS_NATIVE,
        native_info,
    )
    from engine.agents import (
        Agent,
        Context,
        handler,
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
    from engine.messages import (
        AgentId,
        Envelope,
        Kind,
        Message,
        MessageId,
        TopicId,
    )
    from engine.observe import (
        AuditLog,
        Metrics,
        ObserveServer,
        RedactingFilter,
        Sampler,
        Tracer,
        configure_logging,
        log_context,
    )
    from engine.routing import (
        Router,
        RouterC,
        RouterPy,
    )
    from engine.runtime import (
        Query,
        QueryState,
        Runtime,
        Spawn,
        Transport,
        run,
    )
    from engine.scheduling import (
        Scheduler,
        SchedulerC,
        SchedulerPy,
    )
    from engine.tools import (
        Tool,
        ToolRegistry,
        tool,
    )

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "HAS_NATIVE": "engine._native",
    "native_info": "engine._native",
    "Agent": "engine.agents",
    "Context": "engine.agents",
    "handler": "engine.agents",
    "ConversationMemory": "engine.memory",
    "HashingEmbedder": "engine.memory",
    "HybridRetriever": "engine.memory",
    "OpenAIEmbedder": "engine.memory",
    "SemanticCache": "engine.memory",
    "SentenceTransformerEmbedder": "engine.memory",
    "VectorStore": "engine.memory",
    "AgentId": "engine.messages",
    "Envelope": "engine.messages",
    "Kind": "engine.messages",
    "Message": "engine.messages",
    "MessageId": "engine.messages",
    "TopicId": "engine.messages",
    "AuditLog": "engine.observe",
    "Metrics": "engine.observe",
    "ObserveServer": "engine.observe",
    "RedactingFilter": "engine.observe",
    "Sampler": "engine.observe",
    "Tracer": "engine.observe",
    "configure_logging": "engine.observe",
    "log_context": "engine.observe",
    "Router": "engine.routing",
    "RouterC": "engine.routing",
    "RouterPy": "engine.routing",
    "Query": "engine.runtime",
    "QueryState": "engine.runtime",
    "Runtime": "engine.runtime",
    "Spawn": "engine.runtime",
    "Transport": "engine.runtime",
    "run": "engine.runtime",
    "Scheduler": "engine.scheduling",
    "SchedulerC": "engine.scheduling",
    "SchedulerPy": "engine.scheduling",
    "Tool": "engine.tools",
    "ToolRegistry": "engine.tools",
    "tool": "engine.tools",
}


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
    "MessageTypeConflict",
    "Metrics",
    "MissingExtraError",
    "NativeFallbackWarning",
    "NativeUnavailable",
    "ObserveServer",
    "OpenAIEmbedder",
    "ProtocolError",
    "Query",
    "QueryCancelled",
    "QueryState",
    "RedactingFilter",
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

__getattr__, __dir__ = lazy(__name__, _LAZY, __all__)
