/* The ONNX Runtime custom-op library: domain "ortgen", op Q8MatMul(A, B, scales[, bias]) → Y with
 * attributes K and N (the inputs of a MatMulNBits, computed by q8gemm with int8 activations),
 * optional bits (8, the default: blocks of 64; or 4: blocks of 32) and optional activation (1:
 * GELU, tanh form, after the bias); with attribute epsilon it first does a SkipNorm's work:
 * Q8MatMul(x, B, scales, bias, skip, gamma, beta[, norm bias]) → (Y[, sum]) is
 * Q8MatMul(SkipNorm(x, skip, gamma, beta, norm bias)) with SkipNorm's sum, the same bits, one node
 * fewer. Ops CachedAttention and SkipNorm below.
 *
 * ONNX Runtime's C API is a table of function pointers (OrtApi) reached through OrtApiBase; the
 * table only ever grows at its end, so an entry's index never changes once a version added it.
 * The Python wheel ships no C headers, so this file names the few entries it calls by index,
 * and declares the custom-op record at its version 17 layout. */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>

#include <stdatomic.h>
#include <string.h>

#include "attention.h"
#include "isa.h"
#include "norm.h"
#include "q8gemm.h"
#include "scratch.h"

#define API_VERSION 17 /* the OrtApi this library asks for: ONNX Runtime 1.17 or newer */
#define EXPORT __attribute__((visibility("default")))

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTypeShape OrtTypeShape;
typedef struct OrtDomain OrtDomain;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef void *OrtApi; /* one entry of the table; `const OrtApi *` points at the table */

typedef struct {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2, TYPE_INT8 = 3, TYPE_INT32 = 6, TYPE_FLOAT16 = 10 }; /* element types */
enum { REQUIRED = 0, OPTIONAL = 1 };             /* OrtCustomOpInputOutputCharacteristic */
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 }; /* OrtErrorCode */

/* OrtApi entries used, by index */
#define CREATE_STATUS 0
#define CREATE_CUSTOM_OP_DOMAIN 26
#define CUSTOM_OP_DOMAIN_ADD 27
#define ADD_CUSTOM_OP_DOMAIN 28
#define GET_TENSOR_MUTABLE_DATA 51
#define GET_DIMENSIONS_COUNT 61
#define GET_DIMENSIONS 62
#define GET_TENSOR_TYPE_AND_SHAPE 65
#define KERNEL_INFO_GET_ATTRIBUTE_FLOAT 85
#define KERNEL_INFO_GET_ATTRIBUTE_INT64 86
#define KERNEL_CONTEXT_GET_INPUT_COUNT 88
#define KERNEL_CONTEXT_GET_OUTPUT_COUNT 89
#define KERNEL_CONTEXT_GET_INPUT 90
#define KERNEL_CONTEXT_GET_OUTPUT 91
#define RELEASE_STATUS 93
#define RELEASE_TENSOR_TYPE_AND_SHAPE_INFO 99
#define KERNEL_CONTEXT_PARALLEL_FOR 274

#define FN(api, index, type) ((type)((api)[index]))

typedef OrtStatus *(*CreateStatus)(int, const char *);
typedef OrtStatus *(*GetInt)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*GetFloat)(const OrtKernelInfo *, const char *, float *);
typedef OrtStatus *(*GetCount)(const OrtKernelContext *, size_t *);
typedef OrtStatus *(*GetInput)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*GetOutput)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef OrtStatus *(*GetTypeShape)(const OrtValue *, OrtTypeShape **);
typedef OrtStatus *(*GetDimsCount)(const OrtTypeShape *, size_t *);
typedef OrtStatus *(*GetDims)(const OrtTypeShape *, int64_t *, size_t);
typedef void (*ReleaseTypeShape)(OrtTypeShape *);
typedef OrtStatus *(*GetData)(OrtValue *, void **);
typedef OrtStatus *(*ParallelFor)(const OrtKernelContext *, void (*)(void *, size_t), size_t,
                                  size_t, void *);

