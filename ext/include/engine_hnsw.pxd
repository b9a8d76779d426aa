# Declarations of ext/include/engine_hnsw.h (the single-query HNSW-SQ8 walk and its kernels),
# used by ext/_hnsw.pyx (the walk) and ext/_vectors.pyx (the SQ8 dot product).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t


cdef extern from "engine_hnsw.h" nogil:
    ctypedef struct eh_graph:
        const int32_t* neighbors
        const uint64_t* offsets
        const int32_t* levels
        const int32_t* cum
        const uint8_t* codes
        int64_t n
        int64_t d
        int32_t entry
        int32_t max_level
        int l2
    ctypedef struct eh_scratch:
        pass
    void eh_scratch_free(eh_scratch* s)
    int eh_has_avx2()
    float eh_ip(const float* w, const uint8_t* c, int64_t d, int use_avx2)
    int32_t eh_search(const eh_graph* g, eh_scratch* s, const float* q, float scale,
                      const float* vmin, const float* vdiff, int32_t k, int32_t ef,
                      const uint8_t* bitmap, int64_t nbits, float* out_d, int64_t* out_i,
                      int64_t* ndis, int use_avx2)
