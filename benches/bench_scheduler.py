"""Scheduler benchmarks: compiled ``SchedulerC`` vs the reference ``SchedulerPy`` vs plain
``heapq`` with the same (priority, deadline, arrival) ordering, all in the same run.

Run: ``.venv/bin/python -m pytest benches/bench_scheduler.py`` (``make bench`` runs every bench).

- ``push_pop``: a queue of 10k tasks (random priorities 0..99, no deadline) grows to 20k and
  back each round: 10k pushes then 10k pops — ``push_many`` + ``pop_ready(10k)`` (batch),
  ``push``/``pop`` calls (single), ``heappush``/``heappop`` of ``(priority, deadline,
  arrival, id)`` tuples (heapq). Dispatched tasks are completed between rounds, untimed.
- ``distinct``: the batch case with every task on its own priority level (random int32), the
  scheduler's worst case (one bucket per task); gated at 2.5x heapq, not part of issue 2.
- ``lifecycle``: the same plus ``complete_many`` of what was dispatched, timed (heapq has no
  completion step: its figure is still push+pop).
- ``dag_100k``: push 100k tasks with 0-2 dependencies each (CSR ``push_many``), then
  ``pop_ready(4096)`` + ``complete_many`` until drained.
- ``fairness``: 100 tenants, tenant 0 queues 100x more (and first): push 19,900 tasks, then
  5000 dispatches; the time of the whole run and the largest deviation of a tenant's share
  of dispatches from its weight are reported.

Figures are the best round (seconds per push+pop pair unless noted). ``test_acceptance``
(last) asserts issue 2's targets and prints the table.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.scheduling import SchedulerC, SchedulerPy

pytestmark = pytest.mark.skipif(SchedulerC is None, reason="native scheduler not built")
# quick: `engine bench --compare` runs these by default (a few seconds a round for all of
# them); not the 100k-task DAG: ~1.5 s a call on the twin, and bimodal (1.0 or 1.5 s) on a
# loaded machine, which an unchanged tree's gate once read as a 30% regression.
quick = pytest.mark.quick

N = 10_000  # tasks pushed and popped per round; the queue holds 10k-20k
ROUNDS = {"heapq": 15, "py": 4, "native": 60, "native_single": 15}
IMPLS: dict[str, Callable[..., Any]] = {"py": SchedulerPy, "native": SchedulerC or SchedulerPy}
RESULTS: dict[tuple[str, str], float] = {}  # (case, impl) -> best seconds per unit
EXTRA: dict[str, float] = {}
PRIOS = np.random.default_rng(11).integers(0, 100, N)
PRIO_LIST = [int(p) for p in PRIOS]
# The scheduler's worst case: every task its own priority level (one bucket per task).
DISTINCT = np.random.default_rng(12).integers(-(2**31), 2**31 - 1, N)
DISTINCT_LIST = [int(p) for p in DISTINCT]


class Rounds:
    """Rolling ids and the last round's dispatched tasks (completed by the untimed setup)."""

    def __init__(self, sched: Any, prios: np.ndarray = PRIOS) -> None:
        self.s = sched
        self.base = N
        self.last: Any = None
        sched.push_many(np.arange(N), prios)

    def setup(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.last is not None:
            self.s.complete_many(self.last)
        ids = np.arange(self.base, self.base + N)
        self.base += N
        return (ids,), {}


def _best(benchmark: Any, units: int = 1) -> float | None:
    """Best round per unit, or None under ``--benchmark-disable`` (a smoke run)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min / units


def _record(benchmark: Any, case: str, impl: str, per: float | None, unit: str = "pair") -> None:
    if per is None:
        return
    RESULTS[case, impl] = per
    benchmark.extra_info[f"ns_per_{unit}"] = round(per * 1e9, 2)
    for peer in ("heapq", "py"):
        if impl.startswith("native") and (case, peer) in RESULTS:
            benchmark.extra_info[f"speedup_vs_{peer}"] = round(RESULTS[case, peer] / per, 1)


# -- push + pop ------------------------------------------------------------------------------
@quick
@pytest.mark.parametrize("case", ["push_pop", "distinct"])
def test_push_pop_heapq(benchmark: Any, case: str) -> None:
    plist = PRIO_LIST if case == "push_pop" else DISTINCT_LIST
    h: list[tuple[int, float, int, int]] = []
    for i in range(N):
        heapq.heappush(h, (plist[i], math.inf, i, i))
    state = {"base": N}

    def run() -> int:
        base = state["base"]
        push, pop, prios, inf = heapq.heappush, heapq.heappop, plist, math.inf
        for i in range(N):
            push(h, (prios[i], inf, base + i, base + i))
        last = 0
        for _ in range(N):
            last = pop(h)[3]
        state["base"] = base + N
        return last

    benchmark.group = f"scheduler-{case}"
    benchmark.pedantic(run, rounds=ROUNDS["heapq"], warmup_rounds=1)
    assert len(h) == N
    _record(benchmark, case, "heapq", _best(benchmark, N))


@quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_push_pop_batch(benchmark: Any, impl: str) -> None:
    r = Rounds(IMPLS[impl]())

    def run(ids: Any) -> None:
        r.s.push_many(ids, PRIOS)
        r.last = r.s.pop_ready(N)

    benchmark.group = "scheduler-push-pop"
    benchmark.pedantic(run, setup=r.setup, rounds=ROUNDS[impl], warmup_rounds=1)
    assert r.last.size == N and r.s.stats()["ready"] == N
    _record(benchmark, "push_pop", impl, _best(benchmark, N))


@quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_push_pop_batch_distinct_priorities(benchmark: Any, impl: str) -> None:
    r = Rounds(IMPLS[impl](), DISTINCT)

    def run(ids: Any) -> None:
        r.s.push_many(ids, DISTINCT)
        r.last = r.s.pop_ready(N)

    benchmark.group = "scheduler-distinct"
    benchmark.pedantic(run, setup=r.setup, rounds=ROUNDS[impl], warmup_rounds=1)
    assert r.last.size == N
    _record(benchmark, "distinct", impl, _best(benchmark, N))


@quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_push_pop_single(benchmark: Any, impl: str) -> None:
    r = Rounds(IMPLS[impl]())

    def run(ids: Any) -> None:
        push, pop, prios = r.s.push, r.s.pop, PRIO_LIST
        for i, tid in enumerate(ids.tolist()):
            push(tid, prios[i])
        r.last = [pop() for _ in range(N)]

    benchmark.group = "scheduler-push-pop-single"
    rounds = ROUNDS["native_single"] if impl == "native" else ROUNDS[impl]
    benchmark.pedantic(run, setup=r.setup, rounds=rounds, warmup_rounds=1)
    assert None not in r.last
    _record(benchmark, "single", impl, _best(benchmark, N))


@quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_lifecycle_batch(benchmark: Any, impl: str) -> None:
    r = Rounds(IMPLS[impl]())

    def run(ids: Any) -> None:
        r.s.push_many(ids, PRIOS)
        r.s.complete_many(r.s.pop_ready(N))

    benchmark.group = "scheduler-lifecycle"
    benchmark.pedantic(run, setup=r.setup, rounds=ROUNDS[impl], warmup_rounds=1)
    assert r.s.stats()["running"] == 0
    _record(benchmark, "lifecycle", impl, _best(benchmark, N))


# -- DAG -------------------------------------------------------------------------------------
def _dag(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    counts = np.minimum(rng.integers(0, 3, n), np.arange(n))
    deps = [rng.choice(i, c, replace=False) for i, c in enumerate(counts.tolist()) if c]
    return np.arange(n), rng.integers(0, 10, n), counts, np.concatenate(deps).astype(np.int64)


DAG = _dag(100_000)


@pytest.mark.parametrize("impl", ["py", "native"])
def test_dag_100k(benchmark: Any, impl: str) -> None:
    ids, prios, counts, deps = DAG

    def run() -> int:
        s = IMPLS[impl]()
        s.push_many(ids, prios, dep_counts=counts, deps=deps)
        done = 0
        while True:
            out = s.pop_ready(4096)
            if out.size == 0:
                return done
            s.complete_many(out)
            done += out.size

    benchmark.group = "scheduler-dag-100k"
    rounds = 1 if impl == "py" else 15  # best of many: the gate must hold on a busy machine
    done = benchmark.pedantic(run, rounds=rounds, warmup_rounds=0)
    assert done == ids.size
    _record(benchmark, "dag_100k", impl, _best(benchmark), unit="dag")


# -- fairness --------------------------------------------------------------------------------
@quick
@pytest.mark.parametrize("impl", ["py", "native"])
def test_fairness_100_tenants(benchmark: Any, impl: str) -> None:
    sizes = [10_000] + [100] * 99
    tenants = np.repeat(np.arange(100), sizes)
    ids = np.arange(tenants.size)
    shares: Counter[int] = Counter()

    def run() -> None:
        s = IMPLS[impl]()
        s.push_many(ids, tenants=tenants)
        shares.clear()
        for _ in range(5):
            shares.update(tenants[s.pop_ready(1000)].tolist())

    benchmark.group = "scheduler-fairness"
    benchmark.pedantic(run, rounds=3 if impl == "py" else 20, warmup_rounds=0)
    worst = max(abs(shares[t] / 5000 - 0.01) / 0.01 for t in range(100))
    EXTRA[f"fair_dev_{impl}"] = worst
    benchmark.extra_info["worst_share_deviation"] = round(worst, 4)
    _record(benchmark, "fairness", impl, _best(benchmark), unit="run")


# -- gate ------------------------------------------------------------------------------------
def test_acceptance(bench_report: list[str]) -> None:
    needed = [(c, i) for c in ("push_pop", "distinct") for i in ("heapq", "py", "native")]
    needed += [(c, i) for c in ("single", "lifecycle", "dag_100k", "fairness") for i in IMPLS]
    missing = [k for k in needed if k not in RESULTS]
    if missing:
        pytest.skip(f"run the whole module to check acceptance (missing {missing})")
    hq = RESULTS["push_pop", "heapq"]
    lines = [
        "scheduler (best of rounds; ratio = peer / native)",
        f"{'case':<22}{'heapq':>10}{'py':>11}{'native':>10}{'vs heapq':>10}{'vs py':>8}",
    ]

    def row(name: str, case: str, peer_hq: float | None, unit: float = 1e9) -> None:
        py, nat = RESULTS[case, "py"], RESULTS[case, "native"]
        h = f"{peer_hq * unit:>10.1f}" if peer_hq else f"{'-':>10}"
        vs = f"{peer_hq / nat:>10.1f}" if peer_hq else f"{'-':>10}"
        lines.append(f"{name:<22}{h}{py * unit:>11.1f}{nat * unit:>10.1f}{vs}{py / nat:>8.1f}")

    row("push+pop batch (ns)", "push_pop", hq)
    row("push+pop single (ns)", "single", hq)
    row("push+pop+complete (ns)", "lifecycle", hq)
    row("distinct prios (ns)", "distinct", RESULTS["distinct", "heapq"])
    row("DAG 100k nodes (ms)", "dag_100k", None, 1e3)
    row("fairness run (ms)", "fairness", None, 1e3)
    ops = 2 / RESULTS["push_pop", "native"]
    lines.append(
        f"native batch: {ops / 1e6:.1f} M ops/s (push or pop); single calls: "
        f"{2 / RESULTS['single', 'native'] / 1e6:.1f} M ops/s"
    )
    lines.append(
        f"fairness, 100 tenants, one 100x: worst share deviation py "
        f"{EXTRA['fair_dev_py']:.1%}, native {EXTRA['fair_dev_native']:.1%} (limit 10%)"
    )
    bench_report.extend(lines)
    print("\n" + "\n".join(lines))
    nat = RESULTS["push_pop", "native"]
    assert hq / nat >= 10, f"batch push+pop only {hq / nat:.1f}x heapq (need >= 10x)"
    assert RESULTS["push_pop", "py"] / nat >= 10, "batch push+pop < 10x the reference"
    single = RESULTS["single", "native"]
    assert hq / single >= 3, f"single push+pop only {hq / single:.1f}x heapq (need >= 3x)"
    assert ops >= 2e6, f"{ops / 1e6:.2f} M ops/s (need >= 2)"
    assert RESULTS["dag_100k", "native"] <= 0.100, "100k-node DAG took more than 100 ms"
    worst = RESULTS["distinct", "heapq"] / RESULTS["distinct", "native"]
    assert worst >= 2.5, f"all-distinct priorities: only {worst:.1f}x heapq (gate: 2.5x)"
    assert max(EXTRA["fair_dev_py"], EXTRA["fair_dev_native"]) <= 0.10
