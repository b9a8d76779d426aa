"""The ``pip install`` path: a wheel built from this tree, installed into a fresh venv with the
core dependencies only, imports its compiled modules, runs the README's embedding example and
names the extra a missing feature needs; a build whose compiler fails installs the pure-Python
engine and says so. Metadata and extras agree with ``engine._extras``.

One venv serves the module (it costs a few seconds from the pip cache); the wheel reuses the
objects ``make build`` compiled (setuptools skips up-to-date extensions in ``build/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine._extras import DISTRIBUTION, EXTRAS
from engine._native import MODULES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
pytestmark = pytest.mark.timeout(600)


@dataclass
class Venv:
    root: Path
    work: Path  # an empty cwd: the source tree is not on sys.path
    wheel: Path  # built from this tree

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "PYTHON"))}
        res = subprocess.run(
            [self.python, *args],
            cwd=self.work,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if check:
            assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
        return res

    def pip_install(self, *args: str) -> None:
        _pip("--python", self.python, "install", "-q", "--disable-pip-version-check", *args)


def _pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, f"pip {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def _build_wheel(src: Path, out: Path, env: dict[str, str]) -> tuple[Path, str]:
    res = _pip(
        "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), env=env
    )
    (wheel,) = out.glob("agent_engine_runtime-*.whl")
    return wheel, res.stdout + res.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv holding the wheel built from this tree and only the core dependencies."""
    tmp = tmp_path_factory.mktemp("pkg")
    env = dict(os.environ, ENGINE_REQUIRE_NATIVE="1")
    wheel, _ = _build_wheel(ROOT, tmp / "dist", env)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    v = Venv(tmp / "venv", tmp / "work", wheel)
    v.work.mkdir()
    v.pip_install(str(wheel))  # resolves the core dependencies, no extras
    (v.work / "example.py").write_text(_readme_example())
    yield v
    shutil.rmtree(tmp, ignore_errors=True)


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (example,) = [b for b in blocks if "Runtime()" in b]
    return example


def test_wheel_imports_every_compiled_module(venv: Venv) -> None:
    res = venv.run("-c", "import engine, json; print(json.dumps(engine.native_info()))")
    info = json.loads(res.stdout)
    assert set(info) == set(MODULES)
    site = str(venv.root)
    for name, where in info.items():
        assert where is not None and where.startswith(site), f"{name}: {where}"
    assert "RuntimeWarning" not in res.stderr


def test_core_install_runs_the_readme_example(venv: Venv) -> None:
    optional = ["faiss", "openai", "rich", "opentelemetry", "psycopg"]
    probe = f"import importlib.util as u; print([m for m in {optional!r} if u.find_spec(m)])"
    assert venv.run("-c", probe).stdout.strip() == "[]", "an extra leaked into the core install"
    res = venv.run("example.py")
    assert res.stderr == ""


def test_missing_extra_names_it(venv: Venv) -> None:
    res = venv.run("-c", "import engine; engine.VectorStore", check=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("engine.errors.MissingExtraError: ")
    assert f"pip install '{DISTRIBUTION}[memory]'" in res.stderr
    cli = venv.run("-m", "engine", "demo", "--quick", check=False)
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [
        f"engine demo: error: engine demo needs rich, which is not installed: "
        f"pip install '{DISTRIBUTION}[cli]'"
    ]


def test_version_is_single_sourced(venv: Venv) -> None:
    import engine

    res = venv.run("-c", f"import importlib.metadata as m; print(m.version({DISTRIBUTION!r}))")
    assert res.stdout.strip() == engine.__version__
    assert venv.run("-m", "engine", "--version").stdout.startswith(f"engine {engine.__version__} ")


def test_failed_compile_installs_pure_python_with_a_warning(venv: Venv, tmp_path: Path) -> None:
    """A copy of the tree (as a clone has it) built with a C compiler that always fails."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    src = tmp_path / "src"
    for f in files + [str(p.relative_to(ROOT)) for p in (ROOT / "ext").glob("*.c")]:
        if (ROOT / f).is_file():  # generated .c copied (with mtimes) so Cython has nothing to do
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_REQUIRE_NATIVE"}
    wheel, log = _build_wheel(src, tmp_path / "dist", dict(env, CC="false"))
    assert "could not be built" in log and "WITHOUT them" in log
    venv.pip_install("--no-deps", "--force-reinstall", str(wheel))
    try:
        res = venv.run("-c", "import engine, json; print(json.dumps(engine.native_info()))")
        info = json.loads(res.stdout)
        assert all(v is not None and v.startswith("unavailable") for v in info.values()), info
        example = venv.run("example.py")  # the same example runs, in pure Python, and says so
        assert "Warning: " in example.stderr and "pure-Python twin" in example.stderr
    finally:
        venv.pip_install("--no-deps", "--force-reinstall", str(venv.wheel))


def test_extras_match_the_names_errors_give() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, dists in EXTRAS.items():
        named = {re.split(r"[<>=\[; ]", req, maxsplit=1)[0] for req in extras[extra]}
        assert set(dists) <= named, f"extra {extra!r} lacks {dists}"
    everything = extras["all"]
    assert everything == [f"{DISTRIBUTION}[memory,llm,cli,otel,postgres,langgraph]"]
    assert PYPROJECT["project"]["name"] == DISTRIBUTION
    core = {re.split(r"[<>=; ]", r, maxsplit=1)[0] for r in PYPROJECT["project"]["dependencies"]}
    assert core == {"msgspec", "pyzmq", "numpy", "uvloop", "orjson", "prometheus-client"}


def test_metadata_is_complete() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert project["dynamic"] == ["version"] and "version" not in project
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(project["urls"])
    assert project["keywords"]
    classifiers = project["classifiers"]
    assert "Operating System :: POSIX" in classifiers
    assert not any("Windows" in c or "OS Independent" in c for c in classifiers)
    versions = {c.rsplit(" ", 1)[1] for c in classifiers if re.search(r"Python :: 3\.\d+$", c)}
    assert versions == {"3.11", "3.12", "3.13"}
    assert re.search(r"Cython>=[\d.]+,<\d", " ".join(PYPROJECT["build-system"]["requires"]))
    assert "tool" in PYPROJECT and "cibuildwheel" in PYPROJECT["tool"]


def test_require_names_the_extra_and_keeps_other_import_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine._extras import require
    from engine.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"X needs no_such_pkg_e1.*\[memory\]") as info:
        require("no_such_pkg_e1.sub", extra="memory", feature="X")
    assert isinstance(info.value, ImportError) and info.value.extra == "memory"
    (tmp_path / "half_installed_e1.py").write_text("import no_such_dependency_e1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as broken:  # its own import is missing: shown as is
        require("half_installed_e1", extra="llm")
    assert not isinstance(broken.value, MissingExtraError)
    assert broken.value.name == "no_such_dependency_e1"
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", extra="everything")
    assert require("json", extra="cli").__name__ == "json"
