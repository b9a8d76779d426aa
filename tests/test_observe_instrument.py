"""Metrics attached to a real runtime, served over HTTP, read by ``engine top``."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Agent, AgentId, Message, Runtime, handler
from engine.observe import Metrics
from engine.observe.instrument import ALL_TYPES, instrument_runtime, serve
from engine.observe.top import fetch


class Hold(Message):
    n: int


class Slow(Agent):
    @handler
    async def on_hold(self, msg: Hold, ctx: object) -> Hold:
        await asyncio.sleep(0.2)
        return msg


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.mark.skipif(
    not hasattr(Runtime, "stats"), reason="Runtime.stats() has not landed in this build yet"
)
def test_runtime_state_exported_on_scrape() -> None:
    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        rt = Runtime()
        rt.register("slow", Slow)
        m = instrument_runtime(rt, Metrics())
        to = AgentId("slow", "a")
        calls = [asyncio.ensure_future(rt.send(Hold(i), to=to)) for i in range(4)]
        await asyncio.sleep(0.05)  # one running, three queued in its mailbox
        text = m.exposition().decode()
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
