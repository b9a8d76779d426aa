/* Kernels of ext/_vectors.pyx: bit tricks, range reduction and the subset scorers.
 *
 * Plain C loops the compiler vectorises (no intrinsics, no -ffast-math), so wheels run on
 * any x86-64; the AVX2 SQ8 dot product used on the HNSW path lives in engine_hnsw.h.
 * Included after Python.h (Py_ssize_t), as Cython does.
 */
#ifndef ENGINE_VECTORS_H
#define ENGINE_VECTORS_H

static inline int engine_popcount8(unsigned char v) { return __builtin_popcount(v); }
static inline int engine_ctz8(unsigned char v) { return __builtin_ctz(v); }
static inline Py_ssize_t engine_fastrange(unsigned long long h, Py_ssize_t cap) {
    return (Py_ssize_t)(((unsigned __int128)h * (unsigned long long)cap) >> 64);
}
/* 16 independent float accumulators: the compiler vectorises the fixed inner loop
   (no -ffast-math needed); 5x faster than one double accumulator on SQ8 rows
   (benches/memory_table.py filtered section, 2026-11). */
static inline float engine_dot_u8(const float* w, const unsigned char* c, Py_ssize_t d) {
    float acc[16] = {0};
    Py_ssize_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int t = 0; t < 16; t++) acc[t] += w[j + t] * (float)c[j + t];
    float s = 0.0f;
    for (int t = 0; t < 16; t++) s += acc[t];
    for (; j < d; j++) s += w[j] * (float)c[j];
    return s;
}
static inline float engine_l2_u8(const float* q, const float* vmin, const float* step,
                                 const unsigned char* c, Py_ssize_t d) {
    float acc[16] = {0};
    Py_ssize_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int t = 0; t < 16; t++) {
            float x = vmin[j + t] + ((float)c[j + t] + 0.5f) * step[j + t];
            float e = q[j + t] - x;
            acc[t] += e * e;
        }
    float s = 0.0f;
    for (int t = 0; t < 16; t++) s += acc[t];
    for (; j < d; j++) {
        float x = vmin[j] + ((float)c[j] + 0.5f) * step[j];
        float e = q[j] - x;
        s += e * e;
    }
    return s;
}
static inline float engine_dot_f32(const float* a, const float* b, Py_ssize_t d) {
    float acc[16] = {0};
    Py_ssize_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int t = 0; t < 16; t++) acc[t] += a[j + t] * b[j + t];
    float s = 0.0f;
    for (int t = 0; t < 16; t++) s += acc[t];
    for (; j < d; j++) s += a[j] * b[j];
    return s;
}
static inline float engine_l2_f32(const float* a, const float* b, Py_ssize_t d) {
    float acc[16] = {0};
    Py_ssize_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int t = 0; t < 16; t++) { float e = a[j + t] - b[j + t]; acc[t] += e * e; }
    float s = 0.0f;
    for (int t = 0; t < 16; t++) s += acc[t];
    for (; j < d; j++) { float e = a[j] - b[j]; s += e * e; }
    return s;
}

#endif /* ENGINE_VECTORS_H */
