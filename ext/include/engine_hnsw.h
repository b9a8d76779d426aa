/* Single-query search over a FAISS IndexHNSWSQ (8-bit codes), read in place.
 *
 * The algorithm is FAISS's HNSW::search with a bounded queue: greedy descent on the upper
 * levels, then a beam of ef at level 0 (the beam keeps every accepted node, expanded or
 * not; the walk ends when no unexpanded node is left in it), results among the nodes
 * passing an optional bitmap. So for the same ef it visits the same nodes and returns the
 * same ids as faiss.IndexHNSW.search, scores to float rounding, except: (1) ef is raised
 * to k when k > ef (FAISS keeps its efSearch and may return fewer than k); (2) equal
 * distances (duplicate-heavy data) may be ordered differently in the heaps, so another
 * copy is returned and the beam may take another path (same recall, lower id agreement).
 *
 * What makes it cheaper than FAISS's own walk: the SQ8 decode is folded into the query
 * once (inner product: <q, vmin + (c + 0.5) / 255 * vdiff> = bias + sum_j c_j w_j), so a
 * distance is one uint8 x float dot product over d bytes; neighbours' codes are prefetched
 * before they are scored; the visited set is an epoch-tagged array kept between queries
 * (no per-query allocation or memset); no OpenMP region, no result-handler indirection.
 * The AVX2/FMA kernels are chosen at run time (wheels must run on any x86-64).
 */
#ifndef ENGINE_HNSW_H
#define ENGINE_HNSW_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the allocator (overridable: the tests inject failures through these) */
#ifndef EH_MALLOC
#define EH_MALLOC malloc
#define EH_CALLOC calloc
#define EH_REALLOC realloc
#define EH_FREE free
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EH_X86 1
#else
#define EH_X86 0
#endif

typedef struct {
    const int32_t *neighbors; /* hnsw.neighbors */
    const uint64_t *offsets;  /* hnsw.offsets, n + 1 */
    const int32_t *levels;    /* hnsw.levels: level + 1 per node */
    const int32_t *cum;       /* hnsw.cum_nneighbor_per_level */
    const uint8_t *codes;     /* storage codes, n x d */
    int64_t n;
    int64_t d;
    int32_t entry;
    int32_t max_level;
    int l2;
} eh_graph;

typedef struct {
    uint16_t *visited; /* epoch tags, n */
    uint16_t epoch;
    int64_t cap;
    float *w;          /* per-query weights, d */
    float *a;          /* l2: query in code units, d */
    float *wd;         /* beam (max-heap by distance), ef */
    int32_t *wi;
    int32_t wcap;
    float *cd;         /* candidates (min-heap), growable */
    int32_t *ci;
    int64_t ccap;
    float *rd;         /* results (max-heap), k */
    int32_t *ri;
    int32_t rcap;
} eh_scratch;

static void eh_scratch_free(eh_scratch *s) {
    EH_FREE(s->visited); EH_FREE(s->w); EH_FREE(s->a); EH_FREE(s->wd); EH_FREE(s->wi);
    EH_FREE(s->cd); EH_FREE(s->ci); EH_FREE(s->rd); EH_FREE(s->ri);
    memset(s, 0, sizeof(*s));
}

/* 0 on success, -1 out of memory. Every block is all-or-nothing: on a failure the scratch
 * keeps its previous (consistent) buffers, so a later call retries; a pair grown by realloc
 * may keep one larger half, which is harmless (capacities only count complete pairs). */
