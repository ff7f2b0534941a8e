/* Causal attention over a KV cache that stays in place: each row's cache is a [H, L, D] or
 * [L, H, D] slab (L positions preallocated; in the first each head's positions are one contiguous
 * stream, which a decode step reads fastest), new tokens' keys and values are appended into it,
 * and every query
 * attends to its row's cached keys up to its own position (within a local window where one is
 * set). The cache holds float16 values, or (`q8`) per position and head a record of
 * D int8 codes and their float scale (value = code × scale, the scale max|value| / 127): half the
 * bytes again that a decode step late in a long context reads. Over int8 records a query is
 * quantized the same way and its scores are exact integer dots of the codes, scaled; softmax and
 * sums are float32. Each query's float operations are the same sequence whatever the other rows, queries
 * or the number of new tokens (queries that share positions share loads, not arithmetic): results
 * never depend on batch neighbours or on how a prompt was split into runs. */
#ifndef ORTGEN_ATTENTION_H
#define ORTGEN_ATTENTION_H

#include <stdint.h>

#define ATTN_MAX_HEAD 256 /* head sizes up to this */
#define ATTN_SCALE_BYTES 4 /* q8 records: the float scale after the codes */

typedef struct {
    const float *q;       /* [B, T, q_stride]: the query at offset 0 of a token's row */
    const float *k, *v;   /* [B, T, kv_stride] new keys and values (may point into q's rows) */
    int64_t q_stride, kv_stride;
    int64_t B, T, H, D, L; /* rows, new tokens per row, heads, head size, cache positions */
    void *kc, *vc;        /* caches: float16 [B, H, L, D] or [B, L, H, D]; q8: the same with
                             D + 4 bytes a (position, head): D int8 codes, then a float scale */
    int q8;               /* 1: int8 records */
    int64_t row_stride, head_stride, pos_stride; /* elements (q8: bytes) from one row, head,
                                                    position to the next */
    const int32_t *last;  /* [B] each row's last position after this run (its length − 1) */
    float scale;          /* score = scale × q·k (int8 records: q quantized as a key is) */
    int64_t window;       /* > 0: a query sees the `window` positions ending at its own */
    float *out;           /* [B, T, H × D] */
    int64_t key_stride;   /* attn_queries' own (callers leave it): bytes from one int8 key record
                             to the next where the values were converted to floats */
} attn_args;

/* convert and store row b, head h's new keys and values at positions last − T + 1 … last */
void attn_store(const attn_args *a, int64_t b, int64_t h);
/* row b, head h, new tokens [t0, t1): out = softmax(scale q Kᵀ) V over the visible positions;
 * −1 when out of memory (the scores' per-thread scratch buffer), else 0 */
int attn_queries(const attn_args *a, int64_t b, int64_t h, int64_t t0, int64_t t1);
/* 1 when this CPU has AVX-512 F/BW/VL (float16 conversions included) */
int attn_supported(void);

#endif
