/* ops.h: the public op API of the core. Every function checks its arguments (shape, dtype, device)
 * and fails with a status + message, allocates the result, launches kernels through the device
 * table and, when grad mode is on and an input requires grad, records an autograd node.
 * Results are new references owned by the caller (`*out`). Python scalars are turned into 0-d
 * tensors by the binding, so binary ops only see tensors. */
#ifndef DC_OPS_H
#define DC_OPS_H

#include "op.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- devices ------------------------------------------------------------------------------- */
/* Make `be` the kernel table of a device type (csrc/cpu/cpu-backend.h, cuda/cuda-backend.h hand
 * them out); done once at start-up, before any op runs. */
struct dc_backend;
void dc_backend_register(int device_type, const struct dc_backend *be);
int dc_device_built(int device_type);             /* 1 if that backend is registered */
int dc_device_count(int device_type);             /* devices of that type present (0 if not built) */
const char *dc_device_type_name(int device_type); /* "cpu", "cuda"; NULL if not built */
int dc_op_has_kernel(int op, int device_type);    /* 1 if that device's table fills op's slot */
dc_status dc_synchronize(dc_device dev);          /* wait for the device's queued work */
/* A device's caching allocator: bytes cached for reuse and the cap (0, 0 without a cache); free the
 * cached blocks. */
void dc_device_cache_info(int device_type, size_t *cached, size_t *limit);
void dc_device_empty_cache(int device_type);

/* --- type promotion (dtype.h has dc_promote_types and dc_can_cast) ---------------------------- */
/* torch's result type of two tensors (c10's ResultTypeState): tensors with dims outrank 0-d ones,
 * which take part only when of a higher category (bool < integer < floating point): int32 (3,) +
 * int64 () -> int32, int32 (3,) + float64 () -> float64, float32 (3,) + float64 () -> float32.
 * Binary ops, where and cat cast their operands to it; in-place ops require dc_can_cast(result,
 * destination). Python numbers reach the core as 0-d tensors already of the dtype torch's
 * wrapped-number rule gives (_tensor.py's _coerce). */
dc_dtype dc_result_type(const dc_tensor *a, const dc_tensor *b);

/* --- creation and copies ------------------------------------------------------------------ */
dc_status dc_full(dc_tensor **out, int ndim, const int64_t *shape, double value, dc_dtype dt, dc_device dev);
/* Integer value, exact in int64 (never through double); out of the dtype's range -> DC_ERR_VALUE. */
dc_status dc_full_int(dc_tensor **out, int ndim, const int64_t *shape, int64_t value, dc_dtype dt, dc_device dev);
dc_status dc_arange(dc_tensor **out, double start, double end, double step, dc_dtype dt, dc_device dev);
/* kind: DC_OP_RAND, DC_OP_RANDN, DC_OP_RANDINT (low/high used only for RANDINT) */
dc_status dc_random(dc_tensor **out, dc_op kind, int ndim, const int64_t *shape, int64_t low, int64_t high, dc_dtype dt,
                    dc_device dev);
dc_status dc_to(dc_tensor **out, dc_tensor *x, dc_dtype dt, dc_device dev); /* copies; differentiable */
dc_status dc_contiguous(dc_tensor **out, dc_tensor *x); /* x itself (new ref) if already contiguous */
dc_status dc_clone(dc_tensor **out, dc_tensor *x);
dc_status dc_detach(dc_tensor **out, dc_tensor *x);

/* --- in place (refused where autograd would need to track them) ------------------------------ */
dc_status dc_copy_(dc_tensor *dst, dc_tensor *src); /* src broadcast to dst; dtype/device convert */
dc_status dc_fill_(dc_tensor *t, double value);
dc_status dc_fill_int_(dc_tensor *t, int64_t value);            /* exact, as dc_full_int */
dc_status dc_binary_(dc_op op, dc_tensor *t, dc_tensor *other); /* t = op(t, other), op of family BINARY */

