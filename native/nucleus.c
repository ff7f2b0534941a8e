/* Top-p (nucleus) selection and the inverse-CDF draw for ortgen/sampling.py, in the same float32
 * arithmetic as its numpy code, so both give the same ids bit for bit (for finite probabilities
 * and scores); only faster. numpy has to
 * sort the whole candidate set (~1 ms for 50 k ids: at high temperature or with untrained
 * weights nearly every id is a candidate); here a radix sort of the values' bits does it in a
 * fraction of that, and the running sums are the same sequential float32 sums numpy computes.
 * Portable C: no CPU feature needed. Built with -ffp-contract=off and no fast-math, so every sum
 * is evaluated in order, as written. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scratch.h"

#define EXPORT __attribute__((visibility("default")))

/* the value's bits as a key whose unsigned order is the order of non-negative floats (the sign
 * bit is cleared: −0 sorts as 0) */
static uint32_t key_of(float p) {
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    return bits & 0x7FFFFFFFu;
}

static float value_of(uint32_t key) {
    float p;
    memcpy(&p, &key, sizeof p);
    return p;
}

/* keys ascending: least-significant-digit radix sort of (key − min), in as few passes of at most
 * 11 bits as its range needs (probabilities within a few binades of each other take 2–3) */
static void radix_sort(uint32_t *keys, uint32_t *spare, int64_t n) {
    uint32_t low = UINT32_MAX, high = 0;
    for (int64_t i = 0; i < n; i++) {
        low = keys[i] < low ? keys[i] : low;
        high = keys[i] > high ? keys[i] : high;
    }
    uint32_t range = high - low;
    if (range == 0) return;
    int bits = 32 - __builtin_clz(range), passes = (bits + 10) / 11, width = (bits + passes - 1) / passes;
    uint32_t mask = (1u << width) - 1;
    int32_t count[3][2048];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; i++) { /* all three digits' counts in one pass */
        uint32_t k = keys[i] - low;
        count[0][k & mask]++;
        count[1][(k >> width) & mask]++;
        count[2][(k >> (2 * width)) & mask]++;
    }
    uint32_t *from = keys, *to = spare;
    for (int d = 0; d < passes; d++) {
        int shift = d * width;
        int32_t at = 0;
        for (uint32_t v = 0; v <= mask; v++) {
            int32_t c = count[d][v];
            count[d][v] = at;
            at += c;
        }
        for (int64_t i = 0; i < n; i++) to[count[d][((from[i] - low) >> shift) & mask]++] = from[i];
        uint32_t *t = from;
        from = to;
        to = t;
    }
    if (from != keys) memcpy(keys, from, (size_t)n * sizeof *keys);
}

/* The positions (ascending) sampling._nucleus keeps of probs[0..n) (values ≥ 0) for top_p, into
 * out (n long); returns how many, or −1 when out of memory. As numpy computes it:
 *   ranked = values, most likely first;  mass_i = fl(fl(ranked_0 + … + ranked_i) − ranked_i)
 *   kept = #{i : mass_i < top_p};  last = ranked[kept − 1]
 *   positions with p > last, and the first (kept − #those) positions with p == last. */
EXPORT int64_t ortgen_nucleus(const float *probs, int64_t n, float top_p, int64_t *out) {
    if (n <= 0) return 0;
    uint32_t *keys = scratch_for(2 * (size_t)n * sizeof(uint32_t));
    if (!keys) return -1;
    for (int64_t i = 0; i < n; i++) keys[i] = key_of(probs[i]);
    radix_sort(keys, keys + n, n);
    float running = 0.0f;
    int64_t kept = 0;
    for (int64_t i = n - 1; i >= 0; i--) { /* most likely first */
        float p = value_of(keys[i]);
        running = running + p;
        float before = running - p;
        kept += before < top_p;
    }
    if (kept < 1) kept = 1; /* only NaN masses (NaN logits) get here: garbage either way */
    float last = value_of(keys[n - kept]);
    scratch_done();
    int64_t above = 0;
    for (int64_t i = 0; i < n; i++) above += probs[i] > last;
    int64_t ties = kept - above, count = 0;
    for (int64_t i = 0; i < n; i++) { /* branch-free: kept ids are scattered through the vocabulary */
        int equal = probs[i] == last;
        out[count] = i;
        count += (probs[i] > last) | (equal & (ties > 0));
        ties -= equal;
    }
    return count;
}

/* The last running sum of probs[0..n), as numpy.cumsum computes it (sequential float32). */
EXPORT float ortgen_cumsum_last(const float *probs, int64_t n) {
    float running = 0.0f;
    for (int64_t i = 0; i < n; i++) running = running + probs[i];
    return running;
}

/* numpy.searchsorted(numpy.cumsum(probs), u, side="right"): the first i whose running sum
 * exceeds u (n when none does). */
EXPORT int64_t ortgen_cdf_search(const float *probs, int64_t n, float u) {
    float running = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        running = running + probs[i];
        if (running > u) return i;
    }
    return n;
}

/* an order-preserving key for any float but NaN: unsigned order = numeric order, −0 = +0 */
static uint32_t order_key(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits = bits == 0x80000000u ? 0 : bits;
    uint32_t flip = (uint32_t)((int32_t)bits >> 31) | 0x80000000u; /* negative: all bits */
    return bits ^ flip;
}

/* the digit (from the top) in which the k-th largest of `count` falls; k becomes its rank there */
static uint32_t digit_of_kth(const int32_t *count, uint32_t top, int64_t *k) {
    uint32_t digit = top;
    while (count[digit] < *k) *k -= count[digit--];
    return digit;
}

/* The k-th largest of x[0..n) (1 ≤ k ≤ n), equal to numpy.partition(x, n − k)[n − k] (+0 where
 * numpy may give −0, which compares equal): radix
 * selection on the values' keys, 11 bits at a time; after the first pass only the keys sharing
 * the k-th's top digit are kept and looked at again. → 0, or −1 when k is out of range or memory
 * is. */
EXPORT int ortgen_kth_largest(const float *x, int64_t n, int64_t k, float *out) {
    if (k < 1 || k > n) return -1;
    int32_t local[2048];
    memset(local, 0, sizeof local);
    for (int64_t i = 0; i < n; i++) local[order_key(x[i]) >> 21]++;
    uint32_t top = digit_of_kth(local, 2047, &k);
    uint32_t *keys = scratch_for(2 * (size_t)n * sizeof(uint32_t));
    if (!keys) return -1;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) { /* branch-free compaction */
        uint32_t key = order_key(x[i]);
        keys[m] = key;
        m += (key >> 21) == top;
    }
    uint32_t prefix = top << 21;
    static const int shift[2] = {10, 0}, width[2] = {11, 10};
    for (int pass = 0; pass < 2; pass++) {
        uint32_t mask = (1u << width[pass]) - 1, high = ~((1u << (shift[pass] + width[pass])) - 1);
        memset(local, 0, sizeof local);
        for (int64_t i = 0; i < m; i++)
            if ((keys[i] & high) == prefix) local[(keys[i] >> shift[pass]) & mask]++;
        prefix |= digit_of_kth(local, mask, &k) << shift[pass];
    }
    scratch_done();
    uint32_t bits = prefix & 0x80000000u ? prefix & 0x7FFFFFFFu : ~prefix;
    memcpy(out, &bits, sizeof *out);
    return 0;
}
