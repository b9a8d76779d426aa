"""``engine bench``: run the benchmarks, or gate a change against a git ref.

engine bench                              # pytest-benchmark JSON of benches/
engine bench --compare main               # quick selection, interleaved; exit 1 on regression
engine bench --compare main --all         # every benchmark
engine bench --compare HEAD~1 --instructions   # callgrind instruction counts (deterministic)
engine bench --compare main --benches perf/    # your own repository's benchmark folder

By default ``--compare`` runs the benchmarks marked ``@pytest.mark.quick`` (every one when
none is marked), at least ``--min-rounds`` and at most ``--rounds`` interleaved rounds,
stopping once every ratio has settled or the ``--budget`` is spent.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

from engine._extras import require
from engine.cli import _gate as gate
from engine.cli import _gate_timing
from engine.cli._errors import CommandError
from engine.errors import GateError

#: Seconds the default (quick) comparison may spend measuring, so that one gate with its
#: set-up stays within 5 minutes on a loaded 2-core machine.
QUICK_BUDGET = 180.0


def _print_report(report: gate.GateReport) -> None:
    require("rich", extra="cli", feature="engine bench")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    unit = "instr/op" if report.mode == "instructions" else "s (per-round stat)"
    table = Table(
        title=f"{report.mode}: {report.base} -> {report.head} (threshold "
        f"{report.threshold:.0%}, {unit})"
    )
    for col in ("benchmark", "base", "head", "ratio", "noise", "verdict"):
        table.add_column(col, justify="left" if col in ("benchmark", "verdict") else "right")
    colours = {"regressed": "red", "improved": "green", "ok": "", "new": "cyan", "missing": "red"}
    for r in report.results:
        base = f"{_median(r.base):.4g}" if r.base else "-"
        head = f"{_median(r.head):.4g}" if r.head else "-"
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.3f}"
        noise = f"±{r.noise:.3f}" if r.base and r.head else "-"
        style = colours.get(r.verdict, "")
        verdict = f"[{style}]{r.verdict}[/{style}]" if style else r.verdict
        table.add_row(escape(r.name), base, head, ratio, noise, verdict)  # "[...]" is no markup
    console = Console(width=140)
    console.print(table)
    for e in report.errors:
        console.print(f"[red]error:[/red] {escape(e)}")
    if report.regressions:
        names = escape(", ".join(r.name for r in report.regressions))
        console.print(
            f"[red bold]FAIL[/red bold]: slower than {report.threshold:.0%} beyond noise: {names}"
        )
    elif report.errors:
        console.print("[red bold]FAIL[/red bold]: see errors")
    else:
        console.print("[green bold]PASS[/green bold]")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def run(args: argparse.Namespace) -> int:
    try:
        head_root = gate.repo_root(Path(args.root).resolve())
    except GateError:
        head_root = Path(args.root).resolve()
    benches = Path(args.benches) if Path(args.benches).is_absolute() else head_root / args.benches
    paths = [Path(p) if Path(p).is_absolute() else head_root / p for p in args.paths or [benches]]
    for p in paths:
        if not p.exists():
            raise CommandError(f"no such benchmark path {p}", 2)
    hotpath = Path(args.hotpath) if args.hotpath else benches / "hotpath.py"
    if not hotpath.is_absolute():
        hotpath = head_root / hotpath
    if args.compare is None:
        return _plain(args, head_root, paths, hotpath)
    head = gate.Side("head", head_root, "working tree")

    def log(*parts: object) -> None:
        if not args.quiet:
            print(*parts, file=sys.stderr)

    try:
        with gate.base_tree(head_root, args.compare, head_root, keep=args.keep) as base:
            if args.keep:
                log(f"base tree kept at {base.root}")
            if args.instructions:
                report = gate.compare_instructions(
                    base,
                    head,
                    hotpath,
                    iterations=args.iterations,
                    threshold=args.threshold,
                    names=args.probe or (),
                    log=log,
                )
            else:
                marker = None if args.all else _quick(head, paths)
                if marker:
                    log("quick selection: benchmarks marked @pytest.mark.quick (--all: every one)")
                budget = args.budget
                if budget is None and not args.all:
                    budget = QUICK_BUDGET
                report = _gate_timing.compare_timing(
                    base,
                    head,
                    paths,
                    rounds=args.rounds,
                    select=args.k,
                    threshold=args.threshold,
                    max_time=args.max_time or 0.05,
                    stat=args.stat,
                    marker=marker,
                    settle_after=min(args.min_rounds, args.rounds),
                    budget=budget,
                    package=package_under_test(head_root),
                    confirm=args.confirm,
                    log=log,
                )
    except GateError as exc:
        raise CommandError(str(exc), 2) from None
    if args.report:
        Path(args.report).write_bytes(report.to_json())
    _print_report(report)
    return 1 if report.failed else 0


def package_under_test(root: Path) -> str | None:
    """The package a tree's benchmarks measure: ``engine`` here, else the one top-level
    package in ``root`` or ``root/src`` (None when there is not exactly one)."""
    if (root / "engine" / "__init__.py").is_file():
        return "engine"
    found = {
        p.parent.name
        for base in (root, root / "src")
        for p in base.glob("*/__init__.py")
        if p.parent.name not in ("tests", "test", "benches", "benchmarks", "docs")
    }
    return found.pop() if len(found) == 1 else None


def _quick(head: gate.Side, paths: list[Path]) -> str | None:
    """``"quick"`` when some benchmark of ``paths`` carries that marker, else None (all)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "quick",
         "-p", "no:cacheprovider", "-o", "python_files=bench_*.py test_*.py", *map(str, paths)],
        cwd=head.root,
        env=gate.child_env(head),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    return "quick" if any("::" in line for line in proc.stdout.splitlines()) else None


