/* nn.cu: the CUDA kernels of the SOFTMAX and NORM families of ops.def: softmax / log-softmax along
 * any dim (forward and backward), the fused attention softmax (scale + causal mask + softmax) and
 * layer norm over the last dim, each forward next to its backward. Batch norm (the rest of NORM)
 * lives in batchnorm.cu; dc_cuda_register_nn registers it through dc_cuda_register_batchnorm.
 *
 * The reference is csrc/cpu/nn.c: same formulas in the same order, same outputs written, same NaN /
 * inf behaviour (a row holding a NaN or a +inf, or only -inf, comes out all NaN, as on the CPU). The
 * CPU takes float32 and float64; here bfloat16 and float16 are accepted too (as in elementwise.cu)
 * and compute in float, rounding once on store. Accumulation: softmax and layer norm sums in float
 * (double for float64): the rows are reduced as warp/block trees, so float holds the CPU's
 * double-sum accuracy to ~1e-7 without float64 conversions in the hottest kernels.
 *
 * Row kernels (softmax, attention, layer norm forward) give each row a group of G threads: a part
 * of a warp (G = 8) or a warp for short rows, a whole block (256 or 1024 threads) for long ones
 * (vocab-size rows of 50k). Rows whose elements are contiguous in every operand are read with
 * 16-byte vector loads when aligned; softmax along a strided dim uses a tiled kernel that keeps 32
 * neighbouring rows in one warp, so its loads coalesce whenever the dims after `dim` are dense.
 * Softmax finds max and sum in one online pass (the sum is rescaled when the max grows) and writes
 * in a second.
 *
 * Every reduction is deterministic: shuffle trees and fixed-order partial sums, grid shapes that
 * depend only on the tensor shapes, no floating-point atomics. layer norm's dw/db go through
 * per-block partials in scratch memory and a second pass. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "common.cuh"

void dc_cuda_register_batchnorm(dc_kernel_fn *k); /* batchnorm.cu: BATCHNORM, BATCHNORM_BWD */

/* Dtypes every kernel here accepts; -DDC_CUDA_NN_DTYPES=... narrows it (e.g. to the CPU's two). */
#ifndef DC_CUDA_NN_DTYPES
#define DC_CUDA_NN_DTYPES \
    (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))
#endif

/* --- small device helpers ------------------------------------------------------------------- */

template <class T> using acc_t = typename dc_acc<T>::type; /* float, or double for float64 */

/* exp / log / sqrt in the compute type (CUDA's libm, not fast-math: expf is within 2 ulp, like the
 * CPU's polynomial). */
struct dm {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
    static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
};

/* Sum over the G threads of a row group: a butterfly within G lanes, or the whole block (G > 32,
 * blockDim.x == G). */
template <int G, class A> __device__ __forceinline__ A group_sum(A v, A *red)
{
    if constexpr (G <= 32) {
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, G);
        return v;
    } else {
        return dc_block_sum(v, red);
    }
}

/* Online softmax state (max m, sum s of exp(x - m)) merged with another. m is never NaN (maxima
 * are taken with `>`, which skips NaN, from -inf); a factor is 1 when the maxima are equal, so two
 * all--inf partials stay (-inf, 0) instead of turning into NaN, while a NaN in s survives (NaN * 0). */
template <class A> __device__ __forceinline__ void ms_merge(A &m, A &s, A m2, A s2)
{
    const A mn = m2 > m ? m2 : m;
    s = s * (m == mn ? A(1) : dm::exp(m - mn)) + s2 * (m2 == mn ? A(1) : dm::exp(m2 - mn));
    m = mn;
}

/* ms_merge across a row group. The merge is symmetric bit for bit, so every lane ends equal. */
template <int G, class A> __device__ __forceinline__ void group_max_sum(A &m, A &s, A *red_m, A *red_s)
{
    if constexpr (G <= 32) {
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) {
            const A m2 = __shfl_xor_sync(0xffffffffu, m, o, G), s2 = __shfl_xor_sync(0xffffffffu, s, o, G);
            ms_merge(m, s, m2, s2);
        }
    } else {
        group_max_sum<32>(m, s, red_m, red_s);
        if ((threadIdx.x & 31) == 0) {
            red_m[threadIdx.x >> 5] = m;
            red_s[threadIdx.x >> 5] = s;
        }
        __syncthreads();
        m = red_m[0], s = red_s[0];
        for (int k = 1; k < G / 32; k++) ms_merge(m, s, red_m[k], red_s[k]);
        __syncthreads();
    }
}

/* Offsets of row r in each operand; rows enumerate the dims other than the reduced one, row-major. */
template <int N> __device__ __forceinline__ void row_offsets(const dc_geom<N> &g, int64_t r, int64_t off[N])
{
    if (g.ndim == 1) {
#pragma unroll
        for (int k = 0; k < N; k++) off[k] = r * g.st[k][0];
    } else {
        dc_geom_offsets<N, false>(g, r, off);
    }
}

/* ================================ softmax / attention softmax ================================ */

enum { SM_SOFTMAX = 0, SM_LOG = 1, SM_ATTN = 2 };

/* Keys row `row` sees: all L, or with the causal mask the first min(L, i + 1), i = row % Tq
 * (torch's is_causal, top-left aligned). Never 0 for L >= 1. */
