"""``engine top`` against a real /metrics endpoint, rendered once."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from engine.cli import main
from engine.cli import top as top_cli
from engine.observe import Metrics, ObserveServer, top
from engine.observe.top import fetch, parse, quantile
from tests._clock import FakeClock


@pytest.fixture
def server() -> Iterator[ObserveServer]:
    m = Metrics()
    m.node_agents.labels("node-a", "echo").set(3)
    m.node_agents.labels("node-a", "planner").set(1)
    m.node_agents.labels("node-b", "echo").set(2)
    m.queue_depth.labels("echo").set(17)
    m.workers.labels("ready").set(2)
    m.task_finished("ok", 0.5)
    m.pending_tasks.set(4)
    m.message("send", 100)
    for _ in range(100):
        m.message_latency(0.0003)
    srv = ObserveServer(m).start()
    yield srv
    srv.close()


def test_fetch_parses_the_endpoint(server: ObserveServer) -> None:
    snap = fetch(server.url + "/metrics")
    assert snap.messages == {"send": 100}
    assert snap.node_agents[("node-b", "echo")] == 2
    assert snap.queue_depth == {"echo": 17}
    assert snap.tasks == {"ok": 1} and snap.pending_tasks == 4
    assert 0.00025 <= quantile(snap.latency_buckets, 0.5) <= 0.0005


def test_render_once(
    server: ObserveServer,
    capsys: pytest.CaptureFixture[str],
    fake_clock: Callable[..., FakeClock],
) -> None:
    m = server.metrics
    clock = fake_clock(top, top_cli)  # the snapshot times and the sleep between scrapes

    def interval(seconds: float) -> None:  # 50 more messages between the two scrapes
        for _ in range(50):
            m.message("reply")
        clock.advance(seconds)

    clock.sleep = interval  # type: ignore[method-assign]
    argv = ["top", "--url", f"127.0.0.1:{server.port}", "--once", "--interval", "0.4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ("node-a", "node-b", "planner", "echo", "17", "send", "reply", "p99", "pending"):
        assert text in out, text
    reply_line = next(line for line in out.splitlines() if "reply" in line)
    assert "50" in reply_line and "125.0" in reply_line  # total, and 50 per 0.4 s


def test_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    srv = ObserveServer(Metrics()).start()
    port = srv.port
    srv.close()
    assert main(["top", "--url", f"127.0.0.1:{port}", "--once", "--interval", "0.1"]) == 2
    assert "cannot scrape" in capsys.readouterr().out


def test_bad_interval() -> None:
    with pytest.raises(SystemExit):
        main(["top", "--interval", "0"])


def test_quantile_edges() -> None:
    assert math.isnan(quantile([], 0.5))
    assert math.isnan(quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5))
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.75) == pytest.approx(0.15)
    assert quantile([(0.1, 0.0), (math.inf, 10.0)], 0.9) == 0.1  # all above the last bound


def test_reads_the_mesh_brokers_own_collector() -> None:
    """A scrape with only the mesh's ``engine_mesh_*`` collector (older brokers) is read too."""
    import asyncio

    from prometheus_client import CollectorRegistry, generate_latest

    from engine.mesh import Broker, MeshClient, Node
    from engine.mesh._metrics import MeshCollector
    from engine.messages import AgentId
    from tests.test_observe_instrument import MeshEcho, ObsPing

    broker = Broker("tcp://127.0.0.1:0", heartbeat=2.0)
    broker.start()
    ep = broker.endpoints[0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(broker))

    async def traffic() -> None:
        async with (
            Node(ep, {"echo": MeshEcho}, name="n1", heartbeat=2.0),
            MeshClient(ep, heartbeat=2.0) as client,
        ):
            for i in range(5):
                await client.send(ObsPing(i), to=AgentId("echo", "*"), timeout=10)
            snap = parse(generate_latest(registry).decode())
            assert snap.messages["submitted"] >= 5 and snap.messages["replies"] >= 5
            assert snap.workers["peers"] == 2  # the node and the client

    try:
        asyncio.run(asyncio.wait_for(traffic(), 60))
    finally:
        broker.stop()
