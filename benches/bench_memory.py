"""Memory benchmarks (pytest-benchmark): the engine's VectorStore against hnswlib in the
same run, the native glue against its reference twin, GIL release, semantic cache hits.

    make bench PYTEST_ARGS="-k memory"          # or: pytest benches/bench_memory.py
    python benches/memory_table.py              # the full per-index table (docs/performance.md)

Data: the real 100k x 384 set when present (benches/_vectors_data.py), first 20k vectors.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import faiss
import numpy as np
import pytest

from benches._vectors_data import Dataset, alternating_times, load, recall_at
from engine.memory import SemanticCache, VectorStore, _vectors_py
from engine.memory._native import NATIVE

N = 20_000
_MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    d = load()
    d.base = d.base[:N]
    _, d.gt = faiss.knn(d.queries, d.base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    return d


@pytest.fixture(scope="module")
def store(ds: Dataset) -> VectorStore:
    vs = VectorStore(ds.base.shape[1], target_recall=0.95, background=False)
    vs.add(np.arange(len(ds.base)), ds.base)
    return vs


def _cycle(q: np.ndarray) -> Any:
    i = [0]

    def next_q() -> np.ndarray:
        i[0] = (i[0] + 1) % len(q)
        return q[i[0] : i[0] + 1]

    return next_q


@pytest.mark.benchmark(group="memory-single-query")
def test_engine_single_query(benchmark: Any, ds: Dataset, store: VectorStore) -> None:
    nxt = _cycle(ds.queries)
    benchmark(lambda: store.search(nxt(), k=10))
    found, _ = store.search(ds.queries, k=10)
    benchmark.extra_info["recall@10"] = recall_at(found, ds.gt)
    assert benchmark.extra_info["recall@10"] >= 0.95
    _MEDIANS["engine"] = benchmark.stats.stats.median


@pytest.fixture(scope="module")
def peer(ds: Dataset, store: VectorStore) -> tuple[Any, int, float]:
    """hnswlib M16 with its ``ef`` raised until it matches the engine's recall."""
    hnswlib = pytest.importorskip("hnswlib")
    p = hnswlib.Index(space="ip", dim=ds.base.shape[1])
    p.init_index(max_elements=len(ds.base), M=16, ef_construction=100, random_seed=1)
    p.add_items(ds.base)
    found, _ = store.search(ds.queries, k=10)
    want = recall_at(found, ds.gt)
    for ef in (16, 24, 32, 40, 48, 56, 64, 80, 96, 128):  # same recall as the engine
        p.set_ef(ef)
        rec = recall_at(p.knn_query(ds.queries, k=10)[0].astype(np.int64), ds.gt)
        if rec >= want:
            break
    return p, ef, rec


@pytest.mark.benchmark(group="memory-single-query")
def test_hnswlib_single_query(
    benchmark: Any,
    ds: Dataset,
    store: VectorStore,
    peer: tuple[Any, int, float],
    bench_report: list[str],
) -> None:
    """Gate (issue 6): the engine's single-query median is no slower than hnswlib's at the
    same recall."""
    p, ef, rec = peer
    p.set_num_threads(1)
    nxt = _cycle(ds.queries)
    benchmark(lambda: p.knn_query(nxt(), k=10))
    benchmark.extra_info.update({"recall@10": rec, "ef": ef})
    if "engine" in _MEDIANS:
        ratio = benchmark.stats.stats.median / _MEDIANS["engine"]
        bench_report.append(
            f"memory: single-query median, hnswlib M16 ef{ef} (recall {rec:.3f}) / engine "
            f"= {ratio:.2f}x at {N:,} vectors"
        )
    # The gate compares interleaved timings (engine query i, then hnswlib query i): a load
    # burst on the shared host hits both sides alike. The two benchmarks above run minutes
    # apart in the worst case and once gave 0.73x next to 1.25x and 1.60x in the runs
    # before and after (2026-11-21).
    paired = _paired_single_ratio(store, p, ds.queries)
    bench_report.append(f"memory: single-query p50, interleaved, hnswlib / engine = {paired:.2f}x")
    assert paired >= 1.0, f"engine single query {paired:.2f}x hnswlib's speed (interleaved)"


