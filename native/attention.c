/* Causal attention over a KV cache kept in place, float16 or int8 records (see attention.h).
 * Built with -ffp-contract=off: the float sequence below is the one that runs. */
#include "attention.h"
#include "isa.h"
#include "scratch.h"
#include "simd_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TARGET ISA_TARGET
#define INLINE static inline __attribute__((always_inline))
/* Every loop over a head's 16-value chunks or over four queries unrolled, so that their sums
 * stay in registers (arrays of vectors otherwise went through the stack). AVX2 build, AMD Zen 3,
 * gpt2 int8 decode step at past 900 ÷ at past 16, 3 rounds: 1.16-1.24 → 1.06-1.18. AVX-512 build
 * since 2026-12-06 (a lone query's value sums had gone through the stack there too): C harness,
 * 12 layers' decode attention at past 900 between 124 MB of weight reads, 2 threads, the two
 * builds alternated step by step: 0.99 of the time (medians of 3 runs of 200 steps: 0.985-1.005) */
#define UNROLL _Pragma("GCC unroll 16")

static __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

/* The kinds of cache the query functions read (their compile-time `Q8`): float16 values (0),
 * int8 records (1: D codes, then their float scale), or int8 key records with a prompt's value
 * records converted once to float records (2: the D codes as floats, then the scale; keys at
 * key_stride; see attn_queries). Kinds 1 and 2 give the same floats, so the same results. `Q8` as
 * a truth value: records carry a scale (and scores are integer dots, see int_scores). */
#define KIND_FLOATS 2

/* 16 cached values from `at` as floats: float16 values, or (Q8) value codes, their record's
 * scale not applied (the callers fold it into the weight: one multiply per position) */
INLINE TARGET __m512 load_kv(const int Q8, const char *at, __mmask16 mask) {
    if (Q8 == KIND_FLOATS) return _mm512_maskz_loadu_ps(mask, at);
    if (Q8) return _mm512_cvtepi32_ps(load_epi8_epi32(mask, at));
    return load_ph_ps(mask, at);
}

/* bytes a cached value takes: an int8 code, a float16, or a converted code */
INLINE int64_t kv_bytes(const int Q8) { return Q8 == KIND_FLOATS ? 4 : Q8 ? 1 : 2; }

/* a record's scale: the float after its D codes */
INLINE float record_scale(const int Q8, const char *record, int64_t D) {
    float scale;
    _Static_assert(sizeof scale == ATTN_SCALE_BYTES, "q8 records end in a float");
    memcpy(&scale, record + D * kv_bytes(Q8), sizeof scale);
    return scale;
}

/* x[0..D) as an int8 record: codes round(x × 127 / max|x|), then the scale max|x| / 127 (NaN where
 * any x is NaN or infinite: codes 0, and every score or sum that reads it NaN; codes 0 where
 * max|x| is so small, below ~3.7e-37, that 127 / max|x| overflows) */
static TARGET void store_codes(const float *x, int64_t D, char *record) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 top = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (int64_t d = 0; d < D; d += 16) {
        __m512 v = _mm512_maskz_loadu_ps(lanes(D - d), x + d);
        top = _mm512_max_ps(top, _mm512_andnot_ps(sign, v));
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    float amax = nan ? __builtin_nanf("") : _mm512_reduce_max_ps(top);
    if (!(amax <= 3.402823466e38f)) { /* NaN or infinite */
        float scale = __builtin_nanf("");
        memset(record, 0, (size_t)D);
        memcpy(record + D, &scale, sizeof scale);
        return;
    }
    float ratio = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m512 inv = _mm512_set1_ps(ratio <= 3.402823466e38f ? ratio : 0.0f);
    for (int64_t d = 0; d < D; d += 16) {
        __mmask16 m = lanes(D - d);
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + d), inv));
        _mm_mask_storeu_epi8(record + d, m, _mm512_cvtsepi32_epi8(q));
    }
    float scale = amax / 127.0f;
    memcpy(record + D, &scale, sizeof scale);
}

TARGET void attn_store(const attn_args *a, int64_t b, int64_t h) {
    int64_t first = a->last[b] - a->T + 1, bytes = kv_bytes(a->q8);
    for (int64_t t = 0; t < a->T; t++) {
        const float *k = a->k + (b * a->T + t) * a->kv_stride + h * a->D;
        const float *v = a->v + (b * a->T + t) * a->kv_stride + h * a->D;
        int64_t at = (b * a->row_stride + h * a->head_stride + (first + t) * a->pos_stride) * bytes;
        char *kc = (char *)a->kc + at, *vc = (char *)a->vc + at;
        if (a->q8) {
            store_codes(k, a->D, kc);
            store_codes(v, a->D, vc);
            continue;
        }
        for (int64_t d = 0; d < a->D; d += 16) {
            __mmask16 m = lanes(a->D - d);
            const int round = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            __m256i kh = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, k + d), round);
            __m256i vh = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, v + d), round);
            _mm256_mask_storeu_epi16((uint16_t *)kc + d, m, kh);
            _mm256_mask_storeu_epi16((uint16_t *)vc + d, m, vh);
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

/* q · key (float16) for C chunks of 16 (the last one masked by `tail`) */
INLINE TARGET __m512 dot(const int C, const __m512 *q, const char *key, __mmask16 tail) {
    __m512 acc = _mm512_mul_ps(q[0], load_kv(0, key, C == 1 ? tail : 0xFFFF));
    UNROLL
    for (int c = 1; c < C; c++)
        acc = _mm512_fmadd_ps(q[c], load_kv(0, key + 32 * c, c == C - 1 ? tail : 0xFFFF), acc);
    return acc;
}

/* four int8 key records' scales (records P bytes apart) */
INLINE TARGET __m128 four_scales(const char *key, int64_t P, int64_t D) {
    return _mm_setr_ps(record_scale(1, key, D), record_scale(1, key + P, D),
                       record_scale(1, key + 2 * P, D), record_scale(1, key + 3 * P, D));
}

