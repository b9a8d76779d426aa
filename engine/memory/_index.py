"""Build, tune and query the FAISS index behind a :class:`~engine.memory.VectorStore`.

Every index here uses *sequential* FAISS ids (row ``i`` of the build matrix is FAISS id
``i`` = the store's slot), so ``IndexRefine`` and ``IndexHNSW`` (which cannot map ids) work
unchanged; removal is a tombstone bit in the store's alive bitmap, applied through
``faiss.IDSelectorBitmap``, and compaction happens at re-build time.

Kinds (see docs/memory.md for the measurements behind the default):
  ``flat``   exact ``IndexFlat``                                      4·d B/vector
  ``ivfpq``  IVF + PQ fast-scan (4-bit, d/4 sub-quantisers) with SQ8 re-rank (``IndexRefine``)
             ~1.2·d B/vector; tuned: ``nprobe``, ``k_factor``
  ``hnsw``   HNSW12 (22 links at level 0) over SQ8 (efConstruction 160)  ~1.27·d B/vector;
             tuned: ``efSearch``; single queries walk it natively (ext/_hnsw.pyx)
  ``sq8``    flat 8-bit scalar quantiser (exact scan of codes)       d B/vector
  anything else goes to ``faiss.index_factory`` (not tuned: parameters stay as built).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from engine._native import pick
from engine.memory import _hnsw_py

# The native walk over FAISS's HNSW graph (ext/_hnsw.pyx); None when extensions are off,
# and then HNSW searches go through FAISS's own index.search (same ids, slower): the twin
# (_hnsw_py) is the tests' oracle, too slow to serve.
_HNSW: ModuleType | None = pick("_hnsw", None, None)[0]

__all__ = [
    "Built",
    "build",
    "exact_topk",
    "graph_arrays",
    "make_params",
    "reconstruct",
    "single_thread",
    "walker",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
KINDS = ("flat", "ivfpq", "hnsw", "sq8")
HNSW_M = 12
# Level-0 links (FAISS's default is 2*M = 24): 22 saves 8 B/vector, which keeps the index
# plus the store's id map and per-slot arrays under 512 B/vector, for ~10% more beam at
# equal recall (50k real vectors, native walk: efSearch 64 -> R 0.962 with 24 links,
# 0.956 with 22, 0.949 with 20; benches/memory_table.py sweep, 2026-11).
HNSW_LINKS0 = 22
# PERF: efConstruction 160 builds a graph needing efSearch 64 where 80 needed 80 for the
# same tuned recall at 100k (store p50 93 vs 108 µs alone, 123 vs 135-151 µs interleaved
# with hnswlib; build 21 s vs 10-15 s on 2 cores; 100k real set, store and hnswlib timed
# per query in alternation, 2026-11-21). Before the native walk the beam was cheap next
# to FAISS's per-query overhead and 80 was kept for build time.
HNSW_EF_CONSTRUCTION = 160
_faiss: Any = faiss  # the bundled stubs miss a few classes and mistype IndexHNSWSQ


@dataclass
class Built:
    """A built index and how to search it."""

    index: Any
    kind: str
    description: str
    params: dict[str, int] = field(default_factory=dict)
    recall: float | None = None  # estimated recall@k on the store's own data
    trained_on: int = 0
    build_seconds: float = 0.0
    order: I64 | None = None  # FAISS id i holds row order[i] of the build matrix
    _plain: tuple[Any, list[Any]] | None = None
    _walk: Any = None  # the native walker over this index (hnsw kind), built on first use
    _codes: tuple[str, Any, Any, Any] | None = None  # codes_of(), taken on first use

    def plain_params(self) -> tuple[Any, list[Any]]:
        """The unfiltered search parameters, built once (read-only, shared by threads)."""
        if self._plain is None:
            self._plain = make_params(self.kind, self.params, None)
        return self._plain

    def codes(self) -> tuple[str, Any, Any, Any]:
        """:func:`codes_of` this (installed, never mutated) index, taken once."""
        if self._codes is None:
            self._codes = codes_of(self.index, self.kind)
        return self._codes

    def grown(self) -> None:
        """The index took more vectors: drop the views of it taken so far (walker, codes)."""
        self._walk = self._codes = None

    def with_index(self, index: Any) -> Built:
        """The same kind and tuning over ``index`` (a grown copy of this one), no views yet."""
        return replace(self, index=index, _walk=None, _codes=None)


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def nlist_for(n: int) -> int:
    """Inverted lists: ~4·sqrt(n), with >= 40 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 40))


