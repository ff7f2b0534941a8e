/* Causal attention over a half-precision KV cache that stays in place: each row's cache is a
 * [H, L, D] or [L, H, D] slab of float16 (L positions preallocated; the second keeps a row's
 * positions together, one stream for all its heads), new tokens' keys and values are appended
 * into it, and every query attends to its row's cached keys up to its own position (within a
 * local window where one is set). Scores, softmax and sums are float32; only the cache is half
 * width, which halves what a decode step late in a long context reads. Each query is computed
 * by the same instruction sequence whatever the other rows, queries or the number of new tokens:
 * results never depend on batch neighbours or on how a prompt was split into runs. */
#ifndef ORTGEN_ATTENTION_H
#define ORTGEN_ATTENTION_H

#include <stdint.h>

#define ATTN_MAX_HEAD 256 /* head sizes up to this */

typedef struct {
    const float *q;       /* [B, T, q_stride]: the query at offset 0 of a token's row */
    const float *k, *v;   /* [B, T, kv_stride] new keys and values (may point into q's rows) */
    int64_t q_stride, kv_stride;
    int64_t B, T, H, D, L; /* rows, new tokens per row, heads, head size, cache positions */
    uint16_t *kc, *vc;    /* caches [B, H, L, D] or [B, L, H, D] float16 */
    int64_t head_stride, pos_stride; /* elements from one head, one position to the next */
    const int32_t *last;  /* [B] each row's last position after this run (its length − 1) */
    float scale;          /* score = scale × q·k */
    int64_t window;       /* > 0: a query sees the `window` positions ending at its own */
    float *out;           /* [B, T, H × D] */
} attn_args;

/* convert and store row b, head h's new keys and values at positions last − T + 1 … last */
void attn_store(const attn_args *a, int64_t b, int64_t h);
/* row b, head h, new tokens [t0, t1): out = softmax(scale q Kᵀ) V over the visible positions;
 * −1 when out of memory (queries at positions 4096 and beyond score into a heap buffer), else 0 */
int attn_queries(const attn_args *a, int64_t b, int64_t h, int64_t t0, int64_t t1);
/* 1 when this CPU has AVX-512 F/BW/VL (float16 conversions included) */
int attn_supported(void);

#endif
