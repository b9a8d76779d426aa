"""Byte deltas for checkpoints: copies from a base plus literal bytes.

A checkpoint state is usually the previous one with a little changed or appended (a ledger
that grew by one entry, a counter that moved). :func:`make_delta` walks the new bytes and
copies every run it finds in the base near the aligned position, so insertions of any size
and deletions up to :data:`WINDOW` bytes cost only their own bytes; whatever it cannot match
is literal. Comparisons run in C (``bytes.startswith``/``find`` on memoryviews: no copies).

The encoded delta is a msgpack array ``[lit0, off1, len1, lit1, off2, len2, lit2, ...]``:
literal bytes alternate with (offset, length) copies from the base.
"""

from __future__ import annotations

import msgspec

from engine.errors import StoreError

__all__ = ["WINDOW", "apply_delta", "make_delta"]

ANCHOR = 32  # bytes looked up in the base to re-align after a mismatch
STEP = 16  # how far the anchor moves after a miss (matches extend back over the gap)
MIN_COPY = 16  # shorter runs stay literal: a copy op costs up to ~10 bytes
WINDOW = 4096  # how far ahead in the base an anchor is searched (deletions up to this)
BEHIND = 64  # and how far behind (a header that grew)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[bytes | int])


def _common(new: bytes, i: int, mbase: memoryview, j: int) -> int:
    """Length of the common prefix of ``new[i:]`` and ``base[j:]`` (galloping, in C)."""
    n = min(len(new) - i, len(mbase) - j)
    k = 0
    step = 64
    while k < n:
        s = min(step, n - k)
        if new.startswith(mbase[j + k : j + k + s], i + k):
            k += s
            step = min(step * 4, 1 << 20)
            continue
        lo, hi = k, k + s  # new[i:i+lo] == base[j:j+lo]; a mismatch lies before hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if new.startswith(mbase[j + lo : j + mid], i + lo):
                lo = mid
            else:
                hi = mid
        return lo
    return n


def make_delta(base: bytes, new: bytes, limit: int) -> bytes | None:
    """The delta turning ``base`` into ``new``, or None when it would exceed ``limit`` bytes."""
    mbase = memoryview(base)
    mnew = memoryview(new)
    n, m = len(new), len(base)
    ops: list[bytes | int] = []
    literal = 0  # literal bytes so far (the delta's size is about this plus 10 per copy)
    lit_start = i = j = 0
    while i < n:
        if j < m:
            k = _common(new, i, mbase, j)
            if k >= MIN_COPY:
                ops += (new[lit_start:i], j, k)
                literal += i - lit_start + 10
                i += k
                j += k
                lit_start = i
                continue
        # Re-align after a mismatch at (i, j): the base's next bytes found a little further
        # on in the new state mean bytes were inserted there; the new state's next bytes
        # found near j in the base mean bytes were deleted (or moved); neither, bytes were
        # replaced: step over them in both. PERF: one pair of lookups per change instead of
        # one lookup and one prefix compare per 16 bytes of it (a ledger entry inserted
        # before the state's tail, as in LangGraph's checkpoints: 530 -> 70 us per put).
        ahead = WINDOW  # a deletion shows at the first lookup; after it, look only close by
        while True:
            if i + ANCHOR > n or j >= m:
                hit = -1
                break
            ins = -1
            if j + ANCHOR <= m:
                ins = new.find(mbase[j : j + ANCHOR], i, min(n, i + WINDOW + ANCHOR))
            hit = base.find(mnew[i : i + ANCHOR], max(0, j - BEHIND), min(m, j + ahead + ANCHOR))
            if hit >= 0 and (ins < 0 or abs(hit - j) <= ins - i):
                break
            if ins >= 0:
                i, hit = ins, j
                break
            i += STEP
            j += STEP
            ahead = STEP
            if literal + i - lit_start > limit:
                return None
        if hit < 0:
            break  # too little left to anchor, or the base is used up: the rest is literal
        back = 0  # extend the match backwards over bytes a coarse step skipped
        while i - back > lit_start and hit - back > 0 and new[i - back - 1] == base[hit - back - 1]:
            back += 1
        i -= back
        j = hit - back
    ops.append(new[lit_start:])
    if literal + n - lit_start > limit:
        return None
    out = _encoder.encode(ops)
    return out if len(out) <= limit else None


def apply_delta(base: bytes, delta: bytes, max_size: int) -> bytes:
    """Rebuild the state ``delta`` describes; a malformed delta raises ``StoreError``."""
    try:
        ops = _decoder.decode(delta)
    except msgspec.DecodeError as exc:
        raise StoreError(f"corrupt checkpoint delta: {exc}") from None
    if len(ops) % 3 != 1:
        raise StoreError("corrupt checkpoint delta: wrong number of parts")
    parts: list[bytes] = []
    size = 0
    m = len(base)
    for idx, op in enumerate(ops):
        if idx % 3 == 0:
            if not isinstance(op, bytes):
                raise StoreError("corrupt checkpoint delta: literal expected")
            parts.append(op)
            size += len(op)
        elif idx % 3 == 1:
            length = ops[idx + 1]
            if (
                not isinstance(op, int)
                or not isinstance(length, int)
                or op < 0
                or length < 0
                or op + length > m
            ):
                raise StoreError("corrupt checkpoint delta: copy outside its base")
            parts.append(base[op : op + length])
            size += length
        if size > max_size:
            raise StoreError("corrupt checkpoint delta: larger than max_value_bytes")
    return b"".join(parts)
