"""Version 2: a SQLite ledger row dirties fewer pages per commit.

``engine_ledger`` is rebuilt (rows and their ``seq`` kept) without ``AUTOINCREMENT`` and
without the ``(job_id, seq)`` index; its ``(job_id, id)`` uniqueness becomes the named index
``engine_ledger_id``, which reads use (a job's entries, then sorted by ``seq``).

PERF: each orchestrator step commit wrote ~9.5 WAL frames (4 KiB pages) of which one was
``sqlite_sequence`` (AUTOINCREMENT bumps it on every insert) and one the ``(job_id, seq)``
index that only reads of a whole ledger use (WAL frame headers mapped to tables with the
``dbstat`` table; docs/performance.md, orchestration, run 7).

``seq`` still increases in append order among a job's entries: without AUTOINCREMENT a new
rowid is one above the largest present, so only the ids of deleted rows at the top can be
handed out again, and no reader compares those. PostgreSQL's layout is unchanged (its
identity column has no such table); the version is recorded there too.
"""

SQLITE = """
CREATE TABLE engine_ledger_v2 (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    ledger TEXT NOT NULL,
    data BLOB NOT NULL,
    at REAL NOT NULL
);
INSERT INTO engine_ledger_v2 (seq, job_id, id, ledger, data, at)
    SELECT seq, job_id, id, ledger, data, at FROM engine_ledger ORDER BY seq;
DROP TABLE engine_ledger;
ALTER TABLE engine_ledger_v2 RENAME TO engine_ledger;
CREATE UNIQUE INDEX engine_ledger_id ON engine_ledger (job_id, id);
DELETE FROM sqlite_sequence WHERE name = 'engine_ledger';
"""

POSTGRES = ""
