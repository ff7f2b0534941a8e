/* int8 block GEMM on AVX-512 VNNI (see q8gemm.h). Every output element is, bit for bit, whichever
 * path computes it (few rows: `column`; more: `group`, or with AMX `amx_gemm`) and whatever
 * its neighbours:
 *   slot[b % 4] = fma(float(d_b), a_scale_b × w_scale_b, slot[b % 4])  for blocks b in order,
 *   y = ((slot0 + slot1) + (slot2 + slot3)) + bias,
 * d_b being the block's exact integer dot Σ (w − 128)·a. Built with -ffp-contract=off. */
#include "q8gemm.h"
#include "isa.h"
#include "simd_math.h"

#include <string.h>

#define TARGET ISA_TARGET
#define INLINE static inline __attribute__((always_inline))
/* The few-rows paths read columns one after another: the hardware prefetcher follows 8-bit ones
 * alone (a software prefetch 4 KiB ahead made a 1-row step ~5 % slower in interleaved A/B); 4-bit
 * ones, consumed at twice the rate per byte, gain from every line of the column 8 KiB ahead. */
#ifndef Q4_PREFETCH
#define Q4_PREFETCH 8192
#endif
/* On AVX2 CPUs (AMD Zen 3, 2 threads) the 8-bit columns gain from a prefetch 4 KiB ahead too:
 * gpt2 int8 decode steps at past 16, 3 interleaved rounds, 4.9-5.6 → 4.0-4.2 ms (1, 2, 3 and 8
 * KiB no better); and on Intel CPUs with AVX-512 (a Xeon with AMX, 2 threads, 2026-12-06), where
 * the hardware alone streamed ~13 GB/s of a ~24 GB/s probe: 7.9-9.8 → 4.0-5.7 ms (2 KiB
 * 4.7-5.2, 8 KiB 4.8-7.1) */
#ifndef Q8_PREFETCH
#ifdef ORTGEN_AVX2
#define Q8_PREFETCH 4096
#else
#define Q8_PREFETCH (intel_cpu() ? 4096 : 0)
#endif
#endif
static inline int intel_cpu(void) {
    __builtin_cpu_init(); /* once: later calls return at once */
    return __builtin_cpu_is("intel");
}
/* Up to this many rows (a decode step's batch), column by column, three rows a pass while the
 * column sits in L1; more: 16-column groups turned in registers, each group fetching the next
 * one's block into L2 as it goes. Fetched into L1 (before 2026-12-05) the groups' 16 interleaved
 * column streams read memory at half the bandwidth; into L2, a C harness (131 MB of 8-bit
 * weights, K 768, 2 threads, huge pages, ms) ran M 8 7.8 → 5.8, M 12 8.9 → 7.6, M 16 10.5 →
 * 9.2, M 64 28.3 → 27.8, and groups against columns M 4 4.5 / 4.3, M 5 4.8-5.0 / 5.2, M 6 5.1 /
 * 6.0-6.9, M 7 5.6 / 7.7-7.9. gpt2 int8 decode steps of 5-8 rows (3 interleaved rounds, ms):
 * 5 rows 7.3-8.1 → 6.4-7.6, 6 rows 9.4-9.8 → 7.0-8.6, 8 rows 9.6-11.3 → 8.0-10.0. So 4 rows for
 * 8 bits; 4-bit groups unpack as well as turn and stay slower up to 6 (M 6 9.4 / 7.0). Both
 * paths give an output the same bits. On AVX2 CPUs (AMD Zen 3), since rows_wide's loop takes
 * fewer slots (2026-12-05), 8-bit groups win at 4 rows too (one thread, weights cold, ms,
 * columns / groups): M 4 K 768 N 3072 0.35 / 0.30, K 3072 N 768 0.35 / 0.27, N 50257 5.7 / 5.2;
 * M 3 0.26 / 0.26, M 2 0.19 / 0.25. So 3 rows there. */
#ifndef COLUMN_ROWS
#ifdef ORTGEN_AVX2
#define COLUMN_ROWS 3
#else
#define COLUMN_ROWS 4
#endif
#endif
#ifndef Q4_COLUMN_ROWS
#define Q4_COLUMN_ROWS 6
#endif
#define ROW_BLOCK 64 /* rows whose codes stay in L2 while every column strip passes over them */
#define Q4_ROW_BLOCK 64 /* the same for 4 bits; each column strip is unpacked and turned once per
                          * row block: 64 rows run ~9 % faster than 32 at M = 48-256 (a C harness,
                          * K 768, N 3072, one thread) */

/* y = ((slot0 + slot1) + (slot2 + slot3)) + bias: the 4-slot end of every path, 8 or 4 bits */
INLINE float add_slots(float s0, float s1, float s2, float s3, const float *bias, int64_t n) {
    float y = (s0 + s1) + (s2 + s3);
    return bias ? y + bias[n] : y;
}

/* the many-rows paths' end: rows [m0, m0 + M) of columns [n, n + C), acc per row 4 slots × 16 */
INLINE void store_groups(const float *acc, int64_t m0, int64_t M, const float *bias, int64_t N,
                         int64_t n, int C, float *Y) {
    for (int64_t m = 0; m < M; m++) {
        const float *slot = acc + m * 64;
        for (int i = 0; i < C; i++)
            Y[(m0 + m) * N + n + i] =
                add_slots(slot[i], slot[16 + i], slot[32 + i], slot[48 + i], bias, n + i);
    }
}

/* the few-rows paths' end: one column's 4 slots in a register */
INLINE TARGET float slots_sum(__m128 acc, const float *bias, int64_t n) {
    float slot[4];
    _mm_storeu_ps(slot, acc);
    return add_slots(slot[0], slot[1], slot[2], slot[3], bias, n);
}

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* whether q8_rows carry int16 copies of their codes: AVX2's 8-bit many-rows path */
static int wide_rows(int64_t M, int64_t block) {
#ifdef ORTGEN_AVX2
    return block == Q8_BLOCK && M > COLUMN_ROWS;
#else
    (void)M, (void)block;
    return 0;
#endif
}

/* AMX (Intel Xeon 4th generation on): the many-rows paths in tiles, from this many rows. Rows
 * go in pairs of 16-row tiles, so 16 rows cost what 32 do: one thread, K 768, N 3072, 3
 * interleaved runs, tiles / VNNI groups (ms), 8 bits M 16 0.42-0.43 / 0.33-0.48, M 24 0.42-0.46
 * / 0.52-0.56, M 32 0.41-0.46 / 0.72-0.82; 4 bits M 16 0.56-0.59 / 0.35-0.56, M 24 0.47-0.65 /
 * 0.65-0.73, M 32 0.59-0.64 / 0.80-1.00. */
#ifndef AMX_ROWS
#define AMX_ROWS 20
#endif
/* 8 bits: from this many rows up to 16 on one row tile (amx_few); fewer, the VNNI paths. A C
 * harness (a gpt2 step's 124 MB of weights, 2 threads, alternated step by step with the VNNI
 * groups, medians of 40 steps; the same bits): M 5 1.04-1.07 of their time, M 6 0.98, M 8
 * 0.92-0.97, M 10 0.86, M 12 0.85, M 16 0.72-0.79 */
#define AMX_FEW_ROWS 8

#ifndef ORTGEN_AVX2
#include <cpuid.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* 1 when this CPU has AMX-TILE and AMX-INT8, the OS saves their state and grants this process
 * the tile data, and ORTGEN_AMX is not 0 (the AVX-512 VNNI paths then; the same bits either way);
 * asked once */
static int amx_state = -1;
static int amx_usable(void) {
    int state = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (state >= 0) return state;
    state = 0;
    const char *env = getenv("ORTGEN_AMX");
    unsigned a, b, c, d;
    if (!(env && env[0] == '0' && !env[1]) && __get_cpuid_max(0, NULL) >= 7) {
        __cpuid(1, a, b, c, d);
        int osxsave = c >> 27 & 1;
        __cpuid_count(7, 0, a, b, c, d);
        if (osxsave && (d >> 24 & 1) && (d >> 25 & 1)) {
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            /* XCR0 17-18: tile config and data; ARCH_REQ_XCOMP_PERM (0x1023) for XTILEDATA (18) */
            state = (lo >> 17 & 3) == 3 && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
        }
    }
    __atomic_store_n(&amx_state, state, __ATOMIC_RELEASE);
    return state;
}
#endif