typedef struct OrtCustomOp OrtCustomOp;
struct OrtCustomOp { /* version 17 layout */
    uint32_t version;
    void *(*CreateKernel)(const OrtCustomOp *, const OrtApi *, const OrtKernelInfo *);
    const char *(*GetName)(const OrtCustomOp *);
    const char *(*GetExecutionProviderType)(const OrtCustomOp *);
    int (*GetInputType)(const OrtCustomOp *, size_t);
    size_t (*GetInputTypeCount)(const OrtCustomOp *);
    int (*GetOutputType)(const OrtCustomOp *, size_t);
    size_t (*GetOutputTypeCount)(const OrtCustomOp *);
    void (*KernelCompute)(void *, OrtKernelContext *);
    void (*KernelDestroy)(void *);
    int (*GetInputCharacteristic)(const OrtCustomOp *, size_t);
    int (*GetOutputCharacteristic)(const OrtCustomOp *, size_t);
    int (*GetInputMemoryType)(const OrtCustomOp *, size_t);
    int (*GetVariadicInputMinArity)(const OrtCustomOp *);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp *);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp *);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp *);
    OrtStatus *(*CreateKernelV2)(const OrtCustomOp *, const OrtApi *, const OrtKernelInfo *,
                                 void **);
    OrtStatus *(*KernelComputeV2)(void *, OrtKernelContext *);
    OrtStatus *(*InferOutputShapeFn)(const OrtCustomOp *, void *);
    int (*GetStartVersion)(const OrtCustomOp *);
    int (*GetEndVersion)(const OrtCustomOp *);
};

typedef struct {
    const OrtApi *api;
    int64_t K, N, KB, activation; /* activation 1: GELU (tanh form) after the bias */
    int64_t bits, block;          /* 8 and Q8_BLOCK, or 4 and Q4_BLOCK */
    int norm;                     /* attribute epsilon given: SkipNorm's work comes first */
    float eps;
} Kernel;

static OrtStatus *fail(const OrtApi *api, const char *message) {
    return FN(api, CREATE_STATUS, CreateStatus)(ORT_INVALID_ARGUMENT, message);
}

/* an optional int attribute: absent means `otherwise` */
static int64_t optional_int(const OrtApi *api, const OrtKernelInfo *info, const char *name,
                            int64_t otherwise) {
    int64_t value = otherwise;
    OrtStatus *absent = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, name, &value);
    if (absent) {
        FN(api, RELEASE_STATUS, void (*)(OrtStatus *))(absent);
        value = otherwise;
    }
    return value;
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api,
                                const OrtKernelInfo *info, void **out) {
    (void)op;
    Kernel *kernel = calloc(1, sizeof(Kernel));
    if (!kernel) return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "Q8MatMul: out of memory");
    kernel->api = api;
    OrtStatus *status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "K", &kernel->K);
    if (!status) status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "N", &kernel->N);
    kernel->activation = optional_int(api, info, "activation", 0);
    kernel->bits = optional_int(api, info, "bits", 8);
    OrtStatus *no_norm = FN(api, KERNEL_INFO_GET_ATTRIBUTE_FLOAT, GetFloat)(info, "epsilon", &kernel->eps);
    kernel->norm = !no_norm;
    if (no_norm) FN(api, RELEASE_STATUS, void (*)(OrtStatus *))(no_norm);
    if (!status && kernel->norm && !(kernel->eps >= 0.0f))
        status = fail(api, "Q8MatMul: attribute epsilon must be ≥ 0");
    if (!status && (kernel->K < 1 || kernel->N < 1))
        status = fail(api, "Q8MatMul: attributes K and N must be positive");
    if (!status && (kernel->activation < 0 || kernel->activation > 1))
        status = fail(api, "Q8MatMul: attribute activation must be 0 (none) or 1 (GELU, tanh form)");
    if (!status && kernel->bits != 8 && kernel->bits != 4)
        status = fail(api, "Q8MatMul: attribute bits must be 8 (blocks of 64) or 4 (blocks of 32)");
    if (status) {
        free(kernel);
        return status;
    }
    kernel->block = kernel->bits == 8 ? Q8_BLOCK : Q4_BLOCK;
    kernel->KB = (kernel->K + kernel->block - 1) / kernel->block;
    *out = kernel;
    return NULL;
}

static void destroy_kernel(void *kernel) { free(kernel); }

/* The dims of a tensor (at most 8) → their count in *rank; `too_many`: the message beyond 8. */
static OrtStatus *shape_of(const OrtApi *api, const OrtValue *value, int64_t *dims, size_t *rank,
                           const char *too_many) {
    OrtTypeShape *info = NULL;
    OrtStatus *status = FN(api, GET_TENSOR_TYPE_AND_SHAPE, GetTypeShape)(value, &info);
    if (status) return status;
    status = FN(api, GET_DIMENSIONS_COUNT, GetDimsCount)(info, rank);
    if (!status && *rank > 8) status = fail(api, too_many);
    if (!status) status = FN(api, GET_DIMENSIONS, GetDims)(info, dims, *rank);
    FN(api, RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, ReleaseTypeShape)(info);
    return status;
}

/* A weight input must hold exactly `size` elements: the kernel reads that many. */
static OrtStatus *check_size(const OrtApi *api, const OrtValue *value, int64_t size,
                             const char *message) {
    int64_t dims[8], count = 1;
    size_t rank = 0;
    OrtStatus *status = shape_of(api, value, dims, &rank, message);
    if (status) return status;
    for (size_t d = 0; d < rank; d++) count *= dims[d];
    return count == size ? NULL : fail(api, message);
}

