"""A fake clock for code that reads ``time.time()`` / ``time.monotonic()`` through its module.

Its ``sleep`` advances the clock instead of waiting.

TTLs, expiry and deadlines are tested by moving time, not by sleeping past it: a sleep
makes the test slow, and the "still valid" half of the test fails whenever a loaded
machine stalls longer than the TTL. The ``fake_clock`` fixture (``tests/conftest.py``)
swaps the ``time`` module seen by the named engine modules for a :class:`FakeClock`:

    def test_expiry(fake_clock):
        clock = fake_clock(engine.tools)
        ...                      # cached now
        clock.advance(61)
        ...                      # expired, deterministically
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["FakeClock"]


class FakeClock:
    """Stands in for the ``time`` module: the clocks read :attr:`now`, the rest is real."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = float(now)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self.now += seconds

    def time(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    monotonic = perf_counter = time
    monotonic_ns = perf_counter_ns = time_ns

    def sleep(self, seconds: float) -> None:
        """A sleep on a fake clock moves the clock and returns at once."""
        self.advance(seconds)

    def __getattr__(self, name: str) -> Any:  # strftime, gmtime, ...: the real ones
        return getattr(time, name)
