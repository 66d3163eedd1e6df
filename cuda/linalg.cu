/* linalg.cu: matmul through cuBLASLt, and tril/triu. The reference is csrc/cpu/linalg.c.
 *
 * MATMUL: t0 (batch..., M, N) contiguous = t1 (batch..., M, K) @ t2 (batch..., K, N), batch dims
 * broadcast with stride 0. cuBLASLt is column-major, so row-major C = A @ B runs as
 * C^T = B^T @ A^T: cuBLAS's "A" is our B, its "B" is our A, m = N, n = M, k = K, and row-major C
 * (ld N) is exactly column-major C^T. An operand whose rows or columns are unit-stride is read in
 * place (as N or T); one with neither, or whose batch dims can't be walked with one stride, is
 * copied to contiguous scratch first (or, when only a few outer batch dims are irregular, those
 * are looped on the host around a batched call: attention's (B, H, T, D) views of a fused qkv
 * projection then need no copy).
 *
 * dtypes: float32 (CUBLAS_COMPUTE_32F; _FAST_TF32 when dc_cuda_set_allow_tf32(1), off by
 * default like torch.backends.cuda.matmul.allow_tf32), float64 (COMPUTE_64F), bfloat16 and
 * float16 (16-bit in and out, float accumulation and scale; split-K partial sums are kept in float
 * too). The CPU kernel has float32/float64 only; the 16-bit types are here for autocast.
 *
 * Plans: descriptors, layouts and the heuristic's algorithm are cached per problem (a small LRU
 * keyed by plan_key, compared with memcmp), so a training step's matmuls cost one
 * cublasLtMatmul each once warm. cuBLASLt is deterministic for a fixed algorithm on a fixed GPU,
 * and a key always maps to the same algorithm, so results repeat bit for bit run to run.
 *
 * TRIL: t0 = tril(t1, diagonal) (triu with p.tril.upper), any dtype (moves raw bits; zero bits
 * are zero in every dtype). */
#include <cublasLt.h>

#include <atomic>
#include <mutex>

#include "common.cuh"

/* Everything up to the exported functions at the end is file-local (kernels and types too). */
namespace
{

/* --- errors ------------------------------------------------------------------------------------ */

static dc_status cublas_fail(cublasStatus_t s, const char *call, const char *file, int line)
{
    /* the call's text up to its '(' is the function's name */
    return dc_error(DC_ERR_CUDA, "%s:%d: cuBLASLt %.*s (%s: %s)", file, line, (int)strcspn(call, "("), call,
                    cublasLtGetStatusName(s), cublasLtGetStatusString(s));
}

/* Every cuBLASLt call goes through here: DC_ERR_CUDA naming the function and cuBLAS's status. */
#define DC_CUBLAS_TRY(call)                                                                                     \
    do {                                                                                                        \
        cublasStatus_t dc_cublas_s_ = (call);                                                                   \
        if (dc_cublas_s_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(dc_cublas_s_, #call, __FILE__, __LINE__); \
    } while (0)

/* --- small helpers ----------------------------------------------------------------------------- */

static bool view_contiguous(const dc_kview *v)
{
    int64_t s = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s) return false;
        s *= v->shape[d];
    }
    return true;
}

/* Scratch freed (stream-ordered) when the entry returns, on every path. */
struct scratch_guard {
    void *p = nullptr;
    ~scratch_guard()
    {
        if (p) dc_cuda_scratch_free(p);
    }
};

/* Calls f(S()) with S an unsigned type of the element size: kernels that only move bits. */
template <class F> static dc_status dispatch_bits(dc_dtype dt, const char *op, F &&f)
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

/* dst <- src, same shape, raw element bits; dst contiguous. */
template <class S, bool OneD> __global__ void copy_bits_kernel(S *dst, const S *src, dc_geom<2> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[2];
        dc_geom_offsets<2, OneD>(g, i, o);
        dst[o[0]] = src[o[1]];
    }
}

/* A contiguous scratch copy of `v` (a broadcast batch is materialised). *out gets v's shape with
 * row-major strides and the scratch pointer; the caller's guard frees it. One pass over v. */
