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
from engine.routing import Router

__all__ = ["KeyFn", "Subscription", "Subscriptions"]

KeyFn = Callable[[TopicId, Any], str]

#: Bound of the topic -> subscriptions cache (cleared when full or on any change).
CACHE_SIZE: Final = 4096


def _source_key(topic: TopicId, message: Any) -> str:
    return topic.source


class Subscription:
    """One subscription: agent type, pattern, and how the instance key is derived."""

    __slots__ = ("agent_type", "by_source", "fixed", "id", "key", "pattern", "target")

    def __init__(
        self, id: int, agent_type: str, pattern: str, key: KeyFn, fixed: str | None = None
    ) -> None:
        self.id = id
        self.agent_type = agent_type
        self.pattern = pattern
        self.key = key
        #: Fast paths for the two common key rules (no call per delivery).
        self.fixed = fixed
        self.by_source = key is _source_key
        #: Set by the runtime: its registration record of ``agent_type``.
        self.target: Any = None

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.agent_type!r}, {self.pattern!r})"

    def key_for(self, topic: TopicId, message: Any) -> str:
        """The instance key of a delivery by the key function (TypeError if not a str)."""
        key = self.key(topic, message)
        if type(key) is not str:
            raise TypeError(
                f"key function of subscription {self.id} ({self.pattern!r}) "
                f"returned {type(key).__name__}, expected str"
            )
        return key


class Subscriptions:
    """The runtime's subscription table."""

    __slots__ = ("_by_id", "_cache", "_next", "_router", "_sids")

    def __init__(self) -> None:
        self._router = Router()
        self._by_id: dict[int, Subscription] = {}
        self._sids: dict[int, int] = {}
        self._cache: dict[str, tuple[Subscription, ...]] = {}
        self._next = 0

    def add(self, agent_type: str, pattern: str, key: str | KeyFn | None = None) -> Subscription:
        if not isinstance(pattern, str):
            raise TypeError(f"topic pattern must be a str, got {type(pattern).__name__}")
        fixed: str | None = None
        if key is None:
            keyfn: KeyFn = _source_key
        elif isinstance(key, str):
            fixed = key
            keyfn = lambda topic, message: key  # noqa: E731
        elif callable(key):
            keyfn = key
        else:
            raise TypeError(f"key must be a str or a function, got {type(key).__name__}")
        self._next += 1
        sub = Subscription(self._next, agent_type, pattern, keyfn, fixed)
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