/* One call's work, in tasks: first row ranges to quantize (after their SkipNorm, where the node
 * has one), then column ranges. */
typedef struct {
    const float *A, *scales, *bias;
    const uint8_t *W;
    float *Y;
    int64_t M, K, KB, N, tasks, activation, bits;
    q8_rows rows;
    int norm;        /* A is SkipNorm's input: its rows are normalized into `normed` first */
    norm_args nargs; /* y: normed [M, K] scratch; sum: the node's second output or NULL */
} Work;

static void quantize_task(void *data, size_t task) {
    Work *w = data;
    int64_t m0 = w->M * (int64_t)task / w->tasks, m1 = w->M * ((int64_t)task + 1) / w->tasks;
    if (w->norm) skip_norm(&w->nargs, m0, m1); /* the same rows, the same bits as SkipNorm's */
    const float *A = w->norm ? w->nargs.y : w->A;
    (w->bits == 8 ? q8_quantize : q4_quantize)(A, w->K, w->KB, m0, m1, w->rows);
}

static void gemm_task(void *data, size_t task) {
    Work *w = data;
    int64_t groups = (w->N + 15) / 16; /* ranges start on 16-column groups */
    int64_t g0 = groups * (int64_t)task / w->tasks, g1 = groups * ((int64_t)task + 1) / w->tasks;
    int64_t n1 = g1 * 16 < w->N ? g1 * 16 : w->N;
    if (g0 * 16 < n1) {
        (w->bits == 8 ? q8_gemm : q4_gemm)(w->rows, w->M, w->KB, w->W, w->scales, w->bias, w->N,
                                           g0 * 16, n1, w->Y);
        if (w->activation) q8_gelu(w->Y, w->M, w->N, g0 * 16, n1);
    }
}

/* fn(data, 0 … tasks − 1) over ONNX Runtime's threads, in at most `batches` runs of consecutive
 * tasks (each run is one scheduling: small tasks go many to a run) */
static OrtStatus *run_tasks(const OrtApi *api, OrtKernelContext *context,
                            void (*fn)(void *, size_t), int64_t tasks, int64_t batches,
                            void *data) {
    if (tasks == 1 || batches == 1) {
        for (int64_t task = 0; task < tasks; task++) fn(data, (size_t)task);
        return NULL;
    }
    size_t runs = (size_t)(batches < tasks ? batches : tasks);
    return FN(api, KERNEL_CONTEXT_PARALLEL_FOR, ParallelFor)(context, fn, (size_t)tasks, runs,
                                                             data);
}

/* What a SkipNorm's input checks say, in the words of the op doing them */
typedef struct {
    const char *required, *rank, *shape, *size;
} NormMessages;

/* x [.., H] (its dims known) and SkipNorm's other inputs in = {skip, gamma, beta, bias or NULL}
 * → a's inputs, once skip has x's shape and gamma, beta and bias hold H values each; a's y and
 * sum are the caller's to set. SkipNorm and a Q8MatMul with attribute epsilon both check so. */
static OrtStatus *checked_norm(const OrtApi *api, const OrtValue *x, const OrtValue *const *in,
                              const int64_t *dims, size_t rank, float eps,
                              const NormMessages *say, norm_args *a) {
    if (!in[0] || !in[1] || !in[2]) return fail(api, say->required);
    int64_t skip_dims[8];
    size_t skip_rank = 0;
    OrtStatus *status = shape_of(api, in[0], skip_dims, &skip_rank, say->rank);
    if (status) return status;
    if (rank < 1 || skip_rank != rank || memcmp(dims, skip_dims, sizeof(int64_t) * rank))
        return fail(api, say->shape);
    int64_t H = dims[rank - 1];
    void *data[5] = {0};
    const OrtValue *values[5] = {x, in[0], in[1], in[2], in[3]};
    for (int i = 0; !status && i < 5; i++) {
        if (!values[i]) continue;
        if (i >= 2) status = check_size(api, values[i], H, say->size);
        if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)((OrtValue *)values[i], &data[i]);
    }
    *a = (norm_args){.x = data[0], .skip = data[1], .gamma = data[2], .beta = data[3],
                     .bias = data[4], .H = H, .eps = eps};
    return status;
}

static const NormMessages FOLDED_NORM = {
    "Q8MatMul: with attribute epsilon, skip, gamma and beta are required",
    "Q8MatMul: skip has more than 8 dimensions", "Q8MatMul: A and skip differ in shape",
    "Q8MatMul: gamma, beta and norm bias must each hold K values"};

