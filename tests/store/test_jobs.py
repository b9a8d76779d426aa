"""Jobs: create/get, compare-and-set, filters and pagination, leases and takeover."""

from __future__ import annotations

import asyncio

import pytest

from engine.store import (
    Job,
    JobNotFound,
    LeaseLost,
    LedgerEntry,
    StoreConflict,
    StoreInputError,
)
from tests.agents_for_tests import uv
from tests.store.conftest import Backend


@uv
async def test_create_get_and_duplicate(backend: Backend) -> None:
    async with backend.open() as s:
        job = await s.create_job(Job(id="j1", tenant="acme", kind="task", data=b"\x01\x02"))
        assert (job.id, job.status, job.version, job.owner) == ("j1", "pending", 1, "")
        assert job.created == job.updated == backend.clock.t
        assert await s.get_job("j1") == job
        assert await s.get_job("nope") is None
        with pytest.raises(StoreConflict) as err:
            await s.create_job(Job(id="j1", data=b"other"))
        assert err.value.current == job


@uv
async def test_update_compare_and_set(backend: Backend) -> None:
    async with backend.open() as s:
        await s.create_job(Job(id="j"))
        backend.clock.advance(5)
        j2 = await s.update_job("j", expect_version=1, status="running", data=b"d")
        assert (j2.status, j2.data, j2.version, j2.updated) == ("running", b"d", 2, backend.clock.t)
        with pytest.raises(StoreConflict) as err:
            await s.update_job("j", expect_version=1, status="failed")
        assert err.value.current == j2
        with pytest.raises(StoreConflict):
            await s.update_job("j", expect_status=("pending", "paused"), status="failed")
        j3 = await s.update_job("j", expect_status="running", result=b"ok", error="", status="done")
        assert (j3.status, j3.result, j3.version) == ("done", b"ok", 3)
        with pytest.raises(JobNotFound):
            await s.update_job("missing", status="x")


@uv
async def test_two_writers_race_a_compare_and_set(backend: Backend) -> None:
    """Two store objects (two connections for SQL) race the same CAS: exactly one wins."""
    async with backend.open() as a:
        await a.create_job(Job(id="race"))
        b = a if backend.kind == "memory" else await backend.opened()
        try:
            for round_ in range(1, 11):
                results = await asyncio.gather(
                    a.update_job("race", expect_version=round_, status=f"a{round_}"),
                    b.update_job("race", expect_version=round_, status=f"b{round_}"),
                    return_exceptions=True,
                )
                wins = [r for r in results if isinstance(r, Job)]
                losses = [r for r in results if isinstance(r, StoreConflict)]
                assert len(wins) == 1 and len(losses) == 1, results
                assert wins[0].version == round_ + 1
            final = await a.get_job("race")
            assert final is not None and final.version == 11
        finally:
            if b is not a:
                await b.close()


@uv
async def test_list_filters_and_pagination(backend: Backend) -> None:
    async with backend.open() as s:
        for i in range(25):
            backend.clock.advance(1)
            await s.create_job(
                Job(
                    id=f"job{i:02d}",
                    tenant="a" if i % 2 else "b",
                    status="done" if i % 3 else "pending",
                )
            )
        seen: list[str] = []
        cursor = None
        while True:
            page = await s.list_jobs(limit=7, cursor=cursor)
            seen += [j.id for j in page.items]
            if page.next is None:
                break
            cursor = page.next
        assert seen == [f"job{i:02d}" for i in range(25)]
        newest = await s.list_jobs(newest_first=True, limit=3)
        assert [j.id for j in newest.items] == ["job24", "job23", "job22"]
        nxt = await s.list_jobs(newest_first=True, limit=3, cursor=newest.next)
        assert [j.id for j in nxt.items] == ["job21", "job20", "job19"]
        pending_a = await s.list_jobs(status="pending", tenant="a")
        assert [j.id for j in pending_a.items] == ["job03", "job09", "job15", "job21"]
        t0 = 1_000_000.0
        window = await s.list_jobs(created_after=t0 + 5, created_before=t0 + 9)
        assert [j.id for j in window.items] == ["job05", "job06", "job07"]
        both = await s.list_jobs(status=["pending", "done"], kind="")
        assert len(both.items) == 25 and both.next is None


