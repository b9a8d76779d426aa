"""Scheduler behaviour on both twins (py / native), their equivalence, and every bad input."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import engine
from engine.errors import CycleError, SchedulerError
from engine.scheduling import Scheduler, SchedulerC, SchedulerPy
from tests.conftest import impl_params

INF = math.inf


class FakeClock:
    """An injectable clock the test moves by hand."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=impl_params(SchedulerPy, SchedulerC))
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def drain(s: Any, batch: int = 1000) -> list[int]:
    """Dispatch and complete everything (completing in dispatch order); dispatch order."""
    order: list[int] = []
    while True:
        out = s.pop_ready(batch)
        if out.size == 0:
            return order
        order.extend(out.tolist())
        s.complete_many(out)


# -- face ------------------------------------------------------------------------------------
def test_face_picks_the_compiled_twin_when_built() -> None:
    assert Scheduler is (SchedulerC if SchedulerC is not None else SchedulerPy)
    assert engine.Scheduler is Scheduler
    assert engine.SchedulerPy is SchedulerPy


# -- ordering --------------------------------------------------------------------------------
def test_lower_priority_value_runs_first_then_deadline_then_arrival(impl: Any) -> None:
    s = impl(clock=FakeClock())
    s.push(1, 5)
    s.push(2, 1, 9.0)
    s.push(3, 1, 3.0)
    s.push(4, 1)  # no deadline sorts after any finite one
    s.push(5, 1, 3.0)  # same (priority, deadline) as 3: arrival decides
    s.push(6, -2)
    assert s.pop_ready(10).tolist() == [6, 3, 5, 2, 4, 1]


def test_order_matches_sorted_keys_on_a_large_random_batch(impl: Any) -> None:
    rng = np.random.default_rng(7)
    n = 5000
    ids = rng.permutation(n).astype(np.int64) * 3 - 7000  # negative ids are fine
    prios = rng.integers(-3, 4, n)
    dls = np.where(rng.random(n) < 0.5, INF, rng.integers(10, 14, n).astype(float))
    s = impl(clock=FakeClock())
    s.push_many(ids, prios, dls)
    expected = [int(ids[i]) for i in sorted(range(n), key=lambda i: (prios[i], dls[i], i))]
    assert drain(s, 777) == expected


def test_pop_and_pop_ready_on_empty_and_zero(impl: Any) -> None:
    s = impl()
    assert s.pop() is None
    assert s.pop_ready(5).tolist() == []
    s.push(1)
    out = s.pop_ready(0)
    assert out.dtype == np.int64 and out.size == 0
    assert s.pop() == 1
    assert s.pop() is None


def test_pop_ready_returns_at_most_n(impl: Any) -> None:
    s = impl()
    s.push_many(np.arange(10))
    first = s.pop_ready(4)
    assert first.tolist() == [0, 1, 2, 3]
    assert s.pop_ready(100).tolist() == [4, 5, 6, 7, 8, 9]


# -- deadlines -------------------------------------------------------------------------------
def test_expired_tasks_are_reported_never_dispatched(impl: Any) -> None:
    clock = FakeClock(0.0)
    s = impl(clock=clock)
    s.push(1, 0, 5.0)
    s.push(2, 0, 10.0)
    s.push(3, 1)
    s.push(4, 0, 10.0, deps=[1])
    clock.t = 10.0  # 1 expired (5 < 10); 2 is due exactly now: still dispatchable
    assert s.pop_ready(10).tolist() == [2, 3]
    assert s.expired().tolist() == [1, 4]  # 4 depended on 1: dropped with it
    assert s.expired().tolist() == []  # drained
    st_ = s.stats()
    assert (st_["expired"], st_["cancelled"], st_["dispatched"]) == (1, 1, 2)
    assert 1 not in s and 4 not in s