/* whether q8_rows carry AMX tiles of their codes */
static int amx_rows(int64_t M, int64_t block) {
#ifdef ORTGEN_AVX2
    (void)M, (void)block;
    return 0;
#else
    return (block == Q8_BLOCK ? M >= AMX_FEW_ROWS : block == Q4_BLOCK && M >= AMX_ROWS) &&
           amx_usable();
#endif
}

static int64_t round32(int64_t m) { return (m + 31) & ~(int64_t)31; }

size_t q8_rows_bytes(int64_t M, int64_t KB, int64_t block) {
    size_t blocks = (size_t)M * (size_t)KB, tiled = (size_t)round32(M) * (size_t)KB;
    return round64(blocks * (size_t)block) + round64(blocks * sizeof(int32_t)) +
           round64(blocks * sizeof(float)) +
           (wide_rows(M, block) ? blocks * (size_t)block * sizeof(int16_t) : 0) +
           (amx_rows(M, block) ? tiled * (size_t)block + tiled * (sizeof(float) + sizeof(int32_t))
                               : 0);
}

q8_rows q8_rows_at(void *scratch, int64_t M, int64_t KB, int64_t block) {
    size_t blocks = (size_t)M * (size_t)KB;
    char *at = (char *)scratch;
    q8_rows rows;
    rows.codes = (int8_t *)at;
    at += round64(blocks * (size_t)block);
    rows.offsets = (int32_t *)at;
    at += round64(blocks * sizeof(int32_t));
    rows.scales = (float *)at;
    at += round64(blocks * sizeof(float));
    rows.wide = wide_rows(M, block) ? (int16_t *)at : NULL;
    if (rows.wide) at += blocks * (size_t)block * sizeof(int16_t);
    rows.M = M;
    rows.MP = round32(M);
    rows.tiles = NULL, rows.tscales = NULL, rows.toffsets = NULL;
    if (amx_rows(M, block)) {
        rows.tiles = (int8_t *)at;
        rows.tscales = (float *)(at + (size_t)rows.MP * (size_t)KB * (size_t)block);
        rows.toffsets = (int32_t *)(rows.tscales + (size_t)rows.MP * (size_t)KB);
        /* the rows past M: scale 0, so that their (never stored) sums stay 0. The scratch holds
         * whatever ran before; its bits as scales made denormal and NaN products, each an assist
         * of the scaling's fmas: M 24 (8 rows past it), gpt2 shapes, 2 threads, C harness, a
         * step's 124 MB of weights 40.0-43.8 → 11.9-14.7 ms; M 16 on tiles 35.1-36.5 → 13.6-14.9 */
        for (int64_t b = 0; b < KB; b++)
            for (int64_t m = M; m < rows.MP; m++) rows.tscales[b * rows.MP + m] = 0.0f;
    }
    return rows;
}

/* A block's V × 16 activations from x (`left` of them valid, the rest read as 0) into v → their
 * largest magnitude; NaN where any is NaN (max drops NaNs: a NaN input gets a NaN scale instead,
 * so the row's outputs are NaN) */
INLINE TARGET float block_amax(const int V, const float *x, int64_t left, __m512 *v) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 top = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (int i = 0; i < V; i++) {
        int64_t n = left - 16 * i;
        __mmask16 mask = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        v[i] = _mm512_maskz_loadu_ps(mask, x + 16 * i);
        top = _mm512_max_ps(top, _mm512_andnot_ps(sign, v[i]));
        nan |= _mm512_cmp_ps_mask(v[i], v[i], _CMP_UNORD_Q);
    }
    return nan ? __builtin_nanf("") : _mm512_reduce_max_ps(top);
}

#ifdef ORTGEN_AVX2
/* 32 int8 codes → int16: the even-indexed ones to `even`, the odd-indexed ones to `odd` */
INLINE TARGET void widen(const int8_t *codes, int16_t *even, int16_t *odd) {
    __m256i c = _mm256_loadu_si256((const __m256i *)codes);
    _mm256_storeu_si256((__m256i *)even, _mm256_srai_epi16(_mm256_slli_epi16(c, 8), 8));
    _mm256_storeu_si256((__m256i *)odd, _mm256_srai_epi16(c, 8));
}
#endif

/* x's four dwords to `to`, to + 64, to + 128, to + 192 (an AMX B tile's lines) */
INLINE TARGET void spread_dwords(__m128i x, int8_t *to) {
    int32_t d[4] = {_mm_cvtsi128_si32(x), _mm_extract_epi32(x, 1), _mm_extract_epi32(x, 2),
                    _mm_extract_epi32(x, 3)};
    for (int e = 0; e < 4; e++) memcpy(to + 64 * e, &d[e], 4);
}

TARGET void q8_quantize(const float *A, int64_t K, int64_t KB, int64_t m0, int64_t m1,
                        q8_rows rows) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i u128 = _mm512_set1_epi8((char)0x80);
    for (int64_t m = m0; m < m1; m++) {
        for (int64_t b = 0; b < KB; b++) {
            const float *x = A + m * K + b * Q8_BLOCK;
            int64_t left = K - b * Q8_BLOCK; /* valid values in this block, ≥ 1 */
            __m512 v[4];
            float amax = block_amax(4, x, left, v);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f; /* false for NaN: codes 0 */
            int64_t at = m * KB + b;
            int8_t *codes = rows.codes + at * Q8_BLOCK;
            __m128i part[4];
            for (int i = 0; i < 4; i++)
                part[i] = _mm512_cvtsepi32_epi8(
                    _mm512_cvtps_epi32(_mm512_mul_ps(v[i], _mm512_set1_ps(inv))));
            /* the 64 codes put together in a register: read back from their four 16-byte stores,
             * they waited for the stores to retire (no forwarding; ~2/3 of this function's time
             * in a 512-token prompt's profile) */
            __m256i low = _mm256_inserti128_si256(_mm256_castsi128_si256(part[0]), part[1], 1);
            __m256i high = _mm256_inserti128_si256(_mm256_castsi128_si256(part[2]), part[3], 1);
            __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
            _mm512_storeu_si512(codes, c);
            __m512i lane = _mm512_dpbusd_epi32(zero, u128, c); /* 128 × each lane's code sum */
            /* wide rows: rows_wide takes the weights as stored, the zero point's share here */
            rows.offsets[at] = Q8_W8_OFFSETS || rows.wide ? -_mm512_reduce_add_epi32(lane) : 0;
            rows.scales[at] = amax / 127.0f;
            if (rows.tiles) { /* AMX's B tile: dword j of this row at line j, column m % 16 */
                int64_t tiled = b * rows.MP + m;
                rows.tscales[tiled] = rows.scales[at];
                rows.toffsets[tiled] = rows.offsets[at];
                int8_t *tile = rows.tiles + (((b * rows.MP + (m & ~(int64_t)15)) * Q8_BLOCK)) +
                                (m & 15) * 4;
                /* from the registers: reading the codes back from their store stalled past
                 * 32 bytes */
                for (int p = 0; p < 4; p++) spread_dwords(part[p], tile + 4 * 64 * p);
            }
#ifdef ORTGEN_AVX2
            if (rows.wide) { /* rows_wide's int16 pairs */
                int16_t *wide = rows.wide + (b * rows.M + m) * Q8_BLOCK;
                widen(codes, wide, wide + 32);
                widen(codes + 32, wide + 16, wide + 48);
            }
#endif
        }
    }
}

/* The 64-byte block b of 16 weight columns, turned so that register j holds bytes 4j..4j+3 of
 * every column (lane i: column i): 16 loads and a 16 × 16 transpose of dwords. The next group's
 * same block (`ahead` bytes on) is fetched meanwhile. */
