/* conv.cu: 2-D convolution (forward, input gradient = transposed convolution, weight gradient) and
 * max/avg pooling on the GPU, NCHW, matching csrc/cpu/conv.c (the reference).
 *
 * Convolutions go through cuDNN 9's legacy convolution API (cudnnConvolutionForward /
 * BackwardData / BackwardFilter, deprecated but exported): descriptors, the algorithm picked by
 * cudnnGetConvolution*Algorithm_v7 (heuristics: no benchmarking, no allocation, no sync) and its
 * workspace size are built once per (op, dtype, device, tf32, shapes, params) and kept in a small
 * LRU cache behind a mutex. Only deterministic algorithms are taken (same inputs, same bits).
 * cuDNN pads symmetrically and derives the output size from the input; our pad is only the
 * padding before the first row/column and the output size comes from the operands (torch's
 * asymmetric "same" padding, conv_transpose2d's output_padding). When the two disagree cuDNN gets
 * an explicitly zero-padded copy of the input plane (or writes into one, for the input gradient,
 * which is then cropped) with pad 0. Batches whose tensors exceed 2^31 elements (cuDNN's int
 * dims) run in chunks of samples. Whatever cuDNN rejects (NOT_SUPPORTED / BAD_PARAM), and the
 * degenerate shapes it cannot describe (a zero dim), run on a simple direct-convolution kernel.
 *
 * Pooling is our own kernels (cuDNN pooling gives no indices). The backward passes are gathers:
 * each input element sums, in the CPU's order, the outputs whose windows cover it, so results are
 * deterministic without atomics and match the CPU bit for bit.
 *
 * dtypes: float32 and float64, as the CPU. The kernels are templated and the cuDNN mapping covers
 * bfloat16/float16 (tensor-op math), so enabling 16-bit is a change of CONV_DTYPES once the
 * reference supports them. The op layer (csrc/core/ops_conv.c) checks shapes and makes every
 * operand contiguous; the checks here guard against its bugs. */
#include <cudnn.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include <mutex>

#include "../csrc/plan/plan.h"
#include "common.cuh"

/* linalg.cu: torch.backends.cuda.matmul.allow_tf32's equivalent (also governs cuDNN fp32 convs). */
extern "C" int dc_cuda_get_allow_tf32(void);

#define CONV_DTYPES (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64))

/* --- errors ------------------------------------------------------------------------------------ */

/* "cuDNN cudnnConvolutionForward: CUDNN_STATUS_..." (the call's name, without its arguments). */
static dc_status cudnn_error(const char *call, cudnnStatus_t s, const char *file, int line)
{
    (void)cudaGetLastError(); /* a failed launch inside cuDNN must not resurface at our next check */
    int n = (int)strcspn(call, "(");
    return dc_error(DC_ERR_CUDA, "%s:%d: cuDNN %.*s: %s", file, line, n, call, cudnnGetErrorString(s));
}

#define DC_CUDNN_TRY(call)                                                                                   \
    do {                                                                                                     \
        cudnnStatus_t dc_cudnn_s_ = (call);                                                                  \
        if (dc_cudnn_s_ != CUDNN_STATUS_SUCCESS) return cudnn_error(#call, dc_cudnn_s_, __FILE__, __LINE__); \
    } while (0)

/* cuDNN 9 groups its codes by thousands: 2xxx bad parameter, 3xxx not supported. Either, from a
 * configuration call, means "not this way": the direct kernel takes over. */
static bool cudnn_rejects(cudnnStatus_t s)
{
    return (int)s / 1000 == 2 || (int)s / 1000 == 3;
}

/* --- operand checks ---------------------------------------------------------------------------- */

static bool view_contig(const dc_kview *v)
{
    int64_t s = 1;
    if (view_numel(v) == 0) return true;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s) return false;
        s *= v->shape[d];
    }
    return true;
}

/* Operand k present, of dtype dt, ndim dims, contiguous (the op layer's promise). */
static dc_status need_operand(const dc_kargs *a, int k, dc_dtype dt, int ndim)
{
    const char *op = dc_op_names[a->op];
    if (k >= a->nt) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d missing (%d given)", op, k, a->nt);
    const dc_kview *v = &a->t[k];
    if (v->dtype != dt)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has dtype %s, expected %s", op, k,
                        dc_dtype_name(v->dtype), dc_dtype_name(dt));
    if (v->ndim != ndim) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d must be %d-D", op, k, ndim);
    if (!view_contig(v)) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d must be contiguous", op, k);
    return DC_OK;
}

/* ================================ convolution geometry ======================================= */

/* As the CPU's conv_geom: the convolution's input x (N, Ci, H, W), weight (Co, Cg, kh, kw) and
 * output (N, Co, Ho, Wo); Cg = Ci / G, Cog = Co / G. Passed to kernels by value. */
struct conv_geom {
    int64_t N, Ci, H, W, Co, Ho, Wo, kh, kw, G, Cg, Cog;
    int64_t sh, sw, ph, pw, dh, dw;
};

static dc_status conv_geom_of(const dc_kargs *a, const dc_kview *in, const dc_kview *w, const dc_kview *out,
                              conv_geom *g)
{
    const struct dc_conv_params *p = &a->p.conv;
    g->N = in->shape[0], g->Ci = in->shape[1], g->H = in->shape[2], g->W = in->shape[3];
    g->Co = out->shape[1], g->Ho = out->shape[2], g->Wo = out->shape[3];
    g->kh = w->shape[2], g->kw = w->shape[3], g->G = p->groups;
    g->sh = p->stride[0], g->sw = p->stride[1], g->ph = p->pad[0], g->pw = p->pad[1];
    g->dh = p->dilation[0], g->dw = p->dilation[1];
    if (g->G < 1 || g->Ci % g->G || g->Co % g->G || w->shape[0] != g->Co || w->shape[1] * g->G != g->Ci ||
        out->shape[0] != g->N || g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1 || g->ph < 0 || g->pw < 0)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: inconsistent shapes", dc_op_names[a->op]);
    g->Cg = g->Ci / g->G, g->Cog = g->Co / g->G;
    return DC_OK;
}

/* ================================ direct convolution kernels ================================= */
/* The fallback: one thread per output element (a gather, so no atomics), accumulating in the
 * CPU's type (float for float, double for double). Correct for any padding; not fast. */