static OrtStatus *compute(void *opaque, OrtKernelContext *context) {
    Kernel *kernel = opaque;
    const OrtApi *api = kernel->api;
    const OrtValue *in[8] = {0};
    size_t count = 0, rank = 0, outputs = 0;
    OrtStatus *status = FN(api, KERNEL_CONTEXT_GET_INPUT_COUNT, GetCount)(context, &count);
    for (size_t i = 0; !status && i < count && i < 8; i++)
        status = FN(api, KERNEL_CONTEXT_GET_INPUT, GetInput)(context, i, &in[i]);
    if (!status) status = FN(api, KERNEL_CONTEXT_GET_OUTPUT_COUNT, GetCount)(context, &outputs);
    int64_t dims[8];
    if (!status)
        status = shape_of(api, in[0], dims, &rank, "Q8MatMul: A has more than 8 dimensions");
    if (status) return status;
    if (rank < 1 || dims[rank - 1] != kernel->K)
        return fail(api, "Q8MatMul: the last dimension of A is not the node's K");
    int eight = kernel->bits == 8;
    status = check_size(api, in[1], kernel->N * kernel->KB * kernel->block * kernel->bits / 8,
                        eight ? "Q8MatMul: B is not N x K/64 x 64" : "Q8MatMul: B is not N x K/32 x 16");
    if (!status)
        status = check_size(api, in[2], kernel->N * kernel->KB,
                            eight ? "Q8MatMul: scales are not N x K/64" : "Q8MatMul: scales are not N x K/32");
    if (!status && in[3]) status = check_size(api, in[3], kernel->N, "Q8MatMul: bias is not N long");
    norm_args nargs = {0};
    if (!status && kernel->norm)
        status = checked_norm(api, in[0], in + 4, dims, rank, kernel->eps, &FOLDED_NORM, &nargs);
    else if (!status && (in[4] || in[5] || in[6] || in[7]))
        status = fail(api, "Q8MatMul: skip, gamma, beta and norm bias need attribute epsilon");
    if (status) return status;
    int64_t M = 1;
    for (size_t d = 0; d + 1 < rank; d++) M *= dims[d];
    OrtValue *sum = NULL; /* the residual sum, SkipNorm's second output, where the graph reads it */
    if (kernel->norm && outputs > 1)
        status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, 1, dims, rank, &sum);
    dims[rank - 1] = kernel->N;
    OrtValue *out = NULL;
    if (!status) status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, 0, dims, rank, &out);
    void *data[6] = {0};
    OrtValue *values[6] = {(OrtValue *)in[0], (OrtValue *)in[1], (OrtValue *)in[2],
                           (OrtValue *)in[3], out, sum};
    for (int i = 0; !status && i < 6; i++)
        if (values[i]) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(values[i], &data[i]);
    if (status || M == 0) return status;
    int64_t stored = eight ? kernel->KB : Q4_PADDED(kernel->KB); /* activation blocks a row */
    size_t codes = q8_rows_bytes(M, stored, kernel->block); /* a multiple of 64 */
    size_t normed = kernel->norm ? (size_t)M * (size_t)kernel->K * sizeof(float) : 0;
    char *space = scratch_for(codes + normed);
    if (!space) return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "Q8MatMul: out of memory");
    nargs.y = (float *)(space + codes);
    nargs.sum = data[5];
    Work work = {data[0], data[2], data[3], data[1], data[4], M, kernel->K, kernel->KB, kernel->N,
                 M >= 64 ? 16 : 1, kernel->activation, kernel->bits,
                 q8_rows_at(space, M, stored, kernel->block), kernel->norm, nargs};
    status = run_tasks(api, context, quantize_task, work.tasks, work.tasks, &work);
    if (!status) {
        int64_t groups = (kernel->N + 15) / 16;
        work.tasks = groups < 32 ? 1 : groups < 512 ? 8 : 32;
        status = run_tasks(api, context, gemm_task, work.tasks, work.tasks, &work);
    }
    scratch_done();
    return status;
}


/* ---- CachedAttention(query, key?, value?, past_key, past_value, seqlens_k, total_length) ->
 * (output, present_key, present_value): GroupQueryAttention's interface (kv heads = heads; key
 * and value omitted: query is packed [q | k | v]) over float16 caches that the caller binds as
 * both past and present, attention.c's math. Attributes num_heads, scale (0: 1/sqrt(D)),
 * local_window_size (−1: none; else a query sees that many positions, its own included) and
 * optional kv_layout (0, the default: caches [B, H, L, D]; 1: [B, L, H, D]).
 * CachedAttentionQ8: the same over int8 caches of records [B, H, L, D + 4] or [B, L, H, D + 4]
 * (D codes, then their float scale). */

