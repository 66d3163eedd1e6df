/* attention.cu: fused (flash) attention on CUDA, forward and backward: FLASH_ATTN and FLASH_ATTN_BWD of
 * ops.def. The (Tq, Tk) score matrix is never stored: each block holds a tile of queries (or keys) in
 * shared memory, streams the other side through it in tiles and keeps its accumulators in registers
 * (FlashAttention-2's scheme, Dao 2023).
 *
 * The reference is the CPU kernel (csrc/cpu/nn.c, dc_cpu_flash_attn / dc_cpu_flash_attn_bwd), per
 * query row i of each (batch, head) bh:
 *   s_j = scale * q_i . k_j  over keys j (j <= i when causal, top-left aligned even when Tq != Tk)
 *   lse_i = m + log(l)  (m = max_j s_j, l = sum_j exp(s_j - m));  out_i = sum_j exp(s_j - lse_i) v_j
 * and, backward, with P_ij = exp(s_ij - lse_i), dS_ij = P_ij (dout_i . v_j - delta_i):
 *   dv_j = sum_i P_ij dout_i,  dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i.
 * A row without keys (Tk == 0) gives out 0 and lse -inf; so does a row whose every score is -inf
 * (the online max is guarded as in FlashAttention, where an unguarded two-pass softmax gives NaN).
 * NaN and +inf scores give NaN rows, as on the CPU.
 *
 * Dtypes: float32 and float64 compute in their own type (lse/delta float32 / float64); bfloat16 and
 * float16 compute and accumulate in float (lse/delta float32). Head dims D (q, k) and Dv (v, out) up
 * to 256: the tiles are compiled for a padded size HD = 64, 128 or 256 >= max(D, Dv) and the columns
 * past D / Dv are zero in shared memory.
 *
 * Two implementations:
 *  - CUDA cores (float32, float64; 16-bit too when DC_FLASH_WMMA is 0, and the 16-bit backward at
 *    HD = 256): 256 threads as 16 x 16, BT x BT tiles (BT = 64, 32 or 16 by HD and element size, so a
 *    tile is <= 32 KiB), each thread owning a (BT/16) x (BT/16) block of scores and BT/16 rows x HD/16
 *    columns of the output. Shared memory holds the compute type (float / double), rows padded by one
 *    16-byte vector so the vector reads are bank-conflict free. The P @ V product takes P from the
 *    owning lanes by warp shuffles (a score row lives in one half-warp).
 *  - tensor cores (bfloat16, float16; nvcuda::wmma 16x16x16, float accumulators; sm_80+): 4 warps, 16
 *    query (or key) rows per warp. Forward: S = Q K^T goes through a per-warp float scratch, where each
 *    lane pair owns one row for the online softmax; P (rounded to the input type, as FlashAttention
 *    does) feeds P @ V, whose chunks come back through the scratch into the lanes' row-owned
 *    accumulators. Backward: the elementwise P / dS need only (row, column) of each accumulator
 *    element, which a load of an index table into an accumulator fragment tells each lane once, so S
 *    and dP never leave the registers; dS and P go to shared memory in the input type for the next
 *    product.
 *
 * Backward without atomics (deterministic, and dq/dk/dv are written whole): one kernel per key tile
 * loops over query tiles for dk and dv, a second per query tile loops over key tiles for dq. Both
 * recompute S and dP, which costs ~1.4x the FLOPs of FlashAttention-2's atomic dq. Causal: key
 * tiles entirely above the diagonal are never loaded (the key-tile kernel starts its query loop at
 * the diagonal); the query-tile kernels take the heaviest (last) tiles of each head first.
 *
 * Everything runs on dc_cuda_stream(); no scratch memory and no host synchronisation. Dynamic shared
 * memory above 48 KiB is requested with cudaFuncSetAttribute before each launch (largest: 133 KiB,
 * under sm_80's 163 KiB). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <mma.h>
#include <type_traits>

#include "common.cuh"

/* Declared in common.cuh (repeated here so this file compiles on its own). */
void dc_cuda_register_attention(dc_kernel_fn *k);

/* 1: bfloat16 / float16 use the tensor-core kernels (sm_80+); 0: the CUDA-core ones, as float32. */
#ifndef DC_FLASH_WMMA
#define DC_FLASH_WMMA 1
#endif

#define FA_MAX_HD 256

template <class T> using fa_acc = typename dc_acc<T>::type; /* float, or double for float64 */

/* What one launch needs, passed by value (forward uses out/lse, backward the rest). */
template <class T> struct fa_params {
    T *out;                          /* (BH, Tq, Dv) */
    fa_acc<T> *lse;                  /* (BH, Tq) */
    T *dq, *dk, *dv;                 /* (BH, Tq, D), (BH, Tk, D), (BH, Tk, Dv) */
    const T *q, *k, *v, *dout;       /* (BH, Tq, D), (BH, Tk, D), (BH, Tk, Dv), (BH, Tq, Dv) */
    const fa_acc<T> *lse_in, *delta; /* (BH, Tq) */
    int64_t BH, Tq, Tk;
    int D, Dv;
    fa_acc<T> scale;
    int causal;
    bool vec; /* D, Dv and every q/k/v/dout pointer allow 16-byte loads */
};

/* --- small device helpers ------------------------------------------------------------------- */

