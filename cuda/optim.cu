/* optim.cu: the fused optimizer steps (SGD, AdamW), in-place scaling (with clip_grad_norm_'s factor
 * computed on the device) and the multi-tensor launcher that queues a whole parameter list as one
 * kernel per chunk of tensors (backend-impl.h's launch_many slot), NORM_POW included.
 *
 * Reference: csrc/cpu/optim.c. Every step computes in the parameter's own precision (bfloat16 and
 * float16 parameters, gradients and moments in float32, each result rounded once: the numbers of
 * the CPU's float32 fallback for them, csrc/cpu/widen.c) with the CPU's exact operation order; the arithmetic goes
 * through the __f*_rn / __d*_rn intrinsics so nvcc does not contract a*b+c into an FMA (the CPU is built as ISO C11,
 * -ffp-contract=off): CUDA and CPU results are then equal bit for bit (IEEE division and square root on both sides).
 * The scalar coefficients (lr/bc1, 1/sqrt(bc2), ...) are computed on the host in double, as optim.c does, and rounded
 * to the param dtype once.
 *
 * Multi-tensor layout (PyTorch's multi_tensor_apply, with a binary search instead of a per-block
 * table): a tl_meta struct passed BY VALUE as the kernel argument (__grid_constant__: read in place
 * from parameter space) holds, per tensor, its pointers, its element count and its first block;
 * tensor i is split into ceil(numel / TL_CHUNK) blocks, block b finds its tensor by a binary search
 * over first-block indices (uniform over the block: constant-cache broadcasts), then processes its
 * chunk with 16-byte vector loads when every pointer of the tensor is 16-byte aligned. Parameter
 * sets (lr, betas, ...) are deduplicated: up to TL_MAXP distinct sets per launch, each tensor holds
 * an index. With CUDA 12.1+ (Volta+) the struct may use up to ~32 KB of kernel parameters, so a GPT-2
 * sized list (148 tensors) is one launch; older toolkits keep the classic 4 KB.
 *
 * NORM_POW in launch_many is deterministic without atomics: every block writes its partial
 * (sum |x|^p, or max |x|) to a scratch slot, then one single-block kernel combines the slots of each
 * run of consecutive tensors sharing an accumulator in a fixed order and adds into t0. Which thread
 * takes which element does not depend on pointer alignment, so the bits do not either. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "common.cuh"
#include "cuda-backend.h"

/* --- limits ------------------------------------------------------------------------------------- */

#define TL_THREADS 512   /* threads per block of the multi-tensor kernels */
#define TL_CHUNK   65536 /* elements per block (a multiple of every vector width) */
#define TL_MAXP    8     /* distinct parameter sets per launch */
#define TL_MAXSEG  128   /* accumulator runs per NORM_POW finishing launch (< 4 KB of params) */
#if CUDART_VERSION >= 12010
#define TL_PARAM_BYTES 32000 /* large kernel parameters (limit 32764 bytes; CUDA 12.1+, sm_70+) */
#else
#define TL_PARAM_BYTES 4000 /* the classic 4 KB limit */
#endif

/* norm kinds, as optim.c numbers them */
enum { NK_POW = 0, NK_L1 = 1, NK_L2 = 2, NK_MAX = 3, NK_CNT = 4 };

/* --- exact arithmetic (no FMA contraction: matches the CPU's -ffp-contract=off) ----------------- */

__device__ __forceinline__ float rn_mul(float a, float b)
{
    return __fmul_rn(a, b);
}
__device__ __forceinline__ double rn_mul(double a, double b)
{
    return __dmul_rn(a, b);
}
__device__ __forceinline__ float rn_add(float a, float b)
{
    return __fadd_rn(a, b);
}
__device__ __forceinline__ double rn_add(double a, double b)
{
    return __dadd_rn(a, b);
}
__device__ __forceinline__ float rn_sub(float a, float b)
{
    return __fsub_rn(a, b);
}
__device__ __forceinline__ double rn_sub(double a, double b)
{
    return __dsub_rn(a, b);
}
__device__ __forceinline__ float rn_div(float a, float b)
{
    return __fdiv_rn(a, b);
}
__device__ __forceinline__ double rn_div(double a, double b)
{
    return __ddiv_rn(a, b);
}
__device__ __forceinline__ float rn_sqrt(float a)
{
    return __fsqrt_rn(a);
}
__device__ __forceinline__ double rn_sqrt(double a)
{
    return __dsqrt_rn(a);
}

/* A product the host compiler may not fuse into the following subtraction (-march with FMA and
 * g++'s default -ffp-contract=fast would): optim.c rounds it on its own. */
static inline double host_mul_rounded(double a, double b)
{
    volatile double r = a * b;
    return r;
}

/* NaN-propagating max of optim.c's NORM_POW: a NaN, once seen, stays. */
__host__ __device__ __forceinline__ double comb_max(double acc, double v)
{
    return (v > acc || v != v) ? v : acc;
}

/* --- 16-byte packs ----------------------------------------------------------------------------------- */

template <class T> struct alignas(16) pk {
    static constexpr int W = 16 / (int)sizeof(T);
    T v[W];
};