/* A lone query (a decode step) reading `span` bytes at `at` of its keys or values: fetches the
 * lines FETCH_AHEAD bytes on in its own stream into L1, and the same lines of the next (row, head)
 * (`next` bytes on: the next task likely reads them) into L2. The hardware prefetcher restarts at
 * each 4 KiB page and each head's ~60 KB stream. C harness, 12 layers' decode attention between
 * 124 MB of weight reads, 2 threads, alternated step by step with the next head's fetch alone:
 * past 900 0.93-0.94 of the time (3 runs of 200 steps), past 512 0.93, past 128 0.99 */
#define FETCH_AHEAD 2048
INLINE void fetch_ahead(const char *at, int64_t span, int64_t next) {
    for (int64_t line = 0; line < span; line += 64) {
        _mm_prefetch(at + FETCH_AHEAD + line, _MM_HINT_T0);
        _mm_prefetch(at + next + line, _MM_HINT_T1);
    }
}

/* ---- Integer scores over int8 records. A query is quantized as a key is (store_codes: codes,
 * scale), and its score of a key is the exact integer dot of their codes (|dot| ≤ D × 127² < 2^24,
 * so its float is exact too), then ((float)dot × the key's scale) × (the query's scale × the score
 * scale): whichever path, grouping or build takes the dot, the same bits. VNNI multiplies unsigned
 * by signed bytes: keys enter as code + 128 (xor 0x80) and the query's offset −128 Σ codes takes
 * the 128s back out (dot_w8; the AVX2 build's takes them out itself, offset 0). A 64-byte key
 * chunk is one dot instruction where floats took four multiplies and four conversions. */
typedef struct {
    int8_t codes[ATTN_MAX_HEAD] __attribute__((aligned(64))); /* zero past D */
    float factor;   /* the query's scale × the score scale */
    int32_t offset; /* added to every dot */
} q8_query;

static TARGET void quantize_query(const attn_args *a, const float *q, q8_query *out) {
    char record[ATTN_MAX_HEAD + ATTN_SCALE_BYTES];
    store_codes(q, a->D, record);
    float scale;
    memcpy(&scale, record + a->D, sizeof scale);
    memset(out->codes, 0, sizeof out->codes);
    memcpy(out->codes, record, (size_t)a->D);
    int32_t sum = 0;
    for (int64_t d = 0; d < a->D; d++) sum += out->codes[d];
    out->offset = Q8_W8_OFFSETS ? -128 * sum : 0;
    out->factor = scale * a->scale;
}

/* the byte lanes of a head's last 64-byte chunk (D bytes in all) */
static __mmask64 chunk_bytes(int64_t D) {
    int64_t rest = D - 64 * ((D - 1) / 64);
    return rest >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << rest) - 1);
}

/* Four 16-lane integer sums → their four totals (lanes 0–3) */
INLINE TARGET __m128i sum4_epi32(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    __m512i abcd =
        _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

/* a query's codes · a key record's codes (C chunks of 16 values: (C + 3) / 4 chunks of 64
 * bytes, the last one's lanes `tail`), in 16 lanes to be summed */
INLINE TARGET __m512i key_dot(const int C, const q8_query *q, const char *key, __mmask64 tail) {
    const int chunks = (C + 3) / 4;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i acc = _mm512_setzero_si512();
    UNROLL
    for (int c = 0; c < chunks; c++) {
        __m512i k = _mm512_maskz_loadu_epi8(c == chunks - 1 ? tail : ~(__mmask64)0, key + 64 * c);
        acc = dot_w8(acc, _mm512_xor_si512(k, flip), _mm512_loadu_si512(q->codes + 64 * c));
    }
    return acc;
}

/* A query's scores of int8 key records (P bytes apart), continued from key j to n: keys in fours
 * from lo, the rest one by one. `next` as scores_from's. */
INLINE TARGET void int_scores(const int C, const attn_args *a, const q8_query *q,
                              const char *keys, int64_t P, int64_t lo, int64_t j, int64_t n,
                              float *scores, int64_t next) {
    const __mmask64 tail = chunk_bytes(a->D);
    const __m128i offset = _mm_set1_epi32(q->offset);
    const __m128 factor = _mm_set1_ps(q->factor);
    for (; j + 4 <= n; j += 4) {
        const char *key = keys + (lo + j) * P;
        if (next) fetch_ahead(key, 4 * P, next);
        __m128i dots = sum4_epi32(key_dot(C, q, key, tail), key_dot(C, q, key + P, tail),
                                  key_dot(C, q, key + 2 * P, tail),
                                  key_dot(C, q, key + 3 * P, tail));
        __m128 f = _mm_cvtepi32_ps(_mm_add_epi32(dots, offset));
        _mm_storeu_ps(scores + j, _mm_mul_ps(_mm_mul_ps(f, four_scales(key, P, a->D)), factor));
    }
    for (; j < n; j++) {
        const char *key = keys + (lo + j) * P;
        int32_t dot = _mm512_reduce_add_epi32(key_dot(C, q, key, tail)) + q->offset;
        scores[j] = ((float)dot * record_scale(1, key, a->D)) * q->factor;
    }
}

/* bytes from one int8 key record to the next: the cache's, or where attn_queries converted the
 * values to floats, the stride it kept */
INLINE int64_t key_stride(const int Q8, const attn_args *a) {
    return Q8 == KIND_FLOATS ? a->key_stride : a->pos_stride;
}

/* A query's scores of float16 keys, continued from key j (a multiple of 4) to n: keys go in fours
 * from lo, the rest one by one. `next` (≠ 0 only for a lone query, and only where a (row, head)
 * follows): bytes from these keys to the next (row, head)'s (fetch_ahead; values_from and
 * int_scores do the same). */
INLINE TARGET void scores_from(const int C, const attn_args *a, const __m512 *qv,
                               const char *keys, int64_t lo, int64_t j, int64_t n,
                               __mmask16 tail, float *scores, int64_t next) {
    const int64_t P = a->pos_stride * kv_bytes(0); /* bytes */
    const __m128 scale4 = _mm_set1_ps(a->scale);
    for (; j + 4 <= n; j += 4) {
        const char *key = keys + (lo + j) * P;
        if (next) fetch_ahead(key, 4 * P, next);
        __m128 four = sum4(dot(C, qv, key, tail), dot(C, qv, key + P, tail),
                           dot(C, qv, key + 2 * P, tail), dot(C, qv, key + 3 * P, tail));
        _mm_storeu_ps(scores + j, _mm_mul_ps(four, scale4));
    }
    for (; j < n; j++)
        scores[j] = _mm512_reduce_add_ps(dot(C, qv, keys + (lo + j) * P, tail)) * a->scale;
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
INLINE TARGET void values_from(const int C, const int Q8, const attn_args *a,
                               const char *values, int64_t lo, int64_t j, int64_t n,
                               __mmask16 tail, const float *scores, __m512 *even, __m512 *odd,
                               __m512 inverse, float *out, int64_t next) {
    const int64_t bytes = kv_bytes(Q8), P = a->pos_stride * bytes;
    for (; j + 2 <= n; j += 2) {
        const char *value = values + (lo + j) * P;
        if (next) fetch_ahead(value, 2 * P, next);
        __m512 w0 = _mm512_set1_ps(Q8 ? scores[j] * record_scale(Q8, value, a->D) : scores[j]);
        __m512 w1 = _mm512_set1_ps(Q8 ? scores[j + 1] * record_scale(Q8, value + P, a->D)
                                      : scores[j + 1]);
        UNROLL
        for (int c = 0; c < C; c++) {
            __mmask16 m = c == C - 1 ? tail : 0xFFFF;
            even[c] = _mm512_fmadd_ps(w0, load_kv(Q8, value + 16 * c * bytes, m), even[c]);
            odd[c] = _mm512_fmadd_ps(w1, load_kv(Q8, value + P + 16 * c * bytes, m), odd[c]);
        }
    }
    if (j < n) {
        const char *value = values + (lo + j) * P;
        __m512 w = _mm512_set1_ps(Q8 ? scores[j] * record_scale(Q8, value, a->D) : scores[j]);
        UNROLL
        for (int c = 0; c < C; c++)
            even[c] = _mm512_fmadd_ps(
                w, load_kv(Q8, value + 16 * c * bytes, c == C - 1 ? tail : 0xFFFF), even[c]);
    }
    UNROLL
    for (int c = 0; c < C; c++)
        _mm512_mask_storeu_ps(out + 16 * c, c == C - 1 ? tail : 0xFFFF,
                              _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), inverse));
}

