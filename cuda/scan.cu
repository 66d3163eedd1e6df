/* scan.cu: running sums and products along a dim (CUMSUM, CUMPROD, CUMPROD_BWD), sort orders
 * (ARGSORT) and NONZERO on the GPU: the ops whose output at one position depends on the elements
 * before it.
 *
 * Same results as csrc/cpu/scan.c and csrc/cpu/sort.c: floats accumulate in double, integers and
 * bool in int64 (wrapping); cumprod's backward is exact with zeros in the row; argsort is stable,
 * NaN sorting as the largest value (last ascending, first descending); nonzero lists coordinates in
 * row-major order.
 *
 * Scans pick by layout: rows along an outer dim (unit-stride neighbours in the other dims) and
 * very short rows run one thread per row, sequentially, in the CPU's order (the same bits); other
 * rows run a warp (<= 2048 elements) or a block per row over tiles of 4 consecutive elements per
 * thread, the tile's carry passed on; a few very long rows are cut into chunks: totals, their
 * exclusive scan, then each chunk scanned from its carry-in (three passes, no look-back, so the
 * order of every float addition is fixed by the shapes: deterministic).
 *
 * argsort: keys made order-preserving unsigned integers (NaN canonical and largest, -0 == +0,
 * descending = the complemented key), sorted with CUB's stable radix sort, positions along the dim
 * as values. Long rows (and single rows) sort in one device-wide radix sort with the row number in
 * the key's top bits; many short rows go to cub::DeviceSegmentedSort. Both are stable, so ties keep
 * input order as on the CPU.
 *
 * nonzero: the op layer counted the non-zeros already (NE, COPY to int64 and SUM, then a host
 * read) and sized t0; here per-block counts, their scan, and a ballot-scan pass that writes each
 * coordinate at its rank. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include "common.cuh"

/* Everything but the registration function is file-local (internal linkage, kernels included). */
namespace
{

#define SCAN_THREADS 256
#define SCAN_ITEMS   4 /* consecutive elements per thread per tile */

/* bool storage: one byte, read as "non-zero" (uint8 is the same byte read as a number) */
struct b8 {
    uint8_t v;
};

#define DT_BIT_U8  (1u << DC_UINT8)
#define DT_BIT_I8  (1u << DC_INT8)
#define DT_BIT_I16 (1u << DC_INT16)
#define DT_EVERY   (DC_DT_ALL | DT_BIT_U8 | DT_BIT_I8 | DT_BIT_I16)
/* the CPU scans and sorts take every dtype but the 16-bit floats */
#define DT_SCAN (DT_EVERY & ~DC_DT_BIT(DC_BFLOAT16) & ~DC_DT_BIT(DC_FLOAT16))

/* dc_dispatch over all ten dtypes: bool comes as b8 (so it is not confused with uint8), uint8 /
 * int8 / int16 are added here, the six others go through dc_dispatch (with bool masked out, so a
 * bool that Allowed lacks gets dc_dispatch's DC_ERR_UNSUPPORTED like any other dtype). */
template <unsigned Allowed, class F> static dc_status dispatch_any(dc_dtype dt, const char *op, F &&f)
{
    switch (dt) {
    case DC_BOOL:
        if constexpr (Allowed & DC_DT_BIT(DC_BOOL)) return f(b8());
        break;
    case DC_UINT8:
        if constexpr (Allowed & DT_BIT_U8) return f(uint8_t());
        break;
    case DC_INT8:
        if constexpr (Allowed & DT_BIT_I8) return f(int8_t());
        break;
    case DC_INT16:
        if constexpr (Allowed & DT_BIT_I16) return f(int16_t());
        break;
    default: break;
    }
    return dc_dispatch<Allowed & DC_DT_ALL & ~DC_DT_BIT(DC_BOOL)>(dt, op, f);
}

/* Scan types of storage type T: A the accumulator (double for floats; uint64 for integers and bool,
 * whose wrapping add and multiply are those of the CPU's int64), O the output element. */
template <class T> struct scan_t {
    typedef uint64_t A;
    typedef int64_t O;
    __device__ __forceinline__ static A load(T x) { return (uint64_t)(int64_t)x; }
    __device__ __forceinline__ static O out(A a) { return (int64_t)a; }
};
template <> struct scan_t<b8> {
    typedef uint64_t A;
    typedef int64_t O;
    __device__ __forceinline__ static A load(b8 x) { return x.v != 0; }
    __device__ __forceinline__ static O out(A a) { return (int64_t)a; }
};
template <> struct scan_t<float> {
    typedef double A;
    typedef float O;
    __device__ __forceinline__ static A load(float x) { return x; }
    __device__ __forceinline__ static O out(A a) { return (float)a; }
};
template <> struct scan_t<double> {
    typedef double A;
    typedef double O;
    __device__ __forceinline__ static A load(double x) { return x; }
    __device__ __forceinline__ static O out(A a) { return a; }
};

template <bool Prod, class A> __device__ __forceinline__ A scan_op(A a, A b)
{
    return Prod ? a * b : a + b;
}
template <bool Prod, class A> __device__ __forceinline__ A scan_id()
{
    return Prod ? A(1) : A(0);
}

/* Row offsets: element offsets of row r in every operand (rows: every index of the other dims). */
template <int N> __device__ __forceinline__ void row_offsets(const dc_geom<N> &g, int64_t r, int64_t off[N])
{
    if (g.ndim == 1)
        dc_geom_offsets<N, true>(g, r, off);
    else
        dc_geom_offsets<N, false>(g, r, off);
}

/* The views without `dim` (the row geometry), for geom_make. */
static dc_kview drop_dim(const dc_kview *v, int dim)
{
    dc_kview r = *v;
    if (v->ndim == 0) return r;
    for (int d = dim; d < v->ndim - 1; d++) {
        r.shape[d] = v->shape[d + 1];
        r.strides[d] = v->strides[d + 1];
    }
    r.ndim = v->ndim - 1;
    return r;
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static unsigned int grid_x(int64_t work)
{
    const int64_t cap = 1 << 20; /* grid-stride loops take the rest */
    return (unsigned int)(work < 1 ? 1 : work > cap ? cap : work);
}

/* --- group scans ---------------------------------------------------------------------------------- */

/* Exclusive scan of v over the G threads of a group (G = 32: a warp, G = SCAN_THREADS: the block,
 * every thread calling); *tot gets the group's total in every thread. sm: SCAN_THREADS / 32 slots. */
template <int G, bool Prod, class A> __device__ __forceinline__ A group_exclusive(A v, A *tot, A *sm)
{
    const int lane = threadIdx.x & 31;
    A inc = v;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        A t = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc = scan_op<Prod>(t, inc);
    }
    A ex = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) ex = scan_id<Prod, A>();
    if constexpr (G == 32) {
        *tot = __shfl_sync(0xffffffffu, inc, 31);
        return ex;
    } else {
        const int warp = threadIdx.x >> 5;
        if (lane == 31) sm[warp] = inc;
        __syncthreads();
        A wp = scan_id<Prod, A>(), all = scan_id<Prod, A>();
#pragma unroll
        for (int w = 0; w < G / 32; w++) {
            if (w < warp) wp = scan_op<Prod>(wp, sm[w]);
            all = scan_op<Prod>(all, sm[w]);
        }
        __syncthreads(); /* sm is reused by the next tile */
        *tot = all;
        return scan_op<Prod>(wp, ex);
    }
}

