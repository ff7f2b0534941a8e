/* int8-activation block GEMM on AVX-512 VNNI for MatMulNBits-layout weights: 8 bits (symmetric,
 * zero point 128, blocks of 64 along K) or 4 bits (symmetric, zero point 8, blocks of 32, two codes
 * a byte, low nibble first). Activations are quantized per row and block of the weights' block
 * size, so every output row is computed from its own input row only, by the same instruction
 * sequence whatever the number of rows: results never depend on batch neighbours. */
#ifndef ORTGEN_Q8GEMM_H
#define ORTGEN_Q8GEMM_H

#include <stddef.h>
#include <stdint.h>

#define Q8_BLOCK 64
#define Q4_BLOCK 32
#define Q4_PADDED(KB) (((KB) + 15) & ~(int64_t)15) /* 4-bit activation rows: blocks stored */

/* One call's quantized activations: rows of M × KB blocks of `block` codes. */
typedef struct {
    int8_t *codes;    /* [M, KB, block] int8, zero past K (4 bits: a block's even-indexed codes,
                         then its odd-indexed ones: the order of the weights' low, high nibbles) */
    float *scales;    /* [M, KB] */
    int32_t *offsets; /* [M, KB] −zero point × the block's code sum: the zero point's share */
    int16_t *wide;    /* AVX2, 8 bits, more than a few rows: [KB, M, 64] the codes as int16, per
                         block its even-indexed ones, then its odd-indexed ones; else NULL */
    int64_t M;        /* rows: wide holds block b of row m at (b × M + m) × 64 */
    /* AVX-512 build on a CPU with AMX-INT8, 8 bits from AMX_FEW_ROWS rows, 4 bits from AMX_ROWS
     * (else NULL): the codes again
     * as AMX B tiles, [KB, MP / 16, block / 4, 16, 4]: block b of rows 16t … 16t + 15 is one tile
     * (1 KiB for 8 bits, 512 bytes for 4) whose line j holds the 4 codes at 4j … 4j + 3 of each of
     * its 16 rows, in `codes`' order; and the scales block-major (blocks in order), [KB, MP]. MP:
     * M rounded up to 32 (rows past M: codes anything, scales 0, set by q8_rows_at). */
    int8_t *tiles;
    float *tscales;
    int32_t *toffsets; /* 8 bits: the offsets block-major, [KB, MP] (4 bits: unset) */
    int64_t MP;
} q8_rows;

/* bytes of scratch q8_rows needs for M rows of KB blocks of `block` codes */
size_t q8_rows_bytes(int64_t M, int64_t KB, int64_t block);
/* lay q8_rows over `scratch` (64-byte aligned, q8_rows_bytes long) */
q8_rows q8_rows_at(void *scratch, int64_t M, int64_t KB, int64_t block);
/* quantize rows [m0, m1) of A [M, K] */
void q8_quantize(const float *A, int64_t K, int64_t KB, int64_t m0, int64_t m1, q8_rows rows);
/* Y[m, n] = Σ_k A[m, k] W[n, k] (+ bias[n]) for columns [n0, n1), every row; W codes [N, KB, 64]
 * uint8, scales [N, KB]; bias may be NULL. Y is [M, N]. */
void q8_gemm(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Wscales,
             const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y);
/* the same two for 4-bit weights: W codes [N, KB, 16] (32 nibbles a block), scales [N, KB];
 * q8_rows of Q4_PADDED(KB) blocks */
void q4_quantize(const float *A, int64_t K, int64_t KB, int64_t m0, int64_t m1, q8_rows rows);
void q4_gemm(q8_rows rows, int64_t M, int64_t KB, const uint8_t *W, const float *Wscales,
             const float *bias, int64_t N, int64_t n0, int64_t n1, float *Y);
/* Y[m, n] = gelu_tanh(Y[m, n]) for columns [n0, n1), every row (simd_math.h) */
void q8_gelu(float *Y, int64_t M, int64_t N, int64_t n0, int64_t n1);
/* 1 when this CPU has AVX-512 F/BW/VL and VNNI (and the OS saves their state) */
int q8_supported(void);
/* 1 when GEMMs of AMX_FEW_ROWS rows or more (4 bits: AMX_ROWS) run on AMX tiles: the CPU has AMX-INT8, the OS
 * grants it, and ORTGEN_AMX is not 0 (the same bits either way) */
int q8_amx(void);

#endif
