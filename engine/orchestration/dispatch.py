"""Subtasks on the native scheduler: one pool per capability, DRR across tenants, DAG order.

Every subtask of every job becomes a task of one :class:`engine.scheduling.Scheduler`:
its pool is its capability's (slots = the workers' concurrency for it), its tenant is the
job's tenant (deficit round-robin by weight across jobs), its priority orders the job
first and then the subtask (lower first), and its dependencies are its plan's.

The dispatcher pops what is ready and hands each to its job's runner together with a
worker address, ``AgentId(worker_type, key)``. Keys are a fixed set per capability, one per
slot, and a key is lent to one subtask at a time: so each worker instance has at most one
subtask in flight (no mailbox queueing), in process and on mesh nodes alike (the broker
keeps a key on the node that first served it, and moves it when that node dies).

Popping is a plain callback (``loop.call_soon``), coalesced: however many subtasks finish
in one loop iteration, the next iteration pops once, in one ``pop_ready`` batch.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Final, Protocol

import numpy as np

from engine.errors import OrchestrationError
from engine.messages import AgentId
from engine.scheduling import Scheduler

__all__ = ["Dispatcher", "Owner", "Run"]

#: Bound on the priority of a job (the subtask's priority is added below it).
_JOB_PRIORITY: Final = 1_000
_SCALE: Final = 2_000_001  # > the span of subtask priorities (-1e6..1e6)
_POP: Final = 1_024


class Owner(Protocol):
    """What a run belongs to (a job's driver)."""

    def execute(self, run: Run, worker: AgentId) -> Coroutine[Any, Any, None]:
        """Run ``run`` on ``worker`` and report the outcome; must not raise."""
        ...

    def lost(self, run: Run, exc: BaseException) -> None:
        """``execute`` raised anyway (a bug): settle the run as failed."""
        ...

    @property
    def context(self) -> contextvars.Context: ...


class Run:
    """One subtask of one job on the scheduler (task id ``tid``)."""

    __slots__ = ("capability", "deps", "gen", "owner", "pool", "priority", "subtask", "tid")

    def __init__(
        self, owner: Owner, subtask: Any, gen: int, capability: str, priority: int
    ) -> None:
        self.owner = owner
        self.subtask = subtask
        self.gen = gen
        self.capability = capability
        self.priority = priority
        self.tid = -1
        self.pool = -1
        self.deps: list[int] = []

    def __repr__(self) -> str:
        return f"<Run {self.tid} {self.capability}>"


class _Pool:
    __slots__ = ("backlog", "free", "id", "keys", "live", "name")

    def __init__(self, pool_id: int, name: str) -> None:
        self.id = pool_id
        self.name = name
        self.keys: list[AgentId] = []
        self.free: list[AgentId] = []
        self.live = 0  # runs pushed and not finished (waiting, ready or running)
        # Popped while every key was still out (a cancelled run's task not yet unwound).
        self.backlog: deque[Run] = deque()


class Dispatcher:
    """The scheduler, the worker pools and the pump (one per orchestrator)."""

    def __init__(self, scheduler: Any = None) -> None:
        self.sched = scheduler if scheduler is not None else Scheduler(on_dep_failure="fail")
        self._pools: dict[str, _Pool] = {}
        self._by_id: list[_Pool] = []
        self._tenants: dict[str, int] = {}
        self._runs: dict[int, Run] = {}
        self._next = 0
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = 0
        self.dispatched = 0

    # -- configuration -------------------------------------------------------------
    @property
    def capabilities(self) -> list[str]:
        return list(self._pools)

    def add_worker(self, worker_type: str, capabilities: Sequence[str], concurrency: int) -> None:
        """``concurrency`` more slots in each capability's pool, served by ``worker_type``."""
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        for cap in capabilities:
            pool = self._pools.get(cap)
            if pool is None:
                pool = self._pools[cap] = _Pool(len(self._pools), cap)
                self._by_id.append(pool)
            start = len(pool.keys)
            new = [AgentId(worker_type, f"{cap}.{start + i}") for i in range(concurrency)]
            pool.keys.extend(new)
            pool.free.extend(reversed(new))
            self.sched.set_pool(pool.id, slots=len(pool.keys))

    def tenant(self, name: str) -> int:
        t = self._tenants.get(name)
        if t is None:
            if len(self._tenants) >= 1_000_000:
                raise OrchestrationError("too many tenants (1,000,000)")
            t = self._tenants[name] = len(self._tenants)
        return t

    def set_weight(self, tenant: str, weight: int) -> None:
        self.sched.set_weight(self.tenant(tenant), weight)  # SchedulerError outside 1..1e6

    # -- tasks ---------------------------------------------------------------------
    def push(self, runs: Sequence[Run], tenant: str, job_priority: int) -> None:
        """Push ``runs`` (dependencies first; ``run.deps`` are task ids, live or in this batch)."""
        if not runs:
            return
        jp = max(-_JOB_PRIORITY, min(_JOB_PRIORITY, job_priority))
        n = len(runs)
        ids = np.empty(n, dtype=np.int64)
        prio = np.empty(n, dtype=np.int64)
        pools = np.empty(n, dtype=np.int64)
        counts = np.empty(n, dtype=np.int64)
        deps: list[int] = []
        for i, run in enumerate(runs):
            pool = self._pools.get(run.capability)
            if pool is None:
                raise OrchestrationError(f"no worker offers capability {run.capability!r}")
            run.tid = tid = self._next + i
            run.pool = pool.id
            ids[i] = tid
            prio[i] = jp * _SCALE + run.priority
            pools[i] = pool.id
            counts[i] = len(run.deps)
            deps.extend(run.deps)
        # int32 priorities: clamp the combined key (job priority dominates; rarely clipped)
        np.clip(prio, -(2**31), 2**31 - 1, out=prio)
        self.sched.push_many(
            ids,
            prio.astype(np.int32),
            None,
            tenants=np.full(n, self.tenant(tenant), dtype=np.int64),
            pools=pools,
            dep_counts=counts,
            deps=np.asarray(deps, dtype=np.int64),
        )
        self._next += n
        by_id = self._by_id
        for run in runs:
            self._runs[run.tid] = run
            by_id[run.pool].live += 1
        self.wake()

    def _forget(self, tid: int) -> Run | None:
        run = self._runs.pop(tid, None)
        if run is not None:
            self._by_id[run.pool].live -= 1
        return run

    def complete(self, runs: Sequence[Run]) -> None:
        """Mark finished (running) runs completed; their dependents may become ready."""
        if runs:
            self.sched.complete_many(np.fromiter((r.tid for r in runs), np.int64, len(runs)))
            for r in runs:
                self._forget(r.tid)
            self.wake()

    def fail(self, run: Run) -> list[Run]:
        """Fail a running ``run``; returns the dependents dropped with it."""
        dropped = self.sched.fail(run.tid)
        self._forget(run.tid)
        self.wake()
        return [r for tid in dropped.tolist() if (r := self._forget(tid)) is not None]

    def cancel(self, runs: Sequence[Run]) -> list[Run]:
        """Remove live runs in any state; returns them and the dependents dropped with them."""
        out: list[Run] = []
        for run in runs:
            if run.tid in self._runs:
                dropped = self.sched.cancel(run.tid).tolist()
                out.append(self._forget(run.tid))  # type: ignore[arg-type]
                out.extend(r for tid in dropped if (r := self._forget(tid)) is not None)
        self.wake()
        return out

    @property
    def next_id(self) -> int:
        """The task id the next pushed run gets (ids are consecutive within a push)."""
        return self._next

    def live(self, run: Run) -> bool:
        return run.tid in self._runs

    def queued(self) -> dict[str, int]:
        """Subtasks not yet running per capability (the ``engine_tasks_queued`` gauge)."""
        return {
            name: max(0, p.live - (len(p.keys) - len(p.free))) for name, p in self._pools.items()
        }

    # -- the pump ------------------------------------------------------------------
    def wake(self) -> None:
        """Pop and dispatch at the next loop iteration (coalesced)."""
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        by_id = self._by_id
        runs = self._runs
        while True:
            ids = self.sched.pop_ready(_POP)
            if not len(ids):
                return
            for tid in ids.tolist():
                run = runs[tid]
                pool = by_id[run.pool]
                if pool.free:
                    self._start(run, pool, pool.free.pop())
                else:
                    pool.backlog.append(run)
            if len(ids) < _POP:
                return

    def _start(self, run: Run, pool: _Pool, worker: AgentId) -> None:
        loop = self._loop
        assert loop is not None
        self.running += 1
        self.dispatched += 1
        task = loop.create_task(run.owner.execute(run, worker), context=run.owner.context)
        task.add_done_callback(_Release(self, run, pool, worker))

    def _released(self, pool: _Pool, worker: AgentId) -> None:
        self.running -= 1
        while pool.backlog:
            run = pool.backlog.popleft()
            if run.tid in self._runs:  # not cancelled while it waited for a key
                self._start(run, pool, worker)
                return
        pool.free.append(worker)


class _Release:
    """Done callback of a run's task: its worker key goes back to the pool."""

    __slots__ = ("d", "pool", "run", "worker")

    def __init__(self, d: Dispatcher, run: Run, pool: _Pool, worker: AgentId) -> None:
        self.d = d
        self.run = run
        self.pool = pool
        self.worker = worker

    def __call__(self, task: asyncio.Task[None]) -> None:
        self.d._released(self.pool, self.worker)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:  # execute() must not raise: settle the run anyway
                self.run.owner.lost(self.run, exc)
