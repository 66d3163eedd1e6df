/* reduce.cu: SUM / MAX / MIN over any set of dims, ARGMAX / ARGMIN along one dim, and NORM_POW (the
 * float64 accumulator of sum |x|^p that gradient clipping reads), on the GPU.
 *
 * Same results as csrc/cpu/reduce.c and the NORM_POW kernel of csrc/cpu/optim.c: float32/float64
 * sums accumulate in double, integer sums in int64 (wrapping, never UB); MAX/MIN propagate NaN;
 * ARGMAX/ARGMIN pick the first index on ties and the first NaN outright; NORM_POW adds
 * sum |x|^p in double to t0 (p = inf: t0 = max(t0, max |x|), NaN sticky; p = 0: count of non-zeros).
 *
 * Every op is one "reduce rows" problem: the input's dims split into kept ones (one output element
 * per kept index) and reduced ones (folded into it), each list coalesced. Two strategies:
 *  - rows: the reduced run is what a group of threads walks: a group of 4 lanes (rows of <= 16), a
 *    warp, or a whole block (long rows) per output; contiguous rows read 16 bytes per lane per step.
 *  - columns: the innermost kept dim is unit-stride (sum over the rows of a matrix: bias gradients),
 *    so neighbouring threads take neighbouring outputs and walk the reduced dims together, every
 *    read coalesced; threadIdx.y splits the reduced range, folded by a shared-memory tree.
 * When there are too few outputs to fill the GPU (a full reduction to one number), the reduced range
 * is cut into chunks (grid.y): pass 1 writes one partial per (output, chunk) into scratch, pass 2
 * folds each output's partials in a fixed tree. Which thread folds which element depends only on the
 * shapes, never on timing, and nothing uses atomics: same inputs, same bits. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "common.cuh"

/* Everything but the registration function is file-local (internal linkage, kernels included). */
namespace
{

#define RED_THREADS 256
/* enough blocks to fill an H100/H200 (132 SMs) several times over */
#define RED_TARGET_BLOCKS 1024

/* The folds: REDUCE ops, ARGREDUCE ops, and NORM_POW by its order p (p = 1, 2, inf, 0 and the
 * general pow() get their own loops, as on the CPU). */
enum { R_SUM, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN, R_NORM1, R_NORM2, R_NORMINF, R_NORM0, R_NORMP };

/* --- geometry ------------------------------------------------------------------------------------ */

/* Kept dims (one output each; in and out strides, elements) and reduced dims (in strides), both
 * outermost first and coalesced. knd == 0: one output; rnd >= 1 always. */
struct red_geom {
    int knd, rnd;
    int64_t kshape[DC_MAX_DIMS], kin[DC_MAX_DIMS], kout[DC_MAX_DIMS];
    int64_t rshape[DC_MAX_DIMS], rin[DC_MAX_DIMS];
};

/* Input and output offsets (elements) of kept linear index i. */
__device__ __forceinline__ void kept_offsets(const red_geom &g, int64_t i, int64_t &in_off, int64_t &out_off)
{
    if (g.knd == 1) {
        in_off = i * g.kin[0];
        out_off = i * g.kout[0];
        return;
    }
    int64_t io = 0, oo = 0;
    for (int d = g.knd - 1; d >= 0; d--) {
        int64_t q = i / g.kshape[d], idx = i - q * g.kshape[d];
        i = q;
        io += idx * g.kin[d];
        oo += idx * g.kout[d];
    }
    in_off = io;
    out_off = oo;
}

/* Input offset (elements) of reduced linear index j, several reduced dims (the rare layouts). */
__device__ __forceinline__ int64_t red_offset(const red_geom &g, int64_t j)
{
    int64_t o = 0;
    for (int d = g.rnd - 1; d >= 0; d--) {
        int64_t q = j / g.rshape[d];
        o += (j - q * g.rshape[d]) * g.rin[d];
        j = q;
    }
    return o;
}

/* Merge neighbouring dims (outermost first) that walk memory as one: stride[d] == stride[d+1] *
 * shape[d+1] in the input and (kept dims) the output, as csrc/cpu/reduce.c's dimset_coalesce. */
static void dims_coalesce(int *nd, int64_t *shape, int64_t *in, int64_t *out)
{
    int n = *nd;
    if (n == 0) return;
    int o = n - 1;
    for (int i = n - 2; i >= 0; i--) {
        bool merge = in[i] == in[o] * shape[o] && (!out || out[i] == out[o] * shape[o]);
        if (merge) {
            shape[o] *= shape[i];
        } else {
            o--;
            shape[o] = shape[i];
            in[o] = in[i];
            if (out) out[o] = out[i];
        }
    }
    int m = n - o;
    memmove(shape, shape + o, m * sizeof(int64_t));
    memmove(in, in + o, m * sizeof(int64_t));
    if (out) memmove(out, out + o, m * sizeof(int64_t));
    *nd = m;
}

/* --- the folds ------------------------------------------------------------------------------------ */

template <class V> struct argst {
    V v;
    int64_t i; /* position along the dim; -1: nothing folded yet */
};

/* Where the result goes: out + element offset, stored as odt (f32/f64 for float inputs, i32/i64
 * for integer ones, int64 for the arg ops, float64 for NORM_POW). */
struct red_out {
    char *p;
    dc_dtype odt;
};

/* One fold: init() is its identity, fold() takes one element (j: its reduced linear index, which
 * is the position along the dim for the arg ops; each thread folds its elements in increasing j),
 * combine() merges two partial states, store() writes the result. V is the accumulator: double
 * for float inputs (float32 sums in double, as the CPU), int64 for integers. */
template <class T> constexpr bool is_flt = std::is_floating_point<T>::value;

template <class T, int Op> struct red {
    typedef typename std::conditional<std::is_floating_point<T>::value, double, int64_t>::type V;
    static constexpr bool is_arg = Op == R_ARGMAX || Op == R_ARGMIN;
    typedef typename std::conditional<is_arg, argst<V>, V>::type S;
    double p; /* R_NORMP: the order */

    __device__ __forceinline__ S init() const
    {
        if constexpr (is_arg) {
            S s;
            s.v = V(0);
            s.i = -1;
            return s;
        } else if constexpr (Op == R_MAX) {
            if constexpr (is_flt<T>)
                return -INFINITY;
            else
                return INT64_MIN;
        } else if constexpr (Op == R_MIN) {
            if constexpr (is_flt<T>)
                return INFINITY;
            else
                return INT64_MAX;
        } else {
            return S(0);
        }
    }

    /* a is better than b (strictly) for the arg ops; NaN handled by the callers */
    __device__ __forceinline__ static bool better(V a, V b) { return Op == R_ARGMAX ? a > b : a < b; }

    __device__ __forceinline__ S fold(S s, T x, int64_t j) const
    {
        if constexpr (Op == R_SUM) {
            if constexpr (is_flt<T>)
                return s + (double)x;
            else
                return (int64_t)((uint64_t)s + (uint64_t)(int64_t)x); /* wraps, no UB */
        } else if constexpr (Op == R_MAX || Op == R_MIN) {
            V v = (V)x;
            if constexpr (is_flt<T>) /* NaN sticks: once s is NaN no comparison replaces it */
                return ((Op == R_MAX ? v > s : v < s) || v != v) ? v : s;
            else
                return (Op == R_MAX ? v > s : v < s) ? v : s;
        } else if constexpr (is_arg) {
            V v = (V)x;
            if (s.i < 0) return S{ v, j };
            if constexpr (is_flt<T>) {
                if (s.v != s.v) return s; /* the first NaN wins outright */
                if (v != v) return S{ v, j };
            }
            return better(v, s.v) ? S{ v, j } : s; /* strict: the first of equal values stays */
        } else if constexpr (Op == R_NORM1) {
            return s + fabs((double)x);
        } else if constexpr (Op == R_NORM2) {
            double v = (double)x;
            return s + v * v;
        } else if constexpr (Op == R_NORMINF) {
            double v = fabs((double)x);
            return (v > s || v != v) ? v : s;
        } else if constexpr (Op == R_NORM0) {
            return s + ((double)x != 0.0 ? 1.0 : 0.0); /* NaN counts as non-zero */
        } else {
            return s + pow(fabs((double)x), p);
        }
    }

    __device__ __forceinline__ S combine(S a, S b) const
    {
        if constexpr (Op == R_SUM) {
            if constexpr (is_flt<T>)
                return a + b;
            else
                return (int64_t)((uint64_t)a + (uint64_t)b);
        } else if constexpr (Op == R_MAX || Op == R_MIN || Op == R_NORMINF) {
            constexpr bool mx = Op != R_MIN;
            if constexpr (is_flt<T>)
                return ((mx ? b > a : b < a) || b != b) ? b : a; /* NaN on either side wins */
            else
                return (mx ? b > a : b < a) ? b : a;
        } else if constexpr (is_arg) {
            /* commutative: NaN first, then the better value, then the lower index */
            if (a.i < 0) return b;
            if (b.i < 0) return a;
            if constexpr (is_flt<T>) {
                bool an = a.v != a.v, bn = b.v != b.v;
                if (an || bn) {
                    if (an && bn) return a.i < b.i ? a : b;
                    return an ? a : b;
                }
            }
            if (better(b.v, a.v)) return b;
            if (better(a.v, b.v)) return a;
            return a.i < b.i ? a : b;
        } else {
            return a + b;
        }
    }

    __device__ __forceinline__ void store(const red_out &o, int64_t off, S s) const
    {
        if constexpr (is_arg) {
            ((int64_t *)o.p)[off] = s.i;
        } else if constexpr (Op >= R_NORM1) {
            double *t = (double *)o.p; /* t0 accumulates across calls (one per tensor) */
            double r = *t;
            if constexpr (Op == R_NORMINF)
                *t = (s > r || s != s) ? s : r;
            else
                *t = r + s;
        } else if constexpr (is_flt<T>) {
            if (o.odt == DC_FLOAT32)
                ((float *)o.p)[off] = (float)s;
            else
                ((double *)o.p)[off] = s;
        } else {
            if (o.odt == DC_INT32)
                ((int32_t *)o.p)[off] = (int32_t)(uint32_t)(uint64_t)s; /* wraps as the CPU */
            else
                ((int64_t *)o.p)[off] = s;
        }
    }
};

/* --- group reductions ---------------------------------------------------------------------------- */

template <class V> __device__ __forceinline__ V shfl_down(V v, int delta, int width)
{
    return __shfl_down_sync(0xffffffffu, v, delta, width);
}
template <class V> __device__ __forceinline__ argst<V> shfl_down(argst<V> s, int delta, int width)
{
    s.v = __shfl_down_sync(0xffffffffu, s.v, delta, width);
    s.i = __shfl_down_sync(0xffffffffu, s.i, delta, width);
    return s;
}

/* Fold the states of each group of G lanes (G <= 32) into its lane 0; every lane of the warp must
 * call it. */
template <int G, class R, class S> __device__ __forceinline__ S sub_warp_reduce(const R &rd, S s)
{
#pragma unroll
    for (int d = G / 2; d > 0; d >>= 1) s = rd.combine(s, shfl_down(s, d, G));
    return s;
}

/* G <= 32: a sub-warp fold. G == RED_THREADS: the whole block (every thread calls it; the result
 * is in thread 0; sm holds one state per warp). */
template <int G, class R, class S> __device__ __forceinline__ S group_reduce(const R &rd, S s, S *sm)
{
    if constexpr (G <= 32) {
        return sub_warp_reduce<G>(rd, s);
    } else {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        s = sub_warp_reduce<32>(rd, s);
        if (lane == 0) sm[warp] = s;
        __syncthreads();
        if (warp == 0) {
            s = lane < G / 32 ? sm[lane] : rd.init();
            s = sub_warp_reduce<32>(rd, s);
        }
        __syncthreads(); /* sm is reused by the next row */
        return s;
    }
}

/* --- kernels -------------------------------------------------------------------------------------- */

/* 16 bytes of T: one vector load per lane per step on contiguous rows. */
template <class T> struct alignas(16) vec16 {
    T v[16 / sizeof(T)];
};

/* Fold reduced indices [j0, j1) of the row at p, lanes lane, lane + G, ... of a group of G.
 * Contiguous rows go by 16-byte slots (slot k: elements j0 + kV .. j0 + kV + V-1, lane k % G), the
 * same assignment whether or not the row start is 16-byte aligned (only the load width changes),
 * so the bits of a result do not depend on where the tensor sits in memory. */
template <int G, class T, class R>
__device__ __forceinline__ typename R::S fold_range(const R &rd, typename R::S s, const T *p, const red_geom &g,
                                                    int64_t j0, int64_t j1, int lane)
{
    if (g.rnd == 1 && g.rin[0] == 1) {
        constexpr int V = 16 / sizeof(T);
        const T *q = p + j0;
        const int64_t n = j1 - j0, nslot = n / V;
        const bool aligned = ((uintptr_t)q & 15) == 0;
        for (int64_t k = lane; k < nslot; k += G) {
            vec16<T> w;
            if (aligned) {
                w = *reinterpret_cast<const vec16<T> *>(q + k * V);
            } else {
#pragma unroll
                for (int e = 0; e < V; e++) w.v[e] = q[k * V + e];
            }
#pragma unroll
            for (int e = 0; e < V; e++) s = rd.fold(s, w.v[e], j0 + k * V + e);
        }
        for (int64_t j = nslot * V + lane; j < n; j += G) s = rd.fold(s, q[j], j0 + j);
    } else if (g.rnd == 1) {
        const int64_t st = g.rin[0];
        for (int64_t j = j0 + lane; j < j1; j += G) s = rd.fold(s, p[j * st], j);
    } else {
        for (int64_t j = j0 + lane; j < j1; j += G) s = rd.fold(s, p[red_offset(g, j)], j);
    }
    return s;
}

/* The rows strategy: a group of G threads per output (RED_THREADS / G outputs per block), chunk
 * blockIdx.y of the reduced range. One chunk: the result goes to out; several: to
 * part[row * nchunk + chunk] for reduce_finish_kernel. */
template <class T, int Op, int G>
__global__ void __launch_bounds__(RED_THREADS)
    reduce_rows_kernel(const T *x, red_out out, red<T, Op> rd, red_geom g, int64_t O, int64_t R, int64_t chunk,
                       typename red<T, Op>::S *part)
{
    typedef typename red<T, Op>::S S;
    __shared__ S sm[RED_THREADS / 32];
    constexpr int per_block = RED_THREADS / G;
    const int lane = threadIdx.x % G, grp = threadIdx.x / G;
    const int nchunk = gridDim.y, c = blockIdx.y;
    const int64_t j0 = (int64_t)c * chunk, j1 = j0 + chunk < R ? j0 + chunk : R;
    /* base is uniform over the block, so every lane reaches the shuffles and barriers */
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < O; base += (int64_t)gridDim.x * per_block) {
        const int64_t row = base + grp;
        const bool active = row < O;
        S s = rd.init();
        int64_t in_off = 0, out_off = 0;
        if (active) {
            kept_offsets(g, row, in_off, out_off);
            s = fold_range<G>(rd, s, x + in_off, g, j0, j1, lane);
        }
        s = group_reduce<G>(rd, s, sm);
        if (active && lane == 0) {
            if (nchunk == 1)
                rd.store(out, out_off, s);
            else
                part[row * nchunk + c] = s;
        }
    }
}