INLINE TARGET void turn(const uint8_t *const *col, int64_t b, int64_t ahead, __m512i *out) {
    __m512i r[16];
    for (int i = 0; i < 16; i++) {
        _mm_prefetch((const char *)(col[i] + b * Q8_BLOCK + ahead), _MM_HINT_T1);
        r[i] = _mm512_loadu_si512(col[i] + b * Q8_BLOCK);
    }
    transpose(r, out);
}

/* R rows' block b against the turned block w: acc[r] (16 columns) += float(exact int dot of the
 * block) × (a_scale × w_scale). Two integer chains per row hide the dot-product latency. */
/* 4 activation codes as one dword (memcpy: the codes are int8 objects) */
INLINE int32_t four_codes(const int8_t *codes) {
    int32_t v;
    memcpy(&v, codes, sizeof v);
    return v;
}

/* row's block b, its 16 columns' exact dots: acc (slot b % 4) += float(dot) × a_scale × w_scale */
INLINE TARGET void add_block(q8_rows rows, int64_t row, int64_t KB, int64_t b, __m512i dot,
                             __m512 ws, float *acc) {
    __m512 scale = _mm512_mul_ps(ws, _mm512_set1_ps(rows.scales[row * KB + b]));
    float *y = acc + (row * 4 + (b & 3)) * 16;
    _mm512_storeu_ps(y, _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, _mm512_loadu_ps(y)));
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
            d[r][0] = dot_w8(d[r][0], w[j], _mm512_set1_epi32(four_codes(a[r] + 4 * j)));
            d[r][1] = dot_w8(d[r][1], w[j + 1],
                                          _mm512_set1_epi32(four_codes(a[r] + 4 * j + 4)));
        }
    for (int r = 0; r < R; r++)
        add_block(rows, m + r, KB, b, _mm512_add_epi32(d[r][0], d[r][1]), ws, acc);
}

#ifdef ORTGEN_AVX2
/* AVX2's 8-bit many-rows path. rows_block's emulated w512 sums did not fit AVX2's 16 registers
 * (a load and two stores a multiply), dot_w8 signed the weights again for every row (its
 * vpsignb shares the two multiply pipes of an AMD Zen 3), and the emulated 512-bit transpose
 * took ~230 cycles a block. Here each block of 16 columns is turned with 256-bit shuffles and
 * widened to int16 once (`wide`, 64 registers: pair q of 8 columns a register, columns 0–7 then
 * 8–15; q < 16: codes 4q and 4q + 2 of the block, q ≥ 16: codes 4(q − 16) + 1 and + 3),
 * unsigned as stored; q8_quantize widened each row's codes the same way and put −128 Σ a in its
 * offsets; one madd takes 16 products, two rows' chains of sums stay in registers. The same
 * exact integer dots. One thread, C harness, K 768, N 3072, best of 20 (ms): M 16 0.86 → 0.69,
 * M 64 2.95 → 2.46, M 256 12.0 → 10.5, M 512 24.1 → 21.4; K 3072, N 768, M 512 23.9 → 22.7. */
/* Its int16 codes are block-major ([KB, M, 64]; row-major before 2026-12-05): a group's block b
 * for its 64 rows is one run of 8 KiB, which the prefetchers stream, where rows K / 64 blocks
 * apart (6 KiB at K 3072) map to a few L1 sets. Weights cold, one thread, C harness (ms): K 3072,
 * N 768, M 512 22.8-22.9 → 20.7-20.9, M 64 2.91 → 2.46-2.59; K 768, N 3072, M 64 2.63-2.69 →
 * 2.43-2.60, M 512 and M 16 unchanged. The same bits. */

/* 8 registers of 8 dwords (register c: column c) → out[j]: dword j of every column */
INLINE TARGET void transpose8(const __m256i *r, __m256i *out) {
    __m256i t[8], u[8];
    for (int c = 0; c < 8; c += 2) {
        t[c] = _mm256_unpacklo_epi32(r[c], r[c + 1]);
        t[c + 1] = _mm256_unpackhi_epi32(r[c], r[c + 1]);
    }
    for (int g = 0; g < 8; g += 4) { /* u[g + e]: dword e (lane 0), e + 4 (lane 1) of 4 columns */
        u[g] = _mm256_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm256_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm256_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm256_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int e = 0; e < 4; e++) {
        out[e] = _mm256_permute2x128_si256(u[e], u[4 + e], 0x20);
        out[e + 4] = _mm256_permute2x128_si256(u[e], u[4 + e], 0x31);
    }
}

/* Block b of 16 columns into `wide` (64 registers, rows_wide's order); the next group's same
 * block (`ahead` bytes on) is fetched into L2 meanwhile, and this group's block b + 4 into L1: the
 * turn's 16 loads from 16 lines had waited on L2. One thread, C harness, K 768, N 3072, weights
 * rotated over 40 copies in huge pages (ms): M 8 0.48 → 0.44, M 16 0.81-0.85 → 0.75 (K 3072, N 768:
 * 0.89-0.99 → 0.73), M 64 2.86-3.00 → 2.69-2.74, M 256 11.3-11.4 → 10.8; one copy, M 16 0.74 → 0.70 */
INLINE TARGET void turn_wide(const uint8_t *const *col, int64_t b, int64_t ahead, __m256i *wide) {
    const __m256i low = _mm256_set1_epi16(0x00FF);
    for (int h = 0; h < 2; h++)       /* columns 8h … 8h + 7 */
        for (int k = 0; k < 2; k++) { /* codes 32k … 32k + 31 */
            __m256i r[8], out[8];
            for (int c = 0; c < 8; c++) {
                const uint8_t *at = col[8 * h + c] + b * Q8_BLOCK;
                if (k == 0) {
                    _mm_prefetch((const char *)(at + ahead), _MM_HINT_T1);
                    _mm_prefetch((const char *)(at + 4 * Q8_BLOCK), _MM_HINT_T0);
                }
                r[c] = _mm256_loadu_si256((const __m256i *)(at + 32 * k));
            }
            transpose8(r, out);
            for (int i = 0; i < 8; i++) { /* dword j = 8k + i: codes 4j … 4j + 3 */
                int j = 8 * k + i;
                wide[2 * j + h] = _mm256_and_si256(out[i], low);
                wide[2 * (16 + j) + h] = _mm256_srli_epi16(out[i], 8);
            }
        }
}

INLINE TARGET void rows_wide(const int R, q8_rows rows, int64_t m, int64_t KB, int64_t b,
                             const __m256i *wide, __m512 ws, float *acc) {
    __m256i d[4][2];
    const int16_t *a = rows.wide + (b * rows.M + m) * Q8_BLOCK; /* the R rows' block b, in a run */
    for (int r = 0; r < R; r++) /* columns 0–7, 8–15 */
        d[r][0] = d[r][1] = _mm256_set1_epi32(rows.offsets[(m + r) * KB + b]);
    /* 8 pairs a pass: the loop's counting and the pairs' addresses (one pointer, constant
     * offsets) take few slots beside the madds and adds, which the issue width bounds. Without
     * KEEP's empty asm, that pinned each sum to a register of its own (a move an add). One thread,
     * C harness, weights cold (ms): M 512 K 768 N 3072 20.1-20.5 → 18.1-18.3, K 3072 N 768
     * 20.7-20.8 → 18.2-18.5; M 64 2.45-2.61 → 2.28-2.34; M 16 0.74-0.76 → 0.69-0.71; M 5 0.37 →
     * 0.33. Fully unrolled (32 pairs) the sums spill: twice as slow. */
#pragma GCC unroll 8
    for (int q = 0; q < 32; q++) {
        __m256i w0 = _mm256_load_si256(wide + 2 * q), w1 = _mm256_load_si256(wide + 2 * q + 1);
        __asm__("" : "+x"(w0), "+x"(w1)); /* loaded once for the R rows, not once a madd */
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, a + r * Q8_BLOCK + 2 * q, sizeof pair);
            __m256i x = _mm256_set1_epi32(pair);
            d[r][0] = _mm256_add_epi32(d[r][0], _mm256_madd_epi16(w0, x));
            d[r][1] = _mm256_add_epi32(d[r][1], _mm256_madd_epi16(w1, x));
        }
    }
    for (int r = 0; r < R; r++) /* the two registers: columns 0–7 and 8–15 */
        add_block(rows, m + r, KB, b, (__m512i){d[r][0], d[r][1]}, ws, acc);
}

