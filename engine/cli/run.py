"""``engine run "TASK"``: run one orchestrated job with a live progress display."""

from __future__ import annotations

import argparse

from engine.cli._common import run_coro, setup_logging

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.cli._orchestration import run_job

    setup_logging(args.verbose)
    return run_coro(run_job(args, task=args.task))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.cli._orchestration import add_run_options

    p = sub.add_parser(
        "run",
        help="run one orchestrated job and print its answer",
        description="Plan TASK with a model, run its subtasks on worker agents, print the "
        "answer. The first output line is `job JOB_ID`; the live progress goes to stderr.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("task", help="what to do")
    p.add_argument(
        "--store",
        default="memory://",
        help="where jobs, ledgers and checkpoints live (sqlite:///jobs.db to resume later)",
    )
    p.add_argument("--budget-tokens", type=int, default=None, help="token budget of the job")
    add_run_options(p)
    p.set_defaults(func=run)
