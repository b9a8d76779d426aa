"""Agent memory: FAISS vector search, embedders, semantic cache, conversations, hybrid retrieval."""

from __future__ import annotations

from engine.memory.vectors import VectorStore

__all__ = ["VectorStore"]