#endif

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
#ifdef ORTGEN_AVX2
        __m256i wide[64] __attribute__((aligned(32)));
        turn_wide(col, b, 16 * KB * Q8_BLOCK, wide);
#else
        __m512i w[16];
        turn(col, b, 16 * KB * Q8_BLOCK, w);
#endif
        __m512 ws = _mm512_i32gather_ps(index, Ws + n * KB + b, 4);
        int64_t m = 0;
        q8_rows here = rows;
        here.codes += m0 * KB * Q8_BLOCK;
        here.offsets += m0 * KB;
        here.scales += m0 * KB;
        if (here.wide) here.wide += m0 * Q8_BLOCK; /* block-major: rows m0 … of every block */
#ifdef ORTGEN_AVX2
#define ROWS(R) rows_wide(R, here, m, KB, b, wide, ws, acc)
#else
#define ROWS(R) rows_block(R, here, m, KB, b, w, ws, acc)
#endif
        for (; m + 4 <= M; m += 4) ROWS(4);
        switch (M - m) {
            case 3: ROWS(3); break;
            case 2: ROWS(2); break;
            case 1: ROWS(1); break;
        }
#undef ROWS
    }
    store_groups(acc, m0, M, bias, N, n, C, Y);
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
                d[i] = dot_w8(_mm512_setzero_si512(), w[i], a);
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
    for (int r = 0; r < R; r++) Y[(m0 + r) * N + n] = slots_sum(acc[r], bias, n);
}

#ifndef ORTGEN_AVX2
/* ---- AMX: the many-rows path on tiles (Intel Xeon 4th generation on). A tile dot
 * (TDPBSSD: signed bytes of A times signed bytes of B, 4 at a time, summed into int32) takes 16
 * weight columns' block b as A, turned signed (w − 128) once per pair of column tiles (`strip`),
 * and 16 rows' codes of that block as B (q8_rows' tiles, laid out when quantized), into a zeroed
 * C: C[c][r] = Σ (w − 128)·a, the exact dot of the other paths. Each block's C goes to memory and
 * into the same fma as theirs (slot b % 4, w_scale × a_scale), so the outputs are theirs bit for
 * bit. Two column tiles × two row tiles a block: 4 dots, 8 tile registers. One thread, C harness,
 * weights cold, 3 interleaved runs (ms, AMX / AVX-512 VNNI groups; this machine's speed drifts
 * ~1.5× between minutes): M 512 K 768 N 3072 7.7-9.8 / 12.9-13.8, K 3072 N 768 5.0-5.2 /
 * 12.4-12.5, M 64 K 768 N 3072 0.76-0.86 / 1.0-1.8, M 16 0.39-0.46 / 0.40-0.45 (its weights'
 * stream). Where the time goes (M 512, K 768, N 3072, parts left out in turn): the tile ops ~2
 * ms, the scaling ~1.8, the rest (signing, sums, stores) ~1.1; they overlap little. The tiles'
 * stores must land in L1: into a buffer of every block's dots (one pass of the scaling per
 * column, its slots in registers: a quarter of the scaling's cost) they took ~2.5× as long.
 * 4-bit weights the same way: each block's 32 codes unpacked to w − 8 in the activations' order
 * (A: 16 lines of 32 bytes, B: 8 lines), the slot (b / 4) % 4; M 512 K 768 N 3072 5.9-7.8 /
 * 9.5-10.7 ms, K 3072 N 768 5.3-5.5 / 8.7-10.7, M 64 0.77-0.80 / 1.08-1.15. Since 2026-12-06
 * the scaling's every address is a constant offset (the pair's weight scales copied block-major
 * once, the slot's first block and the last block as separate code, no per-column checks): it
 * had loaded each column's scale pointer and tested its flags in each of the 64 fmas a block; M
 * 256, 8 alternated runs, ms: 8 bits K 3072 N 768 1.84 → 1.80, K 768 N 3072 2.39 → 2.24, M 512
 * K 768 N 2304 3.63 → 3.33; 4 bits K 768 N 3072 3.64 → 2.98 (medians). */
#define AMX_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,amx-tile,amx-int8")))
typedef struct {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;
#define TILE_FENCE() __asm__ volatile("" ::: "memory") /* the tile macros' asm names no memory */

/* column c (0–31) of the pair at n: n + c, or past n1 the last column again (computed, unstored) */
static inline int64_t pair_column(int64_t n, int c, int64_t n1) { return n + c < n1 ? n + c : n1 - 1; }

/* columns [n, n + 32) (the last repeated past n1) as signed codes w − 128, [KB, 32, 64]: each
 * block's two A tiles in one run */
AMX_TARGET static void amx_strip(const uint8_t *W, int64_t KB, int64_t n, int64_t n1,
                                 int8_t *strip) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int c = 0; c < 32; c++) {
        const uint8_t *col = W + pair_column(n, c, n1) * KB * Q8_BLOCK;
        for (int64_t b = 0; b < KB; b++)
            _mm512_store_si512(strip + (b * 32 + c) * Q8_BLOCK,
                               _mm512_xor_si512(_mm512_loadu_si512(col + b * Q8_BLOCK), flip));
    }
}

/* the same for 4-bit weights, [KB, 32, 32]: a block's codes w − 8 in the activations' order,
 * the low nibbles (even codes), then the high ones */
AMX_TARGET static void amx_strip4(const uint8_t *W, int64_t KB, int64_t n, int64_t n1,
                                  int8_t *strip) {
    const __m128i low = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    for (int c = 0; c < 32; c++) {
        const uint8_t *col = W + pair_column(n, c, n1) * KB * (Q4_BLOCK / 2);
        for (int64_t b = 0; b < KB; b++) {
            __m128i x = _mm_loadu_si128((const __m128i *)(col + b * (Q4_BLOCK / 2)));
            int8_t *to = strip + (b * 32 + c) * Q4_BLOCK;
            _mm_store_si128((__m128i *)to, _mm_sub_epi8(_mm_and_si128(x, low), eight));
            _mm_store_si128((__m128i *)(to + 16),
                            _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(x, 4), low), eight));
        }
    }
}

/* one row tile's 16 dots of a column into its slot sum: sum = fma(float(dot), w × a, sum), the
 * sum starting at 0 for a slot's first block (`first`, a constant) */
AMX_TARGET static inline __attribute__((always_inline)) void amx_scale(const int first, float *y,
                                                                      const int32_t *dot,
                                                                      __m512 wa) {
    __m512 sum = first ? _mm512_setzero_ps() : _mm512_load_ps(y);
    _mm512_store_ps(y, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(dot)), wa, sum));
}

/* columns [n, n + width)'s weight scales (past n1 the last column's again), block-major:
 * wcol[b × width + c] */
AMX_TARGET static void block_major(const float *Ws, int64_t KB, int64_t n, int64_t n1, int width,
                                   float *wcol) {
    for (int c = 0; c < width; c++) {
        const float *ws = Ws + pair_column(n, c, n1) * KB;
        for (int64_t b = 0; b < KB; b++) wcol[b * width + c] = ws[b];
    }
}

/* One row tile's sums of 16 columns (sums[c][slot][row]) → y = ((slot0 + slot1) + (slot2 +
 * slot3)) + bias (bias: the first column's, or NULL), stored for the first `columns` columns and
 * `rows` rows at Y (rows N floats apart) */
AMX_TARGET static inline __attribute__((always_inline)) void amx_store(const float (*sums)[4][16],
                                                                      const float *bias,
                                                                      int columns, int64_t rows,
                                                                      float *Y, int64_t N) {
    __m512i v[16], out[16];
    for (int c = 0; c < 16; c++) {
        const float(*s)[16] = sums[c];
        __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(s[0]), _mm512_load_ps(s[1])),
                                 _mm512_add_ps(_mm512_load_ps(s[2]), _mm512_load_ps(s[3])));
        if (bias && c < columns) y = _mm512_add_ps(y, _mm512_set1_ps(bias[c]));
        v[c] = _mm512_castps_si512(y);
    }
    transpose(v, out); /* out[r]: row r's 16 columns */
    __mmask16 keep = (__mmask16)((1u << columns) - 1);
    for (int64_t r = 0; r < rows; r++)
        _mm512_mask_storeu_ps(Y + r * N, keep, _mm512_castsi512_ps(out[r]));
}

