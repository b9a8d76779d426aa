"""What a :class:`~engine.memory.VectorStore` knows about each slot, apart from its vector.

Every stored vector has a *slot* (its FAISS id). Per slot the catalog holds the external id,
the namespace code (an array allocated on the first namespace, as narrow as the codes
allow), the expiry (allocated on the first TTL), an alive bit and the metadata (with
postings for ``where=`` filters); an id map answers id -> slot. Removals, upserts and
expiries only clear the alive bit (a tombstone); :meth:`Catalog.compact` drops them when
the indexes are re-built.

The catalog takes no lock of its own: the store calls it under its readers-writer lock
(mutations under the write side). It serialises itself (:meth:`Catalog.dump`,
:meth:`Catalog.restore`) for ``_persist``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from engine.errors import CorruptFileError, UnknownIdError, VectorStoreError
from engine.memory._native import V

__all__ = ["NO_NS", "UNKNOWN_NS", "Catalog", "Scalar", "Where"]

I64 = npt.NDArray[np.int64]
Scalar = str | int | float | bool | None
Where = Mapping[str, Scalar | Sequence[Scalar]]

NO_NS = -1  # the namespace code of a slot added without one
UNKNOWN_NS = -2  # a namespace never used: matches nothing
MAX_SLOTS = 2**31 - 1  # the id map stores int32 slots


class Catalog:
    """Per-slot ids, namespaces, expiries, alive bits and metadata of one store."""

    #: The byte sections :meth:`dump` writes and :meth:`restore` reads.
    SECTIONS: ClassVar[tuple[str, ...]] = ("ext", "ns", "expire", "alive")

    __slots__ = (
        "alive",
        "dead",
        "expire",
        "ext",
        "ids",
        "meta",
        "n",
        "next_expiry",
        "ns",
        "ns_codes",
        "ns_names",
        "ns_size",
        "ns_slots",
        "postings",
    )

    def __init__(self) -> None:
        self.n = 0  # slots in use, dead ones included
        self.ext = np.empty(0, np.int64)  # slot -> external id (-1 past n)
        self.ns: npt.NDArray[Any] | None = None  # int8/16/32 codes, once a namespace is used
        self.expire: npt.NDArray[np.float64] | None = None  # once a TTL is used
        self.alive = np.zeros(8, np.uint8)  # bitmap, little-endian in a byte (FAISS's order)
        self.dead = 0
        self.next_expiry = math.inf
        self.ids = V.SlotMap(0)  # external id -> slot (keys read through self.ext)
        self.ns_codes: dict[str, int] = {}
        self.ns_names: list[str] = []
        self.ns_size: dict[int, int] = {}  # slots per namespace code (dead ones included)
        self.ns_slots: dict[int, I64] = {}  # cached slot lists of small namespaces
        self.meta: dict[int, dict[str, Any]] = {}
        self.postings: dict[tuple[str, Scalar], set[int]] = {}

    # ------------------------------------------------------------------ slots
    def grow(self, need: int) -> None:
        """Room for ``need`` slots in every per-slot array."""
        cap = len(self.ext)
        if need <= cap:
            return
        if need > MAX_SLOTS:
            raise VectorStoreError(f"a store holds at most {MAX_SLOTS} slots")
        # x1.25: the per-slot arrays count in the store's bytes per vector (stats())
        new = min(max(need, cap + cap // 4, 1024), MAX_SLOTS)
        self.ext = _widened(self.ext, new, -1)
        if self.ns is not None:
            self.ns = _widened(self.ns, new, NO_NS)
        if self.expire is not None:
            self.expire = _widened(self.expire, new, math.inf)
        alive = np.zeros((new + 7) // 8 + 8, np.uint8)
        alive[: len(self.alive)] = self.alive
        self.alive = alive

    def ns_room(self, code: int) -> npt.NDArray[Any]:
        """The per-slot namespace array, created or widened so that it holds ``code``."""
        dtype = np.int8 if code <= 127 else np.int16 if code <= 32767 else np.int32
        ns = self.ns
        if ns is None:
            ns = self.ns = np.full(len(self.ext), NO_NS, dtype)
        elif np.iinfo(ns.dtype).max < code:
            ns = self.ns = ns.astype(dtype)
        return ns

    def expire_room(self) -> npt.NDArray[np.float64]:
        if self.expire is None:
            self.expire = np.full(len(self.ext), math.inf, np.float64)
        return self.expire

    def ns_code(self, namespace: str | None, create: bool) -> int:
        """The code of ``namespace``: :data:`NO_NS` for None, :data:`UNKNOWN_NS` for a name
        never used (unless ``create``)."""
        if namespace is None:
            return NO_NS
        if not isinstance(namespace, str):
            raise VectorStoreError(f"namespace must be a str or None, got {namespace!r}")
        code = self.ns_codes.get(namespace)
        if code is None:
            if not create:
                return UNKNOWN_NS
            code = len(self.ns_names)
            self.ns_codes[namespace] = code
            self.ns_names.append(namespace)
        return code

    def append(
        self,
        ids: I64,
        namespace: str | None,
        expire: float,
        metas: Sequence[dict[str, Any] | None] | None,
    ) -> None:
        """Give ``ids`` the next slots (an id already stored loses its old slot: upsert),
        in ``namespace``, expiring at ``expire`` (``inf``: never)."""
        n = len(ids)
        code = self.ns_code(namespace, create=True)
        old = np.empty(n, np.int64)
        if self.ids.get_many(self.ext, ids, old) < n:
            self.kill(old[old >= 0])
        start = self.n
        slots = np.arange(start, start + n, dtype=np.int64)
        self.grow(start + n)
        self.ext[start : start + n] = ids
        if code >= 0:
            self.ns_room(code)[start : start + n] = code
            self.ns_size[code] = self.ns_size.get(code, 0) + n
            self.ns_slots.pop(code, None)
        elif self.ns is not None:
            self.ns[start : start + n] = NO_NS
        if expire != math.inf:
            self.expire_room()[start : start + n] = expire
        elif self.expire is not None:
            self.expire[start : start + n] = math.inf
        V.bitmap_set(slots, self.alive)
        self.n = start + n
        self.ids.put_many(self.ext, slots)
        if metas is not None:
            for s, m in zip(slots.tolist(), metas, strict=True):
                if m:
                    self._index_meta(s, m)
        self.next_expiry = min(self.next_expiry, expire)

    def remove(self, ids: I64) -> None:
        """Tombstone ``ids``; :class:`UnknownIdError` (and nothing removed) if any is unknown."""
        slots = np.empty(len(ids), np.int64)
        if self.ids.get_many(self.ext, ids, slots):
            raise UnknownIdError(ids[slots < 0].tolist())
        self.kill(slots)
        self.ids.remove_many(self.ext, ids)

    def kill(self, slots: I64) -> None:
        """Tombstone ``slots`` (alive ones) and forget their metadata."""
        alive = self.alive
        for s in slots.tolist():
            if (alive[s >> 3] >> (s & 7)) & 1:
                alive[s >> 3] &= ~(1 << (s & 7)) & 0xFF
                self.dead += 1
            self._forget_meta(s)

    def expired(self, now: float) -> bool:
        """True when some slot's TTL passed at ``now`` (cheap: one comparison)."""
        return now >= self.next_expiry and self.expire is not None

    def sweep(self, now: float) -> None:
        """Tombstone every slot whose TTL passed at ``now``."""
        assert self.expire is not None
        out = np.empty(self.n, np.int64)
        count, nxt = V.ttl_sweep(self.expire[: self.n], now, self.alive, out)
        gone = out[:count]
        self.dead += count
        for s in gone.tolist():
            self._forget_meta(s)
        self.ids.remove_many(self.ext, self.ext[gone])
        self.next_expiry = nxt

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: int) -> bool:
        out = np.empty(1, np.int64)
        return bool(self.ids.get_many(self.ext, np.array([id_], np.int64), out) == 0)

    def alive_slots(self, n: int) -> I64:
        """The alive slots among the first ``n``, ascending."""
        nb = (n + 7) // 8 + 8
        out = np.empty(n, np.int64)
        return out[: V.bitmap_to_slots(self.alive[:nb], n, out)]

    @property
    def nbytes(self) -> int:
        """Allocated bytes of the per-slot arrays and the id map (metadata not counted)."""
        size = self.ext.nbytes + self.alive.nbytes + self.ids.nbytes
        size += self.ns.nbytes if self.ns is not None else 0
        size += self.expire.nbytes if self.expire is not None else 0
        return int(size)

    # ------------------------------------------------------------------ metadata
    def _index_meta(self, slot: int, meta: dict[str, Any]) -> None:
        self.meta[slot] = meta
        for key, value in meta.items():
            if value is None or isinstance(value, str | int | float | bool):
                self.postings.setdefault((key, value), set()).add(slot)

    def _forget_meta(self, slot: int) -> None:
        meta = self.meta.pop(slot, None)
        if meta is None:
            return
        for key, value in meta.items():
            if value is None or isinstance(value, str | int | float | bool):
                posting = self.postings.get((key, value))
                if posting is not None:
                    posting.discard(slot)
                    if not posting:
                        del self.postings[(key, value)]

    # ------------------------------------------------------------------ filters
    def filter(self, namespace: str | None, where: Where | None) -> tuple[Any, int] | None:
        """Bitmap of eligible slots and its population, or None when every alive slot is."""
        if namespace is None and where is None and self.dead == 0:
            return None
        n = self.n
        code = self.ns_code(namespace, create=False)
        out = np.zeros((n + 7) // 8 + 8, np.uint8)
        if code == UNKNOWN_NS or (code >= 0 and self.ns is None):
            return out, 0  # unknown, or known but holding no slot
        if self.ns is None:  # no namespace in use: the alive bits (none are set past n)
            nb = (n + 7) // 8
            out[:nb] = self.alive[:nb]
            count = V.bitmap_count(out)
        else:
            count = V.filter_bitmap(self.ns[:n], code, self.alive, out)
        if where:
            if not isinstance(where, Mapping):
                raise VectorStoreError(f"where must be a mapping, got {type(where).__name__}")
            for key, want in where.items():
                values = list(want) if isinstance(want, list | tuple | set) else [want]
                keep = np.zeros_like(out)
                for v in values:
                    if not (v is None or isinstance(v, str | int | float | bool)):
                        raise VectorStoreError(f"where[{key!r}] must be scalars, got {v!r}")
                    posting = self.postings.get((key, v))
                    if posting:
                        V.bitmap_set(np.fromiter(posting, np.int64, len(posting)), keep)
                count = V.bitmap_and(out, keep, out)
        return out, count

    def small_namespace(self, namespace: str | None, limit: int) -> I64 | None:
        """Alive slots of a namespace of at most ``limit`` slots (cached per namespace,
        skipping the O(n) bitmap), or None when that does not apply."""
        if namespace is None:
            return None
        code = self.ns_code(namespace, create=False)
        if code == UNKNOWN_NS or (code >= 0 and self.ns is None):
            return np.empty(0, np.int64)  # unknown, or known but holding no slot
        if code < 0 or self.ns_size.get(code, 0) > limit:
            return None
        slots = self.ns_slots.get(code)
        if slots is None:
            assert self.ns is not None
            slots = np.flatnonzero(self.ns[: self.n] == code).astype(np.int64)
            self.ns_slots[code] = slots
        out = np.empty(len(slots), np.int64)
        return out[: V.filter_alive(slots, self.alive, out)]

    # ------------------------------------------------------------------ re-building
    def compact(self, order: I64, pad: int) -> int:
        """Renumber the slots after a re-build: new slot ``i`` is old slot ``order[i]``, then
        ``pad`` dead slots (the index's padding); every other slot is dropped. Returns the
        new slot count."""
        new_n = len(order) + pad
        size = max(new_n, 1024)
        ext = np.full(size, -1, np.int64)
        ext[: len(order)] = self.ext[order]
        ns = expire = None
        if self.ns is not None:
            ns = np.full(size, NO_NS, self.ns.dtype)
            ns[: len(order)] = self.ns[order]
        if self.expire is not None:
            expire = np.full(size, math.inf, np.float64)
            expire[: len(order)] = self.expire[order]
        bits = np.unpackbits(self.alive, bitorder="little")[order].astype(bool)
        alive = np.zeros((size + 7) // 8 + 8, np.uint8)
        live = np.flatnonzero(bits).astype(np.int64)
        V.bitmap_set(live, alive)
        old_to_new = np.full(max(self.n, 1), -1, np.int64)
        old_to_new[order] = np.arange(len(order), dtype=np.int64)
        meta = {int(old_to_new[s]): m for s, m in self.meta.items() if old_to_new[s] >= 0}
        self.ext, self.ns, self.expire, self.alive = ext, ns, expire, alive
        self.n = new_n
        self.dead = new_n - len(live)
        self.ids.clear(len(live))
        self.ids.put_many(ext, live)
        self.meta = {}
        self.postings = {}
        for s, m in meta.items():
            if (alive[s >> 3] >> (s & 7)) & 1:
                self._index_meta(s, m)
        self._count_namespaces()
        return new_n

    def _count_namespaces(self) -> None:
        self.ns_size = {}
        self.ns_slots = {}
        if self.ns is not None:
            codes, sizes = np.unique(self.ns[: self.n], return_counts=True)
            self.ns_size = {int(c): int(z) for c, z in zip(codes, sizes, strict=True) if c >= 0}

    # ------------------------------------------------------------------ serialisation
    def dump(self) -> tuple[dict[str, bytes], dict[int, dict[str, Any]], list[str]]:
        """``(sections, metadata by slot, namespace names by code)``: the per-slot arrays of
        the first ``n`` slots as bytes (``ext`` int64, ``ns`` int32, ``expire`` float64,
        ``alive`` the bitmap's ``ceil(n / 8)`` bytes)."""
        n = self.n
        ns = self.ns[:n].astype(np.int32) if self.ns is not None else np.full(n, NO_NS, np.int32)
        expire = self.expire[:n] if self.expire is not None else np.full(n, math.inf)
        sections = {
            "ext": self.ext[:n].tobytes(),
            "ns": ns.tobytes(),
            "expire": expire.tobytes(),
            "alive": self.alive[: (n + 7) // 8].tobytes(),
        }
        return sections, dict(self.meta), list(self.ns_names)

    def restore(
        self,
        n: int,
        sections: Mapping[str, bytes],
        meta: Mapping[int, dict[str, Any]],
        names: Sequence[str],
        where: str = "file",
    ) -> None:
        """Load what :meth:`dump` wrote into this (empty) catalog; :class:`CorruptFileError`
        naming ``where`` when the sections disagree with each other or with ``n``."""
        ext = np.frombuffer(sections["ext"], np.int64)
        ns = np.frombuffer(sections["ns"], np.int32)
        expire = np.frombuffer(sections["expire"], np.float64)
        alive = np.frombuffer(sections["alive"], np.uint8)
        if not (len(ext) == len(ns) == len(expire) == n and len(alive) == (n + 7) // 8):
            raise CorruptFileError(f"{where}: slot arrays disagree with n={n}")
        if n and (int(ns.max()) >= len(names) or int(ns.min()) < NO_NS):
            raise CorruptFileError(f"{where}: namespace codes outside the {len(names)} names")
        self.grow(n)
        self.ext[:n] = ext
        if names:  # also when every slot of every namespace was compacted away
            self.ns_room(len(names) - 1)[:n] = ns
        if n and np.isfinite(expire).any():
            self.expire_room()[:n] = expire
        self.alive[: len(alive)] = alive
        self.n = n
        bits = np.unpackbits(self.alive, bitorder="little")[:n].astype(bool)
        live = np.flatnonzero(bits).astype(np.int64)
        self.dead = n - len(live)
        self.ids.put_many(self.ext, live)
        self.ns_names = list(names)
        self.ns_codes = {name: i for i, name in enumerate(names)}
        self._count_namespaces()
        for s, m in meta.items():
            if 0 <= s < n and bits[s]:
                self._index_meta(s, m)
        live_exp = expire[live]
        self.next_expiry = float(live_exp.min()) if len(live_exp) else math.inf


def _widened(old: npt.NDArray[Any], size: int, fill: float) -> npt.NDArray[Any]:
    arr = np.full(size, fill, dtype=old.dtype)
    arr[: len(old)] = old
    return arr
