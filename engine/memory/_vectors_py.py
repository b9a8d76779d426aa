"""Pure-Python/numpy reference twin of ``engine._native._vectors``.

The oracle for differential tests and the fallback under ``ENGINE_NO_EXTENSIONS=1``.
Every function has the same signature and effect as its compiled twin; simplicity wins
over speed here. Bitmaps are little-endian within each byte, as FAISS's
``IDSelectorBitmap`` reads them: slot ``i`` is bit ``i & 7`` of byte ``i >> 3``.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import numpy.typing as npt

__all__ = [
    "SlotMap",
    "bitmap_and",
    "bitmap_count",
    "bitmap_set",
    "bitmap_to_slots",
    "check_finite",
    "filter_alive",
    "filter_bitmap",
    "map_ids",
    "merge_topk",
    "normalize",
    "score_f32",
    "score_sq8",
    "ttl_sweep",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


class SlotMap:
    """Map int64 external ids to slots; the id of slot ``s`` is ``ext[s]`` (the store's
    per-slot id array, passed to every call)."""

    def __init__(self, capacity: int = 0) -> None:
        self._d: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._d)

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self._d)

    def clear(self, capacity: int = 0) -> None:
        self._d = {}

    def put_many(self, ext: I64, slots: I64) -> None:
        """Map ``ext[s] -> s`` for each slot ``s`` (replacing the id's previous slot)."""
        top = min(len(ext), 2**31 - 1)
        for s in slots.tolist():
            if not 0 <= s < top:
                raise ValueError(f"slot {s} outside the id array (or above 2**31 - 1)")
        for s in slots.tolist():
            self._d[int(ext[s])] = s

    def get_many(self, ext: I64, keys: I64, out: I64) -> int:
        """Write each id's slot (or -1) into ``out``; return how many ids were missing."""
        if len(out) < len(keys):
            raise ValueError("out is shorter than keys")
        missing = 0
        for i, k in enumerate(keys.tolist()):
            v = self._d.get(k, -1)
            out[i] = v
            missing += v < 0
        return missing

    def remove_many(self, ext: I64, keys: I64) -> int:
        """Forget the ids; return how many were present."""
        n = 0
        for k in keys.tolist():
            if self._d.pop(k, None) is not None:
                n += 1
        return n


def check_finite(x: F32) -> int:
    """Index of the first row holding NaN/inf, or -1."""
    bad = ~np.isfinite(x).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else -1


def normalize(x: F32) -> int:
    """L2-normalise the rows of ``x`` in place (zero rows stay zero); -1 or first bad row."""
    bad = check_finite(x)
    if bad >= 0:
        return bad
    wide = x.astype(np.float64)
    norms = np.sqrt((wide**2).sum(axis=1))
    norms[norms == 0] = 1.0
    x[...] = (wide / norms[:, None]).astype(np.float32)
    return -1


def _bits(bitmap: U8, n: int) -> npt.NDArray[np.bool_]:
    return np.unpackbits(bitmap, bitorder="little")[:n].astype(bool)


def _pack(bits: npt.NDArray[np.bool_], out: U8) -> None:
    packed = np.packbits(bits, bitorder="little")
    out[:] = 0
    out[: len(packed)] = packed


def _check_bitmap(bitmap: U8, n: int) -> None:
    if len(bitmap) * 8 < n:
        raise ValueError(f"bitmap of {len(bitmap)} bytes cannot hold {n} slots")


def filter_bitmap(ns: npt.NDArray[np.int32], code: int, alive: U8, out: U8) -> int:
    """``out`` = alive slots whose namespace is ``code`` (any namespace when ``code < 0``)."""
    n = len(ns)
    _check_bitmap(alive, n)
    _check_bitmap(out, n)
    bits = _bits(alive, n)
    if code >= 0:
        bits &= ns == code
    _pack(bits, out)
    return int(bits.sum())


def bitmap_and(a: U8, b: U8, out: U8) -> int:
    """``out = a & b`` over the common length; return the number of set bits."""
    m = min(len(a), len(b), len(out))
    out[:m] = a[:m] & b[:m]  # out may alias a or b
    out[m:] = 0
    return bitmap_count(out)


def bitmap_count(bitmap: U8) -> int:
    return int(np.unpackbits(bitmap).sum())


def bitmap_set(slots: I64, out: U8) -> None:
    """Set the bits of ``slots`` (each must be within the bitmap)."""
    if len(slots) and (slots.min() < 0 or slots.max() >= len(out) * 8):
        raise ValueError("slot out of bitmap range")
    for s in slots.tolist():
        out[s >> 3] |= 1 << (s & 7)


def bitmap_to_slots(bitmap: U8, n: int, out: I64) -> int:
    """Write the set slots below ``n`` ascending into ``out``; return how many."""
    _check_bitmap(bitmap, n)
    idx = np.flatnonzero(_bits(bitmap, n))
    if len(idx) > len(out):
        raise ValueError("out is too small")
    out[: len(idx)] = idx
    return len(idx)


def ttl_sweep(
    expire: npt.NDArray[np.float64], now: float, alive: U8, out: I64
) -> tuple[int, float]:
    """Clear alive bits of slots with ``expire <= now``; write them to ``out``.

    Returns ``(count, next_expiry)`` where ``next_expiry`` is the earliest expiry among the
    slots still alive (``inf`` when none expires).
    """
    n = len(expire)
    _check_bitmap(alive, n)
    if len(out) < n:
        raise ValueError("out is too small")
    bits = _bits(alive, n)
    gone = bits & (expire <= now)
    idx = np.flatnonzero(gone)
    out[: len(idx)] = idx
    for s in idx.tolist():
        alive[s >> 3] &= ~(1 << (s & 7)) & 0xFF
    bits &= ~gone
    rest = expire[bits]
    return len(idx), float(rest.min()) if len(rest) else math.inf


def map_ids(slots: I64, table: I64, out: I64) -> None:
    """``out[i, j] = table[slots[i, j]]``; -1 (and any slot outside the table) maps to -1."""
    ok = (slots >= 0) & (slots < len(table))
    out[...] = -1
    out[ok] = table[slots[ok]]


def merge_topk(d: F32, i: I64, k: int, largest: bool, out_d: F32, out_i: I64) -> None:
    """Per row, keep the ``k`` best of the candidates ``(d, i)`` (ids < 0 ignored), sorted.

    Ties keep the candidate that comes first. Rows with fewer candidates pad with -1 /
    ``-inf`` (largest) or ``+inf`` (smallest).
    """
    pad = -np.inf if largest else np.inf
    for r in range(d.shape[0]):
        cand = [(float(d[r, c]), c) for c in range(d.shape[1]) if i[r, c] >= 0]
        cand.sort(key=lambda t: (-t[0] if largest else t[0], t[1]))
        out_d[r, :] = pad
        out_i[r, :] = -1
        for j, (dist, c) in enumerate(cand[:k]):
            out_d[r, j] = dist
            out_i[r, j] = i[r, c]


def _check_slots(slots: I64, rows: int) -> None:
    if len(slots) and (slots.min() < 0 or slots.max() >= rows):
        bad = slots[(slots < 0) | (slots >= rows)][0]
        raise ValueError(f"slot {bad} outside the rows")


def score_sq8(codes: U8, slots: I64, q: F32, vmin: F32, vdiff: F32, l2: bool, out: F32) -> None:
    """Score ``q`` against the QT_8bit rows ``codes[slots]`` (x = vmin + (c+0.5)/255*vdiff)."""
    d = codes.shape[1]
    if len(q) != d or len(vmin) != d or len(vdiff) != d:
        raise ValueError("q, vmin and vdiff must have the codes' width")
    if len(out) < len(slots):
        raise ValueError("out is shorter than slots")
    _check_slots(slots, codes.shape[0])
    x = vmin.astype(np.float64) + (codes[slots].astype(np.float64) + 0.5) / 255.0 * vdiff
    qq = q.astype(np.float64)
    res = ((x - qq) ** 2).sum(axis=1) if l2 else x @ qq
    out[: len(slots)] = res


def score_f32(x: F32, slots: I64, q: F32, l2: bool, out: F32) -> None:
    """Score ``q`` against rows ``x[slots]``: inner products, or squared distances (``l2``)."""
    if len(q) != x.shape[1]:
        raise ValueError("q must have the rows' width")
    if len(out) < len(slots):
        raise ValueError("out is shorter than slots")
    _check_slots(slots, x.shape[0])
    rows = x[slots].astype(np.float64)
    qq = q.astype(np.float64)
    out[: len(slots)] = ((rows - qq) ** 2).sum(axis=1) if l2 else rows @ qq


def filter_alive(slots: I64, alive: U8, out: I64) -> int:
    """Copy the ``slots`` whose alive bit is set into ``out`` (order kept); return how many."""
    if len(out) < len(slots):
        raise ValueError("out is shorter than slots")
    _check_slots(slots, len(alive) * 8)
    keep = [s for s in slots.tolist() if (alive[s >> 3] >> (s & 7)) & 1]
    out[: len(keep)] = keep
    return len(keep)
