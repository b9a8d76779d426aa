"""Print the memory benchmark table: every index kind side by side with hnswlib, same run.

    python benches/memory_table.py                  # all sections (a few minutes at 100k)
    python benches/memory_table.py --n 20000 --sections table

Columns: bytes per vector, all in (the store: FAISS index + id map + per-slot arrays; hnswlib:
its saved index, labels included), the FAISS index alone, build
time (including self-tuning), single-query p50/p99 over 500 queries, batch QPS over all
queries (FAISS and hnswlib each on all cores), recall@10 against exact ``IndexFlatIP``
ground truth on held-out queries. hnswlib's ``ef`` is raised until it matches the engine
default's recall ("same recall"). Data: see benches/_vectors_data.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benches._vectors_data import Dataset, alternating_times, load, recall_at
from engine.memory import SemanticCache, VectorStore, _index
from engine.memory._native import NATIVE, VPy

F = np.float32
NQ_SINGLE = 500


def pct(ts: list[float], p: float) -> float:
    return float(np.percentile(ts, p)) * 1e6


def single(fn: Callable[[np.ndarray], Any], q: np.ndarray, n: int = NQ_SINGLE) -> list[float]:
    for i in range(20):
        fn(q[i : i + 1])
    ts = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        fn(q[i : i + 1])
        ts.append(time.perf_counter() - t)
    return ts


def batch_qps(fn: Callable[[np.ndarray], Any], q: np.ndarray) -> float:
    fn(q[:50])
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        fn(q)
        best = max(best, len(q) / (time.perf_counter() - t))
    return best


def row(
    name: str, bpv: float, build: float, ts: list[float], qps: float, rec: float
) -> dict[str, Any]:
    return {
        "index": name,
        "B/vector": bpv,
        "index B/vector": bpv,
        "build s": build,
        "p50 µs": pct(ts, 50),
        "p99 µs": pct(ts, 99),
        "batch QPS": qps,
        "recall@10": rec,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                v = f"{v:.3f}" if "recall" in c else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
            cells.append(str(v))
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def engine_row(
    name: str, kind: str, ds: Dataset, gt: np.ndarray
) -> tuple[dict[str, Any], VectorStore]:
    t = time.perf_counter()
    vs = VectorStore(ds.base.shape[1], index=kind, target_recall=0.95, background=False)
    ids = np.arange(len(ds.base))
    small = ids % 100 == 7  # a namespace holding 1% (used by the filtered section)
    vs.add(ids[small], ds.base[small], namespace="one-percent")
    vs.add(ids[~small], ds.base[~small], namespace="rest")
    build = time.perf_counter() - t
    found, _ = vs.search(ds.queries, k=10)
    st = vs.stats()
    walk = ", native walk" if st["walk"] == "native" else ""
    label = f"{name}: {st['description']} {st['params'] or ''}{walk}".strip()
    exhaustive = kind in ("flat", "sq8")  # milliseconds per query: fewer of them
    r = row(
        label,
        st["bytes_per_vector"],
        build,
        single(lambda q: vs.search(q, k=10), ds.queries, 100 if exhaustive else NQ_SINGLE),
        batch_qps(lambda q: vs.search(q, k=10), ds.queries),
        recall_at(found, gt),
    )
    r["index B/vector"] = st["index_bytes_per_vector"]
    r["est. recall"] = st["recall_estimate"]
    return r, vs


def hnswlib_row(ds: Dataset, gt: np.ndarray, want: float, m: int) -> dict[str, Any] | None:
    try:
        import hnswlib
    except ImportError:
        print("hnswlib not installed (pip install 'agent-engine[compare]'): peer skipped")
        return None
    n, dim = ds.base.shape
    t = time.perf_counter()
    p = hnswlib.Index(space="ip", dim=dim)
    p.init_index(max_elements=n, M=m, ef_construction=100, random_seed=1)
    p.set_num_threads(os.cpu_count() or 1)
    p.add_items(ds.base, np.arange(n))
    build = time.perf_counter() - t
    chosen = None
    for ef in (10, 16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 128, 160, 192, 256):
        p.set_ef(ef)
        labels, _ = p.knn_query(ds.queries, k=10)
        rec = recall_at(labels.astype(np.int64), gt)
        chosen = (ef, rec)
        if rec >= want:
            break
    assert chosen is not None
    ef, rec = chosen
    p.set_ef(ef)
    with tempfile.TemporaryDirectory() as d:
        p.save_index(f"{d}/h.bin")
        bpv = os.path.getsize(f"{d}/h.bin") / n
    p.set_num_threads(1)
    ts = single(lambda q: p.knn_query(q, k=10), ds.queries)
    p.set_num_threads(os.cpu_count() or 1)
    qps = batch_qps(lambda q: p.knn_query(q, k=10), ds.queries)
    r = row(f"hnswlib M{m} ef{ef} (same recall)", bpv, build, ts, qps, rec)
    r["est. recall"] = float("nan")
    p.set_num_threads(1)
    r["_peer"] = p  # for the interleaved comparison (not a column)
    return r


def interleaved(
    vs: VectorStore, peer: Any, q: np.ndarray, n: int = NQ_SINGLE
) -> tuple[float, float]:
    """p50 µs of the store and of hnswlib, timed in alternation (see alternating_times)."""
    eng, other = alternating_times(vs, peer, q, n)
    return pct(eng, 50), pct(other, 50)


def section_table(ds: Dataset, gt: np.ndarray, kinds: list[str]) -> VectorStore | None:
    print(f"\n### Index kinds at {len(ds.base):,} x {ds.base.shape[1]} ({ds.source})\n")
    rows = []
    auto = None
    for kind in kinds:
        r, vs = engine_row(kind, kind, ds, gt)
        rows.append(r)
        print(f"  measured {r['index']}", file=sys.stderr)
        if kind == "auto":
            auto = vs
        else:
            del vs
    want = next((r["recall@10"] for r in rows if r["index"].startswith("auto")), 0.95)
    for m in (16,):
        peer = hnswlib_row(ds, gt, want, m)
        if peer is not None:
            p = peer.pop("_peer")
            rows.append(peer)
    print_table(rows)
    if auto is not None and peer is not None:
        e, h = interleaved(auto, p, ds.queries)
        print(
            f"\n- single queries timed in alternation: auto p50 {e:.0f} µs, "
            f"{peer['index'].split(' (')[0]} p50 {h:.0f} µs (hnswlib / auto = {h / e:.2f}x)"
        )
    return auto


def section_small(ds: Dataset) -> None:
    n = 10_000
    base = ds.base[:n]
    _, gt = faiss.knn(ds.queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    vs = VectorStore(base.shape[1], target_recall=0.95, background=False)
    vs.add(np.arange(n), base)
    found, _ = vs.search(ds.queries, k=10)
    ts = single(lambda q: vs.search(q, k=10), ds.queries)
    st = vs.stats()
    print(f"\n### 10k vectors (auto -> {st['description']} {st['params']})\n")
    print(
        f"- recall@10 {recall_at(found, gt):.3f}, single-query p50 {pct(ts, 50):.0f} µs, "
        f"p99 {pct(ts, 99):.0f} µs"
    )


def section_filtered(vs: VectorStore, ds: Dataset, gt: np.ndarray) -> None:
    n = len(ds.base)
    ids = np.arange(n)
    small = ids % 100 == 7  # the namespace holding 1% of the vectors (see engine_row)
    sub = ds.base[small]
    _, sub_gt = faiss.knn(ds.queries, sub, 10, metric=faiss.METRIC_INNER_PRODUCT)
    sub_gt = ids[small][sub_gt]
    found, _ = vs.search(ds.queries, k=10, namespace="one-percent")
    rec_f = recall_at(found, sub_gt)
    ts_f = single(lambda q: vs.search(q, k=10, namespace="one-percent"), ds.queries)
    found_u, _ = vs.search(ds.queries, k=10)
    ts_u = single(lambda q: vs.search(q, k=10), ds.queries)
    # a broad filter: the 99% namespace as a bitmap (IDSelectorBitmap, or the native walk's)
    found_r, _ = vs.search(ds.queries, k=10, namespace="rest")
    _, rest_gt = faiss.knn(ds.queries, ds.base[~small], 10, metric=faiss.METRIC_INNER_PRODUCT)
    rec_r = recall_at(found_r, ids[~small][rest_gt])
    ts_r = single(lambda q: vs.search(q, k=10, namespace="rest"), ds.queries)
    print(f"\n### Filtered search at {n:,} (namespace of 1% = {small.sum():,} vectors)\n")
    print("| search | recall@10 | p50 µs | p99 µs |\n|---|---|---|---|")
    print(
        f"| unfiltered | {recall_at(found_u, gt):.3f} | {pct(ts_u, 50):.0f} | {pct(ts_u, 99):.0f} |"
    )
    print(f"| namespace 1% | {rec_f:.3f} | {pct(ts_f, 50):.0f} | {pct(ts_f, 99):.0f} |")
    print(
        f"| namespace 99% (bitmap inside the search) | {rec_r:.3f} | {pct(ts_r, 50):.0f} | "
        f"{pct(ts_r, 99):.0f} |"
    )


def section_online(vs: VectorStore, ds: Dataset) -> None:
    n, dim = ds.base.shape
    rng = np.random.default_rng(7)
    new = ds.base[:10_000] + 0.05 * rng.standard_normal((10_000, dim)).astype(F)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    new_ids = np.arange(n, n + 10_000)
    stop = threading.Event()
    ts: list[float] = []

    def searcher() -> None:
        i = 0
        while not stop.is_set():
            q = ds.queries[i % len(ds.queries) : i % len(ds.queries) + 1]
            t = time.perf_counter()
            vs.search(q, k=10)
            ts.append(time.perf_counter() - t)
            i += 1

    th = threading.Thread(target=searcher)
    th.start()
    t0 = time.perf_counter()
    for lo in range(0, 10_000, 500):
        vs.add(new_ids[lo : lo + 500], new[lo : lo + 500])
    took = time.perf_counter() - t0
    stop.set()
    th.join()
    found, _ = vs.search(new, k=10)
    top1 = float(np.mean(found[:, 0] == new_ids))
    in10 = float(np.mean([new_ids[i] in found[i] for i in range(len(new))]))
    print(f"\n### Online: adding 10,000 vectors to the trained {n:,} store\n")
    print(
        f"- add took {took:.1f} s in 20 batches; {len(ts):,} searches served meanwhile: "
        f"p50 {pct(ts, 50):.0f} µs, p99 {pct(ts, 99):.0f} µs"
    )
    print(f"- new vectors found: top-1 {top1:.3f}, in top-10 {in10:.3f}")


def section_sweep(ds: Dataset) -> None:
    """The native walk vs FAISS's own search on the same index vs hnswlib, one thread each,
    raw calls (no store), over a range of beams: the single-query frontier."""
    n = min(50_000, len(ds.base))
    x = ds.base[:n]
    _, gt = faiss.knn(ds.queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    index = _index._new_index("hnsw", x.shape[1], "ip", n)[0]
    index.train(x)
    index.add(x)
    walk = _index._HNSW.HnswSQ8(*_index.graph_arrays(index, "ip")) if _index._HNSW else None
    try:
        import hnswlib
    except ImportError:
        hnswlib = None
    if hnswlib is not None:
        p = hnswlib.Index(space="ip", dim=x.shape[1])
        p.init_index(max_elements=n, M=16, ef_construction=100, random_seed=1)
        p.set_num_threads(os.cpu_count() or 1)
        p.add_items(x, np.arange(n))
        p.set_num_threads(1)
    print(f"\n### Single-query sweep at {n:,}: native walk / FAISS index.search / hnswlib M16\n")
    head = ("efSearch / ef", "native walk: recall, p50", "FAISS: recall, p50", "hnswlib")
    print("| " + " | ".join(head) + " |")
    print("|---:|---|---|---|")
    k = 10
    out_d = np.empty((len(ds.queries), k), np.float32)
    out_i = np.empty((len(ds.queries), k), np.int64)
    o_d, o_i = out_d[:1].copy(), out_i[:1].copy()
    with _index.single_thread():
        for ef in (32, 48, 64, 80, 96):
            cells = [str(ef)]
            if walk is not None:
                walk.search(ds.queries, k, ef, out_d, out_i)
                ts = single(lambda q, ef=ef: walk.search(q, k, ef, o_d, o_i), ds.queries)
                cells.append(f"{recall_at(out_i, gt):.3f}, {pct(ts, 50):.0f} µs")
            else:
                cells.append("-")
            params = _index._faiss.SearchParametersHNSW()
            params.efSearch = ef
            _, found = index.search(ds.queries, k, params=params)
            ts = single(lambda q, pr=params: index.search(q, k, params=pr), ds.queries)
            cells.append(f"{recall_at(found, gt):.3f}, {pct(ts, 50):.0f} µs")
            if hnswlib is not None:
                p.set_ef(ef)
                found = p.knn_query(ds.queries, k=k)[0].astype(np.int64)
                ts = single(lambda q: p.knn_query(q, k=k), ds.queries)
                cells.append(f"{recall_at(found, gt):.3f}, {pct(ts, 50):.0f} µs")
            else:
                cells.append("-")
            print("| " + " | ".join(cells) + " |", flush=True)


def section_gil() -> None:
    x = np.random.default_rng(0).standard_normal((8, 20_000, 384)).astype(F)
    print("\n### GIL release (normalise 8 x 20k x 384 float32: loop vs 2 threads)\n")
    for name, mod in (("native", NATIVE), ("py twin", VPy)):
        if mod is None:
            continue
        loop = par = math.inf
        for _ in range(3):  # best of 3: the machine is shared
            a = x.copy()
            t = time.perf_counter()
            for i in range(8):
                mod.normalize(a[i])
            loop = min(loop, time.perf_counter() - t)
            a = x.copy()

            def work(lo: int, arr: np.ndarray = a, m: Any = mod) -> None:
                for i in range(lo, 8, 2):
                    m.normalize(arr[i])

            threads = [threading.Thread(target=work, args=(j,)) for j in range(2)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            par = min(par, time.perf_counter() - t)
        print(
            f"- {name}: loop {loop * 1e3:.0f} ms, 2 threads {par * 1e3:.0f} ms, "
            f"speed-up x{loop / par:.2f}"
        )


def section_cache(ds: Dataset) -> None:
    n, dim = ds.base.shape

    class _Fixed:  # prompts come with their vectors here; the embedder is not measured
        dim = ds.base.shape[1]

        def embed(self, texts: Any) -> np.ndarray:
            raise AssertionError("vectors are passed explicitly")

    cache = SemanticCache(_Fixed(), max_entries=n)  # type: ignore[arg-type]
    t = time.perf_counter()
    cache.put_many([f"prompt {i}" for i in range(n)], list(range(n)), vectors=ds.base)
    build = time.perf_counter() - t
    cache._stores["response"].wait()
    rng = np.random.default_rng(3)
    rows = rng.choice(n, 500, replace=False)
    near = ds.base[rows] + 0.01 * rng.standard_normal((500, dim)).astype(F)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    ts, hits = [], 0
    for j, r in enumerate(rows):
        t = time.perf_counter()
        h = cache.lookup(f"paraphrase {j}", vector=near[j])
        ts.append(time.perf_counter() - t)
        hits += h is not None and h.value == r
    ex = []
    for r in rows:
        t = time.perf_counter()
        cache.lookup(f"prompt {r}")
        ex.append(time.perf_counter() - t)
    print(f"\n### Semantic cache with {len(cache):,} entries (filled in {build:.1f} s)\n")
    print(
        f"- semantic hit (cos ~0.99, vector given): p50 {pct(ts, 50):.0f} µs, "
        f"p99 {pct(ts, 99):.0f} µs, correct hits {hits}/500"
    )
    print(f"- exact-prompt hit: p50 {pct(ex, 50):.1f} µs, p99 {pct(ex, 99):.1f} µs")


SECTIONS = ("table", "small", "filtered", "online", "gil", "cache", "sweep")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="use the first N base vectors (0 = all)")
    ap.add_argument("--kinds", default="auto,ivfpq,sq8,flat")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args(argv)
    ds = load()
    if args.n and args.n < len(ds.base):
        ds.base = ds.base[: args.n]
        _, ds.gt = faiss.knn(ds.queries, ds.base, 100, metric=faiss.METRIC_INNER_PRODUCT)
    gt = ds.gt[:, :10]
    sections = args.sections.split(",")
    print(
        f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}, "
        f"native glue {'yes' if NATIVE is not None else 'no'}"
    )
    auto = None
    if "table" in sections:
        auto = section_table(ds, gt, args.kinds.split(","))
    if "small" in sections:
        section_small(ds)
    if auto is None and ("filtered" in sections or "online" in sections):
        _, auto = engine_row("auto", "auto", ds, gt)
    if "filtered" in sections:
        assert auto is not None
        section_filtered(auto, ds, gt)
    if "online" in sections:
        assert auto is not None
        section_online(auto, ds)
    if "gil" in sections:
        section_gil()
    if "cache" in sections:
        section_cache(ds)
    if "sweep" in sections:
        section_sweep(ds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
