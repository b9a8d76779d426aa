"""Differential tests: engine._native._vectors against its reference twin _vectors_py."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.memory import _vectors_py
from engine.memory._native import NATIVE
from tests._gil import python_progress_during
from tests.conftest import impl_params

IMPLS = impl_params(_vectors_py, NATIVE)
needs_native = pytest.mark.skipif(NATIVE is None, reason="native extension not built")


@pytest.fixture(params=IMPLS)
def V(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def test_slotmap_put_get_remove(V: ModuleType) -> None:
    """Ids live in the caller's per-slot array; the map holds slots only."""
    m = V.SlotMap(0)
    ext = np.array([5, -3, 2**62, -(2**63), 7, -1, -1, -1], np.int64)
    m.put_many(ext, np.arange(5, dtype=np.int64))
    out = np.empty(6, np.int64)
    assert m.get_many(ext, np.array([7, 5, 99, -(2**63)], np.int64), out) == 1
    assert out[:4].tolist() == [4, 0, -1, 3]
    assert m.remove_many(ext, np.array([5, 5, 123], np.int64)) == 1
    assert len(m) == 4
    ext[6] = 7  # upsert: id 7 moves to slot 6
    m.put_many(ext, np.array([6], np.int64))
    assert len(m) == 4
    assert m.get_many(ext, np.array([7, 5], np.int64), out) == 1
    assert out[:2].tolist() == [6, -1]
    with pytest.raises(ValueError, match="slot 8 outside"):
        m.put_many(ext, np.array([8], np.int64))
    with pytest.raises(ValueError, match="slot -1 outside"):
        m.put_many(ext, np.array([-1], np.int64))
    assert m.nbytes > 0
    m.clear()
    assert len(m) == 0
    assert m.get_many(ext, np.array([7], np.int64), out) == 1


@needs_native
def test_slotmap_bytes_per_id() -> None:
    """An id costs an int32 slot in a table at most 4/5 full: 5-6 B at any size."""
    assert NATIVE is not None
    for n in (1000, 65_537, 100_000):
        m = NATIVE.SlotMap(0)
        ext = np.arange(n, dtype=np.int64) * 7919
        for lo in range(0, n, 4096):  # grown in steps, as a store grows
            m.put_many(ext, np.arange(lo, min(lo + 4096, n), dtype=np.int64))
        assert len(m) == n
        assert 5.0 <= m.nbytes / n <= 6.1
        out = np.empty(n, np.int64)
        assert m.get_many(ext, ext, out) == 0
        assert (out == np.arange(n)).all()


@needs_native
@given(st.lists(st.tuples(st.booleans(), st.integers(-50, 50)), max_size=300))
def test_slotmap_matches_dict(ops: list[tuple[bool, int]]) -> None:
    """Random put/remove sequences (small key space forces collisions and backward shifts);
    every put takes a new slot, as the store's adds do."""
    assert NATIVE is not None
    m = NATIVE.SlotMap(0)
    ext = np.full(len(ops) + 1, -1, np.int64)
    ref: dict[int, int] = {}
    for i, (put, key) in enumerate(ops):
        k = np.array([key], np.int64)
        if put:
            ext[i] = key
            m.put_many(ext, np.array([i], np.int64))
            ref[key] = i
        else:
            assert m.remove_many(ext, k) == (key in ref)
            ref.pop(key, None)
    probe = np.arange(-50, 51, dtype=np.int64)
    out = np.empty(len(probe), np.int64)
    m.get_many(ext, probe, out)
    assert out.tolist() == [ref.get(int(p), -1) for p in probe]
    assert len(m) == len(ref)


@needs_native
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12)))
def test_normalize_matches(x: np.ndarray) -> None:
    assert NATIVE is not None
    a, b = x.copy(), x.copy()
    ra, rb = _vectors_py.normalize(a), NATIVE.normalize(b)
    assert ra == rb
    if ra < 0:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_native
@given(
    st.integers(0, 200).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.int32, n, elements=st.integers(-1, 3)),
            hnp.arrays(np.uint8, (n + 7) // 8 + 1),
            st.integers(-1, 3),
        )
    )
)
def test_filter_bitmap_and_slots_match(args: tuple[np.ndarray, np.ndarray, int]) -> None:
    assert NATIVE is not None
    ns, alive, code = args
    n = len(ns)
    outs = []
    for mod in (_vectors_py, NATIVE):
        for width in (np.int8, np.int16, np.int32):  # the store narrows its namespace codes
            out = np.zeros(len(alive), np.uint8)
            count = mod.filter_bitmap(ns.astype(width), code, alive, out)
            slots = np.empty(n, np.int64)
            got = mod.bitmap_to_slots(out, n, slots)
            assert got == count == mod.bitmap_count(out)
            outs.append((out.tobytes(), slots[:got].tolist()))
    assert all(o == outs[0] for o in outs)