static int eh_scratch_reserve(eh_scratch *s, int64_t n, int64_t d, int32_t ef, int32_t k) {
    if (s->cap < n) {
        uint16_t *v = (uint16_t *)EH_CALLOC((size_t)n, sizeof(uint16_t));
        if (!v) return -1;
        EH_FREE(s->visited);
        s->visited = v; s->cap = n; s->epoch = 0;
    }
    if (!s->w) {
        float *w = (float *)EH_MALLOC(sizeof(float) * (size_t)(d + 16));
        float *a = (float *)EH_MALLOC(sizeof(float) * (size_t)(d + 16));
        if (!w || !a) { EH_FREE(w); EH_FREE(a); return -1; }
        s->w = w; s->a = a;
    }
    if (s->wcap < ef) {
        float *wd = (float *)EH_REALLOC(s->wd, sizeof(float) * (size_t)ef);
        if (!wd) return -1;
        s->wd = wd;
        int32_t *wi = (int32_t *)EH_REALLOC(s->wi, sizeof(int32_t) * (size_t)ef);
        if (!wi) return -1;
        s->wi = wi; s->wcap = ef;
    }
    if (s->rcap < k) {
        float *rd = (float *)EH_REALLOC(s->rd, sizeof(float) * (size_t)k);
        if (!rd) return -1;
        s->rd = rd;
        int32_t *ri = (int32_t *)EH_REALLOC(s->ri, sizeof(int32_t) * (size_t)k);
        if (!ri) return -1;
        s->ri = ri; s->rcap = k;
    }
    if (s->ccap < 256) {
        float *cd = (float *)EH_MALLOC(sizeof(float) * 256);
        int32_t *ci = (int32_t *)EH_MALLOC(sizeof(int32_t) * 256);
        if (!cd || !ci) { EH_FREE(cd); EH_FREE(ci); return -1; }
        EH_FREE(s->cd); EH_FREE(s->ci);
        s->cd = cd; s->ci = ci; s->ccap = 256;
    }
    return 0;
}

/* ---------------------------------------------------------------- distance kernels */
static inline float eh_ip_scalar(const float *w, const uint8_t *c, int64_t d) {
    float acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int t = 0; t < 8; t++) acc[t] += w[j + t] * (float)c[j + t];
    float s = 0.0f;
    for (int t = 0; t < 8; t++) s += acc[t];
    for (; j < d; j++) s += w[j] * (float)c[j];
    return s;
}

/* sum_j w_j (a_j - c_j)^2 */
static inline float eh_l2_scalar(const float *w, const float *a, const uint8_t *c, int64_t d) {
    float acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int t = 0; t < 8; t++) {
            float e = a[j + t] - (float)c[j + t];
            acc[t] += w[j + t] * e * e;
        }
    float s = 0.0f;
    for (int t = 0; t < 8; t++) s += acc[t];
    for (; j < d; j++) { float e = a[j] - (float)c[j]; s += w[j] * e * e; }
    return s;
}

#if EH_X86
__attribute__((target("avx2,fma"))) static inline float eh_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static inline float
eh_ip_avx2(const float *w, const uint8_t *c, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(c + j));
        __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
        __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
        a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(w + j), a0);
        a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(w + j + 8), a1);
    }
    float s = eh_hsum256(_mm256_add_ps(a0, a1));
    for (; j < d; j++) s += w[j] * (float)c[j];
    return s;
}

__attribute__((target("avx2,fma"))) static inline float
eh_l2_avx2(const float *w, const float *a, const uint8_t *c, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(c + j));
        __m256 e0 = _mm256_sub_ps(_mm256_loadu_ps(a + j),
                                  _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
        __m256 e1 = _mm256_sub_ps(_mm256_loadu_ps(a + j + 8),
                                  _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))));
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(e0, _mm256_loadu_ps(w + j)), e0, a0);
        a1 = _mm256_fmadd_ps(_mm256_mul_ps(e1, _mm256_loadu_ps(w + j + 8)), e1, a1);
    }
    float s = eh_hsum256(_mm256_add_ps(a0, a1));
    for (; j < d; j++) { float e = a[j] - (float)c[j]; s += w[j] * e * e; }
    return s;
}
#endif

/* sum_j w_j c_j with the AVX2 kernel when use_avx2 (see eh_has_avx2) */
static inline float eh_ip(const float *w, const uint8_t *c, int64_t d, int use_avx2) {
#if EH_X86
    if (use_avx2) return eh_ip_avx2(w, c, d);
#endif
    (void)use_avx2;
    return eh_ip_scalar(w, c, d);
}

