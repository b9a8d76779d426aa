"""The job handle users hold: status, result, the event stream, and query control.

``job = await orch.submit(task)`` returns a :class:`Job`. ``await job.result()`` waits for
its :class:`JobResult`; ``async for event in job.events()`` streams :class:`JobEvent` s
(``planned``, ``subtask.started``, ``subtask.finished``, ``progress``, ``replanned``,
``tokens``, ``done``) until the job ends. ``cancel``/``pause``/``resume`` go through the
job's runtime :class:`~engine.runtime.Query`.

Events never hold a job up: each subscriber has a bounded queue (the oldest events are
dropped past :data:`EVENT_QUEUE`, counted in ``dropped``), and a new subscriber first gets
the last :data:`EVENT_HISTORY` events, so subscribing right after ``submit`` misses nothing.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from engine.errors import InvalidTransition

if TYPE_CHECKING:
    from engine.runtime import Query

__all__ = [
    "EVENT_HISTORY",
    "EVENT_KINDS",
    "EVENT_QUEUE",
    "Job",
    "JobEvent",
    "JobResult",
    "JobStatus",
    "SubtaskOutcome",
]

#: Events a late subscriber is replayed, and each subscriber's queue bound.
EVENT_HISTORY: Final = 1_024
EVENT_QUEUE: Final = 10_000
EVENT_KINDS: Final = (
    "planned",
    "subtask.started",
    "subtask.finished",
    "progress",
    "replanned",
    "tokens",
    "paused",
    "resumed",
    "done",
)


class JobStatus(enum.StrEnum):
    """Where a job is. ``completed``, ``failed`` and ``cancelled`` are final."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobEvent(msgspec.Struct, frozen=True, gc=False):
    """One step of a job's progress: ``kind`` (one of :data:`EVENT_KINDS`), when (UNIX
    time), the ``subtask`` it concerns (or ""), and kind-specific ``data``."""

    # gc=False: kept in every job's history and holding no cycles (``data`` is built by
    # the orchestrator from scalars), so the collector need not track it (PERF: see
    # docs/performance.md, orchestration, garbage collection)

    kind: str
    job: str
    at: float
    subtask: str = ""
    data: dict[str, Any] = {}


class SubtaskOutcome(msgspec.Struct, frozen=True):
    """How one subtask ended: ``status`` is ``completed``, ``failed`` or ``cancelled``."""

    id: str
    capability: str
    status: str
    output: str = ""
    error: str = ""
    agent: str = ""
    attempts: int = 0
    tokens: int = 0
    cost: float = 0.0


class JobResult(msgspec.Struct, frozen=True):
    """A finished job: its ``answer`` (from the ``summarize`` call), ``status``, every
    subtask's outcome, tokens and cost spent (orchestrator and workers), and ``duration``
    in seconds of this process's run of it. A failed job says why in ``reason`` and
    ``error`` (the exception class, e.g. ``"PlanError"``, ``"BudgetExceeded"``)."""

    answer: str
    status: JobStatus
    subtasks: list[SubtaskOutcome]
    tokens: int
    cost: float
    duration: float
    job: str = ""
    reason: str = ""
    error: str = ""
    replans: int = 0

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.COMPLETED


class _Subscriber:
    __slots__ = ("dropped", "queue", "wake")

    def __init__(self) -> None:
        self.queue: deque[JobEvent] = deque()
        self.wake = asyncio.Event()
        self.dropped = 0


