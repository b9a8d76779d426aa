"""Request deadlines on one loop timer.

``asyncio.timeout`` arms and cancels a loop timer per call, which costs several
microseconds — ten times a whole in-process round trip. :class:`Deadlines` keeps every
pending deadline in one heap and arms a single timer for the earliest; a finished request
just drops its task reference (lazy deletion) and the heap is compacted when dead entries
dominate, so memory stays proportional to requests in flight.

When a deadline passes, its task is cancelled and the entry marked expired; the waiting
code turns that ``CancelledError`` into :class:`~engine.errors.DeadlineExceeded` and
calls ``task.uncancel()``, as ``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

__all__ = ["Deadlines"]

T = TypeVar("T")

#: Compact the heap when it holds more than this many entries and mostly dead ones.
_COMPACT_MIN: Final = 64


class Deadlines:
    """The deadlines of one runtime (one event loop).

    An entry is ``[when, seq, task, expired]``: a list, so the heap compares entries in C
    (a class with ``__lt__`` made ``send(timeout=...)`` 30% slower); ``task`` becomes
    None when the request finishes, ``expired`` True when its deadline fired.
    """

    __slots__ = ("_armed", "_handle", "_heap", "_live", "_loop", "_seq")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._live = 0
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return self._live

    def add(self, when: float, task: asyncio.Task[Any]) -> list[Any]:
        """Cancel ``task`` at loop time ``when`` unless :meth:`done` comes first."""
        entry: list[Any] = [when, next(self._seq), task, False]
        heap = self._heap
        if len(heap) > _COMPACT_MIN and len(heap) > 4 * self._live:
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
        heapq.heappush(heap, entry)
        self._live += 1
        if when < self._armed:
            self._arm(when)
        return entry

    async def within(
        self, when: float, work: Awaitable[T], expired: Callable[[], BaseException]
    ) -> T:
        """Await ``work`` in this task, cancelled at loop time ``when``; then raise
        ``expired()`` instead of the cancellation (as ``asyncio.timeout`` does)."""
        task = asyncio.current_task()
        assert task is not None
        entry = self.add(when, task)
        try:
            result = await work
        except asyncio.CancelledError:
            if entry[3]:  # expired
                task.uncancel()
                raise expired() from None
            raise
        else:
            if entry[3]:  # expired, but the work swallowed its cancellation
                task.uncancel()
            return result
        finally:
            self.done(entry)

    def done(self, entry: list[Any]) -> None:
        """The request finished (or gave up): its deadline no longer applies."""
        if entry[2] is not None:
            entry[2] = None
            self._live -= 1

    def _arm(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or the runtime moved to a new event loop
            if self._loop is not None and self._handle is not None and not self._loop.is_closed():
                self._handle.cancel()
            self._handle = None
            self._loop = loop
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(when, self._fire)
        self._armed = when

    def _fire(self) -> None:
        self._handle = None
        self._armed = float("inf")
        assert self._loop is not None
        now = self._loop.time()
        heap = self._heap
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)
            task = entry[2]
            if task is not None:
                entry[2] = None
                entry[3] = True  # expired
                self._live -= 1
                task.cancel()
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
        self._live = 0
        self._armed = float("inf")