/* The columns strategy: block (bx, by), bx neighbouring outputs of the unit-stride innermost kept
 * dim (L of them per outer index, nbl blocks of bx per outer index), by threads splitting the
 * reduced range [j0, j1) of chunk blockIdx.y; a shared-memory tree over threadIdx.y folds them. */
template <class T, int Op>
__global__ void __launch_bounds__(RED_THREADS)
    reduce_cols_kernel(const T *x, red_out out, red<T, Op> rd, red_geom g, int64_t L, int64_t nbl, int64_t nbx,
                       int64_t R, int64_t chunk, typename red<T, Op>::S *part)
{
    typedef typename red<T, Op>::S S;
    __shared__ S sm[RED_THREADS];
    const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
    const int nchunk = gridDim.y, c = blockIdx.y;
    const int64_t j0 = (int64_t)c * chunk, j1 = j0 + chunk < R ? j0 + chunk : R;
    for (int64_t b = blockIdx.x; b < nbx; b += gridDim.x) {
        const int64_t outer = b / nbl, col = (b - outer * nbl) * bx + tx, i = outer * L + col;
        const bool active = col < L;
        S s = rd.init();
        int64_t in_off = 0, out_off = 0;
        if (active) {
            kept_offsets(g, i, in_off, out_off);
            const T *p = x + in_off;
            if (g.rnd == 1) {
                const int64_t st = g.rin[0];
                for (int64_t j = j0 + ty; j < j1; j += by) s = rd.fold(s, p[j * st], j);
            } else {
                for (int64_t j = j0 + ty; j < j1; j += by) s = rd.fold(s, p[red_offset(g, j)], j);
            }
        }
        sm[ty * bx + tx] = s;
        __syncthreads();
        for (int h = by / 2; h > 0; h >>= 1) {
            if (ty < h) sm[ty * bx + tx] = rd.combine(sm[ty * bx + tx], sm[(ty + h) * bx + tx]);
            __syncthreads();
        }
        if (ty == 0 && active) {
            s = sm[tx];
            if (nchunk == 1)
                rd.store(out, out_off, s);
            else
                part[i * nchunk + c] = s;
        }
        __syncthreads(); /* sm is reused by the next block of columns */
    }
}

