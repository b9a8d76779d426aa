"""The benchmark-regression gate behind ``engine bench --compare REF``.

Head is the working tree as it is; base is ``REF`` exported with ``git archive`` into a
temporary directory, its compiled modules copied from head when every build input is
byte-identical (the common case) and built with ``setup.py build_ext --inplace`` otherwise.
Both sides run head's benchmark files, each side importing its own copy of the package under
test (``engine`` here, a user's package in their repository: the tree root, and ``src/``
when there is one, are the child's working directory and first ``PYTHONPATH`` entries;
checked before measuring and after every round).

Timing mode (``_gate_timing.py``) keeps one pytest process per side alive and runs
pytest-benchmark in each up to ``rounds`` times, alternating (base, head, head, base, ...)
every fraction of a second, so the load of a shared machine hits both alike. With
``settle_after`` it stops once every benchmark's ratio is clearly within the threshold (after
at least that many rounds), or when the next round would overrun ``budget`` seconds: quiet
benchmarks take few rounds, noisy ones more. Each round pairs base's and head's statistic
(``min`` by default); the ratio is the median of the per-round ratios ``head / base`` and the
noise the standard error of that median, estimated from their median absolute deviation.
A benchmark regresses when ``ratio - noise > 1 + threshold`` (:func:`judge`); a suspect is
then judged again on rounds of its own, and that second verdict stands.

Instruction mode (``--instructions``) counts instructions of the hot-path probes in
``benches/hotpath.py`` under ``valgrind --tool=callgrind`` (``_callgrind.py``), both sides
at once: deterministic, so the same threshold applies with zero noise.
"""

from __future__ import annotations

import filecmp
import io
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from engine.cli import _callgrind
from engine.errors import GateError

__all__ = [
    "BenchResult",
    "GateReport",
    "Side",
    "base_tree",
    "compare_instructions",
    "judge",
    "resolve_ref",
    "settled",
]

DEFAULT_THRESHOLD: Final = 0.10
#: Files whose bytes decide the compiled modules; identical -> reuse head's build.
_BUILD_INPUTS: Final = ("setup.py", "ext", "bindings", "engine/_native")
_SUFFIXES: Final = (".so", ".pyd")


@dataclass(frozen=True)
class Side:
    """One tree under test: ``name`` is ``base`` or ``head``."""

    name: str
    root: Path
    label: str


@dataclass
class BenchResult:
    """One benchmark's comparison."""

    name: str
    base: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)
    ratio: float = float("nan")
    noise: float = 0.0
    verdict: str = "missing"  # ok | regressed | improved | new | missing
    #: timing mode: the first pass's ratio of a suspected regression, which was then judged
    #: on rounds of its own (``base``/``head``/``ratio`` are those rounds); ``nan`` otherwise
    suspected: float = float("nan")


@dataclass
class GateReport:
    """The whole comparison; ``failed`` when any benchmark regressed or head broke."""

    mode: str
    base: str
    head: str
    threshold: float
    results: list[BenchResult]
    errors: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[BenchResult]:
        return [r for r in self.results if r.verdict == "regressed"]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.errors)

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "failed": self.failed}, option=orjson.OPT_INDENT_2)


# -- git and trees ----------------------------------------------------------------------


def _git(repo: Path, *args: str) -> bytes:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=120
        )
    except FileNotFoundError:
        raise GateError("git is not installed") from None
    except subprocess.CalledProcessError as exc:
        msg = exc.stderr.decode(errors="replace").strip()
        raise GateError(f"git {' '.join(args)}: {msg}") from None
    return out.stdout


