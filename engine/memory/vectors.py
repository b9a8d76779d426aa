"""VectorStore: FAISS vector search with a recall target, namespaces, filters, TTL and
crash-safe persistence.

Layout. Every stored vector has a *slot* (its FAISS id). Slots ``[0, main_n)`` live in the
*main* index (quantised once the store is large, see ``_index.py``); slots ``[main_n, n)``
live in a small exact *fresh* ``IndexFlat`` that takes online adds and is flushed into the
main index in small chunks. A search asks both and merges the two top-k lists natively.
Per-slot arrays hold the external id, namespace code (allocated on the first namespace, as
narrow as the codes allow), expiry (allocated on the first TTL) and an alive bitmap; removals,
upserts and expiries only clear the alive bit (a tombstone), excluded through
``faiss.IDSelectorBitmap``; re-builds compact them away.

Re-builds (promotion from exact to quantised, re-training as the data grows, compaction)
run on a background thread from a snapshot while searches and adds continue; adds made
meanwhile are replayed into the new index, which is then swapped in under a short write lock.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from engine.errors import (
    DimensionError,
    InvalidVectorError,
    UnknownIdError,
    VectorStoreError,
)
from engine.memory import _index, _persist
from engine.memory._native import V
from engine.memory._rwlock import RWLock

__all__ = ["Metric", "VectorStore"]

Metric = Literal["cosine", "ip", "l2"]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Scalar = str | int | float | bool | None
Where = Mapping[str, Scalar | Sequence[Scalar]]

# Fresh vectors move into the main index once there are _FLUSH_AT of them, copy-on-write:
# the main index is cloned, the clone takes the inserts with no lock held (HNSW inserts
# cost ~1 ms each at 100k), and is swapped in under a write lock held for microseconds.
# Chunked in-place inserts under the write lock instead stalled searches for 20 ms at p50
# while 10k vectors were added (benches/memory_table.py, 2026-11). A flat scan of 512
# fresh vectors costs ~20 µs per query.
_FLUSH_AT = 512
_FLUSH_DEFAULT = 256  # replay granularity of background re-builds
_NO_NS = -1
_MAX_SLOTS = 2**31 - 1  # the id map stores int32 slots
# search(k=...) beyond this and beyond the store's slots is refused: the (nq, k) answers
# alone would take 12 bytes per column and query (a k of 2**31 once reached the walk)
_MAX_K = 1 << 20
# Batches are split over a pool of threads each running FAISS on one OpenMP thread:
# dynamic scheduling beats OpenMP's static split on a shared machine, 2-4x batch QPS
# (benches/memory_table.py, 2026-11). Up to _SMALL_BATCH queries run in the caller.
_SMALL_BATCH = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _search_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1,
                thread_name_prefix="vectorstore-search",
                initializer=faiss.omp_set_num_threads,
                initargs=(1,),
            )
        return _pool


# What "auto" promotes to: measured in benches/bench_memory.py (see docs/memory.md).
AUTO_KIND = "hnsw"


def _as_matrix(x: Any, dim: int, what: str) -> F32:
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise VectorStoreError(f"{what} must be a float array: {exc}") from exc
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise VectorStoreError(f"{what} must be 2-D (n, dim), got shape {a.shape}")
    if a.shape[1] != dim:
        raise DimensionError(dim, a.shape[1], what)
    return np.array(a, dtype=np.float32, order="C", copy=True)


class VectorStore:
    """Vectors with int64 ids, searched by FAISS to a recall target.

    ``index``: ``"auto"`` (exact while small, then the measured best quantised kind),
    ``"flat"``, ``"ivfpq"``, ``"hnsw"`` (HNSW12 over SQ8), ``"sq8"`` or a FAISS factory
    string. Quantised kinds are exact until ``promote_at`` vectors, then trained on the
    data and tuned (``nprobe``, ``k_factor``, ``efSearch``) so that recall@10 on a sample of
    the store's own vectors meets ``target_recall``; re-trained when the data doubles.
    ``metric``: ``"cosine"`` (vectors normalised, scores are cosines), ``"ip"`` or ``"l2"``
    (scores are squared distances, ascending). Thread-safe: searches run concurrently.
    """

    def __init__(
        self,
        dim: int,
        metric: Metric = "cosine",
        index: str = "auto",
        target_recall: float = 0.95,
        *,
        promote_at: int = 4096,
        background: bool = True,
        exact_below: int = 4096,
        seed: int = 0,
    ) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise VectorStoreError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("cosine", "ip", "l2"):
            raise VectorStoreError(f"metric must be 'cosine', 'ip' or 'l2', got {metric!r}")
        if not 0.0 < target_recall <= 1.0:
            raise VectorStoreError(f"target_recall must be in (0, 1], got {target_recall!r}")
        if not isinstance(index, str) or not index:
            raise VectorStoreError(f"index must be a kind name or factory string, got {index!r}")
        if index not in ("auto", *_index.KINDS):
            try:  # validate a factory string now rather than at promotion time
                _index._new_index(index, dim, metric, 1 << 20)
            except RuntimeError as exc:
                raise VectorStoreError(f"bad FAISS factory string {index!r}: {exc}") from exc
        self.dim = dim
        self.metric: Metric = metric
        self.index_spec = index
        self.target_recall = float(target_recall)
        self.promote_at = max(1, int(promote_at))
        self.background = background
        self.exact_below = int(exact_below)
        self.seed = seed
        self._lock = RWLock()
        self._sweep_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._largest = metric != "l2"
        # per-slot state
        self._n = 0
        self._ext = np.empty(0, np.int64)
        self._ns: npt.NDArray[Any] | None = None  # int8/16/32 codes, once a namespace is used
        self._expire: npt.NDArray[np.float64] | None = None  # once a TTL is used
        self._alive = np.zeros(8, np.uint8)
        self._dead = 0
        self._next_expiry = math.inf
        self._ids = V.SlotMap(0)  # external id -> slot (keys read through self._ext)
        self._ns_codes: dict[str, int] = {}
        self._ns_size: dict[int, int] = {}  # slots per namespace code (dead ones included)
        self._ns_slots: dict[int, I64] = {}  # cached slot lists of small namespaces
        self._ns_names: list[str] = []
        self._meta: dict[int, dict[str, Any]] = {}
        self._postings: dict[tuple[str, Scalar], set[int]] = {}
        # indexes
        self._main: _index.Built | None = None
        self._main_n = 0
        self._auto_kind = AUTO_KIND  # what "auto" promotes to (sq8/flat if it misses the target)
        self._fresh = self._new_flat()
        # background build
        self._builder: threading.Thread | None = None
        self._build_error: BaseException | None = None
        self._pending: list[F32] | None = None  # adds since the build's snapshot
        self._bytes_cache: tuple[int, int] = (-1, 0)

    # ------------------------------------------------------------------ helpers
    def _new_flat(self) -> Any:
        return faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)

    def _prepare(self, x: Any, what: str) -> F32:
        a = _as_matrix(x, self.dim, what)
        bad = V.normalize(a) if self.metric == "cosine" else V.check_finite(a)
        if bad >= 0:
            raise InvalidVectorError(int(bad), what)
        return a

    def _grow(self, need: int) -> None:
        cap = len(self._ext)
        if need <= cap:
            return
        if need > _MAX_SLOTS:
            raise VectorStoreError(f"a store holds at most {_MAX_SLOTS} slots")
        # x1.25: the per-slot arrays count in the store's bytes per vector (stats())
        new = min(max(need, cap + cap // 4, 1024), _MAX_SLOTS)
        for name, fill in (("_ext", -1), ("_ns", _NO_NS), ("_expire", math.inf)):
            old = getattr(self, name)
            if old is None:
                continue
            arr = np.full(new, fill, dtype=old.dtype)
            arr[: len(old)] = old
            setattr(self, name, arr)
        alive = np.zeros((new + 7) // 8 + 8, np.uint8)
        alive[: len(self._alive)] = self._alive
        self._alive = alive

    def _ns_room(self, code: int) -> npt.NDArray[Any]:
        """The per-slot namespace array, created or widened so that it holds ``code``."""
        dtype = np.int8 if code <= 127 else np.int16 if code <= 32767 else np.int32
        ns = self._ns
        if ns is None:
            ns = self._ns = np.full(len(self._ext), _NO_NS, dtype)
        elif np.iinfo(ns.dtype).max < code:
            ns = self._ns = ns.astype(dtype)
        return ns

    def _expire_room(self) -> npt.NDArray[np.float64]:
        if self._expire is None:
            self._expire = np.full(len(self._ext), math.inf, np.float64)
        return self._expire

    def _ns_code(self, namespace: str | None, create: bool) -> int:
        if namespace is None:
            return _NO_NS
        if not isinstance(namespace, str):
            raise VectorStoreError(f"namespace must be a str or None, got {namespace!r}")
        code = self._ns_codes.get(namespace)
        if code is None:
            if not create:
                return -2  # unknown: matches nothing
            code = len(self._ns_names)
            self._ns_codes[namespace] = code
            self._ns_names.append(namespace)
        return code

    def _index_meta(self, slot: int, meta: dict[str, Any]) -> None:
        self._meta[slot] = meta
        for key, value in meta.items():
            if value is None or isinstance(value, str | int | float | bool):
                self._postings.setdefault((key, value), set()).add(slot)

    def _forget_meta(self, slot: int) -> None:
        meta = self._meta.pop(slot, None)
        if meta is None:
            return
        for key, value in meta.items():
            if value is None or isinstance(value, str | int | float | bool):
                posting = self._postings.get((key, value))
                if posting is not None:
                    posting.discard(slot)
                    if not posting:
                        del self._postings[(key, value)]

    def _kill(self, slots: I64) -> None:
        """Tombstone ``slots`` (alive ones); caller holds the write lock."""
        for s in slots.tolist():
            if (self._alive[s >> 3] >> (s & 7)) & 1:
                self._alive[s >> 3] &= ~(1 << (s & 7)) & 0xFF
                self._dead += 1
            self._forget_meta(s)

    # ------------------------------------------------------------------ mutation
    def add(
        self,
        ids: Any,
        vectors: Any,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        namespace: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Add (or replace: upsert) ``vectors`` (n, dim) under int64 ``ids``.

        ``metadata``: one JSON-serialisable dict (or None) per vector; scalar values can be
        filtered on with ``search(where=...)``. ``namespace`` scopes the batch (e.g. an agent
        or tenant). ``ttl``: seconds until the vectors expire and stop being found.
        """
        try:
            ids_a = np.array(ids, dtype=np.int64, copy=True).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise VectorStoreError(f"ids must be int64 values: {exc}") from exc
        x = self._prepare(vectors, "vectors")
        n = len(x)
        if len(ids_a) != n:
            raise VectorStoreError(f"{len(ids_a)} ids for {n} vectors")
        if n and len(np.unique(ids_a)) != n:
            raise VectorStoreError("ids repeat within one add() call")
        if metadata is not None:
            if len(metadata) != n:
                raise VectorStoreError(f"{len(metadata)} metadata entries for {n} vectors")
            metas = [_persist.check_meta(m) for m in metadata]
        if ttl is not None and (not isinstance(ttl, int | float) or not ttl > 0):
            raise VectorStoreError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if n == 0:
            return
        expire = time.time() + ttl if ttl is not None else math.inf
        with self._lock.write():
            code = self._ns_code(namespace, create=True)
            old = np.empty(n, np.int64)
            if self._ids.get_many(self._ext, ids_a, old) < n:
                self._kill(old[old >= 0])
            start = self._n
            slots = np.arange(start, start + n, dtype=np.int64)
            self._grow(start + n)
            self._ext[start : start + n] = ids_a
            if code >= 0:
                self._ns_room(code)[start : start + n] = code
                self._ns_size[code] = self._ns_size.get(code, 0) + n
                self._ns_slots.pop(code, None)
            elif self._ns is not None:
                self._ns[start : start + n] = _NO_NS
            if ttl is not None:
                self._expire_room()[start : start + n] = expire
            elif self._expire is not None:
                self._expire[start : start + n] = math.inf
            V.bitmap_set(slots, self._alive)
            self._n = start + n
            self._ids.put_many(self._ext, slots)
            if metadata is not None:
                for s, m in zip(slots.tolist(), metas, strict=True):
                    if m:
                        self._index_meta(s, m)
            self._fresh.add(x)
            if self._pending is not None:
                self._pending.append(x)
            self._next_expiry = min(self._next_expiry, expire)
            self._bytes_cache = (-1, 0)
        self._flush()
        self._maybe_rebuild()

    def remove(self, ids: Any) -> None:
        """Remove ``ids``; :class:`UnknownIdError` (and nothing removed) if any is unknown."""
        ids_a = np.array(ids, dtype=np.int64).reshape(-1)
        self._sweep()
        with self._lock.write():
            slots = np.empty(len(ids_a), np.int64)
            if self._ids.get_many(self._ext, ids_a, slots):
                raise UnknownIdError(ids_a[slots < 0].tolist())
            self._kill(slots)
            self._ids.remove_many(self._ext, ids_a)
        self._maybe_rebuild()

    def __len__(self) -> int:
        self._sweep()
        return len(self._ids)

    def __contains__(self, id_: int) -> bool:
        self._sweep()
        out = np.empty(1, np.int64)
        return bool(self._ids.get_many(self._ext, np.array([id_], np.int64), out) == 0)

    def _flush(self) -> None:
        """Move fresh vectors into the main index, copy-on-write (see ``_FLUSH_AT``)."""
        main = self._main
        if main is None or self._fresh.ntotal < _FLUSH_AT:
            return
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing; its successor will pick these up
        try:
            with self._lock.read():
                main = self._main
                if main is None:
                    return
                base_n = self._main_n
                step = self._fresh.ntotal & ~7  # keep main_n a multiple of 8
                chunk = faiss.rev_swig_ptr(self._fresh.get_xb(), step * self.dim)
                chunk = np.array(chunk, np.float32).reshape(step, self.dim)
                index = faiss.clone_index(main.index)  # nobody mutates main in place
            with _index.single_thread():  # leave the other cores to concurrent searches
                index.add(chunk)
            with self._lock.write():
                if self._main is not main or self._main_n != base_n:
                    return  # a re-build swapped in meanwhile and holds these vectors
                self._main = replace(main, index=index, _walk=None, _codes=None)
                self._fresh.remove_ids(faiss.IDSelectorRange(0, step))
                self._main_n += step
                self._bytes_cache = (-1, 0)
        finally:
            self._flush_lock.release()

    def _sweep(self) -> None:
        """Expire slots whose TTL passed (cheap no-op until the earliest expiry)."""
        now = time.time()
        if now < self._next_expiry or self._expire is None:
            return
        with self._sweep_lock, self._lock.write():
            out = np.empty(self._n, np.int64)
            count, nxt = V.ttl_sweep(self._expire[: self._n], now, self._alive, out)
            gone = out[:count]
            self._dead += count
            for s in gone.tolist():
                self._forget_meta(s)
            self._ids.remove_many(self._ext, self._ext[gone])
            self._next_expiry = nxt

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: Any,
        k: int = 10,
        namespace: str | None = None,
        where: Where | None = None,
    ) -> tuple[I64, F32]:
        """Top-``k`` of each query row: ``(ids, scores)``, both ``(nq, k)``, best first.

        Missing results are id -1 (score -inf, or +inf for l2). ``namespace`` restricts to
        one namespace; ``where`` to vectors whose metadata matches every key (a value, or a
        list of accepted values). Filters run inside FAISS through ``IDSelectorBitmap``;
        a filter matching at most ``exact_below`` vectors is answered exactly instead.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise VectorStoreError(f"k must be a positive int, got {k!r}")
        if k > max(_MAX_K, self._n):
            raise VectorStoreError(
                f"k={k} is more than the store's {self._n} slots and the {_MAX_K} cap"
            )
        if namespace is None and where is None:
            fast = self._search_walk(queries, k)
            if fast is not None:
                return fast
        q = self._prepare(queries, "queries")
        self._sweep()
        with self._lock.read():
            nq = len(q)
            pad = -np.inf if self._largest else np.inf
            if self._n == 0:
                return np.full((nq, k), -1, np.int64), np.full((nq, k), pad, np.float32)
            want, k = k, min(k, self._n)  # no more results than slots: the rest is padding
            small = self._small_namespace(namespace) if where is None else None
            bitmap = None if small is not None else self._filter(namespace, where)
            if small is not None:
                d, s = self._search_subset(q, k, small)
            elif bitmap is not None and bitmap[1] <= self.exact_below:
                slots = np.empty(bitmap[1], np.int64)
                V.bitmap_to_slots(bitmap[0], self._n, slots)
                d, s = self._search_subset(q, k, slots)
            else:
                alive = max(1, self._n - self._dead)
                bm = None if bitmap is None else bitmap[0]
                sel = 1.0 if bitmap is None else bitmap[1] / alive
                if nq <= _SMALL_BATCH:
                    if self._fresh.ntotal == 0 and self._walk_kind(self._main) == "native":
                        d, s = self._search_indexes(q, k, bm, sel)  # FAISS not called
                    else:
                        with _index.single_thread():
                            d, s = self._search_indexes(q, k, bm, sel)
                else:
                    pool = _search_pool()
                    step = max(8, -(-nq // (4 * (os.cpu_count() or 1))))
                    futures = [
                        pool.submit(self._search_indexes, q[lo : lo + step], k, bm, sel)
                        for lo in range(0, nq, step)
                    ]
                    parts = [f.result() for f in futures]
                    d = np.concatenate([p[0] for p in parts])
                    s = np.concatenate([p[1] for p in parts])
            if k < want:
                d = np.concatenate([d, np.full((nq, want - k), pad, np.float32)], axis=1)
                s = np.concatenate([s, np.full((nq, want - k), -1, np.int64)], axis=1)
            ids = np.empty_like(s)
            V.map_ids(s, self._ext, ids)
            return ids, d

    def _search_walk(self, queries: Any, k: int) -> tuple[I64, F32] | None:
        """A few unfiltered queries in one native call: finite check, cosine normalisation
        (folded into the query weights), the walk and the id mapping; None when the walk
        does not apply (other kinds, fresh vectors pending, input needing conversion) and
        the general path takes over.

        PERF: the general path's Python steps cost ~15 µs per query on an idle cache and
        ~30 µs when another index ran in between (100k, interleaved with hnswlib,
        2026-11-21); this path ~5 µs."""
        if type(queries) is not np.ndarray or queries.dtype != np.float32:
            return None
        q = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if q.ndim != 2 or q.shape[1] != self.dim or not 0 < len(q) <= _SMALL_BATCH:
            return None
        if not q.flags.c_contiguous:
            return None
        self._sweep()
        with self._lock.read():
            main = self._main
            if main is None or self._fresh.ntotal or main.kind != "hnsw":
                return None
            walk = _index.walker(main, self.metric)
            if walk is None:
                return None
            ids = np.full((len(q), k), -1, np.int64)
            d = np.full((len(q), k), -np.inf if self._largest else np.inf, np.float32)
            bad = walk.search(
                q,
                min(k, walk.ntotal),  # the columns past the graph's nodes stay padding
                main.params.get("efSearch", 16),
                d,
                ids,
                self._alive if self._dead else None,
                self._ext,
                self.metric == "cosine",
            )
        if bad >= 0:
            raise InvalidVectorError(int(bad), "queries")
        return ids, d

    def _filter(self, namespace: str | None, where: Where | None) -> tuple[Any, int] | None:
        """Bitmap of eligible slots and its population, or None when every alive slot is."""
        if namespace is None and where is None and self._dead == 0:
            return None
        n = self._n
        code = self._ns_code(namespace, create=False)
        out = np.zeros((n + 7) // 8 + 8, np.uint8)
        if code == -2 or (code >= 0 and self._ns is None):
            return out, 0  # unknown, or known but holding no slot
        if self._ns is None:  # no namespace in use: the alive bits (none are set past n)
            nb = (n + 7) // 8
            out[:nb] = self._alive[:nb]
            count = V.bitmap_count(out)
        else:
            count = V.filter_bitmap(self._ns[:n], code, self._alive, out)
        if where:
            if not isinstance(where, Mapping):
                raise VectorStoreError(f"where must be a mapping, got {type(where).__name__}")
            for key, want in where.items():
                values = list(want) if isinstance(want, list | tuple | set) else [want]
                keep = np.zeros_like(out)
                for v in values:
                    if not (v is None or isinstance(v, str | int | float | bool)):
                        raise VectorStoreError(f"where[{key!r}] must be scalars, got {v!r}")
                    posting = self._postings.get((key, v))
                    if posting:
                        V.bitmap_set(np.fromiter(posting, np.int64, len(posting)), keep)
                count = V.bitmap_and(out, keep, out)
        return out, count

    def _small_namespace(self, namespace: str | None) -> I64 | None:
        """Alive slots of a namespace of at most ``exact_below`` slots (cached per namespace,
        skipping the O(n) bitmap), or None when that does not apply."""
        if namespace is None:
            return None
        code = self._ns_code(namespace, create=False)
        if code == -2 or (code >= 0 and self._ns is None):
            return np.empty(0, np.int64)  # unknown, or known but holding no slot
        if code < 0 or self._ns_size.get(code, 0) > self.exact_below:
            return None
        slots = self._ns_slots.get(code)
        if slots is None:
            assert self._ns is not None
            slots = np.flatnonzero(self._ns[: self._n] == code).astype(np.int64)
            self._ns_slots[code] = slots
        out = np.empty(len(slots), np.int64)
        return out[: V.filter_alive(slots, self._alive, out)]

    def _search_subset(self, q: F32, k: int, slots: I64) -> tuple[F32, I64]:
        """Top-k over the (few) eligible ``slots`` (ascending), scored natively on the
        stored codes."""
        nq = len(q)
        count = len(slots)
        pad = -np.inf if self._largest else np.inf
        d_out = np.full((nq, k), pad, np.float32)
        s_out = np.full((nq, k), -1, np.int64)
        if count == 0:
            return d_out, s_out
        split = int(np.searchsorted(slots, self._main_n))
        l2 = self.metric == "l2"
        scores = np.empty((nq, count), np.float32)
        if split:
            main = self._main
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
            rows = faiss.rev_swig_ptr(self._fresh.get_xb(), self._fresh.ntotal * self.dim)
            rows = rows.reshape(self._fresh.ntotal, self.dim)
            local = np.ascontiguousarray(slots[split:] - self._main_n)
            for r in range(nq):
                V.score_f32(rows, local, q[r], l2, scores[r, split:])
        cand = np.ascontiguousarray(np.broadcast_to(slots, (nq, count)))
        V.merge_topk(scores, cand, k, self._largest, d_out, s_out)  # ties: lower slot first
        return d_out, s_out

    def _search_indexes(self, q: F32, k: int, bitmap: Any, selectivity: float) -> tuple[F32, I64]:
        parts_d: list[F32] = []
        parts_i: list[I64] = []
        main = self._main
        walk = _index.walker(main, self.metric) if main is not None and self._main_n else None
        if walk is not None:
            assert main is not None
            widen = 1.0 / math.sqrt(max(selectivity, 1e-6))
            ef = math.ceil(main.params.get("efSearch", 16) * widen)
            d = np.empty((len(q), k), np.float32)
            i = np.empty((len(q), k), np.int64)
            walk.search(q, k, ef, d, i, bitmap)
            parts_d.append(d)
            parts_i.append(i)
        elif main is not None and self._main_n:
            sel = None
            if bitmap is not None:
                sel = faiss.IDSelectorBitmap(self._main_n, faiss.swig_ptr(bitmap))
            if sel is None:
                params, keep = main.plain_params()
            else:
                params, keep = _index.make_params(main.kind, main.params, sel, selectivity)
            d, i = main.index.search(q, k, params=params)
            del keep
            parts_d.append(d)
            parts_i.append(i)
        nf = self._fresh.ntotal
        if nf:
            params = None
            if bitmap is not None:
                tail = bitmap[self._main_n >> 3 :]
                sel = faiss.IDSelectorBitmap(nf, faiss.swig_ptr(tail))
                params = faiss.SearchParameters()
                params.sel = sel
            d, i = self._fresh.search(q, min(k, nf), params=params)
            i = np.where(i >= 0, i + self._main_n, -1)
            parts_d.append(d)
            parts_i.append(i)
        if len(parts_d) == 1 and parts_d[0].shape[1] == k:
            return parts_d[0], parts_i[0]
        d_all = np.ascontiguousarray(np.concatenate(parts_d, axis=1), np.float32)
        i_all = np.ascontiguousarray(np.concatenate(parts_i, axis=1), np.int64)
        out_d = np.empty((len(q), k), np.float32)
        out_i = np.empty((len(q), k), np.int64)
        V.merge_topk(d_all, i_all, k, self._largest, out_d, out_i)
        return out_d, out_i

    # ------------------------------------------------------------------ re-building
    def _target_kind(self, alive: int) -> str:
        if self.index_spec == "flat":
            return "flat"
        if alive < self.promote_at:
            return "flat" if self._main is not None else ""
        return self._auto_kind if self.index_spec == "auto" else self.index_spec

    def _needs_rebuild(self) -> str:
        alive = self._n - self._dead
        kind = self._target_kind(alive)
        main = self._main
        if main is None:
            if kind and kind != "flat":
                return kind
            if self._dead >= 1024 and self._dead * 2 > self._n:
                return "compact"
            return ""
        if kind and kind != main.kind:
            return kind
        if kind != "flat" and alive >= 2 * main.trained_on and main.kind in ("ivfpq", "hnsw"):
            return kind
        if self._dead >= 1024 and self._dead * 4 > self._n:
            return main.kind
        return ""

    def _maybe_rebuild(self) -> None:
        if self._builder is not None and self._builder.is_alive():
            return
        if self._build_error is not None:
            return
        if not self._needs_rebuild():
            return
        if self.background:
            t = threading.Thread(
                target=self._rebuild_guarded, name="vectorstore-build", daemon=True
            )
            self._builder = t
            t.start()
        else:
            self._rebuild()

    def _rebuild_guarded(self) -> None:
        try:
            self._rebuild()
        except BaseException as exc:  # surfaced by wait() / stats()
            self._build_error = exc

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background (re-)build; True when none is running. Re-raises its error."""
        t = self._builder
        if t is not None:
            t.join(timeout)
        if self._build_error is not None:
            err, self._build_error = self._build_error, None
            raise VectorStoreError(f"background index build failed: {err}") from err
        return t is None or not t.is_alive()

    def rebuild(self) -> None:
        """Re-build now (synchronously): compaction, re-training and re-tuning."""
        self.wait()
        self._rebuild(force=True)

    def _snapshot_vectors(self, slots: I64) -> F32:
        split = int(np.searchsorted(slots, self._main_n))
        parts = []
        if split:
            assert self._main is not None
            parts.append(_index.reconstruct(self._main.index, self._main.kind, slots[:split]))
        if split < len(slots):
            parts.append(self._fresh.reconstruct_batch(slots[split:] - self._main_n))
        if not parts:
            return np.empty((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(parts), np.float32)

    def _rebuild(self, force: bool = False) -> None:
        with self._build_lock:
            with self._lock.read():
                what = self._needs_rebuild()
                if not what and not force:
                    return
                if what in ("", "compact"):
                    what = self._main.kind if self._main is not None else "flat"
                snap_n = self._n
                nb = (snap_n + 7) // 8 + 8
                alive_slots = np.empty(snap_n, np.int64)
                count = V.bitmap_to_slots(self._alive[:nb], snap_n, alive_slots)
                alive_slots = alive_slots[:count]
                x = self._snapshot_vectors(alive_slots)
                self._pending = []
            try:
                built = _index.build(what, x, self.metric, self.target_recall, seed=self.seed)
                if (
                    self.index_spec == "auto"
                    and built.recall is not None
                    and built.recall < self.target_recall
                ):
                    # the graph/PQ index misses the target on this data: exact SQ8 scan
                    alt = _index.build("sq8", x, self.metric, self.target_recall, seed=self.seed)
                    if alt.recall is not None and alt.recall > built.recall:
                        built = alt
                        self._auto_kind = "sq8"
                    if built.recall is not None and built.recall < self.target_recall:
                        # neither quantiser reaches the target here: stay exact
                        built = _index.build("flat", x, self.metric, 1.0)
                        self._auto_kind = "flat"
                del x
                if built.order is not None:
                    alive_slots = alive_slots[built.order]
                replayed = 0
                while True:
                    with self._lock.read():
                        assert self._pending is not None
                        todo = self._pending[replayed:]
                    if sum(len(p) for p in todo) < _FLUSH_DEFAULT:
                        break
                    for part in todo:
                        built.index.add(part)
                    replayed += len(todo)
                with self._lock.write():
                    assert self._pending is not None
                    for part in self._pending[replayed:]:
                        built.index.add(part)
                    self._swap(built, alive_slots, snap_n)
            finally:
                self._pending = None

    def _swap(self, built: _index.Built, alive_slots: I64, snap_n: int) -> None:
        """Install ``built`` (snapshot's alive slots, then all slots added since); write-locked."""
        n = self._n
        order = np.concatenate([alive_slots, np.arange(snap_n, n, dtype=np.int64)])
        pad = (-len(order)) % 8
        if pad:
            built.index.add(np.zeros((pad, self.dim), np.float32))
        new_n = len(order) + pad
        ext = np.full(max(new_n, 1024), -1, np.int64)
        ext[: len(order)] = self._ext[order]
        ns = expire = None
        if self._ns is not None:
            ns = np.full(len(ext), _NO_NS, self._ns.dtype)
            ns[: len(order)] = self._ns[order]
        if self._expire is not None:
            expire = np.full(len(ext), math.inf, np.float64)
            expire[: len(order)] = self._expire[order]
        bits = np.unpackbits(self._alive, bitorder="little")[order].astype(bool)
        alive = np.zeros((len(ext) + 7) // 8 + 8, np.uint8)
        new_slots = np.flatnonzero(bits).astype(np.int64)
        V.bitmap_set(new_slots, alive)
        old_to_new = np.full(max(n, 1), -1, np.int64)
        old_to_new[order] = np.arange(len(order), dtype=np.int64)
        meta = {int(old_to_new[s]): m for s, m in self._meta.items() if old_to_new[s] >= 0}
        self._ext, self._ns, self._expire, self._alive = ext, ns, expire, alive
        self._n = new_n
        self._dead = new_n - len(new_slots)
        self._ids.clear(len(new_slots))
        self._ids.put_many(ext, new_slots)
        self._meta = {}
        self._postings = {}
        for s, m in meta.items():
            if (alive[s >> 3] >> (s & 7)) & 1:
                self._index_meta(s, m)
        built._walk = built._codes = None  # the index grew since the build: views re-taken
        self._main = built
        self._main_n = new_n
        self._fresh = self._new_flat()
        self._ns_size = {}
        if ns is not None:
            codes, sizes = np.unique(ns[:new_n], return_counts=True)
            self._ns_size = {int(c): int(z) for c, z in zip(codes, sizes, strict=True) if c >= 0}
        self._ns_slots = {}
        self._bytes_cache = (-1, 0)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """count, index kind, bytes per vector, estimated recall, tuned parameters, ..."""
        self._sweep()
        with self._lock.read():
            count = len(self._ids)
            main = self._main
            key = (main.index.ntotal if main is not None else 0) + self._fresh.ntotal
            if self._bytes_cache[0] != key:
                size = self._fresh.ntotal * self.dim * 4
                if main is not None:
                    size += len(faiss.serialize_index(main.index))
                self._bytes_cache = (key, size)
            index_bytes = self._bytes_cache[1]
            # everything the store holds per vector besides metadata: the FAISS index (its
            # serialized size, which is what it holds in RAM), fresh vectors, the per-slot
            # arrays (allocated capacity) and the id map's table
            side = self._ext.nbytes + self._alive.nbytes + self._ids.nbytes
            side += self._ns.nbytes if self._ns is not None else 0
            side += self._expire.nbytes if self._expire is not None else 0
            return {
                "count": count,
                "dim": self.dim,
                "metric": self.metric,
                "index": main.kind if main is not None else "flat",
                "description": main.description if main is not None else "Flat",
                "params": dict(main.params) if main is not None else {},
                "target_recall": self.target_recall,
                "recall_estimate": main.recall if main is not None else 1.0,
                "index_bytes": index_bytes,
                "bytes": index_bytes + side,
                "bytes_per_vector": (index_bytes + side) / count if count else 0.0,
                "index_bytes_per_vector": index_bytes / count if count else 0.0,
                "walk": self._walk_kind(main),
                "slots": self._n,
                "tombstones": self._dead,
                "fresh": self._fresh.ntotal,
                "namespaces": len(self._ns_names),
                "trained_on": main.trained_on if main is not None else 0,
                "build_seconds": main.build_seconds if main is not None else 0.0,
                "building": self._builder is not None and self._builder.is_alive(),
                "native": V.__name__.startswith("engine._native"),
            }

    def _walk_kind(self, main: _index.Built | None) -> str:
        """Who walks the main index for a search: ``"native"`` (ext/_hnsw.pyx over FAISS's
        graph) or ``"faiss"`` (``index.search``)."""
        if main is not None and _index.walker(main, self.metric):
            return "native"
        return "faiss"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the store to one SQLite file, crash-safely (temp file, fsync, rename)."""
        self.wait()
        self._sweep()
        with self._lock.read():
            _persist.save(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, background: bool = True) -> VectorStore:
        """Read a store written by :meth:`save`; :class:`CorruptFileError` if unreadable."""
        return _persist.load(cls, Path(path), background=background)