static dc_status contiguous_copy(const dc_kview *v, scratch_guard *buf, dc_kview *out, cudaStream_t stream)
{
    dc_kview dst = *v;
    int64_t n = view_numel(v), cs = 1;
    for (int d = v->ndim - 1; d >= 0; cs *= v->shape[d], d--) dst.strides[d] = cs;
    DC_TRY(dc_cuda_scratch((size_t)n * dc_dtype_size(v->dtype), &buf->p));
    dst.data = (char *)buf->p;
    const dc_kview *vv[2] = { &dst, v };
    dc_geom<2> g = geom_make<2>(vv);
    DC_TRY(dispatch_bits(v->dtype, "matmul", [&](auto tag) {
        typedef decltype(tag) S;
        if (g.ndim == 1)
            copy_bits_kernel<S, true>
                <<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((S *)dst.data, (const S *)v->data, g, n);
        else
            copy_bits_kernel<S, false>
                <<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((S *)dst.data, (const S *)v->data, g, n);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    }));
    *out = dst;
    return DC_OK;
}

/* ================================ matmul ===================================================== */

static std::atomic<int> g_allow_tf32(0);

/* One input as cuBLASLt reads it: stored column-major (rows, cols, ld), used as op(stored). */
struct blas_mat {
    cublasOperation_t op;
    int64_t rows, cols, ld;
};

/* cuBLAS wants P^T, the transpose of the row-major (r, c) matrix P with element strides (sr, sc).
 * Unit-stride columns: P^T is column-major (c, r) with ld = sr, used as is (N). Unit-stride rows:
 * P is column-major (r, c) with ld = sc, used transposed (T). Size-1 dims make their stride
 * irrelevant (the same rule as mat_layout in csrc/cpu/linalg.c). false: neither (copy it). */
static bool blas_view(int64_t r, int64_t c, int64_t sr, int64_t sc, blas_mat *m)
{
    int64_t min_n = c > 1 ? c : 1, min_t = r > 1 ? r : 1;
    if ((sc == 1 || c == 1) && (r == 1 || sr >= min_n)) {
        *m = { CUBLAS_OP_N, c, r, r == 1 ? min_n : sr };
        return true;
    }
    if ((sr == 1 || r == 1) && (c == 1 || sc >= min_t)) {
        *m = { CUBLAS_OP_T, r, c, c == 1 ? min_t : sc };
        return true;
    }
    return false;
}

/* Do batch dims [lo, nb) of v walk as one stride (flat inner batch index b -> b * stride)? Size-1
 * dims don't count; all-broadcast gives stride 0. */
static bool batch_collapse(const dc_kview *v, int lo, int nb, int64_t *stride)
{
    int64_t s = 0, span = 1;
    bool have = false;
    for (int d = nb - 1; d >= lo; d--) {
        if (v->shape[d] == 1) continue;
        if (!have) {
            s = v->strides[d];
            have = true;
        } else if (v->strides[d] != s * span) {
            return false;
        }
        span *= v->shape[d];
    }
    *stride = s;
    return true;
}

/* Element offset of outer batch `b` (row-major over dims [0, split)) in v. */
static int64_t outer_offset(const dc_kview *v, int split, int64_t b)
{
    int64_t off = 0;
    for (int d = split - 1; d >= 0; d--) {
        off += (b % v->shape[d]) * v->strides[d];
        b /= v->shape[d];
    }
    return off;
}

/* Largest power of two (<= 256, cuBLASLt's default assumption) dividing x. */
static uint32_t align_of(uint64_t x)
{
    if (x == 0) return 256;
    uint64_t a = x & (~x + 1);
    return a >= 256 ? 256u : (uint32_t)a;
}

/* Alignment every pointer the host loop passes for v can rely on: its base and each looped
 * outer dim's byte stride. */
static uint32_t operand_align(const dc_kview *v, int split, size_t es)
{
    uint32_t a = align_of((uint64_t)(uintptr_t)v->data);
    for (int d = 0; d < split; d++)
        if (v->shape[d] > 1) {
            uint32_t s = align_of((uint64_t)(v->strides[d] * (int64_t)es));
            if (s < a) a = s;
        }
    return a;
}

/* Everything that decides the descriptors and the algorithm. All int64 (no padding), zeroed
 * before filling, compared with memcmp. a/b are cuBLAS's A and B (our B and A). */
struct plan_key {
    int64_t device, dtype, compute; /* compute: cublasComputeType_t (tf32 or not) */
    int64_t m, n, k, batch;
    int64_t op_a, op_b;
    int64_t rows_a, cols_a, ld_a, stride_a;
    int64_t rows_b, cols_b, ld_b, stride_b;
    int64_t ld_c, stride_c;
    int64_t align_a, align_b, align_c;
    int64_t workspace;
};

