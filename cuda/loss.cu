/* loss.cu: cross entropy fused with the softmax over the classes (CROSS_ENTROPY, CROSS_ENTROPY_BWD of
 * ops.def) on the GPU. The point of the fused op is a GPT's vocabulary-size rows (C = 50257 .. 256k,
 * N = B * T = 16k rows): no (N, C) probability matrix is stored, forward keeps only each row's
 * logsumexp, and backward recomputes the softmax from the logits in the same pass that writes
 * dlogits. Both kernels are bandwidth-bound: forward reads each logit once, backward reads each logit
 * once and writes each dlogit once.
 *
 * The reference is csrc/cpu/loss.c (dc_cpu_cross_entropy / _bwd): the same formulas, in double
 * there. Here float32, bfloat16 and float16 logits compute in float, float64 in double; loss, lse and
 * g are float32 (float64 for float64 logits), dlogits has the logits' dtype. The per-row epilogue of
 * forward (lse = m + log(s), the loss) is done in double for every dtype: it is one thread per row,
 * free, and keeps the float path to the error of its sums.
 *
 * A target outside [0, C) that is not ignore_index: the CPU raises DC_ERR_INDEX before computing. The
 * GPU cannot say so without a host sync, so it writes NaN instead: forward loss_i = NaN (lse_i is the
 * row's logsumexp as usual), backward the whole dlogits row NaN. The NaN reaches the mean loss and
 * every gradient, so a bad label never trains silently. No device error word, no sync.
 *
 * Launch shape: G threads per row, G = 32 (a warp; 8 rows per 256-thread block) for rows up to 128
 * vectors, 256 (one block per row) up to 2048 vectors, else 512 (one block per row); a vector is 16
 * bytes (4 floats, 2 doubles, 8 halves). Registers are capped at 64 so that 1024 threads (two or more
 * rows) stay resident per SM: one row's reduction tail then overlaps another row's loads. Grid: ceil(N / rows per
 * block) blocks, capped at 2^30 with a row-stride loop behind it. Rows are read with 16-byte loads from their first
 * 16-byte boundary on: a scalar prologue takes the < 8 elements before it (bf16 rows of odd C start anywhere) and a
 * scalar tail the rest. Backward vectorizes when logits and dlogits rows share their alignment (always for fresh
 * tensors) and runs a scalar (still coalesced) loop otherwise.
 *
 * Forward finds max and sum of exp in one online pass (the sum rescaled when the max grows, once per
 * loaded chunk), then merges (max, sum, sum of x) across the row's threads with a shuffle tree and,
 * for block rows, a fixed-order pass over the warps' partials: deterministic, no atomics; the
 * reduction order depends only on C, the dtype and the rows' alignment. NaN / inf as the CPU: a NaN or
 * +inf in a row gives lse NaN; a row of only -inf gives lse NaN (the CPU's exp(-inf - -inf)); C == 0
 * gives lse -inf. */
#include <math.h>
#include <stdint.h>

#include "common.cuh"

void dc_cuda_register_loss(dc_kernel_fn *k); /* declared here until common.cuh lists it */

#define CE_DTYPES     (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))
#define CE_MAX_BLOCKS (1 << 30)

/* --- small device helpers ------------------------------------------------------------------- */

template <class T> using acc_t = typename dc_acc<T>::type; /* float, or double for float64 */

/* CUDA's libm (not fast-math): expf is within 2 ulp */
__device__ __forceinline__ float ce_exp(float x)
{
    return expf(x);
}
__device__ __forceinline__ double ce_exp(double x)
{
    return exp(x);
}

/* Where row r's 16-byte-aligned body starts (elements before it go to the scalar prologue); 0 when
 * V == 1. r is element aligned (the host checks the base pointer). */
template <class T, int V> __device__ __forceinline__ int row_prologue(const T *r, int C)
{
    if constexpr (V == 1) {
        return 0;
    } else {
        const int pre = (int)(((16u - ((unsigned)(uintptr_t)r & 15u)) & 15u) / sizeof(T));
        return pre < C ? pre : C;
    }
}

/* Online state of one thread's share of a row: m = max (taken with `>`, which skips NaN, from
 * -inf, so m is never NaN), s = sum of exp(x - m), sx = sum of x. */