def test_bitmap_roundtrip_and_errors(V: ModuleType) -> None:
    bm = np.zeros(4, np.uint8)
    V.bitmap_set(np.array([0, 9, 31], np.int64), bm)
    assert bm.tolist() == [1, 2, 0, 128]  # little-endian bits, as IDSelectorBitmap reads
    out = np.empty(32, np.int64)
    assert V.bitmap_to_slots(bm, 32, out) == 3
    assert out[:3].tolist() == [0, 9, 31]
    assert V.bitmap_to_slots(bm, 10, out) == 2  # slots >= n ignored
    with pytest.raises(ValueError):
        V.bitmap_set(np.array([32], np.int64), bm)
    with pytest.raises(ValueError):
        V.bitmap_to_slots(bm, 33, out)
    other = np.array([255, 0, 0, 255], np.uint8)
    assert V.bitmap_and(bm, other, bm) == 2  # aliasing out with an input
    assert bm.tolist() == [1, 0, 0, 128]


def test_ttl_sweep(V: ModuleType) -> None:
    expire = np.array([1.0, 5.0, math.inf, 2.0, 0.5], np.float64)
    alive = np.array([0b01111], np.uint8)  # slot 4 already dead
    out = np.empty(5, np.int64)
    count, nxt = V.ttl_sweep(expire, 2.0, alive, out)
    assert out[:count].tolist() == [0, 3]
    assert nxt == 5.0
    assert alive.tolist() == [0b00110]
    count, nxt = V.ttl_sweep(expire, 10.0, alive, out)
    assert out[:count].tolist() == [1] and nxt == math.inf


def test_filter_alive(V: ModuleType) -> None:
    alive = np.array([0b10100101, 0b1], np.uint8)
    out = np.empty(5, np.int64)
    n = V.filter_alive(np.array([7, 1, 0, 8, 2], np.int64), alive, out)
    assert out[:n].tolist() == [7, 0, 8, 2]
    with pytest.raises(ValueError):
        V.filter_alive(np.array([16], np.int64), alive, out)


def test_map_ids(V: ModuleType) -> None:
    table = np.array([10, 11, 12], np.int64)
    slots = np.array([[2, -1, 0], [5, 1, 1]], np.int64)
    out = np.empty_like(slots)
    V.map_ids(slots, table, out)
    assert out.tolist() == [[12, -1, 10], [-1, 11, 11]]


@needs_native
@given(
    st.integers(1, 5).flatmap(
        lambda nq: st.integers(0, 30).flatmap(
            lambda m: st.tuples(
                hnp.arrays(np.float32, (nq, m), elements=st.integers(-5, 5).map(float)),
                hnp.arrays(np.int64, (nq, m), elements=st.integers(-1, 50)),
                st.integers(0, 12),
                st.booleans(),
            )
        )
    )
)
def test_merge_topk_matches(args: tuple[np.ndarray, np.ndarray, int, bool]) -> None:
    assert NATIVE is not None
    d, i, k, largest = args
    res = []
    for mod in (_vectors_py, NATIVE):
        od = np.empty((d.shape[0], k), np.float32)
        oi = np.empty((d.shape[0], k), np.int64)
        mod.merge_topk(d, i, k, largest, od, oi)
        res.append((od.tolist(), oi.tolist()))
    assert res[0] == res[1]


def test_merge_topk_orders(V: ModuleType) -> None:
    d = np.array([[0.9, 0.5, 0.95, 0.1]], np.float32)
    i = np.array([[1, 2, 3, -1]], np.int64)
    od = np.empty((1, 3), np.float32)
    oi = np.empty((1, 3), np.int64)
    V.merge_topk(d, i, 3, True, od, oi)
    assert oi.tolist() == [[3, 1, 2]]
    V.merge_topk(d, i, 3, False, od, oi)
    assert oi.tolist() == [[2, 1, 3]]


@needs_native
def test_native_releases_the_gil() -> None:
    """Python code in another thread advances *during* one native call.

    The native thread reads a counter just before and just after a single ``normalize``
    call; the main thread spins incrementing it. Holding the GIL for the call would leave
    the counter unchanged across it."""
    assert NATIVE is not None
    x = np.random.default_rng(0).standard_normal((60_000, 384)).astype(np.float32)
    progress = python_progress_during(lambda: NATIVE.normalize(x))
    assert progress > 0, "no Python ran in another thread during any of the calls"


@pytest.mark.parametrize("l2", [False, True])
def test_score_sq8_matches_faiss_decode(V: ModuleType, l2: bool) -> None:
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    sq = faiss.IndexScalarQuantizer(24, faiss.ScalarQuantizer.QT_8bit)
    sq.train(x)
    sq.add(x)
    trained = faiss.vector_to_array(sq.sq.trained).astype(np.float32)
    codes = faiss.rev_swig_ptr(sq.codes.data(), 300 * 24).reshape(300, 24)
    slots = np.array([0, 5, 299, 5], np.int64)
    out = np.empty(4, np.float32)
    V.score_sq8(codes, slots, x[1], trained[:24], trained[24:], l2, out)
    dec = sq.reconstruct_batch(slots)
    want = ((dec - x[1]) ** 2).sum(1) if l2 else dec @ x[1]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    floats = np.empty(4, np.float32)
    V.score_f32(x, slots, x[1], l2, floats)
    np.testing.assert_allclose(
        floats, ((x[slots] - x[1]) ** 2).sum(1) if l2 else x[slots] @ x[1], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="outside"):
        V.score_f32(x, np.array([300], np.int64), x[1], l2, floats)
    with pytest.raises(ValueError, match="width"):
        V.score_sq8(codes, slots, x[1][:5], trained[:24], trained[24:], l2, out)
