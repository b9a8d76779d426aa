"""Every SQL store operation, written once for SQLite and PostgreSQL as sans-IO generators.

An operation yields statements and receives their results; a driver (``sqlite.py`` runs
them in its writer thread, ``postgres.py`` on psycopg's async pipeline) executes them:

- ``rows = yield Q(sql, params)``: a query whose rows the operation needs now;
- ``h = yield X(sql, params)`` / ``yield XM(sql, rows)``: a statement whose row count the
  operation may read only after the batch committed (PostgreSQL pipelines these without a
  round trip each); such an operation returns a :class:`Later` that reads it then.

A batch is one transaction. An operation whose first statement says ``autocommit=True``
declares that, when it runs alone, that statement and each one after it may commit on its
own: the statements after it only read, or are a fallback that stands alone (a whole
checkpoint where its delta could not go in). Drivers run such a lone operation without
BEGIN/COMMIT (SQLite) or pipeline (PostgreSQL): one statement, one commit, one round trip.

SQL uses ``?`` placeholders (the PostgreSQL driver turns them into ``%s``) and no ``%``.
Operation-level failures (conflicts, missing jobs) are raised from the generator after
statements that changed nothing, so they never poison the batch's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple, Protocol

from engine.errors import JobNotFound, LeaseLost, StoreConflict, StoreError
from engine.store._front import JobChanges, JobExpect, JobFilter
from engine.store.base import (
    DeadLetter,
    Job,
    KVItem,
    LedgerEntry,
    MeshWrites,
    PendingMessage,
)

__all__ = [
    "XM",
    "Dialect",
    "Later",
    "Op",
    "Q",
    "Started",
    "Stmt",
    "X",
    "lone_autocommit",
    "start",
    "step",
]


class Q(NamedTuple):
    sql: str
    params: Sequence[Any] = ()
    autocommit: bool = False


class X(NamedTuple):
    sql: str
    params: Sequence[Any] = ()
    autocommit: bool = False


class XM(NamedTuple):
    sql: str
    rows: Sequence[Sequence[Any]]
    autocommit: bool = False


Stmt = Q | X | XM


class Started(NamedTuple):
    """An operation started: its generator and first statement (None: it finished at once
    with ``result``, a value or a ``StoreError``)."""

    gen: Generator[Stmt, Any, Any]
    stmt: Stmt | None
    result: Any = None


def start(factory: Callable[[], Any]) -> Started:
    gen = factory()
    try:
        return Started(gen, gen.send(None))
    except StopIteration as stop:
        return Started(gen, None, stop.value)
    except StoreError as exc:
        return Started(gen, None, exc)


def step(gen: Generator[Stmt, Any, Any], value: Any) -> Started:
    """Hand ``value`` (the last statement's rows or handle) to ``gen``; its next step."""
    try:
        return Started(gen, gen.send(value))
    except StopIteration as stop:
        return Started(gen, None, stop.value)
    except StoreError as exc:
        return Started(gen, None, exc)


def lone_autocommit(started: list[Started]) -> bool:
    """Whether the batch is one operation that may commit statement by statement."""
    return len(started) == 1 and started[0].stmt is not None and started[0].stmt.autocommit


class Counted(Protocol):
    @property
    def rowcount(self) -> int: ...


class Later:
    """An operation's result to compute once its batch committed (row counts known)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


def resolve(result: Any) -> Any:
    """An operation's final result: a :class:`Later` computed, errors as values."""
    if isinstance(result, Later):
        try:
            return result.fn()
        except StoreError as exc:
            return exc
    return result


class Dialect(NamedTuple):
    name: str
    skip_locked: str  # appended to the claim sub-select
    counts_now: bool  # row counts are known as soon as a statement ran (no pipelining)


SQLITE = Dialect("sqlite", "", True)
POSTGRES = Dialect("postgresql", " FOR UPDATE SKIP LOCKED", False)

Op = Generator[Stmt, Any, Any]

JOB_COLS = (
    "id, status, tenant, kind, priority, data, result, error, created, updated, version, owner, "
    "lease_until"
)
SEL_JOB = f"SELECT {JOB_COLS} FROM engine_jobs"


def _qs(n: int) -> str:
    return ", ".join("?" * n)


def to_job(r: Sequence[Any]) -> Job:
    return Job(
        id=r[0],
        status=r[1],
        tenant=r[2],
        kind=r[3],
        priority=r[4],
        data=bytes(r[5]),
        result=bytes(r[6]),
        error=r[7],
        created=r[8],
        updated=r[9],
        version=r[10],
        owner=r[11],
        lease_until=r[12],
    )


def job_or_missing(job_id: str) -> Op:
    rows = yield Q(f"{SEL_JOB} WHERE id = ?", (job_id,))
    if not rows:
        raise JobNotFound(f"no job {job_id!r}")
    return to_job(rows[0])


# -- jobs ------------------------------------------------------------------------------


def create_job(d: Dialect, job: Job) -> Op:
    rows = yield Q(
        f"INSERT INTO engine_jobs ({JOB_COLS}) VALUES ({_qs(13)}) ON CONFLICT (id) DO NOTHING "
        "RETURNING id",
        (
            job.id, job.status, job.tenant, job.kind, job.priority, job.data, job.result,
            job.error, job.created, job.updated, job.version, job.owner, job.lease_until,
        ),
        autocommit=True,  # what follows only reads
    )  # fmt: skip
    if rows:
        return job
    current = yield from job_or_missing(job.id)
    raise StoreConflict(f"job {job.id!r} exists", current)


def get_job(d: Dialect, job_id: str) -> Op:
    rows = yield Q(f"{SEL_JOB} WHERE id = ?", (job_id,))
    return to_job(rows[0]) if rows else None


def update_job(d: Dialect, job_id: str, expect: JobExpect, changes: JobChanges, now: float) -> Op:
    sets = ["version = version + 1", "updated = ?"]
    params: list[Any] = [now]
    for name in ("status", "data", "result", "error"):
        value = getattr(changes, name)
        if value is not None:
            sets.append(f"{name} = ?")
            params.append(value)
    where = ["id = ?"]
    params.append(job_id)
    if expect.version is not None:
        where.append("version = ?")
        params.append(expect.version)
    if expect.status is not None:
        where.append(f"status IN ({_qs(len(expect.status))})")
        params += expect.status
    if expect.owner is not None:
        where.append("owner = ?")
        params.append(expect.owner)
    rows = yield Q(
        f"UPDATE engine_jobs SET {', '.join(sets)} WHERE {' AND '.join(where)} "
        f"RETURNING {JOB_COLS}",
        params,
        autocommit=True,
    )
    if rows:
        return to_job(rows[0])
    current = yield from job_or_missing(job_id)
    raise StoreConflict(f"job {job_id!r} changed (version {current.version})", current)


def _job_where(flt: JobFilter, now: float | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if flt.status is not None:
        where.append(f"status IN ({_qs(len(flt.status))})")
        params += flt.status
    for col in ("tenant", "kind"):
        value = getattr(flt, col)
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    if flt.created_after is not None:
        where.append("created > ?")
        params.append(flt.created_after)
    if flt.created_before is not None:
        where.append("created < ?")
        params.append(flt.created_before)
    if flt.after is not None:
        where.append(f"(created, id) {'<' if flt.newest_first else '>'} (?, ?)")
        params += flt.after
    if now is not None:
        where.append("(owner = '' OR lease_until <= ?)")
        params.append(now)
    return where, params


def list_jobs(d: Dialect, flt: JobFilter, limit: int) -> Op:
    where, params = _job_where(flt, None)
    order = "DESC" if flt.newest_first else "ASC"
    rows = yield Q(
        f"{SEL_JOB}{' WHERE ' + ' AND '.join(where) if where else ''} "
        f"ORDER BY created {order}, id {order} LIMIT ?",
        [*params, limit],
    )
    return [to_job(r) for r in rows]


def delete_job(d: Dialect, job_id: str) -> Op:
    yield X("DELETE FROM engine_ledger WHERE job_id = ?", (job_id,))
    yield X("DELETE FROM engine_checkpoints WHERE job_id = ?", (job_id,))
    rows = yield Q("DELETE FROM engine_jobs WHERE id = ? RETURNING id", (job_id,))
    return bool(rows)


def acquire_job(d: Dialect, job_id: str, owner: str, until: float, now: float) -> Op:
    rows = yield Q(
        "UPDATE engine_jobs SET owner = ?, lease_until = ? "
        "WHERE id = ? AND (owner = '' OR owner = ? OR lease_until <= ?) "
        f"RETURNING {JOB_COLS}",
        (owner, until, job_id, owner, now),
        autocommit=True,
    )
    if rows:
        return to_job(rows[0])
    yield from job_or_missing(job_id)
    return None


def claim_job(d: Dialect, owner: str, until: float, now: float, flt: JobFilter) -> Op:
    where, params = _job_where(flt, now)
    rows = yield Q(
        "UPDATE engine_jobs SET owner = ?, lease_until = ? WHERE id = ("
        f"SELECT id FROM engine_jobs WHERE {' AND '.join(where)} "
        f"ORDER BY priority DESC, created, id LIMIT 1{d.skip_locked}) "
        f"RETURNING {JOB_COLS}",
        [owner, until, *params],
        autocommit=True,
    )
    return to_job(rows[0]) if rows else None


def heartbeat_job(d: Dialect, job_id: str, owner: str, until: float, now: float) -> Op:
    rows = yield Q(
        f"UPDATE engine_jobs SET lease_until = ? WHERE id = ? AND owner = ? RETURNING {JOB_COLS}",
        (until, job_id, owner),
        autocommit=True,
    )
    if rows:
        return to_job(rows[0])
    current = yield from job_or_missing(job_id)
    raise LeaseLost(f"job {job_id!r} is held by {current.owner or 'nobody'}", current)


def release_job(d: Dialect, job_id: str, owner: str) -> Op:
    rows = yield Q(
        "UPDATE engine_jobs SET owner = '', lease_until = 0 WHERE id = ? AND owner = ? "
        "RETURNING id",
        (job_id, owner),
        autocommit=True,
    )
    return bool(rows)


# -- ledgers ---------------------------------------------------------------------------


_LEDGER_INSERT = "INSERT INTO engine_ledger (job_id, id, ledger, data, at) "
_LEDGER_CONFLICT = " ON CONFLICT (job_id, id) DO NOTHING"
_SQLITE_ROWS = 1000  # 5 parameters each, well under SQLite's 32,766 per statement
# PostgreSQL: the entries as rows ``e(id, ledger, data, at, n)`` of a SELECT, in order. A
# few as a VALUES list; more as arrays, so that any number of them is one statement.
# PERF: for LangGraph's 1-2 writes per task, VALUES took 56-74 us of client CPU per
# insert against unnest's 93-132 (psycopg's array dumpers), the server the same or less
# (3,000 two-entry inserts, thread CPU and the backend's /proc CPU time).
_FEW = 8
_ARRAY_ROWS = (
    "SELECT ?, e.id, e.ledger, e.data, e.at FROM unnest(?::text[], ?::text[], ?::bytea[], "
    "?::float8[]) WITH ORDINALITY AS e(id, ledger, data, at, n)"
)


def ledger_rows(job_id: str, entries: list[LedgerEntry]) -> tuple[str, tuple[Any, ...]]:
    """The SELECT of ``entries``' rows (aliased ``e``, ordered by ``e.n``), its parameters."""
    if len(entries) > _FEW:
        return _ARRAY_ROWS, (
            job_id,
            [e.id for e in entries],
            [e.ledger for e in entries],
            [e.data for e in entries],
            [e.at for e in entries],
        )
    rows = ", ".join(f"(?, ?, ?::bytea, ?::float8, {n})" for n in range(len(entries)))
    sql = (
        f"SELECT ?, e.id, e.ledger, e.data, e.at FROM (VALUES {rows}) AS e(id, ledger, data, at, n)"
    )
    return sql, (job_id, *[v for e in entries for v in (e.id, e.ledger, e.data, e.at)])


def append_ledger(d: Dialect, job_id: str, entries: list[LedgerEntry]) -> Op:
    """One statement for the usual number of entries (on its own, it commits alone).

    PERF: PostgreSQL's executemany pipelines a send per row; SQLite's multi-row VALUES
    takes 3.1 us per row against executemany's 3.9 (60-entry steps, thread CPU time).
    """
    if d is POSTGRES:
        rows, params = ledger_rows(job_id, entries)
        yield X(f"{_LEDGER_INSERT}{rows} ORDER BY e.n{_LEDGER_CONFLICT}", params, autocommit=True)
    elif len(entries) <= _SQLITE_ROWS:
        yield X(
            f"{_LEDGER_INSERT}VALUES {', '.join(['(?, ?, ?, ?, ?)'] * len(entries))}"
            f"{_LEDGER_CONFLICT}",
            [v for e in entries for v in (job_id, e.id, e.ledger, e.data, e.at)],
            autocommit=True,
        )
    else:  # beyond SQLite's bound parameters per statement: one row at a time
        yield XM(
            f"{_LEDGER_INSERT}VALUES (?, ?, ?, ?, ?){_LEDGER_CONFLICT}",
            [(job_id, e.id, e.ledger, e.data, e.at) for e in entries],
        )


def read_ledger(d: Dialect, job_id: str, ledger: str | None, after: int, limit: int) -> Op:
    only = "" if ledger is None else " AND ledger = ?"
    rows = yield Q(
        f"SELECT seq, id, ledger, data, at FROM engine_ledger WHERE job_id = ? AND seq > ?{only} "
        "ORDER BY seq LIMIT ?",
        (job_id, after, *(() if ledger is None else (ledger,)), limit),
    )
    return [LedgerEntry(id=r[1], data=bytes(r[3]), ledger=r[2], at=r[4], seq=r[0]) for r in rows]


# -- key-value state -------------------------------------------------------------------


def kv_put(d: Dialect, item: KVItem) -> Op:
    yield X(
        "INSERT INTO engine_kv (ns, key, value, expires, updated) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
        "expires = excluded.expires, updated = excluded.updated",
        (item.namespace, item.key, item.value, item.expires, item.updated),
        autocommit=True,
    )


def kv_get(d: Dialect, namespace: str, key: str, now: float) -> Op:
    rows = yield Q(
        "SELECT value FROM engine_kv WHERE ns = ? AND key = ? AND (expires = 0 OR expires > ?)",
        (namespace, key, now),
    )
    return bytes(rows[0][0]) if rows else None


def kv_delete(d: Dialect, namespace: str, key: str, now: float) -> Op:
    rows = yield Q(
        "DELETE FROM engine_kv WHERE ns = ? AND key = ? RETURNING expires",
        (namespace, key),
        autocommit=True,
    )
    return bool(rows) and (rows[0][0] == 0 or rows[0][0] > now)


def kv_scan(d: Dialect, namespace: str, prefix: str, after: str, limit: int, now: float) -> Op:
    rows = yield Q(
        "SELECT key, value, expires, updated FROM engine_kv WHERE ns = ? AND key >= ? "
        "AND key > ? AND (expires = 0 OR expires > ?) ORDER BY key LIMIT ?",
        (namespace, prefix, after, now, limit),
    )
    out = []
    for r in rows:  # keys sort, so the prefix's range ends at the first key outside it
        if not r[0].startswith(prefix):
            break
        out.append(
            KVItem(namespace=namespace, key=r[0], value=bytes(r[1]), expires=r[2], updated=r[3])
        )
    return out


# -- the mesh's durable messages -------------------------------------------------------


def mesh_apply(d: Dialect, writes: MeshWrites, broker: str, max_dead: int) -> Op:
    if writes.put:
        yield XM(
            "INSERT INTO engine_mesh_pending (broker, key, envelope) VALUES (?, ?, ?) "
            "ON CONFLICT (broker, key) DO UPDATE SET envelope = excluded.envelope",
            [(broker, p.key, p.envelope) for p in writes.put],
        )
    if writes.remove:
        yield XM(
            "DELETE FROM engine_mesh_pending WHERE broker = ? AND key = ?",
            [(broker, k) for k in writes.remove],
        )
    if writes.dead:
        yield XM(
            "INSERT INTO engine_mesh_dead (broker, key, envelope, reason, attempts, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(broker, x.key, x.envelope, x.reason, x.attempts, x.at) for x in writes.dead],
        )
        yield X(
            "DELETE FROM engine_mesh_dead WHERE broker = ? AND id <= (SELECT id FROM "
            "engine_mesh_dead WHERE broker = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (broker, broker, max_dead),
        )


def mesh_pending(d: Dialect, broker: str) -> Op:
    rows = yield Q(
        "SELECT key, envelope FROM engine_mesh_pending WHERE broker = ? ORDER BY seq", (broker,)
    )
    return [PendingMessage(r[0], bytes(r[1])) for r in rows]


def dead_letters(d: Dialect, broker: str, after: int, limit: int) -> Op:
    rows = yield Q(
        "SELECT id, key, envelope, reason, attempts, at FROM engine_mesh_dead "
        "WHERE broker = ? AND id > ? ORDER BY id LIMIT ?",
        (broker, after, limit),
    )
    return [
        DeadLetter(id=r[0], key=r[1], envelope=bytes(r[2]), reason=r[3], attempts=r[4], at=r[5])
        for r in rows
    ]


def remove_dead_letters(d: Dialect, ids: list[int], broker: str) -> Op:
    rows = yield Q(
        f"DELETE FROM engine_mesh_dead WHERE broker = ? AND id IN ({_qs(len(ids))}) RETURNING id",
        (broker, *ids),
        autocommit=True,
    )
    return len(rows)


# -- maintenance -----------------------------------------------------------------------


def sweep_kv(d: Dialect, now: float) -> Op:
    gone = yield X("DELETE FROM engine_kv WHERE expires > 0 AND expires <= ?", (now,))
    return Later(lambda: max(gone.rowcount, 0))


def schema_version(d: Dialect) -> Op:
    rows = yield Q("SELECT max(version) FROM engine_schema")
    return int(rows[0][0] or 0)
