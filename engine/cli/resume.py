"""``engine resume JOB_ID``: continue a job whose process died."""

from __future__ import annotations

import argparse

from engine.cli._common import run_coro, setup_logging

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.cli._orchestration import run_job

    setup_logging(args.verbose)
    return run_coro(run_job(args, job_id=args.job_id))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.cli._orchestration import add_run_options

    p = sub.add_parser(
        "resume",
        help="continue a job whose process died",
        description="Continue JOB_ID from the store: completed subtasks are not run again and "
        "recorded model calls are not repeated; subtasks that were running run again. The "
        "workers and model are those the job was started with, unless given here.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("job_id", help="the job's id (the `job JOB_ID` line of engine run)")
    p.add_argument("--store", required=True, help="the job's store, e.g. sqlite:///jobs.db")
    p.add_argument(
        "--force",
        action="store_true",
        help="take the job even if another host's orchestrator still holds its lease "
        "(a dead process on this host is detected without it)",
    )
    add_run_options(p)
    p.set_defaults(func=run, budget_tokens=None)