typedef struct {
    const OrtApi *api;
    int64_t heads, window, layout; /* layout 1: caches [B, L, H, D] */
    float scale;
    int q8; /* CachedAttentionQ8: int8 records of D + 4 bytes (attention.h) */
} Attention;

static const char *attention_name(const OrtCustomOp *op);

static OrtStatus *create_attention(const OrtCustomOp *op, const OrtApi *api,
                                   const OrtKernelInfo *info, void **out) {
    Attention *kernel = calloc(1, sizeof(Attention));
    if (!kernel)
        return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "CachedAttention: out of memory");
    kernel->api = api;
    OrtStatus *status =
        FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "num_heads", &kernel->heads);
    if (!status)
        status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "local_window_size",
                                                                  &kernel->window);
    if (!status)
        status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_FLOAT, GetFloat)(info, "scale", &kernel->scale);
    kernel->layout = optional_int(api, info, "kv_layout", 0);
    kernel->q8 = op->GetName != attention_name;
    if (!status && kernel->heads < 1)
        status = fail(api, "CachedAttention: num_heads must be positive");
    if (!status && kernel->layout != 0 && kernel->layout != 1)
        status = fail(api, "CachedAttention: kv_layout must be 0 ([B, H, L, D]) or 1 ([B, L, H, D])");
    if (status) {
        free(kernel);
        return status;
    }
    *out = kernel;
    return NULL;
}

typedef struct {
    attn_args args;
    int64_t block, blocks; /* new tokens per task, query blocks per (row, head) */
    atomic_int failed;
} AttentionWork;

/* New tokens per task: a prompt's queries spread over the threads. Each task converts the int8
 * records its queries see once (attn_queries): 32 converted a 512-token prompt's second half's
 * records ~8 times; 128 (~2 times): one layer, 256 tokens after 256, one thread, C harness on an
 * Intel Xeon, 5.9 → 5.4 ms (medians of 60 alternated runs). Halved down to QUERY_BLOCK_LEAST
 * while rows × heads × blocks make fewer than QUERY_TASKS tasks (the 8 runs of run_tasks get
 * two or more each: a 100-token prompt's 12 heads make 24 tasks of 64, not 12 of 128). */
#define QUERY_BLOCK 128
#define QUERY_BLOCK_LEAST 32
#define QUERY_TASKS 16
#define ATTN_INLINE 2048

static void store_task(void *data, size_t task) {
    AttentionWork *w = data;
    attn_store(&w->args, (int64_t)task / w->args.H, (int64_t)task % w->args.H);
}

static void query_task(void *data, size_t task) {
    AttentionWork *w = data;
    int64_t block = (int64_t)task % w->blocks, pair = (int64_t)task / w->blocks;
    int64_t t0 = block * w->block, t1 = t0 + w->block < w->args.T ? t0 + w->block : w->args.T;
    if (attn_queries(&w->args, pair / w->args.H, pair % w->args.H, t0, t1)) w->failed = 1;
}

/* the tensor's data and dims (at most 8; rank in *rank) */
static OrtStatus *tensor(const OrtApi *api, const OrtValue *value, void **data, int64_t *dims,
                         size_t *rank, const char *too_many) {
    OrtStatus *status = shape_of(api, value, dims, rank, too_many);
    if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)((OrtValue *)value, data);
    return status;
}

