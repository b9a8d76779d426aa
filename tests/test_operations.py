"""The operators' kit: liveness and readiness endpoints of runtime, broker and node (real
HTTP, real broker, real SQLite file), the metrics that were defined and now are fed, and
the Grafana dashboard and alert rules in docs/operations/ querying only metrics that exist."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine import Agent, AgentId, Message, Runtime, handler
from engine.mesh import Broker, MeshClient, Node
from engine.mesh._metrics import MeshCollector
from engine.observe import Metrics
from engine.observe.health import broker_checks, node_checks, postgres_writable
from engine.observe.instrument import instrument_cache, serve
from tests._wait import until
from tests.store.pg_server import PgServer

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "operations"


class OpsPing(Message):
    n: int


class Stuck(Agent):
    """Never finishes its first message, so the rest pile up in its mailbox."""

    @handler
    async def on_ping(self, msg: OpsPing, ctx: engine.Context) -> None:
        await asyncio.Event().wait()


class OpsEcho(Agent):
    @handler
    async def on_ping(self, msg: OpsPing, ctx: engine.Context) -> OpsPing:
        return OpsPing(msg.n + 1)


def probe(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aprobe(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(probe, url)


async def eventually(url: str, code: int, within: float = 20.0) -> str:
    """Poll ``url`` until it answers ``code`` (an upper bound, never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        got, body = await aprobe(url)
        if got == code or time.monotonic() > deadline:
            assert got == code, body
            return body
        await asyncio.sleep(0.05)


# -- liveness and readiness -----------------------------------------------------------


def test_runtime_ready_until_a_mailbox_is_full() -> None:
    async def main() -> None:
        async with Runtime(metrics_port=0, mailbox=2, policy="reject") as rt:
            rt.register("stuck", Stuck)
            url = rt.metrics_url
            assert url is not None
            assert await aprobe(url + "/healthz") == (200, "ok\n")
            assert await aprobe(url + "/readyz") == (200, "ready\nmailboxes: ok\n")
            to = AgentId("stuck", "s")
            await rt.post(OpsPing(0), to=to)
            await asyncio.sleep(0)  # the agent takes it and never finishes
            for i in (1, 2):  # two queued: the mailbox is at its bound
                await rt.post(OpsPing(i), to=to)
            code, body = await aprobe(url + "/readyz")
            assert code == 503
            assert body.splitlines() == ["not ready", "mailboxes: 1 mailboxes full: stuck/s"]
            assert (await aprobe(url + "/healthz"))[0] == 200  # alive all the same

    engine.run(main())


def test_broker_readiness_checks_a_postgresql_store(pg: PgServer) -> None:
    """With a PostgreSQL store, ``/readyz`` asks the server for a write transaction on a
    connection of its own: a database that refuses new connections makes the broker not
    ready (its pool's open connections would not notice), and ready again once it accepts."""
    name = f"readyz_{os.getpid()}"
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.1, store=pg.fresh_database_url(name))
    b.start()
    srv = serve(b, 0)
    try:
        assert probe(srv.url + "/readyz") == (200, "ready\nloop: ok\nqueue: ok\nstore: ok\n")
        pg._admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false', "postgres")
        try:
            code, body = probe(srv.url + "/readyz")
        finally:
            pg._admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true', "postgres")
        assert code == 503 and "store: store postgresql://" in body and "not writable" in body
        assert probe(srv.url + "/readyz")[0] == 200
    finally:
        srv.close()
        b.stop()


def test_postgres_readiness_reason_masks_the_password() -> None:
    reason = postgres_writable("postgresql://engine:s3cret@127.0.0.1:1/engine", timeout=1)
    assert reason is not None and "s3cret" not in reason
    assert reason.startswith("store postgresql://engine:***@127.0.0.1:1/engine is not writable: ")


def test_broker_readiness_checks_loop_queue_and_store(tmp_path: Path) -> None:
    db = tmp_path / "mesh.db"
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.1, store=f"sqlite:///{db}")
    b.start()
    srv = serve(b, 0)
    try:
        assert probe(srv.url + "/readyz") == (200, "ready\nloop: ok\nqueue: ok\nstore: ok\n")
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file
        try:
            code, body = probe(srv.url + "/readyz")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert code == 503 and "store: store " in body and "not writable" in body
    finally:
        srv.close()
        b.stop()
    assert broker_checks(b)["loop"]() == "broker loop not running"


