"""LLM metrics and spans, and that API keys appear in none of logs, spans, metrics, audit
records, exceptions or reprs."""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.errors import AllProvidersFailed, BudgetExceeded, ProviderError
from engine.llm import Budget, LLMCache, ModelRouter, OpenAIProvider, RetryPolicy
from engine.observe.audit import AuditLog
from engine.observe.metrics import Metrics
from tests.agents_for_tests import uv
from tests.llm_support import FakeClock
from tests.openai_server import Fault, OpenAIServer, ServerReply, serving

KEY = "sk-proj-SECRETsecretSECRET0123456789abcdef"
KEY_CORE = "SECRETsecretSECRET0123456789"  # what must never show, in any shape


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _router(
    primary: OpenAIServer, backup: OpenAIServer, tp: TracerProvider, metrics: Metrics, **kw: Any
) -> ModelRouter:
    clock = FakeClock()
    return ModelRouter(
        {"default": [OpenAIProvider("gpt-4o-mini", base_url=primary.url, api_key=KEY),
                     OpenAIProvider("gpt-4o", base_url=backup.url, api_key=KEY)]},
        clock=clock, sleep=clock.sleep, rng=random.Random(3), tracer_provider=tp,
        metrics=metrics, **kw,
    )  # fmt: skip


def test_spans_and_metrics_of_calls_retries_and_fallbacks(
    openai_server: OpenAIServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tp, exporter = spans
    metrics = Metrics()
    with serving() as backup:
        openai_server.fail(Fault.http(503), Fault.http(500), Fault.http(500), Fault.http(500))

        @uv
        async def run() -> None:
            async with _router(openai_server, backup, tp, metrics, cache=LLMCache()) as r:
                res = await r.chat("hi", max_tokens=20, temperature=0)
                assert res.model == "gpt-4o"  # the primary failed 3 times: fallback
                assert (await r.chat("hi", max_tokens=20, temperature=0)).cached == "exact"
                await r.chat("again", kind="plan")  # no plan route: default; primary is fine

        run()
    finished = exporter.get_finished_spans()
    first = finished[0]
    assert first.name == "chat gpt-4o-mini"
    attrs = dict(first.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o" and attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert "gen_ai.system" not in attrs
    events = [e.name for e in first.events]
    assert events == ["retry", "retry", "fallback"]
    assert dict(first.events[2].attributes or {})["error.type"] == "server"
    text = metrics.exposition().decode()
    assert (
        'engine_llm_calls_total{kind="default",model="gpt-4o",provider="openai",status="ok"} 1.0'
        in text
    )
    cached = 'kind="default",model="gpt-4o",provider="openai",status="cached"'
    assert "engine_llm_calls_total{" + cached + "} 1.0" in text
    assert (
        'engine_llm_calls_total{kind="plan",model="gpt-4o-mini",provider="openai",status="ok"} 1.0'
        in text
    )
    errors = 'error="server",kind="default",model="gpt-4o-mini",provider="openai"'
    assert "engine_llm_errors_total{" + errors + "} 3.0" in text
    assert 'engine_llm_cache_total{result="exact"} 1.0' in text
    assert 'engine_llm_breaker_state{provider="openai/gpt-4o-mini"} 0.0' in text
    assert 'engine_llm_call_duration_seconds_count{model="gpt-4o"} 1.0' in text
    assert 'engine_llm_tokens_total{kind="prompt",model="gpt-4o"}' in text
    assert 'engine_llm_cost_total{model="gpt-4o"}' in text


def test_failed_calls_mark_the_span_and_the_breaker_gauge(
    openai_server: OpenAIServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tp, exporter = spans
    metrics = Metrics()
    with serving() as backup:
        openai_server.always = Fault.http(500)
        backup.always = Fault.http(500)

        @uv
        async def run() -> None:
            async with _router(openai_server, backup, tp, metrics,
                               retry=RetryPolicy(attempts=5)) as r:  # fmt: skip
                with pytest.raises(AllProvidersFailed):
                    await r.chat("x")

        run()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert dict(span.attributes or {})["error.type"] == "AllProvidersFailed"
    text = metrics.exposition().decode()
    assert 'engine_llm_breaker_state{provider="openai/gpt-4o-mini"} 2.0' in text  # open
    assert 'status="error"' in text


def test_api_keys_never_leak(
    openai_server: OpenAIServer,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    tp, exporter = spans
    metrics = Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # every library's debug logs, openai's and httpx's included
    texts: list[str] = []
    try:
        with serving() as backup:
            backup.reply = lambda body: ServerReply("ok")

            @uv
            async def run() -> None:
                r = _router(openai_server, backup, tp, metrics, audit=audit,
                            retry=RetryPolicy(attempts=1))  # fmt: skip
                texts.extend([repr(r), str(r), repr(r.providers[0]), str(vars(r.providers[0]))])
                await r.chat("hello")
                async for _ in r.stream("stream"):
                    pass
                for fault in (Fault.http(401), Fault.http(500), Fault.reset()):
                    openai_server.fail(fault)
                    try:
                        await r.chat("x")
                    except ProviderError as exc:
                        texts.extend([str(exc), repr(exc)])
                with pytest.raises(BudgetExceeded) as info:
                    await r.chat("x", budget=Budget(tokens=1, name="job:1"))
                texts.extend([str(info.value), repr(info.value)])
                # A hostile server echoes the credentials it received in its error message.
                p = r.providers[0]
                assert isinstance(p, OpenAIProvider)
                echo = p._error(_status_error(401, f"Incorrect API key provided: {KEY}"))
                texts.extend([str(echo), repr(echo)])
                await r.aclose()

            run()
            assert f"Bearer {KEY}" in openai_server.auth  # the key was really sent
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        audit.close()
    log_text = logs.getvalue()
    assert "openai" in log_text and "engine.llm" in log_text  # debug logs were captured
    texts.append(log_text)
    texts.append(metrics.exposition().decode())
    audit_text = (tmp_path / "audit.jsonl").read_text()
    assert "budget.refused" in audit_text
    texts.append(audit_text)
    finished = exporter.get_finished_spans()
    assert len(finished) == 5  # chat, stream, three failing calls (the refusal sends nothing)
    texts.extend(s.to_json() for s in finished)
    for t in texts:
        assert KEY_CORE not in t, t[:2000]


def _status_error(status: int, message: str) -> Exception:
    import httpx2
    import openai

    req = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions",
                         headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    resp = httpx2.Response(status, request=req, json={"error": {"message": message}})
    return openai.AuthenticationError(message, response=resp, body={"error": {"message": message}})


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@uv
async def test_answered_calls_are_tallied_and_folded_into_metrics_at_scrape_time() -> None:
    from engine.llm import Reply, ScriptedProvider, Usage

    metrics = Metrics()
    one = ScriptedProvider(default=Reply("ok", usage=Usage(7, 3)), metrics=metrics)
    two = ScriptedProvider(default=Reply("ok", usage=Usage(1, 1)), metrics=metrics)
    for _ in range(300):
        await one.chat("hi", kind="act")
    await two.chat("hi", kind="plan")
    ok = {"provider": "scripted", "model": "scripted", "status": "ok"}
    assert _sample(metrics, "engine_llm_calls_total", {**ok, "kind": "act"}) == 300
    assert _sample(metrics, "engine_llm_calls_total", {**ok, "kind": "plan"}) == 1
    tokens = {"model": "scripted", "kind": "prompt"}
    assert _sample(metrics, "engine_llm_tokens_total", tokens) == 7 * 300 + 1
    count = {"model": "scripted"}
    assert _sample(metrics, "engine_llm_call_duration_seconds_count", count) == 301
    inf = {"model": "scripted", "le": "+Inf"}
    assert _sample(metrics, "engine_llm_call_duration_seconds_bucket", inf) == 301
    # every latency lands in some bucket: the buckets are cumulative up to the count (which
    # bucket depends on the machine's speed, so no bound is asserted here)
    buckets = [
        s.value
        for fam in metrics.registry.collect()
        if fam.name == "engine_llm_call_duration_seconds"
        for s in fam.samples
        if s.name.endswith("_bucket") and s.labels.get("model") == "scripted"
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 301
    # a second scrape adds only what came since the first
    await one.chat("hi", kind="act")
    assert _sample(metrics, "engine_llm_calls_total", {**ok, "kind": "act"}) == 301
    assert _sample(metrics, "engine_llm_call_duration_seconds_count", count) == 302
    text = metrics.exposition().decode()
    assert (
        'engine_llm_calls_total{kind="act",model="scripted",provider="scripted",status="ok"}'
        " 301.0" in text
    )


@uv
async def test_no_span_work_while_the_tracer_records_nothing(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    from engine.llm import ScriptedProvider

    quiet = ScriptedProvider(default="ok", tracer_provider=NoOpTracerProvider())
    assert not quiet.telemetry.tracing
    await quiet.chat("hi")
    tp, exporter = spans
    traced = ScriptedProvider(default="ok", tracer_provider=tp)
    assert traced.telemetry.tracing
    await traced.chat("hi", kind="act")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat scripted"
    assert dict(span.attributes or {})["engine.llm.kind"] == "act"
    assert not ScriptedProvider(default="ok", spans=False).telemetry.tracing


@uv
async def test_a_cancelled_call_is_no_failed_call() -> None:
    import asyncio

    from engine.llm import ScriptedProvider
    from engine.llm.base import ChatResult
    from engine.llm.request import ChatRequest

    class Slow(ScriptedProvider):
        """Answers only when released (a call in flight when its job is cancelled)."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(default="late", **kw)
            self.started = asyncio.Event()

        async def _complete(self, req: ChatRequest) -> ChatResult:
            self.started.set()
            await asyncio.Event().wait()  # never set: only a cancellation ends it
            raise AssertionError("unreachable")

    metrics = Metrics()
    budget = Budget(tokens=10_000)
    llm = Slow(metrics=metrics)
    call = asyncio.ensure_future(llm.chat("hi", kind="act", budget=budget))
    await asyncio.wait_for(llm.started.wait(), 10)
    assert budget.reserved_tokens > 0
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    labels = {"provider": "scripted", "model": "scripted", "kind": "act", "status": "error"}
    assert metrics.registry.get_sample_value("engine_llm_calls_total", labels) is None
    assert budget.reserved_tokens == 0  # the reservation went back


def test_tallied_latencies_land_in_the_buckets_prometheus_would_put_them() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from engine.llm import ScriptedProvider
    from engine.llm.base import ChatResult, Usage
    from engine.observe.metrics import TASK_BUCKETS

    metrics = Metrics()
    tel = ScriptedProvider(default="ok", metrics=metrics).telemetry
    ref = Histogram("ref", "reference", buckets=TASK_BUCKETS, registry=CollectorRegistry())
    res = ChatResult(text="ok", usage=Usage(3, 1), model="scripted", provider="scripted")
    # below, at and just past the first bound (the fast path), then the bisected rest
    for seconds in (0.0, 2e-5, 0.001, 0.0010001, 0.005, 0.007, 1.0, 299.9, 300.0, 301.0):
        tel.ok(res, "act", seconds)
        ref.observe(seconds)
    ours = {
        s.labels["le"]: s.value
        for fam in metrics.registry.collect()
        if fam.name == "engine_llm_call_duration_seconds"
        for s in fam.samples
        if s.name.endswith("_bucket") and s.labels.get("model") == "scripted"
    }
    theirs = {
        s.labels["le"]: s.value
        for fam in ref.collect()
        for s in fam.samples
        if s.name.endswith("_bucket")
    }
    assert ours == theirs and ours["0.001"] == 3 and ours["+Inf"] == 10


@uv
async def test_a_proxy_tracer_records_once_a_global_provider_is_set(
    spans: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    from engine.llm import ScriptedProvider

    tp, exporter = spans
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # no global provider yet
    llm = ScriptedProvider(default="ok")
    assert not llm.telemetry.tracing
    await llm.chat("hi")
    assert not exporter.get_finished_spans()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", tp)  # the application sets one
    assert llm.telemetry.tracing
    await llm.chat("hi", kind="act")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat scripted"
