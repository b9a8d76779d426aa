"""The observability endpoint wired into Runtime, broker and node (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextvars
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Agent, AgentId, Context, Message, Runtime, handler
from engine.observe import Metrics


class WirePing(Message):
    n: int


class WireEcho(Agent):
    @handler
    async def on_ping(self, msg: WirePing, ctx: object) -> WirePing:
        return WirePing(msg.n + 1)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body


def messages(text: str) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "engine_messages_total"
    }


# -- Runtime(metrics=..., metrics_port=...) -----------------------------------------------


def test_runtime_metrics_port_serves_live_counts_and_profile() -> None:
    async def main() -> None:
        async with Runtime(metrics_port=0) as rt:
            rt.register("echo", WireEcho)
            url = rt.metrics_url
            assert url is not None and url.startswith("http://127.0.0.1:")
            assert isinstance(rt.metrics, Metrics)
            before = messages((await asyncio.to_thread(get, url + "/metrics")).decode())
            for i in range(5):
                assert await rt.send(WirePing(i), to=AgentId("echo", "a")) == WirePing(i + 1)
            after = messages((await asyncio.to_thread(get, url + "/metrics")).decode())
            assert before.get("send", 0) == 0
            assert after["send"] == 5 and after["reply"] == 5
            prof = await asyncio.to_thread(get, url + "/debug/profile?seconds=0.2&hz=50")
            assert orjson.loads(prof)["$schema"].startswith("https://www.speedscope.app")
        assert rt.metrics_url is None
        with pytest.raises(urllib.error.URLError):  # closed by stop()
            await asyncio.to_thread(get, url + "/healthz")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_runtime_with_given_metrics_and_no_port() -> None:
    async def main() -> dict[str, int]:
        m = Metrics()
        async with Runtime(metrics=m) as rt:
            assert rt.metrics is m and rt.metrics_url is None
            rt.register("echo", WireEcho)
            await rt.send(WirePing(1), to=AgentId("echo", "a"))
            m.exposition()
            return m.messages_total()

    assert asyncio.run(main())["send"] == 1


def test_runtime_without_metrics_has_none() -> None:
    rt = Runtime()
    assert rt.metrics is None and rt.metrics_url is None


def test_runtime_metrics_bad_arguments() -> None:
    with pytest.raises(ValueError, match="port must be in"):
        Runtime(metrics_port=70000)
    with pytest.raises(TypeError, match="metrics_port must be an int"):
        Runtime(metrics_port="9100")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metrics must be an engine\.observe\.Metrics"):
        Runtime(metrics=object())  # type: ignore[arg-type]


# -- engine broker / engine node --metrics-port ---------------------------------------------


def test_broker_metrics_port_serves_engine_and_mesh_names() -> None:
    from mesh_agents import Echo, Ping
    from mesh_procs import free_port

    from engine.mesh import Broker, MeshClient, Node
    from engine.observe.top import fetch

    port = free_port()
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.5, metrics_port=port)
    b.start()
    try:
        assert b.observe is not None and b.observe.url == f"http://127.0.0.1:{port}"

        async def main() -> None:
            async with (
                Node(b.endpoints[0], {"echo": Echo}, name="wn", heartbeat=0.5),
                MeshClient(b.endpoints[0], heartbeat=0.5) as c,
            ):
                for i in range(3):
                    await c.send(Ping(i), to=AgentId("echo", "m"), timeout=5)
                snap = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
                assert ("wn", "echo") in snap.node_agents
                assert snap.messages["submitted"] == 3 and snap.messages["reply"] == 3
                assert "replies" not in snap.messages  # engine_mesh_* only as a fallback

        asyncio.run(asyncio.wait_for(main(), 30))
        text = get(f"http://127.0.0.1:{port}/metrics").decode()
        assert 'engine_messages_total{kind="delivered"} 3.0' in text
        assert "engine_mesh_received_total" in text and "engine_mesh_peers" in text
        folded = get(f"http://127.0.0.1:{port}/debug/profile?seconds=0.2&format=folded")
        assert b"engine-broker;" in folded and b"_loop" in folded  # the broker thread
    finally:
        b.stop()
    assert b.observe is None
    with pytest.raises(urllib.error.URLError):  # closed with the broker
        get(f"http://127.0.0.1:{port}/healthz")


def test_broker_metrics_port_bad_value() -> None:
    from engine.mesh import Broker

    with pytest.raises(ValueError, match="metrics_port must be an int"):
        Broker("tcp://127.0.0.1:0", metrics_port=-1)


def test_cli_broker_and_node_metrics_ports() -> None:
    from mesh_agents import Ping, Pong
    from mesh_procs import broker, free_port, node, processes

    from engine.mesh import MeshClient

    bport, bmetrics, nmetrics = free_port(), free_port(), free_port()
    with processes() as procs:
        procs.append(broker(bport, "--metrics-port", str(bmetrics)))
        ep = f"tcp://127.0.0.1:{bport}"
        procs.append(node(ep, "cli-n1", "--metrics-port", str(nmetrics)))

        async def main() -> Pong:
            async with MeshClient(ep, heartbeat=0.2) as c:
                reply: Pong = await c.send(Ping(41), to=AgentId("echo", "x"), timeout=10)
                return reply

        assert asyncio.run(asyncio.wait_for(main(), 30)) == Pong(42, "cli-n1")
        node_text = get(f"http://127.0.0.1:{nmetrics}/metrics").decode()
        assert 'engine_node_agents{agent_type="echo",node="cli-n1"} 1.0' in node_text
        assert messages(node_text)["executed"] >= 1
        broker_text = get(f"http://127.0.0.1:{bmetrics}/metrics").decode()
        assert messages(broker_text)["reply"] >= 1
        assert 'engine_node_agents{agent_type="echo",node="cli-n1"} 1.0' in broker_text
        assert get(f"http://127.0.0.1:{nmetrics}/healthz") == b"ok\n"


# -- mesh peer: a handler's context variables stay with that handler ------------------------

_LEAK: contextvars.ContextVar[int] = contextvars.ContextVar("wiring_leak", default=0)


class LeakProbe(Message):
    n: int
    suspend: bool = False


class LeakSeen(Message):
    before: int
    after: int


class ContextSetter(Agent):
    """Run eagerly on its node (no task until it suspends): reports what it saw, then sets
    the var."""

    @handler
    async def on_probe(self, msg: LeakProbe, ctx: Context) -> LeakSeen:
        before = _LEAK.get()
        _LEAK.set(msg.n)
        if msg.suspend:
            await asyncio.sleep(0.01)  # resumed in a task: must still see its own value
        return LeakSeen(before, _LEAK.get())


def test_mesh_handler_context_does_not_leak_into_the_next_handler() -> None:
    from engine.mesh import Broker, MeshClient, Node

    b = Broker("tcp://127.0.0.1:0", heartbeat=0.5)
    b.start()

    async def main() -> list[LeakSeen]:
        async with (
            Node(b.endpoints[0], {"probe": ContextSetter}, name="ctx", heartbeat=0.5),
            MeshClient(b.endpoints[0], heartbeat=0.5) as c,
        ):
            seen = []
            for i, suspend in ((1, False), (2, True), (3, False), (4, False)):
                to = AgentId("probe", f"k{i}")
                seen.append(await c.send(LeakProbe(i, suspend), to=to, timeout=5))
            assert _LEAK.get() == 0
            return seen

    try:
        seen = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        b.stop()
    assert [s.before for s in seen] == [0, 0, 0, 0]  # nothing left behind by earlier runs
    assert [s.after for s in seen] == [1, 2, 3, 4]


def test_bad_traceparent_from_a_peer_starts_a_new_trace() -> None:
    import time

    from mesh_agents import Echo, Ping, Pong
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.mesh import Broker, MeshClient, Node, decode_reply
    from engine.messages import Envelope, Kind, encode_payload
    from engine.observe import Tracer

    exporter = InMemorySpanExporter()
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.5, tracer=Tracer("b", exporters=[exporter]))
    b.start()
    ep = b.endpoints[0]

    async def main() -> Pong:
        async with (
            Node(ep, {"echo": Echo}, name="bt", tracer=Tracer("n", exporters=[exporter])),
            MeshClient(ep, heartbeat=0.5) as c,
        ):
            env = Envelope(
                c.ids.next(),
                Kind.SEND,
                recipient=AgentId("echo", "x"),
                deadline=time.time() + 10,
                traceparent="not-a-traceparent",
                payload_type="Ping",
                payload=encode_payload(Ping(1)),
            )
            reply: Pong = decode_reply(await c.request(env, timeout=10), Pong)
            return reply

    try:
        assert asyncio.run(asyncio.wait_for(main(), 30)).n == 2
    finally:
        b.stop()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"hop echo/x", "handle Ping"}
    assert spans["hop echo/x"].parent is None  # a new trace, the message still delivered
    assert spans["handle Ping"].parent.span_id == spans["hop echo/x"].context.span_id


def test_metrics_port_in_use_names_the_address() -> None:
    async def main() -> None:
        async with Runtime(metrics_port=0) as first:
            assert first.metrics_url is not None
            port = int(first.metrics_url.rsplit(":", 1)[1])
            second = Runtime(metrics_port=port)
            with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
                await second.start()
            await second.stop()

    asyncio.run(main())

    from engine.mesh import Broker

    b1 = Broker("tcp://127.0.0.1:0", metrics_port=0)
    b1.start()
    try:
        assert b1.observe is not None
        b2 = Broker("tcp://127.0.0.1:0", metrics_port=b1.observe.port)
        with pytest.raises(OSError, match="cannot serve metrics on"):
            b2.start()
    finally:
        b1.stop()