/* V: a whole aligned pack (one 16-byte access); else lanes [0, nl) one by one (others read as 0). */
template <bool V, class T> __device__ __forceinline__ pk<T> pk_load(const T *p, int nl)
{
    if constexpr (V) {
        return *reinterpret_cast<const pk<T> *>(p);
    } else {
        pk<T> r;
#pragma unroll
        for (int l = 0; l < pk<T>::W; l++) r.v[l] = l < nl ? p[l] : T();
        return r;
    }
}
template <bool V, class T> __device__ __forceinline__ void pk_store(T *p, const pk<T> &r, int nl)
{
    if constexpr (V) {
        *reinterpret_cast<pk<T> *>(p) = r;
    } else {
#pragma unroll
        for (int l = 0; l < pk<T>::W; l++)
            if (l < nl) p[l] = r.v[l];
    }
}

__device__ __forceinline__ bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* One block's walk over its chunk of len elements in packs of W: pack slot s goes to thread
 * s % TL_THREADS, slots in increasing order, whether or not the pointers are aligned (so a
 * reduction sums in the same order either way). body(off, nl, std::true_type) for a whole aligned
 * pack, body(off, nl, std::false_type) for lane-by-lane access of nl <= W elements. */
template <class T, class Body> __device__ __forceinline__ void tl_chunk_loop(int len, bool aligned, Body &&body)
{
    constexpr int W = pk<T>::W;
    const int nslots = (len + W - 1) / W;
    for (int s = threadIdx.x; s < nslots; s += TL_THREADS) {
        const int off = s * W;
        if (aligned && off + W <= len)
            body(off, W, std::true_type());
        else
            body(off, min(W, len - off), std::false_type());
    }
}

/* Sum (or NaN-propagating max) over the block, in a fixed tree; the result is valid in thread 0.
 * Callers that reduce again must __syncthreads() in between (the shared slots are reused). */
__device__ __forceinline__ double block_reduce(double v, bool is_max)
{
    __shared__ double warp_part[TL_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        double w = __shfl_down_sync(0xffffffffu, v, o);
        v = is_max ? comb_max(v, w) : v + w;
    }
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < TL_THREADS / 32 ? warp_part[lane] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            double w = __shfl_down_sync(0xffffffffu, v, o);
            v = is_max ? comb_max(v, w) : v + w;
        }
    }
    return v;
}

/* --- the multi-tensor argument ---------------------------------------------------------------------- */

/* D pointer operands per tensor, parameter sets of type P. Lives in kernel-parameter space. */
template <int D, class P, int MAXT, int MAXP> struct tl_meta {
    void *ptr[D][MAXT];   /* operand d of tensor i (the contiguous data) */
    int64_t numel[MAXT];  /* elements of tensor i (> 0) */
    int64_t part[MAXT];   /* NORM_POW: scratch slot of tensor i's first block */
    int32_t block0[MAXT]; /* first block of tensor i in this launch (strictly increasing) */
    uint8_t pidx[MAXT];   /* tensor i's parameter set in prm[] */
    uint8_t is_f64[MAXT]; /* NORM_POW: tensor i is float64 (a launch may mix float32/float64) */
    P prm[MAXP];
    int ntensors, nprm;
};

/* Tensors per launch that fit the parameter budget. */
template <int D, class P> constexpr int tl_max_tensors()
{
    return (int)((TL_PARAM_BYTES - 64 - TL_MAXP * sizeof(P)) / (D * 8 + 8 + 8 + 4 + 1 + 1));
}

