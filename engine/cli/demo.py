"""``engine demo``: the main job. Until the orchestrator lands it is an honest showcase of
what exists: the native router and scheduler against their pure-Python reference twins on
the same workloads, timed in the same run and shown as a table."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine._extras import require
from engine.messages import AgentId
from engine.routing import KIND_DIRECT, KIND_TOPIC, RouterC, RouterPy
from engine.scheduling import SchedulerC, SchedulerPy


@dataclass
class Row:
    name: str
    unit: str
    count: int
    py: float  # seconds
    native: float | None


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _router_batch(cls: type, n: int, subs: int) -> Callable[[], object]:
    """A broker's batch: half direct sends, half exact-topic publishes, ``subs`` subscriptions."""
    r = cls()
    agents = [AgentId(f"worker{t}", f"k{i}") for t in range(10) for i in range(100)]
    handles = [r.handle(a) for a in agents if r.add_agent(a) >= 0]
    for i in range(subs):
        r.subscribe(f"events.region{i % 100}.item{i}", subscriber=i % 1000)
    r.subscribe("events.*.item7", subscriber=1)
    r.subscribe("audit.#", subscriber=2)
    topics = r.topic_handles([f"events.region{i % 100}.item{i}" for i in range(1000)])
    rng = np.random.default_rng(7)
    kinds = np.where(rng.random(n) < 0.5, KIND_DIRECT, KIND_TOPIC).astype(np.uint8)
    targets = np.where(
        kinds == KIND_DIRECT,
        np.asarray(handles, dtype=np.int64)[rng.integers(0, len(handles), n)],
        topics[rng.integers(0, len(topics), n)],
    ).astype(np.int64)
    return lambda: r.route_many(kinds, targets)


def _scheduler_run(cls: type, n: int, tenants: int) -> Callable[[], object]:
    """Push ``n`` prioritised tasks from ``tenants`` tenants, then dispatch and complete all."""
    rng = np.random.default_rng(7)
    ids = np.arange(n, dtype=np.int64)
    prio = rng.integers(0, 10, n).astype(np.int32)
    deadlines = np.full(n, np.inf)
    owner = rng.integers(0, tenants, n).astype(np.int64)

    def run() -> None:
        s = cls()
        s.push_many(ids, prio, deadlines, tenants=owner)
        while len(batch := s.pop_ready(1024)):
            s.complete_many(batch)

    return run


def measure(quick: bool = False) -> list[Row]:
    n_route = 20_000 if quick else 200_000
    n_sched = 10_000 if quick else 100_000
    rows = []
    for subs in (10, 100_000):
        py = _best_of(_router_batch(RouterPy, n_route, subs), 3)
        nat = _best_of(_router_batch(RouterC, n_route, subs), 5) if RouterC else None
        rows.append(Row(f"route_many ({subs:,} subs)", "decisions", n_route, py, nat))
    py = _best_of(_scheduler_run(SchedulerPy, n_sched, 100), 2)
    nat = _best_of(_scheduler_run(SchedulerC, n_sched, 100), 3) if SchedulerC else None
    rows.append(Row("schedule (100 tenants)", "tasks", n_sched, py, nat))
    return rows


def run(args: argparse.Namespace) -> int:
    require("rich", extra="cli", feature="engine demo")
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print("[bold]agent-engine demo[/bold]: native hot path vs pure-Python reference twin")
    with console.status("measuring (best of several runs each)..."):
        rows = measure(quick=args.quick)
    table = Table(title="throughput, same workload, same run")
    for col in ("workload", "unit", "reference/s", "native/s", "ratio"):
        table.add_column(col, justify="left" if col in ("workload", "unit") else "right")
    for r in rows:
        py_rate = r.count / r.py
        if r.native is None:
            table.add_row(r.name, r.unit, f"{py_rate:,.0f}", "not built", "-")
        else:
            nat_rate = r.count / r.native
            table.add_row(
                r.name, r.unit, f"{py_rate:,.0f}", f"{nat_rate:,.0f}", f"{nat_rate / py_rate:,.1f}x"
            )
    console.print(table)
    console.print(
        "route_many: half direct sends, half exact-topic publishes (+ '*' and '#' patterns); "
        "schedule: push_many, then pop_ready(1024) + complete_many until drained."
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the main job (a showcase of the engine)")
    p.add_argument("--quick", action="store_true", help="smaller workloads (for tests)")
    p.set_defaults(func=run)
