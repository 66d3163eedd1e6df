/* linalg.c: matmul (through OpenBLAS), the indexing kernels (gather, scatter_add, index_select,
 * index_add) and tril/triu.
 *
 * Indexing kernels check every index before touching memory, so a bad index is a clean
 * DC_ERR_INDEX naming the first offender (negative indices are out of bounds here: the op layer
 * wraps Python-style negatives before it calls us). The accumulating kernels are parallel only over
 * coordinates no two indices can share, so duplicate indices sum correctly without atomics. */
#include <cblas.h>
#include <stdlib.h>

#include "cpu.h"

/* ================================ matmul ===================================================== */

/* How BLAS can read an (r, c) matrix with element strides (sr, sc): row-major with ld = sr, or
 * transposed with ld = sc. Size-1 dims make their stride irrelevant. 0: neither (copy it). */
static int mat_layout(int64_t r, int64_t c, int64_t sr, int64_t sc, CBLAS_TRANSPOSE *t, int64_t *ld)
{
    int64_t min_n = c > 1 ? c : 1, min_t = r > 1 ? r : 1;
    if ((sc == 1 || c == 1) && (r == 1 || sr >= min_n)) {
        *t = CblasNoTrans;
        *ld = r == 1 ? min_n : sr;
        return 1;
    }
    if ((sr == 1 || r == 1) && (c == 1 || sc >= min_t)) {
        *t = CblasTrans;
        *ld = c == 1 ? min_t : sc;
        return 1;
    }
    return 0;
}

/* A contiguous copy of an operand BLAS cannot read in place (batch strides stay whatever the copy
 * gives; a broadcast batch is materialised). The copy costs a pass over the operand; the op layer
 * avoids it where it can. */
static dc_status contiguous_operand(const dc_kview *v, void **buf, dc_kview *out)
{
    dc_kview dst = *v;
    int64_t n = cpu_numel(v), cs = 1;
    for (int d = v->ndim - 1; d >= 0; cs *= v->shape[d], d--) dst.strides[d] = cs;
    DC_TRY(dc_cpu_alloc((dc_device){ DC_CPU, 0 }, (size_t)n * cpu_esize(v), buf));
    dst.data = *buf;
    dc_kargs c = { .op = DC_OP_COPY, .nt = 2 };
    c.t[0] = dst;
    c.t[1] = *v;
    DC_TRY(dc_cpu_copy(&c));
    *out = dst;
    return DC_OK;
}

/* Element offset of batch matrix b (row-major over the nb leading dims) in view v. */
static inline int64_t batch_offset(const dc_kview *v, int nb, int64_t b)
{
    int64_t off = 0;
    for (int d = nb - 1; d >= 0; d--) {
        int64_t n = v->shape[d];
        off += (b % n) * v->strides[d];
        b /= n;
    }
    return off;
}

static void gemm1c(dc_dtype dt, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, const char *A,
                   int64_t lda, const char *B, int64_t ldb, char *C, int64_t ldc)
{
    if (dt == DC_FLOAT32)
        cblas_sgemm(CblasRowMajor, ta, tb, (blasint)M, (blasint)N, (blasint)K, 1.0f, (const float *)A, (blasint)lda,
                    (const float *)B, (blasint)ldb, 0.0f, (float *)C, (blasint)ldc);
    else
        cblas_dgemm(CblasRowMajor, ta, tb, (blasint)M, (blasint)N, (blasint)K, 1.0, (const double *)A, (blasint)lda,
                    (const double *)B, (blasint)ldb, 0.0, (double *)C, (blasint)ldc);
}

static inline void gemm1(dc_dtype dt, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                         const char *A, int64_t lda, const char *B, int64_t ldb, char *C)
{
    gemm1c(dt, ta, tb, M, N, K, A, lda, B, ldb, C, N);
}