/* The tensor whose block range holds block b: the last i with block0[i] <= b. */
template <int MAXT> __device__ __forceinline__ int tl_find(const int32_t (&block0)[MAXT], int nt, int b)
{
    int lo = 0, hi = nt - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (block0[mid] <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* One block = one chunk of one tensor; Op::chunk does the work. */
template <class Op, int MAXT, int MAXP>
__global__ void __launch_bounds__(TL_THREADS)
    tl_kernel(const __grid_constant__ tl_meta<Op::D, typename Op::P, MAXT, MAXP> m)
{
    const int t = tl_find<MAXT>(m.block0, m.ntensors, (int)blockIdx.x);
    const int64_t c = (int64_t)blockIdx.x - m.block0[t]; /* chunk of tensor t */
    const int64_t lo = c * TL_CHUNK;
    const int len = (int)min((int64_t)TL_CHUNK, m.numel[t] - lo);
    Op::chunk(m, t, c, lo, len);
}

/* --- SGD ---------------------------------------------------------------------------------------------- */

/* Storage S (float, double, bfloat16, half) is read into its compute type T (float for the 16-bit
 * ones, as csrc/cpu/widen.c computes them: the same numbers bit for bit) and rounded back once. */
template <class S> __device__ __forceinline__ typename dc_acc<S>::type ld(S x)
{
    return dc_load(x);
}
template <class S, class T> __device__ __forceinline__ S st(T x)
{
    return dc_store<S>(x);
}

/* t0 param, t1 grad, t2 momentum buffer (when has_buf): optim.c's DEF_SGD. */
template <class S> struct sgd_op {
    typedef typename dc_acc<S>::type T;
    static constexpr int D = 3;
    struct P {
        T lr, mom, damp1, wd, sign; /* damp1 = (T)(1 - dampening) */
        int nesterov, first, has_buf;
    };
    template <class M> __device__ static void chunk(const M &m, int t, int64_t, int64_t lo, int len)
    {
        const P q = m.prm[m.pidx[t]];
        S *p = (S *)m.ptr[0][t] + lo;
        const S *gr = (const S *)m.ptr[1][t] + lo;
        S *buf = q.has_buf ? (S *)m.ptr[2][t] + lo : nullptr;
        const bool al = aligned16(p) && aligned16(gr) && (!buf || aligned16(buf));
        tl_chunk_loop<S>(len, al, [&](int off, int nl, auto vec) {
            constexpr bool V = decltype(vec)::value;
            pk<S> pv = pk_load<V>(p + off, nl), gv = pk_load<V>(gr + off, nl), bv;
            if (buf) bv = pk_load<V>(buf + off, nl);
#pragma unroll
            for (int l = 0; l < pk<S>::W; l++) {
                const T pi = ld(pv.v[l]);
                T g = rn_add(rn_mul(q.sign, ld(gv.v[l])), rn_mul(q.wd, pi));
                if (buf) {
                    T b = q.first ? g : rn_add(rn_mul(q.mom, ld(bv.v[l])), rn_mul(q.damp1, g));
                    bv.v[l] = st<S>(b);
                    g = q.nesterov ? rn_add(g, rn_mul(q.mom, b)) : b;
                }
                pv.v[l] = st<S>(rn_sub(pi, rn_mul(q.lr, g)));
            }
            if (buf) pk_store<V>(buf + off, bv, nl);
            pk_store<V>(p + off, pv, nl);
        });
    }
};

/* --- AdamW -------------------------------------------------------------------------------------------- */

/* t0 param, t1 grad, t2 exp_avg, t3 exp_avg_sq: optim.c's DEF_ADAMW. The moments are kept in the
 * parameter's dtype (torch's AdamW on 16-bit parameters), each rounded once per step. */
template <class S> struct adamw_op {
    typedef typename dc_acc<S>::type T;
    static constexpr int D = 4;
    struct P {
        T b1, b2, eps, decay, step, inv_sqrt_bc2, sign; /* decay = 1 - lr*wd, step = lr/bc1 */
    };
    template <class M> __device__ static void chunk(const M &m, int t, int64_t, int64_t lo, int len)
    {
        const P q = m.prm[m.pidx[t]];
        const T omb1 = rn_sub(T(1), q.b1), omb2 = rn_sub(T(1), q.b2);
        S *p = (S *)m.ptr[0][t] + lo, *mm = (S *)m.ptr[2][t] + lo, *vv = (S *)m.ptr[3][t] + lo;
        const S *gr = (const S *)m.ptr[1][t] + lo;
        const bool al = aligned16(p) && aligned16(gr) && aligned16(mm) && aligned16(vv);
        tl_chunk_loop<S>(len, al, [&](int off, int nl, auto vec) {
            constexpr bool V = decltype(vec)::value;
            pk<S> pv = pk_load<V>(p + off, nl), gv = pk_load<V>(gr + off, nl);
            pk<S> mv = pk_load<V>(mm + off, nl), vs = pk_load<V>(vv + off, nl);
#pragma unroll
            for (int l = 0; l < pk<S>::W; l++) {
                T g = rn_mul(q.sign, ld(gv.v[l]));
                T mi = rn_add(rn_mul(q.b1, ld(mv.v[l])), rn_mul(omb1, g));
                T vi = rn_add(rn_mul(q.b2, ld(vs.v[l])), rn_mul(rn_mul(omb2, g), g));
                mv.v[l] = st<S>(mi);
                vs.v[l] = st<S>(vi);
                /* p*decay - (step*mi) / (sqrt(vi)*inv_sqrt_bc2 + eps) */
                T den = rn_add(rn_mul(rn_sqrt(vi), q.inv_sqrt_bc2), q.eps);
                pv.v[l] = st<S>(rn_sub(rn_mul(ld(pv.v[l]), q.decay), rn_div(rn_mul(q.step, mi), den)));
            }
            pk_store<V>(mm + off, mv, nl);
            pk_store<V>(vv + off, vs, nl);
            pk_store<V>(p + off, pv, nl);
        });
    }
};

/* --- SCALE -------------------------------------------------------------------------------------------- */

/* clip_grad_norm_'s factor from the NORM_POW accumulator, as optim.c's dc_cpu_scale: total =
 * acc^(1/p) (acc for p = inf or 1; the correctly rounded sqrt for p = 2, where CUDA's pow may be 2 ulp
 * off and glibc's is within 1), min(1, max_norm / (total + 1e-6)) in double; NaN stays NaN (torch's
 * clamp(max=1)). */
__device__ __forceinline__ double clip_coef(double acc, double max_norm, double norm_p)
{
    double total;
    if (isinf(norm_p) || norm_p == 1.0)
        total = acc;
    else if (norm_p == 2.0)
        total = __dsqrt_rn(acc);
    else
        total = pow(acc, __ddiv_rn(1.0, norm_p));
    double c = __ddiv_rn(max_norm, __dadd_rn(total, 1e-6));
    return c > 1.0 ? 1.0 : c;
}

template <class T> struct scale_prm {
    const double *acc; /* clip: the float64 0-d accumulator (t1) */
    double max_norm, norm_p;
    T factor; /* !clip: (T)p.scale.factor */
    int clip;
};

template <class T> __device__ __forceinline__ T scale_factor(const scale_prm<T> &q)
{
    return q.clip ? (T)clip_coef(*q.acc, q.max_norm, q.norm_p) : q.factor;
}

/* t0 *= factor (t0 dense: its elements one contiguous block, in any dim order). */
template <class T> struct scale_op {
    static constexpr int D = 1;
    typedef scale_prm<T> P;
    template <class M> __device__ static void chunk(const M &m, int t, int64_t, int64_t lo, int len)
    {
        const T f = scale_factor(m.prm[m.pidx[t]]);
        T *x = (T *)m.ptr[0][t] + lo;
        tl_chunk_loop<T>(len, aligned16(x), [&](int off, int nl, auto vec) {
            constexpr bool V = decltype(vec)::value;
            pk<T> xv = pk_load<V>(x + off, nl);
#pragma unroll
            for (int l = 0; l < pk<T>::W; l++) xv.v[l] = rn_mul(xv.v[l], f);
            pk_store<V>(x + off, xv, nl);
        });
    }
};

/* Strided t0 (not dense): one element per thread-step through dc_geom. */
template <class T, bool OneD> __global__ void scale_strided_kernel(T *x, dc_geom<1> g, int64_t n, scale_prm<T> q)
{
    const T f = scale_factor(q);
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[1];
        dc_geom_offsets<1, OneD>(g, i, o);
        x[o[0]] = rn_mul(x[o[0]], f);
    }
}

/* --- NORM_POW (launch_many only; the per-tensor entry is reduce.cu's) ----------------------------------- */

template <int K> __device__ __forceinline__ double norm_step(double acc, double v, double p)
{
    if constexpr (K == NK_L1) return acc + fabs(v);
    if constexpr (K == NK_L2) return acc + v * v; /* exact product for float32 inputs */
    if constexpr (K == NK_MAX) return comb_max(acc, fabs(v));
    if constexpr (K == NK_CNT) return acc + (v != 0 ? 1.0 : 0.0);
    return acc + pow(fabs(v), p);
}

/* This thread's share of the chunk, in slot order (see tl_chunk_loop). */
template <class T, int K> __device__ __forceinline__ double norm_acc(const T *x, int len, double p)
{
    double acc = 0;
    tl_chunk_loop<T>(len, aligned16(x), [&](int off, int nl, auto vec) {
        constexpr bool V = decltype(vec)::value;
        pk<T> xv = pk_load<V>(x + off, nl);
#pragma unroll
        for (int l = 0; l < pk<T>::W; l++)
            if (V || l < nl) acc = norm_step<K>(acc, (double)xv.v[l], p);
    });
    return acc;
}

template <class T> __device__ __forceinline__ double norm_chunk(const T *x, int len, double p, int kind)
{
    switch (kind) {
    case NK_L1: return norm_acc<T, NK_L1>(x, len, p);
    case NK_L2: return norm_acc<T, NK_L2>(x, len, p);
    case NK_MAX: return norm_acc<T, NK_MAX>(x, len, p);
    case NK_CNT: return norm_acc<T, NK_CNT>(x, len, p);
    default: return norm_acc<T, NK_POW>(x, len, p);
    }
}

/* t1 (float32 or float64, dense) -> one partial per block in part[m.part[t] + chunk]. */
struct norm_op {
    static constexpr int D = 1;
    struct P {
        double *part; /* scratch: one double per block of the whole call */
        double p;
        int kind;
    };
    template <class M> __device__ static void chunk(const M &m, int t, int64_t c, int64_t lo, int len)
    {
        const P q = m.prm[m.pidx[t]];
        double acc = m.is_f64[t] ? norm_chunk<double>((const double *)m.ptr[0][t] + lo, len, q.p, q.kind)
                                 : norm_chunk<float>((const float *)m.ptr[0][t] + lo, len, q.p, q.kind);
        acc = block_reduce(acc, q.kind == NK_MAX);
        if (threadIdx.x == 0) q.part[m.part[t] + c] = acc;
    }
};

/* Runs of consecutive tensors sharing one accumulator: partials [start, start + count). */
struct seg_meta {
    double *acc[TL_MAXSEG];
    int64_t start[TL_MAXSEG], count[TL_MAXSEG];
    uint8_t is_max[TL_MAXSEG];
    int nseg;
    const double *part;
};

/* One block: each run, in order, combined in a fixed order, then acc = acc + s (or max). */
static __global__ void __launch_bounds__(TL_THREADS) norm_finish_kernel(const __grid_constant__ seg_meta m)
{
    for (int s = 0; s < m.nseg; s++) {
        const bool mx = m.is_max[s];
        const double *part = m.part + m.start[s];
        double v = 0;
        for (int64_t i = threadIdx.x; i < m.count[s]; i += TL_THREADS) v = mx ? comb_max(v, part[i]) : v + part[i];
        v = block_reduce(v, mx);
        if (threadIdx.x == 0) {
            double r = *m.acc[s];
            *m.acc[s] = mx ? comb_max(r, v) : r + v;
        }
        __syncthreads();
    }
}

/* --- host side: building and launching the lists ------------------------------------------------------ */

template <class Op, int MAXT, int MAXP> struct tl_list {
    tl_meta<Op::D, typename Op::P, MAXT, MAXP> m;
    int64_t nblocks;
};

template <class L> static void tl_reset(L *l)
{
    memset(&l->m, 0, sizeof l->m);
    l->nblocks = 0;
}

template <class Op, int MAXT, int MAXP> static dc_status tl_flush(tl_list<Op, MAXT, MAXP> *l, cudaStream_t stream)
{
    static_assert(sizeof(l->m) <= TL_PARAM_BYTES, "multi-tensor argument over the kernel-parameter budget");
    if (l->m.ntensors == 0) return DC_OK;
    tl_kernel<Op, MAXT, MAXP><<<(unsigned)l->nblocks, TL_THREADS, 0, stream>>>(l->m);
    DC_CUDA_CHECK_LAUNCH();
    tl_reset(l);
    return DC_OK;
}

static int64_t tl_blocks(int64_t numel)
{
    return (numel + TL_CHUNK - 1) / TL_CHUNK;
}

/* Append one tensor (numel > 0); launches the list first when it is full. q must come from a
 * memset struct (parameter sets are compared bytewise, padding included). */
template <class Op, int MAXT, int MAXP>
static dc_status tl_add(tl_list<Op, MAXT, MAXP> *l, void *const *ptr, int64_t numel, int64_t part, int is_f64,
                        const typename Op::P &q, cudaStream_t stream)
{
    const int64_t nb = tl_blocks(numel);
    if (nb > INT32_MAX)
        return dc_error(DC_ERR_VALUE, "cuda optimizer: a tensor of %lld elements is too large", (long long)numel);
    int pi = -1;
    for (int k = 0; k < l->m.nprm; k++)
        if (!memcmp(&l->m.prm[k], &q, sizeof q)) pi = k;
    if (l->m.ntensors == MAXT || l->nblocks + nb > INT32_MAX || (pi < 0 && l->m.nprm == MAXP)) {
        DC_TRY(tl_flush(l, stream));
        pi = -1;
    }
    if (pi < 0) {
        pi = l->m.nprm++;
        memcpy(&l->m.prm[pi], &q, sizeof q);
    }
    const int t = l->m.ntensors++;
    for (int d = 0; d < Op::D; d++) l->m.ptr[d][t] = ptr[d];
    l->m.numel[t] = numel;
    l->m.part[t] = part;
    l->m.block0[t] = (int32_t)l->nblocks;
    l->m.pidx[t] = (uint8_t)pi;
    l->m.is_f64[t] = (uint8_t)is_f64;
    l->nblocks += nb;
    return DC_OK;
}

/* One tensor, one launch (the per-tensor table entries): a one-slot argument, not the big one. */
template <class Op> static dc_status tl_one(void *const *ptr, int64_t numel, const typename Op::P &q)
{
    cudaStream_t stream = dc_cuda_stream();
    tl_list<Op, 1, 1> l;
    tl_reset(&l);
    DC_TRY(tl_add(&l, ptr, numel, 0, 0, q, stream));
    return tl_flush(&l, stream);
}

template <class Op> using tl_many_list = tl_list<Op, tl_max_tensors<Op::D, typename Op::P>(), TL_MAXP>;

/* --- operand checks (optim.c's check_contig; the op layer guarantees them) ---------------------------- */

template <class T> static constexpr dc_dtype dtype_of()
{
    return std::is_same<T, float>::value           ? DC_FLOAT32
           : std::is_same<T, double>::value        ? DC_FLOAT64
           : std::is_same<T, __nv_bfloat16>::value ? DC_BFLOAT16
                                                   : DC_FLOAT16;
}

/* Row-major contiguous, size-1 dims ignored (cpu_is_contig). */
static bool is_contig(const dc_kview *v)
{
    int64_t s = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s) return false;
        s *= v->shape[d];
    }
    return true;
}

