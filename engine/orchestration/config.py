"""Settings shared by an orchestrator's jobs, and the subtask retry policy."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from engine.observe.audit import AuditLog
    from engine.observe.metrics import Metrics
    from engine.observe.tracing import Tracer
    from engine.orchestration._metrics import TaskMetrics
    from engine.orchestration.dispatch import Dispatcher
    from engine.orchestration.persist import Persist
    from engine.orchestration.prompts import Prompts
    from engine.runtime import Runtime

__all__ = ["RetryPolicy", "Settings"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a failed subtask is retried before it fails its dependents.

    ``attempts`` in all (1 = no retry); the wait before attempt n is a full-jitter
    exponential backoff, ``uniform(0, min(max_backoff, backoff * 2**(n-2)))``; ``timeout``
    (seconds, None = none) bounds each attempt. A worker's ``BudgetExceeded`` is never
    retried: it fails the job.
    """

    attempts: int = 2
    backoff: float = 0.05
    max_backoff: float = 2.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if not self.backoff >= 0 or not self.max_backoff >= 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 or None, got {self.timeout!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        cap = min(self.max_backoff, self.backoff * 2 ** max(0, attempt - 2))
        return random.uniform(0, cap) if cap > 0 else 0.0


class Settings:
    """Everything a job's driver reads from its orchestrator (one object, shared)."""

    __slots__ = (
        "audit",
        "descriptions",
        "dispatcher",
        "llm",
        "local_types",
        "max_repeats",
        "max_replans",
        "max_stalls",
        "max_subtasks",
        "metrics",
        "persist",
        "progress_batch",
        "prompts",
        "retry",
        "runtime",
        "task_metrics",
        "tracer",
    )

    def __init__(
        self,
        *,
        llm: Any,
        runtime: Runtime,
        persist: Persist,
        dispatcher: Dispatcher,
        prompts: Prompts,
        retry: RetryPolicy,
        max_subtasks: int,
        max_stalls: int,
        max_replans: int,
        max_repeats: int,
        progress_batch: int,
        tracer: Tracer | None,
        metrics: Metrics | None,
        task_metrics: TaskMetrics | None,
        audit: AuditLog | None,
    ) -> None:
        self.llm = llm
        self.runtime = runtime
        self.persist = persist
        self.dispatcher = dispatcher
        self.prompts = prompts
        self.retry = retry
        self.max_subtasks = max_subtasks
        self.max_stalls = max_stalls
        self.max_replans = max_replans
        self.max_repeats = max_repeats
        self.progress_batch = progress_batch
        self.tracer = tracer
        self.metrics = metrics
        self.task_metrics = task_metrics
        self.audit = audit
        #: capability -> what it is for (the plan prompt lists them)
        self.descriptions: dict[str, str] = {}
        #: worker types hosted by this runtime (the others are reached over the mesh)
        self.local_types: set[str] = set()
