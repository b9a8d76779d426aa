"""``engine demo``: the main job, end to end (what ``make demo`` runs; docs/demo.md).

Starts a broker and two ``engine node`` processes on 127.0.0.1, loads the engine's own
documentation and docstrings into vector memory, asks a few hundred questions about the
engine (each planned into retrieval, a tool call, a draft and a check, run by ReAct
workers on the nodes), shows them live and prints a summary measured from the run. With
``OPENAI_API_KEY``/``OPENAI_BASE_URL`` set every model call goes to that server; otherwise
a scripted model plays it (one banner line says so). Exit status: 0 when every job ended
with a result and some completed, 1 when a job was lost, none completed or a process
failed, 2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from engine._extras import require
from engine.cli import CommandError
from engine.cli._common import run_coro, setup_logging

__all__ = ["register", "run"]


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    require("rich", extra="cli", feature="engine demo")
    require("faiss", extra="memory", feature="engine demo")
    from rich.console import Console

    from engine.demo.display import View
    from engine.demo.model import BANNER, configured
    from engine.demo.procs import ChildError
    from engine.demo.workload import Demo, Options

    setup_logging(args.verbose)
    opts = Options(
        jobs=args.jobs if args.jobs is not None else (24 if args.quick else 300),
        nodes=args.nodes,
        in_process=args.in_process,
        chaos=args.chaos,
        model=args.model,
        out=args.out,
        seed=args.seed,
        in_flight=args.in_flight,
        concurrency=args.concurrency,
    )
    if opts.chaos and opts.in_process:
        raise CommandError("--chaos kills a node process: it cannot run with --in-process", 2)
    if os.path.exists(opts.out) and not os.path.isdir(opts.out):
        raise CommandError(f"--out {opts.out!r} is not a directory", 2)
    view = View(live=False if args.no_live else None)
    if not configured():
        view.banner(BANNER)
    demo = Demo(opts, view)
    out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 120))
    try:
        run_coro(_main(demo))
    except (KeyboardInterrupt, asyncio.CancelledError):
        view.report(demo.report(), out)
        return 130
    except ChildError as exc:
        view.report(demo.report(), out)
        raise CommandError(str(exc)) from None
    report = demo.report()
    view.report(report, out)
    return 0 if report.lost == 0 and report.completed > 0 else 1


async def _main(demo: object) -> None:
    """Run the demo; SIGTERM stops it like Ctrl-C (everything started is stopped)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await demo.run()  # type: ignore[attr-defined]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job (the demo workload)",
        description="Run the engine's main job on this machine: a broker and mesh nodes, "
        "ReAct workers with tools and retrieval over the engine's own docs, a few hundred "
        "orchestrated questions, a live view and a summary measured from the run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--jobs", type=_positive, default=None, help="questions to ask (default 300)")
    p.add_argument("--nodes", type=_positive, default=2, help="engine node processes")
    p.add_argument(
        "--in-process", action="store_true", help="no broker or nodes: workers in this process"
    )
    p.add_argument("--chaos", action="store_true", help="SIGKILL a node midway, then start another")
    p.add_argument(
        "--model",
        default=None,
        help="model for the OpenAI-compatible server (default: ENGINE_MODEL, else gpt-4o-mini)",
    )
    p.add_argument(
        "--out", default="demo-output", help="directory for the store, metrics, logs, profile"
    )
    p.add_argument("--quick", action="store_true", help="24 jobs (unless --jobs is given)")
    p.add_argument("--seed", type=int, default=7, help="seed of the question generator")
    p.add_argument("--in-flight", type=_positive, default=32, help="jobs running at once")
    p.add_argument(
        "--concurrency", type=_positive, default=16, help="subtasks at once per capability"
    )
    p.add_argument("--no-live", action="store_true", help="progress lines instead of a live view")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO, tracebacks")
    p.set_defaults(func=run)