/* Block b's scaling (`scale`; 0: before the first block, tile ops only): its dots d, its 32
 * columns' weight scales w and the rows' scales as0, as1 into the slot sums at y
 * (slots[..][..][slot]); with block b + 1's tile ops in between (`next`: a is its A tiles, bt its
 * B tiles, into nd). scale, first and next are constants; every address a constant offset. */
AMX_TARGET static inline __attribute__((always_inline)) void amx_step(
    const int scale, const int first, const int next, const int size, float *y, const int32_t *d,
    const float *w, __m512 as0, __m512 as1, const int8_t *a, const int8_t *bt, int32_t *nd) {
#define SCALE(c)                                                                               \
    if (scale) {                                                                               \
        __m512 wc = _mm512_set1_ps(w[c]);                                                      \
        const int ti = 2 * ((c) >> 4), r = (c) & 15;                                           \
        amx_scale(first, y + (ti * 16 + r) * 64, d + ti * 256 + 16 * r, _mm512_mul_ps(wc, as0)); \
        amx_scale(first, y + ((ti + 1) * 16 + r) * 64, d + (ti + 1) * 256 + 16 * r,              \
                  _mm512_mul_ps(wc, as1));                                                     \
    }
    if (next) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_loadd(4, a, size);
        SCALE(0); SCALE(1);
        _tile_loadd(6, bt, 64);
        SCALE(2); SCALE(3);
        _tile_dpbssd(0, 4, 6);
        SCALE(4); SCALE(5);
        _tile_loadd(7, bt + 16 * size, 64);
        SCALE(6); SCALE(7);
        _tile_dpbssd(1, 4, 7);
        SCALE(8); SCALE(9);
        _tile_loadd(5, a + 16 * size, size);
        SCALE(10); SCALE(11);
        _tile_dpbssd(2, 5, 6);
        SCALE(12); SCALE(13);
        _tile_dpbssd(3, 5, 7);
        SCALE(14); SCALE(15);
        _tile_stored(0, nd, 64);
        SCALE(16); SCALE(17); SCALE(18); SCALE(19);
        _tile_stored(1, nd + 256, 64);
        SCALE(20); SCALE(21); SCALE(22); SCALE(23);
        _tile_stored(2, nd + 512, 64);
        SCALE(24); SCALE(25); SCALE(26); SCALE(27);
        _tile_stored(3, nd + 768, 64);
        SCALE(28); SCALE(29); SCALE(30); SCALE(31);
        TILE_FENCE();
    } else {
        SCALE(0); SCALE(1); SCALE(2); SCALE(3); SCALE(4); SCALE(5); SCALE(6); SCALE(7);
        SCALE(8); SCALE(9); SCALE(10); SCALE(11); SCALE(12); SCALE(13); SCALE(14); SCALE(15);
        SCALE(16); SCALE(17); SCALE(18); SCALE(19); SCALE(20); SCALE(21); SCALE(22); SCALE(23);
        SCALE(24); SCALE(25); SCALE(26); SCALE(27); SCALE(28); SCALE(29); SCALE(30); SCALE(31);
    }
#undef SCALE
}

/* 8 or 4 bits (`bits`, a constant): a block is `size` bytes of a row's codes (64 or 32), and
 * goes to slot b % 4 (8 bits) or (b / 4) % 4 (4 bits), as on the other paths */
AMX_TARGET static inline __attribute__((always_inline)) void amx_gemm(
    const int bits, q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Ws,
    const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y, int8_t *strip,
    float *wcol) {
    const int size = bits == 8 ? Q8_BLOCK : Q4_BLOCK;
    const int64_t wbytes = bits == 8 ? Q8_BLOCK : Q4_BLOCK / 2; /* a column's block */
    tile_config config = {.palette = 1};
    for (int i = 0; i < 8; i++) config.rows[i] = 16, config.colsb[i] = 64;
    config.colsb[4] = config.colsb[5] = (uint16_t)size; /* A: 16 columns' blocks */
    config.rows[6] = config.rows[7] = (uint8_t)(size / 4); /* B: a dword of 16 rows a line */
    _tile_loadconfig(&config);
    /* blocks b and b + 1's C tiles: stored where they stay in L1 (tile stores into lines that
     * are not there ran ~1.5-2× slower) */
    int32_t dots[2][4][256] __attribute__((aligned(64)));
    float slots[4][16][4][16] __attribute__((aligned(64))); /* [C tile][column][slot][row] */
    for (int64_t n = n0; n < n1; n += 32) {
        int cols[2] = {n1 - n < 16 ? (int)(n1 - n) : 16,
                       n1 - n <= 16 ? 0 : n1 - n < 32 ? (int)(n1 - n - 16) : 16};
        int two = cols[1] > 0;
        block_major(Ws, KB, n, n1, 32, wcol); /* the pair's weight scales, [KB][32] */
        (bits == 8 ? amx_strip : amx_strip4)(W, KB, n, n1, strip);
        TILE_FENCE();
        for (int64_t t = 0; t < rows.MP; t += 32) {
            if (KB <= (bits == 8 ? 3 : 12)) memset(slots, 0, sizeof slots); /* slots no block reaches */
            for (int64_t b = -1; b < KB; b++) {
                /* the first rows' pass fetches the next pair's weights into L2 as it goes, a
                 * line of each of its columns at a time (their signing read them from memory) */
                if (t == 0 && b >= 0 && n + 32 < n1 && (b * wbytes) % 64 == 0)
                    for (int c = 0; c < 32; c++)
                        _mm_prefetch((const char *)(W + pair_column(n + 32, c, n1) * KB * wbytes +
                                                    b * wbytes),
                                     _MM_HINT_T1);
                /* block b + 1's tile ops go in between block b's scaling (which reads what the
                 * tiles stored a block earlier): issued as one run, the tiles' stores, last to
                 * retire, held the scaling back until the reorder buffer filled */
                const int32_t *d = dots[b & 1][0];
                int slot = bits == 8 ? b & 3 : (b >> 2) & 3;
                int first = bits == 8 ? b < 4 : b < 16 && !(b & 3);
                int next = b + 1 < KB; /* block b + 1's tiles (none past the last block) */
                const int8_t *a = next ? strip + (b + 1) * 32 * size : NULL;
                const int8_t *bt = next ? rows.tiles + ((b + 1) * rows.MP + t) * size : NULL;
                int32_t *nd = dots[(b + 1) & 1][0];
                if (b < 0) { /* the first block's tiles only */
                    __m512 none = _mm512_setzero_ps();
                    amx_step(0, 0, 1, size, NULL, NULL, NULL, none, none, a, bt, nd);
                    continue;
                }
                const float *sc = rows.tscales + b * rows.MP + t;
                __m512 as0 = _mm512_loadu_ps(sc), as1 = _mm512_loadu_ps(sc + 16);
                float *y = slots[0][0][slot];
                const float *w = wcol + b * 32;
                if (next) {
                    if (first) amx_step(1, 1, 1, size, y, d, w, as0, as1, a, bt, nd);
                    else amx_step(1, 0, 1, size, y, d, w, as0, as1, a, bt, nd);
                } else {
                    if (first) amx_step(1, 1, 0, size, y, d, w, as0, as1, a, bt, nd);
                    else amx_step(1, 0, 0, size, y, d, w, as0, as1, a, bt, nd);
                }
            }
            for (int i = 0; i <= two; i++)
                for (int j = 0; j < 2; j++) {
                    int64_t m0 = t + 16 * j, here = M - m0 < 16 ? M - m0 : 16;
                    amx_store(slots[2 * i + j], bias ? bias + n + 16 * i : NULL, cols[i], here,
                              Y + m0 * N + n + 16 * i, N);
                }
        }
    }
    _tile_release();
}