INLINE TARGET void load_query(const int C, const float *q, __mmask16 tail, __m512 *qv) {
    UNROLL
    for (int c = 0; c < C; c++) qv[c] = _mm512_maskz_loadu_ps(c == C - 1 ? tail : 0xFFFF, q + 16 * c);
}

/* One query (C chunks of 16 over the head size D) against positions [lo, hi] of one head's cache
 * slab. Its float sequence depends only on the query, the cache and [lo, hi] (scores_from,
 * softmax, values_from): the same whichever run or batch computes it. `from`: keys whose
 * scores the caller already wrote (windowed_four: all; the half cache: 0). */
INLINE TARGET void one_query(const int C, const int Q8, const attn_args *a, const float *q,
                             const char *keys, const char *values, int64_t lo, int64_t hi,
                             int64_t from, float *scores, float *out, int64_t next) {
    const __mmask16 tail = lanes(a->D - 16 * (C - 1));
    __m512 even[ATTN_MAX_HEAD / 16], odd[ATTN_MAX_HEAD / 16];
    const int64_t n = hi - lo + 1;
    if (Q8 && from < n) {
        q8_query qc;
        quantize_query(a, q, &qc);
        int_scores(C, a, &qc, keys, key_stride(Q8, a), lo, from, n, scores, next);
    } else if (!Q8) {
        __m512 qv[ATTN_MAX_HEAD / 16];
        load_query(C, q, tail, qv);
        scores_from(C, a, qv, keys, lo, from, n, tail, scores, next);
    }
    __m512 inverse = softmax(scores, n);
    UNROLL
    for (int c = 0; c < C; c++) even[c] = odd[c] = _mm512_setzero_ps();
    values_from(C, Q8, a, values, lo, 0, n, tail, scores, even, odd, inverse, out, next);
}

/* The scores of two queries (float16 keys) from [lo, lo + n) and [lo, lo + n]: each key loaded
 * and converted once for both while they share it, the same sums as scores_from's */
INLINE TARGET void two_scores(const int C, const attn_args *a, const float *q0, const float *q1,
                              const char *keys, int64_t lo, int64_t n, __mmask16 tail,
                              float *scores0, float *scores1) {
    const int64_t P = a->pos_stride * kv_bytes(0);
    __m512 qa[ATTN_MAX_HEAD / 16], qb[ATTN_MAX_HEAD / 16];
    load_query(C, q0, tail, qa);
    load_query(C, q1, tail, qb);
    const __m128 scale4 = _mm_set1_ps(a->scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) { /* fours both queries take */
        const char *key = keys + (lo + j) * P;
        __m512 da[4], db[4];
        UNROLL
        for (int i = 0; i < 4; i++) {
            __m512 k = load_kv(0, key + i * P, C == 1 ? tail : 0xFFFF);
            da[i] = _mm512_mul_ps(qa[0], k);
            db[i] = _mm512_mul_ps(qb[0], k);
            UNROLL
            for (int c = 1; c < C; c++) {
                k = load_kv(0, key + i * P + 32 * c, c == C - 1 ? tail : 0xFFFF);
                da[i] = _mm512_fmadd_ps(qa[c], k, da[i]);
                db[i] = _mm512_fmadd_ps(qb[c], k, db[i]);
            }
        }
        _mm_storeu_ps(scores0 + j, _mm_mul_ps(sum4(da[0], da[1], da[2], da[3]), scale4));
        _mm_storeu_ps(scores1 + j, _mm_mul_ps(sum4(db[0], db[1], db[2], db[3]), scale4));
    }
    scores_from(C, a, qa, keys, lo, j, n, tail, scores0, 0);
    scores_from(C, a, qb, keys, lo, j, n + 1, tail, scores1, 0);
}