def test_expiry_dependents_follow_the_fail_policy(impl: Any) -> None:
    clock = FakeClock(0.0)
    s = impl(clock=clock, on_dep_failure="fail")
    s.push(1, 0, 1.0)
    s.push(2, deps=[1])
    s.push(3, deps=[2])
    clock.t = 2.0
    assert s.pop_ready(5).tolist() == []
    assert s.expired().tolist() == [1, 2, 3]
    assert s.stats()["failed"] == 2


# -- fairness --------------------------------------------------------------------------------
def _shares(s: Any, dispatches: int, tenant_of: dict[int, int]) -> Counter[int]:
    out = s.pop_ready(dispatches)
    assert out.size == dispatches
    return Counter(tenant_of[int(t)] for t in out)


def test_fairness_100_tenants_one_sending_100x(impl: Any) -> None:
    s = impl()
    tenant_of: dict[int, int] = {}
    tid = 0
    for tenant in range(100):  # tenant 0 floods first, 100x more than each other tenant
        k = 10_000 if tenant == 0 else 100
        ids = np.arange(tid, tid + k)
        s.push_many(ids, tenants=np.full(k, tenant))
        tenant_of.update(dict.fromkeys(ids.tolist(), tenant))
        tid += k
    shares = _shares(s, 5000, tenant_of)
    for tenant in range(100):  # equal weights: 1% each, within 10% of that
        assert abs(shares[tenant] / 5000 - 0.01) <= 0.001, (tenant, shares[tenant])


def test_weighted_fairness_100_tenants(impl: Any) -> None:
    s = impl()
    weights = {t: 1 + t % 4 for t in range(100)}
    tenant_of: dict[int, int] = {}
    tid = 0
    for tenant, w in weights.items():
        s.set_weight(tenant, w)
        k = 20_000 if tenant == 0 else 200
        ids = np.arange(tid, tid + k)
        s.push_many(ids, tenants=np.full(k, tenant))
        tenant_of.update(dict.fromkeys(ids.tolist(), tenant))
        tid += k
    total_w = sum(weights.values())
    n = total_w * 30  # 30 DRR rounds: every tenant stays backlogged
    shares = _shares(s, n, tenant_of)
    for tenant, w in weights.items():
        want = w / total_w
        assert abs(shares[tenant] / n - want) <= 0.1 * want, (tenant, shares[tenant])
    assert s.weight(3) == 4 and s.weight(12345) == 1


def test_priority_orders_within_a_tenant_under_fairness(impl: Any) -> None:
    s = impl()
    s.push(1, 5, tenant=1)
    s.push(2, 0, tenant=1)
    s.push(3, 9, tenant=2)
    s.push(4, 1, tenant=2)
    assert s.pop_ready(4).tolist() == [2, 4, 1, 3]


# -- pools and rate limits -------------------------------------------------------------------
def test_pool_slots_limit_and_release(impl: Any) -> None:
    s = impl()
    s.set_pool(1, slots=2)
    s.push_many(np.arange(6), pools=np.array([1, 1, 1, 1, 0, 0]))
    assert s.pop_ready(10).tolist() == [0, 4, 1, 5]  # pools served round-robin
    assert s.in_use(1) == 2 and s.in_use(0) == 2
    assert s.pop_ready(10).tolist() == []
    s.complete(0)
    assert s.pop_ready(10).tolist() == [2]
    s.fail(1)
    assert s.pop() == 3
    s.cancel(2)  # cancelling a running task frees its slot too
    assert s.in_use(1) == 1
    assert s.in_use(99) == 0


def test_pool_with_zero_slots_is_paused_until_reconfigured(impl: Any) -> None:
    s = impl()
    s.set_pool(3, slots=0)
    s.push(1, pool=3)
    assert s.pop() is None
    s.set_pool(3, slots=None)
    assert s.pop() == 1


def test_token_bucket_rate_limit_with_fake_clock(impl: Any) -> None:
    clock = FakeClock(100.0)
    s = impl(clock=clock)
    s.set_pool(0, rate=2.0, burst=3)
    s.push_many(np.arange(10))
    assert s.pop_ready(10).tolist() == [0, 1, 2]  # burst
    assert s.pop_ready(10).tolist() == []
    clock.t = 100.5  # +1 token
    assert s.pop_ready(10).tolist() == [3]
    clock.t = 110.0  # refills to burst, not beyond
    assert s.pop_ready(10).tolist() == [4, 5, 6]
    clock.t = 109.0  # a clock going backwards adds nothing
    assert s.pop_ready(10).tolist() == []


