"""Shared bench plumbing: lines appended to ``bench_report`` are printed after the run.

Benchmarks run peers in the same run and report ratios; each bench module appends its
summary table (``bench_report.append("...")``) and the terminal summary prints them all.
"""

from __future__ import annotations

import pytest

_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def bench_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the ``bench report`` section at the end of the session."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("bench report")
        for line in lines:
            terminalreporter.write_line(line)
