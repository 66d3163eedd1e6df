/* common.cuh: what every file in cuda/ shares: the core's C headers made includable from CUDA C++,
 * the DC_CUDA_TRY error macro, launch geometry, the dtype <-> compute-type helpers, 16-byte vector
 * loads and block sums, dtype dispatch, operand checks and the scratch guard.
 *
 * Private to cuda/; the rest of dutycycle sees only dc_cuda_backend_get() and the two diagnostics
 * in backend.cu. */
#ifndef DC_CUDA_COMMON_CUH
#define DC_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

/* tensor.h uses C11 <stdatomic.h> (atomic_long). Before C++23, libstdc++'s <stdatomic.h> declares
 * nothing in C++, so give C++ the same names the C++23 header gives: std::atomic<long> has the
 * size and alignment of C's _Atomic long on every ABI we build for. cuda/ never touches the
 * atomic fields; it only needs dc_tensor's declaration to parse. */
#if defined(__cplusplus) && __cplusplus <= 202002L
#include <atomic>
using std::atomic_long;
using std::memory_order;
#endif

#include "backend-impl.h"

/* Every CUDA runtime call goes through here: on failure the message (file, line, CUDA's text)
 * goes into the thread's error buffer and the function returns DC_ERR_CUDA. The failed call also
 * set CUDA's "last error"; clear it so the next launch check does not report it a second time
 * (sticky errors, e.g. an illegal address, stay and fail every later call, as they must). */
#define DC_CUDA_TRY(call)                                                                                      \
    do {                                                                                                       \
        cudaError_t dc_cuda_e_ = (call);                                                                       \
        if (dc_cuda_e_ != cudaSuccess) {                                                                       \
            (void)cudaGetLastError();                                                                          \
            return dc_error(DC_ERR_CUDA, "%s:%d: %s (%s)", __FILE__, __LINE__, cudaGetErrorString(dc_cuda_e_), \
                            cudaGetErrorName(dc_cuda_e_));                                                     \
        }                                                                                                      \
    } while (0)

/* After every kernel launch (llm.c's cudaCheck(cudaGetLastError())): catches bad launch
 * configurations now; faults inside the kernel surface at the next synchronising call. */
#define DC_CUDA_CHECK_LAUNCH() DC_CUDA_TRY(cudaGetLastError())

/* --- launch geometry ----------------------------------------------------------------------- */

#define DC_CUDA_THREADS 256
/* Grid-stride loops: beyond this many blocks each thread takes several elements. */
#define DC_CUDA_MAX_BLOCKS 65536

static inline unsigned int dc_cuda_blocks(int64_t n)
{
    int64_t b = (n + DC_CUDA_THREADS - 1) / DC_CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > DC_CUDA_MAX_BLOCKS) b = DC_CUDA_MAX_BLOCKS;
    return (unsigned int)b;
}

/* Shape and strides of N operands of one elementwise op, passed to the kernel by value. Dim d of
 * every operand has extent shape[d]; operand k's element for flat (row-major) index i sits at
 * sum_d idx_d * st[k][d] elements from its base pointer. */
template <int N> struct dc_geom {
    int ndim;
    int64_t shape[DC_MAX_DIMS];
    int64_t st[N][DC_MAX_DIMS];
};

/* Offsets (in elements) of flat index i in each operand. OneD: ndim == 1, no division needed,
 * which after coalescing is every contiguous or scalar-broadcast case. */
template <int N, bool OneD>
__device__ __forceinline__ void dc_geom_offsets(const dc_geom<N> &g, int64_t i, int64_t off[N])
{
    if constexpr (OneD) {
#pragma unroll
        for (int k = 0; k < N; k++) off[k] = i * g.st[k][0];
    } else {
#pragma unroll
        for (int k = 0; k < N; k++) off[k] = 0;
        for (int d = g.ndim - 1; d >= 0; d--) {
            int64_t idx = i % g.shape[d];
            i /= g.shape[d];
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += idx * g.st[k][d];
        }
    }
}

/* --- element types --------------------------------------------------------------------------- */
/* Storage types: float, double, __nv_bfloat16, __half, int32_t, int64_t, and uint8_t for bool
 * (one byte, 0 or 1; read as "nonzero"). 16-bit floats compute in float (as the CPU does), with
 * round-to-nearest-even stores, so CPU and CUDA results agree bit for bit on add and copy. */
