# Declarations of ext/include/engine_vectors.h (the kernels of ext/_vectors.pyx).

from libc.stdint cimport uint64_t


cdef extern from "engine_vectors.h" nogil:
    int engine_popcount8(unsigned char v) nogil
    int engine_ctz8(unsigned char v) nogil
    Py_ssize_t engine_fastrange(uint64_t h, Py_ssize_t cap) nogil
    float engine_dot_u8(const float* w, const unsigned char* c, Py_ssize_t d) nogil
    float engine_l2_u8(const float* q, const float* vmin, const float* step,
                       const unsigned char* c, Py_ssize_t d) nogil
    float engine_dot_f32(const float* a, const float* b, Py_ssize_t d) nogil
    float engine_l2_f32(const float* a, const float* b, Py_ssize_t d) nogil
