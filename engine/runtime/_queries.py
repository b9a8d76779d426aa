"""Query control: a conversation or task tree with a state machine.

A query starts from one request (``rt.start_query(msg, to=...)``) or one coroutine
function (``rt.start_query(fn)``, called with the :class:`Query`). Every handler that runs
on its behalf, directly or through nested ``send``/``publish``, is a *step*: before each
step the runtime checks the query, so ``pause()`` holds the tree at its next step,
``cancel()`` ends it gracefully there (:class:`~engine.errors.QueryCancelled`), and
``terminate()`` cancels whatever runs right now.

    INIT -> RUNNING <-> PAUSED;  INIT | RUNNING | PAUSED -> CANCELLED | TERMINATED;
    RUNNING -> COMPLETED | FAILED
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Awaitable, Callable
from typing import Any, Final

from engine.errors import InvalidTransition, QueryCancelled

__all__ = ["Query", "QueryState", "current_query"]


class QueryState(enum.Enum):
    INIT = "init"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


S = QueryState
_TERMINAL: Final = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TERMINATED})
_ALLOWED: Final[dict[QueryState, frozenset[QueryState]]] = {
    S.INIT: frozenset({S.RUNNING, S.CANCELLED, S.TERMINATED}),
    S.RUNNING: frozenset({S.PAUSED, S.COMPLETED, S.FAILED, S.CANCELLED, S.TERMINATED}),
    S.PAUSED: frozenset({S.RUNNING, S.CANCELLED, S.TERMINATED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TERMINATED: frozenset(),
}

#: The query the current task works for (set in the query's root task and per step).
current_query: contextvars.ContextVar[Query | None] = contextvars.ContextVar(
    "engine_query", default=None
)

Body = Callable[["Query"], Awaitable[Any]]


class Query:
    """Handle of a running query: observe ``state``/``steps``, control it, await it."""

    __slots__ = (
        "_body",
        "_cancel_requested",
        "_done",
        "_error",
        "_listeners",
        "_result",
        "_resumed",
        "_task",
        "blocked",
        "name",
        "state",
        "steps",
    )

    def __init__(self, body: Body, name: str) -> None:
        self._body = body
        self.name = name
        self.state = S.INIT
        self.steps = 0
        #: True while paused or cancel-requested: the runtime then calls checkpoint().
        self.blocked = False
        self._cancel_requested = False
        self._resumed: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._done: asyncio.Future[None] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._listeners: list[Callable[[Query, QueryState], None]] = []

    def __repr__(self) -> str:
        return f"<Query {self.name} {self.state.name} steps={self.steps}>"

    # -- observation ---------------------------------------------------------------
    def add_listener(self, fn: Callable[[Query, QueryState], None]) -> None:
        """Call ``fn(query, new_state)`` on every state change."""
        self._listeners.append(fn)

    def _set(self, state: QueryState) -> None:
        if state not in _ALLOWED[self.state]:
            raise InvalidTransition(
                f"query {self.name!r}: cannot go from {self.state.name} to {state.name}"
            )
        self.state = state
        for fn in self._listeners:
            fn(self, state)

    # -- control -------------------------------------------------------------------
    def start(self) -> Query:
        """INIT -> RUNNING: schedule the query's root task."""
        if self.state is not S.INIT:
            raise InvalidTransition(
                f"query {self.name!r}: start() needs state INIT, not {self.state.name}"
            )
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._set(S.RUNNING)
        self._task = loop.create_task(self._run(), context=contextvars.copy_context())
        self._task.add_done_callback(self._task_done)
        return self

    def pause(self) -> None:
        """RUNNING -> PAUSED: the tree stops at its next step until :meth:`resume`."""
        self._set(S.PAUSED)
        self._resumed = asyncio.Event()
        self.blocked = True

    def resume(self) -> None:
        """PAUSED -> RUNNING."""
        if self.state is not S.PAUSED:
            raise InvalidTransition(
                f"query {self.name!r}: cannot go from {self.state.name} to RUNNING (not paused)"
            )
        self._set(S.RUNNING)
        self.blocked = self._cancel_requested
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def cancel(self) -> None:
        """Graceful: the query ends as CANCELLED at its next step (INIT ends at once)."""
        if self.state in _TERMINAL:
            raise InvalidTransition(
                f"query {self.name!r}: cannot go from {self.state.name} to CANCELLED"
            )
        if self.state is S.INIT:
            self._set(S.CANCELLED)
            return
        self._cancel_requested = True
        self.blocked = True
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def terminate(self) -> None:
        """Immediate: cancel the running step (and every request it waits on) now."""
        if self.state in _TERMINAL:
            raise InvalidTransition(
                f"query {self.name!r}: cannot go from {self.state.name} to TERMINATED"
            )
        self._set(S.TERMINATED)
        self.blocked = True
        if self._task is not None:
            self._task.cancel()
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    async def checkpoint(self) -> None:
        """Step boundary: wait while paused; raise QueryCancelled once cancelled."""
        while True:
            if self._cancel_requested or self.state in _TERMINAL:
                raise QueryCancelled(
                    f"query {self.name!r} was {self.state.name.lower()}"
                    if self.state in _TERMINAL
                    else f"query {self.name!r} was cancelled"
                )
            if self.state is not S.PAUSED or self._resumed is None:
                return
            await self._resumed.wait()

    # -- result --------------------------------------------------------------------
    async def wait(self) -> Any:
        """Wait until the query has finished; return its result or raise its failure."""
        if self._done is None:
            if self.state in _TERMINAL:
                return self.result()
            raise InvalidTransition(f"query {self.name!r} was never started")
        await asyncio.shield(self._done)
        return self.result()

    def result(self) -> Any:
        """The result of a COMPLETED query; raises for any other state."""
        if self.state is S.COMPLETED:
            return self._result
        if self.state is S.FAILED:
            assert self._error is not None
            raise self._error
        if self.state in (S.CANCELLED, S.TERMINATED):
            raise QueryCancelled(f"query {self.name!r} was {self.state.name.lower()}")
        raise InvalidTransition(f"query {self.name!r} has no result yet ({self.state.name})")

    async def _run(self) -> None:
        current_query.set(self)
        try:
            result = await self._body(self)
        except QueryCancelled:
            if self.state not in _TERMINAL:
                self._set(S.CANCELLED)
        except asyncio.CancelledError:
            if self.state not in _TERMINAL:
                self._set(S.TERMINATED)
        except Exception as exc:
            self._error = exc
            if self.state not in _TERMINAL:
                self._set(S.CANCELLED if self._cancel_requested else S.FAILED)
        else:
            self._result = result
            if self.state is S.PAUSED:
                self._set(S.RUNNING)
            if self.state not in _TERMINAL:
                self._set(S.COMPLETED)
        finally:
            self._finish()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        # A task cancelled before its first step (terminate() or Runtime.stop() right
        # after start()) never runs _run's body, so its ``finally`` never runs either.
        if self._done is not None and not self._done.done():
            if self.state not in _TERMINAL:
                self._set(S.TERMINATED)
            self._finish()

    def _finish(self) -> None:
        self._body = _finished  # drop references held by the closure
        self._task = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


async def _finished(q: Query) -> None:  # pragma: no cover - never called
    return None
