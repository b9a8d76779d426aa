"""Vector search: batched top-10 queries over 50k 128-d vectors (`--scale`), filtered too."""

from __future__ import annotations

import _common

opts = _common.args()
_common.require("engine.memory", "vector memory")
if opts.check:
    raise SystemExit(0)

import numpy as np  # noqa: E402

from engine.memory import VectorStore  # noqa: E402

rng = np.random.default_rng(0)
N, DIM = max(1000, int(50_000 * opts.scale)), 128
store = VectorStore(DIM, background=False)
vectors = rng.standard_normal((N, DIM), dtype=np.float32)
store.add(np.arange(N, dtype=np.int64), vectors, metadata=[{"shard": i % 8} for i in range(N)])
queries = rng.standard_normal((64, DIM), dtype=np.float32)


def step() -> None:
    store.search(queries, k=10)
    store.search(queries[:16], k=10, where={"shard": 3})


n = _common.repeat(opts.seconds, step)
print(f"vector_search: {n * 80} queries")
