/* index.cu: the indexing kernels: gather, index_select, scatter_add, index_add. The reference is
 * csrc/cpu/linalg.c.
 *
 * Bad indices. The CPU checks every index first and fails with DC_ERR_INDEX; here that would
 * need a device -> host read (a sync) per call. Instead each kernel checks its indices as it goes:
 * an index outside [0, size) is skipped (gather/index_select write 0 for it, so the output is
 * still deterministic; scatter_add/index_add add nothing for it) and recorded in a device-side
 * word. dc_cuda_index_error_check() -- a sync point -- reads and clears that word and turns it
 * into the DC_ERR_INDEX the CPU would have given (naming one offending index, not necessarily
 * the first); the engine calls it where it synchronises anyway.
 *
 * Determinism. scatter_add and index_add (the backward of gather / index_select, i.e. embedding
 * backward) never use float atomics. Each output element's contributions are summed by one
 * thread in source order, starting from the output's value, exactly as the CPU does, so the
 * results match the CPU's bit for bit and repeat run to run:
 *   - few contributions per row (or many rows): one thread per row walks it in order;
 *   - otherwise a stable radix sort (CUB) of (output slot, position) pairs groups equal slots
 *     with their positions still in order; the first element of each run sums the run.
 * index_add on contiguous operands sorts the n indices once and gives each run of equal indices
 * one block, whose threads sum whole source rows (vectorised) into the output row.
 *
 * dtypes: gather/index_select move raw bits (every dtype); scatter_add/index_add float32 and
 * float64 (as the CPU); indices int64. */
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

/* Everything up to the exported functions at the end is file-local (kernels and types too). */
namespace
{

/* --- small helpers ----------------------------------------------------------------------------- */

/* The accumulating ops: what the CPU kernels accept. */
#define DT_SCATTER (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64))

static dc_status need_int64(const dc_kargs *a, const dc_kview *idx)
{
    if (idx->dtype != DC_INT64)
        return dc_error(DC_ERR_DTYPE, "%s: indices must be int64, got %s", dc_op_names[a->op],
                        dc_dtype_name(idx->dtype));
    return DC_OK;
}

static int check_dim(int64_t d, int ndim)
{
    return d >= 0 && d < (ndim > 0 ? ndim : 1);
}

/* --- the bad-index word ------------------------------------------------------------------------ */

/* One per device (a module global lives in each device's context). flag 0 -> 1 once; the winner
 * fills in the rest, which the host reads only after a sync. */
struct index_err {
    int flag, op, dim, pad_;
    long long index, size;
};
__device__ index_err g_index_err;

__device__ __noinline__ void index_bad(int op, int dim, int64_t ix, int64_t size)
{
    if (*(volatile int *)&g_index_err.flag) return; /* already recorded: no atomic storm */
    if (atomicCAS(&g_index_err.flag, 0, 1) == 0) {
        g_index_err.op = op;
        g_index_err.dim = dim;
        g_index_err.index = ix;
        g_index_err.size = size;
    }
}

/* ================================ gather / index_select ====================================== */

/* out[i] = src[i's offset + idx[i] * sd] over out's shape (src seen with stride 0 along dim). */
template <class S, bool OneD>
__global__ void gather_kernel(S *out, const S *src, const int64_t *idx, dc_geom<3> g, int64_t n, int64_t sd,
                              int64_t size, int op, int dim)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[3];
        dc_geom_offsets<3, OneD>(g, i, o);
        int64_t ix = idx[o[2]];
        if (ix < 0 || ix >= size) {
            index_bad(op, dim, ix, size);
            out[o[0]] = S(0);
            continue;
        }
        out[o[0]] = src[o[1] + ix * sd];
    }
}