__device__ __forceinline__ int64_t attn_keys(int64_t row, int64_t L, int64_t Tq, int causal)
{
    if (!causal) return L;
    const int64_t i = row % Tq;
    return i + 1 < L ? i + 1 : L;
}

/* y = softmax(x) / log_softmax(x) / attention softmax(scale * x) with keys >= n zero, for rows
 * whose elements are contiguous in y and x. y, x: rows of L (offsets from g); G threads per row. */
template <class T, int G, bool Vec>
__global__ void __launch_bounds__(G > 256 ? G : 256)
    softmax_rows_kernel(T *__restrict__ y, const T *__restrict__ x, dc_geom<2> g, int64_t rows, int64_t L, int mode,
                        acc_t<T> scale, int64_t Tq, int causal)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1;
    __shared__ A red_m[32], red_s[32];
    const int lane = G <= 32 ? threadIdx.x % G : threadIdx.x;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
    const bool valid = row < rows;
    /* Invalid rows (the tail of the last block) run no iterations but still join the shuffles. */
    const int64_t len = valid ? L : 0;
    const int64_t n = mode == SM_ATTN && valid ? attn_keys(row, L, Tq, causal) : len;
    int64_t off[2] = { 0, 0 };
    if (valid) row_offsets<2>(g, row, off);
    T *yr = y + off[0];
    const T *xr = x + off[1];
    const bool scaled = mode == SM_ATTN;

    /* pass 1: max and sum of exp(z - max) in one read; masked keys count as -inf (they add 0) */
    A m = -INFINITY, s = 0;
    for (int64_t j0 = (int64_t)lane * V; j0 < n; j0 += (int64_t)G * V) {
        A z[V];
        dc_load_vals<T, V>(xr + j0, z);
        A pm = -INFINITY;
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (scaled) z[k] = scale * z[k];
            if (j0 + k >= n) z[k] = -INFINITY;
            pm = z[k] > pm ? z[k] : pm;
        }
        if (pm > m) {
            s *= dm::exp(m - pm);
            m = pm;
        }
#pragma unroll
        for (int k = 0; k < V; k++) s += z[k] == -INFINITY ? A(0) : dm::exp(z[k] - m);
    }
    group_max_sum<G>(m, s, red_m, red_s);

    /* pass 2: write; the CPU's formulas (an all--inf row gives exp(-inf - -inf) = NaN there too) */
    const A inv = A(1) / s, lse = m + dm::log(s);
    for (int64_t j0 = (int64_t)lane * V; j0 < len; j0 += (int64_t)G * V) {
        A o[V];
        if (j0 < n) {
            dc_load_vals<T, V>(xr + j0, o);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const A z = scaled ? scale * o[k] : o[k];
                o[k] = j0 + k >= n ? A(0) : mode == SM_LOG ? z - lse : dm::exp(z - m) * inv;
            }
        } else { /* a fully masked vector: no read */
#pragma unroll
            for (int k = 0; k < V; k++) o[k] = 0;
        }
        dc_store_vals<T, V>(yr + j0, o);
    }
}

/* Backward of the above: dx = y * (dy - sum(dy * y)); log: dx = dy - exp(y) * sum(dy);
 * attention: dx = scale * y * (dy - sum over the first n of dy * y), masked keys 0. */
template <class T, int G, bool Vec>
__global__ void __launch_bounds__(G > 256 ? G : 256)
    softmax_bwd_rows_kernel(T *__restrict__ dx, const T *__restrict__ dy, const T *__restrict__ y, dc_geom<3> g,
                            int64_t rows, int64_t L, int mode, acc_t<T> scale, int64_t Tq, int causal)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1;
    __shared__ A red[32];
    const int lane = G <= 32 ? threadIdx.x % G : threadIdx.x;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
    const bool valid = row < rows;
    const int64_t len = valid ? L : 0;
    const int64_t n = mode == SM_ATTN && valid ? attn_keys(row, L, Tq, causal) : len;
    int64_t off[3] = { 0, 0, 0 };
    if (valid) row_offsets<3>(g, row, off);
    T *dxr = dx + off[0];
    const T *dyr = dy + off[1], *yr = y + off[2];

    A s = 0;
    for (int64_t j0 = (int64_t)lane * V; j0 < n; j0 += (int64_t)G * V) {
        A d[V], yv[V];
        dc_load_vals<T, V>(dyr + j0, d);
        if (mode != SM_LOG) dc_load_vals<T, V>(yr + j0, yv);
#pragma unroll
        for (int k = 0; k < V; k++)
            if (j0 + k < n) s += mode == SM_LOG ? d[k] : d[k] * yv[k];
    }
    const A ts = group_sum<G>(s, red);

    for (int64_t j0 = (int64_t)lane * V; j0 < len; j0 += (int64_t)G * V) {
        A o[V];
        if (j0 < n) {
            A d[V];
            dc_load_vals<T, V>(dyr + j0, d);
            dc_load_vals<T, V>(yr + j0, o);
#pragma unroll
            for (int k = 0; k < V; k++) {
                if (mode == SM_SOFTMAX)
                    o[k] = o[k] * (d[k] - ts);
                else if (mode == SM_LOG)
                    o[k] = d[k] - dm::exp(o[k]) * ts;
                else
                    o[k] = j0 + k < n ? scale * o[k] * (d[k] - ts) : A(0);
            }
        } else {
#pragma unroll
            for (int k = 0; k < V; k++) o[k] = 0;
        }
        dc_store_vals<T, V>(dxr + j0, o);
    }
}

