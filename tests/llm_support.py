"""Helpers of the LLM tests: a fake clock with its sleep, and the fault-test repetition."""

from __future__ import annotations

import asyncio

import pytest

#: Fault-injection tests run once by default and 20 times under ``pytest -m slow``.
REPEAT = pytest.mark.parametrize(
    "rep", [0, *(pytest.param(i, marks=pytest.mark.slow) for i in range(1, 21))]
)


class FakeClock:
    """``clock()`` reads the fake time; ``await sleep(d)`` records ``d`` and moves time on."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
