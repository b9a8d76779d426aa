"""Reference twin of ``engine._native._hnsw``: the same walk over FAISS's HNSW arrays in
plain Python (simple and slow; the oracle of the differential tests).

When extensions are off (``ENGINE_NO_EXTENSIONS=1``) the vector store does not use this
walk: it searches through FAISS's own ``index.search``, which returns the same ids.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HnswSQ8", "check_graph"]


def check_graph(
    neighbors: npt.NDArray[np.int32],
    offsets: npt.NDArray[np.uint64],
    levels: npt.NDArray[np.int32],
    cum: npt.NDArray[np.int32],
    entry: int,
    max_level: int,
) -> None:
    """ValueError unless a walk over these FAISS HNSW arrays stays inside them: the checks
    of ``ext/_hnsw.pyx``'s constructor (a file's graph is not trusted)."""
    n, ncum = len(levels), len(cum)
    if len(offsets) != n + 1:
        raise ValueError(f"offsets must hold n + 1 = {n + 1} entries, got {len(offsets)}")
    if ncum < 2 or cum[0] != 0 or (np.diff(cum) < 0).any():
        raise ValueError("cum_nneighbor_per_level must start 0, n0 and not decrease")
    if not n:
        return
    if not 0 <= entry < n:
        raise ValueError(f"entry point {entry} outside the {n} nodes")
    if not 0 <= max_level < ncum - 1:
        raise ValueError(f"max_level {max_level} outside the {ncum - 1} levels")
    off = offsets.astype(np.int64)
    lv = levels.astype(np.int64)
    ok = (lv >= 1) & (lv <= min(ncum - 1, max_level + 1)) & (off[1:] >= off[:-1])
    ok &= off[:-1] + np.asarray(cum, np.int64)[np.clip(lv, 0, ncum - 1)] <= off[1:]
    if not ok.all() or off[n] > len(neighbors) or off[0] < 0:
        raise ValueError(f"graph node {int(np.argmin(ok))} is inconsistent (level or offsets)")
    used = np.asarray(neighbors[: off[n]])
    if len(used) and (used.min() < -1 or used.max() >= n):
        raise ValueError("a graph link points outside the nodes")
    if lv[entry] - 1 != max_level:
        raise ValueError("the entry point is not on the top level")
    for i in np.flatnonzero(lv > 1).tolist():  # upper levels: few nodes
        for level in range(1, int(lv[i])):
            for v in neighbors[off[i] + cum[level] : off[i] + cum[level + 1]].tolist():
                if v < 0:
                    break
                if lv[v] <= level:
                    raise ValueError(f"graph node {i} links to a node without that level")


class HnswSQ8:
    """Walk a FAISS ``IndexHNSWSQ`` (8-bit) graph; see ``ext/_hnsw.pyx`` for the contract."""

    def __init__(
        self,
        neighbors: npt.NDArray[np.int32],
        offsets: npt.NDArray[np.uint64],
        levels: npt.NDArray[np.int32],
        cum: npt.NDArray[np.int32],
        codes: npt.NDArray[np.uint8],
        vmin: npt.NDArray[np.float32],
        vdiff: npt.NDArray[np.float32],
        entry: int,
        max_level: int,
        l2: bool,
        owner: Any = None,
    ) -> None:
        n = len(levels)
        if codes.ndim != 2 or len(codes) != n or len(offsets) != n + 1:
            raise ValueError("codes, offsets and levels disagree on the number of nodes")
        check_graph(neighbors, offsets, levels, cum, entry, max_level)
        self.neighbors = neighbors
        self.offsets = offsets.astype(np.int64)
        self.cum = cum.astype(np.int64)
        self.x = vmin[None, :] + (codes.astype(np.float32) + 0.5) / 255.0 * vdiff[None, :]
        self.entry = entry
        self.max_level = max_level
        self.l2 = l2
        self.owner = owner
        self.ndis = 0

    @property
    def ntotal(self) -> int:
        return len(self.x)

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @staticmethod
    def simd() -> str:
        return "python"

    def _links(self, v: int, level: int) -> list[int]:
        o = int(self.offsets[v])
        out = []
        for u in self.neighbors[o + self.cum[level] : o + self.cum[level + 1]].tolist():
            if u < 0:
                break
            out.append(u)
        return out

    def _dist(self, q: npt.NDArray[np.float32], v: int) -> float:
        self.ndis += 1
        x = self.x[v]
        return float(((q - x) ** 2).sum()) if self.l2 else -float(q @ x)

    def _one(self, q: npt.NDArray[np.float32], k: int, ef: int, member: Any) -> list[Any]:
        nearest = self.entry
        dn = self._dist(q, nearest)
        for level in range(self.max_level, 0, -1):  # greedy descent
            while True:
                prev = nearest
                for v in self._links(prev, level):
                    dv = self._dist(q, v)
                    if dv < dn:
                        nearest, dn = v, dv
                if nearest == prev:
                    break
        ef = max(ef, k)
        beam = [(-dn, nearest)]  # max-heap of the ef best seen
        cand = [(dn, nearest)]  # min-heap of nodes to expand
        res = [(-dn, nearest)] if member(nearest) else []
        seen = {nearest}
        while cand:
            d0, v0 = cand[0]
            if len(beam) == ef and d0 > -beam[0][0]:
                break
            heapq.heappop(cand)
            for v in self._links(v0, 0):
                if v in seen:
                    continue
                seen.add(v)
                dv = self._dist(q, v)
                if member(v):
                    if len(res) < k:
                        heapq.heappush(res, (-dv, v))
                    elif dv < -res[0][0]:
                        heapq.heapreplace(res, (-dv, v))
                if len(beam) < ef:
                    heapq.heappush(beam, (-dv, v))
                elif dv < -beam[0][0]:
                    heapq.heapreplace(beam, (-dv, v))
                else:
                    continue
                heapq.heappush(cand, (dv, v))
        return sorted((-nd, v) for nd, v in res)

    def search(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        ef: int,
        out_d: npt.NDArray[np.float32],
        out_i: npt.NDArray[np.int64],
        bitmap: npt.NDArray[np.uint8] | None = None,
        ext: npt.NDArray[np.int64] | None = None,
        normalize: bool = False,
    ) -> int:
        if k < 1 or ef < 1:
            raise ValueError(f"k and ef must be >= 1, got {k}, {ef}")
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"queries must be (nq, {self.d})")
        nq = len(q)
        if out_d.shape[0] != nq or out_i.shape[0] != nq or min(out_d.shape[1], out_i.shape[1]) < k:
            raise ValueError("out_d/out_i must be (nq, >= k)")
        if normalize and self.l2:
            raise ValueError("normalize applies to inner-product indexes only")
        bad = ~np.isfinite(q).all(axis=1)
        if bad.any():
            return int(np.argmax(bad))
        if normalize:
            norms = np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
            q = (q / np.where(norms > 0, norms, 1.0)).astype(np.float32)

        def member(v: int) -> bool:
            if bitmap is None:
                return True
            return v < len(bitmap) * 8 and bool((int(bitmap[v >> 3]) >> (v & 7)) & 1)

        for r in range(nq):
            out_d[r, :k] = math.inf if self.l2 else -math.inf
            out_i[r, :k] = -1
            if not self.ntotal:
                continue
            for t, (d, v) in enumerate(self._one(q[r], k, ef, member)):
                out_d[r, t] = d if self.l2 else -d
                out_i[r, t] = v if ext is None else (ext[v] if v < len(ext) else -1)
        return -1