struct plan {
    plan_key key;
    bool used;
    uint64_t last_use;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; /* D uses C's layout */
    cublasLtMatmulAlgo_t algo;
};

#define PLAN_CACHE_SIZE 64
/* Host-loop outer batches beyond this many: copy the operand instead (one pass beats many calls). */
#define MATMUL_MAX_LOOP 8

static std::mutex g_plan_mu; /* guards everything below, and each plan while cublasLtMatmul reads it */
static plan g_plans[PLAN_CACHE_SIZE];
static uint64_t g_plan_tick;
static long g_plan_hits, g_plan_misses;

static void plan_destroy(plan *p)
{
    /* host-side objects: safe to drop once cublasLtMatmul has returned */
    if (p->desc) (void)cublasLtMatmulDescDestroy(p->desc);
    if (p->la) (void)cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) (void)cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) (void)cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof *p);
}

static dc_status layout_make(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                             int64_t batch, int64_t stride)
{
    DC_CUBLAS_TRY(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        DC_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        DC_CUBLAS_TRY(
            cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return DC_OK;
}

static dc_status heuristic(cublasLtHandle_t h, plan *p)
{
    const plan_key *k = &p->key;
    cublasLtMatmulPreference_t pref = NULL;
    DC_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = (uint64_t)k->workspace;
    /* split-K partial sums only in the compute type (float for 16-bit data), never in the output
     * type nor "in place" in it */
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    uint32_t al_a = (uint32_t)k->align_a, al_b = (uint32_t)k->align_b, al_c = (uint32_t)k->align_c;
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int got = 0;
    cublasStatus_t s =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(h, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &got);
    (void)cublasLtMatmulPreferenceDestroy(pref);
    DC_CUBLAS_TRY(s);
    if (got < 1 || res.state != CUBLAS_STATUS_SUCCESS)
        return dc_error(DC_ERR_CUDA,
                        "cuBLASLt cublasLtMatmulAlgoGetHeuristic found no algorithm for %s matmul m=%lld n=%lld "
                        "k=%lld batch=%lld (%s)",
                        dc_dtype_name((dc_dtype)k->dtype), (long long)k->m, (long long)k->n, (long long)k->k,
                        (long long)k->batch, cublasLtGetStatusString(res.state));
    p->algo = res.algo;
    return DC_OK;
}

/* Descriptors, layouts and algorithm of key into *p (zeroed); on failure *p holds what was made
 * so far, for plan_destroy. */
static dc_status plan_build(cublasLtHandle_t h, const plan_key *k, plan *p)
{
    p->key = *k;
    const dc_dtype dt = (dc_dtype)k->dtype;
    cudaDataType_t data = dt == DC_FLOAT64    ? CUDA_R_64F
                          : dt == DC_BFLOAT16 ? CUDA_R_16BF
                          : dt == DC_FLOAT16  ? CUDA_R_16F
                                              : CUDA_R_32F;
    cudaDataType_t scale = dt == DC_FLOAT64 ? CUDA_R_64F : CUDA_R_32F;
    DC_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, (cublasComputeType_t)k->compute, scale));
    cublasOperation_t opa = (cublasOperation_t)k->op_a, opb = (cublasOperation_t)k->op_b;
    DC_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    DC_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    DC_TRY(layout_make(&p->la, data, k->rows_a, k->cols_a, k->ld_a, k->batch, k->stride_a));
    DC_TRY(layout_make(&p->lb, data, k->rows_b, k->cols_b, k->ld_b, k->batch, k->stride_b));
    DC_TRY(layout_make(&p->lc, data, k->m, k->n, k->ld_c, k->batch, k->stride_c));
    return heuristic(h, p);
}

/* The plan for key: cached, or built into the least recently used slot. Caller holds g_plan_mu. */
static dc_status plan_get(cublasLtHandle_t h, const plan_key *key, plan **out)
{
    plan *lru = &g_plans[0];
    for (int i = 0; i < PLAN_CACHE_SIZE; i++) {
        plan *p = &g_plans[i];
        if (p->used && memcmp(&p->key, key, sizeof *key) == 0) {
            p->last_use = ++g_plan_tick;
            g_plan_hits++;
            *out = p;
            return DC_OK;
        }
        if (!p->used ? lru->used : (lru->used && p->last_use < lru->last_use)) lru = p;
    }
    g_plan_misses++;
    plan fresh;
    memset(&fresh, 0, sizeof fresh);
    dc_status st = plan_build(h, key, &fresh);
    if (st) {
        plan_destroy(&fresh);
        return st;
    }
    if (lru->used) plan_destroy(lru);
    *lru = fresh;
    lru->used = true;
    lru->last_use = ++g_plan_tick;
    *out = lru;
    return DC_OK;
}

