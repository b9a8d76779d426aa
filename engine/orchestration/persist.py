"""The orchestrator's use of the store: job records, ledgers, checkpoints, leases.

A thin layer over :class:`engine.store.Store` that speaks in orchestration types: ledger
records are encoded once here (msgpack) and appended in batches with their deterministic
ids, checkpoints are versioned by step, the job's final :class:`JobResult` is its record's
``result``. Every write of a running job names this orchestrator as the lease ``owner``, so
an orchestrator that lost its lease (another one took the job over) cannot overwrite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from engine.errors import OrchestrationError
from engine.orchestration.jobs import JobResult
from engine.orchestration.ledgers import (
    PROGRESS,
    LedgerRecord,
    StepEntry,
    decode_entry,
    entry_id,
    ledger_of,
)
from engine.orchestration.state import KIND, JobCheckpoint, JobSpec

if TYPE_CHECKING:
    from engine.store import Store
    from engine.store.base import Job as JobRecord
    from engine.store.base import LedgerEntry

__all__ = ["Persist"]

_spec_dec = msgspec.msgpack.Decoder(JobSpec)
_ckpt_dec = msgspec.msgpack.Decoder(JobCheckpoint)
_result_dec = msgspec.msgpack.Decoder(JobResult)
_enc = msgspec.msgpack.Encoder()
_encode = _enc.encode  # the ledger's records and every other blob share one encoder


#: Id prefix of a step's subtask records stored as one entry.
_STEPS: Final = "steps:"
#: Encoded size past which a step's subtask records go into another entry (well under
#: any sensible ``max_value_bytes``; one record larger than it is an entry of its own).
STEP_ENTRY_BYTES: Final = 1 << 20
_steps_dec = msgspec.msgpack.Decoder(list[LedgerRecord])


def _step_entries(step: int, records: list[LedgerRecord]) -> list[LedgerEntry]:
    """``records`` (subtask steps) as entries ``steps:<step>``, ``steps:<step>.1``, ..."""
    from engine.store.base import LedgerEntry

    whole = _encode(records)  # PERF: one call; the same bytes as _list() of each record's
    if len(whole) <= STEP_ENTRY_BYTES:  # (a msgpack array is its header and its items)
        return [LedgerEntry(id=f"{_STEPS}{step}", data=whole, ledger=PROGRESS)]
    out: list[LedgerEntry] = []
    part: list[bytes] = []
    size = 0

    def flush() -> None:
        eid = f"{_STEPS}{step}" if not out else f"{_STEPS}{step}.{len(out)}"
        out.append(LedgerEntry(id=eid, data=_list(part), ledger=PROGRESS))

    for r in records:
        data = _encode(r)
        if part and size + len(data) > STEP_ENTRY_BYTES:
            flush()
            part, size = [], 0
        part.append(data)
        size += len(data)
    flush()
    return out


def _entries(
    step: int, records: Sequence[LedgerRecord], subtasks: Sequence[LedgerRecord] = ()
) -> list[LedgerEntry]:
    """A step's records as store entries: its subtask records together (``steps:<step>``),
    every other record one entry, id from its body. ``subtasks`` are more subtask records
    (``StepEntry`` bodies, known as such: PERF, not sorted out one by one), after those
    of ``records``."""
    from engine.store.base import LedgerEntry

    entries = []
    steps: list[LedgerRecord] = []
    for r in records:
        if type(r.body) is StepEntry:
            steps.append(r)
        else:
            body = r.body
            entries.append(LedgerEntry(id=entry_id(body), data=_encode(r), ledger=ledger_of(body)))
    if subtasks:
        steps = [*steps, *subtasks] if steps else list(subtasks)
    if steps:
        entries.extend(_step_entries(step, steps))
    return entries


def _list(encoded: list[bytes]) -> bytes:
    """A msgpack array of already-encoded items (no decode/re-encode of the records)."""
    n = len(encoded)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(encoded)


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

    # -- ledgers and checkpoints -------------------------------------------------------
    async def step(
        self,
        job_id: str,
        records: Sequence[LedgerRecord],
        state: JobCheckpoint,
        subtasks: Sequence[LedgerRecord] = (),
    ) -> None:
        """One step: the records appended to the job's ledgers and the checkpoint,
        committed together (``subtasks``: more records, all ``StepEntry`` ones).

        A step's subtask records (``StepEntry`` bodies, one per finished subtask) are
        stored together, as one store entry ``steps:<step>`` holding their list (split
        past :data:`STEP_ENTRY_BYTES`); every other record is one entry, id from its body.
        Ids are deterministic, so a retried write is a no-op. PERF: one row per step
        instead of one per subtask: the SQLite store's per-row insert and checks were
        ~6 us of the ~30 us a subtask cost (benches/bench_orchestration.py, N=1,000).
        """
        await self.store.put_checkpoint(
            job_id, state.step, _enc.encode(state), ledger=_entries(state.step, records, subtasks)
        )

    async def end(
        self,
        job_id: str,
        records: Sequence[LedgerRecord],
        state: JobCheckpoint,
        result: JobResult,
    ) -> None:
        """The job's last step (as :meth:`step`), its final status and result, and the
        lease released: one transaction (``Store.finish_job``). PERF: three commits were
        one step, one result and one release; on SQLite each costs ~100 us of an N=100
        orchestration job's ~7 ms (benches/bench_orchestration.py, thread CPU time)."""
        await self.store.finish_job(
            job_id,
            self.owner,
            status=result.status.value,
            result=_enc.encode(result),
            error=result.reason,
            version=state.step,
            state=_enc.encode(state),
            ledger=_entries(state.step, records),
        )

    async def records(self, job_id: str) -> list[LedgerRecord]:
        """Every record of the job, in append order."""
        out: list[LedgerRecord] = []
        after = 0
        while True:
            batch = await self.store.read_ledger(job_id, after=after, limit=10_000)
            for e in batch:
                try:
                    if e.id.startswith(_STEPS):
                        out.extend(_steps_dec.decode(e.data))
                    else:
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