/* Two queries from [lo, hi] and [lo, hi + 1] (consecutive new tokens, no window between them):
 * the same float sequences as one_query gives each, but each cached value (and float16 key) is
 * loaded and converted once for both, while the two share positions. */
INLINE TARGET void two_queries(const int C, const int Q8, const attn_args *a, const float *q0,
                               const float *q1, const char *keys, const char *values,
                               int64_t lo, int64_t hi, float *scores0, float *scores1,
                               float *out0, float *out1) {
    const int64_t bytes = kv_bytes(Q8), P = a->pos_stride * bytes;
    const int64_t n = hi - lo + 1; /* the second query sees n + 1 */
    const __mmask16 tail = lanes(a->D - 16 * (C - 1));
    if (Q8) { /* integer scores, each query's own (its keys come from L1 the second time) */
        q8_query qa, qb;
        quantize_query(a, q0, &qa);
        quantize_query(a, q1, &qb);
        int_scores(C, a, &qa, keys, key_stride(Q8, a), lo, 0, n, scores0, 0);
        int_scores(C, a, &qb, keys, key_stride(Q8, a), lo, 0, n + 1, scores1, 0);
    } else {
        two_scores(C, a, q0, q1, keys, lo, n, tail, scores0, scores1);
    }
    __m512 inverse0 = softmax(scores0, n), inverse1 = softmax(scores1, n + 1);
    __m512 ea[ATTN_MAX_HEAD / 16], oa[ATTN_MAX_HEAD / 16];
    __m512 eb[ATTN_MAX_HEAD / 16], ob[ATTN_MAX_HEAD / 16];
    UNROLL
    for (int c = 0; c < C; c++) ea[c] = oa[c] = eb[c] = ob[c] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) { /* pairs both queries take */
        const char *value = values + (lo + j) * P;
        float s0 = Q8 ? record_scale(Q8, value, a->D) : 1.0f, s1 = Q8 ? record_scale(Q8, value + P, a->D) : 1.0f;
        __m512 wa0 = _mm512_set1_ps(Q8 ? scores0[j] * s0 : scores0[j]);
        __m512 wa1 = _mm512_set1_ps(Q8 ? scores0[j + 1] * s1 : scores0[j + 1]);
        __m512 wb0 = _mm512_set1_ps(Q8 ? scores1[j] * s0 : scores1[j]);
        __m512 wb1 = _mm512_set1_ps(Q8 ? scores1[j + 1] * s1 : scores1[j + 1]);
        UNROLL
        for (int c = 0; c < C; c++) {
            __mmask16 m = c == C - 1 ? tail : 0xFFFF;
            __m512 v0 = load_kv(Q8, value + 16 * c * bytes, m);
            __m512 v1 = load_kv(Q8, value + P + 16 * c * bytes, m);
            ea[c] = _mm512_fmadd_ps(wa0, v0, ea[c]);
            eb[c] = _mm512_fmadd_ps(wb0, v0, eb[c]);
            oa[c] = _mm512_fmadd_ps(wa1, v1, oa[c]);
            ob[c] = _mm512_fmadd_ps(wb1, v1, ob[c]);
        }
    }
    values_from(C, Q8, a, values, lo, j, n, tail, scores0, ea, oa, inverse0, out0, 0);
    values_from(C, Q8, a, values, lo, j, n + 1, tail, scores1, eb, ob, inverse1, out1, 0);
}

/* Head sizes whose four queries (4 × chunks vectors) fit the 32 registers beside the sums: D ≤ 64
 * (GPT-2 and GPT-Neo 125M–774M). Larger heads go in pairs, as before (four queries' vectors would
 * spill to the stack; not measured). */
#define FOUR_CHUNKS 4

/* Scores of four queries (q[0..3], consecutive new tokens) of float16 keys, for the positions
 * [lo + j, lo + n) in fours that all of them see: each cached key is loaded and converted once
 * for the four. sum4 of the four queries' products with one key gives each the total
 * one_query's sum4 gives it (each total's additions involve only its own vector). → where the
 * fours ended. */
INLINE TARGET int64_t four_scores(const int C, const attn_args *a, const __m512 *qv,
                                  const char *keys, int64_t lo, int64_t n, __mmask16 tail,
                                  float *const *scores) {
    const int64_t bytes = kv_bytes(0), P = a->pos_stride * bytes;
    const __m128 scale4 = _mm_set1_ps(a->scale);
    float *row[4] = {scores[0], scores[1], scores[2], scores[3]}; /* in registers: no reloads */
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m128 s[4]; /* s[p]: key j + p's four scores (lane i: query i) */
        for (int p = 0; p < 4; p++) {
            const char *key = keys + (lo + j + p) * P;
            __m512 d[4], k = load_kv(0, key, C == 1 ? tail : 0xFFFF);
            UNROLL
            for (int i = 0; i < 4; i++) d[i] = _mm512_mul_ps(qv[i * C], k);
            UNROLL
            for (int c = 1; c < C; c++) {
                k = load_kv(0, key + 16 * c * bytes, c == C - 1 ? tail : 0xFFFF);
                UNROLL
                for (int i = 0; i < 4; i++) d[i] = _mm512_fmadd_ps(qv[i * C + c], k, d[i]);
            }
            s[p] = _mm_mul_ps(sum4(d[0], d[1], d[2], d[3]), scale4);
        }
        _MM_TRANSPOSE4_PS(s[0], s[1], s[2], s[3]); /* s[i]: query i's four scores */
        UNROLL
        for (int i = 0; i < 4; i++) _mm_storeu_ps(row[i] + j, s[i]);
    }
    return j;
}

/* The weighted values of four queries for position pairs [lo + j, lo + n) they all see, chunks
 * [c0, c1) (two chunks a pass: 4 queries × 2 chains × 2 chunks of accumulators stay in registers):
 * into even[i × C + c], odd[i × C + c], the chains values_from continues. → where the pairs ended */
