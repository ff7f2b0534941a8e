/* The instruction set the kernels are compiled for. By default AVX-512 (F, BW, VL, DQ, VNNI): the
 * intrinsics as written. With ORTGEN_AVX2 (native/avx2/, the second library for CPUs without
 * AVX-512, e.g. AMD Zen 2-3 and Intel client cores) every 512-bit vector is a pair of 256-bit
 * AVX2 vectors and each AVX-512 intrinsic the kernels use is defined here on such pairs, lane for
 * lane the same operation; so the kernels' float sequences, and therefore their guarantees (the
 * same bits whatever the batch, the path or the split of a prompt), are the same on either.
 * Results may differ from the AVX-512 build's in the last bits where a reduction's order or a
 * tiny (subnormal) result's rounding does. */
#ifndef ORTGEN_ISA_H
#define ORTGEN_ISA_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#ifndef ORTGEN_AVX2

#define ISA_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))
/* acc + Σ (w − 128)·a over each dword's 4 bytes, w the 8-bit weight codes (1…255): with VNNI the
 * −128 Σ a part comes from the quantized rows' offsets (Q8_W8_OFFSETS), the dot takes w as is */
#define Q8_W8_OFFSETS 1
#define dot_w8(acc, w, a) _mm512_dpbusd_epi32(acc, w, a)
#define I16_SUMS 0 /* see the AVX2 side */
#define KEEP(v) ((void)0) /* see the AVX2 side */
/* 16 int8 codes at p widened to int32, and 16 float16 values at p to floats (lanes outside the
 * mask: zeros); the AVX2 side widens full ones straight from memory */
#define load_epi8_epi32(m, p) _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p))
#define load_ph_ps(m, p) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p))

static inline int isa_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}
#define ISA_NAME "AVX-512 VNNI"

#else /* AVX2 + FMA + F16C */

#define ISA_TARGET __attribute__((target("avx2,fma,f16c,bmi,bmi2")))
#define W_INLINE static inline __attribute__((always_inline)) ISA_TARGET
#define Q8_W8_OFFSETS 0 /* dot_w8 subtracts the 128 itself */
#define ISA_NAME "AVX2"

static inline int isa_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

typedef struct { __m256 lo, hi; } w512;
typedef struct { __m256i lo, hi; } w512i;
typedef struct { __m256d lo, hi; } w512d;
#define __m512 w512
#define __m512i w512i
#define __m512d w512d

/* ---- masks (bit i: lane i) as vectors */
W_INLINE __m256i w_lanes8(unsigned bits) { /* 8 dword lanes, all ones where bit i is set */
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), bit), bit);
}
W_INLINE __m512i w_mask16(__mmask16 m) {
    __m512i r = {w_lanes8(m & 0xFF), w_lanes8(m >> 8)};
    return r;
}

/* ---- floats */
W_INLINE __m512 w_set1_ps(float x) { __m512 r = {_mm256_set1_ps(x), _mm256_set1_ps(x)}; return r; }
W_INLINE __m512 w_setzero_ps(void) { return w_set1_ps(0.0f); }
W_INLINE __m512 w_loadu_ps(const void *p) {
    __m512 r = {_mm256_loadu_ps((const float *)p), _mm256_loadu_ps((const float *)p + 8)};
    return r;
}
W_INLINE void w_storeu_ps(void *p, __m512 v) {
    _mm256_storeu_ps((float *)p, v.lo);
    _mm256_storeu_ps((float *)p + 8, v.hi);
}
#define W_BINARY(name, op)                                                                        \
    W_INLINE __m512 name(__m512 a, __m512 b) {                                                   \
        __m512 r = {op(a.lo, b.lo), op(a.hi, b.hi)};                                             \
        return r;                                                                                \
    }
