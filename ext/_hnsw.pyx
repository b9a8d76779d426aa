"""Native single-query walk over a FAISS ``IndexHNSWSQ`` (8-bit codes), read in place.

FAISS trains, builds, inserts, serialises and owns the index; :class:`HnswSQ8` holds
zero-copy views of its graph (``hnsw.neighbors``/``offsets``/``levels``) and SQ8 codes and
walks them under ``nogil`` with FAISS's algorithm (``ext/include/engine_hnsw.h``), so
ids match ``index.search`` at the same ``efSearch`` (except k > efSearch and ties on
duplicate-heavy data: see the header and docs/memory.md). The views are valid while the index is
not mutated: the vector store never mutates an installed index (flushes clone it), and
the view keeps the index object alive. Reference twin: ``engine/memory/_hnsw_py.py``.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, isfinite, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memset

from engine_hnsw cimport eh_graph, eh_has_avx2, eh_scratch, eh_scratch_free, eh_search

cdef int _AVX2 = eh_has_avx2()
cdef enum:
    MAX_LINKS0 = 512  # the walk's per-node buffer (FAISS's default is 2*M = 24 at M=12)
cdef uint8_t _NONE = 0  # the bitmap of an empty selection


@cython.final
cdef class _Scratch:
    cdef eh_scratch* s

    def __cinit__(self):
        self.s = <eh_scratch*>PyMem_Malloc(sizeof(eh_scratch))
        if self.s == NULL:
            raise MemoryError()
        memset(self.s, 0, sizeof(eh_scratch))

    def __dealloc__(self):
        if self.s != NULL:
            eh_scratch_free(self.s)
            PyMem_Free(self.s)


@cython.final
cdef class HnswSQ8:
    """A read-only walker over one FAISS HNSW graph with 8-bit scalar-quantised storage.

    Arrays are FAISS's own (zero-copy); ``owner`` (the index) is kept alive with them. Every
    array is checked once here (shapes, ids in range, offsets monotone) so a search never
    reads outside them. ``l2``: squared L2 distances, else inner products (larger first).
    """

    cdef eh_graph g
    cdef const int32_t[::1] _neighbors
    cdef const uint64_t[::1] _offsets
    cdef const int32_t[::1] _levels
    cdef const int32_t[::1] _cum
    cdef const uint8_t[:, ::1] _codes
    cdef const float[::1] _vmin
    cdef const float[::1] _vdiff
    cdef list _pool
    cdef readonly object owner
    cdef readonly bint l2
    cdef readonly int64_t ndis  # distances computed so far (all searches)

    @cython.boundscheck(False)  # every index below is checked against the shapes first
    @cython.wraparound(False)
    def __cinit__(self, const int32_t[::1] neighbors, const uint64_t[::1] offsets,
                  const int32_t[::1] levels, const int32_t[::1] cum,
                  const uint8_t[:, ::1] codes, const float[::1] vmin, const float[::1] vdiff,
                  int32_t entry, int32_t max_level, bint l2, object owner=None):
        cdef int64_t n = levels.shape[0], d = codes.shape[1], i, j, nnb = neighbors.shape[0]
        cdef int32_t v, lv, l
        cdef uint64_t o
        cdef int64_t bad = -1
        cdef bint upper = False
        cdef int ncum = cum.shape[0]
        if codes.shape[0] != n:
            raise ValueError(f"{codes.shape[0]} code rows for {n} graph nodes")
        if offsets.shape[0] != n + 1:
            raise ValueError(f"offsets must hold n + 1 = {n + 1} entries, got {offsets.shape[0]}")
        if d < 1:
            raise ValueError("codes must have at least one column")
        if vmin.shape[0] != d or vdiff.shape[0] != d:
            raise ValueError("vmin and vdiff must have the codes' width")
        if ncum < 2 or cum[0] != 0:
            raise ValueError("cum_nneighbor_per_level must start 0, n0")
        for i in range(1, ncum):
            if cum[i] < cum[i - 1]:
                raise ValueError("cum_nneighbor_per_level must not decrease")
        if cum[1] > MAX_LINKS0:
            raise ValueError(f"level 0 holds {cum[1]} links, more than {MAX_LINKS0}")
        if n and not (0 <= entry < n):
            raise ValueError(f"entry point {entry} outside the {n} nodes")
        if n and not (0 <= max_level < ncum - 1):
            raise ValueError(f"max_level {max_level} outside the {ncum - 1} levels")
        if n and offsets[n] > <uint64_t>nnb:
            raise ValueError("offsets point past the neighbour table")
        with nogil:
            for i in range(n):
                lv = levels[i]
                o = offsets[i]
                if lv < 1 or lv > ncum - 1 or lv - 1 > max_level or offsets[i + 1] < o:
                    bad = i
                    break
                if o + <uint64_t>cum[lv] > offsets[i + 1]:
                    bad = i
                    break
                for j in range(cum[lv]):
                    v = neighbors[o + j]
                    if v >= n or v < -1:
                        bad = i
                        break
                if bad >= 0:
                    break
            if bad < 0:
                # a link at level l >= 1 must reach a node that has a level l: the greedy
                # descent reads that node's level-l links (upper levels are small)
                for i in range(n):
                    lv = levels[i]
                    o = offsets[i]
                    for l in range(1, lv):
                        for j in range(cum[l], cum[l + 1]):
                            v = neighbors[o + j]
                            if v < 0:
                                break
                            if levels[v] <= l:
                                bad = i
                                break
                        if bad >= 0:
                            break
                    if bad >= 0:
                        upper = True
                        break
        if bad >= 0 and upper:
            raise ValueError(f"graph node {bad} links to a node without that level")
        if bad >= 0:
            raise ValueError(f"graph node {bad} is inconsistent (level, offsets or neighbours)")
        if n and levels[entry] - 1 != max_level:
            raise ValueError("the entry point is not on the top level")
        self._neighbors = neighbors
        self._offsets = offsets
        self._levels = levels
        self._cum = cum
        self._codes = codes
        self._vmin = vmin
        self._vdiff = vdiff
        self.g.neighbors = &neighbors[0] if nnb else NULL
        self.g.offsets = &offsets[0]
        self.g.levels = &levels[0] if n else NULL
        self.g.cum = &cum[0]
        self.g.codes = &codes[0, 0] if n and d else NULL
        self.g.n = n
        self.g.d = d
        self.g.entry = entry
        self.g.max_level = max_level
        self.g.l2 = l2
        self.l2 = l2
        self.owner = owner
        self._pool = []
        self.ndis = 0

    @property
    def ntotal(self):
        return self.g.n

    @property
    def d(self):
        return self.g.d

    @staticmethod
    def simd():
        """The distance kernels in use: ``"avx2"`` or ``"scalar"``."""
        return "avx2" if _AVX2 else "scalar"

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def search(self, const float[:, ::1] q, int k, int ef, float[:, ::1] out_d,
               int64_t[:, ::1] out_i, const uint8_t[::1] bitmap=None,
               const int64_t[::1] ext=None, bint normalize=False):
        """Top-``k`` of each row of ``q`` with a beam of ``ef``, into ``out_d``/``out_i``
        (best first; missing results are id -1 and score -inf, or +inf for l2).

        ``bitmap`` (FAISS ``IDSelectorBitmap`` layout) keeps results to the set bits, as
        FAISS's selector does: the walk still passes through the other nodes. ``ext`` maps
        the results' node ids to ``ext[node]`` (the vector store's external ids) in the same
        call. ``normalize`` (inner product only): score each row as if L2-normalised (cosine
        against normalised data), folded into the query weights.

        Returns -1, or the index of the first row holding NaN/inf (outputs then undefined)."""
        cdef Py_ssize_t nq = q.shape[0], r, t, j
        cdef int64_t nbits = 0, nd = 0, next_ = 0, node
        cdef const uint8_t* bm = NULL
        cdef int32_t got = 0
        cdef float pad = INFINITY if self.l2 else -INFINITY
        cdef float scale
        cdef double ss
        cdef _Scratch scr
        cdef bint oom = False
        cdef Py_ssize_t bad = -1
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if ef < 1:
            raise ValueError(f"ef must be >= 1, got {ef}")
        if q.shape[1] != self.g.d:
            raise ValueError(f"queries have {q.shape[1]} columns, the index {self.g.d}")
        if out_d.shape[0] != nq or out_i.shape[0] != nq or out_d.shape[1] < k or out_i.shape[1] < k:
            raise ValueError("out_d/out_i must be (nq, >= k)")
        if normalize and self.l2:
            raise ValueError("normalize applies to inner-product indexes only")
        if ext is not None:
            next_ = ext.shape[0]
        if bitmap is not None:
            nbits = <int64_t>bitmap.shape[0] * 8
            if nbits:
                bm = &bitmap[0]
            else:
                bm = &_NONE  # empty selection: nothing is a member (nbits = 0)
        scr = self._pool.pop() if self._pool else _Scratch()
        try:
            with nogil:
                for r in range(nq):
                    ss = 0.0
                    for j in range(self.g.d):
                        if not isfinite(q[r, j]):
                            bad = r
                            break
                        ss += <double>q[r, j] * q[r, j]
                    if bad >= 0:
                        break
                    scale = <float>(1.0 / sqrt(ss)) if normalize and ss > 0.0 else 1.0
                    for t in range(k):
                        out_d[r, t] = pad
                        out_i[r, t] = -1
                    if self.g.n == 0:
                        continue
                    got = eh_search(&self.g, scr.s, &q[r, 0], scale, &self._vmin[0],
                                    &self._vdiff[0], k, ef, bm, nbits, &out_d[r, 0],
                                    &out_i[r, 0], &nd, _AVX2)
                    if got < 0:
                        oom = True
                        break
                    if not self.l2:
                        for t in range(got):
                            out_d[r, t] = -out_d[r, t]
                    if ext is not None:
                        for t in range(got):
                            node = out_i[r, t]
                            out_i[r, t] = ext[node] if node < next_ else -1
        finally:
            if len(self._pool) < 8:
                self._pool.append(scr)
        self.ndis += nd
        if oom:
            raise MemoryError()
        return bad