/* DC_OP_MATMUL: t0 (batch..., M, N) contiguous = t1 (batch..., M, K) @ t2 (batch..., K, N); t1, t2
 * any strides (0 = broadcast batch); all one float dtype. */
static dc_status k_matmul(const dc_kargs *a)
{
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda matmul: %d operands, want 3", a->nt);
    const dc_kview *o = &a->t[0];
    dc_kview A = a->t[1], B = a->t[2];
    const dc_dtype dt = o->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_BFLOAT16 && dt != DC_FLOAT16)
        return dc_error(DC_ERR_UNSUPPORTED, "op 'matmul' has no CUDA kernel for dtype %s", dc_dtype_name(dt));
    if (A.dtype != dt || B.dtype != dt)
        return dc_error(DC_ERR_INTERNAL, "cuda matmul: dtypes %s = %s @ %s", dc_dtype_name(dt), dc_dtype_name(A.dtype),
                        dc_dtype_name(B.dtype));
    const int nd = o->ndim, nb = nd - 2;
    if (nd < 2 || A.ndim != nd || B.ndim != nd)
        return dc_error(DC_ERR_SHAPE,
                        "matmul kernel wants operands with the same number (>= 2) of dims, got %d, %d and %d", o->ndim,
                        A.ndim, B.ndim);
    const int64_t M = o->shape[nd - 2], N = o->shape[nd - 1], K = A.shape[nd - 1];
    int64_t Bn = 1;
    for (int d = 0; d < nb; d++) {
        if (A.shape[d] != o->shape[d] || B.shape[d] != o->shape[d])
            return dc_error(DC_ERR_SHAPE, "matmul kernel: batch dim %d differs (%lld, %lld, %lld)", d,
                            (long long)o->shape[d], (long long)A.shape[d], (long long)B.shape[d]);
        Bn *= o->shape[d];
    }
    if (A.shape[nd - 2] != M || B.shape[nd - 2] != K || B.shape[nd - 1] != N)
        return dc_error(DC_ERR_SHAPE, "matmul: (%lld, %lld) @ (%lld, %lld) does not give (%lld, %lld)",
                        (long long)A.shape[nd - 2], (long long)K, (long long)B.shape[nd - 2],
                        (long long)B.shape[nd - 1], (long long)M, (long long)N);
    if (Bn == 0 || M == 0 || N == 0) return DC_OK;
    if (!view_contiguous(o)) return dc_error(DC_ERR_INTERNAL, "cuda matmul: output is not contiguous");
    DC_TRY(dc_cuda_use_device_of(o->data));
    cudaStream_t stream = dc_cuda_stream();
    const size_t es = dc_dtype_size(dt);
    if (K == 0) { /* empty sum: zeros (+0 is all-zero bits) */
        DC_CUDA_TRY(cudaMemsetAsync(o->data, 0, (size_t)(Bn * M * N) * es, stream));
        return DC_OK;
    }

    /* --- how each input is read: in place, host-looped outer batches, or a contiguous copy --- */
    blas_mat ma, mb; /* ma: cuBLAS's A = our B^T (m x k = N x K); mb: cuBLAS's B = our A^T (K x M) */
    bool copy_a = !blas_view(M, K, A.strides[nd - 2], A.strides[nd - 1], &mb);
    bool copy_b = !blas_view(K, N, B.strides[nd - 2], B.strides[nd - 1], &ma);
    int64_t sa = 0, sb = 0; /* batch strides of our A and B */
    const bool col_a = copy_a || batch_collapse(&A, 0, nb, &sa), col_b = copy_b || batch_collapse(&B, 0, nb, &sb);
    int split = 0; /* batch dims [0, split) looped here, [split, nb) one batched call */
    if (!(col_a && col_b)) {
        for (split = 1; split < nb; split++)
            if ((copy_a || batch_collapse(&A, split, nb, &sa)) && (copy_b || batch_collapse(&B, split, nb, &sb))) break;
        int64_t outer = 1;
        for (int d = 0; d < split; d++) outer *= o->shape[d];
        if (outer > MATMUL_MAX_LOOP) {
            copy_a = copy_a || !col_a;
            copy_b = copy_b || !col_b;
            split = 0;
        }
    }
    scratch_guard buf_a, buf_b;
    if (copy_a) {
        DC_TRY(contiguous_copy(&a->t[1], &buf_a, &A, stream));
        blas_view(M, K, A.strides[nd - 2], A.strides[nd - 1], &mb);
    }
    if (copy_b) {
        DC_TRY(contiguous_copy(&a->t[2], &buf_b, &B, stream));
        blas_view(K, N, B.strides[nd - 2], B.strides[nd - 1], &ma);
    }
    /* contiguous copies collapse over any suffix; the others were checked for this split */
    batch_collapse(&A, split, nb, &sa);
    batch_collapse(&B, split, nb, &sb);
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < split; d++) outer *= o->shape[d];
    for (int d = split; d < nb; d++) inner *= o->shape[d];
    if (inner > INT32_MAX)
        return dc_error(DC_ERR_UNSUPPORTED, "cuda matmul: %lld matrices in one batch (cuBLASLt takes < 2^31)",
                        (long long)inner);

    cublasLtHandle_t h;
    void *ws;
    size_t ws_bytes;
    DC_TRY(dc_cuda_cublaslt(&h, &ws, &ws_bytes));
    int dev = 0;
    DC_CUDA_TRY(cudaGetDevice(&dev));
    plan_key key;
    memset(&key, 0, sizeof key);
    key.device = dev;
    key.dtype = dt;
    key.compute = dt == DC_FLOAT64                               ? CUBLAS_COMPUTE_64F
                  : dt != DC_FLOAT32                             ? CUBLAS_COMPUTE_32F
                  : g_allow_tf32.load(std::memory_order_relaxed) ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                 : CUBLAS_COMPUTE_32F;
    key.m = N;
    key.n = M;
    key.k = K;
    key.batch = inner;
    key.op_a = ma.op;
    key.rows_a = ma.rows;
    key.cols_a = ma.cols;
    key.ld_a = ma.ld;
    key.op_b = mb.op;
    key.rows_b = mb.rows;
    key.cols_b = mb.cols;
    key.ld_b = mb.ld;
    key.ld_c = N;
    if (inner > 1) { /* a single matrix ignores the batch strides: keep them out of the key */
        key.stride_a = sb;
        key.stride_b = sa;
        key.stride_c = M * N;
    }
    key.align_a = operand_align(&B, split, es);
    key.align_b = operand_align(&A, split, es);
    key.align_c = operand_align(o, 0, es); /* outer steps of C: inner*M*N elements, below */
    if (split > 0) {
        uint32_t s = align_of((uint64_t)(inner * M * N * (int64_t)es));
        if (s < key.align_c) key.align_c = s;
    }
    key.workspace = (int64_t)ws_bytes;

    const float one_f = 1.0f, zero_f = 0.0f;
    const double one_d = 1.0, zero_d = 0.0;
    const void *alpha = dt == DC_FLOAT64 ? (const void *)&one_d : (const void *)&one_f;
    const void *beta = dt == DC_FLOAT64 ? (const void *)&zero_d : (const void *)&zero_f;

    /* the lock also keeps the plan alive (no eviction) while cublasLtMatmul reads it */
    std::lock_guard<std::mutex> lk(g_plan_mu);
    plan *p;
    DC_TRY(plan_get(h, &key, &p));
    for (int64_t ob = 0; ob < outer; ob++) {
        const char *pa = A.data + outer_offset(&A, split, ob) * (int64_t)es;
        const char *pb = B.data + outer_offset(&B, split, ob) * (int64_t)es;
        char *pc = o->data + ob * inner * M * N * (int64_t)es;
        DC_CUBLAS_TRY(cublasLtMatmul(h, p->desc, alpha, pb, p->la, pa, p->lb, beta, pc, p->lc, pc, p->lc, &p->algo, ws,
                                     ws_bytes, stream));
    }
    return DC_OK;
}

