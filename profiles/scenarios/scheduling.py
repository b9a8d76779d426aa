"""Scheduling hot path: priorities, tenants, pools with slots, DAG completion."""

from __future__ import annotations

import _common

opts = _common.args()
_common.require("engine.scheduling", "scheduling")
if opts.check:
    raise SystemExit(0)

import numpy as np  # noqa: E402

from engine.scheduling import Scheduler  # noqa: E402

N = 4096
s = Scheduler()
for pool in range(4):
    s.set_pool(pool, slots=256)
for tenant in range(8):
    s.set_weight(tenant, 1 + tenant % 3)
ids = np.arange(N, dtype=np.int64)
prio = (ids % 5).astype(np.int32)
deadlines = np.full(N, np.inf)
tenants = (ids % 8).astype(np.int64)
pools = (ids % 4).astype(np.int64)


def step() -> None:
    s.push_many(ids, prio, deadlines, tenants=tenants, pools=pools)
    done = 0
    while done < N:
        ready = s.pop_ready(512)
        s.complete_many(ready)
        done += len(ready)
    # a small DAG: a chain of 64 tasks, each depending on the previous one
    s.push(N, priority=0)
    for i in range(1, 64):
        s.push(N + i, deps=[N + i - 1])
    for _ in range(64):
        s.complete_many(s.pop_ready(1))


n = _common.repeat(opts.seconds, step)
print(f"scheduling: {n} steps ({n * (N + 64)} tasks)")
