"""The orchestrator's use of the store: job records, ledgers, checkpoints, leases.

A thin layer over :class:`engine.store.Store` that speaks in orchestration types: ledger
records are encoded once here (msgpack) and appended in batches with their deterministic
ids, checkpoints are versioned by step, the job's final :class:`JobResult` is its record's
``result``. Every write of a running job names this orchestrator as the lease ``owner``, so
an orchestrator that lost its lease (another one took the job over) cannot overwrite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from engine.errors import OrchestrationError
from engine.orchestration.jobs import JobResult
from engine.orchestration.ledgers import (
    LedgerRecord,
    decode_entry,
    encode_entry,
    entry_id,
    ledger_of,
)
from engine.orchestration.state import KIND, JobCheckpoint, JobSpec

if TYPE_CHECKING:
    from engine.store import Store
    from engine.store.base import Job as JobRecord

__all__ = ["Persist"]

_spec_dec = msgspec.msgpack.Decoder(JobSpec)
_ckpt_dec = msgspec.msgpack.Decoder(JobCheckpoint)
_result_dec = msgspec.msgpack.Decoder(JobResult)
_enc = msgspec.msgpack.Encoder()


class Persist:
    """Job records, ledgers and checkpoints of one orchestrator (``owner``) in ``store``."""

    def __init__(self, store: Store, owner: str, lease: float) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease

    # -- job records -----------------------------------------------------------------
    async def create(self, job_id: str, spec: JobSpec, tenant: str, priority: int) -> None:
        """Insert the job, running and already leased to us (one statement)."""
        from engine.store.base import Job as JobRecord

        await self.store.create_job(
            JobRecord(
                id=job_id,
                status="running",
                tenant=tenant,
                kind=KIND,
                priority=priority,
                data=_enc.encode(spec),
            ),
            owner=self.owner,
            lease_ttl=self.lease,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get_job(job_id)

    @staticmethod
    def spec(record: JobRecord) -> JobSpec:
        try:
            return _spec_dec.decode(record.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise OrchestrationError(
                f"job {record.id} is not an orchestration job, or its record is damaged ({exc})"
            ) from None

    @staticmethod
    def result(record: JobRecord) -> JobResult | None:
        return _result_dec.decode(record.result) if record.result else None

    async def acquire(self, job_id: str) -> bool:
        return await self.store.acquire_job(job_id, self.owner, self.lease) is not None

    async def claim(self) -> JobRecord | None:
        """Lease a running or pending job whose runner's lease expired."""
        return await self.store.claim_job(
            self.owner, self.lease, status=("running", "paused", "pending"), kind=KIND
        )

    async def release_other(self, job_id: str, owner: str) -> bool:
        """Drop the lease of ``owner``, an orchestrator known to be dead."""
        return await self.store.release_job(job_id, owner)

    async def heartbeat(self, job_id: str) -> None:
        await self.store.heartbeat_job(job_id, self.owner, self.lease)

    async def release(self, job_id: str) -> None:
        await self.store.release_job(job_id, self.owner)

    async def status(self, job_id: str, status: str) -> None:
        await self.store.update_job(job_id, expect_owner=self.owner, status=status)

    async def finish(self, job_id: str, result: JobResult) -> None:
        await self.store.update_job(
            job_id,
            expect_owner=self.owner,
            status=result.status.value,
            result=_enc.encode(result),
            error=result.reason,
        )

    # -- ledgers and checkpoints -------------------------------------------------------
    async def step(
        self, job_id: str, records: Sequence[LedgerRecord], state: JobCheckpoint
    ) -> None:
        """One step: the records appended to the job's ledgers (ids from their bodies, so
        repeats are no-ops) and the checkpoint, committed together."""
        from engine.store.base import LedgerEntry

        entries = [
            LedgerEntry(id=entry_id(r.body), data=encode_entry(r), ledger=ledger_of(r.body))
            for r in records
        ]
        await self.store.put_checkpoint(job_id, state.step, _enc.encode(state), ledger=entries)

    async def records(self, job_id: str) -> list[LedgerRecord]:
        """Every record of the job, in append order."""
        out: list[LedgerRecord] = []
        after = 0
        while True:
            batch = await self.store.read_ledger(job_id, after=after, limit=10_000)
            for e in batch:
                try:
                    out.append(decode_entry(e.data))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise OrchestrationError(
                        f"job {job_id}: ledger entry {e.id!r} is not an orchestration "
                        f"record ({exc}); the ledger is damaged"
                    ) from None
            if len(batch) < 10_000:
                return out
            after = batch[-1].seq

    async def last_checkpoint(self, job_id: str) -> JobCheckpoint | None:
        ck = await self.store.get_checkpoint(job_id)
        if ck is None:
            return None
        try:
            return _ckpt_dec.decode(ck.state)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise OrchestrationError(f"job {job_id}: checkpoint is damaged ({exc})") from None