W_BINARY(w_add_ps, _mm256_add_ps)
W_BINARY(w_sub_ps, _mm256_sub_ps)
W_BINARY(w_mul_ps, _mm256_mul_ps)
W_BINARY(w_div_ps, _mm256_div_ps)
W_BINARY(w_max_ps, _mm256_max_ps)
W_BINARY(w_andnot_ps, _mm256_andnot_ps)
W_BINARY(w_and_ps, _mm256_and_ps)
W_BINARY(w_or_ps, _mm256_or_ps)
W_BINARY(w_unpacklo_ps, _mm256_unpacklo_ps)
W_BINARY(w_unpackhi_ps, _mm256_unpackhi_ps)
W_INLINE __m512 w_fmadd_ps(__m512 a, __m512 b, __m512 c) {
    __m512 r = {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
    return r;
}
W_INLINE __m512 w_fnmadd_ps(__m512 a, __m512 b, __m512 c) {
    __m512 r = {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
    return r;
}
/* the same tree as AVX-512's reductions: halves, then quarters, then pairs */
W_INLINE float w_hsum8(__m256 v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
W_INLINE float w_reduce_add_ps(__m512 v) { return w_hsum8(_mm256_add_ps(v.lo, v.hi)); }
W_INLINE float w_reduce_max_ps(__m512 v) {
    __m256 m = _mm256_max_ps(v.lo, v.hi);
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
W_INLINE __m512 w_maskz_loadu_ps(__mmask16 m, const void *p) {
    if (m == 0xFFFF) return w_loadu_ps(p);
    __m512i k = w_mask16(m);
    __m512 r = {_mm256_maskload_ps((const float *)p, k.lo),
                _mm256_maskload_ps((const float *)p + 8, k.hi)};
    return r;
}
W_INLINE __m512 w_blend_ps(__m512 a, __m512 b, __m512i k) { /* b where k, else a */
    __m512 r = {_mm256_blendv_ps(a.lo, b.lo, _mm256_castsi256_ps(k.lo)),
                _mm256_blendv_ps(a.hi, b.hi, _mm256_castsi256_ps(k.hi))};
    return r;
}
W_INLINE __m512 w_mask_loadu_ps(__m512 src, __mmask16 m, const void *p) {
    if (m == 0xFFFF) return w_loadu_ps(p);
    return w_blend_ps(src, w_maskz_loadu_ps(m, p), w_mask16(m));
}
W_INLINE void w_mask_storeu_ps(void *p, __mmask16 m, __m512 v) {
    if (m == 0xFFFF) {
        w_storeu_ps(p, v);
        return;
    }
    __m512i k = w_mask16(m);
    _mm256_maskstore_ps((float *)p, k.lo, v.lo);
    _mm256_maskstore_ps((float *)p + 8, k.hi, v.hi);
}
W_INLINE __m512 w_maskz_mov_ps(__mmask16 m, __m512 a) {
    return w_blend_ps(w_setzero_ps(), a, w_mask16(m));
}
W_INLINE __m512 w_maskz_sub_ps(__mmask16 m, __m512 a, __m512 b) {
    return w_maskz_mov_ps(m, w_sub_ps(a, b));
}
#define w_cmp_ps_mask(a, b, pred)                                                                 \
    ((__mmask16)(_mm256_movemask_ps(_mm256_cmp_ps((a).lo, (b).lo, pred)) |                       \
                 (_mm256_movemask_ps(_mm256_cmp_ps((a).hi, (b).hi, pred)) << 8)))
/* only rounding to an integer (scale 0) is used */
#define w_roundscale_ps(a, imm)                                                                   \
    ((__m512){_mm256_round_ps((a).lo, ((imm) & 7) | _MM_FROUND_NO_EXC),                          \
              _mm256_round_ps((a).hi, ((imm) & 7) | _MM_FROUND_NO_EXC)})
/* a × 2^b for integral b ≥ −300 (exp_nonpositive's): two exact powers, so no exponent
 * overflows; only results below FLT_MIN (subnormal) may round differently from AVX-512 */
W_INLINE __m256 w_scalef8(__m256 a, __m256 b) {
    __m256i n = _mm256_cvtps_epi32(_mm256_max_ps(b, _mm256_set1_ps(-300.0f)));
    __m256i h = _mm256_srai_epi32(n, 1), rest = _mm256_sub_epi32(n, h);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(a, p1), p2);
}
W_INLINE __m512 w_scalef_ps(__m512 a, __m512 b) {
    __m512 r = {w_scalef8(a.lo, b.lo), w_scalef8(a.hi, b.hi)};
    return r;
}
W_INLINE __m512d w_castps_pd(__m512 a) {
    __m512d r = {_mm256_castps_pd(a.lo), _mm256_castps_pd(a.hi)};
    return r;
}
W_INLINE __m512 w_castpd_ps(__m512d a) {
    __m512 r = {_mm256_castpd_ps(a.lo), _mm256_castpd_ps(a.hi)};
    return r;
}
W_INLINE __m512d w_unpacklo_pd(__m512d a, __m512d b) {
    __m512d r = {_mm256_unpacklo_pd(a.lo, b.lo), _mm256_unpacklo_pd(a.hi, b.hi)};
    return r;
}
W_INLINE __m512d w_unpackhi_pd(__m512d a, __m512d b) {
    __m512d r = {_mm256_unpackhi_pd(a.lo, b.lo), _mm256_unpackhi_pd(a.hi, b.hi)};
    return r;
}
W_INLINE __m256 w_castps512_ps256(__m512 a) { return a.lo; }
W_INLINE __m128 w_castps512_ps128(__m512 a) { return _mm256_castps256_ps128(a.lo); }
#define w_extractf32x8_ps(a, i) ((i) ? (a).hi : (a).lo)
#define w_extractf32x4_ps(a, i)                                                                   \
    ((i) & 1 ? _mm256_extractf128_ps((i) & 2 ? (a).hi : (a).lo, 1)                               \
             : _mm256_castps256_ps128((i) & 2 ? (a).hi : (a).lo))
W_INLINE __m512 w_permutexvar_ps(__m512i idx, __m512 v) {
    const __m256i seven = _mm256_set1_epi32(7);
    __m256 r[2];
    __m256i ix[2] = {idx.lo, idx.hi};
    for (int i = 0; i < 2; i++) {
        __m256i j = _mm256_and_si256(ix[i], seven);
        __m256 from_hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(ix[i], seven));
        r[i] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(v.lo, j),
                                _mm256_permutevar8x32_ps(v.hi, j), from_hi);
    }
    __m512 out = {r[0], r[1]};
    return out;
}
W_INLINE __m512 w_i32gather_ps(__m512i idx, const float *base) {
    __m512 r = {_mm256_i32gather_ps(base, idx.lo, 4), _mm256_i32gather_ps(base, idx.hi, 4)};
    return r;
}
#define w_i32gather_ps_(idx, base, scale) w_i32gather_ps(idx, (const float *)(base))
W_INLINE __m512 w_cvtph_ps(__m256i h) {
    __m512 r = {_mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
    return r;
}
#define w_cvtps_ph(v, round)                                                                      \
    _mm256_set_m128i(_mm256_cvtps_ph((v).hi, round), _mm256_cvtps_ph((v).lo, round))

/* ---- integers */
W_INLINE __m512i w_loadu_si512(const void *p) {
    __m512i r = {_mm256_loadu_si256((const __m256i *)p),
                 _mm256_loadu_si256((const __m256i *)((const char *)p + 32))};
    return r;
}
W_INLINE void w_storeu_si512(void *p, __m512i v) {
    _mm256_storeu_si256((__m256i *)p, v.lo);
    _mm256_storeu_si256((__m256i *)((char *)p + 32), v.hi);
}
W_INLINE __m512i w_set1_epi32(int x) {
    __m512i r = {_mm256_set1_epi32(x), _mm256_set1_epi32(x)};
    return r;
}
W_INLINE __m512i w_setzero_si512(void) { return w_set1_epi32(0); }
W_INLINE __m512i w_set1_epi8(char x) {
    __m512i r = {_mm256_set1_epi8(x), _mm256_set1_epi8(x)};
    return r;
}
#define w_set_epi32(e15, e14, e13, e12, e11, e10, e9, e8, e7, e6, e5, e4, e3, e2, e1, e0)         \
    ((__m512i){_mm256_set_epi32(e7, e6, e5, e4, e3, e2, e1, e0),                                  \
               _mm256_set_epi32(e15, e14, e13, e12, e11, e10, e9, e8)})
#define W_IBINARY(name, op)                                                                       \
    W_INLINE __m512i name(__m512i a, __m512i b) {                                                \
        __m512i r = {op(a.lo, b.lo), op(a.hi, b.hi)};                                            \
        return r;                                                                                \
    }
W_IBINARY(w_add_epi32, _mm256_add_epi32)
W_IBINARY(w_and_si512, _mm256_and_si256)
W_IBINARY(w_xor_si512, _mm256_xor_si256)
W_IBINARY(w_unpacklo_epi32, _mm256_unpacklo_epi32)
W_IBINARY(w_unpackhi_epi32, _mm256_unpackhi_epi32)
W_IBINARY(w_unpacklo_epi64, _mm256_unpacklo_epi64)
W_IBINARY(w_unpackhi_epi64, _mm256_unpackhi_epi64)
#define w_srli_epi16(a, n) ((__m512i){_mm256_srli_epi16((a).lo, n), _mm256_srli_epi16((a).hi, n)})
W_INLINE int w_reduce_add_epi32(__m512i v) {
    __m256i s = _mm256_add_epi32(v.lo, v.hi);
    __m128i q = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xB1));
    return _mm_cvtsi128_si32(q);
}
W_INLINE __m512 w_cvtepi32_ps(__m512i a) {
    __m512 r = {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)};
    return r;
}
W_INLINE __m512i w_cvtps_epi32(__m512 a) {
    __m512i r = {_mm256_cvtps_epi32(a.lo), _mm256_cvtps_epi32(a.hi)};
    return r;
}
W_INLINE __m512i w_cvtepi8_epi32(__m128i x) {
    __m512i r = {_mm256_cvtepi8_epi32(x), _mm256_cvtepi8_epi32(_mm_srli_si128(x, 8))};
    return r;
}
W_INLINE __m128i w_cvtsepi32_epi8(__m512i a) { /* with signed saturation, lanes in order */
    __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a.lo, a.hi), 0xD8);
    return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}
