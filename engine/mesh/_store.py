"""Broker persistence (``--store sqlite:///path``): accepted-but-unfinished messages and the DLQ.

Writes are buffered by the broker loop and committed once per loop iteration (one
transaction for a whole batch), so persistence costs a few microseconds per message.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError

__all__ = ["DeadLetter", "MemoryStore", "SqliteStore", "open_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mesh_pending (key TEXT PRIMARY KEY, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mesh_dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class DeadLetter:
    """A message that exhausted its attempts (or could not be routed after acceptance)."""

    id: int
    key: str
    envelope: bytes
    reason: str
    attempts: int
    at: float


class MemoryStore:
    """In-memory dead-letter queue (bounded); nothing survives a restart."""

    def __init__(self, max_dead: int = 10_000) -> None:
        self._dead: dict[int, DeadLetter] = {}
        self._next = 1
        self.max_dead = max_dead

    def add(self, key: str, envelope: bytes) -> None:
        pass

    def remove(self, key: str) -> None:
        pass

    def load_pending(self) -> list[tuple[str, bytes]]:
        return []

    def add_dead(self, key: str, envelope: bytes, reason: str, attempts: int) -> None:
        if len(self._dead) >= self.max_dead:
            del self._dead[next(iter(self._dead))]
        entry = DeadLetter(self._next, key, envelope, reason, attempts, time.time())
        self._dead[self._next] = entry
        self._next += 1

    def list_dead(self, limit: int = 1000) -> list[DeadLetter]:
        return list(self._dead.values())[:limit]

    def remove_dead(self, ids: list[int]) -> None:
        for i in ids:
            self._dead.pop(i, None)

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class SqliteStore(MemoryStore):
    """SQLite (WAL) persistence of pending messages and dead letters."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise EngineError(f"cannot open store {path}: {exc}") from None
        self._adds: dict[str, bytes] = {}
        self._removes: list[str] = []

    def add(self, key: str, envelope: bytes) -> None:
        self._adds[key] = envelope

    def remove(self, key: str) -> None:
        if self._adds.pop(key, None) is None:
            self._removes.append(key)

    def load_pending(self) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT key, envelope FROM mesh_pending ORDER BY rowid").fetchall()
        return [(k, bytes(e)) for k, e in rows]

    def add_dead(self, key: str, envelope: bytes, reason: str, attempts: int) -> None:
        self.commit()
        self._db.execute(
            "INSERT INTO mesh_dead (key, envelope, reason, attempts, at) VALUES (?, ?, ?, ?, ?)",
            (key, envelope, reason, attempts, time.time()),
        )

    def list_dead(self, limit: int = 1000) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT id, key, envelope, reason, attempts, at FROM mesh_dead ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(i, k, bytes(e), r, a, t) for i, k, e, r, a, t in rows]

    def remove_dead(self, ids: list[int]) -> None:
        self._db.executemany("DELETE FROM mesh_dead WHERE id = ?", [(i,) for i in ids])

    def commit(self) -> None:
        if not self._adds and not self._removes:
            return
        db = self._db
        db.execute("BEGIN")
        if self._adds:
            db.executemany(
                "INSERT OR REPLACE INTO mesh_pending (key, envelope) VALUES (?, ?)",
                list(self._adds.items()),
            )
        if self._removes:
            db.executemany("DELETE FROM mesh_pending WHERE key = ?", [(k,) for k in self._removes])
        db.execute("COMMIT")
        self._adds.clear()
        self._removes.clear()

    def close(self) -> None:
        self.commit()
        self._db.close()


def open_store(url: str | None) -> MemoryStore:
    """``None`` -> in-memory; ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    if not url:
        return MemoryStore()
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise EngineError(f"unsupported store URL {url!r}: expected sqlite:///PATH")
    return SqliteStore(url[len(prefix) :])
