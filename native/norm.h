/* Layer normalization after a residual sum, one row at a time:
 *   sum = (x + skip) + bias,  y = (sum − mean) × 1/sqrt(var + eps) × gamma + beta,
 * mean and var (two passes, population variance) over the row's H values. Each row is computed by
 * the same instruction sequence whatever the number of rows: results never depend on neighbours. */
#ifndef ORTGEN_NORM_H
#define ORTGEN_NORM_H

#include <stdint.h>

typedef struct {
    const float *x, *skip;             /* [rows, H] */
    const float *gamma, *beta, *bias;  /* [H]; bias may be NULL */
    float *y, *sum;                    /* [rows, H]; sum may be NULL */
    int64_t H;
    float eps;
} norm_args;

/* rows [r0, r1) */
void skip_norm(const norm_args *a, int64_t r0, int64_t r1);

#endif