/* y (N, Co, Ho, Wo) = bias + x (N, Ci, H, W) correlated with w (Co, Cg, kh, kw) */
template <class T>
__global__ void conv_direct_fwd_kernel(T *y, const T *x, const T *w, const T *bias, conv_geom g, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t ow = i % g.Wo, oh = (i / g.Wo) % g.Ho, co = (i / (g.Wo * g.Ho)) % g.Co;
        const int64_t b = i / (g.Wo * g.Ho * g.Co), gi = co / g.Cog;
        const T *xg = x + (b * g.Ci + gi * g.Cg) * g.H * g.W, *wc = w + co * g.Cg * g.kh * g.kw;
        A acc = bias ? dc_load(bias[co]) : A(0);
        for (int64_t c = 0; c < g.Cg; c++)
            for (int64_t ki = 0; ki < g.kh; ki++) {
                const int64_t ih = oh * g.sh - g.ph + ki * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                for (int64_t kj = 0; kj < g.kw; kj++) {
                    const int64_t iw = ow * g.sw - g.pw + kj * g.dw;
                    if (iw < 0 || iw >= g.W) continue;
                    acc += dc_load(xg[(c * g.H + ih) * g.W + iw]) * dc_load(wc[(c * g.kh + ki) * g.kw + kj]);
                }
            }
        y[i] = dc_store<T>(acc);
    }
}

/* dx (N, Ci, H, W) = bias + the adjoint of the above applied to dy (N, Co, Ho, Wo) */
template <class T>
__global__ void conv_direct_bwd_data_kernel(T *dx, const T *dy, const T *w, const T *bias, conv_geom g, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t iw = i % g.W, ih = (i / g.W) % g.H, ci = (i / (g.W * g.H)) % g.Ci;
        const int64_t b = i / (g.W * g.H * g.Ci), gi = ci / g.Cg, cl = ci - gi * g.Cg;
        A acc = bias ? dc_load(bias[ci]) : A(0);
        for (int64_t k = 0; k < g.Cog; k++) {
            const int64_t co = gi * g.Cog + k;
            const T *dyc = dy + (b * g.Co + co) * g.Ho * g.Wo, *wc = w + (co * g.Cg + cl) * g.kh * g.kw;
            for (int64_t ki = 0; ki < g.kh; ki++) {
                const int64_t th = ih + g.ph - ki * g.dh; /* = oh * sh */
                if (th < 0) break;                        /* only falls as ki grows */
                if (th % g.sh || th / g.sh >= g.Ho) continue;
                const int64_t oh = th / g.sh;
                for (int64_t kj = 0; kj < g.kw; kj++) {
                    const int64_t tw = iw + g.pw - kj * g.dw;
                    if (tw < 0) break;
                    if (tw % g.sw || tw / g.sw >= g.Wo) continue;
                    acc += dc_load(dyc[oh * g.Wo + tw / g.sw]) * dc_load(wc[ki * g.kw + kj]);
                }
            }
        }
        dx[i] = dc_store<T>(acc);
    }
}

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024), valid in thread 0. Fixed tree:
 * deterministic. */
template <class A> __device__ A block_sum(A v)
{
    __shared__ A part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : A(0);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    __syncthreads(); /* part[] is reused by the caller's next element */
    return v;
}

/* dw (Co, Cg, kh, kw) = dy (N, Co, Ho, Wo) correlated with x (N, Ci, H, W) over the batch: one
 * block per weight element, its threads splitting the N * Ho * Wo products in a fixed pattern. */
template <class T>
__global__ void conv_direct_bwd_filter_kernel(T *dw, const T *dy, const T *x, conv_geom g, int64_t nw)
{
    typedef typename dc_acc<T>::type A;
    const int64_t P = g.Ho * g.Wo, M = g.N * P;
    for (int64_t e = blockIdx.x; e < nw; e += gridDim.x) {
        const int64_t kj = e % g.kw, ki = (e / g.kw) % g.kh, cl = (e / (g.kw * g.kh)) % g.Cg;
        const int64_t co = e / (g.kw * g.kh * g.Cg), ci = (co / g.Cog) * g.Cg + cl;
        A acc = 0;
        for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
            const int64_t b = j / P, p = j - b * P, oh = p / g.Wo, ow = p - oh * g.Wo;
            const int64_t ih = oh * g.sh - g.ph + ki * g.dh, iw = ow * g.sw - g.pw + kj * g.dw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
            acc += dc_load(dy[(b * g.Co + co) * P + p]) * dc_load(x[((b * g.Ci + ci) * g.H + ih) * g.W + iw]);
        }
        acc = block_sum(acc);
        if (threadIdx.x == 0) dw[e] = dc_store<T>(acc);
    }
}

/* dst (planes, Hd, Wd)[r][c] = src (planes, Hs, Ws)[r + oh][c + ow], 0 outside src, + bias[plane % C]
 * when bias: the zero-padded input copy (oh, ow = -pad) and the crop of a padded input gradient
 * (oh, ow = +pad, with the adjoint's bias). */
template <class T>
__global__ void shift_copy_kernel(T *dst, int64_t Hd, int64_t Wd, const T *src, int64_t Hs, int64_t Ws, int64_t oh,
                                  int64_t ow, const T *bias, int64_t C, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t c = i % Wd, r = (i / Wd) % Hd, pl = i / (Wd * Hd);
        const int64_t sr = r + oh, sc = c + ow;
        A v = (sr >= 0 && sr < Hs && sc >= 0 && sc < Ws) ? dc_load(src[(pl * Hs + sr) * Ws + sc]) : A(0);
        if (bias) v += dc_load(bias[pl % C]);
        dst[i] = dc_store<T>(v);
    }
}

/* y (planes, P) += bias[plane % C] */
template <class T> __global__ void add_bias_kernel(T *y, const T *bias, int64_t C, int64_t P, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n) y[i] = dc_store<T>(dc_load(y[i]) + dc_load(bias[(i / P) % C]));
}

/* --- launchers --------------------------------------------------------------------------------- */