/* ---------------------------------------------------------------- heaps */
/* max-heap on (dist) of size *n */
static inline void eh_maxheap_push(float *hd, int32_t *hi, int32_t *n, float d, int32_t i) {
    int32_t j = (*n)++;
    while (j > 0) {
        int32_t p = (j - 1) >> 1;
        if (hd[p] >= d) break;
        hd[j] = hd[p]; hi[j] = hi[p]; j = p;
    }
    hd[j] = d; hi[j] = i;
}

/* replace the max (root) with (d, i) and sift down */
static inline void eh_maxheap_replace(float *hd, int32_t *hi, int32_t n, float d, int32_t i) {
    int32_t j = 0;
    for (;;) {
        int32_t l = 2 * j + 1, r = l + 1, m;
        if (l >= n) break;
        m = (r < n && hd[r] > hd[l]) ? r : l;
        if (hd[m] <= d) break;
        hd[j] = hd[m]; hi[j] = hi[m]; j = m;
    }
    hd[j] = d; hi[j] = i;
}

static inline void eh_minheap_push(float *hd, int32_t *hi, int64_t *n, float d, int32_t i) {
    int64_t j = (*n)++;
    while (j > 0) {
        int64_t p = (j - 1) >> 1;
        if (hd[p] <= d) break;
        hd[j] = hd[p]; hi[j] = hi[p]; j = p;
    }
    hd[j] = d; hi[j] = i;
}

static inline void eh_minheap_pop(float *hd, int32_t *hi, int64_t *n) {
    int64_t m = --(*n);
    float d = hd[m];
    int32_t i = hi[m];
    int64_t j = 0;
    for (;;) {
        int64_t l = 2 * j + 1, r = l + 1, c;
        if (l >= m) break;
        c = (r < m && hd[r] < hd[l]) ? r : l;
        if (hd[c] >= d) break;
        hd[j] = hd[c]; hi[j] = hi[c]; j = c;
    }
    hd[j] = d; hi[j] = i;
}

/* ---------------------------------------------------------------- the walk */
#define EH_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 1)
/* PERF: prefetching the codes 4 nodes ahead of the one scored beat prefetching a node's
   whole neighbourhood at once by ~1.25x (p50 at efSearch 48/64/80: 46/58/70 µs vs
   58/75/91 µs; 50k real vectors, memory_table.py-style sweep, 2026-11); 2 and 8 within noise. */
#ifndef EH_AHEAD
#define EH_AHEAD 4
#endif

static inline void eh_prefetch_code(const uint8_t *c, int64_t d) {
    for (int64_t o = 0; o < d; o += 64) EH_PREFETCH(c + o);
}

static inline __attribute__((always_inline)) float
eh_dist(const eh_graph *g, const eh_scratch *s, float bias, int32_t v, int avx2) {
    const uint8_t *c = g->codes + (int64_t)v * g->d;
#if EH_X86
    if (avx2)
        return g->l2 ? bias + eh_l2_avx2(s->w, s->a, c, g->d) : bias - eh_ip_avx2(s->w, c, g->d);
#endif
    (void)avx2;
    return g->l2 ? bias + eh_l2_scalar(s->w, s->a, c, g->d) : bias - eh_ip_scalar(s->w, c, g->d);
}

static inline __attribute__((always_inline)) int
eh_member(const uint8_t *bitmap, int64_t nbits, int32_t v) {
    return bitmap == NULL || (v < nbits && ((bitmap[v >> 3] >> (v & 7)) & 1));
}

/* Search one query. Writes up to k (dist, id) sorted ascending into out_d/out_i and returns
 * how many; -1 when out of memory. Distances: -inner product, or squared L2. */
