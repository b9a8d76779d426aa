"""Broker persistence (``--store URL``): accepted-but-unfinished messages and the DLQ.

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
- ``path``: the SQLite file, ``None`` for an in-memory or PostgreSQL store (``/readyz``
  checks that the file accepts a write: ``engine.observe.health.broker_checks``).

With a URL (``sqlite:///path``, ``postgresql://...``) these are
:meth:`engine.store.Store.mesh_apply`, ``mesh_pending``, ``dead_letters`` and
``remove_dead_letters`` of the store :func:`engine.store.open` opens there, always at
``durability="commit"``. A pending key is ``"origin:seq"`` of the envelope id; only the
peer that registered an origin may submit under it, so one client cannot overwrite
another's pending message.

The broker's loop is a thread, not a coroutine: each call runs the store's coroutine to its
end in the calling thread, on an event loop private to this store (``engine.store._lane``;
a SQLite write completes without suspending, so it costs no loop iteration). A call made
in a thread that runs an event loop of its own (a broker built inside async code) runs in a
helper thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import StoreError
from engine.messages import MessageId
from engine.store import base as stored
from engine.store._lane import Lane
from engine.store._url import parse_url

__all__ = [
    "DeadLetter",
    "DurableStore",
    "MemoryStore",
    "MeshWrites",
    "PendingMessage",
    "SqliteStore",
    "open_store",
    "pending_key",
]

T = TypeVar("T")


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

    #: The database file, None when nothing is persisted in a file.
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


async def _opened(store: stored.Store) -> None:
    """Nothing to do: reaching here opened the store."""


# The tables of the broker's own SQLite store before it moved onto engine.store.
_LEGACY = ("mesh_pending", "mesh_dead")
_IMPORT_LEGACY = """
BEGIN IMMEDIATE;
INSERT INTO engine_mesh_pending (broker, key, envelope)
    SELECT '', key, envelope FROM mesh_pending ORDER BY rowid
    ON CONFLICT (broker, key) DO UPDATE SET envelope = excluded.envelope;
INSERT INTO engine_mesh_dead (broker, key, envelope, reason, attempts, at)
    SELECT '', key, envelope, reason, attempts, at FROM mesh_dead ORDER BY id;
DROP TABLE mesh_pending;
DROP TABLE mesh_dead;
COMMIT;
"""


def _legacy_tables(path: Path) -> bool:
    """Whether the SQLite file holds the tables of the broker's earlier store."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return False  # not SQLite: engine.store says what is wrong with it
    return set(_LEGACY) <= {r[0] for r in rows}


def _import_legacy(path: Path) -> None:
    """Move the earlier store's messages into the engine tables, in one transaction."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=10.0)) as db:
        try:
            db.executescript(_IMPORT_LEGACY)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(
                f"cannot import the broker's earlier tables in {path}: {exc}"
            ) from None


class DurableStore(MemoryStore):
    """Pending messages and dead letters in an :mod:`engine.store` store (SQLite or
    PostgreSQL). ``create=False`` opens an existing store only (``engine dlq``)."""

    def __init__(self, url: str, *, create: bool = True, max_dead: int = 100_000) -> None:
        super().__init__(max_dead)
        parsed = parse_url(url)  # StoreURLError (an EngineError) names what is wrong
        self.url = url
        self.path = Path(parsed.target) if parsed.kind == "sqlite" else None
        # a broker store written before the move: its messages are imported, never dropped
        legacy = self.path is not None and _legacy_tables(self.path)
        options: dict[str, Any] = {
            "create": create or legacy,
            "durability": "commit",
            "max_dead_letters": max_dead,
        }
        self._lane = Lane(url, None, options)
        try:
            self._call(self._lane.sync, _opened)  # a store that cannot open fails here
            if legacy and self.path is not None:
                _import_legacy(self.path)
        except BaseException:
            self._call(self._lane.close)  # the lane's private event loop
            raise

    @staticmethod
    def _call(fn: Callable[..., T], *args: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args)
        with ThreadPoolExecutor(1, thread_name_prefix="engine-mesh-store") as helper:
            return helper.submit(fn, *args).result()

    def _run(self, op: Callable[[stored.Store], Awaitable[T]]) -> T:
        result: T = self._call(self._lane.sync, op)
        return result

    def apply(self, writes: MeshWrites) -> None:
        if not writes:
            return
        batch = stored.MeshWrites(
            put=[stored.PendingMessage(p.key, p.envelope) for p in writes.put],
            remove=list(writes.remove),
            dead=[
                stored.DeadLetter(
                    key=d.key, envelope=d.envelope, reason=d.reason, attempts=d.attempts, at=d.at
                )
                for d in writes.dead
            ],
        )
        self._run(lambda s: s.mesh_apply(batch))

    def pending(self) -> list[PendingMessage]:
        return [PendingMessage(p.key, p.envelope) for p in self._run(lambda s: s.mesh_pending())]

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        return [
            DeadLetter(d.key, d.envelope, d.reason, d.attempts, d.at, d.id)
            for d in self._run(lambda s: s.dead_letters(limit=limit))
        ]

    def remove_dead_letters(self, ids: Sequence[int]) -> int:
        return self._run(lambda s: s.remove_dead_letters(list(ids)))

    def close(self) -> None:
        self._call(self._lane.close)


class SqliteStore(DurableStore):
    """A :class:`DurableStore` on the SQLite file ``path``."""

    def __init__(self, path: str | Path, max_dead: int = 100_000) -> None:
        super().__init__(f"sqlite:///{Path(path)}", max_dead=max_dead)


def open_store(url: str | None, *, create: bool = True) -> MemoryStore:
    """``None`` (or empty): in memory; otherwise an :func:`engine.store.open` URL
    (``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``postgresql://...``)."""
    if not url:
        return MemoryStore()
    return DurableStore(url, create=create)