def test_rate_limit_of_one_pool_does_not_block_another(impl: Any) -> None:
    clock = FakeClock()
    s = impl(clock=clock)
    s.set_pool(1, rate=1.0, burst=1)
    s.push_many(np.arange(4), pools=np.array([1, 1, 0, 0]))
    assert s.pop_ready(10).tolist() == [0, 2, 3]


# -- dependencies ----------------------------------------------------------------------------
def test_task_is_ready_when_all_deps_completed(impl: Any) -> None:
    s = impl()
    s.push(1)
    s.push(2)
    s.push(3, deps=[1, 2])
    assert s.state(3) == "waiting"
    assert s.pop_ready(5).tolist() == [1, 2]
    assert s.state(1) == "running"
    s.complete(1)
    assert s.pop() is None
    s.complete(2)
    assert s.state(3) == "ready"
    assert s.pop() == 3


def test_push_many_with_csr_deps_runs_a_dag_in_order(impl: Any) -> None:
    s = impl()
    # 0 -> {1, 2} -> 3 ; 4 independent
    s.push_many([0, 1, 2, 3, 4], dep_counts=[0, 1, 1, 2, 0], deps=[0, 0, 1, 2])
    assert s.pop_ready(10).tolist() == [0, 4]
    s.complete_many([0, 4])
    assert s.pop_ready(10).tolist() == [1, 2]
    s.complete_many([2, 1])
    assert s.pop_ready(10).tolist() == [3]


@pytest.mark.parametrize("policy", ["cancel", "fail"])
def test_failed_dep_drops_dependents_per_policy(impl: Any, policy: str) -> None:
    s = impl(on_dep_failure=policy)
    s.push(1)
    s.push(2)
    s.push(5, deps=[1])
    s.push(4, deps=[5, 2])
    s.push(3, deps=[2])
    assert s.pop_ready(2).tolist() == [1, 2]
    assert s.fail(1).tolist() == [4, 5]
    st_ = s.stats()
    assert st_["failed"] == (3 if policy == "fail" else 1)
    assert st_["cancelled"] == (0 if policy == "fail" else 2)
    assert 3 in s and 4 not in s
    s.complete(2)
    assert s.pop_ready(5).tolist() == [3]


def test_cancel_drops_dependents_and_never_dispatches(impl: Any) -> None:
    s = impl(on_dep_failure="fail")
    s.push(1)
    s.push(2, deps=[1])
    s.push(3)
    assert s.cancel(1).tolist() == [2]
    assert s.cancel(3).tolist() == []
    assert s.pop_ready(5).tolist() == []
    assert len(s) == 0
    assert s.stats()["cancelled"] == 3


def test_add_dependency_moves_a_ready_task_back_to_waiting(impl: Any) -> None:
    s = impl()
    s.push(1)
    s.push(2)
    s.add_dependency(1, 2)
    assert s.state(1) == "waiting"
    assert s.pop_ready(5).tolist() == [2]
    s.complete(2)
    assert s.pop_ready(5).tolist() == [1]


def test_cycle_is_rejected_with_its_ids(impl: Any) -> None:
    s = impl()
    s.push(1)
    s.push(2, deps=[1])
    s.push(3, deps=[2])
    s.push(4, deps=[1])
    with pytest.raises(CycleError) as exc:
        s.add_dependency(1, 3)
    assert exc.value.cycle == [1, 2, 3, 1]
    assert "1 -> 2 -> 3 -> 1" in str(exc.value)
    assert s.state(1) == "ready"  # unchanged
    with pytest.raises(CycleError) as exc:
        s.add_dependency(2, 2)
    assert exc.value.cycle == [2, 2]
    with pytest.raises(CycleError):
        s.push(9, deps=[9])
    s.add_dependency(4, 3)  # no cycle: fine
    assert s.state(4) == "waiting"