static inline __attribute__((always_inline)) int32_t
eh_search_body(const eh_graph *g, eh_scratch *s, const float *q, float scale, const float *vmin,
               const float *vdiff, int32_t k, int32_t ef, const uint8_t *bitmap, int64_t nbits,
               float *out_d, int64_t *out_i, int64_t *ndis, int avx2) {
    const int64_t d = g->d;
    float bias = 0.0f;
    if (g->n == 0 || k <= 0) return 0;
    if (ef < k) ef = k;
    if (eh_scratch_reserve(s, g->n, d, ef, k) < 0) return -1;
    /* fold the SQ8 decode x_j = vmin_j + (c_j + 0.5) * st_j (st_j = vdiff_j / 255) into q */
    if (!g->l2) { /* scale: 1/|q| for cosine (the query normalised on the fly), else 1 */
        double b = 0.0;
        for (int64_t j = 0; j < d; j++) {
            float st = vdiff[j] / 255.0f;
            float qj = q[j] * scale;
            s->w[j] = qj * st;
            b += (double)qj * ((double)vmin[j] + 0.5 * (double)st);
        }
        bias = -(float)b;
    } else {
        double b = 0.0;
        for (int64_t j = 0; j < d; j++) {
            float st = vdiff[j] / 255.0f;
            /* a range so tiny that st^2 is denormal or 0 (vdiff < ~1e-19) would weight the
               dimension by ~0 and drop its (q_j - vmin_j)^2: it is a constant then */
            if (st * st >= FLT_MIN) {
                s->w[j] = st * st;
                s->a[j] = (q[j] - vmin[j]) / st - 0.5f;
            } else {
                double e = (double)q[j] - (double)vmin[j];
                b += e * e;
                s->w[j] = 0.0f;
                s->a[j] = 0.0f;
            }
        }
        bias = (float)b;
    }
    if (++s->epoch == 0) {
        memset(s->visited, 0, sizeof(uint16_t) * (size_t)s->cap);
        s->epoch = 1;
    }
    const uint16_t epoch = s->epoch;
    uint16_t *vis = s->visited;
    int64_t nd = 0;

    /* greedy descent on the upper levels */
    int32_t nearest = g->entry;
    float dn = eh_dist(g, s, bias, nearest, avx2);
    nd++;
    for (int32_t level = g->max_level; level >= 1; level--) {
        for (;;) {
            int32_t prev = nearest;
            uint64_t o = g->offsets[prev];
            uint64_t b = o + (uint64_t)g->cum[level], e = o + (uint64_t)g->cum[level + 1];
            for (uint64_t j = b; j < e; j++) {
                int32_t v = g->neighbors[j];
                if (v < 0) break;
                eh_prefetch_code(g->codes + (int64_t)v * d, d);
            }
            for (uint64_t j = b; j < e; j++) {
                int32_t v = g->neighbors[j];
                if (v < 0) break;
                float dv = eh_dist(g, s, bias, v, avx2);
                nd++;
                if (dv < dn) { dn = dv; nearest = v; }
            }
            if (nearest == prev) break;
        }
    }

    /* level 0: beam W (max-heap of ef), candidates C (min-heap), results R (max-heap of k) */
    int32_t wn = 0, rn = 0;
    int64_t cn = 0;
    eh_maxheap_push(s->wd, s->wi, &wn, dn, nearest);
    eh_minheap_push(s->cd, s->ci, &cn, dn, nearest);
    if (eh_member(bitmap, nbits, nearest)) eh_maxheap_push(s->rd, s->ri, &rn, dn, nearest);
    vis[nearest] = epoch;
    int32_t todo[512];
    while (cn > 0) {
        float d0 = s->cd[0];
        int32_t v0 = s->ci[0];
        if (wn == ef && d0 > s->wd[0]) break; /* evicted from the beam: so is every later one */
        eh_minheap_pop(s->cd, s->ci, &cn);
        uint64_t o = g->offsets[v0];
        uint64_t b = o, e = o + (uint64_t)g->cum[1];
        int32_t nt = 0;
        if (cn > 0) EH_PREFETCH(g->neighbors + g->offsets[s->ci[0]]); /* the next expansion */
        for (uint64_t j = b; j < e; j++) {
            int32_t v = g->neighbors[j];
            if (v < 0) break;
            EH_PREFETCH(vis + v);
        }
        for (uint64_t j = b; j < e && nt < 512; j++) {
            int32_t v = g->neighbors[j];
            if (v < 0) break;
            if (vis[v] == epoch) continue;
            vis[v] = epoch;
            todo[nt++] = v;
        }
        /* codes: a few nodes ahead of the one being scored (all at once overflows the
           line-fill buffers) */
        for (int32_t t = 0; t < nt && t < EH_AHEAD; t++)
            eh_prefetch_code(g->codes + (int64_t)todo[t] * d, d);
        if (cn + nt > s->ccap) {
            int64_t nc = 2 * (cn + nt);
            float *cd = (float *)EH_REALLOC(s->cd, sizeof(float) * (size_t)nc);
            if (!cd) return -1;
            s->cd = cd;
            int32_t *ci = (int32_t *)EH_REALLOC(s->ci, sizeof(int32_t) * (size_t)nc);
            if (!ci) return -1;
            s->ci = ci;
            s->ccap = nc;
        }
        for (int32_t t = 0; t < nt; t++) {
            int32_t v = todo[t];
            if (t + EH_AHEAD < nt) eh_prefetch_code(g->codes + (int64_t)todo[t + EH_AHEAD] * d, d);
            float dv = eh_dist(g, s, bias, v, avx2);
            nd++;
            if (eh_member(bitmap, nbits, v)) {
                if (rn < k) eh_maxheap_push(s->rd, s->ri, &rn, dv, v);
                else if (dv < s->rd[0]) eh_maxheap_replace(s->rd, s->ri, rn, dv, v);
            }
            if (wn < ef) {
                eh_maxheap_push(s->wd, s->wi, &wn, dv, v);
            } else if (dv < s->wd[0]) {
                eh_maxheap_replace(s->wd, s->wi, wn, dv, v);
            } else {
                continue; /* not in the beam: never expanded */
            }
            eh_minheap_push(s->cd, s->ci, &cn, dv, v);
        }
    }
    /* results ascending: pop the max-heap from the back */
    int32_t m = rn;
    for (int32_t t = m - 1; t >= 0; t--) {
        out_d[t] = s->rd[0];
        out_i[t] = s->ri[0];
        rn--;
        if (rn > 0) eh_maxheap_replace(s->rd, s->ri, rn, s->rd[rn], s->ri[rn]);
    }
    *ndis += nd;
    return m;
}