static int gemm_threads(double total_macs, int64_t Bn, int64_t M, int64_t N)
{
    int nt = cpu_max_threads();
    double by_work = total_macs / GEMM_GRAIN;
    if (by_work < (double)nt) nt = by_work < 1.0 ? 1 : (int)by_work;
    /* a split needs that many batches, or rows/columns to cut (16 per block at least) */
    int64_t pieces = Bn > 1 ? Bn : (M > N ? M : N) / 16;
    if (pieces < nt) nt = pieces < 1 ? 1 : (int)pieces;
    return nt;
}

/* t0 (batch..., M, N) contiguous = t1 (batch..., M, K) @ t2 (batch..., K, N). Batch dims (any
 * number, any strides, 0 for broadcast) are walked here, so attention's (B, H, T, D) views of a
 * fused qkv projection need no copy. */
/* A view of v's shape in a new contiguous buffer of dtype dt (converted by the copy kernel). */
static dc_status converted_operand(const dc_kview *v, dc_dtype dt, void **buf, dc_kview *out)
{
    dc_kview dst = *v;
    dst.dtype = dt;
    int64_t n = cpu_numel(v), cs = 1;
    for (int d = v->ndim - 1; d >= 0; cs *= v->shape[d], d--) dst.strides[d] = cs;
    DC_TRY(dc_cpu_alloc((dc_device){ DC_CPU, 0 }, (size_t)(n ? n : 1) * dc_dtype_size(dt), buf));
    dst.data = *buf;
    dc_kargs c = { .op = DC_OP_COPY, .nt = 2 };
    c.t[0] = dst;
    c.t[1] = *v;
    DC_TRY(dc_cpu_copy(&c));
    *out = dst;
    return DC_OK;
}

/* bfloat16 / float16 (autocast's matmuls): operands widened to float32, one float32 GEMM, the result
 * rounded once to the 16-bit dtype -- what cuBLASLt's 16-bit GEMM with float accumulation gives, up
 * to the summation order. */
static dc_status matmul_16bit(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    if (a->t[1].dtype != o->dtype) return cpu_bad_dtype(a->op, a->t[1].dtype);
    if (a->t[2].dtype != o->dtype) return cpu_bad_dtype(a->op, a->t[2].dtype);
    void *ba = NULL, *bb = NULL, *bo = NULL;
    dc_kargs f = *a;
    dc_status st = converted_operand(&a->t[1], DC_FLOAT32, &ba, &f.t[1]);
    if (!st) st = converted_operand(&a->t[2], DC_FLOAT32, &bb, &f.t[2]);
    if (!st) {
        int64_t n = cpu_numel(o);
        st = dc_cpu_alloc((dc_device){ DC_CPU, 0 }, (size_t)(n ? n : 1) * sizeof(float), &bo);
        f.t[0] = *o;
        f.t[0].dtype = DC_FLOAT32;
        f.t[0].data = bo;
    }
    if (!st) st = dc_cpu_matmul(&f);
    if (!st) {
        dc_kargs c = { .op = DC_OP_COPY, .nt = 2 };
        c.t[0] = *o;
        c.t[1] = f.t[0];
        st = dc_cpu_copy(&c);
    }
    dc_cpu_free((dc_device){ DC_CPU, 0 }, ba);
    dc_cpu_free((dc_device){ DC_CPU, 0 }, bb);
    dc_cpu_free((dc_device){ DC_CPU, 0 }, bo);
    return st;
}

