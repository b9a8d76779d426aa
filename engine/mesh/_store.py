"""Broker persistence (``--store sqlite:///path``): accepted-but-unfinished messages and the DLQ.

The broker core never touches a database: each loop iteration it hands the shell one
:class:`MeshWrites` batch, which the shell applies in one transaction **before** it sends
anything that depends on it (write-ahead). The interface the broker uses is exactly:

- ``apply(writes: MeshWrites) -> None``: in one transaction, in this order: ``put``
  (insert or replace pending messages by key), ``remove`` (pending keys), ``dead``
  (append dead letters; the oldest beyond the store's bound are dropped);
- ``pending() -> list[PendingMessage]``: every pending message, oldest first (restored at
  start);
- ``dead_letters(limit) -> list[DeadLetter]``, ``remove_dead_letters(ids) -> int``: the
  DLQ, for ``engine dlq``;
- ``close()``;
- ``path``: the SQLite file, ``None`` for an in-memory store (``/readyz`` checks that the
  file accepts a write: ``engine.observe.health.broker_checks``).

The names match ``engine.store``'s mesh part (``Store.mesh_apply``, ``Store.mesh_pending``,
``Store.dead_letters``, ``Store.remove_dead_letters``, ``MeshWrites``, ``PendingMessage``,
``DeadLetter``), so moving the broker onto that store is a rename. A pending key is
``"origin:seq"`` of the envelope id; only the peer that registered an origin may submit
under it, so one client cannot overwrite another's pending message.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError
from engine.messages import MessageId

__all__ = [
    "DeadLetter",
    "MemoryStore",
    "MeshWrites",
    "PendingMessage",
    "SqliteStore",
    "open_store",
    "pending_key",
]

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


def pending_key(mid: MessageId) -> str:
    return f"{mid.origin}:{mid.seq}"


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message the broker accepted and has not finished."""

    key: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that exhausted its attempts (``id`` and ``at`` are set by the store)."""

    key: str
    envelope: bytes
    reason: str
    attempts: int
    at: float = 0.0
    id: int = 0


@dataclass(slots=True)
class MeshWrites:
    """One batch of the broker's durable writes (see the module docstring)."""

    put: list[PendingMessage] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.put or self.remove or self.dead)


class MemoryStore:
    """No persistence of pending messages; a bounded in-memory dead-letter queue."""

    #: The database file, None when nothing is persisted.
    path: Path | None = None

    def __init__(self, max_dead: int = 10_000) -> None:
        self._dead: dict[int, DeadLetter] = {}
        self._next = 1
        self.max_dead = max_dead

    def apply(self, writes: MeshWrites) -> None:
        for dead in writes.dead:
            if len(self._dead) >= self.max_dead:
                del self._dead[next(iter(self._dead))]
            self._dead[self._next] = DeadLetter(
                dead.key,
                dead.envelope,
                dead.reason,
                dead.attempts,
                dead.at or time.time(),
                self._next,
            )
            self._next += 1

    def pending(self) -> list[PendingMessage]:
        return []

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        return list(self._dead.values())[:limit]

    def remove_dead_letters(self, ids: Sequence[int]) -> int:
        return sum(self._dead.pop(i, None) is not None for i in ids)

    def close(self) -> None:
        pass


class SqliteStore(MemoryStore):
    """SQLite (WAL) persistence of pending messages and dead letters."""

    def __init__(self, path: str | Path, max_dead: int = 100_000) -> None:
        super().__init__(max_dead)
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise EngineError(f"cannot open store {path}: {exc}") from None

    def apply(self, writes: MeshWrites) -> None:
        if not writes:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if writes.put:
                db.executemany(
                    "INSERT OR REPLACE INTO mesh_pending (key, envelope) VALUES (?, ?)",
                    [(p.key, p.envelope) for p in writes.put],
                )
            if writes.remove:
                db.executemany(
                    "DELETE FROM mesh_pending WHERE key = ?", [(k,) for k in writes.remove]
                )
            if writes.dead:
                db.executemany(
                    "INSERT INTO mesh_dead (key, envelope, reason, attempts, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (d.key, d.envelope, d.reason, d.attempts, d.at or time.time())
                        for d in writes.dead
                    ],
                )
                db.execute(
                    "DELETE FROM mesh_dead WHERE id <= (SELECT MAX(id) FROM mesh_dead) - ?",
                    (self.max_dead,),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def pending(self) -> list[PendingMessage]:
        rows = self._db.execute("SELECT key, envelope FROM mesh_pending ORDER BY rowid").fetchall()
        return [PendingMessage(k, bytes(e)) for k, e in rows]

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT key, envelope, reason, attempts, at, id FROM mesh_dead ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(k, bytes(e), r, a, t, i) for k, e, r, a, t, i in rows]

    def remove_dead_letters(self, ids: Sequence[int]) -> int:
        cur = self._db.executemany("DELETE FROM mesh_dead WHERE id = ?", [(i,) for i in ids])
        return max(0, cur.rowcount)

    def close(self) -> None:
        self._db.close()


def open_store(url: str | None) -> MemoryStore:
    """``None`` -> in-memory; ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    if not url:
        return MemoryStore()
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise EngineError(f"unsupported store URL {url!r}: expected sqlite:///PATH")
    return SqliteStore(url[len(prefix) :])
