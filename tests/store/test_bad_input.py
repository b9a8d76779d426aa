"""Bad input gets a typed error naming what was wrong, never a crash or a half-write."""

from __future__ import annotations

from typing import Any

import pytest

import engine.store
from engine.store import (
    Job,
    LedgerEntry,
    MeshWrites,
    PendingMessage,
    RecordTooLarge,
    StoreClosed,
    StoreInputError,
    StoreURLError,
)
from tests.agents_for_tests import uv
from tests.store.conftest import Backend

BAD_IDS: list[Any] = ["", "a\x00b", "\udc80", 5, None, b"bytes", "x" * 513]


@uv
async def test_bad_ids_and_types(backend: Backend) -> None:
    async with backend.open() as s:
        for bad in BAD_IDS:
            with pytest.raises(StoreInputError):
                await s.get_job(bad)
            with pytest.raises(StoreInputError):
                await s.create_job(Job(id=bad))
            with pytest.raises(StoreInputError):
                await s.kv_put("ns", bad, b"v")
            with pytest.raises(StoreInputError):
                await s.put_checkpoint(bad, 1, b"")
        with pytest.raises(StoreInputError, match="job must be"):
            await s.create_job({"id": "x"})  # type: ignore[arg-type]
        with pytest.raises(StoreInputError, match="data must be bytes"):
            await s.create_job(Job(id="x", data="text"))  # type: ignore[arg-type]
        with pytest.raises(StoreInputError, match="priority"):
            await s.create_job(Job(id="x", priority=2**40))
        with pytest.raises(StoreInputError, match="version"):
            await s.put_checkpoint("j", 0, b"")
        with pytest.raises(StoreInputError, match="version"):
            await s.put_checkpoint("j", True, b"")  # type: ignore[arg-type]
        with pytest.raises(StoreInputError, match="ttl"):
            await s.kv_put("ns", "k", b"", ttl=0)
        with pytest.raises(StoreInputError, match="ttl"):
            await s.kv_put("ns", "k", b"", ttl=float("nan"))
        with pytest.raises(StoreInputError, match="entries"):
            await s.append_ledger("j", [b"raw"])  # type: ignore[list-item]
        with pytest.raises(StoreInputError, match="entries"):
            await s.append_ledger("j", iter([LedgerEntry(id="a", data=b"")]))  # type: ignore[arg-type]
        for bad_entry in [
            *(LedgerEntry(id=bad, data=b"") for bad in BAD_IDS),
            LedgerEntry(id="a", data="text"),  # type: ignore[arg-type]
            LedgerEntry(id="a", data=b"", ledger="p\x00"),
            LedgerEntry(id="a", data=b"", ledger=7),  # type: ignore[arg-type]
            LedgerEntry(id="a", data=b"", at=float("nan")),
            LedgerEntry(id="a", data=b"", at=float("inf")),
            LedgerEntry(id="a", data=b"", at="now"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(StoreInputError, match="entry"):  # checked before any write
                await s.put_checkpoint(
                    "j", 1, b"s", ledger=[LedgerEntry(id="ok", data=b""), bad_entry]
                )
        with pytest.raises(StoreInputError, match="limit"):
            await s.list_jobs(limit=0)
        with pytest.raises(StoreInputError, match="cursor"):
            await s.list_jobs(cursor="garbage")
        with pytest.raises(StoreInputError, match="status"):
            await s.list_jobs(status=[])
        with pytest.raises(StoreInputError, match=r"writes\.put"):
            await s.mesh_apply(MeshWrites(put=[("k", b"e")]))  # type: ignore[list-item]
        with pytest.raises(StoreInputError, match="ids"):
            await s.remove_dead_letters(["1"])  # type: ignore[list-item]
        with pytest.raises(StoreInputError, match="not both"):
            await s.get_checkpoint("j", 1, name="n")
        # nothing above was written
        assert (await s.list_jobs()).items == []
        assert await s.kv_scan("ns") == []
        assert await s.read_ledger("j") == []
        assert await s.get_checkpoint("j") is None


@uv
async def test_oversized_records(backend: Backend) -> None:
    async with backend.open(max_value_bytes=1000) as s:
        big = b"x" * 1001
        with pytest.raises(RecordTooLarge):
            await s.kv_put("ns", "k", big)
        with pytest.raises(RecordTooLarge):
            await s.put_checkpoint("j", 1, big)
        with pytest.raises(RecordTooLarge):
            await s.append_ledger("j", [LedgerEntry(id="a", data=big)])
        with pytest.raises(RecordTooLarge):
            await s.mesh_apply(MeshWrites(put=[PendingMessage("k", big)]))
        with pytest.raises(RecordTooLarge):
            await s.update_job("j", data=big)
        await s.kv_put("ns", "k", b"x" * 1000)  # the limit itself is fine
        assert await s.kv_get("ns", "k") == b"x" * 1000


@uv
async def test_closed_store_refuses_calls(backend: Backend) -> None:
    s = await backend.opened()
    await s.close()
    await s.close()  # twice is fine
    with pytest.raises(StoreClosed):
        await s.get_job("j")
    with pytest.raises(StoreClosed):
        await s.kv_put("ns", "k", b"")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://localhost",
        "sqlite://",
        "sqlite:///",
        "sqlite://relative.db",
        "memory://x",
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///x.db?journal=off",
        42,
    ],
)
def test_bad_urls_are_refused_before_anything_opens(url: Any) -> None:
    with pytest.raises(StoreURLError):
        engine.store.open(url)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(StoreInputError, match="unknown store option"):
        engine.store.open("memory://", durabilty="batch")


@uv
async def test_bad_option_values_are_refused() -> None:
    for bad in (
        {"durability": "sometimes"},
        {"keep_checkpoints": 0},
        {"queue_size": -1},
        {"checkpoint_ttl": -5.0},
    ):
        with pytest.raises(StoreInputError):
            await engine.store.open("memory://", **bad)