def test_ids_are_reusable_after_they_finish(impl: Any) -> None:
    s = impl()
    s.push(1)
    assert s.pop() == 1
    s.complete(1)
    s.push(1, 3)
    assert s.state(1) == "ready"
    assert 1 in s and "x" not in s and len(s) == 1


def test_stats_track_every_state(impl: Any) -> None:
    s = impl()
    s.push_many(np.arange(5))
    s.push(9, deps=[0])
    s.pop_ready(2)
    assert s.stats() == {
        "pushed": 6,
        "dispatched": 2,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "waiting": 1,
        "ready": 3,
        "running": 2,
    }


def test_many_cancels_of_ready_tasks_keep_order(impl: Any) -> None:
    s = impl()
    rng = np.random.default_rng(3)
    prios = rng.integers(0, 50, 3000)
    s.push_many(np.arange(3000), prios)
    for t in range(0, 3000, 3):
        s.cancel(t)
        if t % 2 == 0:
            s.cancel(t + 1)
    left = [i for i in range(3000) if i % 3 == 2 or (i % 3 == 1 and (i - 1) % 2 == 1)]
    assert drain(s, 100) == sorted(left, key=lambda i: (prios[i], i))


def test_a_pool_emptied_by_cancel_rejoins_the_ring_at_the_back(impl: Any) -> None:
    """Pool 1's only ready task is cancelled; a ``pop_ready`` that finds nothing ready still
    walks the ring and retires pool 1, so when one completion readies a task in pool 2 and
    then one in pool 1, pool 2 is served first (the twins once disagreed: the compiled one
    returned early and kept pool 1 at the front; hypothesis seed 17898980)."""
    s = impl()
    s.push(1, pool=0)
    s.push(3, tenant=2, pool=1, deps=[1])
    s.push(4, pool=0)
    s.push(0, tenant=1, pool=2, deps=[4])
    s.push(9, tenant=2, pool=1, deps=[4])
    assert s.pop_ready(1).tolist() == [1]
    s.complete(1)  # 3 ready: pool 1 joins the ring behind pool 0
    assert s.pop_ready(1).tolist() == [4]
    assert s.cancel(3).tolist() == []  # pool 1 holds nothing ready now
    assert s.pop_ready(1).tolist() == []
    s.complete(4)  # readies 0 (pool 2), then 9 (pool 1)
    assert s.pop_ready(5).tolist() == [0, 9]


def test_a_tenant_emptied_by_cancel_gets_a_fresh_turn(impl: Any) -> None:
    """Within one pool: tenant 1's only task is cancelled while tenant 0 is served; tenant 1
    leaves the DRR ring (deficit reset) and takes turns again once it has work."""
    s = impl()
    for task, tenant in ((1, 0), (2, 1), (3, 0)):
        s.push(task, tenant=tenant)
    assert s.pop_ready(1).tolist() == [1]
    assert s.cancel(2).tolist() == []
    assert s.pop_ready(5).tolist() == [3]
    for task, tenant in ((4, 1), (5, 0), (6, 1), (7, 0)):
        s.push(task, tenant=tenant)
    assert s.pop_ready(10).tolist() == [4, 5, 6, 7]


