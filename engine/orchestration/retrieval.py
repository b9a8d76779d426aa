"""``RetrievalTool``: a tool that searches memory, so workers ground answers in it.

Over a :class:`~engine.memory.HybridRetriever` (keywords + vectors, fused) it returns the
documents' texts; over a plain :class:`~engine.memory.VectorStore` it embeds the query with
``embedder`` and reads each hit's text with ``lookup(id)`` (the store keeps vectors, not
texts). ``.tool`` is the ``@tool`` to give a :class:`ReActAgent` or any ``run_tools`` loop.

.. code-block:: python

    docs = HybridRetriever()
    docs.add([1, 2], ["Paris is the capital of France.", "Rome is the capital of Italy."])
    search = RetrievalTool(docs, k=2).tool      # name "retrieve", argument query (and k)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from engine.errors import VectorStoreError
from engine.memory import HybridRetriever, VectorStore
from engine.tools import Tool, tool

__all__ = ["Passage", "RetrievalTool"]

_MAX_K = 50


class Passage(msgspec.Struct, frozen=True):
    """One retrieved document: its id, text (cut to ``max_chars``) and score."""

    id: int
    text: str
    score: float


class RetrievalTool:
    """Search ``source`` for the ``k`` passages nearest a query (see the module docs)."""

    def __init__(
        self,
        source: HybridRetriever | VectorStore,
        *,
        embedder: Any = None,
        lookup: Callable[[int], str | None] | Mapping[int, str] | None = None,
        k: int = 4,
        namespace: str | None = None,
        max_chars: int = 2_000,
        name: str = "retrieve",
        description: str = "Search memory for passages relevant to a query.",
    ) -> None:
        if not isinstance(k, int) or not 1 <= k <= _MAX_K:
            raise ValueError(f"k must be an int in 1..{_MAX_K}, got {k!r}")
        if isinstance(source, VectorStore):
            if embedder is None or lookup is None:
                raise VectorStoreError(
                    "a RetrievalTool over a VectorStore needs embedder= (for the query) and "
                    "lookup= (id -> text); a HybridRetriever needs neither"
                )
            if getattr(embedder, "dim", source.dim) != source.dim:
                raise VectorStoreError("embedder and store dimensions differ")
        elif not isinstance(source, HybridRetriever):
            raise TypeError(f"source must be a HybridRetriever or VectorStore, got {source!r}")
        self.source = source
        self.embedder = embedder
        self._lookup = lookup.get if isinstance(lookup, Mapping) else lookup
        self.k = k
        self.namespace = namespace
        self.max_chars = max_chars

        async def retrieve(query: str, k: int = k) -> list[Passage]:
            return self.search(query, k)

        retrieve.__name__ = name
        retrieve.__doc__ = description
        # a search has no side effects: model replies that offered it may be cached
        self.tool: Tool = tool(cacheable=True)(retrieve)

    def search(self, query: str, k: int | None = None) -> list[Passage]:
        """The passages for ``query``, best first (``k`` capped at 50)."""
        if not isinstance(query, str) or not query.strip():
            raise VectorStoreError("query must be a non-empty str")
        k = self.k if k is None else max(1, min(int(k), _MAX_K))
        cut = self.max_chars
        if isinstance(self.source, HybridRetriever):
            if not len(self.source):
                return []
            return [
                Passage(r.id, r.text[:cut], float(r.score)) for r in self.source.search(query, k)
            ]
        store = self.source
        if not len(store):
            return []
        ids, scores = store.search(
            self.embedder.embed([query]), k=min(k, len(store)), namespace=self.namespace
        )
        out = []
        assert self._lookup is not None
        for i, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
            if i < 0:
                continue
            text = self._lookup(int(i))
            if text is not None:
                out.append(Passage(int(i), text[:cut], float(score)))
        return out
