"""Router benchmarks: compiled ``RouterC`` vs the reference ``RouterPy``, same run, same inputs.

Run: ``.venv/bin/python -m pytest benches/bench_router.py`` (``make bench`` runs every bench).
Each case routes one batch through ``route_many`` (handles interned beforehand, as the
runtime does at subscribe/add time); figures are per routing decision, the best of a few
rounds. ``test_acceptance`` (last) asserts issue 2's targets and prints the table:
direct and exact-topic batches >= 10x the reference and >= 3 M decisions/s, and exact-topic
routing with 100k subscriptions within 1.5x of 10 subscriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine import AgentId
from engine.routing import KIND_DIRECT, KIND_TOPIC, KIND_TYPE, RouterC, RouterPy

# quick: `engine bench --compare` runs these by default (a few seconds a round)
pytestmark = [
    pytest.mark.skipif(RouterC is None, reason="native router not built"),
    pytest.mark.quick,
]

BATCH = 10_000
WILD_BATCH = 1_000  # the reference scans every pattern per topic; keep its rounds short
ROUNDS = {"py": 8, "native": 200}
IMPLS: dict[str, Callable[..., Any]] = {"py": RouterPy, "native": RouterC or RouterPy}
RESULTS: dict[tuple[str, str], float] = {}  # (case, impl) -> best seconds per decision

Batch = tuple[Any, np.ndarray, np.ndarray]


def _agents(r: Any, types: int, per_type: int) -> list[AgentId]:
    ids = [AgentId(f"t{t}", f"k{k}") for t in range(types) for k in range(per_type)]
    for a in ids:
        r.add_agent(a)
    return ids


def direct(impl: str) -> Batch:
    """Direct delivery by AgentId handle to 1000 registered agents."""
    r = IMPLS[impl]()
    handles = np.array([r.handle(a) for a in _agents(r, 10, 100)], dtype=np.int64)
    targets = np.random.default_rng(1).choice(handles, BATCH)
    return r, np.full(BATCH, KIND_DIRECT, dtype=np.uint8), targets


def by_type(impl: str) -> Batch:
    """By type: 10 types x 8 instances, half round-robin, half least-outstanding."""
    r = IMPLS[impl]()
    _agents(r, 10, 8)
    for t in range(0, 10, 2):
        r.set_policy(f"t{t}", "least_outstanding")
    handles = np.array([r.type_handle(f"t{t}") for t in range(10)], dtype=np.int64)
    targets = np.random.default_rng(2).choice(handles, BATCH)
    return r, np.full(BATCH, KIND_TYPE, dtype=np.uint8), targets


def exact(n: int) -> Callable[[str], Batch]:
    def build(impl: str) -> Batch:
        """Exact topics: n subscriptions to n distinct topics; traffic on 10 of them."""
        r = IMPLS[impl]()
        for i in range(n):
            r.subscribe(f"svc.{i}.events", i)
        hot = r.topic_handles([f"svc.{k * n // 10}.events" for k in range(10)])
        targets = np.random.default_rng(3).choice(hot, BATCH)
        return r, np.full(BATCH, KIND_TOPIC, dtype=np.uint8), targets

    return build


def _wild_router(impl: str) -> Any:
    r = IMPLS[impl]()
    for i in range(50):
        r.subscribe(f"svc.{i}.*", i)
        r.subscribe(f"#.{i}.errors", 1000 + i)
        r.subscribe(f"svc.{i}.events", 2000 + i)
        r.subscribe(f"svc.{i + 50}.events", 2050 + i)
    return r


def wildcard(impl: str) -> Batch:
    """100 patterns (`*` and `#`) plus 100 exact topics; traffic on 200 topics (warm caches)."""
    r = _wild_router(impl)
    topics = [f"svc.{i}.{kind}" for i in range(100) for kind in ("events", "errors")]
    targets = np.random.default_rng(4).choice(r.topic_handles(topics), WILD_BATCH)
    return r, np.full(WILD_BATCH, KIND_TOPIC, dtype=np.uint8), targets


def wildcard_cold(impl: str) -> Batch:
    """As ``wildcard``, but every round first changes a pattern (all cached matches go) and
    routes 1000 distinct topics once each: every decision walks the patterns."""
    r = _wild_router(impl)
    topics = [f"svc.{i}.{kind}" for i in range(500) for kind in ("events", "errors")]
    handles = r.topic_handles(topics)

    class Cold:
        def route_many(self, kinds: Any, targets: Any) -> Any:
            r.unsubscribe(r.subscribe("cold.#", -1))
            return r.route_many(kinds, targets)

    return Cold(), np.full(len(handles), KIND_TOPIC, dtype=np.uint8), handles


def mixed(impl: str) -> Batch:
    """Half direct, half exact-topic (1000 agents, 1000 subscriptions), interleaved."""
    r = IMPLS[impl]()
    handles = np.array([r.handle(a) for a in _agents(r, 10, 100)], dtype=np.int64)
    for i in range(1000):
        r.subscribe(f"room.{i}", i)
    topics = r.topic_handles([f"room.{i}" for i in range(1000)])
    rng = np.random.default_rng(5)
    kinds = rng.choice(np.array([KIND_DIRECT, KIND_TOPIC], dtype=np.uint8), BATCH)
    targets = np.where(kinds == KIND_DIRECT, rng.choice(handles, BATCH), rng.choice(topics, BATCH))
    return r, kinds, targets.astype(np.int64)


CASES: dict[str, Callable[[str], Batch]] = {
    "direct": direct,
    "by_type": by_type,
    "exact_10": exact(10),
    "exact_1k": exact(1_000),
    "exact_100k": exact(100_000),
    "wildcard": wildcard,
    "wildcard_cold": wildcard_cold,
    "mixed": mixed,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["py", "native"])
def test_route_many(benchmark: Any, case: str, impl: str) -> None:
    r, kinds, targets = CASES[case](impl)
    benchmark.group = f"router-{case}"
    expected = r.route_many(kinds, targets)[0][-1]  # warm-up; also the fan-out size
    offsets, _ = benchmark.pedantic(
        r.route_many, args=(kinds, targets), rounds=ROUNDS[impl], warmup_rounds=1
    )
    assert offsets[-1] == expected and len(offsets) == len(targets) + 1
    per_decision = benchmark.stats.stats.min / len(targets)
    RESULTS[case, impl] = per_decision
    benchmark.extra_info["ns_per_decision"] = round(per_decision * 1e9, 2)
    if impl == "native" and (case, "py") in RESULTS:
        benchmark.extra_info["speedup_vs_py"] = round(RESULTS[case, "py"] / per_decision, 1)


def test_acceptance(bench_report: list[str]) -> None:
    missing = [(c, i) for c in CASES for i in IMPLS if (c, i) not in RESULTS]
    if missing:
        pytest.skip(f"run the whole module to check acceptance (missing {missing})")
    lines = [
        "router (route_many, best of rounds; ratio = reference / native)",
        f"{'case':<14}{'py ns/dec':>11}{'native ns/dec':>15}{'native M/s':>12}{'ratio':>8}",
    ]
    for case in CASES:
        py, nat = RESULTS[case, "py"], RESULTS[case, "native"]
        row = f"{py * 1e9:>11.1f}{nat * 1e9:>15.2f}{1e-6 / nat:>12.1f}{py / nat:>8.1f}"
        lines.append(f"{case:<14}{row}")
    growth = RESULTS["exact_100k", "native"] / RESULTS["exact_10", "native"]
    lines.append(f"exact topic, native, 100k vs 10 subscriptions: {growth:.2f}x")
    bench_report.extend(lines)
    print("\n" + "\n".join(lines))
    for case in ("direct", "exact_10", "exact_1k", "exact_100k", "mixed"):
        py, nat = RESULTS[case, "py"], RESULTS[case, "native"]
        assert py / nat >= 10, f"{case}: native only {py / nat:.1f}x the reference (need >= 10x)"
        assert 1 / nat >= 3e6, f"{case}: {1e-6 / nat:.2f} M decisions/s (need >= 3)"
    assert growth <= 1.5, f"exact-topic routing grew {growth:.2f}x from 10 to 100k subscriptions"
