"""Native glue of the vector store: id maps, filter bitmaps, TTL sweeps, normalisation,
top-k merge. Inputs are typed memoryviews; shapes are checked before ``with nogil:``.

FAISS itself is called through its Python API (its SWIG layer releases the GIL). The
reference twin is ``engine/memory/_vectors_py.py``; both must agree on every input.
Bitmaps are little-endian within a byte, as ``faiss.IDSelectorBitmap`` reads them.
"""

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.math cimport INFINITY, isfinite, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memset

cdef extern from *:
    """
    static inline int engine_popcount8(unsigned char v) { return __builtin_popcount(v); }
    static inline int engine_ctz8(unsigned char v) { return __builtin_ctz(v); }
    """
    int engine_popcount8(unsigned char v) nogil
    int engine_ctz8(unsigned char v) nogil


cdef inline uint64_t _mix(int64_t key) noexcept nogil:
    # splitmix64 finaliser: good spread for sequential ids.
    cdef uint64_t z = <uint64_t>key + 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


@cython.final
cdef class IdMap:
    """Map int64 external ids to int64 slots: open addressing, linear probing,
    backward-shift deletion, load factor <= 1/2, tables in ``PyMem_*``."""

    cdef int64_t* keys
    cdef int64_t* values
    cdef uint8_t* used
    cdef Py_ssize_t cap      # power of two
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t capacity=0):
        self.keys = NULL
        self.values = NULL
        self.used = NULL
        self.size = 0
        self._alloc(max(16, capacity * 2))

    def __dealloc__(self):
        PyMem_Free(self.keys)
        PyMem_Free(self.values)
        PyMem_Free(self.used)

    cdef int _alloc(self, Py_ssize_t want) except -1:
        cdef Py_ssize_t cap = 16
        while cap < want:
            cap <<= 1
        keys = <int64_t*>PyMem_Calloc(cap, sizeof(int64_t))
        values = <int64_t*>PyMem_Calloc(cap, sizeof(int64_t))
        used = <uint8_t*>PyMem_Calloc(cap, sizeof(uint8_t))
        if keys == NULL or values == NULL or used == NULL:
            PyMem_Free(keys)
            PyMem_Free(values)
            PyMem_Free(used)
            raise MemoryError()
        self.keys = keys
        self.values = values
        self.used = used
        self.cap = cap
        return 0

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef int64_t* ok = self.keys
        cdef int64_t* ov = self.values
        cdef uint8_t* ou = self.used
        cdef Py_ssize_t ocap = self.cap, i
        if need * 2 <= self.cap:
            return 0
        self._alloc(need * 2)
        self.size = 0
        with nogil:
            for i in range(ocap):
                if ou[i]:
                    self._put(ok[i], ov[i])
        PyMem_Free(ok)
        PyMem_Free(ov)
        PyMem_Free(ou)
        return 0

    cdef inline void _put(self, int64_t key, int64_t value) noexcept nogil:
        cdef uint64_t mask = <uint64_t>self.cap - 1
        cdef uint64_t h = _mix(key) & mask
        while self.used[h]:
            if self.keys[h] == key:
                self.values[h] = value
                return
            h = (h + 1) & mask
        self.used[h] = 1
        self.keys[h] = key
        self.values[h] = value
        self.size += 1

    cdef inline int64_t _get(self, int64_t key) noexcept nogil:
        cdef uint64_t mask = <uint64_t>self.cap - 1
        cdef uint64_t h = _mix(key) & mask
        while self.used[h]:
            if self.keys[h] == key:
                return self.values[h]
            h = (h + 1) & mask
        return -1

    cdef inline int _del(self, int64_t key) noexcept nogil:
        cdef uint64_t mask = <uint64_t>self.cap - 1
        cdef uint64_t h = _mix(key) & mask, j, home
        while self.used[h]:
            if self.keys[h] == key:
                break
            h = (h + 1) & mask
        else:
            return 0
        # backward-shift: move later entries of the cluster into the hole when allowed
        j = h
        while True:
            j = (j + 1) & mask
            if not self.used[j]:
                break
            home = _mix(self.keys[j]) & mask
            # entry at j may move to h iff its home is not cyclically in (h, j]
            if (j > h and (home <= h or home > j)) or (j < h and (home <= h and home > j)):
                self.keys[h] = self.keys[j]
                self.values[h] = self.values[j]
                h = j
        self.used[h] = 0
        self.size -= 1
        return 1

    def __len__(self):
        return self.size

    def clear(self):
        with nogil:
            memset(self.used, 0, self.cap)
        self.size = 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def put_many(self, const int64_t[::1] keys, const int64_t[::1] values):
        """Insert or overwrite ``keys[i] -> values[i]``."""
        cdef Py_ssize_t i, n = keys.shape[0]
        if values.shape[0] != n:
            raise ValueError("keys and values differ in length")
        self._grow(self.size + n)
        with nogil:
            for i in range(n):
                self._put(keys[i], values[i])

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def get_many(self, const int64_t[::1] keys, int64_t[::1] out):
        """Write each key's slot (or -1) into ``out``; return how many keys were missing."""
        cdef Py_ssize_t i, n = keys.shape[0], missing = 0
        cdef int64_t v
        if out.shape[0] < n:
            raise ValueError("out is shorter than keys")
        with nogil:
            for i in range(n):
                v = self._get(keys[i])
                out[i] = v
                if v < 0:
                    missing += 1
        return missing

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def remove_many(self, const int64_t[::1] keys):
        """Forget the keys; return how many were present."""
        cdef Py_ssize_t i, n = keys.shape[0], removed = 0
        with nogil:
            for i in range(n):
                removed += self._del(keys[i])
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
    cdef double s
    cdef float inv
    with nogil:
        r = _first_bad(x)
        if r < 0:
            for i in range(x.shape[0]):
                s = 0.0
                for j in range(x.shape[1]):
                    s += <double>x[i, j] * x[i, j]
                if s > 0.0:
                    inv = <float>(1.0 / sqrt(s))
                    for j in range(x.shape[1]):
                        x[i, j] *= inv
    return r


cdef int _check_bitmap(Py_ssize_t nbytes, Py_ssize_t n) except -1:
    if nbytes * 8 < n:
        raise ValueError(f"bitmap of {nbytes} bytes cannot hold {n} slots")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def filter_bitmap(const int32_t[::1] ns, int32_t code, const uint8_t[::1] alive, uint8_t[::1] out):
    """``out`` = alive slots whose namespace is ``code`` (any namespace when ``code < 0``)."""
    cdef Py_ssize_t i, n = ns.shape[0], count = 0, nb = out.shape[0]
    cdef uint8_t bit
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
            for i in range(n):
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
