/* The ONNX Runtime custom-op library: domain "ortgen", op Q8MatMul(A, B, scales[, bias]) → Y with
 * attributes K and N: the inputs of an 8-bit MatMulNBits of blocks of 64, computed by q8gemm.
 *
 * ONNX Runtime's C API is a table of function pointers (OrtApi) reached through OrtApiBase; the
 * table only ever grows at its end, so an entry's index never changes once a version added it.
 * The Python wheel ships no C headers, so this file names the few entries it calls by index,
 * and declares the custom-op record at its version 17 layout. */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "q8gemm.h"

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

enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2 };         /* ONNXTensorElementDataType */
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
#define KERNEL_INFO_GET_ATTRIBUTE_INT64 86
#define KERNEL_CONTEXT_GET_INPUT_COUNT 88
#define KERNEL_CONTEXT_GET_INPUT 90
#define KERNEL_CONTEXT_GET_OUTPUT 91
#define RELEASE_STATUS 93
#define RELEASE_TENSOR_TYPE_AND_SHAPE_INFO 99
#define KERNEL_CONTEXT_PARALLEL_FOR 274

#define FN(api, index, type) ((type)((api)[index]))

typedef OrtStatus *(*CreateStatus)(int, const char *);
typedef OrtStatus *(*GetInt)(const OrtKernelInfo *, const char *, int64_t *);
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
    int64_t K, N, KB;
} Kernel;

static OrtStatus *fail(const OrtApi *api, const char *message) {
    return FN(api, CREATE_STATUS, CreateStatus)(ORT_INVALID_ARGUMENT, message);
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api,
                                const OrtKernelInfo *info, void **out) {
    (void)op;
    Kernel *kernel = calloc(1, sizeof(Kernel));
    if (!kernel) return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "Q8MatMul: out of memory");
    kernel->api = api;
    OrtStatus *status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "K", &kernel->K);
    if (!status) status = FN(api, KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "N", &kernel->N);
    if (!status && (kernel->K < 1 || kernel->N < 1))
        status = fail(api, "Q8MatMul: attributes K and N must be positive");
    if (status) {
        free(kernel);
        return status;
    }
    kernel->KB = (kernel->K + Q8_BLOCK - 1) / Q8_BLOCK;
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

/* One call's work, in tasks: first row ranges to quantize, then column ranges. */
typedef struct {
    const float *A, *scales, *bias;
    const uint8_t *W;
    float *Y;
    int64_t M, K, KB, N, tasks;
    q8_rows rows;
} Work;

static void quantize_task(void *data, size_t task) {
    Work *w = data;
    int64_t m0 = w->M * (int64_t)task / w->tasks, m1 = w->M * ((int64_t)task + 1) / w->tasks;
    q8_quantize(w->A, w->K, w->KB, m0, m1, w->rows);
}

static void gemm_task(void *data, size_t task) {
    Work *w = data;
    int64_t groups = (w->N + 15) / 16; /* ranges start on 16-column groups */
    int64_t g0 = groups * (int64_t)task / w->tasks, g1 = groups * ((int64_t)task + 1) / w->tasks;
    int64_t n1 = g1 * 16 < w->N ? g1 * 16 : w->N;
    if (g0 * 16 < n1)
        q8_gemm(w->rows, w->M, w->KB, w->W, w->scales, w->bias, w->N, g0 * 16, n1, w->Y);
}

static OrtStatus *run_tasks(const OrtApi *api, OrtKernelContext *context,
                            void (*fn)(void *, size_t), Work *work) {
    if (work->tasks == 1) {
        fn(work, 0);
        return NULL;
    }
    return FN(api, KERNEL_CONTEXT_PARALLEL_FOR, ParallelFor)(context, fn, (size_t)work->tasks,
                                                             (size_t)work->tasks, work);
}

/* Per-thread scratch for the quantized rows. Up to KEEP bytes stay for the thread's next call (a
 * decode step needs a few KiB, a 512-token prompt ~2 MiB); a bigger one is freed after its call,
 * and what stays is freed when the thread ends. */
#define KEEP ((size_t)8 << 20)
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local void *scratch;
static _Thread_local size_t scratch_size;

static void make_scratch_key(void) { pthread_key_create(&scratch_key, free); }

static void *scratch_for(size_t size) {
    if (size > scratch_size) {
        pthread_once(&scratch_once, make_scratch_key);
        free(scratch);
        scratch = aligned_alloc(64, (size + 63) & ~(size_t)63);
        scratch_size = scratch ? size : 0;
        pthread_setspecific(scratch_key, scratch); /* the key's destructor frees it at exit */
    }
    return scratch;
}

static void scratch_done(void) {
    if (scratch_size > KEEP) {
        free(scratch);
        scratch = NULL;
        scratch_size = 0;
        pthread_setspecific(scratch_key, NULL);
    }
}