/* Softmax along a dim that is strided in some operand. Block (32, BY): threadIdx.x picks one of 32
 * consecutive rows (neighbours in memory when the dims after `dim` are dense, so each warp load
 * coalesces), threadIdx.y splits the row's L elements; the BY partial states merge in y order. */
template <class T>
__global__ void __launch_bounds__(512) softmax_strided_kernel(T *__restrict__ y, const T *__restrict__ x, dc_geom<2> g,
                                                              int64_t rows, int64_t L, int64_t ys, int64_t xs, int mode)
{
    typedef acc_t<T> A;
    __shared__ A sm_m[16][32], sm_s[16][32];
    const int tx = threadIdx.x, ty = threadIdx.y, by = blockDim.y;
    const int64_t row = (int64_t)blockIdx.x * 32 + tx;
    const bool valid = row < rows;
    int64_t off[2] = { 0, 0 };
    if (valid) row_offsets<2>(g, row, off);
    const int64_t len = valid ? L : 0;
    A m = -INFINITY, s = 0;
    for (int64_t j = ty; j < len; j += by) {
        const A z = dc_load(x[off[1] + j * xs]);
        if (z > m) {
            s *= dm::exp(m - z);
            m = z;
        }
        s += z == -INFINITY ? A(0) : dm::exp(z - m);
    }
    sm_m[ty][tx] = m;
    sm_s[ty][tx] = s;
    __syncthreads();
    if (ty == 0) {
        for (int k = 1; k < by; k++) ms_merge(m, s, sm_m[k][tx], sm_s[k][tx]);
        sm_m[0][tx] = m;
        sm_s[0][tx] = s;
    }
    __syncthreads();
    m = sm_m[0][tx], s = sm_s[0][tx];
    const A inv = A(1) / s, lse = m + dm::log(s);
    for (int64_t j = ty; j < len; j += by) {
        const A z = dc_load(x[off[1] + j * xs]);
        y[off[0] + j * ys] = dc_store<T>(mode == SM_LOG ? z - lse : dm::exp(z - m) * inv);
    }
}

template <class T>
__global__ void __launch_bounds__(512)
    softmax_bwd_strided_kernel(T *__restrict__ dx, const T *__restrict__ dy, const T *__restrict__ y, dc_geom<3> g,
                               int64_t rows, int64_t L, int64_t s0, int64_t s1, int64_t s2, int mode)
{
    typedef acc_t<T> A;
    __shared__ A sm[16][32];
    const int tx = threadIdx.x, ty = threadIdx.y, by = blockDim.y;
    const int64_t row = (int64_t)blockIdx.x * 32 + tx;
    const bool valid = row < rows;
    int64_t off[3] = { 0, 0, 0 };
    if (valid) row_offsets<3>(g, row, off);
    const int64_t len = valid ? L : 0;
    A s = 0;
    for (int64_t j = ty; j < len; j += by) {
        const A d = dc_load(dy[off[1] + j * s1]);
        s += mode == SM_LOG ? d : d * dc_load(y[off[2] + j * s2]);
    }
    sm[ty][tx] = s;
    __syncthreads();
    if (ty == 0) {
        for (int k = 1; k < by; k++) s += sm[k][tx];
        sm[0][tx] = s;
    }
    __syncthreads();
    const A ts = sm[0][tx];
    for (int64_t j = ty; j < len; j += by) {
        const A d = dc_load(dy[off[1] + j * s1]), yv = dc_load(y[off[2] + j * s2]);
        dx[off[0] + j * s0] = dc_store<T>(mode == SM_LOG ? d - dm::exp(yv) * ts : yv * (d - ts));
    }
}

/* --- softmax launchers ----------------------------------------------------------------------- */

/* Threads per row: 8 for rows up to 128, a warp up to 2048, a block beyond. */
static int row_group(int64_t L)
{
    return L <= 128 ? 8 : L <= 2048 ? 32 : L <= 8192 ? 256 : 1024;
}

/* Blocks and threads for `rows` rows with G threads each (256-thread blocks for G <= 32). */
static dc_status row_launch_dims(int64_t rows, int G, unsigned *blocks, unsigned *threads)
{
    const int64_t per = G <= 32 ? 256 / G : 1;
    const int64_t b = (rows + per - 1) / per;
    if (b > 0x7fffffff) return dc_error(DC_ERR_UNSUPPORTED, "cuda nn: %lld rows exceed one launch", (long long)rows);
    *blocks = (unsigned)b;
    *threads = G <= 32 ? 256u : (unsigned)G;
    return DC_OK;
}

/* Calls f(G, Vec) as compile-time constants for the run-time group size (one of row_group's) and
 * vector flag: the instantiations of the row kernels. */
template <bool Vec, class F> static void with_group_v(int G, F &f)
{
    typedef std::integral_constant<bool, Vec> V;
    switch (G) {
    case 8: f(std::integral_constant<int, 8>(), V()); break;
    case 32: f(std::integral_constant<int, 32>(), V()); break;
    case 256: f(std::integral_constant<int, 256>(), V()); break;
    default: f(std::integral_constant<int, 1024>(), V()); break;
    }
}
template <class F> static void with_group(int G, bool vec, F &&f)
{
    if (vec)
        with_group_v<true>(G, f);
    else
        with_group_v<false>(G, f);
}

