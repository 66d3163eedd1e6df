/* batchnorm.cu: the CUDA kernels of DC_OP_BATCHNORM and DC_OP_BATCHNORM_BWD (ops.def's NORM family):
 * batch norm over (N, L) per channel of x (N, C, L), forward next to backward. Split out of nn.cu
 * (softmax, attention softmax, layer norm), which registers these two ops by calling
 * dc_cuda_register_batchnorm.
 *
 * The reference is csrc/cpu/conv.c: same formulas in the same order, same outputs written. The CPU
 * takes float32 and float64; here bfloat16 and float16 are accepted too (as in nn.cu) and compute in
 * float, rounding once on store. The per-channel statistics (sums, mean, M2) are accumulated in
 * double whatever the dtype, as the CPU does, because one channel can hold millions of elements
 * (N * L) and float would lose digits there; the elementwise pass then runs in the compute type
 * with coefficients rounded through T as the CPU's `(T)(w * rstd)`.
 *
 * x (N, C, L) contiguous: channel c's plane is N segments of L elements, C * L apart. Three steps:
 * (1) partial statistics per (channel, chunk) in double, (2) per channel: merge the partials in a
 * fixed order, write mean/rstd/running stats (forward) or dw/db (backward) and the coefficients of
 * (3) the elementwise pass y = x * scale + shift / dx = a1 * dy - a2 * (x - mean) - a3.
 *
 * Partials: forward (count, mean, M2 = sum of squared deviations from the chunk's own mean), merged
 * with Chan et al.'s formula, so the variance never comes from sum(x^2) - n * mean^2 (the CPU's
 * two-pass has no cancellation either); backward (sum dy, sum dy * (x - mean), 0).
 *
 * Determinism: the partials go to scratch memory and are merged in a fixed order (each thread takes
 * every nt-th partial in index order, then a fixed shared-memory tree), block sums are shuffle trees,
 * and the chunking depends only on the shape: no floating-point atomics, same bits run to run.
 *
 * Chunks: a block per (channel, rows x columns tile of the channel's plane), ~16K elements, threads
 * along L first (coalesced). A tiny L (BatchNorm1d's L = 1) makes the reads C apart; the blocks of
 * neighbouring channels share those sectors through L2. */
#include <math.h>
#include <stdint.h>

#include "common.cuh"

/* Dtypes both kernels accept; -DDC_CUDA_NN_DTYPES=... narrows it, for this file as for nn.cu. */
#ifndef DC_CUDA_NN_DTYPES
#define DC_CUDA_NN_DTYPES \
    (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))
#endif

template <class T> using acc_t = typename dc_acc<T>::type; /* float, or double for float64 */

/* --- small host helper (a file-local copy of nn.cu's) ------------------------------------------ */

/* DC_ERR_UNSUPPORTED naming op and dtype unless dt is one of this file's dtypes. */
static dc_status nn_dtype(dc_op op, dc_dtype dt)
{
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, dc_op_names[op], [](auto) { return DC_OK; });
}

/* ================================ batch norm ================================================= */

/* One chunk's partial statistics (see the file head): forward (count, mean, M2), backward
 * (sum dy, sum dy * (x - mean), 0). */
struct bn_part {
    double a, b, c;
};

#define BN_CHUNK 16384 /* elements per block of step (1) */

__device__ __forceinline__ bn_part chan_merge(bn_part x, bn_part y)
{
    if (y.a == 0) return x; /* an empty side (the identity) leaves the other bit for bit */
    if (x.a == 0) return y;
    const double n = x.a + y.a;
    const double d = y.b - x.b;
    return bn_part{ n, x.b + d * (y.a / n), x.c + y.c + d * d * (x.a * y.a / n) };
}