/* Pass 2: one warp per output folds its nchunk partials (lanes stride, then a fixed shuffle tree). */
template <class T, int Op>
__global__ void __launch_bounds__(RED_THREADS) reduce_finish_kernel(const typename red<T, Op>::S *part, int nchunk,
                                                                    red_out out, red<T, Op> rd, red_geom g, int64_t O)
{
    typedef typename red<T, Op>::S S;
    constexpr int per_block = RED_THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < O; base += (int64_t)gridDim.x * per_block) {
        const int64_t row = base + warp;
        S s = rd.init();
        if (row < O)
            for (int c = lane; c < nchunk; c += 32) s = rd.combine(s, part[row * nchunk + c]);
        s = sub_warp_reduce<32>(rd, s);
        if (row < O && lane == 0) {
            int64_t in_off, out_off;
            kept_offsets(g, row, in_off, out_off);
            rd.store(out, out_off, s);
        }
    }
}

/* --- planning and launchers ------------------------------------------------------------------------ */

/* How one reduction runs; depends only on the shapes (so the summation order, and the bits, do too). */
struct red_plan {
    red_geom g;
    int64_t O, R;   /* outputs, elements folded into each */
    bool cols;      /* columns strategy, else rows */
    int G;          /* rows: threads per output (4, 32 or RED_THREADS) */
    int bx, by;     /* columns: block shape */
    int64_t L, nbl; /* columns: innermost kept extent, column blocks per outer index */
    int64_t nbx;    /* grid.x work items (rows: groups of outputs; columns: column blocks) */
    int64_t chunk;  /* reduced elements per chunk */
    int nchunk;     /* grid.y */
};

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* g must hold the coalesced kept and reduced dims (rnd >= 1); O, R their element counts. */
static red_plan plan_make(const red_geom &g, int64_t O, int64_t R)
{
    red_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.g = g;
    pl.O = O;
    pl.R = R;
    pl.nchunk = 1;
    pl.chunk = R;
    if (g.knd > 0 && g.kin[g.knd - 1] == 1 && R > 1) { /* as csrc/cpu/reduce.c: innermost kept dim unit-stride */
        pl.cols = true;
        pl.L = g.kshape[g.knd - 1];
        int bx = 2;
        while (bx < 32 && bx < pl.L) bx *= 2; /* small L: several rows per warp keeps reads contiguous */
        pl.bx = bx;
        pl.by = RED_THREADS / bx;
        pl.nbl = ceil_div(pl.L, bx);
        pl.nbx = (O / pl.L) * pl.nbl;
        const int64_t min_rows = (int64_t)pl.by * 32; /* each thread folds >= 32 rows of a chunk */
        if (pl.nbx < RED_TARGET_BLOCKS && R >= 2 * min_rows) {
            int64_t c = ceil_div(RED_TARGET_BLOCKS, pl.nbx), cmax = R / min_rows;
            pl.nchunk = (int)(c < cmax ? c : cmax);
        }
    } else {
        pl.G = R <= 16 ? 4 : (R <= 1024 || (O >= 4096 && R <= 8192)) ? 32 : RED_THREADS;
        pl.nbx = ceil_div(O, RED_THREADS / pl.G);
        if (pl.G == RED_THREADS && O < RED_TARGET_BLOCKS / 2) { /* few long rows: chunks of >= 4096 */
            int64_t c = ceil_div(RED_TARGET_BLOCKS, O), cmax = R / 4096;
            pl.nchunk = (int)(c < cmax ? c : cmax);
        }
    }
    if (pl.nchunk > 1) {
        pl.chunk = ceil_div(R, pl.nchunk);
        if (!pl.cols) pl.chunk = ceil_div(pl.chunk, 1024) * 1024; /* keeps the 16-byte slots aligned */
        pl.nchunk = (int)ceil_div(R, pl.chunk);
    }
    if (pl.nchunk < 1) pl.nchunk = 1;
    return pl;
}

