"""``engine_tasks_*`` metrics of the orchestrator.

Finished subtasks go to the shared ``engine_tasks_total{status}`` and
``engine_task_duration_seconds`` (``Metrics.task_finished``, what ``engine top`` reads);
this module adds ``engine_tasks_submitted_total`` and ``engine_tasks_queued{capability}``
(subtasks pushed to the scheduler and not yet running, read at scrape time).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from engine.observe.metrics import Metrics
    from engine.orchestration.dispatch import Dispatcher

__all__ = ["TaskMetrics"]

_by_registry: weakref.WeakKeyDictionary[object, TaskMetrics] = weakref.WeakKeyDictionary()


class TaskMetrics:
    """The orchestrator's own collectors on one :class:`Metrics` registry (made once)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self._submitted = Counter(
            "engine_tasks_submitted", "Subtasks pushed to the scheduler.", registry=r
        )
        self.queued = Gauge(
            "engine_tasks_queued",
            "Subtasks waiting or ready (not running), by capability.",
            ["capability"],
            registry=r,
        )
        self.dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
        metrics.on_collect(self._collect)

    @classmethod
    def on(cls, metrics: Metrics, dispatcher: Dispatcher) -> TaskMetrics:
        tm = _by_registry.get(metrics.registry)
        if tm is None:
            tm = _by_registry[metrics.registry] = cls(metrics)
        tm.dispatchers.add(dispatcher)
        return tm

    def submitted(self, n: int) -> None:
        self._submitted.inc(n)

    def _collect(self) -> None:
        totals: dict[str, int] = {}
        for d in list(self.dispatchers):
            for cap, n in d.queued().items():
                totals[cap] = totals.get(cap, 0) + n
        for cap, n in totals.items():
            self.queued.labels(cap).set(n)
