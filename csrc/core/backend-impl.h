/* backend-impl.h: the per-device kernel table (private to the core).
 *
 * Op logic in ops.c checks arguments, picks shapes, allocates outputs and records autograd; it then
 * calls one kernel through the table of the operands' device. A backend (CPU here, CUDA in cuda/)
 * fills the slots it supports; an empty slot gives a clean DC_ERR_UNSUPPORTED naming op and
 * device. Kernels see plain strided views, never dc_tensor. */
#ifndef DC_BACKEND_IMPL_H
#define DC_BACKEND_IMPL_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel ids. Append only; keep dc_kop_names in backend.c in step (static_assert checks). */
typedef enum {
    DC_K_COPY,    /* t0 <- t1, any dtypes, both strided, same shape */
    DC_K_FILL,    /* t0 = f0 */
    DC_K_ARANGE,  /* t0[i] = f0 + i*f1 (t0 contiguous 1-D) */
    DC_K_RAND,    /* t0 uniform [0,1): i0 seed, i1 offset (t0 contiguous) */
    DC_K_RANDN,   /* t0 standard normal: i0 seed, i1 offset */
    DC_K_RANDINT, /* t0 integers in [i2, i3): i0 seed, i1 offset */
    /* unary: t0 = op(t1), t0 contiguous, t1 strided, same shape */
    DC_K_NEG,
    DC_K_EXP,
    DC_K_LOG,
    DC_K_SQRT,
    DC_K_RSQRT,
    DC_K_SIN,
    DC_K_COS,
    DC_K_TANH,
    DC_K_SIGMOID,
    DC_K_RELU,
    DC_K_GELU_TANH,
    DC_K_GELU_ERF,
    DC_K_SILU,
    DC_K_ABS,
    DC_K_CLAMP,       /* f0 lo, f1 hi, i0 has_lo, i1 has_hi */
    DC_K_POW_SCALAR,  /* t0 = t1 ** f0 */
    DC_K_RPOW_SCALAR, /* t0 = f0 ** t1 */
    /* binary: t0 = op(t1, t2), t1/t2 already broadcast to t0's shape (stride 0) */
    DC_K_ADD,
    DC_K_SUB,
    DC_K_MUL,
    DC_K_DIV,
    DC_K_POW,
    DC_K_MAXIMUM,
    DC_K_MINIMUM,
    DC_K_EQ,
    DC_K_NE,
    DC_K_LT,
    DC_K_LE,
    DC_K_GT,
    DC_K_GE, /* t0 bool */
    /* backward helpers, binary form: t0 = grad(t1) * f'(t2) */
    DC_K_RELU_BWD,
    DC_K_GELU_TANH_BWD,
    DC_K_GELU_ERF_BWD,
    DC_K_SILU_BWD,
    DC_K_SIGMOID_BWD, /* t2 = sigmoid output */
    DC_K_TANH_BWD,    /* t2 = tanh output */
    DC_K_CLAMP_BWD,   /* t2 = input; f/i as DC_K_CLAMP */
    DC_K_WHERE,       /* t0 = t1 ? t2 : t3 (t1 bool), broadcast views */
    /* reductions: t1 reduced over every dim where t0 (same ndim) has size 1 and t1 does not */
    DC_K_SUM,
    DC_K_MAX,
    DC_K_MIN,
    DC_K_ARGMAX,
    DC_K_ARGMIN, /* over dim i0 only; t0 int64 */
    DC_K_SOFTMAX,
    DC_K_LOG_SOFTMAX, /* t0 = f(t1) along dim i0 */
    DC_K_SOFTMAX_BWD,
    DC_K_LOG_SOFTMAX_BWD, /* t0 = dx, t1 = dy, t2 = y, dim i0 */
    DC_K_LAYERNORM,       /* t0 y, t1 mean, t2 rstd (f32/f64 rows), t3 x, t4 w, t5 b; f0 eps; i0 has_w, i1 has_b */
    DC_K_LAYERNORM_BWD,   /* t0 dx, t1 dw, t2 db, t3 dy, t4 x, t5 mean, t6 rstd, t7 w; i0 has_w, i1 has_b */
    DC_K_MATMUL,          /* t0 (batch..., M, N) contiguous = t1 (batch..., M, K) @ t2 (batch..., K, N);
                             any strides (0 = broadcast); the kernel copies what BLAS can't read */
    DC_K_GATHER,          /* t0 = t1 gathered along i0 by t2 (int64, t0's shape) */
    DC_K_SCATTER_ADD,     /* t0 (zeroed) += t1 scattered along i0 by t2 */
    DC_K_INDEX_SELECT,    /* t0 = t1 rows along i0 by t2 (1-D int64) */
    DC_K_INDEX_ADD,       /* t0 += t1 rows along i0 at t2 */
    DC_K_TRIL,            /* t0 = tril/triu(t1), i0 diagonal, i1 upper */
    DC_K_SGD, /* t0 param, t1 grad, t2 buf (maybe empty); f0 lr f1 momentum f2 dampening f3 wd; i0 nesterov i1 maximize
                 i2 first */
    DC_K_ADAMW,    /* t0 param, t1 grad, t2 m, t3 v; f0 lr f1 b1 f2 b2 f3 eps f4 wd f5 bc1 f6 bc2; i0 maximize */
    DC_K_NORM_POW, /* t0 (float64 scalar) += sum |t1|^f0 (f0 = inf: max |t1|) */
    DC_K_SCALE,    /* t0 *= f0 in place */
    DC_KOP_COUNT
} dc_kop;

