"""Reference twin of the scheduler: plain Python, kept simple.

It is the oracle for the differential tests and the fallback when the compiled module is
missing. The model (documented in ``engine/scheduling/__init__.py`` and docs/scheduling.md):

- a task is WAITING (dependencies pending), READY (queued in its lane) or RUNNING
  (dispatched, holding a slot of its pool); finished tasks are forgotten;
- a lane is one (pool, tenant) pair: a heap ordered by (priority, deadline, arrival);
- each pool serves its lanes by deficit round-robin (unit cost, quantum = tenant weight);
- ``pop_ready`` serves the pools round-robin, one task per pool per turn, skipping a pool
  whose slots are all taken (until one is released) or whose token bucket is empty (until
  the next ``pop_ready``).

Heaps use lazy deletion: a cancelled READY task's entry stays in the heap and is skipped
when it surfaces (its ``token`` no longer matches).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from engine._args import scheduling as v
from engine.errors import CycleError, SchedulerError

__all__ = ["SchedulerPy"]

WAITING, READY, RUNNING = 1, 2, 3
_STATE = {WAITING: "waiting", READY: "ready", RUNNING: "running"}
IDLE, ACTIVE, FULL, THROTTLED = 0, 1, 2, 3  # pool states
_EMPTY = np.empty(0, dtype=np.int64)


class _Task:
    __slots__ = (
        "arrival",
        "children",
        "deadline",
        "id",
        "lane",
        "prio",
        "state",
        "token",
        "waiting",
    )

    def __init__(self, tid: int, prio: int, deadline: float, arrival: int, lane: _Lane) -> None:
        self.id = tid
        self.prio = prio
        self.deadline = deadline
        self.arrival = arrival
        self.lane = lane
        self.state = WAITING
        self.waiting = 0
        self.token = 0
        self.children: list[_Task] = []


class _Pool:
    __slots__ = ("burst", "in_use", "last", "rate", "ready", "ring", "slots", "state", "tokens")

    def __init__(self) -> None:
        self.slots = -1  # unlimited
        self.in_use = 0
        self.rate = math.inf
        self.burst = math.inf
        self.tokens = math.inf
        self.last = 0.0
        self.ready = 0
        self.state = IDLE
        self.ring: deque[_Lane] = deque()


class _Lane:
    __slots__ = ("deficit", "granted", "heap", "in_ring", "live", "pool", "tenant")

    def __init__(self, pool: _Pool, tenant: int) -> None:
        self.pool = pool
        self.tenant = tenant
        self.heap: list[tuple[int, float, int, int, _Task]] = []
        self.live = 0
        self.deficit = 0
        self.granted = False
        self.in_ring = False


class SchedulerPy:
    """Pure-Python scheduler; same API and results as :class:`engine.scheduling.SchedulerC`."""

    def __init__(
        self, *, on_dep_failure: str = "cancel", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = v.as_policy(on_dep_failure)
        if not callable(clock):
            raise SchedulerError(f"clock must be callable, got {type(clock).__name__}")
        self._clock = clock
        self._tasks: dict[int, _Task] = {}
        self._pools: dict[int, _Pool] = {}
        self._lanes: dict[tuple[int, int], _Lane] = {}
        self._weights: dict[int, int] = {}
        self._ring: deque[_Pool] = deque()  # ACTIVE pools
        self._throttled: list[_Pool] = []
        self._expired: list[int] = []
        self._arrival = 0
        self._token = 0
        self._counts = dict.fromkeys(
            ("pushed", "dispatched", "completed", "failed", "cancelled", "expired"), 0
        )
        self._states = {WAITING: 0, READY: 0, RUNNING: 0}

    # -- configuration -------------------------------------------------------------------
    @property
    def on_dep_failure(self) -> str:
        return self._policy

    def set_weight(self, tenant: int, weight: int) -> None:
        self._weights[v.as_i64(tenant, "tenant")] = v.as_weight(weight)

    def weight(self, tenant: int) -> int:
        return self._weights.get(v.as_i64(tenant, "tenant"), 1)

    def set_pool(
        self,
        pool: int,
        *,
        slots: int | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> None:
        pid = v.as_i64(pool, "pool")
        n_slots = v.as_slots(slots)
        r, b = v.as_rate(rate, burst)
        p = self._pool(pid)
        p.slots, p.rate, p.burst = n_slots, r, b
        p.tokens = p.burst
        if math.isfinite(p.rate):
            p.last = float(self._clock())
        if p.state == FULL:
            p.state = ACTIVE
            self._ring.append(p)

    def in_use(self, pool: int) -> int:
        p = self._pools.get(v.as_i64(pool, "pool"))
        return 0 if p is None else p.in_use

    # -- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        try:
            return v.as_i64(task, "task") in self._tasks
        except SchedulerError:
            return False

    def state(self, task: int) -> str:
        return _STATE[self._get(task).state]

    def stats(self) -> dict[str, int]:
        out = dict(self._counts)
        out.update(
            waiting=self._states[WAITING],
            ready=self._states[READY],
            running=self._states[RUNNING],
        )
        return out

    def expired(self) -> npt.NDArray[np.int64]:
        out = np.array(self._expired, dtype=np.int64)
        self._expired.clear()
        return out

    # -- submission ----------------------------------------------------------------------
    def push(
        self,
        task: int,
        priority: int = 0,
        deadline: float = math.inf,
        *,
        tenant: int = 0,
        pool: int = 0,
        deps: Iterable[int] = (),
    ) -> None:
        tid = v.as_i64(task, "task")
        prio = v.as_priority(priority)
        dl = v.as_deadline(deadline)
        ten = v.as_i64(tenant, "tenant")
        pl = v.as_i64(pool, "pool")
        dep_ids = [v.as_i64(d, "dependency") for d in v.as_iterable(deps)]
        if tid in self._tasks:
            raise SchedulerError(f"duplicate task id {tid}")
        for d in dep_ids:
            self._check_dep(tid, d)
        self._insert(tid, prio, dl, ten, pl, dep_ids)

    def push_many(
        self,
        tasks: object,
        priorities: object = None,
        deadlines: object = None,
        *,
        tenants: object = None,
        pools: object = None,
        dep_counts: object = None,
        deps: object = None,
    ) -> None:
        ids = v.as_i64_array(tasks, "tasks")
        n = ids.shape[0]
        prios = (
            np.zeros(n, np.int64)
            if priorities is None
            else v.as_i64_array(priorities, "priorities", n, v.I32_MIN, v.I32_MAX)
        )
        dls = (
            np.full(n, math.inf) if deadlines is None else v.as_f64_array(deadlines, "deadlines", n)
        )
        tens = np.zeros(n, np.int64) if tenants is None else v.as_i64_array(tenants, "tenants", n)
        pls = np.zeros(n, np.int64) if pools is None else v.as_i64_array(pools, "pools", n)
        if (dep_counts is None) != (deps is None):
            raise SchedulerError("dep_counts and deps must be given together")
        if dep_counts is None:
            counts = np.zeros(n, np.int64)
            flat = np.zeros(0, np.int64)
        else:
            counts = v.as_i64_array(dep_counts, "dep_counts", n, 0)
            flat = v.as_i64_array(deps, "deps")
            if int(counts.sum()) != flat.shape[0]:
                raise SchedulerError(
                    f"dep_counts sums to {int(counts.sum())} but deps has {flat.shape[0]} ids"
                )
        # Validate the whole batch first: on error nothing is pushed.
        seen: set[int] = set()
        off = 0
        lists: list[list[int]] = []
        for i in range(n):
            tid = int(ids[i])
            if tid in self._tasks or tid in seen:
                raise SchedulerError(f"tasks[{i}]: duplicate task id {tid}")
            dl = [int(d) for d in flat[off : off + int(counts[i])]]
            off += int(counts[i])
            for d in dl:
                if d not in seen:
                    self._check_dep(tid, d, f"tasks[{i}]: ")
            seen.add(tid)
            lists.append(dl)
        for i in range(n):
            self._insert(
                int(ids[i]), int(prios[i]), float(dls[i]), int(tens[i]), int(pls[i]), lists[i]
            )

    def add_dependency(self, task: int, dep: int) -> None:
        t = self._get(task)
        d = self._get(dep, "dependency")
        if t.state == RUNNING:
            raise SchedulerError(f"task {t.id} is already running")
        if t is d:
            raise CycleError([t.id, t.id])
        if t.children:
            path = self._path(t, d)
            if path is not None:
                raise CycleError([*path, t.id])
        if t.state == READY:  # back to waiting; its heap entry goes stale
            self._unready(t)
            t.state = WAITING
            self._states[WAITING] += 1
        t.waiting += 1
        d.children.append(t)

    # -- dispatch ------------------------------------------------------------------------
    def pop(self) -> int | None:
        out = self._pop(1)
        return out[0] if out else None

    def pop_ready(self, n: int) -> npt.NDArray[np.int64]:
        count = v.as_count(n)
        return np.array(self._pop(count), dtype=np.int64) if count else _EMPTY.copy()

    def _pop(self, n: int) -> list[int]:
        out: list[int] = []
        now: float | None = None
        for p in self._throttled:
            p.state = ACTIVE
            self._ring.append(p)
        self._throttled.clear()
        ring = self._ring
        while len(out) < n and ring:
            p = ring[0]
            if p.ready == 0:
                ring.popleft()
                p.state = IDLE
                continue
            if p.slots >= 0 and p.in_use >= p.slots:
                ring.popleft()
                p.state = FULL
                continue
            if p.rate != math.inf:
                if now is None:
                    now = float(self._clock())
                if now > p.last:
                    p.tokens = min(p.burst, p.tokens + (now - p.last) * p.rate)
                    p.last = now
                if p.tokens < 1.0:
                    ring.popleft()
                    p.state = THROTTLED
                    self._throttled.append(p)
                    continue
            t = self._drr_pop(p)
            ring.popleft()
            if p.ready == 0:
                p.state = IDLE
            else:
                ring.append(p)
            if t.deadline != math.inf:
                if now is None:
                    now = float(self._clock())
                if t.deadline < now:
                    self._expire(t)
                    continue
            p.in_use += 1
            p.tokens -= 1.0
            t.state = RUNNING
            self._states[READY] -= 1
            self._states[RUNNING] += 1
            self._counts["dispatched"] += 1
            out.append(t.id)
        return out

    def _drr_pop(self, p: _Pool) -> _Task:
        ring = p.ring
        while True:
            lane = ring[0]
            if lane.live == 0:
                ring.popleft()
                self._retire(lane)
                continue
            if not lane.granted:
                lane.deficit += self._weights.get(lane.tenant, 1)
                lane.granted = True
            while True:
                _, _, _, token, t = heapq.heappop(lane.heap)
                if t.token == token and t.state == READY:
                    break
            lane.live -= 1
            p.ready -= 1
            lane.deficit -= 1
            if lane.live == 0:
                ring.popleft()
                self._retire(lane)
            elif lane.deficit <= 0:
                ring.popleft()
                ring.append(lane)
                lane.granted = False
            return t

    @staticmethod
    def _retire(lane: _Lane) -> None:
        lane.in_ring = False
        lane.deficit = 0
        lane.granted = False
        lane.heap.clear()

    # -- completion ----------------------------------------------------------------------
    def complete(self, task: int) -> None:
        t = self._get(task)
        if t.state != RUNNING:
            raise SchedulerError(f"task {t.id} is {_STATE[t.state]}, not running")
        self._remove(t)
        self._counts["completed"] += 1
        for c in t.children:
            if c.state == WAITING:
                c.waiting -= 1
                if c.waiting == 0:
                    self._make_ready(c)

    def complete_many(self, tasks: object) -> None:
        """Complete each id in order; stops at the first bad id (earlier ones stay completed)."""
        for tid in v.as_i64_array(tasks, "tasks"):
            self.complete(int(tid))

    def fail(self, task: int) -> npt.NDArray[np.int64]:
        t = self._get(task)
        if t.state != RUNNING:
            raise SchedulerError(f"task {t.id} is {_STATE[t.state]}, not running")
        self._remove(t)
        self._counts["failed"] += 1
        return np.array(self._drop_dependents(t, self._policy), dtype=np.int64)

    def cancel(self, task: int) -> npt.NDArray[np.int64]:
        t = self._get(task)
        self._remove(t)
        self._counts["cancelled"] += 1
        return np.array(self._drop_dependents(t, "cancel"), dtype=np.int64)

    # -- internals -----------------------------------------------------------------------
    def _get(self, task: object, what: str = "task") -> _Task:
        tid = v.as_i64(task, what)
        t = self._tasks.get(tid)
        if t is None:
            raise SchedulerError(f"unknown {what} id {tid}")
        return t

    def _check_dep(self, tid: int, dep: int, where: str = "") -> None:
        if dep == tid:
            raise CycleError([tid, tid])
        if dep not in self._tasks:
            raise SchedulerError(f"{where}unknown dependency id {dep}")

    def _pool(self, pool: int) -> _Pool:
        p = self._pools.get(pool)
        if p is None:
            p = self._pools[pool] = _Pool()
        return p

    def _insert(
        self, tid: int, prio: int, dl: float, tenant: int, pool: int, deps: list[int]
    ) -> None:
        lane = self._lanes.get((pool, tenant))
        if lane is None:
            lane = self._lanes[(pool, tenant)] = _Lane(self._pool(pool), tenant)
        self._arrival += 1
        t = _Task(tid, prio, dl, self._arrival, lane)
        self._tasks[tid] = t
        self._counts["pushed"] += 1
        self._states[WAITING] += 1
        for d in deps:
            self._tasks[d].children.append(t)
        t.waiting = len(deps)
        if not deps:
            self._make_ready(t)

    def _make_ready(self, t: _Task) -> None:
        self._states[WAITING] -= 1
        self._states[READY] += 1
        t.state = READY
        self._token += 1
        t.token = self._token
        lane = t.lane
        heapq.heappush(lane.heap, (t.prio, t.deadline, t.arrival, t.token, t))
        lane.live += 1
        p = lane.pool
        p.ready += 1
        if not lane.in_ring:
            lane.in_ring = True
            p.ring.append(lane)
        if p.state == IDLE:
            p.state = ACTIVE
            self._ring.append(p)

    def _unready(self, t: _Task) -> None:
        lane = t.lane
        lane.live -= 1
        lane.pool.ready -= 1
        self._states[READY] -= 1
        if lane.live == 0:  # every entry left is stale
            lane.heap.clear()
        elif len(lane.heap) > 2 * lane.live + 64:  # drop stale entries (bounded memory)
            lane.heap = [e for e in lane.heap if e[4].token == e[3] and e[4].state == READY]
            heapq.heapify(lane.heap)

    def _remove(self, t: _Task) -> None:
        del self._tasks[t.id]
        if t.state == READY:
            self._unready(t)
        else:
            self._states[t.state] -= 1
            if t.state == RUNNING:
                self._release(t.lane.pool)
        t.state = 0

    def _release(self, p: _Pool) -> None:
        p.in_use -= 1
        if p.state == FULL:
            if p.ready > 0:
                p.state = ACTIVE
                self._ring.append(p)
            else:
                p.state = IDLE

    def _drop_dependents(self, root: _Task, how: str) -> list[int]:
        """Remove every WAITING task that depends (transitively) on ``root``; sorted ids."""
        dropped: list[int] = []
        stack = [root]
        while stack:
            for c in stack.pop().children:
                if c.state == WAITING:
                    self._remove(c)
                    dropped.append(c.id)
                    stack.append(c)
        self._counts["failed" if how == "fail" else "cancelled"] += len(dropped)
        dropped.sort()
        return dropped

    def _expire(self, t: _Task) -> None:
        """``t`` (just taken off its lane by _drr_pop) missed its deadline."""
        del self._tasks[t.id]
        self._states[READY] -= 1
        t.state = 0
        self._counts["expired"] += 1
        self._expired.append(t.id)
        self._expired.extend(self._drop_dependents(t, self._policy))

    def _path(self, src: _Task, dst: _Task) -> list[int] | None:
        """Ids on the shortest dependents-path src -> ... -> dst (BFS), or None."""
        prev: dict[int, _Task | None] = {src.id: None}
        queue = deque([src])
        while queue:
            cur = queue.popleft()
            for c in cur.children:
                if c.state == 0 or c.id in prev:
                    continue
                prev[c.id] = cur
                if c is dst:
                    path = [c.id]
                    back = prev[c.id]
                    while back is not None:
                        path.append(back.id)
                        back = prev[back.id]
                    return path[::-1]
                queue.append(c)
        return None