template <class T>
static dc_status conv_direct_forward(T *y, const T *x, const T *w, const T *bias, const conv_geom &g,
                                     cudaStream_t stream)
{
    const int64_t n = g.N * g.Co * g.Ho * g.Wo;
    if (n == 0) return DC_OK;
    conv_direct_fwd_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(y, x, w, bias, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status conv_direct_backward_data(T *dx, const T *dy, const T *w, const T *bias, const conv_geom &g,
                                           cudaStream_t stream)
{
    const int64_t n = g.N * g.Ci * g.H * g.W;
    if (n == 0) return DC_OK;
    conv_direct_bwd_data_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(dx, dy, w, bias, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status conv_direct_backward_filter(T *dw, const T *dy, const T *x, const conv_geom &g, cudaStream_t stream)
{
    const int64_t nw = g.Co * g.Cg * g.kh * g.kw;
    if (nw == 0) return DC_OK;
    const unsigned int blocks = (unsigned int)(nw < (1 << 20) ? nw : (1 << 20));
    conv_direct_bwd_filter_kernel<T><<<blocks, DC_CUDA_THREADS, 0, stream>>>(dw, dy, x, g, nw);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status shift_copy(T *dst, int64_t planes, int64_t Hd, int64_t Wd, const T *src, int64_t Hs, int64_t Ws,
                            int64_t oh, int64_t ow, const T *bias, int64_t C, cudaStream_t stream)
{
    const int64_t n = planes * Hd * Wd;
    if (n == 0) return DC_OK;
    shift_copy_kernel<T>
        <<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(dst, Hd, Wd, src, Hs, Ws, oh, ow, bias, C, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T> static dc_status add_bias(T *y, const T *bias, int64_t C, int64_t P, int64_t n, cudaStream_t stream)
{
    if (n == 0) return DC_OK;
    add_bias_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(y, bias, C, P, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* ================================ cuDNN plans ================================================ */

enum { CONV_FWD = 0, CONV_BWD_DATA = 1, CONV_BWD_FILTER = 2 };

/* What cuDNN sees: x (n, ci, h, w), y (n, co, ho, wo), w (co, ci / groups, kh, kw), symmetric
 * pad. All ints and no padding bytes, so keys compare with memcmp. */
struct plan_key {
    int kind, dtype, device, tf32;
    int n, ci, h, w, co, ho, wo, kh, kw, groups;
    int sh, sw, ph, pw, dh, dw;
};

/* The heuristic's deterministic algorithms in its order of preference, with the math type each
 * runs with and its workspace; the first whose workspace can be allocated runs. */
#define PLAN_CANDS 4
struct plan_cand {
    int algo;
    cudnnMathType_t math;
    size_t ws;
};

struct plan {
    plan_key key;
    bool direct; /* cuDNN rejected the configuration: the direct kernel runs it */
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int ncand;
    plan_cand cand[PLAN_CANDS];
};

/* 64 plans cover a network's layers x (forward, two gradients) several times over; more shapes
 * than that (varying image sizes) evict the least recently used. */
#define PLAN_CACHE 64
static dc_plan_cache *g_plans = NULL; /* csrc/plan's LRU, made at the first convolution */
static std::mutex g_plan_mu;          /* guards g_plans, and the descriptors while a call uses them */

/* Workspace above this is taken only when no candidate needs less (an FFT algorithm's gigabytes
 * would stay held by the caching allocator). */
#define PLAN_WS_SOFT_CAP ((size_t)1 << 30)

static cudnnDataType_t cudnn_dtype(int dt)
{
    switch (dt) {
    case DC_FLOAT64: return CUDNN_DATA_DOUBLE;
    case DC_FLOAT16: return CUDNN_DATA_HALF;
    case DC_BFLOAT16: return CUDNN_DATA_BFLOAT16;
    default: return CUDNN_DATA_FLOAT;
    }
}

/* The math type cuDNN is allowed: fp32 without tf32 must say FMA (DEFAULT lets Ampere and newer
 * use TF32); 16-bit floats want tensor cores; fp64 has no reduced-precision mode. */
static cudnnMathType_t requested_math(const plan_key &k)
{
    if (k.dtype == DC_FLOAT32) return k.tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    if (k.dtype == DC_FLOAT16 || k.dtype == DC_BFLOAT16) return CUDNN_TENSOR_OP_MATH;
    return CUDNN_DEFAULT_MATH;
}

static void plan_release(void *payload)
{
    plan *p = (plan *)payload;
    if (p->xd) (void)cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) (void)cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) (void)cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) (void)cudnnDestroyConvolutionDescriptor(p->cd);
}

/* Keep the heuristic's successful, deterministic algorithms (perf: its results, best first). */
template <class Perf> static void plan_collect(const plan_key &k, const Perf *perf, int got, plan_cand *c, int *nc)
{
    for (int i = 0; i < got && *nc < 8; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC) continue;
        c[*nc].algo = (int)perf[i].algo;
        /* the heuristic may report tensor-op math for an fp32 algorithm: without tf32, force FMA */
        c[*nc].math = k.dtype == DC_FLOAT32 && !k.tf32 ? CUDNN_FMA_MATH : perf[i].mathType;
        c[*nc].ws = 0;
        (*nc)++;
    }
}

static cudnnStatus_t plan_workspace(cudnnHandle_t h, const plan *p, int kind, int algo, size_t *ws)
{
    switch (kind) {
    case CONV_FWD:
        return cudnnGetConvolutionForwardWorkspaceSize(h, p->xd, p->wd, p->cd, p->yd, (cudnnConvolutionFwdAlgo_t)algo,
                                                       ws);
    case CONV_BWD_DATA:
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->wd, p->yd, p->cd, p->xd,
                                                            (cudnnConvolutionBwdDataAlgo_t)algo, ws);
    default:
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->xd, p->yd, p->cd, p->wd,
                                                              (cudnnConvolutionBwdFilterAlgo_t)algo, ws);
    }
}

/* Run a configuration call unless an earlier one failed; remember which one did. */
#define PLAN_STEP(fn, args)              \
    do {                                 \
        if (s == CUDNN_STATUS_SUCCESS) { \
            what = #fn;                  \
            s = fn args;                 \
        }                                \
    } while (0)

/* Descriptors, candidates and workspace sizes of p->key. A configuration cuDNN rejects gives
 * p->direct and DC_OK; other failures an error. */
static dc_status plan_build(cudnnHandle_t h, plan *p)
{
    const plan_key &k = p->key;
    const cudnnDataType_t dt = cudnn_dtype(k.dtype);
    const cudnnDataType_t ct = k.dtype == DC_FLOAT64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    DC_CUDNN_TRY(cudnnCreateTensorDescriptor(&p->xd));
    DC_CUDNN_TRY(cudnnCreateTensorDescriptor(&p->yd));
    DC_CUDNN_TRY(cudnnCreateFilterDescriptor(&p->wd));
    DC_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&p->cd));
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    const char *what = "";
    PLAN_STEP(cudnnSetTensor4dDescriptor, (p->xd, CUDNN_TENSOR_NCHW, dt, k.n, k.ci, k.h, k.w));
    PLAN_STEP(cudnnSetTensor4dDescriptor, (p->yd, CUDNN_TENSOR_NCHW, dt, k.n, k.co, k.ho, k.wo));
    PLAN_STEP(cudnnSetFilter4dDescriptor, (p->wd, dt, CUDNN_TENSOR_NCHW, k.co, k.ci / k.groups, k.kh, k.kw));
    PLAN_STEP(cudnnSetConvolution2dDescriptor,
              (p->cd, k.ph, k.pw, k.sh, k.sw, k.dh, k.dw, CUDNN_CROSS_CORRELATION, ct));
    PLAN_STEP(cudnnSetConvolutionGroupCount, (p->cd, k.groups));
    PLAN_STEP(cudnnSetConvolutionMathType, (p->cd, requested_math(k)));
    int on = 0, oc = 0, oh = 0, ow = 0;
    PLAN_STEP(cudnnGetConvolution2dForwardOutputDim, (p->cd, p->xd, p->wd, &on, &oc, &oh, &ow));
    if (s == CUDNN_STATUS_SUCCESS && (on != k.n || oc != k.co || oh != k.ho || ow != k.wo)) {
        p->direct = true; /* our view of cuDNN's geometry is off: stay correct */
        return DC_OK;
    }
    plan_cand c[8];
    int nc = 0;
    if (s == CUDNN_STATUS_SUCCESS) {
        int got = 0;
        if (k.kind == CONV_FWD) {
            cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
            PLAN_STEP(cudnnGetConvolutionForwardAlgorithm_v7,
                      (h, p->xd, p->wd, p->cd, p->yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf));
            if (s == CUDNN_STATUS_SUCCESS) plan_collect(k, perf, got, c, &nc);
        } else if (k.kind == CONV_BWD_DATA) {
            cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
            PLAN_STEP(cudnnGetConvolutionBackwardDataAlgorithm_v7,
                      (h, p->wd, p->yd, p->cd, p->xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, perf));
            if (s == CUDNN_STATUS_SUCCESS) plan_collect(k, perf, got, c, &nc);
        } else {
            cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
            PLAN_STEP(cudnnGetConvolutionBackwardFilterAlgorithm_v7,
                      (h, p->xd, p->yd, p->cd, p->wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, perf));
            if (s == CUDNN_STATUS_SUCCESS) plan_collect(k, perf, got, c, &nc);
        }
    }
    /* exact workspace per candidate, under the math type it will run with */
    int kept = 0;
    bool small = false;
    for (int i = 0; i < nc && s == CUDNN_STATUS_SUCCESS; i++) {
        PLAN_STEP(cudnnSetConvolutionMathType, (p->cd, c[i].math));
        PLAN_STEP(plan_workspace, (h, p, k.kind, c[i].algo, &c[i].ws));
        if (cudnn_rejects(s)) { /* this algorithm after all not: try the others */
            s = CUDNN_STATUS_SUCCESS;
            continue;
        }
        c[kept++] = c[i];
        small = small || c[i].ws <= PLAN_WS_SOFT_CAP;
    }
    if (s != CUDNN_STATUS_SUCCESS) {
        if (cudnn_rejects(s)) {
            p->direct = true;
            return DC_OK;
        }
        return cudnn_error(what, s, __FILE__, __LINE__);
    }
    for (int i = 0; i < kept && p->ncand < PLAN_CANDS; i++)
        if (!small || c[i].ws <= PLAN_WS_SOFT_CAP) p->cand[p->ncand++] = c[i];
    if (p->ncand == 0) p->direct = true;
    return DC_OK;
}

/* The plan for k: cached, or built into the least recently used slot (the plan got last is never
 * the one evicted: a caller may hold two). Caller holds g_plan_mu. */
static dc_status plan_get(cudnnHandle_t h, const plan_key &k, plan **out)
{
    if (!g_plans) DC_TRY(dc_plan_cache_new(PLAN_CACHE, sizeof k, sizeof(plan), plan_release, &g_plans));
    bool fresh = false;
    plan *p = (plan *)dc_plan_cache_get(g_plans, &k, &fresh);
    if (fresh) {
        p->key = k;
        dc_status st = plan_build(h, p);
        if (st) {
            dc_plan_cache_drop(g_plans, p);
            return st;
        }
    }
    *out = p;
    return DC_OK;
}

/* One cuDNN call of plan p. FWD: Y = conv(X, Wt); BWD_DATA: X = adjoint(Y, Wt); BWD_FILTER: Wt
 * (+)= X correlated with Y (accumulate: beta 1, for batch chunks after the first). *rejected: the
 * call returned NOT_SUPPORTED/BAD_PARAM after all (the caller falls back). Caller holds
 * g_plan_mu (the math type is set on the shared descriptor). */
static dc_status plan_run(cudnnHandle_t h, plan *p, void *X, void *Wt, void *Y, bool accumulate, bool *rejected)
{
    *rejected = false;
    void *ws = NULL;
    int c = 0;
    dc_status st = DC_ERR_INTERNAL;
    for (; c < p->ncand; c++)
        if ((st = dc_cuda_scratch(p->cand[c].ws, &ws)) == DC_OK) break;
    if (st) return st;
    const float f1 = 1.0f, f0 = 0.0f;
    const double d1 = 1.0, d0 = 0.0;
    const bool dbl = p->key.dtype == DC_FLOAT64; /* cuDNN's scaling factors are double for double data */
    const void *one = dbl ? (const void *)&d1 : (const void *)&f1;
    const void *beta = accumulate ? one : (dbl ? (const void *)&d0 : (const void *)&f0);
    const plan_cand &pc = p->cand[c];
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    const char *what = "";
    PLAN_STEP(cudnnSetConvolutionMathType, (p->cd, pc.math));
    if (p->key.kind == CONV_FWD)
        PLAN_STEP(cudnnConvolutionForward,
                  (h, one, p->xd, X, p->wd, Wt, p->cd, (cudnnConvolutionFwdAlgo_t)pc.algo, ws, pc.ws, beta, p->yd, Y));
    else if (p->key.kind == CONV_BWD_DATA)
        PLAN_STEP(cudnnConvolutionBackwardData, (h, one, p->wd, Wt, p->yd, Y, p->cd,
                                                 (cudnnConvolutionBwdDataAlgo_t)pc.algo, ws, pc.ws, beta, p->xd, X));
    else
        PLAN_STEP(
            cudnnConvolutionBackwardFilter,
            (h, one, p->xd, X, p->yd, Y, p->cd, (cudnnConvolutionBwdFilterAlgo_t)pc.algo, ws, pc.ws, beta, p->wd, Wt));
    dc_cuda_scratch_free(ws); /* stream-ordered: safe right after queueing */
    if (s == CUDNN_STATUS_SUCCESS) return DC_OK;
    if (cudnn_rejects(s)) {
        p->direct = true;
        *rejected = true;
        return DC_OK;
    }
    return cudnn_error(what, s, __FILE__, __LINE__);
}

/* Scratch freed on every path out of a function (stream-ordered, so right after queueing). */
struct scratch_guard {
    void *p = NULL;
    ~scratch_guard()
    {
        if (p) dc_cuda_scratch_free(p);
    }
};

/* The convolution `kind` through cuDNN. X (N, Ci, H, W), Wt (Co, Cg, kh, kw), Y (N, Co, Ho, Wo) as
 * in plan_run; bias (Co for FWD, Ci for BWD_DATA) or NULL. *done = false (with DC_OK): cuDNN
 * cannot or will not run it, and nothing useful was written; the caller runs the direct kernel. */
template <class T>
static dc_status conv_cudnn(int kind, dc_dtype dtype, const conv_geom &g, T *X, T *Wt, T *Y, const T *bias, bool *done)
{
    *done = false;
    /* cuDNN describes no zero dim, and its descriptors take ints */
    if (g.N < 1 || g.Ci < 1 || g.Co < 1 || g.H < 1 || g.W < 1 || g.Ho < 1 || g.Wo < 1 || g.kh < 1 || g.kw < 1)
        return DC_OK;
    const int64_t params[7] = { g.G, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw };
    for (int i = 0; i < 7; i++)
        if (params[i] > INT_MAX) return DC_OK;
    if (g.Co * g.Cg * g.kh * g.kw > INT_MAX) return DC_OK;
    /* cuDNN's geometry: symmetric pad ph gives floor((H + 2 ph - eff) / sh) + 1 rows. When that is
     * not Ho, it gets x zero-padded to exactly the rows the windows read, Hc = (Ho - 1) sh + eff,
     * starting ph rows above x, with pad 0 (same for columns). */
    const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
    const int64_t sym_h = g.H + 2 * g.ph - eh, sym_w = g.W + 2 * g.pw - ew;
    const bool padded = !(sym_h >= 0 && sym_h / g.sh + 1 == g.Ho && sym_w >= 0 && sym_w / g.sw + 1 == g.Wo);
    const int64_t Hc = padded ? (g.Ho - 1) * g.sh + eh : g.H, Wc = padded ? (g.Wo - 1) * g.sw + ew : g.W;
    const int64_t phc = padded ? 0 : g.ph, pwc = padded ? 0 : g.pw;
    /* samples per cuDNN call: every tensor of a call under 2^31 elements */
    const int64_t in_s = g.Ci * Hc * Wc, out_s = g.Co * g.Ho * g.Wo, per = in_s > out_s ? in_s : out_s;
    if (per > INT_MAX || Hc > INT_MAX || Wc > INT_MAX) return DC_OK;
    const int64_t nc = g.N < INT_MAX / per ? g.N : INT_MAX / per, rem = g.N % nc;

    cudnnHandle_t h;
    DC_TRY(dc_cuda_cudnn(&h));
    const cudaStream_t stream = dc_cuda_stream();
    int dev = 0;
    DC_CUDA_TRY(cudaGetDevice(&dev));
    plan_key key;
    memset(&key, 0, sizeof key);
    key.kind = kind, key.dtype = (int)dtype, key.device = dev;
    key.tf32 = dtype == DC_FLOAT32 && dc_cuda_get_allow_tf32();
    key.n = (int)nc, key.ci = (int)g.Ci, key.h = (int)Hc, key.w = (int)Wc;
    key.co = (int)g.Co, key.ho = (int)g.Ho, key.wo = (int)g.Wo, key.kh = (int)g.kh, key.kw = (int)g.kw;
    key.groups = (int)g.G, key.sh = (int)g.sh, key.sw = (int)g.sw, key.ph = (int)phc, key.pw = (int)pwc;
    key.dh = (int)g.dh, key.dw = (int)g.dw;

    std::lock_guard<std::mutex> lock(g_plan_mu);
    plan *full = NULL, *last = NULL;
    DC_TRY(plan_get(h, key, &full));
    if (full->direct) return DC_OK;
    if (rem) {
        key.n = (int)rem;
        DC_TRY(plan_get(h, key, &last)); /* LRU: cannot evict `full`, stamped just now */
        if (last->direct) return DC_OK;
    }
    scratch_guard xp; /* (nc, Ci, Hc, Wc): the padded input, or the padded input gradient */
    if (padded) DC_TRY(dc_cuda_scratch((size_t)(nc * in_s) * sizeof(T), &xp.p));
    T *XP = (T *)xp.p;
    for (int64_t n0 = 0; n0 < g.N; n0 += nc) {
        const int64_t nb = g.N - n0 < nc ? g.N - n0 : nc;
        plan *p = nb == nc ? full : last;
        T *Xn = X + n0 * g.Ci * g.H * g.W, *Yn = Y + n0 * g.Co * g.Ho * g.Wo;
        bool rejected = false;
        if (kind == CONV_FWD) {
            if (padded) DC_TRY(shift_copy<T>(XP, nb * g.Ci, Hc, Wc, Xn, g.H, g.W, -g.ph, -g.pw, NULL, 1, stream));
            DC_TRY(plan_run(h, p, padded ? XP : Xn, Wt, Yn, false, &rejected));
            if (rejected) return DC_OK;
            if (bias) DC_TRY(add_bias<T>(Yn, bias, g.Co, g.Ho * g.Wo, nb * out_s, stream));
        } else if (kind == CONV_BWD_DATA) {
            DC_TRY(plan_run(h, p, padded ? XP : Xn, Wt, Yn, false, &rejected));
            if (rejected) return DC_OK;
            if (padded)
                DC_TRY(shift_copy<T>(Xn, nb * g.Ci, g.H, g.W, XP, Hc, Wc, g.ph, g.pw, bias, g.Ci, stream));
            else if (bias)
                DC_TRY(add_bias<T>(Xn, bias, g.Ci, g.H * g.W, nb * g.Ci * g.H * g.W, stream));
        } else {
            if (padded) DC_TRY(shift_copy<T>(XP, nb * g.Ci, Hc, Wc, Xn, g.H, g.W, -g.ph, -g.pw, NULL, 1, stream));
            DC_TRY(plan_run(h, p, padded ? XP : Xn, Wt, Yn, n0 > 0, &rejected));
            if (rejected) return DC_OK;
        }
    }
    *done = true;
    return DC_OK;
}

/* ================================ convolution table entries ================================== */

/* DC_OP_CONV2D: t0 y (N, Co, Ho, Wo) = t1 x (N, Ci, H, W) correlated with t2 w (Co, Ci/G, kh, kw),
 * + t3 bias (Co) when has_bias. */
static dc_status k_conv2d(const dc_kargs *a)
{
    const int hb = a->p.conv.has_bias != 0;
    const dc_dtype dt = a->t[0].dtype;
    for (int k = 0; k < 3; k++) DC_TRY(need_operand(a, k, dt, 4));
    if (hb) DC_TRY(need_operand(a, 3, dt, 1));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[1], &a->t[2], &a->t[0], &g));
    if (hb && a->t[3].shape[0] != g.Co) return dc_error(DC_ERR_INTERNAL, "cuda conv2d: bias size");
    if (view_numel(&a->t[0]) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, dc_op_names[a->op], [&](auto tag) {
        typedef decltype(tag) T;
        T *y = (T *)a->t[0].data, *x = (T *)a->t[1].data, *w = (T *)a->t[2].data;
        const T *b = hb ? (const T *)a->t[3].data : NULL;
        bool done = false;
        DC_TRY(conv_cudnn<T>(CONV_FWD, dt, g, x, w, y, b, &done));
        if (done) return DC_OK;
        return conv_direct_forward<T>(y, x, w, b, g, dc_cuda_stream());
    });
}

