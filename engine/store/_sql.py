"""What the SQLite and PostgreSQL stores share: operations through the write queue,
reads after a barrier, checkpoint deltas, opening with schema checks and migrations.

A driver subclass provides ``_run_batch`` (operations in one transaction) and ``_run_read``
(one read-only operation), both returning results with exceptions as values.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any

from engine.errors import SchemaVersionError, StoreNotFound
from engine.store import _ckops as ckops
from engine.store import _sqlops as ops
from engine.store._codec import CheckpointCodec
from engine.store._front import JobChanges, JobExpect, JobFilter, StoreBase
from engine.store._writer import Factory, WriteQueue
from engine.store.base import (
    Checkpoint,
    DeadLetter,
    Job,
    KVItem,
    LedgerEntry,
    MeshWrites,
    PendingMessage,
    StoreOptions,
)
from engine.store.migrations import LATEST, MIGRATIONS

__all__ = ["SQLStore", "migrate_op", "schema_state_op"]


def schema_state_op(exists_sql: str) -> ops.Op:
    """The store's schema version, or None when it holds no engine tables."""
    rows = yield ops.Q(exists_sql)
    if not rows or rows[0][0] is None:
        return None
    return (yield from ops.schema_version(ops.SQLITE))


def migrate_op(exists_sql: str, lock_sql: str | None, postgres: bool, now: float) -> ops.Op:
    """Apply the missing migrations in order (one transaction); return (before, after)."""
    if lock_sql:
        yield ops.Q(lock_sql)
    before = yield from schema_state_op(exists_sql)
    current = before or 0
    if current > LATEST:
        raise SchemaVersionError(f"store schema {current} is newer than this code ({LATEST})")
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        for stmt in (m.postgres if postgres else m.sqlite).split(";"):
            if stmt.strip():
                yield ops.X(stmt)
        yield ops.X(
            "INSERT INTO engine_schema (version, name, applied) VALUES (?, ?, ?)",
            (m.version, m.name, now),
        )
    return (before or 0, max(current, LATEST))