/* --- cumsum / cumprod ------------------------------------------------------------------------------- */

/* One thread per row, in order: the CPU's loop, so the same bits. g: operand 0 x, 1 o. */
template <class T, bool Prod>
__global__ void scan_seq_kernel(typename scan_t<T>::O *o, const T *x, dc_geom<2> g, int64_t rows, int64_t n, int64_t xs,
                                int64_t os, int rev)
{
    typedef scan_t<T> S;
    typedef typename S::A A;
    DC_GRID_STRIDE_LOOP(r, rows)
    {
        int64_t off[2];
        row_offsets<2>(g, r, off);
        const T *xr = x + off[0];
        typename S::O *orow = o + off[1];
        A acc = scan_id<Prod, A>();
        for (int64_t j = 0; j < n; j++) {
            const int64_t i = rev ? n - 1 - j : j;
            acc = scan_op<Prod>(acc, S::load(xr[i * xs]));
            orow[i * os] = S::out(acc);
        }
    }
}

enum { SCAN_FULL, SCAN_TOTALS, SCAN_CARRY_IN };

/* A group of G threads per row (SCAN_THREADS / G rows per block) scans scan positions [j0, j1) of
 * chunk blockIdx.y (position j is element rev ? n-1-j : j): tiles of G * SCAN_ITEMS, each thread
 * SCAN_ITEMS consecutive positions. Mode SCAN_TOTALS only writes the chunk's total to
 * carry[row * nchunk + chunk]; SCAN_CARRY_IN starts from that slot (an exclusive prefix by then). */
template <class T, bool Prod, int G, int Mode>
__global__ void __launch_bounds__(SCAN_THREADS)
    scan_group_kernel(typename scan_t<T>::O *o, const T *x, dc_geom<2> g, int64_t rows, int64_t n, int64_t xs,
                      int64_t os, int rev, int64_t chunk, typename scan_t<T>::A *carry)
{
    typedef scan_t<T> S;
    typedef typename S::A A;
    __shared__ A sm[SCAN_THREADS / 32];
    constexpr int per_block = SCAN_THREADS / G;
    const int lane = threadIdx.x % G, grp = threadIdx.x / G;
    const int nchunk = gridDim.y, c = blockIdx.y;
    const int64_t j0 = (int64_t)c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
        const int64_t r = base + grp;
        if (r >= rows) continue; /* uniform over the group: a warp (G = 32) or the block */
        int64_t off[2];
        row_offsets<2>(g, r, off);
        const T *xr = x + off[0];
        typename S::O *orow = o + off[1];
        A run = Mode == SCAN_CARRY_IN ? carry[r * nchunk + c] : scan_id<Prod, A>();
        for (int64_t t0 = j0; t0 < j1; t0 += G * SCAN_ITEMS) {
            const int64_t jb = t0 + (int64_t)lane * SCAN_ITEMS;
            A v[SCAN_ITEMS];
#pragma unroll
            for (int e = 0; e < SCAN_ITEMS; e++) {
                const int64_t j = jb + e;
                v[e] = j < j1 ? S::load(xr[(rev ? n - 1 - j : j) * xs]) : scan_id<Prod, A>();
            }
#pragma unroll
            for (int e = 1; e < SCAN_ITEMS; e++) v[e] = scan_op<Prod>(v[e - 1], v[e]);
            A tot;
            const A ex = group_exclusive<G, Prod>(v[SCAN_ITEMS - 1], &tot, sm);
            if constexpr (Mode != SCAN_TOTALS) {
                const A pre = scan_op<Prod>(run, ex);
#pragma unroll
                for (int e = 0; e < SCAN_ITEMS; e++) {
                    const int64_t j = jb + e;
                    if (j < j1) orow[(rev ? n - 1 - j : j) * os] = S::out(scan_op<Prod>(pre, v[e]));
                }
            }
            run = scan_op<Prod>(run, tot);
        }
        if (Mode == SCAN_TOTALS && lane == 0) carry[r * nchunk + c] = run;
    }
}

