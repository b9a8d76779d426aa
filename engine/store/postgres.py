"""``postgresql://user:password@host:port/database``: the production store (psycopg 3).

An async connection pool (``psycopg_pool``). Writes go through the write queue: each batch
is one transaction sent in pipeline mode, so statements whose results are not needed at
once cost no round trip each. Reads take a pool connection of their own. ``claim_job``
uses ``FOR UPDATE SKIP LOCKED``, so concurrent runners never block on one another.
Needs the ``postgres`` extra: ``pip install 'agent-engine-runtime[postgres]'``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.errors import StoreConflict, StoreError, StoreNotFound
from engine.store import _sqlops as ops
from engine.store._sql import SQLStore
from engine.store._url import StoreURL, mask
from engine.store._writer import Factory
from engine.store.base import StoreOptions

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresStore"]

POOL_SIZE = 4
CONNECT_TIMEOUT = 10.0


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(SQLStore):
    """The PostgreSQL store; open it with ``engine.store.open("postgresql://...")``."""

    dialect = ops.POSTGRES
    exists_sql = "SELECT to_regclass('engine_schema')"
    lock_sql = "SELECT pg_advisory_xact_lock(7316012915)"  # one migrator at a time

    def __init__(
        self, url: str, options: StoreOptions, clock: Callable[[], float], pool: Any
    ) -> None:
        super().__init__(url, options, clock)
        self._pool: AsyncConnectionPool[Any] = pool
        # PERF: the writer keeps one connection rather than taking one from the pool per
        # batch (benches/bench_store.py: a pool round per batch cost more than the batch),
        # and one cursor on it: a cursor per statement cost ~9 of ~50 us of client CPU per
        # lone insert (3,000 async inserts of 400 bytes, thread CPU time)
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._cursor: psycopg.AsyncCursor[Any] | None = None

    @classmethod
    async def connect(
        cls,
        url: StoreURL,
        options: StoreOptions,
        clock: Callable[[], float],
        *,
        create: bool,
        migrate: bool,
    ) -> PostgresStore:
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError:
            raise StoreError(
                "postgresql:// stores need psycopg: pip install 'agent-engine-runtime[postgres]'"
            ) from None
        shown = mask(url.target)
        try:  # one plain connection first: a clear error instead of a pool timeout
            conn = await psycopg.AsyncConnection.connect(
                url.target, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
            )
            await conn.close()
        except psycopg.OperationalError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            missing = "does not exist" in text
            raise (StoreNotFound if missing else StoreError)(
                f"cannot connect to {shown}: {text}"
            ) from None
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url.target,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
            open=False,
            name="engine.store",
        )
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        store = cls(shown, options, clock, pool)
        try:
            await store._open_schema(create, migrate)
        except BaseException:
            await pool.close()
            raise
        return store

    # -- driving operations ------------------------------------------------------------

    async def _drive(
        self, conn: psycopg.AsyncConnection[Any], op: ops.Started, kept: Any = None
    ) -> Any:
        """Run ``op``'s statements on ``conn``; queries on the ``kept`` cursor if given (its
        rows are read at once), statements each on a cursor of their own (a handle whose
        row count an operation reads after the batch, in pipeline mode)."""
        while op.stmt is not None:
            stmt = op.stmt
            if isinstance(stmt, ops.XM):
                cur = conn.cursor()
                await cur.executemany(_pg(stmt.sql), stmt.rows)
                value: Any = cur
            elif type(stmt) is ops.Q and kept is not None:
                await kept.execute(_pg(stmt.sql), stmt.params)
                value = await kept.fetchall()
            else:
                cur = await conn.execute(_pg(stmt.sql), stmt.params)
                value = await cur.fetchall() if type(stmt) is ops.Q else cur
            op = ops.step(op.gen, value)
        return op.result

    async def _run_batch(self, factories: list[Factory]) -> list[Any]:
        """One transaction. The writer's connection is in autocommit mode: a lone
        operation that allows it runs statement by statement (each its own transaction:
        one round trip for the usual one-statement write); otherwise the batch runs in
        pipeline mode, which PostgreSQL runs as one implicit transaction ended by the
        pipeline's single Sync (committed, or rolled back after an error).

        PERF: psycopg's ``transaction()`` inside the pipeline (the first version) syncs
        after BEGIN and after COMMIT, and every pipelined statement is a send of its own;
        a libpq trace showed 3 Syncs per checkpoint put, now 1 (see ``_ckops``).
        """
        import psycopg

        conn, kept = self._writer, self._cursor
        if conn is None or conn.closed or kept is None:
            conn = self._writer = await self._pool.getconn()
            kept = self._cursor = conn.cursor()
        started = [ops.start(f) for f in factories]
        try:
            if ops.lone_autocommit(started):
                results = [await self._drive(conn, started[0], kept)]
            else:
                async with conn.pipeline():
                    try:
                        results = [await self._drive(conn, op, kept) for op in started]
                    except BaseException as exc:
                        if getattr(exc, "sqlstate", None) is None:
                            # Not an error of the server (which then aborts the
                            # transaction): a client-side failure or a cancellation. The
                            # pipeline's Sync would commit what was sent; closing the
                            # connection rolls it back instead.
                            await conn.close()
                        raise
        except psycopg.Error as exc:
            if conn.closed or isinstance(exc, psycopg.OperationalError):
                self._writer = self._cursor = None  # broken: back to the pool (it discards it)
                await self._pool.putconn(conn)
            if len(factories) > 1:  # find the one that failed: each alone, in order
                return [(await self._run_batch([f]))[0] for f in factories]
            return [_translate(exc)]
        except BaseException:
            if conn.closed:
                self._writer = self._cursor = None
                await self._pool.putconn(conn)
            raise
        return [ops.resolve(r) for r in results]

    async def _run_read(self, factory: Factory) -> Any:
        import psycopg

        try:
            async with self._pool.connection() as conn:
                return ops.resolve(await self._drive(conn, ops.start(factory)))
        except psycopg.Error as exc:
            return _translate(exc)

    async def _close_driver(self) -> None:
        conn, self._writer, self._cursor = self._writer, None, None
        if conn is not None:
            await self._pool.putconn(conn)
        await self._pool.close()


def _translate(exc: Exception) -> StoreError:
    import psycopg

    if isinstance(exc, psycopg.errors.IntegrityError):
        return StoreConflict(f"postgresql: {exc}")
    return StoreError(f"postgresql: {type(exc).__name__}: {exc}")