template <class T>
static dc_status softmax_rows_launch(T *y, const T *x, const dc_geom<2> &g, int64_t rows, int64_t L, int mode,
                                     acc_t<T> scale, int64_t Tq, int causal, bool vec, cudaStream_t stream)
{
    const int G = row_group(L);
    unsigned nb = 0, nt = 0;
    DC_TRY(row_launch_dims(rows, G, &nb, &nt));
    with_group(G, vec, [&](auto gc, auto vc) {
        softmax_rows_kernel<T, decltype(gc)::value, decltype(vc)::value>
            <<<nb, nt, 0, stream>>>(y, x, g, rows, L, mode, scale, Tq, causal);
    });
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status softmax_bwd_rows_launch(T *dx, const T *dy, const T *y, const dc_geom<3> &g, int64_t rows, int64_t L,
                                         int mode, acc_t<T> scale, int64_t Tq, int causal, bool vec,
                                         cudaStream_t stream)
{
    const int G = row_group(L);
    unsigned nb = 0, nt = 0;
    DC_TRY(row_launch_dims(rows, G, &nb, &nt));
    with_group(G, vec, [&](auto gc, auto vc) {
        softmax_bwd_rows_kernel<T, decltype(gc)::value, decltype(vc)::value>
            <<<nb, nt, 0, stream>>>(dx, dy, y, g, rows, L, mode, scale, Tq, causal);
    });
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* Rows split over up to 16 threads each in the strided kernels: more for longer rows. */
static unsigned strided_by(int64_t L)
{
    unsigned by = 1;
    while (by < 16 && (int64_t)by * 8 <= L) by *= 2;
    return by;
}

static dc_status strided_blocks(int64_t rows, unsigned *nb)
{
    const int64_t b = (rows + 31) / 32;
    if (b > 0x7fffffff) return dc_error(DC_ERR_UNSUPPORTED, "cuda nn: %lld rows exceed one launch", (long long)rows);
    *nb = (unsigned)b;
    return DC_OK;
}

/* Row geometry of a softmax: contiguous rows (unit stride along dim in every operand) go to the row
 * kernel, with vector loads when every row start is 16-byte aligned and L a whole number of
 * vectors. */
template <int N> struct sm_rows {
    dc_geom<N> g; /* the dims other than `dim`, merged */
    int64_t rows, L, sd[N];
    bool contig, vec;
};

template <int N> static sm_rows<N> sm_rows_of(const dc_kview *const v[N], int dim, size_t esize)
{
    sm_rows<N> r;
    dc_kview w[N];
    const dc_kview *p[N];
    r.L = dim >= 0 ? v[0]->shape[dim] : 1;
    r.contig = true;
    for (int k = 0; k < N; k++) {
        w[k] = *v[k];
        r.sd[k] = dim >= 0 ? v[k]->strides[dim] : 1;
        if (r.sd[k] != 1 && r.L > 1) r.contig = false;
        if (dim >= 0) {
            for (int d = dim; d + 1 < w[k].ndim; d++) {
                w[k].shape[d] = w[k].shape[d + 1];
                w[k].strides[d] = w[k].strides[d + 1];
            }
            w[k].ndim--;
        }
        p[k] = &w[k];
    }
    r.g = geom_make<N>(p);
    r.rows = view_numel(v[0]) / r.L;
    const int64_t V = (int64_t)(16 / esize);
    r.vec = r.contig && r.L % V == 0;
    for (int k = 0; k < N && r.vec; k++) {
        r.vec = dc_aligned16(v[k]->data);
        for (int d = 0; d < r.g.ndim && r.vec; d++) r.vec = r.g.st[k][d] % V == 0;
    }
    return r;
}

template <class T>
static dc_status softmax_forward(T *y, const T *x, const sm_rows<2> &r, int mode, cudaStream_t stream)
{
    if (r.contig) return softmax_rows_launch<T>(y, x, r.g, r.rows, r.L, mode, 1, 1, 0, r.vec, stream);
    unsigned nb = 0;
    DC_TRY(strided_blocks(r.rows, &nb));
    softmax_strided_kernel<T>
        <<<nb, dim3(32, strided_by(r.L)), 0, stream>>>(y, x, r.g, r.rows, r.L, r.sd[0], r.sd[1], mode);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status softmax_backward(T *dx, const T *dy, const T *y, const sm_rows<3> &r, int mode, cudaStream_t stream)
{
    if (r.contig) return softmax_bwd_rows_launch<T>(dx, dy, y, r.g, r.rows, r.L, mode, 1, 1, 0, r.vec, stream);
    unsigned nb = 0;
    DC_TRY(strided_blocks(r.rows, &nb));
    softmax_bwd_strided_kernel<T>
        <<<nb, dim3(32, strided_by(r.L)), 0, stream>>>(dx, dy, y, r.g, r.rows, r.L, r.sd[0], r.sd[1], r.sd[2], mode);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* --- softmax table entries --------------------------------------------------------------------- */

/* DC_ERR_UNSUPPORTED naming op and dtype unless dt is one of this file's dtypes. */
static dc_status nn_dtype(dc_op op, dc_dtype dt)
{
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, dc_op_names[op], [](auto) { return DC_OK; });
}

/* dim of a softmax: -1 for a 0-d view (one element), else normalised and range-checked as the CPU. */
static dc_status softmax_dim(const dc_kargs *a, const dc_kview *v, int *dim)
{
    int64_t d = a->p.dim.dim;
    if (v->ndim == 0) {
        *dim = -1;
        return DC_OK;
    }
    if (d < 0) d += v->ndim;
    if (d < 0 || d >= v->ndim)
        return dc_error(DC_ERR_SHAPE, "%s: dim %lld out of range for %d-d input", dc_op_names[a->op],
                        (long long)a->p.dim.dim, v->ndim);
    *dim = (int)d;
    return DC_OK;
}

/* N == 2: DC_OP_SOFTMAX, DC_OP_LOG_SOFTMAX: t0 y = f(t1 x) along p.dim.
 * N == 3: DC_OP_SOFTMAX_BWD, DC_OP_LOG_SOFTMAX_BWD: t0 dx, t1 dy, t2 y (the forward's output).
 * Any strides (dy may be a stride-0 broadcast), one shape, one dtype. */
template <int N> static dc_status k_softmax(const dc_kargs *a)
{
    const char *op = dc_op_names[a->op];
    if (a->nt < N) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want %d", op, a->nt, N);
    const dc_kview *v[N];
    for (int k = 0; k < N; k++) v[k] = &a->t[k];
    const dc_dtype dt = v[N == 2 ? 1 : 0]->dtype; /* x, or dx: the CPU's first check */
    DC_TRY(nn_dtype(a->op, dt));
    DC_TRY(dc_check_operands(a, (1u << N) - 1u, dt, false));
    DC_TRY(check_same_shape(op, N, v));
    if (view_numel(v[0]) == 0) return DC_OK;
    int dim = -1;
    DC_TRY(softmax_dim(a, v[0], &dim));
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const int mode = a->op == DC_OP_LOG_SOFTMAX || a->op == DC_OP_LOG_SOFTMAX_BWD ? SM_LOG : SM_SOFTMAX;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, op, [&](auto tag) {
        typedef decltype(tag) T;
        const sm_rows<N> r = sm_rows_of<N>(v, dim, sizeof(T));
        if constexpr (N == 2)
            return softmax_forward<T>((T *)v[0]->data, (const T *)v[1]->data, r, mode, stream);
        else
            return softmax_backward<T>((T *)v[0]->data, (const T *)v[1]->data, (const T *)v[2]->data, r, mode, stream);
    });
}

/* Attention operands: n of them, one dtype, one shape, contiguous, at least 1-d. Rows of L = the
 * last dim; query index = row % Tq (Tq = dim -2, 1 for a 1-d view). */
static dc_status attn_operands(const dc_kargs *a, int n, int64_t *rows, int64_t *L, int64_t *Tq)
{
    const char *op = dc_op_names[a->op];
    if (a->nt < n) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want %d", op, a->nt, n);
    const dc_kview *v[3] = { &a->t[0], &a->t[1], n > 2 ? &a->t[2] : &a->t[1] };
    const dc_dtype dt = v[0]->dtype;
    DC_TRY(nn_dtype(a->op, dt));
    DC_TRY(dc_check_operands(a, (1u << n) - 1u, dt, true));
    if (v[0]->ndim < 1) return dc_error(DC_ERR_INTERNAL, "cuda %s: operands must be at least 1-d", op);
    DC_TRY(check_same_shape(op, n, v));
    *L = v[0]->shape[v[0]->ndim - 1];
    *Tq = v[0]->ndim >= 2 ? v[0]->shape[v[0]->ndim - 2] : 1;
    *rows = *L ? view_numel(v[0]) / *L : 0;
    return DC_OK;
}

/* Contiguous (rows, L) as a row geometry: row r at r * L in every operand. */
template <int N> static dc_geom<N> attn_geom(int64_t rows, int64_t L)
{
    dc_geom<N> g;
    memset(&g, 0, sizeof g);
    g.ndim = 1;
    g.shape[0] = rows;
    for (int k = 0; k < N; k++) g.st[k][0] = L;
    return g;
}

/* N == 2: DC_OP_ATTN_SOFTMAX: t0 (..., Tq, L) = softmax(scale * t1) over the last dim, keys j > i of
 * query row i masked to 0 when causal. N == 3: DC_OP_ATTN_SOFTMAX_BWD: t0 dx, t1 dy, t2 y;
 * dx = scale * y * (dy - sum(dy * y)), masked keys 0. */
template <int N> static dc_status k_attn_softmax(const dc_kargs *a)
{
    int64_t rows = 0, L = 0, Tq = 1;
    DC_TRY(attn_operands(a, N, &rows, &L, &Tq));
    if (rows == 0 || L == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    const int causal = a->p.attn.causal != 0;
    return dc_dispatch<DC_CUDA_NN_DTYPES>(a->t[0].dtype, dc_op_names[a->op], [&](auto tag) {
        typedef decltype(tag) T;
        const acc_t<T> scale = (acc_t<T>)a->p.attn.scale;
        bool vec = L % (int64_t)(16 / sizeof(T)) == 0;
        for (int k = 0; k < N; k++) vec = vec && dc_aligned16(a->t[k].data);
        const dc_geom<N> g = attn_geom<N>(rows, L);
        if constexpr (N == 2)
            return softmax_rows_launch<T>((T *)a->t[0].data, (const T *)a->t[1].data, g, rows, L, SM_ATTN, scale, Tq,
                                          causal, vec, stream);
        else
            return softmax_bwd_rows_launch<T>((T *)a->t[0].data, (const T *)a->t[1].data, (const T *)a->t[2].data, g,
                                              rows, L, SM_ATTN, scale, Tq, causal, vec, stream);
    });
}

/* ================================ layer norm ================================================= */

/* y (N, D) = (x - mean) * rstd * w + b per row; mean, rstd (N,) in x's dtype. Two passes for the
 * statistics (the sum, then squared deviations from the mean: no cancellation when |mean| >> std,
 * as the CPU), the second and the write re-reading the row from L1. */
template <class T, int G, bool Vec>
__global__ void __launch_bounds__(G > 256 ? G : 256)
    layernorm_forward_kernel(T *__restrict__ y, T *__restrict__ mean, T *__restrict__ rstd, const T *__restrict__ x,
                             const T *__restrict__ w, const T *__restrict__ b, int64_t N, int64_t D, acc_t<T> eps)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1;
    __shared__ A red[32];
    const int lane = G <= 32 ? threadIdx.x % G : threadIdx.x;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
    const bool valid = row < N;
    const int64_t len = valid ? D : 0;
    const T *xr = x + (valid ? row * D : 0);
    T *yr = y + (valid ? row * D : 0);

    A s = 0;
    for (int64_t j0 = (int64_t)lane * V; j0 < len; j0 += (int64_t)G * V) {
        A v[V];
        dc_load_vals<T, V>(xr + j0, v);
#pragma unroll
        for (int k = 0; k < V; k++) s += v[k];
    }
    const A mu = group_sum<G>(s, red) / (A)D;
    A q = 0;
    for (int64_t j0 = (int64_t)lane * V; j0 < len; j0 += (int64_t)G * V) {
        A v[V];
        dc_load_vals<T, V>(xr + j0, v);
#pragma unroll
        for (int k = 0; k < V; k++) {
            const A d = v[k] - mu;
            q += d * d;
        }
    }
    const A rs = A(1) / dm::sqrt(group_sum<G>(q, red) / (A)D + eps);
    if (valid && lane == 0) {
        mean[row] = dc_store<T>(mu);
        rstd[row] = dc_store<T>(rs);
    }
    const A m = dc_round_to<T>(mu), r = dc_round_to<T>(rs); /* the stored statistics, as the backward sees them */
    for (int64_t j0 = (int64_t)lane * V; j0 < len; j0 += (int64_t)G * V) {
        A v[V], wv[V], bv[V];
        dc_load_vals<T, V>(xr + j0, v);
        if (w) dc_load_vals<T, V>(w + j0, wv);
        if (b) dc_load_vals<T, V>(b + j0, bv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            A t = (v[k] - m) * r;
            if (w) t = t * wv[k];
            if (b) t = t + bv[k];
            v[k] = t;
        }
        dc_store_vals<T, V>(yr + j0, v);
    }
}

template <class T>
static dc_status layernorm_forward(T *y, T *mean, T *rstd, const T *x, const T *w, const T *b, int64_t N, int64_t D,
                                   double eps, bool vec, cudaStream_t stream)
{
    const int G = row_group(D);
    unsigned nb = 0, nt = 0;
    DC_TRY(row_launch_dims(N, G, &nb, &nt));
    const acc_t<T> e = (acc_t<T>)eps;
    with_group(G, vec, [&](auto gc, auto vc) {
        layernorm_forward_kernel<T, decltype(gc)::value, decltype(vc)::value>
            <<<nb, nt, 0, stream>>>(y, mean, rstd, x, w, b, N, D, e);
    });
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* Backward over a chunk of rc rows per block. Phase 1, a warp per row: the row sums dx needs,
 * mean(g) and mean(g * xhat) with g = dy * w. Phase 2, each thread owning V columns: dx for every
 * row of the chunk and the chunk's dw/db partials for its columns, summed in row order in
 * registers, written to part (G_blocks, nparts * D: dw first when has_w, then db). The rows are read
 * twice; the second time from L1/L2 (a chunk is rc * D elements of dy and x). */
#define LN_MAX_RC 32

template <class T, bool Vec>
__global__ void __launch_bounds__(256)
    layernorm_backward_kernel(T *__restrict__ dx, acc_t<T> *__restrict__ part, const T *__restrict__ dy,
                              const T *__restrict__ x, const T *__restrict__ mean, const T *__restrict__ rstd,
                              const T *__restrict__ w, int64_t N, int64_t D, int rc, int has_w, int has_b)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1;
    __shared__ A s_m[LN_MAX_RC], s_r[LN_MAX_RC], s_mg[LN_MAX_RC], s_mgx[LN_MAX_RC];
    const int64_t n0 = (int64_t)blockIdx.x * rc;
    const int nr = (int)(N - n0 < rc ? N - n0 : rc);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const A invD = A(1) / (A)D;

    for (int i = warp; i < nr; i += nw) { /* uniform per warp: the whole warp shuffles */
        const int64_t n = n0 + i;
        const A m = dc_load(mean[n]), r = dc_load(rstd[n]);
        const T *dyr = dy + n * D, *xr = x + n * D;
        A sg = 0, sgx = 0;
        for (int64_t j0 = (int64_t)lane * V; j0 < D; j0 += 32 * V) {
            A g[V], xv[V], wv[V];
            dc_load_vals<T, V>(dyr + j0, g);
            dc_load_vals<T, V>(xr + j0, xv);
            if (has_w) dc_load_vals<T, V>(w + j0, wv);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const A gk = has_w ? g[k] * wv[k] : g[k], xh = (xv[k] - m) * r;
                sg += gk;
                sgx += gk * xh;
            }
        }
        sg = dc_warp_sum(sg);
        sgx = dc_warp_sum(sgx);
        if (lane == 0) {
            s_m[i] = m, s_r[i] = r;
            s_mg[i] = sg * invD, s_mgx[i] = sgx * invD;
        }
    }
    __syncthreads();

    const int64_t np = (int64_t)(has_w + has_b) * D;
    A *pp = part ? part + (int64_t)blockIdx.x * np : nullptr;
    for (int64_t j0 = (int64_t)threadIdx.x * V; j0 < D; j0 += (int64_t)blockDim.x * V) {
        A pw[V], pb[V], wv[V];
#pragma unroll
        for (int k = 0; k < V; k++) pw[k] = 0, pb[k] = 0, wv[k] = 1;
        if (has_w) dc_load_vals<T, V>(w + j0, wv);
        for (int i = 0; i < nr; i++) {
            const int64_t n = n0 + i;
            const A m = s_m[i], r = s_r[i], mg = s_mg[i], mgx = s_mgx[i];
            A d[V], v[V];
            dc_load_vals<T, V>(dy + n * D + j0, d);
            dc_load_vals<T, V>(x + n * D + j0, v);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const A xh = (v[k] - m) * r, gk = has_w ? d[k] * wv[k] : d[k];
                v[k] = r * (gk - mg - xh * mgx);
                pw[k] += d[k] * xh;
                pb[k] += d[k];
            }
            dc_store_vals<T, V>(dx + n * D + j0, v);
        }
        if (pp) {
#pragma unroll
            for (int k = 0; k < V; k++) {
                if (has_w) pp[j0 + k] = pw[k];
                if (has_b) pp[(has_w ? D : 0) + j0 + k] = pb[k];
            }
        }
    }
}