/* Chunk totals -> exclusive prefixes, per row, in order. */
template <class A, bool Prod> __global__ void chunk_prefix_kernel(A *carry, int64_t rows, int nchunk)
{
    DC_GRID_STRIDE_LOOP(r, rows)
    {
        A acc = scan_id<Prod, A>();
        for (int c = 0; c < nchunk; c++) {
            A t = carry[r * nchunk + c];
            carry[r * nchunk + c] = acc;
            acc = scan_op<Prod>(acc, t);
        }
    }
}

/* How a row op runs; depends only on the shapes. */
struct scan_plan {
    int kind;   /* 0: a thread per row, 1: a warp per row, 2: a block per row */
    int nchunk; /* kind 2 only */
    int64_t chunk;
};

/* columns: the dim is not unit-stride but the rows' innermost dim is, so a thread per row reads
 * coalesced. */
static scan_plan scan_plan_make(int64_t rows, int64_t n, bool columns, bool allow_chunks)
{
    scan_plan pl = { 2, 1, n };
    if (n <= 8 || (columns && rows >= 2048))
        pl.kind = 0;
    else if (n <= 2048)
        pl.kind = 1;
    if (pl.kind == 2 && allow_chunks && rows < 128 && n >= 65536) {
        int64_t c = ceil_div(1024, rows), cmax = n / 16384;
        c = c < cmax ? c : cmax;
        if (c > 1) {
            pl.chunk = ceil_div(ceil_div(n, c), 1024) * 1024;
            pl.nchunk = (int)ceil_div(n, pl.chunk);
        }
    }
    return pl;
}

template <class T, bool Prod>
static dc_status scan_forward(typename scan_t<T>::O *o, const T *x, const dc_geom<2> &g, int64_t rows, int64_t n,
                              int64_t xs, int64_t os, int rev, const scan_plan &pl, cudaStream_t stream)
{
    typedef typename scan_t<T>::A A;
    if (pl.kind == 0) {
        scan_seq_kernel<T, Prod><<<dc_cuda_blocks(rows), DC_CUDA_THREADS, 0, stream>>>(o, x, g, rows, n, xs, os, rev);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    }
    if (pl.kind == 1) {
        scan_group_kernel<T, Prod, 32, SCAN_FULL>
            <<<grid_x(ceil_div(rows, SCAN_THREADS / 32)), SCAN_THREADS, 0, stream>>>(o, x, g, rows, n, xs, os, rev, n,
                                                                                     NULL);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    }
    if (pl.nchunk == 1) {
        scan_group_kernel<T, Prod, SCAN_THREADS, SCAN_FULL>
            <<<grid_x(rows), SCAN_THREADS, 0, stream>>>(o, x, g, rows, n, xs, os, rev, n, NULL);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    }
    /* few long rows: totals, prefixes, scans from the carries */
    A *carry;
    DC_TRY(dc_cuda_scratch(sizeof(A) * (size_t)rows * (size_t)pl.nchunk, (void **)&carry));
    dim3 grid(grid_x(rows), (unsigned int)pl.nchunk);
    scan_group_kernel<T, Prod, SCAN_THREADS, SCAN_TOTALS>
        <<<grid, SCAN_THREADS, 0, stream>>>(o, x, g, rows, n, xs, os, rev, pl.chunk, carry);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        chunk_prefix_kernel<A, Prod><<<dc_cuda_blocks(rows), DC_CUDA_THREADS, 0, stream>>>(carry, rows, pl.nchunk);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
        scan_group_kernel<T, Prod, SCAN_THREADS, SCAN_CARRY_IN>
            <<<grid, SCAN_THREADS, 0, stream>>>(o, x, g, rows, n, xs, os, rev, pl.chunk, carry);
        e = cudaGetLastError();
    }
    dc_cuda_scratch_free(carry); /* stream-ordered: safe right after queueing */
    DC_CUDA_TRY(e);
    return DC_OK;
}

/* DC_OP_CUMSUM / DC_OP_CUMPROD: t0 = running sum / product of t1 along p.scan.dim (cumsum: from the
 * end when p.scan.reverse; cumprod always forward, as the CPU). t1 float32/float64 -> t0 the same
 * dtype, accumulated in double; t1 int32/int64/int16/int8/uint8/bool -> t0 int64, wrapping. */
static dc_status k_scan(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const bool is_float = x->dtype == DC_FLOAT32 || x->dtype == DC_FLOAT64;
    if ((unsigned)x->dtype < DC_DTYPE_COUNT && x->dtype != DC_BFLOAT16 && x->dtype != DC_FLOAT16 &&
        (is_float ? o->dtype != x->dtype : o->dtype != DC_INT64))
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for %s -> %s", name, dc_dtype_name(x->dtype),
                        dc_dtype_name(o->dtype));
    const int dim = x->ndim ? (int)a->p.scan.dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim || o->ndim != x->ndim))
        return dc_error(DC_ERR_SHAPE, "%s: bad dim %lld for %d-d input", name, (long long)a->p.scan.dim, x->ndim);
    const dc_kview *v2[2] = { x, o };
    DC_TRY(check_same_shape(name, 2, v2));
    const int64_t numel = view_numel(x);
    if (numel == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    const int64_t xs = x->ndim ? x->strides[dim] : 1, os = o->ndim ? o->strides[dim] : 1;
    const bool prod = a->op == DC_OP_CUMPROD;
    const int rev = !prod && a->p.scan.reverse != 0;
    const dc_kview xr = drop_dim(x, dim), orr = drop_dim(o, dim);
    const dc_kview *vr[2] = { &xr, &orr };
    const dc_geom<2> g = geom_make<2>(vr);
    const bool columns = xs != 1 && g.st[0][g.ndim - 1] == 1;
    const scan_plan pl = scan_plan_make(rows, n, columns, true);
    cudaStream_t stream = dc_cuda_stream();
    return dispatch_any<DT_SCAN>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        typedef typename scan_t<T>::O O;
        return prod ? scan_forward<T, true>((O *)o->data, (const T *)x->data, g, rows, n, xs, os, 0, pl, stream)
                    : scan_forward<T, false>((O *)o->data, (const T *)x->data, g, rows, n, xs, os, rev, pl, stream);
    });
}

