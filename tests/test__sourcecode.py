"""Lint, typing and stub checks run as tests, so `make test` keeps them honest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine._native import MODULES, load

ROOT = Path(__file__).resolve().parent.parent


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
