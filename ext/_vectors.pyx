"""Native glue of the vector store: id maps, filter bitmaps, TTL sweeps, normalisation,
top-k merge. Inputs are typed memoryviews; shapes are checked before ``with nogil:``.

FAISS itself is called through its Python API (its SWIG layer releases the GIL). The
reference twin is ``engine/memory/_vectors_py.py``; both must agree on every input.
Bitmaps are little-endian within a byte, as ``faiss.IDSelectorBitmap`` reads them.
"""

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, isfinite, sqrt
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memset

from engine_hnsw cimport eh_has_avx2, eh_ip
from engine_vectors cimport (
    engine_ctz8,
    engine_dot_f32,
    engine_dot_u8,
    engine_fastrange,
    engine_l2_f32,
    engine_l2_u8,
    engine_popcount8,
)


ctypedef fused ns_t:
    int8_t
    int16_t
    int32_t


cdef int _AVX2 = eh_has_avx2()  # AVX2/FMA kernels chosen at run time (no -march=native)


cdef inline uint64_t _mix(int64_t key) noexcept nogil:
    # splitmix64 finaliser: good spread for sequential ids.
    cdef uint64_t z = <uint64_t>key + 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline Py_ssize_t _home(int64_t key, Py_ssize_t cap) noexcept nogil:
    # multiply-shift range reduction: any capacity, not only powers of two
    return engine_fastrange(_mix(key), cap)


cdef int _check_slots(const int64_t[::1] ext, const int64_t[::1] slots) except -1:
    cdef Py_ssize_t i
    cdef int64_t top = min(<int64_t>ext.shape[0], <int64_t>0x7FFFFFFF)
    for i in range(slots.shape[0]):
        if slots[i] < 0 or slots[i] >= top:
            raise ValueError(f"slot {slots[i]} outside the id array (or above 2**31 - 1)")
    return 0


