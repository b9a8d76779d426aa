"""``engine jobs list|show``: the orchestrator's jobs in a store (read-only)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.cli import CommandError
from engine.cli._common import run_coro

__all__ = ["register", "run"]


async def _main(args: argparse.Namespace) -> int:
    from engine.errors import StoreNotFound
    from engine.orchestration.persist import Persist
    from engine.orchestration.state import KIND
    from engine.store import open as open_store

    try:
        store = await open_store(args.store, create=False)
    except StoreNotFound as exc:
        raise CommandError(str(exc), code=2) from None
    try:
        if args.action == "list":
            page = await store.list_jobs(
                status=args.status,
                tenant=args.tenant,
                kind=KIND,
                newest_first=True,
                limit=args.limit,
            )
            for job in page.items:
                print(json.dumps(_summary(job, Persist.spec(job).task)))
            return 0
        if not args.job_id:
            raise CommandError("engine jobs show needs JOB_ID", code=2)
        record = await store.get_job(args.job_id)
        if record is None:
            raise CommandError(f"no job {args.job_id!r} in {args.store}", code=2)
        persist = Persist(store, owner="engine-jobs-show", lease=1.0)
        out: dict[str, Any] = _summary(record, Persist.spec(record).task)
        ck = await persist.last_checkpoint(record.id)
        if ck is not None:
            import msgspec

            out["checkpoint"] = msgspec.to_builtins(ck)
        records = await persist.records(record.id)
        out["ledger"] = [
            {
                "action": r.action,
                "agent": r.agent,
                "tokens": r.tokens,
                "entry": type(r.body).__name__,
                **_brief(r.body),
            }
            for r in records[-args.limit :]
        ]
        result = Persist.result(record)
        if result is not None:
            out["answer"] = result.answer
            out["reason"] = result.reason
        print(json.dumps(out, indent=2))
        return 0
    finally:
        await store.close()


def _summary(job: Any, task: str) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "tenant": job.tenant,
        "task": task[:200],
        "created": job.created,
        "updated": job.updated,
        "owner": job.owner,
        "lease_until": job.lease_until,
        "error": job.error,
    }


def _brief(body: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("gen", "subtask", "status", "n", "satisfied", "progress", "reason"):
        value = getattr(body, name, None)
        if value is not None and value != "":
            out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    return run_coro(_main(args))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "jobs",
        help="list orchestrated jobs, or show one with its ledger",
        description="Read a store's orchestrated jobs (never creates a store). `list` prints "
        "one JSON object per job, newest first; `show JOB_ID` prints the job, its latest "
        "checkpoint and its last ledger entries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=["list", "show"], help="what to do")
    p.add_argument("job_id", nargs="?", default=None, help="the job (show)")
    p.add_argument("--store", required=True, help="the store, e.g. sqlite:///jobs.db")
    p.add_argument("--status", default=None, help="only jobs with this status (list)")
    p.add_argument("--tenant", default=None, help="only this tenant's jobs (list)")
    p.add_argument("--limit", type=int, default=50, help="jobs (list) or ledger entries (show)")
    p.set_defaults(func=run)