/* bits 8 or 4: the rows' AMX path, when a column pair's signed codes find memory */
AMX_TARGET static int amx_run(int bits, q8_rows rows, int64_t M, int64_t KB, const uint8_t *W,
                              const float *Ws, const float *bias, int64_t N, int64_t n0,
                              int64_t n1, float *Y) {
    size_t strip_bytes = (size_t)KB * 32 * (bits == 8 ? Q8_BLOCK : Q4_BLOCK);
    int8_t *strip = aligned_alloc(64, strip_bytes + (size_t)KB * 32 * sizeof(float));
    if (!strip) return 0;
    float *wcol = (float *)(strip + strip_bytes);
    if (bits == 8) amx_gemm(8, rows, M, KB, W, Ws, bias, N, n0, n1, Y, strip, wcol);
    else amx_gemm(4, rows, M, KB, W, Ws, bias, N, n0, n1, Y, strip, wcol);
    free(strip);
    return 1;
}

/* ---- AMX for a decode step's few rows (8 bits, AMX_FEW_ROWS to 16 rows: one row tile). The
 * VNNI groups spend 16 dot instructions a row on each block of 16 columns, and turn the block in
 * registers first; on tiles a block of 16 columns is one tile dot whatever the rows. The weights
 * go in as they are stored: A is 16 columns' block b, lines KB × 64 bytes apart in W, unsigned
 * (TDPBUSD: unsigned A, signed B), and C starts at the rows' offsets (−128 × the block's code
 * sum; one line loaded 16 times, stride 0), so C[c][r] = Σ (w − 128)·a exactly, the other paths'
 * dot. Then the scaling is theirs: slot b % 4 of column c, row r = fma(float(C[c][r]),
 * w_scale × a_scale, slot), and y = ((slot0 + slot1) + (slot2 + slot3)) + bias: the same bits. A
 * range's last columns short of 16 go to `group`. Block b + 1's tile ops are issued before block
 * b's scaling, which reads the dots the tiles stored a block earlier. */
AMX_TARGET static void amx_few(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W,
                               const float *Ws, const float *bias, int64_t N, int64_t n0,
                               int64_t n1, float *Y, float *wcol, float *acc) {
    const int64_t stride = KB * Q8_BLOCK; /* bytes from one column's blocks to the next's */
    tile_config config = {.palette = 1};
    for (int i = 0; i < 3; i++) config.rows[i] = 16, config.colsb[i] = 64;
    _tile_loadconfig(&config);
    int32_t dots[2][16][16] __attribute__((aligned(64))); /* [block & 1][column][row] */
    float slots[16][4][16] __attribute__((aligned(64)));  /* [column][slot][row] */
    int64_t n = n0;
    for (; n + 16 <= n1; n += 16) {
        block_major(Ws, KB, n, n1, 16, wcol); /* the group's weight scales, [KB][16] */
        if (KB < 4) memset(slots, 0, sizeof slots); /* slots no block reaches */
        const uint8_t *A = W + n * stride;
        const int ahead = n + 32 <= N; /* a whole next group in W */
        for (int64_t b = -1; b < KB; b++) {
            if (b + 1 < KB) { /* block b + 1's dots; the next group's 16 columns (one run of
                                 16 × KB lines) into L2, in order, 16 lines a block */
                for (int c = 0; ahead && c < 16; c++)
                    _mm_prefetch((const char *)(A + 16 * stride + ((b + 1) * 16 + c) * 64),
                                 _MM_HINT_T1);
                if (ahead)
                    _mm_prefetch((const char *)(Ws + (n + 16) * KB + (b + 1) * 16), _MM_HINT_T1);
                _tile_loadd(0, rows.toffsets + (b + 1) * rows.MP, 0);
                _tile_loadd(1, A + (b + 1) * Q8_BLOCK, stride);
                _tile_loadd(2, rows.tiles + (b + 1) * rows.MP * Q8_BLOCK, 64);
                _tile_dpbusd(0, 1, 2);
                _tile_stored(0, dots[(b + 1) & 1], 64);
                TILE_FENCE();
            }
            if (b < 0) continue;
            const __m512 as = _mm512_loadu_ps(rows.tscales + b * rows.MP);
            const float *w = wcol + b * 16;
            const int slot = (int)(b & 3);
            for (int c = 0; c < 16; c++) {
                __m512 d = _mm512_cvtepi32_ps(_mm512_load_si512(dots[b & 1][c]));
                __m512 sum = b < 4 ? _mm512_setzero_ps() : _mm512_load_ps(slots[c][slot]);
                _mm512_store_ps(slots[c][slot],
                                _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_set1_ps(w[c]), as), sum));
            }
        }
        amx_store(slots, bias ? bias + n : NULL, 16, M, Y + n, N);
    }
    _tile_release();
    if (n < n1) group(rows, 0, M, KB, W, Ws, bias, N, n, (int)(n1 - n), Y, acc);
}
#endif

TARGET void q8_gemm(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Ws,
                    const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y) {
#ifndef ORTGEN_AVX2
    if (rows.tiles && M <= 16) { /* one row tile (8 bits: from AMX_FEW_ROWS) */
        float *wcol = aligned_alloc(64, (size_t)KB * 16 * sizeof(float));
        if (wcol) {
            float acc[16 * 64] __attribute__((aligned(64)));
            amx_few(rows, M, KB, W, Ws, bias, N, n0, n1, Y, wcol, acc);
            free(wcol);
            return;
        }
    } else if (rows.tiles && amx_run(8, rows, M, KB, W, Ws, bias, N, n0, n1, Y)) {
        return;
    }
#endif
    if (M <= COLUMN_ROWS) { /* few rows: stream each column once, no transpose */
        const int64_t prefetch = Q8_PREFETCH; /* a CPU check: once a call, not once a column */
        for (int64_t n = n0; n < n1; n++) {
            if (prefetch) {
                const uint8_t *ahead = W + n * KB * Q8_BLOCK + prefetch;
                for (int64_t line = 0; line < KB * Q8_BLOCK; line += 64)
                    _mm_prefetch((const char *)(ahead + line), _MM_HINT_T0);
            }
            int64_t m = 0; /* the column stays in L1 while its rows go by in threes */
            for (; m + 3 <= M; m += 3) column(3, rows, m, KB, W, Ws, bias, N, n, Y);
            if (M - m == 2) column(2, rows, m, KB, W, Ws, bias, N, n, Y);
            if (M - m == 1) column(1, rows, m, KB, W, Ws, bias, N, n, Y);
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

/* ---- 4-bit weights: blocks of 32 codes, 16 bytes a block, code 2i in byte i's low nibble and
 * code 2i + 1 in its high one.
 *
 * Activations: each row holds Q4_PADDED(KB) blocks (zeros past KB), in groups of 4 blocks laid out
 * [even-indexed codes of blocks 0–3 | odd-indexed codes of blocks 0–3] (16 bytes each), so that
 * one 64-byte load of 4 blocks' packed weights, split into low and high nibbles, meets its codes
 * byte for byte. Offsets and scales are stored in "slot order": within each run of 16 blocks,
 * block 4i + j at position 4j + i (q4_slot), the order in which the few-rows path's reduction
 * leaves 16 blocks' dots.
 *
 * Every output is, whichever path computes it:
 *   slot[s_b] = fma(float(d_b), a_scale_b × w_scale_b, slot[s_b])  for blocks b in order,
 *   s_b = (b / 4) % 4 (four consecutive blocks share a slot),
 *   y = ((slot0 + slot1) + (slot2 + slot3)) + bias,  d_b = Σ (w − 8)·a exactly.
 * Four slots, not one per block of a run of 16 (before 2026-12-04): the many-rows path's sums, 64
 * rows × 4 slots × 16 columns, stay in L1 (16 slots took 64 KiB), and a pair of blocks it takes
 * shares a slot (one load and store of the sums). A C harness (K 768, N 3072, one thread, 3
 * interleaved runs) measured M = 64: 1.19–1.42 → 0.97–1.11 ms, M = 256: 5.7–7.0 → 4.2–5.0 ms;
 * one row streaming 38 MB of weights unchanged (2.3–2.6 against 2.2–2.7 ms). */

INLINE int64_t q4_slot(int64_t b) { return (b & ~(int64_t)15) + 4 * (b & 3) + ((b >> 2) & 3); }

TARGET void q4_quantize(const float *A, int64_t K, int64_t KB, int64_t m0, int64_t m1,
                        q8_rows rows) {
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i eight = _mm256_set1_epi8(8);
    int64_t KBp = Q4_PADDED(KB);
    for (int64_t m = m0; m < m1; m++) {
        int8_t *row = rows.codes + m * KBp * Q4_BLOCK;
        for (int64_t b = 0; b < KBp; b++) {
            int8_t *evens = row + (b >> 2) * 4 * Q4_BLOCK + 16 * (b & 3);
            int64_t at = m * KBp + q4_slot(b);
            if (b >= KB) { /* padding: no codes, nothing to add */
                memset(evens, 0, 16);
                memset(evens + 64, 0, 16);
                rows.offsets[at] = 0;
                rows.scales[at] = 0.0f;
                continue;
            }
            const float *x = A + m * K + b * Q4_BLOCK;
            int64_t left = K - b * Q4_BLOCK; /* valid values in this block, ≥ 1 */
            __m512 v[2];
            float amax = block_amax(2, x, left, v);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            __m512 scale = _mm512_set1_ps(inv);
            __m128i c0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v[0], scale)));
            __m128i c1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v[1], scale)));
            __m256i c = _mm256_inserti128_si256(_mm256_castsi128_si256(c0), c1, 1);
            /* [even 0–15 | odd 0–15 | even 16–31 | odd 16–31] (8 bytes each) → evens, then odds */
            c = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(c, split), 0xD8);
            _mm_storeu_si128((__m128i *)evens, _mm256_castsi256_si128(c));
            _mm_storeu_si128((__m128i *)(evens + 64), _mm256_extracti128_si256(c, 1));
            __m256i lane = _mm256_dpbusd_epi32(_mm256_setzero_si256(), eight, c);
            __m128i h = _mm_add_epi32(_mm256_castsi256_si128(lane), _mm256_extracti128_si256(lane, 1));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1));
            rows.offsets[at] = -_mm_cvtsi128_si32(h); /* −8 × the code sum */
            rows.scales[at] = amax / 127.0f;
            if (rows.tiles) { /* AMX's B tile (8 lines): dword j of the block as laid out above */
                rows.tscales[b * rows.MP + m] = rows.scales[at];
                int8_t *tile = rows.tiles + (b * rows.MP + (m & ~(int64_t)15)) * Q4_BLOCK +
                               (m & 15) * 4;
                for (int j = 0; j < 8; j++)
                    memcpy(tile + 64 * j, evens + (j < 4 ? 4 * j : 64 + 4 * (j - 4)), 4);
            }
        }
    }
}