@cython.final
cdef class SlotMap:
    """Map int64 external ids to slots, storing only the int32 slot: the id of slot ``s``
    is ``ext[s]`` (the store's per-slot id array, passed to every call), so an entry costs
    4 bytes over a table kept at most 4/5 full (5-6 B per id; 5.3 B after a rebuild, at load
    3/4), instead of 34+ B per id for int64 key/value tables at load 1/2. Open addressing,
    linear probing, backward-shift deletion.
    """

    cdef int32_t* table      # slot, or -1 when empty
    cdef Py_ssize_t cap
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t capacity=0):
        self.table = NULL
        self.size = 0
        self._alloc(capacity * 4 // 3 + 1)  # `capacity` ids at load 3/4

    def __dealloc__(self):
        PyMem_Free(self.table)

    cdef int _alloc(self, Py_ssize_t cap) except -1:
        cap = max(16, cap)
        cdef int32_t* table = <int32_t*>PyMem_Malloc(cap * sizeof(int32_t))
        if table == NULL:
            raise MemoryError()
        memset(table, 0xFF, cap * sizeof(int32_t))
        self.table = table
        self.cap = cap
        return 0

    cdef int _put(self, const int64_t* ext, int32_t slot) noexcept nogil:
        cdef int64_t key = ext[slot]
        cdef Py_ssize_t h = _home(key, self.cap)
        cdef int32_t s
        while True:
            s = self.table[h]
            if s < 0:
                self.table[h] = slot
                self.size += 1
                return 1
            if ext[s] == key:
                self.table[h] = slot
                return 0
            h += 1
            if h == self.cap:
                h = 0

    cdef inline Py_ssize_t _find(self, const int64_t* ext, int64_t key) noexcept nogil:
        cdef Py_ssize_t h = _home(key, self.cap)
        cdef int32_t s
        while True:
            s = self.table[h]
            if s < 0:
                return -1
            if ext[s] == key:
                return h
            h += 1
            if h == self.cap:
                h = 0

    cdef int _grow(self, const int64_t* ext, Py_ssize_t need) except -1:
        cdef int32_t* old = self.table
        cdef Py_ssize_t ocap = self.cap, i
        if need * 5 <= self.cap * 4:  # grow past load 4/5, to load 2/3
            return 0
        self._alloc(need * 3 // 2 + 1)
        self.size = 0
        with nogil:
            for i in range(ocap):
                if old[i] >= 0:
                    self._put(ext, old[i])
        PyMem_Free(old)
        return 0

    def __len__(self):
        return self.size

    @property
    def nbytes(self):
        """Bytes held by the table."""
        return self.cap * sizeof(int32_t)

    def clear(self, Py_ssize_t capacity=0):
        """Forget every id; re-size the table for ``capacity`` ids."""
        cdef int32_t* old = self.table
        self._alloc(capacity * 4 // 3 + 1)  # at load 3/4 once `capacity` ids are back
        PyMem_Free(old)
        self.size = 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def put_many(self, const int64_t[::1] ext, const int64_t[::1] slots):
        """Map ``ext[s] -> s`` for each slot ``s`` (replacing the id's previous slot)."""
        cdef Py_ssize_t i, n = slots.shape[0]
        _check_slots(ext, slots)
        if n == 0:
            return
        self._grow(&ext[0], self.size + n)
        with nogil:
            for i in range(n):
                self._put(&ext[0], <int32_t>slots[i])

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def get_many(self, const int64_t[::1] ext, const int64_t[::1] keys, int64_t[::1] out):
        """Write each id's slot (or -1) into ``out``; return how many ids were missing."""
        cdef Py_ssize_t i, h, n = keys.shape[0], missing = 0
        if out.shape[0] < n:
            raise ValueError("out is shorter than keys")
        if n == 0:
            return 0
        if self.size == 0 or ext.shape[0] == 0:
            out[:n] = -1
            return n
        with nogil:
            for i in range(n):
                h = self._find(&ext[0], keys[i])
                if h < 0:
                    out[i] = -1
                    missing += 1
                else:
                    out[i] = self.table[h]
        return missing

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def remove_many(self, const int64_t[::1] ext, const int64_t[::1] keys):
        """Forget the ids; return how many were present."""
        cdef Py_ssize_t i, h, j, home, n = keys.shape[0], removed = 0
        cdef const int64_t* e
        if n == 0 or self.size == 0 or ext.shape[0] == 0:
            return 0
        e = &ext[0]
        with nogil:
            for i in range(n):
                h = self._find(e, keys[i])
                if h < 0:
                    continue
                # backward shift: pull later entries of the run into the hole when allowed
                j = h
                while True:
                    j += 1
                    if j == self.cap:
                        j = 0
                    if self.table[j] < 0:
                        break
                    home = _home(e[self.table[j]], self.cap)
                    # entry at j may move to h iff its home is not cyclically in (h, j]
                    if (j > h and (home <= h or home > j)) or (j < h and home <= h and home > j):
                        self.table[h] = self.table[j]
                        h = j
                self.table[h] = -1
                self.size -= 1
                removed += 1
        return removed


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _first_bad(const float[:, ::1] x) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not isfinite(x[i, j]):
                return i
    return -1


def check_finite(const float[:, ::1] x):
    """Index of the first row holding NaN/inf, or -1."""
    cdef Py_ssize_t r
    with nogil:
        r = _first_bad(x)
    return r


@cython.boundscheck(False)
@cython.wraparound(False)
def normalize(float[:, ::1] x):
    """L2-normalise the rows of ``x`` in place (zero rows stay zero); -1 or first bad row."""
    cdef Py_ssize_t i, j, r
    cdef double s, inv
    with nogil:
        r = _first_bad(x)
        if r < 0:
            for i in range(x.shape[0]):
                s = 0.0
                for j in range(x.shape[1]):
                    s += <double>x[i, j] * x[i, j]
                if s > 0.0:
                    inv = 1.0 / sqrt(s)  # double: huge rows would give a denormal float
                    for j in range(x.shape[1]):
                        x[i, j] = <float>(x[i, j] * inv)
    return r


cdef int _check_bitmap(Py_ssize_t nbytes, Py_ssize_t n) except -1:
    if nbytes * 8 < n:
        raise ValueError(f"bitmap of {nbytes} bytes cannot hold {n} slots")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def filter_bitmap(const ns_t[::1] ns, int32_t code, const uint8_t[::1] alive, uint8_t[::1] out):
    """``out`` = alive slots whose namespace is ``code`` (any namespace when ``code < 0``).

    ``ns``: int8, int16 or int32 codes (the store keeps them as narrow as it can)."""
    cdef Py_ssize_t i, b, t, n = ns.shape[0], count = 0, nb = out.shape[0]
    cdef uint8_t bit, a, m
    _check_bitmap(alive.shape[0], n)
    _check_bitmap(nb, n)
    with nogil:
        memset(&out[0], 0, nb)
        if code < 0:
            for i in range((n + 7) >> 3):
                out[i] = alive[i]
            if n & 7:
                out[n >> 3] &= <uint8_t>((1 << (n & 7)) - 1)
            for i in range((n + 7) >> 3):
                count += engine_popcount8(out[i])
        else:
            # per byte, branch-free over its 8 slots (vectorisable); skip dead bytes
            for b in range(n >> 3):
                a = alive[b]
                if a == 0:
                    continue
                m = 0
                for t in range(8):
                    m |= <uint8_t>((ns[(b << 3) + t] == code) << t)
                m &= a
                out[b] = m
                count += engine_popcount8(m)
            for i in range(n & ~7, n):
                bit = (alive[i >> 3] >> (i & 7)) & 1
                if bit and ns[i] == code:
                    out[i >> 3] |= <uint8_t>(1 << (i & 7))
                    count += 1
    return count


@cython.boundscheck(False)
@cython.wraparound(False)
def bitmap_and(const uint8_t[::1] a, const uint8_t[::1] b, uint8_t[::1] out):
    """``out = a & b`` over the common length; return the number of set bits."""
    cdef Py_ssize_t i, m = min(a.shape[0], b.shape[0], out.shape[0]), count = 0
    with nogil:
        for i in range(m):  # out may alias a or b
            out[i] = a[i] & b[i]
            count += engine_popcount8(out[i])
        if out.shape[0] > m:
            memset(&out[m], 0, out.shape[0] - m)
    return count


@cython.boundscheck(False)
@cython.wraparound(False)
def bitmap_count(const uint8_t[::1] bitmap):
    cdef Py_ssize_t i, count = 0
    with nogil:
        for i in range(bitmap.shape[0]):
            count += engine_popcount8(bitmap[i])
    return count


@cython.boundscheck(False)
@cython.wraparound(False)
def bitmap_set(const int64_t[::1] slots, uint8_t[::1] out):
    """Set the bits of ``slots`` (each must be within the bitmap)."""
    cdef Py_ssize_t i, n = slots.shape[0]
    cdef int64_t s, top = <int64_t>out.shape[0] * 8
    cdef bint bad = False
    with nogil:
        for i in range(n):
            s = slots[i]
            if s < 0 or s >= top:
                bad = True
                break
    if bad:
        raise ValueError("slot out of bitmap range")
    with nogil:
        for i in range(n):
            s = slots[i]
            out[s >> 3] |= <uint8_t>(1 << (s & 7))


@cython.boundscheck(False)
@cython.wraparound(False)
def bitmap_to_slots(const uint8_t[::1] bitmap, Py_ssize_t n, int64_t[::1] out):
    """Write the set slots below ``n`` ascending into ``out``; return how many."""
    cdef Py_ssize_t i, b, count = 0, cap = out.shape[0]
    cdef uint8_t v
    _check_bitmap(bitmap.shape[0], n)
    with nogil:
        for b in range((n + 7) >> 3):
            v = bitmap[b]
            while v:
                i = (b << 3) + engine_ctz8(v)
                if i >= n:
                    break
                if count >= cap:
                    count = -1
                    break
                out[count] = i
                count += 1
                v &= v - 1
            if count < 0:
                break
    if count < 0:
        raise ValueError("out is too small")
    return count


@cython.boundscheck(False)
@cython.wraparound(False)
def ttl_sweep(const double[::1] expire, double now, uint8_t[::1] alive, int64_t[::1] out):
    """Clear alive bits of slots with ``expire <= now``; write them to ``out``.

    Returns ``(count, next_expiry)``: the earliest expiry among slots still alive
    (``inf`` when none expires).
    """
    cdef Py_ssize_t i, n = expire.shape[0], count = 0
    cdef double nxt = INFINITY, e
    _check_bitmap(alive.shape[0], n)
    if out.shape[0] < n:
        raise ValueError("out is too small")
    with nogil:
        for i in range(n):
            if (alive[i >> 3] >> (i & 7)) & 1:
                e = expire[i]
                if e <= now:
                    alive[i >> 3] &= <uint8_t>~(1 << (i & 7))
                    out[count] = i
                    count += 1
                elif e < nxt:
                    nxt = e
    return count, nxt


@cython.boundscheck(False)
@cython.wraparound(False)
def map_ids(const int64_t[:, ::1] slots, const int64_t[::1] table, int64_t[:, ::1] out):
    """``out[i, j] = table[slots[i, j]]``; -1 (and any slot outside the table) maps to -1."""
    cdef Py_ssize_t i, j, m = table.shape[0]
    cdef int64_t s
    if out.shape[0] != slots.shape[0] or out.shape[1] != slots.shape[1]:
        raise ValueError("out must have the shape of slots")
    with nogil:
        for i in range(slots.shape[0]):
            for j in range(slots.shape[1]):
                s = slots[i, j]
                out[i, j] = table[s] if 0 <= s < m else -1


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def merge_topk(const float[:, ::1] d, const int64_t[:, ::1] i, Py_ssize_t k, bint largest,
               float[:, ::1] out_d, int64_t[:, ::1] out_i):
    """Per row, keep the ``k`` best of the candidates ``(d, i)`` (ids < 0 ignored), sorted.

    Ties keep the candidate that comes first. Rows with fewer candidates pad with -1 and
    ``-inf`` (largest) or ``+inf`` (smallest). Insertion into a sorted window of ``k``:
    candidates per row are a few shards' top-k, where this beats a heap.
    """
    cdef Py_ssize_t r, c, j, filled, nq = d.shape[0], m = d.shape[1]
    cdef float v, pad = -INFINITY if largest else INFINITY
    if i.shape[0] != nq or i.shape[1] != m:
        raise ValueError("d and i differ in shape")
    if k < 0 or out_d.shape[0] != nq or out_i.shape[0] != nq or out_d.shape[1] < k or out_i.shape[1] < k:
        raise ValueError("out_d/out_i must be (nq, >= k)")
    with nogil:
        for r in range(nq):
            for j in range(k):
                out_d[r, j] = pad
                out_i[r, j] = -1
            filled = 0
            for c in range(m):
                if i[r, c] < 0:
                    continue
                v = d[r, c]
                if filled == k:
                    if k == 0 or (v <= out_d[r, k - 1] if largest else v >= out_d[r, k - 1]):
                        continue
                    j = k - 1
                else:
                    j = filled
                    filled += 1
                while j > 0 and (v > out_d[r, j - 1] if largest else v < out_d[r, j - 1]):
                    out_d[r, j] = out_d[r, j - 1]
                    out_i[r, j] = out_i[r, j - 1]
                    j -= 1
                out_d[r, j] = v
                out_i[r, j] = i[r, c]


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def score_sq8(const uint8_t[:, ::1] codes, const int64_t[::1] slots, const float[::1] q,
              const float[::1] vmin, const float[::1] vdiff, bint l2, float[::1] out):
    """Score ``q`` against the 8-bit scalar-quantised rows ``codes[slots]`` without decoding
    them into a buffer (FAISS QT_8bit: x = vmin + (code + 0.5) / 255 * vdiff).

    Inner product folds the decode into per-query weights (one uint8 x float dot per row);
    ``l2`` gives squared distances. ``out[i]`` is the score of ``slots[i]``."""
    cdef Py_ssize_t i, j, n = slots.shape[0], d = codes.shape[1], rows = codes.shape[0]
    cdef double bias = 0.0
    cdef float* w
    if q.shape[0] != d or vmin.shape[0] != d or vdiff.shape[0] != d:
        raise ValueError("q, vmin and vdiff must have the codes' width")
    if out.shape[0] < n:
        raise ValueError("out is shorter than slots")
    for i in range(n):
        if slots[i] < 0 or slots[i] >= rows:
            raise ValueError(f"slot {slots[i]} outside the codes")
    if n == 0 or d == 0:
        out[:n] = 0.0
        return
    w = <float*>PyMem_Malloc(d * sizeof(float))
    if w == NULL:
        raise MemoryError()
    try:
        with nogil:
            if not l2:
                for j in range(d):
                    w[j] = q[j] * vdiff[j] / 255.0
                    bias += q[j] * vmin[j] + 0.5 * w[j]
                for i in range(n):
                    out[i] = <float>bias + eh_ip(w, &codes[slots[i], 0], d, _AVX2)
            else:
                for j in range(d):
                    w[j] = vdiff[j] / 255.0
                for i in range(n):
                    out[i] = engine_l2_u8(&q[0], &vmin[0], w, &codes[slots[i], 0], d)
    finally:
        PyMem_Free(w)


@cython.boundscheck(False)
@cython.wraparound(False)
def score_f32(const float[:, ::1] x, const int64_t[::1] slots, const float[::1] q, bint l2,
              float[::1] out):
    """Score ``q`` against rows ``x[slots]``: inner products, or squared distances (``l2``)."""
    cdef Py_ssize_t i, n = slots.shape[0], d = x.shape[1], rows = x.shape[0]
    if q.shape[0] != d:
        raise ValueError("q must have the rows' width")
    if out.shape[0] < n:
        raise ValueError("out is shorter than slots")
    for i in range(n):
        if slots[i] < 0 or slots[i] >= rows:
            raise ValueError(f"slot {slots[i]} outside the rows")
    if n == 0 or d == 0:
        out[:n] = 0.0
        return
    with nogil:
        for i in range(n):
            if l2:
                out[i] = engine_l2_f32(&q[0], &x[slots[i], 0], d)
            else:
                out[i] = engine_dot_f32(&q[0], &x[slots[i], 0], d)


@cython.boundscheck(False)
@cython.wraparound(False)
def filter_alive(const int64_t[::1] slots, const uint8_t[::1] alive, int64_t[::1] out):
    """Copy the ``slots`` whose alive bit is set into ``out`` (order kept); return how many."""
    cdef Py_ssize_t i, n = slots.shape[0], count = 0
    cdef int64_t s, top = <int64_t>alive.shape[0] * 8
    if out.shape[0] < n:
        raise ValueError("out is shorter than slots")
    for i in range(n):
        if slots[i] < 0 or slots[i] >= top:
            raise ValueError(f"slot {slots[i]} outside the bitmap")
    with nogil:
        for i in range(n):
            s = slots[i]
            if (alive[s >> 3] >> (s & 7)) & 1:
                out[count] = s
                count += 1
    return count
