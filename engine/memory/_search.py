"""How a :class:`~engine.memory.VectorStore` answers the queries its fast path does not: the
top-k over a few eligible slots (scored natively on the stored codes) and the search of
the main and fresh indexes with an optional bitmap filter, merged natively.

Both run under the store's read lock, on one thread (a large batch is split over
:data:`engine.memory._pool.search_pool` by the caller).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from engine.memory import _index
from engine.memory._indexes import Indexes
from engine.memory._native import V

__all__ = ["indexes", "subset"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def subset(idx: Indexes, q: F32, k: int, slots: I64) -> tuple[F32, I64]:
    """Top-``k`` over the (few) eligible ``slots`` (ascending): ``(scores, slots)``."""
    largest = idx.metric != "l2"
    nq = len(q)
    count = len(slots)
    d_out = np.full((nq, k), -np.inf if largest else np.inf, np.float32)
    s_out = np.full((nq, k), -1, np.int64)
    if count == 0:
        return d_out, s_out
    main_n = idx.main_n
    split = int(np.searchsorted(slots, main_n))
    l2 = not largest
    scores = np.empty((nq, count), np.float32)
    if split:
        main = idx.main
        assert main is not None
        how, codes, vmin, vdiff = main.codes()
        mine = slots[:split]
        for r in range(nq):
            if how == "sq8":
                V.score_sq8(codes, mine, q[r], vmin, vdiff, l2, scores[r, :split])
            elif how == "f32":
                V.score_f32(codes, mine, q[r], l2, scores[r, :split])
        if how == "other":
            x = _index.reconstruct(main.index, main.kind, mine)
            scores[:, :split] = ((q[:, None, :] - x[None]) ** 2).sum(-1) if l2 else q @ x.T
    if split < count:
        fresh = idx.fresh
        rows = faiss.rev_swig_ptr(fresh.get_xb(), fresh.ntotal * idx.dim)
        rows = rows.reshape(fresh.ntotal, idx.dim)
        local = np.ascontiguousarray(slots[split:] - main_n)
        for r in range(nq):
            V.score_f32(rows, local, q[r], l2, scores[r, split:])
    cand = np.ascontiguousarray(np.broadcast_to(slots, (nq, count)))
    V.merge_topk(scores, cand, k, largest, d_out, s_out)  # ties: lower slot first
    return d_out, s_out


def indexes(idx: Indexes, q: F32, k: int, bitmap: Any, selectivity: float) -> tuple[F32, I64]:
    """Top-``k`` of the main and fresh indexes, restricted to ``bitmap`` (None: all alive
    slots, which then must have no tombstone) passing a fraction ``selectivity``."""
    parts_d: list[F32] = []
    parts_i: list[I64] = []
    main, main_n, fresh = idx.main, idx.main_n, idx.fresh
    walk = _index.walker(main, idx.metric) if main is not None and main_n else None
    if walk is not None:
        assert main is not None
        widen = 1.0 / math.sqrt(max(selectivity, 1e-6))
        ef = math.ceil(main.params.get("efSearch", 16) * widen)
        d = np.empty((len(q), k), np.float32)
        i = np.empty((len(q), k), np.int64)
        walk.search(q, k, ef, d, i, bitmap)
        parts_d.append(d)
        parts_i.append(i)
    elif main is not None and main_n:
        sel = None
        if bitmap is not None:
            sel = faiss.IDSelectorBitmap(main_n, faiss.swig_ptr(bitmap))
        if sel is None:
            params, keep = main.plain_params()
        else:
            params, keep = _index.make_params(main.kind, main.params, sel, selectivity)
        d, i = main.index.search(q, k, params=params)
        del keep
        parts_d.append(d)
        parts_i.append(i)
    nf = fresh.ntotal
    if nf:
        params = None
        if bitmap is not None:
            tail = bitmap[main_n >> 3 :]
            sel = faiss.IDSelectorBitmap(nf, faiss.swig_ptr(tail))
            params = faiss.SearchParameters()
            params.sel = sel
        d, i = fresh.search(q, min(k, nf), params=params)
        i = np.where(i >= 0, i + main_n, -1)
        parts_d.append(d)
        parts_i.append(i)
    if len(parts_d) == 1 and parts_d[0].shape[1] == k:
        return parts_d[0], parts_i[0]
    d_all = np.ascontiguousarray(np.concatenate(parts_d, axis=1), np.float32)
    i_all = np.ascontiguousarray(np.concatenate(parts_i, axis=1), np.int64)
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    V.merge_topk(d_all, i_all, k, idx.metric != "l2", out_d, out_i)
    return out_d, out_i