/* The view's elements are exactly the numel consecutive elements from v->data on, in some dim
 * order (positive strides, no overlap): fine for ops that treat every element alike. */
static bool is_dense(const dc_kview *v)
{
    int64_t sh[DC_MAX_DIMS], st[DC_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] == 1) continue;
        if (v->strides[d] <= 0) return false;
        int j = k++;
        for (; j > 0 && st[j - 1] > v->strides[d]; j--) {
            st[j] = st[j - 1];
            sh[j] = sh[j - 1];
        }
        st[j] = v->strides[d];
        sh[j] = v->shape[d];
    }
    int64_t expect = 1;
    for (int j = 0; j < k; j++) {
        if (st[j] != expect) return false;
        expect *= sh[j];
    }
    return true;
}

static dc_status bad_dtype(const dc_kargs *a, dc_dtype dt)
{
    return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", dc_op_names[a->op],
                    dc_dtype_name(dt));
}

/* The first n operands: one float dtype (16-bit ones computed in float32), one element count,
 * contiguous. */
static dc_status check_contig(const dc_kargs *a, int n)
{
    const char *op = dc_op_names[a->op];
    if (a->nt < n) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want %d", op, a->nt, n);
    const dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_BFLOAT16 && dt != DC_FLOAT16) return bad_dtype(a, dt);
    const int64_t numel = view_numel(&a->t[0]);
    for (int k = 0; k < n; k++) {
        if (a->t[k].dtype != dt)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d is %s, param is %s", op, k,
                            dc_dtype_name(a->t[k].dtype), dc_dtype_name(dt));
        if (view_numel(&a->t[k]) != numel)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has %lld elements, param has %lld", op, k,
                            (long long)view_numel(&a->t[k]), (long long)numel);
        if (!is_contig(&a->t[k])) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d must be contiguous", op, k);
    }
    return DC_OK;
}