/* --- cumprod backward ------------------------------------------------------------------------------- */

/* dx[i] = sum_{j >= i} dy[j] prod_{k <= j, k != i} x[k], with z the row's first zero (n: none):
 * i < z: (sum_{i <= j < z} dy[j] y[j]) / x[i]; i == z: y[z-1] * sum_{j >= z} dy[j] prod_{z < k <= j}
 * x[k]; i > z: 0. All in double. g operands: 0 dx, 1 dy, 2 x, 3 y; st: their strides along dim. */
struct bwd_strides {
    int64_t s[4];
};

/* One thread per row: the CPU's loops. */
template <class T>
__global__ void cumprod_bwd_seq_kernel(T *dx, const T *dy, const T *x, const T *y, dc_geom<4> g, int64_t rows,
                                       int64_t n, bwd_strides st)
{
    DC_GRID_STRIDE_LOOP(r, rows)
    {
        int64_t off[4];
        row_offsets<4>(g, r, off);
        T *pdx = dx + off[0];
        const T *pdy = dy + off[1], *px = x + off[2], *py = y + off[3];
        int64_t z = n;
        for (int64_t i = 0; i < n; i++)
            if ((double)px[i * st.s[2]] == 0) {
                z = i;
                break;
            }
        double suffix = 0;
        for (int64_t i = n - 1; i >= 0; i--) {
            double v = 0;
            if (i < z) {
                suffix += (double)pdy[i * st.s[1]] * (double)py[i * st.s[3]];
                v = suffix / (double)px[i * st.s[2]];
            } else if (i == z) {
                double run = 1, s = 0;
                for (int64_t j = z; j < n; j++) {
                    if (j > z) run *= (double)px[j * st.s[2]];
                    s += (double)pdy[j * st.s[1]] * run;
                }
                v = (z > 0 ? (double)py[(z - 1) * st.s[3]] : 1.0) * s;
            }
            pdx[i * st.s[0]] = (T)v;
        }
    }
}

/* A group of G threads per row: the first zero by a min over the group, the suffix sums of dy * y
 * below it by a reverse tiled scan, the gradient at the zero by a tiled product scan and a sum. */
template <class T, int G>
__global__ void __launch_bounds__(SCAN_THREADS)
    cumprod_bwd_group_kernel(T *dx, const T *dy, const T *x, const T *y, dc_geom<4> g, int64_t rows, int64_t n,
                             bwd_strides st)
{
    __shared__ double sm[SCAN_THREADS / 32];
    __shared__ uint64_t smz[SCAN_THREADS / 32];
    constexpr int per_block = SCAN_THREADS / G, TILE = G * SCAN_ITEMS;
    const int lane = threadIdx.x % G, grp = threadIdx.x / G;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
        const int64_t r = base + grp;
        if (r >= rows) continue; /* uniform over the group */
        int64_t off[4];
        row_offsets<4>(g, r, off);
        T *pdx = dx + off[0];
        const T *pdy = dy + off[1], *px = x + off[2], *py = y + off[3];
        /* z: the first zero of x, the min over the lanes' first hits */
        uint64_t zl = (uint64_t)n;
        for (int64_t i = lane; i < n; i += G)
            if ((double)px[i * st.s[2]] == 0) {
                zl = (uint64_t)i;
                break;
            }
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) {
            uint64_t t = __shfl_down_sync(0xffffffffu, zl, d);
            zl = t < zl ? t : zl;
        }
        if constexpr (G > 32) {
            if ((threadIdx.x & 31) == 0) smz[threadIdx.x >> 5] = zl;
            __syncthreads();
            zl = smz[0];
            for (int w = 1; w < G / 32; w++) zl = smz[w] < zl ? smz[w] : zl;
            __syncthreads();
        } else {
            zl = __shfl_sync(0xffffffffu, zl, 0);
        }
        const int64_t z = (int64_t)zl;
        /* i < z: positions q = z-1-i, suffix sums of dy * y */
        double run = 0;
        for (int64_t t0 = 0; t0 < z; t0 += TILE) {
            const int64_t qb = t0 + (int64_t)lane * SCAN_ITEMS;
            double v[SCAN_ITEMS];
#pragma unroll
            for (int e = 0; e < SCAN_ITEMS; e++) {
                const int64_t q = qb + e, i = z - 1 - q;
                v[e] = q < z ? (double)pdy[i * st.s[1]] * (double)py[i * st.s[3]] : 0.0;
            }
#pragma unroll
            for (int e = 1; e < SCAN_ITEMS; e++) v[e] += v[e - 1];
            double tot;
            const double pre = run + group_exclusive<G, false>(v[SCAN_ITEMS - 1], &tot, sm);
#pragma unroll
            for (int e = 0; e < SCAN_ITEMS; e++) {
                const int64_t q = qb + e, i = z - 1 - q;
                if (q < z) pdx[i * st.s[0]] = (T)((pre + v[e]) / (double)px[i * st.s[2]]);
            }
            run += tot;
        }
        if (z == n) continue; /* uniform: z is the group's */
        for (int64_t i = z + 1 + lane; i < n; i += G) pdx[i * st.s[0]] = (T)0;
        /* i == z: s = sum_{j >= z} dy[j] * prod_{z < k <= j} x[k] */
        double prod = 1, s = 0;
        for (int64_t t0 = z; t0 < n; t0 += TILE) {
            const int64_t jb = t0 + (int64_t)lane * SCAN_ITEMS;
            double v[SCAN_ITEMS];
#pragma unroll
            for (int e = 0; e < SCAN_ITEMS; e++) {
                const int64_t j = jb + e;
                v[e] = j < n && j > z ? (double)px[j * st.s[2]] : 1.0;
            }
#pragma unroll
            for (int e = 1; e < SCAN_ITEMS; e++) v[e] *= v[e - 1];
            double tot;
            const double pre = prod * group_exclusive<G, true>(v[SCAN_ITEMS - 1], &tot, sm);
#pragma unroll
            for (int e = 0; e < SCAN_ITEMS; e++) {
                const int64_t j = jb + e;
                if (j < n) s += (double)pdy[j * st.s[1]] * (pre * v[e]);
            }
            prod *= tot;
        }
        double total;
        group_exclusive<G, false>(s, &total, sm);
        if (lane == 0) pdx[z * st.s[0]] = (T)((z > 0 ? (double)py[(z - 1) * st.s[3]] : 1.0) * total);
    }
}