static OrtStatus *compute(void *opaque, OrtKernelContext *context) {
    Kernel *kernel = opaque;
    const OrtApi *api = kernel->api;
    const OrtValue *in[4] = {0};
    size_t count = 0, rank = 0;
    OrtStatus *status = FN(api, KERNEL_CONTEXT_GET_INPUT_COUNT, GetCount)(context, &count);
    for (size_t i = 0; !status && i < count && i < 4; i++)
        status = FN(api, KERNEL_CONTEXT_GET_INPUT, GetInput)(context, i, &in[i]);
    int64_t dims[8];
    if (!status)
        status = shape_of(api, in[0], dims, &rank, "Q8MatMul: A has more than 8 dimensions");
    if (status) return status;
    if (rank < 1 || dims[rank - 1] != kernel->K)
        return fail(api, "Q8MatMul: the last dimension of A is not the node's K");
    status = check_size(api, in[1], kernel->N * kernel->KB * Q8_BLOCK, "Q8MatMul: B is not N x K/64 x 64");
    if (!status) status = check_size(api, in[2], kernel->N * kernel->KB, "Q8MatMul: scales are not N x K/64");
    if (!status && in[3]) status = check_size(api, in[3], kernel->N, "Q8MatMul: bias is not N long");
    if (status) return status;
    int64_t M = 1;
    for (size_t d = 0; d + 1 < rank; d++) M *= dims[d];
    dims[rank - 1] = kernel->N;
    OrtValue *out = NULL;
    status = FN(api, KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, 0, dims, rank, &out);
    void *data[5] = {0};
    OrtValue *values[5] = {(OrtValue *)in[0], (OrtValue *)in[1], (OrtValue *)in[2],
                           (OrtValue *)in[3], out};
    for (int i = 0; !status && i < 5; i++)
        if (values[i]) status = FN(api, GET_TENSOR_MUTABLE_DATA, GetData)(values[i], &data[i]);
    if (status || M == 0) return status;
    void *space = scratch_for(q8_rows_bytes(M, kernel->KB));
    if (!space) return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "Q8MatMul: out of memory");
    Work work = {data[0], data[2], data[3], data[1], data[4], M, kernel->K, kernel->KB, kernel->N,
                 M >= 64 ? 16 : 1, q8_rows_at(space, M, kernel->KB)};
    status = run_tasks(api, context, quantize_task, &work);
    if (!status) {
        int64_t groups = (kernel->N + 15) / 16;
        work.tasks = groups < 32 ? 1 : groups < 512 ? 8 : 32;
        status = run_tasks(api, context, gemm_task, &work);
    }
    scratch_done();
    return status;
}

static const char *op_name(const OrtCustomOp *op) { (void)op; return "Q8MatMul"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? TYPE_UINT8 : TYPE_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 4; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static int input_kind(const OrtCustomOp *op, size_t i) { (void)op; return i == 3 ? OPTIONAL : REQUIRED; }
static int output_kind(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return REQUIRED; }
static int memory_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int one(const OrtCustomOp *op) { (void)op; return 1; }
static int last_version(const OrtCustomOp *op) { (void)op; return INT_MAX; }

static const OrtCustomOp q8_op = {
    .version = 17,
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = input_kind,
    .GetOutputCharacteristic = output_kind,
    .GetInputMemoryType = memory_type,
    .GetVariadicInputMinArity = one,
    .GetVariadicInputHomogeneity = one,
    .GetVariadicOutputMinArity = one,
    .GetVariadicOutputHomogeneity = one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
    .GetStartVersion = one,
    .GetEndVersion = last_version,
};

EXPORT int ortgen_kernels_supported(void) { return q8_supported(); }

static pthread_mutex_t domain_lock = PTHREAD_MUTEX_INITIALIZER;
static OrtDomain *domain; /* made once; every session that registers the library shares it */

EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = base->GetApi(API_VERSION);
    if (!api) return NULL; /* an onnxruntime older than 1.17: the graph's load then fails */
    if (!q8_supported())
        return FN(api, CREATE_STATUS, CreateStatus)(ORT_FAIL, "ortgen kernels need AVX-512 VNNI");
    OrtStatus *status = NULL;
    pthread_mutex_lock(&domain_lock);
    if (!domain) {
        OrtDomain *made = NULL;
        status = FN(api, CREATE_CUSTOM_OP_DOMAIN, OrtStatus * (*)(const char *, OrtDomain **))(
            "ortgen", &made);
        if (!status)
            status = FN(api, CUSTOM_OP_DOMAIN_ADD,
                        OrtStatus * (*)(OrtDomain *, const OrtCustomOp *))(made, &q8_op);
        if (!status) domain = made; /* a failed one is leaked: rare, and small */
    }
    pthread_mutex_unlock(&domain_lock);
    if (status) return status;
    return FN(api, ADD_CUSTOM_OP_DOMAIN, OrtStatus * (*)(OrtSessionOptions *, OrtDomain *))(
        options, domain);
}
