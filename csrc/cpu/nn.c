/* nn.c: softmax / log-softmax (forward and backward) along any dim, and layer norm over the last
 * dim (forward and backward).
 *
 * These are benchmarked against NumPy, so each row is touched as few times as possible: softmax
 * reads x twice (max, then exp+sum) and rescales y in place while the row is still in cache;
 * layer norm reads x for the mean, again (from cache) for the variance, and once to write y.
 * Work is parallel over rows; layer norm's dw/db come from per-thread partial sums added at the
 * end, so no two threads ever write the same accumulator. float32 sums accumulate in double. */
#include <stdlib.h>
#include <tgmath.h>

#include "cpu.h"

/* ================================ softmax ==================================================== */

/* One row: y = softmax(x) or log_softmax(x); xs/ys strides in elements. exp(x - max) keeps every
 * exponent <= 0, so nothing overflows. */
#define DEF_SOFTMAX_ROW(NAME, T)                                                                                     \
    CPU_SIMD static void NAME(T *y, int64_t ys, const T *x, int64_t xs, int64_t L, int log_out)                      \
    {                                                                                                                \
        T m = -INFINITY;                                                                                             \
        double s = 0;                                                                                                \
        if (xs == 1 && ys == 1) {                                                                                    \
            _Pragma("omp simd reduction(max : m)") for (int64_t i = 0; i < L; i++) m = x[i] > m ? x[i] : m;          \
            if (log_out) {                                                                                           \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < L; i++) s += (double)cpu_exp(x[i] - m); \
                const T lse = m + (T)log(s);                                                                         \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) y[i] = x[i] - lse;                               \
            } else {                                                                                                 \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < L; i++)                                 \
                {                                                                                                    \
                    T e = cpu_exp(x[i] - m);                                                                         \
                    y[i] = e;                                                                                        \
                    s += (double)e;                                                                                  \
                }                                                                                                    \
                const T inv = (T)(1.0 / s);                                                                          \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) y[i] *= inv;                                     \
            }                                                                                                        \
            return;                                                                                                  \
        }                                                                                                            \
        for (int64_t i = 0; i < L; i++) m = x[i * xs] > m ? x[i * xs] : m;                                           \
        if (log_out) {                                                                                               \
            for (int64_t i = 0; i < L; i++) s += (double)cpu_exp(x[i * xs] - m);                                     \
            const T lse = m + (T)log(s);                                                                             \
            for (int64_t i = 0; i < L; i++) y[i * ys] = x[i * xs] - lse;                                             \
        } else {                                                                                                     \
            for (int64_t i = 0; i < L; i++) {                                                                        \
                T e = cpu_exp(x[i * xs] - m);                                                                        \
                y[i * ys] = e;                                                                                       \
                s += (double)e;                                                                                      \
            }                                                                                                        \
            const T inv = (T)(1.0 / s);                                                                              \
            for (int64_t i = 0; i < L; i++) y[i * ys] *= inv;                                                        \
        }                                                                                                            \
    }
DEF_SOFTMAX_ROW(softmax_row_f32, float)
DEF_SOFTMAX_ROW(softmax_row_f64, double)

/* dx = y * (dy - sum(dy*y))   or, for log-softmax,   dx = dy - exp(y) * sum(dy). */
#define DEF_SOFTMAX_BWD_ROW(NAME, T)                                                                              \
    CPU_SIMD static void NAME(T *dx, int64_t dxs, const T *dy, int64_t dys, const T *y, int64_t yss, int64_t L,   \
                              int log_out)                                                                        \
    {                                                                                                             \
        double s = 0;                                                                                             \
        if (dxs == 1 && dys == 1 && yss == 1) {                                                                   \
            if (log_out) {                                                                                        \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < L; i++) s += (double)dy[i];          \
                const T ts = (T)s;                                                                                \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) dx[i] = dy[i] - cpu_exp(y[i]) * ts;           \
            } else {                                                                                              \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < L; i++) s += (double)(dy[i] * y[i]); \
                const T ts = (T)s;                                                                                \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) dx[i] = y[i] * (dy[i] - ts);                  \
            }                                                                                                     \
            return;                                                                                               \
        }                                                                                                         \
        if (log_out) {                                                                                            \
            for (int64_t i = 0; i < L; i++) s += (double)dy[i * dys];                                             \
            const T ts = (T)s;                                                                                    \
            for (int64_t i = 0; i < L; i++) dx[i * dxs] = dy[i * dys] - cpu_exp(y[i * yss]) * ts;                 \
        } else {                                                                                                  \
            for (int64_t i = 0; i < L; i++) s += (double)(dy[i * dys] * y[i * yss]);                              \
            const T ts = (T)s;                                                                                    \
            for (int64_t i = 0; i < L; i++) dx[i * dxs] = y[i * yss] * (dy[i * dys] - ts);                        \
        }                                                                                                         \
    }