struct fa_m {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ float max(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ double max(double a, double b) { return fmax(a, b); }
};

/* dst (ROWS, LD) <- rows row0 .. row0 + ROWS - 1 of src (nrows, ncols) as type S; rows past nrows
 * and columns past ncols (up to HD) are zero, the padding the tiles compute on. NT threads. */
template <class T, class S, int ROWS, int HD, int LD, int NT>
__device__ __forceinline__ void fa_load_rows(S *dst, const T *src, int64_t row0, int64_t nrows, int ncols, bool vec)
{
    constexpr int V = 16 / sizeof(T);
    constexpr int CH = HD / V; /* 16-byte chunks per row */
    static_assert(HD % V == 0 && LD % (16 / sizeof(S)) == 0, "fa_load_rows: unaligned tile");
    for (int e = threadIdx.x; e < ROWS * CH; e += NT) {
        const int r = e / CH, c0 = (e % CH) * V;
        const int64_t row = row0 + r;
        const bool in = row < nrows;
        dc_pack16<T> p;
        if (in && vec && c0 + V <= ncols) {
            p = *reinterpret_cast<const dc_pack16<T> *>(src + row * ncols + c0);
        } else {
#pragma unroll
            for (int t = 0; t < V; t++) p.v[t] = in && c0 + t < ncols ? src[row * ncols + c0 + t] : dc_store<T>(0.0f);
        }
        S *d = dst + r * LD + c0;
        if constexpr (std::is_same<S, T>::value) {
            *reinterpret_cast<dc_pack16<T> *>(d) = p;
        } else {
#pragma unroll
            for (int t = 0; t < V; t++) d[t] = (S)dc_load(p.v[t]);
        }
    }
}

/* dst[t] = src[row0 + t] for the ROWS rows of a tile, 0 past nrows. */
template <class S, class L, int ROWS, int NT>
__device__ __forceinline__ void fa_load_vec(S *dst, const L *src, int64_t row0, int64_t nrows)
{
    for (int t = threadIdx.x; t < ROWS; t += NT) dst[t] = row0 + t < nrows ? (S)src[row0 + t] : (S)0;
}

/* Visible: key j exists and, when causal, does not follow query i. */
__device__ __forceinline__ bool fa_visible(int64_t i, int64_t j, int64_t Tk, int causal)
{
    return j < Tk && (!causal || j <= i);
}

/* ================================ CUDA-core tiles ============================================== */

#define FA_NT 256 /* threads of a CUDA-core block: (ty, tx) = (tid / 16, tid % 16) */

/* Tile geometry for compute type A and padded head dim HD. A thread owns rows ty + 16 r (r < RM) of
 * a tile, score columns tx + 16 c (c < RM) and output columns n * 16 VW + tx * VW + e (n < HD / (16
 * VW), e < VW): HD / 16 of them. */
template <class A, int HD> struct fa_simt_cfg {
    static constexpr int VW = 16 / sizeof(A); /* elements of one 16-byte shared-memory access */
    static constexpr int LD = HD + VW;        /* row stride: 16-byte aligned, rows on distinct banks */
    static constexpr int BT0 = 32768 / (HD * (int)sizeof(A));
    static constexpr int BT = BT0 < 64 ? BT0 : 64; /* tile rows: a tile is <= 32 KiB */
    static constexpr int RM = BT / 16;
    static constexpr int CV = HD / 16;
    static_assert(HD % (16 * VW) == 0 && BT % 16 == 0, "fa_simt_cfg: bad head dim");
};

/* s[r][c] = X[ty + 16 r] . Y[tx + 16 c] over the HD (zero-padded) columns of two (BT, LD) tiles. X
 * rows are shared by a half-warp (broadcast), Y rows by lanes 8 apart (16-byte reads, one row per
 * lane of a quarter-warp: no bank conflict). */
template <class A, int HD>
__device__ __forceinline__ void fa_tile_dot(A (&s)[fa_simt_cfg<A, HD>::RM][fa_simt_cfg<A, HD>::RM], const A *X,
                                            const A *Y, int ty, int tx)
{
    typedef fa_simt_cfg<A, HD> C;
    constexpr int RM = C::RM, VW = C::VW;
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < RM; c++) s[r][c] = 0;
#pragma unroll 4
    for (int d = 0; d < HD; d += VW) {
        dc_pack16<A> x[RM], y[RM];
#pragma unroll
        for (int r = 0; r < RM; r++) x[r] = *reinterpret_cast<const dc_pack16<A> *>(X + (ty + 16 * r) * C::LD + d);
#pragma unroll
        for (int c = 0; c < RM; c++) y[c] = *reinterpret_cast<const dc_pack16<A> *>(Y + (tx + 16 * c) * C::LD + d);
#pragma unroll
        for (int r = 0; r < RM; r++)
#pragma unroll
            for (int c = 0; c < RM; c++)
#pragma unroll
                for (int e = 0; e < VW; e++) s[r][c] += x[r].v[e] * y[c].v[e];
    }
}

/* acc[r][n VW + e] += sum_j p[row ty + 16 r][j] * Y[j][n * 16 VW + tx * VW + e] over the BT rows j of
 * the (BT, LD) tile Y. Score column j of a row sits in lane tx = j % 16 of the row's half-warp,
 * register p[r][j / 16]: shuffled out, one j at a time. */
template <class A, int HD>
__device__ __forceinline__ void fa_tile_accum(A (&acc)[fa_simt_cfg<A, HD>::RM][fa_simt_cfg<A, HD>::CV],
                                              const A (&p)[fa_simt_cfg<A, HD>::RM][fa_simt_cfg<A, HD>::RM], const A *Y,
                                              int tx, int lane)
{
    typedef fa_simt_cfg<A, HD> C;
    constexpr int RM = C::RM, VW = C::VW, NV = HD / (16 * VW);
#pragma unroll
    for (int c = 0; c < RM; c++) {
#pragma unroll 4
        for (int t = 0; t < 16; t++) {
            const int j = c * 16 + t;
            A pj[RM];
#pragma unroll
            for (int r = 0; r < RM; r++) pj[r] = __shfl_sync(0xffffffffu, p[r][c], (lane & 16) | t);
#pragma unroll
            for (int n = 0; n < NV; n++) {
                const dc_pack16<A> y = *reinterpret_cast<const dc_pack16<A> *>(Y + j * C::LD + n * 16 * VW + tx * VW);
#pragma unroll
                for (int r = 0; r < RM; r++)
#pragma unroll
                    for (int e = 0; e < VW; e++) acc[r][n * VW + e] += pj[r] * y.v[e];
            }
        }
    }
}

/* Reductions over the 16 lanes of a half-warp (one tile row); every lane ends with the same bits
 * (each butterfly step adds the same two values in both partners). */
template <class A> __device__ __forceinline__ A fa_half_max(A x)
{
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x = fa_m::max(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
template <class A> __device__ __forceinline__ A fa_half_sum(A x)
{
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Forward, one block per (bh, BT queries): out (BH, Tq, Dv), lse (BH, Tq). Online softmax per row:
 * running max m, sum l, accumulator rescaled by exp(m_old - m_new) when the max grows. */
template <class T, int HD> __global__ void __launch_bounds__(FA_NT) flash_fwd_simt_kernel(fa_params<T> P, int64_t nq)
{
    typedef fa_acc<T> A;
    typedef fa_simt_cfg<A, HD> C;
    constexpr int BT = C::BT, RM = C::RM, CV = C::CV, VW = C::VW, LD = C::LD;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    A *Qs = reinterpret_cast<A *>(fa_smem); /* (BT, LD) */
    A *Ks = Qs + BT * LD;                   /* (BT, LD) */
    A *Vs = Ks + BT * LD;                   /* (BT, LD) */
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4, lane = tid & 31;
    const int64_t bh = blockIdx.x / nq, i0 = (nq - 1 - blockIdx.x % nq) * BT; /* heaviest tiles first */
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const T *__restrict__ q = P.q + bh * Tq * D;
    const T *__restrict__ k = P.k + bh * Tk * D;
    const T *__restrict__ v = P.v + bh * Tk * Dv;

    fa_load_rows<T, A, BT, HD, LD, FA_NT>(Qs, q, i0, Tq, D, P.vec);
    A m[RM], l[RM], acc[RM][CV];
#pragma unroll
    for (int r = 0; r < RM; r++) {
        m[r] = -INFINITY;
        l[r] = 0;
#pragma unroll
        for (int c = 0; c < CV; c++) acc[r][c] = 0;
    }
    const int64_t kend = P.causal ? (Tk < i0 + BT ? Tk : i0 + BT) : Tk; /* keys past the tile's last row: masked */
    for (int64_t j0 = 0; j0 < kend; j0 += BT) {
        __syncthreads(); /* the previous tile's K/V are no longer read (and Q is stored) */
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Ks, k, j0, Tk, D, P.vec);
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Vs, v, j0, Tk, Dv, P.vec);
        __syncthreads();
        A s[RM][RM];
        fa_tile_dot<A, HD>(s, Qs, Ks, ty, tx);
#pragma unroll
        for (int r = 0; r < RM; r++) {
            const int64_t i = i0 + ty + 16 * r;
            A mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < RM; c++) {
                s[r][c] = fa_visible(i, j0 + tx + 16 * c, Tk, P.causal) ? s[r][c] * P.scale : (A)-INFINITY;
                mx = fa_m::max(mx, s[r][c]);
            }
            const A mnew = fa_m::max(m[r], fa_half_max(mx));
            const A mu = mnew == (A)-INFINITY ? (A)0 : mnew; /* no key seen yet: exp(-inf - 0) = 0 */
            const A alpha = fa_m::exp(m[r] - mu);
            A rs = 0;
#pragma unroll
            for (int c = 0; c < RM; c++) {
                s[r][c] = fa_m::exp(s[r][c] - mu);
                rs += s[r][c];
            }
            l[r] = l[r] * alpha + fa_half_sum(rs);
            m[r] = mnew;
#pragma unroll
            for (int c = 0; c < CV; c++) acc[r][c] *= alpha;
        }
        fa_tile_accum<A, HD>(acc, s, Vs, tx, lane);
    }

    T *__restrict__ out = P.out + bh * Tq * Dv;
#pragma unroll
    for (int r = 0; r < RM; r++) {
        const int64_t i = i0 + ty + 16 * r;
        if (i >= Tq) continue;
        const A inv = l[r] == 0 ? (A)0 : (A)1 / l[r];
#pragma unroll
        for (int c = 0; c < CV; c++) {
            const int col = (c / VW) * 16 * VW + tx * VW + c % VW;
            if (col < Dv) out[i * Dv + col] = dc_store<T>(acc[r][c] * inv);
        }
        if (tx == 0) P.lse[bh * Tq + i] = l[r] == 0 ? (A)-INFINITY : m[r] + fa_m::log(l[r]);
    }
}