/* dw, db (D) = the sums over nblk partial rows of part (nblk, ncols = nparts * D), in row order:
 * thread (x, y) sums rows y, y + 32, ... of column x, then y = 0 adds the 32 in order. */
template <class T>
__global__ void __launch_bounds__(1024)
    layernorm_dwdb_kernel(T *__restrict__ dw, T *__restrict__ db, const acc_t<T> *__restrict__ part, int64_t nblk,
                          int64_t D, int has_w, int has_b)
{
    typedef acc_t<T> A;
    __shared__ A sm[32][33];
    const int64_t ncols = (int64_t)(has_w + has_b) * D;
    const int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
    A s = 0;
    if (j < ncols)
        for (int64_t r = threadIdx.y; r < nblk; r += 32) s += part[r * ncols + j];
    sm[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || j >= ncols) return;
    for (int k = 1; k < 32; k++) s += sm[k][threadIdx.x];
    if (has_w && j < D)
        dw[j] = dc_store<T>(s);
    else
        db[j - (has_w ? D : 0)] = dc_store<T>(s);
}

template <class T>
static dc_status layernorm_backward(T *dx, T *dw, T *db, const T *dy, const T *x, const T *mean, const T *rstd,
                                    const T *w, int64_t N, int64_t D, int has_w, int has_b, bool vec,
                                    cudaStream_t stream)
{
    const int rc = D >= 128 ? 16 : LN_MAX_RC;
    const int64_t nblk = (N + rc - 1) / rc;
    if (nblk > 0x7fffffff) return dc_error(DC_ERR_UNSUPPORTED, "cuda layer_norm_backward: %lld rows", (long long)N);
    const int64_t np = (int64_t)(has_w + has_b) * D;
    acc_t<T> *part = NULL;
    DC_TRY(dc_cuda_scratch((size_t)(nblk * np) * sizeof(acc_t<T>), (void **)&part));
    const unsigned nt = D >= 512 ? 256 : 128;
    if (vec)
        layernorm_backward_kernel<T, true>
            <<<(unsigned)nblk, nt, 0, stream>>>(dx, part, dy, x, mean, rstd, w, N, D, rc, has_w, has_b);
    else
        layernorm_backward_kernel<T, false>
            <<<(unsigned)nblk, nt, 0, stream>>>(dx, part, dy, x, mean, rstd, w, N, D, rc, has_w, has_b);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && np) {
        layernorm_dwdb_kernel<T>
            <<<(unsigned)((np + 31) / 32), dim3(32, 32), 0, stream>>>(dw, db, part, nblk, D, has_w, has_b);
        e = cudaGetLastError();
    }
    dc_cuda_scratch_free(part); /* stream-ordered: reused only by later work on this stream */
    DC_CUDA_TRY(e);
    return DC_OK;
}

