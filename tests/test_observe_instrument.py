"""Metrics attached to a real runtime, served over HTTP, read by ``engine top``."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Agent, AgentId, Context, Message, Runtime, handler
from engine.observe import Metrics
from engine.observe.instrument import ALL_TYPES, instrument_runtime, serve
from engine.observe.top import fetch
from tests._wait import until


class ObsHold(Message):
    n: int


class Slow(Agent):
    """Holds each message until the test sets ``release`` (immediately when it is None)."""

    release: asyncio.Event | None = None

    @handler
    async def on_hold(self, msg: ObsHold, ctx: object) -> ObsHold:
        if Slow.release is not None:
            await Slow.release.wait()
        return msg


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_runtime_state_exported_on_scrape() -> None:
    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        rt = Runtime()
        rt.register("slow", Slow)
        m = instrument_runtime(rt, Metrics())
        to = AgentId("slow", "a")
        Slow.release = asyncio.Event()
        calls = [asyncio.ensure_future(rt.send(ObsHold(i), to=to)) for i in range(4)]
        await until(lambda: rt.stats()["queued"] == 3)  # one running, three in its mailbox
        text = m.exposition().decode()
        Slow.release.set()
        await asyncio.gather(*calls)
        after = values(m.exposition().decode())
        await rt.stop()
        return {**values(text), ("after_active", ()): after[("engine_active_workers", ())]}

    v = asyncio.run(main())
    assert v[("engine_queue_depth", (("agent_type", ALL_TYPES),))] == 3
    assert v[("engine_active_workers", ())] == 1
    assert v[("engine_pending_tasks", ())] == 4
    assert v[("engine_workers", (("status", "busy"),))] == 1
    assert v[("after_active", ())] == 0


def test_runtime_counts_and_derived_replies() -> None:
    async def main() -> dict[str, int]:
        rt = Runtime()
        rt.register("slow", Slow)
        m = instrument_runtime(rt, Metrics(), derive_replies=True)
        to = AgentId("slow", "a")
        Slow.release = None
        for i in range(3):
            await rt.send(ObsHold(i), to=to)
        Slow.release = asyncio.Event()
        pending = asyncio.ensure_future(rt.send(ObsHold(9), to=to))
        await until(lambda: rt.stats()["busy_agents"] == 1)  # the 4th is being handled
        m.exposition()
        during = m.messages_total()
        Slow.release.set()
        await pending
        await rt.stop()
        return during

    counts = asyncio.run(main())
    assert (counts["send"], counts["reply"]) == (4, 3)  # the 4th is still in flight
    assert counts.get("error", 0) == 0


def test_runtime_message_counts_contract() -> None:
    class Counting:  # the wiring contract: a runtime may expose plain-int totals by kind
        message_counts = {"send": 7, "reply": 7}
        agent_count = 0

    m = instrument_runtime(Counting())
    assert m.messages_total() == {}
    m.exposition()
    assert m.messages_total() == {"send": 7, "reply": 7}


def test_serve_runtime_metrics_over_http() -> None:
    async def main() -> None:
        rt = Runtime()
        rt.register("slow", Slow)
        srv = serve(rt, 0)
        try:
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(srv.url + "/metrics", timeout=5).read()
            )
            assert b"engine_active_workers 0.0" in body
            assert b'engine_workers{status="idle"} 0.0' in body
            snap = await asyncio.to_thread(fetch, srv.url + "/metrics")
            assert snap.queue_depth == {ALL_TYPES: 0}
        finally:
            srv.close()
            await rt.stop()

    asyncio.run(main())


# -- broker --------------------------------------------------------------------------------


class ObsPing(Message):
    n: int


class ObsPong(Message):
    n: int


class MeshEcho(Agent):
    @handler
    async def on_ping(self, msg: ObsPing, ctx: Context) -> ObsPong:
        return ObsPong(msg.n + 1)


class Planner(Agent):
    @handler
    async def on_ping(self, msg: ObsPing, ctx: Context) -> ObsPong:
        return ObsPong(-msg.n)


def test_broker_metrics_nodes_and_top(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main
    from engine.mesh import Broker, MeshClient, Node

    broker = Broker("tcp://127.0.0.1:0", heartbeat=2.0)
    broker.start()
    srv = serve(broker, 0)
    ep = broker.endpoints[0]

    async def traffic() -> None:
        async with (
            Node(ep, {"echo": MeshEcho}, name="n1", heartbeat=2.0) as n1,
            Node(ep, {"echo": MeshEcho, "planner": Planner}, name="n2", heartbeat=2.0),
            MeshClient(ep, heartbeat=2.0) as client,
        ):
            node_srv = serve(n1, 0)
            replies = await asyncio.gather(
                *(client.send(ObsPing(i), to=AgentId("echo", "*"), timeout=10) for i in range(20))
            )
            assert sorted(r.n for r in replies) == list(range(1, 21))
            snap = await asyncio.to_thread(fetch, srv.url + "/metrics")
            assert {("n1", "echo"), ("n2", "echo"), ("n2", "planner")} <= set(snap.node_agents)
            assert snap.messages["submitted"] >= 20 and snap.messages["reply"] >= 20
            assert snap.workers["ready"] + snap.workers["saturated"] == 2
            argv = ["top", "--url", f"127.0.0.1:{srv.port}", "--once", "--interval", "0.1"]
            assert await asyncio.to_thread(main, argv) == 0
            node_snap = await asyncio.to_thread(fetch, node_srv.url + "/metrics")
            node_srv.close()
            assert set(node_snap.node_agents) == {("n1", "echo")}
            assert node_snap.messages["executed"] == n1.stats["executed"] > 0

    try:
        asyncio.run(asyncio.wait_for(traffic(), 60))
    finally:
        srv.close()
        broker.stop()
    out = capsys.readouterr().out
    for text in ("n1", "n2", "planner", "submitted", "reply", "workers ready"):
        assert text in out, text