/* Backward dk, dv: one block per (bh, BT keys), looping over the query tiles that can see them.
 * Tile rows are keys, score columns queries: s = S^T, dp = dP^T. */
template <class T, int HD>
__global__ void __launch_bounds__(FA_NT) flash_bwd_dkdv_simt_kernel(fa_params<T> P, int64_t nk)
{
    typedef fa_acc<T> A;
    typedef fa_simt_cfg<A, HD> C;
    constexpr int BT = C::BT, RM = C::RM, CV = C::CV, VW = C::VW, LD = C::LD;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    A *Ks = reinterpret_cast<A *>(fa_smem); /* (BT, LD) */
    A *Vs = Ks + BT * LD;                   /* (BT, LD) */
    A *Qs = Vs + BT * LD;                   /* (BT, LD) */
    A *Os = Qs + BT * LD;                   /* (BT, LD): dout */
    A *Ls = Os + BT * LD;                   /* (BT): lse */
    A *Es = Ls + BT;                        /* (BT): delta */
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4, lane = tid & 31;
    const int64_t bh = blockIdx.x / nk, j0 = (blockIdx.x % nk) * BT; /* causal: first tiles heaviest */
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const T *__restrict__ q = P.q + bh * Tq * D;
    const T *__restrict__ dout = P.dout + bh * Tq * Dv;
    const A *__restrict__ lse = P.lse_in + bh * Tq;
    const A *__restrict__ delta = P.delta + bh * Tq;

    fa_load_rows<T, A, BT, HD, LD, FA_NT>(Ks, P.k + bh * Tk * D, j0, Tk, D, P.vec);
    fa_load_rows<T, A, BT, HD, LD, FA_NT>(Vs, P.v + bh * Tk * Dv, j0, Tk, Dv, P.vec);
    A dka[RM][CV], dva[RM][CV];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < CV; c++) dka[r][c] = dva[r][c] = 0;
    for (int64_t i0 = P.causal ? j0 : 0; i0 < Tq; i0 += BT) { /* causal: queries before j0 see none */
        __syncthreads();
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Qs, q, i0, Tq, D, P.vec);
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Os, dout, i0, Tq, Dv, P.vec);
        fa_load_vec<A, A, BT, FA_NT>(Ls, lse, i0, Tq);
        fa_load_vec<A, A, BT, FA_NT>(Es, delta, i0, Tq);
        __syncthreads();
        A s[RM][RM], dp[RM][RM];
        fa_tile_dot<A, HD>(s, Ks, Qs, ty, tx);
        fa_tile_dot<A, HD>(dp, Vs, Os, ty, tx);
#pragma unroll
        for (int r = 0; r < RM; r++)
#pragma unroll
            for (int c = 0; c < RM; c++) {
                const int qi = tx + 16 * c;
                const bool ok = i0 + qi < Tq && fa_visible(i0 + qi, j0 + ty + 16 * r, Tk, P.causal);
                const A p = ok ? fa_m::exp(s[r][c] * P.scale - Ls[qi]) : (A)0;
                dp[r][c] = ok ? p * (dp[r][c] - Es[qi]) : (A)0;
                s[r][c] = p;
            }
        fa_tile_accum<A, HD>(dva, s, Os, tx, lane);
        fa_tile_accum<A, HD>(dka, dp, Qs, tx, lane);
    }

    T *__restrict__ dk = P.dk + bh * Tk * D;
    T *__restrict__ dv = P.dv + bh * Tk * Dv;
#pragma unroll
    for (int r = 0; r < RM; r++) {
        const int64_t j = j0 + ty + 16 * r;
        if (j >= Tk) continue;
#pragma unroll
        for (int c = 0; c < CV; c++) {
            const int col = (c / VW) * 16 * VW + tx * VW + c % VW;
            if (col < D) dk[j * D + col] = dc_store<T>(dka[r][c] * P.scale);
            if (col < Dv) dv[j * Dv + col] = dc_store<T>(dva[r][c]);
        }
    }
}

/* Backward dq: one block per (bh, BT queries), looping over the key tiles they see. */
template <class T, int HD> __global__ void __launch_bounds__(FA_NT) flash_bwd_dq_simt_kernel(fa_params<T> P, int64_t nq)
{
    typedef fa_acc<T> A;
    typedef fa_simt_cfg<A, HD> C;
    constexpr int BT = C::BT, RM = C::RM, CV = C::CV, VW = C::VW, LD = C::LD;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    A *Qs = reinterpret_cast<A *>(fa_smem); /* (BT, LD) */
    A *Os = Qs + BT * LD;                   /* (BT, LD): dout */
    A *Ks = Os + BT * LD;                   /* (BT, LD) */
    A *Vs = Ks + BT * LD;                   /* (BT, LD) */
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4, lane = tid & 31;
    const int64_t bh = blockIdx.x / nq, i0 = (nq - 1 - blockIdx.x % nq) * BT;
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const T *__restrict__ k = P.k + bh * Tk * D;
    const T *__restrict__ v = P.v + bh * Tk * Dv;

    fa_load_rows<T, A, BT, HD, LD, FA_NT>(Qs, P.q + bh * Tq * D, i0, Tq, D, P.vec);
    fa_load_rows<T, A, BT, HD, LD, FA_NT>(Os, P.dout + bh * Tq * Dv, i0, Tq, Dv, P.vec);
    A lr[RM], er[RM], dqa[RM][CV];
#pragma unroll
    for (int r = 0; r < RM; r++) {
        const int64_t i = i0 + ty + 16 * r;
        lr[r] = i < Tq ? P.lse_in[bh * Tq + i] : (A)0;
        er[r] = i < Tq ? P.delta[bh * Tq + i] : (A)0;
#pragma unroll
        for (int c = 0; c < CV; c++) dqa[r][c] = 0;
    }
    const int64_t kend = P.causal ? (Tk < i0 + BT ? Tk : i0 + BT) : Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BT) {
        __syncthreads();
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Ks, k, j0, Tk, D, P.vec);
        fa_load_rows<T, A, BT, HD, LD, FA_NT>(Vs, v, j0, Tk, Dv, P.vec);
        __syncthreads();
        A s[RM][RM], dp[RM][RM];
        fa_tile_dot<A, HD>(s, Qs, Ks, ty, tx);
        fa_tile_dot<A, HD>(dp, Os, Vs, ty, tx);