/* ================================ tril / triu ================================================ */

/* Batch dims of out and x; the last two dims are (R, C). */
struct tril_geom {
    int nb;
    int64_t shape[DC_MAX_DIMS];
    int64_t st[2][DC_MAX_DIMS]; /* batch strides of out, x */
    int64_t R, C;
    int64_t rs[2], cs[2]; /* row / column strides of out, x */
};

/* out[..., r, c] = x[..., r, c] where kept (tril: c - r <= k; triu: c - r >= k), else 0. Contig:
 * out and x both contiguous, so flat i is the offset in both. */
template <class S, bool Contig>
__global__ void tril_kernel(S *out, const S *x, tril_geom g, int64_t n, int64_t k, int upper)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t c = i % g.C, t = i / g.C, r = t % g.R;
        int64_t oo = i, xo = i;
        if (!Contig) {
            int64_t b = t / g.R;
            oo = r * g.rs[0] + c * g.cs[0];
            xo = r * g.rs[1] + c * g.cs[1];
            for (int d = g.nb - 1; d >= 0; d--) {
                int64_t bi = b % g.shape[d];
                b /= g.shape[d];
                oo += bi * g.st[0][d];
                xo += bi * g.st[1][d];
            }
        }
        /* c - r <= k rather than c <= r + k: no overflow for huge |diagonal| */
        bool keep = upper ? (c - r >= k) : (c - r <= k);
        out[oo] = keep ? x[xo] : S(0);
    }
}