/* --- layer norm table entries ------------------------------------------------------------------ */

/* x's rows: D = last dim (1 for 0-d), N = numel / D. */
static void ln_dims(const dc_kview *x, int64_t *N, int64_t *D)
{
    *D = x->ndim ? x->shape[x->ndim - 1] : 1;
    *N = *D ? view_numel(x) / *D : 0;
}

/* DC_OP_LAYERNORM: t0 y, t1 mean (N,), t2 rstd (N,), t3 x (N, D), t4 w (D,) if has_w, t5 b if has_b;
 * every operand contiguous and of x's dtype. */
static dc_status k_layernorm(const dc_kargs *a)
{
    const struct dc_layernorm_params *lp = &a->p.layernorm;
    if (a->nt < 4) return dc_error(DC_ERR_INTERNAL, "cuda layer_norm: %d operands, want 6", a->nt);
    const dc_dtype dt = a->t[3].dtype;
    DC_TRY(nn_dtype(a->op, dt));
    DC_TRY(dc_check_operands(a, 0x0fu | (lp->has_w ? 0x10u : 0) | (lp->has_b ? 0x20u : 0), dt, true));
    int64_t N = 0, D = 0;
    ln_dims(&a->t[3], &N, &D);
    if (N == 0 || D == 0) return DC_OK;
    if (view_numel(&a->t[0]) != N * D || view_numel(&a->t[1]) != N || view_numel(&a->t[2]) != N ||
        (lp->has_w && view_numel(&a->t[4]) != D) || (lp->has_b && view_numel(&a->t[5]) != D))
        return dc_error(DC_ERR_INTERNAL, "cuda layer_norm: operand sizes do not match x (%lld, %lld)", (long long)N,
                        (long long)D);
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, "layer_norm", [&](auto tag) {
        typedef decltype(tag) T;
        T *y = (T *)a->t[0].data, *mean = (T *)a->t[1].data, *rstd = (T *)a->t[2].data;
        const T *x = (const T *)a->t[3].data;
        const T *w = lp->has_w ? (const T *)a->t[4].data : NULL, *b = lp->has_b ? (const T *)a->t[5].data : NULL;
        const bool vec = D % (int64_t)(16 / sizeof(T)) == 0 && dc_aligned16(y) && dc_aligned16(x) &&
                         (!w || dc_aligned16(w)) && (!b || dc_aligned16(b));
        return layernorm_forward<T>(y, mean, rstd, x, w, b, N, D, lp->eps, vec, stream);
    });
}