/* DC_OP_CUMPROD_BWD: t0 dx, t1 dy, t2 x, t3 y (= cumprod(x)), one dtype (float32/float64), one shape;
 * along p.scan.dim. */
static dc_status k_cumprod_bwd(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 4) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 4", name, a->nt);
    const dc_kview *v[4] = { &a->t[0], &a->t[1], &a->t[2], &a->t[3] };
    const dc_dtype dt = v[2]->dtype;
    for (int k = 0; k < 4; k++)
        if (v[k]->dtype != dt)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d is %s, x is %s", name, k, dc_dtype_name(v[k]->dtype),
                            dc_dtype_name(dt));
    DC_TRY(check_same_shape(name, 4, v));
    const dc_kview *x = v[2];
    const int dim = x->ndim ? (int)a->p.scan.dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim))
        return dc_error(DC_ERR_SHAPE, "%s: bad dim %lld for %d-d input", name, (long long)a->p.scan.dim, x->ndim);
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", name, dc_dtype_name(dt));
    const int64_t numel = view_numel(x);
    if (numel == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    bwd_strides st;
    for (int k = 0; k < 4; k++) st.s[k] = x->ndim ? v[k]->strides[dim] : 1;
    dc_kview r[4];
    const dc_kview *vr[4];
    for (int k = 0; k < 4; k++) r[k] = drop_dim(v[k], dim), vr[k] = &r[k];
    const dc_geom<4> g = geom_make<4>(vr);
    const bool columns = st.s[2] != 1 && g.st[2][g.ndim - 1] == 1;
    const scan_plan pl = scan_plan_make(rows, n, columns, false);
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64)>(dt, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        T *dx = (T *)v[0]->data;
        const T *dy = (const T *)v[1]->data, *xp = (const T *)v[2]->data, *yp = (const T *)v[3]->data;
        if (pl.kind == 0)
            cumprod_bwd_seq_kernel<T>
                <<<dc_cuda_blocks(rows), DC_CUDA_THREADS, 0, stream>>>(dx, dy, xp, yp, g, rows, n, st);
        else if (pl.kind == 1)
            cumprod_bwd_group_kernel<T, 32><<<grid_x(ceil_div(rows, SCAN_THREADS / 32)), SCAN_THREADS, 0, stream>>>(
                dx, dy, xp, yp, g, rows, n, st);
        else
            cumprod_bwd_group_kernel<T, SCAN_THREADS>
                <<<grid_x(rows), SCAN_THREADS, 0, stream>>>(dx, dy, xp, yp, g, rows, n, st);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    });
}

/* --- argsort ---------------------------------------------------------------------------------------- */

/* Order-preserving unsigned keys of key_bits<T> bits: unsigned order == the CPU's order (floats:
 * -0 and +0 equal, every NaN one value above +inf; integers by value; bool 0 < 1). */
template <class T> struct key_bits;
template <> struct key_bits<float> {
    static constexpr int value = 32;
};
template <> struct key_bits<double> {
    static constexpr int value = 64;
};
template <> struct key_bits<int32_t> {
    static constexpr int value = 32;
};
template <> struct key_bits<int64_t> {
    static constexpr int value = 64;
};
template <> struct key_bits<int16_t> {
    static constexpr int value = 16;
};
template <> struct key_bits<int8_t> {
    static constexpr int value = 8;
};
template <> struct key_bits<uint8_t> {
    static constexpr int value = 8;
};
template <> struct key_bits<b8> {
    static constexpr int value = 1;
};

