"""Hybrid retrieval: BM25 keyword search + vector search, fused by reciprocal-rank fusion.

The BM25 index here is incremental (add/remove one document at a time, as agent memory
grows), which is why it is not ``rank-bm25``/``bm25s``: both index a fixed corpus at once.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import UnknownIdError, VectorStoreError
from engine.memory.embedders import Embedder, HashingEmbedder
from engine.memory.vectors import VectorStore

__all__ = ["BM25Index", "HybridRetriever", "Retrieved", "rrf"]

_TOKEN = re.compile(r"\w+", re.UNICODE)
Reranker = Callable[[str, list["Retrieved"]], Sequence[float]]


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25Index:
    """Okapi BM25 over an inverted index (term -> {doc id: term frequency})."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths: dict[int, int] = {}
        self._terms: dict[int, list[str]] = {}
        self._total = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, doc_id: int, text: str) -> None:
        if doc_id in self._lengths:
            self.remove(doc_id)
        terms = Counter(tokenize(text))
        for term, tf in terms.items():
            self._postings.setdefault(term, {})[doc_id] = tf
        length = sum(terms.values())
        self._lengths[doc_id] = length
        self._terms[doc_id] = list(terms)
        self._total += length

    def remove(self, doc_id: int) -> None:
        length = self._lengths.pop(doc_id, None)
        if length is None:
            raise UnknownIdError([doc_id])
        self._total -= length
        for term in self._terms.pop(doc_id):
            posting = self._postings[term]
            del posting[doc_id]
            if not posting:
                del self._postings[term]

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """Top-``k`` ``(doc id, score)``, best first (documents sharing no term are omitted)."""
        n = len(self._lengths)
        if not n:
            return []
        avg = self._total / n
        scores: dict[int, float] = {}
        for term in set(tokenize(query)):
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = math.log(1.0 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for doc, tf in posting.items():
                norm = self.k1 * (1.0 - self.b + self.b * self._lengths[doc] / avg)
                scores[doc] = scores.get(doc, 0.0) + idf * tf * (self.k1 + 1.0) / (tf + norm)
        best = sorted(scores.items(), key=lambda t: (-t[1], t[0]))
        return best[:k]


def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda t: (-t[1], t[0]))


@dataclass(frozen=True, slots=True)
class Retrieved:
    id: int
    text: str
    score: float  # fused (or reranked) score
    metadata: Mapping[str, Any] = field(default_factory=dict)


class HybridRetriever:
    """Documents searchable by keywords and by meaning; results fused by RRF.

    ``rerank(query, candidates) -> scores`` (optional) re-orders the fused candidates,
    e.g. a cross-encoder or an LLM judge.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        store: VectorStore | None = None,
        rrf_k: int = 60,
        rerank: Reranker | None = None,
    ) -> None:
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.store = store if store is not None else VectorStore(self.embedder.dim)
        if self.store.dim != self.embedder.dim:
            raise VectorStoreError("store and embedder dimensions differ")
        self.bm25 = BM25Index()
        self.rrf_k = rrf_k
        self.rerank = rerank
        self._docs: dict[int, tuple[str, Mapping[str, Any]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._docs)

    def add(
        self,
        ids: Sequence[int],
        texts: Sequence[str],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        if len(ids) != len(texts):
            raise VectorStoreError(f"{len(ids)} ids for {len(texts)} texts")
        metas = list(metadata) if metadata is not None else [None] * len(ids)
        vectors = self.embedder.embed(texts)
        with self._lock:
            self.store.add(np.asarray(ids, np.int64), vectors, metadata=metas)
            for i, text, meta in zip(ids, texts, metas, strict=True):
                self.bm25.add(int(i), text)
                self._docs[int(i)] = (text, dict(meta or {}))

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            unknown = [int(i) for i in ids if int(i) not in self._docs]
            if unknown:
                raise UnknownIdError(unknown)
            self.store.remove(np.asarray(ids, np.int64))
            for i in ids:
                self.bm25.remove(int(i))
                del self._docs[int(i)]

    def search(self, query: str, k: int = 5, *, candidates: int = 50) -> list[Retrieved]:
        """Top-``k`` documents for ``query``: BM25 and vector top-``candidates`` fused by RRF."""
        keyword = [d for d, _ in self.bm25.search(query, candidates)]
        ids, _ = self.store.search(self.embedder.embed([query]), k=candidates)
        semantic = [int(i) for i in ids[0] if i >= 0]
        fused = rrf([keyword, semantic], self.rrf_k)
        found = [
            Retrieved(d, self._docs[d][0], s, self._docs[d][1]) for d, s in fused if d in self._docs
        ]
        if self.rerank is not None and found:
            scores = list(self.rerank(query, found))
            if len(scores) != len(found):
                raise VectorStoreError(
                    f"rerank returned {len(scores)} scores for {len(found)} candidates"
                )
            order = sorted(range(len(found)), key=lambda j: -float(scores[j]))
            found = [
                Retrieved(found[j].id, found[j].text, float(scores[j]), found[j].metadata)
                for j in order
            ]
        return found[:k]
