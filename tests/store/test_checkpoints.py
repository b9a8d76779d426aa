"""Checkpoints: versions, names, latest/given/list, retention, TTL, deltas on disk."""

from __future__ import annotations

import msgspec
import pytest

from engine.store import StoreConflict
from tests.agents_for_tests import uv
from tests.store.conftest import Backend


def _state(step: int) -> bytes:
    """A growing ledger-like state, the shape deltas are made for."""
    entries = [{"step": i, "agent": f"worker-{i % 7}", "note": "x" * 40} for i in range(step)]
    return msgspec.msgpack.encode({"step": step, "ledger": entries})


@uv
async def test_put_get_latest_given_and_named(backend: Backend) -> None:
    async with backend.open() as s:
        assert await s.get_checkpoint("j") is None
        for v in (1, 2, 5):
            backend.clock.advance(1)
            await s.put_checkpoint("j", v, _state(v), meta=b"m%d" % v, name=f"id-{v}")
        latest = await s.get_checkpoint("j")
        assert latest is not None
        assert (latest.version, latest.state, latest.meta, latest.name) == (
            5,
            _state(5),
            b"m5",
            "id-5",
        )
        assert latest.created == backend.clock.t
        two = await s.get_checkpoint("j", 2)
        assert two is not None and two.state == _state(2)
        named = await s.get_checkpoint("j", name="id-1")
        assert named is not None and named.version == 1 and named.state == _state(1)
        assert await s.get_checkpoint("j", 3) is None
        assert await s.get_checkpoint("j", name="nope") is None
        listed = await s.list_checkpoints("j")
        assert [c.version for c in listed] == [5, 2, 1]
        assert all(c.state == b"" for c in listed)
        full = await s.list_checkpoints("j", before=5, limit=1, with_state=True)
        assert [(c.version, c.state) for c in full] == [(2, _state(2))]


@uv
async def test_versions_must_increase_and_names_be_new(backend: Backend) -> None:
    async with backend.open() as s:
        await s.put_checkpoint("j", 3, b"a", name="n")
        for bad in (3, 2):
            with pytest.raises(StoreConflict):
                await s.put_checkpoint("j", bad, b"b")
        with pytest.raises(StoreConflict):
            await s.put_checkpoint("j", 4, b"b", name="n")
        await s.put_checkpoint("j", 4, b"b", name="m")
        await s.put_checkpoint("other", 1, b"c", name="n")  # names are per job
        assert [c.version for c in await s.list_checkpoints("j")] == [4, 3]


@uv
async def test_many_versions_round_trip_exactly(backend: Backend) -> None:
    async with backend.open(keep_checkpoints=None) as s:
        for v in range(1, 61):
            await s.put_checkpoint("j", v, _state(v))
        for v in (1, 2, 17, 30, 59, 60):
            ck = await s.get_checkpoint("j", v)
            assert ck is not None and ck.state == _state(v), v
        listed = await s.list_checkpoints("j", limit=60, with_state=True)
        assert [c.state for c in listed] == [_state(v) for v in range(60, 0, -1)]


@uv
async def test_retention_keeps_the_last_n(backend: Backend) -> None:
    async with backend.open(keep_checkpoints=3) as s:
        for v in range(1, 41):
            await s.put_checkpoint("j", v, _state(v))
            await s.put_checkpoint("k", v, b"small %d" % v)
        await s.flush()
        assert [c.version for c in await s.list_checkpoints("j")] == [40, 39, 38]
        assert await s.get_checkpoint("j", 37) is None
        for v in (38, 39, 40):
            ck = await s.get_checkpoint("j", v)
            assert ck is not None and ck.state == _state(v)
        assert [c.state for c in await s.list_checkpoints("k", with_state=True)] == [
            b"small 40",
            b"small 39",
            b"small 38",
        ]


@uv
async def test_checkpoint_ttl(backend: Backend) -> None:
    async with backend.open(checkpoint_ttl=60, keep_checkpoints=None) as s:
        for v in range(1, 11):
            await s.put_checkpoint("j", v, _state(v))
            backend.clock.advance(10)
        # now = start + 100: versions created at +0..+30 are past the 60 s TTL
        assert [c.version for c in await s.list_checkpoints("j")] == [10, 9, 8, 7, 6, 5]
        assert await s.get_checkpoint("j", 4) is None
        await s.sweep()
        for v in (5, 10):
            ck = await s.get_checkpoint("j", v)
            assert ck is not None and ck.state == _state(v)
        backend.clock.advance(1000)
        assert await s.get_checkpoint("j") is None
        await s.sweep()
        await s.put_checkpoint("j", 11, b"after")
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.state == b"after"


@uv
async def test_delete_some_or_all_versions(backend: Backend) -> None:
    async with backend.open(keep_checkpoints=None) as s:
        for v in range(1, 11):
            await s.put_checkpoint("j", v, _state(v))
        assert await s.delete_checkpoints("j", [2, 3, 99]) == 2
        assert [c.version for c in await s.list_checkpoints("j", limit=3)] == [10, 9, 8]
        for v in (1, 4, 10):
            ck = await s.get_checkpoint("j", v)
            assert ck is not None and ck.state == _state(v)
        assert await s.delete_checkpoints("j", [v for v in range(1, 10)]) == 7
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.version == 10 and ck.state == _state(10)
        assert await s.delete_checkpoints("j") == 1
        assert await s.get_checkpoint("j") is None
        await s.put_checkpoint("j", 1, b"fresh")  # a deleted job starts over
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.state == b"fresh"


@uv
async def test_checkpoint_with_ledger_entries_commits_both_or_neither(backend: Backend) -> None:
    from engine.store import LedgerEntry

    async with backend.open() as s:
        step1 = [LedgerEntry(id="s1", data=b"entry 1", ledger="progress")]
        await s.put_checkpoint("j", 1, _state(1), ledger=step1)
        with pytest.raises(StoreConflict):  # a stale version: its entries must not land
            await s.put_checkpoint("j", 1, _state(1), ledger=[LedgerEntry(id="x", data=b"")])
        await s.put_checkpoint("j", 2, _state(2), ledger=[LedgerEntry(id="s2", data=b"entry 2")])
        assert [e.id for e in await s.read_ledger("j")] == ["s1", "s2"]
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.version == 2 and ck.state == _state(2)