DEF_SOFTMAX_BWD_ROW(softmax_bwd_row_f32, float)
DEF_SOFTMAX_BWD_ROW(softmax_bwd_row_f64, double)

static int norm_dim(int64_t d, int ndim)
{
    return (int)(d < 0 ? d + ndim : d);
}

dc_status dc_cpu_softmax(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const dc_dtype dt = x->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    if (o->dtype != dt) return cpu_bad_dtype(a->op, o->dtype);
    const int log_out = a->op == DC_OP_LOG_SOFTMAX;
    const int64_t numel = cpu_numel(x);
    if (numel == 0) return DC_OK;
    int dim = norm_dim(a->p.dim.dim, x->ndim);
    int64_t L = 1, xs = 1, ys = 1;
    if (x->ndim > 0) {
        if (dim < 0 || dim >= x->ndim)
            return dc_error(DC_ERR_SHAPE, "%s: dim %lld out of range for %d-d input", dc_op_names[a->op],
                            (long long)a->p.dim.dim, x->ndim);
        L = x->shape[dim];
        xs = x->strides[dim];
        ys = o->strides[dim];
    } else {
        dim = -1;
    }
    const int64_t rows = numel / L;
    const dc_kview *vv[2] = { x, o };
    /* Rows are handed out ~4K elements at a time, so a thread on a core shared with another process
     * does less of the work rather than holding the team up (each row is still one thread's). */
    const int64_t grab = L >= 4096 ? 1 : 4096 / L;
#pragma omp parallel for schedule(dynamic, grab) if (numel >= DC_CPU_PAR_MIN / 4 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[2];
        cpu_row_offsets(2, vv, dim, r, off);
        if (dt == DC_FLOAT32)
            softmax_row_f32((float *)o->data + off[1], ys, (const float *)x->data + off[0], xs, L, log_out);
        else
            softmax_row_f64((double *)o->data + off[1], ys, (const double *)x->data + off[0], xs, L, log_out);
    }
    return DC_OK;
}

dc_status dc_cpu_softmax_bwd(const dc_kargs *a)
{
    const dc_kview *dx = &a->t[0], *dy = &a->t[1], *y = &a->t[2];
    const dc_dtype dt = dx->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    if (dy->dtype != dt) return cpu_bad_dtype(a->op, dy->dtype);
    if (y->dtype != dt) return cpu_bad_dtype(a->op, y->dtype);
    const int log_out = a->op == DC_OP_LOG_SOFTMAX_BWD;
    const int64_t numel = cpu_numel(dx);
    if (numel == 0) return DC_OK;
    int dim = norm_dim(a->p.dim.dim, dx->ndim);
    int64_t L = 1, s0 = 1, s1 = 1, s2 = 1;
    if (dx->ndim > 0) {
        if (dim < 0 || dim >= dx->ndim)
            return dc_error(DC_ERR_SHAPE, "%s: dim %lld out of range for %d-d input", dc_op_names[a->op],
                            (long long)a->p.dim.dim, dx->ndim);
        L = dx->shape[dim];
        s0 = dx->strides[dim];
        s1 = dy->strides[dim];
        s2 = y->strides[dim];
    } else {
        dim = -1;
    }
    const int64_t rows = numel / L;
    const dc_kview *vv[3] = { dx, dy, y };
    const int64_t grab = L >= 4096 ? 1 : 4096 / L; /* as in the forward */
#pragma omp parallel for schedule(dynamic, grab) if (numel >= DC_CPU_PAR_MIN / 4 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[3];
        cpu_row_offsets(3, vv, dim, r, off);
        if (dt == DC_FLOAT32)
            softmax_bwd_row_f32((float *)dx->data + off[0], s0, (const float *)dy->data + off[1], s1,
                                (const float *)y->data + off[2], s2, L, log_out);
        else
            softmax_bwd_row_f64((double *)dx->data + off[0], s0, (const double *)dy->data + off[1], s1,
                                (const double *)y->data + off[2], s2, L, log_out);
    }
    return DC_OK;
}

