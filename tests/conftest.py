"""Shared fixtures: behaviour tests run on the reference ("py") and compiled ("native") twins."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from tests._clock import FakeClock
from tests.store.pg_server import PgServer, pg_server_or_skip

if TYPE_CHECKING:
    from engine.mesh import Broker

# The OpenAI-compatible test server's `openai_server` fixture (tests/openai_server.py).
pytest_plugins = ["tests.openai_server"]

# deadline=None and no too_slow health check: both are wall-clock assertions (issue 12)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def impl_params(py: object, native: object | None) -> list[object]:
    """pytest params for a py/native pair; the native one is skipped only when not required."""
    skip = pytest.mark.skip(reason="native extension not built (ENGINE_NO_EXTENSIONS or no build)")
    return [
        pytest.param(py, id="py"),
        pytest.param(native, id="native", marks=() if native is not None else skip),
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests (load/soak repetitions) run only when asked for: ``make test-slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture
def broker() -> Iterator[Broker]:
    """An in-process mesh broker on an ephemeral 127.0.0.1 port with fast heartbeats (0.1 s)."""
    from engine.mesh import Broker

    b = Broker("tcp://127.0.0.1:0", heartbeat=0.1, route_timeout=0.5, startup_grace=0.2)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeClock]:
    """``fake_clock(module, ...)``: those modules' ``time`` becomes one :class:`FakeClock`."""
    clock = FakeClock()

    def install(*modules: ModuleType) -> FakeClock:
        for module in modules:
            if getattr(module, "time", None) not in (time, clock):
                raise TypeError(f"{module.__name__} does not read the clock as `time.<fn>()`")
            monkeypatch.setattr(module, "time", clock)
        return clock

    return install


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the session (tests/store/pg_server.py: stopped at
    the end, at interpreter exit, or by its watchdog if this process dies); skipped without
    PostgreSQL binaries, except under CI."""
    yield from pg_server_or_skip()


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ``engine.store`` URL: a new SQLite file, or a new database on the test
    PostgreSQL server (what ``--store`` takes)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.fresh_database_url(f"store_{os.getpid()}_{next(_databases)}")
