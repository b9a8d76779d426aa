"""Topic subscriptions of agent types, compiled into the router.

``rt.subscribe("echo", topic="pings.*")`` says: a message published to a topic matching
``pings.*`` goes to the ``echo`` instance whose key is derived from the topic (its
``source`` by default), a fixed key, or a function of (topic, message). Patterns are
dotted segments with ``*`` (one segment) and ``#`` (zero or more), matched by
:class:`engine.routing.Router`; results per topic are cached (bounded) and the cache is
dropped on every change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from engine.errors import RoutingError
from engine.messages import TopicId

__all__ = ["KeyFn", "Subscription", "Subscriptions"]

KeyFn = Callable[[TopicId, Any], str]

#: Bound of the topic -> subscriptions cache (cleared when full or on any change).
CACHE_SIZE: Final = 4096


def _source_key(topic: TopicId, message: Any) -> str:
    return topic.source


def _router() -> Any:
    try:
        from engine.routing import Router  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - only before engine.routing is merged
        return _FallbackRouter()
    return Router()


class Subscription:
    """One subscription: agent type, pattern, and how the instance key is derived."""

    __slots__ = ("agent_type", "id", "key", "pattern")

    def __init__(self, id: int, agent_type: str, pattern: str, key: KeyFn) -> None:
        self.id = id
        self.agent_type = agent_type
        self.pattern = pattern
        self.key = key

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.agent_type!r}, {self.pattern!r})"


class Subscriptions:
    """The runtime's subscription table."""

    __slots__ = ("_by_id", "_cache", "_next", "_router", "_sids")

    def __init__(self) -> None:
        self._router = _router()
        self._by_id: dict[int, Subscription] = {}
        self._sids: dict[int, int] = {}
        self._cache: dict[str, tuple[Subscription, ...]] = {}
        self._next = 0

    def add(self, agent_type: str, pattern: str, key: str | KeyFn | None = None) -> Subscription:
        if not isinstance(pattern, str):
            raise TypeError(f"topic pattern must be a str, got {type(pattern).__name__}")
        if key is None:
            keyfn: KeyFn = _source_key
        elif isinstance(key, str):
            fixed = key
            keyfn = lambda topic, message: fixed  # noqa: E731
        elif callable(key):
            keyfn = key
        else:
            raise TypeError(f"key must be a str or a function, got {type(key).__name__}")
        self._next += 1
        sub = Subscription(self._next, agent_type, pattern, keyfn)
        self._sids[sub.id] = self._router.subscribe(pattern, subscriber=sub.id)
        self._by_id[sub.id] = sub
        self._cache.clear()
        return sub

    def remove(self, sub_id: int) -> None:
        sid = self._sids.pop(sub_id, None)
        if sid is None:
            raise RoutingError(f"unknown subscription id {sub_id!r}")
        del self._by_id[sub_id]
        self._router.unsubscribe(sid)
        self._cache.clear()

    def match(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._cache.get(topic)
        if subs is None:
            by_id = self._by_id
            subs = tuple(by_id[i] for i in self._router.match(topic))
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[topic] = subs
        return subs

    def __iter__(self) -> Any:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


class _FallbackRouter:  # pragma: no cover - replaced by engine.routing once merged
    """Minimal stand-in with the Router contract's subscribe/unsubscribe/match."""

    def __init__(self) -> None:
        self._subs: dict[int, tuple[list[str], int]] = {}
        self._n = 0

    @staticmethod
    def _split(text: str, what: str) -> list[str]:
        parts = text.split(".")
        if not text or any(not p for p in parts):
            raise RoutingError(f"malformed {what} {text!r}: empty segment")
        return parts

    def subscribe(self, pattern: str, subscriber: int) -> int:
        self._n += 1
        self._subs[self._n] = (self._split(pattern, "pattern"), subscriber)
        return self._n

    def unsubscribe(self, sid: int) -> None:
        if self._subs.pop(sid, None) is None:
            raise RoutingError(f"unknown subscription {sid}")

    def match(self, topic: str) -> list[int]:
        segs = self._split(topic, "topic")
        return sorted({s for p, s in self._subs.values() if _fits(p, segs)})


def _fits(pat: list[str], segs: list[str]) -> bool:  # pragma: no cover
    if not pat:
        return not segs
    head = pat[0]
    if head == "#":
        return any(_fits(pat[1:], segs[i:]) for i in range(len(segs) + 1))
    if not segs:
        return False
    return (head == "*" or head == segs[0]) and _fits(pat[1:], segs[1:])