/* out[..., j, ...] = src[..., idx[..., j, ...], ...] along dim; idx (int64) has out's shape. */
static dc_status gather_launch(dc_op op, const dc_kview *out, const dc_kview *src, const dc_kview *idx, int dim,
                               cudaStream_t stream)
{
    dc_kview s2 = *src; /* src seen with out's shape, fixed at index 0 along dim */
    for (int d = 0; d < out->ndim; d++) s2.shape[d] = out->shape[d];
    if (src->ndim) s2.strides[dim] = 0;
    const dc_kview *v[3] = { out, &s2, idx };
    DC_TRY(check_same_shape(dc_op_names[op], 3, v));
    const int64_t n = view_numel(out);
    if (n == 0) return DC_OK;
    const int64_t size = src->ndim ? src->shape[dim] : 1, sd = src->ndim ? src->strides[dim] : 0;
    dc_geom<3> g = geom_make<3>(v);
    return dc_dispatch_bits(out->dtype, dc_op_names[op], [&](auto tag) {
        typedef decltype(tag) S;
        if (g.ndim == 1)
            gather_kernel<S, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(
                (S *)out->data, (const S *)src->data, (const int64_t *)idx->data, g, n, sd, size, (int)op, dim);
        else
            gather_kernel<S, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(
                (S *)out->data, (const S *)src->data, (const int64_t *)idx->data, g, n, sd, size, (int)op, dim);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    });
}

/* Contiguous index_select (an embedding lookup): out (outer, n, row) <- src (outer, size, row) at
 * rows idx[j]. V is a W-byte unit (16 bytes where rows and pointers allow); threadIdx.x walks a
 * row's upr units, threadIdx.y picks the row. */
template <class V>
__global__ void index_select_rows_kernel(V *out, const V *src, const int64_t *idx, int64_t is, int64_t n, int64_t size,
                                         int64_t rows, int64_t upr, int op, int dim)
{
    for (int64_t t = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; t < rows; t += (int64_t)gridDim.x * blockDim.y) {
        const int64_t j = t % n, ob = t / n, ix = idx[j * is];
        const bool bad = ix < 0 || ix >= size;
        if (bad && threadIdx.x == 0) index_bad(op, dim, ix, size);
        const V *s = src + (ob * size + (bad ? 0 : ix)) * upr;
        V *d = out + t * upr;
        for (int64_t u = threadIdx.x; u < upr; u += blockDim.x) d[u] = bad ? V() : s[u];
    }
}

