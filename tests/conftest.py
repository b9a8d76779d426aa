"""Shared fixtures: behaviour tests run on the reference ("py") and compiled ("native") twins."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
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