static unsigned int grid_x(int64_t work)
{
    const int64_t cap = 1 << 20; /* the kernels loop past it */
    return (unsigned int)(work < 1 ? 1 : work > cap ? cap : work);
}

template <class T, int Op>
static dc_status reduce_pass1(const T *x, red_out out, const red<T, Op> &rd, const red_plan &pl,
                              typename red<T, Op>::S *part, cudaStream_t stream)
{
    dim3 grid(grid_x(pl.nbx), (unsigned int)pl.nchunk);
    if (pl.cols) {
        dim3 block((unsigned int)pl.bx, (unsigned int)pl.by);
        reduce_cols_kernel<T, Op>
            <<<grid, block, 0, stream>>>(x, out, rd, pl.g, pl.L, pl.nbl, pl.nbx, pl.R, pl.chunk, part);
    } else if (pl.G == 4) {
        reduce_rows_kernel<T, Op, 4><<<grid, RED_THREADS, 0, stream>>>(x, out, rd, pl.g, pl.O, pl.R, pl.chunk, part);
    } else if (pl.G == 32) {
        reduce_rows_kernel<T, Op, 32><<<grid, RED_THREADS, 0, stream>>>(x, out, rd, pl.g, pl.O, pl.R, pl.chunk, part);
    } else {
        reduce_rows_kernel<T, Op, RED_THREADS>
            <<<grid, RED_THREADS, 0, stream>>>(x, out, rd, pl.g, pl.O, pl.R, pl.chunk, part);
    }
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T, int Op>
static dc_status reduce_finish(const typename red<T, Op>::S *part, red_out out, const red<T, Op> &rd,
                               const red_plan &pl, cudaStream_t stream)
{
    reduce_finish_kernel<T, Op>
        <<<grid_x(ceil_div(pl.O, RED_THREADS / 32)), RED_THREADS, 0, stream>>>(part, pl.nchunk, out, rd, pl.g, pl.O);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* One reduction: pass 1, and with chunks the scratch partials (O * nchunk states) and pass 2. */
template <class T, int Op>
static dc_status reduce_forward(const T *x, red_out out, const red_plan &pl, double p, cudaStream_t stream)
{
    typedef typename red<T, Op>::S S;
    red<T, Op> rd;
    rd.p = p;
    S *part = NULL;
    if (pl.nchunk > 1) DC_TRY(dc_cuda_scratch(sizeof(S) * (size_t)pl.O * (size_t)pl.nchunk, (void **)&part));
    dc_status st = reduce_pass1<T, Op>(x, out, rd, pl, part, stream);
    if (!st && pl.nchunk > 1) st = reduce_finish<T, Op>(part, out, rd, pl, stream);
    if (part) dc_cuda_scratch_free(part); /* stream-ordered: safe right after queueing */
    return st;
}

#define RED_DT_VALUES (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_INT32) | DC_DT_BIT(DC_INT64))
#define RED_DT_FLOATS (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64))

/* --- table entries --------------------------------------------------------------------------------- */

/* DC_OP_SUM / MAX / MIN: t0 = t1 reduced over every dim where t0 (same ndim) has size 1 and t1 does
 * not. t1 float32/float64 -> t0 float32/float64; t1 int32/int64 -> t0 int32/int64 (the op layer
 * widens bool and narrow integers first). Empty reduced dims: SUM gives 0, MAX/MIN an error. */
static dc_status k_reduce(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const bool xf = x->dtype == DC_FLOAT32 || x->dtype == DC_FLOAT64;
    const bool xi = x->dtype == DC_INT32 || x->dtype == DC_INT64;
    if ((xf && o->dtype != DC_FLOAT32 && o->dtype != DC_FLOAT64) ||
        (xi && o->dtype != DC_INT32 && o->dtype != DC_INT64))
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for %s -> %s", name, dc_dtype_name(x->dtype),
                        dc_dtype_name(o->dtype));
    if (o->ndim != x->ndim) return dc_error(DC_ERR_SHAPE, "%s: output has %d dims, input %d", name, o->ndim, x->ndim);
    red_geom g;
    memset(&g, 0, sizeof g);
    int64_t O = 1, R = 1;
    for (int d = 0; d < x->ndim; d++) {
        const int64_t n = x->shape[d];
        if (o->shape[d] == 1 && n != 1) {
            g.rshape[g.rnd] = n;
            g.rin[g.rnd++] = x->strides[d];
            R *= n;
        } else if (o->shape[d] == n) {
            O *= n;
            if (n == 1) continue;
            g.kshape[g.knd] = n;
            g.kin[g.knd] = x->strides[d];
            g.kout[g.knd++] = o->strides[d];
        } else {
            return dc_error(DC_ERR_SHAPE, "%s: output size %lld does not match input size %lld at dim %d", name,
                            (long long)o->shape[d], (long long)n, d);
        }
    }
    if (O == 0) return DC_OK;
    if (R == 0 && a->op != DC_OP_SUM) return dc_error(DC_ERR_VALUE, "%s of an empty dimension has no identity", name);
    DC_TRY(dc_cuda_use_device_of(o->data));
    dims_coalesce(&g.knd, g.kshape, g.kin, g.kout);
    dims_coalesce(&g.rnd, g.rshape, g.rin, NULL);
    if (g.rnd == 0) { /* nothing reduced: a one-element fold per output keeps one code path */
        g.rnd = 1;
        g.rshape[0] = 1;
        g.rin[0] = 0;
    }
    /* R == 0 (SUM only): one empty fold per output writes the identity, 0 */
    const red_plan pl = plan_make(g, O, R);
    const red_out out = { o->data, o->dtype };
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<RED_DT_VALUES>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        const T *xp = (const T *)x->data;
        switch (a->op) {
        case DC_OP_SUM: return reduce_forward<T, R_SUM>(xp, out, pl, 0, stream);
        case DC_OP_MAX: return reduce_forward<T, R_MAX>(xp, out, pl, 0, stream);
        case DC_OP_MIN: return reduce_forward<T, R_MIN>(xp, out, pl, 0, stream);
        default: return dc_error(DC_ERR_INTERNAL, "cuda reduce: op %s is not a reduction", name);
        }
    });
}