/* --- views --------------------------------------------------------------------------------- */
dc_status dc_view(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *shape); /* -1 allowed once */
dc_status dc_reshape(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *shape);
dc_status dc_permute(dc_tensor **out, dc_tensor *x, const int *dims);
dc_status dc_transpose(dc_tensor **out, dc_tensor *x, int d0, int d1);
dc_status dc_expand(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *shape); /* -1 keeps */
dc_status dc_slice(dc_tensor **out, dc_tensor *x, int dim, int64_t start, int64_t end, int64_t step);
dc_status dc_select(dc_tensor **out, dc_tensor *x, int dim, int64_t index);
dc_status dc_unsqueeze(dc_tensor **out, dc_tensor *x, int dim);
dc_status dc_squeeze(dc_tensor **out, dc_tensor *x, int dim); /* dim == DC_ALL_DIMS: every size-1 dim */
#define DC_ALL_DIMS (-1000)

/* --- elementwise ------------------------------------------------------------------------------ */
dc_status dc_unary(dc_tensor **out, dc_op op, dc_tensor *x); /* op of family UNARY (ops.def) */
dc_status dc_clamp(dc_tensor **out, dc_tensor *x, double lo, double hi, int has_lo, int has_hi);
dc_status dc_pow_scalar(dc_tensor **out, dc_tensor *x, double p);
dc_status dc_rpow_scalar(dc_tensor **out, double base, dc_tensor *x);
dc_status dc_binary(dc_tensor **out, dc_op op, dc_tensor *a, dc_tensor *b); /* BINARY or COMPARE */
dc_status dc_where(dc_tensor **out, dc_tensor *cond, dc_tensor *a, dc_tensor *b);
dc_status dc_dropout(dc_tensor **out, dc_tensor *x, double p, int training);

/* --- reductions and normalisation ----------------------------------------------------------- */
/* dims: n dims (negative allowed); n == 0 means every dim. */
dc_status dc_sum(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim);
dc_status dc_mean(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim);
dc_status dc_amax(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim, int is_min);
dc_status dc_argmax(dc_tensor **out, dc_tensor *x, int dim, int keepdim, int is_min); /* dim DC_ALL_DIMS: flat */
dc_status dc_softmax(dc_tensor **out, dc_tensor *x, int dim, int log);
/* softmax(scale * x) over the last dim; causal: keys j > i of query row i (dim -2) get weight 0 */
dc_status dc_attn_softmax(dc_tensor **out, dc_tensor *x, double scale, int causal);
/* softmax(scale * q k^T, causal mask) v without storing the scores (ops_attn.c): q (..., Tq, D),
 * k (..., Tk, D), v (..., Tk, Dv), the same batch dims -> (..., Tq, Dv); differentiable */
dc_status dc_flash_attention(dc_tensor **out, dc_tensor *q, dc_tensor *k, dc_tensor *v, double scale, int causal);
/* per-row cross entropy of logits (N, C) against int64 targets (N,) fused with the softmax (ops_loss.c):
 * (N,) float32 (float64 for float64 logits); rows with target == ignore_index give 0; differentiable
 * in the logits */
dc_status dc_cross_entropy(dc_tensor **out, dc_tensor *logits, dc_tensor *target, int64_t ignore_index,
                           double label_smoothing);
dc_status dc_layer_norm(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, double eps);

/* --- linear algebra and indexing -------------------------------------------------------------- */
dc_status dc_matmul(dc_tensor **out, dc_tensor *a, dc_tensor *b);
dc_status dc_cat(dc_tensor **out, int n, dc_tensor *const *xs, int dim);
dc_status dc_gather(dc_tensor **out, dc_tensor *x, int dim, dc_tensor *index);
dc_status dc_index_select(dc_tensor **out, dc_tensor *x, int dim, dc_tensor *index);
dc_status dc_tril(dc_tensor **out, dc_tensor *x, int64_t diagonal, int upper);

/* --- the conv stack, NCHW (ops_conv.c) ------------------------------------------------------ */
/* pad: zero padding before the first row/column; pad_end: after the last (conv2d only: "same" on an
 * even kernel pads one more at the end, as torch does); output_padding: conv_transpose2d only. */