#if EH_X86
__attribute__((target("avx2,fma"))) static int32_t
eh_search_avx2(const eh_graph *g, eh_scratch *s, const float *q, float scale, const float *vmin,
               const float *vdiff, int32_t k, int32_t ef, const uint8_t *bitmap, int64_t nbits,
               float *out_d, int64_t *out_i, int64_t *ndis) {
    return eh_search_body(g, s, q, scale, vmin, vdiff, k, ef, bitmap, nbits, out_d, out_i, ndis, 1);
}
#endif

static int32_t eh_search_plain(const eh_graph *g, eh_scratch *s, const float *q, float scale,
                               const float *vmin, const float *vdiff, int32_t k, int32_t ef,
                               const uint8_t *bitmap, int64_t nbits, float *out_d,
                               int64_t *out_i, int64_t *ndis) {
    return eh_search_body(g, s, q, scale, vmin, vdiff, k, ef, bitmap, nbits, out_d, out_i, ndis, 0);
}

/* 1 when the AVX2/FMA kernels run on this CPU */
static int eh_has_avx2(void) {
#if EH_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int32_t eh_search(const eh_graph *g, eh_scratch *s, const float *q, float scale,
                         const float *vmin, const float *vdiff, int32_t k, int32_t ef,
                         const uint8_t *bitmap, int64_t nbits, float *out_d, int64_t *out_i,
                         int64_t *ndis, int use_avx2) {
#if EH_X86
    if (use_avx2)
        return eh_search_avx2(g, s, q, scale, vmin, vdiff, k, ef, bitmap, nbits, out_d, out_i,
                              ndis);
#endif
    (void)use_avx2;
    return eh_search_plain(g, s, q, scale, vmin, vdiff, k, ef, bitmap, nbits, out_d, out_i,
                           ndis);
}

#endif /* ENGINE_HNSW_H */