__device__ __forceinline__ uint64_t sort_key(float x)
{
    uint32_t u = x != x ? 0x7fc00000u : x == 0.0f ? 0u : __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t sort_key(double x)
{
    uint64_t u = x != x ? 0x7ff8000000000000ull : x == 0.0 ? 0ull : (uint64_t)__double_as_longlong(x);
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}
__device__ __forceinline__ uint64_t sort_key(int32_t x)
{
    return (uint32_t)x ^ 0x80000000u;
}
__device__ __forceinline__ uint64_t sort_key(int64_t x)
{
    return (uint64_t)x ^ 0x8000000000000000ull;
}
__device__ __forceinline__ uint64_t sort_key(int16_t x)
{
    return (uint16_t)x ^ 0x8000u;
}
__device__ __forceinline__ uint64_t sort_key(int8_t x)
{
    return (uint8_t)x ^ 0x80u;
}
__device__ __forceinline__ uint64_t sort_key(uint8_t x)
{
    return x;
}
__device__ __forceinline__ uint64_t sort_key(b8 x)
{
    return x.v != 0;
}

/* keys[i], vals[i] for element i of the (rows, n) row-major order: the key of x at position j of
 * row r (complemented within kb bits when descending, so every sort is ascending), with r above the
 * key bits when composite; the value is j. g operands: 0 x, 1 o. */
template <class T, class K>
__global__ void argsort_keys_kernel(K *keys, int32_t *vals, const T *x, dc_geom<2> g, int64_t numel, int64_t n,
                                    int64_t xs, int desc, int composite)
{
    constexpr int kb = key_bits<T>::value;
    const uint64_t mask = kb == 64 ? ~0ull : ((1ull << kb) - 1);
    DC_GRID_STRIDE_LOOP(i, numel)
    {
        const int64_t r = i / n, j = i - r * n;
        int64_t off[2];
        row_offsets<2>(g, r, off);
        uint64_t k = sort_key(x[off[0] + j * xs]);
        if (desc) k = ~k & mask;
        if constexpr (kb < 64) /* composite only with kb + row bits <= 64 */
            if (composite) k |= (uint64_t)r << kb;
        keys[i] = (K)k;
        vals[i] = (int32_t)j;
    }
}

/* o[row r, rank q] = the position sorted to place r * n + q (0 where vals is NULL: rows of one). */
__global__ void argsort_scatter_kernel(int64_t *o, const int32_t *vals, dc_geom<2> g, int64_t numel, int64_t n,
                                       int64_t os)
{
    DC_GRID_STRIDE_LOOP(p, numel)
    {
        const int64_t r = p / n, q = p - r * n;
        int64_t off[2];
        row_offsets<2>(g, r, off);
        o[off[1] + q * os] = vals ? (int64_t)vals[p] : 0;
    }
}

__global__ void segment_offsets_kernel(int64_t *off, int64_t rows, int64_t n)
{
    DC_GRID_STRIDE_LOOP(r, rows + 1) off[r] = r * n;
}

static size_t align256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

/* Builds the keys, sorts, scatters; buf: scratch of the size argsort_bytes said (layout below). */
template <class T, class K>
static dc_status argsort_run(int64_t *o, const T *x, const dc_geom<2> &g, int64_t rows, int64_t n, int64_t xs,
                             int64_t os, int desc, bool composite, int end_bit, char *buf, size_t temp_bytes,
                             cudaStream_t stream)
{
    const int64_t numel = rows * n;
    const size_t kbytes = align256(sizeof(K) * (size_t)numel), vbytes = align256(sizeof(int32_t) * (size_t)numel);
    K *k0 = (K *)buf, *k1 = (K *)(buf + kbytes);
    int32_t *v0 = (int32_t *)(buf + 2 * kbytes), *v1 = (int32_t *)(buf + 2 * kbytes + vbytes);
    int64_t *segs = (int64_t *)(buf + 2 * kbytes + 2 * vbytes);
    void *temp = buf + 2 * kbytes + 2 * vbytes + (composite ? 0 : align256(sizeof(int64_t) * (size_t)(rows + 1)));
    argsort_keys_kernel<T, K>
        <<<dc_cuda_blocks(numel), DC_CUDA_THREADS, 0, stream>>>(k0, v0, x, g, numel, n, xs, desc, composite);
    DC_CUDA_CHECK_LAUNCH();
    cub::DoubleBuffer<K> dk(k0, k1);
    cub::DoubleBuffer<int32_t> dv(v0, v1);
    size_t tb = temp_bytes;
    if (composite) {
        DC_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, tb, dk, dv, numel, 0, end_bit, stream));
    } else {
        segment_offsets_kernel<<<dc_cuda_blocks(rows + 1), DC_CUDA_THREADS, 0, stream>>>(segs, rows, n);
        DC_CUDA_CHECK_LAUNCH();
        const int64_t *sb = segs;
        DC_CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairs(temp, tb, dk, dv, numel, rows, sb, sb + 1, stream));
    }
    argsort_scatter_kernel<<<dc_cuda_blocks(numel), DC_CUDA_THREADS, 0, stream>>>(o, dv.Current(), g, numel, n, os);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* Scratch for argsort_run: 2 key buffers, 2 value buffers, segment offsets, CUB's temp storage
 * (asked of CUB with a NULL buffer: no launch). */
template <class K>
static dc_status argsort_bytes(int64_t rows, int64_t n, bool composite, int end_bit, size_t *total, size_t *temp,
                               cudaStream_t stream)
{
    const int64_t numel = rows * n;
    cub::DoubleBuffer<K> dk(NULL, NULL);
    cub::DoubleBuffer<int32_t> dv(NULL, NULL);
    size_t tb = 0;
    if (composite) {
        DC_CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, tb, dk, dv, numel, 0, end_bit, stream));
    } else {
        DC_CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairs(NULL, tb, dk, dv, numel, rows, (const int64_t *)NULL,
                                                              (const int64_t *)NULL, stream));
    }
    *temp = tb;
    *total = 2 * align256(sizeof(K) * (size_t)numel) + 2 * align256(sizeof(int32_t) * (size_t)numel) +
             (composite ? 0 : align256(sizeof(int64_t) * (size_t)(rows + 1))) + align256(tb);
    return DC_OK;
}