def test_memory_stays_bounded_under_churn(impl: Any) -> None:
    """Completed, cancelled and expired tasks give their memory back (C tables included:
    tracemalloc sees PyMem_* allocations): after warm-up, rounds of churn at the same load
    do not grow memory (tables keep their high-water size, like any slab)."""
    clock = FakeClock()
    s = impl(clock=clock)
    rng = np.random.default_rng(9)

    def churn(r: int) -> None:
        ids = np.arange(r * 1500, (r + 1) * 1500)
        has_dep = (ids % 4 == 0) & (ids > ids[0])  # on the previous task of the batch
        s.push_many(
            ids,
            rng.integers(-10, 10, 1500),
            np.where(ids % 7 == 0, r + 0.5, INF),
            tenants=ids % 5,
            dep_counts=has_dep.astype(np.int64),
            deps=ids[has_dep] - 1,
        )
        for t in ids[1::3].tolist():
            if t in s:
                s.cancel(t)
        clock.t = r + 1.0
        drain(s, 250)
        s.expired()

    for r in range(2):  # warm up: tables reach their working size
        churn(r)
    tracemalloc.start()
    try:
        churn(2)
        gc.collect()  # measure what is retained, not garbage awaiting the collector
        base = tracemalloc.get_traced_memory()[0]
        for r in range(3, 9):
            churn(r)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(s) == 0
    assert grown < 48 * 1024, f"memory grew by {grown} bytes over 6 rounds of churn"


def test_no_extensions_falls_back_to_the_reference() -> None:
    code = (
        "import engine, engine.scheduling as sc;"
        "assert sc.SchedulerC is None and engine.Scheduler is engine.SchedulerPy;"
        "s = engine.Scheduler(); s.push(1); assert s.pop() == 1"
    )
    env = dict(os.environ, ENGINE_NO_EXTENSIONS="1")
    env.pop("ENGINE_REQUIRE_NATIVE", None)
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr


# -- bad input ------------------------------------------------------------------------------
def test_negative_n_is_refused(impl: Any) -> None:
    s = impl()
    with pytest.raises(SchedulerError, match="n must be >= 0"):
        s.pop_ready(-1)
    with pytest.raises(SchedulerError, match="integer"):
        s.pop_ready(1.5)


@pytest.mark.parametrize("op", ["complete", "fail", "cancel", "state"])
def test_unknown_id_is_refused(impl: Any, op: str) -> None:
    s = impl()
    with pytest.raises(SchedulerError, match="unknown task id 42"):
        getattr(s, op)(42)


def test_unknown_ids_in_dependencies(impl: Any) -> None:
    s = impl()
    s.push(1)
    with pytest.raises(SchedulerError, match="unknown dependency id 7"):
        s.push(2, deps=[1, 7])
    with pytest.raises(SchedulerError, match="unknown dependency id 7"):
        s.add_dependency(1, 7)
    with pytest.raises(SchedulerError, match="unknown task id 8"):
        s.add_dependency(8, 1)
    with pytest.raises(SchedulerError, match=r"tasks\[1\]: unknown dependency id 5"):
        s.push_many([4, 3, 5], dep_counts=[0, 1, 0], deps=[5])  # 5 comes later
    assert len(s) == 1 and 2 not in s and 4 not in s  # nothing pushed


def test_duplicate_ids_are_refused(impl: Any) -> None:
    s = impl()
    s.push(1)
    with pytest.raises(SchedulerError, match="duplicate task id 1"):
        s.push(1)
    with pytest.raises(SchedulerError, match=r"tasks\[2\]: duplicate task id 3"):
        s.push_many([2, 3, 3])
    with pytest.raises(SchedulerError, match=r"tasks\[0\]: duplicate task id 1"):
        s.push_many([1])
    assert len(s) == 1 and s.stats()["pushed"] == 1
    assert s.pop_ready(5).tolist() == [1]  # the failed batches left no trace


def test_failed_batch_leaves_existing_dependencies_intact(impl: Any) -> None:
    s = impl()
    s.push(1)
    with pytest.raises(SchedulerError):
        s.push_many([2, 2], dep_counts=[1, 0], deps=[1])
    s.push(2, deps=[1])
    assert s.pop_ready(5).tolist() == [1]
    s.complete(1)
    assert s.pop_ready(5).tolist() == [2]


