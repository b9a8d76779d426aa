"""agent-engine: a high-performance multi-agent runtime.

The public API is flat and re-exported here from private modules.
"""

from __future__ import annotations

from engine import errors
from engine._native import HAS_NATIVE, native_info
from engine.errors import (
    CorruptFileError,
    CycleError,
    DecodeError,
    DimensionError,
    EmbeddingError,
    EncodeError,
    EngineError,
    InvalidTransition,
    InvalidVectorError,
    MailboxFull,
    NativeUnavailable,
    RemoteError,
    RoutingError,
    SchedulerError,
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

__version__ = "0.1.0"

__all__ = [
    "HAS_NATIVE",
    "AgentId",
    "ConversationMemory",
    "CorruptFileError",
    "CycleError",
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
    "NativeUnavailable",
    "OpenAIEmbedder",
    "RemoteError",
    "RoutingError",
    "SchedulerError",
    "SemanticCache",
    "SentenceTransformerEmbedder",
    "TopicId",
    "UndeliverableError",
    "UnknownIdError",
    "VectorStore",
    "VectorStoreError",
    "__version__",
    "errors",
    "native_info",
]
