"""SemanticCache: reuse LLM results for prompts that mean the same thing.

A lookup first tries the exact prompt (a dict hit, microseconds), then the nearest cached
prompt of the same *kind* by cosine similarity; it is a hit when the similarity reaches that
kind's threshold and the entry's TTL has not passed. One VectorStore per kind, so kinds
never answer for each other. The cache is bounded: past ``max_entries`` the oldest entries
are evicted (in batches of 1%, so eviction cost is amortised).

Callers that know more than the prompt (the LLM layer hashes model, messages, tools and
sampling parameters) pass an exact ``key=`` and an ``accept=`` check for semantic hits;
``semantic=False`` entries live only in the exact index.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import VectorStoreError
from engine.memory.embedders import Embedder, HashingEmbedder
from engine.memory.vectors import VectorStore

__all__ = ["DEFAULT_THRESHOLDS", "CacheHit", "SemanticCache"]

#: Cosine thresholds per call kind (stricter where a near miss costs more).
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "decomposition": 0.90,
    "response": 0.85,
    "analysis": 0.95,
}


@dataclass(frozen=True, slots=True)
class CacheHit:
    value: Any
    score: float  # cosine similarity to the cached prompt (1.0 for an exact match)
    prompt: str  # the cached prompt that matched
    exact: bool


@dataclass(slots=True)
class _Entry:
    id: int
    kind: str
    prompt: str
    value: Any
    expires: float
    key: Hashable  # the exact index key: ``key=`` of put, else the prompt
    indexed: bool = True  # has a vector in the kind's store


class SemanticCache:
    """Cache values under prompts; find them again by meaning.

    ``thresholds`` override :data:`DEFAULT_THRESHOLDS` per kind; other kinds use
    ``default_threshold``. ``ttl`` (seconds, None = forever) is the default lifetime.
    ``target_recall`` of the per-kind stores is 0.90: a hit needs a near-duplicate, which
    graph search finds first even with a small beam, and a rare miss only costs the call
    the cache would have saved. Thread-safe.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        thresholds: Mapping[str, float] | None = None,
        default_threshold: float = 0.90,
        ttl: float | None = 3600.0,
        max_entries: int = 100_000,
        index: str = "auto",
        target_recall: float = 0.90,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_entries < 1:
            raise VectorStoreError(f"max_entries must be >= 1, got {max_entries}")
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        for kind, th in [*self.thresholds.items(), ("default", default_threshold)]:
            if not -1.0 <= th <= 1.0:
                raise VectorStoreError(f"threshold for {kind!r} must be a cosine, got {th}")
        self.default_threshold = default_threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self._index = index
        self._target = target_recall
        self._stores: dict[str, VectorStore] = {}
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # insertion = age order
        self._exact: dict[tuple[str, Hashable], int] = {}
        self._clock = clock if clock is not None else time.time  # read now: fakeable
        self._next_id = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def threshold(self, kind: str) -> float:
        return self.thresholds.get(kind, self.default_threshold)

    def _vector(self, prompt: str, vector: Any) -> npt.NDArray[np.float32]:
        if vector is None:
            return self.embedder.embed([prompt])
        return np.asarray(vector, np.float32).reshape(1, -1)

    def _store(self, kind: str) -> VectorStore:
        store = self._stores.get(kind)
        if store is None:
            store = VectorStore(self.embedder.dim, "cosine", self._index, self._target)
            self._stores[kind] = store
        return store

    def lookup(
        self,
        prompt: str,
        kind: str = "response",
        *,
        vector: Any = None,
        key: Hashable | None = None,
        semantic: bool = True,
        accept: Callable[[Any], bool] | None = None,
        k: int = 1,
    ) -> CacheHit | None:
        """The best entry for ``prompt`` (optionally with its precomputed ``vector``), or None.

        ``key`` replaces the prompt as the exact-match key; ``semantic=False`` skips the
        search by meaning; ``accept(value)`` must hold for a semantic hit, checked on the
        ``k`` nearest entries (best first).
        """
        now = self._clock()
        eid = self._exact.get((kind, prompt if key is None else key))
        if eid is not None:
            entry = self._entries.get(eid)
            if entry is not None and entry.expires > now:
                self.hits += 1
                return CacheHit(entry.value, 1.0, entry.prompt, True)
        store = self._stores.get(kind) if semantic else None
        if store is not None:
            ids, scores = store.search(self._vector(prompt, vector), k=k)
            threshold = self.threshold(kind)
            for eid, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
                if eid < 0 or score < threshold:
                    break
                entry = self._entries.get(eid)
                if entry is None or entry.expires <= now:
                    continue
                if accept is not None and not accept(entry.value):
                    continue
                self.hits += 1
                return CacheHit(entry.value, min(score, 1.0), entry.prompt, False)
        self.misses += 1
        return None

    def get(self, prompt: str, kind: str = "response", *, vector: Any = None) -> Any | None:
        """The cached value for ``prompt`` or something close enough, else None."""
        hit = self.lookup(prompt, kind, vector=vector)
        return None if hit is None else hit.value

    def put(
        self,
        prompt: str,
        value: Any,
        kind: str = "response",
        *,
        ttl: float | None = None,
        vector: Any = None,
        key: Hashable | None = None,
        semantic: bool = True,
    ) -> None:
        """Cache ``value`` under ``prompt`` for ``ttl`` seconds (default: the cache's).

        ``key`` replaces the prompt as the exact-match key; ``semantic=False`` keeps the
        entry out of the search by meaning (found only by its exact key).
        """
        life = ttl if ttl is not None else self.ttl
        if life is not None and not life > 0:
            raise VectorStoreError(f"ttl must be positive, got {life!r}")
        vec = self._vector(prompt, vector) if semantic else None
        xkey: Hashable = prompt if key is None else key
        with self._lock:
            old = self._exact.pop((kind, xkey), None)
            if old is not None:
                self._drop([old])
            eid = self._next_id
            self._next_id += 1
            now = self._clock()
            expires = now + life if life is not None else float("inf")
            if vec is not None:
                self._store(kind).add([eid], vec, ttl=life)
            self._entries[eid] = _Entry(eid, kind, prompt, value, expires, xkey, vec is not None)
            self._exact[(kind, xkey)] = eid
            stale: list[int] = []
            for e in self._entries.values():  # oldest first; stop at the first live one
                if e.expires > now or len(stale) >= 64:
                    break
                stale.append(e.id)
            if stale:
                self._drop(stale)
            if len(self._entries) > self.max_entries:
                n = max(1, self.max_entries // 100)
                victims = [e for _, e in zip(range(n), self._entries, strict=False)]
                self._drop(victims)
                self.evictions += len(victims)

    def put_many(
        self,
        prompts: list[str],
        values: list[Any],
        kind: str = "response",
        *,
        ttl: float | None = None,
        vectors: Any = None,
        keys: list[Hashable] | None = None,
    ) -> None:
        """Cache many entries at once (one index insertion; for warming a cache)."""
        if len(prompts) != len(values):
            raise VectorStoreError(f"{len(prompts)} prompts for {len(values)} values")
        life = ttl if ttl is not None else self.ttl
        if life is not None and not life > 0:
            raise VectorStoreError(f"ttl must be positive, got {life!r}")
        if keys is not None and len(keys) != len(prompts):
            raise VectorStoreError(f"{len(keys)} keys for {len(prompts)} prompts")
        xkeys: list[Hashable] = list(prompts) if keys is None else list(keys)
        vecs = (
            self.embedder.embed(prompts)
            if vectors is None
            else np.asarray(vectors, np.float32).reshape(len(prompts), -1)
        )
        with self._lock:
            stale = [self._exact[(kind, x)] for x in xkeys if (kind, x) in self._exact]
            if stale:
                self._drop(stale)
            first = self._next_id
            self._next_id += len(prompts)
            ids = list(range(first, first + len(prompts)))
            self._store(kind).add(ids, vecs, ttl=life)
            expires = self._clock() + life if life is not None else float("inf")
            for eid, p, v, x in zip(ids, prompts, values, xkeys, strict=True):
                self._entries[eid] = _Entry(eid, kind, p, v, expires, x)
                self._exact[(kind, x)] = eid
            over = len(self._entries) - self.max_entries
            if over > 0:
                victims = [e for _, e in zip(range(over), self._entries, strict=False)]
                self._drop(victims)
                self.evictions += len(victims)

    def _drop(self, ids: list[int]) -> None:
        by_kind: dict[str, list[int]] = {}
        for eid in ids:
            entry = self._entries.pop(eid, None)
            if entry is None:
                continue
            if self._exact.get((entry.kind, entry.key)) == eid:
                del self._exact[(entry.kind, entry.key)]
            if entry.indexed:
                by_kind.setdefault(entry.kind, []).append(eid)
        for kind, kids in by_kind.items():
            store = self._stores[kind]
            live = [i for i in kids if i in store]  # expired ones are gone already
            if live:
                store.remove(live)

    def clear(self) -> None:
        with self._lock:
            self._stores.clear()
            self._entries.clear()
            self._exact.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "evictions": self.evictions,
            "kinds": {k: s.stats()["index"] for k, s in self._stores.items()},
        }