/* DC_OP_CONV2D_BWD_INPUT and DC_OP_CONV_TRANSPOSE2D (conv2d's adjoint): t0 (N, Ci, H, W) from t1
 * (N, Co, Ho, Wo) and t2 w (Co, Ci/G, kh, kw), + t3 bias (Ci) when has_bias. */
static dc_status k_conv2d_bwd_input(const dc_kargs *a)
{
    const int hb = a->p.conv.has_bias != 0;
    const dc_dtype dt = a->t[0].dtype;
    for (int k = 0; k < 3; k++) DC_TRY(need_operand(a, k, dt, 4));
    if (hb) DC_TRY(need_operand(a, 3, dt, 1));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[0], &a->t[2], &a->t[1], &g));
    if (hb && a->t[3].shape[0] != g.Ci) return dc_error(DC_ERR_INTERNAL, "cuda %s: bias size", dc_op_names[a->op]);
    if (view_numel(&a->t[0]) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, dc_op_names[a->op], [&](auto tag) {
        typedef decltype(tag) T;
        T *dx = (T *)a->t[0].data, *dy = (T *)a->t[1].data, *w = (T *)a->t[2].data;
        const T *b = hb ? (const T *)a->t[3].data : NULL;
        bool done = false;
        DC_TRY(conv_cudnn<T>(CONV_BWD_DATA, dt, g, dx, w, dy, b, &done));
        if (done) return DC_OK;
        return conv_direct_backward_data<T>(dx, dy, w, b, g, dc_cuda_stream());
    });
}

