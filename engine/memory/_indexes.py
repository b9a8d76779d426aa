"""The FAISS indexes of a :class:`~engine.memory.VectorStore` and how they are re-built.

Slots ``[0, main_n)`` live in the *main* index (quantised once the store is large, see
``_index.py``); slots ``[main_n, n)`` live in a small exact *fresh* ``IndexFlat`` that takes
online adds and is flushed into the main index in chunks (:meth:`Indexes.flush`).

Re-builds (promotion from exact to quantised, re-training as the data grows, compaction of
tombstones) run on a background thread from a snapshot while searches and adds continue;
adds made meanwhile are replayed into the new index, which is then swapped in under a
short write lock (:meth:`Indexes.swap`), and the catalog renumbers its slots to match.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import faiss
import numpy as np
import numpy.typing as npt

from engine.errors import CorruptFileError, VectorStoreError
from engine.memory import _index
from engine.memory._catalog import Catalog
from engine.memory._rwlock import RWLock

__all__ = ["AUTO_KIND", "FLUSH_AT", "Indexes"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# What "auto" promotes to: measured in benches/bench_memory.py (see docs/memory.md).
AUTO_KIND = "hnsw"
# Fresh vectors move into the main index once there are FLUSH_AT of them, copy-on-write:
# the main index is cloned, the clone takes the inserts with no lock held (HNSW inserts
# cost ~1 ms each at 100k), and is swapped in under a write lock held for microseconds.
# Chunked in-place inserts under the write lock instead stalled searches for 20 ms at p50
# while 10k vectors were added (benches/memory_table.py, 2026-11). A flat scan of 512
# fresh vectors costs ~20 µs per query.
FLUSH_AT = 512
_REPLAY_STEP = 256  # replay granularity of background re-builds


class Indexes:
    """The main and fresh indexes of one store, their flushes and (background) re-builds.

    Searches read :attr:`main`, :attr:`main_n` and :attr:`fresh` under the store's read
    lock; every change to them is made under its write lock.
    """

    #: The byte sections :meth:`dump` writes and :meth:`restore` reads.
    SECTIONS: ClassVar[tuple[str, ...]] = ("fresh", "main")

    def __init__(
        self,
        catalog: Catalog,
        lock: RWLock,
        *,
        dim: int,
        metric: str,
        spec: str,
        target_recall: float,
        promote_at: int,
        background: bool,
        seed: int,
    ) -> None:
        self.catalog = catalog
        self.lock = lock
        self.dim = dim
        self.metric = metric
        self.spec = spec
        self.target_recall = target_recall
        self.promote_at = promote_at
        self.background = background
        self.seed = seed
        self.main: _index.Built | None = None
        self.main_n = 0
        self.fresh = self.new_flat()
        self.auto_kind = AUTO_KIND  # what "auto" promotes to (sq8/flat if it misses the target)
        self.pending: list[F32] | None = None  # adds since the running build's snapshot
        self._builder: threading.Thread | None = None
        self._error: BaseException | None = None
        self._build_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._bytes: tuple[int, int] = (-1, 0)  # (vectors, bytes) last counted; reset on change

    def new_flat(self) -> Any:
        l2 = self.metric == "l2"
        return faiss.IndexFlatL2(self.dim) if l2 else faiss.IndexFlatIP(self.dim)

    def add(self, x: F32) -> None:
        """Take new vectors (the catalog's newest slots) into the fresh index; write-locked."""
        self.fresh.add(x)
        if self.pending is not None:
            self.pending.append(x)
        self._bytes = (-1, 0)

    # ------------------------------------------------------------------ flushing
    def flush(self) -> None:
        """Move fresh vectors into the main index, copy-on-write (see ``FLUSH_AT``)."""
        main = self.main
        if main is None or self.fresh.ntotal < FLUSH_AT:
            return
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing; its successor will pick these up
        try:
            with self.lock.read():
                main = self.main
                if main is None:
                    return
                base_n = self.main_n
                step = self.fresh.ntotal & ~7  # keep main_n a multiple of 8
                chunk = faiss.rev_swig_ptr(self.fresh.get_xb(), step * self.dim)
                chunk = np.array(chunk, np.float32).reshape(step, self.dim)
                index = faiss.clone_index(main.index)  # nobody mutates main in place
            with _index.single_thread():  # leave the other cores to concurrent searches
                index.add(chunk)
            with self.lock.write():
                if self.main is not main or self.main_n != base_n:
                    return  # a re-build swapped in meanwhile and holds these vectors
                self.main = main.with_index(index)
                self.fresh.remove_ids(faiss.IDSelectorRange(0, step))
                self.main_n += step
                self._bytes = (-1, 0)
        finally:
            self._flush_lock.release()

    # ------------------------------------------------------------------ re-building
    def _target_kind(self, alive: int) -> str:
        if self.spec == "flat":
            return "flat"
        if alive < self.promote_at:
            return "flat" if self.main is not None else ""
        return self.auto_kind if self.spec == "auto" else self.spec

    def needs_rebuild(self) -> str:
        """The kind a re-build should make now, ``"compact"`` (same kind, fewer tombstones)
        or ``""`` (none needed)."""
        n, dead = self.catalog.n, self.catalog.dead
        alive = n - dead
        kind = self._target_kind(alive)
        main = self.main
        if main is None:
            if kind and kind != "flat":
                return kind
            if dead >= 1024 and dead * 2 > n:
                return "compact"
            return ""
        if kind and kind != main.kind:
            return kind
        if kind != "flat" and alive >= 2 * main.trained_on and main.kind in ("ivfpq", "hnsw"):
            return kind
        if dead >= 1024 and dead * 4 > n:
            return main.kind
        return ""

    @property
    def building(self) -> bool:
        return self._builder is not None and self._builder.is_alive()

    def maybe_rebuild(self) -> None:
        """Start a re-build when one is due (on a thread when ``background``)."""
        if self.building or self._error is not None or not self.needs_rebuild():
            return
        if self.background:
            t = threading.Thread(
                target=self._rebuild_guarded, name="vectorstore-build", daemon=True
            )
            self._builder = t
            t.start()
        else:
            self.rebuild()

    def _rebuild_guarded(self) -> None:
        try:
            self.rebuild()
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background re-build; True when none is running. Re-raises its error."""
        t = self._builder
        if t is not None:
            t.join(timeout)
        if self._error is not None:
            err, self._error = self._error, None
            raise VectorStoreError(f"background index build failed: {err}") from err
        return t is None or not t.is_alive()

    def _snapshot_vectors(self, slots: I64) -> F32:
        split = int(np.searchsorted(slots, self.main_n))
        parts = []
        if split:
            assert self.main is not None
            parts.append(_index.reconstruct(self.main.index, self.main.kind, slots[:split]))
        if split < len(slots):
            parts.append(self.fresh.reconstruct_batch(slots[split:] - self.main_n))
        if not parts:
            return np.empty((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(parts), np.float32)

    def _build(self, what: str, x: F32) -> _index.Built:
        built = _index.build(what, x, self.metric, self.target_recall, seed=self.seed)
        if self.spec == "auto" and built.recall is not None and built.recall < self.target_recall:
            # the graph/PQ index misses the target on this data: exact SQ8 scan
            alt = _index.build("sq8", x, self.metric, self.target_recall, seed=self.seed)
            if alt.recall is not None and alt.recall > built.recall:
                built = alt
                self.auto_kind = "sq8"
            if built.recall is not None and built.recall < self.target_recall:
                # neither quantiser reaches the target here: stay exact
                built = _index.build("flat", x, self.metric, 1.0)
                self.auto_kind = "flat"
        return built

    def rebuild(self, force: bool = False) -> None:
        """Re-build from a snapshot (when due, or always with ``force``), replay the adds made
        meanwhile and swap the result in."""
        with self._build_lock:
            with self.lock.read():
                what = self.needs_rebuild()
                if not what and not force:
                    return
                if what in ("", "compact"):
                    what = self.main.kind if self.main is not None else "flat"
                snap_n = self.catalog.n
                alive_slots = self.catalog.alive_slots(snap_n)
                x = self._snapshot_vectors(alive_slots)
                self.pending = []
            try:
                built = self._build(what, x)
                del x
                if built.order is not None:
                    alive_slots = alive_slots[built.order]
                replayed = 0
                while True:
                    with self.lock.read():
                        assert self.pending is not None
                        todo = self.pending[replayed:]
                    if sum(len(p) for p in todo) < _REPLAY_STEP:
                        break
                    for part in todo:
                        built.index.add(part)
                    replayed += len(todo)
                with self.lock.write():
                    assert self.pending is not None
                    for part in self.pending[replayed:]:
                        built.index.add(part)
                    self.swap(built, alive_slots, snap_n)
            finally:
                self.pending = None

    def swap(self, built: _index.Built, alive_slots: I64, snap_n: int) -> None:
        """Install ``built`` (the snapshot's alive slots, then every slot added since) and
        renumber the catalog to its ids; write-locked."""
        order = np.concatenate([alive_slots, np.arange(snap_n, self.catalog.n, dtype=np.int64)])
        pad = (-len(order)) % 8
        if pad:
            built.index.add(np.zeros((pad, self.dim), np.float32))
        new_n = self.catalog.compact(order, pad)
        built.grown()  # it took the replayed adds and the padding: views re-taken
        self.main = built
        self.main_n = new_n
        self.fresh = self.new_flat()
        self._bytes = (-1, 0)

    # ------------------------------------------------------------------ introspection
    def index_bytes(self) -> int:
        """Bytes of the indexes (the main one's serialized size, which is what it holds in
        RAM, plus the fresh vectors); cached until the indexes change. Read-locked."""
        main = self.main
        key = (main.index.ntotal if main is not None else 0) + self.fresh.ntotal
        if self._bytes[0] != key:
            size = self.fresh.ntotal * self.dim * 4
            if main is not None:
                size += len(faiss.serialize_index(main.index))
            self._bytes = (key, size)
        return self._bytes[1]

    def walk_kind(self) -> str:
        """Who walks the main index for a search: ``"native"`` (ext/_hnsw.pyx over FAISS's
        graph) or ``"faiss"`` (``index.search``)."""
        main = self.main
        if main is not None and _index.walker(main, self.metric):
            return "native"
        return "faiss"

    # ------------------------------------------------------------------ serialisation
    def dump(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """``(sections, info)``: the fresh vectors and the main index as bytes, and what
        :meth:`restore` needs besides (JSON-serialisable)."""
        main = self.main
        fresh = self.fresh
        sections = {
            "fresh": (
                faiss.rev_swig_ptr(fresh.get_xb(), fresh.ntotal * self.dim).tobytes()
                if fresh.ntotal
                else b""
            ),
            "main": faiss.serialize_index(main.index).tobytes() if main is not None else b"",
        }
        info: dict[str, Any] = {
            "main_n": self.main_n,
            "main": None
            if main is None
            else {
                "kind": main.kind,
                "description": main.description,
                "params": main.params,
                "recall": main.recall,
                "trained_on": main.trained_on,
                "build_seconds": main.build_seconds,
            },
        }
        return sections, info

    def restore(
        self, sections: Mapping[str, bytes], info: Mapping[str, Any], n: int, where: str
    ) -> None:
        """Load what :meth:`dump` wrote into these (empty) indexes, for a catalog of ``n``
        slots; :class:`CorruptFileError` naming ``where`` when it does not fit."""
        dim = self.dim
        main_n = int(info["main_n"])
        fresh = np.frombuffer(sections["fresh"], np.float32)
        if len(fresh) % dim or main_n + len(fresh) // dim != n:
            raise CorruptFileError(f"{where}: fresh vectors disagree with n={n}")
        self.main_n = main_n
        if len(fresh):
            self.fresh.add(fresh.reshape(-1, dim))
        m = info["main"]
        if m is None:
            return
        try:
            index = faiss.deserialize_index(np.frombuffer(sections["main"], np.uint8))
        except RuntimeError as exc:
            raise CorruptFileError(f"{where}: FAISS index unreadable ({exc})") from exc
        if index.ntotal != main_n or index.d != dim:
            raise CorruptFileError(f"{where}: FAISS index disagrees with the slot arrays")
        self.main = _index.Built(
            index,
            m["kind"],
            m["description"],
            {k: int(v) for k, v in m["params"].items()},
            m["recall"],
            int(m["trained_on"]),
            float(m["build_seconds"]),
        )
        try:
            _index.check_graph(self.main, self.metric)
        except ValueError as exc:
            raise CorruptFileError(f"{where}: FAISS graph unusable ({exc})") from exc
        if self.spec == "auto" and m["kind"] != "flat":
            self.auto_kind = m["kind"]