typedef struct {
    int64_t stride[2], pad[2], pad_end[2], dilation[2], output_padding[2];
    int64_t groups;
} dc_conv_opts;
/* x (N, Ci, H, W), w (Co, Ci / groups, kh, kw), b (Co) or NULL */
dc_status dc_conv2d(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, const dc_conv_opts *o);
/* x (N, Ci, H, W), w (Ci, Co / groups, kh, kw), b (Co) or NULL */
dc_status dc_conv_transpose2d(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, const dc_conv_opts *o);
typedef struct {
    int64_t kernel[2], stride[2], pad[2], dilation[2];
    int ceil_mode, count_include_pad; /* count_include_pad: avg only */
    int64_t divisor;                  /* avg only: divisor_override, 0 for none */
} dc_pool_opts;
/* indices (may be NULL): int64, h * W + w of each maximum in its plane, as torch's return_indices */
dc_status dc_max_pool2d(dc_tensor **out, dc_tensor **indices, dc_tensor *x, const dc_pool_opts *o);
dc_status dc_avg_pool2d(dc_tensor **out, dc_tensor *x, const dc_pool_opts *o); /* dilation ignored */
/* x (N, C, ...); w, b, running stats (C) or NULL; training: batch statistics, and the running ones
 * (when given) updated in place: r = (1 - momentum) r + momentum s, the variance unbiased */
dc_status dc_batch_norm(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, dc_tensor *running_mean,
                        dc_tensor *running_var, int training, double momentum, double eps);

/* --- scans, sort orders, nonzero (ops_scan.c) ---------------------------------------------- */
dc_status dc_cumsum(dc_tensor **out, dc_tensor *x, int dim);                  /* int/bool -> int64; floats keep dtype */
dc_status dc_cumprod(dc_tensor **out, dc_tensor *x, int dim);                 /* as cumsum's dtypes */
dc_status dc_argsort(dc_tensor **out, dc_tensor *x, int dim, int descending); /* stable; NaN largest */
dc_status dc_nonzero(dc_tensor **out, dc_tensor *x);                          /* (count, ndim) int64, row-major order */

/* --- fused multi-tensor optimizer steps (in place, no autograd) -------------------------------- */
dc_status dc_sgd_step(int n, dc_tensor *const *params, dc_tensor *const *grads, dc_tensor *const *bufs, double lr,
                      double momentum, double dampening, double wd, int nesterov, int maximize, int first);
dc_status dc_adamw_step(int n, dc_tensor *const *params, dc_tensor *const *grads, dc_tensor *const *m,
                        dc_tensor *const *v, int64_t step, double lr, double beta1, double beta2, double eps, double wd,
                        int maximize);
dc_status dc_total_norm(int n, dc_tensor *const *ts, double p, double *out);
dc_status dc_scale_(int n, dc_tensor *const *ts, double factor);
/* clip_grad_norm_ with no host sync: *total_out (new, float64 0-d on the tensors' device) = the
 * p-norm of all of ts; every tensor scaled by min(1, max_norm / (total + 1e-6)) on the device. All
 * tensors on one device. */
dc_status dc_clip_grad_norm_(int n, dc_tensor *const *ts, double max_norm, double p, dc_tensor **total_out);

/* --- host-device synchronisation points, counted where they happen ---------------------------- */
typedef enum {
    DC_SYNC_SYNCHRONIZE = 0, /* device / stream / event synchronize */
    DC_SYNC_D2H = 1,         /* a blocking copy from a device to the host (item(), .cpu(), a norm read) */
    DC_SYNC_ITEM = 2,        /* item() calls on any device (on the CPU they would be syncs on a GPU) */
    DC_SYNC_KINDS = 3
} dc_sync_kind;
void dc_sync_note(dc_sync_kind kind);
void dc_sync_counts(int64_t out[DC_SYNC_KINDS]);

#ifdef __cplusplus
}
#endif
#endif