template <class T, bool Bwd>
__global__ void __launch_bounds__(256)
    batchnorm_reduce_kernel(bn_part *__restrict__ part, const T *__restrict__ x, const T *__restrict__ dy,
                            const T *__restrict__ mean, int64_t N, int64_t C, int64_t L, int64_t R, int64_t Lc,
                            int64_t Sn, int64_t Sl)
{
    __shared__ double red[32];
    const int64_t blk = blockIdx.x, S = Sn * Sl, c = blk / S, s = blk % S;
    const int64_t n0 = (s / Sl) * R, n1 = n0 + R < N ? n0 + R : N;
    const int64_t i0 = (s % Sl) * Lc, i1 = i0 + Lc < L ? i0 + Lc : L;
    const int64_t CL = C * L, base = c * L;
    double t0 = 0, t1 = 0;
    if (!Bwd) {
        for (int64_t n = n0 + threadIdx.y; n < n1; n += blockDim.y)
            for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) t0 += (double)dc_load(x[n * CL + base + i]);
        const double cnt = (double)(n1 - n0) * (double)(i1 - i0);
        const double cm = dc_block_sum(t0, red) / cnt;
        for (int64_t n = n0 + threadIdx.y; n < n1; n += blockDim.y)
            for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
                const double d = (double)dc_load(x[n * CL + base + i]) - cm;
                t1 += d * d;
            }
        t1 = dc_block_sum(t1, red);
        if (threadIdx.x == 0 && threadIdx.y == 0) part[blk] = bn_part{ cnt, cm, t1 };
    } else {
        const double m = (double)dc_load(mean[c]);
        for (int64_t n = n0 + threadIdx.y; n < n1; n += blockDim.y)
            for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
                const int64_t e = n * CL + base + i;
                const double g = (double)dc_load(dy[e]);
                t0 += g;
                t1 += g * ((double)dc_load(x[e]) - m);
            }
        t0 = dc_block_sum(t0, red);
        t1 = dc_block_sum(t1, red);
        if (threadIdx.x == 0 && threadIdx.y == 0) part[blk] = bn_part{ t0, t1, 0 };
    }
}

/* Channel blockIdx.x's P partials merged (Chan for the forward, sums for the backward): thread t
 * takes t, t + nt, ... in order, then a fixed tree. Result in thread 0. nt: a power of 2, <= 256. */
template <bool Bwd> __device__ __forceinline__ bn_part bn_merge_channel(const bn_part *part, int64_t P)
{
    __shared__ bn_part sm[256];
    const int t = threadIdx.x, nt = blockDim.x;
    const bn_part *p = part + (int64_t)blockIdx.x * P;
    bn_part acc = { 0, 0, 0 };
    for (int64_t k = t; k < P; k += nt) {
        if (Bwd)
            acc.a += p[k].a, acc.b += p[k].b;
        else
            acc = chan_merge(acc, p[k]);
    }
    sm[t] = acc;
    __syncthreads();
    for (int h = nt / 2; h > 0; h >>= 1) {
        if (t < h) {
            if (Bwd)
                sm[t].a += sm[t + h].a, sm[t].b += sm[t + h].b;
            else
                sm[t] = chan_merge(sm[t], sm[t + h]);
        }
        __syncthreads();
    }
    return sm[0];
}

/* Forward, per channel: batch statistics (training) or the running ones (eval); the running stats
 * move by momentum with the unbiased variance (the CPU: v / (cnt - 1), v itself when cnt <= 1);
 * coef[2c] = scale, coef[2c + 1] = shift, rounded through T as the CPU's `(T)(w * rstd)`. */
template <class T>
__global__ void __launch_bounds__(256)
    batchnorm_stats_kernel(T *__restrict__ mean, T *__restrict__ rstd, acc_t<T> *__restrict__ coef, T *rm, T *rv,
                           const bn_part *__restrict__ part, int64_t P, const T *__restrict__ w,
                           const T *__restrict__ b, double cnt, double eps, double momentum, int training)
{
    const int64_t c = blockIdx.x;
    bn_part st = { 0, 0, 0 };
    if (training) st = bn_merge_channel<false>(part, P);
    if (threadIdx.x != 0) return;
    double mu, r;
    if (training) {
        mu = cnt > 0 ? st.b : (double)NAN; /* the CPU's 0 / 0 */
        const double v = st.c;
        r = 1.0 / sqrt(v / cnt + eps);
        if (rm) {
            rm[c] = dc_store<T>((1.0 - momentum) * (double)dc_load(rm[c]) + momentum * mu);
            rv[c] = dc_store<T>((1.0 - momentum) * (double)dc_load(rv[c]) + momentum * (cnt > 1 ? v / (cnt - 1) : v));
        }
    } else {
        mu = (double)dc_load(rm[c]);
        r = 1.0 / sqrt((double)dc_load(rv[c]) + eps);
    }
    mean[c] = dc_store<T>(mu);
    rstd[c] = dc_store<T>(r);
    const double wv = w ? (double)dc_load(w[c]) : 1.0, bv = b ? (double)dc_load(b[c]) : 0.0;
    coef[2 * c] = dc_round_to<T>(wv * r);
    coef[2 * c + 1] = dc_round_to<T>(bv - mu * wv * r);
}

