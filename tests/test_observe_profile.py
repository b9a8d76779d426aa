"""``engine profile``: scalene reports for a scenario; clear refusal for missing subsystems."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.cli.profile import summarize
from engine.routing import RouterC

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(RouterC is None, reason="attributes time to the native router's call sites")
def test_routing_scenario_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "profile",
        "routing",
        "--seconds",
        "0.5",
        "--top",
        "5",
        "--out",
        str(tmp_path),
        "--root",
        str(ROOT),
    ]
    assert main(argv) == 0
    for ext in ("json", "html", "txt"):
        assert (tmp_path / f"routing.{ext}").stat().st_size > 0
    profile = orjson.loads((tmp_path / "routing.json").read_bytes())
    top = summarize(profile, 5)
    assert top and all(cpu > 0 for cpu, *_ in top)
    assert any("routing.py" in fname for _, fname, _, _ in top)
    summary = (tmp_path / "routing.txt").read_text()
    assert summary.startswith("scenario routing:") and "%" in summary
    assert "match_many" in summary  # the hot call shows up by its source line
    assert summary in capsys.readouterr().out
    assert (tmp_path / "routing.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_scenarios_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--list", "--root", str(ROOT)]) == 0
    listed = capsys.readouterr().out
    for name in ("routing", "scheduling", "mesh_roundtrip", "vector_search", "orchestration"):
        assert name in listed
    assert "_common" not in listed


def test_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "nope", "--root", str(ROOT)]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_missing_subsystem_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "profiles" / "scenarios"
    scen.mkdir(parents=True)
    (scen / "_common.py").write_text((ROOT / "profiles/scenarios/_common.py").read_text())
    (scen / "ghost.py").write_text(
        "import _common\nopts = _common.args()\n_common.require('engine.ghost', 'ghost')\n"
    )
    assert main(["profile", "ghost", "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "cannot run in this build" in err and "ghost subsystem" in err
    assert not (tmp_path / "profiles" / "reports").exists()


def test_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "routing", "--root", str(tmp_path)]) == 2
    assert "no profiles/scenarios/" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scenario", "expect"),
    [
        ("routing", "routing:"),
        ("scheduling", "scheduling:"),
        ("mesh_roundtrip", "mesh_roundtrip:"),
        ("vector_search", "vector_search:"),
    ],
)
def test_scenario_runs_plainly(scenario: str, expect: str) -> None:
    """Each scenario whose subsystem is built does its work (here without the profiler)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "profiles" / "scenarios" / f"{scenario}.py"),
            "--seconds",
            "0.2",
            "--scale",
            "0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(expect) and any(ch.isdigit() and ch != "0" for ch in line), line