template <class T> struct dc_acc {
    typedef T type;
};
template <> struct dc_acc<__half> {
    typedef float type;
};
template <> struct dc_acc<__nv_bfloat16> {
    typedef float type;
};
template <> struct dc_acc<uint8_t> {
    typedef int type;
};

template <class T> __device__ __forceinline__ typename dc_acc<T>::type dc_load(T x)
{
    return x;
}
template <> __device__ __forceinline__ float dc_load<__half>(__half x)
{
    return __half2float(x);
}
template <> __device__ __forceinline__ float dc_load<__nv_bfloat16>(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}
template <> __device__ __forceinline__ int dc_load<uint8_t>(uint8_t x)
{
    return x != 0;
}

/* Compute value -> storage type T. */
template <class T> struct dc_store_impl {
    template <class A> __device__ __forceinline__ static T go(A a) { return static_cast<T>(a); }
};
template <> struct dc_store_impl<__half> {
    template <class A> __device__ __forceinline__ static __half go(A a)
    {
        return __float2half_rn(static_cast<float>(a)); /* doubles round via float, as on the CPU */
    }
};
template <> struct dc_store_impl<__nv_bfloat16> {
    template <class A> __device__ __forceinline__ static __nv_bfloat16 go(A a)
    {
        return __float2bfloat16_rn(static_cast<float>(a));
    }
};
template <> struct dc_store_impl<uint8_t> {
    template <class A> __device__ __forceinline__ static uint8_t go(A a) { return a != A(0) ? 1 : 0; }
};
template <class T, class A> __device__ __forceinline__ T dc_store(A a)
{
    return dc_store_impl<T>::go(a);
}

/* --- 16-byte vector loads, warp and block sums ------------------------------------------------ */
/* The row kernels' helpers (nn.cu, batchnorm.cu, loss.cu; attention.cu's tiles use dc_pack16).
 * Values move in the compute type typename dc_acc<T>::type: float, or double for float64. */

/* 16 bytes of T: the unit of a vector load (4 floats, 2 doubles, 8 halves). */
template <class T> struct alignas(16) dc_pack16 {
    T v[16 / sizeof(T)];
};

/* V consecutive elements at p (16-byte aligned when V > 1) <-> compute type. */
template <class T, int V> __device__ __forceinline__ void dc_load_vals(const T *p, typename dc_acc<T>::type *out)
{
    if constexpr (V == 1) {
        out[0] = dc_load(p[0]);
    } else {
        const dc_pack16<T> q = *reinterpret_cast<const dc_pack16<T> *>(p);
#pragma unroll
        for (int k = 0; k < V; k++) out[k] = dc_load(q.v[k]);
    }
}

template <class T, int V> __device__ __forceinline__ void dc_store_vals(T *p, const typename dc_acc<T>::type *in)
{
    if constexpr (V == 1) {
        p[0] = dc_store<T>(in[0]);
    } else {
        dc_pack16<T> q;
#pragma unroll
        for (int k = 0; k < V; k++) q.v[k] = dc_store<T>(in[k]);
        *reinterpret_cast<dc_pack16<T> *>(p) = q;
    }
}

/* A value as it comes back after a store to T and a load (the CPU's `(T)mean`). */
template <class T> __device__ __forceinline__ typename dc_acc<T>::type dc_round_to(double v)
{
    return dc_load(dc_store<T>(v));
}

