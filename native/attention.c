/* Causal attention over an in-place float16 KV cache (see attention.h). Built with
 * -ffp-contract=off: the float sequence below is the one that runs. */
#include "attention.h"
#include "scratch.h"
#include "simd_math.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

static __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

INLINE TARGET __m512 load_half(const uint16_t *at, __mmask16 mask) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, at));
}

TARGET void attn_store(const attn_args *a, int64_t b, int64_t h) {
    int64_t first = a->last[b] - a->T + 1;
    for (int64_t t = 0; t < a->T; t++) {
        const float *k = a->k + (b * a->T + t) * a->kv_stride + h * a->D;
        const float *v = a->v + (b * a->T + t) * a->kv_stride + h * a->D;
        int64_t at = b * a->H * a->L * a->D + h * a->head_stride + (first + t) * a->pos_stride;
        for (int64_t d = 0; d < a->D; d += 16) {
            __mmask16 m = lanes(a->D - d);
            const int round = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            __m256i kh = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, k + d), round);
            __m256i vh = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, v + d), round);
            _mm256_mask_storeu_epi16(a->kc + at + d, m, kh);
            _mm256_mask_storeu_epi16(a->vc + at + d, m, vh);
        }
    }
}

/* Four 16-lane sums → their four totals (lanes 0–3), by one fixed tree. */
INLINE TARGET __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    /* each 128-bit lane now holds its a, b, c and d partial sums in elements 0..3 */
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

/* q · key for C chunks of 16 (the last one masked by `tail`) */
INLINE TARGET __m512 dot(const int C, const __m512 *q, const uint16_t *key, __mmask16 tail) {
    __m512 acc = _mm512_mul_ps(q[0], load_half(key, C == 1 ? tail : 0xFFFF));
    for (int c = 1; c < C; c++)
        acc = _mm512_fmadd_ps(q[c], load_half(key + 16 * c, c == C - 1 ? tail : 0xFFFF), acc);
    return acc;
}

/* A query's scores, continued from key j (a multiple of 4) to n: keys go in fours from lo, the
 * rest one by one. → where the fours ended. */
INLINE TARGET void scores_from(const int C, const attn_args *a, const __m512 *qv,
                               const uint16_t *keys, int64_t lo, int64_t j, int64_t n,
                               __mmask16 tail, float *scores) {
    const int64_t P = a->pos_stride;
    const __m128 scale4 = _mm_set1_ps(a->scale);
    for (; j + 4 <= n; j += 4) {
        const uint16_t *key = keys + (lo + j) * P;
        __m128 four = sum4(dot(C, qv, key, tail), dot(C, qv, key + P, tail),
                           dot(C, qv, key + 2 * P, tail), dot(C, qv, key + 3 * P, tail));
        _mm_storeu_ps(scores + j, _mm_mul_ps(four, scale4));
    }
    for (; j < n; j++) scores[j] = _mm512_reduce_add_ps(dot(C, qv, keys + (lo + j) * P, tail)) * a->scale;
}

/* softmax weights in place (unnormalized) → 1 / their sum */
INLINE TARGET __m512 softmax(float *scores, int64_t n) {
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16)
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, lanes(n - j), scores + j));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = lanes(n - j);
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), shift));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(scores + j, m, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
}

/* the weighted values, continued from position j (even) to n: pairs into the even and odd chains
 * (two chains: half the latency), a last odd one into the even chain; then out */
INLINE TARGET void values_from(const int C, const attn_args *a, const uint16_t *values,
                               int64_t lo, int64_t j, int64_t n, __mmask16 tail,
                               const float *scores, __m512 *even, __m512 *odd, __m512 inverse,
                               float *out) {
    const int64_t P = a->pos_stride;
    for (; j + 2 <= n; j += 2) {
        const uint16_t *value = values + (lo + j) * P;
        __m512 w0 = _mm512_set1_ps(scores[j]), w1 = _mm512_set1_ps(scores[j + 1]);
        for (int c = 0; c < C; c++) {
            __mmask16 m = c == C - 1 ? tail : 0xFFFF;
            even[c] = _mm512_fmadd_ps(w0, load_half(value + 16 * c, m), even[c]);
            odd[c] = _mm512_fmadd_ps(w1, load_half(value + P + 16 * c, m), odd[c]);
        }
    }
    if (j < n) {
        const uint16_t *value = values + (lo + j) * P;
        __m512 w = _mm512_set1_ps(scores[j]);
        for (int c = 0; c < C; c++)
            even[c] = _mm512_fmadd_ps(w, load_half(value + 16 * c, c == C - 1 ? tail : 0xFFFF), even[c]);
    }
    for (int c = 0; c < C; c++)
        _mm512_mask_storeu_ps(out + 16 * c, c == C - 1 ? tail : 0xFFFF,
                              _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), inverse));
}

