# Included by ext/_scheduler.pyx: the scheduler's C structs and its small containers (an
# int64 -> int32 hash map, an int32 FIFO, an int64 vector). Shares the module's namespace
# (cimports, enums); a .pxi is not compiled on its own.

# ---------------------------------------------------------------------------------------------
# C structs
ctypedef struct Task:
    int64_t id
    uint64_t key        # arrival << 16 | epoch: heap order after (prio, deadline); validity
    double deadline
    int32_t prio
    int32_t lane
    int32_t state
    int32_t waiting     # pending dependencies
    int32_t first_edge  # dependents list (insertion order)
    int32_t last_edge

ctypedef struct Edge:
    uint64_t arrival    # child's arrival when the edge was made
    int32_t child
    int32_t next

ctypedef struct BEnt:         # one queued task inside a priority bucket
    double deadline
    uint64_t key
    int64_t id          # PERF: carried here so dispatch reads no Task (see _lane_pop)
    int32_t slot
    int32_t _pad

ctypedef struct LvlEnt:       # a priority level of a lane
    int32_t prio
    int32_t bucket

ctypedef struct Bucket:
    BEnt* run           # circular FIFO (capacity a power of two), sorted by (deadline, key)
    BEnt* heap          # 4-ary min-heap by (deadline, key)
    int32_t run_head
    int32_t run_count
    int32_t run_cap
    int32_t hsize
    int32_t hcap
    int32_t prio
    int32_t lane_pos    # index in its lane's ``bks``; next free bucket while free

ctypedef struct IQ:          # FIFO of int32 (circular buffer)
    int32_t* buf
    int32_t head
    int32_t count
    int32_t cap

ctypedef struct Lane:
    LvlEnt* levels      # binary min-heap by prio; each level owns one bucket
    int32_t* small      # bucket of prio 0..SMALL_PRIO-1 (-1 none), allocated on first use
    int32_t* bks        # buckets owned (for compaction and retirement)
    int32_t nlevels
    int32_t levels_cap
    int32_t nbks
    int32_t bks_cap
    int64_t entries     # queued entries, stale included
    int32_t live
    int32_t pool
    int32_t tenant
    int32_t granted
    int32_t in_ring
    int64_t deficit

ctypedef struct Pool:
    int64_t id
    int64_t slots       # -1 = unlimited
    int64_t in_use
    int64_t ready
    double rate         # inf = no limit
    double burst
    double tokens
    double last
    int32_t state
    IQ ring             # DRR ring of lane indices

ctypedef struct HSlot:
    int64_t key
    int32_t val         # -1 = empty
    int32_t _pad

ctypedef struct HMap:        # int64 -> int32, linear probing, backward-shift deletion
    HSlot* tab
    uint64_t mask
    int32_t shift
    int64_t size

ctypedef struct I64Vec:
    int64_t* data
    Py_ssize_t n
    Py_ssize_t cap


# ---------------------------------------------------------------------------------------------
# small containers
cdef int hm_init(HMap* m, int bits) except -1:
    cdef Py_ssize_t cap = (<Py_ssize_t>1) << bits, i
    m.tab = <HSlot*>engine_realloc(NULL, cap * sizeof(HSlot))
    for i in range(cap):
        m.tab[i].val = -1
    m.mask = <uint64_t>(cap - 1)
    m.shift = 64 - bits
    m.size = 0
    return 0


# PERF: keys that differ only in their low 2 bits share a block of 4 slots (one 64-byte line),
# so ids from a counter touch a quarter of the lines; higher bits are mixed (Fibonacci
# hashing) so strided ids still spread.
cdef inline uint64_t hm_home(const HMap* m, int64_t key) noexcept nogil:
    cdef uint64_t k = <uint64_t>key
    return (((k >> 2) * <uint64_t>0x9E3779B97F4A7C15ULL) >> m.shift) ^ (k & 3)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t hm_probe(const HMap* m, int64_t key) noexcept nogil:
    """Position of ``key``, or of the empty slot where it would go."""
    cdef uint64_t i = hm_home(m, key)
    while m.tab[i].val >= 0 and m.tab[i].key != key:
        i = (i + 1) & m.mask
    return <Py_ssize_t>i


cdef inline int32_t hm_get(const HMap* m, int64_t key) noexcept nogil:
    return m.tab[hm_probe(m, key)].val


cdef int hm_reserve(HMap* m, int64_t n) except -1:
    """Make room for ``n`` keys at load <= 1/2 (positions from hm_probe stay valid after)."""
    cdef HSlot* old = m.tab
    cdef Py_ssize_t oldcap = <Py_ssize_t>m.mask + 1, i, pos
    cdef int bits = 64 - m.shift
    if n * 2 <= oldcap:
        return 0
    while ((<int64_t>1) << bits) < n * 2:
        bits += 1
    m.tab = NULL
    try:
        hm_init(m, bits)
    except MemoryError:
        m.tab = old
        raise
    for i in range(oldcap):
        if old[i].val >= 0:
            pos = hm_probe(m, old[i].key)
            m.tab[pos] = old[i]
            m.size += 1
    PyMem_Free(old)
    return 0


cdef inline void hm_put_at(HMap* m, Py_ssize_t pos, int64_t key, int32_t val) noexcept nogil:
    m.tab[pos].key = key
    m.tab[pos].val = val
    m.size += 1


cdef void hm_del(HMap* m, int64_t key) noexcept nogil:
    cdef uint64_t i = <uint64_t>hm_probe(m, key), j, k
    if m.tab[i].val < 0:
        return
    m.size -= 1
    j = i
    while True:
        j = (j + 1) & m.mask
        if m.tab[j].val < 0:
            break
        k = hm_home(m, m.tab[j].key)
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        m.tab[i] = m.tab[j]
        i = j
    m.tab[i].val = -1


cdef inline int iq_push(IQ* q, int32_t v) except -1:
    cdef int32_t newcap, i
    cdef int32_t* nb
    if q.count == q.cap:
        newcap = q.cap * 2 if q.cap else 8
        nb = <int32_t*>engine_realloc(NULL, newcap * sizeof(int32_t))
        for i in range(q.count):
            nb[i] = q.buf[(q.head + i) % q.cap]
        PyMem_Free(q.buf)
        q.buf = nb
        q.head = 0
        q.cap = newcap
    q.buf[(q.head + q.count) % q.cap] = v
    q.count += 1
    return 0


cdef inline int32_t iq_pop(IQ* q) noexcept nogil:
    cdef int32_t v = q.buf[q.head]
    q.head += 1
    if q.head == q.cap:
        q.head = 0
    q.count -= 1
    return v


cdef inline int vec_push(I64Vec* v, int64_t x) except -1:
    if v.n == v.cap:
        v.cap = v.cap * 2 if v.cap else 16
        v.data = <int64_t*>engine_realloc(v.data, v.cap * sizeof(int64_t))
    v.data[v.n] = x
    v.n += 1
    return 0


cdef object vec_to_array(I64Vec* v, Py_ssize_t start):
    """Copy ``v[start:]`` into a new int64 array and truncate ``v`` to ``start``."""
    cdef Py_ssize_t n = v.n - start, i
    arr = _np_empty(n, dtype=_np_int64)
    cdef int64_t[::1] out = arr
    for i in range(n):
        out[i] = v.data[start + i]
    v.n = start
    return arr