/* DC_OP_LAYERNORM_BWD: t0 dx (N, D), t1 dw (D,) if has_w, t2 db (D,) if has_b, t3 dy, t4 x, t5 mean,
 * t6 rstd, t7 w if has_w; contiguous, x's dtype. N == 0 gives dw = db = 0, as the CPU. */
static dc_status k_layernorm_bwd(const dc_kargs *a)
{
    const struct dc_layernorm_params *lp = &a->p.layernorm;
    const int has_w = lp->has_w != 0, has_b = lp->has_b != 0;
    if (a->nt < 7) return dc_error(DC_ERR_INTERNAL, "cuda layer_norm_backward: %d operands, want 8", a->nt);
    const dc_dtype dt = a->t[4].dtype;
    DC_TRY(nn_dtype(a->op, dt));
    DC_TRY(dc_check_operands(a, 0x79u | (has_w ? 0x82u : 0) | (has_b ? 0x04u : 0), dt, true));
    int64_t N = 0, D = 0;
    ln_dims(&a->t[4], &N, &D);
    if (D == 0) return DC_OK;
    if (view_numel(&a->t[0]) != N * D || view_numel(&a->t[3]) != N * D || view_numel(&a->t[5]) != N ||
        view_numel(&a->t[6]) != N || (has_w && (view_numel(&a->t[1]) != D || view_numel(&a->t[7]) != D)) ||
        (has_b && view_numel(&a->t[2]) != D))
        return dc_error(DC_ERR_INTERNAL, "cuda layer_norm_backward: operand sizes do not match x (%lld, %lld)",
                        (long long)N, (long long)D);
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    if (N == 0) { /* sums over no rows; +0 is all-zero bits in every float dtype */
        const size_t bytes = (size_t)D * dc_dtype_size(dt);
        if (has_w) DC_CUDA_TRY(cudaMemsetAsync(a->t[1].data, 0, bytes, stream));
        if (has_b) DC_CUDA_TRY(cudaMemsetAsync(a->t[2].data, 0, bytes, stream));
        return DC_OK;
    }
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, "layer_norm_backward", [&](auto tag) {
        typedef decltype(tag) T;
        T *dx = (T *)a->t[0].data;
        T *dw = has_w ? (T *)a->t[1].data : NULL, *db = has_b ? (T *)a->t[2].data : NULL;
        const T *dy = (const T *)a->t[3].data, *x = (const T *)a->t[4].data;
        const T *mean = (const T *)a->t[5].data, *rstd = (const T *)a->t[6].data;
        const T *w = has_w ? (const T *)a->t[7].data : NULL;
        const bool vec = D % (int64_t)(16 / sizeof(T)) == 0 && dc_aligned16(dx) && dc_aligned16(dy) &&
                         dc_aligned16(x) && (!w || dc_aligned16(w));
        return layernorm_backward<T>(dx, dw, db, dy, x, mean, rstd, w, N, D, has_w, has_b, vec, stream);
    });
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_nn(dc_kernel_fn *k)
{
    k[DC_OP_SOFTMAX] = k_softmax<2>;
    k[DC_OP_LOG_SOFTMAX] = k_softmax<2>;
    k[DC_OP_SOFTMAX_BWD] = k_softmax<3>;
    k[DC_OP_LOG_SOFTMAX_BWD] = k_softmax<3>;
    k[DC_OP_ATTN_SOFTMAX] = k_attn_softmax<2>;
    k[DC_OP_ATTN_SOFTMAX_BWD] = k_attn_softmax<3>;
    k[DC_OP_LAYERNORM] = k_layernorm;
    k[DC_OP_LAYERNORM_BWD] = k_layernorm_bwd;
    dc_cuda_register_batchnorm(k);
}