/* DC_OP_TRIL: t0 = tril(t1, p.tril.diagonal), or triu when p.tril.upper; same shape (>= 2 dims),
 * any strides, any dtype. */
static dc_status k_tril(const dc_kargs *a)
{
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda tril: %d operands, want 2", a->nt);
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->ndim < 2) return dc_error(DC_ERR_SHAPE, "tril/triu needs at least 2 dims, got %d", o->ndim);
    const dc_kview *v[2] = { o, x };
    DC_TRY(check_same_shape("tril", 2, v));
    if (x->dtype != o->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda tril: dtypes %s <- %s", dc_dtype_name(o->dtype),
                        dc_dtype_name(x->dtype));
    const int64_t n = view_numel(o);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    cudaStream_t stream = dc_cuda_stream();
    const int nd = o->ndim;
    tril_geom g;
    memset(&g, 0, sizeof g);
    g.nb = nd - 2;
    for (int d = 0; d < nd - 2; d++) {
        g.shape[d] = o->shape[d];
        g.st[0][d] = o->strides[d];
        g.st[1][d] = x->strides[d];
    }
    g.R = o->shape[nd - 2];
    g.C = o->shape[nd - 1];
    for (int k = 0; k < 2; k++) {
        g.rs[k] = v[k]->strides[nd - 2];
        g.cs[k] = v[k]->strides[nd - 1];
    }
    const bool contig = view_contiguous(o) && view_contiguous(x);
    const int64_t diag = a->p.tril.diagonal;
    const int upper = a->p.tril.upper != 0;
    return dispatch_bits(o->dtype, "tril", [&](auto tag) {
        typedef decltype(tag) S;
        if (contig)
            tril_kernel<S, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((S *)o->data, (const S *)x->data, g,
                                                                                    n, diag, upper);
        else
            tril_kernel<S, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>((S *)o->data, (const S *)x->data,
                                                                                     g, n, diag, upper);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    });
}

} // namespace

/* --- exported ------------------------------------------------------------------------------------ */

/* torch.backends.cuda.matmul.allow_tf32: float32 matmuls may round their inputs to TF32 (10-bit
 * mantissa) on tensor cores. Off by default. Takes effect at the next matmul (a separate plan). */
extern "C" void dc_cuda_set_allow_tf32(int on)
{
    g_allow_tf32.store(on != 0, std::memory_order_relaxed);
}
extern "C" int dc_cuda_get_allow_tf32(void)
{
    return g_allow_tf32.load(std::memory_order_relaxed);
}

/* For the tests: lookups that found a plan, lookups that built one, plans held now. */
extern "C" void dc_cuda_matmul_cache_stats(long *hits, long *misses, long *entries)
{
    std::lock_guard<std::mutex> lk(g_plan_mu);
    long e = 0;
    for (int i = 0; i < PLAN_CACHE_SIZE; i++) e += g_plans[i].used;
    if (hits) *hits = g_plan_hits;
    if (misses) *misses = g_plan_misses;
    if (entries) *entries = e;
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_linalg(dc_kernel_fn *k)
{
    k[DC_OP_MATMUL] = k_matmul;
    k[DC_OP_TRIL] = k_tril;
}