/* 128-bit lane i (0…3) of a */
#define w_lane(a, i)                                                                              \
    ((i) & 1 ? _mm256_extracti128_si256((i) & 2 ? (a).hi : (a).lo, 1)                            \
             : _mm256_castsi256_si128((i) & 2 ? (a).hi : (a).lo))
/* lanes 0, 1 from a, 2, 3 from b, each picked by two bits of imm */
#define w_shuffle_i32x4(a, b, imm)                                                                \
    ((__m512i){_mm256_set_m128i(w_lane(a, ((imm) >> 2) & 3), w_lane(a, (imm) & 3)),              \
               _mm256_set_m128i(w_lane(b, ((imm) >> 6) & 3), w_lane(b, ((imm) >> 4) & 3))})
#define w_shuffle_i64x2(a, b, imm) w_shuffle_i32x4(a, b, imm)
#define w_inserti64x4(a, x, i) ((i) ? (__m512i){(a).lo, (x)} : (__m512i){(x), (a).hi})
#define w_castsi256_si512(x) ((__m512i){(x), _mm256_setzero_si256()})
#define w_castsi512_si256(a) ((a).lo)
#define w_extracti64x4_epi64(a, i) ((i) ? (a).hi : (a).lo)

/* acc + Σ u·s over each dword's 4 bytes (u unsigned, s signed), exact where a pair of products
 * stays within int16 (u ≤ 128, as the 4-bit codes, 8 and 128 are): every call but the 8-bit
 * weights', which use dot_w8 */