/* Blocks b and b + 1 (b even; `two`: whether b + 1 exists) of 16 columns, each column's 32 bytes
 * unpacked to [low b | high b | low b + 1 | high b + 1] and turned: out[j] holds bytes 4j..4j+3
 * of every column (out[0..7]: block b, out[8..15]: block b + 1). */
INLINE TARGET void turn4(const uint8_t *const *col, int64_t b, int two, int64_t ahead,
                         __m512i *out) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m512i r[16];
    for (int i = 0; i < 16; i++) {
        const uint8_t *at = col[i] + b * (Q4_BLOCK / 2);
        _mm_prefetch((const char *)(at + ahead), _MM_HINT_T1);
        __m256i p = two ? _mm256_loadu_si256((const __m256i *)at)
                        : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)at));
        __m256i lo = _mm256_and_si256(p, nibble);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), nibble);
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        r[i] = _mm512_shuffle_i64x2(z, z, 0xD8);
    }
    transpose(r, out);
}

/* R rows' blocks b (and b + 1 when TWO) against the turned pair w: each block's exact dot, then
 * its slot's fma (acc: per row 4 slots × 16 columns) */
INLINE TARGET void rows_pair(const int R, const int TWO, q8_rows rows, int64_t KBp, int64_t m,
                             int64_t b, const __m512i *w, __m512 ws0, __m512 ws1, float *acc) {
    __m512i d[4][2];
    const int8_t *a[4][2];
    for (int r = 0; r < R; r++) {
        const int8_t *row = rows.codes + (m + r) * KBp * Q4_BLOCK;
        for (int h = 0; h < 2; h++) a[r][h] = row + (b >> 2) * 4 * Q4_BLOCK + 16 * ((b + h) & 3);
        d[r][0] = _mm512_set1_epi32(rows.offsets[(m + r) * KBp + q4_slot(b)]);
        d[r][1] = TWO ? _mm512_set1_epi32(rows.offsets[(m + r) * KBp + q4_slot(b + 1)])
                      : _mm512_setzero_si512();
    }
#if I16_SUMS
    /* a block at a time, its int16 sums (isa.h) then one madd: R rows' sums and a weight dword
     * stay in AVX2's 16 registers */
    for (int h = 0; h < 1 + TWO; h++) {
        __m512i s[4];
        for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            int at = j < 4 ? 4 * j : 64 + 4 * (j - 4);
            __m512i wj = w[8 * h + j];
            for (int r = 0; r < R; r++) {
                s[r] = w_add_epi16(s[r], w_maddubs(wj, _mm512_set1_epi32(four_codes(a[r][h] + at))));
                KEEP(s[r]); /* isa.h */
            }
        }
        for (int r = 0; r < R; r++) d[r][h] = _mm512_add_epi32(d[r][h], w_madd_ones(s[r]));
    }
#else
    for (int j = 0; j < 8; j++) /* codes 4j..4j+3 of the block: evens for j < 4, then odds */
        for (int r = 0; r < R; r++) {
            int at = j < 4 ? 4 * j : 64 + 4 * (j - 4);
            d[r][0] = _mm512_dpbusd_epi32(d[r][0], w[j], _mm512_set1_epi32(four_codes(a[r][0] + at)));
            if (TWO)
                d[r][1] = _mm512_dpbusd_epi32(d[r][1], w[8 + j],
                                              _mm512_set1_epi32(four_codes(a[r][1] + at)));
        }
#endif
    for (int r = 0; r < R; r++) { /* b even: b and b + 1 share a slot, one load and store */
        float *y = acc + ((m + r) * 4 + ((b >> 2) & 3)) * 16;
        __m512 sum = _mm512_loadu_ps(y);
        for (int h = 0; h < 1 + TWO; h++) {
            float a_scale = rows.scales[(m + r) * KBp + q4_slot(b + h)];
            __m512 scale = _mm512_mul_ps(h ? ws1 : ws0, _mm512_set1_ps(a_scale));
            sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r][h]), scale, sum);
        }
        _mm512_storeu_ps(y, sum);
    }
}

INLINE TARGET void rows_pairs(const int TWO, q8_rows here, int64_t KBp, int64_t M, int64_t b,
                              const __m512i *w, __m512 ws0, __m512 ws1, float *acc) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) rows_pair(4, TWO, here, KBp, m, b, w, ws0, ws1, acc);
    switch (M - m) {
        case 3: rows_pair(3, TWO, here, KBp, m, b, w, ws0, ws1, acc); break;
        case 2: rows_pair(2, TWO, here, KBp, m, b, w, ws0, ws1, acc); break;
        case 1: rows_pair(1, TWO, here, KBp, m, b, w, ws0, ws1, acc); break;
    }
}

