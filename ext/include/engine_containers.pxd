# Declarations of ext/include/engine_containers.h (growable C arrays, int64 sort order).

cdef extern from "engine_containers.h":
    void *engine_realloc(void *p, size_t nbytes) except NULL
    int engine_grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t item) except -1
    int engine_cmp_i64(const void *a, const void *b) noexcept nogil
