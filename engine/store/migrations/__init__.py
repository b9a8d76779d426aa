"""Schema versions of the SQL stores, applied forward in order.

Each migration is a module ``mNNNN_<name>.py`` with ``SQLITE`` and ``POSTGRES`` scripts;
:data:`MIGRATIONS` lists them in order and :data:`LATEST` is the version this code writes.
The ``engine_schema`` table records every applied version. A store whose schema is newer
than :data:`LATEST` refuses to open (``SchemaVersionError``): an older engine must not
write to a layout it does not know. ``engine store migrate URL`` applies what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.store.migrations import m0001_initial, m0002_ledger_pages

__all__ = ["LATEST", "MIGRATIONS", "SCHEMA_TABLE", "Migration"]

SCHEMA_TABLE = "engine_schema"


@dataclass(frozen=True)
class Migration:
    """One forward step: ``version`` becomes current once its script committed."""

    version: int
    name: str
    sqlite: str
    postgres: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", m0001_initial.SQLITE, m0001_initial.POSTGRES),
    Migration(2, "ledger_pages", m0002_ledger_pages.SQLITE, m0002_ledger_pages.POSTGRES),
)

LATEST = MIGRATIONS[-1].version
