"""The conformance suite's fixtures: every test runs on memory://, SQLite and PostgreSQL.

``backend`` is parametrised over the three implementations and hands each test a fresh,
empty store location plus a fake clock (TTLs and leases are driven by it, never by sleeping).
The PostgreSQL half starts a real server (``tests/store/pg_server.py``, the ``pg`` fixture of
``tests/conftest.py``) once per session; it is skipped with the reason when the machine has
no PostgreSQL binaries, except under CI.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

import engine.store
from engine.store import Store
from tests.store.pg_server import PgServer

KINDS = ["memory", "sqlite", "postgres"]
_schemas = itertools.count(1)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Backend:
    """One implementation with a fresh location: ``open(**options)`` opens a store there."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.clock = FakeClock()

    def open(self, **options: Any) -> Any:
        options.setdefault("clock", self.clock)
        return engine.store.open(self.url, **options)

    async def opened(self, **options: Any) -> Store:
        store: Store = await self.open(**options)
        return store


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.fresh_schema_url(f"t{next(_schemas)}")


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, _url(request.param, tmp_path, request))


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, _url(request.param, tmp_path, request))