dc_status dc_cpu_matmul(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    dc_kview A = a->t[1], Bm = a->t[2];
    const dc_dtype dt = o->dtype;
    if (dt == DC_BFLOAT16 || dt == DC_FLOAT16) return matmul_16bit(a);
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    if (A.dtype != dt) return cpu_bad_dtype(a->op, A.dtype);
    if (Bm.dtype != dt) return cpu_bad_dtype(a->op, Bm.dtype);
    const int nd = o->ndim, nb = nd - 2;
    if (nd < 2 || A.ndim != nd || Bm.ndim != nd)
        return dc_error(DC_ERR_SHAPE,
                        "matmul kernel wants operands with the same number (>= 2) of dims, got %d, %d "
                        "and %d",
                        o->ndim, A.ndim, Bm.ndim);
    const int64_t M = o->shape[nd - 2], N = o->shape[nd - 1], K = A.shape[nd - 1];
    int64_t Bn = 1;
    for (int d = 0; d < nb; d++) {
        if (A.shape[d] != o->shape[d] || Bm.shape[d] != o->shape[d])
            return dc_error(DC_ERR_SHAPE, "matmul kernel: batch dim %d differs (%lld, %lld, %lld)", d,
                            (long long)o->shape[d], (long long)A.shape[d], (long long)Bm.shape[d]);
        Bn *= o->shape[d];
    }
    if (A.shape[nd - 2] != M || Bm.shape[nd - 2] != K || Bm.shape[nd - 1] != N)
        return dc_error(DC_ERR_SHAPE, "matmul: (%lld, %lld) @ (%lld, %lld) does not give (%lld, %lld)",
                        (long long)A.shape[nd - 2], (long long)K, (long long)Bm.shape[nd - 2],
                        (long long)Bm.shape[nd - 1], (long long)M, (long long)N);
    if (Bn == 0 || M == 0 || N == 0) return DC_OK;
    if (K == 0) {
        dc_kargs f = { .op = DC_OP_FILL, .nt = 1 };
        f.t[0] = *o;
        return dc_cpu_fill(&f);
    }
    CBLAS_TRANSPOSE ta = CblasNoTrans, tb = CblasNoTrans;
    int64_t lda = 1, ldb = 1;
    void *bufa = NULL, *bufb = NULL;
    dc_status st = DC_OK;
    const double macs = (double)M * (double)N * (double)K;
    const int nt = gemm_threads(macs * (double)Bn, Bn, M, N);
    /* Small matrices read with a leading dimension far wider than their rows (heads sliced out of a
     * fused qkv projection) run ~4x slower in OpenBLAS's small-matrix kernels than packed ones
     * (cache-set conflicts), so such operands are packed once, in one pass. */
    if (macs < GEMM_SMALL && Bn > 1) {
        if (mat_layout(M, K, A.strides[nd - 2], A.strides[nd - 1], &ta, &lda) && lda > 2 * (ta == CblasNoTrans ? K : M))
            if ((st = contiguous_operand(&A, &bufa, &A)) != DC_OK) goto done;
        if (mat_layout(K, N, Bm.strides[nd - 2], Bm.strides[nd - 1], &tb, &ldb) &&
            ldb > 2 * (tb == CblasNoTrans ? N : K))
            if ((st = contiguous_operand(&Bm, &bufb, &Bm)) != DC_OK) goto done;
    }
    if (!mat_layout(M, K, A.strides[nd - 2], A.strides[nd - 1], &ta, &lda)) {
        if ((st = contiguous_operand(&A, &bufa, &A)) != DC_OK) goto done;
        mat_layout(M, K, A.strides[nd - 2], A.strides[nd - 1], &ta, &lda);
    }
    if (!mat_layout(K, N, Bm.strides[nd - 2], Bm.strides[nd - 1], &tb, &ldb)) {
        if ((st = contiguous_operand(&Bm, &bufb, &Bm)) != DC_OK) goto done;
        mat_layout(K, N, Bm.strides[nd - 2], Bm.strides[nd - 1], &tb, &ldb);
    }
    const size_t es = cpu_esize(o);
    /* Threads: a GEMM runs either on this thread alone or inside our own OpenMP team, and every BLAS
     * call is single-threaded (OpenBLAS's OpenMP build runs serially inside a parallel region; for
     * the serial case see cpu_blas_serial_begin). Letting OpenBLAS thread its own calls made each
     * hand-over between its team and our kernels' cost milliseconds of spinning on small machines
     * (a 0.3 ms GEMM followed by a 0.2 ms GELU took 3.2 ms). Many matrices (attention heads) get
     * whole matrices per thread; a few large ones are split into row (or column) blocks. */
    if (nt == 1) {
        const int saved = cpu_blas_serial_begin();
        for (int64_t b = 0; b < Bn; b++)
            gemm1(dt, ta, tb, M, N, K, A.data + batch_offset(&A, nb, b) * (int64_t)es, lda,
                  Bm.data + batch_offset(&Bm, nb, b) * (int64_t)es, ldb, o->data + b * M * N * (int64_t)es);
        cpu_blas_serial_end(saved);
    } else if (Bn >= nt || macs < GEMM_SMALL) {
        /* Dynamic: a thread whose core is shared with another process (or with NumPy's spinning BLAS
         * threads) takes fewer matrices instead of holding the whole team up; one atomic per
         * matrix is nothing next to its GEMM. */
#pragma omp parallel for schedule(dynamic) num_threads(nt)
        for (int64_t b = 0; b < Bn; b++)
            gemm1(dt, ta, tb, M, N, K, A.data + batch_offset(&A, nb, b) * (int64_t)es, lda,
                  Bm.data + batch_offset(&Bm, nb, b) * (int64_t)es, ldb, o->data + b * M * N * (int64_t)es);
    } else {
        const int by_rows = M >= N;
        const int64_t len = by_rows ? M : N, blk = ((len + nt - 1) / nt + 15) / 16 * 16;
        for (int64_t b = 0; b < Bn; b++) {
            const char *pa = A.data + batch_offset(&A, nb, b) * (int64_t)es;
            const char *pb = Bm.data + batch_offset(&Bm, nb, b) * (int64_t)es;
            char *pc = o->data + b * M * N * (int64_t)es;
#pragma omp parallel for schedule(static) num_threads(nt)
            for (int64_t lo = 0; lo < len; lo += blk) {
                int64_t n = len - lo < blk ? len - lo : blk;
                if (by_rows) /* rows lo.. of A and C */
                    gemm1(dt, ta, tb, n, N, K, pa + (ta == CblasNoTrans ? lo * lda : lo) * (int64_t)es, lda, pb, ldb,
                          pc + lo * N * (int64_t)es);
                else /* columns lo.. of B and C */
                    gemm1c(dt, ta, tb, M, n, K, pa, lda, pb + (tb == CblasNoTrans ? lo : lo * ldb) * (int64_t)es, ldb,
                           pc + lo * (int64_t)es, N);
            }
        }
    }
done:
    dc_cpu_free((dc_device){ DC_CPU, 0 }, bufa);
    dc_cpu_free((dc_device){ DC_CPU, 0 }, bufb);
    return st;
}