/* DC_OP_CONV2D_BWD_WEIGHT: t0 dw (Co, Ci/G, kh, kw) = t1 dy (N, Co, Ho, Wo) correlated with t2 x
 * (N, Ci, H, W) over the batch. */
static dc_status k_conv2d_bwd_weight(const dc_kargs *a)
{
    const dc_dtype dt = a->t[0].dtype;
    for (int k = 0; k < 3; k++) DC_TRY(need_operand(a, k, dt, 4));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[2], &a->t[0], &a->t[1], &g));
    const int64_t nw = view_numel(&a->t[0]);
    if (nw == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, dc_op_names[a->op], [&](auto tag) {
        typedef decltype(tag) T;
        T *dw = (T *)a->t[0].data, *dy = (T *)a->t[1].data, *x = (T *)a->t[2].data;
        const cudaStream_t stream = dc_cuda_stream();
        if (g.N * g.Ho * g.Wo * g.H * g.W == 0) { /* no products: dw = 0 */
            DC_CUDA_TRY(cudaMemsetAsync(dw, 0, (size_t)nw * sizeof(T), stream));
            return DC_OK;
        }
        bool done = false;
        DC_TRY(conv_cudnn<T>(CONV_BWD_FILTER, dt, g, x, dw, dy, NULL, &done));
        if (done) return DC_OK;
        return conv_direct_backward_filter<T>(dw, dy, x, g, stream);
    });
}

