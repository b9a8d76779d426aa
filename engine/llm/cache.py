"""The LLM result cache: exact hits by hash, then semantic hits, in front of every call.

The key covers everything that decides a reply: the model (the ``scope`` the caller names),
every message, the tools, the response format and the sampling parameters. An exact hit is
one dict lookup on a 16-byte BLAKE2b digest of all of it. A semantic hit needs the same
*context* (everything but the last message's text, hashed) and a last message close enough
in meaning (cosine at or above the threshold, in the kind's own index). Entries expire after
``ttl`` seconds and the cache holds at most ``max_entries``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import orjson

from engine.llm.base import CacheKind, ChatResult
from engine.llm.request import ChatRequest, text_of
from engine.memory.cache import SemanticCache
from engine.memory.embedders import Embedder

__all__ = ["CacheKey", "LLMCache", "Probe", "cache_key"]

_SCHEMAS: dict[type[Any], bytes] = {}
_MAX_SCHEMAS: Final = 1024


class CacheKey(msgspec.Struct, frozen=True, gc=False):
    """``exact``: digest of the whole request; ``context``: of all but the last text."""

    exact: bytes
    context: bytes
    text: str


def _schema(tp: type[Any] | None) -> bytes:
    if tp is None:
        return b""
    s = _SCHEMAS.get(tp)
    if s is None:
        try:
            s = msgspec.json.encode([tp.__module__, tp.__qualname__, msgspec.json.schema(tp)])
        except TypeError:
            s = f"{tp.__module__}.{tp.__qualname__}".encode()
        if len(_SCHEMAS) < _MAX_SCHEMAS:
            _SCHEMAS[tp] = s
    return s


def cache_key(req: ChatRequest, scope: str) -> CacheKey:
    """The cache key of ``req`` sent to ``scope`` (a model, or a router's route)."""
    msgs = req.messages
    last = msgs[-1]
    text = text_of(last)
    head = orjson.dumps(
        [
            scope,
            msgs[:-1],
            {k: v for k, v in last.items() if k != "content"},
            req.tools,
            req.temperature,
            req.top_p,
            req.seed,
            req.max_tokens,
            req.stop,
            req.extra,
        ],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=str,
    )
    ctx = hashlib.blake2b(head, digest_size=16)
    ctx.update(_schema(req.response_format))
    context = ctx.digest()
    full = ctx.copy()
    full.update(b"\x00")
    full.update(orjson.dumps(last.get("content"), default=str))
    return CacheKey(full.digest(), context, text)


class Probe(msgspec.Struct, frozen=True, gc=False):
    """What one cache lookup computed: the key, the index kind, the prompt's vector."""

    key: CacheKey
    kind: str
    vector: Any


class _Cached(msgspec.Struct, gc=False):
    context: bytes
    result: ChatResult


class LLMCache:
    """Cache of :class:`~engine.llm.ChatResult` by request; see the module docs.

    ``semantic=False`` keeps exact hits only. ``threshold`` is the cosine a semantic hit
    needs (0.95 by default: a near-duplicate question, not a related one). ``store`` lets
    you bring a configured :class:`~engine.memory.SemanticCache` (its own threshold, TTL
    and bound then apply).
    """

    def __init__(
        self,
        *,
        semantic: bool = True,
        threshold: float = 0.95,
        ttl: float | None = 3600.0,
        max_entries: int = 100_000,
        embedder: Embedder | None = None,
        store: SemanticCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"cache ttl must be positive seconds or None, got {ttl!r}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"cache threshold must be a cosine in [-1, 1], got {threshold!r}")
        self.semantic = semantic
        self.store = (
            store
            if store is not None
            else SemanticCache(
                embedder,
                default_threshold=threshold,
                ttl=ttl,
                max_entries=max_entries,
                clock=clock,
            )
        )
        # kinds with semantic entries: only their lookups search by meaning, so only
        # they need the prompt's vector before the call
        self._searched: set[str] = set()

    def __len__(self) -> int:
        return len(self.store)

    def get(self, req: ChatRequest, scope: str) -> tuple[ChatResult, CacheKind] | None:
        """The cached result for ``req`` on ``scope`` and the kind of hit, or None."""
        return self.probe(req, scope)[0]

    def probe(
        self, req: ChatRequest, scope: str
    ) -> tuple[tuple[ChatResult, CacheKind] | None, Probe]:
        """:meth:`get`, and what it computed (key, prompt vector) for :meth:`fill`: a
        missed call is keyed and embedded once, not again when its result is stored."""
        key = cache_key(req, scope)
        kind = "llm:" + req.kind
        vector = None
        if self.semantic and key.text and kind in self._searched:
            # an exact hit first, without embedding (that is what keeps exact hits cheap);
            # on a miss, the one vector serves the search and the put after the call
            store = self.store
            hit = self._lookup(key, kind, None, semantic=False)
            if hit is not None:
                return hit, Probe(key, kind, None)
            store.misses -= 1  # counted once, by the search below
            vector = store.embedder.embed([key.text])
        return self._lookup(key, kind, vector), Probe(key, kind, vector)

    def lookup(self, key: CacheKey, kind: str) -> tuple[ChatResult, CacheKind] | None:
        return self._lookup(key, "llm:" + kind, None)

    def _lookup(
        self, key: CacheKey, kind: str, vector: Any, *, semantic: bool = True
    ) -> tuple[ChatResult, CacheKind] | None:
        semantic = semantic and self.semantic and bool(key.text)
        ctx = key.context
        hit = self.store.lookup(
            key.text,
            kind,
            key=key.exact,
            semantic=semantic,
            vector=vector,
            accept=lambda v: v.context == ctx,
            k=4,
        )
        if hit is None:
            return None
        value: _Cached = hit.value
        return value.result, "exact" if hit.exact else "semantic"

    def put(self, req: ChatRequest, scope: str, result: ChatResult) -> None:
        self.fill(Probe(cache_key(req, scope), "llm:" + req.kind, None), result)

    def fill(self, probe: Probe, result: ChatResult) -> None:
        """Store ``result`` under what :meth:`probe` computed for its request."""
        key = probe.key
        semantic = self.semantic and bool(key.text)
        vector = probe.vector
        if semantic and vector is None:
            vector = self.store.embedder.embed([key.text])
        self.store.put(
            key.text,
            _Cached(key.context, result),
            probe.kind,
            key=key.exact,
            semantic=semantic,
            vector=vector,
        )
        if semantic:
            self._searched.add(probe.kind)  # bounded: one name per call kind

    def clear(self) -> None:
        self.store.clear()
        self._searched.clear()
