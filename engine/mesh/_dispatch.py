"""Routing and fair dispatch for the broker core: the Router and the native Scheduler.

Each registered peer that hosts agents is a router instance ``AgentId(type, peer name)``
per type it hosts, and a scheduler *pool* (its ``num``) whose ``slots`` are its delivery
window. An accepted message is routed once (a batch per loop iteration), then pushed as a
scheduler task into the pool of the peer it goes to, with the envelope's priority (lower
runs first), its deadline and its tenant; ``pop_ready`` hands out tasks pool by pool
(round-robin), within a pool tenant by tenant (deficit round-robin with the configured
weights), within a tenant by (priority, deadline, arrival). A task stays RUNNING, holding
one slot of the window, until the node answers.

Direct messages (``AgentId(type, key)`` with a key other than ``"*"``) stick to the node
that first served that id while it lives (a bounded table); ``"*"`` asks for any instance.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import numpy as np

from engine.errors import RoutingError
from engine.mesh._config import BrokerConfig
from engine.mesh._state import Delivery, Peer
from engine.messages import AgentId
from engine.routing import KIND_TOPIC, KIND_TYPE, Router
from engine.scheduling import Scheduler

__all__ = ["ANY_KEY", "Dispatcher", "Routed"]

ANY_KEY: Final = "*"
_INF: Final = math.inf
_OVERFLOW_TENANT: Final = 1  # tenants past max_tenants share this lane
# PERF: route_many costs ~10 us per call whatever its size (numpy arrays in and out) and
# ~0.1 us per message; a single pick() ~0.6 us. Below this many decisions per batch, the
# picks are cheaper (benches/mesh_seq_profile.py --python; 2-core machine, 2026-12).
ROUTE_MANY_MIN: Final = 16
# Types ever added to the router beyond the live ones before it is rebuilt (the router
# keeps a type's table once created; a churn of type names must not grow it for good).
_DEAD_TYPES: Final = 1024

Routed = tuple[
    list[tuple[Delivery, Peer]], list[Delivery], list[tuple[Delivery, str]], list[Delivery]
]


class Dispatcher:
    """Router, scheduler, tenants and sticky routes of one broker core."""

    def __init__(self, config: BrokerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.router: Any = Router()
        self.scheduler: Any = Scheduler(clock=clock)
        self._policy = config.policy
        self._types_ever: set[str] = set()
        self._type_handle: dict[str, int] = {}
        self.slot_peer: dict[int, Peer] = {}
        self.sub_peer: dict[int, Peer] = {}
        self.sticky: dict[int, str] = {}  # hash(AgentId) -> peer name
        self.tasks: dict[int, Delivery] = {}
        self._next_task = 0
        self._tenants: dict[str, int] = {}  # name -> scheduler tenant id (its lane)
        self._lane_names: dict[int, str] = {}
        self._lane_live: dict[int, int] = {}  # lane -> live tasks
        self._free_tenants: list[int] = []
        self._next_tenant = 2  # 0: the default tenant "", 1: overflow
        self.pending = False  # something was pushed or a slot freed since the last pop
        self.deadlines = 0  # queued tasks with a deadline (PERF: expired() only then)

    # -- peers --------------------------------------------------------------------------

    def add_types(self, peer: Peer, types: Iterable[str]) -> None:
        """Route ``types`` to ``peer`` (RoutingError for a bad type name)."""
        router = self.router
        for type_ in types:
            if type_ in peer.slots:
                continue
            slot = router.add_agent(AgentId(type_, peer.name))
            if type_ not in self._types_ever:
                router.set_policy(type_, self._policy)
                self._types_ever.add(type_)
                self._type_handle[type_] = router.type_handle(type_)
            peer.slots[type_] = slot
            self.slot_peer[slot] = peer

    def add_subscriptions(self, peer: Peer, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            peer.sids.append(self.router.subscribe(pattern, subscriber=peer.num))
        if peer.sids:
            self.sub_peer[peer.num] = peer

    def remove_peer(self, peer: Peer) -> None:
        """Stop routing to ``peer`` (its queued and running tasks are the caller's)."""
        router = self.router
        for type_, slot in peer.slots.items():
            with contextlib.suppress(RoutingError):
                router.remove_agent(AgentId(type_, peer.name))
            if self.slot_peer.get(slot) is peer:
                del self.slot_peer[slot]
        peer.slots.clear()
        for sid in peer.sids:
            with contextlib.suppress(RoutingError):
                router.unsubscribe(sid)
        peer.sids.clear()
        if self.sub_peer.get(peer.num) is peer:
            del self.sub_peer[peer.num]
        self.scheduler.set_pool(peer.num, slots=0)

    def set_window(self, peer: Peer) -> None:
        self.scheduler.set_pool(peer.num, slots=peer.window)
        self.pending = True

    def hosts(self, type_: str) -> bool:
        """Whether any live peer hosts ``type_``."""
        th = self._type_handle.get(type_)
        return th is not None and bool(self.router.instances(type_))

    def maybe_rebuild(self, peers: Iterable[Peer]) -> bool:
        """Recreate the router when dead type names pile up; True if it did."""
        peers = list(peers)
        live = {t for p in peers for t in p.slots}
        if len(self._types_ever) <= len(live) + _DEAD_TYPES:
            return False
        self.router = Router()
        self._types_ever.clear()
        self._type_handle.clear()
        self.slot_peer.clear()
        self.sub_peer.clear()
        for d in self.tasks.values():
            d.slot = -1  # outstanding counts restart (the old slots are gone)
        for p in peers:
            types, p.slots = list(p.slots), {}
            p.sids = []
            self.add_types(p, types)
            self.add_subscriptions(p, p.patterns)
        return True

    # -- routing ------------------------------------------------------------------------

    def route(
        self, batch: list[Delivery], names: dict[str, bytes], peers: dict[bytes, Peer]
    ) -> Routed:
        """Decide where each message of ``batch`` goes.

        Returns ``(assigned, parked, refused, done)``: (delivery, peer) pairs to push (a
        topic publish contributes one copy per subscriber), messages whose type no node
        hosts, (delivery, reason) pairs that cannot be routed, and publishes nobody
        subscribes to. A batch of ``ROUTE_MANY_MIN`` decisions or more is decided by one
        ``route_many`` call; a smaller one by ``pick``/``match`` calls.
        """
        out: Routed = ([], [], [], [])
        assigned, parked, refused, _ = out
        many = len(batch) >= ROUTE_MANY_MIN
        kinds: list[int] = []
        targets: list[int] = []
        waiting: list[Delivery] = []
        sticky = self.sticky
        handles = self._type_handle
        router = self.router
        for d in batch:
            rec = d.env.recipient
            if rec is None:
                topic = d.env.topic
                if topic is None:
                    refused.append((d, "envelope has neither recipient nor topic"))
                    continue
                try:
                    if many:
                        kinds.append(KIND_TOPIC)
                        targets.append(router.topic_handle(topic.type))
                        waiting.append(d)
                    else:
                        self._fan_out(d, router.match(topic.type), out)
                except RoutingError as exc:
                    refused.append((d, str(exc)))
                continue
            type_ = rec.type
            if rec.key != ANY_KEY:
                name = sticky.get(hash(rec))
                if name is not None:
                    ident = names.get(name)
                    peer = peers.get(ident) if ident is not None else None
                    if peer is not None and type_ in peer.slots:
                        assigned.append((d, peer))
                        continue
            th = handles.get(type_)
            if th is None:
                parked.append(d)
            elif many:
                kinds.append(KIND_TYPE)
                targets.append(th)
                waiting.append(d)
            else:
                try:
                    self._place(d, router.pick(type_), assigned)
                except RoutingError:  # the type has no instance now
                    parked.append(d)
        if waiting:
            offsets, dests = router.route_many(
                np.array(kinds, dtype=np.uint8), np.array(targets, dtype=np.int64)
            )
            offs, dst = offsets.tolist(), dests.tolist()
            for i, d in enumerate(waiting):
                found = dst[offs[i] : offs[i + 1]]
                if kinds[i] == KIND_TOPIC:
                    self._fan_out(d, found, out)
                elif found:
                    self._place(d, found[0], assigned)
                else:
                    parked.append(d)
        return out

    def _place(self, d: Delivery, slot: int, assigned: list[tuple[Delivery, Peer]]) -> None:
        """``d`` goes to the instance at ``slot`` (already charged by the pick)."""
        d.slot = slot
        peer = self.slot_peer[slot]
        rec = d.env.recipient
        assert rec is not None
        if d.avoid is not None:
            if d.avoid is peer:
                peer = self._another(d, rec.type, peer)
            d.avoid = None
        if rec.key != ANY_KEY:
            sticky = self.sticky
            if len(sticky) >= self.config.max_sticky:
                del sticky[next(iter(sticky))]
            sticky[hash(rec)] = peer.name
        assigned.append((d, peer))

    def _fan_out(self, d: Delivery, subscribers: list[int], out: Routed) -> None:
        """A topic publish: one copy per subscribed peer (``done`` if there is none)."""
        sub_peer = self.sub_peer
        subs = [sub_peer[s] for s in subscribers if s in sub_peer]
        if not subs:
            out[3].append(d)
            return
        d.group = [len(subs), len(subs)]
        assigned = out[0]
        assigned.append((d, subs[0]))
        assigned.extend((d.copy(), p) for p in subs[1:])

    def _another(self, d: Delivery, type_: str, peer: Peer) -> Peer:
        """Pick again for ``d`` (it failed at ``peer``) when the type has other instances."""
        router = self.router
        if len(router.instances(type_)) < 2:
            return peer
        slot = router.pick(type_)
        other = self.slot_peer[slot]
        if other is peer:  # round-robin ties: one more turn
            router.ack(slot)
            slot = router.pick(type_)
            other = self.slot_peer[slot]
        router.ack(d.slot)
        d.slot = slot
        return other

    # -- the scheduler --------------------------------------------------------------------

    def push(self, d: Delivery, peer: Peer) -> None:
        """Queue ``d`` for ``peer`` (a task in its pool)."""
        self._next_task += 1
        tid = self._next_task
        d.task = tid
        d.target = peer
        self.tasks[tid] = d
        peer.waiting += 1
        env = d.env
        deadline = d.deadline
        d.lane = lane = self._tenant(env.tenant) if env.tenant else 0
        self.scheduler.push(tid, env.priority, deadline, tenant=lane, pool=peer.num)
        if deadline != _INF:
            self.deadlines += 1
        self.pending = True

    def pop_ready(self, n: int) -> list[Delivery]:
        """Up to ``n`` queued deliveries whose peer has room, in fair order (now running)."""
        self.pending = False
        tasks = self.tasks
        out = [tasks[tid] for tid in self.scheduler.pop_ready(n).tolist()]
        for d in out:
            d.target.waiting -= 1  # type: ignore[union-attr]
            if d.deadline != _INF:
                self.deadlines -= 1
        return out

    def queued_for(self, peer: Peer) -> list[Delivery]:
        """The deliveries queued for ``peer`` (a scan: for when a peer leaves)."""
        if not peer.waiting:
            return []
        return [d for d in self.tasks.values() if d.target is peer and d.mid not in peer.inflight]

    def complete(self, d: Delivery) -> None:
        """The node answered ``d``: free its slot of the window."""
        tid = d.task
        if tid >= 0:
            self.scheduler.complete(tid)
            del self.tasks[tid]
            d.task = -1
            if d.lane:
                self._release_lane(d.lane)
            target = d.target
            if target is not None and target.waiting:  # its freed slot can take one
                self.pending = True
        slot = d.slot
        if slot >= 0:
            d.slot = -1
            if slot in self.slot_peer:
                self.router.ack(slot)

    def drop(self, d: Delivery, *, delivered: bool) -> None:
        """Forget ``d``'s task without an answer: ``delivered`` (running at its node) or
        still queued for it."""
        tid = d.task
        if tid >= 0:
            self.scheduler.cancel(tid)
            del self.tasks[tid]
            d.task = -1
            if d.lane:
                self._release_lane(d.lane)
            target = d.target
            if target is not None:
                if not delivered:
                    target.waiting -= 1
                    if d.deadline != _INF:
                        self.deadlines -= 1
                if target.waiting:
                    self.pending = True
        self._unslot(d)
        d.target = None

    def is_queued(self, d: Delivery) -> bool:
        """``d`` waits in its peer's pool (not yet delivered)."""
        target = d.target
        return d.task >= 0 and target is not None and target.inflight.get(d.mid) is not d

    def expired(self) -> list[Delivery]:
        """Queued deliveries whose deadline passed before dispatch (already dropped)."""
        if not self.deadlines:
            return []
        out = []
        for tid in self.scheduler.expired().tolist():
            d = self.tasks.pop(tid, None)
            if d is None:
                continue
            if d.lane:
                self._release_lane(d.lane)
            self.deadlines -= 1
            if d.target is not None:
                d.target.waiting -= 1
            d.task = -1
            self._unslot(d)
            out.append(d)
        return out

    def _unslot(self, d: Delivery) -> None:
        slot = d.slot
        if slot >= 0:
            d.slot = -1
            if slot in self.slot_peer:
                self.router.ack(slot)

    # -- tenants --------------------------------------------------------------------------

    def _tenant(self, name: str) -> int:
        """The scheduler tenant (lane) of ``name``, counting one more live task in it."""
        lane = self._tenants.get(name)
        if lane is None:
            if len(self._tenants) >= self.config.max_tenants:
                return _OVERFLOW_TENANT
            lane = self._free_tenants.pop() if self._free_tenants else self._take_lane()
            self.scheduler.set_weight(lane, self.config.tenant_weights.get(name, 1))
            self._tenants[name] = lane
            self._lane_names[lane] = name
            self._lane_live[lane] = 0
        self._lane_live[lane] += 1
        return lane

    def _take_lane(self) -> int:
        self._next_tenant += 1
        return self._next_tenant - 1

    def _release_lane(self, lane: int) -> None:
        if lane < 2:  # the default tenant and the overflow lane are never freed
            return
        left = self._lane_live[lane] - 1
        if left:
            self._lane_live[lane] = left
            return
        del self._lane_live[lane]
        del self._tenants[self._lane_names.pop(lane)]
        self._free_tenants.append(lane)

    @property
    def tenants(self) -> int:
        """Distinct tenants with live tasks."""
        return len(self._tenants)
