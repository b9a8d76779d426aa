"""`engine demo` (the README's first command) runs and reports real measurements."""

from __future__ import annotations

import re

import pytest

from engine.cli import main
from engine.routing import RouterC
from engine.scheduling import SchedulerC


def demo_ratios(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[float]]:
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "route_many (10 subs)" in out and "schedule (100 tenants)" in out
    return out, [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+)x\s*│", out)]


def test_demo_prints_a_table_of_measured_rates(capsys: pytest.CaptureFixture[str]) -> None:
    out, ratios = demo_ratios(capsys)
    if RouterC is not None and SchedulerC is not None:
        assert len(ratios) == 3, out
        assert all(r > 0 for r in ratios), out  # which side wins is timing: -m slow
    else:
        assert "not built" in out


@pytest.mark.slow
@pytest.mark.skipif(RouterC is None or SchedulerC is None, reason="native extension not built")
def test_demo_native_beats_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    out, ratios = demo_ratios(capsys)
    assert len(ratios) == 3 and all(r > 1.0 for r in ratios), out
