"""The reference router: plain Python, kept simple.

It is the oracle the differential tests hold the compiled router to, and the fallback
when ``ENGINE_NO_EXTENSIONS=1``. Speed comes from ``engine._native._router``; this file
only has to be obviously right (dicts and lists, no cleverness), with the same inputs,
outputs, handles and errors as the compiled twin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from engine._args.routing import (
    KIND_DIRECT,
    KIND_TOPIC,
    KIND_TYPE,
    POLICIES,
    as_index,
    as_int64,
    as_kinds,
    check_max_topics,
    check_subscriber,
    is_exact,
    parse_pattern,
    parse_topic,
)
from engine.errors import RoutingError
from engine.messages import AgentId

__all__ = ["RouterPy"]

_MASK32 = 0xFFFFFFFF


def _matches(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    """Does ``pattern`` (with ``*``/``#``) match ``topic``? Plain recursion over segments."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_matches(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _matches(rest, topic[1:])


class RouterPy:
    """Routes to agents (direct, by type with load balancing) and to topic subscribers.

    See :class:`engine.routing.Router` for the contract; both twins behave identically.
    """

    def __init__(self, *, max_topics: int = 65536) -> None:
        self.max_topics = check_max_topics(max_topics)
        # agents, by slot
        self._slot_of: dict[AgentId, int] = {}
        self._agents: list[AgentId | None] = []
        self._gen: list[int] = []
        self._slot_type: list[int] = []
        self._outstanding: list[int] = []
        self._free_slots: list[int] = []
        # agent types
        self._type_of: dict[str, int] = {}
        self._instances: list[list[int]] = []
        self._cursor: list[int] = []
        self._policy: list[int] = []
        # topics, by index; unpinned ones (no exact subscription) in LRU order
        self._topic_of: dict[str, int] = {}
        self._topic_name: list[str | None] = []
        self._topic_segs: list[tuple[str, ...]] = []
        self._topic_gen: list[int] = []
        self._exact: list[dict[int, int]] = []  # subscriber -> number of subscriptions
        self._free_topics: list[int] = []
        self._unpinned: OrderedDict[int, None] = OrderedDict()
        # subscriptions
        self._subs: dict[int, tuple[tuple[str, ...], int, int]] = {}  # sid -> (segs, topic, sub)
        self._wild: dict[tuple[str, ...], dict[int, int]] = {}  # pattern -> subscriber counts
        self._cache: dict[int, list[int]] = {}  # topic -> match result, while wildcards stay
        self._next_sid = 0

    # -- agents -------------------------------------------------------------------------

    def add_agent(self, agent: AgentId) -> int:
        """Register an agent instance; returns its slot (the same slot if already known)."""
        if not isinstance(agent, AgentId):
            raise RoutingError(f"agent must be an AgentId, got {type(agent).__name__}")
        slot = self._slot_of.get(agent)
        if slot is not None:
            return slot
        tix = self._type_index(agent.type, create=True)
        if self._free_slots:
            slot = self._free_slots.pop()
            self._agents[slot] = agent
            self._slot_type[slot] = tix
            self._outstanding[slot] = 0
        else:
            slot = len(self._agents)
            self._agents.append(agent)
            self._gen.append(0)
            self._slot_type.append(tix)
            self._outstanding.append(0)
        self._slot_of[agent] = slot
        self._instances[tix].append(slot)
        return slot

    def remove_agent(self, agent: AgentId) -> None:
        """Unregister an agent; its slot may be reused and its old handle stops routing."""
        slot = self.slot(agent)
        tix = self._slot_type[slot]
        inst = self._instances[tix]
        i = inst.index(slot)
        del inst[i]
        if i < self._cursor[tix]:
            self._cursor[tix] -= 1
        if self._cursor[tix] >= len(inst):
            self._cursor[tix] = 0
        del self._slot_of[agent]
        self._agents[slot] = None
        self._slot_type[slot] = -1
        self._outstanding[slot] = 0
        self._gen[slot] = (self._gen[slot] + 1) & _MASK32
        self._free_slots.append(slot)

    def slot(self, agent: AgentId) -> int:
        """The slot of a registered agent (direct delivery)."""
        try:
            return self._slot_of[agent]
        except (KeyError, TypeError):
            raise RoutingError(f"unknown agent {agent!r}") from None

    def agent(self, slot: int) -> AgentId:
        """The agent registered at ``slot``."""
        return self._agents[self._live(slot)]  # type: ignore[return-value]

    def handle(self, agent: AgentId) -> int:
        """A ``KIND_DIRECT`` target for :meth:`route_many`; stale once the agent is removed."""
        slot = self.slot(agent)
        return (self._gen[slot] << 32) | slot

    def __len__(self) -> int:
        return len(self._slot_of)

    def _live(self, slot: object) -> int:
        s = as_index(slot)
        if s is not None and 0 <= s < len(self._agents) and self._agents[s] is not None:
            return s
        raise RoutingError(f"unknown slot {slot!r}")

    # -- by type --------------------------------------------------------------------------

    def _type_index(self, type_: object, *, create: bool) -> int:
        if not isinstance(type_, str) or not type_:
            raise RoutingError(f"agent type must be a non-empty str, got {type_!r}")
        tix = self._type_of.get(type_)
        if tix is None:
            if not create:
                raise RoutingError(f"unknown agent type {type_!r}")
            tix = len(self._instances)
            self._type_of[type_] = tix
            self._instances.append([])
            self._cursor.append(0)
            self._policy.append(0)
        return tix

    def set_policy(self, type_: str, policy: str) -> None:
        """Choose how :meth:`pick` balances ``type_``: ``round_robin`` or ``least_outstanding``."""
        if policy not in POLICIES:
            raise RoutingError(f"unknown policy {policy!r} (expected one of {', '.join(POLICIES)})")
        self._policy[self._type_index(type_, create=True)] = POLICIES.index(policy)

    def policy(self, type_: str) -> str:
        """The balancing policy of ``type_``."""
        return POLICIES[self._policy[self._type_index(type_, create=False)]]

    def type_handle(self, type_: str) -> int:
        """A ``KIND_TYPE`` target for :meth:`route_many` (the type must be known)."""
        return self._type_index(type_, create=False)

    def instances(self, type_: str) -> list[int]:
        """Slots of ``type_``'s instances, in registration order."""
        return list(self._instances[self._type_index(type_, create=False)])

    def pick(self, type_: str) -> int:
        """Choose an instance of ``type_`` per its policy; its outstanding count grows by one."""
        tix = self._type_index(type_, create=False)
        slot = self._pick(tix)
        if slot < 0:
            raise RoutingError(f"no instances of agent type {type_!r}")
        return slot

    def _pick(self, tix: int) -> int:
        inst = self._instances[tix]
        n = len(inst)
        if n == 0:
            return -1
        start = self._cursor[tix]
        chosen = start
        if self._policy[tix] == 1:  # least outstanding; ties go round-robin from the cursor
            best = self._outstanding[inst[start]]
            for k in range(1, n):
                i = (start + k) % n
                if self._outstanding[inst[i]] < best:
                    best, chosen = self._outstanding[inst[i]], i
        self._cursor[tix] = (chosen + 1) % n
        slot = inst[chosen]
        self._outstanding[slot] += 1
        return slot

    def ack(self, slot: int, n: int = 1) -> None:
        """Record ``n`` completions for ``slot`` (its outstanding count never drops below 0)."""
        s = self._live(slot)
        count = as_index(n)
        if count is None or count < 0:
            raise RoutingError(f"ack count must be an int >= 0, got {n!r}")
        self._outstanding[s] = max(0, self._outstanding[s] - count)

    def outstanding(self, slot: int) -> int:
        """Picks of ``slot`` not yet acknowledged."""
        return self._outstanding[self._live(slot)]

    # -- topics ---------------------------------------------------------------------------

    def topic_handle(self, topic: str) -> int:
        """A ``KIND_TOPIC`` target for :meth:`route_many`/:meth:`match_many`.

        Topics are interned on first sight. Topics no exact subscription pins are kept in
        an LRU of ``max_topics``; an evicted topic's handle is refused as stale.
        """
        idx = self._topic_index(topic)
        return (self._topic_gen[idx] << 32) | idx

    def topic_handles(self, topics: Iterable[str]) -> npt.NDArray[np.int64]:
        """:meth:`topic_handle` for many topics at once."""
        if isinstance(topics, str):
            raise RoutingError("topics must be an iterable of str, not a str")
        return np.array([self.topic_handle(t) for t in topics], dtype=np.int64)

    def _topic_index(self, topic: object) -> int:
        idx = self._topic_of.get(topic) if isinstance(topic, str) else None
        if idx is not None:
            if idx in self._unpinned:
                self._unpinned.move_to_end(idx)
            return idx
        segs = parse_topic(topic)
        assert isinstance(topic, str)
        while len(self._unpinned) >= self.max_topics:
            self._evict(self._unpinned.popitem(last=False)[0])
        if self._free_topics:
            idx = self._free_topics.pop()
            self._topic_name[idx] = topic
            self._topic_segs[idx] = segs
        else:
            idx = len(self._topic_name)
            self._topic_name.append(topic)
            self._topic_segs.append(segs)
            self._topic_gen.append(0)
            self._exact.append({})
        self._topic_of[topic] = idx
        self._unpinned[idx] = None
        return idx

    def _evict(self, idx: int) -> None:
        name = self._topic_name[idx]
        assert name is not None
        del self._topic_of[name]
        self._topic_name[idx] = None
        self._topic_segs[idx] = ()
        self._topic_gen[idx] = (self._topic_gen[idx] + 1) & _MASK32
        self._free_topics.append(idx)
        self._cache.pop(idx, None)

    def subscribe(self, pattern: str, subscriber: int) -> int:
        """Deliver topics matching ``pattern`` to ``subscriber``; returns a subscription id."""
        segs = parse_pattern(pattern)
        sub = check_subscriber(subscriber)
        idx = -1
        if is_exact(segs):
            idx = self._topic_index(pattern)
            self._unpinned.pop(idx, None)
            counts = self._exact[idx]
        else:
            counts = self._wild.setdefault(segs, {})
        counts[sub] = counts.get(sub, 0) + 1
        self._invalidate(idx)
        sid = self._next_sid
        self._next_sid += 1
        self._subs[sid] = (segs, idx, sub)
        return sid

    def unsubscribe(self, sid: int) -> None:
        """Remove a subscription made by :meth:`subscribe`."""
        try:
            segs, idx, sub = self._subs.pop(sid)
        except (KeyError, TypeError):
            raise RoutingError(f"unknown subscription {sid!r}") from None
        counts = self._exact[idx] if idx >= 0 else self._wild[segs]
        counts[sub] -= 1
        if counts[sub] == 0:
            del counts[sub]
        self._invalidate(idx)
        if idx >= 0 and not counts:
            self._unpinned[idx] = None
            while len(self._unpinned) > self.max_topics:
                self._evict(self._unpinned.popitem(last=False)[0])
        elif idx < 0 and not counts:
            del self._wild[segs]

    def _invalidate(self, idx: int) -> None:
        """Forget cached matches: one topic's (exact change) or all (wildcard change)."""
        if idx >= 0:
            self._cache.pop(idx, None)
        else:
            self._cache.clear()

    def subscription_count(self) -> int:
        """Number of live subscriptions."""
        return len(self._subs)

    def match(self, topic: str) -> list[int]:
        """Subscribers of ``topic``: ascending, each once."""
        return list(self._match(self._topic_index(topic)))

    def _match(self, idx: int) -> list[int]:
        if not self._wild:
            return sorted(self._exact[idx])
        cached = self._cache.get(idx)
        if cached is None:
            found = set(self._exact[idx])
            segs = self._topic_segs[idx]
            for pattern, counts in self._wild.items():
                if _matches(pattern, segs):
                    found.update(counts)
            cached = self._cache[idx] = sorted(found)
        return cached

    # -- batches --------------------------------------------------------------------------

    def _check_topic(self, handle: int, i: int, name: str = "targets") -> int:
        idx = handle & _MASK32
        if (
            handle < 0
            or idx >= len(self._topic_gen)
            or self._topic_name[idx] is None
            or (self._topic_gen[idx] != handle >> 32)
        ):
            raise RoutingError(f"{name}[{i}]: stale or invalid topic handle {handle}")
        return idx

    def route_many(
        self, kinds: Any, targets: Any
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Route a batch; returns ``(offsets, destinations)`` in CSR form (see ``Router``)."""
        k = as_kinds(kinds)
        t = as_int64(targets)
        if len(k) != len(t):
            raise RoutingError(f"kinds has {len(k)} entries but targets has {len(t)}")
        ks, ts = k.tolist(), t.tolist()
        for i, (kind, target) in enumerate(zip(ks, ts, strict=True)):
            if kind == KIND_TOPIC:
                self._check_topic(target, i)
            elif kind == KIND_TYPE:
                if not 0 <= target < len(self._instances):
                    raise RoutingError(f"targets[{i}]: unknown type handle {target}")
            elif kind != KIND_DIRECT:
                raise RoutingError(f"kinds[{i}]: unknown route kind {kind}")
        offsets = [0]
        out: list[int] = []
        for kind, target in zip(ks, ts, strict=True):
            if kind == KIND_TOPIC:
                out.extend(self._match(target & _MASK32))
            elif kind == KIND_TYPE:
                slot = self._pick(target)
                if slot >= 0:
                    out.append(slot)
            else:
                slot = target & _MASK32
                if (
                    target >= 0
                    and slot < len(self._agents)
                    and self._agents[slot] is not None
                    and self._gen[slot] == target >> 32
                ):
                    out.append(slot)
            offsets.append(len(out))
        return np.array(offsets, dtype=np.int64), np.array(out, dtype=np.int64)

    def match_many(self, handles: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """:meth:`match` for a batch of topic handles, as ``(offsets, subscribers)``."""
        hs = as_int64(handles, "handles").tolist()
        idxs = [self._check_topic(h, i, "handles") for i, h in enumerate(hs)]
        offsets = [0]
        out: list[int] = []
        for idx in idxs:
            out.extend(self._match(idx))
            offsets.append(len(out))
        return np.array(offsets, dtype=np.int64), np.array(out, dtype=np.int64)