#pragma unroll
        for (int r = 0; r < RM; r++)
#pragma unroll
            for (int c = 0; c < RM; c++) {
                const int64_t i = i0 + ty + 16 * r;
                const bool ok = i < Tq && fa_visible(i, j0 + tx + 16 * c, Tk, P.causal);
                const A p = ok ? fa_m::exp(s[r][c] * P.scale - lr[r]) : (A)0;
                s[r][c] = ok ? p * (dp[r][c] - er[r]) : (A)0; /* dS */
            }
        fa_tile_accum<A, HD>(dqa, s, Ks, tx, lane);
    }

    T *__restrict__ dq = P.dq + bh * Tq * D;
#pragma unroll
    for (int r = 0; r < RM; r++) {
        const int64_t i = i0 + ty + 16 * r;
        if (i >= Tq) continue;
#pragma unroll
        for (int c = 0; c < CV; c++) {
            const int col = (c / VW) * 16 * VW + tx * VW + c % VW;
            if (col < D) dq[i * D + col] = dc_store<T>(dqa[r][c] * P.scale);
        }
    }
}

/* ================================ tensor-core tiles (bfloat16, float16) ======================== */

#define FA_WNT 128 /* 4 warps, 16 tile rows each */

namespace wmma = nvcuda::wmma;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> fa_facc;
template <class T> using fa_fa_row = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <class T> using fa_fb_row = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <class T> using fa_fb_col = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;

/* Forward tiles: BR = 64 queries (16 per warp), BC keys. Q/K/V tiles are (rows, LD) in T, LD = HD + 8
 * (wmma wants a multiple of 8; the 16-byte skew spreads rows over the banks). Per warp: a (16, LS)
 * float scratch for S and for the P @ V chunks, a (16, LP) T tile for P. Every fragment pointer is
 * 32-byte aligned (row strides are multiples of 16 elements' bytes apart, offsets multiples of 16). */
template <int HD> struct fa_wf_cfg {
    static constexpr int BR = 64;
    static constexpr int BC = HD > 128 ? 32 : 64; /* HD = 256: smaller K/V tiles keep 2 blocks per SM */
    static constexpr int LD = HD + 8;
    static constexpr int LS = BC + 8; /* floats; lane pairs read rows with 16-byte loads, no conflict */
    static constexpr int LP = BC + 8;
    static constexpr size_t smem_bytes(size_t tsize)
    {
        return (size_t)(BR + 2 * BC) * LD * tsize + 4 * 16 * LS * sizeof(float) + 4 * 16 * LP * tsize;
    }
};

/* Forward on tensor cores: out (BH, Tq, Dv), lse (BH, Tq) float. Lane (r, h) = (lane / 2, lane % 2)
 * of warp w owns query row i0 + 16 w + r and the columns (2 mm + h) * 4 + e (mm < BC / 8, e < 4) of
 * every BC-wide chunk of the score tile and of the output row. */
template <class T, int HD> __global__ void __launch_bounds__(FA_WNT) flash_fwd_wmma_kernel(fa_params<T> P, int64_t nq)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap(); /* 16-bit wmma needs sm_80; the build targets sm_80 and sm_90 */
#else
    typedef fa_wf_cfg<HD> C;
    constexpr int BR = C::BR, BC = C::BC, LD = C::LD, LS = C::LS, LP = C::LP;
    constexpr int NF = BC / 16, NK = HD / 16, NCH = HD / BC, NPL = BC / 2;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    T *Qs = reinterpret_cast<T *>(fa_smem);              /* (BR, LD) */
    T *Ks = Qs + BR * LD;                                /* (BC, LD) */
    T *Vs = Ks + BC * LD;                                /* (BC, LD) */
    float *Ss = reinterpret_cast<float *>(Vs + BC * LD); /* (4, 16, LS) */
    T *Ps = reinterpret_cast<T *>(Ss + 4 * 16 * LS);     /* (4, 16, LP) */
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, r = lane >> 1, h = lane & 1;
    const int64_t bh = blockIdx.x / nq, i0 = (nq - 1 - blockIdx.x % nq) * BR;
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const float scale = P.scale;
    const T *__restrict__ k = P.k + bh * Tk * D;
    const T *__restrict__ v = P.v + bh * Tk * Dv;
    float *Sw = Ss + w * 16 * LS;
    T *Pw = Ps + w * 16 * LP;
    const T *Qw = Qs + w * 16 * LD;
    const int64_t i = i0 + w * 16 + r; /* this lane's query row */

    fa_load_rows<T, T, BR, HD, LD, FA_WNT>(Qs, P.q + bh * Tq * D, i0, Tq, D, P.vec);
    float m = -INFINITY, l = 0, o[NCH][NPL];
#pragma unroll
    for (int ch = 0; ch < NCH; ch++)
#pragma unroll
        for (int t = 0; t < NPL; t++) o[ch][t] = 0;
    const int64_t kend = P.causal ? (Tk < i0 + BR ? Tk : i0 + BR) : Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BC) {
        __syncthreads();
        fa_load_rows<T, T, BC, HD, LD, FA_WNT>(Ks, k, j0, Tk, D, P.vec);
        fa_load_rows<T, T, BC, HD, LD, FA_WNT>(Vs, v, j0, Tk, Dv, P.vec);
        __syncthreads();
        if (P.causal && i0 + w * 16 + 15 < j0) continue; /* warp-uniform: every key masked for its rows */

        /* S_w (16, BC) = Q_w K^T -> scratch */
        {
            fa_facc sc[NF];
#pragma unroll
            for (int f = 0; f < NF; f++) wmma::fill_fragment(sc[f], 0.0f);
#pragma unroll
            for (int kk = 0; kk < NK; kk++) {
                fa_fa_row<T> qa;
                wmma::load_matrix_sync(qa, Qw + kk * 16, LD);
#pragma unroll
                for (int f = 0; f < NF; f++) {
                    fa_fb_col<T> kb; /* K^T: element (d, key) at Ks[key * LD + d] */
                    wmma::load_matrix_sync(kb, Ks + f * 16 * LD + kk * 16, LD);
                    wmma::mma_sync(sc[f], qa, kb, sc[f]);
                }
            }
#pragma unroll
            for (int f = 0; f < NF; f++) wmma::store_matrix_sync(Sw + f * 16, sc[f], LS, wmma::mem_row_major);
        }
        __syncwarp();

        /* online softmax of row r (the lane pair h = 0, 1 splits its columns); P -> Pw in T */
        {
            float sv[NPL], mx = -INFINITY;
#pragma unroll
            for (int mm = 0; mm < BC / 8; mm++) {
                const float4 t4 = *reinterpret_cast<const float4 *>(Sw + r * LS + (2 * mm + h) * 4);
                const float tv[4] = { t4.x, t4.y, t4.z, t4.w };
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int64_t j = j0 + (2 * mm + h) * 4 + e;
                    sv[mm * 4 + e] = fa_visible(i, j, Tk, P.causal) ? tv[e] * scale : -INFINITY;
                    mx = fmaxf(mx, sv[mm * 4 + e]);
                }
            }
            const float mnew = fmaxf(m, fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)));
            const float mu = mnew == -INFINITY ? 0.0f : mnew;
            const float alpha = expf(m - mu);
            float rs = 0;