/* ================================ index checks =============================================== */

typedef struct {
    int64_t size, bad;
    int found;
} idx_check;

static void check_inner(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    idx_check *c = (idx_check *)vctx; /* serial run: the only writer */
    if (c->found) return;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = *(const int64_t *)(p[0] + i * s[0]);
        if (v < 0 || v >= c->size) {
            c->found = 1;
            c->bad = v;
            return;
        }
    }
}

/* Every index in `idx` (int64, any strides) must lie in [0, size). Serial and in row-major order,
 * so the message names the first bad index. */
static dc_status check_indices(dc_op op, const dc_kview *idx, int64_t size, int dim)
{
    if (idx->dtype != DC_INT64)
        return dc_error(DC_ERR_DTYPE, "%s: indices must be int64, got %s", dc_op_names[op], dc_dtype_name(idx->dtype));
    idx_check c = { size, 0, 0 };
    const dc_kview *v[1] = { idx };
    cpu_iter it;
    cpu_iter_init(&it, 1, v, 0);
    cpu_iter_range(&it, 0, it.numel, check_inner, &c);
    if (c.found)
        return dc_error(DC_ERR_INDEX, "index %lld is out of bounds for dimension %d with size %lld", (long long)c.bad,
                        dim, (long long)size);
    return DC_OK;
}

