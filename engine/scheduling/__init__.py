"""Task scheduling: priority queue, deadlines, tenant fairness, pools, rate limits, DAGs.

``Scheduler`` is the compiled ``SchedulerC`` when built, else the pure-Python reference
``SchedulerPy``; both have the same API and give the same results (differential tests).

Model (docs/scheduling.md has the long form)::

    from engine.scheduling import Scheduler
    s = Scheduler(on_dep_failure="cancel", clock=time.monotonic)
    s.set_pool(1, slots=4, rate=10.0, burst=5)   # pool 1: 4 in flight, 10 dispatches/s
    s.set_weight(7, 3)                           # tenant 7 gets 3 turns per DRR round
    s.push(101, priority=0, deadline=now + 5, tenant=7, pool=1)
    s.push(102, deps=[101])                      # ready once 101 completes
    s.pop_ready(64) -> int64 array of task ids   # dispatched: now RUNNING
    s.complete(101)                              # frees the slot; 102 becomes ready
    s.fail(id) / s.cancel(id) -> int64 array     # dependents dropped with it (sorted ids)
    s.expired() -> int64 array                   # tasks whose deadline passed before dispatch

Tasks are ``int64`` ids, unique among live tasks (a finished task is forgotten, its id may be
reused). A task is ``"waiting"`` (dependencies pending), ``"ready"`` (queued) or ``"running"``
(dispatched, holding one slot of its pool).

- **Order**: within one (pool, tenant) lane, ready tasks run by ``(priority, deadline,
  arrival)`` ascending — **lower priority values run first** (like ``heapq``/nice); priority
  is an int32, deadline a float on ``clock`` (``inf`` = none), arrival the push order.
- **Deadlines**: a task whose deadline is before ``clock()`` when it reaches the front is
  never dispatched: it is removed and its id (then its dependents', dropped per policy) is
  reported by ``expired()``.
- **Fairness**: each pool serves its tenants by deficit round-robin with unit cost and
  quantum = tenant weight (``set_weight``, default 1): a backlogged tenant gets ``weight``
  dispatches per round however much the others queue.
- **Pools**: ``set_pool(pool, slots=None, rate=None, burst=None)`` sets the pool's whole
  configuration. ``slots``: at most that many RUNNING tasks (``None`` unlimited, ``0``
  paused); a slot is released by ``complete``/``fail``/``cancel``. ``rate``/``burst``: a token
  bucket keyed by the pool (refilled from ``clock``); each dispatch takes one token.
  ``pop_ready`` serves pools round-robin, one task per pool per turn.
- **DAG**: ``push(..., deps=[...])``/``add_dependency(task, dep)``; a task is ready when all
  its deps completed. ``fail(task)`` drops its dependents transitively — counted as failed or
  cancelled per ``on_dep_failure`` (``"cancel"``/``"fail"``); ``cancel`` always cancels them.
  A dependency closing a cycle raises :class:`engine.errors.CycleError` (``.cycle`` lists the
  ids, first == last); unknown ids and duplicate ids raise :class:`engine.errors.SchedulerError`.
- **Batch**: ``push_many(tasks, priorities, deadlines, *, tenants, pools, dep_counts, deps)``
  takes 1-d arrays (dependencies in CSR form: ``dep_counts[i]`` ids of ``deps`` belong to
  task i, which may depend on earlier tasks of the same batch); it is validated as a whole,
  so on error nothing is pushed. ``pop_ready(n)`` returns up to ``n`` ids;
  ``complete_many(ids)`` completes in order and stops at the first bad id.
- **Cost**: push, pop, complete, cancel are O(log n) in the lane size (plus the number of
  dependents touched); ``add_dependency`` on a task that has dependents searches for a cycle
  (O(reachable)).
- ``stats()`` counts pushed/dispatched/completed/failed/cancelled/expired and the current
  waiting/ready/running tasks. Every bad argument raises ``SchedulerError`` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._native import pick
from engine.scheduling._scheduler_py import SchedulerPy

__all__ = ["Scheduler", "SchedulerC", "SchedulerPy"]

if TYPE_CHECKING:
    from engine._native._scheduler import SchedulerC as _SchedulerC

#: The compiled scheduler, or ``None`` when the extension is not built or is disabled.
SchedulerC: type[_SchedulerC] | None
#: ``SchedulerC`` when available, else ``SchedulerPy``.
Scheduler: type[SchedulerPy] | type[_SchedulerC]
SchedulerC, Scheduler = pick("_scheduler", "SchedulerC", SchedulerPy)
