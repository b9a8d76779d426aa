"""The broker's durable messages on engine.store (engine/mesh/_store.py), SQLite and PostgreSQL:
what the broker loop calls, from a plain thread and from a thread that runs an event loop,
read-only opens, and a store written by the broker before it moved onto engine.store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engine import cli
from engine.errors import StoreNotFound
from engine.mesh._store import (
    DeadLetter,
    DurableStore,
    MemoryStore,
    MeshWrites,
    PendingMessage,
    open_store,
)


def test_writes_survive_a_reopen_in_order(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, DurableStore)
    try:
        store.apply(MeshWrites(put=[PendingMessage(f"o:{i}", bytes([i])) for i in range(5)]))
        store.apply(
            MeshWrites(
                put=[PendingMessage("o:1", b"replaced")],
                remove=["o:0", "o:3", "never:there"],
                dead=[DeadLetter("o:9", b"env", "dead-lettered after 3 attempts", 3)],
            )
        )
        store.apply(MeshWrites())  # nothing to write: no transaction
    finally:
        store.close()
    again = open_store(store_url)
    try:
        pending = again.pending()
        assert [(p.key, p.envelope) for p in pending] == [
            ("o:1", b"replaced"),
            ("o:2", b"\x02"),
            ("o:4", b"\x04"),
        ]
        (dead,) = again.dead_letters()
        assert (dead.key, dead.envelope, dead.reason, dead.attempts) == (
            "o:9",
            b"env",
            "dead-lettered after 3 attempts",
            3,
        )
        assert dead.id > 0 and dead.at > 0  # set by the store
        assert again.remove_dead_letters([dead.id, dead.id + 1000]) == 1
        assert again.dead_letters() == []
    finally:
        again.close()


def test_dead_letters_are_bounded(store_url: str) -> None:
    store = DurableStore(store_url, max_dead=3)
    try:
        for i in range(5):
            store.apply(MeshWrites(dead=[DeadLetter(f"o:{i}", b"e", "why", 1)]))
        assert [d.key for d in store.dead_letters()] == ["o:2", "o:3", "o:4"]
    finally:
        store.close()


def test_usable_from_a_thread_that_runs_an_event_loop(store_url: str) -> None:
    # a broker built inside async code: its store is opened, used and closed there
    async def main() -> list[PendingMessage]:
        store = open_store(store_url)
        try:
            store.apply(MeshWrites(put=[PendingMessage("a:1", b"x")]))
            return store.pending()
        finally:
            store.close()

    assert [p.key for p in asyncio.run(main())] == ["a:1"]


def test_read_only_open_of_a_missing_store_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(StoreNotFound, match="no engine store"):
        open_store(f"sqlite:///{missing}", create=False)
    assert cli.main(["dlq", "list", "--store", f"sqlite:///{missing}"]) != 0
    assert "no engine store" in capsys.readouterr().err
    assert not missing.exists()  # nothing created
    assert type(open_store(None)) is MemoryStore


def test_a_store_the_broker_wrote_before_the_move_is_imported(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    with sqlite3.connect(path) as db:  # the tables and rows of the broker's earlier store
        db.executescript(
            "CREATE TABLE mesh_pending (key TEXT PRIMARY KEY, envelope BLOB NOT NULL);"
            "CREATE TABLE mesh_dead (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
            "envelope BLOB NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL, "
            "at REAL NOT NULL);"
        )
        db.executemany("INSERT INTO mesh_pending VALUES (?, ?)", [("b:2", b"two"), ("a:1", b"one")])
        db.execute(
            "INSERT INTO mesh_dead (key, envelope, reason, attempts, at) "
            "VALUES ('c:3', x'00', 'gone', 5, 12.5)"
        )
    db.close()
    store = open_store(f"sqlite:///{path}", create=False)  # as `engine dlq` opens it
    try:
        assert [(p.key, p.envelope) for p in store.pending()] == [("b:2", b"two"), ("a:1", b"one")]
        assert [(d.key, d.reason, d.attempts, d.at) for d in store.dead_letters()] == [
            ("c:3", "gone", 5, 12.5)
        ]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "mesh_pending" not in tables and "mesh_dead" not in tables  # imported once
    again = open_store(f"sqlite:///{path}")
    try:
        assert len(again.pending()) == 2 and len(again.dead_letters()) == 1
    finally:
        again.close()
