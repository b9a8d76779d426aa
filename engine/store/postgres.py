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
        # batch (benches/bench_store.py: a pool round per batch cost more than the batch)
        self._writer: psycopg.AsyncConnection[Any] | None = None

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

    async def _drive(self, conn: psycopg.AsyncConnection[Any], factory: Factory) -> Any:
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
                cur = conn.cursor()
                await cur.executemany(_pg(stmt.sql), stmt.rows)
                value = cur
            else:
                cur = await conn.execute(_pg(stmt.sql), stmt.params)
                value = await cur.fetchall() if type(stmt) is ops.Q else cur

    async def _run_batch(self, factories: list[Factory]) -> list[Any]:
        import psycopg

        conn = self._writer
        if conn is None or conn.closed:
            conn = self._writer = await self._pool.getconn()
        try:
            async with conn.pipeline(), conn.transaction():
                results = [await self._drive(conn, f) for f in factories]
        except psycopg.Error as exc:
            if conn.closed or isinstance(exc, psycopg.OperationalError):
                self._writer = None  # broken: back to the pool (which discards it)
                await self._pool.putconn(conn)
            if len(factories) > 1:  # find the one that failed: each alone
                return [(await self._run_batch([f]))[0] for f in factories]
            return [_translate(exc)]
        return [ops.resolve(r) for r in results]

    async def _run_read(self, factory: Factory) -> Any:
        import psycopg

        try:
            async with self._pool.connection() as conn:
                return ops.resolve(await self._drive(conn, factory))
        except psycopg.Error as exc:
            return _translate(exc)

    async def _close_driver(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            await self._pool.putconn(conn)
        await self._pool.close()


def _translate(exc: Exception) -> StoreError:
    import psycopg

    if isinstance(exc, psycopg.errors.IntegrityError):
        return StoreConflict(f"postgresql: {exc}")
    return StoreError(f"postgresql: {type(exc).__name__}: {exc}")