@uv
async def test_ties_on_created_page_by_id(backend: Backend) -> None:
    async with backend.open() as s:
        for i in range(10):
            await s.create_job(Job(id=f"t{i}"))  # same clock reading for all
        ids: list[str] = []
        page = await s.list_jobs(limit=3)
        ids += [j.id for j in page.items]
        while page.next:
            page = await s.list_jobs(limit=3, cursor=page.next)
            ids += [j.id for j in page.items]
        assert ids == [f"t{i}" for i in range(10)]


@uv
async def test_lease_takeover_after_expiry(backend: Backend) -> None:
    async with backend.open() as s:
        await s.create_job(Job(id="j", status="running"))
        held = await s.acquire_job("j", "runner-a", ttl=10)
        assert held is not None and held.owner == "runner-a"
        assert held.lease_until == backend.clock.t + 10
        assert held.version == 1  # leases do not bump the CAS version
        assert await s.acquire_job("j", "runner-b", ttl=10) is None
        backend.clock.advance(5)
        beat = await s.heartbeat_job("j", "runner-a", ttl=10)
        assert beat.lease_until == backend.clock.t + 10
        backend.clock.advance(9)
        assert await s.acquire_job("j", "runner-b", ttl=10) is None  # renewed: still live
        backend.clock.advance(2)  # runner-a stopped beating: expired
        taken = await s.acquire_job("j", "runner-b", ttl=10)
        assert taken is not None and taken.owner == "runner-b"
        with pytest.raises(LeaseLost) as err:
            await s.heartbeat_job("j", "runner-a", ttl=10)
        assert isinstance(err.value.current, Job) and err.value.current.owner == "runner-b"
        assert await s.release_job("j", "runner-a") is False
        assert await s.release_job("j", "runner-b") is True
        free = await s.get_job("j")
        assert free is not None and free.owner == ""
        with pytest.raises(JobNotFound):
            await s.acquire_job("gone", "x", ttl=1)
        with pytest.raises(JobNotFound):
            await s.heartbeat_job("gone", "x", ttl=1)


@uv
async def test_expired_lease_can_still_be_renewed_by_its_owner(backend: Backend) -> None:
    async with backend.open() as s:
        await s.create_job(Job(id="j"))
        await s.acquire_job("j", "a", ttl=1)
        backend.clock.advance(5)
        renewed = await s.heartbeat_job("j", "a", ttl=1)  # nobody took it in between
        assert renewed.owner == "a"


@uv
async def test_claim_takes_priority_then_age_and_never_twice(backend: Backend) -> None:
    async with backend.open() as s:
        await s.create_job(Job(id="low", priority=0))
        backend.clock.advance(1)
        await s.create_job(Job(id="high", priority=5))
        backend.clock.advance(1)
        await s.create_job(Job(id="low2", priority=0, tenant="t"))
        await s.create_job(Job(id="done", status="done", priority=9))
        got = [await s.claim_job(f"w{i}", ttl=30) for i in range(4)]
        assert [j.id if j else None for j in got] == ["high", "low", "low2", None]
        assert all(j.owner == f"w{i}" for i, j in enumerate(got) if j)
        backend.clock.advance(31)  # every lease expired: a crashed runner's job is claimable
        again = await s.claim_job("w9", ttl=30, tenant="t")
        assert again is not None and again.id == "low2"
        assert await s.claim_job("w9", ttl=30, status="running") is None


@uv
async def test_concurrent_claimers_get_distinct_jobs(backend: Backend) -> None:
    async with backend.open() as a:
        for i in range(12):
            await a.create_job(Job(id=f"c{i}"))
        b = a if backend.kind == "memory" else await backend.opened()
        try:
            claims = await asyncio.gather(
                *[(a if i % 2 else b).claim_job(f"w{i}", ttl=60) for i in range(16)]
            )
            ids = [j.id for j in claims if j is not None]
            assert sorted(ids) == sorted(f"c{i}" for i in range(12))
        finally:
            if b is not a:
                await b.close()


