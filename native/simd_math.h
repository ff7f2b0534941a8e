/* Elementwise AVX-512 math shared by the kernels. Each lane is computed by the same operations
 * whatever its neighbours, so a value's result never depends on where in a vector it sits. */
#ifndef ORTGEN_SIMD_MATH_H
#define ORTGEN_SIMD_MATH_H

#include "isa.h"

#define SIMD_TARGET ISA_TARGET

/* e^x for x ≤ 0: x = n ln 2 + r, |r| ≤ ln 2 / 2, e^r by its Taylor polynomial of degree 7
 * (relative error < 2e-7), times 2^n; below −104 the result is 0; NaN gives NaN. */
static inline __attribute__((always_inline)) SIMD_TARGET __m512 exp_nonpositive(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693145752f), ln2_lo = _mm512_set1_ps(1.42860677e-6f);
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x); /* in this order a NaN stays NaN */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* GELU, tanh form (GPT-2's gelu_new, ONNX Runtime's FastGelu):
 * 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), tanh(u) = sign(u) (1 − e) / (1 + e), e = e^(−2|u|):
 * within ~2e-7 of the exact function (absolute, in tanh). */
static inline __attribute__((always_inline)) SIMD_TARGET __m512 gelu_tanh(__m512 x) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608f),
                             _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, x));
    __m512 e = exp_nonpositive(_mm512_mul_ps(_mm512_set1_ps(-2.0f), _mm512_andnot_ps(sign, u)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e),
                             _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    t = _mm512_or_ps(t, _mm512_and_ps(sign, u)); /* tanh is odd: u's sign */
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x),
                         _mm512_add_ps(_mm512_set1_ps(1.0f), t));
}

/* 16 registers of 16 dwords (register i: column i's 64 bytes) → out[j]: dword j of every column */
static inline __attribute__((always_inline)) SIMD_TARGET void transpose(const __m512i *r,
                                                                       __m512i *out) {
    __m512i t[16], u[16];
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

#endif