INLINE TARGET void load_query(const int C, const float *q, __mmask16 tail, __m512 *qv) {
    for (int c = 0; c < C; c++) qv[c] = _mm512_maskz_loadu_ps(c == C - 1 ? tail : 0xFFFF, q + 16 * c);
}

/* One query (C chunks of 16 over the head size D) against positions [lo, hi] of one head's cache
 * slab. Its float sequence depends only on the query, the cache and [lo, hi] (scores_from,
 * softmax, values_from): the same whichever run or batch computes it. */
INLINE TARGET void one_query(const int C, const attn_args *a, const float *q,
                             const uint16_t *keys, const uint16_t *values, int64_t lo, int64_t hi,
                             float *scores, float *out) {
    const __mmask16 tail = lanes(a->D - 16 * (C - 1));
    __m512 qv[ATTN_MAX_HEAD / 16], even[ATTN_MAX_HEAD / 16], odd[ATTN_MAX_HEAD / 16];
    load_query(C, q, tail, qv);
    const int64_t n = hi - lo + 1;
    scores_from(C, a, qv, keys, lo, 0, n, tail, scores);
    __m512 inverse = softmax(scores, n);
    for (int c = 0; c < C; c++) even[c] = odd[c] = _mm512_setzero_ps();
    values_from(C, a, values, lo, 0, n, tail, scores, even, odd, inverse, out);
}

/* Two queries from [lo, hi] and [lo, hi + 1] (consecutive new tokens, no window between them):
 * the same float sequences as one_query gives each, but each cached key or value is loaded and
 * converted once for both, while the two share positions (a prompt reads its cache half as
 * often). */
INLINE TARGET void two_queries(const int C, const attn_args *a, const float *q0,
                               const float *q1, const uint16_t *keys, const uint16_t *values,
                               int64_t lo, int64_t hi, float *scores0, float *scores1,
                               float *out0, float *out1) {
    const int64_t P = a->pos_stride, n = hi - lo + 1; /* the second query sees n + 1 */
    const __mmask16 tail = lanes(a->D - 16 * (C - 1));
    __m512 qa[ATTN_MAX_HEAD / 16], qb[ATTN_MAX_HEAD / 16];
    load_query(C, q0, tail, qa);
    load_query(C, q1, tail, qb);
    const __m128 scale4 = _mm_set1_ps(a->scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) { /* fours both queries take */
        const uint16_t *key = keys + (lo + j) * P;
        __m512 da[4], db[4];
        for (int i = 0; i < 4; i++) {
            __m512 k = load_half(key + i * P, C == 1 ? tail : 0xFFFF);
            da[i] = _mm512_mul_ps(qa[0], k);
            db[i] = _mm512_mul_ps(qb[0], k);
            for (int c = 1; c < C; c++) {
                k = load_half(key + i * P + 16 * c, c == C - 1 ? tail : 0xFFFF);
                da[i] = _mm512_fmadd_ps(qa[c], k, da[i]);
                db[i] = _mm512_fmadd_ps(qb[c], k, db[i]);
            }
        }
        _mm_storeu_ps(scores0 + j, _mm_mul_ps(sum4(da[0], da[1], da[2], da[3]), scale4));
        _mm_storeu_ps(scores1 + j, _mm_mul_ps(sum4(db[0], db[1], db[2], db[3]), scale4));
    }
    scores_from(C, a, qa, keys, lo, j, n, tail, scores0);
    scores_from(C, a, qb, keys, lo, j, n + 1, tail, scores1);
    __m512 inverse0 = softmax(scores0, n), inverse1 = softmax(scores1, n + 1);
    __m512 ea[ATTN_MAX_HEAD / 16], oa[ATTN_MAX_HEAD / 16];
    __m512 eb[ATTN_MAX_HEAD / 16], ob[ATTN_MAX_HEAD / 16];
    for (int c = 0; c < C; c++) ea[c] = oa[c] = eb[c] = ob[c] = _mm512_setzero_ps();
    for (j = 0; j + 2 <= n; j += 2) { /* pairs both queries take */
        const uint16_t *value = values + (lo + j) * P;
        __m512 wa0 = _mm512_set1_ps(scores0[j]), wa1 = _mm512_set1_ps(scores0[j + 1]);
        __m512 wb0 = _mm512_set1_ps(scores1[j]), wb1 = _mm512_set1_ps(scores1[j + 1]);
        for (int c = 0; c < C; c++) {
            __mmask16 m = c == C - 1 ? tail : 0xFFFF;
            __m512 v0 = load_half(value + 16 * c, m), v1 = load_half(value + P + 16 * c, m);
            ea[c] = _mm512_fmadd_ps(wa0, v0, ea[c]);
            eb[c] = _mm512_fmadd_ps(wb0, v0, eb[c]);
            oa[c] = _mm512_fmadd_ps(wa1, v1, oa[c]);
            ob[c] = _mm512_fmadd_ps(wb1, v1, ob[c]);
        }
    }
    values_from(C, a, values, lo, j, n, tail, scores0, ea, oa, inverse0, out0);
    values_from(C, a, values, lo, j, n + 1, tail, scores1, eb, ob, inverse1, out1);
}

