/* int8 block GEMM on AVX-512 VNNI (see q8gemm.h). Every output element is, bit for bit, whichever
 * path computes it (few rows: `column`; more: `group`) and whatever its neighbours:
 *   slot[b % 4] = fma(float(d_b), a_scale_b × w_scale_b, slot[b % 4])  for blocks b in order,
 *   y = ((slot0 + slot1) + (slot2 + slot3)) + bias,
 * d_b being the block's exact integer dot Σ (w − 128)·a. Built with -ffp-contract=off. */
#include "q8gemm.h"
#include "simd_math.h"

#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))
#define INLINE static inline __attribute__((always_inline))
#define PREFETCH 4096 /* bytes ahead in a column stream */
#define ROW_BLOCK 64 /* rows whose codes stay in L2 while every column strip passes over them */

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t q8_rows_bytes(int64_t M, int64_t KB) {
    size_t blocks = (size_t)M * (size_t)KB;
    return round64(blocks * Q8_BLOCK) + round64(blocks * sizeof(int32_t)) +
           round64(blocks * sizeof(float));
}

q8_rows q8_rows_at(void *scratch, int64_t M, int64_t KB) {
    size_t blocks = (size_t)M * (size_t)KB;
    char *at = (char *)scratch;
    q8_rows rows;
    rows.codes = (int8_t *)at;
    at += round64(blocks * Q8_BLOCK);
    rows.offsets = (int32_t *)at;
    at += round64(blocks * sizeof(int32_t));
    rows.scales = (float *)at;
    return rows;
}

TARGET void q8_quantize(const float *A, int64_t K, int64_t KB, int64_t m0, int64_t m1,
                        q8_rows rows) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i u128 = _mm512_set1_epi8((char)0x80);
    for (int64_t m = m0; m < m1; m++) {
        for (int64_t b = 0; b < KB; b++) {
            const float *x = A + m * K + b * Q8_BLOCK;
            int64_t left = K - b * Q8_BLOCK; /* valid values in this block, ≥ 1 */
            __m512 v[4];
            __m512 top = _mm512_setzero_ps();
            __mmask16 nan = 0;
            for (int i = 0; i < 4; i++) {
                int64_t n = left - 16 * i;
                __mmask16 mask = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
                v[i] = _mm512_maskz_loadu_ps(mask, x + 16 * i);
                top = _mm512_max_ps(top, _mm512_andnot_ps(sign, v[i]));
                nan |= _mm512_cmp_ps_mask(v[i], v[i], _CMP_UNORD_Q);
            }
            /* max drops NaNs: a NaN input gets a NaN scale instead, so the row's outputs are NaN */
            float amax = nan ? __builtin_nanf("") : _mm512_reduce_max_ps(top);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f; /* false for NaN: codes 0 */
            int64_t at = m * KB + b;
            int8_t *codes = rows.codes + at * Q8_BLOCK;
            for (int i = 0; i < 4; i++) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], _mm512_set1_ps(inv)));
                _mm_storeu_si128((__m128i *)(codes + 16 * i), _mm512_cvtsepi32_epi8(q));
            }
            __m512i c = _mm512_loadu_si512(codes);
            __m512i lane = _mm512_dpbusd_epi32(zero, u128, c); /* 128 × each lane's code sum */
            rows.offsets[at] = -_mm512_reduce_add_epi32(lane);
            rows.scales[at] = amax / 127.0f;
        }
    }
}

/* The 64-byte block b of 16 weight columns, turned so that register j holds bytes 4j..4j+3 of
 * every column (lane i: column i): 16 loads and a 16 × 16 transpose of dwords. The next group's
 * same block (`ahead` bytes on) is fetched meanwhile. */