def test_bad_policy_and_clock(impl: Any) -> None:
    with pytest.raises(SchedulerError, match="on_dep_failure"):
        impl(on_dep_failure="ignore")
    with pytest.raises(SchedulerError, match="clock must be callable"):
        impl(clock=3.0)
    assert impl(on_dep_failure="fail").on_dep_failure == "fail"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": [[1, 2]]}, "tasks must be a 1-d array"),
        ({"tasks": [1.5, 2.5]}, "tasks must be an integer array"),
        ({"tasks": ["a"]}, "tasks must be an integer array"),
        ({"tasks": [1, 2], "priorities": [1]}, "priorities has length 1, expected 2"),
        ({"tasks": [1, 2], "priorities": [1.0, 2.0]}, "priorities must be an integer array"),
        ({"tasks": [1], "priorities": [2**40]}, "priorities holds values outside"),
        ({"tasks": [1, 2], "deadlines": [1.0]}, "deadlines has length 1"),
        ({"tasks": [1], "deadlines": [math.nan]}, "deadlines holds NaN"),
        ({"tasks": [1], "deadlines": ["x"]}, "deadlines must be a numeric array"),
        ({"tasks": [1, 2], "tenants": [0, 1, 2]}, "tenants has length 3"),
        ({"tasks": [1], "pools": np.array([0.5])}, "pools must be an integer array"),
        ({"tasks": [1], "dep_counts": [0]}, "dep_counts and deps must be given together"),
        ({"tasks": [1], "dep_counts": [1], "deps": []}, "dep_counts sums to 1 but deps has 0"),
        ({"tasks": [1], "dep_counts": [-1], "deps": []}, "dep_counts holds values outside"),
        ({"tasks": [2**64 - 1]}, "tasks holds values outside"),
    ],
)
def test_push_many_bad_arrays(impl: Any, kwargs: dict[str, Any], message: str) -> None:
    s = impl()
    with pytest.raises(SchedulerError, match=message):
        s.push_many(**kwargs)
    assert len(s) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.push("a"), "task must be an integer, got str"),
        (lambda s: s.push(True), "task must be an integer, got bool"),
        (lambda s: s.push(2**63), "task 9223372036854775808 is outside the int64 range"),
        (lambda s: s.push(1, 2**31), "priority 2147483648 is outside the int32 range"),
        (lambda s: s.push(1, 1.0), "priority must be an integer, got float"),
        (lambda s: s.push(1, 0, math.nan), "deadline is NaN"),
        (lambda s: s.push(1, 0, "soon"), "deadline must be a number, got str"),
        (lambda s: s.push(1, tenant=None), "tenant must be an integer, got NoneType"),
        (lambda s: s.push(1, pool=1.5), "pool must be an integer, got float"),
        (lambda s: s.push(1, deps=5), "deps must be an iterable of ids, got int"),
        (lambda s: s.push(1, deps=["x"]), "dependency must be an integer, got str"),
        (lambda s: s.set_weight(1, 0), r"weight must be in \[1, 1000000\], got 0"),
        (lambda s: s.set_pool(1, slots=-1), r"slots must be None or in \[0, "),
        (lambda s: s.set_pool(1, rate=0), "rate must be a finite number > 0"),
        (lambda s: s.set_pool(1, rate=math.inf), "rate must be a finite number > 0"),
        (lambda s: s.set_pool(1, rate=1.0, burst=0.5), "burst must be a finite number >= 1"),
        (lambda s: s.set_pool(1, burst=2), "burst given without rate"),
        (lambda s: s.complete_many([[1]]), "tasks must be a 1-d array"),
        (lambda s: s.complete_many(np.array([1.5])), "tasks must be an integer array"),
        (lambda s: s.complete_many(["a"]), "tasks must be an integer array"),
        (lambda s: s.pop_ready("3"), "n must be an integer, got str"),
        (lambda s: s.pop_ready(2**64), "n 18446744073709551616 is outside the int64 range"),
        (lambda s: s.set_weight("t", 1), "tenant must be an integer, got str"),
        (lambda s: s.set_pool(None), "pool must be an integer, got NoneType"),
        (lambda s: s.in_use("p"), "pool must be an integer, got str"),
    ],
)
def test_bad_scalar_arguments(impl: Any, call: Callable[[Any], object], message: str) -> None:
    s = impl()
    with pytest.raises(SchedulerError, match=message):
        call(s)
    assert len(s) == 0


