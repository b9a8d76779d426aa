"""VectorStore: FAISS vector search with a recall target, namespaces, filters, TTL and
crash-safe persistence.

A thin facade over three parts, each in its own module:

- the catalog (``_catalog.py``): per-slot external ids, namespaces, expiries, alive bits and
  metadata, with its own serialisation;
- the indexes (``_indexes.py``): the main index (quantised once the store is large, see
  ``_index.py``) and a small exact fresh index taking online adds, with flushes, promotion,
  re-training, compaction and the background swap;
- the searches the single-call fast path does not serve (``_search.py``), with large
  batches split over the process's search threads (``_pool.py``).

One readers-writer lock orders them: searches share it, mutations and swaps take it alone.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from engine.errors import (
    CorruptFileError,
    DimensionError,
    InvalidVectorError,
    VectorStoreError,
)
from engine.memory import _index, _persist, _search
from engine.memory._catalog import Catalog, Where
from engine.memory._indexes import AUTO_KIND, Indexes
from engine.memory._native import V
from engine.memory._pool import search_pool
from engine.memory._rwlock import RWLock

if TYPE_CHECKING:
    from engine.observe.metrics import Metrics

__all__ = ["AUTO_KIND", "Metric", "VectorStore"]

Metric = Literal["cosine", "ip", "l2"]
R = TypeVar("R")
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# search(k=...) beyond this and beyond the store's slots is refused: the (nq, k) answers
# alone would take 12 bytes per column and query (a k of 2**31 once reached the walk)
_MAX_K = 1 << 20
# Up to _SMALL_BATCH queries run in the caller's thread; larger batches are split over the
# process's search threads (see _pool.py for the measurement).
_SMALL_BATCH = 16


def _timed(search: Callable[..., R], histogram: Any) -> Callable[..., R]:
    """``search`` observing its duration in seconds into ``histogram``."""

    @functools.wraps(search)
    def timed(*args: Any, **kwargs: Any) -> R:
        t0 = time.perf_counter()
        try:
            return search(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - t0)

    return timed


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
    ``metrics``: an :class:`engine.observe.Metrics` whose ``engine_vector_search_seconds``
    histogram times every :meth:`search` call.
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
        metrics: Metrics | None = None,
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
        self._largest = metric != "l2"
        self._cat = Catalog()
        self._idx = Indexes(
            self._cat,
            self._lock,
            dim=dim,
            metric=metric,
            spec=index,
            target_recall=self.target_recall,
            promote_at=self.promote_at,
            background=background,
            seed=seed,
        )
        if metrics is not None:
            # PERF: timed by shadowing the method on this instance, so that a store without
            # metrics pays nothing per search (the single-query path is a few µs).
            self.search = _timed(self.search, metrics.vector_search)  # type: ignore[method-assign]

    def _prepare(self, x: Any, what: str) -> F32:
        a = _as_matrix(x, self.dim, what)
        bad = V.normalize(a) if self.metric == "cosine" else V.check_finite(a)
        if bad >= 0:
            raise InvalidVectorError(int(bad), what)
        return a

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
        metas = None
        if metadata is not None:
            if len(metadata) != n:
                raise VectorStoreError(f"{len(metadata)} metadata entries for {n} vectors")
            metas = [_persist.check_meta(m) for m in metadata]
        if ttl is not None and (not isinstance(ttl, int | float) or not ttl > 0):
            raise VectorStoreError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if namespace is not None and not isinstance(namespace, str):
            raise VectorStoreError(f"namespace must be a str or None, got {namespace!r}")
        if n == 0:
            return
        expire = time.time() + ttl if ttl is not None else math.inf
        with self._lock.write():
            self._cat.append(ids_a, namespace, expire, metas)
            self._idx.add(x)
        self._idx.flush()
        self._idx.maybe_rebuild()

    def remove(self, ids: Any) -> None:
        """Remove ``ids``; :class:`UnknownIdError` (and nothing removed) if any is unknown."""
        ids_a = np.array(ids, dtype=np.int64).reshape(-1)
        self._sweep()
        with self._lock.write():
            self._cat.remove(ids_a)
        self._idx.maybe_rebuild()

    def __len__(self) -> int:
        self._sweep()
        return len(self._cat)

    def __contains__(self, id_: int) -> bool:
        self._sweep()
        return id_ in self._cat

    def _sweep(self) -> None:
        """Expire slots whose TTL passed (cheap no-op until the earliest expiry)."""
        now = time.time()
        if not self._cat.expired(now):
            return
        with self._sweep_lock, self._lock.write():
            self._cat.sweep(now)

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
        cat, idx = self._cat, self._idx
        if k > max(_MAX_K, cat.n):
            raise VectorStoreError(
                f"k={k} is more than the store's {cat.n} slots and the {_MAX_K} cap"
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
            if cat.n == 0:
                return np.full((nq, k), -1, np.int64), np.full((nq, k), pad, np.float32)
            want, k = k, min(k, cat.n)  # no more results than slots: the rest is padding
            small = cat.small_namespace(namespace, self.exact_below) if where is None else None
            bitmap = None if small is not None else cat.filter(namespace, where)
            if small is not None:
                d, s = _search.subset(idx, q, k, small)
            elif bitmap is not None and bitmap[1] <= self.exact_below:
                slots = np.empty(bitmap[1], np.int64)
                V.bitmap_to_slots(bitmap[0], cat.n, slots)
                d, s = _search.subset(idx, q, k, slots)
            else:
                alive = max(1, cat.n - cat.dead)
                bm = None if bitmap is None else bitmap[0]
                sel = 1.0 if bitmap is None else bitmap[1] / alive
                if nq <= _SMALL_BATCH:
                    if idx.fresh.ntotal == 0 and idx.walk_kind() == "native":
                        d, s = _search.indexes(idx, q, k, bm, sel)  # FAISS not called
                    else:
                        with _index.single_thread():
                            d, s = _search.indexes(idx, q, k, bm, sel)
                else:
                    step = max(8, -(-nq // (4 * (os.cpu_count() or 1))))
                    parts = search_pool.map(
                        lambda part: _search.indexes(idx, part, k, bm, sel),
                        [q[lo : lo + step] for lo in range(0, nq, step)],
                    )
                    d = np.concatenate([p[0] for p in parts])
                    s = np.concatenate([p[1] for p in parts])
            if k < want:
                d = np.concatenate([d, np.full((nq, want - k), pad, np.float32)], axis=1)
                s = np.concatenate([s, np.full((nq, want - k), -1, np.int64)], axis=1)
            ids = np.empty_like(s)
            V.map_ids(s, cat.ext, ids)
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
            idx, cat = self._idx, self._cat
            main = idx.main
            if main is None or idx.fresh.ntotal or main.kind != "hnsw":
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
                cat.alive if cat.dead else None,
                cat.ext,
                self.metric == "cosine",
            )
        if bad >= 0:
            raise InvalidVectorError(int(bad), "queries")
        return ids, d

    # ------------------------------------------------------------------ re-building
    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background (re-)build; True when none is running. Re-raises its error."""
        return self._idx.wait(timeout)

    def rebuild(self) -> None:
        """Re-build now (synchronously): compaction, re-training and re-tuning."""
        self.wait()
        self._idx.rebuild(force=True)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """count, index kind, bytes per vector, estimated recall, tuned parameters, ..."""
        self._sweep()
        with self._lock.read():
            cat, idx = self._cat, self._idx
            count = len(cat)
            main = idx.main
            index_bytes = idx.index_bytes()
            # everything the store holds per vector besides metadata: the FAISS index (its
            # serialized size, which is what it holds in RAM), fresh vectors, the per-slot
            # arrays (allocated capacity) and the id map's table
            side = cat.nbytes
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
                "walk": idx.walk_kind(),
                "slots": cat.n,
                "tombstones": cat.dead,
                "fresh": idx.fresh.ntotal,
                "namespaces": len(cat.ns_names),
                "trained_on": main.trained_on if main is not None else 0,
                "build_seconds": main.build_seconds if main is not None else 0.0,
                "building": idx.building,
                "native": V.__name__.startswith("engine._native"),
            }

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        """The constructor arguments a saved file records (``background`` is the loader's)."""
        return {
            "dim": self.dim,
            "metric": self.metric,
            "index": self.index_spec,
            "target_recall": self.target_recall,
            "promote_at": self.promote_at,
            "exact_below": self.exact_below,
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> None:
        """Write the store to one SQLite file, crash-safely (temp file, fsync, rename)."""
        self.wait()
        self._sweep()
        with self._lock.read():
            _persist.save(Path(path), self._config(), self._cat, self._idx)

    @classmethod
    def load(cls, path: str | Path, *, background: bool = True) -> VectorStore:
        """Read a store written by :meth:`save`; :class:`CorruptFileError` if unreadable."""
        path = Path(path)
        saved = _persist.read(path)
        store = cls(**saved.config, background=background)
        try:
            store._cat.restore(saved.n, saved.sections, saved.meta, saved.names, str(path))
            store._idx.restore(saved.sections, saved.index_info, saved.n, str(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: malformed store ({exc})") from exc
        return store
