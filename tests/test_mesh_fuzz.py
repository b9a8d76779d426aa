"""Fuzzing the broker core (the state machine is in tests/mesh_fuzz.py).

The default run explores 10^4 examples; ``make test-slow`` (``-m slow``) explores 10^6.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from mesh_fuzz import BrokerMachine

_FAST = settings(
    max_examples=10_000,
    stateful_step_count=8,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.timeout(600)
def test_the_broker_core_survives_hostile_peers() -> None:
    BrokerMachine.TestCase.settings = _FAST
    BrokerMachine.TestCase().runTest()


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_the_broker_core_survives_hostile_peers_10_6() -> None:
    BrokerMachine.TestCase.settings = settings(_FAST, max_examples=1_000_000)
    BrokerMachine.TestCase().runTest()