INLINE TARGET int64_t four_values(const int C, const int Q8, const int c0, const int c1,
                                  const attn_args *a, const char *values, int64_t lo, int64_t n,
                                  __mmask16 tail, float *const *scores, __m512 *even,
                                  __m512 *odd) {
    const int64_t bytes = kv_bytes(Q8), P = a->pos_stride * bytes;
    __m512 e[4][2], o[4][2];
    UNROLL
    for (int i = 0; i < 4; i++) /* both slots, though c1 − c0 may be 1: GCC's unrolled loops */
        UNROLL                  /* otherwise read as maybe uninitialized (-Wall) */
        for (int k = 0; k < 2; k++) e[i][k] = o[i][k] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const char *value = values + (lo + j) * P;
        __m512 w0[4], w1[4]; /* the weights (Q8: times the values' scales), from memory */
        UNROLL
        for (int i = 0; i < 4; i++) {
            w0[i] = _mm512_set1_ps(scores[i][j]);
            w1[i] = _mm512_set1_ps(scores[i][j + 1]);
        }
        UNROLL
        for (int c = c0; c < c1; c++) {
            __mmask16 m = c == C - 1 ? tail : 0xFFFF;
            __m512 v0 = load_kv(Q8, value + 16 * c * bytes, m);
            __m512 v1 = load_kv(Q8, value + P + 16 * c * bytes, m);
            UNROLL
            for (int i = 0; i < 4; i++) {
                e[i][c - c0] = _mm512_fmadd_ps(w0[i], v0, e[i][c - c0]);
                o[i][c - c0] = _mm512_fmadd_ps(w1[i], v1, o[i][c - c0]);
            }
        }
    }
    UNROLL
    for (int i = 0; i < 4; i++)
        UNROLL
        for (int c = c0; c < c1; c++) {
            even[i * C + c] = e[i][c - c0];
            odd[i * C + c] = o[i][c - c0];
        }
    return j;
}

#ifdef ORTGEN_AVX2
/* four_values for chunk c and the positions of one parity (0: the even chain, 1: the odd one): on
 * AVX2 two chunks' 4 queries × 2 chains of accumulators are 32 registers' worth (16 there are).
 * The chains are independent, so each still gets the float sequence four_values gives it; a
 * position's chunk (two registers) meets the four queries' weights: 6 loads for 8 FMAs, where
 * half a chunk of both chains (before 2026-12-05) took 10. A 512-token prompt's attention, one
 * layer, one thread, C harness (AMD Zen 3): 9.4-9.8 → 8.2-8.6 ms. */
INLINE TARGET int64_t four_values_chain(const int C, const int Q8, const int c, const int parity,
                                        const attn_args *a, const char *values, int64_t lo,
                                        int64_t n, __mmask16 tail, float *const *scores,
                                        __m512 *even, __m512 *odd) {
    const int64_t bytes = kv_bytes(Q8), P = a->pos_stride * bytes, pairs = n & ~(int64_t)1;
    const __mmask16 m = c == C - 1 ? tail : 0xFFFF;
    const float *w[4] = {scores[0], scores[1], scores[2], scores[3]}; /* in registers */
    const char *value = values + lo * P + 16 * c * bytes;
    __m256 e[4][2];
    UNROLL
    for (int i = 0; i < 4; i++) e[i][0] = e[i][1] = _mm256_setzero_ps();
    for (int64_t j = parity; j < pairs; j += 2) {
        __m512 v = load_kv(Q8, value + j * P, m);
        UNROLL
        for (int i = 0; i < 4; i++) {
            __m256 weight = _mm256_broadcast_ss(w[i] + j);
            e[i][0] = _mm256_fmadd_ps(weight, v.lo, e[i][0]);
            e[i][1] = _mm256_fmadd_ps(weight, v.hi, e[i][1]);
        }
    }
    __m512 *chain = parity ? odd : even;
    UNROLL
    for (int i = 0; i < 4; i++) chain[i * C + c] = (__m512){e[i][0], e[i][1]};
    return pairs;
}
#endif

/* Keys turned (a prompt's int8 key records, see attn_queries): blocks of 16 keys, each a run of
 * D / 4 lines of 64 bytes (line g: the 16 keys' codes 4g … 4g + 3 as code + 128, key j in dword
 * j), their scales beside. A line meets a query's dword g broadcast in one dot instruction,
 * giving the 16 keys' partial dots in their own lanes: no sums across lanes. The dots are the
 * exact integers int_scores takes, so the scores are its bits. Only for head sizes that are
 * whole chunks of 16. */

/* TURNED: whether prompts read keys turned (AVX2: no, its dot is an emulation of many
 * instructions; keys one by one there) */
#ifdef ORTGEN_AVX2
#define TURNED 0
#else
#define TURNED 1
#endif

/* Four queries' scores (q[0..3]) of the keys turned [0, end) in blocks of 16 (the last block's
 * lanes past end: scores of later keys or of the zero padding, which no query reads) */
INLINE TARGET void turned_scores(const int C, const q8_query *q, const int8_t *turned,
                                 const float *scales, int64_t end, float *const *scores) {
    const int lines = 4 * C;
    int32_t words[4][ATTN_MAX_HEAD / 4];
    for (int i = 0; i < 4; i++) memcpy(words[i], q[i].codes, sizeof words[i]);
    for (int64_t j = 0; j < end; j += 16) {
        const int8_t *block = turned + j * 16 * C;
        __m512i acc[4];
        UNROLL
        for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_si512();
        UNROLL
        for (int g = 0; g < lines; g++) {
            __m512i k = _mm512_loadu_si512(block + 64 * g);
            UNROLL
            for (int i = 0; i < 4; i++) acc[i] = dot_w8(acc[i], k, _mm512_set1_epi32(words[i][g]));
        }
        __m512 key_scales = _mm512_loadu_ps(scales + j);
        UNROLL
        for (int i = 0; i < 4; i++) {
            __m512 f = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[i], _mm512_set1_epi32(q[i].offset)));
            _mm512_storeu_ps(scores[i] + j,
                             _mm512_mul_ps(_mm512_mul_ps(f, key_scales), _mm512_set1_ps(q[i].factor)));
        }
    }
}

