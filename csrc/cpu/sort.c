/* sort.c: argsort and nonzero on the CPU.
 *
 * argsort sorts each row along `dim` with a stable merge sort of (key, index) pairs, rows in
 * parallel; NaN compares as the largest value, so it ends last ascending and first descending, as
 * torch.sort does. nonzero walks the input once in row-major order and writes the coordinates of
 * every non-zero element into the (count, ndim) output the op layer sized. */
#include <stdlib.h>

#include "cpu.h"

typedef struct {
    double k;  /* float keys (and integers that fit a double exactly) */
    int64_t i; /* position along the dim */
} kv_f;

typedef struct {
    int64_t k;
    int64_t i;
} kv_i;

/* a before b? Ascending: a < b, NaN last. Descending: a > b, NaN first. Ties keep input order. */
static inline int before_f(double a, double b, int desc)
{
    if (desc) return a > b || (a != a && b == b);
    return a < b || (a == a && b != b);
}

#define DEF_MERGE_SORT(NAME, KV, BEFORE)                                                             \
    static void NAME(KV *v, KV *tmp, int64_t n, int desc)                                            \
    {                                                                                                \
        for (int64_t w = 1; w < n; w *= 2) {                                                         \
            for (int64_t lo = 0; lo < n; lo += 2 * w) {                                              \
                int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;         \
                int64_t i = lo, j = mid, o = lo;                                                     \
                while (i < mid && j < hi) tmp[o++] = BEFORE(v[j].k, v[i].k, desc) ? v[j++] : v[i++]; \
                while (i < mid) tmp[o++] = v[i++];                                                   \
                while (j < hi) tmp[o++] = v[j++];                                                    \
            }                                                                                        \
            memcpy(v, tmp, sizeof(KV) * (size_t)n);                                                  \
        }                                                                                            \
    }
#define BEFORE_I(a, b, desc) ((desc) ? (a) > (b) : (a) < (b))
DEF_MERGE_SORT(sort_f, kv_f, before_f)
DEF_MERGE_SORT(sort_i, kv_i, BEFORE_I)

dc_status dc_cpu_argsort(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const struct dc_sort_params *p = &a->p.sort;
    if (o->dtype != DC_INT64) return cpu_bad_dtype(a->op, o->dtype);
    const dc_dtype dt = x->dtype;
    if (dt == DC_BFLOAT16 || dt == DC_FLOAT16 || (unsigned)dt >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, dt);
    const int dim = x->ndim ? (int)p->dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim))
        return dc_error(DC_ERR_SHAPE, "argsort: bad dim %lld for %d-d input", (long long)p->dim, x->ndim);
    const int64_t numel = cpu_numel(x);
    if (numel == 0) return DC_OK;
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    const int64_t xs = x->ndim ? x->strides[dim] : 1, os = o->ndim ? o->strides[dim] : 1;
    const size_t es = dc_dtype_size(dt);
    const int is_int = cpu_is_intlike(dt);
    const int desc = p->descending != 0;
    int failed = 0;
#pragma omp parallel if (numel >= DC_CPU_PAR_MIN && rows > 1) reduction(| : failed)
    {
        size_t kvs = is_int ? sizeof(kv_i) : sizeof(kv_f);
        char *buf = malloc(2 * kvs * (size_t)n);
        if (!buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!buf) continue;
            int64_t ox, oo;
            const dc_kview *vv[2] = { x, o };
            int64_t off[2];
            cpu_row_offsets(2, vv, x->ndim ? dim : -1, r, off);
            ox = off[0], oo = off[1];
            const char *src = x->data + ox * (int64_t)es;
            int64_t *dst = (int64_t *)o->data + oo;
            if (is_int) {
                kv_i *v = (kv_i *)buf, *tmp = v + n;
                for (int64_t i = 0; i < n; i++) v[i] = (kv_i){ cpu_load_i(src + i * xs * (int64_t)es, dt), i };
                sort_i(v, tmp, n, desc);
                for (int64_t i = 0; i < n; i++) dst[i * os] = v[i].i;
            } else {
                kv_f *v = (kv_f *)buf, *tmp = v + n;
                for (int64_t i = 0; i < n; i++) v[i] = (kv_f){ cpu_load_f(src + i * xs * (int64_t)es, dt), i };
                sort_f(v, tmp, n, desc);
                for (int64_t i = 0; i < n; i++) dst[i * os] = v[i].i;
            }
        }
        free(buf);
    }
    if (failed) return dc_error(DC_ERR_NOMEM, "argsort: out of memory for rows of %lld elements", (long long)n);
    return DC_OK;
}

dc_status dc_cpu_nonzero(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->dtype != DC_INT64 || !cpu_is_contig(o)) return cpu_bad_dtype(a->op, o->dtype);
    const dc_dtype dt = x->dtype;
    if ((unsigned)dt >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, dt);
    const int nd = x->ndim;
    const int64_t numel = cpu_numel(x), cap = o->ndim ? o->shape[0] : 0;
    const int64_t es = (int64_t)dc_dtype_size(dt);
    int64_t c[DC_MAX_DIMS] = { 0 }, off = 0, k = 0;
    int64_t *out = (int64_t *)o->data;
    for (int64_t i = 0; i < numel; i++) {
        const char *p = x->data + off * es;
        int nz = cpu_is_intlike(dt) ? cpu_load_i(p, dt) != 0 : cpu_load_f(p, dt) != 0;
        if (nz) {
            if (k == cap)
                return dc_error(DC_ERR_INTERNAL, "nonzero: more non-zero elements than counted (%lld)", (long long)cap);
            for (int d = 0; d < nd; d++) out[k * nd + d] = c[d];
            k++;
        }
        for (int d = nd - 1; d >= 0; d--) { /* next coordinate, row-major */
            off += x->strides[d];
            if (++c[d] < x->shape[d]) break;
            off -= x->strides[d] * x->shape[d];
            c[d] = 0;
        }
    }
    if (k != cap)
        return dc_error(DC_ERR_INTERNAL, "nonzero: counted %lld non-zero elements, found %lld", (long long)cap,
                        (long long)k);
    return DC_OK;
}
