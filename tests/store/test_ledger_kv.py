"""Ledgers (order, idempotent appends) and key-value state (TTL, scans)."""

from __future__ import annotations

import itertools

from engine.store import LedgerEntry
from tests.agents_for_tests import uv
from tests.store.conftest import Backend


@uv
async def test_ledger_appends_in_order_and_ignores_repeated_ids(backend: Backend) -> None:
    async with backend.open() as s:
        await s.append_ledger(
            "j", [LedgerEntry(id=f"e{i}", data=bytes([i]), ledger="task") for i in range(5)]
        )
        await s.append_ledger(
            "j",
            [
                LedgerEntry(id="e2", data=b"changed"),
                LedgerEntry(id="p0", data=b"p", ledger="progress"),
                LedgerEntry(id="p0", data=b"dup in one call"),
            ],
        )
        await s.append_ledger("other", [LedgerEntry(id="e0", data=b"other job")])
        got = await s.read_ledger("j")
        assert [e.id for e in got] == ["e0", "e1", "e2", "e3", "e4", "p0"]
        assert got[2].data == bytes([2]) and got[5].data == b"p"
        assert all(a.seq < b.seq for a, b in itertools.pairwise(got))
        assert all(e.at == backend.clock.t for e in got)
        assert [e.id for e in await s.read_ledger("j", ledger="progress")] == ["p0"]
        tail = await s.read_ledger("j", after=got[2].seq, limit=2)
        assert [e.id for e in tail] == ["e3", "e4"]
        assert [e.data for e in await s.read_ledger("other")] == [b"other job"]
        assert await s.read_ledger("nobody") == []


@uv
async def test_ledger_keeps_the_order_of_small_and_large_batches(backend: Backend) -> None:
    # PostgreSQL sends a few entries as a VALUES list and more as arrays: both keep order
    def batch(tag: str, n: int) -> list[LedgerEntry]:
        return [
            LedgerEntry(id=f"{tag}{i:02d}", data=tag.encode() * i, ledger=tag, at=float(i + 1))
            for i in range(n)
        ]

    async with backend.open() as s:
        await s.append_ledger("j", batch("a", 3))
        await s.append_ledger("j", batch("b", 20))
        await s.put_checkpoint("j", 1, b"s1", ledger=batch("c", 2))
        await s.put_checkpoint("j", 2, b"s2", ledger=batch("d", 12))
        got = await s.read_ledger("j")
        want = [e for tag, n in (("a", 3), ("b", 20), ("c", 2), ("d", 12)) for e in batch(tag, n)]
        assert [(e.id, e.ledger, e.data, e.at) for e in got] == [
            (e.id, e.ledger, e.data, e.at) for e in want
        ]
        assert all(a.seq < b.seq for a, b in itertools.pairwise(got))


@uv
async def test_ledger_keeps_a_given_timestamp(backend: Backend) -> None:
    async with backend.open() as s:
        await s.append_ledger("j", [LedgerEntry(id="a", data=b"", at=12.5)])
        (entry,) = await s.read_ledger("j")
        assert entry.at == 12.5 and entry.ledger == ""
        # the general checks still accept what the fast path passes on to them
        await s.append_ledger(
            "j",
            [
                LedgerEntry(id="étape", data=bytearray(b"ba"), ledger="journal-é"),  # type: ignore[arg-type]
                LedgerEntry(id="int-at", data=memoryview(b"mv"), at=7),  # type: ignore[arg-type]
                LedgerEntry(id="before-1970", data=b"", at=-1.5),
            ],
        )
        got = {e.id: e for e in await s.read_ledger("j")}
        assert (got["étape"].data, got["étape"].ledger) == (b"ba", "journal-é")
        assert (got["int-at"].data, got["int-at"].at) == (b"mv", 7.0)
        assert got["before-1970"].at == -1.5


@uv
async def test_kv_put_get_delete_and_ttl(backend: Backend) -> None:
    async with backend.open() as s:
        await s.kv_put("agents", "a1", b"state-1")
        await s.kv_put("agents", "a1", b"state-2")
        await s.kv_put("cache", "a1", b"other namespace", ttl=10)
        assert await s.kv_get("agents", "a1") == b"state-2"
        assert await s.kv_get("cache", "a1") == b"other namespace"
        backend.clock.advance(10)
        assert await s.kv_get("cache", "a1") is None  # expired at exactly ttl
        assert await s.kv_delete("cache", "a1") is False
        assert await s.kv_delete("agents", "a1") is True
        assert await s.kv_get("agents", "a1") is None
        assert await s.kv_get("agents", "never") is None


@uv
async def test_kv_scan_prefix_pagination_and_sweep(backend: Backend) -> None:
    async with backend.open() as s:
        for i in range(12):
            await s.kv_put("mem", f"conv/{i:02d}", bytes([i]), ttl=100 if i % 4 == 0 else None)
        await s.kv_put("mem", "conv0", b"no slash")
        await s.kv_put("mem", "other/1", b"x")
        first = await s.kv_scan("mem", prefix="conv/", limit=5)
        assert [i.key for i in first] == [f"conv/{i:02d}" for i in range(5)]
        assert first[0].expires == backend.clock.t + 100 and first[1].expires == 0
        rest = await s.kv_scan("mem", prefix="conv/", after=first[-1].key, limit=100)
        assert [i.key for i in rest] == [f"conv/{i:02d}" for i in range(5, 12)]
        backend.clock.advance(100)
        live = await s.kv_scan("mem", prefix="conv/")
        assert [i.key for i in live] == [f"conv/{i:02d}" for i in range(12) if i % 4]
        assert await s.sweep() == 3
        assert await s.sweep() == 0
        everything = await s.kv_scan("mem")
        assert len(everything) == 11 and everything[-1].key == "other/1"


@uv
async def test_kv_scan_treats_prefix_literally(backend: Backend) -> None:
    async with backend.open() as s:
        for key in ["a%b", "a_b", "axb", "a%", "b"]:
            await s.kv_put("ns", key, b"")
        assert [i.key for i in await s.kv_scan("ns", prefix="a%")] == ["a%", "a%b"]
        assert [i.key for i in await s.kv_scan("ns", prefix="a_")] == ["a_b"]


@uv
async def test_large_values_round_trip(backend: Backend) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB
    async with backend.open() as s:
        await s.kv_put("big", "k", big)
        await s.append_ledger("j", [LedgerEntry(id="big", data=big)])
        await s.put_checkpoint("j", 1, big)
        assert await s.kv_get("big", "k") == big
        assert (await s.read_ledger("j"))[0].data == big
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.state == big
