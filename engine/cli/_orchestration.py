"""What ``engine run`` and ``engine resume`` share: the model, the workers, the live view.

A job started by ``engine run`` keeps how it was run in its record (worker specs, model,
``--llm`` factory, concurrency), so ``engine resume JOB_ID`` rebuilds the same orchestrator
in a fresh process; flags given to ``resume`` override what was kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.cli import CommandError

if TYPE_CHECKING:
    from engine.orchestration import Job, JobResult

__all__ = ["add_run_options", "build_llm", "load_workers", "run_job"]


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name for the OpenAI-compatible server")
    p.add_argument(
        "--workers",
        nargs="+",
        metavar="pkg.mod:Class",
        default=None,
        help="worker agent classes (each declares capabilities); default: a general ReAct worker",
    )
    p.add_argument(
        "--llm",
        default=None,
        metavar="pkg.mod:factory",
        help="a callable returning the model to use (instead of OpenAI or the scripted one)",
    )
    p.add_argument("--concurrency", type=int, default=None, help="subtasks at once per worker")
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr")


def _load(spec: str, what: str) -> Any:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise CommandError(f"bad {what} {spec!r}: expected pkg.module:Name", code=2)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot load {what} {spec!r}: {exc}", code=2) from None


def load_workers(specs: Sequence[str]) -> list[type]:
    from engine.agents import Agent
    from engine.orchestration.worker import capabilities_of

    out = []
    for spec in specs:
        cls = _load(spec, "worker")
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise CommandError(f"worker {spec!r} is not an engine.Agent subclass", code=2)
        try:
            capabilities_of(cls)
        except TypeError as exc:
            raise CommandError(f"worker {spec!r}: {exc}", code=2) from None
        out.append(cls)
    return out


def build_llm(model: str | None, factory: str | None, capabilities: Sequence[str]) -> Any:
    """``--llm`` factory, else OpenAI when configured, else the scripted model (banner)."""
    if factory:
        llm = _load(factory, "llm factory")()
        if not hasattr(llm, "chat"):
            raise CommandError(f"--llm {factory!r} returned {llm!r}, which has no chat()", code=2)
        return llm
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        try:
            from engine.llm import OpenAIProvider  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise CommandError(f"the OpenAI provider is not available: {exc}") from None
        return OpenAIProvider(model=model or "gpt-4o-mini")
    from engine.orchestration.offline import BANNER, offline_llm

    print(BANNER, file=sys.stderr)
    return offline_llm(capabilities)


async def run_job(
    args: argparse.Namespace, *, task: str | None = None, job_id: str | None = None
) -> int:
    """Submit ``task`` (``engine run``) or resume ``job_id`` (``engine resume``)."""
    from engine.errors import EngineError
    from engine.orchestration import Orchestrator, ReActAgent, set_default_llm
    from engine.runtime import Runtime
    from engine.store import open as open_store

    store = await open_store(args.store, create=job_id is None)
    try:
        config: dict[str, str] = {}
        if job_id is not None:
            record = await store.get_job(job_id)
            if record is None:
                raise CommandError(f"no job {job_id!r} in {args.store}", code=2)
            from engine.orchestration.persist import Persist

            config = dict(Persist.spec(record).config)
        specs = args.workers or [s for s in config.get("workers", "").split(",") if s]
        model = args.model or config.get("model") or None
        factory = args.llm or config.get("llm") or None
        concurrency = args.concurrency or int(config.get("concurrency", "8") or 8)
        workers = load_workers(specs) if specs else [ReActAgent]
        caps = [c for w in workers for c in getattr(w, "capabilities", ())]
        llm = build_llm(model, factory, caps)
        set_default_llm(llm)
        config = {
            "workers": ",".join(specs),
            "model": model or "",
            "llm": factory or "",
            "concurrency": str(concurrency),
        }
        async with Runtime() as rt:
            orch = Orchestrator(llm, rt, store=store)
            for w in workers:
                orch.add_worker(w, concurrency=concurrency)
            try:
                if task is not None:
                    budget = None
                    if args.budget_tokens is not None:
                        from engine.llm import Budget

                        budget = Budget(tokens=args.budget_tokens, name="job")
                    job = await orch.submit(task, budget=budget, config=config)
                else:
                    assert job_id is not None
                    job = await orch.resume(job_id, force=args.force)
            except (EngineError, ValueError) as exc:
                raise CommandError(str(exc), code=2 if isinstance(exc, ValueError) else 1) from None
            print(f"job {job.id}", flush=True)
            try:
                result = await _watch(job, quiet=args.quiet)
            finally:
                await orch.close()
                aclose = getattr(llm, "aclose", None)
                if aclose is not None:
                    await aclose()  # the HTTP client's connections
        return _report(result)
    finally:
        await store.close()


async def _watch(job: Job, *, quiet: bool) -> JobResult:
    if quiet or not sys.stderr.isatty():
        return await job.result()
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console(stderr=True)
    counts = {"started": 0, "completed": 0, "failed": 0}
    last: list[str] = []
    tokens = 0
    t0 = time.monotonic()

    def view() -> Table:
        t = Table(title=f"job {job.id}", show_header=False, expand=False)
        t.add_row("status", job.status.value)
        t.add_row("subtasks", ", ".join(f"{k} {v}" for k, v in counts.items()))
        t.add_row("tokens", f"{tokens:,}")
        t.add_row("elapsed", f"{time.monotonic() - t0:.1f} s")
        for line in last[-5:]:
            t.add_row("", line)
        return t

    with Live(view(), console=console, refresh_per_second=8, transient=False) as live:
        async for ev in job.events():
            if ev.kind == "subtask.started":
                counts["started"] += 1
            elif ev.kind == "subtask.finished":
                counts["completed" if ev.data.get("status") == "completed" else "failed"] += 1
                last.append(f"{ev.subtask}: {ev.data.get('status')}")
            elif ev.kind == "tokens":
                tokens = int(ev.data.get("tokens", 0))
            elif ev.kind in ("planned", "replanned"):
                last.append(f"{ev.kind}: {ev.data.get('subtasks')} subtasks")
            live.update(view())
    return await job.result()


def _report(result: JobResult) -> int:
    if result.ok:
        print(result.answer)
        return 0
    print(f"job {result.job} {result.status.value}: {result.reason}", file=sys.stderr)
    return 1
