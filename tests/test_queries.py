"""Query control: the state machine, step counting, pause/resume, cancel, terminate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine import (
    AgentId,
    InvalidTransition,
    Query,
    QueryCancelled,
    QueryState,
    RemoteError,
    Runtime,
    UndeliverableError,
)
from tests._wait import until
from tests.agents_for_tests import Boom, Canceller, Echo, Ping, Pong, Slow, Stepper, uv

S = QueryState


def _runtime() -> Runtime:
    rt = Runtime()
    rt.register("stepper", Stepper)
    rt.register("echo", Echo)
    rt.register("c", Canceller)
    return rt


@uv
async def test_completed_query_counts_steps_and_reports_states() -> None:
    rt = _runtime()
    states: list[QueryState] = []
    q = rt.start_query(Ping(4), to=AgentId("stepper", "4"), name="countdown", start=False)
    q.add_listener(lambda query, state: states.append(state))
    assert q.state is S.INIT and q.steps == 0
    q.start()
    assert q.state is S.RUNNING
    assert await q.wait() == 4
    assert q.state is S.COMPLETED and q.result() == 4
    assert q.steps == 5  # stepper/4 .. stepper/0
    assert states == [S.RUNNING, S.COMPLETED]
    assert "countdown" in repr(q)
    await rt.stop()


@uv
async def test_failed_query_keeps_the_error() -> None:
    rt = _runtime()
    q = rt.start_query(Boom("bad plan"), to=AgentId("echo"))
    with pytest.raises(RemoteError, match="ValueError: bad plan"):
        await q.wait()
    assert q.state is S.FAILED
    with pytest.raises(RemoteError):
        q.result()
    await rt.stop()


@uv
async def test_pause_holds_the_tree_between_steps_and_resume_continues() -> None:
    rt = _runtime()
    Stepper.handed_off.clear()
    q = rt.start_query(Ping(20), to=AgentId("stepper", "20"))
    await until(lambda: q.steps >= 3)
    q.pause()
    assert q.state is S.PAUSED
    # the step in flight hands off to the next hop, which waits at the step boundary
    await until(lambda: len(Stepper.handed_off) == q.steps)
    held = q.steps
    await asyncio.sleep(0.05)  # a window for a wrong step to run in, not a wait
    assert q.steps == held, "no step may run while paused"
    assert held < 21
    q.resume()
    assert q.state is S.RUNNING
    assert await q.wait() == 20
    assert q.steps == 21
    await rt.stop()


@uv
async def test_cancel_is_graceful_at_the_next_step() -> None:
    rt = _runtime()
    q = rt.start_query(Ping(50), to=AgentId("stepper", "50"))
    await until(lambda: q.steps >= 3)
    q.cancel()
    with pytest.raises(QueryCancelled):
        await q.wait()
    assert q.state is S.CANCELLED
    done = q.steps
    assert 0 < done < 51
    await asyncio.sleep(0.02)  # a window for a wrong step to run in, not a wait
    assert q.steps == done
    # cancelling a paused query ends it too
    q2 = rt.start_query(Ping(50), to=AgentId("stepper", "50"))
    await until(lambda: q2.steps >= 1)
    q2.pause()
    q2.cancel()
    with pytest.raises(QueryCancelled):
        await q2.wait()
    assert q2.state is S.CANCELLED
    await rt.stop()


@uv
async def test_terminate_is_immediate_and_cancels_the_handler() -> None:
    rt = _runtime()
    Canceller.cancelled.clear()
    q = rt.start_query(Slow(30), to=AgentId("c"))
    await until(lambda: q.steps == 1)  # the handler is running
    q.terminate()
    assert q.state is S.TERMINATED
    with pytest.raises(QueryCancelled, match="terminated"):
        await q.wait()
    assert Canceller.cancelled == [AgentId("c")]
    assert await rt.send(Ping(1), to=AgentId("c")) == Pong(1)
    await rt.stop()


@uv
async def test_function_queries_and_checkpoints() -> None:
    rt = _runtime()
    log: list[int] = []

    async def plan(q: Query) -> int:
        total = 0
        for i in range(5):
            await q.checkpoint()
            reply = await rt.send(Ping(i), to=AgentId("echo", "plan"))
            total += reply.n
            log.append(i)
        return total

    q = rt.start_query(plan)
    assert await q.wait() == 15
    assert q.steps == 5 and log == [0, 1, 2, 3, 4]

    gate = asyncio.Event()

    async def waits(q: Query) -> None:
        await gate.wait()
        await q.checkpoint()
        log.append(99)

    q2 = rt.start_query(waits)
    await asyncio.sleep(0)
    q2.cancel()
    gate.set()
    with pytest.raises(QueryCancelled):
        await q2.wait()
    assert 99 not in log
    await rt.stop()


@uv
async def test_invalid_transitions() -> None:
    rt = _runtime()
    q = rt.start_query(Ping(0), to=AgentId("echo"), start=False)
    with pytest.raises(InvalidTransition, match="INIT to PAUSED"):
        q.pause()
    with pytest.raises(InvalidTransition, match=r"INIT to RUNNING \(not paused\)"):
        q.resume()  # resume is PAUSED -> RUNNING only
    with pytest.raises(InvalidTransition, match="no result yet"):
        q.result()
    with pytest.raises(InvalidTransition, match="never started"):
        await q.wait()
    q.cancel()  # INIT -> CANCELLED at once
    assert q.state is S.CANCELLED
    for action in (q.pause, q.resume, q.cancel, q.terminate, q.start):
        with pytest.raises(InvalidTransition):
            action()
    running = rt.start_query(Slow(0.05), to=AgentId("echo", "r"))
    with pytest.raises(InvalidTransition, match="RUNNING to RUNNING"):
        running.resume()
    running.pause()
    with pytest.raises(InvalidTransition, match="PAUSED to PAUSED"):
        running.pause()
    running.resume()
    assert await running.wait() == "slept"
    with pytest.raises(InvalidTransition, match="COMPLETED to TERMINATED"):
        running.terminate()
    await rt.stop()


@uv
async def test_start_query_bad_input() -> None:
    rt = _runtime()
    with pytest.raises(TypeError, match="needs to= for a message"):
        rt.start_query(Ping(1))
    with pytest.raises(TypeError, match="must be an AgentId"):
        rt.start_query(Ping(1), to="echo")  # type: ignore[arg-type]
    await rt.stop()
    with pytest.raises(UndeliverableError, match="stopped"):
        rt.start_query(Ping(1), to=AgentId("echo"))


@uv
async def test_query_steps_count_published_work() -> None:
    rt = _runtime()
    rt.subscribe("echo", topic="fanout")
    seen: list[Any] = []
    rt.hooks.add("post_handler", lambda c, m, r, s: seen.append(c.query))

    async def body(q: Query) -> None:
        await rt.publish(Ping(1), topic="fanout")
        await rt.idle()

    q = rt.start_query(body)
    await q.wait()
    assert q.steps == 1 and seen == [q]
    await rt.stop()


@uv
async def test_runtime_lists_unfinished_queries_and_stop_terminates_them() -> None:
    rt = _runtime()
    done = rt.start_query(Ping(0), to=AgentId("echo"), name="quick")
    slow = rt.start_query(Slow(10), to=AgentId("c", "s"), name="slow")
    idle = rt.start_query(Ping(0), to=AgentId("echo"), name="later", start=False)
    assert {q.name for q in rt.queries} == {"quick", "slow", "later"}
    assert await done.wait() == Pong(1)
    assert {q.name for q in rt.queries} == {"slow", "later"}
    await rt.stop()
    assert slow.state is S.TERMINATED and idle.state is S.TERMINATED
    assert rt.queries == []
