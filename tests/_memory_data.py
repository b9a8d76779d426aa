"""Small generated vector data for memory tests (clustered, like real embeddings)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def clustered(
    n: int, dim: int = 32, centers: int = 50, seed: int = 0, noise: float = 1.0
) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_ids(
    q: npt.NDArray[np.float32], x: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    s = q @ x.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)


def recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
