/* kernel-params.h: the named parameters kernels read (shared by the CPU and CUDA kernels).
 *
 * One small struct per kernel family, in one union inside dc_kargs; ops.def's `params` column says
 * which member an op's kernels read. Kernels read `p->lr`, never positional slots. */
#ifndef DC_KERNEL_PARAMS_H
#define DC_KERNEL_PARAMS_H

#include <stdint.h>

struct dc_fill_params {
    double value;   /* floating-point dtypes (and the fallback) */
    int64_t ivalue; /* integer dtypes: exact, never through double */
    int is_int;     /* ivalue holds the value */
};

struct dc_arange_params {
    double start, step; /* t0[i] = start + i * step */
};

struct dc_random_params {
    uint64_t seed, offset; /* counter-based: element i draws from (seed, offset + i) */
    int64_t low, high;     /* randint: [low, high) */
};

struct dc_clamp_params {
    double lo, hi;
    int has_lo, has_hi;
};

struct dc_scalar_params {
    double value; /* pow_scalar: exponent; rpow_scalar: base */
};

struct dc_dim_params {
    int64_t dim; /* non-negative, < ndim */
};

struct dc_attn_params {
    double scale; /* applied to the scores before the softmax */
    int causal;   /* mask keys j > i of query row i */
};

struct dc_ce_params {
    int64_t ignore_index;   /* rows with this target add nothing */
    double label_smoothing; /* eps in [0, 1] */
};

struct dc_layernorm_params {
    double eps;
    int has_w, has_b;
};

/* Convolutions, NCHW: the output (conv2d) or input (the adjoint kernels) geometry comes from the
 * operands' shapes; pad is the zero padding before the first row/column (after the last: whatever
 * the shapes imply, so "same" padding of an even kernel is asymmetric as in torch). */
struct dc_conv_params {
    int64_t stride[2], pad[2], dilation[2];
    int64_t groups;
    int has_bias;
};

/* 2-D pooling windows; divisor (avg) 0: the window's size, by count_include_pad. */
struct dc_pool_params {
    int64_t kernel[2], stride[2], pad[2], dilation[2];
    int64_t divisor;
    int count_include_pad;
};

/* Batch norm over (N, C, L): statistics per channel over N and L. training: batch statistics
 * (and the running ones updated with momentum when has_running); else the running ones. */
struct dc_batchnorm_params {
    double eps, momentum;
    int training, has_w, has_b, has_running;
};

struct dc_tril_params {
    int64_t diagonal;
    int upper; /* triu */
};

struct dc_scan_params {
    int64_t dim;
    int reverse; /* accumulate from the end of the dim */
};

struct dc_sort_params {
    int64_t dim;
    int descending;
};

struct dc_sgd_params {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize, first; /* first: the momentum buffer is initialised from the grad */
};

struct dc_adamw_params {
    double lr, beta1, beta2, eps, weight_decay;
    double bias_correction1, bias_correction2; /* 1 - beta^step */
    int64_t step;
    int maximize;
};

struct dc_norm_params {
    double p; /* INFINITY: max |x| */
};

/* t0 *= factor. clip (clip_grad_norm_ with no host sync): t1 is the float64 0-d accumulator that
 * NORM_POW filled over every gradient (sum |g|^p; max |g| when norm_p is inf); the factor is then
 * min(1, max_norm / (total + 1e-6)) with total = acc^(1/norm_p) (acc when inf), computed by the kernel
 * from t1 (torch's clip_grad_norm_: a NaN/inf total gives a NaN/inf-scaled gradient, as there). */
struct dc_scale_params {
    double factor;
    int clip;
    double max_norm, norm_p;
};

typedef union {
    char none; /* ops without parameters */
    struct dc_fill_params fill;
    struct dc_arange_params arange;
    struct dc_random_params random;
    struct dc_clamp_params clamp;
    struct dc_scalar_params scalar;
    struct dc_dim_params dim;
    struct dc_attn_params attn;
    struct dc_ce_params ce;
    struct dc_layernorm_params layernorm;
    struct dc_conv_params conv;
    struct dc_pool_params pool;
    struct dc_batchnorm_params batchnorm;
    struct dc_tril_params tril;
    struct dc_scan_params scan;
    struct dc_sort_params sort;
    struct dc_sgd_params sgd;
    struct dc_adamw_params adamw;
    struct dc_norm_params norm;
    struct dc_scale_params scale;
} dc_kparams;

#endif
