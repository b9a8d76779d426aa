"""Integration tests: ``slow`` ones (the 20x kill/restart soak) run only with ``-m slow``.

The marker's contract in pyproject is "run with `make test-slow`"; this keeps the
default suite to one pass of each scenario.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [
        item
        for item in items
        if item.get_closest_marker("slow") is not None and "integration" in str(item.path)
    ]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
