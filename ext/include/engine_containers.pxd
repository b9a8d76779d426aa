# Growable C arrays and the int64 sort order, shared by ext/_router.pyx and ext/_scheduler.pyx
# (each had its own copy). `from engine_containers cimport ...`; nothing here is a module.

from cpython.mem cimport PyMem_Realloc
from libc.stdint cimport int64_t


cdef extern from "engine_containers.h":
    int engine_grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t item) except -1


# PERF: written in Cython rather than in the C header: the C version changed GCC's inlining
# of the scheduler's hash probe into push_many, +1.1% instructions on the scheduler probe of
# benches/hotpath.py; this one compiles exactly as the scheduler's own copy did (callgrind,
# 2026-12).
cdef inline void *engine_realloc(void *p, size_t nbytes) except NULL:
    """``PyMem_Realloc`` raising MemoryError on failure (``p`` stays valid then)."""
    cdef void *q = PyMem_Realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q


cdef inline int engine_cmp_i64(const void *a, const void *b) noexcept nogil:
    """qsort comparator of int64, ascending."""
    cdef int64_t x = (<const int64_t *>a)[0], y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)
