/* Growable C arrays shared by the compiled modules (ext/_router.pyx, ext/_scheduler.pyx).
 *
 * Memory comes from PyMem_* (the module's tables count in tracemalloc, like the rest of the
 * engine's); a failed allocation sets MemoryError and returns the error value the .pxd
 * declares (NULL / -1), so Cython propagates it. Included after Python.h (Cython does that).
 */
#ifndef ENGINE_CONTAINERS_H
#define ENGINE_CONTAINERS_H

#include <stdint.h>
#include <string.h>

/* realloc(p, nbytes) that raises MemoryError on failure (returns NULL then; p stays valid) */
static inline void *engine_realloc(void *p, size_t nbytes) {
    void *q = PyMem_Realloc(p, nbytes);
    if (q == NULL)
        PyErr_NoMemory();
    return q;
}

/* Ensure *cap >= need for an array of `item`-byte elements at *ptr: capacity doubles from 8,
 * new memory is zeroed. 0 on success, -1 with MemoryError set (then *ptr and *cap are
 * unchanged). */
static inline int engine_grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t item) {
    Py_ssize_t new_cap = *cap > 0 ? *cap : 8;
    void *p;
    if (need <= *cap)
        return 0;
    while (new_cap < need)
        new_cap *= 2;
    p = PyMem_Realloc(*ptr, (size_t)new_cap * item);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset((char *)p + (size_t)*cap * item, 0, (size_t)(new_cap - *cap) * item);
    *ptr = p;
    *cap = new_cap;
    return 0;
}

/* qsort comparator of int64_t, ascending */
static int engine_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

#endif /* ENGINE_CONTAINERS_H */
