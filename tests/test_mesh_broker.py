"""Broker behaviour with real ZeroMQ sockets on 127.0.0.1 (broker thread, asyncio peers)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from mesh_agents import Boom, Echo, Listener, Ping, Pong, Sleep
from mesh_procs import free_port

from engine import Agent, Context, cli, handler
from engine.errors import EncodeError, RemoteError, UndeliverableError
from engine.mesh import Broker, MeshClient, Node
from engine.mesh import protocol as P
from engine.messages import AgentId, Envelope, Kind, MessageId, encode, encode_payload
from tests._wait import until

pytestmark = pytest.mark.timeout(60)
HB = 0.1


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, route_timeout=1.0, startup_grace=0.2)
    b.start()
    yield b
    b.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_routing_direct_by_type_topic_and_errors(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        Listener.SEEN.clear()
        async with (
            Node(ep, {"echo": Echo, "listener": Listener}, name="a", heartbeat=HB) as a,
            Node(ep, {"echo": Echo}, name="b", heartbeat=HB) as b,
            MeshClient(ep, heartbeat=HB) as c,
        ):
            assert (await c.send(Ping(1), to=AgentId("echo", "x"), timeout=5)) == Pong(
                2, node=os.environ.get("MESH_NODE_NAME", str(os.getpid()))
            )
            await asyncio.gather(*(c.send(Ping(i), to=AgentId("echo", "*")) for i in range(40)))
            assert a.stats["executed"] > 5 and b.stats["executed"] > 5  # both nodes serve
            with pytest.raises(RemoteError, match="ValueError: kaput"):
                await c.send(Boom("kaput"), to=AgentId("echo", "x"), timeout=5)
            await c.publish(Ping(7), "pings.eu")
            await c.publish(Ping(8), "nobody.listens")  # accepted, delivered to none
            await until(lambda: Listener.SEEN)
            assert Listener.SEEN == [("default", 7)]
            with pytest.raises(UndeliverableError, match=r"no node hosts agent type .ghost."):
                await c.send(Ping(0), to=AgentId("ghost", "x"), timeout=5)

    run(main())
    assert broker.stats["malformed"] == 0


def test_credit_window_bounds_deliveries_to_a_slow_node(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, name="slow", concurrency=1, heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as c,
        ):
            work = asyncio.gather(
                *(c.send(Sleep(0.01, i), to=AgentId("echo", "*")) for i in range(30))
            )
            peak = 0
            while not work.done():
                info = broker.peers()["slow"]
                peak = max(peak, info["inflight"])
                assert info["inflight"] <= info["window"] == 2
                await asyncio.sleep(0.003)
            assert [p.n for p in await work] == list(range(30))
            assert peak == 2

    run(main())


def test_random_and_truncated_frames_do_not_stop_the_broker(broker: Broker) -> None:
    ep = broker.endpoints[0]
    rng = random.Random(4)
    good = encode(
        Envelope(
            MessageId("fz", 1),
            Kind.SEND,
            recipient=AgentId("echo", "x"),
            payload_type="Ping",
            payload=encode_payload(Ping(1)),
        )
    )
    junk: list[list[bytes]] = [
        [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
        for _ in range(300)
    ]
    junk += [[P.header(k), rng.randbytes(rng.randrange(0, 30))] for k in range(0, 12)]
    junk += [[P.header(P.FrameKind.DELIVER), good[:n]] for n in range(len(good))]
    junk += [[P.header(P.FrameKind.REGISTER), b"\x81\xa4name\xc0"]]
    junk += [[P.header(P.FrameKind.ACK)[:n]] for n in range(5)]

    async def main() -> None:
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(ep)
        # register as an orchestrator so the broker parses its DELIVERs too
        raw.send_multipart(
            P.frames(P.FrameKind.REGISTER, P.encode(P.Register("fuzzer", role=P.Role.ORCHESTRATOR)))
        )
        await asyncio.sleep(0.05)
        for msg in junk:
            raw.send_multipart(msg)
        async with (
            Node(ep, {"echo": Echo}, name="ok", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as c,
        ):
            for _ in range(3):
                for msg in junk[:50]:
                    raw.send_multipart(msg)
                assert (await c.send(Ping(5), to=AgentId("echo", "y"), timeout=5)).n == 6
        raw.close()

    run(main())
    assert broker.stats["malformed"] >= 300


def test_worker_role_may_not_submit(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with Node(ep, {"echo": Echo}, name="w", heartbeat=HB) as worker:
            with pytest.raises(UndeliverableError, match="forbidden"):
                await worker.send(Ping(1), to=AgentId("echo", "x"), timeout=5)

    run(main())
    assert broker.stats["unauthorized"] == 1


def test_hmac_required_drops_unsigned_peers() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, hmac_key=b"k1")
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, heartbeat=HB, hmac_key=b"k1"),
            MeshClient(ep, heartbeat=HB, hmac_key=b"k1") as c,
        ):
            assert (await c.send(Ping(1), to=AgentId("echo", "x"), timeout=5)).n == 2
        with pytest.raises(TimeoutError):
            await MeshClient(ep, heartbeat=HB).start(timeout=0.5)
        with pytest.raises(TimeoutError):
            await MeshClient(ep, heartbeat=HB, hmac_key=b"wrong").start(timeout=0.5)

    try:
        run(main())
    finally:
        b.stop()
    assert b.stats["malformed"] >= 2


class _Rejecter:
    """A raw worker that NACKs REJECTED everything it gets."""

    def __init__(self, ep: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(ep)
        self.sock.send_multipart(
            P.frames(
                P.FrameKind.REGISTER,
                P.encode(P.Register("rejecter", types=["flaky"], credit=4, heartbeat_ms=100_000)),
            )
        )

    async def serve(self) -> None:
        while True:
            if self.sock.poll(0):
                msg = self.sock.recv_multipart()
                if msg[0] == P.header(P.FrameKind.DELIVER):
                    items = [
                        P.NackItem(
                            msgspec.msgpack.decode(b, type=Envelope).id, P.NackCode.REJECTED, "no"
                        )
                        for b in msg[1:]
                    ]
                    self.sock.send_multipart(P.frames(P.FrameKind.NACK, P.encode_nacks(items)))
            else:
                await asyncio.sleep(0.002)


def test_dead_letters_are_listed_and_replayed(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_url  # SQLite and PostgreSQL
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, store=url, max_attempts=3)
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        rej = _Rejecter(ep)
        serving = asyncio.ensure_future(rej.serve())
        async with MeshClient(ep, heartbeat=HB) as c:
            with pytest.raises(UndeliverableError, match=r"dead-lettered after 3 attempts"):
                await c.send(Ping(3), to=AgentId("flaky", "k"), timeout=5)
        serving.cancel()
        rej.sock.close()

    try:
        run(main())
        assert cli.main(["dlq", "list", "--store", url]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 1 and rows[0]["recipient"] == "flaky/k" and rows[0]["attempts"] == 3

        async def serve_flaky() -> None:
            class Flaky(Echo):
                pass

            async with Node(ep, {"flaky": Flaky}, name="fixed", heartbeat=HB) as node:
                code = await asyncio.to_thread(
                    cli.main, ["dlq", "replay", "--store", url, "--connect", ep]
                )
                assert code == 0
                await until(lambda: node.stats["executed"])
                assert node.stats["executed"] == 1

        run(serve_flaky())
        assert cli.main(["dlq", "list", "--store", url]) == 0
        assert "replayed 1" in capsys.readouterr().out
    finally:
        b.stop()


def test_store_keeps_accepted_messages_across_a_broker_restart(store_url: str) -> None:
    url = store_url  # SQLite and PostgreSQL
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    first = Broker(ep, heartbeat=HB, store=url, startup_grace=30)
    first.start()

    async def submit() -> None:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 1000)
        raw.connect(ep)
        raw.send_multipart(
            P.frames(
                P.FrameKind.REGISTER,
                P.encode(P.Register("once", role=P.Role.ORCHESTRATOR, origins=["once"])),
            )
        )
        raw.send_multipart(
            P.frames(
                P.FrameKind.DELIVER,
                encode(
                    Envelope(
                        MessageId("once", 1),
                        Kind.SEND,
                        recipient=AgentId("echo", "p"),
                        payload_type="Ping",
                        payload=encode_payload(Ping(9)),
                    )
                ),
            )
        )
        await until(lambda: first.queued)
        raw.close()

    run(submit())
    assert first.queued == 1  # accepted, no node yet
    first.stop()
    second = Broker(ep, heartbeat=HB, store=url)
    second.start()

    async def serve() -> None:
        async with Node(ep, {"echo": Echo}, name="late", heartbeat=HB) as node:
            await until(lambda: node.stats["executed"])
            assert node.stats["executed"] == 1

    try:
        run(serve())
    finally:
        second.stop()


def test_metrics_endpoint_exports_broker_counters() -> None:
    port = free_port()
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, metrics_port=port)
    b.start()
    try:

        async def main() -> None:
            async with (
                Node(b.endpoints[0], {"echo": Echo}, heartbeat=HB),
                MeshClient(b.endpoints[0], heartbeat=HB) as c,
            ):
                await c.send(Ping(1), to=AgentId("echo", "m"), timeout=5)

        run(main())
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = body.decode()
        assert "engine_mesh_delivered_total 1.0" in text
        assert "engine_mesh_peers" in text
    finally:
        b.stop()


def test_bad_arguments_are_typed_errors() -> None:
    from engine.errors import EngineError
    from engine.mesh import load_agent_classes

    with pytest.raises(EngineError, match=r"expected pkg\.module:AgentClass"):
        load_agent_classes("nocolon")
    with pytest.raises(EngineError, match="cannot load agent class"):
        load_agent_classes("mesh_agents:Missing")
    assert load_agent_classes("mesh_agents:Echo,lst=mesh_agents:Listener") == {
        "echo": Echo,
        "lst": Listener,
    }
    with pytest.raises(EngineError, match="unsupported store URL scheme 'mysql'"):
        Broker(store="mysql://x")
    with pytest.raises(ValueError, match="concurrency"):
        MeshClient("tcp://127.0.0.1:1", concurrency=0)


def test_a_node_refuses_a_class_that_is_not_an_agent() -> None:
    from mesh_agents import PlainEcho

    from engine.errors import NotAnAgentError

    msg = r"mesh_agents:PlainEcho \(agent type 'plain'\) must subclass engine.Agent"
    with pytest.raises(NotAnAgentError, match=msg):
        Node("tcp://127.0.0.1:1", {"plain": PlainEcho})
    with pytest.raises(NotAnAgentError, match=r"PlainEcho .*must subclass engine\.Agent"):
        Node("tcp://127.0.0.1:1", "mesh_agents:Echo,mesh_agents:PlainEcho")
    with pytest.raises(NotAnAgentError, match=r"Ping\(n=1\) \(agent type 'ping'\) must"):
        Node("tcp://127.0.0.1:1", {"ping": Ping(1)})  # type: ignore[dict-item]


def test_oversized_messages_are_cut_off_and_the_broker_keeps_serving() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, max_frame=16_384)
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(ep)
        raw.send_multipart(
            P.frames(P.FrameKind.REGISTER, P.encode(P.Register("big", role=P.Role.ORCHESTRATOR)))
        )
        await asyncio.sleep(0.1)
        before = b.stats["received"]
        raw.send_multipart(P.frames(P.FrameKind.DELIVER, b"\x00" * 100_000))
        async with Node(ep, {"echo": Echo}, heartbeat=HB), MeshClient(ep, heartbeat=HB) as c:
            assert (await c.send(Ping(1), to=AgentId("echo", "x"), timeout=5)).n == 2
            with pytest.raises(EncodeError, match="exceeds the broker's limit"):
                await c.send(Boom("x" * 20_000), to=AgentId("echo", "x"), timeout=1)
        raw.close()
        assert b.stats["received"] - before < 20  # the 100 kB message never reached routing

    try:
        run(main())
    finally:
        b.stop()


class Gate(Agent):
    """Counts how many of its concurrent handlers run at once."""

    running = 0
    peak = 0

    @handler(concurrent=True)
    async def on_sleep(self, msg: Sleep, ctx: Context) -> Pong:
        Gate.running += 1
        Gate.peak = max(Gate.peak, Gate.running)
        try:
            await asyncio.sleep(msg.seconds)
        finally:
            Gate.running -= 1
        return Pong(msg.n)


def test_node_runs_at_most_concurrency_deliveries(broker: Broker) -> None:
    ep = broker.endpoints[0]
    Gate.running = Gate.peak = 0

    async def main() -> None:
        async with (
            Node(ep, {"gate": Gate}, name="gated", concurrency=2, heartbeat=HB) as node,
            MeshClient(ep, heartbeat=HB) as c,
        ):
            to = AgentId("gate", "k")
            replies = await asyncio.gather(
                *(c.send(Sleep(0.05, i), to=to, timeout=10) for i in range(12))
            )
            assert [r.n for r in replies] == list(range(12))
            assert Gate.peak == 2
            assert not node._active and not node._waiting  # every place came back

    run(main())


def test_a_send_refused_after_its_first_part_does_not_stop_the_broker() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB)  # not started: only its send path is used

    class Refusing:
        def send(self, frames: list[bytes], ident: bytes | None = None) -> bool:
            raise zmq.Again()  # what FrameSocket raises when a later part is refused

    assert b._send(Refusing(), b"peer", [b"AEM\x01\x03", b"body"]) is False  # type: ignore[arg-type]


def test_broker_spans_go_to_the_tracer_provider_given() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, tracer_provider=provider)
    assert Broker("tcp://127.0.0.1:0").tracer is None  # no provider set: no per-message spans
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        async with Node(ep, {"echo": Echo}, heartbeat=HB), MeshClient(ep, heartbeat=HB) as c:
            await c.send(Ping(1), to=AgentId("echo", "x"), timeout=5)

    try:
        run(main())
    finally:
        b.stop()
    assert [s.name for s in exporter.get_finished_spans()] == ["hop echo/x"]


def test_join_and_running_follow_the_loop() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB)
    assert not b.running and b.join(0)  # never started
    b.start()
    assert b.running and not b.join(0.01)
    b.stop(timeout=0)
    assert b.join(5) and not b.running and b.crashed is None