template <class A> struct ce_state {
    A m, s, sx;
};

/* Fold n values into the state: one rescale per chunk, one exp per value. While m is -inf the
 * chunk holds only -inf and NaN: exp(x - 0) gives them 0 and NaN, where exp(x - m) would turn -inf
 * into NaN. m = +inf gives exp(inf - inf) = NaN, as on the CPU. */
template <int n, class A> __device__ __forceinline__ void ce_fold(ce_state<A> &st, const A *v)
{
    A cm = -INFINITY;
#pragma unroll
    for (int k = 0; k < n; k++) cm = v[k] > cm ? v[k] : cm;
    if (cm > st.m) {
        st.s *= ce_exp(st.m - cm);
        st.m = cm;
    }
    const A ms = st.m == A(-INFINITY) ? A(0) : st.m;
#pragma unroll
    for (int k = 0; k < n; k++) {
        st.s += ce_exp(v[k] - ms);
        st.sx += v[k];
    }
}

/* Merge another thread's state. A factor is 1 when the maxima are equal, so two partials that saw
 * only -inf (or nothing) stay (-inf, 0) instead of turning into NaN; a NaN in s survives (NaN * 0).
 * Symmetric bit for bit, so a butterfly leaves every lane equal. */
template <class A> __device__ __forceinline__ void ce_merge(ce_state<A> &a, A m2, A s2, A sx2)
{
    const A mn = m2 > a.m ? m2 : a.m;
    a.s = a.s * (a.m == mn ? A(1) : ce_exp(a.m - mn)) + s2 * (m2 == mn ? A(1) : ce_exp(m2 - mn));
    a.m = mn;
    a.sx += sx2;
}

template <class A> __device__ __forceinline__ void ce_warp_merge(ce_state<A> &st)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const A m2 = __shfl_xor_sync(0xffffffffu, st.m, o), s2 = __shfl_xor_sync(0xffffffffu, st.s, o),
                sx2 = __shfl_xor_sync(0xffffffffu, st.sx, o);
        ce_merge(st, m2, s2, sx2);
    }
}

/* ====================================== forward ============================================== */

/* loss (N) [loss_st], lse (N) [lse_st]: float, double for double logits; x (N, C) contiguous;
 * target (N) [t_st] int64. G threads per row, blockDim.x = max(G, 256); U vectors in flight per
 * thread. */
