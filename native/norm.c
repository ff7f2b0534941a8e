/* SkipNorm (see norm.h). Built with -ffp-contract=off: the float sequence below is the one that
 * runs. */
#include "norm.h"
#include "simd_math.h"

#include <math.h>

static __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

SIMD_TARGET void skip_norm(const norm_args *a, int64_t r0, int64_t r1) {
    const int64_t H = a->H;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = a->x + r * H, *skip = a->skip + r * H;
        float *y = a->y + r * H, *sum = a->sum ? a->sum + r * H : y; /* y holds it meanwhile */
        __m512 total = _mm512_setzero_ps();
        for (int64_t i = 0; i < H; i += 16) {
            __mmask16 m = lanes(H - i);
            __m512 s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, skip + i));
            if (a->bias) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, a->bias + i));
            _mm512_mask_storeu_ps(sum + i, m, s);
            total = _mm512_add_ps(total, s);
        }
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(total) / (float)H);
        __m512 squares = _mm512_setzero_ps();
        for (int64_t i = 0; i < H; i += 16) {
            __mmask16 m = lanes(H - i);
            __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, sum + i), mean);
            squares = _mm512_add_ps(squares, _mm512_mul_ps(d, d));
        }
        const float var = _mm512_reduce_add_ps(squares) / (float)H;
        const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(var + a->eps));
        for (int64_t i = 0; i < H; i += 16) {
            __mmask16 m = lanes(H - i);
            __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sum + i), mean), inv);
            __m512 out = _mm512_add_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, a->gamma + i)),
                                       _mm512_maskz_loadu_ps(m, a->beta + i));
            _mm512_mask_storeu_ps(y + i, m, out);
        }
    }
}