template <class A> __device__ __forceinline__ A dc_warp_sum(A v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over all threads of the (1-D or 2-D) block; every thread gets the same bits. red: >= 32
 * entries of shared memory; blockDim a multiple of 32. */
template <class A> __device__ __forceinline__ A dc_block_sum(A v, A *red)
{
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, nw = (blockDim.x * blockDim.y) >> 5;
    v = dc_warp_sum(v);
    if ((tid & 31) == 0) red[tid >> 5] = v;
    __syncthreads();
    A t = red[0];
    for (int k = 1; k < nw; k++) t += red[k];
    __syncthreads(); /* red may be reused by the next call */
    return t;
}

/* Host side: whether p allows 16-byte vector loads. */
static inline bool dc_aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Calls f(T()) with T the storage type of dt. Only dtypes whose bit is set in Allowed
 * (1 << dc_dtype) are instantiated and accepted; any other gives DC_ERR_UNSUPPORTED naming op and
 * dtype. */
#define DC_DT_BIT(d) (1u << (d))
#define DC_DT_ALL    0x7fu
#define DC_DT_ARITH  (DC_DT_ALL & ~DC_DT_BIT(DC_BOOL))

template <unsigned Allowed, class F> static dc_status dc_dispatch(dc_dtype dt, const char *op, F &&f)
{
    switch (dt) {
    case DC_FLOAT32:
        if constexpr (Allowed & DC_DT_BIT(DC_FLOAT32)) return f(float());
        break;
    case DC_FLOAT64:
        if constexpr (Allowed & DC_DT_BIT(DC_FLOAT64)) return f(double());
        break;
    case DC_BFLOAT16:
        if constexpr (Allowed & DC_DT_BIT(DC_BFLOAT16)) return f(__nv_bfloat16());
        break;
    case DC_FLOAT16:
        if constexpr (Allowed & DC_DT_BIT(DC_FLOAT16)) return f(__half());
        break;
    case DC_INT32:
        if constexpr (Allowed & DC_DT_BIT(DC_INT32)) return f(int32_t());
        break;
    case DC_INT64:
        if constexpr (Allowed & DC_DT_BIT(DC_INT64)) return f(int64_t());
        break;
    case DC_BOOL:
        if constexpr (Allowed & DC_DT_BIT(DC_BOOL)) return f(uint8_t());
        break;
    default: break;
    }
    return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", op, dc_dtype_name(dt));
}

/* Calls f(S()) with S an unsigned type of the element size: kernels that only move bits. */
template <class F> static dc_status dc_dispatch_bits(dc_dtype dt, const char *op, F &&f)
{
    if ((unsigned)dt < DC_DTYPE_COUNT) switch (dc_dtype_size(dt)) {
        case 1: return f(uint8_t());
        case 2: return f(uint16_t());
        case 4: return f(uint32_t());
        case 8: return f(uint64_t());
        default: break;
        }
    return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", op, dc_dtype_name(dt));
}

/* --- geometry --------------------------------------------------------------------------------- */

static inline int64_t view_numel(const dc_kview *v)
{
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++) n *= v->shape[d];
    return n;
}

/* Every operand of an elementwise kernel must have v[0]'s shape (broadcast inputs come with
 * stride 0, per backend-impl.h); anything else is a bug in the op layer. */
static inline dc_status check_same_shape(const char *op, int n, const dc_kview *const v[])
{
    for (int k = 1; k < n; k++) {
        int ok = v[k]->ndim == v[0]->ndim;
        for (int d = 0; ok && d < v[0]->ndim; d++) ok = v[k]->shape[d] == v[0]->shape[d];
        if (!ok)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has shape %s, output %s", op, k,
                            dc_shape_str(v[k]->ndim, v[k]->shape), dc_shape_str(v[0]->ndim, v[0]->shape));
    }
    return DC_OK;
}

/* Row-major contiguous (size-1 dims may have any stride). */
static inline bool dc_view_contiguous(const dc_kview *v)
{
    int64_t s = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s) return false;
        s *= v->shape[d];
    }
    return true;
}

/* Operands k with bit k of `present` set: there, of dtype dt, contiguous when contig. Violations
 * are op-layer bugs. */
static inline dc_status dc_check_operands(const dc_kargs *a, unsigned present, dc_dtype dt, bool contig)
{
    const char *op = dc_op_names[a->op];
    for (int k = 0; k < DC_KARGS_MAX_T; k++) {
        if (!(present >> k & 1u)) continue;
        if (k >= a->nt) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d missing (%d given)", op, k, a->nt);
        const dc_kview *v = &a->t[k];
        if (v->dtype != dt)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d is %s, expected %s", op, k, dc_dtype_name(v->dtype),
                            dc_dtype_name(dt));
        if (!v->data && view_numel(v) > 0) return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has no data", op, k);
        if (contig && !dc_view_contiguous(v))
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d must be contiguous", op, k);
    }
    return DC_OK;
}

/* Geometry of N same-shape operands with size-1 dims dropped and neighbouring dims merged where
 * every operand walks them as one (stride[d] == stride[d+1] * shape[d+1]). Contiguous and
 * scalar-broadcast operands end up 1-D, which the kernels index without any division. */
