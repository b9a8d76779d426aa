"""Agent memory: FAISS vector search, embedders, semantic cache, conversations, hybrid retrieval."""

from __future__ import annotations

from engine.memory import _faiss  # noqa: F401  (first: names the extra when FAISS is missing)
from engine.memory._pool import SearchPool, search_pool
from engine.memory.cache import DEFAULT_THRESHOLDS, CacheHit, SemanticCache
from engine.memory.conversation import ConversationMemory, Turn
from engine.memory.embedders import (
    Embedder,
    HashingEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
)
from engine.memory.hybrid import BM25Index, HybridRetriever, Retrieved, rrf
from engine.memory.vectors import VectorStore

__all__ = [
    "DEFAULT_THRESHOLDS",
    "BM25Index",
    "CacheHit",
    "ConversationMemory",
    "Embedder",
    "HashingEmbedder",
    "HybridRetriever",
    "OpenAIEmbedder",
    "Retrieved",
    "SearchPool",
    "SemanticCache",
    "SentenceTransformerEmbedder",
    "Turn",
    "VectorStore",
    "rrf",
    "search_pool",
]
