"""Where vector benchmarks get their data, in order of preference:

1. ``$ENGINE_VECTORS_DATA`` (a folder in the layout of the prebuilt set);
2. ``../shared/data/vectors`` next to the repository (the prebuilt 100k x 384 real set);
3. ``benches/data/vectors`` (built by ``benches/data/build_vectors.py``; built now, small,
   if missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Dataset:
    base: npt.NDArray[np.float32]
    queries: npt.NDArray[np.float32]
    gt: npt.NDArray[np.int64]  # exact top-100 base rows per query
    source: str


def _load(folder: Path, base: str, queries: str) -> Dataset:
    return Dataset(
        np.load(folder / base).astype(np.float32),
        np.load(folder / queries).astype(np.float32),
        np.load(folder / "gt_top100.i32.npy").astype(np.int64),
        str(folder),
    )


def load() -> Dataset:
    env = os.environ.get("ENGINE_VECTORS_DATA")
    shared = [Path(env)] if env else []
    shared.append(ROOT.parent / "shared" / "data" / "vectors")
    for folder in shared:
        if (folder / "base_100k.f16.npy").exists():
            return _load(folder, "base_100k.f16.npy", "queries_1k.f16.npy")
    local = ROOT / "benches" / "data" / "vectors"
    if not (local / "base.f16.npy").exists():
        script = ROOT / "benches" / "data" / "build_vectors.py"
        subprocess.run([sys.executable, str(script)], check=True)
    return _load(local, "base.f16.npy", "queries.f16.npy")


def recall_at(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], k: int = 10) -> float:
    hits = [
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / k


def alternating_times(
    store: Any, peer: Any, q: npt.NDArray[np.float32], n: int | None = None, rounds: int = 1
) -> tuple[list[float], list[float]]:
    """Seconds per single query of ``store.search`` and hnswlib's ``peer.knn_query``, timed
    in alternation query by query (one thread each): both see the same host load and share
    the caches, unlike two back-to-back loops."""
    eng: list[float] = []
    other: list[float] = []
    for _ in range(rounds):
        for i in range(len(q) if n is None else min(n, len(q))):
            row = q[i : i + 1]
            t = time.perf_counter()
            store.search(row, k=10)
            eng.append(time.perf_counter() - t)
            t = time.perf_counter()
            peer.knn_query(row, k=10)
            other.append(time.perf_counter() - t)
    return eng, other
