"""Fuzzing the broker core (the state machine is in tests/mesh_fuzz.py).

The default run explores 10^4 examples; ``make test-slow`` (``-m slow``) explores 10^6, as
100 runs of 10^4 (one hypothesis run keeps every example's choices in memory: 10^6 in one
run grows past a gigabyte).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from mesh_fuzz import BrokerMachine

_FAST = settings(
    max_examples=10_000,
    stateful_step_count=8,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def quiet() -> Iterator[None]:
    """The core logs every hostile frame it drops (rate-limited per connection); captured
    by pytest for 10^4+ examples, those records alone would take gigabytes."""
    logger = logging.getLogger("engine.mesh")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.mark.timeout(600)
def test_the_broker_core_survives_hostile_peers(quiet: None) -> None:
    run_state_machine_as_test(BrokerMachine, settings=_FAST)


@pytest.mark.slow
@pytest.mark.timeout(8 * 3600)
def test_the_broker_core_survives_hostile_peers_10_6(quiet: None) -> None:
    for _ in range(100):  # each run draws its own random examples
        run_state_machine_as_test(BrokerMachine, settings=_FAST)