/* ================================ attention softmax ========================================== */

/* One row of softmax(scale * x) over its first n (unmasked) entries; the rest of the row (masked
 * keys) is 0. Contiguous rows (the scores of q @ k^T are). */
#define DEF_ATTN_ROW(NAME, T)                                                  \
    CPU_SIMD static void NAME(T *y, const T *x, int64_t n, int64_t L, T scale) \
    {                                                                          \
        T m = -INFINITY;                                                       \
        _Pragma("omp simd reduction(max : m)") for (int64_t i = 0; i < n; i++) \
        {                                                                      \
            T z = scale * x[i];                                                \
            m = z > m ? z : m;                                                 \
        }                                                                      \
        double s = 0;                                                          \
        _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < n; i++)   \
        {                                                                      \
            T e = cpu_exp(scale * x[i] - m);                                   \
            y[i] = e;                                                          \
            s += (double)e;                                                    \
        }                                                                      \
        const T inv = (T)(1.0 / s);                                            \
        _Pragma("omp simd") for (int64_t i = 0; i < n; i++) y[i] *= inv;       \
        for (int64_t i = n; i < L; i++) y[i] = 0;                              \
    }
DEF_ATTN_ROW(attn_row_f32, float)
DEF_ATTN_ROW(attn_row_f64, double)

/* dx = scale * y * (dy - sum(dy * y)) over the first n entries; masked keys get 0. */
#define DEF_ATTN_BWD_ROW(NAME, T)                                                                         \
    CPU_SIMD static void NAME(T *dx, const T *dy, const T *y, int64_t n, int64_t L, T scale)              \
    {                                                                                                     \
        double s = 0;                                                                                     \
        _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < n; i++) s += (double)(dy[i] * y[i]); \
        const T ts = (T)s;                                                                                \
        _Pragma("omp simd") for (int64_t i = 0; i < n; i++) dx[i] = scale * y[i] * (dy[i] - ts);          \
        for (int64_t i = n; i < L; i++) dx[i] = 0;                                                        \
    }
DEF_ATTN_BWD_ROW(attn_bwd_row_f32, float)
DEF_ATTN_BWD_ROW(attn_bwd_row_f64, double)

/* The operands of the attention softmax: same dtype, same shape, contiguous, at least 1-d. */
static dc_status attn_check(const dc_kargs *a, int n)
{
    const dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    for (int k = 0; k < n; k++) {
        if (a->t[k].dtype != dt) return cpu_bad_dtype(a->op, a->t[k].dtype);
        if (!cpu_is_contig(&a->t[k]) || a->t[k].ndim < 1 || a->t[k].ndim != a->t[0].ndim)
            return dc_error(DC_ERR_INTERNAL, "%s: operand %d must be contiguous and at least 1-d", dc_op_names[a->op],
                            k);
    }
    return DC_OK;
}

/* Rows of the (..., Tq, L) scores: row r is query r % Tq; with causal it sees its first
 * min(L, query + 1) keys. Rows are handed out ~4K elements at a time, as in softmax. */
typedef struct {
    int64_t L, Tq, rows, grab, numel;
    int causal;
} attn_geom;

