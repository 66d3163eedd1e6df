/* scan.c: running sums along a dim (cumsum, and its backward: the same sum from the end).
 *
 * One pass per row, O(n), rows in parallel. Floats accumulate in double, so a float32 cumsum of a
 * long row does not drift; integers and bool accumulate in int64 (the op layer gives them an int64
 * output, as torch does). */
#include "cpu.h"

dc_status dc_cpu_cumsum(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const struct dc_scan_params *p = &a->p.scan;
    const dc_dtype dt = x->dtype, odt = o->dtype;
    const int is_int = cpu_is_intlike(dt);
    if ((unsigned)dt >= DC_DTYPE_COUNT || dt == DC_BFLOAT16 || dt == DC_FLOAT16) return cpu_bad_dtype(a->op, dt);
    if (is_int ? odt != DC_INT64 : odt != dt) return cpu_bad_dtype(a->op, odt);
    const int dim = x->ndim ? (int)p->dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim || o->ndim != x->ndim))
        return dc_error(DC_ERR_SHAPE, "cumsum: bad dim %lld for %d-d input", (long long)p->dim, x->ndim);
    const int64_t numel = cpu_numel(x);
    if (numel == 0) return DC_OK;
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    const int64_t xs = x->ndim ? x->strides[dim] : 1, os = o->ndim ? o->strides[dim] : 1;
    const int64_t es = (int64_t)dc_dtype_size(dt), oes = (int64_t)dc_dtype_size(odt);
    const int rev = p->reverse != 0;
#pragma omp parallel for schedule(static) if (numel >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t ox, oo;
        const dc_kview *vv[2] = { x, o };
        int64_t off[2];
        cpu_row_offsets(2, vv, x->ndim ? dim : -1, r, off);
        ox = off[0], oo = off[1];
        const char *src = x->data + ox * es;
        char *dst = o->data + oo * oes;
        if (is_int) {
            int64_t acc = 0;
            for (int64_t j = 0; j < n; j++) {
                int64_t i = rev ? n - 1 - j : j;
                acc = (int64_t)((uint64_t)acc + (uint64_t)cpu_load_i(src + i * xs * es, dt)); /* wraps, no UB */
                ((int64_t *)dst)[i * os] = acc;
            }
        } else {
            double acc = 0;
            for (int64_t j = 0; j < n; j++) {
                int64_t i = rev ? n - 1 - j : j;
                acc += cpu_load_f(src + i * xs * es, dt);
                cpu_store_f(dst + i * os * oes, odt, acc);
            }
        }
    }
    return DC_OK;
}
