"""Wait for an event with a generous upper bound, never sleep-then-assert.

A fixed ``sleep(0.05)`` followed by an assertion guesses how long the machine takes; on a
loaded CI runner the guess is wrong now and then and the test fails at random. Poll the
condition instead and give up only after a bound far above any honest delay:

    wait_until(lambda: broker.queued == 1)             # threads, processes, sockets
    await until(lambda: rt.stats()["queued"] == 3)     # inside an event loop

Both return the predicate's first truthy value and raise :class:`AssertionError` naming
the condition when the bound passes. The bound is a deadlock guard, not a measurement:
nothing about the test's verdict depends on how fast the condition came true.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DEFAULT_TIMEOUT", "until", "wait_until"]

T = TypeVar("T")

#: Seconds before a wait gives up: far above any honest delay on a busy 2-core runner.
DEFAULT_TIMEOUT = 30.0


def _describe(predicate: Callable[[], object], what: str | None) -> str:
    if what:
        return what
    try:  # the line holding the lambda says more than "<lambda>"
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.005,
    what: str | None = None,
) -> T:
    """Poll ``predicate`` (blocking this thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {_describe(predicate, what)}")
        time.sleep(interval)


async def until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.002,
    what: str | None = None,
) -> T:
    """Poll ``predicate`` between event-loop turns until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {_describe(predicate, what)}")
        await asyncio.sleep(interval)
