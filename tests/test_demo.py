"""`engine demo` (the README's first command) runs and reports real measurements."""

from __future__ import annotations

import re

import pytest

from engine.cli import main
from engine.routing import RouterC
from engine.scheduling import SchedulerC


def test_demo_prints_a_table_of_measured_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "route_many (10 subs)" in out and "schedule (100 tenants)" in out
    ratios = [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+)x\s*│", out)]
    if RouterC is not None and SchedulerC is not None:
        assert len(ratios) == 3, out
        assert all(r > 1.0 for r in ratios), out  # native must beat the reference
    else:
        assert "not built" in out
