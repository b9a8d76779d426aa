"""``memory://``: the store in process memory, for tests and throwaway runs.

Same semantics as the SQL stores (the conformance suite checks it), nothing survives the
process. Every method runs to completion without awaiting, so each is atomic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec

from engine.errors import JobNotFound, LeaseLost, StoreConflict
from engine.store._front import JobChanges, JobExpect, JobFilter, StoreBase
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
from engine.store.migrations import LATEST

__all__ = ["MemoryStore"]


def job_matches(job: Job, flt: JobFilter) -> bool:
    """Whether ``job`` passes every filter of ``flt`` (the cursor included)."""
    if flt.status is not None and job.status not in flt.status:
        return False
    if flt.tenant is not None and job.tenant != flt.tenant:
        return False
    if flt.kind is not None and job.kind != flt.kind:
        return False
    if flt.created_after is not None and job.created <= flt.created_after:
        return False
    if flt.created_before is not None and job.created >= flt.created_before:
        return False
    if flt.after is not None:
        key = (job.created, job.id)
        return key < flt.after if flt.newest_first else key > flt.after
    return True


def expect_holds(job: Job, expect: JobExpect) -> bool:
    return (
        (expect.version is None or job.version == expect.version)
        and (expect.status is None or job.status in expect.status)
        and (expect.owner is None or job.owner == expect.owner)
    )


def apply_changes(job: Job, changes: JobChanges, now: float) -> Job:
    fields = {k: v for k, v in msgspec.structs.asdict(changes).items() if v is not None}
    return msgspec.structs.replace(job, **fields, updated=now, version=job.version + 1)


class _Ledger:
    __slots__ = ("entries", "ids")

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []
        self.ids: set[str] = set()


class MemoryStore(StoreBase):
    """The in-memory store (``memory://``)."""

    def __init__(
        self,
        url: str = "memory://",
        options: StoreOptions | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        super().__init__(url, options or StoreOptions(), clock or time.time)
        self._jobs: dict[str, Job] = {}
        self._ledgers: dict[str, _Ledger] = {}
        self._seq = itertools.count(1)
        self._checkpoints: dict[str, dict[int, Checkpoint]] = {}
        self._kv: dict[str, dict[str, KVItem]] = {}
        self._pending: dict[str, dict[str, PendingMessage]] = {}
        self._dead: dict[str, dict[int, DeadLetter]] = {}
        self._dead_ids = itertools.count(1)
        self._errors: list[StoreConflict] = []

    async def _close(self) -> None:
        pass

    async def _flush(self) -> None:
        errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    async def _schema_version(self) -> int:
        return LATEST

    async def _sweep(self, now: float) -> int:
        gone = 0
        for items in self._kv.values():
            dead = [k for k, it in items.items() if it.expires and it.expires <= now]
            for k in dead:
                del items[k]
            gone += len(dead)
        ttl = self._options.checkpoint_ttl
        if ttl is not None:
            for cks in self._checkpoints.values():
                old = [v for v, c in cks.items() if c.created < now - ttl]
                for v in old:
                    del cks[v]
                gone += len(old)
        return gone

    # -- jobs --------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    async def _create_job(self, job: Job) -> Job:
        old = self._jobs.get(job.id)
        if old is not None:
            raise StoreConflict(f"job {job.id!r} exists", old)
        self._jobs[job.id] = job
        return job

    async def _get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def _update_job(
        self, job_id: str, expect: JobExpect, changes: JobChanges, now: float
    ) -> Job:
        job = self._job(job_id)
        if not expect_holds(job, expect):
            raise StoreConflict(f"job {job_id!r} changed (version {job.version})", job)
        job = self._jobs[job_id] = apply_changes(job, changes, now)
        return job

    async def _list_jobs(self, flt: JobFilter, limit: int) -> list[Job]:
        jobs = [j for j in self._jobs.values() if job_matches(j, flt)]
        jobs.sort(key=lambda j: (j.created, j.id), reverse=flt.newest_first)
        return jobs[:limit]

    async def _delete_job(self, job_id: str) -> bool:
        self._ledgers.pop(job_id, None)
        self._checkpoints.pop(job_id, None)
        return self._jobs.pop(job_id, None) is not None

    def _lease(self, job: Job, owner: str, until: float) -> Job:
        job = self._jobs[job.id] = msgspec.structs.replace(job, owner=owner, lease_until=until)
        return job

    async def _acquire_job(self, job_id: str, owner: str, until: float, now: float) -> Job | None:
        job = self._job(job_id)
        if job.owner and job.owner != owner and job.lease_until > now:
            return None
        return self._lease(job, owner, until)

    async def _claim_job(self, owner: str, until: float, now: float, flt: JobFilter) -> Job | None:
        free = [
            j
            for j in self._jobs.values()
            if job_matches(j, flt) and (not j.owner or j.lease_until <= now)
        ]
        if not free:
            return None
        best = min(free, key=lambda j: (-j.priority, j.created, j.id))
        return self._lease(best, owner, until)

    async def _heartbeat_job(self, job_id: str, owner: str, until: float, now: float) -> Job:
        job = self._job(job_id)
        if job.owner != owner:
            raise LeaseLost(f"job {job_id!r} is held by {job.owner or 'nobody'}", job)
        return self._lease(job, owner, until)

    async def _release_job(self, job_id: str, owner: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            return False
        self._lease(job, "", 0.0)
        return True

    async def _finish_job(
        self,
        job_id: str,
        owner: str,
        changes: JobChanges,
        ck: Checkpoint | None,
        ledger: list[LedgerEntry],
        now: float,
    ) -> Job:
        job = self._job(job_id)
        if job.owner != owner:
            raise LeaseLost(f"job {job_id!r} is not leased to {owner!r}", job)
        if ck is not None:
            self._put(ck)  # a conflict raises before anything changed
            if ledger:
                await self._append_ledger(job_id, ledger)
        return self._lease(apply_changes(job, changes, now), "", 0.0)

    # -- ledgers -----------------------------------------------------------------------

    async def _append_ledger(self, job_id: str, entries: list[LedgerEntry]) -> None:
        led = self._ledgers.get(job_id)
        if led is None:
            led = self._ledgers[job_id] = _Ledger()
        for e in entries:
            if e.id not in led.ids:
                led.ids.add(e.id)
                led.entries.append(msgspec.structs.replace(e, seq=next(self._seq)))

    async def _read_ledger(
        self, job_id: str, ledger: str | None, after: int, limit: int
    ) -> list[LedgerEntry]:
        led = self._ledgers.get(job_id)
        if led is None:
            return []
        out = [e for e in led.entries if e.seq > after and (ledger is None or e.ledger == ledger)]
        return out[:limit]

    # -- checkpoints -------------------------------------------------------------------

    def _visible(self, job_id: str, now: float) -> list[Checkpoint]:
        cks = self._checkpoints.get(job_id)
        if not cks:
            return []
        ttl = self._options.checkpoint_ttl
        if ttl is None:
            return list(cks.values())
        return [c for c in cks.values() if c.created >= now - ttl]

    async def _put_checkpoint(self, ck: Checkpoint, ledger: list[LedgerEntry]) -> None:
        try:
            self._put(ck)
        except StoreConflict as exc:
            if self._options.durability == "commit":
                raise
            self._errors.append(exc)  # as the SQL stores do: reported by the next flush()
            return
        if ledger:
            await self._append_ledger(ck.job_id, ledger)

    def _put(self, ck: Checkpoint) -> None:
        cks = self._checkpoints.setdefault(ck.job_id, {})
        if cks:
            latest = next(reversed(cks))
            if ck.version <= latest:
                raise StoreConflict(
                    f"checkpoint version {ck.version} of job {ck.job_id!r} is not above "
                    f"its latest ({latest})"
                )
        if ck.name and any(c.name == ck.name for c in cks.values()):
            raise StoreConflict(f"checkpoint name {ck.name!r} exists for job {ck.job_id!r}")
        cks[ck.version] = ck
        keep = self._options.keep_checkpoints
        while keep is not None and len(cks) > keep:
            del cks[next(iter(cks))]

    async def _get_checkpoint(
        self, job_id: str, version: int | None, name: str | None, now: float
    ) -> Checkpoint | None:
        for c in reversed(self._visible(job_id, now)):
            if (version is None or c.version == version) and (name is None or c.name == name):
                return c
        return None

    async def _list_checkpoints(
        self, job_id: str, before: int | None, limit: int, with_state: bool, now: float
    ) -> list[Checkpoint]:
        out = [
            c if with_state else msgspec.structs.replace(c, state=b"")
            for c in reversed(self._visible(job_id, now))
            if before is None or c.version < before
        ]
        return out[:limit]

    async def _delete_checkpoints(self, job_id: str, versions: list[int] | None) -> int:
        cks = self._checkpoints.get(job_id)
        if not cks:
            return 0
        if versions is None:
            del self._checkpoints[job_id]
            return len(cks)
        gone = [v for v in versions if v in cks]
        for v in gone:
            del cks[v]
        return len(gone)

    # -- key-value state ---------------------------------------------------------------

    async def _kv_put(self, item: KVItem) -> None:
        self._kv.setdefault(item.namespace, {})[item.key] = item

    def _live(self, namespace: str, key: str, now: float) -> KVItem | None:
        item = self._kv.get(namespace, {}).get(key)
        if item is None or (item.expires and item.expires <= now):
            return None
        return item

    async def _kv_get(self, namespace: str, key: str, now: float) -> bytes | None:
        item = self._live(namespace, key, now)
        return None if item is None else item.value

    async def _kv_delete(self, namespace: str, key: str, now: float) -> bool:
        live = self._live(namespace, key, now) is not None
        self._kv.get(namespace, {}).pop(key, None)
        return live

    async def _kv_scan(
        self, namespace: str, prefix: str, after: str, limit: int, now: float
    ) -> list[KVItem]:
        items = self._kv.get(namespace, {})
        keys = sorted(k for k in items if k.startswith(prefix) and k > after)
        out = [items[k] for k in keys if not (items[k].expires and items[k].expires <= now)]
        return out[:limit]

    # -- the mesh's durable messages ---------------------------------------------------

    async def _mesh_apply(self, writes: MeshWrites, broker: str) -> None:
        pending = self._pending.setdefault(broker, {})
        for p in writes.put:
            pending[p.key] = p  # a replaced message keeps its place, as in SQL
        for k in writes.remove:
            pending.pop(k, None)
        if writes.dead:
            dead = self._dead.setdefault(broker, {})
            for d in writes.dead:
                i = next(self._dead_ids)
                dead[i] = msgspec.structs.replace(d, id=i)
            while len(dead) > self._options.max_dead_letters:
                del dead[next(iter(dead))]

    async def _mesh_pending(self, broker: str) -> list[PendingMessage]:
        return list(self._pending.get(broker, {}).values())

    async def _dead_letters(self, broker: str, after: int, limit: int) -> list[DeadLetter]:
        return [d for i, d in self._dead.get(broker, {}).items() if i > after][:limit]

    async def _remove_dead_letters(self, ids: list[int], broker: str) -> int:
        dead = self._dead.get(broker, {})
        return sum(dead.pop(i, None) is not None for i in ids)