/* Backward, per channel: dw = sum(dy * (x - mean)) * rstd, db = sum(dy); coef[4c..4c+3] = a1 = w * rstd,
 * a2 = a1 * rstd^2 * sum(dy * (x - mean)) / cnt, a3 = a1 * sum(dy) / cnt (0, 0 in eval), mean. */
template <class T>
__global__ void __launch_bounds__(256)
    batchnorm_bwd_stats_kernel(T *__restrict__ dw, T *__restrict__ db, acc_t<T> *__restrict__ coef,
                               const bn_part *__restrict__ part, int64_t P, const T *__restrict__ mean,
                               const T *__restrict__ rstd, const T *__restrict__ w, double cnt, int training)
{
    const int64_t c = blockIdx.x;
    const bn_part st = bn_merge_channel<true>(part, P);
    if (threadIdx.x != 0) return;
    const double sg = st.a, sgx = st.b;
    const double m = (double)dc_load(mean[c]), r = (double)dc_load(rstd[c]);
    if (dw) dw[c] = dc_store<T>(sgx * r);
    if (db) db[c] = dc_store<T>(sg);
    const double wv = w ? (double)dc_load(w[c]) : 1.0, k = wv * r;
    coef[4 * c] = dc_round_to<T>(k);
    coef[4 * c + 1] = training ? dc_round_to<T>(k * r * r * sgx / cnt) : acc_t<T>(0);
    coef[4 * c + 2] = training ? dc_round_to<T>(k * sg / cnt) : acc_t<T>(0);
    coef[4 * c + 3] = dc_round_to<T>(m);
}

/* out = x * scale + shift (forward) or a1 * dy - a2 * (x - mean) - a3 (backward), the channel of
 * element e being (e / L) % C; V elements at a time (L % V == 0, so a vector is in one channel).
 * I: uint32_t when every index fits, so the divisions are 32-bit. */
template <class T, bool Bwd, bool Vec, class I>
__global__ void __launch_bounds__(256)
    batchnorm_apply_kernel(T *__restrict__ out, const T *__restrict__ x, const T *__restrict__ dy,
                           const acc_t<T> *__restrict__ coef, I total, I L, I C)
{
    typedef acc_t<T> A;
    constexpr int V = Vec ? 16 / sizeof(T) : 1;
    const I stride = (I)gridDim.x * blockDim.x * V;
    for (I e = ((I)blockIdx.x * blockDim.x + threadIdx.x) * V; e < total; e += stride) {
        const I c = (e / L) % C;
        A v[V];
        dc_load_vals<T, V>(x + e, v);
        if (!Bwd) {
            const A sc = coef[2 * c], sh = coef[2 * c + 1];
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = v[k] * sc + sh;
        } else {
            const A a1 = coef[4 * c], a2 = coef[4 * c + 1], a3 = coef[4 * c + 2], mt = coef[4 * c + 3];
            A d[V];
            dc_load_vals<T, V>(dy + e, d);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = a1 * d[k] - a2 * (v[k] - mt) - a3;
        }
        dc_store_vals<T, V>(out + e, v);
    }
}

/* --- batch norm launchers ---------------------------------------------------------------------- */

/* How step (1) splits channel planes: P = Sn * Sl chunks per channel, contiguous per channel. */
struct bn_plan {
    int64_t R, Lc, Sn, Sl, P; /* rows and columns per chunk, chunks along N and along L */
};

static bn_plan bn_plan_of(int64_t N, int64_t L)
{
    bn_plan p;
    if (L >= BN_CHUNK) {
        p.Sl = (L + BN_CHUNK - 1) / BN_CHUNK;
        p.Lc = (L + p.Sl - 1) / p.Sl;
        p.R = 1;
        p.Sn = N;
    } else {
        p.Sl = 1;
        p.Lc = L;
        p.R = (BN_CHUNK + L - 1) / L < N ? (BN_CHUNK + L - 1) / L : N;
        p.Sn = (N + p.R - 1) / p.R;
    }
    p.P = p.Sn * p.Sl;
    return p;
}