def _paired_single_ratio(store: VectorStore, p: Any, q: np.ndarray, rounds: int = 3) -> float:
    eng, peer = alternating_times(store, p, q, rounds=rounds)
    return float(np.median(peer) / np.median(eng))


@pytest.mark.benchmark(group="memory-batch")
def test_engine_batch(benchmark: Any, ds: Dataset, store: VectorStore) -> None:
    benchmark.pedantic(lambda: store.search(ds.queries, k=10), rounds=5, warmup_rounds=1)
    _MEDIANS["engine-batch"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group="memory-batch")
def test_hnswlib_batch(
    benchmark: Any, ds: Dataset, peer: tuple[Any, int, float], bench_report: list[str]
) -> None:
    """Gate (issue 6): batch throughput (all queries in one call, every core) >= hnswlib's."""
    p, ef, _ = peer
    p.set_num_threads(os.cpu_count() or 1)
    benchmark.pedantic(lambda: p.knn_query(ds.queries, k=10), rounds=5, warmup_rounds=1)
    if "engine-batch" in _MEDIANS:
        ratio = benchmark.stats.stats.median / _MEDIANS["engine-batch"]
        bench_report.append(
            f"memory: batch of {len(ds.queries)} median, hnswlib M16 ef{ef} / engine "
            f"= {ratio:.2f}x at {N:,} vectors"
        )
        assert ratio >= 1.0, f"engine batch throughput {ratio:.2f}x hnswlib's"


@pytest.mark.benchmark(group="memory-glue")
@pytest.mark.quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_filter_bitmap(benchmark: Any, impl: str) -> None:
    mod = NATIVE if impl == "native" else _vectors_py
    if mod is None:
        pytest.skip("native extension not built")
    n = 100_000
    ns = (np.arange(n) % 100).astype(np.int32)
    alive = np.full(n // 8 + 8, 255, np.uint8)
    out = np.zeros_like(alive)
    assert benchmark(mod.filter_bitmap, ns, 7, alive, out) == 1000


@pytest.mark.benchmark(group="memory-gil")
@pytest.mark.parametrize("mode", ["loop", "threads"])
def test_gil_normalize(benchmark: Any, mode: str) -> None:
    """Threads vs loop over the same native work: with the GIL released, threads win."""
    if NATIVE is None:
        pytest.skip("native extension not built")
    x = np.random.default_rng(0).standard_normal((4, 20_000, 384)).astype(np.float32)

    def loop() -> None:
        for i in range(4):
            NATIVE.normalize(x[i])

    def threads() -> None:
        ts = [
            threading.Thread(target=lambda j=j: [NATIVE.normalize(x[i]) for i in range(j, 4, 2)])
            for j in range(2)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    benchmark.pedantic(loop if mode == "loop" else threads, rounds=5, iterations=1)


@pytest.mark.benchmark(group="memory-cache")
def test_semantic_cache_hit(benchmark: Any, ds: Dataset) -> None:
    class Fixed:
        dim = ds.base.shape[1]

        def embed(self, texts: Any) -> np.ndarray:
            raise AssertionError("vectors are passed explicitly")

    cache = SemanticCache(Fixed(), max_entries=len(ds.base))  # type: ignore[arg-type]
    n = len(ds.base)
    cache.put_many([f"p{i}" for i in range(n)], list(range(n)), vectors=ds.base)
    cache._stores["response"].wait()
    rng = np.random.default_rng(1)
    near = ds.base[:1000] + 0.01 * rng.standard_normal((1000, ds.base.shape[1])).astype(np.float32)
    i = [0]

    def hit() -> Any:
        i[0] = (i[0] + 1) % 1000
        return cache.lookup("paraphrase", vector=near[i[0]])

    assert benchmark(hit) is not None