#pragma unroll
            for (int t = 0; t < NPL; t++) {
                sv[t] = expf(sv[t] - mu);
                rs += sv[t];
            }
            l = l * alpha + (rs + __shfl_xor_sync(0xffffffffu, rs, 1));
            m = mnew;
#pragma unroll
            for (int ch = 0; ch < NCH; ch++)
#pragma unroll
                for (int t = 0; t < NPL; t++) o[ch][t] *= alpha;
#pragma unroll
            for (int mm = 0; mm < BC / 8; mm++)
#pragma unroll
                for (int e = 0; e < 4; e++) Pw[r * LP + (2 * mm + h) * 4 + e] = dc_store<T>(sv[mm * 4 + e]);
        }
        __syncwarp();

        /* O_w += P_w V, BC output columns at a time through the scratch */
#pragma unroll
        for (int ch = 0; ch < NCH; ch++) {
            fa_facc oc[NF];
#pragma unroll
            for (int f = 0; f < NF; f++) wmma::fill_fragment(oc[f], 0.0f);
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                fa_fa_row<T> pa;
                wmma::load_matrix_sync(pa, Pw + kk * 16, LP);
#pragma unroll
                for (int f = 0; f < NF; f++) {
                    fa_fb_row<T> vb; /* V: element (key, col) at Vs[key * LD + col] */
                    wmma::load_matrix_sync(vb, Vs + kk * 16 * LD + ch * BC + f * 16, LD);
                    wmma::mma_sync(oc[f], pa, vb, oc[f]);
                }
            }
#pragma unroll
            for (int f = 0; f < NF; f++) wmma::store_matrix_sync(Sw + f * 16, oc[f], LS, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int mm = 0; mm < BC / 8; mm++) {
                const float4 t4 = *reinterpret_cast<const float4 *>(Sw + r * LS + (2 * mm + h) * 4);
                o[ch][mm * 4 + 0] += t4.x;
                o[ch][mm * 4 + 1] += t4.y;
                o[ch][mm * 4 + 2] += t4.z;
                o[ch][mm * 4 + 3] += t4.w;
            }
            __syncwarp(); /* the next chunk (or tile) overwrites the scratch */
        }
    }

    if (i < Tq) {
        T *__restrict__ out = P.out + (bh * Tq + i) * Dv;
        const float inv = l == 0 ? 0.0f : 1.0f / l;
#pragma unroll
        for (int ch = 0; ch < NCH; ch++)
#pragma unroll
            for (int mm = 0; mm < BC / 8; mm++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = ch * BC + (2 * mm + h) * 4 + e;
                    if (col < Dv) out[col] = dc_store<T>(o[ch][mm * 4 + e] * inv);
                }
        if (h == 0) P.lse[bh * Tq + i] = l == 0 ? -INFINITY : m + logf(l);
    }
#endif
}

/* Backward tiles on tensor cores (HD <= 128): 64 x 64, 16 rows per warp. Per warp a (16, LP) T tile
 * for dS (and one for P in the dk/dv kernel); tile-wide lse/delta (64) and the 16 x 16 index table
 * (float, 1 KiB) that tells each lane where its accumulator elements sit. */
template <int HD> struct fa_wb_cfg {
    static constexpr int B = 64;
    static constexpr int LD = HD + 8;
    static constexpr int LP = B + 8;
    static constexpr size_t smem_bytes(size_t tsize, int ntiles16)
    {
        return (size_t)4 * B * LD * tsize + (size_t)ntiles16 * 4 * 16 * LP * tsize + (2 * B + 256) * sizeof(float);
    }
};

/* Row and column (r * 16 + c) of each element of an accumulator fragment: an index table loaded as
 * an accumulator gives them (load and mma results share the fragment's element mapping). */
__device__ __forceinline__ void fa_frag_pos(int (&pos)[fa_facc::num_elements], const float *idx)
{
    fa_facc map;
    wmma::load_matrix_sync(map, idx, 16, wmma::mem_row_major);
#pragma unroll
    for (int e = 0; e < fa_facc::num_elements; e++) pos[e] = (int)map.x[e];
}

/* dk, dv on tensor cores: one block per (bh, 64 keys), warp w owns keys j0 + 16 w ..; per query tile
 * S^T_w = K_w Q^T and dP^T_w = V_w dout^T (16 x 16 fragments, elementwise in registers), then
 * dV_w += P^T_w dout, dK_w += dS^T_w Q with the (16, HD) accumulators held across all query tiles. */
template <class T, int HD>
__global__ void __launch_bounds__(FA_WNT) flash_bwd_dkdv_wmma_kernel(fa_params<T> P, int64_t nk)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();
#else
    typedef fa_wb_cfg<HD> C;
    constexpr int B = C::B, LD = C::LD, LP = C::LP, NH = HD / 16, NF = B / 16, NE = fa_facc::num_elements;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    T *Ks = reinterpret_cast<T *>(fa_smem);                  /* (B, LD) */
    T *Vs = Ks + B * LD;                                     /* (B, LD) */
    T *Qs = Vs + B * LD;                                     /* (B, LD) */
    T *Os = Qs + B * LD;                                     /* (B, LD): dout */
    T *Pb = Os + B * LD;                                     /* (4, 16, LP): P^T */
    T *Db = Pb + 4 * 16 * LP;                                /* (4, 16, LP): dS^T */
    float *Ls = reinterpret_cast<float *>(Db + 4 * 16 * LP); /* (B): lse */
    float *Es = Ls + B;                                      /* (B): delta */
    float *idx = Es + B;                                     /* (16, 16) */
    const int tid = threadIdx.x, w = tid >> 5;
    const int64_t bh = blockIdx.x / nk, j0 = (blockIdx.x % nk) * B;
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const float scale = P.scale;
    const T *__restrict__ q = P.q + bh * Tq * D;
    const T *__restrict__ dout = P.dout + bh * Tq * Dv;
    T *Pw = Pb + w * 16 * LP, *Dw = Db + w * 16 * LP;
    const T *Kw = Ks + w * 16 * LD, *Vw = Vs + w * 16 * LD;

    for (int t = tid; t < 256; t += FA_WNT) idx[t] = (float)t;
    fa_load_rows<T, T, B, HD, LD, FA_WNT>(Ks, P.k + bh * Tk * D, j0, Tk, D, P.vec);
    fa_load_rows<T, T, B, HD, LD, FA_WNT>(Vs, P.v + bh * Tk * Dv, j0, Tk, Dv, P.vec);
    __syncthreads();
    int pos[NE];
    fa_frag_pos(pos, idx);
    fa_facc dka[NH], dva[NH];
