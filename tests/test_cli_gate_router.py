"""Acceptance: a deliberately slowed router makes ``engine bench --compare`` fail.

The test exports this repository's HEAD into a fresh git repository, adds a router
benchmark, commits, then patches the router in the working tree and runs the gate against
the commit. The compiled router is reused from this checkout (the gate copies it into the
base tree because the native build inputs are identical).

The default run slows the router by *added work*: ``match_many`` matches a fifth of each
batch once more, and the instruction-count gate (callgrind, deterministic) must fail it.
The wall-clock variant (``match_many`` spins for a fifth of its own time, judged by the
timing gate) and the unchanged tree passing the timing gate ten times in a row are
``slow`` tests: on a loaded machine their verdicts are statistics, not facts.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from engine.cli import _gate as gate
from engine.cli import main
from engine.routing import RouterC

pytestmark = pytest.mark.timeout(600)  # callgrind on a busy box: a generous bound

ROOT = Path(__file__).resolve().parents[1]

BENCH = """
from engine.messages import AgentId
from engine.routing import Router


def make():
    r = Router()
    for i in range(200):
        r.subscribe(f"region{i % 10}.*.event{i % 7}", subscriber=i)
        r.subscribe(f"region{i % 10}.#", subscriber=1000 + i)
    r.add_agent(AgentId("echo", "a"))
    return r, r.topic_handles([f"region{i % 10}.node{i % 13}.event{i % 7}" for i in range(1000)])


def test_router_match_many(benchmark):
    r, handles = make()
    benchmark(r.match_many, handles)
"""

# Both patches wrap the real router; only ``match_many`` changes.
_WRAPPER = """

# --- deliberately slowed by tests/test_cli_gate_router.py
import time as _time

_Fast = Router


class Router:  # type: ignore[no-redef]
    def __init__(self, *args, **kwargs):
        self._r = _Fast(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._r, name)
"""

#: 20% more work: a fifth of every batch is matched twice.
MORE_WORK_PATCH = (
    _WRAPPER
    + """
    def match_many(self, handles):
        self._r.match_many(handles[: len(handles) // 5])
        return self._r.match_many(handles)
"""
)

#: 20% more time: spin for a fifth of the time the real call took.
MORE_TIME_PATCH = (
    _WRAPPER
    + """
    def match_many(self, handles):
        clock = _time.perf_counter
        t0 = clock()
        out = self._r.match_many(handles)
        end = t0 + (clock() - t0) * 1.2
        while clock() < end:
            pass
        return out
"""
)


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate") / "repo"
    root.mkdir()
    data = git(ROOT, "archive", "--format=tar", "HEAD")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(root, filter="data")
    for so in (ROOT / "engine" / "_native").glob("*.so"):  # this checkout's build
        shutil.copy2(so, root / "engine" / "_native" / so.name)
    (root / "benches").mkdir(exist_ok=True)
    (root / "benches" / "bench_gate_router.py").write_text(BENCH)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


def compare(repo: Path, *args: str) -> tuple[int, dict[str, object]]:
    report = repo.parent / "report.json"
    report.unlink(missing_ok=True)
    head = ["bench", "benches/bench_gate_router.py", "--root", str(repo), "--compare", "HEAD"]
    code = main([*head, *args, "-q", "--report", str(report)])
    return code, orjson.loads(report.read_bytes())


def compare_instructions(repo: Path) -> tuple[int, dict[str, object]]:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is required for the instruction gate (apt-get install valgrind)")
    return compare(repo, "--instructions", "--probe", "router.match_many", "--iterations", "20")


def compare_timing(repo: Path, rounds: int) -> tuple[int, dict[str, object]]:
    return compare(repo, "--rounds", str(rounds), "--max-time", "0.03")


@contextmanager
def patched_router(repo: Path, patch: str) -> Iterator[None]:
    init = repo / "engine" / "routing" / "__init__.py"
    original = init.read_text()
    init.write_text(original + patch)
    try:
        yield
    finally:
        init.write_text(original)


needs_native = pytest.mark.skipif(RouterC is None, reason="gates the compiled router's hot path")


@needs_native
def test_slowed_router_fails_the_instruction_gate(repo: Path) -> None:
    with patched_router(repo, MORE_WORK_PATCH):
        code, report = compare_instructions(repo)
    (result,) = report["results"]  # type: ignore[misc]
    assert result["verdict"] == "regressed", result
    assert code == 1
    # a fifth more matching, plus the wrapper's own call and slice (~4%); counts, not time
    assert 1.15 < result["ratio"] < 1.3, result
    # the unchanged tree against the same base count passes: identical code, identical
    # counts but for the allocator's state (~1e-4)
    head = gate.Side("head", repo, "working tree")
    counts, problems = gate.count_instructions(
        head, repo / "benches" / "hotpath.py", iterations=20, names=["router.match_many"]
    )
    assert problems == []
    same = gate.judge(gate.BenchResult("m", result["base"], [counts["router.match_many"]]), 0.1)
    assert same.verdict == "ok" and same.ratio == pytest.approx(1.0, abs=1e-3), same


@pytest.mark.slow
@needs_native
def test_slowed_router_fails_the_timing_gate(repo: Path) -> None:
    with patched_router(repo, MORE_TIME_PATCH):
        code, report = compare_timing(repo, rounds=12)  # 6 rounds let noise hide the 20%
    (result,) = report["results"]  # type: ignore[misc]
    assert result["verdict"] == "regressed", result
    assert code == 1
    assert 1.12 < result["ratio"] < 1.4, result  # ~20% more time, measured


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_unchanged_tree_passes_ten_times(repo: Path) -> None:
    for i in range(10):
        code, report = compare_timing(repo, rounds=10)
        (result,) = report["results"]  # type: ignore[misc]
        assert code == 0, (i, result)
