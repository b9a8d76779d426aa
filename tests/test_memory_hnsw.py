"""The native walk over FAISS's HNSW graph (ext/_hnsw.pyx) against FAISS's own search, its
pure-Python twin, bad input, and the vector store serving it during online adds."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from engine.errors import (
    CorruptFileError,
    DimensionError,
    InvalidVectorError,
    VectorStoreError,
)
from engine.memory import VectorStore, _hnsw_py, _index
from engine.memory._index import graph_arrays
from tests._gil import python_progress_during
from tests._memory_data import clustered, exact_ids
from tests._wait import wait_until

HNSW = _index._HNSW
needs_native = pytest.mark.skipif(HNSW is None, reason="native extension not built")
# the prebuilt real set (see benches/_vectors_data.py)
REAL = Path(
    os.environ.get("ENGINE_VECTORS_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "vectors"
)


def hnsw_sq8(x: np.ndarray, metric: str, links0: int = 22) -> Any:
    fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_8bit, 12, fm)
    index.hnsw.set_nb_neighbors(0, links0)
    index.hnsw.efConstruction = 40
    index.train(x)
    index.add(x)
    return index


def faiss_search(index: Any, q: np.ndarray, k: int, ef: int, sel: Any = None) -> Any:
    p = faiss.SearchParametersHNSW()
    p.efSearch = ef
    if sel is not None:
        p.sel = sel
    with _index.single_thread():
        return index.search(q, k, params=p)


def walk(w: Any, q: np.ndarray, k: int, ef: int, bitmap: Any = None) -> Any:
    d = np.empty((len(q), k), np.float32)
    i = np.empty((len(q), k), np.int64)
    w.search(q, k, ef, d, i, bitmap)
    return d, i


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of positions holding the same id."""
    return float((a == b).mean())


def few_duplicates(index: Any, metric: str) -> bool:
    """At most 0.1% of the SQ8 code rows repeat: id agreement with FAISS is only meaningful
    without many equal distances (see test_duplicate_heavy_data_same_recall_as_faiss)."""
    codes = graph_arrays(index, metric)[4]  # type: ignore[index]
    return len(np.unique(codes, axis=0)) >= 0.999 * len(codes)


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return clustered(4000, 48, seed=3)


@needs_native
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("ef", [16, 48, 128])
def test_native_walk_returns_faiss_results(base: np.ndarray, metric: str, ef: int) -> None:
    """Same algorithm, same graph: the same ids at the same efSearch (a tie decided the
    other way may swap two neighbours); scores to float rounding."""
    assert HNSW is not None
    index = hnsw_sq8(base, metric)
    q = clustered(300, 48, seed=4)
    w = HNSW.HnswSQ8(*graph_arrays(index, metric))  # type: ignore[misc]
    d, i = walk(w, q, 10, ef)
    fd, fi = faiss_search(index, q, 10, ef)
    assert few_duplicates(index, metric)
    assert agreement(i, fi) >= 0.995
    np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-4)
    assert w.ndis > 0
    assert HNSW.HnswSQ8.simd() in ("avx2", "scalar")