static attn_geom attn_geom_of(const dc_kargs *a)
{
    const dc_kview *v = &a->t[0];
    attn_geom g = { v->shape[v->ndim - 1], v->ndim >= 2 ? v->shape[v->ndim - 2] : 1, 0, 0, cpu_numel(v),
                    a->p.attn.causal };
    g.rows = g.L ? g.numel / g.L : 0;
    g.grab = g.L >= 4096 ? 1 : 4096 / (g.L ? g.L : 1);
    return g;
}

static inline int64_t attn_keys(const attn_geom *g, int64_t r)
{
    const int64_t i = r % g->Tq;
    return g->causal && i + 1 < g->L ? i + 1 : g->L;
}

dc_status dc_cpu_attn_softmax(const dc_kargs *a)
{
    DC_TRY(attn_check(a, 2));
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    const attn_geom g = attn_geom_of(a);
    if (g.numel == 0) return DC_OK;
    const int64_t L = g.L;
    const double scale = a->p.attn.scale;
#pragma omp parallel for schedule(dynamic, g.grab) if (g.numel >= DC_CPU_PAR_MIN / 4 && g.rows > 1)
    for (int64_t r = 0; r < g.rows; r++) {
        const int64_t n = attn_keys(&g, r);
        if (x->dtype == DC_FLOAT32)
            attn_row_f32((float *)o->data + r * L, (const float *)x->data + r * L, n, L, (float)scale);
        else
            attn_row_f64((double *)o->data + r * L, (const double *)x->data + r * L, n, L, scale);
    }
    return DC_OK;
}

dc_status dc_cpu_attn_softmax_bwd(const dc_kargs *a)
{
    DC_TRY(attn_check(a, 3));
    const dc_kview *dx = &a->t[0], *dy = &a->t[1], *y = &a->t[2];
    const attn_geom g = attn_geom_of(a);
    if (g.numel == 0) return DC_OK;
    const int64_t L = g.L;
    const double scale = a->p.attn.scale;
#pragma omp parallel for schedule(dynamic, g.grab) if (g.numel >= DC_CPU_PAR_MIN / 4 && g.rows > 1)
    for (int64_t r = 0; r < g.rows; r++) {
        const int64_t n = attn_keys(&g, r);
        if (dx->dtype == DC_FLOAT32)
            attn_bwd_row_f32((float *)dx->data + r * L, (const float *)dy->data + r * L, (const float *)y->data + r * L,
                             n, L, (float)scale);
        else
            attn_bwd_row_f64((double *)dx->data + r * L, (const double *)dy->data + r * L,
                             (const double *)y->data + r * L, n, L, scale);
    }
    return DC_OK;
}

/* ================================ layer norm ================================================= */

static void ln_dims(const dc_kview *x, int64_t *N, int64_t *D)
{
    *D = x->ndim ? x->shape[x->ndim - 1] : 1;
    *N = *D ? cpu_numel(x) / *D : 0;
}

/* Two-pass mean/variance in double (the second pass reads the row from cache): no cancellation
 * when |mean| >> std, unlike sum/sum-of-squares. */
