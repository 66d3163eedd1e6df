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
 * keyed by dc_mm_key, compared with memcmp: csrc/plan, host code tested on the CPU), so a
 * training step's matmuls cost one cublasLtMatmul each once warm. cuBLASLt is deterministic for a
 * fixed algorithm on a fixed GPU, and a key always maps to the same algorithm, so results repeat
 * bit for bit run to run.
 *
 * TRIL: t0 = tril(t1, diagonal) (triu with p.tril.upper), any dtype (moves raw bits; zero bits
 * are zero in every dtype). */
#include <cublasLt.h>

#include <atomic>
#include <mutex>

#include "../csrc/plan/plan.h"
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
static dc_status contiguous_copy(const dc_kview *v, dc_scratch_guard *buf, dc_kview *out, cudaStream_t stream)
{
    dc_kview dst = *v;
    int64_t n = view_numel(v), cs = 1;
    for (int d = v->ndim - 1; d >= 0; cs *= v->shape[d], d--) dst.strides[d] = cs;
    DC_TRY(dc_cuda_scratch((size_t)n * dc_dtype_size(v->dtype), &buf->p));
    dst.data = (char *)buf->p;
    const dc_kview *vv[2] = { &dst, v };
    dc_geom<2> g = geom_make<2>(vv);
    DC_TRY(dc_dispatch_bits(v->dtype, "matmul", [&](auto tag) {
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

/* A cached plan: the descriptors, layouts and algorithm of one dc_mm_key (csrc/plan: the key and
 * the LRU cache holding these are host code, unit-tested on the CPU). */
struct plan {
    dc_mm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; /* D uses C's layout */
    cublasLtMatmulAlgo_t algo;
};

#define PLAN_CACHE_SIZE  64
#define MATMUL_WORKSPACE ((size_t)32 << 20) /* NVIDIA's recommendation for Hopper */

static std::mutex g_plan_mu;          /* guards the cache, and each plan while cublasLtMatmul reads it */
static dc_plan_cache *g_plans = NULL; /* made at the first matmul */

static void plan_release(void *payload)
{
    /* host-side objects: safe to drop once cublasLtMatmul has returned */
    plan *p = (plan *)payload;
    if (p->desc) (void)cublasLtMatmulDescDestroy(p->desc);
    if (p->la) (void)cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) (void)cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) (void)cublasLtMatrixLayoutDestroy(p->lc);
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
    const dc_mm_key *k = &p->key;
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

/* Descriptors, layouts and algorithm of p->key into *p (otherwise zeroed); on failure *p holds
 * what was made so far, for plan_release. */
static dc_status plan_build(cublasLtHandle_t h, plan *p)
{
    const dc_mm_key *k = &p->key;
    const dc_dtype dt = (dc_dtype)k->dtype;
    cudaDataType_t data = dt == DC_FLOAT64    ? CUDA_R_64F
                          : dt == DC_BFLOAT16 ? CUDA_R_16BF
                          : dt == DC_FLOAT16  ? CUDA_R_16F
                                              : CUDA_R_32F;
    cudaDataType_t scale = dt == DC_FLOAT64 ? CUDA_R_64F : CUDA_R_32F;
    cublasComputeType_t compute = k->compute == DC_MM_COMPUTE_64F             ? CUBLAS_COMPUTE_64F
                                  : k->compute == DC_MM_COMPUTE_32F_FAST_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                              : CUBLAS_COMPUTE_32F;
    DC_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, compute, scale));
    cublasOperation_t opa = k->op_a == DC_MM_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = k->op_b == DC_MM_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    DC_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    DC_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    DC_TRY(layout_make(&p->la, data, k->rows_a, k->cols_a, k->ld_a, k->batch, k->stride_a));
    DC_TRY(layout_make(&p->lb, data, k->rows_b, k->cols_b, k->ld_b, k->batch, k->stride_b));
    DC_TRY(layout_make(&p->lc, data, k->m, k->n, k->ld_c, k->batch, k->stride_c));
    return heuristic(h, p);
}

/* The plan for key: cached, or built into the least recently used slot. Caller holds g_plan_mu. */
static dc_status plan_get(cublasLtHandle_t h, const dc_mm_key *key, plan **out)
{
    if (!g_plans) DC_TRY(dc_plan_cache_new(PLAN_CACHE_SIZE, sizeof *key, sizeof(plan), plan_release, &g_plans));
    bool fresh = false;
    plan *p = (plan *)dc_plan_cache_get(g_plans, key, &fresh);
    if (fresh) {
        p->key = *key;
        dc_status st = plan_build(h, p);
        if (st) {
            dc_plan_cache_drop(g_plans, p);
            return st;
        }
    }
    *out = p;
    return DC_OK;
}

/* DC_OP_MATMUL: t0 (batch..., M, N) contiguous = t1 (batch..., M, K) @ t2 (batch..., K, N); t1, t2
 * any strides (0 = broadcast batch); all one float dtype. How each input is read (in place,
 * host-looped outer batches, or a contiguous copy) is csrc/plan/matmul.c's dc_mm_choose. */
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
    if (!dc_view_contiguous(o)) return dc_error(DC_ERR_INTERNAL, "cuda matmul: output is not contiguous");
    DC_TRY(dc_cuda_use_device_of(o->data));
    cudaStream_t stream = dc_cuda_stream();
    const size_t es = dc_dtype_size(dt);
    if (K == 0) { /* empty sum: zeros (+0 is all-zero bits) */
        DC_CUDA_TRY(cudaMemsetAsync(o->data, 0, (size_t)(Bn * M * N) * es, stream));
        return DC_OK;
    }

    dc_mm_layout L;
    dc_mm_choose(o, &A, &B, &L);
    dc_scratch_guard buf_a, buf_b;
    if (L.copy_a) DC_TRY(contiguous_copy(&a->t[1], &buf_a, &A, stream));
    if (L.copy_b) DC_TRY(contiguous_copy(&a->t[2], &buf_b, &B, stream));

    cublasLtHandle_t h;
    DC_TRY(dc_cuda_cublaslt(&h));
    /* The workspace: scratch of this stream, reused (from the caching allocator) by the next
     * matmul on it, never by one on another stream running at the same time. Without memory for
     * it cuBLASLt runs with none, on fewer algorithms (a plan of its own: the size is keyed). */
    dc_scratch_guard wsbuf;
    size_t ws_bytes = MATMUL_WORKSPACE;
    if (dc_cuda_scratch(ws_bytes, &wsbuf.p) != DC_OK) {
        wsbuf.p = nullptr;
        ws_bytes = 0;
    }
    void *ws = wsbuf.p;
    int dev = 0;
    DC_CUDA_TRY(cudaGetDevice(&dev));
    const int compute = dt == DC_FLOAT64                               ? DC_MM_COMPUTE_64F
                        : dt != DC_FLOAT32                             ? DC_MM_COMPUTE_32F
                        : g_allow_tf32.load(std::memory_order_relaxed) ? DC_MM_COMPUTE_32F_FAST_TF32
                                                                       : DC_MM_COMPUTE_32F;
    dc_mm_key key;
    DC_TRY(dc_mm_plan(o, &A, &B, dev, compute, (int64_t)ws_bytes, &L, &key));

    const float one_f = 1.0f, zero_f = 0.0f;
    const double one_d = 1.0, zero_d = 0.0;
    const void *alpha = dt == DC_FLOAT64 ? (const void *)&one_d : (const void *)&one_f;
    const void *beta = dt == DC_FLOAT64 ? (const void *)&zero_d : (const void *)&zero_f;

    /* the lock also keeps the plan alive (no eviction) while cublasLtMatmul reads it */
    std::lock_guard<std::mutex> lk(g_plan_mu);
    plan *p;
    DC_TRY(plan_get(h, &key, &p));
    for (int64_t ob = 0; ob < L.outer; ob++) {
        const char *pa = A.data + dc_mm_outer_offset(&A, L.split, ob) * (int64_t)es;
        const char *pb = B.data + dc_mm_outer_offset(&B, L.split, ob) * (int64_t)es;
        char *pc = o->data + ob * L.inner * M * N * (int64_t)es;
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
    const bool contig = dc_view_contiguous(o) && dc_view_contiguous(x);
    const int64_t diag = a->p.tril.diagonal;
    const int upper = a->p.tril.upper != 0;
    return dc_dispatch_bits(o->dtype, "tril", [&](auto tag) {
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

/* The matmul plan cache's counts (zeros before the first matmul). */
extern "C" void dc_cuda_matmul_cache_stats(dc_plan_cache_stats *s)
{
    std::lock_guard<std::mutex> lk(g_plan_mu);
    if (g_plans)
        dc_plan_cache_get_stats(g_plans, s);
    else
        *s = dc_plan_cache_stats{ PLAN_CACHE_SIZE, 0, 0, 0, 0 };
}

/* --- registration ------------------------------------------------------------------------------ */

void dc_cuda_register_linalg(dc_kernel_fn *k)
{
    k[DC_OP_MATMUL] = k_matmul;
    k[DC_OP_TRIL] = k_tril;
}