static int check_dim(int64_t d, int ndim)
{
    return d >= 0 && d < (ndim > 0 ? ndim : 1);
}

/* ================================ gather / index_select ====================================== */

typedef struct {
    int64_t sd; /* byte stride of the source along the indexed dim */
    size_t es;
} gather_ctx;

#define GATHER_LOOP(T)                                                        \
    for (int64_t i = 0; i < n; i++) {                                         \
        int64_t ix = *(const int64_t *)(p[2] + i * s[2]);                     \
        *(T *)(p[0] + i * s[0]) = *(const T *)(p[1] + i * s[1] + ix * c->sd); \
    }

static void gather_inner(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    const gather_ctx *c = vctx;
    switch (c->es) {
    case 1: GATHER_LOOP(uint8_t); break;
    case 2: GATHER_LOOP(uint16_t); break;
    case 4: GATHER_LOOP(uint32_t); break;
    default: GATHER_LOOP(uint64_t); break;
    }
}

/* out[..., j, ...] = src[..., idx[..., j, ...], ...] along `dim`; idx already has out's geometry. */
static dc_status gather_impl(const dc_kargs *a, const dc_kview *out, const dc_kview *src, const dc_kview *idx, int dim)
{
    if (src->dtype != out->dtype) return cpu_bad_dtype(a->op, src->dtype);
    if ((unsigned)out->dtype >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, out->dtype);
    const int64_t size = src->ndim ? src->shape[dim] : 1;
    DC_TRY(check_indices(a->op, idx, size, dim));
    dc_kview s2 = *src; /* src seen with out's shape, fixed at index 0 along dim */
    for (int d = 0; d < out->ndim; d++) s2.shape[d] = out->shape[d];
    if (src->ndim) s2.strides[dim] = 0;
    gather_ctx c = { src->ndim ? src->strides[dim] * (int64_t)cpu_esize(src) : 0, cpu_esize(src) };
    const dc_kview *v[3] = { out, &s2, idx };
    cpu_iter it;
    cpu_iter_init(&it, 3, v, 1);
    cpu_iter_run(&it, gather_inner, &c, DC_CPU_PAR_MIN);
    return DC_OK;
}

dc_status dc_cpu_gather(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, x->ndim) || o->ndim != x->ndim || idx->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "gather: bad dim %d for %d-d input", dim, x->ndim);
    return gather_impl(a, o, x, idx, dim);
}

dc_status dc_cpu_index_select(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, x->ndim) || o->ndim != x->ndim)
        return dc_error(DC_ERR_SHAPE, "index_select: bad dim %d for %d-d input", dim, x->ndim);
    int64_t n = cpu_numel(idx);
    if (x->ndim && n != o->shape[dim])
        return dc_error(DC_ERR_SHAPE, "index_select: %lld indices for an output of size %lld at dim %d", (long long)n,
                        (long long)o->shape[dim], dim);
    if (x->ndim && cpu_is_contig(x) && cpu_is_contig(o) && x->dtype == o->dtype) {
        /* contiguous: (outer, size, inner) views, one memcpy of `inner` elements per index (an
         * embedding lookup copies whole rows instead of gathering element by element) */
        DC_TRY(check_indices(a->op, idx, x->shape[dim], dim));
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < dim; d++) outer *= x->shape[d];
        for (int d = dim + 1; d < x->ndim; d++) inner *= x->shape[d];
        const int64_t V = x->shape[dim], is = idx->ndim ? idx->strides[0] : 0;
        const size_t es = cpu_esize(x), row = (size_t)inner * es;
        const int64_t *ix = (const int64_t *)idx->data;
        const char *src = x->data;
        char *dst = o->data;