#define DEF_LN_FWD(NAME, T)                                                                                        \
    CPU_SIMD static void NAME(const dc_kargs *a, int64_t N, int64_t D)                                             \
    {                                                                                                              \
        const struct dc_layernorm_params *lp = &a->p.layernorm;                                                    \
        T *Y = (T *)a->t[0].data, *MEAN = (T *)a->t[1].data, *RSTD = (T *)a->t[2].data;                            \
        const T *X = (const T *)a->t[3].data;                                                                      \
        const T *W = lp->has_w ? (const T *)a->t[4].data : NULL, *B = lp->has_b ? (const T *)a->t[5].data : NULL;  \
        const double eps = lp->eps;                                                                                \
        _Pragma("omp parallel for schedule(static) if (N * D >= DC_CPU_PAR_MIN / 2 && N > 1)") for (int64_t n = 0; \
                                                                                                    n < N; n++)    \
        {                                                                                                          \
            const T *x = X + n * D;                                                                                \
            T *y = Y + n * D;                                                                                      \
            double s = 0, v = 0;                                                                                   \
            _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < D; i++) s += (double)x[i];                \
            const double mean = s / (double)D;                                                                     \
            _Pragma("omp simd reduction(+ : v)") for (int64_t i = 0; i < D; i++)                                   \
            {                                                                                                      \
                double d = (double)x[i] - mean;                                                                    \
                v += d * d;                                                                                        \
            }                                                                                                      \
            const double rstd = 1.0 / sqrt(v / (double)D + eps);                                                   \
            MEAN[n] = (T)mean;                                                                                     \
            RSTD[n] = (T)rstd;                                                                                     \
            const T m = (T)mean, r = (T)rstd;                                                                      \
            if (W && B) {                                                                                          \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * r * W[i] + B[i];           \
            } else if (W) {                                                                                        \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * r * W[i];                  \
            } else if (B) {                                                                                        \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * r + B[i];                  \
            } else {                                                                                               \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * r;                         \
            }                                                                                                      \
        }                                                                                                          \
    }
DEF_LN_FWD(ln_fwd_f32, float)
DEF_LN_FWD(ln_fwd_f64, double)

/* Every operand present (bit k of `present`) must share x's dtype and be contiguous: the op layer
 * guarantees this, so a violation is a bug there, not a user error. */
static dc_status ln_check(const dc_kargs *a, int xi, unsigned present, dc_dtype *dt)
{
    *dt = a->t[xi].dtype;
    if (*dt != DC_FLOAT32 && *dt != DC_FLOAT64) return cpu_bad_dtype(a->op, *dt);
    for (int k = 0; k < DC_KARGS_MAX_T; k++) {
        if (!(present >> k & 1u)) continue;
        if (a->t[k].dtype != *dt) return cpu_bad_dtype(a->op, a->t[k].dtype);
        if (!cpu_is_contig(&a->t[k]))
            return dc_error(DC_ERR_INTERNAL, "%s: operand %d must be contiguous", dc_op_names[a->op], k);
    }
    return DC_OK;
}

dc_status dc_cpu_layernorm(const dc_kargs *a)
{
    dc_dtype dt;
    DC_TRY(ln_check(a, 3, 0x0fu | (a->p.layernorm.has_w ? 0x10u : 0) | (a->p.layernorm.has_b ? 0x20u : 0), &dt));
    int64_t N, D;
    ln_dims(&a->t[3], &N, &D);
    if (N == 0 || D == 0) return DC_OK;
    if (dt == DC_FLOAT32)
        ln_fwd_f32(a, N, D);
    else
        ln_fwd_f64(a, N, D);
    return DC_OK;
}