/* one_query and two_queries with the chunk count a compile-time constant, so queries and sums
 * stay in registers: a function per count (in one function, the compiler keeps some counts' sums
 * on the stack) */
#define QUERY_C(C)                                                                              \
    static TARGET __attribute__((noinline)) void query_##C(                                    \
        const attn_args *a, const float *q, const uint16_t *keys, const uint16_t *values,      \
        int64_t lo, int64_t hi, float *scores, float *out) {                                   \
        one_query(C, a, q, keys, values, lo, hi, scores, out);                                 \
    }                                                                                          \
    static TARGET __attribute__((noinline)) void pair_##C(                                     \
        const attn_args *a, const float *q0, const float *q1, const uint16_t *keys,            \
        const uint16_t *values, int64_t lo, int64_t hi, float *s0, float *s1, float *o0,       \
        float *o1) {                                                                           \
        two_queries(C, a, q0, q1, keys, values, lo, hi, s0, s1, o0, o1);                       \
    }
QUERY_C(1) QUERY_C(2) QUERY_C(3) QUERY_C(4) QUERY_C(5) QUERY_C(6) QUERY_C(7) QUERY_C(8)
QUERY_C(9) QUERY_C(10) QUERY_C(11) QUERY_C(12) QUERY_C(13) QUERY_C(14) QUERY_C(15) QUERY_C(16)
#undef QUERY_C

typedef void (*query_fn)(const attn_args *, const float *, const uint16_t *, const uint16_t *,
                         int64_t, int64_t, float *, float *);
typedef void (*pair_fn)(const attn_args *, const float *, const float *, const uint16_t *,
                        const uint16_t *, int64_t, int64_t, float *, float *, float *, float *);
static const query_fn queries[16] = {query_1,  query_2,  query_3,  query_4,  query_5,  query_6,
                                     query_7,  query_8,  query_9,  query_10, query_11, query_12,
                                     query_13, query_14, query_15, query_16};
static const pair_fn pairs[16] = {pair_1, pair_2,  pair_3,  pair_4,  pair_5,  pair_6,
                                  pair_7, pair_8,  pair_9,  pair_10, pair_11, pair_12,
                                  pair_13, pair_14, pair_15, pair_16};

/* the positions new token t of row b sees: [*lo, returned] */
static int64_t visible(const attn_args *a, int64_t b, int64_t t, int64_t *lo) {
    int64_t position = a->last[b] - a->T + 1 + t;
    *lo = a->window > 0 && position - a->window + 1 > 0 ? position - a->window + 1 : 0;
    return position;
}

TARGET int attn_queries(const attn_args *a, int64_t b, int64_t h, int64_t t0, int64_t t1) {
    const int64_t D = a->D, slab = b * a->H * a->L * D + h * a->head_stride; /* (b, h)'s start */
    const uint16_t *keys = a->kc + slab, *values = a->vc + slab;
    int64_t most = a->last[b] - a->T + 1 + t1; /* positions a query may see */
    float *scores = scratch_for(2 * (size_t)most * sizeof(float) + 64);
    if (!scores) return -1;
    float *second = scores + ((most + 15) & ~(int64_t)15);
    const query_fn one = queries[(D + 15) / 16 - 1];
    const pair_fn two = pairs[(D + 15) / 16 - 1];
    for (int64_t t = t0; t < t1; t++) {
        int64_t lo, position = visible(a, b, t, &lo), lo_next;
        const float *q = a->q + (b * a->T + t) * a->q_stride + h * D;
        float *out = a->out + (b * a->T + t) * a->H * D + h * D;
        if (t + 1 < t1 && (visible(a, b, t + 1, &lo_next), lo_next == lo)) {
            two(a, q, q + a->q_stride, keys, values, lo, position, scores, second, out,
                out + a->H * D);
            t++;
        } else {
            one(a, q, keys, values, lo, position, scores, out);
        }
    }
    scratch_done();
    return 0;
}

int attn_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