/* Four queries from [lo, hi], …, [lo, hi + 3] (consecutive new tokens, no window between them):
 * the same float sequences as one_query gives each, each cached value (and float16 key) loaded
 * and converted once for the four while they share positions; int8 keys turned are scored in
 * blocks for the four, else by each query on its own. */
INLINE TARGET void four_queries(const int C, const int Q8, const attn_args *a,
                                const float *const *q, const char *keys, const char *values,
                                const void *turned, const float *scales, int64_t lo,
                                int64_t hi, float *const *scores, float *const *out) {
    const int64_t n = hi - lo + 1; /* query i sees n + i */
    const __mmask16 tail = lanes(a->D - 16 * (C - 1));
    int64_t j = 0;
    __m512 inverse[4];
    if (Q8) { /* integer scores: keys turned (lo 0), every key of the four in blocks of 16 */
        q8_query qc[4];
        UNROLL
        for (int i = 0; i < 4; i++) quantize_query(a, q[i], &qc[i]);
        if (turned) turned_scores(C, qc, (const int8_t *)turned, scales, n + 3, scores);
        UNROLL
        for (int i = 0; i < 4; i++) { /* or each query's own, as one_query */
            if (!turned)
                int_scores(C, a, &qc[i], keys, key_stride(Q8, a), lo, 0, n + i, scores[i], 0);
            inverse[i] = softmax(scores[i], n + i);
        }
    } else {
        __m512 qv[4 * (ATTN_MAX_HEAD / 16)];
        UNROLL
        for (int i = 0; i < 4; i++) load_query(C, q[i], tail, qv + i * C);
        j = four_scores(C, a, qv, keys, lo, n, tail, scores);
        UNROLL
        for (int i = 0; i < 4; i++) { /* the rest as one_query: its last n mod 4 keys alone */
            scores_from(C, a, qv + i * C, keys, lo, j, n + i, tail, scores[i], 0);
            inverse[i] = softmax(scores[i], n + i);
        }
    }
    __m512 even[4 * (ATTN_MAX_HEAD / 16)], odd[4 * (ATTN_MAX_HEAD / 16)];
    const int64_t pairs = n & ~(int64_t)1; /* positions four_values takes */
    if (Q8) /* its weights times the values' scales, once for every pass */
        for (j = 0; j < pairs; j++) {
            float s = record_scale(Q8, values + (lo + j) * a->pos_stride * kv_bytes(Q8), a->D);
            UNROLL
            for (int i = 0; i < 4; i++) scores[i][j] *= s;
        }
#ifdef ORTGEN_AVX2
    for (int c = 0; c < C; c++)
        for (int parity = 0; parity < 2; parity++)
            j = four_values_chain(C, Q8, c, parity, a, values, lo, n, tail, scores, even, odd);
#else
    for (int c0 = 0; c0 < C; c0 += 2)
        j = four_values(C, Q8, c0, c0 + 2 < C ? c0 + 2 : C, a, values, lo, n, tail, scores, even, odd);
#endif
    UNROLL
    for (int i = 0; i < 4; i++)
        values_from(C, Q8, a, values, lo, j, n + i, tail, scores[i], even + i * C, odd + i * C,
                    inverse[i], out[i], 0);
}

/* Four consecutive queries over the keys turned whose windows differ (query i sees [lo[i], hi[i]],
 * lo and hi never decreasing; converted values, lo relative to them): their scores in blocks
 * from lo[0]'s block to hi[3] (key k's score of query i at rows[i][k − first]), then each
 * query's softmax and values by one_query, every score written (values are not shared: each
 * query's chains pair its own positions) */
INLINE TARGET void windowed_four(const int C, const attn_args *a, const float *const *q,
                                 const char *keys, const char *values, const int8_t *turned,
                                 const float *scales, const int64_t *lo, const int64_t *hi,
                                 float *const *rows, float *const *out) {
    const int64_t first = lo[0] & ~(int64_t)15;
    q8_query qc[4];
    UNROLL
    for (int i = 0; i < 4; i++) quantize_query(a, q[i], &qc[i]);
    turned_scores(C, qc, turned + first * a->D, scales + first, hi[3] + 1 - first, rows);
    UNROLL
    for (int i = 0; i < 4; i++)
        one_query(C, KIND_FLOATS, a, q[i], keys, values, lo[i], hi[i], hi[i] - lo[i] + 1,
                  rows[i] + (lo[i] - first), out[i], 0);
}

/* one_query, two_queries, four_queries and windowed_four with the chunk count (and the cache's
 * kind) compile-time constants, so queries and sums stay in registers (four_queries and
 * windowed_four: up to FOUR_CHUNKS chunks; windowed_four: converted records only): a function per
 * count (in one function, the compiler keeps some counts' sums on the stack) */
#define QUERY_C(C, Q8, kind)                                                                    \
    static TARGET __attribute__((noinline)) void query_##kind##C(                              \
        const attn_args *a, const float *q, const char *keys, const char *values, int64_t lo,  \
        int64_t hi, float *scores, float *out, int64_t next) {                                 \
        one_query(C, Q8, a, q, keys, values, lo, hi, 0, scores, out, next);                    \
    }                                                                                          \
    static TARGET __attribute__((noinline)) void pair_##kind##C(                               \
        const attn_args *a, const float *q0, const float *q1, const char *keys,                \
        const char *values, int64_t lo, int64_t hi, float *s0, float *s1, float *o0,           \
        float *o1) {                                                                           \
        two_queries(C, Q8, a, q0, q1, keys, values, lo, hi, s0, s1, o0, o1);                   \
    }