#pragma unroll
    for (int n = 0; n < NH; n++) {
        wmma::fill_fragment(dka[n], 0.0f);
        wmma::fill_fragment(dva[n], 0.0f);
    }
    for (int64_t i0 = P.causal ? j0 : 0; i0 < Tq; i0 += B) {
        __syncthreads();
        fa_load_rows<T, T, B, HD, LD, FA_WNT>(Qs, q, i0, Tq, D, P.vec);
        fa_load_rows<T, T, B, HD, LD, FA_WNT>(Os, dout, i0, Tq, Dv, P.vec);
        fa_load_vec<float, float, B, FA_WNT>(Ls, P.lse_in + bh * Tq, i0, Tq);
        fa_load_vec<float, float, B, FA_WNT>(Es, P.delta + bh * Tq, i0, Tq);
        __syncthreads();
#pragma unroll 1
        for (int f = 0; f < NF; f++) { /* queries i0 + 16 f .. */
            fa_facc s, dp;
            wmma::fill_fragment(s, 0.0f);
            wmma::fill_fragment(dp, 0.0f);
#pragma unroll
            for (int kk = 0; kk < NH; kk++) {
                fa_fa_row<T> xa;
                fa_fb_col<T> yb; /* Q^T / dout^T: element (d, query) at [query * LD + d] */
                wmma::load_matrix_sync(xa, Kw + kk * 16, LD);
                wmma::load_matrix_sync(yb, Qs + f * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, xa, yb, s);
                wmma::load_matrix_sync(xa, Vw + kk * 16, LD);
                wmma::load_matrix_sync(yb, Os + f * 16 * LD + kk * 16, LD);
                wmma::mma_sync(dp, xa, yb, dp);
            }
#pragma unroll
            for (int e = 0; e < NE; e++) {
                const int rr = pos[e] >> 4, qi = f * 16 + (pos[e] & 15);
                const bool ok = i0 + qi < Tq && fa_visible(i0 + qi, j0 + w * 16 + rr, Tk, P.causal);
                const float p = ok ? expf(s.x[e] * scale - Ls[qi]) : 0.0f;
                const float ds = ok ? p * (dp.x[e] - Es[qi]) : 0.0f;
                Pw[rr * LP + qi] = dc_store<T>(p);
                Dw[rr * LP + qi] = dc_store<T>(ds);
            }
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < NF; kk++) { /* queries kk * 16 .. of the tile */
            fa_fa_row<T> pa, da;
            wmma::load_matrix_sync(pa, Pw + kk * 16, LP);
            wmma::load_matrix_sync(da, Dw + kk * 16, LP);
#pragma unroll
            for (int n = 0; n < NH; n++) {
                fa_fb_row<T> yb; /* dout / Q: element (query, col) at [query * LD + col] */
                wmma::load_matrix_sync(yb, Os + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dva[n], pa, yb, dva[n]);
                wmma::load_matrix_sync(yb, Qs + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dka[n], da, yb, dka[n]);
            }
        }
    }

    T *__restrict__ dk = P.dk + bh * Tk * D;
    T *__restrict__ dv = P.dv + bh * Tk * Dv;
#pragma unroll
    for (int n = 0; n < NH; n++)
#pragma unroll
        for (int e = 0; e < NE; e++) {
            const int64_t j = j0 + w * 16 + (pos[e] >> 4);
            const int col = n * 16 + (pos[e] & 15);
            if (j >= Tk) continue;
            if (col < D) dk[j * D + col] = dc_store<T>(dka[n].x[e] * scale);
            if (col < Dv) dv[j * Dv + col] = dc_store<T>(dva[n].x[e]);
        }
#endif
}

/* dq on tensor cores: one block per (bh, 64 queries), warp w owns queries i0 + 16 w ..; per key tile
 * S_w = Q_w K^T and dP_w = dout_w V^T, then dQ_w += dS_w K. */
template <class T, int HD>
__global__ void __launch_bounds__(FA_WNT) flash_bwd_dq_wmma_kernel(fa_params<T> P, int64_t nq)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();
#else
    typedef fa_wb_cfg<HD> C;
    constexpr int B = C::B, LD = C::LD, LP = C::LP, NH = HD / 16, NF = B / 16, NE = fa_facc::num_elements;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    T *Qs = reinterpret_cast<T *>(fa_smem);                  /* (B, LD) */
    T *Os = Qs + B * LD;                                     /* (B, LD): dout */
    T *Ks = Os + B * LD;                                     /* (B, LD) */
    T *Vs = Ks + B * LD;                                     /* (B, LD) */
    T *Db = Vs + B * LD;                                     /* (4, 16, LP): dS */
    float *Ls = reinterpret_cast<float *>(Db + 4 * 16 * LP); /* (B): lse */
    float *Es = Ls + B;                                      /* (B): delta */
    float *idx = Es + B;                                     /* (16, 16) */
    const int tid = threadIdx.x, w = tid >> 5;
    const int64_t bh = blockIdx.x / nq, i0 = (nq - 1 - blockIdx.x % nq) * B;
    const int64_t Tq = P.Tq, Tk = P.Tk;
    const int D = P.D, Dv = P.Dv;
    const float scale = P.scale;
    const T *__restrict__ k = P.k + bh * Tk * D;
    const T *__restrict__ v = P.v + bh * Tk * Dv;
    T *Dw = Db + w * 16 * LP;
    const T *Qw = Qs + w * 16 * LD, *Ow = Os + w * 16 * LD;

    for (int t = tid; t < 256; t += FA_WNT) idx[t] = (float)t;
    fa_load_rows<T, T, B, HD, LD, FA_WNT>(Qs, P.q + bh * Tq * D, i0, Tq, D, P.vec);
    fa_load_rows<T, T, B, HD, LD, FA_WNT>(Os, P.dout + bh * Tq * Dv, i0, Tq, Dv, P.vec);
    fa_load_vec<float, float, B, FA_WNT>(Ls, P.lse_in + bh * Tq, i0, Tq);
    fa_load_vec<float, float, B, FA_WNT>(Es, P.delta + bh * Tq, i0, Tq);
    __syncthreads();
    int pos[NE];
    fa_frag_pos(pos, idx);
    float lr[NE], er[NE]; /* lse, delta of each element's row */
#pragma unroll
    for (int e = 0; e < NE; e++) {
        lr[e] = Ls[w * 16 + (pos[e] >> 4)];
        er[e] = Es[w * 16 + (pos[e] >> 4)];
    }
    fa_facc dqa[NH];
#pragma unroll
    for (int n = 0; n < NH; n++) wmma::fill_fragment(dqa[n], 0.0f);
    const int64_t kend = P.causal ? (Tk < i0 + B ? Tk : i0 + B) : Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += B) {
        __syncthreads();
        fa_load_rows<T, T, B, HD, LD, FA_WNT>(Ks, k, j0, Tk, D, P.vec);
        fa_load_rows<T, T, B, HD, LD, FA_WNT>(Vs, v, j0, Tk, Dv, P.vec);
        __syncthreads();
#pragma unroll 1
        for (int f = 0; f < NF; f++) { /* keys j0 + 16 f .. */
            fa_facc s, dp;
            wmma::fill_fragment(s, 0.0f);
            wmma::fill_fragment(dp, 0.0f);
#pragma unroll
            for (int kk = 0; kk < NH; kk++) {
                fa_fa_row<T> xa;
                fa_fb_col<T> yb; /* K^T / V^T: element (d, key) at [key * LD + d] */
                wmma::load_matrix_sync(xa, Qw + kk * 16, LD);
                wmma::load_matrix_sync(yb, Ks + f * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, xa, yb, s);
                wmma::load_matrix_sync(xa, Ow + kk * 16, LD);
                wmma::load_matrix_sync(yb, Vs + f * 16 * LD + kk * 16, LD);
                wmma::mma_sync(dp, xa, yb, dp);
            }
#pragma unroll
            for (int e = 0; e < NE; e++) {
                const int rr = pos[e] >> 4, kj = f * 16 + (pos[e] & 15);
                const int64_t i = i0 + w * 16 + rr;
                const bool ok = i < Tq && fa_visible(i, j0 + kj, Tk, P.causal);
                const float p = ok ? expf(s.x[e] * scale - lr[e]) : 0.0f;
                Dw[rr * LP + kj] = dc_store<T>(ok ? p * (dp.x[e] - er[e]) : 0.0f);
            }
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < NF; kk++) { /* keys kk * 16 .. of the tile */
            fa_fa_row<T> da;
            wmma::load_matrix_sync(da, Dw + kk * 16, LP);
#pragma unroll
            for (int n = 0; n < NH; n++) {
                fa_fb_row<T> kb; /* K: element (key, d) at Ks[key * LD + d] */
                wmma::load_matrix_sync(kb, Ks + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dqa[n], da, kb, dqa[n]);
            }
        }
    }

    T *__restrict__ dq = P.dq + bh * Tq * D;