template <class T, class K>
static dc_status argsort_forward(int64_t *o, const T *x, const dc_geom<2> &g, int64_t rows, int64_t n, int64_t xs,
                                 int64_t os, int desc, bool composite, int end_bit, cudaStream_t stream)
{
    size_t total, temp;
    DC_TRY(argsort_bytes<K>(rows, n, composite, end_bit, &total, &temp, stream));
    char *buf;
    DC_TRY(dc_cuda_scratch(total, (void **)&buf));
    dc_status st = argsort_run<T, K>(o, x, g, rows, n, xs, os, desc, composite, end_bit, buf, temp, stream);
    dc_cuda_scratch_free(buf); /* stream-ordered: safe right after queueing */
    return st;
}

/* DC_OP_ARGSORT: t0 (int64, t1's shape) = the stable sort order of t1 along p.sort.dim, ascending
 * or descending (NaN last / first). t1: every dtype but the 16-bit floats (the op layer sorts a
 * float32 copy of those). */
static dc_status k_argsort(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->dtype != DC_INT64)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for output dtype %s", name,
                        dc_dtype_name(o->dtype));
    const int dim = x->ndim ? (int)a->p.sort.dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim))
        return dc_error(DC_ERR_SHAPE, "%s: bad dim %lld for %d-d input", name, (long long)a->p.sort.dim, x->ndim);
    const dc_kview *v2[2] = { x, o };
    DC_TRY(check_same_shape(name, 2, v2));
    const int64_t numel = view_numel(x);
    if (numel == 0) return DC_OK;
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    if (n > INT32_MAX)
        return dc_error(DC_ERR_UNSUPPORTED, "%s: rows of %lld elements are longer than the CUDA kernel sorts (2^31-1)",
                        name, (long long)n);
    DC_TRY(dc_cuda_use_device_of(o->data));
    const int64_t xs = x->ndim ? x->strides[dim] : 1, os = o->ndim ? o->strides[dim] : 1;
    const dc_kview xr = drop_dim(x, dim), orr = drop_dim(o, dim);
    const dc_kview *vr[2] = { &xr, &orr };
    const dc_geom<2> g = geom_make<2>(vr);
    const int desc = a->p.sort.descending != 0;
    cudaStream_t stream = dc_cuda_stream();
    return dispatch_any<DT_SCAN>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        if (n == 1) { /* every row is already sorted */
            argsort_scatter_kernel<<<dc_cuda_blocks(numel), DC_CUDA_THREADS, 0, stream>>>((int64_t *)o->data, NULL, g,
                                                                                          numel, 1, os);
            DC_CUDA_CHECK_LAUNCH();
            return DC_OK;
        }
        constexpr int kb = key_bits<T>::value;
        int rowbits = 0;
        while (rowbits < 63 && ((rows - 1) >> rowbits) != 0) rowbits++;
        /* long rows (or one row): one device-wide radix sort on (row, key); short rows: segmented */
        const bool composite = (rows == 1 || n >= 4096) && kb + rowbits <= 64;
        const int end_bit = kb + rowbits;
        const bool wide = composite ? end_bit > 32 : kb > 32;
        int64_t *op = (int64_t *)o->data;
        const T *xp = (const T *)x->data;
        if constexpr (kb > 32) /* 64-bit keys never fit 32 bits */
            return argsort_forward<T, uint64_t>(op, xp, g, rows, n, xs, os, desc, composite, end_bit, stream);
        else
            return wide ? argsort_forward<T, uint64_t>(op, xp, g, rows, n, xs, os, desc, composite, end_bit, stream)
                        : argsort_forward<T, uint32_t>(op, xp, g, rows, n, xs, os, desc, composite, end_bit, stream);
    });
}

/* --- nonzero ------------------------------------------------------------------------------------------ */

__device__ __forceinline__ bool is_nonzero(float v)
{
    return v != 0.0f; /* NaN is non-zero, -0 is zero */
}
__device__ __forceinline__ bool is_nonzero(double v)
{
    return v != 0.0;
}
__device__ __forceinline__ bool is_nonzero(__nv_bfloat16 v)
{
    return __bfloat162float(v) != 0.0f;
}
__device__ __forceinline__ bool is_nonzero(__half v)
{
    return __half2float(v) != 0.0f;
}
__device__ __forceinline__ bool is_nonzero(b8 v)
{
    return v.v != 0;
}
template <class T> __device__ __forceinline__ bool is_nonzero(T v)
{
    return v != 0;
}

struct nz_shape {
    int nd;
    int64_t shape[DC_MAX_DIMS];
};

/* Pass 1: counts[b] = non-zeros among linear indices [b * chunk, (b+1) * chunk). */
template <class T>
__global__ void __launch_bounds__(SCAN_THREADS)
    nonzero_count_kernel(int64_t *counts, const T *x, dc_geom<1> g, int64_t numel, int64_t chunk)
{
    __shared__ uint64_t sm[SCAN_THREADS / 32];
    const int64_t b0 = (int64_t)blockIdx.x * chunk, b1 = b0 + chunk < numel ? b0 + chunk : numel;
    uint64_t c = 0;
    for (int64_t i = b0 + threadIdx.x; i < b1; i += SCAN_THREADS) {
        int64_t off[1];
        row_offsets<1>(g, i, off);
        c += is_nonzero(x[off[0]]);
    }
    uint64_t tot;
    group_exclusive<SCAN_THREADS, false>(c, &tot, sm);
    if (threadIdx.x == 0) counts[blockIdx.x] = (int64_t)tot;
}

