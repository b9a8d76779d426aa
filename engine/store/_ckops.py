"""Checkpoint operations of the SQL stores (sans-IO, like ``_sqlops``).

Rows are either whole (``base = 0``) or a delta against the row just before them in
version order; ``base`` names the whole row their chain starts from. So a state is rebuilt
by one ordered range scan ``base..version``, and a chain's rows are contiguous: a delta is
only inserted while its predecessor is the job's latest row.

Deleting a checkpoint (retention, TTL, ``delete_checkpoints``) that a kept checkpoint's
chain still needs only hides it (``hidden = 1``); hidden rows go once nothing needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import LeaseLost, StoreConflict, StoreError
from engine.store._delta import apply_delta
from engine.store._front import JobChanges
from engine.store._sqlops import (
    JOB_COLS,
    Dialect,
    Later,
    Op,
    Q,
    X,
    append_ledger,
    job_or_missing,
    ledger_rows,
    to_job,
)
from engine.store.base import Checkpoint, LedgerEntry

__all__ = [
    "delete_checkpoints",
    "finish_job",
    "get_checkpoint",
    "list_checkpoints",
    "put_checkpoint",
    "sweep_checkpoints",
]

# Each NOT EXISTS is one index lookup ((job_id, version) / (job_id, name)). PERF: one
# NOT EXISTS with an OR scanned the job's rows: 1.4 ms/put at 300 versions.
_INSERT = (
    "INSERT INTO engine_checkpoints (job_id, version, base, data, meta, name, created, hidden) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, 0 WHERE NOT EXISTS (SELECT 1 FROM engine_checkpoints "
    "WHERE job_id = ? AND version >= ?)"
)
# "name <> ''" repeats the partial index's condition, so the planner may use the index (a
# bound parameter alone cannot prove it). PERF: without it EngineSaver's puts scanned the
# thread's rows, ~0.3 ms per put after 2,000 checkpoints (benches/bench_store.py).
_NAME_FREE = (
    " AND NOT EXISTS (SELECT 1 FROM engine_checkpoints WHERE job_id = ? AND name = ? "
    "AND name <> '')"
)
# a delta goes in only while its predecessor is the job's latest row (and version > prev)
_INSERT_DELTA = (
    "INSERT INTO engine_checkpoints (job_id, version, base, data, meta, name, created, hidden) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, 0 WHERE ? > ? "
    "AND EXISTS (SELECT 1 FROM engine_checkpoints WHERE job_id = ? AND version = ?) "
    "AND NOT EXISTS (SELECT 1 FROM engine_checkpoints WHERE job_id = ? AND version > ?)"
)
_CUT = (
    "(SELECT version FROM engine_checkpoints WHERE job_id = ? AND hidden = 0 "
    "ORDER BY version DESC LIMIT 1 OFFSET ?)"
)
# a hidden row that no visible row's chain (base <= it < row) still runs through
_UNNEEDED = (
    "hidden = 1 AND NOT EXISTS (SELECT 1 FROM engine_checkpoints u "
    "WHERE u.job_id = engine_checkpoints.job_id AND u.hidden = 0 AND u.base > 0 "
    "AND u.base <= engine_checkpoints.version AND u.version > engine_checkpoints.version)"
)


def _retention_cte(keep: int) -> str:
    """PostgreSQL: ``_keep_last`` inside the insert's statement (CTEs ``cut`` .. ``hid``).

    Every part of one statement sees the rows as they were before it, so the new row (its
    version and chain start ``floor``, from ``ck``) is counted in by hand: the cut is the
    (keep-1)-th newest older visible row (the new row itself when keep is 1); rows before
    the oldest chain start still needed go, the rest before the cut are hidden (disjoint
    sets: one statement must not change a row twice). Nothing happens when the insert did
    not go in (``ck`` is then empty).
    """
    cut = "ck.version" if keep == 1 else f"{_CUT.replace('OFFSET ?', f'OFFSET {keep - 2}')}"
    return (
        f", cut AS (SELECT {cut} AS v, ck.floor FROM ck), "
        "lo AS (SELECT least(cut.floor, (SELECT min(CASE WHEN base > 0 THEN base ELSE version "
        "END) FROM engine_checkpoints WHERE job_id = ? AND version >= cut.v)) AS v FROM cut "
        "WHERE cut.v IS NOT NULL), "
        "gone AS (DELETE FROM engine_checkpoints WHERE job_id = ? "
        "AND version < (SELECT v FROM lo)), "
        "hid AS (UPDATE engine_checkpoints SET hidden = 1 WHERE job_id = ? AND hidden = 0 "
        "AND version >= (SELECT v FROM lo) AND version < (SELECT v FROM cut))"
    )


def _statement(
    d: Dialect,
    sql: str,
    params: tuple[Any, ...],
    ck: Checkpoint,
    keep: int | None,
    ledger: list[LedgerEntry],
) -> tuple[str, tuple[Any, ...]]:
    """The checkpoint insert; on PostgreSQL with the step's ledger entries (only if the
    checkpoint went in) and the retention, all in one statement.

    PERF: one statement alone in its transaction is one round trip (libpq trace: one
    Parse/Bind/Execute/Sync exchange). The old batch (psycopg's transaction() in a pipeline,
    the insert with its ledger and retention as separate statements) synced 3 times per
    put, and each pipelined statement cost a send of its own.
    """
    if d.counts_now:  # the row count tells (see _inserted)
        return sql, params
    if not ledger and keep is None:
        return sql + " RETURNING version", params
    text = (
        f"WITH ck AS ({sql} RETURNING version, "
        "CASE WHEN base > 0 THEN base ELSE version END AS floor)"
    )
    extra: tuple[Any, ...] = ()
    if ledger:
        rows, led_params = ledger_rows(ck.job_id, ledger)
        text += (
            f", led AS (INSERT INTO engine_ledger (job_id, id, ledger, data, at) {rows} "
            "WHERE EXISTS (SELECT 1 FROM ck) ORDER BY e.n ON CONFLICT (job_id, id) DO NOTHING)"
        )
        extra += led_params
    if keep is not None:
        text += _retention_cte(keep)
        extra += (ck.job_id,) * (3 if keep == 1 else 4)
    return text + " SELECT version FROM ck", (*params, *extra)


def _inserted(d: Dialect, sql: str, params: tuple[Any, ...], one: bool) -> Op:
    """Whether the insert went in. SQLite reads the row count: PERF, no RETURNING row to
    fetch, one ``sqlite3_step`` (and one GIL release and re-take in the store's writer
    thread) less per checkpoint."""
    if d.counts_now:
        cur = yield X(sql, params, autocommit=one)
        return cur.rowcount > 0
    return bool((yield Q(sql, params, autocommit=one)))


def put_checkpoint(
    d: Dialect,
    ck: Checkpoint,
    base: int,
    prev: int,
    delta: bytes | None,
    keep: int | None,
    ledger: list[LedgerEntry],
) -> Op:
    """Insert ``delta`` (against ``prev``, chain from ``base``) while ``prev`` is still the
    latest row, else the whole state; then the ``ledger`` entries, only if the checkpoint
    went in, and the retention (one transaction). The result is True when the state went
    in whole.

    On PostgreSQL the insert carries the ledger entries and the retention (one statement);
    on SQLite they follow it. Either way, a put with nothing after its insert may commit
    each insert on its own: a delta that did not go in changed nothing, and the whole
    state then stands alone.
    """
    if keep is not None and ck.version <= keep:
        # PERF: versions are distinct ints >= 1, so the job holds at most ``version`` rows:
        # nothing to cut (an orchestrator step on SQLite: one SELECT less, ~9 us of ~150)
        keep = None
    one = not d.counts_now or (not ledger and keep is None)
    cols = (ck.meta, ck.name, ck.created)
    name: tuple[Any, ...] = (ck.job_id, ck.name) if ck.name else ()
    free = _NAME_FREE if ck.name else ""
    went_in = whole = False
    if delta is not None:
        params = (ck.job_id, ck.version, base, delta, *cols, ck.version, prev, ck.job_id, prev,
                  ck.job_id, prev, *name)  # fmt: skip
        sql, params = _statement(d, _INSERT_DELTA + free, params, ck, keep, ledger)
        went_in = yield from _inserted(d, sql, params, one)
    if not went_in:
        params = (ck.job_id, ck.version, 0, ck.state, *cols, ck.job_id, ck.version, *name)
        sql, params = _statement(d, _INSERT + free, params, ck, keep, ledger)
        went_in = whole = yield from _inserted(d, sql, params, one)
    if not went_in:
        raise StoreConflict(
            f"checkpoint version {ck.version} of job {ck.job_id!r} is not above its latest"
            + (f", or its name {ck.name!r} exists" if ck.name else "")
        )
    if d.counts_now:
        if ledger:
            yield from append_ledger(d, ck.job_id, ledger)
        if keep is not None:
            yield from _keep_last(ck.job_id, keep)
    return whole


def finish_job(
    d: Dialect,
    job_id: str,
    owner: str,
    changes: JobChanges,
    now: float,
    ck: Checkpoint | None,
    keep: int | None,
    ledger: list[LedgerEntry],
) -> Op:
    """The job's end (``Store.finish_job``): its final fields and the lease dropped, in an
    update that also checks the checkpoint's version is new, so that a failure raises
    before anything changed; then the checkpoint (whole) and its ledger entries."""
    params: list[Any] = [now, changes.status, changes.result, changes.error, job_id, owner]
    new = ""
    if ck is not None:
        new = " AND NOT EXISTS (SELECT 1 FROM engine_checkpoints WHERE job_id = ? AND version >= ?)"
        params += (job_id, ck.version)
    rows = yield Q(
        "UPDATE engine_jobs SET version = version + 1, updated = ?, status = ?, result = ?, "
        f"error = ?, owner = '', lease_until = 0 WHERE id = ? AND owner = ?{new} "
        f"RETURNING {JOB_COLS}",
        params,
    )
    if not rows:
        current = yield from job_or_missing(job_id)
        if current.owner != owner:
            raise LeaseLost(f"job {job_id!r} is not leased to {owner!r}", current)
        raise StoreConflict(
            f"checkpoint version {ck.version if ck else 0} of job {job_id!r} is not above "
            "its latest",
            current,
        )
    if ck is not None:
        yield from put_checkpoint(d, ck, 0, 0, None, keep, ledger)
    return to_job(rows[0])


def _keep_last(job_id: str, keep: int) -> Op:
    """Hide all but the last ``keep`` visible versions; delete what no kept chain needs.

    PERF: the cut is read first, so a job holding ``keep`` checkpoints or fewer costs one
    short index walk instead of two statements that each look it up (an orchestrator step
    on SQLite: 5 statements -> 4, thread CPU time per step in docs/performance.md).
    """
    rows = yield Q(_CUT[1:-1], (job_id, keep - 1))
    if not rows:
        return
    cut = rows[0][0]
    yield X(
        "DELETE FROM engine_checkpoints WHERE job_id = ? AND version < (SELECT "
        "min(CASE WHEN base > 0 THEN base ELSE version END) FROM engine_checkpoints "
        "WHERE job_id = ? AND version >= ?)",
        (job_id, job_id, cut),
    )
    yield X(
        "UPDATE engine_checkpoints SET hidden = 1 WHERE job_id = ? AND hidden = 0 AND version < ?",
        (job_id, cut),
    )


_COLS = "SELECT version, base, data, meta, name, created FROM engine_checkpoints"


def _states(job_id: str, rows: Sequence[Any], max_size: int) -> Op:
    """The states of ``rows`` (one page, any order): one range scan over their chains."""
    lo = min(r[1] or r[0] for r in rows)
    hi = max(r[0] for r in rows)
    wanted = {r[0] for r in rows}
    chain = yield Q(
        "SELECT version, base, data FROM engine_checkpoints WHERE job_id = ? "
        "AND version >= ? AND version <= ? ORDER BY version",
        (job_id, lo, hi),
    )
    states: dict[int, bytes] = {}
    state: bytes | None = None
    for version, base, data in chain:
        if not base:
            state = bytes(data)
        elif state is None:
            raise StoreError(f"checkpoint {version} of job {job_id!r} lost its chain start {base}")
        else:
            state = apply_delta(state, bytes(data), max_size)
        if version in wanted:
            states[version] = state
    return states


def _checkpoint(job_id: str, r: Sequence[Any], state: bytes) -> Checkpoint:
    return Checkpoint(
        job_id=job_id, version=r[0], state=state, meta=bytes(r[3]), name=r[4], created=r[5]
    )


def get_checkpoint(
    d: Dialect,
    job_id: str,
    version: int | None,
    name: str | None,
    oldest: float | None,
    max_size: int,
) -> Op:
    sql = f"{_COLS} WHERE job_id = ? AND hidden = 0"
    params: list[Any] = [job_id]
    for cond, value in (
        ("version = ?", version),
        ("name = ? AND name <> ''", name),
        ("created >= ?", oldest),
    ):
        if value is not None:
            sql += f" AND {cond}"
            params.append(value)
    rows = yield Q(sql + " ORDER BY version DESC LIMIT 1", params)
    if not rows:
        return None
    r = rows[0]
    if not r[1]:
        return _checkpoint(job_id, r, bytes(r[2]))
    states = yield from _states(job_id, rows, max_size)
    return _checkpoint(job_id, r, states[r[0]])


def list_checkpoints(
    d: Dialect,
    job_id: str,
    before: int | None,
    limit: int,
    with_state: bool,
    oldest: float | None,
    max_size: int,
) -> Op:
    sql = (
        _COLS if with_state else _COLS.replace("data", "NULL")
    ) + " WHERE job_id = ? AND hidden = 0"
    params: list[Any] = [job_id]
    for cond, value in (("version < ?", before), ("created >= ?", oldest)):
        if value is not None:
            sql += f" AND {cond}"
            params.append(value)
    rows = yield Q(sql + " ORDER BY version DESC LIMIT ?", [*params, limit])
    if not with_state or not rows:
        return [_checkpoint(job_id, r, b"") for r in rows]
    states = yield from _states(job_id, rows, max_size)
    return [_checkpoint(job_id, r, states[r[0]]) for r in rows]


def delete_checkpoints(d: Dialect, job_id: str, versions: list[int] | None) -> Op:
    if versions is None:
        rows = yield Q(
            "DELETE FROM engine_checkpoints WHERE job_id = ? RETURNING hidden", (job_id,)
        )
        return sum(1 for r in rows if not r[0])
    chosen = f"version IN ({', '.join('?' * len(versions))})"
    rows = yield Q(
        f"UPDATE engine_checkpoints SET hidden = 1 WHERE job_id = ? AND hidden = 0 AND {chosen} "
        "RETURNING version",
        (job_id, *versions),
    )
    yield X(f"DELETE FROM engine_checkpoints WHERE job_id = ? AND {_UNNEEDED}", (job_id,))
    return len(rows)


def sweep_checkpoints(d: Dialect, oldest: float) -> Op:
    """Hide checkpoints created before ``oldest``, delete those no live chain needs."""
    hidden = yield X(
        "UPDATE engine_checkpoints SET hidden = 1 WHERE created < ? AND hidden = 0", (oldest,)
    )
    yield X(f"DELETE FROM engine_checkpoints WHERE {_UNNEEDED}")
    return Later(lambda: max(hidden.rowcount, 0))
