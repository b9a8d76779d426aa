"""The timing mode of ``engine bench --compare``: pytest-benchmark in one long-lived process
per side, rounds interleaved base/head, suspects judged again on rounds of their own.

The trees, the report types and the verdict rules are in :mod:`engine.cli._gate`.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from engine.cli._gate import (
    DEFAULT_THRESHOLD,
    BenchResult,
    GateReport,
    Side,
    check_imports,
    child_env,
    judge,
    settled,
)
from engine.errors import GateError

__all__ = ["compare_timing"]

#: A long-lived pytest process for one side: each stdin line is a JSON path to write; it
#: answers with pytest's exit code on stdout (pytest's own output goes to stderr).
_WORKER: Final = r"""
import contextlib, importlib, os, sys
package = os.environ.pop("ENGINE_GATE_PACKAGE", "")
if package:  # pinned now, from this side's tree (cwd); pytest's `pythonpath` ini option
    importlib.import_module(package)  # may put head's root first on sys.path later
import pytest
args = sys.argv[1:]
for line in sys.stdin:
    out = line.strip()
    if not out:
        break
    with contextlib.redirect_stdout(sys.stderr):
        code = pytest.main([*args, "--benchmark-json=" + out])
    mods = [m.__file__ for n, m in list(sys.modules.items()) if package
            and (n == package or n.startswith(package + ".")) and getattr(m, "__file__", None)]
    sys.stdout.write(f"{int(code)}\t{chr(31).join(mods)}\n")
    sys.stdout.flush()
"""


class _Worker:
    """Runs pytest-benchmark again and again in one process importing ``side``'s engine.

    Keeping the process alive makes a round cost ~the benchmarks themselves, so base and
    head can alternate every fraction of a second and see the same machine load.
    """

    def __init__(
        self,
        side: Side,
        paths: Sequence[Path],
        log_path: Path,
        *,
        select: str | None,
        max_time: float,
        min_rounds: int,
        marker: str | None = None,
        package: str | None = "engine",
    ) -> None:
        self.side = side
        self.package = package
        self.log_path = log_path
        self.nodeids: dict[str, str] = {}  # benchmark name -> pytest node id
        args = [
            *map(str, paths),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:hypothesispytest",
            "-o",
            "python_files=bench_*.py test_*.py",
            "--benchmark-only",
            f"--benchmark-max-time={max_time}",
            f"--benchmark-min-rounds={min_rounds}",
            "--benchmark-warmup=off",
            "--benchmark-disable-gc",
            "--continue-on-collection-errors",
        ]
        if select:
            args += ["-k", select]
        if marker:
            args += ["-m", marker]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args],
            cwd=side.root,
            env=child_env(side, {"ENGINE_GATE_PACKAGE": package or ""}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def run(self, out: Path) -> tuple[dict[str, dict[str, Any]], bool]:
        """One round: (stats by benchmark name, whether pytest reported failures)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{out}\n".encode())
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except BrokenPipeError:
            answer = b""
        if not answer:
            self.close()
            tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
            raise GateError(f"{self.side.name}: benchmark process died:\n{tail}")
        code_text, _, modules = answer.decode().rstrip("\n").partition("\t")
        code = int(code_text)
        root = self.side.root.resolve()
        strays = [
            m for m in modules.split("\x1f") if m and not Path(m).resolve().is_relative_to(root)
        ]
        if strays:
            self.close()
            raise GateError(
                f"{self.side.name}: benchmarks imported {self.package} modules from outside "
                "its tree: " + ", ".join(strays[:3])
            )
        # 1: some benchmark failed or did not import; 5: none ran (no JSON is written then)
        if code not in (0, 1, 5):
            tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
            raise GateError(f"{self.side.name}: pytest exited {code}:\n{tail}")
        if not out.exists():
            return {}, code == 1
        doc = orjson.loads(out.read_bytes())
        stats = {}
        for b in doc["benchmarks"]:
            name = b["fullname"].split("::", 1)[-1]
            self.nodeids[name] = b["fullname"]
            stats[name] = b["stats"]
        return stats, code == 1

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


def _failed(pytest_output: str) -> bool:
    tail = pytest_output.strip().splitlines()[-1:] or [""]
    return " failed" in tail[0] or " error" in tail[0]