template <class V>
static dc_status index_select_rows(const dc_kview *o, const dc_kview *x, const dc_kview *idx, int64_t n, int64_t outer,
                                   int64_t upr, int dim, cudaStream_t stream)
{
    const int64_t rows = outer * n, size = x->shape[dim], is = idx->ndim ? idx->strides[0] : 0;
    unsigned bx = 1;
    while (bx < 256 && (int64_t)bx < upr) bx *= 2;
    const unsigned by = 256 / bx;
    int64_t blocks = (rows + by - 1) / by;
    if (blocks > DC_CUDA_MAX_BLOCKS) blocks = DC_CUDA_MAX_BLOCKS;
    index_select_rows_kernel<V><<<(unsigned)blocks, dim3(bx, by), 0, stream>>>((V *)o->data, (const V *)x->data,
                                                                               (const int64_t *)idx->data, is, n, size,
                                                                               rows, upr, (int)DC_OP_INDEX_SELECT, dim);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* DC_OP_GATHER: t0 = t1 along p.dim by t2 (int64, t0's shape); any dtype, any strides. */
static dc_status k_gather(const dc_kargs *a)
{
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda gather: %d operands, want 3", a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    const int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, x->ndim) || o->ndim != x->ndim || idx->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "gather: bad dim %d for %d-d input", dim, x->ndim);
    if (x->dtype != o->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda gather: dtypes %s <- %s", dc_dtype_name(o->dtype),
                        dc_dtype_name(x->dtype));
    DC_TRY(need_int64(a, idx));
    if (view_numel(o) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    return gather_launch(a->op, o, x, idx, dim, dc_cuda_stream());
}

/* DC_OP_INDEX_SELECT: t0 = t1 at indices t2 (1-d int64) along p.dim; any dtype, any strides. */
static dc_status k_index_select(const dc_kargs *a)
{
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda index_select: %d operands, want 3", a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    const int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, x->ndim) || o->ndim != x->ndim)
        return dc_error(DC_ERR_SHAPE, "index_select: bad dim %d for %d-d input", dim, x->ndim);
    if (x->dtype != o->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda index_select: dtypes %s <- %s", dc_dtype_name(o->dtype),
                        dc_dtype_name(x->dtype));
    DC_TRY(need_int64(a, idx));
    const int64_t n = view_numel(idx);
    if (x->ndim && n != o->shape[dim])
        return dc_error(DC_ERR_SHAPE, "index_select: %lld indices for an output of size %lld at dim %d", (long long)n,
                        (long long)o->shape[dim], dim);
    if (view_numel(o) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    cudaStream_t stream = dc_cuda_stream();
    if (x->ndim && dc_view_contiguous(x) && dc_view_contiguous(o)) {
        /* whole rows of `inner` elements per index, in the widest units rows and pointers allow */
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < dim; d++) outer *= x->shape[d];
        for (int d = dim + 1; d < x->ndim; d++) inner *= x->shape[d];
        const int64_t row = inner * (int64_t)dc_dtype_size(x->dtype);
        const uintptr_t align = (uintptr_t)o->data | (uintptr_t)x->data;
        if (row % 16 == 0 && align % 16 == 0)
            return index_select_rows<uint4>(o, x, idx, n, outer, row / 16, dim, stream);
        if (row % 8 == 0 && align % 8 == 0) return index_select_rows<uint2>(o, x, idx, n, outer, row / 8, dim, stream);
        if (row % 4 == 0 && align % 4 == 0)
            return index_select_rows<uint32_t>(o, x, idx, n, outer, row / 4, dim, stream);
        if (row % 2 == 0 && align % 2 == 0)
            return index_select_rows<uint16_t>(o, x, idx, n, outer, row / 2, dim, stream);
        return index_select_rows<uint8_t>(o, x, idx, n, outer, row, dim, stream);
    }
    dc_kview iv = *idx; /* the 1-d index broadcast to out's shape */
    iv.ndim = o->ndim;
    for (int d = 0; d < o->ndim; d++) {
        iv.shape[d] = o->shape[d];
        iv.strides[d] = 0;
    }
    if (o->ndim) iv.strides[dim] = idx->ndim ? idx->strides[0] : 0;
    return gather_launch(a->op, o, x, &iv, dim, stream);
}

/* ================================ the stable sort ============================================ */

/* Scratch for a stable radix sort of n (uint64 key, int64 value) pairs: double buffers and CUB's
 * temp storage, in one allocation. Keys are < 2^end_bit, so only those bits are sorted. */
struct pair_sort {
    dc_scratch_guard mem;
    uint64_t *keys[2];
    int64_t *vals[2];
    void *temp;
    size_t temp_bytes;
    int end_bit;
};

static size_t round256(size_t x)
{
    return (x + 255) & ~(size_t)255;
}

static dc_status pair_sort_init(pair_sort *s, int64_t n, uint64_t max_key, cudaStream_t stream)
{
    s->end_bit = max_key ? 64 - __builtin_clzll(max_key) : 1;
    cub::DoubleBuffer<uint64_t> dk(nullptr, nullptr);
    cub::DoubleBuffer<int64_t> dv(nullptr, nullptr);
    s->temp_bytes = 0;
    DC_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, s->temp_bytes, dk, dv, n, 0, s->end_bit, stream));
    const size_t part = round256((size_t)n * 8);
    DC_TRY(dc_cuda_scratch(4 * part + round256(s->temp_bytes), &s->mem.p));
    char *p = (char *)s->mem.p;
    s->keys[0] = (uint64_t *)p;
    s->keys[1] = (uint64_t *)(p + part);
    s->vals[0] = (int64_t *)(p + 2 * part);
    s->vals[1] = (int64_t *)(p + 3 * part);
    s->temp = p + 4 * part;
    return DC_OK;
}

/* Sorts keys[0]/vals[0] (filled by the caller's kernel); *k, *v: the sorted arrays. */
static dc_status pair_sort_run(pair_sort *s, int64_t n, cudaStream_t stream, const uint64_t **k, const int64_t **v)
{
    cub::DoubleBuffer<uint64_t> dk(s->keys[0], s->keys[1]);
    cub::DoubleBuffer<int64_t> dv(s->vals[0], s->vals[1]);
    size_t tb = s->temp_bytes;
    DC_CUDA_TRY(cub::DeviceRadixSort::SortPairs(s->temp, tb, dk, dv, n, 0, s->end_bit, stream));
    *k = dk.Current(); /* the selector is host-side: no sync */
    *v = dv.Current();
    return DC_OK;
}

/* ================================ scatter_add ================================================ */

/* The walk of scatter_add: idx's shape; strides of idx, src, out; `dim` is the scattered dim.
 * Rows are every coordinate but dim, row-major. */
struct scat_geom {
    int nd, dim;
    int64_t shape[DC_MAX_DIMS];
    int64_t st[3][DC_MAX_DIMS]; /* idx, src, out */
};

__device__ __forceinline__ void scat_row_offsets(const scat_geom &g, int64_t r, int64_t off[3])
{
    off[0] = off[1] = off[2] = 0;
    for (int d = g.nd - 1; d >= 0; d--) {
        if (d == g.dim) continue;
        int64_t i = r % g.shape[d];
        r /= g.shape[d];
        off[0] += i * g.st[0][d];
        off[1] += i * g.st[1][d];
        off[2] += i * g.st[2][d];
    }
}

/* One thread per row: out[row, idx[row, j]] += src[row, j] for j in order (the CPU's loop). */
template <class T>
__global__ void scatter_rows_kernel(T *out, const T *src, const int64_t *idx, scat_geom g, int64_t rows, int64_t L,
                                    int64_t size, int op)
{
    const int64_t is = g.st[0][g.dim], xs = g.st[1][g.dim], od = g.st[2][g.dim];
    DC_GRID_STRIDE_LOOP(r, rows)
    {
        int64_t off[3];
        scat_row_offsets(g, r, off);
        for (int64_t j = 0; j < L; j++) {
            const int64_t ix = idx[off[0] + j * is];
            if (ix < 0 || ix >= size) {
                index_bad(op, g.dim, ix, size);
                continue;
            }
            T *p = out + off[2] + ix * od;
            *p = dc_store<T>(dc_load(*p) + dc_load(src[off[1] + j * xs]));
        }
    }
}

/* Sort keys: position p = row * L + j gets key row * size + idx (sentinel rows * size when out of
 * range) and value src offset; sorting stably keeps each slot's contributions in j order. */
__global__ void scatter_keys_kernel(uint64_t *keys, int64_t *vals, const int64_t *idx, scat_geom g, int64_t numel,
                                    int64_t L, int64_t size, uint64_t sentinel, int op)
{
    const int64_t is = g.st[0][g.dim], xs = g.st[1][g.dim];
    DC_GRID_STRIDE_LOOP(p, numel)
    {
        const int64_t r = p / L, j = p % L;
        int64_t off[3];
        scat_row_offsets(g, r, off);
        const int64_t ix = idx[off[0] + j * is];
        if (ix < 0 || ix >= size) {
            index_bad(op, g.dim, ix, size);
            keys[p] = sentinel;
        } else {
            keys[p] = (uint64_t)r * (uint64_t)size + (uint64_t)ix;
        }
        vals[p] = off[1] + j * xs;
    }
}

/* The first element of each run of equal keys sums the run into its output slot, in order. */
template <class T>
__global__ void scatter_runs_kernel(T *out, const T *src, const uint64_t *keys, const int64_t *vals, scat_geom g,
                                    int64_t numel, int64_t size, uint64_t sentinel)
{
    DC_GRID_STRIDE_LOOP(i, numel)
    {
        const uint64_t k = keys[i];
        if (k == sentinel || (i > 0 && keys[i - 1] == k)) continue;
        int64_t off[3];
        scat_row_offsets(g, (int64_t)(k / (uint64_t)size), off);
        T *p = out + off[2] + (int64_t)(k % (uint64_t)size) * g.st[2][g.dim];
        typename dc_acc<T>::type acc = dc_load(*p);
        for (int64_t q = i; q < numel && keys[q] == k; q++) acc = acc + dc_load(src[vals[q]]);
        *p = dc_store<T>(acc);
    }
}

/* Rows with at most this many entries, or at least SCATTER_ROWS_MIN rows: one thread per row;
 * else the sort (a thread per row would be a long serial chain on few threads). */
#define SCATTER_SHORT_ROW 16
#define SCATTER_ROWS_MIN  8192

/* out[..., idx[..., j, ...], ...] += src[..., j, ...] along dim, over idx's shape; dtype checked. */
static dc_status scatter_launch(dc_op op, const dc_kview *o, const dc_kview *x, const dc_kview *idx, int dim,
                                cudaStream_t stream)
{
    const int64_t numel = view_numel(idx);
    if (numel == 0) return DC_OK;
    scat_geom g;
    memset(&g, 0, sizeof g);
    if (idx->ndim == 0) { /* one element, no dim to walk */
        g.nd = 1;
        g.dim = 0;
        g.shape[0] = 1;
    } else {
        g.nd = idx->ndim;
        g.dim = dim;
        for (int d = 0; d < idx->ndim; d++) {
            g.shape[d] = idx->shape[d];
            g.st[0][d] = idx->strides[d];
            g.st[1][d] = x->strides[d];
            g.st[2][d] = o->strides[d];
        }
    }
    const int64_t L = g.shape[g.dim], rows = numel / L, size = o->ndim ? o->shape[dim] : 1;
    const bool fits = size == 0 || rows <= (INT64_MAX - 1) / size; /* keys up to rows * size */
    const bool by_rows = L <= SCATTER_SHORT_ROW || rows >= SCATTER_ROWS_MIN || !fits;
    return dc_dispatch<DT_SCATTER>(o->dtype, dc_op_names[op], [&](auto tag) -> dc_status {
        typedef decltype(tag) T;
        T *out = (T *)o->data;
        const T *src = (const T *)x->data;
        if (by_rows) {
            scatter_rows_kernel<T><<<dc_cuda_blocks(rows), DC_CUDA_THREADS, 0, stream>>>(
                out, src, (const int64_t *)idx->data, g, rows, L, size, (int)op);
            DC_CUDA_CHECK_LAUNCH();
            return DC_OK;
        }
        const uint64_t sentinel = (uint64_t)rows * (uint64_t)size;
        pair_sort s;
        DC_TRY(pair_sort_init(&s, numel, sentinel, stream));
        scatter_keys_kernel<<<dc_cuda_blocks(numel), DC_CUDA_THREADS, 0, stream>>>(
            s.keys[0], s.vals[0], (const int64_t *)idx->data, g, numel, L, size, sentinel, (int)op);
        DC_CUDA_CHECK_LAUNCH();
        const uint64_t *keys;
        const int64_t *vals;
        DC_TRY(pair_sort_run(&s, numel, stream, &keys, &vals));
        scatter_runs_kernel<T>
            <<<dc_cuda_blocks(numel), DC_CUDA_THREADS, 0, stream>>>(out, src, keys, vals, g, numel, size, sentinel);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK; /* s's scratch is freed here, after the work that uses it is queued */
    });
}

/* DC_OP_SCATTER_ADD: t0 (zeroed by the op layer) += t1 by t2 (int64, t1's extent) along p.dim. */
static dc_status k_scatter_add(const dc_kargs *a)
{
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda scatter_add: %d operands, want 3", a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    const int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, o->ndim) || x->ndim != o->ndim || idx->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "scatter_add: bad dim %d for %d-d output", dim, o->ndim);
    if (x->dtype != o->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda scatter_add: dtypes %s += %s", dc_dtype_name(o->dtype),
                        dc_dtype_name(x->dtype));
    DC_TRY(need_int64(a, idx));
    if (view_numel(idx) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    return scatter_launch(a->op, o, x, idx, dim, dc_cuda_stream());
}

/* ================================ index_add ================================================== */

/* Keys of the contiguous index_add: idx[j] (size when out of range), value j. */
__global__ void index_add_keys_kernel(uint64_t *keys, int64_t *vals, const int64_t *idx, int64_t is, int64_t n,
                                      int64_t size, int dim)
{
    DC_GRID_STRIDE_LOOP(j, n)
    {
        const int64_t ix = idx[j * is];
        const bool bad = ix < 0 || ix >= size;
        if (bad) index_bad((int)DC_OP_INDEX_ADD, dim, ix, size);
        keys[j] = bad ? (uint64_t)size : (uint64_t)ix;
        vals[j] = j;
    }
}

template <class T, int N> struct alignas(sizeof(T) * N) vpack {
    T v[N];
};

/* out (outer, size, inner) += src (outer, n, inner) rows at sorted indices: the block of a run's
 * first element adds the run's source rows, in position order, to output row keys[i]; its threads
 * take VEC-wide column groups of all `outer` slices. */
template <class T, int VEC>
__global__ void index_add_runs_kernel(T *out, const T *src, const uint64_t *keys, const int64_t *pos, int64_t n,
                                      int64_t size, int64_t outer, int64_t inner)
{
    typedef typename dc_acc<T>::type A;
    typedef vpack<T, VEC> P;
    const int64_t vin = inner / VEC, cols = outer * vin;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const uint64_t k = keys[i];
        if (k >= (uint64_t)size || (i > 0 && keys[i - 1] == k)) continue; /* block-uniform */
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const int64_t ob = c / vin, cc = (c - ob * vin) * VEC;
            P *dp = (P *)(out + (ob * size + (int64_t)k) * inner + cc);
            P d = *dp;
            A acc[VEC];
#pragma unroll
            for (int e = 0; e < VEC; e++) acc[e] = dc_load(d.v[e]);
            for (int64_t q = i; q < n && keys[q] == k; q++) {
                const P s = *(const P *)(src + (ob * n + pos[q]) * inner + cc);
#pragma unroll
                for (int e = 0; e < VEC; e++) acc[e] = acc[e] + dc_load(s.v[e]);
            }
#pragma unroll
            for (int e = 0; e < VEC; e++) d.v[e] = dc_store<T>(acc[e]);
            *dp = d;
        }
    }
}

