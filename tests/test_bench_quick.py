"""``engine bench --compare``: the quick selection, rounds that stop once the ratios settle,
and the gate in a user's own repository (``--benches DIR``, a src-layout package).

Real git repositories, real pytest-benchmark workers; no timing verdict is asserted (on a
shared machine it is a statistic): what is checked is what ran, on which side, how often."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli.bench import package_under_test
from engine.observe.gate import settled

SAMPLE = {
    "pyproject.toml": """
        [tool.pytest.ini_options]
        markers = ["quick: a short benchmark the regression gate runs by default"]
        """,
    "src/mylib/__init__.py": """
        def total(n: int) -> int:
            return sum(range(n))
        """,
    "benches/bench_mylib.py": """
        import pytest

        import mylib


        @pytest.mark.quick
        def test_total_small(benchmark):
            assert benchmark(mylib.total, 1000) == 499500


        def test_total_large(benchmark):
            benchmark(mylib.total, 100_000)
        """,
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A user's project: its own package (src layout) and benchmark folder, one commit."""
    repo = tmp_path / "myproject"
    for rel, text in SAMPLE.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(textwrap.dedent(text).lstrip())
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    return repo


def _gate(repo: Path, *args: str) -> tuple[int, dict[str, list[str]], str]:
    report = repo.parent / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--compare", "HEAD", "--benches", "benches",
         "--rounds", "2", "--min-rounds", "2", "--report", str(report), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )  # fmt: skip
    if not report.exists():
        return res.returncode, {}, res.stderr
    doc = json.loads(report.read_text())
    assert doc["errors"] == [], doc["errors"]
    ran = {r["name"]: [len(r["base"]), len(r["head"])] for r in doc["results"]}
    return res.returncode, ran, res.stderr


def test_users_repository_quick_selection_then_all(sample: Path) -> None:
    assert package_under_test(sample) == "mylib"
    code, ran, err = _gate(sample)
    assert code in (0, 1), err  # 0 pass, 1 a (noise) regression: both are verdicts
    assert ran == {"test_total_small": [2, 2]}, err
    assert "quick selection" in err
    code, ran, err = _gate(sample, "--all")
    assert code in (0, 1), err
    assert ran == {"test_total_small": [2, 2], "test_total_large": [2, 2]}, err


def test_unmarked_benchmarks_all_run_by_default(sample: Path) -> None:
    bench = sample / "benches" / "bench_mylib.py"
    bench.write_text(bench.read_text().replace("@pytest.mark.quick\n", ""))
    _git(sample, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "no marks")
    code, ran, err = _gate(sample)
    assert code in (0, 1), err
    assert set(ran) == {"test_total_small", "test_total_large"}


def test_missing_benchmark_folder_is_bad_input(sample: Path) -> None:
    code, ran, err = _gate(sample, "--benches", "perf")
    assert code == 2 and not ran
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine bench: error: no such benchmark path")


def test_package_under_test(tmp_path: Path) -> None:
    (tmp_path / "a" / "engine").mkdir(parents=True)
    (tmp_path / "a" / "engine" / "__init__.py").write_text("")
    assert package_under_test(tmp_path / "a") == "engine"
    for pkg in ("one", "two"):
        (tmp_path / "b" / pkg).mkdir(parents=True)
        (tmp_path / "b" / pkg / "__init__.py").write_text("")
    assert package_under_test(tmp_path / "b") is None  # ambiguous: no import check
    (tmp_path / "c" / "tests").mkdir(parents=True)
    (tmp_path / "c" / "tests" / "__init__.py").write_text("")
    assert package_under_test(tmp_path / "c") is None


def test_settled_means_clearly_within_the_threshold() -> None:
    base = [1.0] * 6
    assert settled(base, [1.01, 0.99, 1.0, 1.02, 0.98, 1.0], 0.10)
    assert not settled(base, [1.12, 1.11, 1.13, 1.12, 1.1, 1.12], 0.10)  # a likely regression
    assert not settled(base, [1.0, 1.3, 0.8, 1.25, 0.9, 1.2], 0.10)  # too noisy to say yet
    assert settled([], [1.0], 0.10)  # new on head: more rounds cannot help
