"""Lint, typing and stub checks run as tests, so `make test` keeps them honest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine._native import MODULES, load
from tests._timing_scan import ADVICE, scan_paths, scan_source

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(900)  # a generous bound: mypy and stubtest on a busy box


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed in the test environment (dev extra)"
    return path


def test_ruff_is_clean() -> None:
    res = _run(_tool("ruff"), "check", "engine", "tests", "benches")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_is_clean() -> None:
    res = _run(sys.executable, "-m", "mypy", "--no-incremental")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def stubtest_output() -> str:
    """One stubtest run over every built module (each run re-analyses the package)."""
    built = [f"engine._native.{n}" for n in MODULES if load(n) is not None]
    if not built:
        return ""
    res = _run(
        sys.executable,
        "-m",
        "mypy.stubtest",
        *built,
        "--ignore-missing-stub",
        "--mypy-config-file",
        "pyproject.toml",
    )
    return res.stdout + res.stderr if res.returncode else ""


@pytest.mark.parametrize("name", MODULES)
def test_stub_matches_compiled_module(name: str, stubtest_output: str) -> None:
    if load(name) is None:
        pytest.skip(f"engine._native.{name} is not built (ENGINE_NO_EXTENSIONS or no build)")
    stub = ROOT / "engine" / "_native" / f"{name}.pyi"
    assert stub.exists(), f"{stub.name} is missing beside the compiled module"
    errors = [ln for ln in stubtest_output.splitlines() if ln.startswith("error:")]
    mine = [ln for ln in errors if f"engine._native.{name}" in ln]
    assert not mine, stubtest_output
    assert not (errors and not any("engine._native." in ln for ln in errors)), stubtest_output


def test_no_generated_or_machine_files_are_tracked() -> None:
    res = _run("git", "ls-files")
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = res.stdout.splitlines()
    bad = [f for f in tracked if f.endswith((".c", ".so", ".html")) and not f.startswith("docs/")]
    assert not bad, f"generated files are tracked: {bad}"


# -- no wall-clock assertions in the default run (issue 12) ------------------------------


def test_no_wall_clock_assertions_in_the_default_run() -> None:
    found = scan_paths([ROOT / "tests"], ROOT)
    assert not found, "\n".join(["", *map(str, found), "", ADVICE])


FLAGGED = {
    "elapsed": """
import time
def test_x():
    t0 = time.perf_counter()
    work()
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5
""",
    "inline": """
import time
def test_x():
    t0 = time.monotonic()
    assert woke and time.monotonic() - t0 < 2
""",
    "alias-import": """
from time import perf_counter as pc
def test_x():
    start = pc()
    assert pc() - start <= 1
""",
    "module-alias": """
import time as t
def test_x():
    assert 0 < deadline - t.time() <= 5
""",
    "clock-name": """
import time
clock = time.monotonic
def test_x():
    t0 = clock()
    assert max(clock() - t0, 0.0) < 1
""",
    "clock-function": """
import time
def now():
    return time.process_time()
def test_x():
    t0 = now()
    assert now() - t0 < 1
""",
    "clock-lambda": """
import time
ns = lambda: time.perf_counter_ns()
def test_x():
    assert ns() > 0
""",
    "loop-time": """
import asyncio
async def test_x():
    t0 = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - t0 < 1
""",
    "self-attribute": """
import time
class TestX:
    def test_x(self):
        self.t0 = time.time()
        self.assertLess(time.time() - self.t0, 1)
""",
    "verdict": """
import time
def test_x():
    t0 = time.monotonic()
    fast = time.monotonic() - t0 < 0.1
    assert fast
""",
    "pytest-fail": """
import time, pytest
def test_x():
    t0 = time.monotonic()
    if time.monotonic() - t0 > 1:
        pytest.fail("too slow")
""",
    "benchmark-fixture": """
def test_x(benchmark):
    benchmark(sorted, [3, 1, 2])
""",
    "hypothesis-deadline": """
from hypothesis import settings
@settings(deadline=200)
def test_x():
    pass
""",
    "nested-in-plain-test": """
import time
def test_x():
    def check():
        t0 = time.monotonic()
        assert time.monotonic() - t0 < 1
    check()
""",
    "tight-deadline-guard": """
import time
def test_x():
    deadline = time.monotonic() + 2
    while not done():
        assert time.monotonic() < deadline
""",
    "tight-elapsed-constant": """
import time
LIMIT = 0.5
def test_x():
    t0 = time.perf_counter()
    work()
    assert time.perf_counter() - t0 < LIMIT * 3
""",
    "not-slow-marker": """
import time, pytest
pytestmark = pytest.mark.timeout(60)
@pytest.mark.netns
def test_x():
    assert time.monotonic() > 0
""",
}

CLEAN = {
    "wait-loop": """
import time
def wait(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
    return False
def test_x():
    assert wait(lambda: True)
""",
    "slow-function": """
import time, pytest
@pytest.mark.slow
def test_x():
    t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 1
""",
    "slow-class": """
import time, pytest
@pytest.mark.slow()
class TestX:
    def test_x(self, benchmark):
        assert time.time() > 0
""",
    "slow-module": """
import time, pytest
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
def test_x():
    assert time.monotonic() > 0
""",
    "text-only": '''
"""assert time.perf_counter() - t0 < 1"""
def test_x():
    code = "assert time.monotonic() < deadline"  # assert time.time() < 1
    assert "perf_counter" in code
''',
    "reading-passed-on": """
import time
def spin(deadline):
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n
def test_x():
    n = spin(time.perf_counter() + 0.01)
    assert n >= 0
""",
    "no-deadline": """
from hypothesis import settings
@settings(max_examples=10, deadline=None)
def test_x():
    pass
""",
    "generous-deadline-guard": """
import time
WAIT = 60.0
def test_x():
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "never got going"
""",
    "generous-guard-in-a-helper": """
import time, pytest
def eventually(probe, within: float = 20.0):
    deadline = time.monotonic() + within
    while True:
        now = time.monotonic()
        if probe() or now > deadline:
            pytest.fail("no answer")
""",
    "caller-picks-the-bound": """
import time
def wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
""",
    "generous-elapsed": """
import time
def test_x():
    t0 = time.monotonic()
    run_the_whole_job()
    assert time.monotonic() - t0 < 60
""",
    "other-time-attr": """
def test_x(record):
    assert record.time == 3 and record["time"] > 0
""",
}


@pytest.mark.parametrize("name", FLAGGED)
def test_timing_scanner_finds(name: str) -> None:
    found = scan_source(FLAGGED[name])
    assert len(found) == 1, found


@pytest.mark.parametrize("name", CLEAN)
def test_timing_scanner_leaves_alone(name: str) -> None:
    assert scan_source(CLEAN[name]) == []