template <class T, int VEC>
static dc_status index_add_runs(T *out, const T *src, const uint64_t *keys, const int64_t *pos, int64_t n, int64_t size,
                                int64_t outer, int64_t inner, cudaStream_t stream)
{
    const int64_t cols = outer * (inner / VEC);
    unsigned threads = 32;
    while (threads < 256 && (int64_t)threads < cols) threads *= 2;
    const int64_t blocks = n < 4 * DC_CUDA_MAX_BLOCKS ? n : 4 * DC_CUDA_MAX_BLOCKS;
    index_add_runs_kernel<T, VEC><<<(unsigned)blocks, threads, 0, stream>>>(out, src, keys, pos, n, size, outer, inner);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* DC_OP_INDEX_ADD: t0 += t1 rows (along p.dim) at t2 (1-d int64): t0[..., t2[j], ...] += t1[..., j, ...]. */
static dc_status k_index_add(const dc_kargs *a)
{
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda index_add: %d operands, want 3", a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    const int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, o->ndim) || x->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "index_add: bad dim %d for %d-d output", dim, o->ndim);
    const int64_t n = view_numel(idx);
    if (o->ndim && n != x->shape[dim])
        return dc_error(DC_ERR_SHAPE, "index_add: %lld indices for a source of size %lld at dim %d", (long long)n,
                        (long long)x->shape[dim], dim);
    if (x->dtype != o->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda index_add: dtypes %s += %s", dc_dtype_name(o->dtype),
                        dc_dtype_name(x->dtype));
    DC_TRY(need_int64(a, idx));
    if (n == 0 || view_numel(x) == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    cudaStream_t stream = dc_cuda_stream();
    if (o->ndim && dc_view_contiguous(o) && dc_view_contiguous(x) && n > SCATTER_SHORT_ROW) {
        /* embedding backward: sort the n indices once, one block per run of equal indices */
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < dim; d++) outer *= o->shape[d];
        for (int d = dim + 1; d < o->ndim; d++) inner *= o->shape[d];
        const int64_t size = o->shape[dim], is = idx->ndim ? idx->strides[0] : 0;
        return dc_dispatch<DT_SCATTER>(o->dtype, "index_add", [&](auto tag) -> dc_status {
            typedef decltype(tag) T;
            pair_sort s;
            DC_TRY(pair_sort_init(&s, n, (uint64_t)size, stream));
            index_add_keys_kernel<<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(
                s.keys[0], s.vals[0], (const int64_t *)idx->data, is, n, size, dim);
            DC_CUDA_CHECK_LAUNCH();
            const uint64_t *keys;
            const int64_t *pos;
            DC_TRY(pair_sort_run(&s, n, stream, &keys, &pos));
            T *out = (T *)o->data;
            const T *src = (const T *)x->data;
            constexpr int VEC = 16 / sizeof(T); /* 16-byte accesses where rows and pointers allow */
            if (inner % VEC == 0 && ((uintptr_t)out | (uintptr_t)src) % 16 == 0)
                return index_add_runs<T, VEC>(out, src, keys, pos, n, size, outer, inner, stream);
            return index_add_runs<T, 1>(out, src, keys, pos, n, size, outer, inner, stream);
        });
    }
    dc_kview iv = *idx; /* the 1-d index broadcast to the source's shape */
    iv.ndim = x->ndim;
    for (int d = 0; d < x->ndim; d++) {
        iv.shape[d] = x->shape[d];
        iv.strides[d] = 0;
    }
    if (x->ndim) iv.strides[dim] = idx->ndim ? idx->strides[0] : 0;
    return scatter_launch(a->op, o, x, &iv, dim, stream);
}

} // namespace