template <class T, int G>
__global__ void __launch_bounds__(G > 256 ? G : 256, G > 256 ? 1024 / G : 4)
    cross_entropy_kernel(acc_t<T> *__restrict__ loss, int64_t loss_st, acc_t<T> *__restrict__ lse, int64_t lse_st,
                         const T *__restrict__ x, const int64_t *__restrict__ target, int64_t t_st, int64_t N, int C,
                         int64_t ignore, double eps)
{
    typedef acc_t<T> A;
    constexpr int V = 16 / sizeof(T), U = sizeof(T) == 8 ? 2 : 4, RPB = G > 256 ? 1 : 256 / G;
    __shared__ A red_m[32], red_s[32], red_x[32];
    const int lane = G <= 32 ? threadIdx.x % G : threadIdx.x;
    /* G == 32: rows are independent warps (no __syncthreads), so the row loop may diverge per warp;
     * G > 32: one row per block, the loop is uniform over the block */
    for (int64_t row = (int64_t)blockIdx.x * RPB + threadIdx.x / G; row < N; row += (int64_t)gridDim.x * RPB) {
        const T *xr = x + row * (int64_t)C; /* (C) */

        /* the row leader fetches its target and target logit now; they are needed only at the end */
        int64_t tg = 0;
        A xt = 0;
        if (lane == 0) {
            tg = target[row * t_st];
            if (tg >= 0 && tg < C) xt = dc_load(xr[tg]);
        }

        ce_state<A> st = { A(-INFINITY), A(0), A(0) };
        const int pre = row_prologue<T, V>(xr, C), nvec = (C - pre) / V, tail0 = pre + nvec * V;
        if (lane < pre) {
            const A v = dc_load(xr[lane]);
            ce_fold<1>(st, &v);
        }
        const T *xv = xr + pre; /* 16-byte aligned */
        int k = lane;
        for (; k + (U - 1) * G < nvec; k += U * G) {
            A v[U * V];
#pragma unroll
            for (int u = 0; u < U; u++) dc_load_vals<T, V>(xv + (k + u * G) * V, v + u * V);
            ce_fold<U * V>(st, v);
        }
        for (; k < nvec; k += G) {
            A v[V];
            dc_load_vals<T, V>(xv + k * V, v);
            ce_fold<V>(st, v);
        }
        if (lane < C - tail0) {
            const A v = dc_load(xr[tail0 + lane]);
            ce_fold<1>(st, &v);
        }

        ce_warp_merge(st);
        if constexpr (G > 32) {
            if ((threadIdx.x & 31) == 0) {
                red_m[threadIdx.x >> 5] = st.m;
                red_s[threadIdx.x >> 5] = st.s;
                red_x[threadIdx.x >> 5] = st.sx;
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                st.m = red_m[0], st.s = red_s[0], st.sx = red_x[0];
                for (int w = 1; w < G / 32; w++) ce_merge(st, red_m[w], red_s[w], red_x[w]);
            }
            __syncthreads(); /* red_* are rewritten by the next row */
        }

        if (lane == 0) {
            /* m = -inf: the row held only -inf and NaN (the CPU's exp(-inf - -inf) makes that NaN),
             * or C == 0 (-inf + log(0) = -inf on the CPU) */
            const double l =
                st.m == A(-INFINITY) ? (C > 0 ? (double)NAN : -(double)INFINITY) : (double)st.m + log((double)st.s);
            const double mean = (double)st.sx / (double)(C ? C : 1);
            double lo;
            if (tg == ignore)
                lo = 0.0;
            else if (tg < 0 || tg >= C)
                lo = NAN; /* the CPU's index error; see the file head */
            else
                lo = l - (1.0 - eps) * (double)xt - (eps > 0 ? eps * mean : 0.0); /* 0 * -inf is not 0 */
            lse[row * lse_st] = (A)l;
            loss[row * loss_st] = (A)lo;
        }
    }
}

/* ====================================== backward ============================================= */

/* dx (N, C) contiguous, x's dtype; g (N) [g_st], lse (N) [lse_st]: float / double; x (N, C)
 * contiguous; target (N) [t_st]. dx_ij = g_i (exp(x_ij - lse_i) - (1 - eps)[j == t_i] - eps / C); 0
 * on ignored rows (x not read), NaN on rows with an out-of-range target. Vec: 16-byte accesses (x
 * and dx rows share their alignment); G threads per row as in forward. */