@needs_native
@pytest.mark.skipif(not (REAL / "base_100k.f16.npy").exists(), reason="no prebuilt real set")
def test_native_walk_returns_faiss_results_on_real_vectors() -> None:
    assert HNSW is not None
    x = np.load(REAL / "base_100k.f16.npy")[:20_000].astype(np.float32)
    q = np.load(REAL / "queries_1k.f16.npy")[:300].astype(np.float32)
    index = hnsw_sq8(x, "ip")
    assert few_duplicates(index, "ip")
    w = HNSW.HnswSQ8(*graph_arrays(index, "ip"))  # type: ignore[misc]
    for ef in (32, 80):
        d, i = walk(w, q, 10, ef)
        fd, fi = faiss_search(index, q, 10, ef)
        assert agreement(i, fi) >= 0.995
        np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_native_walk_matches_python_twin(metric: str) -> None:
    assert HNSW is not None
    x = clustered(1500, 24, seed=5)
    index = hnsw_sq8(x, metric)
    arrays = graph_arrays(index, metric)
    assert arrays is not None
    q = clustered(60, 24, seed=6)
    bitmap = np.zeros(1500 // 8 + 1, np.uint8)
    bitmap[::3] = 0b10100101
    for bm in (None, bitmap):
        nd, ni = walk(HNSW.HnswSQ8(*arrays), q, 7, 20, bm)
        pd, pi = walk(_hnsw_py.HnswSQ8(*arrays), q, 7, 20, bm)
        assert agreement(ni, pi) >= 0.99
        np.testing.assert_allclose(nd, pd, rtol=1e-4, atol=1e-4)


@needs_native
def test_bitmap_keeps_results_to_members_as_faiss_selector(base: np.ndarray) -> None:
    assert HNSW is not None
    index = hnsw_sq8(base, "ip")
    w = HNSW.HnswSQ8(*graph_arrays(index, "ip"))  # type: ignore[misc]
    q = clustered(100, 48, seed=7)
    rng = np.random.default_rng(0)
    members = np.sort(rng.choice(len(base), len(base) // 2, replace=False))
    bitmap = np.zeros(len(base) // 8 + 1, np.uint8)
    for s in members:
        bitmap[s >> 3] |= 1 << (s & 7)
    d, i = walk(w, q, 10, 64, bitmap)
    assert np.isin(i[i >= 0], members).all()
    sel = faiss.IDSelectorBitmap(len(base), faiss.swig_ptr(bitmap))
    _, fi = faiss_search(index, q, 10, 64, sel)
    assert agreement(i, fi) >= 0.995
    # an empty selection finds nothing; a bitmap shorter than the graph excludes the rest
    d, i = walk(w, q, 10, 64, np.zeros(0, np.uint8))
    assert (i == -1).all() and (d == -math.inf).all()
    d, i = walk(w, q, 10, 64, np.full(2, 255, np.uint8))
    assert ((i >= 0) & (i < 16) | (i == -1)).all()


@needs_native
def test_k_larger_than_graph_pads(base: np.ndarray) -> None:
    assert HNSW is not None
    x = base[:30]
    index = hnsw_sq8(x, "l2")
    w = HNSW.HnswSQ8(*graph_arrays(index, "l2"))  # type: ignore[misc]
    d, i = walk(w, x[:3], 40, 50)
    assert (i[:, :30] >= 0).all() and (i[:, 30:] == -1).all()
    assert (d[:, 30:] == math.inf).all()
    assert (np.diff(d[:, :30], axis=1) >= 0).all()  # l2: ascending
    assert i[:, 0].tolist() == [0, 1, 2]


@needs_native
def test_bad_input_raises(base: np.ndarray) -> None:
    assert HNSW is not None
    index = hnsw_sq8(base[:500], "ip")
    arrays = list(graph_arrays(index, "ip") or ())
    w = HNSW.HnswSQ8(*arrays)
    q = base[:2]
    d = np.empty((2, 10), np.float32)
    i = np.empty((2, 10), np.int64)
    with pytest.raises(ValueError, match="columns"):
        w.search(np.ascontiguousarray(q[:, :10]), 10, 16, d, i)
    with pytest.raises(ValueError, match="k must be"):
        w.search(q, 0, 16, d, i)
    with pytest.raises(ValueError, match="ef must be"):
        w.search(q, 10, 0, d, i)
    with pytest.raises(ValueError, match="out_d/out_i"):
        w.search(q, 11, 16, d, i)
    with pytest.raises(ValueError, match="out_d/out_i"):
        w.search(q, 10, 16, d[:1], i[:1])

    def broken(pos: int, value: Any) -> list[Any]:
        a = list(arrays)
        a[pos] = value
        return a

    nb = arrays[0].copy()
    nb[5] = 10_000  # a neighbour outside the graph
    cases = [
        (broken(0, nb), "inconsistent"),
        (broken(1, arrays[1][:-1].copy()), "offsets"),
        (broken(4, arrays[4][:-1].copy()), "code rows"),
        (broken(5, arrays[5][:-1].copy()), "vmin and vdiff"),
        (broken(7, 500), "entry point"),
        (broken(8, 40), "max_level"),
        (broken(3, np.array([0, 600, 700], np.int32)), "level 0 holds"),
        (broken(3, np.array([3, 22], np.int32)), "must start"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            HNSW.HnswSQ8(*args)


def test_graph_arrays_only_for_hnsw_sq8() -> None:
    assert graph_arrays(faiss.IndexFlatIP(8), "ip") is None
    flat_hnsw = faiss.IndexHNSWFlat(8, 12)
    assert graph_arrays(flat_hnsw, "l2") is None


@needs_native
def test_store_serves_single_queries_with_the_native_walk() -> None:
    x = clustered(6000, 32, seed=8)
    vs = VectorStore(32, index="hnsw", background=False, promote_at=1000)
    vs.add(np.arange(6000) * 3, x)
    st = vs.stats()
    assert st["walk"] == "native" and st["index"] == "hnsw"
    main = vs._idx.main
    assert main is not None
    q = clustered(200, 32, seed=9)
    ids, scores = vs.search(q, k=10)
    fd, fi = faiss_search(main.index, q, 10, main.params["efSearch"])
    assert agreement(ids, vs._cat.ext[fi]) >= 0.995  # FAISS ids are slots
    np.testing.assert_allclose(scores, fd, rtol=1e-4, atol=1e-4)
    one_ids, _ = vs.search(q[:1], k=10)
    assert one_ids[0].tolist() == ids[0].tolist()
    # a tombstone is excluded through the bitmap, as FAISS's selector would
    vs.remove([int(ids[0, 0])])
    again, _ = vs.search(q[:1], k=10)
    assert int(ids[0, 0]) not in again[0].tolist()
    # the all-in bytes count the id map and per-slot arrays on top of FAISS's index
    st = vs.stats()
    assert st["bytes_per_vector"] > st["index_bytes_per_vector"] > 32


def test_store_without_native_walk_uses_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_index, "_HNSW", None)
    x = clustered(3000, 16, seed=10)
    vs = VectorStore(16, index="hnsw", background=False, promote_at=1000)
    vs.add(np.arange(3000), x)
    assert vs.stats()["walk"] == "faiss"
    q = clustered(50, 16, seed=11)
    ids, _ = vs.search(q, k=5)
    truth = exact_ids(q, x, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, truth, strict=True)]) >= 0.9


@needs_native
def test_online_adds_swap_the_walked_index_while_searching() -> None:
    """Searches on other threads during online adds: every result is a stored id, the
    walker is re-taken from each new (cloned) index, and the new vectors are found."""
    x = clustered(9000, 32, seed=12)
    vs = VectorStore(32, index="hnsw", background=True, promote_at=1000)
    vs.add(np.arange(5000), x[:5000])
    vs.wait()
    first = vs._idx.main
    errors: list[BaseException] = []
    stop = threading.Event()
    done = [0]

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = x[rng.integers(0, 5000, 4)]
                ids, _ = vs.search(q, k=5)
                assert ((ids >= 0) & (ids < 9000)).all()
                done[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        for lo in range(5000, 9000, 500):
            vs.add(np.arange(lo, lo + 500), x[lo : lo + 500])
            n = done[0]  # a search runs after each add, while the index is being rebuilt
            wait_until(lambda n=n: done[0] > n or errors)
        vs.wait()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert done[0] > 0
    assert vs._idx.main is not first and vs.stats()["walk"] == "native"
    ids, _ = vs.search(x[5000:9000:97], k=1)
    assert (ids[:, 0] == np.arange(5000, 9000, 97)).mean() >= 0.95


@needs_native
def test_walk_releases_the_gil(base: np.ndarray) -> None:
    """Python code in another thread advances during a (batch) walk call."""
    assert HNSW is not None
    index = hnsw_sq8(base, "ip")
    w = HNSW.HnswSQ8(*graph_arrays(index, "ip"))  # type: ignore[misc]
    q = np.ascontiguousarray(np.tile(base[:500], (8, 1)))
    progress = python_progress_during(lambda: walk(w, q, 10, 128))
    assert progress > 0, "no Python ran in another thread during any of the calls"


@needs_native
def test_loaded_store_walks_natively_with_the_same_results(tmp_path: Path) -> None:
    x = clustered(5000, 32, seed=13)
    vs = VectorStore(32, index="hnsw", background=False, promote_at=1000)
    vs.add(np.arange(5000) + 10, x)
    q = clustered(100, 32, seed=14)
    before = vs.search(q, k=10)
    vs.save(tmp_path / "s.db")
    loaded = VectorStore.load(tmp_path / "s.db", background=False)
    assert loaded.stats()["walk"] == "native"
    after = loaded.search(q, k=10)
    assert (after[0] == before[0]).all()
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)


def test_factory_string_hnsw_is_searched_by_faiss() -> None:
    """Factory strings are not tuned: FAISS searches them with their own efSearch."""
    x = clustered(3000, 16, seed=15)
    vs = VectorStore(16, index="HNSW16,SQ8", background=False, promote_at=1000)
    vs.add(np.arange(3000), x)
    assert vs.stats()["index"] == "HNSW16,SQ8" and vs.stats()["walk"] == "faiss"
    ids, _ = vs.search(x[:20], k=1)
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.9


@needs_native
def test_single_call_path_matches_the_general_path() -> None:
    """float32 queries go to the walk in one native call (normalised there for cosine);
    anything needing conversion takes the general path: same results."""
    x = clustered(5000, 32, seed=16)
    vs = VectorStore(32, index="hnsw", background=False, promote_at=1000)
    vs.add(np.arange(5000) + 7, x)
    q = (clustered(16, 32, seed=17) * 3.0).astype(np.float32)  # not unit length
    assert vs._search_walk(q, 10) is not None  # the single-call path applies
    fast = vs.search(q, k=10)
    slow = vs.search(q.astype(np.float64), k=10)
    assert vs._search_walk(q.astype(np.float64), 10) is None
    assert agreement(fast[0], slow[0]) >= 0.99
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    one = vs.search(q[0], k=10)
    assert one[0][0].tolist() == fast[0][0].tolist()
    bad = q.copy()
    bad[3, 5] = np.nan
    with pytest.raises(InvalidVectorError) as err:
        vs.search(bad, k=3)
    assert err.value.row == 3
    with pytest.raises(DimensionError):
        vs.search(q[:, :8].copy(), k=3)
    vs.remove([int(fast[0][0, 0])])  # tombstones reach the walk as the alive bitmap
    again = vs.search(q[:1], k=10)
    assert int(fast[0][0, 0]) not in again[0][0].tolist()
    # the walker's own bad-row report
    w = _index.walker(vs._idx.main, "cosine")  # type: ignore[arg-type]
    out_d, out_i = np.empty((16, 5), np.float32), np.empty((16, 5), np.int64)
    assert w.search(bad, 5, 32, out_d, out_i) == 3
    with pytest.raises(ValueError, match="inner-product"):
        HNSW.HnswSQ8(*graph_arrays(hnsw_sq8(x[:500], "l2"), "l2")).search(  # type: ignore[union-attr, misc]
            q, 5, 32, out_d, out_i, None, None, True
        )


def two_node_graph(upper_link: int) -> list[Any]:
    """Node 0 on levels 0-1 (the entry), node 1 on level 0 only; node 0's single level-1
    link is ``upper_link`` (-1: none; 1: a node that has no level 1, which is corrupt)."""
    return [
        np.array([1, -1, upper_link, 0, -1], np.int32),  # node 0: [l0, l0, l1], node 1: [l0, l0]
        np.array([0, 3, 5], np.uint64),
        np.array([2, 1], np.int32),
        np.array([0, 2, 3], np.int32),
        np.array([[0, 0, 0, 0], [255, 255, 255, 255]], np.uint8),
        np.zeros(4, np.float32),
        np.ones(4, np.float32),
        0,
        1,
        True,
    ]


@pytest.mark.parametrize("impl", ["py", "native"])
def test_upper_level_link_to_a_node_without_that_level_is_refused(impl: str) -> None:
    """The greedy descent reads a level-l neighbour's level-l links: a link to a node
    without level l would read past the neighbour table (a segfault in the native walk)."""
    if impl == "native" and HNSW is None:
        pytest.skip("native extension not built")
    cls = _hnsw_py.HnswSQ8 if impl == "py" else HNSW.HnswSQ8  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="without that level"):
        cls(*two_node_graph(1))
    w = cls(*two_node_graph(-1))
    d, i = walk(w, np.ones((1, 4), np.float32), 2, 4)
    assert i.tolist() == [[1, 0]]
    assert d[0, 0] < d[0, 1]


def test_store_file_with_a_tampered_graph_is_corrupt(tmp_path: Path) -> None:
    """A store file whose HNSW graph links an upper level to a node without it: load
    raises CorruptFileError (the walk would read outside FAISS's arrays)."""
    x = clustered(1200, 16, seed=8)
    vs = VectorStore(16, index="hnsw", promote_at=1000, background=False)
    vs.add(np.arange(len(x)), x)
    assert vs.stats()["index"] == "hnsw"
    path = tmp_path / "store.db"
    vs.save(path)
    con = sqlite3.connect(path)
    (blob,) = con.execute("SELECT data FROM blobs WHERE name = 'main'").fetchone()
    index = faiss.deserialize_index(np.frombuffer(blob, np.uint8))
    h = index.hnsw
    levels = faiss.vector_to_array(h.levels)
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level)
    top = int(np.flatnonzero(levels >= 2)[0])  # a node with a level 1
    ground = int(np.flatnonzero(levels == 1)[0])  # a node without
    nb = faiss.rev_swig_ptr(h.neighbors.data(), h.neighbors.size())
    nb[offsets[top] + cum[1]] = ground
    data = faiss.serialize_index(index).tobytes()
    con.execute(
        "UPDATE blobs SET data = ?, sha256 = ? WHERE name = 'main'",
        (data, hashlib.sha256(data).hexdigest()),
    )
    con.commit()
    con.close()
    with pytest.raises(CorruptFileError, match="without that level"):
        VectorStore.load(path)


_ALLOC_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
static int fail_at = -1, calls = 0, live = 0;
static void *t_malloc(size_t n) {
    if (calls++ == fail_at) return NULL;
    live++;
    return malloc(n);
}
static void *t_calloc(size_t n, size_t z) {
    if (calls++ == fail_at) return NULL;
    live++;
    return calloc(n, z);
}
static void *t_realloc(void *p, size_t n) {
    if (calls++ == fail_at) return NULL;
    if (!p) live++;
    return realloc(p, n);
}
static void t_free(void *p) { if (p) { live--; free(p); } }
#define EH_MALLOC t_malloc
#define EH_CALLOC t_calloc
#define EH_REALLOC t_realloc
#define EH_FREE t_free
#include "engine_hnsw.h"

int main(void) {
    for (int f = 0; f < 16; f++) {
        eh_scratch s;
        memset(&s, 0, sizeof(s));
        fail_at = f; calls = 0; live = 0;
        int first = eh_scratch_reserve(&s, 100, 8, 32, 10);
        fail_at = -1;
        if (eh_scratch_reserve(&s, 100, 8, 32, 10) != 0) {
            printf("retry failed %d\n", f);
            return 1;
        }
        if (!s.visited || !s.w || !s.a || !s.wd || !s.wi || !s.cd || !s.ci || !s.rd || !s.ri) {
            printf("NULL buffer after a failure at allocation %d (first call %d)\n", f, first);
            return 1;
        }
        eh_scratch_free(&s);
        if (live != 0) {
            printf("%d blocks leaked after a failure at allocation %d\n", live, f);
            return 1;
        }
    }
    printf("ok\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_scratch_reserve_survives_failed_allocations(tmp_path: Path) -> None:
    """engine_hnsw.h's scratch buffers with each allocation failing in turn: the next call
    succeeds with every buffer set (none left NULL behind a set sibling) and nothing leaks."""
    src = tmp_path / "harness.c"
    src.write_text(_ALLOC_HARNESS)
    include = Path(__file__).resolve().parents[1] / "ext" / "include"
    exe = tmp_path / "harness"
    subprocess.run(
        ["cc", "-O1", "-std=c11", "-D_GNU_SOURCE", f"-I{include}", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "ok")


@needs_native
@pytest.mark.parametrize("tiny", [1e-25, 1e-20, 1e-19, 1e-18])
def test_l2_scores_keep_a_dimension_with_a_tiny_range(tiny: float) -> None:
    """A column that is 0 with an occasional ``tiny``: its SQ8 step squared underflows, and
    its (q_j - vmin_j)^2 must still count (it once went missing: scores ~0.04 too low)."""
    assert HNSW is not None
    rng = np.random.default_rng(12)
    x = clustered(800, 16, seed=9)
    x[:, 3] = 0.0
    x[::97, 3] = tiny
    index = hnsw_sq8(x, "l2")
    w = HNSW.HnswSQ8(*graph_arrays(index, "l2"))  # type: ignore[misc]
    q = clustered(40, 16, seed=10)
    q[:, 3] = rng.uniform(0.1, 0.3, len(q)).astype(np.float32)
    d, i = walk(w, q, 5, 32)
    fd, fi = faiss_search(index, q, 5, 32)
    assert agreement(i, fi) >= 0.99
    np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-5)


@needs_native
def test_huge_k_is_refused_and_large_k_pads() -> None:
    """A k the store cannot honour raises its typed error (a k of 2**31 once overflowed
    the walker's int; just below, it allocated tens of GB); a k above the number of vectors
    walks at most the graph's nodes and pads with -1, on every search path."""
    x = clustered(1200, 16, seed=13)
    vs = VectorStore(16, index="hnsw", promote_at=1000, background=False)
    vs.add(np.arange(len(x)), x, namespace="a")
    assert vs.stats()["walk"] == "native"
    for k in (2**31, 2**31 - 2, 2**40, (1 << 20) + 1):
        with pytest.raises(VectorStoreError, match="k="):
            vs.search(x[:2], k=k)
    for kwargs in ({}, {"namespace": "a"}):
        for q in (x[:2], x[:2].astype(np.float64)):  # the single-call walk, the general path
            ids, scores = vs.search(q, k=5000, **kwargs)  # type: ignore[arg-type]
            assert ids.shape == scores.shape == (2, 5000)
            assert ids[:, 0].tolist() == [0, 1]
            assert (ids[:, 1200:] == -1).all() and (scores[:, 1200:] == -np.inf).all()
            assert len(set(ids[0].tolist()) - {-1}) >= 1000


@needs_native
def test_k_above_ef_raises_the_beam_unlike_faiss() -> None:
    """Documented difference: with k > efSearch the walk searches with a beam of k, FAISS
    with its un-raised efSearch (fewer hits); FAISS at efSearch = k finds what the walk does."""
    assert HNSW is not None
    x = clustered(50, 16, seed=1)
    index = hnsw_sq8(x, "l2")
    w = HNSW.HnswSQ8(*graph_arrays(index, "l2"))  # type: ignore[misc]
    q = x[:3]
    d, i = walk(w, q, 100, 1)
    assert ((i >= 0).sum(1) == 50).all()
    _, fi_low = faiss_search(index, q, 100, 1)
    assert ((fi_low >= 0).sum(1) < 50).all()  # FAISS: efSearch 1 stays 1
    fd, fi = faiss_search(index, q, 100, 100)
    assert (i == fi).all()
    np.testing.assert_allclose(d[:, :50], fd[:, :50], rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_duplicate_heavy_data_same_recall_as_faiss(metric: str) -> None:
    """Every vector stored 4 times: equal distances are ordered differently in the two
    implementations' heaps, so which copy comes back (id agreement about 1/4) differs, and
    recall (counted by score, copies being interchangeable) stays FAISS's."""
    assert HNSW is not None
    base = clustered(2000, 32, seed=21)
    x = np.repeat(base, 4, axis=0)
    np.random.default_rng(0).shuffle(x)
    index = hnsw_sq8(x, metric)
    w = HNSW.HnswSQ8(*graph_arrays(index, metric))  # type: ignore[misc]
    q = clustered(200, 32, seed=41)
    s = q @ x.T if metric == "ip" else -((q[:, None] - x[None]) ** 2).sum(-1)
    kth = np.sort(s, axis=1)[:, -10:-9]
    for ef in (16, 64):
        _, i = walk(w, q, 10, ef)
        _, fi = faiss_search(index, q, 10, ef)
        hit = (np.take_along_axis(s, i, 1) >= kth - 1e-5).mean()
        fhit = (np.take_along_axis(s, fi, 1) >= kth - 1e-5).mean()
        assert abs(hit - fhit) <= 0.02, (ef, hit, fhit)