/* DC_OP_ARGMAX / ARGMIN: t0 (int64, t1's shape with dim of size 1) = position along p.dim of t1's
 * largest / smallest element; ties -> the first, the first NaN wins outright. t1 float32, float64,
 * int32, int64. */
static dc_status k_argreduce(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->dtype != DC_INT64)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for output dtype %s", name,
                        dc_dtype_name(o->dtype));
    if (x->dtype != DC_FLOAT32 && x->dtype != DC_FLOAT64 && x->dtype != DC_INT32 && x->dtype != DC_INT64)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", name, dc_dtype_name(x->dtype));
    if (x->ndim == 0) { /* one element: its index is 0 */
        DC_TRY(dc_cuda_use_device_of(o->data));
        DC_CUDA_TRY(cudaMemsetAsync(o->data, 0, sizeof(int64_t), dc_cuda_stream()));
        return DC_OK;
    }
    int dim = (int)a->p.dim.dim;
    if (dim < 0) dim += x->ndim;
    if (dim < 0 || dim >= x->ndim || o->ndim != x->ndim)
        return dc_error(DC_ERR_SHAPE, "%s: bad dim %lld for %d-d input", name, (long long)a->p.dim.dim, x->ndim);
    red_geom g;
    memset(&g, 0, sizeof g);
    int64_t O = 1;
    for (int d = 0; d < x->ndim; d++) {
        if (d == dim) continue;
        if (o->shape[d] != x->shape[d])
            return dc_error(DC_ERR_SHAPE, "%s: output size %lld does not match input size %lld at dim %d", name,
                            (long long)o->shape[d], (long long)x->shape[d], d);
        O *= x->shape[d];
        if (x->shape[d] == 1) continue;
        g.kshape[g.knd] = x->shape[d];
        g.kin[g.knd] = x->strides[d];
        g.kout[g.knd++] = o->strides[d];
    }
    const int64_t n = x->shape[dim];
    if (O == 0) return DC_OK;
    if (n == 0) return dc_error(DC_ERR_VALUE, "%s of an empty dimension (dim %d has size 0)", name, dim);
    DC_TRY(dc_cuda_use_device_of(o->data));
    dims_coalesce(&g.knd, g.kshape, g.kin, g.kout);
    g.rnd = 1; /* the reduced index is the position along dim */
    g.rshape[0] = n;
    g.rin[0] = n == 1 ? 0 : x->strides[dim];
    const red_plan pl = plan_make(g, O, n);
    const red_out out = { o->data, DC_INT64 };
    const bool is_max = a->op == DC_OP_ARGMAX;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<RED_DT_VALUES>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        const T *xp = (const T *)x->data;
        return is_max ? reduce_forward<T, R_ARGMAX>(xp, out, pl, 0, stream)
                      : reduce_forward<T, R_ARGMIN>(xp, out, pl, 0, stream);
    });
}

