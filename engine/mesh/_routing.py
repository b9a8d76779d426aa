"""The router the broker uses: ``engine.routing.Router`` when present, else a small stand-in.

The stand-in implements exactly the subset of the Router contract the broker calls
(add_agent, remove_agent, set_policy, pick, ack, subscribe, unsubscribe, match) so the
mesh works on a checkout where ``engine.routing`` has not landed yet.
"""

from __future__ import annotations

from typing import Any

from engine.errors import RoutingError
from engine.messages import AgentId

__all__ = ["make_router"]


class _MiniRouter:
    def __init__(self) -> None:
        self._slots: dict[AgentId, int] = {}
        self._ids: dict[int, AgentId] = {}
        self._free: list[int] = []
        self._by_type: dict[str, list[int]] = {}
        self._rr: dict[str, int] = {}
        self._policy: dict[str, str] = {}
        self._out: dict[int, int] = {}
        self._subs: dict[int, tuple[tuple[str, ...], int]] = {}
        self._next_sub = 0

    def add_agent(self, agent: AgentId) -> int:
        if agent in self._slots:
            return self._slots[agent]
        slot = self._free.pop() if self._free else len(self._ids) + len(self._free)
        while slot in self._ids:
            slot += 1
        self._slots[agent] = slot
        self._ids[slot] = agent
        self._out[slot] = 0
        self._by_type.setdefault(agent.type, []).append(slot)
        return slot

    def remove_agent(self, agent: AgentId) -> None:
        slot = self._slots.pop(agent, None)
        if slot is None:
            raise RoutingError(f"unknown agent {agent}")
        del self._ids[slot]
        del self._out[slot]
        self._by_type[agent.type].remove(slot)
        self._free.append(slot)

    def set_policy(self, type_: str, policy: str) -> None:
        if policy not in ("round_robin", "least_outstanding"):
            raise RoutingError(f"unknown policy {policy!r}")
        self._policy[type_] = policy

    def pick(self, type_: str) -> int:
        slots = self._by_type.get(type_)
        if not slots:
            raise RoutingError(f"no agent of type {type_!r}")
        if self._policy.get(type_) == "least_outstanding":
            slot = min(slots, key=self._out.__getitem__)
        else:
            i = self._rr.get(type_, 0) % len(slots)
            self._rr[type_] = i + 1
            slot = slots[i]
        self._out[slot] += 1
        return slot

    def ack(self, slot: int, n: int = 1) -> None:
        if slot in self._out:
            self._out[slot] = max(0, self._out[slot] - n)

    def outstanding(self, slot: int) -> int:
        return self._out[slot]

    def subscribe(self, pattern: str, subscriber: int) -> int:
        parts = tuple(pattern.split("."))
        if not pattern or any(not p for p in parts):
            raise RoutingError(f"malformed pattern {pattern!r}")
        sid = self._next_sub
        self._next_sub += 1
        self._subs[sid] = (parts, subscriber)
        return sid

    def unsubscribe(self, sid: int) -> None:
        if self._subs.pop(sid, None) is None:
            raise RoutingError(f"unknown subscription {sid}")

    def match(self, topic: str) -> list[int]:
        words = tuple(topic.split("."))
        return sorted({s for parts, s in self._subs.values() if _matches(parts, words)})


def _matches(parts: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not parts:
        return not words
    head = parts[0]
    if head == "#":
        return any(_matches(parts[1:], words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _matches(parts[1:], words[1:])


def make_router() -> Any:
    """A Router instance (native when built)."""
    try:
        from engine.routing import Router  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return _MiniRouter()
    return Router()