/* --- SGD / AdamW / SCALE: checks, parameter sets, entries --------------------------------------------- */

static dc_status sgd_check(const dc_kargs *a)
{
    return check_contig(a, a->p.sgd.momentum != 0 ? 3 : 2);
}

/* optim.c's casts: each coefficient computed in double, rounded to the compute type T once. */
template <class S> static typename sgd_op<S>::P sgd_prm(const struct dc_sgd_params *hp)
{
    typedef typename sgd_op<S>::T T;
    typename sgd_op<S>::P q;
    memset(&q, 0, sizeof q);
    q.lr = (T)hp->lr;
    q.mom = (T)hp->momentum;
    q.damp1 = (T)(1.0 - hp->dampening);
    q.wd = (T)hp->weight_decay;
    q.sign = hp->maximize ? (T)-1 : (T)1;
    q.nesterov = hp->nesterov != 0;
    q.first = hp->first != 0;
    q.has_buf = hp->momentum != 0; /* the double, as optim.c tests it */
    return q;
}

static dc_status adamw_check(const dc_kargs *a)
{
    DC_TRY(check_contig(a, 4));
    const struct dc_adamw_params *hp = &a->p.adamw;
    if (!(hp->bias_correction1 > 0) || !(hp->bias_correction2 > 0))
        return dc_error(DC_ERR_VALUE, "adamw: bias corrections must be > 0, got %g and %g", hp->bias_correction1,
                        hp->bias_correction2);
    return DC_OK;
}