INLINE TARGET void turn(const uint8_t *const *col, int64_t b, int64_t ahead, __m512i *out) {
    __m512i r[16], t[16], u[16];
    for (int i = 0; i < 16; i++) {
        _mm_prefetch((const char *)(col[i] + b * Q8_BLOCK + ahead), _MM_HINT_T0);
        r[i] = _mm512_loadu_si512(col[i] + b * Q8_BLOCK);
    }
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        u[4 * k + 0] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    for (int e = 0; e < 4; e++) { /* u[4k + e], 128-bit lane L: dword 4L + e of rows 4k..4k+3 */
        __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88);
        __m512i w0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
        __m512i v1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
        __m512i w1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
        out[e] = _mm512_shuffle_i32x4(v0, v1, 0x88);
        out[8 + e] = _mm512_shuffle_i32x4(v0, v1, 0xdd);
        out[4 + e] = _mm512_shuffle_i32x4(w0, w1, 0x88);
        out[12 + e] = _mm512_shuffle_i32x4(w0, w1, 0xdd);
    }
}

/* R rows' block b against the turned block w: acc[r] (16 columns) += float(exact int dot of the
 * block) × (a_scale × w_scale). Two integer chains per row hide the dot-product latency. */
/* 4 activation codes as one dword (memcpy: the codes are int8 objects) */
INLINE int32_t four_codes(const int8_t *codes) {
    int32_t v;
    memcpy(&v, codes, sizeof v);
    return v;
}

INLINE TARGET void rows_block(const int R, q8_rows rows, int64_t m, int64_t KB, int64_t b,
                              const __m512i *w, __m512 ws, float *acc) {
    __m512i d[4][2];
    const int8_t *a[4];
    for (int r = 0; r < R; r++) {
        int64_t at = (m + r) * KB + b;
        a[r] = rows.codes + at * Q8_BLOCK;
        d[r][0] = _mm512_set1_epi32(rows.offsets[at]);
        d[r][1] = _mm512_setzero_si512();
    }
    for (int j = 0; j < 16; j += 2)
        for (int r = 0; r < R; r++) {
            d[r][0] = _mm512_dpbusd_epi32(d[r][0], w[j], _mm512_set1_epi32(four_codes(a[r] + 4 * j)));
            d[r][1] = _mm512_dpbusd_epi32(d[r][1], w[j + 1],
                                          _mm512_set1_epi32(four_codes(a[r] + 4 * j + 4)));
        }
    for (int r = 0; r < R; r++) {
        int64_t at = (m + r) * KB + b;
        __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(d[r][0], d[r][1]));
        __m512 scale = _mm512_mul_ps(ws, _mm512_set1_ps(rows.scales[at]));
        float *y = acc + ((m + r) * 4 + (b & 3)) * 16;
        _mm512_storeu_ps(y, _mm512_fmadd_ps(dot, scale, _mm512_loadu_ps(y)));
    }
}

/* Columns [n, n + C) (C ≤ 16; the group's missing columns repeat its last one, unstored) for the
 * rows [m0, m1). acc: (m1 − m0) × 4 slots × 16 floats of scratch; block b goes to slot b % 4. */
static TARGET void group(q8_rows rows, int64_t m0, int64_t m1, int64_t KB, const uint8_t *W,
                         const float *Ws, const float *bias, int64_t N, int64_t n, int C,
                         float *Y, float *acc) {
    const uint8_t *col[16];
    int32_t idx[16];
    for (int i = 0; i < 16; i++) {
        int64_t c = n + (i < C ? i : C - 1);
        col[i] = W + c * KB * Q8_BLOCK;
        idx[i] = (int32_t)((c - n) * KB);
    }
    __m512i index = _mm512_loadu_si512(idx);
    int64_t M = m1 - m0;
    for (int64_t i = 0; i < M * 64; i++) acc[i] = 0.0f;
    for (int64_t b = 0; b < KB; b++) {
        __m512i w[16];
        turn(col, b, 16 * KB * Q8_BLOCK, w);
        __m512 ws = _mm512_i32gather_ps(index, Ws + n * KB + b, 4);
        int64_t m = 0;
        q8_rows here = rows;
        here.codes += m0 * KB * Q8_BLOCK;
        here.offsets += m0 * KB;
        here.scales += m0 * KB;
        for (; m + 4 <= M; m += 4) rows_block(4, here, m, KB, b, w, ws, acc);
        switch (M - m) {
            case 3: rows_block(3, here, m, KB, b, w, ws, acc); break;
            case 2: rows_block(2, here, m, KB, b, w, ws, acc); break;
            case 1: rows_block(1, here, m, KB, b, w, ws, acc); break;
        }
    }
    for (int64_t m = 0; m < M; m++) {
        const float *slot = acc + m * 64;
        for (int i = 0; i < C; i++) {
            float y = (slot[i] + slot[16 + i]) + (slot[32 + i] + slot[48 + i]);
            Y[(m0 + m) * N + n + i] = bias ? y + bias[n + i] : y;
        }
    }
}

