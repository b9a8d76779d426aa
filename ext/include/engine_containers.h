/* Growable C arrays shared by the compiled modules (ext/_router.pyx, ext/_scheduler.pyx);
 * declared, with the inline helpers written in Cython, in engine_containers.pxd.
 *
 * Memory comes from PyMem_*; a failed allocation sets MemoryError and returns -1, which the
 * .pxd declares, so Cython propagates it. Included after Python.h (Cython does that).
 */
#ifndef ENGINE_CONTAINERS_H
#define ENGINE_CONTAINERS_H

#include <string.h>

/* Ensure *cap >= need for an array of `item`-byte elements at *ptr: capacity doubles from 8,
 * new memory is zeroed. 0 on success, -1 with MemoryError set (then *ptr and *cap are
 * unchanged).
 * PERF: plain `static`, not `inline`: inlined into the router's batch loops it cost 0.2-0.3%
 * more instructions on benches/hotpath.py's router probes (callgrind, 2026-12). */
static int engine_grow(void **ptr, Py_ssize_t *cap, Py_ssize_t need, size_t item) {
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

#endif /* ENGINE_CONTAINERS_H */
