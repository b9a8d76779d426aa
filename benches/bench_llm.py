"""LLM layer costs, against the bare ``openai`` client and LiteLLM's Router in the same run.

All clients call the same zero-latency OpenAI-compatible server (``tests/openai_server.py``)
running in its own process, so what differs between them is only client-side work:

* **sequential overhead**: p50 of ``ModelRouter.chat`` (breaker, budget, accounting,
  metrics and an OpenTelemetry span recorded by an SDK tracer provider, all on) minus p50
  of a bare ``AsyncOpenAI.chat.completions.create``; the same for LiteLLM's ``Router``
  (two deployments, a fallback list). Both on the httpx transport, interleaved in rounds so
  load hits all alike. Also reported: the router over the bare client's raw ``post`` (the
  transport call the provider itself makes), i.e. the layer's own cost.
* **64 in flight**: calls/s of the bare client (httpx and aiohttp transports) and of the
  router on the default transport.
* **cache hits at 100k entries**: p50 of ``LLMCache.get`` (key + lookup), exact and
  semantic (a case/punctuation variant of a cached prompt).

``make bench`` or ``.venv/bin/python -m pytest benches/bench_llm.py -s``; the figures are
printed in the ``bench report`` section and kept in ``extra_info``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.llm import Budget, LLMCache, ModelRouter, OpenAIProvider
from engine.llm.cache import _Cached, cache_key
from engine.llm.request import make_request
from engine.observe.metrics import Metrics

KEY = "sk-bench-0123456789abcdefghijklmn"
MSGS = [{"role": "user", "content": "Say hello."}]
ROUNDS = 7
PER_ROUND = 150
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The test server in its own process (it must not share the clients' interpreter)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()


def report(benchmark: Any, bench_report: list[str], name: str, **figures: float) -> None:
    benchmark.extra_info.update(figures)
    text = ", ".join(f"{k}={v:,.2f}" for k, v in figures.items())
    bench_report.append(f"[llm] {name}: {text}")


def _tracer_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider()  # records every span (no exporter: nothing leaves the process)


def _router(url: str, transport: str, metrics: Metrics) -> ModelRouter:
    return ModelRouter(
        {
            "default": [
                OpenAIProvider("gpt-4o-mini", base_url=url, api_key=KEY, transport=transport),
                OpenAIProvider("gpt-4o", base_url=url, api_key=KEY, transport=transport),
            ]
        },
        metrics=metrics,
        tracer_provider=_tracer_provider(),
    )


def _litellm_router(url: str) -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    params = {"api_base": url, "api_key": KEY}
    return litellm.Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {"model": "openai/gpt-4o-mini", **params}},
            {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o", **params}},
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=0,
    )


async def _latencies(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


@pytest.mark.timeout(1200)
def test_router_overhead_vs_bare_client_and_litellm(
    benchmark: Any, bench_report: list[str], server_url: str
) -> None:
    import httpx2
    import openai

    async def run() -> dict[str, float]:
        bare = openai.AsyncOpenAI(base_url=server_url, api_key=KEY, max_retries=0)
        router = _router(server_url, "httpx", Metrics())
        budget = Budget(tokens=10**12, cost=10**9, calls=10**9, name="bench")
        lite = _litellm_router(server_url)
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": MSGS})

        async def bare_create() -> Any:
            return await bare.chat.completions.create(model="gpt-4o-mini", messages=MSGS)  # type: ignore[arg-type]

        async def bare_raw() -> Any:
            r = await bare.post(
                "/chat/completions", cast_to=httpx2.Response, content=body,
                options={"headers": {"Content-Type": "application/json"}},
            )  # fmt: skip
            return orjson.loads(r.content)

        async def engine() -> Any:
            return await router.chat(MSGS, budget=budget, job="bench", tenant="t")

        async def litellm_call() -> Any:
            return await lite.acompletion(model="primary", messages=MSGS)

        calls = {"bare": bare_create, "raw": bare_raw, "engine": engine, "litellm": litellm_call}
        for fn in calls.values():  # warm up: imports, connections, caches
            await _latencies(fn, 30)
        samples: dict[str, list[float]] = {k: [] for k in calls}
        order = list(calls)
        for r in range(ROUNDS):
            random.Random(r).shuffle(order)
            for k in order:
                samples[k] += await _latencies(calls[k], PER_ROUND)
        p50 = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
        await router.aclose()
        await bare.close()
        return {
            "bare_p50_us": p50["bare"],
            "bare_raw_p50_us": p50["raw"],
            "engine_p50_us": p50["engine"],
            "litellm_p50_us": p50["litellm"],
            "engine_overhead_us": p50["engine"] - p50["bare"],
            "engine_over_raw_us": p50["engine"] - p50["raw"],
            "litellm_overhead_us": p50["litellm"] - p50["bare"],
        }

    figures = benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    lo = figures["litellm_overhead_us"]
    figures["engine_over_raw_vs_litellm"] = figures["engine_over_raw_us"] / lo if lo > 0 else 0.0
    report(benchmark, bench_report, "sequential overhead (httpx transport)", **figures)
    assert figures["engine_overhead_us"] <= 50.0
    assert figures["engine_over_raw_us"] <= lo / 10


@pytest.mark.timeout(1200)
def test_transport_64_in_flight(benchmark: Any, bench_report: list[str], server_url: str) -> None:
    import openai

    total = 3000

    async def throughput(call: Callable[[], Awaitable[Any]]) -> float:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call()

        await asyncio.gather(*(worker() for _ in range(64)))  # warm: open the connections
        left = total
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return total / (time.perf_counter() - t0)

    async def run() -> dict[str, float]:
        httpx_client = openai.AsyncOpenAI(base_url=server_url, api_key=KEY, max_retries=0)
        aio_client = openai.AsyncOpenAI(
            base_url=server_url, api_key=KEY, max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )  # fmt: skip
        routers = {t: _router(server_url, t, Metrics()) for t in ("httpx", "aiohttp")}

        def bare(c: Any) -> Callable[[], Awaitable[Any]]:
            return lambda: c.chat.completions.create(model="gpt-4o-mini", messages=MSGS)

        def eng(r: ModelRouter) -> Callable[[], Awaitable[Any]]:
            return lambda: r.chat(MSGS)

        calls = {
            "bare_httpx": bare(httpx_client),
            "bare_aiohttp": bare(aio_client),
            "engine_httpx": eng(routers["httpx"]),
            "engine_aiohttp": eng(routers["aiohttp"]),
        }
        rates: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(3):
            for k, fn in calls.items():
                rates[k].append(await throughput(fn))
        for r in routers.values():
            await r.aclose()
        await httpx_client.close()
        await aio_client.close()
        return {f"{k}_calls_s": statistics.median(v) for k, v in rates.items()}

    figures = benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    best_bare = max(figures["bare_httpx_calls_s"], figures["bare_aiohttp_calls_s"])
    default = OpenAIProvider("m", base_url=server_url).transport
    figures["engine_default_vs_best_bare"] = figures[f"engine_{default}_calls_s"] / best_bare
    report(benchmark, bench_report, f"64 in flight (default transport: {default})", **figures)
    assert figures[f"engine_{default}_calls_s"] >= best_bare


class _Lookup:
    """An embedder that returns precomputed vectors (the real model ran offline)."""

    def __init__(self, table: dict[str, Any], dim: int) -> None:
        self.table = table
        self.dim = dim

    def embed(self, texts: Any) -> Any:
        import numpy as np

        return np.stack([self.table[t] for t in texts])


def _dataset() -> tuple[list[str], Any, str]:
    """Real prompts and their all-MiniLM-L6-v2 vectors when the shared set is there, else
    distinct random-word prompts with the HashingEmbedder (the source is reported)."""
    import gzip

    import numpy as np

    from benches._vectors_data import ROOT as DATA_ROOT

    env = os.environ.get("ENGINE_VECTORS_DATA")
    folder = Path(env) if env else DATA_ROOT.parent / "shared" / "data" / "vectors"
    texts = folder / "base_100k.texts.jsonl.gz"
    if texts.exists():
        with gzip.open(texts, "rt") as f:
            prompts = [orjson.loads(line) for line in f]
        vecs = np.load(folder / "base_100k.f16.npy").astype(np.float32)
        return prompts, vecs, "shared all-MiniLM-L6-v2 set"
    rng = random.Random(5)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))
             for _ in range(5000)]  # fmt: skip
    return (
        [f"Tell me about {' '.join(rng.choices(vocab, k=8))}?" for _ in range(100_000)],
        None,
        ("random words, HashingEmbedder"),
    )


@pytest.mark.timeout(1200)
def test_cache_hits_at_100k_entries(benchmark: Any, bench_report: list[str]) -> None:
    import numpy as np

    from engine.llm import ChatResult

    prompts, vecs, source = _dataset()
    n = len(prompts)
    rng = random.Random(5)
    probe = rng.sample(range(n), 500)
    variants = {i: prompts[i].lower().rstrip(".?!:") + " " for i in probe}
    embedder: Any = None
    if vecs is not None:
        table = dict(zip(prompts, vecs, strict=True))
        noise = np.random.default_rng(3)
        for i, v in variants.items():  # a paraphrase: cosine ~0.99 to the cached prompt
            x = vecs[i] + 0.01 * noise.standard_normal(vecs.shape[1]).astype(np.float32)
            table[v] = x / np.linalg.norm(x)
        embedder = _Lookup(table, vecs.shape[1])
    cache = LLMCache(ttl=None, max_entries=n + 10, embedder=embedder)
    keys = [cache_key(make_request(p, temperature=0), "m") for p in prompts]
    values = [_Cached(k.context, ChatResult(text=f"answer {i}")) for i, k in enumerate(keys)]
    cache.store.put_many(
        [k.text for k in keys], values, "llm:default", keys=[k.exact for k in keys],
        vectors=vecs,
    )  # fmt: skip
    cache.store._stores["llm:default"].wait()  # the background index build of the warm-up

    def lookups(variant: bool) -> tuple[list[float], int]:
        times, right = [], 0
        for i in probe:
            req = make_request(variants[i] if variant else prompts[i], temperature=0)
            t0 = time.perf_counter()
            hit = cache.get(req, "m")
            times.append(time.perf_counter() - t0)
            right += (
                hit is not None
                and hit[0].text == f"answer {i}"
                and (hit[1] == ("semantic" if variant else "exact"))
            )
        return times, right

    def run() -> dict[str, float]:
        lookups(False)
        exact, exact_ok = lookups(False)
        semantic, semantic_ok = lookups(True)
        return {
            "entries": float(len(cache)),
            "exact_p50_us": statistics.median(exact) * 1e6,
            "semantic_p50_us": statistics.median(semantic) * 1e6,
            "exact_correct": float(exact_ok),
            "semantic_correct": float(semantic_ok),
        }

    figures = benchmark.pedantic(run, rounds=1, iterations=1)
    report(benchmark, bench_report, f"cache hits at 100k entries, 500 probes ({source})", **figures)
    assert figures["exact_p50_us"] <= 20.0 and figures["exact_correct"] == 500
    if vecs is not None:  # the gate needs real embeddings (random words defeat any ANN index)
        assert figures["semantic_p50_us"] <= 250.0 and figures["semantic_correct"] >= 490