static OrtStatus *compute_attention(void *opaque, OrtKernelContext *context) {
    Attention *kernel = opaque;
    const OrtApi *api = kernel->api;
    const OrtValue *in[7] = {0};
    size_t count = 0;
    OrtStatus *status = FN(api, KERNEL_CONTEXT_GET_INPUT_COUNT, GetCount)(context, &count);
    for (size_t i = 0; !status && i < count && i < 7; i++)
        status = FN(api, KERNEL_CONTEXT_GET_INPUT, GetInput)(context, i, &in[i]);
    if (status) return status;
    if (!in[0] || !in[3] || !in[4] || !in[5])
        return fail(api, "CachedAttention: query, past_key, past_value and seqlens_k are required");
    if (!in[1] != !in[2]) return fail(api, "CachedAttention: give both key and value, or neither");
    const char *rank_msg = "CachedAttention: an input has more than 8 dimensions";
    int64_t qd[8], kd[8], nd[8], pd[8], vd[8], sd[8]; /* query, key, value, both caches, lengths */
    size_t qr, kr = 0, nr = 0, pr, vr, sr;
    void *q, *k = NULL, *v = NULL, *pk, *pv, *seq;
    status = tensor(api, in[0], &q, qd, &qr, rank_msg);
    if (!status && in[1]) status = tensor(api, in[1], &k, kd, &kr, rank_msg);
    if (!status && in[2]) status = tensor(api, in[2], &v, nd, &nr, rank_msg);
    if (!status) status = tensor(api, in[3], &pk, pd, &pr, rank_msg);
    if (!status) status = tensor(api, in[4], &pv, vd, &vr, rank_msg);
    if (!status) status = tensor(api, in[5], &seq, sd, &sr, rank_msg);
    if (status) return status;
    if (in[1] && (kr != nr || memcmp(kd, nd, sizeof(int64_t) * kr)))
        return fail(api, "CachedAttention: key and value differ in shape");
    if (qr != 3 || pr != 4 || vr != 4 || sr != 1)
        return fail(api, "CachedAttention: query must be [B, T, W], caches 4-D, seqlens_k [B]");
    int64_t blhd = kernel->layout == 1; /* the cache dims' order */
    int64_t B = qd[0], T = qd[1], H = kernel->heads, L = pd[blhd ? 1 : 2];
    int64_t record = pd[3], D = record - (kernel->q8 ? ATTN_SCALE_BYTES : 0); /* elements */
    int64_t width = H * D, packed = !in[1];
    if (pd[0] != B || pd[blhd ? 2 : 1] != H || memcmp(pd, vd, sizeof(int64_t) * 4) || sd[0] != B)
        return fail(api, blhd ? "CachedAttention: the caches are not [B, L, num_heads, D] for the "
                                "query's B, or seqlens_k is not [B]"
                              : "CachedAttention: the caches are not [B, num_heads, L, D] for the "
                                "query's B, or seqlens_k is not [B]");
    if (D < 1 || D > ATTN_MAX_HEAD)
        return fail(api, kernel->q8 ? "CachedAttentionQ8: the caches' records must hold 1 to 256 "
                                      "codes and a 4-byte scale"
                                    : "CachedAttention: the caches' head size must be 1 to 256");
    if (qd[2] != (packed ? 3 * width : width) ||
        (!packed && (kr != 3 || kd[0] != B || kd[1] != T || kd[2] != width)))
        return fail(api, "CachedAttention: query, key and value widths do not match the heads");
    const int32_t *last = seq;
    for (int64_t b = 0; b < B; b++)
        if (last[b] < T - 1 || last[b] >= L)
            return fail(api, "CachedAttention: a row's length (seqlens_k + 1) is shorter than its "
                             "new tokens or longer than the cache");
    int64_t out_dims[3] = {B, T, width};
    OrtValue *outputs[3] = {0};
    status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, 0, out_dims, 3, &outputs[0]);
    for (int i = 1; !status && i < 3; i++)
        status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, i, pd, 4, &outputs[i]);
    void *out = NULL, *kc = NULL, *vc = NULL;
    if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(outputs[0], &out);
    if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(outputs[1], &kc);
    if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(outputs[2], &vc);
    if (status) return status;
    size_t cache_bytes = (size_t)(B * H * L * record) * (kernel->q8 ? 1 : sizeof(uint16_t));
    if (kc != pk) memcpy(kc, pk, cache_bytes); /* not bound in place: present = past, then append */
    if (vc != pv) memcpy(vc, pv, cache_bytes);
    if (B == 0 || T == 0) return NULL;
    AttentionWork work = {0};
    attn_args *a = &work.args;
    a->q = q;
    a->k = packed ? (const float *)q + width : k;
    a->v = packed ? (const float *)q + 2 * width : v;
    a->q_stride = packed ? 3 * width : width;
    a->kv_stride = packed ? 3 * width : width;
    a->B = B, a->T = T, a->H = H, a->D = D, a->L = L;
    a->kc = kc, a->vc = vc, a->last = last, a->out = out, a->q8 = kernel->q8;
    a->row_stride = H * L * record;
    a->head_stride = blhd ? record : L * record;
    a->pos_stride = blhd ? H * record : record;
    a->scale = kernel->scale != 0.0f ? kernel->scale : 1.0f / sqrtf((float)D);
    a->window = kernel->window;
    work.block = QUERY_BLOCK;
    while (work.block > QUERY_BLOCK_LEAST &&
           B * H * ((T + work.block - 1) / work.block) < QUERY_TASKS)
        work.block /= 2;
    work.blocks = (T + work.block - 1) / work.block;
    /* storing is a conversion pass: threads only for a prompt's worth */
    status = run_tasks(api, context, store_task, B * H, B * T * width < (1 << 16) ? 1 : 8, &work);
    int64_t seen = 0; /* (query, position) pairs of one head: under ~ATTN_INLINE, threads cost
                         more than they save */
    for (int64_t b = 0; b < B; b++) seen += T * (last[b] + 1);
    if (!status) /* else eight runs share the (row, head, query block) tasks out */
        status = run_tasks(api, context, query_task, B * H * work.blocks,
                           seen * H < ATTN_INLINE ? 1 : 8, &work);
    if (!status && work.failed)
        status = FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "CachedAttention: out of memory");
    return status;
}

