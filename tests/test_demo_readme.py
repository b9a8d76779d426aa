"""The README's first screen says only what was measured and names what exists.

Every figure in the README's "Measured against peers" table (engine, peer and ratio
columns) must be one that docs/performance.md holds, and every engine name in the
"Coming from autogen-core" table must be importable.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def _rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def test_measured_figures_are_quoted_from_performance_md() -> None:
    perf = set(NUMBER.findall((ROOT / "docs" / "performance.md").read_text()))
    rows = _rows(_section("Measured against peers"))
    assert len(rows) >= 4
    compared = " ".join(r[0] for r in rows)
    for peer in ("autogen-core", "hnswlib", "LangGraph"):
        assert peer in compared
    for row in rows:
        figures = NUMBER.findall(" ".join(row[1:]))
        assert figures, row
        missing = [f for f in figures if f not in perf]
        assert missing == [], f"{row[0][:40]}...: {missing} not in docs/performance.md"


def test_the_autogen_mapping_names_exist() -> None:
    rows = _rows(_section("Coming from autogen-core"))
    assert ["`RoutedAgent`", "`Agent`"] in rows
    names = set()
    for _, ours in rows:
        names.update(re.findall(r"`@?([A-Za-z_][\w.]*)`", ours))
    assert {"Agent", "handler", "Runtime", "tool"} <= names
    for name in sorted(names):
        module, _, attr = name.rpartition(".")
        where = [module] if module else ["engine", "engine.tools", "engine.llm"]
        found = [m for m in where if hasattr(importlib.import_module(m), attr)]
        assert found, f"{name} is not importable from {where}"


@pytest.mark.parametrize("cmd", ["make demo", "engine demo --chaos"])
def test_the_first_screen_shows_the_demo(cmd: str) -> None:
    first = README[: README.index("\n## Install\n")]
    assert cmd in first
    assert "agent-engine demo: summary" in first and " 0 lost " in first