template <class T, int G, bool Vec>
__global__ void __launch_bounds__(G > 256 ? G : 256, G > 256 ? 1024 / G : 4)
    cross_entropy_bwd_kernel(T *__restrict__ dx, const acc_t<T> *__restrict__ g, int64_t g_st, const T *__restrict__ x,
                             const int64_t *__restrict__ target, int64_t t_st, const acc_t<T> *__restrict__ lse,
                             int64_t lse_st, int64_t N, int C, int64_t ignore, double eps)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1, U = !Vec ? 4 : sizeof(T) == 8 ? 1 : 2, RPB = G > 256 ? 1 : 256 / G;
    const int lane = G <= 32 ? threadIdx.x % G : threadIdx.x;
    /* the CPU's constants, rounded once to the compute type */
    const A c_hot = (A)(1.0 - eps), c_all = (A)(eps / (double)(C ? C : 1));
    for (int64_t row = (int64_t)blockIdx.x * RPB + threadIdx.x / G; row < N; row += (int64_t)gridDim.x * RPB) {
        const T *xr = x + row * (int64_t)C; /* (C) */
        T *dr = dx + row * (int64_t)C;      /* (C) */
        const int64_t tg = target[row * t_st];
        const int pre = row_prologue<T, V>(xr, C), nvec = (C - pre) / V, tail0 = pre + nvec * V;
        const T *xv = xr + pre;
        T *dv = dr + pre; /* both 16-byte aligned when Vec */

        if (tg == ignore || tg < 0 || tg >= C) {
            /* ignored: 0, out of range: NaN (the CPU's index error; see the file head); x not read */
            const A f = tg == ignore ? A(0) : A(NAN);
            A o[V];
#pragma unroll
            for (int q = 0; q < V; q++) o[q] = f;
            if (lane < pre) dc_store_vals<T, 1>(dr + lane, o);
            for (int k = lane; k < nvec; k += G) dc_store_vals<T, V>(dv + k * V, o);
            if (lane < C - tail0) dc_store_vals<T, 1>(dr + tail0 + lane, o);
            continue;
        }

        const A gi = g[row * g_st], L = lse[row * lse_st];
        const int t = (int)tg;
        if (lane < pre) {
            const int j = lane;
            const A v = dc_load(xr[j]);
            dr[j] = dc_store<T>(gi * (ce_exp(v - L) - (j == t ? c_hot : A(0)) - c_all));
        }
        int k = lane;
        for (; k + (U - 1) * G < nvec; k += U * G) {
            A v[U * V];
#pragma unroll
            for (int u = 0; u < U; u++) dc_load_vals<T, V>(xv + (k + u * G) * V, v + u * V);
#pragma unroll
            for (int u = 0; u < U; u++) {
#pragma unroll
                for (int q = 0; q < V; q++) {
                    const int j = pre + (k + u * G) * V + q;
                    v[u * V + q] = gi * (ce_exp(v[u * V + q] - L) - (j == t ? c_hot : A(0)) - c_all);
                }
                dc_store_vals<T, V>(dv + (k + u * G) * V, v + u * V);
            }
        }
        for (; k < nvec; k += G) {
            A v[V];
            dc_load_vals<T, V>(xv + k * V, v);
#pragma unroll
            for (int q = 0; q < V; q++) {
                const int j = pre + k * V + q;
                v[q] = gi * (ce_exp(v[q] - L) - (j == t ? c_hot : A(0)) - c_all);
            }
            dc_store_vals<T, V>(dv + k * V, v);
        }
        if (lane < C - tail0) {
            const int j = tail0 + lane;
            const A v = dc_load(xr[j]);
            dr[j] = dc_store<T>(gi * (ce_exp(v - L) - (j == t ? c_hot : A(0)) - c_all));
        }
    }
}

/* --- launchers (plain names, stream last; each launch followed by a check) --------------------- */

/* Threads per row for rows of C elements read V at a time (see the file head). */
static int ce_group(int64_t C, int V)
{
    const int64_t nv = (C + V - 1) / V;
    return nv <= 128 ? 32 : nv <= 2048 ? 256 : 512;
}

static unsigned int ce_blocks(int64_t N, int G)
{
    const int64_t rpb = G >= 256 ? 1 : 256 / G;
    int64_t b = (N + rpb - 1) / rpb;
    if (b > CE_MAX_BLOCKS) b = CE_MAX_BLOCKS;
    return (unsigned int)b;
}