static const char *attention_name(const OrtCustomOp *op) { (void)op; return "CachedAttention"; }
static const char *attention_q8_name(const OrtCustomOp *op) { (void)op; return "CachedAttentionQ8"; }
static int attention_input_type(const OrtCustomOp *op, size_t i) {
    int cache = op->GetName == attention_name ? TYPE_FLOAT16 : TYPE_INT8;
    return i <= 2 ? TYPE_FLOAT : i <= 4 ? cache : TYPE_INT32;
}
static size_t attention_inputs(const OrtCustomOp *op) { (void)op; return 7; }
static int attention_output_type(const OrtCustomOp *op, size_t i) {
    return i == 0 ? TYPE_FLOAT : op->GetName == attention_name ? TYPE_FLOAT16 : TYPE_INT8;
}
static size_t attention_outputs(const OrtCustomOp *op) { (void)op; return 3; }
static int attention_input_kind(const OrtCustomOp *op, size_t i) {
    (void)op;
    return i == 1 || i == 2 || i == 6 ? OPTIONAL : REQUIRED;
}

/* ---- SkipNorm(input, skip, gamma, beta[, bias]) → (output[, sum]): SkipLayerNormalization's
 * interface without its mean and inverse-deviation outputs, norm.c's math. Attribute epsilon. */

typedef struct {
    const OrtApi *api;
    float eps;
} Norm;

static OrtStatus *create_norm(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                              void **out) {
    (void)op;
    Norm *kernel = calloc(1, sizeof(Norm));
    if (!kernel) return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "SkipNorm: out of memory");
    kernel->api = api;
    OrtStatus *status =
        FN(api, KERNEL_INFO_GET_ATTRIBUTE_FLOAT, GetFloat)(info, "epsilon", &kernel->eps);
    if (!status && !(kernel->eps >= 0.0f))
        status = fail(api, "SkipNorm: attribute epsilon must be ≥ 0");
    if (status) {
        free(kernel);
        return status;
    }
    *out = kernel;
    return NULL;
}

typedef struct {
    norm_args args;
    int64_t rows, tasks;
} NormWork;

static const NormMessages SKIP_NORM = {
    "SkipNorm: input, skip, gamma and beta are required",
    "SkipNorm: an input has more than 8 dimensions", "SkipNorm: input and skip differ in shape",
    "SkipNorm: gamma, beta and bias must each hold the last dimension's size"};

static void norm_task(void *data, size_t task) {
    NormWork *w = data;
    skip_norm(&w->args, w->rows * (int64_t)task / w->tasks, w->rows * ((int64_t)task + 1) / w->tasks);
}

static OrtStatus *compute_norm(void *opaque, OrtKernelContext *context) {
    Norm *kernel = opaque;
    const OrtApi *api = kernel->api;
    const OrtValue *in[5] = {0};
    size_t count = 0, outputs = 0, rank = 0;
    OrtStatus *status = FN(api, KERNEL_CONTEXT_GET_INPUT_COUNT, GetCount)(context, &count);
    for (size_t i = 0; !status && i < count && i < 5; i++)
        status = FN(api, KERNEL_CONTEXT_GET_INPUT, GetInput)(context, i, &in[i]);
    if (!status) status = FN(api, KERNEL_CONTEXT_GET_OUTPUT_COUNT, GetCount)(context, &outputs);
    if (status) return status;
    if (!in[0]) return fail(api, SKIP_NORM.required);
    int64_t dims[8];
    norm_args args;
    status = shape_of(api, in[0], dims, &rank, SKIP_NORM.rank);
    if (!status) status = checked_norm(api, in[0], in + 1, dims, rank, kernel->eps, &SKIP_NORM, &args);
    if (status) return status;
    int64_t H = args.H, rows = 1;
    for (size_t d = 0; d + 1 < rank; d++) rows *= dims[d];
    OrtValue *out[2] = {0};
    void *out_data[2] = {0};
    for (size_t i = 0; !status && i < 2 && i < outputs; i++) {
        status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, i, dims, rank, &out[i]);
        if (!status) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(out[i], &out_data[i]);
    }
    if (status || rows == 0 || H == 0) return status;
    args.y = out_data[0];
    args.sum = out_data[1];
    NormWork work = {args, rows, rows * H < (1 << 15) ? 1 : 8}; /* a decode step's rows: no threads */
    return run_tasks(api, context, norm_task, work.tasks, work.tasks, &work);
}