#pragma unroll
    for (int n = 0; n < NH; n++)
#pragma unroll
        for (int e = 0; e < NE; e++) {
            const int64_t i = i0 + w * 16 + (pos[e] >> 4);
            const int col = n * 16 + (pos[e] & 15);
            if (i < Tq && col < D) dq[i * D + col] = dc_store<T>(dqa[n].x[e] * scale);
        }
#endif
}

/* --- launchers (plain names, stream last; each launch followed by a check) --------------------- */

/* Dynamic shared memory above the 48 KiB default needs an opt-in per kernel (a host-side attribute,
 * no synchronisation). */
template <class T>
static dc_status fa_launch(void (*kernel)(fa_params<T>, int64_t), int64_t nblocks, int nthreads, size_t smem,
                           const fa_params<T> &P, int64_t ntiles, cudaStream_t stream)
{
    DC_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<<<(unsigned)nblocks, nthreads, smem, stream>>>(P, ntiles);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

static inline int64_t fa_cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* Blocks of one launch: BH * tiles, in a 1-d grid (grid.y would cap BH at 65535). */
static dc_status fa_grid(const char *op, int64_t BH, int64_t tiles, int64_t *nblocks)
{
    if (tiles > 0 && BH > (int64_t)0x7fffffff / tiles)
        return dc_error(DC_ERR_UNSUPPORTED, "cuda %s: %lld heads x %lld tiles exceed the grid limit", op, (long long)BH,
                        (long long)tiles);
    *nblocks = BH * tiles;
    return DC_OK;
}

/* Padded head dim: 64, 128 or 256 (the caller has rejected > 256). */
static inline int fa_hd(int D, int Dv)
{
    const int d = D > Dv ? D : Dv;
    return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

template <class T, int HD> static dc_status flash_attn_forward_hd(const fa_params<T> &P, cudaStream_t stream)
{
    const char *op = "flash_attention";
    int64_t nblocks = 0;
    if constexpr (DC_FLASH_WMMA && sizeof(T) == 2) {
        typedef fa_wf_cfg<HD> C;
        const int64_t nq = fa_cdiv(P.Tq, C::BR);
        DC_TRY(fa_grid(op, P.BH, nq, &nblocks));
        return fa_launch(flash_fwd_wmma_kernel<T, HD>, nblocks, FA_WNT, C::smem_bytes(sizeof(T)), P, nq, stream);
    } else {
        typedef fa_simt_cfg<fa_acc<T>, HD> C;
        const int64_t nq = fa_cdiv(P.Tq, C::BT);
        DC_TRY(fa_grid(op, P.BH, nq, &nblocks));
        const size_t smem = (size_t)3 * C::BT * C::LD * sizeof(fa_acc<T>);
        return fa_launch(flash_fwd_simt_kernel<T, HD>, nblocks, FA_NT, smem, P, nq, stream);
    }
}

/* out, lse from q, k, v; P.BH * P.Tq > 0. */
template <class T> static dc_status flash_attn_forward(const fa_params<T> &P, cudaStream_t stream)
{
    switch (fa_hd(P.D, P.Dv)) {
    case 64: return flash_attn_forward_hd<T, 64>(P, stream);
    case 128: return flash_attn_forward_hd<T, 128>(P, stream);
    default: return flash_attn_forward_hd<T, 256>(P, stream);
    }
}

template <class T, int HD> static dc_status flash_attn_backward_hd(const fa_params<T> &P, cudaStream_t stream)
{
    const char *op = "flash_attention_backward";
    int64_t nblocks = 0;
    const bool want_dq = P.Tq > 0 && P.D > 0, want_dkdv = P.Tk > 0 && (P.D > 0 || P.Dv > 0);
    if constexpr (DC_FLASH_WMMA && sizeof(T) == 2 && HD <= 128) {
        typedef fa_wb_cfg<HD> C;
        const int64_t nq = fa_cdiv(P.Tq, C::B), nk = fa_cdiv(P.Tk, C::B);
        if (want_dq) {
            DC_TRY(fa_grid(op, P.BH, nq, &nblocks));
            DC_TRY(fa_launch(flash_bwd_dq_wmma_kernel<T, HD>, nblocks, FA_WNT, C::smem_bytes(sizeof(T), 1), P, nq,
                             stream));
        }
        if (want_dkdv) {
            DC_TRY(fa_grid(op, P.BH, nk, &nblocks));
            DC_TRY(fa_launch(flash_bwd_dkdv_wmma_kernel<T, HD>, nblocks, FA_WNT, C::smem_bytes(sizeof(T), 2), P, nk,
                             stream));
        }
    } else {
        typedef fa_acc<T> A;
        typedef fa_simt_cfg<A, HD> C;
        const int64_t nq = fa_cdiv(P.Tq, C::BT), nk = fa_cdiv(P.Tk, C::BT);
        const size_t smem = (size_t)4 * C::BT * C::LD * sizeof(A) + 2 * C::BT * sizeof(A);
        if (want_dq) {
            DC_TRY(fa_grid(op, P.BH, nq, &nblocks));
            DC_TRY(fa_launch(flash_bwd_dq_simt_kernel<T, HD>, nblocks, FA_NT, smem, P, nq, stream));
        }
        if (want_dkdv) {
            DC_TRY(fa_grid(op, P.BH, nk, &nblocks));
            DC_TRY(fa_launch(flash_bwd_dkdv_simt_kernel<T, HD>, nblocks, FA_NT, smem, P, nk, stream));
        }
    }
    return DC_OK;
}

/* dq (written only when P.D > 0), dk, dv from dout, q, k, v, lse, delta; P.BH > 0. */
template <class T> static dc_status flash_attn_backward(const fa_params<T> &P, cudaStream_t stream)
{
    switch (fa_hd(P.D, P.Dv)) {
    case 64: return flash_attn_backward_hd<T, 64>(P, stream);
    case 128: return flash_attn_backward_hd<T, 128>(P, stream);
    default: return flash_attn_backward_hd<T, 256>(P, stream);
    }
}

/* --- operand checks ---------------------------------------------------------------------------- */

#define FA_DTYPES (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))

/* Operand k: dtype dt, shape (n0, n1) or (n0, n1, n2) (nd = 2 or 3), contiguous, data when non-empty.
 * Anything else is an op-layer bug. */
static dc_status fa_operand(const dc_kargs *a, int k, dc_dtype dt, int nd, int64_t n0, int64_t n1, int64_t n2)
{
    const char *op = dc_op_names[a->op];
    if (k >= a->nt) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d missing (%d given)", op, k, a->nt);
    const dc_kview *v = &a->t[k];
    if (v->dtype != dt)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d is %s, expected %s", op, k, dc_dtype_name(v->dtype),
                        dc_dtype_name(dt));
    const int64_t want[3] = { n0, n1, n2 };
    bool ok = v->ndim == nd;
    for (int d = 0; ok && d < nd; d++) ok = v->shape[d] == want[d];
    if (!ok)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has shape %s, expected %s", op, k,
                        dc_shape_str(v->ndim, v->shape), dc_shape_str(nd, want));
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d must be contiguous", op, k);
        s *= v->shape[d];
    }
    if (!v->data && s > 0) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has no data", op, k);
    return DC_OK;
}

