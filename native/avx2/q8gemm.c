/* q8gemm.c for CPUs with AVX2 but not AVX-512: every vector op emulated on pairs of 256-bit ones
 * (isa.h) */
#define ORTGEN_AVX2 1
#include "../q8gemm.c"