def test_completing_or_failing_a_task_that_is_not_running(impl: Any) -> None:
    s = impl()
    s.push(1)
    s.push(2, deps=[1])
    with pytest.raises(SchedulerError, match="task 1 is ready, not running"):
        s.complete(1)
    with pytest.raises(SchedulerError, match="task 2 is waiting, not running"):
        s.fail(2)
    assert s.pop() == 1
    with pytest.raises(SchedulerError, match="task 1 is already running"):
        s.add_dependency(1, 2)


def test_complete_many_stops_at_the_first_bad_id(impl: Any) -> None:
    s = impl()
    s.push_many([1, 2, 3])
    s.pop_ready(3)
    with pytest.raises(SchedulerError, match="unknown task id 9"):
        s.complete_many(np.array([1, 9, 2]))
    assert 1 not in s and 2 in s
    s.complete_many([2, 3])
    assert len(s) == 0


# -- the twins agree -------------------------------------------------------------------------
IDS = st.integers(0, 24)
DEADLINES = st.sampled_from([INF, INF, 1.0, 2.5, 4.0])


def _outcome(fn: Callable[[Any], object], s: Any) -> tuple[object, ...]:
    try:
        res = fn(s)
    except CycleError as exc:
        return ("cycle", exc.cycle)
    except SchedulerError as exc:
        return ("error", str(exc))
    if isinstance(res, np.ndarray):
        assert res.dtype == np.int64
        return ("ok", res.tolist())
    return ("ok", res)


