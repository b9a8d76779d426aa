"""VectorStore behaviour on real FAISS and real SQLite files.

Tests taking the ``glue`` fixture run on both twins of the native glue (py / native); the
index-building ones run on the glue in use, to keep the suite fast."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from engine.errors import (
    CorruptFileError,
    DimensionError,
    InvalidVectorError,
    UnknownIdError,
    VectorStoreError,
)
from engine.memory import VectorStore, _catalog, _search, _vectors_py
from engine.memory import vectors as vectors_mod
from engine.memory._native import NATIVE
from engine.memory._pool import search_pool
from tests._clock import FakeClock
from tests._memory_data import clustered, exact_ids, recall
from tests._wait import wait_until
from tests.conftest import impl_params


@pytest.fixture(params=impl_params(_vectors_py, NATIVE))
def glue(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    mod: ModuleType = request.param
    for user in (vectors_mod, _catalog, _search):  # every module of the store using the glue
        monkeypatch.setattr(user, "V", mod)
    return mod


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(6000, 32, seed=1)


def test_flat_exact_and_ids_are_external(glue: ModuleType, data: np.ndarray) -> None:
    vs = VectorStore(32, index="flat")
    ids = np.arange(1000, dtype=np.int64) * 7 - 2**40
    vs.add(ids, data[:1000])
    found, scores = vs.search(data[:20], k=5)
    assert found.shape == (20, 5) and scores.dtype == np.float32
    truth = ids[exact_ids(data[:20], data[:1000], 5)]
    assert (found == truth).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    st = vs.stats()
    assert st["count"] == 1000 and st["index"] == "flat" and st["bytes_per_vector"] >= 32 * 4


def test_auto_promotes_tunes_and_meets_target(data: np.ndarray) -> None:
    vs = VectorStore(32, target_recall=0.95, promote_at=2000, background=False)
    base, queries = data[:5000], data[5000:5200]
    vs.add(np.arange(5000), base)
    st = vs.stats()
    assert st["index"] in ("hnsw", "sq8"), st
    assert st["recall_estimate"] >= 0.95
    if st["index"] == "hnsw":
        assert st["params"]["efSearch"] >= 16
    found, _ = vs.search(queries, k=10)
    assert recall(found, exact_ids(queries, base, 10)) >= 0.93  # held-out queries


def test_search_single_vector_and_small_store(glue: ModuleType) -> None:
    vs = VectorStore(4, metric="l2", index="flat")
    vs.add([1, 2], [[0, 0, 0, 0], [1, 0, 0, 0]])
    ids, d = vs.search(np.array([0.9, 0, 0, 0]), k=3)
    assert ids.tolist() == [[2, 1, -1]]
    assert d[0, 0] == pytest.approx(0.01, abs=1e-6) and d[0, 2] == np.inf
    empty = VectorStore(4)
    ids, s = empty.search(np.ones((2, 4)), k=2)
    assert (ids == -1).all() and (s == -np.inf).all()


def test_bad_inputs_raise_typed_errors(glue: ModuleType) -> None:
    vs = VectorStore(8)
    good = np.ones((2, 8), np.float32)
    with pytest.raises(DimensionError, match="dimension 7"):
        vs.add([1, 2], np.ones((2, 7)))
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidVectorError) as e:
        vs.add([1, 2], bad)
    assert e.value.row == 1
    with pytest.raises(VectorStoreError, match="repeat"):
        vs.add([1, 1], good)
    with pytest.raises(VectorStoreError, match="ids for"):
        vs.add([1], good)
    with pytest.raises(VectorStoreError, match="ttl"):
        vs.add([1, 2], good, ttl=-1)
    with pytest.raises(VectorStoreError, match="JSON"):
        vs.add([1, 2], good, metadata=[{"a": object()}, None])
    vs.add([1, 2], good)
    with pytest.raises(UnknownIdError, match="99"):
        vs.remove([1, 99])
    assert len(vs) == 2  # nothing removed
    with pytest.raises(DimensionError):
        vs.search(np.ones((1, 9)))
    with pytest.raises(InvalidVectorError):
        vs.search(np.full((1, 8), np.inf))
    with pytest.raises(VectorStoreError, match="k must"):
        vs.search(good, k=0)
    with pytest.raises(VectorStoreError, match="metric"):
        VectorStore(8, metric="hamming")  # type: ignore[arg-type]
    with pytest.raises(VectorStoreError, match="factory"):
        VectorStore(8, index="NoSuchIndex,42")
    with pytest.raises(VectorStoreError, match="dim"):
        VectorStore(0)


def test_remove_upsert_and_contains(glue: ModuleType, data: np.ndarray) -> None:
    vs = VectorStore(32, promote_at=1000, background=False)
    vs.add(np.arange(2000), data[:2000])
    vs.remove([0, 1, 2])
    assert 0 not in vs and 3 in vs and len(vs) == 1997
    ids, _ = vs.search(data[:3], k=10)
    assert not set(ids.ravel()) & {0, 1, 2}
    vs.add([3], data[4000:4001])  # upsert: id 3 now holds another vector
    ids, _ = vs.search(data[4000:4001], k=1)
    assert ids[0, 0] == 3 and len(vs) == 1997
    ids, _ = vs.search(data[3:4], k=10)
    assert 3 not in ids
    for lo in range(4100, 4700, 200):  # online adds: flushed copy-on-write into the index
        vs.add(np.arange(lo, lo + 200), data[lo : lo + 200])
    st = vs.stats()
    assert st["fresh"] < 512 and st["slots"] >= 2600 and len(vs) == 2597
    ids, _ = vs.search(data[4100:4700], k=1)
    assert (ids[:, 0] == np.arange(4100, 4700)).mean() >= 0.97


def test_namespaces_and_where_filters(glue: ModuleType, data: np.ndarray) -> None:
    vs = VectorStore(32, promote_at=2000, background=False, exact_below=100)
    meta = [{"kind": "doc" if i % 3 else "note", "n": i % 5} for i in range(5000)]
    vs.add(np.arange(4950), data[:4950], metadata=meta[:4950], namespace="shared")
    vs.add(np.arange(4950, 5000), data[4950:5000], metadata=meta[4950:], namespace="agent-7")
    q = data[5000:5050]
    ids, _ = vs.search(q, k=10, namespace="agent-7")
    assert set(ids.ravel()) <= set(range(4950, 5000))
    truth = exact_ids(q, data[4950:5000], 10) + 4950
    assert recall(ids, truth) >= 0.95  # small namespace: exact plan
    vs.remove([int(ids[0, 0])])
    again, _ = vs.search(q[:1], k=10, namespace="agent-7")
    assert ids[0, 0] not in again and again[0, 0] == ids[0, 1]  # removed ones skipped
    ids, _ = vs.search(q, k=10, where={"kind": "note", "n": [1, 2]})  # broad: FAISS selector
    sel = np.array([i for i in range(5000) if i % 3 == 0 and i % 5 in (1, 2)])
    assert set(ids.ravel()) - {-1} <= set(sel.tolist())
    assert recall(ids, sel[exact_ids(q, data[sel], 10)]) >= 0.9
    ids, _ = vs.search(q, k=10, namespace="nobody")
    assert (ids == -1).all()
    ids, _ = vs.search(q, k=10, where={"kind": "missing"})
    assert (ids == -1).all()
    with pytest.raises(VectorStoreError, match="scalars"):
        vs.search(q, where={"kind": [["x"]]})


def test_ttl_expiry(glue: ModuleType, fake_clock: Callable[..., FakeClock]) -> None:
    clock = fake_clock(vectors_mod)
    vs = VectorStore(4, index="flat")
    vs.add([1], [[1, 0, 0, 0]], ttl=60)
    vs.add([2], [[0.9, 0.1, 0, 0]])
    clock.advance(59)
    assert vs.search([[1, 0, 0, 0]], k=2)[0].tolist() == [[1, 2]]
    clock.advance(2)
    assert vs.search([[1, 0, 0, 0]], k=2)[0].tolist() == [[2, -1]]
    assert 1 not in vs and len(vs) == 1


def test_save_load_roundtrip(glue: ModuleType, tmp_path: Path, data: np.ndarray) -> None:
    vs = VectorStore(32, promote_at=1000, background=False)
    vs.add(np.arange(3000), data[:3000], metadata=[{"i": i} for i in range(3000)], namespace="a")
    vs.add(np.arange(3000, 3100), data[3000:3100])  # some stay in the fresh buffer
    vs.remove([5])
    before = vs.search(data[:50], k=10)
    path = tmp_path / "store.db"
    vs.save(path)
    vs.save(path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["store.db"]  # no temp files left
    back = VectorStore.load(path)
    after = back.search(data[:50], k=10)
    assert (before[0] == after[0]).all()
    np.testing.assert_allclose(before[1], after[1], rtol=1e-5)
    assert back.stats()["count"] == vs.stats()["count"] == 3099
    assert back.search(data[:5], k=3, where={"i": 7})[0][0, 0] == 7
    assert back.search(data[:5], k=3, namespace="a")[0].max() < 3000


def test_corrupt_files_raise(glue: ModuleType, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(CorruptFileError):
        VectorStore.load(junk)
    vs = VectorStore(4, index="flat")
    vs.add([1, 2], np.eye(2, 4))
    good = tmp_path / "good.db"
    vs.save(good)
    con = sqlite3.connect(good)
    con.execute("UPDATE blobs SET data = zeroblob(8) WHERE name = 'ext'")
    con.commit()
    con.close()
    with pytest.raises(CorruptFileError, match="checksum"):
        VectorStore.load(good)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(CorruptFileError):
        VectorStore.load(other)
    truncated = tmp_path / "trunc.db"
    vs.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:1500])
    with pytest.raises(CorruptFileError):
        VectorStore.load(truncated)
    with pytest.raises(FileNotFoundError):
        VectorStore.load(tmp_path / "absent.db")


def test_background_build_serves_searches_and_finds_new_vectors(data: np.ndarray) -> None:
    vs = VectorStore(32, promote_at=2000, background=True)
    vs.add(np.arange(2500), data[:2500])  # triggers a background promotion
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0]

    def searcher() -> None:
        try:
            while not stop.is_set():
                ids, _ = vs.search(data[:8], k=5)
                assert (ids[:, 0] >= 0).all()
                served[0] += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=searcher)
    t.start()
    for lo in range(2500, 5000, 250):  # online adds during the build
        vs.add(np.arange(lo, lo + 250), data[lo : lo + 250])
        n = served[0]  # and a search after each
        wait_until(lambda n=n: served[0] > n or errors)
    assert vs.wait(60)
    stop.set()
    t.join()
    assert not errors and served[0] > 0
    assert vs.stats()["index"] != "flat" and len(vs) == 5000
    ids, _ = vs.search(data[4000:4100], k=1)
    assert (ids[:, 0] == np.arange(4000, 4100)).mean() >= 0.95  # new vectors are found


def test_compaction_after_many_removals(glue: ModuleType, data: np.ndarray) -> None:
    vs = VectorStore(32, index="flat", background=False)
    vs.add(np.arange(4000), data[:4000])
    vs.remove(np.arange(0, 3000))
    st = vs.stats()
    assert st["count"] == 1000 and st["slots"] <= 1008  # tombstones compacted away
    ids, _ = vs.search(data[3500:3510], k=1)
    assert ids[:, 0].tolist() == list(range(3500, 3510))


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw", "sq8", "IVF16,Flat"])
def test_other_index_kinds(kind: str, data: np.ndarray) -> None:
    vs = VectorStore(32, index=kind, promote_at=1000, background=False, target_recall=0.9)
    vs.add(np.arange(3000), data[:3000])
    q = data[3000:3100]
    found, _ = vs.search(q, k=10)
    st = vs.stats()
    assert st["index"] == kind
    floor = 0.5 if kind.startswith("IVF") else 0.88  # factory strings are not tuned
    assert recall(found, exact_ids(q, data[:3000], 10)) >= floor
    if kind in ("ivfpq", "sq8"):  # codes well below float32 (graph links dominate at 32-d)
        assert st["index_bytes_per_vector"] < 32 * 4 * 0.6
    # all in: + int64 id, id map, alive bit (no namespace or TTL arrays: none used)
    assert st["bytes_per_vector"] > st["index_bytes_per_vector"] + 8
    assert vs._cat.ns is None and vs._cat.expire is None


def test_per_slot_arrays_are_lazy_and_narrow(glue: ModuleType, tmp_path: Path) -> None:
    """Namespace codes exist once a namespace is used, as int8 until they outgrow it;
    expiries once a TTL is used; both survive save/load and rebuilds."""
    x = clustered(400, 8, seed=2)
    vs = VectorStore(8, background=False, promote_at=10_000)
    vs.add(np.arange(100), x[:100])
    assert vs._cat.ns is None and vs._cat.expire is None
    vs.add([1000], x[100:101], namespace="ns0")
    assert vs._cat.ns is not None and vs._cat.ns.dtype == np.int8
    for i in range(1, 200):  # 200 namespaces: the codes outgrow int8
        vs.add([1000 + i], x[100 + i : 101 + i], namespace=f"ns{i}")
    assert vs._cat.ns.dtype == np.int16
    ids, _ = vs.search(x[299], k=3, namespace="ns199")
    assert ids[0].tolist() == [1199, -1, -1]
    vs.add([5000], x[399:400], ttl=60)
    assert vs._cat.expire is not None
    vs.save(tmp_path / "s.db")
    vs2 = VectorStore.load(tmp_path / "s.db", background=False)
    assert vs2._cat.ns is not None and vs2._cat.ns.dtype == np.int16 and vs2._cat.expire is not None
    ids, _ = vs2.search(x[250], k=1, namespace="ns150")
    assert ids[0, 0] == 1150
    assert 5000 in vs2 and len(vs2) == 301
    vs2.rebuild()
    ids, _ = vs2.search(x[250], k=1, namespace="ns150")
    assert ids[0, 0] == 1150
    ids, _ = vs2.search(x[:100], k=1)  # no namespace: every vector
    assert (ids[:, 0] == np.arange(100)).all()


@pytest.mark.parametrize("reload", [False, True])
def test_emptied_namespace_stays_empty_after_compaction(
    glue: ModuleType, tmp_path: Path, reload: bool
) -> None:
    """A namespace whose vectors were all removed and compacted away matches nothing, also
    after save + load (which once restored its name without the per-slot codes)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((15, 8)).astype(np.float32)
    vs = VectorStore(8, index="flat", background=False)
    vs.add(np.arange(10), x[:10], metadata=[{"t": 1}] * 10)
    vs.add(np.arange(10, 15), x[10:], metadata=[{"t": 1}] * 5, namespace="tenantA")
    vs.remove(np.arange(10, 15))
    vs.rebuild()
    if reload:
        path = tmp_path / "store.db"
        vs.save(path)
        vs = VectorStore.load(path, background=False)
    q = x[:3]
    for kwargs in ({"namespace": "tenantA", "where": {"t": 1}}, {"namespace": "tenantA"}):
        ids, scores = vs.search(q, k=4, **kwargs)  # type: ignore[arg-type]
        assert (ids == -1).all(), kwargs
        assert (scores == -np.inf).all()
    ids, _ = vs.search(q, k=4, where={"t": 1})  # the rest is still found
    assert ids[:, 0].tolist() == [0, 1, 2]
    vs.add([20], x[:1], namespace="tenantA")  # the namespace takes vectors again
    ids, _ = vs.search(q[:1], k=4, namespace="tenantA")
    assert ids[0].tolist() == [20, -1, -1, -1]