/* The head dims the tiles are compiled for. */
static dc_status fa_head_dims(const char *op, int64_t D, int64_t Dv)
{
    if (D > FA_MAX_HD || Dv > FA_MAX_HD)
        return dc_error(
            DC_ERR_UNSUPPORTED,
            "cuda %s: head dims up to %d are supported (tiles for 64, 128 and 256), got D = %lld, Dv = %lld", op,
            FA_MAX_HD, (long long)D, (long long)Dv);
    return DC_OK;
}

/* The first operand holding data: which device to run on (t0 may be empty, e.g. Dv == 0). */
static const void *fa_some_data(const dc_kargs *a, int n)
{
    for (int k = 0; k < n && k < a->nt; k++)
        if (a->t[k].data) return a->t[k].data;
    return NULL;
}

/* --- table entries ---------------------------------------------------------------------------- */

/* DC_OP_FLASH_ATTN: t0 out (BH, Tq, Dv), t1 lse (BH, Tq), t2 q (BH, Tq, D), t3 k (BH, Tk, D), t4 v
 * (BH, Tk, Dv); p.attn = { scale, causal }. */
static dc_status k_flash_attn(const dc_kargs *a)
{
    const char *op = dc_op_names[a->op];
    if (a->nt < 5) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 5", op, a->nt);
    const dc_kview *q = &a->t[2], *k = &a->t[3], *v = &a->t[4];
    const dc_dtype dt = q->dtype;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: q, k, v must be 3-d (BH, T, D)", op);
    const int64_t BH = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1], Dv = v->shape[2];
    return dc_dispatch<FA_DTYPES>(dt, op, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        const dc_dtype lt = sizeof(T) == 8 ? DC_FLOAT64 : DC_FLOAT32;
        DC_TRY(fa_operand(a, 0, dt, 3, BH, Tq, Dv));
        DC_TRY(fa_operand(a, 1, lt, 2, BH, Tq, 0));
        DC_TRY(fa_operand(a, 2, dt, 3, BH, Tq, D));
        DC_TRY(fa_operand(a, 3, dt, 3, BH, Tk, D));
        DC_TRY(fa_operand(a, 4, dt, 3, BH, Tk, Dv));
        DC_TRY(fa_head_dims(op, D, Dv));
        if (BH == 0 || Tq == 0) return DC_OK;
        DC_TRY(dc_cuda_use_device_of(fa_some_data(a, 5)));
        fa_params<T> P;
        memset(&P, 0, sizeof P);
        P.out = (T *)a->t[0].data;
        P.lse = (fa_acc<T> *)a->t[1].data;
        P.q = (const T *)q->data;
        P.k = (const T *)k->data;
        P.v = (const T *)v->data;
        P.BH = BH;
        P.Tq = Tq;
        P.Tk = Tk;
        P.D = (int)D;
        P.Dv = (int)Dv;
        P.scale = (fa_acc<T>)a->p.attn.scale;
        P.causal = a->p.attn.causal != 0;
        const int V = 16 / (int)sizeof(T);
        P.vec = D % V == 0 && Dv % V == 0 && dc_aligned16(P.q) && dc_aligned16(P.k) && dc_aligned16(P.v);
        return flash_attn_forward<T>(P, dc_cuda_stream());
    });
}

/* DC_OP_FLASH_ATTN_BWD: t0 dq (BH, Tq, D), t1 dk (BH, Tk, D), t2 dv (BH, Tk, Dv) (each written
 * whole), t3 dout (BH, Tq, Dv), t4 q, t5 k, t6 v, t7 lse (BH, Tq), t8 delta (BH, Tq) = rowsum(dout *
 * out). */
static dc_status k_flash_attn_bwd(const dc_kargs *a)
{
    const char *op = dc_op_names[a->op];
    if (a->nt < 9) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 9", op, a->nt);
    const dc_kview *q = &a->t[4], *k = &a->t[5], *v = &a->t[6];
    const dc_dtype dt = q->dtype;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: q, k, v must be 3-d (BH, T, D)", op);
    const int64_t BH = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1], Dv = v->shape[2];
    return dc_dispatch<FA_DTYPES>(dt, op, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        const dc_dtype lt = sizeof(T) == 8 ? DC_FLOAT64 : DC_FLOAT32;
        DC_TRY(fa_operand(a, 0, dt, 3, BH, Tq, D));
        DC_TRY(fa_operand(a, 1, dt, 3, BH, Tk, D));
        DC_TRY(fa_operand(a, 2, dt, 3, BH, Tk, Dv));
        DC_TRY(fa_operand(a, 3, dt, 3, BH, Tq, Dv));
        DC_TRY(fa_operand(a, 4, dt, 3, BH, Tq, D));
        DC_TRY(fa_operand(a, 5, dt, 3, BH, Tk, D));
        DC_TRY(fa_operand(a, 6, dt, 3, BH, Tk, Dv));
        DC_TRY(fa_operand(a, 7, lt, 2, BH, Tq, 0));
        DC_TRY(fa_operand(a, 8, lt, 2, BH, Tq, 0));
        DC_TRY(fa_head_dims(op, D, Dv));
        if (BH == 0) return DC_OK;
        DC_TRY(dc_cuda_use_device_of(fa_some_data(a, 9)));
        fa_params<T> P;
        memset(&P, 0, sizeof P);
        P.dq = (T *)a->t[0].data;
        P.dk = (T *)a->t[1].data;
        P.dv = (T *)a->t[2].data;
        P.dout = (const T *)a->t[3].data;
        P.q = (const T *)q->data;
        P.k = (const T *)k->data;
        P.v = (const T *)v->data;
        P.lse_in = (const fa_acc<T> *)a->t[7].data;
        P.delta = (const fa_acc<T> *)a->t[8].data;
        P.BH = BH;
        P.Tq = Tq;
        P.Tk = Tk;
        P.D = (int)D;
        P.Dv = (int)Dv;
        P.scale = (fa_acc<T>)a->p.attn.scale;
        P.causal = a->p.attn.causal != 0;
        const int V = 16 / (int)sizeof(T);
        P.vec = D % V == 0 && Dv % V == 0 && dc_aligned16(P.q) && dc_aligned16(P.k) && dc_aligned16(P.v) &&
                dc_aligned16(P.dout);
        return flash_attn_backward<T>(P, dc_cuda_stream());
    });
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_attention(dc_kernel_fn *k)
{
    k[DC_OP_FLASH_ATTN] = k_flash_attn;
    k[DC_OP_FLASH_ATTN_BWD] = k_flash_attn_bwd;
}
