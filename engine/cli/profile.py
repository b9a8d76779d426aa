"""``engine profile SCENARIO``: run ``profiles/scenarios/<SCENARIO>.py`` under scalene.

Writes ``profiles/reports/<SCENARIO>.json`` (scalene's profile), ``<SCENARIO>.html`` (a
self-contained viewer) and ``<SCENARIO>.txt`` (the top lines by CPU time, also printed).
A scenario first runs with ``--check``: exit status 3 means its subsystem is not part of
this build, and the command says so instead of profiling nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from engine.errors import EngineError

#: Exit status of ``scenario.py --check`` when its subsystem is missing.
NOT_AVAILABLE = 3


def _root(start: Path) -> Path:
    for p in (start, *start.parents):
        if (p / "profiles" / "scenarios").is_dir():
            return p
    raise EngineError(f"no profiles/scenarios/ above {start}; run from the project checkout")


def scenarios(root: Path) -> list[str]:
    return sorted(
        p.stem for p in (root / "profiles" / "scenarios").glob("*.py") if not p.stem.startswith("_")
    )


def summarize(profile: dict[str, Any], top: int = 10) -> list[tuple[float, str, int, str]]:
    """The ``top`` lines by CPU share: (percent, file, line number, source)."""
    rows = []
    for fname, data in profile.get("files", {}).items():
        for line in data.get("lines", []):
            cpu = (
                float(line.get("n_cpu_percent_python", 0))
                + float(line.get("n_cpu_percent_c", 0))
                + float(line.get("n_sys_percent", 0))
            )
            if cpu > 0:
                rows.append((cpu, fname, int(line["lineno"]), str(line["line"]).strip()))
    rows.sort(key=lambda r: -r[0])
    return rows[:top]


def run(args: argparse.Namespace) -> int:
    try:
        root = _root(Path(args.root).resolve())
    except EngineError as exc:
        print(f"engine profile: {exc}", file=sys.stderr)
        return 2
    names = scenarios(root)
    if args.list or not args.scenario:
        print("scenarios: " + ", ".join(names))
        return 0 if args.list else 2
    if args.scenario not in names:
        print(
            f"engine profile: unknown scenario {args.scenario!r} (have: {', '.join(names)})",
            file=sys.stderr,
        )
        return 2
    script = root / "profiles" / "scenarios" / f"{args.scenario}.py"
    check = subprocess.run(
        [sys.executable, str(script), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check.returncode == NOT_AVAILABLE:
        print(
            f"engine profile: scenario {args.scenario!r} cannot run in this build: "
            f"{check.stdout.strip() or check.stderr.strip()}",
            file=sys.stderr,
        )
        return NOT_AVAILABLE
    if check.returncode != 0:
        print(
            f"engine profile: {args.scenario} --check failed:\n{check.stderr[-2000:]}",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args.out) if args.out else root / "profiles" / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.scenario}.json"
    cmd = [
        sys.executable,
        "-m",
        "scalene",
        "run",
        "--off",
        "--program-path",
        str(root),
        "-o",
        str(json_path),
    ]  # the scenario switches profiling on around its work only
    if not args.memory:
        cmd.append("--cpu-only")
    cmd += [str(script), "---", "--seconds", str(args.seconds)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not json_path.exists():
        print(
            f"engine profile: scalene failed ({proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        view = subprocess.run(
            [sys.executable, "-m", "scalene", "view", "--standalone", str(json_path)],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        html = Path(tmp) / "scalene-profile.html"
        if view.returncode != 0 or not html.exists():
            print(f"engine profile: scalene view failed:\n{view.stderr[-2000:]}", file=sys.stderr)
            return 2
        shutil.move(html, out_dir / f"{args.scenario}.html")
    profile = orjson.loads(json_path.read_bytes())
    lines = [
        f"scenario {args.scenario}: {profile.get('elapsed_time_sec', 0):.2f} s profiled; "
        f"top {args.top} lines by CPU"
    ]
    for cpu, fname, lineno, src in summarize(profile, args.top):
        rel = Path(fname)
        if rel.is_absolute() and rel.is_relative_to(root):
            rel = rel.relative_to(root)
        lines.append(f"{cpu:6.1f}%  {rel}:{lineno}  {src[:80]}")
    text = "\n".join(lines) + "\n"
    (out_dir / f"{args.scenario}.txt").write_text(text)
    print(text, end="")
    print(
        f"reports: {json_path}, {out_dir / (args.scenario + '.html')}, "
        f"{out_dir / (args.scenario + '.txt')}"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile",
        help="profile a scenario from profiles/scenarios under scalene",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?", help="scenario name (file stem)")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="how much CPU time the scenario works"
    )
    p.add_argument("--top", type=int, default=10, help="lines in the text summary")
    p.add_argument("--memory", action="store_true", help="profile memory too (slower)")
    p.add_argument("--out", help="report directory (default: profiles/reports)")
    p.add_argument("--root", default=".", help="project checkout (default: current directory)")
    p.set_defaults(func=run)