@pytest.mark.skipif(SchedulerC is None, reason="native extension not built")
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.integers(1, 5), min_size=4, max_size=4),
    slots=st.lists(st.sampled_from([None, 1, 3]), min_size=3, max_size=3),
    chunk=st.integers(1, 40),
)
def test_twins_agree_on_large_mixed_workloads(
    n: int, seed: int, weights: list[int], slots: list[int | None], chunk: int
) -> None:
    """Deeper DRR/pool/dependency interplay than the state machine reaches: hundreds of tasks
    over 4 tenants and 3 pools, drained in chunks while completing, failing and cancelling."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n * 2)[:n].astype(np.int64)
    counts = np.where(np.arange(n) > 0, rng.integers(0, 3, n), 0)
    deps = np.concatenate(
        [rng.choice(ids[:i], min(int(c), i), replace=False) for i, c in enumerate(counts)]
        + [np.empty(0, np.int64)]
    ).astype(np.int64)
    counts = np.array([min(int(c), i) for i, c in enumerate(counts)], np.int64)
    args = (ids, rng.integers(0, 4, n), np.where(rng.random(n) < 0.2, 3.0, INF))
    kwargs = {
        "tenants": rng.integers(0, 4, n),
        "pools": rng.integers(0, 3, n),
        "dep_counts": counts,
        "deps": deps,
    }
    actions = rng.integers(0, 10, 4 * n)
    logs = []
    for cls in (SchedulerPy, SchedulerC):
        clock = FakeClock()
        s = cls(clock=clock, on_dep_failure="fail" if seed % 2 else "cancel")
        for t, w in enumerate(weights):
            s.set_weight(t, w)
        for pool, k in enumerate(slots):
            s.set_pool(pool, slots=k)
        s.push_many(*args, **kwargs)
        log: list[object] = []
        running: list[int] = []
        for step, act in enumerate(actions.tolist()):
            if step == n // 2:
                clock.t = 3.0  # exactly at the deadlines: still dispatchable
            elif step == n:
                clock.t = 5.0  # the deadlines at 3.0 expire from here on
            out = s.pop_ready(chunk).tolist()
            log.append(out)
            running.extend(out)
            if running and act < 7:
                log.append(s.complete(running.pop(0)))
            elif running and act == 7:
                log.append(s.fail(running.pop()).tolist())
            elif act == 8 and len(s):
                victim = int(ids[step % n])
                log.append(s.cancel(victim).tolist() if victim in s else None)
                if victim in running:
                    running.remove(victim)
        log.append((s.stats(), s.expired().tolist()))
        logs.append(log)
    assert logs[0] == logs[1]


@pytest.mark.skipif(SchedulerC is None, reason="native extension not built")
class TwinMachine(RuleBasedStateMachine):
    """Random operation sequences on both twins must give identical results."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        policy = "fail" if id(self) % 2 else "cancel"
        self.py = SchedulerPy(clock=self.clock, on_dep_failure=policy)
        assert SchedulerC is not None
        self.c = SchedulerC(clock=self.clock, on_dep_failure=policy)

    def both(self, fn: Callable[[Any], object]) -> None:
        a, b = _outcome(fn, self.py), _outcome(fn, self.c)
        assert a == b

    @rule(
        t=IDS,
        p=st.integers(0, 3),
        d=DEADLINES,
        ten=st.integers(0, 2),
        pool=st.integers(0, 2),
        deps=st.lists(IDS, max_size=3),
    )
    def push(self, t: int, p: int, d: float, ten: int, pool: int, deps: list[int]) -> None:
        self.both(lambda s: s.push(t, p, d, tenant=ten, pool=pool, deps=deps))

    @rule(data=st.data(), n=st.integers(0, 6))
    def push_many(self, data: st.DataObject, n: int) -> None:
        ids = data.draw(st.lists(IDS, min_size=n, max_size=n))
        prios = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        tens = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        counts = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        deps = data.draw(st.lists(IDS, min_size=sum(counts), max_size=sum(counts)))
        dls = data.draw(st.lists(DEADLINES, min_size=n, max_size=n))
        self.both(
            lambda s: s.push_many(
                np.array(ids, np.int64),
                np.array(prios, np.int64),
                np.array(dls),
                tenants=np.array(tens, np.int64),
                dep_counts=np.array(counts, np.int64),
                deps=np.array(deps, np.int64),
            )
        )

    @rule(n=st.integers(0, 8))
    def pop_ready(self, n: int) -> None:
        self.both(lambda s: s.pop_ready(n))

    @rule()
    def pop(self) -> None:
        self.both(lambda s: s.pop())

    @rule(t=IDS)
    def complete(self, t: int) -> None:
        self.both(lambda s: s.complete(t))

    @rule(ts=st.lists(IDS, max_size=4))
    def complete_many(self, ts: list[int]) -> None:
        self.both(lambda s: s.complete_many(np.array(ts, np.int64)))

    @rule(t=IDS)
    def fail(self, t: int) -> None:
        self.both(lambda s: s.fail(t))

    @rule(t=IDS)
    def cancel(self, t: int) -> None:
        self.both(lambda s: s.cancel(t))

    @rule(t=IDS, d=IDS)
    def add_dependency(self, t: int, d: int) -> None:
        self.both(lambda s: s.add_dependency(t, d))

    @rule(ten=st.integers(0, 2), w=st.integers(1, 4))
    def set_weight(self, ten: int, w: int) -> None:
        self.both(lambda s: s.set_weight(ten, w))

    @rule(
        pool=st.integers(0, 2),
        slots=st.sampled_from([None, 0, 1, 2]),
        rate=st.sampled_from([None, 1.0, 2.0]),
    )
    def set_pool(self, pool: int, slots: int | None, rate: float | None) -> None:
        self.both(lambda s: s.set_pool(pool, slots=slots, rate=rate))

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0]))
    def tick(self, dt: float) -> None:
        self.clock.t += dt

    @rule(t=IDS)
    def state(self, t: int) -> None:
        self.both(lambda s: (s.state(t), t in s))

    @invariant()
    def same_counts(self) -> None:
        assert self.py.stats() == self.c.stats()
        assert len(self.py) == len(self.c)
        assert [self.py.in_use(p) for p in range(3)] == [self.c.in_use(p) for p in range(3)]
        assert self.py.expired().tolist() == self.c.expired().tolist()


TwinMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_twins_agree = pytest.mark.skipif(SchedulerC is None, reason="native extension not built")(
    TwinMachine.TestCase
)