def _raise(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


class SQLStore(StoreBase):
    """The shared part of ``SQLiteStore`` and ``PostgresStore``."""

    dialect: ops.Dialect
    exists_sql: str
    lock_sql: str | None = None

    def __init__(self, url: str, options: StoreOptions, clock: Callable[[], float]) -> None:
        super().__init__(url, options, clock)
        self._queue = WriteQueue(self._run_batch, options.queue_size, options.max_batch)
        self._codec = CheckpointCodec(options.checkpoint_delta)
        self.schema_before = 0  # the schema version found at open (0: none)

    # -- the driver's part -------------------------------------------------------------

    @abc.abstractmethod
    async def _run_batch(self, factories: list[Factory]) -> list[Any]: ...

    @abc.abstractmethod
    async def _run_read(self, factory: Factory) -> Any: ...

    @abc.abstractmethod
    async def _close_driver(self) -> None: ...

    # -- plumbing ----------------------------------------------------------------------

    async def _write(self, fn: Callable[..., ops.Op], *args: Any, always_wait: bool = True) -> Any:
        wait = always_wait or self._options.durability == "commit"
        factory = functools.partial(fn, self.dialect, *args)
        return _raise(await self._queue.submit(factory, wait=wait))

    async def _read(self, fn: Callable[..., ops.Op], *args: Any) -> Any:
        await self._queue.barrier()
        return _raise(await self._run_read(functools.partial(fn, self.dialect, *args)))

    async def _open_schema(self, create: bool, migrate: bool) -> None:
        """Check (and when allowed, create or migrate) the schema; see ``engine.store.open``."""
        version = _raise(await self._run_read(functools.partial(schema_state_op, self.exists_sql)))
        self.schema_before = version or 0
        if version is None and not create:
            raise StoreNotFound(f"no engine store at {self.url}")
        if version is not None and version > LATEST:
            raise SchemaVersionError(
                f"store {self.url} has schema {version}, newer than this code ({LATEST}): "
                "upgrade agent-engine"
            )
        if version is None or version < LATEST:
            if not migrate:
                raise SchemaVersionError(
                    f"store {self.url} has schema {version}, older than this code ({LATEST}): "
                    f"run `engine store migrate {self.url}`"
                )
            await self.migrate()

    async def migrate(self) -> tuple[int, int]:
        """Apply missing migrations; return the schema version before and after."""
        factory = functools.partial(
            migrate_op, self.exists_sql, self.lock_sql, self.dialect is ops.POSTGRES, self._now()
        )
        result: tuple[int, int] = _raise((await self._run_batch([factory]))[0])
        return result

    async def _close(self) -> None:
        try:
            await self._queue.close()
        finally:
            await self._close_driver()

    async def _flush(self) -> None:
        await self._queue.barrier()
        errors = self._queue.take_errors()
        if errors:
            raise errors[0]

    async def _sweep(self, now: float) -> int:
        count: int = await self._write(ops.sweep_kv, now)
        if self._options.checkpoint_ttl is not None:
            count += await self._write(ckops.sweep_checkpoints, now - self._options.checkpoint_ttl)
        return count

    async def _schema_version(self) -> int:
        version: int = await self._read(ops.schema_version)
        return version

    # -- jobs --------------------------------------------------------------------------

    async def _create_job(self, job: Job) -> Job:
        created: Job = await self._write(ops.create_job, job)
        return created

    async def _get_job(self, job_id: str) -> Job | None:
        job: Job | None = await self._read(ops.get_job, job_id)
        return job

    async def _update_job(
        self, job_id: str, expect: JobExpect, changes: JobChanges, now: float
    ) -> Job:
        job: Job = await self._write(ops.update_job, job_id, expect, changes, now)
        return job

    async def _list_jobs(self, flt: JobFilter, limit: int) -> list[Job]:
        jobs: list[Job] = await self._read(ops.list_jobs, flt, limit)
        return jobs

    async def _delete_job(self, job_id: str) -> bool:
        self._codec.forget(job_id)
        gone: bool = await self._write(ops.delete_job, job_id)
        return gone

    async def _acquire_job(self, job_id: str, owner: str, until: float, now: float) -> Job | None:
        job: Job | None = await self._write(ops.acquire_job, job_id, owner, until, now)
        return job

    async def _claim_job(self, owner: str, until: float, now: float, flt: JobFilter) -> Job | None:
        job: Job | None = await self._write(ops.claim_job, owner, until, now, flt)
        return job

    async def _heartbeat_job(self, job_id: str, owner: str, until: float, now: float) -> Job:
        job: Job = await self._write(ops.heartbeat_job, job_id, owner, until, now)
        return job

    async def _release_job(self, job_id: str, owner: str) -> bool:
        done: bool = await self._write(ops.release_job, job_id, owner)
        return done

    async def _finish_job(
        self,
        job_id: str,
        owner: str,
        changes: JobChanges,
        ck: Checkpoint | None,
        ledger: list[LedgerEntry],
        now: float,
    ) -> Job:
        self._codec.forget(job_id)  # the last checkpoint goes in whole
        keep = self._options.keep_checkpoints
        op = ckops.finish_job
        job: Job = await self._write(op, job_id, owner, changes, now, ck, keep, ledger)
        return job

    # -- ledgers -----------------------------------------------------------------------

    async def _append_ledger(self, job_id: str, entries: list[LedgerEntry]) -> None:
        await self._write(ops.append_ledger, job_id, entries, always_wait=False)

    async def _read_ledger(
        self, job_id: str, ledger: str | None, after: int, limit: int
    ) -> list[LedgerEntry]:
        entries: list[LedgerEntry] = await self._read(ops.read_ledger, job_id, ledger, after, limit)
        return entries

    # -- checkpoints -------------------------------------------------------------------

    async def _put_checkpoint(self, ck: Checkpoint, ledger: list[LedgerEntry]) -> None:
        codec = self._codec
        base, prev, delta = codec.encode(ck.job_id, ck.version, ck.state)
        factory = functools.partial(
            ckops.put_checkpoint,
            self.dialect,
            ck,
            base,
            prev,
            delta,
            self._options.keep_checkpoints,
            ledger,
        )

        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                codec.forget(ck.job_id)
            elif result and delta is not None:  # its base was gone: the full state went in
                codec.stored_full(ck.job_id, ck.version, ck.state)

        wait = self._options.durability == "commit"
        _raise(await self._queue.submit(factory, wait=wait, done=done))

    def _oldest(self, now: float) -> float | None:
        ttl = self._options.checkpoint_ttl
        return None if ttl is None else now - ttl

    async def _get_checkpoint(
        self, job_id: str, version: int | None, name: str | None, now: float
    ) -> Checkpoint | None:
        ck: Checkpoint | None = await self._read(
            ckops.get_checkpoint,
            job_id,
            version,
            name,
            self._oldest(now),
            self._options.max_value_bytes,
        )
        return ck

    async def _list_checkpoints(
        self, job_id: str, before: int | None, limit: int, with_state: bool, now: float
    ) -> list[Checkpoint]:
        cks: list[Checkpoint] = await self._read(
            ckops.list_checkpoints,
            job_id,
            before,
            limit,
            with_state,
            self._oldest(now),
            self._options.max_value_bytes,
        )
        return cks

    async def _delete_checkpoints(self, job_id: str, versions: list[int] | None) -> int:
        if versions is None:
            self._codec.forget(job_id)
        count: int = await self._write(ckops.delete_checkpoints, job_id, versions)
        return count

    # -- key-value state ---------------------------------------------------------------

    async def _kv_put(self, item: KVItem) -> None:
        await self._write(ops.kv_put, item, always_wait=False)

    async def _kv_get(self, namespace: str, key: str, now: float) -> bytes | None:
        value: bytes | None = await self._read(ops.kv_get, namespace, key, now)
        return value

    async def _kv_delete(self, namespace: str, key: str, now: float) -> bool:
        gone: bool = await self._write(ops.kv_delete, namespace, key, now)
        return gone

    async def _kv_scan(
        self, namespace: str, prefix: str, after: str, limit: int, now: float
    ) -> list[KVItem]:
        items: list[KVItem] = await self._read(ops.kv_scan, namespace, prefix, after, limit, now)
        return items

    # -- the mesh's durable messages ---------------------------------------------------

    async def _mesh_apply(self, writes: MeshWrites, broker: str) -> None:
        await self._write(
            ops.mesh_apply, writes, broker, self._options.max_dead_letters, always_wait=False
        )

    async def _mesh_pending(self, broker: str) -> list[PendingMessage]:
        pending: list[PendingMessage] = await self._read(ops.mesh_pending, broker)
        return pending

    async def _dead_letters(self, broker: str, after: int, limit: int) -> list[DeadLetter]:
        dead: list[DeadLetter] = await self._read(ops.dead_letters, broker, after, limit)
        return dead

    async def _remove_dead_letters(self, ids: list[int], broker: str) -> int:
        count: int = await self._write(ops.remove_dead_letters, ids, broker)
        return count
