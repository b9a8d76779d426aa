"""Opening by URL, existing-only opens, schema versions and forward migrations, the CLI."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import engine.store
from engine.cli import main as cli
from engine.store import LedgerEntry, SchemaVersionError, StoreError, StoreNotFound
from engine.store._url import mask, parse_url
from engine.store.migrations import LATEST, MIGRATIONS, Migration
from tests.agents_for_tests import uv
from tests.store.conftest import Backend
from tests.store.pg_server import PgServer


def test_url_forms() -> None:
    assert parse_url("sqlite:///rel/x.db").target == "rel/x.db"
    assert parse_url("sqlite:////abs/x.db").target == "/abs/x.db"
    assert parse_url("/abs/x.db").target == "/abs/x.db"
    assert parse_url("x.db").kind == "sqlite"
    assert parse_url("sqlite:///x.db?synchronous=FULL").param("synchronous", "") == "full"
    assert parse_url("postgres://u@h/db").target == "postgresql://u@h/db"
    assert parse_url("postgresql+psycopg://u@h/db").kind == "postgresql"
    assert mask("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask("postgresql://u@h/db") == "postgresql://u@h/db"


@uv
async def test_relative_and_absolute_sqlite_paths(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        async with engine.store.open("sqlite:///rel.db") as s:
            await s.kv_put("n", "k", b"v")
        assert (tmp_path / "rel.db").is_file()
        async with engine.store.open(f"sqlite:///{tmp_path}/rel.db") as s:  # four slashes
            assert await s.kv_get("n", "k") == b"v"
        async with engine.store.open("rel.db", create=False) as s:  # a plain path
            assert await s.kv_get("n", "k") == b"v"
    finally:
        os.chdir(cwd)


@uv
async def test_existing_only_never_creates(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreNotFound):
        await engine.store.open(f"sqlite:///{missing}", create=False)
    assert not missing.exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreNotFound, match="no engine store"):
        await engine.store.open(f"sqlite:///{other}", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        await engine.store.open(f"sqlite:///{junk}")
    with pytest.raises(StoreError):
        await engine.store.open(f"sqlite:///{tmp_path}/no/such/dir/x.db")


@uv
async def test_existing_only_on_postgres(pg: PgServer) -> None:
    with pytest.raises(StoreNotFound, match="does not exist"):
        await engine.store.open(f"{pg.base}/no_such_db", create=False)
    empty = pg.fresh_schema_url("empty_schema")
    with pytest.raises(StoreNotFound, match="no engine store"):
        await engine.store.open(empty, create=False)
    with pytest.raises(StoreError, match="cannot connect"):
        await engine.store.open("postgresql://postgres@127.0.0.1:1/x")


def _set_schema(backend: Backend, version: int) -> None:
    """Write a schema row behind the store's back (as a newer or older engine would)."""
    sql = f"INSERT INTO engine_schema (version, name, applied) VALUES ({version}, 'x', 0)"
    if backend.kind == "sqlite":
        path = backend.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute(sql)
        return
    import psycopg

    with psycopg.connect(backend.url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@uv
async def test_newer_schema_refuses_to_open(sql_backend: Backend) -> None:
    async with sql_backend.open() as s:
        assert await s.schema_version() == LATEST
    _set_schema(sql_backend, LATEST + 1)
    for create in (True, False):
        with pytest.raises(SchemaVersionError, match="newer than this code"):
            await sql_backend.open(create=create)


@uv
async def test_forward_migrations_apply_in_order(
    sql_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sql_backend.open() as s:
        await s.kv_put("n", "k", b"kept")
    extra = Migration(
        LATEST + 1,
        "test_extra",
        "CREATE TABLE engine_test_extra (x INTEGER); INSERT INTO engine_test_extra VALUES (7)",
        "CREATE TABLE engine_test_extra (x INTEGER); INSERT INTO engine_test_extra VALUES (7)",
    )
    monkeypatch.setattr("engine.store._sql.MIGRATIONS", (*MIGRATIONS, extra))
    monkeypatch.setattr("engine.store._sql.LATEST", LATEST + 1)
    with pytest.raises(SchemaVersionError, match="engine store migrate"):
        await sql_backend.open(migrate=False)
    with pytest.raises(SchemaVersionError, match="older"):
        await sql_backend.open(create=False)  # read-only opens never migrate
    before, after = await engine.store.migrate(sql_backend.url)
    assert (before, after) == (LATEST, LATEST + 1)
    async with sql_backend.open(create=False) as s:
        assert await s.schema_version() == LATEST + 1
        assert await s.kv_get("n", "k") == b"kept"
    assert await engine.store.migrate(sql_backend.url) == (LATEST + 1, LATEST + 1)


def test_cli_store_migrate_and_version(
    sql_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["store", "version", sql_backend.url]) == 1
    assert "no engine store" in capsys.readouterr().err
    assert cli(["store", "migrate", sql_backend.url]) == 0
    assert f"schema 0 -> {LATEST}" in capsys.readouterr().out
    assert cli(["store", "migrate", sql_backend.url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli(["store", "version", sql_backend.url]) == 0
    assert f"schema {LATEST} (up to date)" in capsys.readouterr().out
    assert cli(["store", "migrate", "redis://nope"]) == 2
    assert "unsupported store URL scheme" in capsys.readouterr().err


@uv
async def test_a_schema_1_store_migrates_to_2_keeping_its_ledgers(
    sql_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 rebuilds SQLite's ledger table (no AUTOINCREMENT, no (job_id, seq) index):
    a store written by schema-1 code opens with every entry, its seq and its idempotence."""
    first = MIGRATIONS[:1]
    monkeypatch.setattr("engine.store._sql.MIGRATIONS", first)
    monkeypatch.setattr("engine.store._sql.LATEST", 1)
    async with sql_backend.open() as s:
        assert await s.schema_version() == 1
        await s.append_ledger("a", [LedgerEntry(id=f"a{i}", data=b"%d" % i) for i in range(3)])
        await s.append_ledger("b", [LedgerEntry(id="b0", data=b"x", ledger="task")])
        await s.append_ledger("a", [LedgerEntry(id="a3", data=b"3", ledger="progress")])
        await s.put_checkpoint("a", 1, b"state")
        before = await s.read_ledger("a")
    monkeypatch.undo()
    with pytest.raises(SchemaVersionError, match="older"):
        await sql_backend.open(migrate=False)
    async with sql_backend.open() as s:
        assert await s.schema_version() == LATEST
        after = await s.read_ledger("a")
        assert [(e.id, e.seq, e.data, e.ledger) for e in after] == [
            (e.id, e.seq, e.data, e.ledger) for e in before
        ]
        assert [e.id for e in await s.read_ledger("a", ledger="progress")] == ["a3"]
        assert [e.id for e in await s.read_ledger("a", after=before[1].seq)] == ["a2", "a3"]
        again = [LedgerEntry(id="a0", data=b"again"), LedgerEntry(id="a4", data=b"4")]
        await s.append_ledger("a", again)
        now = await s.read_ledger("a")
        assert [e.id for e in now] == ["a0", "a1", "a2", "a3", "a4"]  # a0 kept its first data
        assert now[0].data == b"0" and now[-1].seq > before[-1].seq
        assert [e.id for e in await s.read_ledger("b")] == ["b0"]
        ck = await s.get_checkpoint("a")
        assert ck is not None and ck.state == b"state"
    if sql_backend.kind == "sqlite":
        with sqlite3.connect(sql_backend.url.removeprefix("sqlite:///")) as conn:
            (table,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'engine_ledger'"
            ).fetchone()
            assert "AUTOINCREMENT" not in table.upper()
            indexes = {r[1] for r in conn.execute("PRAGMA index_list(engine_ledger)")}
            assert indexes == {"engine_ledger_id"}
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM engine_ledger WHERE job_id = 'a' AND seq > 0 "
                "ORDER BY seq LIMIT 10"
            ).fetchall()
            assert "engine_ledger_id" in plan[0][-1]  # a job's rows, not a table scan