/* Columns [n, n + C) for rows [m0, m1), as `group`; acc: (m1 − m0) × 4 slots × 16 floats */
static TARGET void group4(q8_rows rows, int64_t m0, int64_t m1, int64_t KB, const uint8_t *W,
                          const float *Ws, const float *bias, int64_t N, int64_t n, int C,
                          float *Y, float *acc) {
    const uint8_t *col[16];
    int32_t idx[16];
    for (int i = 0; i < 16; i++) {
        int64_t c = n + (i < C ? i : C - 1);
        col[i] = W + c * KB * (Q4_BLOCK / 2);
        idx[i] = (int32_t)((c - n) * KB);
    }
    __m512i index = _mm512_loadu_si512(idx);
    int64_t M = m1 - m0, KBp = Q4_PADDED(KB);
    for (int64_t i = 0; i < M * 64; i++) acc[i] = 0.0f;
    q8_rows here = rows;
    here.codes += m0 * KBp * Q4_BLOCK;
    here.offsets += m0 * KBp;
    here.scales += m0 * KBp;
    for (int64_t b = 0; b < KB; b += 2) {
        int two = b + 1 < KB;
        __m512i w[16];
        turn4(col, b, two, 16 * KB * (Q4_BLOCK / 2), w);
        __m512 ws0 = _mm512_i32gather_ps(index, Ws + n * KB + b, 4);
        if (two)
            rows_pairs(1, here, KBp, M, b, w, ws0,
                       _mm512_i32gather_ps(index, Ws + n * KB + b + 1, 4), acc);
        else
            rows_pairs(0, here, KBp, M, b, w, ws0, ws0, acc);
    }
    store_groups(acc, m0, M, bias, N, n, C, Y);
}

/* Blocks [b, b + 16) of one column for R (≤ 3) rows into their 4 slots acc[r] (FULL: all 16
 * blocks exist; else those past KB read as zeros, adding nothing, and only the first G loads are
 * made). A 64-byte load holds 4 blocks: its low nibbles meet their even codes, its high nibbles
 * the odd ones; the 4 loads' dots, reduced together, land in slot order: quarter j (128-bit lane)
 * holds blocks 4g + j, g = 0…3, i.e. one block of each slot, so the four quarters' fmas, in
 * order, add every block to its slot in the order `group4` does. */
INLINE TARGET void column_blocks(const int R, const int FULL, const int G, q8_rows rows,
                                 int64_t m0, int64_t KBp, int64_t KB, int64_t b,
                                 const uint8_t *col, const float *ws, __m128 *acc) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    __m512i lo[4], hi[4];
    int64_t left = FULL ? 16 : KB - b;
    for (int g = 0; g < G; g++) {
        __m512i packed;
        if (FULL) {
            packed = _mm512_loadu_si512(col + (b + 4 * g) * (Q4_BLOCK / 2));
        } else {
            int64_t here = left - 4 * g; /* blocks of this load present */
            __mmask64 bytes = here >= 4 ? ~(__mmask64)0
                              : here <= 0 ? 0
                                          : (((__mmask64)1 << (16 * here)) - 1);
            packed = _mm512_maskz_loadu_epi8(bytes, col + (b + 4 * g) * (Q4_BLOCK / 2));
        }
        lo[g] = _mm512_and_si512(packed, nibble);
        hi[g] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    }
    __m512 wscale = FULL ? _mm512_loadu_ps(ws + b)
                         : _mm512_maskz_loadu_ps((__mmask16)((1u << left) - 1), ws + b);
    wscale = _mm512_permutexvar_ps(order, wscale);
    for (int r = 0; r < R; r++) {
        const int8_t *a = rows.codes + ((m0 + r) * KBp + b) * Q4_BLOCK;
        __m512i d[4];
        for (int g = 0; g < 4; g++) {
            const int8_t *codes = a + g * 4 * Q4_BLOCK;
            if (g >= G) {
                d[g] = _mm512_setzero_si512();
                continue;
            }
#if I16_SUMS
            d[g] = w_madd_ones(w_add_epi16(w_maddubs(lo[g], _mm512_loadu_si512(codes)),
                                           w_maddubs(hi[g], _mm512_loadu_si512(codes + 64))));
#else
            d[g] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[g], _mm512_loadu_si512(codes));
            d[g] = _mm512_dpbusd_epi32(d[g], hi[g], _mm512_loadu_si512(codes + 64));
#endif
        }
        /* lane j of d[g]: block 4g + j's 4 partial sums → u: dword 4j + g = block 4g + j */
        __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[0], d[1]), _mm512_unpackhi_epi32(d[0], d[1]));
        __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2], d[3]), _mm512_unpackhi_epi32(d[2], d[3]));
        __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
        int64_t at = (m0 + r) * KBp + b;
        u = _mm512_add_epi32(u, _mm512_loadu_si512(rows.offsets + at));
        __m512 scale = _mm512_mul_ps(wscale, _mm512_loadu_ps(rows.scales + at));
        __m512 dots = _mm512_cvtepi32_ps(u);
        acc[r] = _mm_fmadd_ps(_mm512_castps512_ps128(dots), _mm512_castps512_ps128(scale), acc[r]);
        acc[r] = _mm_fmadd_ps(_mm512_extractf32x4_ps(dots, 1), _mm512_extractf32x4_ps(scale, 1), acc[r]);
        acc[r] = _mm_fmadd_ps(_mm512_extractf32x4_ps(dots, 2), _mm512_extractf32x4_ps(scale, 2), acc[r]);
        acc[r] = _mm_fmadd_ps(_mm512_extractf32x4_ps(dots, 3), _mm512_extractf32x4_ps(scale, 3), acc[r]);
    }
}

/* One column n for R (≤ 3) rows: the same numbers as group4 */
INLINE TARGET void column4(const int R, q8_rows rows, int64_t m0, int64_t KB, const uint8_t *W,
                           const float *Ws, const float *bias, int64_t N, int64_t n, float *Y) {
    const uint8_t *col = W + n * KB * (Q4_BLOCK / 2);
    const float *ws = Ws + n * KB;
    int64_t KBp = Q4_PADDED(KB), b = 0;
    __m128 acc[3];
    for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
    for (; b + 16 <= KB; b += 16) column_blocks(R, 1, 4, rows, m0, KBp, KB, b, col, ws, acc);
    switch ((KB - b + 3) / 4) { /* loads of the last, partial run of 16 blocks */
        case 4: column_blocks(R, 0, 4, rows, m0, KBp, KB, b, col, ws, acc); break;
        case 3: column_blocks(R, 0, 3, rows, m0, KBp, KB, b, col, ws, acc); break;
        case 2: column_blocks(R, 0, 2, rows, m0, KBp, KB, b, col, ws, acc); break;
        case 1: column_blocks(R, 0, 1, rows, m0, KBp, KB, b, col, ws, acc); break;
    }
    for (int r = 0; r < R; r++) Y[(m0 + r) * N + n] = slots_sum(acc[r], bias, n);
}

TARGET void q4_gemm(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Ws,
                    const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y) {
#ifndef ORTGEN_AVX2
    if (rows.tiles && amx_run(4, rows, M, KB, W, Ws, bias, N, n0, n1, Y)) return;
#endif
    if (M <= Q4_COLUMN_ROWS) {
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *ahead = W + n * KB * (Q4_BLOCK / 2) + Q4_PREFETCH;
            for (int64_t line = 0; line < KB * (Q4_BLOCK / 2); line += 64)
                _mm_prefetch((const char *)(ahead + line), _MM_HINT_T0);
            int64_t m = 0;
            for (; m + 3 <= M; m += 3) column4(3, rows, m, KB, W, Ws, bias, N, n, Y);
            if (M - m == 2) column4(2, rows, m, KB, W, Ws, bias, N, n, Y);
            if (M - m == 1) column4(1, rows, m, KB, W, Ws, bias, N, n, Y);
        }
        return;
    }
    float acc[Q4_ROW_BLOCK * 64] __attribute__((aligned(64)));
    for (int64_t rb = 0; rb < M; rb += Q4_ROW_BLOCK) {
        int64_t rend = rb + Q4_ROW_BLOCK < M ? rb + Q4_ROW_BLOCK : M;
        for (int64_t n = n0; n < n1; n += 16)
            group4(rows, rb, rend, KB, W, Ws, bias, N, n, n1 - n < 16 ? (int)(n1 - n) : 16, Y, acc);
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

int q8_supported(void) { return isa_supported(); }

int q8_amx(void) {
#ifdef ORTGEN_AVX2
    return 0;
#else
    return amx_usable();
#endif
}
