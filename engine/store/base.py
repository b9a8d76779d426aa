"""The state store's records and its one async protocol.

Every implementation (``memory://``, ``sqlite:///``, ``postgresql://``) serves the same
:class:`Store` protocol and passes the same conformance suite (``tests/store/``). Records
are msgspec Structs; the payload fields (``data``, ``result``, ``state``, ``value``,
``envelope``) are bytes the caller encodes, usually with ``msgspec.msgpack``.

Times are seconds from the store's ``clock`` (``time.time`` unless one is passed to
:func:`engine.store.open`), so tests drive TTLs and leases with a fake clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Checkpoint",
    "DeadLetter",
    "Durability",
    "Job",
    "KVItem",
    "LedgerEntry",
    "MeshWrites",
    "Page",
    "PendingMessage",
    "Store",
    "StoreOptions",
]

Durability = Literal["commit", "batch"]


class Job(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A unit of work and its lease.

    ``version`` counts changes to ``status``/``data``/``result``/``error`` (it is the
    compare-and-set token of :meth:`Store.update_job`); lease changes do not bump it.
    ``owner``/``lease_until`` name the runner holding the job and until when.
    """

    id: str
    status: str = "pending"
    tenant: str = ""
    kind: str = ""
    priority: int = 0
    data: bytes = b""
    result: bytes = b""
    error: str = ""
    created: float = 0.0
    updated: float = 0.0
    version: int = 0
    owner: str = ""
    lease_until: float = 0.0


class Page(msgspec.Struct, frozen=True, gc=False):
    """One page of :meth:`Store.list_jobs`; pass ``next`` back as ``cursor`` (None: last page)."""

    items: list[Job]
    next: str | None = None


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One entry of a job's append-only ledger.

    ``id`` makes appends idempotent: a second append of the same id to the same job is
    ignored (the first one wins). ``ledger`` names which of the job's ledgers the entry
    belongs to (``"task"``, ``"progress"``...). The store sets ``seq`` (increasing in
    append order, not contiguous) and ``at`` when it is 0.
    """

    id: str
    data: bytes
    ledger: str = ""
    at: float = 0.0
    seq: int = 0


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A versioned snapshot of a job's state.

    ``version`` is chosen by the writer and strictly increases per job; ``name`` is an
    optional label unique per job (``EngineSaver`` keeps LangGraph's checkpoint id there).
    ``state`` is empty in listings made without ``with_state=True``.
    """

    job_id: str
    version: int
    state: bytes = b""
    meta: bytes = b""
    name: str = ""
    created: float = 0.0


class KVItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A value in a key-value namespace; ``expires`` is 0 for no TTL."""

    namespace: str
    key: str
    value: bytes
    expires: float = 0.0
    updated: float = 0.0


class PendingMessage(msgspec.Struct, frozen=True, gc=False):
    """A mesh message the broker accepted and has not finished (restored after a restart)."""

    key: str
    envelope: bytes


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A mesh message that exhausted its attempts or could not be routed after acceptance.

    The store assigns ``id`` (increasing) and ``at`` (when 0).
    """

    key: str
    envelope: bytes
    reason: str
    attempts: int
    at: float = 0.0
    id: int = 0


class MeshWrites(msgspec.Struct, kw_only=True, gc=False):
    """One batch of the broker's durable writes, applied in one transaction, in this order:
    ``put`` (insert or replace pending messages by key), ``remove`` (pending keys),
    ``dead`` (append dead letters; the oldest beyond ``max_dead_letters`` are dropped).
    """

    put: list[PendingMessage] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)
    dead: list[DeadLetter] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.put or self.remove or self.dead)


class StoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a store behaves; given to :func:`engine.store.open` as keyword arguments.

    - ``durability``: ``"commit"`` makes every write wait for its transaction to commit;
      ``"batch"`` returns once the write is queued (validated, not yet committed): a crash
      loses at most the writes still queued (up to ``queue_size``, normally one group
      commit, i.e. milliseconds). Errors of queued writes surface at the next ``flush()``.
      Reads always see earlier writes of the same store object.
    - ``keep_checkpoints``: keep the last N checkpoints per job (None: keep all).
    - ``checkpoint_ttl``: checkpoints older than this many seconds are dropped.
    - ``checkpoint_delta``: store a checkpoint as a delta against the job's last full one
      when that is smaller (``docs/store.md`` says when).
    - ``max_value_bytes``: the largest payload accepted (``RecordTooLarge`` beyond).
    - ``max_dead_letters``: dead letters kept per broker (the oldest are dropped).
    - ``queue_size`` / ``max_batch``: the write queue's bound (backpressure beyond it) and
      the most writes committed in one transaction.
    """

    durability: Durability = "commit"
    keep_checkpoints: int | None = 100
    checkpoint_ttl: float | None = None
    checkpoint_delta: bool = True
    max_value_bytes: int = 16 * 1024 * 1024
    max_dead_letters: int = 100_000
    queue_size: int = 1024
    max_batch: int = 256


@runtime_checkable
class Store(Protocol):
    """The state store: jobs, ledgers, checkpoints, key-value state and mesh messages."""

    @property
    def url(self) -> str:
        """The URL the store was opened with (a PostgreSQL password is masked)."""
        ...

    @property
    def options(self) -> StoreOptions:
        """The options the store was opened with."""
        ...

    # -- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is queued and release the store; later calls raise ``StoreClosed``."""
        ...

    async def flush(self) -> None:
        """Wait until every queued write is committed; raise the first error a queued
        (``batch``) write met since the last flush."""
        ...

    async def sweep(self) -> int:
        """Delete expired key-value items and checkpoints past ``checkpoint_ttl``; return
        how many rows went."""
        ...

    async def schema_version(self) -> int:
        """The schema version the store holds (see ``engine.store.migrations``)."""
        ...

    # -- jobs --------------------------------------------------------------------------

    async def create_job(
        self, job: Job, *, owner: str | None = None, lease_ttl: float | None = None
    ) -> Job:
        """Insert a job; the store sets ``created`` (when 0), ``updated`` and ``version=1``.
        With ``owner`` and ``lease_ttl`` the job is created leased to ``owner`` (no window
        in which another runner could claim it); otherwise with no lease (``Job.owner`` and
        ``lease_until`` given in ``job`` are ignored). An existing id raises
        ``StoreConflict`` with the stored job."""
        ...

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""
        ...

    async def update_job(
        self,
        job_id: str,
        *,
        expect_version: int | None = None,
        expect_status: str | Collection[str] | None = None,
        expect_owner: str | None = None,
        status: str | None = None,
        data: bytes | None = None,
        result: bytes | None = None,
        error: str | None = None,
    ) -> Job:
        """Compare-and-set: change the given fields if every ``expect_*`` holds, bump
        ``version`` and return the new job. A failed expectation raises ``StoreConflict``
        (``current`` is the stored job); a missing job raises ``JobNotFound``."""
        ...

    async def list_jobs(
        self,
        *,
        status: str | Collection[str] | None = None,
        tenant: str | None = None,
        kind: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        newest_first: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Jobs matching every given filter, ordered by creation, one page at a time."""
        ...

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job with its ledgers and checkpoints; True when the job existed."""
        ...

    async def acquire_job(self, job_id: str, owner: str, ttl: float) -> Job | None:
        """Lease a job for ``ttl`` seconds if nobody else holds a live lease on it (the same
        owner renews). Returns the leased job, or None when another owner holds it."""
        ...

    async def claim_job(
        self,
        owner: str,
        ttl: float,
        *,
        status: str | Collection[str] = ("pending",),
        tenant: str | None = None,
        kind: str | None = None,
    ) -> Job | None:
        """Lease the first job (highest priority, then oldest) in ``status`` with no live
        lease: how a runner picks up new work or takes over a crashed runner's job.
        Concurrent claimers never get the same job. None when there is none."""
        ...

    async def heartbeat_job(self, job_id: str, owner: str, ttl: float) -> Job:
        """Extend ``owner``'s lease to now + ``ttl``. Raises ``LeaseLost`` when another owner
        holds the job (or nobody does), ``JobNotFound`` when it is gone."""
        ...

    async def release_job(self, job_id: str, owner: str) -> bool:
        """Drop ``owner``'s lease; False when ``owner`` did not hold it."""
        ...

    async def finish_job(
        self,
        job_id: str,
        owner: str,
        *,
        status: str,
        result: bytes = b"",
        error: str = "",
        version: int | None = None,
        state: bytes = b"",
        ledger: Sequence[LedgerEntry] = (),
    ) -> Job:
        """End ``owner``'s job in one transaction: the checkpoint ``version`` (``state``,
        when ``version`` is given) with its ``ledger`` entries, the final ``status``,
        ``result`` and ``error`` (``version`` bumped), and the lease dropped. Returns the
        job. Nothing is written unless ``owner`` holds the job (else ``LeaseLost``;
        ``JobNotFound`` when it is gone) and ``version`` is above the job's checkpoints
        (else ``StoreConflict``)."""
        ...

    # -- ledgers -----------------------------------------------------------------------

    async def append_ledger(self, job_id: str, entries: Sequence[LedgerEntry]) -> None:
        """Append entries to the job's ledgers in order; ids already present are ignored."""
        ...

    async def read_ledger(
        self,
        job_id: str,
        *,
        ledger: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """The job's entries with ``seq > after`` in append order (one ledger, or all)."""
        ...

    # -- checkpoints -------------------------------------------------------------------

    async def put_checkpoint(
        self,
        job_id: str,
        version: int,
        state: bytes,
        *,
        meta: bytes = b"",
        name: str = "",
        ledger: Sequence[LedgerEntry] = (),
    ) -> None:
        """Store a checkpoint. ``version`` must be greater than every version the job has;
        ``name`` (optional) must be new for the job. Otherwise ``StoreConflict``.

        ``ledger`` entries are appended to the job's ledgers in the same transaction, and
        only if the checkpoint went in: a step's record and its checkpoint commit together."""
        ...

    async def get_checkpoint(
        self, job_id: str, version: int | None = None, *, name: str | None = None
    ) -> Checkpoint | None:
        """The latest checkpoint, or the one with ``version`` or ``name``; None if absent."""
        ...

    async def list_checkpoints(
        self,
        job_id: str,
        *,
        before: int | None = None,
        limit: int = 100,
        with_state: bool = False,
    ) -> list[Checkpoint]:
        """The job's checkpoints newest first (``version < before`` when given)."""
        ...

    async def delete_checkpoints(self, job_id: str, versions: Sequence[int] | None = None) -> int:
        """Delete the given versions (all when None); return how many were visible."""
        ...

    # -- key-value state ---------------------------------------------------------------

    async def kv_put(
        self, namespace: str, key: str, value: bytes, *, ttl: float | None = None
    ) -> None:
        """Set a value; with ``ttl`` it disappears that many seconds later."""
        ...

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        ...

    async def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a value; True when a live one was there."""
        ...

    async def kv_scan(
        self, namespace: str, *, prefix: str = "", after: str = "", limit: int = 100
    ) -> list[KVItem]:
        """Live items whose key starts with ``prefix`` and sorts after ``after``, by key."""
        ...

    # -- the mesh's durable messages ---------------------------------------------------

    async def mesh_apply(self, writes: MeshWrites, *, broker: str = "") -> None:
        """Apply one batch of the broker's writes in one transaction."""
        ...

    async def mesh_pending(self, *, broker: str = "") -> list[PendingMessage]:
        """Every pending message of ``broker``, oldest first (restored at start)."""
        ...

    async def dead_letters(
        self, *, broker: str = "", after: int = 0, limit: int = 1000
    ) -> list[DeadLetter]:
        """Dead letters with ``id > after``, oldest first."""
        ...

    async def remove_dead_letters(self, ids: Sequence[int], *, broker: str = "") -> int:
        """Delete dead letters by id; return how many existed."""
        ...