template <class T>
static dc_status cross_entropy_forward(acc_t<T> *loss, int64_t loss_st, acc_t<T> *lse, int64_t lse_st, const T *x,
                                       const int64_t *target, int64_t t_st, int64_t N, int C, int64_t ignore,
                                       double eps, cudaStream_t stream)
{
    const int G = ce_group(C, 16 / sizeof(T));
    const unsigned int blocks = ce_blocks(N, G);
    if (G == 32)
        cross_entropy_kernel<T, 32>
            <<<blocks, 256, 0, stream>>>(loss, loss_st, lse, lse_st, x, target, t_st, N, C, ignore, eps);
    else if (G == 256)
        cross_entropy_kernel<T, 256>
            <<<blocks, 256, 0, stream>>>(loss, loss_st, lse, lse_st, x, target, t_st, N, C, ignore, eps);
    else
        cross_entropy_kernel<T, 512>
            <<<blocks, 512, 0, stream>>>(loss, loss_st, lse, lse_st, x, target, t_st, N, C, ignore, eps);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T, bool Vec>
static dc_status cross_entropy_bwd_launch(T *dx, const acc_t<T> *g, int64_t g_st, const T *x, const int64_t *target,
                                          int64_t t_st, const acc_t<T> *lse, int64_t lse_st, int64_t N, int C,
                                          int64_t ignore, double eps, cudaStream_t stream)
{
    const int G = ce_group(C, Vec ? 16 / sizeof(T) : 1);
    const unsigned int blocks = ce_blocks(N, G);
    if (G == 32)
        cross_entropy_bwd_kernel<T, 32, Vec>
            <<<blocks, 256, 0, stream>>>(dx, g, g_st, x, target, t_st, lse, lse_st, N, C, ignore, eps);
    else if (G == 256)
        cross_entropy_bwd_kernel<T, 256, Vec>
            <<<blocks, 256, 0, stream>>>(dx, g, g_st, x, target, t_st, lse, lse_st, N, C, ignore, eps);
    else
        cross_entropy_bwd_kernel<T, 512, Vec>
            <<<blocks, 512, 0, stream>>>(dx, g, g_st, x, target, t_st, lse, lse_st, N, C, ignore, eps);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status cross_entropy_backward(T *dx, const acc_t<T> *g, int64_t g_st, const T *x, const int64_t *target,
                                        int64_t t_st, const acc_t<T> *lse, int64_t lse_st, int64_t N, int C,
                                        int64_t ignore, double eps, cudaStream_t stream)
{
    /* rows of x and dx advance by the same C * sizeof(T), so the bases' alignment decides for all */
    if ((((uintptr_t)x ^ (uintptr_t)dx) & 15u) == 0)
        return cross_entropy_bwd_launch<T, true>(dx, g, g_st, x, target, t_st, lse, lse_st, N, C, ignore, eps, stream);
    return cross_entropy_bwd_launch<T, false>(dx, g, g_st, x, target, t_st, lse, lse_st, N, C, ignore, eps, stream);
}

/* --- operand checks ----------------------------------------------------------------------------- */

/* A contiguous (N, C) view (the stride of a size-1 dim is free), element aligned. */
static bool is_rows(const dc_kview *v)
{
    return v->ndim == 2 && (v->shape[1] <= 1 || v->strides[1] == 1) &&
           (v->shape[0] <= 1 || v->strides[0] == v->shape[1]) && ((uintptr_t)v->data % dc_dtype_size(v->dtype)) == 0;
}

/* A (N) vector of dtype dt, any stride. */
static bool is_vec(const dc_kview *v, int64_t N, dc_dtype dt)
{
    return v->ndim == 1 && v->shape[0] == N && v->dtype == dt;
}

static dc_dtype stat_dtype(dc_dtype x)
{
    return x == DC_FLOAT64 ? DC_FLOAT64 : DC_FLOAT32;
}

/* C is an int in the kernels (row offsets are int64); 2^30 classes leave room for k * V + G */
static dc_status check_classes(const char *op, int64_t C)
{
    if (C > (1 << 30)) return dc_error(DC_ERR_UNSUPPORTED, "cuda %s: %lld classes (at most 2^30)", op, (long long)C);
    return DC_OK;
}

/* --- table entries ---------------------------------------------------------------------------- */

/* DC_OP_CROSS_ENTROPY: t0 loss (N), t1 lse (N), t2 logits (N, C) contiguous, t3 target (N) int64. */
static dc_status k_cross_entropy(const dc_kargs *a)
{
    if (a->nt < 4) return dc_error(DC_ERR_INTERNAL, "cuda cross_entropy: %d operands, want 4", a->nt);
    const dc_kview *loss = &a->t[0], *lse = &a->t[1], *x = &a->t[2], *t = &a->t[3];
    if (!is_rows(x))
        return dc_error(DC_ERR_INTERNAL, "cuda cross_entropy: logits %s must be contiguous (N, C)",
                        dc_shape_str(x->ndim, x->shape));
    const int64_t N = x->shape[0], C = x->shape[1];
    const dc_dtype sd = stat_dtype(x->dtype);
    if (!is_vec(loss, N, sd) || !is_vec(lse, N, sd) || !is_vec(t, N, DC_INT64))
        return dc_error(DC_ERR_INTERNAL,
                        "cuda cross_entropy: loss %s %s, lse %s %s, target %s %s for logits %s %s: want (N) %s, "
                        "(N) %s, (N) int64",
                        dc_shape_str(loss->ndim, loss->shape), dc_dtype_name(loss->dtype),
                        dc_shape_str(lse->ndim, lse->shape), dc_dtype_name(lse->dtype), dc_shape_str(t->ndim, t->shape),
                        dc_dtype_name(t->dtype), dc_shape_str(x->ndim, x->shape), dc_dtype_name(x->dtype),
                        dc_dtype_name(sd), dc_dtype_name(sd));
    if (N == 0) return DC_OK;
    DC_TRY(check_classes("cross_entropy", C));
    DC_TRY(dc_cuda_use_device_of(loss->data));
    const int64_t ignore = a->p.ce.ignore_index;
    const double eps = a->p.ce.label_smoothing;
    return dc_dispatch<CE_DTYPES>(x->dtype, "cross_entropy", [&](auto tag) {
        typedef decltype(tag) T;
        typedef acc_t<T> A;
        return cross_entropy_forward<T>((A *)loss->data, loss->strides[0], (A *)lse->data, lse->strides[0],
                                        (const T *)x->data, (const int64_t *)t->data, t->strides[0], N, (int)C, ignore,
                                        eps, dc_cuda_stream());
    });
}

/* DC_OP_CROSS_ENTROPY_BWD: t0 dlogits (N, C) contiguous, written whole; t1 g (N); t2 logits (N, C)
 * contiguous; t3 target (N) int64; t4 lse (N). g and lse float32, float64 for float64 logits. */
static dc_status k_cross_entropy_bwd(const dc_kargs *a)
{
    if (a->nt < 5) return dc_error(DC_ERR_INTERNAL, "cuda cross_entropy_backward: %d operands, want 5", a->nt);
    const dc_kview *dx = &a->t[0], *g = &a->t[1], *x = &a->t[2], *t = &a->t[3], *lse = &a->t[4];
    if (!is_rows(x) || !is_rows(dx) || dx->dtype != x->dtype || dx->shape[0] != x->shape[0] ||
        dx->shape[1] != x->shape[1])
        return dc_error(DC_ERR_INTERNAL,
                        "cuda cross_entropy_backward: dlogits %s %s and logits %s %s must be contiguous (N, C) of "
                        "one dtype",
                        dc_shape_str(dx->ndim, dx->shape), dc_dtype_name(dx->dtype), dc_shape_str(x->ndim, x->shape),
                        dc_dtype_name(x->dtype));
    const int64_t N = x->shape[0], C = x->shape[1];
    const dc_dtype sd = stat_dtype(x->dtype);
    if (!is_vec(g, N, sd) || !is_vec(lse, N, sd) || !is_vec(t, N, DC_INT64))
        return dc_error(DC_ERR_INTERNAL,
                        "cuda cross_entropy_backward: g %s %s, lse %s %s, target %s %s for logits %s %s: want (N) "
                        "%s, (N) %s, (N) int64",
                        dc_shape_str(g->ndim, g->shape), dc_dtype_name(g->dtype), dc_shape_str(lse->ndim, lse->shape),
                        dc_dtype_name(lse->dtype), dc_shape_str(t->ndim, t->shape), dc_dtype_name(t->dtype),
                        dc_shape_str(x->ndim, x->shape), dc_dtype_name(x->dtype), dc_dtype_name(sd), dc_dtype_name(sd));
    if (N == 0 || C == 0) return DC_OK; /* dlogits is empty */
    DC_TRY(check_classes("cross_entropy_backward", C));
    DC_TRY(dc_cuda_use_device_of(dx->data));
    const int64_t ignore = a->p.ce.ignore_index;
    const double eps = a->p.ce.label_smoothing;
    return dc_dispatch<CE_DTYPES>(x->dtype, "cross_entropy_backward", [&](auto tag) {
        typedef decltype(tag) T;
        typedef acc_t<T> A;
        return cross_entropy_backward<T>((T *)dx->data, (const A *)g->data, g->strides[0], (const T *)x->data,
                                         (const int64_t *)t->data, t->strides[0], (const A *)lse->data, lse->strides[0],
                                         N, (int)C, ignore, eps, dc_cuda_stream());
    });
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_loss(dc_kernel_fn *k)
{
    k[DC_OP_CROSS_ENTROPY] = k_cross_entropy;
    k[DC_OP_CROSS_ENTROPY_BWD] = k_cross_entropy_bwd;
}