/* ================================ pooling ==================================================== */

/* planes = N * C input planes (H, W) and output planes (Ho, Wo); the window of dc_pool_params. */
struct pool_geom {
    int64_t planes, H, W, Ho, Wo;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, divisor;
    int count_include_pad;
};

static dc_status pool_geom_of(const dc_kargs *a, const dc_kview *in, const dc_kview *out, pool_geom *g)
{
    if (in->shape[0] != out->shape[0] || in->shape[1] != out->shape[1])
        return dc_error(DC_ERR_INTERNAL, "cuda %s: inconsistent shapes", dc_op_names[a->op]);
    const struct dc_pool_params *p = &a->p.pool;
    for (int d = 0; d < 2; d++)
        if (p->kernel[d] < 1 || p->stride[d] < 1 || p->dilation[d] < 1 || p->pad[d] < 0)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: bad window", dc_op_names[a->op]);
    g->planes = in->shape[0] * in->shape[1];
    g->H = in->shape[2], g->W = in->shape[3], g->Ho = out->shape[2], g->Wo = out->shape[3];
    g->kh = p->kernel[0], g->kw = p->kernel[1], g->sh = p->stride[0], g->sw = p->stride[1];
    g->ph = p->pad[0], g->pw = p->pad[1], g->dh = p->dilation[0], g->dw = p->dilation[1];
    g->divisor = p->divisor, g->count_include_pad = p->count_include_pad;
    return DC_OK;
}

/* y[i] = the window's max (a NaN wins, first found), ix[i] its h * W + w; an empty window (all in
 * the padding) gives -inf and index 0, as the CPU. Scan order = the CPU's. */
