"""A query stopped before its root task ran a single step still finishes.

``terminate()`` (or ``Runtime.stop()``) right after ``start_query`` cancels the root task
before its coroutine starts: Python then never enters its ``try``/``finally``. The query
must still reach a terminal state and ``wait()`` must return (by raising), never hang.
"""

from __future__ import annotations

import asyncio

import pytest

from engine import AgentId, QueryCancelled, QueryState, Runtime
from tests.agents_for_tests import Echo, Ping, uv

S = QueryState
#: A deadlock guard, not a measurement: a correct query finishes within one loop turn.
BOUND = 30.0


async def _never_called(q: object) -> None:  # pragma: no cover - must not run
    raise AssertionError("the body of a query terminated before its first step ran")


@uv
async def test_terminate_before_the_first_step_ends_the_query() -> None:
    rt = Runtime()
    q = rt.start_query(_never_called)
    q.terminate()
    with pytest.raises(QueryCancelled, match="terminated"):
        await asyncio.wait_for(q.wait(), BOUND)
    assert q.state is S.TERMINATED
    assert rt.queries == []
    await rt.stop()


@uv
async def test_cancel_then_terminate_before_the_first_step_ends_the_query() -> None:
    rt = Runtime()
    q = rt.start_query(_never_called)
    q.cancel()
    q.terminate()
    with pytest.raises(QueryCancelled):
        await asyncio.wait_for(q.wait(), BOUND)
    assert q.state is S.TERMINATED
    await rt.stop()


@uv
async def test_stop_right_after_start_query_ends_the_query() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    q = rt.start_query(Ping(1), to=AgentId("echo"))
    await rt.stop()  # awaited directly: the query's task must not get a turn first
    with pytest.raises(QueryCancelled, match="terminated"):
        await asyncio.wait_for(q.wait(), BOUND)
    assert q.state is S.TERMINATED


@uv
async def test_a_query_terminated_later_still_runs_its_first_step() -> None:
    """The fix must not skip a body that already started."""
    rt = Runtime()
    started = asyncio.Event()

    async def body(q: object) -> None:
        started.set()
        await asyncio.Event().wait()

    q = rt.start_query(body)
    await asyncio.wait_for(started.wait(), BOUND)
    q.terminate()
    with pytest.raises(QueryCancelled, match="terminated"):
        await asyncio.wait_for(q.wait(), BOUND)
    await rt.stop()