class Job:
    """Handle of a submitted or resumed job (made by the orchestrator, not by users)."""

    __slots__ = (
        "_control",
        "_done",
        "_ended",
        "_history",
        "_result",
        "_subs",
        "id",
        "priority",
        "query",
        "status",
        "task",
        "tenant",
    )

    def __init__(
        self,
        job_id: str,
        task: str,
        *,
        tenant: str,
        priority: int,
        control: Callable[[Job, str], None],
    ) -> None:
        self.id = job_id
        self.task = task
        self.tenant = tenant
        self.priority = priority
        self.status = JobStatus.PENDING
        self.query: Query | None = None
        self._control = control
        self._done: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._result: JobResult | None = None
        self._subs: list[_Subscriber] = []
        self._history: deque[JobEvent] = deque(maxlen=EVENT_HISTORY)
        self._ended = False

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value}>"

    # -- result --------------------------------------------------------------------
    async def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job's :class:`JobResult` (any final status; see ``.ok``)."""
        if timeout is None:
            return await asyncio.shield(self._done)
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    @property
    def done(self) -> bool:
        return self._done.done()

    def _finish(self, result: JobResult) -> None:
        self._result = result
        self.status = result.status
        self.emit("done", data={"status": result.status.value, "reason": result.reason})
        self._ended = True
        for sub in self._subs:
            sub.wake.set()
        if not self._done.done():
            self._done.set_result(result)

    def _abort(self, exc: BaseException) -> None:
        """This process stopped running the job without an end (it stays resumable)."""
        self._ended = True
        for sub in self._subs:
            sub.wake.set()
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # retrieved: no "never retrieved" warning if unawaited

    # -- control -------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job: running subtasks are cancelled, the result says ``cancelled``."""
        self._check_live("cancel")
        self._control(self, "cancel")

    def pause(self) -> None:
        """Hold the job: running subtasks finish, nothing new is dispatched until resume."""
        self._check_live("pause")
        if self.status is JobStatus.PAUSED:
            raise InvalidTransition(f"job {self.id} is already paused")
        self._control(self, "pause")

    def resume(self) -> None:
        """Continue a paused job."""
        self._check_live("resume")
        if self.status is not JobStatus.PAUSED:
            raise InvalidTransition(f"job {self.id} is not paused ({self.status.value})")
        self._control(self, "resume")

    def _check_live(self, what: str) -> None:
        if self._done.done() or self.status.final:
            raise InvalidTransition(f"cannot {what} job {self.id}: it is {self.status.value}")

    # -- events --------------------------------------------------------------------
    def emit(self, kind: str, subtask: str = "", data: dict[str, Any] | None = None) -> None:
        """Record one event (kept in the history, queued to every subscriber)."""
        self.emit_at(time.time(), kind, subtask, data)

    def emit_at(
        self, at: float, kind: str, subtask: str = "", data: dict[str, Any] | None = None
    ) -> None:
        """:meth:`emit` with the event's time ``at`` (UNIX time) read by the caller."""
        if self._ended:
            return
        event = JobEvent(kind, self.id, at, subtask, data or {})
        self._history.append(event)
        for sub in self._subs:
            if len(sub.queue) >= EVENT_QUEUE:
                sub.queue.popleft()
                sub.dropped += 1
            sub.queue.append(event)
            sub.wake.set()

    def emit_each(self, at: float, kind: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """:meth:`emit_at` for each ``(subtask, data)`` of ``events``, in order (PERF: one
        call for a step's ``subtask.finished`` events, not one per subtask)."""
        if self._ended:
            return
        job = self.id
        history = self._history
        subs = self._subs
        if not subs:  # PERF: nobody listens: made and kept in C, no loop here
            history.extend(itertools.starmap(functools.partial(JobEvent, kind, job, at), events))
            return
        for subtask, data in events:
            event = JobEvent(kind, job, at, subtask, data)
            history.append(event)
            for sub in subs:
                if len(sub.queue) >= EVENT_QUEUE:
                    sub.queue.popleft()
                    sub.dropped += 1
                sub.queue.append(event)
                sub.wake.set()

    async def events(self) -> AsyncIterator[JobEvent]:
        """Stream this job's events: the recent history first, then live, up to ``done``."""
        sub = _Subscriber()
        sub.queue.extend(self._history)
        self._subs.append(sub)
        try:
            while True:
                while sub.queue:
                    event = sub.queue.popleft()
                    yield event
                    if event.kind == "done":
                        return
                if self._ended:
                    return
                sub.wake.clear()
                await sub.wake.wait()
        finally:
            self._subs.remove(sub)
