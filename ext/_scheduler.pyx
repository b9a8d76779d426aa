# cython: language_level=3
# SIZE: over 600 lines because the SchedulerC class body alone is ~1,030: Cython accepts
# `include` only at module level, so a cdef class cannot be split across .pxi files, and
# moving its hot methods out to module functions would only rename the same code. The
# module-level parts are split by concern (_scheduler_tables.pxi, _scheduler_heaps.pxi).
"""Compiled scheduler (``engine._native._scheduler``): same model and results as the reference
twin ``engine/scheduling/_scheduler_py.py``; the API is documented in ``engine.scheduling``.

Everything lives in C tables owned by the object (``PyMem_*``):

- ``tasks``: slab of ``Task`` structs, free list; task id -> slot in an open-addressing map;
- ``edges``: dependents lists (parent -> child), each edge remembers the child's arrival so an
  edge to a removed (or reused) slot is recognised as stale and skipped;
- ``lanes``: one per (pool, tenant): a small heap of the priority levels in use, each level a
  ``Bucket`` ordered by (deadline, key): a FIFO run for entries arriving in order (the common
  case: O(1) push and pop) plus a 4-ary heap for the rest (tasks made ready by a dependency,
  unordered deadlines). Deletion is lazy: an entry is live only while its task is READY with
  the same ``key`` (``arrival << 16 | epoch``; the epoch changes when a READY task goes back
  to WAITING); a lane holding many stale entries is compacted;
- ``pools``: slots, token bucket, and the DRR ring of their lanes; a ring of ACTIVE pools.

Python objects are touched only at the edges (argument conversion, result arrays, the clock).
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, isnan
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memset

from engine_containers cimport engine_cmp_i64, engine_realloc

import time

import numpy as np

from engine.errors import CycleError, SchedulerError
from engine._args import scheduling as _validate

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void*) noexcept nogil

cdef extern from "Python.h":
    long long _as_ll "PyLong_AsLongLong"(object) noexcept
    void* PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept
    double PyFloat_AS_DOUBLE(object) noexcept

# Cached Python callables used on slow (error / unusual type) paths.
cdef object _as_i64 = _validate.as_i64
cdef object _as_priority = _validate.as_priority
cdef object _as_deadline = _validate.as_deadline
cdef object _as_count = _validate.as_count
cdef object _as_weight = _validate.as_weight
cdef object _as_slots = _validate.as_slots
cdef object _as_rate = _validate.as_rate
cdef object _as_policy = _validate.as_policy
cdef object _as_iterable = _validate.as_iterable
cdef object _as_i64_array = _validate.as_i64_array
cdef object _as_f64_array = _validate.as_f64_array
cdef object _np_empty = np.empty
cdef object _np_int64 = np.int64
cdef int64_t I32_MIN = -2147483648
cdef int64_t I32_MAX = 2147483647

# Task states (0 = free slot) and pool states.
cdef enum:
    FREE = 0
    WAITING = 1
    READY = 2
    RUNNING = 3
cdef enum:
    IDLE = 0
    ACTIVE = 1
    FULL = 2
    THROTTLED = 3

cdef tuple _STATE_NAMES = ("free", "waiting", "ready", "running")
cdef uint64_t EPOCH_MASK = 0xFFFF
# PERF: priorities in [0, 64) find their bucket in a per-lane table instead of the bucket hash:
# push_many of 10k random priorities in 0..99 went 41 -> 39 ns per task (thread_time, best of
# 7, 2026-11); a one-entry cache misses whenever consecutive pushes differ in priority.
cdef enum:
    SMALL_PRIO = 64


# ---------------------------------------------------------------------------------------------
# C structs and containers, then the heaps inside a lane: one file per concern
include "_scheduler_tables.pxi"
include "_scheduler_heaps.pxi"


# ---------------------------------------------------------------------------------------------
@cython.final
cdef class SchedulerC:
    """Compiled scheduler; same API and results as :class:`engine.scheduling.SchedulerPy`."""

    cdef HMap tids, pids, tnids, lids
    cdef Task* tasks
    cdef int32_t* free_slots            # stack of free task slots
    cdef int32_t tasks_cap, tasks_used, nfree
    cdef Edge* edges
    cdef int32_t edges_cap, edges_used, free_edge
    cdef Lane* lanes
    cdef int32_t lanes_cap, nlanes
    cdef Bucket* bks
    cdef int32_t bks_cap, bks_used, free_bucket
    cdef HMap bmap                      # (lane << 32 | prio) -> bucket
    cdef int64_t cache_bkey
    cdef int32_t cache_bucket
    cdef Pool* pools
    cdef int32_t pools_cap, npools
    cdef int64_t* weights
    cdef int32_t tenants_cap, ntenants
    cdef IQ ring, throttled
    cdef I64Vec expired_ids, scratch
    cdef uint64_t arrival
    cdef int64_t n_pushed, n_dispatched, n_completed, n_failed, n_cancelled, n_expired
    cdef int64_t n_waiting, n_ready, n_running
    cdef bint policy_fail, timed
    cdef object clock
    cdef int64_t cache_pool, cache_tenant
    cdef int32_t cache_lane

    def __cinit__(self, *args, **kwargs):
        hm_init(&self.tids, 10)
        hm_init(&self.pids, 4)
        hm_init(&self.tnids, 6)
        hm_init(&self.lids, 6)
        hm_init(&self.bmap, 6)
        self.free_bucket = -1
        self.cache_bucket = -1
        self.free_edge = -1
        self.cache_lane = -1

    def __init__(self, *, on_dep_failure="cancel", clock=time.monotonic):
        self.policy_fail = _as_policy(on_dep_failure) == "fail"
        if not callable(clock):
            raise SchedulerError(f"clock must be callable, got {type(clock).__name__}")
        self.clock = clock

    def __dealloc__(self):
        cdef int32_t i
        for i in range(self.nlanes):
            PyMem_Free(self.lanes[i].levels)
            PyMem_Free(self.lanes[i].small)
            PyMem_Free(self.lanes[i].bks)
        for i in range(self.bks_used):
            PyMem_Free(self.bks[i].run)
            PyMem_Free(self.bks[i].heap)
        PyMem_Free(self.bks)
        PyMem_Free(self.bmap.tab)
        for i in range(self.npools):
            PyMem_Free(self.pools[i].ring.buf)
        PyMem_Free(self.tids.tab)
        PyMem_Free(self.pids.tab)
        PyMem_Free(self.tnids.tab)
        PyMem_Free(self.lids.tab)
        PyMem_Free(self.tasks)
        PyMem_Free(self.free_slots)
        PyMem_Free(self.edges)
        PyMem_Free(self.lanes)
        PyMem_Free(self.pools)
        PyMem_Free(self.weights)
        PyMem_Free(self.ring.buf)
        PyMem_Free(self.throttled.buf)
        PyMem_Free(self.expired_ids.data)
        PyMem_Free(self.scratch.data)

    # -- argument conversion: C fast path, the shared Python helper otherwise --------------
    cdef inline int64_t _i64(self, object x, str what) except? -1:
        cdef long long r
        if type(x) is int:
            r = _as_ll(x)
            if r != -1 or PyErr_Occurred() == NULL:
                return r
            PyErr_Clear()
        return _as_i64(x, what)

    cdef inline int32_t _prio(self, object x) except? -1:
        cdef long long r
        if type(x) is int:
            r = _as_ll(x)
            if I32_MIN <= r <= I32_MAX and (r != -1 or PyErr_Occurred() == NULL):
                return <int32_t>r
            PyErr_Clear()
        return _as_priority(x)

    cdef inline double _deadline(self, object x) except? -1.0:
        cdef double d
        if type(x) is float:
            d = PyFloat_AS_DOUBLE(x)
            if not isnan(d):
                return d
        return _as_deadline(x)

    # -- tables ------------------------------------------------------------------------------
    cdef int _reserve_tasks(self, int64_t n) except -1:
        cdef int64_t need = <int64_t>self.tasks_used - self.nfree + n, cap
        if need > I32_MAX:
            raise SchedulerError("too many live tasks")
        hm_reserve(&self.tids, self.tids.size + n)
        if <int64_t>self.tasks_used + n <= self.tasks_cap:
            return 0
        cap = min(max(need, <int64_t>self.tasks_cap * 2, 64), I32_MAX)
        self.free_slots = <int32_t*>engine_realloc(self.free_slots, cap * sizeof(int32_t))
        self.tasks = <Task*>engine_realloc(self.tasks, cap * sizeof(Task))
        self.tasks_cap = <int32_t>cap
        return 0

    # PERF: a stack array of free slots, not a list threaded through the Tasks: popping that
    # list read the freed Task (a cache miss) before every push; 45% of push_many (perf).
    cdef inline int32_t _alloc_task(self) noexcept:
        """A free slot (call _reserve_tasks first)."""
        if self.nfree:
            self.nfree -= 1
            return self.free_slots[self.nfree]
        self.tasks_used += 1
        return self.tasks_used - 1

    cdef inline void _free_task(self, int32_t s) noexcept:
        cdef Task* t = &self.tasks[s]
        if t.first_edge >= 0:  # splice its edge list onto the free list
            self.edges[t.last_edge].next = self.free_edge
            self.free_edge = t.first_edge
        t.state = FREE
        self.free_slots[self.nfree] = s
        self.nfree += 1

    cdef int _reserve_edges(self, int64_t n) except -1:
        cdef int64_t cap
        if <int64_t>self.edges_used + n <= self.edges_cap:
            return 0
        cap = max(<int64_t>self.edges_used + n, <int64_t>self.edges_cap * 2, 64)
        if cap > I32_MAX:
            raise SchedulerError("too many dependencies")
        self.edges = <Edge*>engine_realloc(self.edges, cap * sizeof(Edge))
        self.edges_cap = <int32_t>cap
        return 0

    cdef inline void _add_edge(self, int32_t parent, int32_t child) noexcept:
        """parent -> child (call _reserve_edges first unless the free list has room)."""
        cdef int32_t e = self.free_edge
        cdef Task* p = &self.tasks[parent]
        if e >= 0:
            self.free_edge = self.edges[e].next
        else:
            e = self.edges_used
            self.edges_used += 1
        self.edges[e].child = child
        self.edges[e].arrival = self.tasks[child].key >> 16
        self.edges[e].next = -1
        if p.last_edge >= 0:
            self.edges[p.last_edge].next = e
        else:
            p.first_edge = e
        p.last_edge = e

    cdef inline bint _edge_live(self, int32_t e) noexcept:
        cdef int32_t c = self.edges[e].child
        return self.tasks[c].state == WAITING and (self.tasks[c].key >> 16) == self.edges[e].arrival

    cdef int32_t _pool_index(self, int64_t pid) except -1:
        cdef Py_ssize_t pos
        cdef int32_t i
        cdef Pool* p
        hm_reserve(&self.pids, self.pids.size + 1)
        pos = hm_probe(&self.pids, pid)
        if self.pids.tab[pos].val >= 0:
            return self.pids.tab[pos].val
        if self.npools == self.pools_cap:
            self.pools_cap = self.pools_cap * 2 if self.pools_cap else 8
            self.pools = <Pool*>engine_realloc(self.pools, self.pools_cap * sizeof(Pool))
        i = self.npools
        p = &self.pools[i]
        memset(p, 0, sizeof(Pool))
        p.id = pid
        p.slots = -1
        p.rate = INFINITY
        p.burst = INFINITY
        p.tokens = INFINITY
        p.state = IDLE
        self.npools += 1
        hm_put_at(&self.pids, pos, pid, i)
        return i

    cdef int32_t _tenant_index(self, int64_t tid) except -1:
        cdef Py_ssize_t pos
        cdef int32_t i
        hm_reserve(&self.tnids, self.tnids.size + 1)
        pos = hm_probe(&self.tnids, tid)
        if self.tnids.tab[pos].val >= 0:
            return self.tnids.tab[pos].val
        if self.ntenants == self.tenants_cap:
            self.tenants_cap = self.tenants_cap * 2 if self.tenants_cap else 16
            self.weights = <int64_t*>engine_realloc(self.weights, self.tenants_cap * sizeof(int64_t))
        i = self.ntenants
        self.weights[i] = 1
        self.ntenants += 1
        hm_put_at(&self.tnids, pos, tid, i)
        return i

    cdef int32_t _lane_index(self, int64_t pool, int64_t tenant) except -1:
        cdef int32_t pi, ti, li
        cdef int64_t key
        cdef Py_ssize_t pos
        cdef Lane* lane
        if self.cache_lane >= 0 and pool == self.cache_pool and tenant == self.cache_tenant:
            return self.cache_lane
        pi = self._pool_index(pool)
        ti = self._tenant_index(tenant)
        key = (<int64_t>pi << 32) | ti
        hm_reserve(&self.lids, self.lids.size + 1)
        pos = hm_probe(&self.lids, key)
        if self.lids.tab[pos].val >= 0:
            li = self.lids.tab[pos].val
        else:
            if self.nlanes == self.lanes_cap:
                self.lanes_cap = self.lanes_cap * 2 if self.lanes_cap else 16
                self.lanes = <Lane*>engine_realloc(self.lanes, self.lanes_cap * sizeof(Lane))
            li = self.nlanes
            lane = &self.lanes[li]
            memset(lane, 0, sizeof(Lane))
            lane.pool = pi
            lane.tenant = ti
            self.nlanes += 1
            hm_put_at(&self.lids, pos, key, li)
        self.cache_pool = pool
        self.cache_tenant = tenant
        self.cache_lane = li
        return li

    # -- lanes: priority levels -> buckets (FIFO run + heap) --------------------------------
    cdef int32_t _bucket(self, int32_t li, int32_t prio) except -1:
        """The bucket of priority ``prio`` in lane ``li`` (created, and its level pushed)."""
        cdef int64_t key = (<int64_t>li << 32) | <uint32_t>prio
        cdef Py_ssize_t pos
        cdef int32_t b
        cdef Lane* lane
        cdef Bucket* bk
        cdef Lane* ln = &self.lanes[li]
        cdef int32_t i
        if key == self.cache_bkey and self.cache_bucket >= 0:
            return self.cache_bucket
        if 0 <= prio < SMALL_PRIO and ln.small != NULL and ln.small[prio] >= 0:
            return ln.small[prio]
        hm_reserve(&self.bmap, self.bmap.size + 1)
        pos = hm_probe(&self.bmap, key)
        b = self.bmap.tab[pos].val
        if b < 0:
            lane = &self.lanes[li]
            if lane.nlevels == lane.levels_cap:
                lane.levels_cap = lane.levels_cap * 2 if lane.levels_cap else 4
                lane.levels = <LvlEnt*>engine_realloc(lane.levels, lane.levels_cap * sizeof(LvlEnt))
            if lane.nbks == lane.bks_cap:
                lane.bks_cap = lane.bks_cap * 2 if lane.bks_cap else 4
                lane.bks = <int32_t*>engine_realloc(lane.bks, lane.bks_cap * sizeof(int32_t))
            if self.free_bucket >= 0:
                b = self.free_bucket
                self.free_bucket = self.bks[b].lane_pos
            else:
                if self.bks_used == self.bks_cap:
                    self.bks_cap = self.bks_cap * 2 if self.bks_cap else 16
                    self.bks = <Bucket*>engine_realloc(self.bks, self.bks_cap * sizeof(Bucket))
                b = self.bks_used
                self.bks_used += 1
                memset(&self.bks[b], 0, sizeof(Bucket))
            bk = &self.bks[b]
            bk.prio = prio
            bk.run_head = 0
            bk.run_count = 0
            bk.hsize = 0
            bk.lane_pos = lane.nbks
            lane.bks[lane.nbks] = b
            lane.nbks += 1
            lane.levels[lane.nlevels].prio = prio
            lane.levels[lane.nlevels].bucket = b
            lvl_up(lane.levels, lane.nlevels)
            lane.nlevels += 1
            hm_put_at(&self.bmap, pos, key, b)
            if 0 <= prio < SMALL_PRIO:
                if lane.small == NULL:
                    lane.small = <int32_t*>engine_realloc(NULL, SMALL_PRIO * sizeof(int32_t))
                    for i in range(SMALL_PRIO):
                        lane.small[i] = -1
                lane.small[prio] = b
        self.cache_bkey = key
        self.cache_bucket = b
        return b

    cdef void _release_bucket(self, int32_t li, int32_t b) noexcept:
        """Forget bucket ``b`` of lane ``li`` (the caller drops its level)."""
        cdef Lane* lane = &self.lanes[li]
        cdef Bucket* bk = &self.bks[b]
        cdef int32_t pos = bk.lane_pos, last
        hm_del(&self.bmap, (<int64_t>li << 32) | <uint32_t>bk.prio)
        if 0 <= bk.prio < SMALL_PRIO:
            lane.small[bk.prio] = -1
        lane.nbks -= 1
        last = lane.bks[lane.nbks]
        lane.bks[pos] = last
        self.bks[last].lane_pos = pos
        bk.run_count = 0
        bk.hsize = 0
        # PERF: only a big burst's arrays are given back (> 4096 entries, 128 KiB); freeing at
        # > 64 made every draining level regrow its run each round: push_many 39 -> 77 ns,
        # pop 24 -> 39 ns per task (10k-task rounds, 100 levels, thread_time best of 60).
        if bk.run_cap > 4096:
            PyMem_Free(bk.run)
            bk.run = NULL
            bk.run_cap = 0
        if bk.hcap > 4096:
            PyMem_Free(bk.heap)
            bk.heap = NULL
            bk.hcap = 0
        bk.lane_pos = self.free_bucket
        self.free_bucket = b
        if self.cache_bucket == b:
            self.cache_bucket = -1

    cdef int _lane_push(self, int32_t li, int32_t s) except -1:
        cdef Task* t = &self.tasks[s]
        cdef int32_t b = self._bucket(li, t.prio), cap, i
        cdef Bucket* bk = &self.bks[b]
        cdef BEnt e
        cdef BEnt* nb
        e.deadline = t.deadline
        e.key = t.key
        e.id = t.id
        e.slot = s
        e._pad = 0
        if bk.run_count == 0 or not _less(
                &e, &bk.run[(bk.run_head + bk.run_count - 1) & (bk.run_cap - 1)]):
            if bk.run_count == bk.run_cap:
                cap = bk.run_cap * 2 if bk.run_cap else 8
                nb = <BEnt*>engine_realloc(NULL, cap * sizeof(BEnt))
                for i in range(bk.run_count):
                    nb[i] = bk.run[(bk.run_head + i) & (bk.run_cap - 1)]
                PyMem_Free(bk.run)
                bk.run = nb
                bk.run_head = 0
                bk.run_cap = cap
            bk.run[(bk.run_head + bk.run_count) & (bk.run_cap - 1)] = e
            bk.run_count += 1
        else:
            if bk.hsize == bk.hcap:
                bk.hcap = bk.hcap * 2 if bk.hcap else 8
                bk.heap = <BEnt*>engine_realloc(bk.heap, bk.hcap * sizeof(BEnt))
            bk.heap[bk.hsize] = e
            heap_up(bk.heap, bk.hsize)
            bk.hsize += 1
        self.lanes[li].entries += 1
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _lane_pop(self, int32_t li, BEnt* out) noexcept:
        """Remove the lane's best live entry into ``out`` (``lane.live > 0``)."""
        cdef Lane* lane = &self.lanes[li]
        cdef Bucket* bk
        cdef BEnt* e
        cdef int32_t b
        cdef Task* t
        # PERF: a lane without stale entries skips the validity check: reading the Task here was
        # ~40% of _lane_pop (a cache miss; perf annotate), the dispatch only writes to it.
        cdef bint clean = lane.entries == lane.live
        while True:
            b = lane.levels[0].bucket
            bk = &self.bks[b]
            if bk.run_count == 0 and bk.hsize == 0:
                self._release_bucket(li, b)
                lvl_pop(lane.levels, lane.nlevels)
                lane.nlevels -= 1
                continue
            e = &bk.run[bk.run_head]
            if bk.run_count and (bk.hsize == 0 or not _less(&bk.heap[0], e)):
                out[0] = e[0]
                bk.run_head = (bk.run_head + 1) & (bk.run_cap - 1)
                bk.run_count -= 1
            else:
                out[0] = bk.heap[0]
                heap_pop(bk.heap, bk.hsize)
                bk.hsize -= 1
            lane.entries -= 1
            if bk.run_count == 0 and bk.hsize == 0:
                # PERF: this level is done; the next pop releases it (a bucket-hash delete)
                # and starts on a child of the level root: fetch those lines now. All-distinct
                # priorities (one bucket per task): see docs/performance.md.
                prefetch(&self.bmap.tab[hm_home(
                    &self.bmap, (<int64_t>li << 32) | <uint32_t>bk.prio)])
                if lane.nlevels > 1:
                    prefetch(&self.bks[lane.levels[1].bucket])
                if lane.nlevels > 2:
                    prefetch(&self.bks[lane.levels[2].bucket])
            if clean:
                return
            t = &self.tasks[out.slot]
            if t.state == READY and t.key == out.key:
                return

    cdef void _clear(self, int32_t li) noexcept:
        """Drop every entry of lane ``li`` (all stale: it has no live task)."""
        cdef Lane* lane = &self.lanes[li]
        while lane.nbks:
            self._release_bucket(li, lane.bks[lane.nbks - 1])
        lane.nlevels = 0
        lane.entries = 0

    cdef void _retire(self, int32_t li) noexcept:
        """Lane ``li`` has no live task: leave the ring, drop its (stale) entries."""
        cdef Lane* lane = &self.lanes[li]
        self._clear(li)
        lane.in_ring = 0
        lane.deficit = 0
        lane.granted = 0

    cdef void _compact(self, Lane* lane) noexcept:
        """Drop stale entries of every bucket (keeps a cancel-heavy lane small)."""
        cdef Py_ssize_t i, j, n, k
        cdef Bucket* bk
        cdef BEnt* e
        cdef Task* t
        lane.entries = 0
        for j in range(lane.nbks):
            bk = &self.bks[lane.bks[j]]
            n = 0
            for i in range(bk.run_count):  # in place, order kept (writes trail reads)
                e = &bk.run[(bk.run_head + i) & (bk.run_cap - 1)]
                t = &self.tasks[e.slot]
                if t.state == READY and t.key == e.key:
                    bk.run[(bk.run_head + n) & (bk.run_cap - 1)] = e[0]
                    n += 1
            bk.run_count = <int32_t>n
            k = 0
            for i in range(bk.hsize):
                t = &self.tasks[bk.heap[i].slot]
                if t.state == READY and t.key == bk.heap[i].key:
                    bk.heap[k] = bk.heap[i]
                    k += 1
            bk.hsize = <int32_t>k
            i = (k - 2) // 4 if k > 1 else -1
            while i >= 0:
                heap_down(bk.heap, k, i)
                i -= 1
            lane.entries += n + k

    # -- state transitions -------------------------------------------------------------------
    cdef int _make_ready(self, int32_t s) except -1:
        cdef Task* t = &self.tasks[s]
        cdef int32_t li = t.lane
        cdef Lane* lane
        cdef Pool* p
        self._lane_push(li, s)
        t.state = READY
        lane = &self.lanes[li]
        lane.live += 1
        self.n_waiting -= 1
        self.n_ready += 1
        p = &self.pools[lane.pool]
        p.ready += 1
        if not lane.in_ring:
            lane.in_ring = 1
            iq_push(&p.ring, li)
        if p.state == IDLE:
            p.state = ACTIVE
            iq_push(&self.ring, lane.pool)
        return 0

    cdef void _unready(self, int32_t s) noexcept:
        """A READY task leaves its lane (its heap entry goes stale)."""
        cdef Task* t = &self.tasks[s]
        cdef Lane* lane = &self.lanes[t.lane]
        t.key = (t.key & ~EPOCH_MASK) | ((t.key + 1) & EPOCH_MASK)
        lane.live -= 1
        self.pools[lane.pool].ready -= 1
        self.n_ready -= 1
        if lane.live == 0:  # every entry left is stale; the lane stays in its ring
            self._clear(t.lane)
        elif lane.entries > 2 * lane.live + 64:
            self._compact(lane)

    cdef int _release(self, int32_t pi) except -1:
        """A RUNNING task of pool ``pi`` ended: free its slot."""
        cdef Pool* p = &self.pools[pi]
        p.in_use -= 1
        if p.state == FULL:
            if p.ready > 0:
                p.state = ACTIVE
                iq_push(&self.ring, pi)
            else:
                p.state = IDLE
        return 0

    cdef int _detach(self, int32_t s) except -1:
        """Forget task ``s`` (its edges and slot are freed later by _free_task)."""
        cdef Task* t = &self.tasks[s]
        hm_del(&self.tids, t.id)
        if t.state == READY:
            self._unready(s)
        elif t.state == RUNNING:
            self.n_running -= 1
            self._release(self.lanes[t.lane].pool)
        else:
            self.n_waiting -= 1
        t.state = FREE
        return 0

    cdef Py_ssize_t _drop_dependents(self, int32_t root, bint as_failed) except -1:
        """Remove every task depending (transitively) on ``root`` (already detached); their
        ids, sorted, are appended to ``scratch``; frees ``root``. Returns how many."""
        cdef Py_ssize_t start = self.scratch.n, k, stack_top
        cdef int32_t s, e, c
        cdef I64Vec* out = &self.scratch
        # The ids of dropped tasks double as the DFS stack: their slots are pushed after them.
        cdef I64Vec stack
        stack.data = NULL
        stack.n = 0
        stack.cap = 0
        try:
            vec_push(&stack, root)
            while stack.n:
                stack.n -= 1
                s = <int32_t>stack.data[stack.n]
                e = self.tasks[s].first_edge
                while e >= 0:
                    if self._edge_live(e):
                        c = self.edges[e].child
                        self._detach(c)
                        vec_push(out, self.tasks[c].id)
                        vec_push(&stack, c)
                    e = self.edges[e].next
                self._free_task(s)
        finally:
            PyMem_Free(stack.data)
        k = out.n - start
        if k > 1:
            qsort(&out.data[start], <size_t>k, sizeof(int64_t), engine_cmp_i64)
        if as_failed:
            self.n_failed += k
        else:
            self.n_cancelled += k
        return k

    cdef int _expire(self, int32_t s) except -1:
        """Task ``s`` (just taken off its lane by _drr_pop) missed its deadline."""
        cdef Py_ssize_t i
        vec_push(&self.expired_ids, self.tasks[s].id)
        hm_del(&self.tids, self.tasks[s].id)
        self.tasks[s].state = FREE
        self.n_ready -= 1
        self.n_expired += 1
        self.scratch.n = 0
        self._drop_dependents(s, self.policy_fail)
        for i in range(self.scratch.n):
            vec_push(&self.expired_ids, self.scratch.data[i])
        self.scratch.n = 0
        return 0

    cdef int _complete(self, int32_t s) except -1:
        cdef Task* t = &self.tasks[s]
        cdef int32_t e, c
        if t.state != RUNNING:
            raise SchedulerError(f"task {t.id} is {_STATE_NAMES[t.state]}, not running")
        self._detach(s)
        self.n_completed += 1
        e = self.tasks[s].first_edge
        while e >= 0:
            if self._edge_live(e):
                c = self.edges[e].child
                self.tasks[c].waiting -= 1
                if self.tasks[c].waiting == 0:
                    self._make_ready(c)
            e = self.edges[e].next
        self._free_task(s)
        return 0

    cdef int32_t _find(self, object task, str what) except -1:
        cdef int64_t tid = self._i64(task, what)
        cdef int32_t s = hm_get(&self.tids, tid)
        if s < 0:
            raise SchedulerError(f"unknown {what} id {tid}")
        return s

    # -- dispatch ----------------------------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _drr_pop(self, Pool* p, BEnt* out) noexcept:
        """Next task of pool ``p`` by DRR over its lanes, into ``out`` (``p.ready > 0``)."""
        cdef int32_t li
        cdef Lane* lane
        while True:
            li = p.ring.buf[p.ring.head]
            lane = &self.lanes[li]
            if lane.live == 0:
                iq_pop(&p.ring)
                self._retire(li)
                continue
            if not lane.granted:
                lane.deficit += self.weights[lane.tenant]
                lane.granted = 1
            self._lane_pop(li, out)
            lane.live -= 1
            p.ready -= 1
            lane.deficit -= 1
            if lane.live == 0:
                iq_pop(&p.ring)
                self._retire(li)
            elif lane.deficit <= 0:  # rotate to the back (no growth: it was just popped)
                iq_pop(&p.ring)
                p.ring.buf[(p.ring.head + p.ring.count) % p.ring.cap] = li
                p.ring.count += 1
                lane.granted = 0
            return

    cdef Py_ssize_t _pop_into(self, int64_t* out, Py_ssize_t n) except -1:
        """Dispatch up to ``n`` tasks into ``out``; returns how many."""
        cdef Py_ssize_t k = 0
        cdef double now = 0.0
        cdef int32_t pi
        cdef Pool* p
        cdef BEnt e
        cdef IQ* ring = &self.ring
        if self.timed:  # one clock reading per call, before any state changes
            now = float(self.clock())
        while self.throttled.count:
            pi = iq_pop(&self.throttled)
            self.pools[pi].state = ACTIVE
            iq_push(ring, pi)
        while k < n and ring.count:
            pi = ring.buf[ring.head]
            p = &self.pools[pi]
            if p.ready == 0:
                iq_pop(ring)
                p.state = IDLE
                continue
            if p.slots >= 0 and p.in_use >= p.slots:
                iq_pop(ring)
                p.state = FULL
                continue
            if p.rate != INFINITY:
                if now > p.last:
                    p.tokens = min(p.burst, p.tokens + (now - p.last) * p.rate)
                    p.last = now
                if p.tokens < 1.0:
                    iq_pop(ring)
                    p.state = THROTTLED
                    iq_push(&self.throttled, pi)
                    continue
            self._drr_pop(p, &e)
            iq_pop(ring)
            if p.ready == 0:
                p.state = IDLE
            else:  # rotate (no growth: it was just popped)
                ring.buf[(ring.head + ring.count) % ring.cap] = pi
                ring.count += 1
            if e.deadline != INFINITY and e.deadline < now:
                self._expire(e.slot)
                continue
            p.in_use += 1
            p.tokens -= 1.0
            self.tasks[e.slot].state = RUNNING
            self.n_ready -= 1
            self.n_running += 1
            out[k] = e.id
            k += 1
        self.n_dispatched += k
        return k

    # -- public API --------------------------------------------------------------------------
    @property
    def on_dep_failure(self):
        return "fail" if self.policy_fail else "cancel"

    def set_weight(self, tenant, weight):
        cdef int64_t ten = self._i64(tenant, "tenant")
        cdef int64_t w = _as_weight(weight)
        self.weights[self._tenant_index(ten)] = w

    def weight(self, tenant):
        cdef int32_t i = hm_get(&self.tnids, self._i64(tenant, "tenant"))
        return 1 if i < 0 else self.weights[i]

    def set_pool(self, pool, *, slots=None, rate=None, burst=None):
        cdef int64_t pid = self._i64(pool, "pool")
        cdef int64_t sl = _as_slots(slots)
        cdef double r, b
        r, b = _as_rate(rate, burst)
        cdef int32_t pi = self._pool_index(pid)
        cdef double last = 0.0
        if r != INFINITY:
            last = float(self.clock())
            self.timed = True
        cdef Pool* p = &self.pools[pi]
        p.slots = sl
        p.rate = r
        p.burst = b
        p.tokens = b
        if r != INFINITY:
            p.last = last
        if p.state == FULL:
            p.state = ACTIVE
            iq_push(&self.ring, pi)

    def in_use(self, pool):
        cdef int32_t i = hm_get(&self.pids, self._i64(pool, "pool"))
        return 0 if i < 0 else self.pools[i].in_use

    def __len__(self):
        return self.tids.size

    def __contains__(self, task):
        cdef int64_t tid
        try:
            tid = self._i64(task, "task")
        except SchedulerError:
            return False
        return hm_get(&self.tids, tid) >= 0

    def state(self, task):
        return _STATE_NAMES[self.tasks[self._find(task, "task")].state]

    def stats(self):
        return {
            "pushed": self.n_pushed,
            "dispatched": self.n_dispatched,
            "completed": self.n_completed,
            "failed": self.n_failed,
            "cancelled": self.n_cancelled,
            "expired": self.n_expired,
            "waiting": self.n_waiting,
            "ready": self.n_ready,
            "running": self.n_running,
        }

    def expired(self):
        return vec_to_array(&self.expired_ids, 0)

    def push(self, task, priority=0, deadline=INFINITY, *, tenant=0, pool=0, deps=()):
        cdef int64_t tid = self._i64(task, "task")
        cdef int32_t prio = self._prio(priority)
        cdef double dl = self._deadline(deadline)
        cdef int64_t ten = self._i64(tenant, "tenant")
        cdef int64_t pl = self._i64(pool, "pool")
        cdef list dep_ids = None
        cdef Py_ssize_t pos, i, nd = 0
        cdef int32_t s, li
        cdef int64_t d
        cdef Task* t
        if not (type(deps) is tuple and len(<tuple>deps) == 0):
            dep_ids = [_as_i64(x, "dependency") for x in _as_iterable(deps)]
            nd = len(dep_ids)
        self._reserve_tasks(1)
        pos = hm_probe(&self.tids, tid)
        if self.tids.tab[pos].val >= 0:
            raise SchedulerError(f"duplicate task id {tid}")
        for i in range(nd):
            d = dep_ids[i]
            if d == tid:
                raise CycleError([tid, tid])
            if hm_get(&self.tids, d) < 0:
                raise SchedulerError(f"unknown dependency id {d}")
        if nd:
            self._reserve_edges(nd)
        li = self._lane_index(pl, ten)
        if dl != INFINITY:
            self.timed = True
        s = self._alloc_task()
        hm_put_at(&self.tids, pos, tid, s)
        self.arrival += 1
        t = &self.tasks[s]
        t.id = tid
        t.key = self.arrival << 16
        t.deadline = dl
        t.prio = prio
        t.lane = li
        t.state = WAITING
        t.waiting = <int32_t>nd
        t.first_edge = -1
        t.last_edge = -1
        self.n_waiting += 1
        self.n_pushed += 1
        for i in range(nd):
            self._add_edge(hm_get(&self.tids, dep_ids[i]), s)
        if nd == 0:
            self._make_ready(s)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def push_many(self, tasks, priorities=None, deadlines=None, *, tenants=None, pools=None,
                  dep_counts=None, deps=None):
        ids_a = _as_i64_array(tasks, "tasks")
        cdef const int64_t[::1] ids = ids_a
        cdef Py_ssize_t n = ids.shape[0], i, j, off = 0, pos, nd, total = 0
        cdef const int64_t[::1] prios = (
            None if priorities is None
            else _as_i64_array(priorities, "priorities", n, I32_MIN, I32_MAX))
        cdef const double[::1] dls = (
            None if deadlines is None else _as_f64_array(deadlines, "deadlines", n))
        cdef const int64_t[::1] tens = (
            None if tenants is None else _as_i64_array(tenants, "tenants", n))
        cdef const int64_t[::1] pls = (
            None if pools is None else _as_i64_array(pools, "pools", n))
        cdef const int64_t[::1] counts = None
        cdef const int64_t[::1] flat = None
        if (dep_counts is None) != (deps is None):
            raise SchedulerError("dep_counts and deps must be given together")
        if dep_counts is not None:
            counts_a = _as_i64_array(dep_counts, "dep_counts", n, 0)
            counts = counts_a
            flat = _as_i64_array(deps, "deps")
            total = int(counts_a.sum())
            if total != flat.shape[0]:
                raise SchedulerError(
                    f"dep_counts sums to {total} but deps has {flat.shape[0]} ids")
        if n == 0:
            return
        self._reserve_tasks(n)
        self._reserve_edges(total)
        # Lanes first (they may allocate); then phase 1 inserts WAITING tasks and edges and
        # rolls back on a bad id; phase 2 makes the dependency-free ones ready, in order.
        cdef int32_t* slots = <int32_t*>PyMem_Malloc(n * sizeof(int32_t) + 1)
        # slots of the dependencies, kept from validation for the linking (one lookup each)
        cdef int32_t* dslots = <int32_t*>PyMem_Malloc(total * sizeof(int32_t) + 1)
        if slots == NULL or dslots == NULL:
            PyMem_Free(slots)
            PyMem_Free(dslots)
            raise MemoryError()
        cdef int32_t s, ds
        cdef int64_t tid, d, ten = 0, pl = 0
        cdef Task* t
        cdef bint any_deadline = False
        cdef Py_ssize_t done = 0
        try:
            for i in range(n):
                if tens is not None:
                    ten = tens[i]
                if pls is not None:
                    pl = pls[i]
                slots[i] = self._lane_index(pl, ten)
            err = None
            for i in range(n):
                tid = ids[i]
                if i + 8 < n:
                    prefetch(&self.tids.tab[hm_home(&self.tids, ids[i + 8])])
                pos = hm_probe(&self.tids, tid)
                if self.tids.tab[pos].val >= 0:
                    err = SchedulerError(f"tasks[{i}]: duplicate task id {tid}")
                    break
                nd = counts[i] if counts is not None else 0
                for j in range(off, off + nd):
                    d = flat[j]
                    if d == tid:
                        err = CycleError([tid, tid])
                        break
                    ds = hm_get(&self.tids, d)
                    if ds < 0:
                        err = SchedulerError(f"tasks[{i}]: unknown dependency id {d}")
                        break
                    dslots[j] = ds
                if err is not None:
                    break
                s = self._alloc_task()
                hm_put_at(&self.tids, pos, tid, s)
                self.arrival += 1
                t = &self.tasks[s]
                t.id = tid
                t.key = self.arrival << 16
                t.deadline = dls[i] if dls is not None else INFINITY
                if t.deadline != INFINITY:
                    any_deadline = True
                t.prio = <int32_t>prios[i] if prios is not None else 0
                t.lane = slots[i]
                t.state = WAITING
                t.waiting = <int32_t>nd
                t.first_edge = -1
                t.last_edge = -1
                for j in range(off, off + nd):
                    self._add_edge(dslots[j], s)
                off += nd
                slots[i] = s
                done += 1
            if err is not None:  # roll back phase 1 (stale parent edges are skipped later)
                for i in range(done - 1, -1, -1):
                    s = slots[i]
                    hm_del(&self.tids, self.tasks[s].id)
                    self._free_task(s)
                raise err
            self.n_waiting += n
            self.n_pushed += n
            if any_deadline:
                self.timed = True
            for i in range(n):
                if self.tasks[slots[i]].waiting == 0:
                    self._make_ready(slots[i])
        finally:
            PyMem_Free(slots)
            PyMem_Free(dslots)

    def add_dependency(self, task, dep):
        cdef int32_t s = self._find(task, "task")
        cdef int32_t ds = self._find(dep, "dependency")
        cdef Task* t = &self.tasks[s]
        if t.state == RUNNING:
            raise SchedulerError(f"task {t.id} is already running")
        if s == ds:
            raise CycleError([t.id, t.id])
        if t.first_edge >= 0:
            path = self._path(s, ds)
            if path is not None:
                raise CycleError(path + [t.id])
        self._reserve_edges(1)
        t = &self.tasks[s]
        if t.state == READY:
            self._unready(s)
            t.state = WAITING
            self.n_waiting += 1
        t.waiting += 1
        self._add_edge(ds, s)

    cdef object _path(self, int32_t src, int32_t dst):
        """Ids on the shortest dependents-path src -> ... -> dst (BFS), or None."""
        cdef HMap prev
        cdef I64Vec queue
        cdef Py_ssize_t qi = 0, pos
        cdef int32_t cur, c, e
        queue.data = NULL
        queue.n = 0
        queue.cap = 0
        hm_init(&prev, 6)
        try:
            hm_put_at(&prev, hm_probe(&prev, src), src, 0)
            vec_push(&queue, src)
            while qi < queue.n:
                cur = <int32_t>queue.data[qi]
                qi += 1
                e = self.tasks[cur].first_edge
                while e >= 0:
                    if self._edge_live(e):
                        c = self.edges[e].child
                        hm_reserve(&prev, prev.size + 1)
                        pos = hm_probe(&prev, c)
                        if prev.tab[pos].val < 0:  # val holds prev slot + 1 (0 for src)
                            hm_put_at(&prev, pos, c, cur + 1)
                            if c == dst:
                                path = []
                                while c >= 0:
                                    path.append(self.tasks[c].id)
                                    c = hm_get(&prev, c) - 1
                                path.reverse()
                                return path
                            vec_push(&queue, c)
                    e = self.edges[e].next
            return None
        finally:
            PyMem_Free(prev.tab)
            PyMem_Free(queue.data)

    def pop(self):
        cdef int64_t out
        if self._pop_into(&out, 1):
            return out
        return None

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def pop_ready(self, n):
        cdef long long want = -1
        if type(n) is int:
            want = _as_ll(n)
            if want == -1 and PyErr_Occurred() != NULL:
                PyErr_Clear()
        if want < 0:
            want = _as_count(n)
        # Walk the ring for up to ``want`` dispatches, as the reference does, also when
        # fewer (or no) tasks are ready: the walk retires pools emptied by cancel/expiry,
        # which decides where they re-enter the ring. At most n_ready tasks are dispatched,
        # so ``m`` slots suffice.
        cdef Py_ssize_t m = min(want, self.n_ready)
        cdef int64_t none
        # PERF: one call site of _pop_into: a second one changed GCC's inlining in
        # push_many, +1.1% instructions on benches/hotpath.py's scheduler probe
        # (callgrind, 2026-12)
        cdef int64_t* dst = &none  # m == 0: the walk dispatches nothing
        cdef int64_t[::1] out
        arr = _np_empty(m, dtype=_np_int64)
        if m:
            out = arr
            dst = &out[0]
        elif not (want and self.ring.count):
            return arr
        cdef Py_ssize_t k = self._pop_into(dst, want)
        return arr if k == m else arr[:k]

    def complete(self, task):
        self._complete(self._find(task, "task"))

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def complete_many(self, tasks):
        cdef const int64_t[::1] ids = _as_i64_array(tasks, "tasks")
        cdef Py_ssize_t i, n = ids.shape[0]
        cdef int32_t s
        for i in range(n):
            # PERF: two-stage prefetch (hash slot 16 ahead, then its Task 8 ahead): ids come in
            # dispatch order, so both are cache misses otherwise.
            if i + 16 < n:
                prefetch(&self.tids.tab[hm_home(&self.tids, ids[i + 16])])
            if i + 8 < n:
                s = hm_get(&self.tids, ids[i + 8])
                if s >= 0:
                    prefetch(&self.tasks[s])
            s = hm_get(&self.tids, ids[i])
            if s < 0:
                raise SchedulerError(f"unknown task id {ids[i]}")
            self._complete(s)

    def fail(self, task):
        cdef int32_t s = self._find(task, "task")
        cdef Task* t = &self.tasks[s]
        if t.state != RUNNING:
            raise SchedulerError(f"task {t.id} is {_STATE_NAMES[t.state]}, not running")
        self._detach(s)
        self.n_failed += 1
        self.scratch.n = 0
        self._drop_dependents(s, self.policy_fail)
        return vec_to_array(&self.scratch, 0)

    def cancel(self, task):
        cdef int32_t s = self._find(task, "task")
        self._detach(s)
        self.n_cancelled += 1
        self.scratch.n = 0
        self._drop_dependents(s, False)
        return vec_to_array(&self.scratch, 0)