def compare_timing(
    base: Side,
    head: Side,
    paths: Sequence[Path],
    *,
    rounds: int = 15,
    select: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    max_time: float = 0.05,
    min_rounds: int = 5,
    stat: str = "min",
    marker: str | None = None,
    settle_after: int | None = None,
    budget: float | None = None,
    package: str | None = "engine",
    confirm: int = 7,
    log: Any = print,
) -> GateReport:
    """Run the benchmarks of ``paths`` on both sides, interleaved, and judge each one.

    One long-lived pytest process per side; a first unrecorded round warms both up, then
    up to ``rounds`` rounds alternate base/head, head/base, ... ``marker`` selects
    benchmarks (``-m``). With ``settle_after=N`` the comparison stops after N or more rounds
    once every benchmark has :func:`settled`, and before a round that would end past
    ``budget`` seconds (counted from the first measured round).

    A benchmark that regressed is a suspect: with ``confirm > 0`` it runs again alone, in
    ``confirm`` interleaved rounds of its own, and that second pass gives the verdict. A
    slower code path is slower in both passes; a burst of load on a shared machine seldom
    lands on the same benchmark twice (an unchanged tree failed 1 run in 2 at a load of 9 on
    2 cores, one benchmark at 1.32 +- 0.18 after five rounds of the whole selection).
    """
    if rounds < 1:
        raise GateError("rounds must be >= 1")
    if not 0 < threshold < 10:
        raise GateError("threshold must be a fraction in (0, 10)")
    if settle_after is not None and not 1 <= settle_after <= rounds:
        raise GateError(f"settle_after must be in [1, rounds], got {settle_after}")
    if confirm < 0:
        raise GateError(f"confirm must be >= 0, got {confirm}")
    for side in (base, head):
        check_imports(side, package)
    values: dict[str, dict[str, list[float]]] = {}
    errors: list[str] = []
    done = 0
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp, contextlib.ExitStack() as st:
        workers = _pair(
            st,
            Path(tmp),
            (base, head),
            paths,
            select=select,
            max_time=max_time,
            min_rounds=min_rounds,
            marker=marker,
            package=package,
        )
        started = 0.0
        for i in range(rounds + 1):
            t0 = time.monotonic()
            order = (base, head) if i % 2 == 0 else (head, base)
            for side in order:
                out = Path(tmp) / f"{side.name}-{i}.json"
                raw, failed = workers[side.name].run(out)
                if i == 0:  # warm-up round: imports, caches, CPU frequency
                    if failed and side is head:
                        errors.append("head: benchmarks failed or did not import (see below)")
                    continue
                _record(values, raw, side.name, stat)
            if i == 0:
                started = time.monotonic()
                continue
            done = i
            log(f"round {i}/{rounds} done")
            if settle_after is None or i < settle_after or i == rounds:
                continue
            if all(settled(v["base"], v["head"], threshold) for v in values.values()):
                log(f"every benchmark settled after {i} rounds")
                break
            took = time.monotonic() - t0
            if budget is not None and time.monotonic() - started + took > budget:
                log(f"stopping after {i} rounds: the next would pass the {budget:g} s budget")
                break
        if errors:
            errors.append(workers["head"].log_path.read_bytes()[-2000:].decode(errors="replace"))
        nodeids = workers["head"].nodeids
    results = [
        judge(BenchResult(name, v["base"], v["head"]), threshold)
        for name, v in sorted(values.items())
    ]
    suspects = [r for r in results if r.verdict == "regressed" and r.name in nodeids]
    if confirm and suspects and not errors:
        names = ", ".join(r.name for r in suspects)
        log(f"judging {len(suspects)} suspect(s) again on {confirm} rounds of their own: {names}")
        again = _alternate(
            base,
            head,
            [Path(nodeids[r.name]) for r in suspects],
            confirm,
            max_time=max_time,
            min_rounds=min_rounds,
            stat=stat,
            package=package,
        )
        for r in suspects:
            v = again.get(r.name, {"base": [], "head": []})
            if len(v["base"]) != confirm or len(v["head"]) != confirm:
                errors.append(f"{r.name}: failed while it was judged again")
                continue
            r.suspected, r.base, r.head = r.ratio, v["base"], v["head"]
            judge(r, threshold)
    if not any(r.head for r in results):
        errors.append("no benchmark ran on head")
    for r in results:
        if r.verdict == "missing":
            errors.append(f"{r.name}: ran on base but not on head")
        elif r.verdict != "new" and not len(r.head) == len(r.base) == (
            done if math.isnan(r.suspected) else confirm
        ):
            errors.append(f"{r.name}: failed in some rounds")
    return GateReport("time", base.label, head.label, threshold, results, errors)


def _alternate(
    base: Side,
    head: Side,
    nodeids: Sequence[Path],
    rounds: int,
    *,
    max_time: float,
    min_rounds: int,
    stat: str,
    package: str | None,
) -> dict[str, dict[str, list[float]]]:
    """Run ``nodeids`` (``path::test[param]``) on both sides: one warm-up round, then
    ``rounds`` interleaved rounds; the per-round ``stat`` of each benchmark by side."""
    values: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp, contextlib.ExitStack() as st:
        workers = _pair(
            st,
            Path(tmp),
            (base, head),
            nodeids,
            select=None,
            max_time=max_time,
            min_rounds=min_rounds,
            package=package,
        )
        for i in range(rounds + 1):
            for side in (base, head) if i % 2 == 0 else (head, base):
                raw, _ = workers[side.name].run(Path(tmp) / f"{side.name}-{i}.json")
                if i:  # round 0 warms up
                    _record(values, raw, side.name, stat)
    return values


def _pair(
    st: contextlib.ExitStack, tmp: Path, sides: tuple[Side, Side], paths: Sequence[Path], **kw: Any
) -> dict[str, _Worker]:
    """One benchmark process per side, closed with ``st``; logs in ``tmp``."""
    workers = {}
    for side in sides:
        w = _Worker(side, paths, tmp / f"{side.name}.log", **kw)
        st.callback(w.close)
        workers[side.name] = w
    return workers


def _record(
    values: dict[str, dict[str, list[float]]], raw: dict[str, dict[str, Any]], side: str, stat: str
) -> None:
    """Add one round's ``stat`` of each benchmark in ``raw`` to ``side``'s values."""
    for name, stats in raw.items():
        values.setdefault(name, {"base": [], "head": []})[side].append(float(stats[stat]))
