/* scan.c: running sums and products along a dim (cumsum, and its backward: the same sum from the
 * end; cumprod and its backward).
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

/* One row's elements through a strided pointer (in elements). */
#define AT(base, i, st, es) ((base) + (i) * (st) * (es))

dc_status dc_cpu_cumprod(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const dc_dtype dt = x->dtype, odt = o->dtype;
    const int is_int = cpu_is_intlike(dt);
    if ((unsigned)dt >= DC_DTYPE_COUNT || dt == DC_BFLOAT16 || dt == DC_FLOAT16) return cpu_bad_dtype(a->op, dt);
    if (is_int ? odt != DC_INT64 : odt != dt) return cpu_bad_dtype(a->op, odt);
    const int dim = x->ndim ? (int)a->p.scan.dim : 0;
    if (x->ndim && (dim < 0 || dim >= x->ndim || o->ndim != x->ndim))
        return dc_error(DC_ERR_SHAPE, "cumprod: bad dim %lld for %d-d input", (long long)a->p.scan.dim, x->ndim);
    const int64_t numel = cpu_numel(x);
    if (numel == 0) return DC_OK;
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n;
    const int64_t xs = x->ndim ? x->strides[dim] : 1, os = o->ndim ? o->strides[dim] : 1;
    const int64_t es = (int64_t)dc_dtype_size(dt), oes = (int64_t)dc_dtype_size(odt);
#pragma omp parallel for schedule(static) if (numel >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const dc_kview *vv[2] = { x, o };
        int64_t off[2];
        cpu_row_offsets(2, vv, x->ndim ? dim : -1, r, off);
        const char *src = x->data + off[0] * es;
        char *dst = o->data + off[1] * oes;
        if (is_int) {
            uint64_t acc = 1;
            for (int64_t i = 0; i < n; i++) {
                acc *= (uint64_t)cpu_load_i(AT(src, i, xs, es), dt); /* wraps, no UB */
                ((int64_t *)dst)[i * os] = (int64_t)acc;
            }
        } else {
            double acc = 1;
            for (int64_t i = 0; i < n; i++) {
                acc *= cpu_load_f(AT(src, i, xs, es), dt);
                cpu_store_f(AT(dst, i, os, oes), odt, acc);
            }
        }
    }
    return DC_OK;
}

/* dx[i] = sum_{j >= i} dy[j] * prod_{k <= j, k != i} x[k]. With z the row's first zero: for i < z
 * it is (sum_{j >= i} dy[j] y[j]) / x[i] (y[j] = 0 from z on); for i = z, y[z-1] times
 * sum_{j >= z} dy[j] prod_{z < k <= j} x[k]; after z, 0. Accumulated in double. */
dc_status dc_cpu_cumprod_bwd(const dc_kargs *a)
{
    const dc_kview *dx = &a->t[0], *dy = &a->t[1], *x = &a->t[2], *y = &a->t[3];
    const dc_dtype dt = x->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    for (int k = 0; k < 4; k++)
        if (a->t[k].dtype != dt || a->t[k].ndim != x->ndim) return cpu_bad_dtype(a->op, a->t[k].dtype);
    const int dim = x->ndim ? (int)a->p.scan.dim : 0;
    const int64_t numel = cpu_numel(x);
    if (numel == 0) return DC_OK;
    const int64_t n = x->ndim ? x->shape[dim] : 1, rows = numel / n, es = (int64_t)dc_dtype_size(dt);
    const int64_t st[4] = { dx->ndim ? dx->strides[dim] : 1, dy->ndim ? dy->strides[dim] : 1,
                            x->ndim ? x->strides[dim] : 1, y->ndim ? y->strides[dim] : 1 };
#pragma omp parallel for schedule(static) if (numel >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const dc_kview *vv[4] = { dx, dy, x, y };
        int64_t off[4];
        cpu_row_offsets(4, vv, x->ndim ? dim : -1, r, off);
        char *pdx = dx->data + off[0] * es;
        const char *pdy = dy->data + off[1] * es, *px = x->data + off[2] * es, *py = y->data + off[3] * es;
        int64_t z = n;
        for (int64_t i = 0; i < n; i++)
            if (cpu_load_f(AT(px, i, st[2], es), dt) == 0) {
                z = i;
                break;
            }
        double suffix = 0;
        for (int64_t i = n - 1; i >= 0; i--) {
            double v = 0;
            if (i < z) {
                suffix += cpu_load_f(AT(pdy, i, st[1], es), dt) * cpu_load_f(AT(py, i, st[3], es), dt);
                v = suffix / cpu_load_f(AT(px, i, st[2], es), dt);
            } else if (i == z) {
                double run = 1, s = 0;
                for (int64_t j = z; j < n; j++) {
                    if (j > z) run *= cpu_load_f(AT(px, j, st[2], es), dt);
                    s += cpu_load_f(AT(pdy, j, st[1], es), dt) * run;
                }
                v = (z > 0 ? cpu_load_f(AT(py, z - 1, st[3], es), dt) : 1.0) * s;
            }
            cpu_store_f(AT(pdx, i, st[0], es), dt, v);
        }
    }
    return DC_OK;
}