template <int N> static inline dc_geom<N> geom_make(const dc_kview *const v[N])
{
    dc_geom<N> g;
    memset(&g, 0, sizeof g);
    int64_t sh[DC_MAX_DIMS], st[N][DC_MAX_DIMS]; /* innermost first */
    int nd = 0;
    for (int d = v[0]->ndim - 1; d >= 0; d--) {
        int64_t s = v[0]->shape[d];
        if (s == 1) continue;
        if (nd > 0) {
            bool merge = true;
            for (int k = 0; k < N; k++) merge = merge && v[k]->strides[d] == st[k][nd - 1] * sh[nd - 1];
            if (merge) {
                sh[nd - 1] *= s;
                continue;
            }
        }
        sh[nd] = s;
        for (int k = 0; k < N; k++) st[k][nd] = v[k]->strides[d];
        nd++;
    }
    if (nd == 0) { /* one element */
        sh[0] = 1;
        for (int k = 0; k < N; k++) st[k][0] = 0;
        nd = 1;
    }
    g.ndim = nd;
    for (int d = 0; d < nd; d++) {
        g.shape[d] = sh[nd - 1 - d];
        for (int k = 0; k < N; k++) g.st[k][d] = st[k][nd - 1 - d];
    }
    return g;
}

#define DC_GRID_STRIDE_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* --- what cuda/device.cu provides to every kernel file ------------------------------------------ */

/* The stream kernels of this thread launch on: the current dutycycle.cuda.Stream (torch.cuda.
 * stream(s) context), else the device's compute stream. Every launch and async copy in cuda/ uses
 * it; nothing in cuda/ launches on the legacy default stream. */
cudaStream_t dc_cuda_stream(void);

/* Scratch device memory from the caching allocator, ordered on dc_cuda_stream(): a kernel may free
 * it right after queueing the work that uses it (the block is reused only by later work on the
 * same stream). nbytes == 0 gives NULL. */
dc_status dc_cuda_scratch(size_t nbytes, void **out);
void dc_cuda_scratch_free(void *p);

/* Scratch freed (stream-ordered) when the guard goes out of scope, on every path. */
struct dc_scratch_guard {
    void *p = nullptr;
    ~dc_scratch_guard()
    {
        if (p) dc_cuda_scratch_free(p);
    }
};

/* Per-device library handles, created on first use. cuBLASLt takes its stream and workspace per
 * call: linalg.cu takes the workspace as stream-ordered scratch, so matmuls on two streams never
 * share one. */
struct cublasLtContext;
struct cudnnContext;
dc_status dc_cuda_cublaslt(struct cublasLtContext **handle);
dc_status dc_cuda_cudnn(struct cudnnContext **handle);

/* Make the device owning `p` current (one visible GPU: nothing to do). */
dc_status dc_cuda_use_device_of(const void *p);

/* --- kernel registration ---------------------------------------------------------------------------
 * Each op-family file fills its slots of the table; backend.cu calls every one of them when the
 * library loads (they only store function pointers: no CUDA call). */
void dc_cuda_register_elementwise(dc_kernel_fn *k); /* elementwise.cu: unary, scalar, binary, compare,
                                                       grad helpers, where, arange, random */
void dc_cuda_register_reduce(dc_kernel_fn *k);      /* reduce.cu: sum/max/min, argmax/argmin, norm */
void dc_cuda_register_scan(dc_kernel_fn *k);        /* scan.cu: cumsum, cumprod, argsort, nonzero */
void dc_cuda_register_nn(dc_kernel_fn *k);          /* nn.cu: softmax, attention softmax, layer norm; batchnorm.cu */
void dc_cuda_register_linalg(dc_kernel_fn *k);      /* linalg.cu: matmul (cuBLASLt), tril */
void dc_cuda_register_index(dc_kernel_fn *k);       /* index.cu: gather, scatter_add, index_select/add */
void dc_cuda_register_optim(dc_kernel_fn *k);       /* optim.cu: sgd, adamw, scale */
void dc_cuda_register_conv(dc_kernel_fn *k);        /* conv.cu: conv2d (cuDNN), pooling */
void dc_cuda_register_random(dc_kernel_fn *k);      /* random.cu: arange, rand, randn, randint (called by
                                                       dc_cuda_register_elementwise) */
void dc_cuda_register_attention(dc_kernel_fn *k);   /* attention.cu: fused flash attention */
void dc_cuda_register_loss(dc_kernel_fn *k);        /* loss.cu: cross entropy fused with the softmax */

#endif