def _search_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vectorstore-search")]


def test_search_pool_has_an_owner_and_a_shutdown(data: np.ndarray) -> None:
    """Large batches run on the process's search threads: they start with the first such
    batch, stop (joined) with ``search_pool.shutdown()``, and start again on the next."""
    vs = VectorStore(32, background=False)
    vs.add(np.arange(2000), data[:2000])
    q = data[:64]  # more than the caller runs itself: split over the pool
    search_pool.shutdown()
    assert not search_pool.running and not _search_threads()
    first, _ = vs.search(q, k=5)
    assert search_pool.running and _search_threads()
    search_pool.shutdown()
    assert not search_pool.running and not _search_threads()
    again, _ = vs.search(q, k=5)
    assert (first == again).all() and (first[:, 0] == np.arange(64)).all()
    search_pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_search_threads(data: np.ndarray) -> None:
    """The parent's pool threads do not survive fork: a child's batch search must start
    its own instead of queueing work for threads that are not there (a hang)."""
    vs = VectorStore(32, background=False)
    vs.add(np.arange(2000), data[:2000])
    q = data[:64]
    vs.search(q, k=5)  # the parent's threads exist now
    assert search_pool.running
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the batch is answered
        code = 1
        try:
            signal.alarm(60)  # a hang becomes a failure, not a stuck test run
            ids, _ = vs.search(q, k=5)
            code = 0 if (ids[:, 0] == np.arange(64)).all() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    search_pool.shutdown()


def test_metrics_time_every_search(data: np.ndarray) -> None:
    """``metrics=`` feeds engine_vector_search_seconds once per search call, whichever path
    serves it; a store without metrics keeps the plain method (no timing cost)."""
    from engine.observe import Metrics

    def searches(m: Metrics) -> float:
        text = m.exposition().decode()
        found = re.search(r"^engine_vector_search_seconds_count (\S+)$", text, re.M)
        assert found, text
        return float(found.group(1))

    m = Metrics()
    vs = VectorStore(32, background=False, metrics=m)
    vs.add(np.arange(300), data[:300], namespace="a")
    assert searches(m) == 0
    ids, _ = vs.search(data[:1], k=3)
    vs.search(data[:40], k=3)  # a batch
    vs.search(data[:1], k=3, namespace="a")  # a filtered search
    with pytest.raises(VectorStoreError):
        vs.search(data[:1], k=0)  # refused calls are timed too
    assert searches(m) == 4 and ids[0, 0] == 0
    assert "search" not in vars(VectorStore(32))
