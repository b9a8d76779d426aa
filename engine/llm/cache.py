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

__all__ = ["CacheKey", "LLMCache", "cache_key"]

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

    def __len__(self) -> int:
        return len(self.store)

    def get(self, req: ChatRequest, scope: str) -> tuple[ChatResult, CacheKind] | None:
        """The cached result for ``req`` on ``scope`` and the kind of hit, or None."""
        key = cache_key(req, scope)
        return self.lookup(key, req.kind)

    def lookup(self, key: CacheKey, kind: str) -> tuple[ChatResult, CacheKind] | None:
        semantic = self.semantic and bool(key.text)
        ctx = key.context
        hit = self.store.lookup(
            key.text,
            "llm:" + kind,
            key=key.exact,
            semantic=semantic,
            accept=lambda v: v.context == ctx,
            k=4,
        )
        if hit is None:
            return None
        value: _Cached = hit.value
        return value.result, "exact" if hit.exact else "semantic"

    def put(self, req: ChatRequest, scope: str, result: ChatResult) -> None:
        key = cache_key(req, scope)
        self.store.put(
            key.text,
            _Cached(key.context, result),
            "llm:" + req.kind,
            key=key.exact,
            semantic=self.semantic and bool(key.text),
        )

    def clear(self) -> None:
        self.store.clear()