template <class S> static typename adamw_op<S>::P adamw_prm(const struct dc_adamw_params *hp)
{
    typedef typename adamw_op<S>::T T;
    typename adamw_op<S>::P q;
    memset(&q, 0, sizeof q);
    q.b1 = (T)hp->beta1;
    q.b2 = (T)hp->beta2;
    q.eps = (T)hp->eps;
    q.decay = (T)(1.0 - host_mul_rounded(hp->lr, hp->weight_decay));
    q.step = (T)(hp->lr / hp->bias_correction1);
    q.inv_sqrt_bc2 = (T)(1.0 / sqrt(hp->bias_correction2));
    q.sign = hp->maximize ? (T)-1 : (T)1;
    return q;
}

/* t0 float32/float64, any strides; clip: t1 the float64 one-element accumulator. */
static dc_status scale_check(const dc_kargs *a)
{
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda scale: no operand");
    const dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return bad_dtype(a, dt);
    if (a->p.scale.clip) {
        if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda scale: clip without its accumulator operand");
        if (a->t[1].dtype != DC_FLOAT64 || view_numel(&a->t[1]) != 1)
            return dc_error(DC_ERR_INTERNAL, "cuda scale: the clip accumulator must be one float64, got %s %s",
                            dc_dtype_name(a->t[1].dtype), dc_shape_str(a->t[1].ndim, a->t[1].shape));
    }
    return DC_OK;
}

template <class T> static scale_prm<T> scale_prm_of(const dc_kargs *a)
{
    const struct dc_scale_params *sp = &a->p.scale;
    scale_prm<T> q;
    memset(&q, 0, sizeof q);
    q.clip = sp->clip != 0;
    if (q.clip) {
        q.acc = (const double *)a->t[1].data;
        q.max_norm = sp->max_norm;
        q.norm_p = sp->norm_p;
    } else {
        q.factor = (T)sp->factor;
    }
    return q;
}

template <class T> static dc_status scale_strided(const dc_kview *v, int64_t n, const scale_prm<T> &q)
{
    const dc_kview *vs[1] = { v };
    dc_geom<1> g = geom_make<1>(vs);
    cudaStream_t stream = dc_cuda_stream();
    if (g.ndim == 1)
        scale_strided_kernel<T, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((T *)v->data, g, n, q);
    else
        scale_strided_kernel<T, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((T *)v->data, g, n, q);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* Calls f(S()) for the storage type of an optimizer step's float dtype (checked before). */
template <class F> static dc_status optim_dispatch(dc_dtype dt, F &&f)
{
    switch (dt) {
    case DC_FLOAT32: return f(float());
    case DC_FLOAT64: return f(double());
    case DC_BFLOAT16: return f(__nv_bfloat16());
    default: return f(__half());
    }
}

/* DC_OP_SGD: t0 param -= lr * step(t1 grad, t2 momentum buffer when momentum != 0); float32/64,
 * bfloat16/float16 (computed in float32). */
static dc_status k_sgd(const dc_kargs *a)
{
    DC_TRY(sgd_check(a));
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    void *ptr[3] = { a->t[0].data, a->t[1].data, a->nt > 2 ? a->t[2].data : NULL };
    return optim_dispatch(a->t[0].dtype, [&](auto tag) {
        typedef decltype(tag) S;
        return tl_one<sgd_op<S>>(ptr, n, sgd_prm<S>(&a->p.sgd));
    });
}

/* DC_OP_ADAMW: t0 param, t1 grad, t2 exp_avg, t3 exp_avg_sq, updated in place; float32/64,
 * bfloat16/float16 (computed in float32). */
static dc_status k_adamw(const dc_kargs *a)
{
    DC_TRY(adamw_check(a));
    const int64_t n = view_numel(&a->t[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(a->t[0].data));
    void *ptr[4] = { a->t[0].data, a->t[1].data, a->t[2].data, a->t[3].data };
    return optim_dispatch(a->t[0].dtype, [&](auto tag) {
        typedef decltype(tag) S;
        return tl_one<adamw_op<S>>(ptr, n, adamw_prm<S>(&a->p.adamw));
    });
}

/* DC_OP_SCALE: t0 *= factor (or clip_grad_norm_'s factor from t1, computed on the device); t0
 * float32/64, any strides. */
static dc_status k_scale(const dc_kargs *a)
{
    DC_TRY(scale_check(a));
    const dc_kview *v = &a->t[0];
    const int64_t n = view_numel(v);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v->data));
    void *ptr[1] = { v->data };
    if (v->dtype == DC_FLOAT32) {
        scale_prm<float> q = scale_prm_of<float>(a);
        return is_dense(v) ? tl_one<scale_op<float>>(ptr, n, q) : scale_strided<float>(v, n, q);
    }
    scale_prm<double> q = scale_prm_of<double>(a);
    return is_dense(v) ? tl_one<scale_op<double>>(ptr, n, q) : scale_strided<double>(v, n, q);
}

