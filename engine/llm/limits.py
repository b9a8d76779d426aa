"""Per-provider limits: concurrent calls, requests per minute, tokens per minute.

Rate limits queue rather than fail: a call waits (in arrival order) until both buckets hold
enough, then takes one request and its estimated tokens; after the call the token bucket is
corrected by the real usage. The clock and the sleep function are injectable, so tests
drive time.

The native scheduler's token buckets (``Scheduler.set_pool(rate=...)``) were considered:
they take exactly one token per dispatch and live in a dispatch queue that something must
poll, while tokens-per-minute needs weighted takes (a call's token count) and a call here
must simply *wait* for its turn; so these buckets are small and Python (a few float
operations per call, measured inside the router overhead in ``benches/bench_llm.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

__all__ = ["Limits", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_MIN_WAIT: Final = 0.001


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per ``period`` seconds; may go into debt."""

    __slots__ = ("_clock", "capacity", "last", "level", "rate")

    def __init__(self, capacity: float, period: float, clock: Clock) -> None:
        if not capacity > 0:
            raise ValueError(f"rate limit must be positive, got {capacity!r}")
        self.capacity = float(capacity)
        self.rate = self.capacity / period
        self.level = self.capacity
        self._clock = clock
        self.last = clock()

    def _refill(self) -> None:
        t = self._clock()
        if t > self.last:
            self.level = min(self.capacity, self.level + (t - self.last) * self.rate)
        self.last = t

    def wait_for(self, n: float) -> float:
        """Seconds until ``n`` tokens are there (0.0: now)."""
        self._refill()
        n = min(n, self.capacity)  # a call bigger than the bucket waits for a full bucket
        return 0.0 if self.level >= n else (n - self.level) / self.rate

    def take(self, n: float) -> None:
        self.level -= n

    def give(self, n: float) -> None:
        self.level = min(self.capacity, self.level + n)


class Limits:
    """A provider's ``concurrency`` limit and ``rpm``/``tpm`` rate limits (None: none)."""

    __slots__ = ("_gate", "_queue", "_sleep", "concurrency", "requests", "tokens", "unlimited")

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be a positive int or None, got {concurrency!r}")
        self.concurrency = concurrency
        self._gate = asyncio.Semaphore(concurrency) if concurrency else None
        self.requests = TokenBucket(rpm, 60.0, clock) if rpm is not None else None
        self.tokens = TokenBucket(tpm, 60.0, clock) if tpm is not None else None
        #: No concurrency, request or token limit: a call never waits here.
        self.unlimited = self._gate is None and self.requests is None and self.tokens is None
        self._queue = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        self._sleep = sleep

    async def _rate(self, tokens: int) -> None:
        if self.requests is None and self.tokens is None:
            return
        if not self._queue.locked() and self._ready(tokens) == 0.0:
            self._take(tokens)
            return
        async with self._queue:
            while (wait := self._ready(tokens)) > 0.0:
                await self._sleep(max(wait, _MIN_WAIT))
            self._take(tokens)

    def _ready(self, tokens: int) -> float:
        w = 0.0
        if self.requests is not None:
            w = self.requests.wait_for(1)
        if self.tokens is not None:
            w = max(w, self.tokens.wait_for(tokens))
        return w

    def _take(self, tokens: int) -> None:
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)

    def settle(self, estimated: int, used: int) -> None:
        """Correct the token bucket once the real usage of a call is known."""
        if self.tokens is not None and used != estimated:
            if used < estimated:
                self.tokens.give(estimated - used)
            else:
                self.tokens.take(used - estimated)

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Wait for the rate limits, then hold one concurrency slot for the block."""
        await self._rate(tokens)
        if self._gate is None:
            yield
            return
        async with self._gate:
            yield