def repo_root(path: Path) -> Path:
    """The top of the git work tree holding ``path``."""
    return Path(_git(path, "rev-parse", "--show-toplevel").decode().strip())


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit ``ref`` names; :class:`GateError` when it names none."""
    if not ref or ref.startswith("-"):
        raise GateError(f"invalid git ref {ref!r}")
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except GateError:
        raise GateError(f"{ref!r} is not a commit in {repo}") from None


def _inputs_identical(base: Path, head: Path) -> bool:
    for rel in _BUILD_INPUTS:
        b, h = base / rel, head / rel
        if b.is_file() or h.is_file():
            if not (b.is_file() and h.is_file() and filecmp.cmp(b, h, shallow=False)):
                return False
            continue
        bfiles = _source_files(b)
        hfiles = _source_files(h)
        if bfiles.keys() != hfiles.keys():
            return False
        if any(not filecmp.cmp(bfiles[k], hfiles[k], shallow=False) for k in bfiles):
            return False
    return True


def _source_files(d: Path) -> dict[str, Path]:
    if not d.is_dir():
        return {}
    skip = (*_SUFFIXES, ".c", ".cpp", ".html", ".pyc")
    return {
        str(p.relative_to(d)): p
        for p in d.rglob("*")
        if p.is_file() and not p.name.endswith(skip) and "__pycache__" not in p.parts
    }


def _native_modules(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "ext").glob("_*.pyx"))


def _built(root: Path, module: str) -> Path | None:
    for p in sorted((root / "engine" / "_native").glob(f"{module}.*")):
        if p.name.endswith(_SUFFIXES):
            return p
    return None


def prepare_native(base: Path, head: Path, *, log: Any = print) -> str:
    """Give ``base`` compiled modules: copied from head if the inputs match, else built."""
    modules = _native_modules(base)
    if not modules:
        return "no native modules"
    head_built = {m: _built(head, m) for m in modules}
    if _inputs_identical(base, head) and all(head_built.values()):
        for path in head_built.values():
            assert path is not None
            shutil.copy2(path, base / "engine" / "_native" / path.name)
        return "native build inputs identical: reused head's compiled modules"
    log(f"building base's native modules ({', '.join(modules)}) ...")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=base,
        capture_output=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise GateError("building base failed:\n" + "\n".join(tail))
    return "built base's native modules"


@contextmanager
def base_tree(repo: Path, ref: str, head: Path, *, keep: bool = False) -> Iterator[Side]:
    """Export ``ref`` of ``repo`` into a temporary directory ready to import and measure."""
    sha = resolve_ref(repo, ref)
    tmp = Path(tempfile.mkdtemp(prefix="engine-gate-"))
    try:
        data = _git(repo, "archive", "--format=tar", sha)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp / "base", filter="data")
        prepare_native(tmp / "base", head)
        yield Side("base", tmp / "base", f"{ref} ({sha[:10]})")
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def child_env(side: Side, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    own = [str(side.root)]
    if (side.root / "src").is_dir():  # a src layout: the package lives one level down
        own.append(str(side.root / "src"))
    env["PYTHONPATH"] = os.pathsep.join(
        [*own, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    env.pop("PYTHONSTARTUP", None)
    env.update(extra or {})
    return env


def check_imports(side: Side, package: str | None = "engine") -> None:
    """Fail unless a child started for ``side`` imports ``package`` from ``side.root``."""
    if package is None:
        return
    code = f"import {package} as p, sys; sys.stdout.write(p.__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=side.root,
        env=child_env(side),
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise GateError(f"{side.name}: `import {package}` failed:\n{proc.stderr.decode()[-2000:]}")
    where = Path(proc.stdout.decode()).resolve()
    if not where.is_relative_to(side.root.resolve()):
        raise GateError(f"{side.name}: {package} imported from {where}, not from {side.root}")


# -- judging ----------------------------------------------------------------------------


def _mad_noise(ratios: list[float]) -> float:
    """Standard error of the median ratio, from the MAD of the per-round ratios."""
    if len(ratios) < 2:
        return 0.0
    med = statistics.median(ratios)
    sigma = 1.4826 * statistics.median(abs(r - med) for r in ratios)
    return 1.2533 * sigma / math.sqrt(len(ratios))


def judge(result: BenchResult, threshold: float, *, paired: bool = True) -> BenchResult:
    """Fill ratio, noise and verdict of ``result`` from its per-round values.

    A regression also needs the best head round slower than the best base round by the
    threshold (an improvement the reverse): load only adds time, so on a busy machine a few
    rounds can skew the paired median while the minima stay put (an unchanged tree failed
    1 run in 2 so at a load of 5 on 2 cores, per-round ratios 0.5-2.3); a real slowdown
    moves both."""
    if not result.head:
        result.verdict = "missing"
        return result
    if not result.base:
        result.verdict = "new"
        return result
    floor = 1.0
    if paired and len(result.base) == len(result.head):
        ratios = [h / b for h, b in zip(result.head, result.base, strict=True)]
        result.ratio = statistics.median(ratios)
        result.noise = _mad_noise(ratios)
        floor = min(result.head) / min(result.base)
    else:
        result.ratio = statistics.median(result.head) / statistics.median(result.base)
        floor = result.ratio
    if result.ratio - result.noise > 1 + threshold and floor > 1 + threshold:
        result.verdict = "regressed"
    elif result.ratio + result.noise < 1 - threshold and floor < 1 - threshold:
        result.verdict = "improved"
    else:
        result.verdict = "ok"
    return result


def settled(base: Sequence[float], head: Sequence[float], threshold: float) -> bool:
    """Whether more rounds would not change a benchmark's verdict: its paired ratio is
    clearly inside the threshold (``ratio + 2 * noise < 1 + threshold``). A possible
    regression never settles early: it gets every round there is, to be confirmed or not."""
    if not base or len(base) != len(head):
        return True  # new or broken: more rounds will not help
    ratios = [h / b for h, b in zip(head, base, strict=True)]
    ratio = statistics.median(ratios)
    return ratio + 2 * _mad_noise(ratios) < 1 + threshold


# -- instruction mode -------------------------------------------------------------------


def count_instructions(
    side: Side,
    hotpath: Path,
    *,
    iterations: int = 200,
    names: Sequence[str] = (),
) -> tuple[dict[str, float], list[str]]:
    """Instructions per probe iteration for ``side`` (``nan`` where a probe failed)."""
    return _callgrind.count(
        side.root, child_env(side), hotpath, iterations=iterations, names=names, label=side.name
    )


def compare_instructions(
    base: Side,
    head: Side,
    hotpath: Path,
    *,
    iterations: int = 200,
    threshold: float = DEFAULT_THRESHOLD,
    names: Sequence[str] = (),
    log: Any = print,
) -> GateReport:
    """Instruction counts per hot-path probe, base against head."""
    if not hotpath.is_file():
        raise GateError(f"no hot-path probes at {hotpath}")
    if iterations < 1:
        raise GateError("iterations must be >= 1")
    for side in (base, head):
        check_imports(side)
    log(f"counting instructions on base ({base.label}) and head ({head.label}) ...")
    with ThreadPoolExecutor(2) as pool:  # two valgrinds at once: half the wall time
        b_run, h_run = (
            pool.submit(count_instructions, side, hotpath, iterations=iterations, names=names)
            for side in (base, head)
        )
        (b, base_problems), (h, head_problems) = b_run.result(), h_run.result()
    results = []
    for name in sorted(set(b) | set(h)):
        r = BenchResult(
            name,
            [b[name]] if name in b and b[name] == b[name] else [],
            [h[name]] if name in h and h[name] == h[name] else [],
        )
        results.append(judge(r, threshold, paired=False))
    errors = [f"head: {p}" for p in head_problems]
    errors += [
        f"{r.name}: probe ran on base but not on head" for r in results if r.verdict == "missing"
    ]
    for p in base_problems:
        log(f"base: {p} (treated as a new probe)")
    return GateReport("instructions", base.label, head.label, threshold, results, errors)
