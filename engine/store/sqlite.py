"""``sqlite:///relative.db`` / ``sqlite:////absolute.db``: the embedded default.

One connection in WAL mode. Everything the write queue holds at once commits as one
transaction (group commit). With ``synchronous=NORMAL`` (the default) a commit survives a
crash of the process and costs no fsync, so batches run on the event loop's thread: a
commit of a few rows takes microseconds, less than handing it to a thread would (PERF:
benches/bench_store.py, 0.10 ms per operation through a thread vs 0.01 ms inline on a
2-core machine). The fsyncs happen when the WAL is copied back into the database file
(checkpointing), and that runs in a background thread with its own connection. With
``?synchronous=full`` in the URL every commit fsyncs (it survives a power cut too), so
batches then run in a worker thread instead.

Other processes may open the same file (WAL allows concurrent readers; writers wait up to
``busy_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
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
CHECKPOINT_EVERY = 256  # commits between background WAL checkpoints (about 1 MiB of WAL)


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(f"sqlite: {exc}")
    return StoreError(f"sqlite: {exc}")


class _Checkpointer:
    """Copies the WAL into the database file in the background (PASSIVE: never blocks)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.wake = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=self._run, name="engine-store-wal", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            while not self.stop:
                self.wake.wait(1.0)
                self.wake.clear()
                with contextlib.suppress(sqlite3.Error):  # busy: the next round retries
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.wake.set()
        self.thread.join()


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
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="engine-store-sqlite")
            if synchronous != "normal"
            else None
        )
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._commits = 0

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
            raise StoreNotFound(f"no engine store at sqlite:///{path} (no such file)")
        store = cls(f"sqlite:///{path}", path, options, clock, url.param("synchronous", "normal"))
        try:
            store._connect(create)
            await store._open_schema(create, migrate)
        except BaseException:
            await store._close_driver()
            raise
        return store

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
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # _Checkpointer does it
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path!r} is not a usable SQLite store: {exc}") from None
        self._conn = conn
        self._checkpointer = _Checkpointer(self.path)

    # -- running operations ------------------------------------------------------------

    def _drive(self, conn: sqlite3.Connection, op: ops.Started) -> Any:
        while op.stmt is not None:
            stmt = op.stmt
            if isinstance(stmt, ops.XM):
                value: Any = conn.executemany(stmt.sql, stmt.rows)
            else:
                cur = conn.execute(stmt.sql, stmt.params)
                value = cur.fetchall() if type(stmt) is ops.Q else cur
            op = ops.step(op.gen, value)
        return op.result

    def _batch_sync(self, factories: list[Factory]) -> list[Any]:
        conn = self._conn
        if conn is None:
            return [StoreError("the store is closed")] * len(factories)
        started = [ops.start(f) for f in factories]
        try:
            if ops.lone_autocommit(started):
                # PERF: no BEGIN IMMEDIATE/COMMIT around a lone statement (its own commit):
                # 2 of the 3 executes of a checkpoint put, ~15 us of ~60 us of SQL per put
                # (benches/bench_store.py, statement timers)
                results = [self._drive(conn, started[0])]
            else:
                conn.execute("BEGIN IMMEDIATE")
                results = [self._drive(conn, op) for op in started]
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(factories) > 1:  # find the one that failed: each alone
                return [self._batch_sync([f])[0] for f in factories]
            return [_translate(exc)]
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self._checkpointer is not None:
            self._checkpointer.wake.set()
        return [ops.resolve(r) for r in results]

    def _read_sync(self, factory: Factory) -> Any:
        conn = self._conn
        if conn is None:
            return StoreError("the store is closed")
        try:
            return ops.resolve(self._drive(conn, ops.start(factory)))
        except sqlite3.Error as exc:
            return _translate(exc)

    # -- SQLStore's driver part --------------------------------------------------------

    async def _run_batch(self, factories: list[Factory]) -> list[Any]:
        if self._thread is None:
            return self._batch_sync(factories)
        loop = asyncio.get_running_loop()
        results: list[Any] = await loop.run_in_executor(self._thread, self._batch_sync, factories)
        return results

    async def _run_read(self, factory: Factory) -> Any:
        if self._thread is None:
            return self._read_sync(factory)
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._read_sync, factory
        )

    async def _close_driver(self) -> None:
        conn, self._conn = self._conn, None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if conn is not None:
            conn.close()  # the last connection to close checkpoints the WAL
