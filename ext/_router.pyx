# cython: language_level=3, annotation_typing=False
# SIZE: over 600 lines because the Router class body is ~840: Cython accepts `include` only
# at module level, so a cdef class cannot be split across .pxi files; its C tables (slots,
# types, topics, the pattern trie) share one object on purpose (one allocation discipline,
# no calls between objects on the batch path).
"""Compiled router: the tables behind :class:`engine.routing.Router`.

Python objects live only at the edges: names (AgentId, agent types, topics, pattern
segments) are interned once into ints by dicts held here, and every decision of a batch
(``route_many``/``match_many``) runs on C tables:

- slots: ``CSlot[]`` (type, generation, outstanding); types: ``CType[]`` (instance slots,
  cursor, policy);
- topics: ``CTopic[]`` indexed by topic handle (interned segment ids + the sorted exact
  subscriber list), so an exact topic costs one array index whatever the subscription count;
- wildcard patterns: a segment trie (``CNode[]``) whose literal edges live in one
  open-addressing table keyed by ``(node, segment id)``; ``*``/``#`` edges sit in the node.
  Matching runs the trie as an NFA (set of live nodes per segment, deduplicated by a stamp),
  so ``#`` never explodes and the cost is bounded by topic depth x live nodes.

Subscribe/unsubscribe touch one topic or one trie path: no rebuild. The router is not
thread-safe (like the runtime it serves, it lives on one event loop); batches keep the GIL
because they mutate outstanding counts that Python can observe.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove, memset

from engine_containers cimport engine_cmp_i64, engine_grow
from engine_debug cimport ENGINE_DEBUG

from collections import OrderedDict

import numpy as np

from engine.errors import RoutingError
from engine.messages import AgentId
from engine._args.routing import (
    POLICIES,
    as_index,
    as_int64,
    as_kinds,
    check_max_topics,
    check_subscriber,
    is_exact,
    parse_pattern,
    parse_topic,
)

cdef object _np_empty = np.empty
cdef object _np_int64 = np.int64

cdef enum:
    KIND_DIRECT = 0
    KIND_TYPE = 1
    KIND_TOPIC = 2
    SEG_STAR = -1
    SEG_HASH = -2
    ROOT = 0

cdef uint64_t MASK32 = 0xFFFFFFFF
cdef uint64_t EMPTY_KEY = 0xFFFFFFFFFFFFFFFF


# -- small C containers -------------------------------------------------------------------

ctypedef struct SubEntry:
    int64_t sub
    int64_t count

ctypedef struct SubList:  # sorted by sub, unique; count = subscriptions of that subscriber
    SubEntry *items
    Py_ssize_t n
    Py_ssize_t cap

ctypedef struct CSlot:
    int32_t type  # -1 when the slot is free
    uint32_t gen  # bumped on removal: stale handles stop routing
    int64_t outstanding

ctypedef struct CType:
    int32_t *inst  # instance slots in registration order
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t cursor
    int policy  # index into POLICIES

ctypedef struct CTopic:
    int32_t *segs  # interned segment ids
    Py_ssize_t nsegs
    uint32_t gen  # bumped on eviction: stale handles are refused
    int live
    SubList exact
    int64_t *cache  # last full match result while wildcards are unchanged
    Py_ssize_t cache_n
    Py_ssize_t cache_cap
    uint64_t cache_epoch  # == Router.epoch when valid; 0 = invalid

ctypedef struct CNode:
    int32_t star  # child via `*`, -1 if none
    int32_t hash  # child via `#`, -1 if none
    int32_t refs  # patterns through or ending at this node
    int32_t nlit  # literal children (in the edge table)
    int is_hash  # reached via `#`: consumes any segment and stays
    uint32_t mark  # NFA dedup stamp
    SubList subs  # subscribers of patterns ending here


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _sub_find(SubList *s, int64_t sub) noexcept:
    """Index of the first entry with ``.sub >= sub`` (binary search)."""
    cdef Py_ssize_t lo = 0, hi = s.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if s.items[mid].sub < sub:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int _sub_add(SubList *s, int64_t sub) except -1:
    cdef Py_ssize_t i = _sub_find(s, sub)
    if i < s.n and s.items[i].sub == sub:
        s.items[i].count += 1
        return 0
    engine_grow(<void **>&s.items, &s.cap, s.n + 1, sizeof(SubEntry))
    memmove(&s.items[i + 1], &s.items[i], <size_t>(s.n - i) * sizeof(SubEntry))
    s.items[i].sub = sub
    s.items[i].count = 1
    s.n += 1
    return 0


cdef void _sub_remove(SubList *s, int64_t sub) noexcept:
    cdef Py_ssize_t i = _sub_find(s, sub)
    if i >= s.n or s.items[i].sub != sub:
        return
    s.items[i].count -= 1
    if s.items[i].count == 0:
        memmove(&s.items[i], &s.items[i + 1], <size_t>(s.n - i - 1) * sizeof(SubEntry))
        s.n -= 1


cdef void _sub_free(SubList *s) noexcept:
    PyMem_Free(s.items)
    s.items = NULL
    s.n = 0
    s.cap = 0


cdef inline uint64_t _edge_key(int32_t node, int32_t seg) noexcept nogil:
    return ((<uint64_t><uint32_t>node) << 32) | <uint32_t>seg


cdef inline Py_ssize_t _edge_slot(uint64_t key, Py_ssize_t mask) noexcept nogil:
    # Fibonacci hashing; the high bits are the well-mixed ones.
    return <Py_ssize_t>((key * <uint64_t>0x9E3779B97F4A7C15) >> 32) & mask


@cython.final
cdef class Router:
    """Compiled router: same contract as :class:`engine.routing.RouterPy`, C tables inside."""

    cdef readonly int max_topics
    # agents
    cdef dict _slot_of
    cdef list _agents
    cdef list _free_slots
    cdef CSlot *slots
    cdef Py_ssize_t nslots, slots_cap
    # types
    cdef dict _type_of
    cdef CType *types
    cdef Py_ssize_t ntypes, types_cap
    # topics
    cdef dict _topic_of
    cdef list _topic_name
    cdef list _free_topics
    cdef object _unpinned  # OrderedDict[int, None], LRU of topics no exact subscription pins
    cdef CTopic *topics
    cdef Py_ssize_t ntopics, topics_cap
    # segments (interned, reference-counted by topics and trie edges)
    cdef dict _seg_of
    cdef list _seg_name
    cdef list _seg_refs
    cdef list _free_segs
    # wildcard trie
    cdef CNode *nodes
    cdef Py_ssize_t nnodes, nodes_cap
    cdef list _free_nodes
    cdef Py_ssize_t nwild  # live wildcard subscriptions
    cdef uint64_t epoch  # bumped by every wildcard change: invalidates every topic's cache
    cdef uint64_t *edge_keys
    cdef int32_t *edge_vals
    cdef Py_ssize_t edges_n, edges_cap
    cdef uint32_t stamp
    cdef int32_t *act_a
    cdef int32_t *act_b
    cdef Py_ssize_t act_cap
    # subscriptions: sid -> (pattern segment ids or None, topic index, subscriber)
    cdef dict _subs
    cdef int64_t _next_sid
    # output buffer of a batch
    cdef int64_t *out
    cdef Py_ssize_t out_n, out_cap

    def __cinit__(self) -> None:
        self.slots = NULL
        self.types = NULL
        self.topics = NULL
        self.nodes = NULL
        self.edge_keys = NULL
        self.edge_vals = NULL
        self.act_a = NULL
        self.act_b = NULL
        self.out = NULL

    def __init__(self, *, max_topics: int = 65536) -> None:
        cdef int limit = check_max_topics(max_topics)
        if self.edge_keys != NULL:
            raise RoutingError("Router.__init__ called twice")
        self.max_topics = limit
        self._slot_of = {}
        self._agents = []
        self._free_slots = []
        self._type_of = {}
        self._topic_of = {}
        self._topic_name = []
        self._free_topics = []
        self._unpinned = OrderedDict()
        self._seg_of = {}
        self._seg_name = []
        self._seg_refs = []
        self._free_segs = []
        self._free_nodes = []
        self._subs = {}
        self._next_sid = 0
        self.nwild = 0
        self.epoch = 1
        self.stamp = 0
        self._edges_init(64)
        engine_grow(<void **>&self.out, &self.out_cap, 1024, sizeof(int64_t))  # never NULL
        self.nnodes = 0
        self._new_node(0)  # the root

    def __dealloc__(self) -> None:
        cdef Py_ssize_t i
        for i in range(self.ntypes):
            PyMem_Free(self.types[i].inst)
        for i in range(self.ntopics):
            PyMem_Free(self.topics[i].segs)
            _sub_free(&self.topics[i].exact)
            PyMem_Free(self.topics[i].cache)
        for i in range(self.nnodes):
            _sub_free(&self.nodes[i].subs)
        PyMem_Free(self.slots)
        PyMem_Free(self.types)
        PyMem_Free(self.topics)
        PyMem_Free(self.nodes)
        PyMem_Free(self.edge_keys)
        PyMem_Free(self.edge_vals)
        PyMem_Free(self.act_a)
        PyMem_Free(self.act_b)
        PyMem_Free(self.out)

    # -- agents ---------------------------------------------------------------------------

    def add_agent(self, agent: AgentId) -> int:
        """Register an agent instance; returns its slot (the same slot if already known)."""
        cdef Py_ssize_t slot, tix
        cdef CType *t
        if not isinstance(agent, AgentId):
            raise RoutingError(f"agent must be an AgentId, got {type(agent).__name__}")
        found = self._slot_of.get(agent)
        if found is not None:
            return found
        tix = self._type_index(agent.type, True)
        if self._free_slots:
            slot = self._free_slots.pop()
            self._agents[slot] = agent
        else:
            slot = self.nslots
            engine_grow(<void **>&self.slots, &self.slots_cap, slot + 1, sizeof(CSlot))
            self.nslots += 1
            self._agents.append(agent)
        self.slots[slot].type = <int32_t>tix
        self.slots[slot].outstanding = 0
        t = &self.types[tix]
        engine_grow(<void **>&t.inst, &t.cap, t.n + 1, sizeof(int32_t))
        t.inst[t.n] = <int32_t>slot
        t.n += 1
        self._slot_of[agent] = slot
        return slot

    def remove_agent(self, agent: AgentId) -> None:
        """Unregister an agent; its slot may be reused and its old handle stops routing."""
        cdef Py_ssize_t slot = self.slot(agent), i = 0
        cdef CType *t = &self.types[self.slots[slot].type]
        while t.inst[i] != slot:
            i += 1
        memmove(&t.inst[i], &t.inst[i + 1], <size_t>(t.n - i - 1) * sizeof(int32_t))
        t.n -= 1
        if i < t.cursor:
            t.cursor -= 1
        if t.cursor >= t.n:
            t.cursor = 0
        del self._slot_of[agent]
        self._agents[slot] = None
        self.slots[slot].type = -1
        self.slots[slot].outstanding = 0
        self.slots[slot].gen += 1
        self._free_slots.append(slot)

    def slot(self, agent: AgentId) -> int:
        """The slot of a registered agent (direct delivery)."""
        try:
            return self._slot_of[agent]
        except (KeyError, TypeError):
            raise RoutingError(f"unknown agent {agent!r}") from None

    def agent(self, slot: int) -> AgentId:
        """The agent registered at ``slot``."""
        return self._agents[self._live(slot)]

    def handle(self, agent: AgentId) -> int:
        """A ``KIND_DIRECT`` target for :meth:`route_many`; stale once the agent is removed."""
        cdef Py_ssize_t slot = self.slot(agent)
        return (<int64_t>self.slots[slot].gen << 32) | slot

    def __len__(self) -> int:
        return len(self._slot_of)

    cdef Py_ssize_t _live(self, object slot) except -1:
        cdef Py_ssize_t s
        found = as_index(slot)
        if found is not None and 0 <= found < self.nslots:
            s = found
            if self.slots[s].type >= 0:
                return s
        raise RoutingError(f"unknown slot {slot!r}")

    # -- by type --------------------------------------------------------------------------

    cdef Py_ssize_t _type_index(self, object type_, bint create) except -1:
        cdef Py_ssize_t tix
        if not isinstance(type_, str) or not type_:
            raise RoutingError(f"agent type must be a non-empty str, got {type_!r}")
        found = self._type_of.get(type_)
        if found is not None:
            return found
        if not create:
            raise RoutingError(f"unknown agent type {type_!r}")
        tix = self.ntypes
        engine_grow(<void **>&self.types, &self.types_cap, tix + 1, sizeof(CType))
        self.ntypes += 1
        self._type_of[type_] = tix
        return tix

    def set_policy(self, type_: str, policy: str) -> None:
        """Choose how :meth:`pick` balances ``type_``: ``round_robin`` or ``least_outstanding``."""
        if policy not in POLICIES:
            raise RoutingError(f"unknown policy {policy!r} (expected one of {', '.join(POLICIES)})")
        self.types[self._type_index(type_, True)].policy = POLICIES.index(policy)

    def policy(self, type_: str) -> str:
        """The balancing policy of ``type_``."""
        return POLICIES[self.types[self._type_index(type_, False)].policy]

    def type_handle(self, type_: str) -> int:
        """A ``KIND_TYPE`` target for :meth:`route_many` (the type must be known)."""
        return self._type_index(type_, False)

    def instances(self, type_: str) -> list[int]:
        """Slots of ``type_``'s instances, in registration order."""
        cdef CType *t = &self.types[self._type_index(type_, False)]
        return [t.inst[i] for i in range(t.n)]

    def pick(self, type_: str) -> int:
        """Choose an instance of ``type_`` per its policy; its outstanding count grows by one."""
        cdef int32_t slot = self._pick(self._type_index(type_, False))
        if slot < 0:
            raise RoutingError(f"no instances of agent type {type_!r}")
        return slot

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline int32_t _pick(self, Py_ssize_t tix) noexcept:
        cdef CType *t = &self.types[tix]
        cdef Py_ssize_t n = t.n, start = t.cursor, chosen = start, i, k
        cdef int64_t best, o
        cdef int32_t slot
        if n == 0:
            return -1
        if t.policy == 1:  # least outstanding; ties go round-robin from the cursor
            best = self.slots[t.inst[start]].outstanding
            i = start
            for k in range(1, n):
                i += 1
                if i == n:
                    i = 0
                o = self.slots[t.inst[i]].outstanding
                if o < best:
                    best = o
                    chosen = i
        t.cursor = chosen + 1 if chosen + 1 < n else 0
        slot = t.inst[chosen]
        self.slots[slot].outstanding += 1
        return slot

    def ack(self, slot: int, n: int = 1) -> None:
        """Record ``n`` completions for ``slot`` (its outstanding count never drops below 0)."""
        cdef Py_ssize_t s = self._live(slot)
        count = as_index(n)
        if count is None or count < 0:
            raise RoutingError(f"ack count must be an int >= 0, got {n!r}")
        if count >= self.slots[s].outstanding:
            self.slots[s].outstanding = 0
        else:
            self.slots[s].outstanding -= <int64_t>count

    def outstanding(self, slot: int) -> int:
        """Picks of ``slot`` not yet acknowledged."""
        return self.slots[self._live(slot)].outstanding

    # -- segments -------------------------------------------------------------------------

    cdef int32_t _seg_ref(self, str seg) except -2:
        cdef int32_t sid
        found = self._seg_of.get(seg)
        if found is not None:
            sid = found
            self._seg_refs[sid] += 1
            return sid
        if self._free_segs:
            sid = self._free_segs.pop()
            self._seg_name[sid] = seg
            self._seg_refs[sid] = 1
        else:
            if len(self._seg_name) >= 0x7FFFFFFF:
                raise RoutingError("too many distinct topic segments")
            sid = len(self._seg_name)
            self._seg_name.append(seg)
            self._seg_refs.append(1)
        self._seg_of[seg] = sid
        return sid

    cdef void _seg_unref(self, int32_t sid):
        self._seg_refs[sid] -= 1
        if self._seg_refs[sid] == 0:
            del self._seg_of[self._seg_name[sid]]
            self._seg_name[sid] = None
            self._free_segs.append(sid)

    # -- topics ---------------------------------------------------------------------------

    def topic_handle(self, topic: str) -> int:
        """A ``KIND_TOPIC`` target for :meth:`route_many`/:meth:`match_many`.

        Topics are interned on first sight. Topics no exact subscription pins are kept in
        an LRU of ``max_topics``; an evicted topic's handle is refused as stale.
        """
        cdef Py_ssize_t idx = self._topic_index(topic)
        return (<int64_t>self.topics[idx].gen << 32) | idx

    def topic_handles(self, topics) -> object:
        """:meth:`topic_handle` for many topics at once (an int64 array)."""
        if isinstance(topics, str):
            raise RoutingError("topics must be an iterable of str, not a str")
        items = list(topics)
        out = _np_empty(len(items), dtype=_np_int64)
        cdef int64_t[::1] ov = out
        cdef Py_ssize_t i, idx
        for i in range(len(items)):
            idx = self._topic_index(items[i])
            ov[i] = (<int64_t>self.topics[idx].gen << 32) | idx
        return out

    cdef Py_ssize_t _topic_index(self, object topic) except -1:
        cdef Py_ssize_t idx, j, n
        cdef CTopic *t
        found = self._topic_of.get(topic) if isinstance(topic, str) else None
        if found is not None:
            if found in self._unpinned:
                self._unpinned.move_to_end(found)
            return found
        segs = parse_topic(topic)
        while len(self._unpinned) >= self.max_topics:
            self._evict(self._unpinned.popitem(last=False)[0])
        if self._free_topics:
            idx = self._free_topics.pop()
            self._topic_name[idx] = topic
        else:
            idx = self.ntopics
            engine_grow(<void **>&self.topics, &self.topics_cap, idx + 1, sizeof(CTopic))
            self.ntopics += 1
            self._topic_name.append(topic)
        n = len(segs)
        t = &self.topics[idx]
        t.segs = <int32_t *>PyMem_Malloc(<size_t>n * sizeof(int32_t))
        if t.segs == NULL:
            raise MemoryError()
        t.nsegs = 0
        for j in range(n):
            self.topics[idx].segs[j] = self._seg_ref(segs[j])
            self.topics[idx].nsegs = j + 1
        self.topics[idx].live = 1
        self._topic_of[topic] = idx
        self._unpinned[idx] = None
        return idx

    cdef _evict(self, Py_ssize_t idx):
        cdef CTopic *t = &self.topics[idx]
        cdef Py_ssize_t j
        del self._topic_of[self._topic_name[idx]]
        self._topic_name[idx] = None
        for j in range(t.nsegs):
            self._seg_unref(t.segs[j])
        PyMem_Free(t.segs)
        t.segs = NULL
        t.nsegs = 0
        t.live = 0
        t.cache_epoch = 0
        t.gen += 1
        self._free_topics.append(idx)

    # -- wildcard trie --------------------------------------------------------------------

    cdef int _edges_init(self, Py_ssize_t cap) except -1:
        cdef Py_ssize_t i
        self.edge_keys = <uint64_t *>PyMem_Malloc(<size_t>cap * sizeof(uint64_t))
        self.edge_vals = <int32_t *>PyMem_Malloc(<size_t>cap * sizeof(int32_t))
        if self.edge_keys == NULL or self.edge_vals == NULL:
            raise MemoryError()
        for i in range(cap):
            self.edge_keys[i] = EMPTY_KEY
        self.edges_cap = cap
        self.edges_n = 0
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline int32_t _edge_get(self, int32_t node, int32_t seg) noexcept:
        cdef uint64_t key = _edge_key(node, seg), k
        cdef Py_ssize_t mask = self.edges_cap - 1
        cdef Py_ssize_t i = _edge_slot(key, mask)
        while True:
            k = self.edge_keys[i]
            if k == key:
                return self.edge_vals[i]
            if k == EMPTY_KEY:
                return -1
            i = (i + 1) & mask

    cdef int _edge_put(self, int32_t node, int32_t seg, int32_t child) except -1:
        cdef uint64_t *old_keys
        cdef int32_t *old_vals
        cdef Py_ssize_t old_cap, i, j, mask
        cdef uint64_t key
        if (self.edges_n + 1) * 2 > self.edges_cap:  # keep the load factor <= 1/2
            old_keys, old_vals, old_cap = self.edge_keys, self.edge_vals, self.edges_cap
            self.edge_keys = NULL
            self.edge_vals = NULL
            try:
                self._edges_init(old_cap * 2)
            except MemoryError:
                PyMem_Free(self.edge_keys)
                PyMem_Free(self.edge_vals)
                self.edge_keys, self.edge_vals, self.edges_cap = old_keys, old_vals, old_cap
                raise
            mask = self.edges_cap - 1
            for j in range(old_cap):
                if old_keys[j] != EMPTY_KEY:
                    i = _edge_slot(old_keys[j], mask)
                    while self.edge_keys[i] != EMPTY_KEY:
                        i = (i + 1) & mask
                    self.edge_keys[i] = old_keys[j]
                    self.edge_vals[i] = old_vals[j]
                    self.edges_n += 1
            PyMem_Free(old_keys)
            PyMem_Free(old_vals)
        key = _edge_key(node, seg)
        mask = self.edges_cap - 1
        i = _edge_slot(key, mask)
        while self.edge_keys[i] != EMPTY_KEY:
            i = (i + 1) & mask
        self.edge_keys[i] = key
        self.edge_vals[i] = child
        self.edges_n += 1
        return 0

    cdef void _edge_del(self, int32_t node, int32_t seg) noexcept:
        """Remove an edge with backward-shift deletion (no tombstones)."""
        cdef uint64_t key = _edge_key(node, seg)
        cdef Py_ssize_t mask = self.edges_cap - 1
        cdef Py_ssize_t i = _edge_slot(key, mask), j, home
        while self.edge_keys[i] != key:
            if self.edge_keys[i] == EMPTY_KEY:
                return
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            if self.edge_keys[j] == EMPTY_KEY:
                break
            home = _edge_slot(self.edge_keys[j], mask)
            # move j back into the hole at i unless its home lies cyclically in (i, j]
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                self.edge_keys[i] = self.edge_keys[j]
                self.edge_vals[i] = self.edge_vals[j]
                i = j
        self.edge_keys[i] = EMPTY_KEY
        self.edges_n -= 1

    cdef int32_t _new_node(self, int is_hash) except -1:
        cdef int32_t n
        cdef CNode *node
        cdef void *p
        if self._free_nodes:
            n = self._free_nodes.pop()
        else:
            if self.nnodes >= 0x7FFFFFFF:
                raise RoutingError("too many pattern nodes")
            n = <int32_t>self.nnodes
            engine_grow(<void **>&self.nodes, &self.nodes_cap, n + 1, sizeof(CNode))
            self.nnodes += 1
            if self.nodes_cap > self.act_cap:  # NFA state sets hold each node at most once
                p = PyMem_Realloc(self.act_a, <size_t>self.nodes_cap * sizeof(int32_t))
                if p == NULL:
                    raise MemoryError()
                self.act_a = <int32_t *>p
                p = PyMem_Realloc(self.act_b, <size_t>self.nodes_cap * sizeof(int32_t))
                if p == NULL:
                    raise MemoryError()
                self.act_b = <int32_t *>p
                self.act_cap = self.nodes_cap
        node = &self.nodes[n]
        memset(node, 0, sizeof(CNode))
        node.star = -1
        node.hash = -1
        node.is_hash = is_hash
        return n

    cdef int32_t _child(self, int32_t node, int32_t seg, bint create) except -2:
        cdef int32_t c
        if seg == SEG_STAR:
            c = self.nodes[node].star
        elif seg == SEG_HASH:
            c = self.nodes[node].hash
        else:
            c = self._edge_get(node, seg)
        if c >= 0 or not create:
            return c
        c = self._new_node(seg == SEG_HASH)  # may move self.nodes: index, never hold pointers
        if seg == SEG_STAR:
            self.nodes[node].star = c
        elif seg == SEG_HASH:
            self.nodes[node].hash = c
        else:
            self._edge_put(node, seg, c)
            self.nodes[node].nlit += 1
        return c

    cdef int _wild_add(self, tuple segs, int64_t sub) except -1:
        cdef int32_t node = ROOT
        for seg in segs:
            node = self._child(node, seg, True)
            self.nodes[node].refs += 1
        _sub_add(&self.nodes[node].subs, sub)
        self.nwild += 1
        self.epoch += 1
        return 0

    cdef int _wild_remove(self, tuple segs, int64_t sub) except -1:
        cdef list path = [ROOT]
        cdef int32_t node = ROOT, parent, child
        cdef Py_ssize_t k
        for seg in segs:
            node = self._child(node, seg, False)
            path.append(node)
        _sub_remove(&self.nodes[node].subs, sub)
        self.nwild -= 1
        self.epoch += 1
        for k in range(len(segs), 0, -1):
            child = path[k]
            self.nodes[child].refs -= 1
            if self.nodes[child].refs > 0:
                continue
            parent = path[k - 1]
            seg_id = segs[k - 1]
            if seg_id == SEG_STAR:
                self.nodes[parent].star = -1
            elif seg_id == SEG_HASH:
                self.nodes[parent].hash = -1
            else:
                self._edge_del(parent, seg_id)
                self.nodes[parent].nlit -= 1
            _sub_free(&self.nodes[child].subs)
            self._free_nodes.append(child)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline Py_ssize_t _enter(self, int32_t *act, Py_ssize_t n, int32_t x) noexcept:
        """Add ``x`` and the `#` chain below it (``#`` matches zero segments) to a state set."""
        while x >= 0 and self.nodes[x].mark != self.stamp:
            self.nodes[x].mark = self.stamp
            act[n] = x
            n += 1
            x = self.nodes[x].hash
        return n

    cdef inline void _next_stamp(self) noexcept:
        cdef Py_ssize_t i
        self.stamp += 1
        if self.stamp == 0:  # wrapped: clear every mark once per 4 billion steps
            for i in range(self.nnodes):
                self.nodes[i].mark = 0
            self.stamp = 1

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _nfa(self, const int32_t *segs, Py_ssize_t nsegs) noexcept:
        """Run the trie as an NFA over ``segs``; the final state set is left in ``act_a``."""
        cdef int32_t *a = self.act_a
        cdef int32_t *b = self.act_b
        cdef int32_t *tmp
        cdef Py_ssize_t na, nb, j, k
        cdef int32_t n, c, s
        cdef CNode *node
        self._next_stamp()
        na = self._enter(a, 0, ROOT)
        for j in range(nsegs):
            s = segs[j]
            self._next_stamp()
            nb = 0
            for k in range(na):
                n = a[k]
                node = &self.nodes[n]
                if node.is_hash:
                    nb = self._enter(b, nb, n)
                if node.nlit:
                    c = self._edge_get(n, s)
                    if c >= 0:
                        nb = self._enter(b, nb, c)
                if node.star >= 0:
                    nb = self._enter(b, nb, node.star)
            tmp = a
            a = b
            b = tmp
            na = nb
            if na == 0:
                break
        if a != self.act_a and na:
            memcpy(self.act_a, a, <size_t>na * sizeof(int32_t))
        return na

    # -- matching -------------------------------------------------------------------------

    cdef inline int _out_reserve(self, Py_ssize_t extra) except -1:
        if self.out_n + extra > self.out_cap:
            engine_grow(<void **>&self.out, &self.out_cap, self.out_n + extra, sizeof(int64_t))
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _match_into(self, Py_ssize_t idx) except -1:
        """Append topic ``idx``'s subscribers (ascending, unique) to the output buffer."""
        cdef CTopic *t = &self.topics[idx]
        cdef SubList *s = &t.exact
        cdef SubList *w
        cdef Py_ssize_t start = self.out_n, na, k, i, total, sources, j
        cdef int64_t *o
        cdef int64_t last
        # PERF: exact topics with no wildcard subscription skip the trie entirely: one index
        # into topics[] + a copy; 100k subscriptions route like 10 (0.86-0.97x,
        # benches/bench_router.py::test_route_many[native-exact_*], 2026-11).
        if self.nwild == 0:
            self._out_reserve(s.n)
            o = self.out + start
            for i in range(s.n):
                o[i] = s.items[i].sub
            self.out_n += s.n
            return 0
        # PERF: with wildcards, the NFA costs ~420 instructions per 3-segment topic vs ~130
        # for a cached copy (callgrind, 50 x 10k mixed batches; docs/performance.md, 2026-11):
        # each topic keeps its last result until a wildcard (or its own exact) subscription
        # changes.
        if t.cache_epoch == self.epoch:
            if t.cache_n:
                self._out_reserve(t.cache_n)
                memcpy(self.out + start, t.cache, <size_t>t.cache_n * sizeof(int64_t))
                self.out_n += t.cache_n
            return 0
        na = self._nfa(t.segs, t.nsegs)
        total = s.n
        sources = 1 if s.n else 0
        for k in range(na):
            w = &self.nodes[self.act_a[k]].subs
            if w.n:
                total += w.n
                sources += 1
        self._out_reserve(total)
        t = &self.topics[idx]
        s = &t.exact
        o = self.out + start
        j = 0
        for i in range(s.n):
            o[j] = s.items[i].sub
            j += 1
        for k in range(na):
            w = &self.nodes[self.act_a[k]].subs
            for i in range(w.n):
                o[j] = w.items[i].sub
                j += 1
        if sources > 1:  # several sorted lists: sort the union and drop duplicates
            qsort(o, <size_t>total, sizeof(int64_t), engine_cmp_i64)
            j = 1
            last = o[0]
            for i in range(1, total):
                if o[i] != last:
                    last = o[i]
                    o[j] = last
                    j += 1
        if ENGINE_DEBUG:
            for i in range(1, j):
                assert o[i - 1] < o[i], "match output must be ascending and unique"
        self.out_n = start + j
        if j > t.cache_cap:
            engine_grow(<void **>&t.cache, &t.cache_cap, j, sizeof(int64_t))
        if j:
            memcpy(t.cache, self.out + start, <size_t>j * sizeof(int64_t))
        t.cache_n = j
        t.cache_epoch = self.epoch
        return 0

    def subscribe(self, pattern: str, subscriber: int) -> int:
        """Deliver topics matching ``pattern`` to ``subscriber``; returns a subscription id."""
        cdef Py_ssize_t idx = -1
        segs = parse_pattern(pattern)
        cdef int64_t sub = check_subscriber(subscriber)
        if is_exact(segs):
            idx = self._topic_index(pattern)
            self._unpinned.pop(idx, None)
            _sub_add(&self.topics[idx].exact, sub)
            self.topics[idx].cache_epoch = 0
            ids = None
        else:
            ids = tuple(
                SEG_STAR if seg == "*" else SEG_HASH if seg == "#" else self._seg_ref(seg)
                for seg in segs
            )
            self._wild_add(ids, sub)
        sid = self._next_sid
        self._next_sid += 1
        self._subs[sid] = (ids, idx, sub)
        return sid

    def unsubscribe(self, sid: int) -> None:
        """Remove a subscription made by :meth:`subscribe`."""
        cdef Py_ssize_t idx
        try:
            ids, idx, sub = self._subs.pop(sid)
        except (KeyError, TypeError):
            raise RoutingError(f"unknown subscription {sid!r}") from None
        if ids is None:
            _sub_remove(&self.topics[idx].exact, sub)
            self.topics[idx].cache_epoch = 0
            if self.topics[idx].exact.n == 0:
                self._unpinned[idx] = None
                while len(self._unpinned) > self.max_topics:
                    self._evict(self._unpinned.popitem(last=False)[0])
        else:
            self._wild_remove(ids, sub)
            for seg in ids:
                if seg >= 0:
                    self._seg_unref(seg)

    def subscription_count(self) -> int:
        """Number of live subscriptions."""
        return len(self._subs)

    def match(self, topic: str) -> list[int]:
        """Subscribers of ``topic``: ascending, each once."""
        cdef Py_ssize_t idx = self._topic_index(topic)
        self.out_n = 0
        self._match_into(idx)
        return [self.out[i] for i in range(self.out_n)]

    # -- batches --------------------------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _bad_topic(self, const int64_t *h, Py_ssize_t n) noexcept:
        """Index of the first stale/invalid topic handle in ``h[:n]``, or -1."""
        cdef Py_ssize_t i
        cdef uint64_t idx
        for i in range(n):
            idx = <uint64_t>h[i] & MASK32
            if h[i] < 0 or idx >= <uint64_t>self.ntopics or not self.topics[idx].live or (
                self.topics[idx].gen != <uint64_t>h[i] >> 32
            ):
                return i
        return -1

    def route_many(self, kinds, targets):
        """Route a batch; returns ``(offsets, destinations)`` in CSR form (see ``Router``).

        ``kinds[i]`` (uint8) says what ``targets[i]`` (int64) is: ``KIND_DIRECT`` an agent
        handle (-> its slot, or nothing once removed), ``KIND_TYPE`` a type handle (-> the
        picked instance's slot, outstanding + 1, or nothing without instances), ``KIND_TOPIC``
        a topic handle (-> subscribers, ascending). Invalid kinds or handles raise
        RoutingError before any decision is made.
        """
        k_arr = as_kinds(kinds)
        t_arr = as_int64(targets)
        if len(k_arr) != len(t_arr):
            raise RoutingError(f"kinds has {len(k_arr)} entries but targets has {len(t_arr)}")
        cdef const uint8_t[::1] kv = k_arr
        cdef const int64_t[::1] tv = t_arr
        cdef Py_ssize_t n = tv.shape[0]
        offsets = _np_empty(n + 1, dtype=_np_int64)
        cdef int64_t[::1] ov = offsets
        self.out_n = 0
        if n:
            self._check_route(&kv[0], &tv[0], n)
            self._route(&kv[0], &tv[0], n, &ov[0])
        ov[n] = self.out_n
        return offsets, self._take_out()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _check_route(self, const uint8_t *kv, const int64_t *tv, Py_ssize_t n) except -1:
        cdef Py_ssize_t i
        for i in range(n):
            if kv[i] == KIND_TOPIC:
                if self._bad_topic(&tv[i], 1) >= 0:
                    raise RoutingError(f"targets[{i}]: stale or invalid topic handle {tv[i]}")
            elif kv[i] == KIND_TYPE:
                if tv[i] < 0 or tv[i] >= self.ntypes:
                    raise RoutingError(f"targets[{i}]: unknown type handle {tv[i]}")
            elif kv[i] != KIND_DIRECT:
                raise RoutingError(f"kinds[{i}]: unknown route kind {kv[i]}")
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _route(
        self, const uint8_t *kv, const int64_t *tv, Py_ssize_t n, int64_t *ov
    ) except -1:
        cdef Py_ssize_t i
        cdef int64_t target
        cdef uint64_t slot
        cdef int32_t picked
        for i in range(n):
            ov[i] = self.out_n
            target = tv[i]
            if kv[i] == KIND_TOPIC:
                self._match_into(<Py_ssize_t>(<uint64_t>target & MASK32))
            elif kv[i] == KIND_TYPE:
                picked = self._pick(<Py_ssize_t>target)
                if picked >= 0:
                    self._out_reserve(1)
                    self.out[self.out_n] = picked
                    self.out_n += 1
            else:
                slot = <uint64_t>target & MASK32
                if target >= 0 and slot < <uint64_t>self.nslots and (
                    self.slots[slot].type >= 0 and self.slots[slot].gen == <uint64_t>target >> 32
                ):
                    self._out_reserve(1)
                    self.out[self.out_n] = <int64_t>slot
                    self.out_n += 1
        return 0

    def match_many(self, handles):
        """:meth:`match` for a batch of topic handles, as ``(offsets, subscribers)``."""
        h_arr = as_int64(handles, "handles")
        cdef const int64_t[::1] hv = h_arr
        cdef Py_ssize_t n = hv.shape[0], i, bad
        offsets = _np_empty(n + 1, dtype=_np_int64)
        cdef int64_t[::1] ov = offsets
        self.out_n = 0
        if n:
            bad = self._bad_topic(&hv[0], n)
            if bad >= 0:
                raise RoutingError(f"handles[{bad}]: stale or invalid topic handle {hv[bad]}")
            for i in range(n):
                ov[i] = self.out_n
                self._match_into(<Py_ssize_t>(<uint64_t>hv[i] & MASK32))
        ov[n] = self.out_n
        return offsets, self._take_out()

    cdef object _take_out(self):
        """Copy the output buffer into a new int64 array."""
        dests = _np_empty(self.out_n, dtype=_np_int64)
        cdef int64_t[::1] dv = dests
        if self.out_n:
            memcpy(&dv[0], self.out, <size_t>self.out_n * sizeof(int64_t))
        return dests
