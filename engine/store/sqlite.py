"""``sqlite:///relative.db`` / ``sqlite:////absolute.db``: the embedded default.

One connection in WAL mode, owned by one writer thread: every operation runs there, in
queue order, and everything the write queue holds at once commits as one transaction
(group commit). ``synchronous=NORMAL`` (the default) makes a commit survive a crash of the
process; ``?synchronous=full`` in the URL also survives a power cut, at an fsync per commit.
Other processes may open the same file (WAL allows concurrent readers; writers wait up to
``busy_timeout``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.errors import StoreConflict, StoreError, StoreNotFound
from engine.store import _sqlops as ops
from engine.store._sql import SQLStore
from engine.store._url import StoreURL
from engine.store._writer import Factory
from engine.store.base import StoreOptions

__all__ = ["SQLiteStore"]

BUSY_TIMEOUT_MS = 10_000


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(f"sqlite: {exc}")
    return StoreError(f"sqlite: {exc}")


class SQLiteStore(SQLStore):
    """The SQLite store; open it with ``engine.store.open("sqlite:///path.db")``."""

    dialect = ops.SQLITE
    exists_sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'engine_schema'"

    def __init__(
        self,
        url: str,
        path: str,
        options: StoreOptions,
        clock: Callable[[], float],
        synchronous: str,
    ) -> None:
        super().__init__(url, options, clock)
        self.path = path
        self._synchronous = synchronous
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="engine-store-sqlite")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def connect(
        cls,
        url: StoreURL,
        options: StoreOptions,
        clock: Callable[[], float],
        *,
        create: bool,
        migrate: bool,
    ) -> SQLiteStore:
        path = url.target
        if not create and not Path(path).is_file():
            raise StoreNotFound(f"no store file {path!r} (sqlite:///{path})")
        store = cls(f"sqlite:///{path}", path, options, clock, url.param("synchronous", "normal"))
        try:
            await store._call(store._connect, create)
            await store._open_schema(create, migrate)
        except BaseException:
            await store._close_driver()
            raise
        return store

    # -- the writer thread -------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _connect(self, create: bool) -> None:
        target = self.path if create else f"file:{Path(self.path).absolute()}?mode=rw"
        try:
            conn = sqlite3.connect(
                target,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
                uri=not create,
            )
        except sqlite3.Error as exc:
            why = "not found" if not create else str(exc)
            raise (StoreNotFound if not create else StoreError)(
                f"cannot open store file {self.path!r}: {why}"
            ) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path!r} is not a usable SQLite store: {exc}") from None
        self._conn = conn

    def _drive(self, conn: sqlite3.Connection, factory: Factory) -> Any:
        gen = factory()
        value: Any = None
        while True:
            try:
                stmt = gen.send(value)
            except StopIteration as stop:
                return stop.value
            except StoreError as exc:
                return exc
            if type(stmt) is ops.XM:
                value = conn.executemany(stmt.sql, stmt.rows)
            else:
                cur = conn.execute(stmt.sql, stmt.params)
                value = cur.fetchall() if type(stmt) is ops.Q else cur

    def _batch_sync(self, factories: list[Factory]) -> list[Any]:
        conn = self._conn
        if conn is None:
            return [StoreError("the store is closed")] * len(factories)
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [self._drive(conn, f) for f in factories]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(factories) > 1:  # find the one that failed: each alone
                return [self._batch_sync([f])[0] for f in factories]
            return [_translate(exc)]
        return [ops.resolve(r) for r in results]

    def _read_sync(self, factory: Factory) -> Any:
        conn = self._conn
        if conn is None:
            return StoreError("the store is closed")
        try:
            return ops.resolve(self._drive(conn, factory))
        except sqlite3.Error as exc:
            return _translate(exc)

    # -- SQLStore's driver part --------------------------------------------------------

    async def _run_batch(self, factories: list[Factory]) -> list[Any]:
        results: list[Any] = await self._call(self._batch_sync, factories)
        return results

    async def _run_read(self, factory: Factory) -> Any:
        return await self._call(self._read_sync, factory)

    async def _close_driver(self) -> None:
        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            await self._call(close)
        finally:
            self._thread.shutdown(wait=True)