/* --- launch_many ---------------------------------------------------------------------------------------- */

/* The entries of dtype T (lists may mix float32 and float64 parameters), in list order. */
template <class T> static dc_status sgd_many(int n, const dc_kargs *a, cudaStream_t stream)
{
    tl_many_list<sgd_op<T>> l;
    tl_reset(&l);
    for (int i = 0; i < n; i++) {
        const int64_t numel = view_numel(&a[i].t[0]);
        if (a[i].t[0].dtype != dtype_of<T>() || numel == 0) continue;
        void *ptr[3] = { a[i].t[0].data, a[i].t[1].data, a[i].nt > 2 ? a[i].t[2].data : NULL };
        DC_TRY(tl_add(&l, ptr, numel, 0, 0, sgd_prm<T>(&a[i].p.sgd), stream));
    }
    return tl_flush(&l, stream);
}

template <class T> static dc_status adamw_many(int n, const dc_kargs *a, cudaStream_t stream)
{
    tl_many_list<adamw_op<T>> l;
    tl_reset(&l);
    for (int i = 0; i < n; i++) {
        const int64_t numel = view_numel(&a[i].t[0]);
        if (a[i].t[0].dtype != dtype_of<T>() || numel == 0) continue;
        void *ptr[4] = { a[i].t[0].data, a[i].t[1].data, a[i].t[2].data, a[i].t[3].data };
        DC_TRY(tl_add(&l, ptr, numel, 0, 0, adamw_prm<T>(&a[i].p.adamw), stream));
    }
    return tl_flush(&l, stream);
}

/* Dense tensors go into the lists; the rare strided ones get their own launch (order does not
 * matter: each tensor is scaled independently). */
template <class T> static dc_status scale_many(int n, const dc_kargs *a, cudaStream_t stream)
{
    tl_many_list<scale_op<T>> l;
    tl_reset(&l);
    for (int i = 0; i < n; i++) {
        const dc_kview *v = &a[i].t[0];
        const int64_t numel = view_numel(v);
        if (v->dtype != dtype_of<T>() || numel == 0) continue;
        scale_prm<T> q = scale_prm_of<T>(&a[i]);
        if (!is_dense(v)) {
            DC_TRY(scale_strided<T>(v, numel, q));
            continue;
        }
        void *ptr[1] = { v->data };
        DC_TRY(tl_add(&l, ptr, numel, 0, 0, q, stream));
    }
    return tl_flush(&l, stream);
}

/* t0 float64 accumulator, t1 float32/float64, p > 0, 0 or inf (optim.c's dc_cpu_norm_pow). */
static dc_status norm_check(const dc_kargs *a, int *kind)
{
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda norm: %d operands, want 2", a->nt);
    if (a->t[0].dtype != DC_FLOAT64) return bad_dtype(a, a->t[0].dtype);
    if (view_numel(&a->t[0]) != 1)
        return dc_error(DC_ERR_INTERNAL, "cuda norm: the accumulator has %lld elements, want 1",
                        (long long)view_numel(&a->t[0]));
    if (a->t[1].dtype != DC_FLOAT32 && a->t[1].dtype != DC_FLOAT64) return bad_dtype(a, a->t[1].dtype);
    const double p = a->p.norm.p;
    if (p == INFINITY)
        *kind = NK_MAX;
    else if (p == 1.0)
        *kind = NK_L1;
    else if (p == 2.0)
        *kind = NK_L2;
    else if (p == 0.0)
        *kind = NK_CNT;
    else if (!(p > 0))
        return dc_error(DC_ERR_VALUE, "norm: order %g is not supported (use p > 0, 0 or inf)", p);
    else
        *kind = NK_POW;
    return DC_OK;
}

static dc_status norm_finish(seg_meta *sm, cudaStream_t stream)
{
    if (sm->nseg == 0) return DC_OK;
    norm_finish_kernel<<<1, TL_THREADS, 0, stream>>>(*sm);
    DC_CUDA_CHECK_LAUNCH();
    sm->nseg = 0;
    return DC_OK;
}

/* Pass 1 queues the per-block partials of every dense tensor (slots in list order); pass 2 folds
 * each run of consecutive tensors with one accumulator into it. A strided t1 (not dense) goes to the
 * per-tensor NORM_POW entry, which adds into its t0 directly (stream order keeps it race-free). */