static const char *norm_name(const OrtCustomOp *op) { (void)op; return "SkipNorm"; }
static int all_float(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t norm_inputs(const OrtCustomOp *op) { (void)op; return 5; }
static size_t norm_outputs(const OrtCustomOp *op) { (void)op; return 2; }
static int norm_input_kind(const OrtCustomOp *op, size_t i) { (void)op; return i == 4 ? OPTIONAL : REQUIRED; }
static int norm_output_kind(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? OPTIONAL : REQUIRED; }

static const char *op_name(const OrtCustomOp *op) { (void)op; return "Q8MatMul"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? TYPE_UINT8 : TYPE_FLOAT; }
/* Q8MatMul(A, B, scales[, bias][, skip, gamma, beta[, norm bias]]) → (Y[, sum]) */
static size_t input_count(const OrtCustomOp *op) { (void)op; return 8; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 2; }
static int input_kind(const OrtCustomOp *op, size_t i) { (void)op; return i >= 3 ? OPTIONAL : REQUIRED; }
static int q8_output_kind(const OrtCustomOp *op, size_t i) { (void)op; return i ? OPTIONAL : REQUIRED; }
static int output_kind(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return REQUIRED; }
static int memory_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int one(const OrtCustomOp *op) { (void)op; return 1; }
static int last_version(const OrtCustomOp *op) { (void)op; return INT_MAX; }

/* An op record at the version 17 layout: what differs between ortgen's ops is named, the rest
 * (CPU, one kernel per node, no variadic arguments, every opset) is shared. */
#define CUSTOM_OP(name, in_type, in_count, out_type, out_count, in_kind, out_kind, create, run) \
    {                                                                                          \
        .version = 17, .GetName = name, .GetExecutionProviderType = op_provider,               \
        .GetInputType = in_type, .GetInputTypeCount = in_count, .GetOutputType = out_type,     \
        .GetOutputTypeCount = out_count, .KernelDestroy = destroy_kernel,                      \
        .GetInputCharacteristic = in_kind, .GetOutputCharacteristic = out_kind,                \
        .GetInputMemoryType = memory_type, .GetVariadicInputMinArity = one,                    \
        .GetVariadicInputHomogeneity = one, .GetVariadicOutputMinArity = one,                  \
        .GetVariadicOutputHomogeneity = one, .CreateKernelV2 = create, .KernelComputeV2 = run, \
        .GetStartVersion = one, .GetEndVersion = last_version,                                 \
    }

static const OrtCustomOp ops[] = {
    CUSTOM_OP(op_name, input_type, input_count, output_type, output_count, input_kind,
              q8_output_kind, create_kernel, compute),
    CUSTOM_OP(attention_name, attention_input_type, attention_inputs, attention_output_type,
              attention_outputs, attention_input_kind, output_kind, create_attention,
              compute_attention),
    CUSTOM_OP(attention_q8_name, attention_input_type, attention_inputs, attention_output_type,
              attention_outputs, attention_input_kind, output_kind, create_attention,
              compute_attention),
    CUSTOM_OP(norm_name, all_float, norm_inputs, all_float, norm_outputs, norm_input_kind,
              norm_output_kind, create_norm, compute_norm),
};

EXPORT int ortgen_kernels_supported(void) { return q8_supported() && attn_supported(); }
/* 1 when Q8MatMul's 8-bit many-rows path runs on AMX tiles here (q8gemm.h) */
EXPORT int ortgen_kernels_amx(void) { return q8_amx(); }

static pthread_mutex_t domain_lock = PTHREAD_MUTEX_INITIALIZER;
static OrtDomain *domain; /* made once; every session that registers the library shares it */

EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = base->GetApi(API_VERSION);
    if (!api) return NULL; /* an onnxruntime older than 1.17: the graph's load then fails */
    if (!q8_supported() || !attn_supported())
        return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "ortgen kernels need " ISA_NAME);
    OrtStatus *status = NULL;
    pthread_mutex_lock(&domain_lock);
    if (!domain) {
        OrtDomain *made = NULL;
        status = FN(api, CREATE_CUSTOM_OP_DOMAIN, OrtStatus * (*)(const char *, OrtDomain **))(
            "ortgen", &made);
        for (size_t i = 0; i < sizeof ops / sizeof ops[0] && !status; i++)
            status = FN(api, CUSTOM_OP_DOMAIN_ADD,
                        OrtStatus * (*)(OrtDomain *, const OrtCustomOp *))(made, &ops[i]);
        if (!status) domain = made; /* a failed one is leaked: rare, and small */
    }
    pthread_mutex_unlock(&domain_lock);
    if (status) return status;
    return FN(api, ADD_CUSTOM_OP_DOMAIN, OrtStatus * (*)(OrtSessionOptions *, OrtDomain *))(
        options, domain);
}