@uv
async def test_delete_job_removes_its_ledger_and_checkpoints(backend: Backend) -> None:
    from engine.store import LedgerEntry

    async with backend.open() as s:
        await s.create_job(Job(id="j"))
        await s.append_ledger("j", [LedgerEntry(id="e1", data=b"x")])
        await s.put_checkpoint("j", 1, b"state")
        assert await s.delete_job("j") is True
        assert await s.delete_job("j") is False
        assert await s.get_job("j") is None
        assert await s.read_ledger("j") == []
        assert await s.get_checkpoint("j") is None


@uv
async def test_create_job_already_leased(backend: Backend) -> None:
    async with backend.open() as s:
        job = await s.create_job(Job(id="j", status="running"), owner="me", lease_ttl=30)
        assert (job.owner, job.lease_until) == ("me", backend.clock.t + 30)
        assert await s.get_job("j") == job
        assert await s.claim_job("other", ttl=30, status=("running", "pending")) is None
        backend.clock.advance(31)
        taken = await s.claim_job("other", ttl=30, status=("running", "pending"))
        assert taken is not None and taken.owner == "other"
        with pytest.raises(StoreInputError):
            await s.create_job(Job(id="k"), owner="me")  # a lease needs its ttl
        plain = await s.create_job(Job(id="p", owner="ignored", lease_until=1e12))
        assert (plain.owner, plain.lease_until) == ("", 0.0)


@uv
async def test_finish_job_is_one_transaction_or_nothing(backend: Backend) -> None:
    """finish_job: the last checkpoint, its ledger entries, the final fields and the lease
    drop go in together; a lost lease, an old version or a missing job change nothing."""
    async with backend.open() as s:
        await s.create_job(Job(id="j", status="running"), owner="me", lease_ttl=30)
        base = bytes(range(256)) * 16  # large enough to be stored as deltas
        await s.put_checkpoint("j", 1, base)
        await s.put_checkpoint("j", 2, base[:-1] + b"\x01")  # a delta of version 1
        before = await s.get_job("j")
        entry = LedgerEntry(id="answer", data=b"42", ledger="progress")
        with pytest.raises(LeaseLost):
            await s.finish_job("j", "other", status="completed", version=3, ledger=[entry])
        with pytest.raises(StoreConflict):
            await s.finish_job("j", "me", status="completed", version=2, ledger=[entry])
        with pytest.raises(JobNotFound):
            await s.finish_job("nope", "me", status="completed")
        with pytest.raises(StoreInputError):
            await s.finish_job("j", "me", status="completed", ledger=[entry])  # no version
        assert await s.get_job("j") == before
        assert await s.read_ledger("j") == []
        latest = await s.get_checkpoint("j")
        assert latest is not None and latest.version == 2
        backend.clock.advance(1)
        done = await s.finish_job(
            "j", "me", status="completed", result=b"r", version=3, state=base + b"!",
            ledger=[entry],
        )  # fmt: skip
        assert before is not None
        assert (done.status, done.result, done.error, done.version, done.owner) == (
            "completed", b"r", "", before.version + 1, "",
        )  # fmt: skip
        assert (done.lease_until, done.updated) == (0.0, backend.clock.t)
        assert await s.get_job("j") == done
        assert [e.id for e in await s.read_ledger("j")] == ["answer"]
        for version, state in ((2, base[:-1] + b"\x01"), (3, base + b"!")):
            ck = await s.get_checkpoint("j", version)
            assert ck is not None and ck.state == state
        with pytest.raises(LeaseLost):  # released: a second end is refused
            await s.finish_job("j", "me", status="failed")
        await s.create_job(Job(id="k", status="running"), owner="me", lease_ttl=30)
        k = await s.finish_job("k", "me", status="failed", error="why")  # no checkpoint
        assert (k.status, k.error, k.owner) == ("failed", "why", "")
        assert await s.get_checkpoint("k") is None