/* One column n for R (≤ 3) rows, reading its blocks as one stream, four at a time: the same
 * numbers as `group` (the four blocks' exact dots land in lanes 0–3, i.e. slots b % 4). */
INLINE TARGET void column(const int R, q8_rows rows, int64_t m0, int64_t KB, const uint8_t *W,
                          const float *Ws, const float *bias, int64_t N, int64_t n, float *Y) {
    const uint8_t *col = W + n * KB * Q8_BLOCK;
    const float *ws = Ws + n * KB;
    __m128 acc[3];
    for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
    for (int64_t b = 0; b < KB; b += 4) {
        int left = KB - b < 4 ? (int)(KB - b) : 4;
        __mmask8 mask4 = (__mmask8)((1u << left) - 1);
        __m512i w[4];
        for (int i = 0; i < 4; i++)
            w[i] = i < left ? _mm512_loadu_si512(col + (b + i) * Q8_BLOCK) : _mm512_setzero_si512();
        __m128 wscale = _mm_maskz_loadu_ps(mask4, ws + b);
        for (int r = 0; r < R; r++) {
            int64_t at = (m0 + r) * KB + b;
            __m512i d[4];
            for (int i = 0; i < 4; i++) {
                __m512i a = i < left ? _mm512_loadu_si512(rows.codes + (at + i) * Q8_BLOCK)
                                     : _mm512_setzero_si512();
                d[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[i], a);
            }
            __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[0], d[1]), _mm512_unpackhi_epi32(d[0], d[1]));
            __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2], d[3]), _mm512_unpackhi_epi32(d[2], d[3]));
            __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
            __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
            __m128i dot = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            dot = _mm_add_epi32(dot, _mm_maskz_loadu_epi32(mask4, rows.offsets + at));
            __m128 scale = _mm_mul_ps(wscale, _mm_maskz_loadu_ps(mask4, rows.scales + at));
            acc[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(dot), scale, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float slot[4];
        _mm_storeu_ps(slot, acc[r]);
        float y = (slot[0] + slot[1]) + (slot[2] + slot[3]);
        Y[(m0 + r) * N + n] = bias ? y + bias[n] : y;
    }
}

TARGET void q8_gemm(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Ws,
                    const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y) {
    if (M < 4) { /* few rows: stream each column once, no transpose */
        for (int64_t n = n0; n < n1; n++) {
            _mm_prefetch((const char *)(W + n * KB * Q8_BLOCK + PREFETCH), _MM_HINT_T0);
            if (M == 1) column(1, rows, 0, KB, W, Ws, bias, N, n, Y);
            else if (M == 2) column(2, rows, 0, KB, W, Ws, bias, N, n, Y);
            else column(3, rows, 0, KB, W, Ws, bias, N, n, Y);
        }
        return;
    }
    float acc[ROW_BLOCK * 64] __attribute__((aligned(64)));
    for (int64_t rb = 0; rb < M; rb += ROW_BLOCK) {
        int64_t rend = rb + ROW_BLOCK < M ? rb + ROW_BLOCK : M;
        for (int64_t n = n0; n < n1; n += 16)
            group(rows, rb, rend, KB, W, Ws, bias, N, n, n1 - n < 16 ? (int)(n1 - n) : 16, Y, acc);
    }
}

TARGET void q8_gelu(float *Y, int64_t M, int64_t N, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = n0; n < n1; n += 16) {
            __mmask16 mask = n1 - n >= 16 ? 0xFFFF : (__mmask16)((1u << (n1 - n)) - 1);
            float *y = Y + m * N + n;
            _mm512_mask_storeu_ps(y, mask, gelu_tanh(_mm512_maskz_loadu_ps(mask, y)));
        }
}

int q8_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}