#pragma omp parallel for schedule(static) if (outer * n * inner >= DC_CPU_PAR_MIN && outer * n > 1)
        for (int64_t t = 0; t < outer * n; t++) {
            int64_t ob = t / n, j = t % n;
            memcpy(dst + (size_t)t * row, src + ((size_t)ob * (size_t)V + (size_t)ix[j * is]) * row, row);
        }
        return DC_OK;
    }
    dc_kview iv = *idx; /* the 1-d index broadcast to out's shape */
    iv.ndim = o->ndim;
    for (int d = 0; d < o->ndim; d++) {
        iv.shape[d] = o->shape[d];
        iv.strides[d] = 0;
    }
    if (o->ndim) iv.strides[dim] = idx->ndim ? idx->strides[0] : 0;
    return gather_impl(a, o, x, &iv, dim);
}

/* ================================ scatter_add / index_add ==================================== */

#define SCATTER_ROW(T)                                                       \
    do {                                                                     \
        T *dst = (T *)(o->data) + off[2];                                    \
        const T *src = (const T *)(x->data) + off[1];                        \
        const int64_t *ix = (const int64_t *)(idx->data) + off[0];           \
        for (int64_t j = 0; j < L; j++) dst[ix[j * is] * od] += src[j * xs]; \
    } while (0)

/* out[..., idx[..., j, ...], ...] += src[..., j, ...]. Rows (every coordinate but `dim`) are
 * independent: two rows never write the same output element, so rows go in parallel and each
 * row's duplicates are summed by one thread in order. */
static dc_status scatter_impl(const dc_kargs *a, const dc_kview *o, const dc_kview *x, const dc_kview *idx, int dim)
{
    const dc_dtype dt = o->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    if (x->dtype != dt) return cpu_bad_dtype(a->op, x->dtype);
    DC_TRY(check_indices(a->op, idx, o->ndim ? o->shape[dim] : 1, dim));
    const int64_t numel = cpu_numel(idx);
    if (numel == 0) return DC_OK;
    const int64_t L = idx->ndim ? idx->shape[dim] : 1, rows = numel / L;
    const int64_t is = idx->ndim ? idx->strides[dim] : 0, xs = x->ndim ? x->strides[dim] : 0,
                  od = o->ndim ? o->strides[dim] : 0;
    dc_kview ov = *o; /* out seen with idx's shape: only the non-dim coordinates are used */
    for (int d = 0; d < o->ndim; d++) ov.shape[d] = idx->shape[d];
    const dc_kview *vv[3] = { idx, x, &ov };
    const int skip = idx->ndim ? dim : -1;
#pragma omp parallel for schedule(static) if (numel >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[3];
        cpu_row_offsets(3, vv, skip, r, off);
        if (dt == DC_FLOAT32)
            SCATTER_ROW(float);
        else
            SCATTER_ROW(double);
    }
    return DC_OK;
}

dc_status dc_cpu_scatter_add(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, o->ndim) || x->ndim != o->ndim || idx->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "scatter_add: bad dim %d for %d-d output", dim, o->ndim);
    return scatter_impl(a, o, x, idx, dim);
}

/* index_add on contiguous out/src: view both as (outer, size, inner) and add whole inner blocks per
 * index, so an embedding backward streams rows instead of striding down columns. Parallel over
 * (outer, inner block): a block's output cells belong to that task alone. */
#define INDEX_ADD_BLOCK(T)                                                      \
    do {                                                                        \
        T *dst = (T *)o->data + ob * V * inner + c0;                            \
        const T *src = (const T *)x->data + ob * n * inner + c0;                \
        for (int64_t j = 0; j < n; j++) {                                       \
            T *d_ = dst + ix[j * is] * inner;                                   \
            const T *s_ = src + j * inner;                                      \
            _Pragma("omp simd") for (int64_t c = 0; c < w; c++) d_[c] += s_[c]; \
        }                                                                       \
    } while (0)