extern const char *const dc_kop_names[DC_KOP_COUNT];

typedef struct {
    char *data; /* first element (offset applied) */
    int ndim;
    int64_t shape[DC_MAX_DIMS];
    int64_t strides[DC_MAX_DIMS]; /* in elements */
    dc_dtype dtype;
} dc_kview;

#define DC_KARGS_MAX_T 8
typedef struct {
    dc_kop op;
    int nt;
    dc_kview t[DC_KARGS_MAX_T];
    double f[8];
    int64_t i[8];
} dc_kargs;

typedef dc_status (*dc_kernel_fn)(const dc_kargs *a);

typedef struct dc_backend {
    const char *name;
    int (*device_count)(void);
    dc_status (*alloc)(dc_device dev, size_t nbytes, void **out);
    void (*free)(dc_device dev, void *p);
    /* host <-> device; contiguous bytes */
    dc_status (*to_host)(dc_device dev, void *dst, const void *src, size_t n);
    dc_status (*from_host)(dc_device dev, void *dst, const void *src, size_t n);
    dc_status (*synchronize)(dc_device dev);
    dc_kernel_fn kernels[DC_KOP_COUNT];
} dc_backend;

/* The table for a device type; NULL when that backend is not compiled in. */
const dc_backend *dc_backend_get(int device_type);
/* Backends (csrc/cpu/, cuda/backend.cu) hand out their tables here. The CUDA one is only linked
 * when the build compiled cuda/ (DC_WITH_CUDA). */
const dc_backend *dc_cpu_backend_get(void);
#ifdef DC_WITH_CUDA
const dc_backend *dc_cuda_backend_get(void);
#endif

/* Host memory (csrc/cpu/alloc.c): freed large blocks are cached for reuse, up to a limit. */
dc_status dc_cpu_alloc(dc_device dev, size_t nbytes, void **out);
void dc_cpu_free(dc_device dev, void *p);
void dc_cpu_cache_info(size_t *cached, size_t *limit);
void dc_cpu_empty_cache(void);

/* Run one kernel on `dev`: DC_ERR_UNSUPPORTED with a clear message if the slot is empty. */
dc_status dc_launch(dc_device dev, const dc_kargs *a);
/* Fill a dc_kview from a tensor. */
void dc_kview_of(dc_kview *v, const dc_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