def test_broker_not_ready_at_its_queue_bound() -> None:
    """A real message held for a type no node serves fills a broker that holds one."""
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.1, max_queued=1)
    b.start()

    async def main() -> None:
        async with MeshClient(b.endpoints[0], name="ops-c") as client:
            assert broker_checks(b)["queue"]() is None
            waiting = asyncio.ensure_future(client.send(OpsPing(1), to=AgentId("nobody", "*")))
            await until(lambda: b.queued == 1)
            assert broker_checks(b)["queue"]() == "queue at its bound (1/1 messages)"
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting

    try:
        asyncio.run(main())
    finally:
        b.stop()


def test_node_not_ready_when_the_broker_goes_silent() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=0.1)
    b.start()

    async def main() -> None:
        async with Node(b.endpoints[0], {"echo": OpsEcho}, name="ops-n", heartbeat=0.1) as node:
            srv = serve(node, 0)
            try:
                await eventually(srv.url + "/readyz", 200)
                await asyncio.to_thread(b.stop)
                body = await eventually(srv.url + "/readyz", 503)
                assert "broker: broker unreachable: " in body and "silent for" in body
                assert node_checks(node)["broker"]() is not None
            finally:
                srv.close()

    try:
        engine.run(asyncio.wait_for(main(), 60))
    finally:
        b.stop()


# -- metrics that are fed --------------------------------------------------------------


def _samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(m.exposition().decode())
        for s in f.samples
        if s.name == name
    }


def test_mesh_requests_feed_sampled_latency(broker: Broker) -> None:
    from engine.runtime._remote import LATENCY_SAMPLE

    metrics = Metrics()

    async def main() -> None:
        async with (
            Node(broker.endpoints[0], {"echo": OpsEcho}, name="lat-n"),
            Runtime(mesh=broker.endpoints[0], metrics=metrics) as rt,
        ):
            for i in range(2 * LATENCY_SAMPLE):
                assert await rt.send(OpsPing(i), to=AgentId("echo", "x"), timeout=10) == OpsPing(
                    i + 1
                )

    engine.run(asyncio.wait_for(main(), 60))
    (count,) = _samples(metrics, "engine_message_latency_seconds_count").values()
    assert count == 2


def test_cache_lookups_are_counted_at_scrape() -> None:
    from engine.memory import HashingEmbedder, SemanticCache

    cache = SemanticCache(HashingEmbedder(64))
    cache.put("capital of France?", "Paris")
    assert cache.get("capital of France?") == "Paris"
    m = instrument_cache(cache)
    assert cache.get("something else entirely") is None
    assert cache.get("capital of France?") == "Paris"
    totals = {dict(k)["result"]: v for k, v in _samples(m, "engine_cache_requests_total").items()}
    assert totals == {"hit": 2.0, "miss": 1.0}


# -- the dashboard and the alert rules ---------------------------------------------------


def _exposed_names() -> set[str]:
    """Every sample name the engine, a broker and a node can expose."""
    m = Metrics()
    b = Broker("tcp://127.0.0.1:0")
    m.registry.register(MeshCollector(b))
    names = {"up"}  # Prometheus' own, per scrape target
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    for family in text_string_to_metric_families(m.exposition().decode()):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    b.stop()
    return names


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    return set(re.findall(r"\b(engine_[a-z0-9_]+|up)\b", expr))


def _queries() -> dict[str, str]:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    queries = {
        f"panel {p['title']!r}": t["expr"] for p in dash["panels"] for t in p.get("targets", [])
    }
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            queries[f"variable {v['name']}"] = v["definition"]
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule['alert']}"] = rule["expr"]
    return queries


def test_dashboard_and_alerts_query_only_exposed_metrics() -> None:
    exposed = _exposed_names()
    queries = _queries()
    assert sum(q.startswith("panel") for q in queries) >= 15
    assert sum(q.startswith("alert") for q in queries) >= 8
    used: set[str] = set()
    for where, expr in queries.items():
        names = _metric_names(expr)
        assert names, f"{where} queries no engine metric: {expr}"
        missing = names - exposed
        assert not missing, f"{where} queries {missing}, which the engine does not expose"
        used |= names
    for family in ("engine_messages_total", "engine_mesh_dead_lettered_total"):
        assert family in used
    for area in ("engine_llm_", "engine_vector_search", "engine_cache_requests", "engine_tasks"):
        assert any(n.startswith(area) for n in used), f"nothing charts {area}*"


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    seen = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in seen and rule["labels"]["severity"] in (
                "warning",
                "critical",
            )
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            seen.add(rule["alert"])


def test_dashboard_panels_are_laid_out_on_the_grid() -> None:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        for dx in range(g["w"]):
            for dy in range(g["h"]):
                cell = (g["x"] + dx, g["y"] + dy)
                assert cell not in cells, f"panel {p['title']!r} overlaps another"
                cells.add(cell)