template <class T> __global__ void max_pool_fwd_kernel(T *y, int64_t *ix, const T *x, pool_geom g, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t ow = i % g.Wo, oh = (i / g.Wo) % g.Ho, pl = i / (g.Wo * g.Ho);
        const T *xp = x + pl * g.H * g.W;
        const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
        A best = -(A)INFINITY;
        int64_t bi = -1;
        bool nan_found = false;
        for (int64_t ki = 0; ki < g.kh && !nan_found; ki++) {
            const int64_t ih = h0 + ki * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t kj = 0; kj < g.kw; kj++) {
                const int64_t iw = w0 + kj * g.dw;
                if (iw < 0 || iw >= g.W) continue;
                const A v = dc_load(xp[ih * g.W + iw]);
                if (bi < 0 || v > best || isnan(v)) {
                    best = v;
                    bi = ih * g.W + iw;
                    if (isnan(v)) {
                        nan_found = true;
                        break;
                    }
                }
            }
        }
        y[i] = dc_store<T>(best);
        ix[i] = bi < 0 ? 0 : bi;
    }
}

/* dx (planes, H, W) = sum of dy over the outputs whose index is this element, in ascending output
 * order (the CPU's dx[ix[j]] += dy[j] order, so the same bits). Only the windows covering the
 * element can point at it -- except an empty window, which points at 0: when the geometry has
 * one (any_empty), element 0 of each plane scans the whole output plane. */
template <class T>
__global__ void max_pool_bwd_kernel(T *dx, const T *dy, const int64_t *ix, pool_geom g, int any_empty, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    const int64_t P = g.Ho * g.Wo;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t iw = i % g.W, ih = (i / g.W) % g.H, pl = i / (g.W * g.H), q = ih * g.W + iw;
        const int64_t *ixp = ix + pl * P;
        const T *dyp = dy + pl * P;
        A s = 0;
        if (any_empty && q == 0) {
            for (int64_t j = 0; j < P; j++)
                if (ixp[j] == 0) s += dc_load(dyp[j]);
        } else {
            /* ki from the top: oh = (ih + ph - ki dh) / sh rises as ki falls */
            for (int64_t ki = g.kh - 1; ki >= 0; ki--) {
                const int64_t th = ih + g.ph - ki * g.dh;
                if (th < 0 || th % g.sh) continue;
                const int64_t oh = th / g.sh;
                if (oh >= g.Ho) break;
                for (int64_t kj = g.kw - 1; kj >= 0; kj--) {
                    const int64_t tw = iw + g.pw - kj * g.dw;
                    if (tw < 0 || tw % g.sw) continue;
                    const int64_t ow = tw / g.sw;
                    if (ow >= g.Wo) break;
                    const int64_t j = oh * g.Wo + ow;
                    if (ixp[j] == q) s += dc_load(dyp[j]);
                }
            }
        }
        dx[i] = dc_store<T>(s);
    }
}

/* torch's avg window (the CPU's avg_window): [hs, hs + k) clipped to the padded input for the
 * count_include_pad divisor, then to the input for the sum. Returns the divisor (0: empty). */
__device__ __forceinline__ int64_t avg_window(const pool_geom &g, int64_t oh, int64_t ow, int64_t *h0, int64_t *h1,
                                              int64_t *w0, int64_t *w1)
{
    const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    int64_t he = hs + g.kh, we = ws + g.kw;
    if (he > g.H + g.ph) he = g.H + g.ph;
    if (we > g.W + g.pw) we = g.W + g.pw;
    const int64_t padded = (he - hs) * (we - ws);
    *h0 = hs < 0 ? 0 : hs, *w0 = ws < 0 ? 0 : ws;
    *h1 = he > g.H ? g.H : he, *w1 = we > g.W ? g.W : we;
    if (*h0 >= *h1 || *w0 >= *w1) return 0;
    if (g.divisor) return g.divisor;
    return g.count_include_pad ? padded : (*h1 - *h0) * (*w1 - *w0);
}

/* y = window sum (in double, row by row as the CPU) / divisor; 0 for an empty window. */
template <class T> __global__ void avg_pool_fwd_kernel(T *y, const T *x, pool_geom g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t ow = i % g.Wo, oh = (i / g.Wo) % g.Ho, pl = i / (g.Wo * g.Ho);
        const T *xp = x + pl * g.H * g.W;
        int64_t h0, h1, w0, w1;
        const int64_t div = avg_window(g, oh, ow, &h0, &h1, &w0, &w1);
        double s = 0;
        if (div)
            for (int64_t ih = h0; ih < h1; ih++)
                for (int64_t iw = w0; iw < w1; iw++) s += (double)dc_load(xp[ih * g.W + iw]);
        y[i] = div ? dc_store<T>(s / (double)div) : dc_store<T>(0.0);
    }
}

/* dx = sum over the windows covering the element, in ascending output order, of dy / divisor
 * (divided in T, as the CPU's v = dy / (T)div; then dx += v in T). A window oh covers ih iff
 * oh sh - ph <= ih < oh sh - ph + kh (its clip at H + ph never cuts an input row). */
template <class T> __global__ void avg_pool_bwd_kernel(T *dx, const T *dy, pool_geom g, int64_t n)
{
    typedef typename dc_acc<T>::type A;
    DC_GRID_STRIDE_LOOP(i, n)
    {
        const int64_t iw = i % g.W, ih = (i / g.W) % g.H, pl = i / (g.W * g.H);
        const T *dyp = dy + pl * g.Ho * g.Wo;
        const int64_t th = ih + g.ph - g.kh, tw = iw + g.pw - g.kw;
        const int64_t oh0 = th < 0 ? 0 : th / g.sh + 1, ow0 = tw < 0 ? 0 : tw / g.sw + 1;
        int64_t oh1 = (ih + g.ph) / g.sh, ow1 = (iw + g.pw) / g.sw;
        if (oh1 > g.Ho - 1) oh1 = g.Ho - 1;
        if (ow1 > g.Wo - 1) ow1 = g.Wo - 1;
        A s = 0;
        for (int64_t oh = oh0; oh <= oh1; oh++)
            for (int64_t ow = ow0; ow <= ow1; ow++) {
                int64_t h0, h1, w0, w1;
                const int64_t div = avg_window(g, oh, ow, &h0, &h1, &w0, &w1);
                if (!div) continue; /* cannot happen for a covering window; kept as the CPU's guard */
                s += dc_load(dyp[oh * g.Wo + ow]) / (A)div;
            }
        dx[i] = dc_store<T>(s);
    }
}

/* Does some output row (column) of a max pool read no input row (column)? Then its window is
 * empty and its index 0 (see max_pool_bwd_kernel). Host side, O(Lo * k). */