W_INLINE __m256i w_dpbusd8(__m256i acc, __m256i u, __m256i s) {
    __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
W_INLINE __m512i w_dpbusd(__m512i acc, __m512i u, __m512i s) {
    __m512i r = {w_dpbusd8(acc.lo, u.lo, s.lo), w_dpbusd8(acc.hi, u.hi, s.hi)};
    return r;
}
/* acc + Σ (w − 128)·a exactly for w in 1…255 and a in −127…127 (the codes' ranges): the signed
 * weight's sign moved onto a's magnitude, so no pair of products leaves int16 */
W_INLINE __m256i w_dot_w8_8(__m256i acc, __m256i w, __m256i a) {
    __m256i signed_w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
    __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(signed_w, a));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
W_INLINE __m512i dot_w8(__m512i acc, __m512i w, __m512i a) {
    __m512i r = {w_dot_w8_8(acc.lo, w.lo, a.lo), w_dot_w8_8(acc.hi, w.hi, a.hi)};
    return r;
}
/* GCC moves the adds of a fully unrolled chain of integer sums to its end, keeping every product
 * alive until then: with 16 registers they go to the stack and back. An empty asm that may change
 * the running sum keeps each add where it is written: the 4-bit many-rows path (K 768, N 3072, 2
 * threads, M 64-512) ~110 → ~153 GMAC/s, a 512-token gpt2 int4 prompt 499-509 → 411-415 ms (AMD
 * Zen 3, 2 interleaved rounds). (The 8-bit many-rows path has AVX2 code of its own: rows_wide in
 * q8gemm.c.) */
#define KEEP(v) __asm__("" : "+x"((v).lo), "+x"((v).hi))
/* The 4-bit paths' dots in two steps, as AVX2 has no VNNI: int16 sums of maddubs (pairs of
 * code × code), up to 8 of them for 4-bit weights (8 × 2 × 15 × 127 = 30480: exact), then one
 * madd to int32: 9 multiplies where the dpbusd emulation takes 16, and on an AMD Zen 3 the
 * multiplies (and vpsignb) share two pipes, two a cycle. */
#define I16_SUMS 1
W_INLINE __m512i w_maddubs(__m512i u, __m512i s) {
    __m512i r = {_mm256_maddubs_epi16(u.lo, s.lo), _mm256_maddubs_epi16(u.hi, s.hi)};
    return r;
}
W_IBINARY(w_add_epi16, _mm256_add_epi16)
W_INLINE __m512i w_madd_ones(__m512i a) { /* int16 pairs → their int32 sums */
    const __m256i ones = _mm256_set1_epi16(1);
    __m512i r = {_mm256_madd_epi16(a.lo, ones), _mm256_madd_epi16(a.hi, ones)};
    return r;
}

/* ---- 128- and 256-bit masked forms (AVX-512 VL) */
W_INLINE __m128 w_mm_maskz_loadu_ps(__mmask8 m, const void *p) {
    if ((m & 15) == 15) return _mm_loadu_ps((const float *)p);
    return _mm_maskload_ps((const float *)p, _mm256_castsi256_si128(w_lanes8(m & 15)));
}
W_INLINE __m128i w_mm_maskz_loadu_epi32(__mmask8 m, const void *p) {
    if ((m & 15) == 15) return _mm_loadu_si128((const __m128i *)p);
    return _mm_maskload_epi32((const int *)p, _mm256_castsi256_si128(w_lanes8(m & 15)));
}
/* byte- and word-granular masks: whole vectors where the mask is full, else lane by lane (the
 * kernels' tails) */
W_INLINE void w_copy_masked(void *to, const void *from, uint64_t m, int size, int n) {
    for (int i = 0; i < n; i++)
        if (m >> i & 1) memcpy((char *)to + i * size, (const char *)from + i * size, size);
}
W_INLINE __m128i w_mm_maskz_loadu_epi8(__mmask16 m, const void *p) {
    if (m == 0xFFFF) return _mm_loadu_si128((const __m128i *)p);
    char buf[16] = {0};
    w_copy_masked(buf, p, m, 1, 16);
    return _mm_loadu_si128((const __m128i *)buf);
}
W_INLINE void w_mm_mask_storeu_epi8(void *p, __mmask16 m, __m128i v) {
    if (m == 0xFFFF) {
        _mm_storeu_si128((__m128i *)p, v);
        return;
    }
    char buf[16];
    _mm_storeu_si128((__m128i *)buf, v);
    w_copy_masked(p, buf, m, 1, 16);
}
W_INLINE __m256i w_mm256_maskz_loadu_epi16(__mmask16 m, const void *p) {
    if (m == 0xFFFF) return _mm256_loadu_si256((const __m256i *)p);
    short buf[16] = {0};
    w_copy_masked(buf, p, m, 2, 16);
    return _mm256_loadu_si256((const __m256i *)buf);
}
W_INLINE void w_mm256_mask_storeu_epi16(void *p, __mmask16 m, __m256i v) {
    if (m == 0xFFFF) {
        _mm256_storeu_si256((__m256i *)p, v);
        return;
    }
    short buf[16];
    _mm256_storeu_si256((__m256i *)buf, v);
    w_copy_masked(p, buf, m, 2, 16);
}
/* the attention's cache reads (see the AVX-512 side): a full mask widens each half straight from
 * memory, the load folded into vpmovsxbd / vcvtph2ps (w_cvtepi8_epi32 and w_cvtph_ps take a
 * register: a load, then a shift or extract, 5 instructions for 16 values where 4 do). A decode
 * step's one-query scores and value sums are mostly these: one layer, 12 heads at past 900, one
 * thread, C harness: int8 cache 122-124 → 83-84 µs (from memory: 128-131 → 93-99), float16
 * 124-133 → 85-91; a 512-token prompt's float16 queries 9.3-9.5 → 7.2-7.3 ms; the same bits */
W_INLINE __m512i load_epi8_epi32(__mmask16 m, const void *p) {
    if (m != 0xFFFF) return w_cvtepi8_epi32(w_mm_maskz_loadu_epi8(m, p));
    __m512i r = {_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                 _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const char *)p + 8)))};
    return r;
}
W_INLINE __m512 load_ph_ps(__mmask16 m, const void *p) {
    if (m != 0xFFFF) return w_cvtph_ps(w_mm256_maskz_loadu_epi16(m, p));
    __m512 r = {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const char *)p + 16)))};
    return r;
}
W_INLINE __m512i w_maskz_loadu_epi8(__mmask64 m, const void *p) {
    if (m == ~(__mmask64)0) return w_loadu_si512(p);
    char buf[64] = {0};
    w_copy_masked(buf, p, m, 1, 64);
    return w_loadu_si512(buf);
}