/* Backward of one row range [n0, n1) for one thread; dw/db partials go to pw/pb (double, D). */
#define DEF_LN_BWD(NAME, T)                                                                                      \
    CPU_SIMD static void NAME(const dc_kargs *a, int64_t n0, int64_t n1, int64_t D, double *pw, double *pb)      \
    {                                                                                                            \
        const struct dc_layernorm_params *lp = &a->p.layernorm;                                                  \
        T *DX = (T *)a->t[0].data;                                                                               \
        const T *DY = (const T *)a->t[3].data, *X = (const T *)a->t[4].data;                                     \
        const T *MEAN = (const T *)a->t[5].data, *RSTD = (const T *)a->t[6].data;                                \
        const T *W = lp->has_w ? (const T *)a->t[7].data : NULL;                                                 \
        const double invD = 1.0 / (double)D;                                                                     \
        for (int64_t n = n0; n < n1; n++) {                                                                      \
            const T *x = X + n * D, *dy = DY + n * D;                                                            \
            T *dx = DX + n * D;                                                                                  \
            const T m = MEAN[n], r = RSTD[n];                                                                    \
            double sg = 0, sgx = 0;                                                                              \
            if (W) {                                                                                             \
                _Pragma("omp simd reduction(+ : sg, sgx)") for (int64_t i = 0; i < D; i++)                       \
                {                                                                                                \
                    T g = dy[i] * W[i], xh = (x[i] - m) * r;                                                     \
                    sg += (double)g;                                                                             \
                    sgx += (double)(g * xh);                                                                     \
                }                                                                                                \
            } else {                                                                                             \
                _Pragma("omp simd reduction(+ : sg, sgx)") for (int64_t i = 0; i < D; i++)                       \
                {                                                                                                \
                    T g = dy[i], xh = (x[i] - m) * r;                                                            \
                    sg += (double)g;                                                                             \
                    sgx += (double)(g * xh);                                                                     \
                }                                                                                                \
            }                                                                                                    \
            const T mg = (T)(sg * invD), mgx = (T)(sgx * invD);                                                  \
            if (W) {                                                                                             \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++)                                              \
                {                                                                                                \
                    T xh = (x[i] - m) * r;                                                                       \
                    dx[i] = r * (dy[i] * W[i] - mg - xh * mgx);                                                  \
                }                                                                                                \
            } else {                                                                                             \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++)                                              \
                {                                                                                                \
                    T xh = (x[i] - m) * r;                                                                       \
                    dx[i] = r * (dy[i] - mg - xh * mgx);                                                         \
                }                                                                                                \
            }                                                                                                    \
            if (pw) {                                                                                            \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) pw[i] += (double)(dy[i] * ((x[i] - m) * r)); \
            }                                                                                                    \
            if (pb) {                                                                                            \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) pb[i] += (double)dy[i];                      \
            }                                                                                                    \
        }                                                                                                        \
    }
DEF_LN_BWD(ln_bwd_f32, float)
DEF_LN_BWD(ln_bwd_f64, double)

dc_status dc_cpu_layernorm_bwd(const dc_kargs *a)
{
    dc_dtype dt;
    DC_TRY(ln_check(a, 4, 0x79u | (a->p.layernorm.has_w ? 0x82u : 0) | (a->p.layernorm.has_b ? 0x04u : 0), &dt));
    int64_t N, D;
    ln_dims(&a->t[4], &N, &D);
    if (D == 0) return DC_OK;
    const int has_w = a->p.layernorm.has_w != 0, has_b = a->p.layernorm.has_b != 0;
    const int nparts = has_w + has_b;
    int nthr = N * D >= DC_CPU_PAR_MIN / 2 && N > 1 ? cpu_max_threads() : 1;
    if (nthr > N) nthr = (int)(N ? N : 1);
    double *part = NULL;
    if (nparts) {
        part = calloc((size_t)nthr * (size_t)nparts * (size_t)D, sizeof(double));
        if (!part)
            return dc_error(DC_ERR_NOMEM, "layer_norm_backward: out of memory for %d x %lld partial sums", nthr,
                            (long long)D);
    }
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
        int t = cpu_thread_num(), nt = 1;
#ifdef _OPENMP
        nt = omp_get_num_threads();
#endif
        int64_t chunk = (N + nt - 1) / nt, n0 = t * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
        double *mine = part ? part + (size_t)t * nparts * D : NULL;
        double *pw = has_w ? mine : NULL, *pb = has_b ? mine + (has_w ? D : 0) : NULL;
        if (n0 < n1) {
            if (dt == DC_FLOAT32)
                ln_bwd_f32(a, n0, n1, D, pw, pb);
            else
                ln_bwd_f64(a, n0, n1, D, pw, pb);
        }
    }
    /* Sum the partials in thread order: deterministic for a given thread count. */
    for (int k = 0; k < nparts; k++) {
        char *dst = a->t[k == 0 && has_w ? 1 : 2].data;
#pragma omp parallel for schedule(static) if (D * nthr >= DC_CPU_PAR_MIN)
        for (int64_t i = 0; i < D; i++) {
            double s = 0;
            for (int t = 0; t < nthr; t++) s += part[((size_t)t * nparts + k) * D + i];
            if (dt == DC_FLOAT32)
                ((float *)dst)[i] = (float)s;
            else
                ((double *)dst)[i] = s;
        }
    }
    free(part);
    return DC_OK;
}