static bool pool_dim_has_empty(int64_t Lo, int64_t L, int64_t k, int64_t s, int64_t p, int64_t d)
{
    for (int64_t o = 0; o < Lo; o++) {
        bool any = false;
        for (int64_t kk = 0; kk < k && !any; kk++) {
            const int64_t pos = o * s - p + kk * d;
            any = pos >= 0 && pos < L;
        }
        if (!any) return true;
    }
    return false;
}

/* --- pooling launchers ---------------------------------------------------------------------------- */

template <class T>
static dc_status max_pool_forward(T *y, int64_t *ix, const T *x, const pool_geom &g, int64_t n, cudaStream_t stream)
{
    max_pool_fwd_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(y, ix, x, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status max_pool_backward(T *dx, const T *dy, const int64_t *ix, const pool_geom &g, int any_empty, int64_t n,
                                   cudaStream_t stream)
{
    max_pool_bwd_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(dx, dy, ix, g, any_empty, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status avg_pool_forward(T *y, const T *x, const pool_geom &g, int64_t n, cudaStream_t stream)
{
    avg_pool_fwd_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(y, x, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status avg_pool_backward(T *dx, const T *dy, const pool_geom &g, int64_t n, cudaStream_t stream)
{
    avg_pool_bwd_kernel<T><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(dx, dy, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* --- pooling table entries ------------------------------------------------------------------------ */

/* DC_OP_MAX_POOL2D: t0 y (N, C, Ho, Wo), t1 indices (int64, same shape), t2 x (N, C, H, W). */
static dc_status k_max_pool2d(const dc_kargs *a)
{
    const dc_dtype dt = a->t[2].dtype;
    DC_TRY(need_operand(a, 0, dt, 4));
    DC_TRY(need_operand(a, 1, DC_INT64, 4));
    DC_TRY(need_operand(a, 2, dt, 4));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[2], &a->t[0], &g));
    for (int d = 0; d < 4; d++)
        if (a->t[1].shape[d] != a->t[0].shape[d])
            return dc_error(DC_ERR_INTERNAL, "cuda max_pool2d: indices shape differs from the output's");
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, "max_pool2d", [&](auto tag) {
        typedef decltype(tag) T;
        return max_pool_forward<T>((T *)a->t[0].data, (int64_t *)a->t[1].data, (const T *)a->t[2].data, g, n,
                                   dc_cuda_stream());
    });
}

/* DC_OP_MAX_POOL2D_BWD: t0 dx (N, C, H, W, written whole), t1 dy (N, C, Ho, Wo), t2 indices. The
 * CPU rejects out-of-range indices (DC_ERR_INDEX); checking here would need a device -> host
 * read, so an index no window of its plane can hold is ignored (the forward never makes one). */
static dc_status k_max_pool2d_bwd(const dc_kargs *a)
{
    const dc_dtype dt = a->t[0].dtype;
    DC_TRY(need_operand(a, 0, dt, 4));
    DC_TRY(need_operand(a, 1, dt, 4));
    DC_TRY(need_operand(a, 2, DC_INT64, 4));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[0], &a->t[1], &g));
    for (int d = 0; d < 4; d++)
        if (a->t[2].shape[d] != a->t[1].shape[d])
            return dc_error(DC_ERR_INTERNAL, "cuda max_pool2d_backward: indices shape differs from dy's");
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    const int any_empty =
        pool_dim_has_empty(g.Ho, g.H, g.kh, g.sh, g.ph, g.dh) || pool_dim_has_empty(g.Wo, g.W, g.kw, g.sw, g.pw, g.dw);
    return dc_dispatch<CONV_DTYPES>(dt, "max_pool2d_backward", [&](auto tag) {
        typedef decltype(tag) T;
        return max_pool_backward<T>((T *)a->t[0].data, (const T *)a->t[1].data, (const int64_t *)a->t[2].data, g,
                                    any_empty, n, dc_cuda_stream());
    });
}

/* DC_OP_AVG_POOL2D: t0 y (N, C, Ho, Wo) = window means of t1 x (N, C, H, W). */
static dc_status k_avg_pool2d(const dc_kargs *a)
{
    const dc_dtype dt = a->t[0].dtype;
    DC_TRY(need_operand(a, 0, dt, 4));
    DC_TRY(need_operand(a, 1, dt, 4));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[1], &a->t[0], &g));
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, "avg_pool2d", [&](auto tag) {
        typedef decltype(tag) T;
        return avg_pool_forward<T>((T *)a->t[0].data, (const T *)a->t[1].data, g, n, dc_cuda_stream());
    });
}

/* DC_OP_AVG_POOL2D_BWD: t0 dx (N, C, H, W, written whole), t1 dy (N, C, Ho, Wo). */
static dc_status k_avg_pool2d_bwd(const dc_kargs *a)
{
    const dc_dtype dt = a->t[0].dtype;
    DC_TRY(need_operand(a, 0, dt, 4));
    DC_TRY(need_operand(a, 1, dt, 4));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[0], &a->t[1], &g));
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    return dc_dispatch<CONV_DTYPES>(dt, "avg_pool2d_backward", [&](auto tag) {
        typedef decltype(tag) T;
        return avg_pool_backward<T>((T *)a->t[0].data, (const T *)a->t[1].data, g, n, dc_cuda_stream());
    });
}

/* The convolution plan cache's counts (zeros before the first convolution). */
extern "C" void dc_cuda_conv_cache_stats(dc_plan_cache_stats *s)
{
    std::lock_guard<std::mutex> lock(g_plan_mu);
    if (g_plans)
        dc_plan_cache_get_stats(g_plans, s);
    else
        *s = dc_plan_cache_stats{ PLAN_CACHE, 0, 0, 0, 0 };
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_conv(dc_kernel_fn *k)
{
    k[DC_OP_CONV2D] = k_conv2d;
    k[DC_OP_CONV2D_BWD_INPUT] = k_conv2d_bwd_input;
    k[DC_OP_CONV_TRANSPOSE2D] = k_conv2d_bwd_input;
    k[DC_OP_CONV2D_BWD_WEIGHT] = k_conv2d_bwd_weight;
    k[DC_OP_MAX_POOL2D] = k_max_pool2d;
    k[DC_OP_MAX_POOL2D_BWD] = k_max_pool2d_bwd;
    k[DC_OP_AVG_POOL2D] = k_avg_pool2d;
    k[DC_OP_AVG_POOL2D_BWD] = k_avg_pool2d_bwd;
}