/* four_queries only up to FOUR_CHUNKS chunks (attn_queries never groups larger heads in fours) */
#define FOUR_C(C, Q8, kind)                                                                     \
    static TARGET __attribute__((noinline)) void four_##kind##C(                               \
        const attn_args *a, const float *const *q, const char *keys, const char *values,       \
        const void *turned, const float *scales, int64_t lo, int64_t hi, float *const *s,      \
        float *const *o) {                                                                     \
        four_queries(C, Q8, a, q, keys, values, turned, scales, lo, hi, s, o);                 \
    }
#define QUERY_KIND(Q8, kind)                                                                    \
    QUERY_C(1, Q8, kind) QUERY_C(2, Q8, kind) QUERY_C(3, Q8, kind) QUERY_C(4, Q8, kind)         \
    QUERY_C(5, Q8, kind) QUERY_C(6, Q8, kind) QUERY_C(7, Q8, kind) QUERY_C(8, Q8, kind)         \
    QUERY_C(9, Q8, kind) QUERY_C(10, Q8, kind) QUERY_C(11, Q8, kind) QUERY_C(12, Q8, kind)      \
    QUERY_C(13, Q8, kind) QUERY_C(14, Q8, kind) QUERY_C(15, Q8, kind) QUERY_C(16, Q8, kind)   \
    FOUR_C(1, Q8, kind) FOUR_C(2, Q8, kind) FOUR_C(3, Q8, kind) FOUR_C(4, Q8, kind)
#define WINDOWED_C(C)                                                                           \
    static TARGET __attribute__((noinline)) void windowed_##C(                                 \
        const attn_args *a, const float *const *q, const char *keys, const char *values,       \
        const int8_t *turned, const float *scales, const int64_t *lo, const int64_t *hi,       \
        float *const *s, float *const *o) {                                                    \
        windowed_four(C, a, q, keys, values, turned, scales, lo, hi, s, o);                    \
    }
WINDOWED_C(1) WINDOWED_C(2) WINDOWED_C(3) WINDOWED_C(4)
#undef WINDOWED_C
typedef void (*windowed_fn)(const attn_args *, const float *const *, const char *, const char *,
                            const int8_t *, const float *, const int64_t *, const int64_t *,
                            float *const *, float *const *);
static const windowed_fn windowed[FOUR_CHUNKS] = {windowed_1, windowed_2, windowed_3, windowed_4};
_Static_assert(FOUR_CHUNKS == 4, "FOUR_C is generated for chunk counts 1 to 4");
QUERY_KIND(0, half) QUERY_KIND(1, q8) QUERY_KIND(KIND_FLOATS, floats)
#undef QUERY_KIND
#undef FOUR_C
#undef QUERY_C

typedef void (*query_fn)(const attn_args *, const float *, const char *, const char *, int64_t,
                         int64_t, float *, float *, int64_t);
typedef void (*pair_fn)(const attn_args *, const float *, const float *, const char *,
                        const char *, int64_t, int64_t, float *, float *, float *, float *);
typedef void (*four_fn)(const attn_args *, const float *const *, const char *, const char *,
                        const void *, const float *, int64_t, int64_t, float *const *,
                        float *const *);
#define SIXTEEN(f, kind)                                                                        \
    {f##_##kind##1,  f##_##kind##2,  f##_##kind##3,  f##_##kind##4,  f##_##kind##5,  f##_##kind##6,  \
     f##_##kind##7,  f##_##kind##8,  f##_##kind##9,  f##_##kind##10, f##_##kind##11, f##_##kind##12, \
     f##_##kind##13, f##_##kind##14, f##_##kind##15, f##_##kind##16}
static const query_fn queries[3][16] = {SIXTEEN(query, half), SIXTEEN(query, q8),
                                        SIXTEEN(query, floats)};
static const pair_fn pairs[3][16] = {SIXTEEN(pair, half), SIXTEEN(pair, q8), SIXTEEN(pair, floats)};
#define FOUR(kind) {four_##kind##1, four_##kind##2, four_##kind##3, four_##kind##4}
static const four_fn fours[3][FOUR_CHUNKS] = {FOUR(half), FOUR(q8), FOUR(floats)};
#undef FOUR
#undef SIXTEEN

/* the positions new token t of row b sees: [*lo, returned] */
static int64_t visible(const attn_args *a, int64_t b, int64_t t, int64_t *lo) {
    int64_t position = a->last[b] - a->T + 1 + t;
    *lo = a->window > 0 && position - a->window + 1 > 0 ? position - a->window + 1 : 0;
    return position;
}

/* A call of at least this many queries over an int8 cache (a prompt's) first converts the value
 * records its queries see to float records, once: each query then loads floats instead of
 * converting every code it reads again (512-token prompt, one layer, C harness via ONNX Runtime:
 * see the README); and turns the key records (to_turned) */
#define CONVERT_QUERIES 8

/* Four queries whose windows differ share their scores' blocks from this many keys a query on
 * (fewer: blocks mostly of keys the four do not see; C harness, window 7: 0.12 → 0.15 ms) */
#define WINDOWED_KEYS 32

/* int8 records [base, base + count) of a slab (P bytes apart) → float records `stride` floats
 * apart: D codes as floats (exactly), the scale after them */
static TARGET void to_floats(const char *slab, int64_t P, int64_t D, int64_t base, int64_t count,
                             float *out, int64_t stride) {
    for (int64_t p = 0; p < count; p++) {
        const char *record = slab + (base + p) * P;
        float *to = out + p * stride;
        for (int64_t d = 0; d < D; d += 16)
            _mm512_storeu_ps(to + d, load_kv(1, record + d, lanes(D - d)));
        to[D] = record_scale(1, record, D);
    }
}

/* int8 key records [base, base + count) of a slab (P bytes apart, D = 16 × chunks) → keys
 * turned: blocks of 16 keys, D / 4 lines of 64 bytes (past count: codes 0), and their scales
 * (past count: 0) */
static TARGET void to_turned(const char *slab, int64_t P, int64_t D, int64_t base, int64_t count,
                             int8_t *turned, float *scales) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __mmask64 tail = chunk_bytes(D);
    for (int64_t p0 = 0; p0 < count; p0 += 16) {
        int8_t *block = turned + p0 * D;
        for (int64_t d = 0; d < D; d += 64) { /* 16 lines of each 64 bytes of the records */
            __mmask64 m = d + 64 < D ? ~(__mmask64)0 : tail;
            __m512i rows[16], columns[16];
            for (int k = 0; k < 16; k++) /* past count: codes 0 */
                rows[k] = _mm512_xor_si512(
                    p0 + k < count ? _mm512_maskz_loadu_epi8(m, slab + (base + p0 + k) * P + d)
                                   : _mm512_setzero_si512(),
                    flip);
            transpose(rows, columns); /* columns[e]: dword e of the 16 keys */
            for (int64_t e = 0; e < 16 && d + 4 * e < D; e++)
                _mm512_storeu_si512(block + (d / 4 + e) * 64, columns[e]);
        }
        for (int k = 0; k < 16; k++)
            scales[p0 + k] =
                p0 + k < count ? record_scale(1, slab + (base + p0 + k) * P, D) : 0.0f;
    }
}