/* --- exported ------------------------------------------------------------------------------------ */

/* Sync point (waits for all work on the current device). DC_OK when no indexing kernel met an
 * out-of-range index since the last call; otherwise DC_ERR_INDEX naming one such index (its
 * kernel skipped it, see the file comment), and the word is cleared. A fault of any earlier
 * kernel comes back as DC_ERR_CUDA. No GPU or no driver: DC_OK. */
extern "C" dc_status dc_cuda_index_error_check(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        (void)cudaGetLastError();
        return DC_OK;
    }
    cudaStream_t stream = dc_cuda_stream();
    DC_CUDA_TRY(cudaDeviceSynchronize()); /* every stream's indexing kernels are done */
    index_err e;
    DC_CUDA_TRY(cudaMemcpyFromSymbolAsync(&e, g_index_err, sizeof e, 0, cudaMemcpyDeviceToHost, stream));
    DC_CUDA_TRY(cudaStreamSynchronize(stream));
    if (!e.flag) return DC_OK;
    index_err z;
    memset(&z, 0, sizeof z);
    DC_CUDA_TRY(cudaMemcpyToSymbolAsync(g_index_err, &z, sizeof z, 0, cudaMemcpyHostToDevice, stream));
    DC_CUDA_TRY(cudaStreamSynchronize(stream)); /* cleared before anything queued after us runs */
    const char *op = (unsigned)e.op < DC_OP_COUNT ? dc_op_names[e.op] : "indexing op";
    return dc_error(DC_ERR_INDEX, "%s: index %lld is out of bounds for dimension %d with size %lld", op, e.index, e.dim,
                    e.size);
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_index(dc_kernel_fn *k)
{
    k[DC_OP_GATHER] = k_gather;
    k[DC_OP_SCATTER_ADD] = k_scatter_add;
    k[DC_OP_INDEX_SELECT] = k_index_select;
    k[DC_OP_INDEX_ADD] = k_index_add;
}
