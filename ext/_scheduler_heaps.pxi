# Included by ext/_scheduler.pyx: the heaps inside a lane (entries of a priority bucket by
# (deadline, key), priority levels by prio). Shares the module's namespace; needs the
# structs of _scheduler_tables.pxi.

# ---------------------------------------------------------------------------------------------
# bucket heap of BEnt ordered by (deadline, key)
cdef inline int _less(const BEnt* a, const BEnt* b) noexcept nogil:
    # Branch-free: the outcome is data-dependent, so branches mispredict about half the time.
    return (a.deadline < b.deadline) | ((a.deadline == b.deadline) & (a.key < b.key))


cdef inline Py_ssize_t _min4(const BEnt* h, Py_ssize_t c) noexcept nogil:
    """Index of the smallest of h[c..c+3] (tournament: 3 compares, 2 deep, no branches)."""
    cdef Py_ssize_t a = c + _less(&h[c + 1], &h[c])
    cdef Py_ssize_t b = c + 2 + _less(&h[c + 3], &h[c + 2])
    return b if _less(&h[b], &h[a]) else a


# PERF: 4-ary heap with bottom-up (Floyd) pop: the hole walks down along the smaller children
# without comparing against the moved element, then that element sifts up (usually 0-1 steps).
# Against a binary heap with classic sift-down on 20k entries: ~230 -> ~190 ns per
# push+pop+complete (push_many + pop_ready(10k) + complete_many loop, thread_time, min of 7).
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void heap_up(BEnt* h, Py_ssize_t i) noexcept nogil:
    cdef BEnt x = h[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 2
        if not _less(&x, &h[parent]):
            break
        h[i] = h[parent]
        i = parent
    h[i] = x


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void heap_pop(BEnt* h, Py_ssize_t n) noexcept nogil:
    """Remove h[0] from a heap of ``n`` entries (the caller keeps the size)."""
    cdef Py_ssize_t i = 0, c, best, j
    n -= 1
    if n == 0:
        return
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        if c + 4 <= n:
            best = _min4(h, c)
        else:
            best = c
            for j in range(c + 1, n):
                if _less(&h[j], &h[best]):
                    best = j
        h[i] = h[best]
        i = best
    h[i] = h[n]
    heap_up(h, i)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void heap_down(BEnt* h, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Classic sift-down of h[i] (heapify)."""
    cdef BEnt x = h[i]
    cdef Py_ssize_t c, best, j, end
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        best = c
        end = c + 4 if c + 4 < n else n
        for j in range(c + 1, end):
            if _less(&h[j], &h[best]):
                best = j
        if not _less(&h[best], &x):
            break
        h[i] = h[best]
        i = best
    h[i] = x


# priority levels of a lane: binary min-heap of LvlEnt by prio (distinct prios; small)
cdef inline void lvl_up(LvlEnt* h, Py_ssize_t i) noexcept nogil:
    cdef LvlEnt x = h[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if x.prio >= h[parent].prio:
            break
        h[i] = h[parent]
        i = parent
    h[i] = x


cdef inline void lvl_pop(LvlEnt* h, Py_ssize_t n) noexcept nogil:
    """Remove h[0] from a level heap of ``n`` entries."""
    cdef LvlEnt x
    cdef Py_ssize_t i = 0, c
    n -= 1
    if n == 0:
        return
    x = h[n]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and h[c + 1].prio < h[c].prio:
            c += 1
        if h[c].prio >= x.prio:
            break
        h[i] = h[c]
        i = c
    h[i] = x