template <class T, bool Bwd>
static dc_status batchnorm_reduce(bn_part *part, const bn_plan &p, const T *x, const T *dy, const T *mean, int64_t N,
                                  int64_t C, int64_t L, cudaStream_t stream)
{
    const int64_t nb = C * p.P;
    if (nb > 0x7fffffff) return dc_error(DC_ERR_UNSUPPORTED, "cuda batch_norm: %lld blocks", (long long)nb);
    unsigned bx = 1; /* threads along L: up to 256, the rest along N */
    while (bx < 256 && (int64_t)bx < p.Lc) bx *= 2;
    batchnorm_reduce_kernel<T, Bwd>
        <<<(unsigned)nb, dim3(bx, 256 / bx), 0, stream>>>(part, x, dy, mean, N, C, L, p.R, p.Lc, p.Sn, p.Sl);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T, bool Bwd>
static dc_status batchnorm_apply(T *out, const T *x, const T *dy, const acc_t<T> *coef, int64_t N, int64_t C, int64_t L,
                                 cudaStream_t stream)
{
    const int64_t total = N * C * L, V = (int64_t)(16 / sizeof(T));
    if (total == 0) return DC_OK;
    const bool vec = L % V == 0 && dc_aligned16(out) && dc_aligned16(x) && (!Bwd || dc_aligned16(dy));
    const unsigned nb = dc_cuda_blocks(vec ? total / V : total);
    const bool small = total <= 0x7fffffff; /* index + grid stride stays below 2^32 */
    if (vec && small)
        batchnorm_apply_kernel<T, Bwd, true, uint32_t>
            <<<nb, DC_CUDA_THREADS, 0, stream>>>(out, x, dy, coef, (uint32_t)total, (uint32_t)L, (uint32_t)C);
    else if (vec)
        batchnorm_apply_kernel<T, Bwd, true, uint64_t>
            <<<nb, DC_CUDA_THREADS, 0, stream>>>(out, x, dy, coef, (uint64_t)total, (uint64_t)L, (uint64_t)C);
    else if (small)
        batchnorm_apply_kernel<T, Bwd, false, uint32_t>
            <<<nb, DC_CUDA_THREADS, 0, stream>>>(out, x, dy, coef, (uint32_t)total, (uint32_t)L, (uint32_t)C);
    else
        batchnorm_apply_kernel<T, Bwd, false, uint64_t>
            <<<nb, DC_CUDA_THREADS, 0, stream>>>(out, x, dy, coef, (uint64_t)total, (uint64_t)L, (uint64_t)C);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* DC_CUDA_CHECK_LAUNCH as a value, for paths that must free scratch before returning. */
static dc_status launch_status(void)
{
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* Scratch for batch norm: ncoef A values per channel, then (aligned to 16) C * P partials. */
template <class T> static size_t bn_coef_bytes(int64_t C, int ncoef)
{
    return ((size_t)C * ncoef * sizeof(acc_t<T>) + 15) & ~(size_t)15;
}

/* Steps (1)-(3) for the forward (Bwd false: operands as DC_OP_BATCHNORM) or the backward. */
template <class T, bool Bwd>
static dc_status batchnorm_run(const dc_kargs *a, int64_t N, int64_t C, int64_t L, cudaStream_t stream)
{
    typedef acc_t<T> A;
    const struct dc_batchnorm_params *bp = &a->p.batchnorm;
    const T *x = (const T *)a->t[Bwd ? 4 : 3].data, *dy = Bwd ? (const T *)a->t[3].data : NULL;
    const T *w = bp->has_w ? (const T *)a->t[Bwd ? 7 : 4].data : NULL;
    const bool reduce = (Bwd || bp->training) && N * L > 0;
    const bn_plan p = bn_plan_of(N, L);
    const int64_t P = reduce ? p.P : 0;
    const size_t cb = bn_coef_bytes<T>(C, Bwd ? 4 : 2);
    const unsigned nt = P >= 256 ? 256u : 32u; /* threads merging one channel's partials */
    const double cnt = (double)N * (double)L;
    char *scratch = NULL;
    DC_TRY(dc_cuda_scratch(cb + (size_t)(C * P) * sizeof(bn_part), (void **)&scratch));
    A *coef = (A *)scratch;
    bn_part *part = reduce ? (bn_part *)(scratch + cb) : NULL;
    dc_status st = DC_OK;
    if constexpr (Bwd) {
        T *dw = bp->has_w ? (T *)a->t[1].data : NULL, *db = bp->has_b ? (T *)a->t[2].data : NULL;
        const T *mean = (const T *)a->t[5].data, *rstd = (const T *)a->t[6].data;
        if (reduce) st = batchnorm_reduce<T, true>(part, p, x, dy, mean, N, C, L, stream);
        if (!st) {
            batchnorm_bwd_stats_kernel<T>
                <<<(unsigned)C, nt, 0, stream>>>(dw, db, coef, part, P, mean, rstd, w, cnt, bp->training);
            st = launch_status();
        }
    } else {
        T *mean = (T *)a->t[1].data, *rstd = (T *)a->t[2].data;
        T *rm = bp->has_running ? (T *)a->t[6].data : NULL, *rv = bp->has_running ? (T *)a->t[7].data : NULL;
        const T *b = bp->has_b ? (const T *)a->t[5].data : NULL;
        if (reduce) st = batchnorm_reduce<T, false>(part, p, x, NULL, NULL, N, C, L, stream);
        if (!st) {
            batchnorm_stats_kernel<T><<<(unsigned)C, nt, 0, stream>>>(mean, rstd, coef, rm, rv, part, P, w, b, cnt,
                                                                      bp->eps, bp->momentum, bp->training);
            st = launch_status();
        }
    }
    if (!st) st = batchnorm_apply<T, Bwd>((T *)a->t[0].data, x, dy, coef, N, C, L, stream);
    dc_cuda_scratch_free(scratch); /* stream-ordered: reused only by later work on this stream */
    return st;
}

/* --- batch norm table entries ------------------------------------------------------------------ */

static dc_status bn_dims(const dc_kargs *a, const dc_kview *x, int64_t *N, int64_t *C, int64_t *L)
{
    if (x->ndim != 3) return dc_error(DC_ERR_INTERNAL, "cuda %s: x must be (N, C, L)", dc_op_names[a->op]);
    *N = x->shape[0], *C = x->shape[1], *L = x->shape[2];
    if (*C > 0x7fffffff)
        return dc_error(DC_ERR_UNSUPPORTED, "cuda %s: %lld channels", dc_op_names[a->op], (long long)*C);
    return DC_OK;
}

/* DC_OP_BATCHNORM: t0 y, t1 mean (C,), t2 rstd (C,), t3 x (N, C, L), t4 w, t5 b, t6 running_mean,
 * t7 running_var (C,; updated in place when training and has_running); contiguous, x's dtype. */
static dc_status k_batchnorm(const dc_kargs *a)
{
    const struct dc_batchnorm_params *bp = &a->p.batchnorm;
    if (a->nt < 4) return dc_error(DC_ERR_INTERNAL, "cuda batch_norm: %d operands, want 8", a->nt);
    const dc_dtype dt = a->t[0].dtype;
    DC_TRY(nn_dtype(a->op, dt));
    if (!bp->has_running && !bp->training)
        return dc_error(DC_ERR_INTERNAL, "cuda batch_norm: eval mode needs running stats");
    DC_TRY(dc_check_operands(
        a, 0x0fu | (bp->has_w ? 0x10u : 0) | (bp->has_b ? 0x20u : 0) | (bp->has_running ? 0xc0u : 0), dt, true));
    int64_t N = 0, C = 0, L = 0;
    DC_TRY(bn_dims(a, &a->t[3], &N, &C, &L));
    if (C == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, "batch_norm", [&](auto tag) {
        typedef decltype(tag) T;
        return batchnorm_run<T, false>(a, N, C, L, stream);
    });
}

/* DC_OP_BATCHNORM_BWD: t0 dx, t1 dw if has_w, t2 db if has_b, t3 dy, t4 x (N, C, L), t5 mean, t6 rstd,
 * t7 w if has_w; contiguous, x's dtype. */
static dc_status k_batchnorm_bwd(const dc_kargs *a)
{
    const struct dc_batchnorm_params *bp = &a->p.batchnorm;
    if (a->nt < 7) return dc_error(DC_ERR_INTERNAL, "cuda batch_norm_backward: %d operands, want 8", a->nt);
    const dc_dtype dt = a->t[0].dtype;
    DC_TRY(nn_dtype(a->op, dt));
    DC_TRY(dc_check_operands(a, 0x79u | (bp->has_w ? 0x82u : 0) | (bp->has_b ? 0x04u : 0), dt, true));
    int64_t N = 0, C = 0, L = 0;
    DC_TRY(bn_dims(a, &a->t[4], &N, &C, &L));
    if (C == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_CUDA_NN_DTYPES>(dt, "batch_norm_backward", [&](auto tag) {
        typedef decltype(tag) T;
        return batchnorm_run<T, true>(a, N, C, L, stream);
    });
}

/* --- registration ------------------------------------------------------------------------------ */

/* Called by nn.cu's dc_cuda_register_nn. */
void dc_cuda_register_batchnorm(dc_kernel_fn *k)
{
    k[DC_OP_BATCHNORM] = k_batchnorm;
    k[DC_OP_BATCHNORM_BWD] = k_batchnorm_bwd;
}