/* Pass 2 (one block): counts -> exclusive prefixes, in place. */
__global__ void __launch_bounds__(SCAN_THREADS) nonzero_prefix_kernel(int64_t *counts, int64_t nblk)
{
    __shared__ uint64_t sm[SCAN_THREADS / 32];
    uint64_t run = 0;
    for (int64_t t0 = 0; t0 < nblk; t0 += SCAN_THREADS) {
        const int64_t i = t0 + threadIdx.x;
        const uint64_t v = i < nblk ? (uint64_t)counts[i] : 0;
        uint64_t tot;
        const uint64_t ex = group_exclusive<SCAN_THREADS, false>(v, &tot, sm);
        if (i < nblk) counts[i] = (int64_t)(run + ex);
        run += tot;
    }
}

/* Pass 3: each block walks its chunk 256 indices at a time; a ballot and the warps' counts rank
 * every non-zero, whose coordinates (row-major over x's shape) go to row base + rank of out
 * (count, nd). Ranks >= cap are dropped (the op layer's count is the bound). */
template <class T>
__global__ void __launch_bounds__(SCAN_THREADS)
    nonzero_write_kernel(int64_t *out, const T *x, dc_geom<1> g, nz_shape sh, int64_t numel, int64_t chunk,
                         const int64_t *prefix, int64_t cap)
{
    __shared__ int sm[SCAN_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b0 = (int64_t)blockIdx.x * chunk, b1 = b0 + chunk < numel ? b0 + chunk : numel;
    int64_t base = prefix[blockIdx.x];
    for (int64_t t0 = b0; t0 < b1; t0 += SCAN_THREADS) {
        const int64_t i = t0 + threadIdx.x;
        bool nz = false;
        if (i < b1) {
            int64_t off[1];
            row_offsets<1>(g, i, off);
            nz = is_nonzero(x[off[0]]);
        }
        const unsigned bal = __ballot_sync(0xffffffffu, nz);
        if (lane == 0) sm[warp] = __popc(bal);
        __syncthreads();
        int wp = 0, tot = 0;
#pragma unroll
        for (int w = 0; w < SCAN_THREADS / 32; w++) {
            if (w < warp) wp += sm[w];
            tot += sm[w];
        }
        __syncthreads();
        const int64_t k = base + wp + __popc(bal & ((1u << lane) - 1u));
        if (nz && k < cap) {
            int64_t rem = i;
            for (int d = sh.nd - 1; d >= 0; d--) {
                const int64_t q = rem / sh.shape[d];
                out[k * sh.nd + d] = rem - q * sh.shape[d];
                rem = q;
            }
        }
        base += tot;
    }
}

template <class T>
static dc_status nonzero_forward(int64_t *out, const T *x, const dc_geom<1> &g, const nz_shape &sh, int64_t numel,
                                 int64_t cap, cudaStream_t stream)
{
    int64_t chunk = ceil_div(ceil_div(numel, 4096), SCAN_THREADS) * SCAN_THREADS;
    if (chunk < 8 * SCAN_THREADS) chunk = 8 * SCAN_THREADS;
    const int64_t nblk = ceil_div(numel, chunk); /* <= 4096 */
    int64_t *counts;
    DC_TRY(dc_cuda_scratch(sizeof(int64_t) * (size_t)nblk, (void **)&counts));
    nonzero_count_kernel<T><<<(unsigned int)nblk, SCAN_THREADS, 0, stream>>>(counts, x, g, numel, chunk);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        nonzero_prefix_kernel<<<1, SCAN_THREADS, 0, stream>>>(counts, nblk);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
        nonzero_write_kernel<T>
            <<<(unsigned int)nblk, SCAN_THREADS, 0, stream>>>(out, x, g, sh, numel, chunk, counts, cap);
        e = cudaGetLastError();
    }
    dc_cuda_scratch_free(counts); /* stream-ordered: safe right after queueing */
    DC_CUDA_TRY(e);
    return DC_OK;
}

/* DC_OP_NONZERO: t0 (count, ndim) int64, contiguous, sized by the op layer's count = coordinates of
 * t1's non-zero elements (any dtype, any strides) in row-major order. The CPU checks the count
 * against what it finds; here that would need a host read, so extra non-zeros are dropped and
 * missing ones leave rows unwritten (neither happens while the op layer counts with the same
 * "!= 0"). */
static dc_status k_nonzero(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const int nd = x->ndim;
    if (o->dtype != DC_INT64 || o->ndim != 2 || o->shape[1] != nd || (o->shape[1] > 1 && o->strides[1] != 1) ||
        (o->shape[0] > 1 && o->strides[0] != nd))
        return dc_error(DC_ERR_INTERNAL, "cuda %s: output must be a contiguous (count, %d) int64 tensor, got %s %s",
                        name, nd, dc_dtype_name(o->dtype), dc_shape_str(o->ndim, o->shape));
    const int64_t numel = view_numel(x), cap = o->shape[0];
    if (numel == 0 || cap == 0 || nd == 0) return DC_OK; /* nothing to write */
    DC_TRY(dc_cuda_use_device_of(o->data));
    const dc_kview *v1[1] = { x };
    const dc_geom<1> g = geom_make<1>(v1);
    nz_shape sh;
    memset(&sh, 0, sizeof sh);
    sh.nd = nd;
    for (int d = 0; d < nd; d++) sh.shape[d] = x->shape[d];
    cudaStream_t stream = dc_cuda_stream();
    return dispatch_any<DT_EVERY>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        return nonzero_forward<T>((int64_t *)o->data, (const T *)x->data, g, sh, numel, cap, stream);
    });
}

} // namespace

void dc_cuda_register_scan(dc_kernel_fn *k)
{
    k[DC_OP_CUMSUM] = k_scan;
    k[DC_OP_CUMPROD] = k_scan;
    k[DC_OP_CUMPROD_BWD] = k_cumprod_bwd;
    k[DC_OP_ARGSORT] = k_argsort;
    k[DC_OP_NONZERO] = k_nonzero;
}
