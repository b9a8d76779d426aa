"""Acceptance: a deliberately slowed router makes ``engine bench --compare`` fail.

The test exports this repository's HEAD into a fresh git repository, adds a router
benchmark, commits, then patches the router in the working tree so that ``match_many`` takes
20% longer per batch (it spins for a fifth of the time the real call took), and runs the
timing gate against the commit. The compiled
router is reused from this checkout (the gate copies it into the base tree because the
native build inputs are identical).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.routing import RouterC

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

SLOW_PATCH = """

# --- deliberately slowed by tests/test_observe_gate_router.py: match_many takes 20% longer
import time as _time

_Fast = Router


class Router:  # type: ignore[no-redef]
    def __init__(self, *args, **kwargs):
        self._r = _Fast(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._r, name)

    def match_many(self, handles):
        clock = _time.perf_counter
        t0 = clock()
        out = self._r.match_many(handles)
        end = t0 + (clock() - t0) * 1.2
        while clock() < end:  # the slower path: 20% more time than the real work took
            pass
        return out
"""


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


def compare(repo: Path, rounds: int) -> tuple[int, dict[str, object]]:
    report = repo.parent / "report.json"
    report.unlink(missing_ok=True)
    code = main(
        [
            "bench",
            "benches/bench_gate_router.py",
            "--root",
            str(repo),
            "--compare",
            "HEAD",
            "--rounds",
            str(rounds),
            "--max-time",
            "0.03",
            "-q",
            "--report",
            str(report),
        ]
    )
    return code, orjson.loads(report.read_bytes())


@pytest.mark.skipif(RouterC is None, reason="gates the compiled router's hot path")
def test_slowed_router_fails_the_gate(repo: Path) -> None:
    init = repo / "engine" / "routing" / "__init__.py"
    original = init.read_text()
    init.write_text(original + SLOW_PATCH)
    try:
        code, report = compare(repo, rounds=12)  # 6 rounds let noise hide the 20% ~1 run in 9
    finally:
        init.write_text(original)
    (result,) = report["results"]  # type: ignore[misc]
    assert result["verdict"] == "regressed", result
    assert code == 1
    assert 1.12 < result["ratio"] < 1.4, result  # ~20% more time, measured


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_unchanged_tree_passes_ten_times(repo: Path) -> None:
    for i in range(10):
        code, report = compare(repo, rounds=10)
        (result,) = report["results"]  # type: ignore[misc]
        assert code == 0, (i, result)