dc_status dc_cpu_index_add(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1], *idx = &a->t[2];
    int dim = (int)a->p.dim.dim;
    if (!check_dim(dim, o->ndim) || x->ndim != o->ndim)
        return dc_error(DC_ERR_SHAPE, "index_add: bad dim %d for %d-d output", dim, o->ndim);
    const int64_t n = cpu_numel(idx);
    if (o->ndim && n != x->shape[dim])
        return dc_error(DC_ERR_SHAPE, "index_add: %lld indices for a source of size %lld at dim %d", (long long)n,
                        (long long)x->shape[dim], dim);
    const dc_dtype dt = o->dtype;
    if (o->ndim && cpu_is_contig(o) && cpu_is_contig(x) && (dt == DC_FLOAT32 || dt == DC_FLOAT64) && x->dtype == dt) {
        DC_TRY(check_indices(a->op, idx, o->shape[dim], dim));
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < dim; d++) outer *= o->shape[d];
        for (int d = dim + 1; d < o->ndim; d++) inner *= o->shape[d];
        const int64_t V = o->shape[dim], is = idx->ndim ? idx->strides[0] : 0;
        const int64_t *ix = (const int64_t *)idx->data;
        const int64_t BLK = 1024, nblk = (inner + BLK - 1) / BLK, ntask = outer * nblk;
        if (n == 0 || inner == 0 || outer == 0) return DC_OK;
#pragma omp parallel for schedule(static) if (n * inner * outer >= DC_CPU_PAR_MIN && ntask > 1)
        for (int64_t t = 0; t < ntask; t++) {
            int64_t ob = t / nblk, c0 = (t % nblk) * BLK, w = inner - c0 < BLK ? inner - c0 : BLK;
            if (dt == DC_FLOAT32)
                INDEX_ADD_BLOCK(float);
            else
                INDEX_ADD_BLOCK(double);
        }
        return DC_OK;
    }
    dc_kview iv = *idx; /* the 1-d index broadcast to the source's shape */
    iv.ndim = x->ndim;
    for (int d = 0; d < x->ndim; d++) {
        iv.shape[d] = x->shape[d];
        iv.strides[d] = 0;
    }
    if (x->ndim) iv.strides[dim] = idx->ndim ? idx->strides[0] : 0;
    return scatter_impl(a, o, x, &iv, dim);
}

/* ================================ tril / triu ================================================ */

#define TRIL_ROW(T)                                                                             \
    do {                                                                                        \
        T *d_ = (T *)o->data + off[0];                                                          \
        const T *s_ = (const T *)x->data + off[1];                                              \
        for (int64_t c = 0; c < C; c++) d_[c * ocs] = (c >= lo && c < hi) ? s_[c * xcs] : (T)0; \
    } while (0)

dc_status dc_cpu_tril(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->ndim < 2) return dc_error(DC_ERR_SHAPE, "tril/triu needs at least 2 dims, got %d", o->ndim);
    if (x->dtype != o->dtype || (unsigned)o->dtype >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, x->dtype);
    const int64_t numel = cpu_numel(o);
    if (numel == 0) return DC_OK;
    const int nd = o->ndim;
    const int64_t R = o->shape[nd - 2], C = o->shape[nd - 1], k = a->p.tril.diagonal, rows = numel / C;
    const int64_t ocs = o->strides[nd - 1], xcs = x->strides[nd - 1];
    const int upper = a->p.tril.upper != 0;
    const size_t es = cpu_esize(o);
    const dc_kview *vv[2] = { o, x };
#pragma omp parallel for schedule(static) if (numel >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t rr = 0; rr < rows; rr++) {
        int64_t off[2], r = rr % R;
        cpu_row_offsets(2, vv, nd - 1, rr, off);
        /* kept columns: [0, r+k] for tril, [r+k, C) for triu */
        int64_t lo = upper ? r + k : 0, hi = upper ? C : r + k + 1;
        if (lo < 0) lo = 0;
        if (hi > C) hi = C;
        switch (es) {
        case 1: TRIL_ROW(uint8_t); break;
        case 2: TRIL_ROW(uint16_t); break;
        case 4: TRIL_ROW(uint32_t); break;
        default: TRIL_ROW(uint64_t); break;
        }
    }
    return DC_OK;
}