def _plain(args: argparse.Namespace, root: Path, paths: list[Path], hotpath: Path) -> int:
    if args.instructions:
        head = gate.Side("head", root, "working tree")
        try:
            counts, problems = gate.count_instructions(
                head, hotpath, iterations=args.iterations, names=args.probe or ()
            )
        except GateError as exc:
            raise CommandError(str(exc), 2) from None
        for name, n in sorted(counts.items()):
            print(f"{name:40s} {n:14.1f} instructions/op")
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    out = Path(args.json or root / ".benchmarks" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *map(str, paths),
        "-o",
        "python_files=bench_*.py test_*.py",
        "--benchmark-only",
        f"--benchmark-json={out}",
    ]
    if args.k:
        cmd += ["-k", args.k]
    if args.max_time:
        cmd += [f"--benchmark-max-time={args.max_time}"]
    code = subprocess.run(cmd, cwd=root).returncode
    print(f"benchmark JSON: {out}", file=sys.stderr)
    return code


def _fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"threshold must be in (0, 10), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="run benchmarks (pytest-benchmark JSON) or gate against a git ref",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", help="benchmark files or directories (default: benches)")
    p.add_argument("-k", help="pytest -k expression selecting benchmarks")
    p.add_argument("--json", help="where `engine bench` writes pytest-benchmark JSON")
    p.add_argument("--compare", metavar="REF", help="git ref to compare the working tree against")
    p.add_argument(
        "--threshold",
        type=_fraction,
        default=gate.DEFAULT_THRESHOLD,
        help="fail when slower by more than this beyond noise (0.1 or 10%%)",
    )
    p.add_argument(
        "--benches",
        default="benches",
        metavar="DIR",
        help="the benchmark folder (your own repository's, e.g. perf/)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="compare every benchmark, not only those marked @pytest.mark.quick",
    )
    p.add_argument(
        "--rounds", type=_positive_int, default=15, help="at most this many interleaved rounds"
    )
    p.add_argument(
        "--min-rounds",
        type=_positive_int,
        default=5,
        help="rounds before the comparison may stop (when every ratio has settled)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"stop measuring before this (default {QUICK_BUDGET:g} s for the quick selection, "
        "none with --all)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=7,
        metavar="ROUNDS",
        help="judge a suspected regression again on this many rounds of its own (0: off)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="pytest-benchmark max time per benchmark (and round; compare: 0.05)",
    )
    p.add_argument(
        "--stat",
        choices=("min", "median", "mean"),
        default="min",
        help="per-round statistic compared (timing mode)",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions of benches/hotpath.py probes under callgrind",
    )
    p.add_argument(
        "--hotpath",
        default=None,
        help="probe file for --instructions (default: BENCHES/hotpath.py)",
    )
    p.add_argument("--probe", action="append", help="only this probe (repeatable)")
    p.add_argument(
        "--iterations",
        type=_positive_int,
        default=200,
        help="probe iterations per count (instructions mode)",
    )
    p.add_argument("--report", help="write the comparison as JSON here")
    p.add_argument("--root", default=".", help="the work tree (default: the current directory)")
    p.add_argument("--keep", action="store_true", help="keep the base tree (debugging)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
