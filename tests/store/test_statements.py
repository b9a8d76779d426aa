"""What a write costs the database, counted rather than timed: the statements SQLite runs
per write, the round trips (Syncs) PostgreSQL sees per write; that the one-statement
PostgreSQL checkpoint (ledger entries and retention folded into the insert) keeps exactly
the rows SQLite's separate statements keep; and that a PostgreSQL batch never commits half
of itself."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import engine.store
from engine.store import LedgerEntry, StoreError
from engine.store import _sqlops as ops
from tests.agents_for_tests import uv
from tests.store.conftest import FakeClock
from tests.store.pg_server import PgServer


def _state(step: int, width: int = 40) -> bytes:
    entries = [{"step": i, "note": "x" * width} for i in range(step)]
    return msgspec.msgpack.encode({"step": step, "ledger": entries})


def _entries(*ids: str) -> list[LedgerEntry]:
    return [LedgerEntry(id=i, data=i.encode(), ledger="progress") for i in ids]


def _first_words(statements: list[str]) -> list[str]:
    return [s.split(None, 1)[0].upper() for s in statements]


@uv
async def test_sqlite_lone_writes_are_one_statement(tmp_path: Path) -> None:
    async with engine.store.open(f"sqlite:///{tmp_path / 's.db'}", keep_checkpoints=None) as s:
        await s.put_checkpoint("j", 1, _state(1))
        seen: list[str] = []
        s._conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        await s.put_checkpoint("j", 2, _state(2))  # a delta: its own commit, no BEGIN
        await s.kv_put("ns", "k", b"v")
        await s.append_ledger("j", _entries("a"))
        assert _first_words(seen) == ["INSERT", "INSERT", "INSERT"]
        seen.clear()
        await s.put_checkpoint("j", 3, _state(3), ledger=_entries("b", "c"))
        assert _first_words(seen) == ["BEGIN", "INSERT", "INSERT", "COMMIT"]  # both entries
        s._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        assert [e.id for e in await s.read_ledger("j")] == ["a", "b", "c"]
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.version == 3 and ck.state == _state(3)
    async with engine.store.open(f"sqlite:///{tmp_path / 'k.db'}", keep_checkpoints=2) as s:
        seen = []
        s._conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        await s.put_checkpoint("j", 1, _state(1))
        await s.put_checkpoint("j", 2, _state(2))
        # versions up to keep: the job cannot hold more rows than that, no retention
        assert _first_words(seen) == ["INSERT", "INSERT"]
        seen.clear()
        await s.put_checkpoint("j", 3, _state(3))
        assert _first_words(seen) == ["BEGIN", "INSERT", "SELECT", "DELETE", "UPDATE", "COMMIT"]
        await s.put_checkpoint("j", 4, _state(4))
        seen.clear()
        await s.create_job(engine.store.Job(id="j", status="running"), owner="me", lease_ttl=9)
        await s.finish_job("j", "me", status="completed", version=5, state=_state(5),
                           ledger=_entries("z"))  # fmt: skip
        # the end of a job: its fields and lease, checkpoint, ledger entry in one commit
        assert _first_words(seen) == ["INSERT", "BEGIN", "UPDATE", "INSERT", "INSERT", "SELECT",
                                      "DELETE", "UPDATE", "COMMIT"]  # fmt: skip
        s._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        assert [c.version for c in await s.list_checkpoints("j")] == [5, 4]


def _trace(tmp_path: Path, conn: Any) -> Iterator[list[str]]:
    """The frontend messages libpq sends on ``conn`` while the generator is suspended."""
    from psycopg import pq

    path = tmp_path / "libpq.trace"
    messages: list[str] = []
    with path.open("w") as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield messages
        finally:
            conn.pgconn.untrace()
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if fields[0] == "F":
            messages.append(" ".join(fields[2:]))


@uv
async def test_postgres_writes_are_one_round_trip_each(pg: PgServer, tmp_path: Path) -> None:
    url = pg.fresh_schema_url("round_trips")
    async with engine.store.open(url, keep_checkpoints=3) as s:
        await s.put_checkpoint("j", 1, _state(1))
        conn = s._writer  # type: ignore[attr-defined]
        tracer = _trace(tmp_path, conn)
        messages = next(tracer)
        # a delta with its step's ledger entries and the retention: one statement
        await s.put_checkpoint("j", 2, _state(2), ledger=_entries("a", "b"))
        await s.put_checkpoint("j", 3, _state(3))  # a delta and the retention
        await s.append_ledger("j", _entries("c", "d", "e"))  # one statement for any number
        await s.kv_put("ns", "k", b"v")
        with pytest.raises(StopIteration):
            next(tracer)
        kinds = [m.split(" ", 1)[0] for m in messages]
        assert kinds.count("Sync") == 4, messages  # one round trip each
        assert kinds.count("Execute") == 4, messages  # one statement each
        assert not any("BEGIN" in m or "COMMIT" in m for m in messages), messages
        assert [e.id for e in await s.read_ledger("j")] == ["a", "b", "c", "d", "e"]
        ck = await s.get_checkpoint("j")
        assert ck is not None and ck.version == 3 and ck.state == _state(3)


def _rows(kind: str, url: str) -> list[tuple[int, int, int]]:
    sql = "SELECT version, base, hidden FROM engine_checkpoints WHERE job_id = 'j' ORDER BY 1"
    if kind == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return [tuple(r) for r in conn.execute(sql)]
    import psycopg

    with psycopg.connect(url) as pconn:
        return [tuple(r) for r in pconn.execute(sql)]  # type: ignore[arg-type, misc]


async def _retention_script(url: str, keep: int) -> list[int]:
    """Whole rows and delta chains, deletions that leave hidden chain rows, ledger entries."""
    async with engine.store.open(url, keep_checkpoints=keep, clock=FakeClock()) as s:
        for v in range(1, 41):
            state = _state(v) if v % 13 else _state(v, width=90)  # now and then: whole
            ledger = _entries(f"e{v}") if v % 3 == 0 else []
            await s.put_checkpoint("j", v, state, ledger=ledger)
            if v % 7 == 0:
                await s.delete_checkpoints("j", [v - 1])
            latest = await s.get_checkpoint("j")
            assert latest is not None and latest.state == state
        kept = await s.list_checkpoints("j", limit=100, with_state=True)
        for ck in kept:
            assert ck.state == (_state(ck.version) if ck.version % 13 else _state(ck.version, 90))
        assert len(await s.read_ledger("j")) == 13
        return [ck.version for ck in kept]


@pytest.mark.parametrize("keep", [1, 2, 5])
@uv
async def test_postgres_retention_in_one_statement_keeps_what_sqlite_keeps(
    pg: PgServer, tmp_path: Path, keep: int
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 's.db'}"
    pg_url = pg.fresh_schema_url(f"keep_{keep}")
    visible = await _retention_script(sqlite_url, keep)
    assert await _retention_script(pg_url, keep) == visible
    assert len(visible) == keep
    rows = _rows("sqlite", sqlite_url)
    assert _rows("postgres", pg_url) == rows
    assert len(rows) < 40  # rows no kept chain needs are gone, not only hidden


def _kv_insert(d: ops.Dialect, key: str, then: Any) -> ops.Op:
    yield ops.X(
        "INSERT INTO engine_kv (ns, key, value, expires, updated) VALUES (?, ?, ?, 0, 0)",
        ("ns", key, b"x"),
    )
    yield then


@uv
async def test_a_postgres_batch_commits_all_or_nothing(pg: PgServer) -> None:
    async with engine.store.open(pg.fresh_schema_url("atomic")) as s:
        await s.kv_put("ns", "warm", b"")
        run = s._run_batch  # type: ignore[attr-defined]
        # a failure in the client (a parameter psycopg cannot send) after a sent statement
        [result] = await run(
            [functools.partial(_kv_insert, ops.POSTGRES, "half", ops.X("SELECT ?", (object(),)))]
        )
        assert isinstance(result, StoreError)
        assert await s.kv_get("ns", "half") is None
        # a failure in the server (NOT NULL) after a successful statement
        bad = ops.X("INSERT INTO engine_kv (ns, key, value, expires, updated) VALUES "
                    "('ns', 'bad', NULL, 0, 0)")  # fmt: skip
        [result] = await run([functools.partial(_kv_insert, ops.POSTGRES, "half2", bad)])
        assert isinstance(result, StoreError)
        assert await s.kv_get("ns", "half2") is None
        # in a group: the failing operation alone fails, the others commit once
        good = functools.partial(ops.kv_put, ops.POSTGRES, engine.store.KVItem(
            namespace="ns", key="good", value=b"1"))  # fmt: skip
        results = await run([good, functools.partial(_kv_insert, ops.POSTGRES, "h3", bad), good])
        assert results[0] is None and results[2] is None and isinstance(results[1], StoreError)
        assert await s.kv_get("ns", "good") == b"1"
        assert await s.kv_get("ns", "h3") is None

        # an operation that breaks between its statements (a bug, a cancellation)
        def broken(d: ops.Dialect) -> ops.Op:
            yield ops.X("INSERT INTO engine_kv (ns, key, value, expires, updated) "
                        "VALUES ('ns', 'torn', '', 0, 0)")  # fmt: skip
            raise RuntimeError("broken between statements")
            yield ops.X("SELECT 1")

        with pytest.raises(RuntimeError):
            await run([functools.partial(broken, ops.POSTGRES), good])
        assert await s.kv_get("ns", "torn") is None
        await s.kv_put("ns", "after", b"2")  # the store reconnected
        assert await s.kv_get("ns", "after") == b"2"