/* DC_OP_NORM_POW: t0 (float64, 0-d) += sum |t1|^p over every element of t1 (float32/float64, any
 * strides); p = inf: t0 = max(t0, max |t1|) with NaN sticking; p = 0: the count of non-zeros. The
 * read-modify-write of t0 is ordered on the stream, so several calls (one per gradient) accumulate
 * into one t0 with no host round trip. */
static dc_status k_norm_pow(const dc_kargs *a)
{
    const char *name = dc_op_names[a->op];
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want 2", name, a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->dtype != DC_FLOAT64 || view_numel(o) != 1)
        return dc_error(DC_ERR_INTERNAL, "cuda %s: accumulator is %s %s, want one float64", name,
                        dc_dtype_name(o->dtype), dc_shape_str(o->ndim, o->shape));
    const double p = a->p.norm.p;
    int op;
    if (p == INFINITY)
        op = R_NORMINF;
    else if (p == 1.0)
        op = R_NORM1;
    else if (p == 2.0)
        op = R_NORM2;
    else if (p == 0.0)
        op = R_NORM0;
    else if (p > 0)
        op = R_NORMP;
    else
        return dc_error(DC_ERR_VALUE, "norm: order %g is not supported (use p > 0, 0 or inf)", p);
    if (x->dtype != DC_FLOAT32 && x->dtype != DC_FLOAT64)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", name, dc_dtype_name(x->dtype));
    const int64_t R = view_numel(x);
    if (R == 0) return DC_OK; /* adds 0 (max with nothing): t0 unchanged */
    DC_TRY(dc_cuda_use_device_of(o->data));
    red_geom g;
    memset(&g, 0, sizeof g);
    for (int d = 0; d < x->ndim; d++) {
        if (x->shape[d] == 1) continue;
        g.rshape[g.rnd] = x->shape[d];
        g.rin[g.rnd++] = x->strides[d];
    }
    dims_coalesce(&g.rnd, g.rshape, g.rin, NULL);
    if (g.rnd == 0) {
        g.rnd = 1;
        g.rshape[0] = 1;
        g.rin[0] = 0;
    }
    const red_plan pl = plan_make(g, 1, R);
    const red_out out = { o->data, DC_FLOAT64 };
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<RED_DT_FLOATS>(x->dtype, name, [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        const T *xp = (const T *)x->data;
        switch (op) {
        case R_NORM1: return reduce_forward<T, R_NORM1>(xp, out, pl, p, stream);
        case R_NORM2: return reduce_forward<T, R_NORM2>(xp, out, pl, p, stream);
        case R_NORMINF: return reduce_forward<T, R_NORMINF>(xp, out, pl, p, stream);
        case R_NORM0: return reduce_forward<T, R_NORM0>(xp, out, pl, p, stream);
        default: return reduce_forward<T, R_NORMP>(xp, out, pl, p, stream);
        }
    });
}

} // namespace

void dc_cuda_register_reduce(dc_kernel_fn *k)
{
    k[DC_OP_SUM] = k_reduce;
    k[DC_OP_MAX] = k_reduce;
    k[DC_OP_MIN] = k_reduce;
    k[DC_OP_ARGMAX] = k_argreduce;
    k[DC_OP_ARGMIN] = k_argreduce;
    k[DC_OP_NORM_POW] = k_norm_pow;
}
