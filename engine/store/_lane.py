"""A store and the event loop it lives on, reachable from async and sync code.

``EngineSaver`` is called by LangGraph both ways: its async methods on the application's
loop, its sync ones from LangGraph's executor threads. A :class:`Lane` opens its store on
the first loop that uses it and keeps it there:

- async calls on that loop run directly; from another loop they hop onto it;
- a lane first used synchronously gets a private event loop that each sync call runs in
  the calling thread, one call at a time (no thread hop); sync calls into a lane whose loop
  is an application's running loop hop onto it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import engine.store
from engine.errors import StoreClosed
from engine.store.base import Store

__all__ = ["Lane"]

T = TypeVar("T")


def _run_here(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a private loop in this thread.

    PERF: a SQLite operation completes without suspending, so the coroutine is first
    stepped directly with ``loop`` set as the running loop: ``run_until_complete`` costs
    ~0.1 ms per call (a task and a loop iteration), as much as the operation itself
    (benches/bench_store.py, the sync graph). When the coroutine does suspend (PostgreSQL,
    a busy queue), the loop finishes it.
    """
    asyncio.events._set_running_loop(loop)
    try:
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            result: T = stop.value
            return result
    finally:
        asyncio.events._set_running_loop(None)
    return loop.run_until_complete(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    """Step a coroutine that suspended on ``waiting`` (a future, or None) to its end."""
    while True:
        error: BaseException | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:  # what a task does with a yielded future: take over its blocking flag
                waiting._asyncio_future_blocking = False
                await waiting
        except BaseException as exc:  # handed to the coroutine, as a task would
            error = exc
        try:
            waiting = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result


class Lane:
    """One store (opened from ``url``, or given open) on one event loop."""

    def __init__(self, url: str | None, store: Store | None, options: dict[str, Any]) -> None:
        self._url = url
        self._store = store
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Future[Store] | None = None
        self._private = False  # the loop is the lane's own (first use was synchronous)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one synchronous call at a time on that loop

    async def _bound(self) -> Store:
        """The store, opened on the running loop (the loop this lane is bound to)."""
        if self._store is not None:
            return self._store
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_future()
            try:
                assert self._url is not None
                store = await engine.store.open(self._url, **self._options)
            except BaseException as exc:
                opening, self._opening = self._opening, None
                opening.set_exception(exc)
                opening.exception()  # raised here; calls waiting on it get it too, unlogged
                raise
            self._store = store
            self._opening.set_result(store)
            return store
        return await asyncio.shield(self._opening)

    async def _on_home(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        return await fn(await self._bound())

    async def run(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        """``fn(store)`` from async code."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is None:
                self._loop = loop
        if self._loop is loop:
            return await fn(await self._bound())
        home = self._loop
        if not home.is_running():
            raise StoreClosed("EngineSaver: the event loop its store lives on has stopped")
        inner = asyncio.run_coroutine_threadsafe(self._on_home(fn), home)
        return await asyncio.wrap_future(inner)

    def sync(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        """``fn(store)`` from sync code."""
        with self._lock:
            if self._loop is None:  # first used synchronously: a private loop, run per call
                self._loop = asyncio.new_event_loop()
                self._private = True
        home = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is home:
            raise RuntimeError(
                "EngineSaver: called synchronously inside the event loop that owns its store; "
                "use the async API there (ainvoke/astream, aget_tuple...)"
            )
        if self._private:
            if running is not None:
                raise RuntimeError(
                    "EngineSaver: a saver first used synchronously cannot be called "
                    "synchronously from inside another event loop; use one saver per loop"
                )
            with self._sync_lock:
                return _run_here(home, self._on_home(fn))
        if not home.is_running():
            raise StoreClosed("EngineSaver: the event loop its store lives on has stopped")
        return asyncio.run_coroutine_threadsafe(self._on_home(fn), home).result()

    async def aclose(self) -> None:
        """Commit and close the store if the lane opened it (a given one is its owner's)."""
        if self._loop is None:
            return
        if self._private:
            self.close()  # its private loop is not running: close synchronously
            return
        store, self._store = (self._store, None) if self._url is not None else (None, None)
        if store is not None:
            if self._loop is asyncio.get_running_loop():
                await store.close()
            elif self._loop.is_running():
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(store.close(), self._loop)
                )
        self._loop = None
        self._opening = None

    def close(self) -> None:
        """``aclose()`` for sync code."""
        loop = self._loop
        if loop is None:
            return
        store, self._store = (self._store, None) if self._url is not None else (None, None)
        if self._private:
            with self._sync_lock:
                if store is not None:
                    loop.run_until_complete(store.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        elif store is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(store.close(), loop).result()
        self._loop = None
        self._private = False
        self._opening = None
