"""State that survives: jobs, ledgers, checkpoints, key-value state and the mesh's messages.

``await engine.store.open(url)`` (or ``async with engine.store.open(url) as store``) returns
a :class:`Store` for ``memory://``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``
or ``postgresql://...``. See ``docs/store.md``.
"""

from __future__ import annotations

from engine.errors import (
    JobNotFound,
    LeaseLost,
    RecordTooLarge,
    SchemaVersionError,
    StoreClosed,
    StoreConflict,
    StoreError,
    StoreInputError,
    StoreNotFound,
    StoreURLError,
)
from engine.store._open import migrate, open
from engine.store.base import (
    Checkpoint,
    DeadLetter,
    Durability,
    Job,
    KVItem,
    LedgerEntry,
    MeshWrites,
    Page,
    PendingMessage,
    Store,
    StoreOptions,
)

__all__ = [
    "Checkpoint",
    "DeadLetter",
    "Durability",
    "Job",
    "JobNotFound",
    "KVItem",
    "LeaseLost",
    "LedgerEntry",
    "MeshWrites",
    "Page",
    "PendingMessage",
    "RecordTooLarge",
    "SchemaVersionError",
    "Store",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
    "StoreInputError",
    "StoreNotFound",
    "StoreOptions",
    "StoreURLError",
    "migrate",
    "open",
]
