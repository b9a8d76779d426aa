"""Version 1: jobs, ledgers, checkpoints, key-value items, the mesh's messages.

Tables carry an ``engine_`` prefix so a store can share a PostgreSQL database with an
application. No SQLite table is WITHOUT ROWID: their rows hold large blobs (PERF: a
checkpoint put took 0.1 ms with the blobs inside the primary-key b-tree, benches/bench_store.py).
Checkpoint rows with ``base > 0`` hold a delta against the full row
``version = base`` of the same job; ``hidden = 1`` rows are bases kept only for such deltas.
"""

SQLITE = """
CREATE TABLE engine_schema (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL
);
CREATE TABLE engine_jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    data BLOB NOT NULL,
    result BLOB NOT NULL,
    error TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL
);
CREATE INDEX engine_jobs_created ON engine_jobs (created, id);
CREATE INDEX engine_jobs_status ON engine_jobs (status, priority, created);
CREATE TABLE engine_ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    ledger TEXT NOT NULL,
    data BLOB NOT NULL,
    at REAL NOT NULL,
    UNIQUE (job_id, id)
);
CREATE INDEX engine_ledger_job ON engine_ledger (job_id, seq);
CREATE TABLE engine_checkpoints (
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    base INTEGER NOT NULL,
    data BLOB NOT NULL,
    meta BLOB NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    hidden INTEGER NOT NULL,
    PRIMARY KEY (job_id, version)
);
CREATE UNIQUE INDEX engine_checkpoints_name ON engine_checkpoints (job_id, name) WHERE name <> '';
CREATE TABLE engine_kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE INDEX engine_kv_expires ON engine_kv (expires) WHERE expires > 0;
CREATE TABLE engine_mesh_pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    broker TEXT NOT NULL,
    key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (broker, key)
);
CREATE TABLE engine_mesh_dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    broker TEXT NOT NULL,
    key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX engine_mesh_dead_broker ON engine_mesh_dead (broker, id);
"""

POSTGRES = """
CREATE TABLE engine_schema (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL
);
CREATE TABLE engine_jobs (
    id TEXT COLLATE "C" PRIMARY KEY,
    status TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    data BYTEA NOT NULL,
    result BYTEA NOT NULL,
    error TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL,
    owner TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
CREATE INDEX engine_jobs_created ON engine_jobs (created, id);
CREATE INDEX engine_jobs_status ON engine_jobs (status, priority, created);
CREATE TABLE engine_ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    ledger TEXT NOT NULL,
    data BYTEA NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    UNIQUE (job_id, id)
);
CREATE INDEX engine_ledger_job ON engine_ledger (job_id, seq);
CREATE TABLE engine_checkpoints (
    job_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    base BIGINT NOT NULL,
    data BYTEA NOT NULL,
    meta BYTEA NOT NULL,
    name TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    hidden INTEGER NOT NULL,
    PRIMARY KEY (job_id, version)
);
CREATE UNIQUE INDEX engine_checkpoints_name ON engine_checkpoints (job_id, name) WHERE name <> '';
CREATE TABLE engine_kv (
    ns TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE INDEX engine_kv_expires ON engine_kv (expires) WHERE expires > 0;
CREATE TABLE engine_mesh_pending (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    broker TEXT NOT NULL,
    key TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    UNIQUE (broker, key)
);
CREATE TABLE engine_mesh_dead (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    broker TEXT NOT NULL,
    key TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX engine_mesh_dead_broker ON engine_mesh_dead (broker, id);
"""
