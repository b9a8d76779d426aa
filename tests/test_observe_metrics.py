"""Metrics: names, hot-path batching, the /metrics and /debug/profile HTTP endpoint."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from engine.observe import Metrics, ObserveServer, server
from engine.observe.metrics import _FLUSH_EVERY

NAMES = {
    "engine_tasks", "engine_messages", "engine_workers", "engine_task_duration_seconds",
    "engine_message_latency_seconds", "engine_llm_call_duration_seconds", "engine_llm_tokens",
    "engine_llm_cost", "engine_cache_requests", "engine_vector_search_seconds",
    "engine_queue_depth", "engine_pending_tasks", "engine_active_workers",
}  # fmt: skip


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def test_every_issue_metric_is_exported_in_own_registry() -> None:
    m = Metrics()
    fams = families(m.exposition().decode())
    assert set(fams) >= NAMES
    global_names = {f.name for f in REGISTRY.collect()}
    assert not (NAMES & global_names), "engine metrics leaked into the global registry"


def test_two_metrics_objects_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.message("send")
    assert a.messages_total() == {"send": 1}
    assert b.messages_total() == {}


def test_hot_counters_exported_on_scrape() -> None:
    m = Metrics()
    for _ in range(5):
        m.message("send")
    m.message("reply", 3)
    m.hot.send += 2  # the int slots add to the same series
    m.hot.publish += 1
    m.message("nack")
    got = samples(m.exposition().decode(), "engine_messages_total")
    assert got == {
        (("kind", "send"),): 7.0,
        (("kind", "reply"),): 3.0,
        (("kind", "publish"),): 1.0,
        (("kind", "nack"),): 1.0,
    }
    assert m.messages_total() == {"send": 7, "reply": 3, "publish": 1, "nack": 1}


def test_latency_is_batched_then_folded_into_buckets() -> None:
    m = Metrics(latency_buckets=(0.001, 0.01))
    for v in (0.0005, 0.002, 0.002, 3.0):
        m.message_latency(v)
    assert len(m._hot.pending) == 4  # nothing reached the histogram yet
    text = m.exposition().decode()
    buckets = samples(text, "engine_message_latency_seconds_bucket")
    assert buckets[(("le", "0.001"),)] == 1
    assert buckets[(("le", "0.01"),)] == 3
    assert buckets[(("le", "+Inf"),)] == 4
    assert samples(text, "engine_message_latency_seconds_sum")[()] == pytest.approx(3.0045)
    assert m._hot.pending == []


def test_latency_buffer_is_bounded() -> None:
    m = Metrics()
    for _ in range(_FLUSH_EVERY * 2 + 5):
        m.message_latency(0.001)
    assert len(m._hot.pending) < _FLUSH_EVERY
    count = samples(m.exposition().decode(), "engine_message_latency_seconds_count")
    assert count[()] == _FLUSH_EVERY * 2 + 5


def test_recorders_and_on_collect_hook() -> None:
    m = Metrics()
    depth = {"echo": 4}
    m.on_collect(lambda: m.queue_depth.labels("echo").set(depth["echo"]))
    m.task_finished("ok", 0.2)
    m.llm_call("gpt-x", 1.5, prompt_tokens=10, completion_tokens=4, cost=0.02)
    m.cache_lookup(hit=True)
    m.cache_lookup(hit=False)
    m.cache_lookup(hit=False)
    depth["echo"] = 9
    text = m.exposition().decode()
    assert samples(text, "engine_queue_depth")[(("agent_type", "echo"),)] == 9
    assert samples(text, "engine_tasks_total")[(("status", "ok"),)] == 1
    tokens = samples(text, "engine_llm_tokens_total")
    assert tokens[(("kind", "prompt"), ("model", "gpt-x"))] == 10
    assert tokens[(("kind", "completion"), ("model", "gpt-x"))] == 4
    assert samples(text, "engine_llm_cost_total")[(("model", "gpt-x"),)] == pytest.approx(0.02)
    assert samples(text, "engine_cache_requests_total")[(("result", "miss"),)] == 2


@pytest.mark.parametrize(
    "kwargs", [{"prompt_tokens": -1}, {"completion_tokens": -2}, {"cost": -0.5}]
)
def test_llm_call_rejects_negative(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Metrics().llm_call("m", 0.1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("buckets", [(), (0.0, 1.0), (-1.0,)])
def test_bad_buckets_rejected(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="latency_buckets"):
        Metrics(latency_buckets=buckets)


def test_scrape_from_another_thread_while_recording() -> None:
    m = Metrics()
    stop = threading.Event()
    seen: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            text = m.exposition().decode()
            seen.append(samples(text, "engine_message_latency_seconds_count")[()])

    t = threading.Thread(target=scrape)
    t.start()
    for _ in range(20000):
        m.message("send")
        m.message_latency(0.0001)
    stop.set()
    t.join()
    final = samples(m.exposition().decode(), "engine_message_latency_seconds_count")[()]
    assert final == 20000
    assert seen == sorted(seen)  # monotonic across concurrent folds


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_http_metrics_endpoint() -> None:
    m = Metrics()
    m.message("publish", 2)
    with ObserveServer(m) as srv:
        status, ctype, body = get(srv.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert samples(body.decode(), "engine_messages_total")[(("kind", "publish"),)] == 2
        assert get(srv.url + "/healthz")[:1] == (200,)
        assert get(srv.url + "/nope")[0] == 404


def busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(200))


def test_http_profile_speedscope_and_folded() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=busy, args=(stop,), name="busy-worker")
    worker.start()
    try:
        with ObserveServer(Metrics()) as srv:
            status, ctype, body = get(srv.url + "/debug/profile?seconds=0.3&hz=200")
            assert status == 200 and ctype == "application/json"
            doc = orjson.loads(body)
            assert doc["$schema"].startswith("https://www.speedscope.app/")
            names = {p["name"] for p in doc["profiles"]}
            assert "busy-worker" in names
            frames = {f["name"] for f in doc["shared"]["frames"]}
            assert "busy" in frames
            status, _, text = get(srv.url + "/debug/profile?seconds=0.2&format=folded")
            assert status == 200
            assert any(line.startswith("busy-worker;") for line in text.decode().splitlines())
    finally:
        stop.set()
        worker.join()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("seconds=abc", b"seconds must be a number"),
        ("seconds=0", b"seconds must be in"),
        ("seconds=99999", b"seconds must be in"),
        ("seconds=0.1&hz=5000", b"hz must be in"),
        ("seconds=0.1&format=pprof", b"format must be"),
    ],
)
def test_http_profile_bad_queries(
    query: str, message: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiled: list[object] = []  # rejected before any sampling starts
    monkeypatch.setattr(server, "profile_for", lambda *a: profiled.append(a))
    with ObserveServer(Metrics(), max_profile_seconds=5) as srv:
        status, _, body = get(srv.url + "/debug/profile?" + query)
        assert status == 400 and message in body
    assert profiled == []


def test_server_bad_arguments_and_lifecycle() -> None:
    with pytest.raises(ValueError, match="port"):
        ObserveServer(port=70000)
    srv = ObserveServer(Metrics())
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.port
    srv.start()
    with pytest.raises(RuntimeError, match="already started"):
        srv.start()
    port = srv.port
    srv.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