#undef _mm512_set1_ps
#define _mm512_set1_ps w_set1_ps
#undef _mm512_setzero_ps
#define _mm512_setzero_ps w_setzero_ps
#undef _mm512_loadu_ps
#define _mm512_loadu_ps w_loadu_ps
#undef _mm512_storeu_ps
#define _mm512_storeu_ps w_storeu_ps
#undef _mm512_add_ps
#define _mm512_add_ps w_add_ps
#undef _mm512_sub_ps
#define _mm512_sub_ps w_sub_ps
#undef _mm512_mul_ps
#define _mm512_mul_ps w_mul_ps
#undef _mm512_div_ps
#define _mm512_div_ps w_div_ps
#undef _mm512_max_ps
#define _mm512_max_ps w_max_ps
#undef _mm512_andnot_ps
#define _mm512_andnot_ps w_andnot_ps
#undef _mm512_and_ps
#define _mm512_and_ps w_and_ps
#undef _mm512_or_ps
#define _mm512_or_ps w_or_ps
#undef _mm512_unpacklo_ps
#define _mm512_unpacklo_ps w_unpacklo_ps
#undef _mm512_unpackhi_ps
#define _mm512_unpackhi_ps w_unpackhi_ps
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps w_fmadd_ps
#undef _mm512_fnmadd_ps
#define _mm512_fnmadd_ps w_fnmadd_ps
#undef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps w_reduce_add_ps
#undef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps w_reduce_max_ps
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps w_maskz_loadu_ps
#undef _mm512_mask_loadu_ps
#define _mm512_mask_loadu_ps w_mask_loadu_ps
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps w_mask_storeu_ps
#undef _mm512_maskz_mov_ps
#define _mm512_maskz_mov_ps w_maskz_mov_ps
#undef _mm512_maskz_sub_ps
#define _mm512_maskz_sub_ps w_maskz_sub_ps
#undef _mm512_cmp_ps_mask
#define _mm512_cmp_ps_mask w_cmp_ps_mask
#undef _mm512_roundscale_ps
#define _mm512_roundscale_ps w_roundscale_ps
#undef _mm512_scalef_ps
#define _mm512_scalef_ps w_scalef_ps
#undef _mm512_castps_pd
#define _mm512_castps_pd w_castps_pd
#undef _mm512_castpd_ps
#define _mm512_castpd_ps w_castpd_ps
#undef _mm512_unpacklo_pd
#define _mm512_unpacklo_pd w_unpacklo_pd
#undef _mm512_unpackhi_pd
#define _mm512_unpackhi_pd w_unpackhi_pd
#undef _mm512_castps512_ps256
#define _mm512_castps512_ps256 w_castps512_ps256
#undef _mm512_castps512_ps128
#define _mm512_castps512_ps128 w_castps512_ps128
#undef _mm512_extractf32x8_ps
#define _mm512_extractf32x8_ps w_extractf32x8_ps
#undef _mm512_extractf32x4_ps
#define _mm512_extractf32x4_ps w_extractf32x4_ps
#undef _mm512_permutexvar_ps
#define _mm512_permutexvar_ps w_permutexvar_ps
#undef _mm512_i32gather_ps
#define _mm512_i32gather_ps w_i32gather_ps_
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps w_cvtph_ps
#undef _mm512_cvtps_ph
#define _mm512_cvtps_ph w_cvtps_ph
#undef _mm512_loadu_si512
#define _mm512_loadu_si512 w_loadu_si512
#undef _mm512_storeu_si512
#define _mm512_storeu_si512 w_storeu_si512
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 w_set1_epi32
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 w_setzero_si512
#undef _mm512_set1_epi8
#define _mm512_set1_epi8 w_set1_epi8
#undef _mm512_set_epi32
#define _mm512_set_epi32 w_set_epi32
#undef _mm512_add_epi32
#define _mm512_add_epi32 w_add_epi32
#undef _mm512_and_si512
#define _mm512_and_si512 w_and_si512
#undef _mm512_xor_si512
#define _mm512_xor_si512 w_xor_si512
#undef _mm512_unpacklo_epi32
#define _mm512_unpacklo_epi32 w_unpacklo_epi32
#undef _mm512_unpackhi_epi32
#define _mm512_unpackhi_epi32 w_unpackhi_epi32
#undef _mm512_unpacklo_epi64
#define _mm512_unpacklo_epi64 w_unpacklo_epi64
#undef _mm512_unpackhi_epi64
#define _mm512_unpackhi_epi64 w_unpackhi_epi64
#undef _mm512_srli_epi16
#define _mm512_srli_epi16 w_srli_epi16
#undef _mm512_reduce_add_epi32
#define _mm512_reduce_add_epi32 w_reduce_add_epi32
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps w_cvtepi32_ps
#undef _mm512_cvtps_epi32
#define _mm512_cvtps_epi32 w_cvtps_epi32
#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32 w_cvtepi8_epi32
#undef _mm512_cvtsepi32_epi8
#define _mm512_cvtsepi32_epi8 w_cvtsepi32_epi8
#undef _mm512_shuffle_i32x4
#define _mm512_shuffle_i32x4 w_shuffle_i32x4
#undef _mm512_shuffle_i64x2
#define _mm512_shuffle_i64x2 w_shuffle_i64x2
#undef _mm512_inserti64x4
#define _mm512_inserti64x4 w_inserti64x4
#undef _mm512_castsi256_si512
#define _mm512_castsi256_si512 w_castsi256_si512
#undef _mm512_castsi512_si256
#define _mm512_castsi512_si256 w_castsi512_si256
#undef _mm512_extracti64x4_epi64
#define _mm512_extracti64x4_epi64 w_extracti64x4_epi64
#undef _mm512_dpbusd_epi32
#define _mm512_dpbusd_epi32 w_dpbusd
#undef _mm512_maskz_loadu_epi8
#define _mm512_maskz_loadu_epi8 w_maskz_loadu_epi8
#undef _mm256_dpbusd_epi32
#define _mm256_dpbusd_epi32 w_dpbusd8
#undef _mm_maskz_loadu_ps
#define _mm_maskz_loadu_ps w_mm_maskz_loadu_ps
#undef _mm_maskz_loadu_epi32
#define _mm_maskz_loadu_epi32 w_mm_maskz_loadu_epi32
#undef _mm_maskz_loadu_epi8
#define _mm_maskz_loadu_epi8 w_mm_maskz_loadu_epi8
#undef _mm_mask_storeu_epi8
#define _mm_mask_storeu_epi8 w_mm_mask_storeu_epi8
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16 w_mm256_maskz_loadu_epi16
#undef _mm256_mask_storeu_epi16
#define _mm256_mask_storeu_epi16 w_mm256_mask_storeu_epi16

#endif /* ORTGEN_AVX2 */
#endif