static dc_status norm_many(int n, const dc_kargs *a, cudaStream_t stream)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        int kind;
        DC_TRY(norm_check(&a[i], &kind));
        if (is_dense(&a[i].t[1])) total += tl_blocks(view_numel(&a[i].t[1]));
    }
    double *part = NULL;
    if (total > 0) DC_TRY(dc_cuda_scratch((size_t)total * sizeof(double), (void **)&part));
    dc_status st = DC_OK;
    {
        tl_many_list<norm_op> l;
        tl_reset(&l);
        int64_t slot = 0;
        for (int i = 0; i < n && !st; i++) {
            const dc_kview *x = &a[i].t[1];
            const int64_t numel = view_numel(x);
            if (numel == 0) continue;
            int kind = 0;
            (void)norm_check(&a[i], &kind);
            if (!is_dense(x)) {
                const dc_kernel_fn one = dc_cuda_backend_get()->kernels[DC_OP_NORM_POW];
                st = one ? one(&a[i])
                         : dc_error(DC_ERR_UNSUPPORTED, "op 'norm' has no per-tensor CUDA kernel for a strided input");
                continue;
            }
            norm_op::P q;
            memset(&q, 0, sizeof q);
            q.part = part;
            q.p = a[i].p.norm.p;
            q.kind = kind;
            void *ptr[1] = { x->data };
            st = tl_add(&l, ptr, numel, slot, x->dtype == DC_FLOAT64, q, stream);
            slot += tl_blocks(numel);
        }
        if (!st) st = tl_flush(&l, stream);
    }
    if (!st && total > 0) {
        seg_meta sm;
        memset(&sm, 0, sizeof sm);
        sm.part = part;
        int64_t slot = 0;
        double *cur = NULL; /* the open run's accumulator */
        int cur_max = 0;
        for (int i = 0; i < n && !st; i++) {
            const dc_kview *x = &a[i].t[1];
            const int64_t numel = view_numel(x);
            if (numel == 0 || !is_dense(x)) continue;
            double *acc = (double *)a[i].t[0].data;
            const int mx = a[i].p.norm.p == INFINITY;
            const int64_t nb = tl_blocks(numel);
            if (sm.nseg == 0 || acc != cur || mx != cur_max) {
                if (sm.nseg == TL_MAXSEG && (st = norm_finish(&sm, stream)) != DC_OK) break;
                const int s = sm.nseg++;
                sm.acc[s] = acc;
                sm.start[s] = slot;
                sm.count[s] = 0;
                sm.is_max[s] = (uint8_t)mx;
                cur = acc;
                cur_max = mx;
            }
            sm.count[sm.nseg - 1] += nb;
            slot += nb;
        }
        if (!st) st = norm_finish(&sm, stream);
    }
    if (part) dc_cuda_scratch_free(part); /* stream-ordered: the kernels queued above still see it */
    return st;
}

/* n launches of one op (SGD, ADAMW, SCALE or NORM_POW), all on one device (a[0]'s), each with its
 * own tensors and parameters, queued as one kernel per chunk of up to tl_max_tensors tensors (per
 * dtype for the steps; NORM_POW mixes dtypes in one launch and adds one finishing kernel). Every
 * entry is checked before anything is queued. */
extern "C" dc_status dc_cuda_optim_launch_many(int n, const dc_kargs *a)
{
    if (n <= 0) return DC_OK;
    const dc_op op = a[0].op;
    for (int i = 1; i < n; i++)
        if (a[i].op != op)
            return dc_error(DC_ERR_INTERNAL, "cuda launch_many: entry %d is '%s', entry 0 '%s'", i,
                            dc_op_names[a[i].op], dc_op_names[op]);
    for (int i = 0; i < n; i++) {
        switch (op) {
        case DC_OP_SGD: DC_TRY(sgd_check(&a[i])); break;
        case DC_OP_ADAMW: DC_TRY(adamw_check(&a[i])); break;
        case DC_OP_SCALE: DC_TRY(scale_check(&a[i])); break;
        case DC_OP_NORM_POW: break; /* norm_many checks */
        default: return dc_error(DC_ERR_INTERNAL, "cuda launch_many: op '%s' is not an optimizer op", dc_op_names[op]);
        }
    }
    DC_TRY(dc_cuda_use_device_of(a[0].t[0].data));
    cudaStream_t stream = dc_cuda_stream();
    switch (op) {
    case DC_OP_SGD:
        DC_TRY(sgd_many<float>(n, a, stream));
        DC_TRY(sgd_many<double>(n, a, stream));
        DC_TRY(sgd_many<__nv_bfloat16>(n, a, stream));
        return sgd_many<__half>(n, a, stream);
    case DC_OP_ADAMW:
        DC_TRY(adamw_many<float>(n, a, stream));
        DC_TRY(adamw_many<double>(n, a, stream));
        DC_TRY(adamw_many<__nv_bfloat16>(n, a, stream));
        return adamw_many<__half>(n, a, stream);
    case DC_OP_SCALE: DC_TRY(scale_many<float>(n, a, stream)); return scale_many<double>(n, a, stream);
    default: return norm_many(n, a, stream);
    }
}

/* --- registration ---------------------------------------------------------------------------------------- */

void dc_cuda_register_optim(dc_kernel_fn *k)
{
    k[DC_OP_SGD] = k_sgd;
    k[DC_OP_ADAMW] = k_adamw;
    k[DC_OP_SCALE] = k_scale;
}
