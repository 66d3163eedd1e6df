/* matmul.c: the matmul planner of plan.h (cuda/linalg.cu runs what it decides).
 *
 * An operand whose rows or columns are unit-stride is read in place (as N or T); one with neither,
 * or whose batch dims can't be walked with one stride, is copied to contiguous scratch first — or,
 * when only a few outer batch dims are irregular, those are looped on the host around a batched
 * call: attention's (B, H, T, D) views of a fused qkv projection then need no copy. */
#include <string.h>

#include "plan.h"

/* cuBLAS wants P^T, the transpose of the row-major (r, c) matrix P with element strides (sr, sc).
 * Unit-stride columns: P^T is column-major (c, r) with ld = sr, used as is (N). Unit-stride rows:
 * P is column-major (r, c) with ld = sc, used transposed (T). Size-1 dims make their stride
 * irrelevant (the same rule as mat_layout in csrc/cpu/linalg.c). false: neither (copy it). */
static bool blas_view(int64_t r, int64_t c, int64_t sr, int64_t sc, dc_mm_mat *m)
{
    int64_t min_n = c > 1 ? c : 1, min_t = r > 1 ? r : 1;
    if ((sc == 1 || c == 1) && (r == 1 || sr >= min_n)) {
        *m = (dc_mm_mat){ DC_MM_OP_N, c, r, r == 1 ? min_n : sr };
        return true;
    }
    if ((sr == 1 || r == 1) && (c == 1 || sc >= min_t)) {
        *m = (dc_mm_mat){ DC_MM_OP_T, r, c, c == 1 ? min_t : sc };
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

int64_t dc_mm_outer_offset(const dc_kview *v, int split, int64_t b)
{
    int64_t off = 0;
    for (int d = split - 1; d >= 0; d--) {
        off += (b % v->shape[d]) * v->strides[d];
        b /= v->shape[d];
    }
    return off;
}

/* Largest power of two (<= 256, cuBLASLt's default assumption) dividing x. */
static int64_t align_of(uint64_t x)
{
    if (x == 0) return 256;
    uint64_t a = x & (~x + 1);
    return a >= 256 ? 256 : (int64_t)a;
}

/* Alignment every pointer the host loop passes for v can rely on: its base and each looped
 * outer dim's byte stride. */
static int64_t operand_align(const dc_kview *v, int split, size_t es)
{
    int64_t a = align_of((uint64_t)(uintptr_t)v->data);
    for (int d = 0; d < split; d++)
        if (v->shape[d] > 1) {
            int64_t s = align_of((uint64_t)(v->strides[d] * (int64_t)es));
            if (s < a) a = s;
        }
    return a;
}

void dc_mm_choose(const dc_kview *o, const dc_kview *A, const dc_kview *B, dc_mm_layout *L)
{
    const int nd = o->ndim, nb = nd - 2;
    memset(L, 0, sizeof *L);
    L->M = o->shape[nd - 2];
    L->N = o->shape[nd - 1];
    L->K = A->shape[nd - 1];
    dc_mm_mat m;
    L->copy_a = !blas_view(L->M, L->K, A->strides[nd - 2], A->strides[nd - 1], &m);
    L->copy_b = !blas_view(L->K, L->N, B->strides[nd - 2], B->strides[nd - 1], &m);
    int64_t sa, sb;
    const bool col_a = L->copy_a || batch_collapse(A, 0, nb, &sa), col_b = L->copy_b || batch_collapse(B, 0, nb, &sb);
    int split = 0;
    if (!(col_a && col_b)) {
        for (split = 1; split < nb; split++)
            if ((L->copy_a || batch_collapse(A, split, nb, &sa)) && (L->copy_b || batch_collapse(B, split, nb, &sb)))
                break;
        int64_t outer = 1;
        for (int d = 0; d < split; d++) outer *= o->shape[d];
        if (outer > DC_MM_MAX_LOOP) {
            L->copy_a = L->copy_a || !col_a;
            L->copy_b = L->copy_b || !col_b;
            split = 0;
        }
    }
    L->split = split;
    L->outer = L->inner = 1;
    for (int d = 0; d < split; d++) L->outer *= o->shape[d];
    for (int d = split; d < nb; d++) L->inner *= o->shape[d];
}

dc_status dc_mm_plan(const dc_kview *o, const dc_kview *A, const dc_kview *B, int device, int compute,
                     int64_t workspace, dc_mm_layout *L, dc_mm_key *key)
{
    const int nd = o->ndim, nb = nd - 2, split = L->split;
    const int64_t M = L->M, N = L->N, K = L->K, inner = L->inner;
    const size_t es = dc_dtype_size(o->dtype);
    /* contiguous copies read in place and collapse over any suffix; the others were checked */
    if (!blas_view(M, K, A->strides[nd - 2], A->strides[nd - 1], &L->mb) ||
        !blas_view(K, N, B->strides[nd - 2], B->strides[nd - 1], &L->ma) || !batch_collapse(A, split, nb, &L->sa) ||
        !batch_collapse(B, split, nb, &L->sb))
        return dc_error(DC_ERR_INTERNAL, "matmul plan: an operand is not readable in place (its copy was skipped)");
    if (inner > INT32_MAX)
        return dc_error(DC_ERR_UNSUPPORTED, "cuda matmul: %lld matrices in one batch (cuBLASLt takes < 2^31)",
                        (long long)inner);
    memset(key, 0, sizeof *key);
    key->device = device;
    key->dtype = o->dtype;
    key->compute = compute;
    key->m = N;
    key->n = M;
    key->k = K;
    key->batch = inner;
    key->op_a = L->ma.op;
    key->rows_a = L->ma.rows;
    key->cols_a = L->ma.cols;
    key->ld_a = L->ma.ld;
    key->op_b = L->mb.op;
    key->rows_b = L->mb.rows;
    key->cols_b = L->mb.cols;
    key->ld_b = L->mb.ld;
    key->ld_c = N;
    if (inner > 1) { /* a single matrix ignores the batch strides: keep them out of the key */
        key->stride_a = L->sb;
        key->stride_b = L->sa;
        key->stride_c = M * N;
    }
    key->align_a = operand_align(B, split, es);
    key->align_b = operand_align(A, split, es);
    key->align_c = operand_align(o, 0, es); /* outer steps of C: inner*M*N elements */
    if (split > 0) {
        int64_t s = align_of((uint64_t)(inner * M * N * (int64_t)es));
        if (s < key->align_c) key->align_c = s;
    }
    key->workspace = workspace;
    return DC_OK;
}