TARGET int attn_queries(const attn_args *a, int64_t b, int64_t h, int64_t t0, int64_t t1) {
    const int64_t D = a->D, bytes = kv_bytes(a->q8);
    const int64_t slab = (b * a->row_stride + h * a->head_stride) * bytes; /* (b, h)'s start */
    const char *keys = (const char *)a->kc + slab, *values = (const char *)a->vc + slab;
    /* bytes from this (row, head)'s slab to the next pair's, which the next task likely reads:
     * a lone query (a decode step) fetches it into L2 at the pace it reads its own */
    int64_t nb = h + 1 < a->H ? b : b + 1, nh = h + 1 < a->H ? h + 1 : 0;
    int64_t next = nb < a->B ? (nb * a->row_stride + nh * a->head_stride) * bytes - slab : 0;
    int64_t most = a->last[b] - a->T + 1 + t1; /* positions a query may see */
    int64_t stride = (most + 15) & ~(int64_t)15; /* floats: each query's scores */
    size_t score_bytes = (4 * (size_t)stride * sizeof(float) + 64 + 63) & ~(size_t)63;
    int64_t base = 0, count = 0, record = (D + 1 + 15) & ~(int64_t)15; /* floats a record */
    if (a->q8 && t1 - t0 >= CONVERT_QUERIES) { /* the positions [base, most) its queries see */
        visible(a, b, t0, &base);
        count = most - base;
    }
    const int chunks = (int)((D + 15) / 16), fn = chunks - 1; /* tables' */
    /* four queries at once read the keys turned too, where the head is whole chunks */
    int64_t padded = TURNED && count && D == 16 * chunks && chunks <= FOUR_CHUNKS &&
                             (a->window <= 0 || a->window >= WINDOWED_KEYS)
                         ? (count + 15) & ~(int64_t)15
                         : 0;
    size_t record_bytes = (size_t)count * (size_t)record * sizeof(float); /* values */
    size_t turned_bytes = (size_t)padded * ((size_t)D + sizeof(float));
    char *space = scratch_for(score_bytes + record_bytes + turned_bytes);
    if (!space) return -1;
    float *scores = (float *)space;
    float *rows[4] = {scores, scores + stride, scores + 2 * stride, scores + 3 * stride};
    int kind = a->q8 != 0;
    attn_args floats;
    int8_t *turned = NULL;
    float *scales = NULL;
    if (count) { /* queries index the converted records from base: their lo and hi shift */
        float *fv = (float *)(space + score_bytes);
        to_floats(values, a->pos_stride, D, base, count, fv, record);
        if (padded) {
            turned = (int8_t *)(space + score_bytes + record_bytes);
            scales = (float *)(turned + padded * D);
            to_turned(keys, a->pos_stride, D, base, count, turned, scales);
        }
        floats = *a;
        floats.key_stride = a->pos_stride; /* the int8 key records', from base */
        floats.pos_stride = record;
        keys += base * a->pos_stride, values = (const char *)fv;
        kind = KIND_FLOATS, next = 0;
        a = &floats;
    }
    for (int64_t t = t0; t < t1;) {
        int64_t lo, position = visible(a, b, t, &lo), lo_last = -1;
        lo -= base, position -= base;
        const float *q = a->q + (b * a->T + t) * a->q_stride + h * D;
        float *out = a->out + (b * a->T + t) * a->H * D + h * D;
        int64_t together = 1; /* queries that share lo (it never decreases with t) */
        if (t + 1 < t1 && (visible(a, b, t + 1, &lo_last), lo_last - base == lo)) together = 2;
        if (chunks <= FOUR_CHUNKS && t + 3 < t1 &&
            (visible(a, b, t + 3, &lo_last), lo_last - base == lo))
            together = 4;
        const float *qs[4];
        float *outs[4];
        UNROLL
        for (int i = 0; i < 4; i++) {
            qs[i] = q + i * a->q_stride;
            outs[i] = out + i * a->H * D;
        }
        if (together == 4) {
            fours[kind][fn](a, qs, keys, values, lo == 0 ? turned : NULL, scales, lo, position,
                            rows, outs);
        } else if (turned && t + 3 < t1 && position - lo + 1 >= WINDOWED_KEYS) {
            /* windows that move: the scores still shared */
            int64_t los[4], his[4];
            for (int i = 0; i < 4; i++) {
                his[i] = visible(a, b, t + i, &los[i]) - base;
                los[i] -= base;
            }
            windowed[fn](a, qs, keys, values, turned, scales, los, his, rows, outs);
            together = 4;
        } else if (together == 2) {
            pairs[kind][fn](a, q, q + a->q_stride, keys, values, lo, position, rows[0], rows[1],
                           out, out + a->H * D);
        } else {
            queries[kind][fn](a, q, keys, values, lo, position, rows[0], out, next);
        }
        t += together;
    }
    scratch_done();
    return 0;
}

int attn_supported(void) { return isa_supported(); }
