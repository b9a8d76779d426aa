"""Checkpoint deltas (exact round trips, bounded size, corrupt input) and the write queue
(group commit, backpressure, batch durability and its deferred errors)."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.store import StoreConflict, StoreError
from engine.store._codec import CheckpointCodec
from engine.store._delta import apply_delta, make_delta
from tests.agents_for_tests import uv
from tests.store.conftest import Backend


@st.composite
def _edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    base = draw(st.binary(max_size=4000))
    new = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(new)))
        if draw(st.booleans()):
            new[at:at] = draw(st.binary(max_size=300))
        else:
            del new[at : at + draw(st.integers(0, 300))]
    return base, bytes(new)


@given(_edited())
def test_delta_round_trips_exactly(pair: tuple[bytes, bytes]) -> None:
    base, new = pair
    delta = make_delta(base, new, 10**9)
    assert delta is not None
    assert apply_delta(base, delta, 10**9) == new


@given(_edited(), st.integers(0, 500))
def test_delta_respects_its_limit(pair: tuple[bytes, bytes], limit: int) -> None:
    base, new = pair
    delta = make_delta(base, new, limit)
    assert delta is None or (len(delta) <= limit and apply_delta(base, delta, 10**9) == new)


def test_appending_to_a_ledger_costs_about_the_new_entry() -> None:
    def state(n: int) -> bytes:
        entries = [{f"f{k}": k * 1000 + i for k in range(20)} for i in range(n)]
        return msgspec.msgpack.encode({"step": n, "ledger": entries})

    for n in (3, 15, 16, 600, 65535):  # msgpack array headers grow at 16 and 65536
        base, new = state(n), state(n + 1)
        delta = make_delta(base, new, len(new))
        assert delta is not None and apply_delta(base, delta, 10**9) == new
        assert len(delta) < (len(new) - len(base)) + 64, (n, len(delta))


@pytest.mark.parametrize(
    "delta",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([b"a", 0]),
        msgspec.msgpack.encode([b"", 5, 100, b""]),
        msgspec.msgpack.encode([b"", -1, 1, b""]),
        msgspec.msgpack.encode([1, 0, 1, b""]),
        msgspec.msgpack.encode(["text"]),
    ],
)
def test_corrupt_deltas_raise_store_error(delta: bytes) -> None:
    with pytest.raises(StoreError, match="corrupt"):
        apply_delta(b"0123456789", delta, 10**6)


def test_codec_chains_and_bounds() -> None:
    codec = CheckpointCodec(True, ratio=0.5, max_chain=3, max_jobs=2)
    base = bytes(range(256)) * 8
    assert codec.encode("a", 1, base) == (0, 0, None)  # unknown job: whole
    states = [base]
    for v in (2, 3, 4):
        states.append(states[-1] + b"step %d" % v)
        b, prev, d = codec.encode("a", v, states[-1])
        assert (b, prev) == (1, v - 1) and d is not None  # a delta against the previous
    assert codec.encode("a", 5, states[-1] + b"!") == (0, 0, None)  # chain full: whole
    assert codec.encode("a", 6, bytes(2048)) == (0, 0, None)  # unlike the last: whole
    assert codec.encode("a", 7, bytes(2048) + b"x")[:2] == (6, 6)
    codec.encode("b", 1, base)
    codec.encode("c", 1, base)  # evicts "a" (max_jobs=2)
    assert codec.encode("a", 8, bytes(2048) + b"xy") == (0, 0, None)
    assert CheckpointCodec(False).encode("a", 1, base) == (0, 0, None)


@uv
async def test_deltas_are_stored_and_read_back(sql_backend: Backend) -> None:
    state = [bytes(range(256)) * 40]
    async with sql_backend.open(keep_checkpoints=None) as s:
        for v in range(1, 21):
            state.append(state[-1] + b"step %d;" % v)
            await s.put_checkpoint("j", v, state[v])
        stored = _stored_sizes(sql_backend)
        assert stored[0] >= len(state[1]) and max(stored[1:]) < 100, stored
        for v in range(1, 21):
            ck = await s.get_checkpoint("j", v)
            assert ck is not None and ck.state == state[v]
    async with sql_backend.open(checkpoint_delta=False) as s:
        await s.put_checkpoint("j", 21, state[20] + b"!")
        ck = await s.get_checkpoint("j", 20)
        assert ck is not None and ck.state == state[20]  # old deltas still read
    assert _stored_sizes(sql_backend)[-1] == len(state[20]) + 1


def _stored_sizes(backend: Backend) -> list[int]:
    sql = "SELECT length(data) FROM engine_checkpoints WHERE job_id = 'j' ORDER BY version"
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.url.removeprefix("sqlite:///")) as conn:
            return [r[0] for r in conn.execute(sql)]
    import psycopg

    with psycopg.connect(backend.url) as conn:
        return [r[0] for r in conn.execute(sql.replace("length", "octet_length"))]  # type: ignore[arg-type]


@uv
async def test_group_commit_under_commit_durability(sql_backend: Backend) -> None:
    """Writes arriving while a commit is in flight share the next one. (SQLite's default
    commits inline in microseconds, so nothing is ever in flight: use ``synchronous=full``,
    whose commits run in a thread.)"""
    if sql_backend.kind == "sqlite":
        sql_backend.url += "?synchronous=full"
    async with sql_backend.open() as s:
        queue = s._queue  # type: ignore[attr-defined]
        before = queue.batches
        await asyncio.gather(*[s.put_checkpoint(f"j{i}", 1, b"x" * 100) for i in range(200)])
        transactions = queue.batches - before
        assert transactions < 100, transactions  # many writes shared each commit
        for i in (0, 199):
            assert (await s.get_checkpoint(f"j{i}")) is not None


@uv
async def test_backpressure_bounds_the_queue(sql_backend: Backend) -> None:
    async with sql_backend.open(queue_size=4, max_batch=2, durability="batch") as s:
        queue = s._queue  # type: ignore[attr-defined]
        peak = 0

        async def writer(i: int) -> None:
            nonlocal peak
            await s.kv_put("ns", f"k{i}", b"v")
            peak = max(peak, queue._queue.qsize())

        await asyncio.gather(*[writer(i) for i in range(100)])
        await s.flush()
        assert peak <= 4
        assert len(await s.kv_scan("ns", limit=1000)) == 100


@uv
async def test_batch_durability_acknowledges_early_and_flush_reports_errors(
    backend: Backend,
) -> None:
    async with backend.open(durability="batch") as s:
        await s.put_checkpoint("j", 5, b"five")
        await s.put_checkpoint("j", 3, b"stale")  # accepted at enqueue...
        ck = await s.get_checkpoint("j")  # reads see earlier writes
        assert ck is not None and ck.state == b"five"
        with pytest.raises(StoreConflict):  # ...and its failure surfaces here
            await s.flush()
        await s.flush()  # reported once
