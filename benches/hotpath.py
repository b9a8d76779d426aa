"""Hot-path probes for the instruction-count gate (``engine bench --instructions``).

Each probe is ``setup() -> run(k)``: setup builds the state (not counted), ``run(k)`` does
``k`` operations, each one batch of the native hot path. The gate counts instructions of
``run(k)`` under ``valgrind --tool=callgrind`` and divides by ``k``; the counts are
deterministic, so base and head compare exactly. Keep probes small: callgrind runs ~50x
slower than native.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.messages import AgentId
from engine.routing import KIND_DIRECT, KIND_TOPIC, KIND_TYPE, Router
from engine.scheduling import Scheduler

Run = Callable[[int], object]
BATCH = 1000


def _router() -> tuple[Router, np.ndarray]:
    r = Router()
    for t in range(20):
        for k in range(5):
            r.add_agent(AgentId(f"type{t}", f"k{k}"))
    for i in range(200):
        r.subscribe(f"region{i % 10}.*.event{i % 7}", subscriber=i)
        r.subscribe(f"region{i % 10}.#", subscriber=1000 + i)
    topics = [f"region{i % 10}.node{i % 13}.event{i % 7}" for i in range(BATCH)]
    return r, r.topic_handles(topics)


def router_match_many() -> Run:
    r, handles = _router()
    return lambda k: [r.match_many(handles) for _ in range(k)]


def router_route_many() -> Run:
    r, handles = _router()
    kinds = np.array(
        [(KIND_DIRECT, KIND_TYPE, KIND_TOPIC)[i % 3] for i in range(BATCH)], dtype=np.uint8
    )
    direct = [r.handle(AgentId(f"type{i % 20}", f"k{i % 5}")) for i in range(BATCH)]
    types = [r.type_handle(f"type{i % 20}") for i in range(BATCH)]
    targets = np.array(
        [(direct[i], types[i], int(handles[i]))[i % 3] for i in range(BATCH)], dtype=np.int64
    )

    return lambda k: [r.route_many(kinds, targets) for _ in range(k)]


def scheduler_push_pop() -> Run:
    s = Scheduler()
    ids = np.arange(BATCH, dtype=np.int64)
    prio = (ids % 7).astype(np.int32)
    deadlines = np.full(BATCH, np.inf)

    def run(k: int) -> None:
        for _ in range(k):
            s.push_many(ids, prio, deadlines)
            s.complete_many(s.pop_ready(BATCH))

    return run


PROBES: dict[str, Callable[[], Run]] = {
    "router.match_many": router_match_many,
    "router.route_many": router_route_many,
    "scheduler.push_pop_complete": scheduler_push_pop,
}
