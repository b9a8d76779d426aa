"""The same agent class, the same tests: in process on a Runtime, and on a node process.

``where`` runs every test twice: ``in_process`` registers :class:`parity_agents.Parity` on
a local :class:`engine.Runtime`; ``node`` starts a real broker and ``engine node --agents
parity_agents:Parity`` (separate processes, real ZeroMQ sockets) and talks to it from a
``Runtime(mesh=...)``. Either way the test holds a runtime and sends to
``AgentId("parity", key)``: handlers, hooks, middleware, deadlines, cancellation, errors
and topic subscriptions must look the same from there. What the agent saw is read back
from the process it ran in (``Probe``). No wall-clock assertion: waits are bounded polls,
deadlines only trigger a cancellation whose effect is then waited for.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mesh_procs import broker, free_port, node, processes
from parity_agents import Answer, Ask, Fail, Hold, Note, Parity, Probe, Report, Unhandled

from engine import Runtime
from engine.errors import DeadlineExceeded, RemoteError, UndeliverableError
from engine.messages import AgentId, TopicId
from tests._wait import DEFAULT_TIMEOUT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mesh() -> Iterator[str]:
    """A broker and a node hosting Parity, each its own process."""
    with processes() as procs:
        port = free_port()
        procs.append(broker(port))
        ep = f"tcp://127.0.0.1:{port}"
        procs.append(node(ep, "parity-node", agents="parity_agents:Parity"))
        yield ep


@pytest.fixture(params=["in_process", "node"])
def where(request: pytest.FixtureRequest) -> str | None:
    """None: the agent runs in this process; else the broker endpoint of its node."""
    if request.param == "node":
        endpoint: str = request.getfixturevalue("mesh")
        return endpoint
    return None


@asynccontextmanager
async def runtime(endpoint: str | None) -> AsyncIterator[Runtime]:
    if endpoint is None:
        rt = Runtime()
        rt.register("parity", Parity)
        for pattern in Parity.topics:  # what a node does with a class's topics
            rt.subscribe("parity", topic=pattern)
    else:
        rt = Runtime(mesh=endpoint)
    async with rt:
        yield rt


def run(endpoint: str | None, body: Callable[[Runtime], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with runtime(endpoint) as rt:
            report = await probe(rt, reset=True)
            assert (report.pid == os.getpid()) is (endpoint is None)  # where it really runs
            await body(rt)

    asyncio.run(asyncio.wait_for(main(), 90))


async def probe(rt: Runtime, reset: bool = False) -> Report:
    report: Report = await rt.send(Probe(reset), to=AgentId("parity", "probe"), timeout=30)
    return report


async def eventually(rt: Runtime, check: Callable[[Report], bool], what: str) -> Report:
    """Probe until ``check`` holds (a deadlock guard, not a measurement)."""
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while True:
        report = await probe(rt)
        if check(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {what}; last report {report}")
        await asyncio.sleep(0.01)


def test_handlers_run_inside_hooks_and_middleware(where: str | None) -> None:
    async def body(rt: Runtime) -> None:
        assert await rt.send(Ask(1), to=AgentId("parity", "a")) == Answer(2, ["mw", "handler"])
        again = await rt.send(Ask(41), to=AgentId("parity", "a"), timeout=30)
        assert again == Answer(42, ["mw", "handler"])
        report = await probe(rt)
        assert [t for t in report.handled if t != "Probe"] == ["Ask", "Ask"]
        assert report.starts >= 1 and not report.errors

    run(where, body)


def test_errors_arrive_with_their_type(where: str | None) -> None:
    async def body(rt: Runtime) -> None:
        with pytest.raises(RemoteError) as raised:
            await rt.send(Fail("boom"), to=AgentId("parity", "e"))
        assert (raised.value.type_name, raised.value.message) == ("ValueError", "boom")
        with pytest.raises(UndeliverableError, match="no handler for Unhandled"):
            await rt.send(Unhandled(1), to=AgentId("parity", "e"))
        report = await probe(rt)
        assert report.errors == ["ValueError: boom"]  # the on_error hook saw the handler's
        assert await rt.send(Ask(0), to=AgentId("parity", "e")) == Answer(1, ["mw", "handler"])

    run(where, body)


def test_a_deadline_raises_and_cancels_the_handler(where: str | None) -> None:
    async def body(rt: Runtime) -> None:
        with pytest.raises(DeadlineExceeded):
            await rt.send(Hold("late"), to=AgentId("parity", "d"), timeout=0.5)
        report = await eventually(rt, lambda r: "late" in r.cancelled, "handler cancelled")
        assert report.held == ["late"]

    run(where, body)


def test_cancelling_the_sender_cancels_the_handler(where: str | None) -> None:
    async def body(rt: Runtime) -> None:
        task = asyncio.ensure_future(rt.send(Hold("c"), to=AgentId("parity", "c")))
        await eventually(rt, lambda r: "c" in r.held, "handler started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(rt, lambda r: r.cancelled == ["c"], "handler cancelled")
        assert await rt.send(Ask(7), to=AgentId("parity", "c")) == Answer(8, ["mw", "handler"])

    run(where, body)


def test_published_messages_reach_the_subscribed_agent(where: str | None) -> None:
    async def body(rt: Runtime) -> None:
        for i in range(3):
            await rt.publish(Note(f"n{i}"), topic=TopicId("parity.news", "src"))
        report = await eventually(rt, lambda r: len(r.notes) == 3, "three notes handled")
        assert report.notes == ["src:n0", "src:n1", "src:n2"]  # in order, one instance

    run(where, body)