def pq_m_for(dim: int) -> int:
    """PQ sub-quantisers for 4-bit fast-scan: the largest divisor of ``dim`` <= dim/4 (2 dims
    per byte) — 96 for 384-d, so 48 B of codes per vector."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _new_index(kind: str, dim: int, metric: str, n: int) -> tuple[Any, str]:
    fm = faiss_metric(metric)
    if kind == "flat":
        return (faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)), "Flat"
    if kind == "ivfpq":
        nlist = nlist_for(n)
        m = pq_m_for(dim)
        base = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x4fs", fm)
        refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, fm)
        index = faiss.IndexRefine(base, refine)  # the SWIG wrapper keeps base/refine alive
        return index, f"IVF{nlist},PQ{m}x4fs+SQ8 re-rank"
    if kind == "hnsw":
        # M=12 keeps links (2M int32 at level 0) + SQ8 codes under d*4/3 bytes at 384-d
        index = _faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, fm)
        index.hnsw.set_nb_neighbors(0, HNSW_LINKS0)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, f"HNSW{HNSW_M},SQ8"
    if kind == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, fm), "SQ8"
    return faiss.index_factory(dim, kind, fm), kind


def _train_sample(x: F32, kind: str, n: int, rng: np.random.Generator) -> F32:
    want = max(40 * nlist_for(n), 20_000) if kind == "ivfpq" else 50_000
    if len(x) <= want:
        return x
    rows = np.sort(rng.choice(len(x), want, replace=False))
    return np.ascontiguousarray(x[rows])


def build(
    kind: str,
    x: F32,
    metric: str,
    target_recall: float,
    *,
    k: int = 10,
    tune_queries: int = 200,
    margin: float = 0.01,
    seed: int = 0,
) -> Built:
    """Train ``kind`` on ``x`` (n, d), add every row, tune to ``target_recall``.

    ``tune_queries`` random rows are held out: the index is built on the others, tuned with
    the held-out rows as queries (exact answers from ``faiss.knn``), then they are added
    last. (Rows already in the index make easy queries: HNSW links and IVF cells are built
    around them, so tuning on them overestimates recall.) ``built.order`` says which row
    each FAISS id holds.
    """
    t0 = time.perf_counter()
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    index, desc = _new_index(kind, dim, metric, n)
    held = min(tune_queries, n // 10) if kind != "flat" and n >= 20 * (k + 1) else 0
    if held:
        perm = rng.permutation(n)
        order = np.concatenate([np.sort(perm[held:]), np.sort(perm[:held])]).astype(np.int64)
        x = x[order]
    else:
        order = np.arange(n, dtype=np.int64)
    if not index.is_trained:
        index.train(_train_sample(x, kind, n, rng))
    step = 65_536
    for lo in range(0, n - held, step):
        index.add(x[lo : min(lo + step, n - held)])
    built = Built(index, kind, desc, trained_on=n, order=order)
    if kind == "flat":
        built.recall = 1.0
    elif held:
        _tune(built, x[: n - held], x[n - held :], metric, min(target_recall + margin, 1.0), k)
    if held:
        index.add(x[n - held :])
    built.build_seconds = time.perf_counter() - t0
    return built


def exact_topk(q: F32, x: F32, k: int, metric: str) -> tuple[F32, I64]:
    """Exact top-``k`` of ``q`` against ``x`` (rows as ids), FAISS-ordered."""
    k = min(k, len(x))
    if metric == "l2":
        d, i = faiss.knn(q, x, k, metric=faiss.METRIC_L2)
    else:
        d, i = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return d, i


def _recall(found: I64, truth: I64, k: int) -> float:
    hits = 0
    for row, t in zip(found, truth, strict=True):
        hits += len(set(row[:k].tolist()) & set(t[:k].tolist()))
    return hits / (k * len(found))


class single_thread:
    """Run FAISS on one OpenMP thread in the calling thread (the ICV is per thread).

    A single query gains nothing from a thread team, and on a busy machine the team's
    barrier waits for a descheduled thread: p99 x10 (benches/memory_table.py, 2026-11)."""

    def __enter__(self) -> None:
        self._prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self._prev)


def _tune(built: Built, x: F32, q: F32, metric: str, target: float, k: int) -> None:
    """Pick the fastest search parameters whose recall@k for the held-out queries ``q``
    against ``x`` (exact answers from ``faiss.knn``) meets ``target``."""
    nq = len(q)
    _, truth = exact_topk(q, x, k, metric)

    # HNSW is tuned on the walk that will serve it (the native one when built: same ids as
    # FAISS's at equal efSearch, checked by tests/test_memory_hnsw.py)
    arrays = graph_arrays(built.index, metric) if built.kind == "hnsw" and _HNSW else None
    walk = _HNSW.HnswSQ8(*arrays) if arrays is not None and _HNSW is not None else None

    def recall_of(params: dict[str, int]) -> float:
        if walk is not None:
            found = np.empty((nq, k), np.int64)
            walk.search(q, k, params["efSearch"], np.empty((nq, k), np.float32), found)
            return _recall(found, truth, k)
        p, _keep = make_params(built.kind, params, None)
        _, found = built.index.search(q, k, params=p)
        return _recall(found, truth, k)

    grids: list[dict[str, int]] = []
    if built.kind == "ivfpq":
        nlist = faiss.extract_index_ivf(built.index.base_index).nlist
        grid = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
        probes = [p for p in grid if p < nlist]
        probes.append(nlist)
        for kf in (2, 4, 8, 16, 32):
            for p in probes:
                grids.append({"nprobe": p, "k_factor": kf})
    elif built.kind == "hnsw":
        for ef in (16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256, 384, 512):
            grids.append({"efSearch": max(ef, k + 1)})
    else:
        built.recall = recall_of({})
        return
    # recall grows with nprobe/efSearch: for each k_factor keep the cheapest passing setting
    passing: list[tuple[dict[str, int], float]] = []
    best: tuple[dict[str, int], float] | None = None
    seen_kf: set[int] = set()
    for params in grids:
        kf = params.get("k_factor", 0)
        if kf in seen_kf:
            continue
        r = recall_of(params)
        if best is None or r > best[1]:
            best = (params, r)
        if r >= target:
            passing.append((params, r))
            seen_kf.add(kf)
    assert best is not None
    if not passing:
        built.params, built.recall = best
        return
    # time the candidates on single queries (the latency the target trades against)
    timed: list[tuple[float, dict[str, int], float]] = []
    for params, r in passing:
        if len(passing) == 1:
            timed.append((0.0, params, r))
            break
        p, _keep = make_params(built.kind, params, None)
        with single_thread():
            t = time.perf_counter()
            for i in range(min(nq, 64)):
                built.index.search(q[i : i + 1], k, params=p)
            timed.append((time.perf_counter() - t, params, r))
    timed.sort(key=lambda t: t[0])
    _, built.params, built.recall = timed[0]


def make_params(
    kind: str, params: dict[str, int], sel: Any, selectivity: float = 1.0
) -> tuple[Any, list[Any]]:
    """FAISS search parameters for ``kind`` with the selector ``sel`` (or None).

    A filter passing a fraction ``selectivity`` of the vectors widens the search by
    1/sqrt(selectivity) (more lists probed / a larger HNSW beam): the filtered neighbours
    lie farther away than the unfiltered ones the parameters were tuned for.
    Returns ``(params, keepalive)``: SWIG parameter objects hold raw pointers, so the caller
    keeps ``keepalive`` referenced until the search returns.
    """
    widen = 1.0 / math.sqrt(max(selectivity, 1e-6))
    if kind == "ivfpq":
        base = faiss.SearchParametersIVF()
        base.nprobe = math.ceil(params.get("nprobe", 1) * widen)
        if sel is not None:
            base.sel = sel
        p = faiss.IndexRefineSearchParameters()
        p.k_factor = float(params.get("k_factor", 4))
        p.base_index_params = base
        return p, [base, sel]
    if kind == "hnsw":
        p = _faiss.SearchParametersHNSW()
        p.efSearch = math.ceil(params.get("efSearch", 16) * widen)
        if sel is not None:
            p.sel = sel
        return p, [sel]
    if sel is None:
        return None, []
    p = _faiss.SearchParameters()
    p.sel = sel
    return p, [sel]


def codes_of(index: Any, kind: str) -> tuple[str, Any, Any, Any]:
    """Where a subset can be scored without decoding: ``("sq8", codes, vmin, vdiff)`` for
    8-bit scalar-quantised storage, ``("f32", rows, None, None)`` for flat storage, or
    ``("other", None, None, None)`` (then :func:`reconstruct`). Views are zero-copy and
    valid until the index grows."""
    if kind == "flat":
        rows = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
        return "f32", rows.reshape(index.ntotal, index.d), None, None
    src = {"hnsw": "storage", "ivfpq": "refine_index"}.get(kind)
    sq = faiss.downcast_index(getattr(index, src)) if src else index
    if isinstance(sq, faiss.IndexScalarQuantizer) and sq.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        d = sq.d
        trained = faiss.vector_to_array(sq.sq.trained).astype(np.float32)
        codes = faiss.rev_swig_ptr(sq.codes.data(), sq.ntotal * sq.code_size)
        return "sq8", codes.reshape(sq.ntotal, sq.code_size), trained[:d], trained[d:]
    return "other", None, None, None


def reconstruct(index: Any, kind: str, slots: I64) -> F32:
    """Decoded vectors of ``slots`` (exact for flat, SQ8-decoded for quantised kinds)."""
    src = index.refine_index if kind == "ivfpq" else index
    out: F32 = src.reconstruct_batch(slots)
    return out


def graph_arrays(index: Any, metric: str) -> tuple[Any, ...] | None:
    """Zero-copy views of an ``IndexHNSWSQ`` (8-bit) graph and codes, in the argument order
    of ``HnswSQ8(...)``; None for any other index. Valid while ``index`` is not mutated."""
    if not isinstance(index, faiss.IndexHNSW):
        return None
    storage = faiss.downcast_index(index.storage)
    if not (
        isinstance(storage, faiss.IndexScalarQuantizer)
        and storage.sq.qtype == faiss.ScalarQuantizer.QT_8bit
    ):
        return None
    h: Any = index.hnsw  # the bundled stubs miss neighbors/offsets
    n, d = storage.ntotal, storage.d

    def view(vec: Any, size: int) -> Any:
        return faiss.rev_swig_ptr(vec.data(), size) if size else np.empty(0, np.int32)

    codes = faiss.rev_swig_ptr(storage.codes.data(), n * d).reshape(n, d)
    trained = faiss.vector_to_array(storage.sq.trained).astype(np.float32)
    offsets = faiss.rev_swig_ptr(h.offsets.data(), h.offsets.size())
    return (
        view(h.neighbors, h.neighbors.size()),
        offsets,
        view(h.levels, h.levels.size()),
        faiss.vector_to_array(h.cum_nneighbor_per_level).astype(np.int32),
        codes,
        np.ascontiguousarray(trained[:d]),
        np.ascontiguousarray(trained[d:]),
        int(h.entry_point),
        int(h.max_level),
        metric == "l2",
        index,
    )


def check_graph(built: Built, metric: str) -> None:
    """ValueError when ``built`` is an HNSW-SQ8 index whose graph a walk (native, or
    FAISS's own) would leave: a tampered file must not reach the walk."""
    if _HNSW is not None and built.kind == "hnsw":
        walker(built, metric)  # the native constructor checks the arrays (kept: cached)
        return
    arrays = graph_arrays(built.index, metric)
    if arrays is not None:
        nb, offsets, levels, cum = arrays[:4]
        _hnsw_py.check_graph(nb, offsets, levels, cum, arrays[7], arrays[8])


def walker(built: Built, metric: str) -> Any:
    """The native walker over ``built`` (an installed, never-mutated ``hnsw`` kind index),
    created once and cached; None for other kinds (factory strings included: their
    efSearch is FAISS's, untuned) or when the extension is not built."""
    if built._walk is None:
        ok = built.kind == "hnsw" and _HNSW is not None
        arrays = graph_arrays(built.index, metric) if ok else None
        built._walk = False if arrays is None else _HNSW.HnswSQ8(*arrays)  # type: ignore[union-attr]
    return built._walk or None
