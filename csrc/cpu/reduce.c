/* reduce.c: SUM / MAX / MIN over any set of dims, and ARGMAX / ARGMIN along one dim.
 *
 * The input's dims are split into kept and reduced ones (each list coalesced). Two strategies:
 *  - inner: the innermost input dim is reduced, so each output element is a reduction over
 *    unit-stride runs; parallel over outputs, or over chunks of the reduction when there are fewer
 *    outputs than threads (a full reduction to one number).
 *  - columns: the innermost input dim is kept and unit-stride (sum over rows of a matrix), so whole
 *    rows are folded into a block of accumulators; parallel over (outer index, column block).
 * float32 sums accumulate in double; integer sums in int64 (wrapping, never UB). MAX/MIN propagate
 * NaN. */
#include <stdlib.h>

#include "cpu.h"

typedef union {
    double d;
    int64_t i;
} acc_t;

typedef struct {
    int nd;
    int64_t shape[DC_MAX_DIMS];
    int64_t in_st[DC_MAX_DIMS];  /* elements */
    int64_t out_st[DC_MAX_DIMS]; /* elements (kept dims only) */
} dimset;

static void dimset_coalesce(dimset *s)
{
    if (s->nd == 0) return;
    int out = s->nd - 1;
    for (int i = s->nd - 2; i >= 0; i--) {
        if (s->in_st[i] == s->in_st[out] * s->shape[out] && s->out_st[i] == s->out_st[out] * s->shape[out]) {
            s->shape[out] *= s->shape[i];
        } else {
            out--;
            s->shape[out] = s->shape[i];
            s->in_st[out] = s->in_st[i];
            s->out_st[out] = s->out_st[i];
        }
    }
    int m = s->nd - out;
    memmove(s->shape, s->shape + out, m * sizeof(int64_t));
    memmove(s->in_st, s->in_st + out, m * sizeof(int64_t));
    memmove(s->out_st, s->out_st + out, m * sizeof(int64_t));
    s->nd = m;
}

typedef struct {
    dc_op op;
    dc_dtype in, out;
    int is_int; /* accumulate in acc.i */
} red_ctx;

/* --- one unit of work: fold a strided run into an accumulator --------------------------------- */

#define SUM_RUN(T, ACC, UT)                                                                                           \
    do {                                                                                                              \
        const T *x = (const T *)p;                                                                                    \
        ACC s_ = 0;                                                                                                   \
        if (st == 1) {                                                                                                \
            _Pragma("omp simd reduction(+ : s_)") for (int64_t i = 0; i < n; i++) s_ = (ACC)((UT)s_ + (UT)(ACC)x[i]); \
        } else {                                                                                                      \
            for (int64_t i = 0; i < n; i++) s_ = (ACC)((UT)s_ + (UT)(ACC)x[i * st]);                                  \
        }                                                                                                             \
        return s_;                                                                                                    \
    } while (0)

static double sum_f32(const char *p, int64_t st, int64_t n)
{
    SUM_RUN(float, double, double);
}
static double sum_f64(const char *p, int64_t st, int64_t n)
{
    SUM_RUN(double, double, double);
}
static int64_t sum_i32(const char *p, int64_t st, int64_t n)
{
    SUM_RUN(int32_t, int64_t, uint64_t);
}
static int64_t sum_i64(const char *p, int64_t st, int64_t n)
{
    SUM_RUN(int64_t, int64_t, uint64_t);
}

/* max with a separate NaN flag: `x > m ? x : m` maps onto maxps, and the flag restores NaN
 * propagation afterwards. */
#define MINMAX_RUN_F(T, CMP, INIT, RED)                                                                \
    do {                                                                                               \
        const T *x = (const T *)p;                                                                     \
        T m = INIT;                                                                                    \
        int nan = 0;                                                                                   \
        if (st == 1) {                                                                                 \
            CPU_PRAGMA(omp simd reduction(RED : m) reduction(| : nan)) for (int64_t i = 0; i < n; i++) \
            {                                                                                          \
                T v = x[i];                                                                            \
                m = v CMP m ? v : m;                                                                   \
                nan |= v != v;                                                                         \
            }                                                                                          \
        } else {                                                                                       \
            for (int64_t i = 0; i < n; i++) {                                                          \
                T v = x[i * st];                                                                       \
                m = v CMP m ? v : m;                                                                   \
                nan |= v != v;                                                                         \
            }                                                                                          \
        }                                                                                              \
        return nan ? (double)NAN : (double)m;                                                          \
    } while (0)
static double max_f32(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_F(float, >, -INFINITY, max);
}
static double min_f32(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_F(float, <, INFINITY, min);
}
static double max_f64(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_F(double, >, -INFINITY, max);
}
static double min_f64(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_F(double, <, INFINITY, min);
}

#define MINMAX_RUN_I(T, CMP, INIT, RED)                                                                        \
    do {                                                                                                       \
        const T *x = (const T *)p;                                                                             \
        T m = INIT;                                                                                            \
        if (st == 1) {                                                                                         \
            CPU_PRAGMA(omp simd reduction(RED : m)) for (int64_t i = 0; i < n; i++) m = x[i] CMP m ? x[i] : m; \
        } else {                                                                                               \
            for (int64_t i = 0; i < n; i++) m = x[i * st] CMP m ? x[i * st] : m;                               \
        }                                                                                                      \
        return m;                                                                                              \
    } while (0)
static int64_t max_i32(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_I(int32_t, >, INT32_MIN, max);
}
static int64_t min_i32(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_I(int32_t, <, INT32_MAX, min);
}
static int64_t max_i64(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_I(int64_t, >, INT64_MIN, max);
}
static int64_t min_i64(const char *p, int64_t st, int64_t n)
{
    MINMAX_RUN_I(int64_t, <, INT64_MAX, min);
}

static acc_t acc_init(const red_ctx *c)
{
    acc_t a;
    if (c->is_int)
        a.i = c->op == DC_OP_SUM ? 0 : (c->op == DC_OP_MAX ? INT64_MIN : INT64_MAX);
    else
        a.d = c->op == DC_OP_SUM ? 0.0 : (c->op == DC_OP_MAX ? -INFINITY : INFINITY);
    return a;
}

static acc_t acc_combine(const red_ctx *c, acc_t a, acc_t b)
{
    if (c->is_int) {
        if (c->op == DC_OP_SUM)
            a.i = (int64_t)((uint64_t)a.i + (uint64_t)b.i);
        else if (c->op == DC_OP_MAX)
            a.i = b.i > a.i ? b.i : a.i;
        else
            a.i = b.i < a.i ? b.i : a.i;
    } else {
        if (c->op == DC_OP_SUM)
            a.d += b.d;
        else if (a.d != a.d || b.d != b.d)
            a.d = NAN;
        else if (c->op == DC_OP_MAX)
            a.d = b.d > a.d ? b.d : a.d;
        else
            a.d = b.d < a.d ? b.d : a.d;
    }
    return a;
}

static acc_t run_fold(const red_ctx *c, const char *p, int64_t st, int64_t n)
{
    acc_t r;
    switch (c->in) {
    case DC_FLOAT32:
        r.d = c->op == DC_OP_SUM ? sum_f32(p, st, n) : c->op == DC_OP_MAX ? max_f32(p, st, n) : min_f32(p, st, n);
        break;
    case DC_FLOAT64:
        r.d = c->op == DC_OP_SUM ? sum_f64(p, st, n) : c->op == DC_OP_MAX ? max_f64(p, st, n) : min_f64(p, st, n);
        break;
    case DC_INT32:
        r.i = c->op == DC_OP_SUM ? sum_i32(p, st, n) : c->op == DC_OP_MAX ? max_i32(p, st, n) : min_i32(p, st, n);
        break;
    default:
        r.i = c->op == DC_OP_SUM ? sum_i64(p, st, n) : c->op == DC_OP_MAX ? max_i64(p, st, n) : min_i64(p, st, n);
        break;
    }
    return r;
}

/* Fold reduced linear indices [start, end) starting from `base`. */
static acc_t fold_range(const red_ctx *c, const dimset *r, const char *base, int64_t start, int64_t end)
{
    acc_t acc = acc_init(c);
    if (start >= end) return acc;
    const size_t es = dc_dtype_size(c->in);
    const int nd = r->nd;
    const int64_t inner = r->shape[nd - 1], ist = r->in_st[nd - 1];
    int64_t idx[DC_MAX_DIMS], rem = start;
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = rem % r->shape[d];
        rem /= r->shape[d];
    }
    while (start < end) {
        int64_t off = 0;
        for (int d = 0; d < nd; d++) off += idx[d] * r->in_st[d];
        int64_t len = inner - idx[nd - 1];
        if (len > end - start) len = end - start;
        acc = acc_combine(c, acc, run_fold(c, base + off * (int64_t)es, ist, len));
        start += len;
        idx[nd - 1] = 0;
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < r->shape[d]) break;
            idx[d] = 0;
        }
    }
    return acc;
}

static void acc_store(const red_ctx *c, char *p, acc_t a)
{
    if (c->is_int)
        cpu_store_i(p, c->out, a.i);
    else
        cpu_store_f(p, c->out, a.d);
}

/* Offsets of kept linear index k in the input and the output (elements). */
static void kept_offsets(const dimset *k, int64_t lin, int64_t *in_off, int64_t *out_off)
{
    int64_t io = 0, oo = 0;
    for (int d = k->nd - 1; d >= 0; d--) {
        int64_t i = lin % k->shape[d];
        lin /= k->shape[d];
        io += i * k->in_st[d];
        oo += i * k->out_st[d];
    }
    *in_off = io;
    *out_off = oo;
}

/* --- the columns strategy ------------------------------------------------------------------- */
#define COLS 512

#define COL_FOLD(T, ACCF, EXPR)                             \
    do {                                                    \
        const T *x = (const T *)row;                        \
        _Pragma("omp simd") for (int64_t j = 0; j < w; j++) \
        {                                                   \
            T v = x[j];                                     \
            (void)v;                                        \
            acc[j].ACCF = (EXPR);                           \
        }                                                   \
    } while (0)

static void fold_row(const red_ctx *c, acc_t *acc, const char *row, int64_t w)
{
    switch (c->in) {
    case DC_FLOAT32:
        if (c->op == DC_OP_SUM)
            COL_FOLD(float, d, acc[j].d + (double)v);
        else if (c->op == DC_OP_MAX)
            COL_FOLD(float, d, (v > acc[j].d || v != v) ? (double)v : acc[j].d);
        else
            COL_FOLD(float, d, (v < acc[j].d || v != v) ? (double)v : acc[j].d);
        break;
    case DC_FLOAT64:
        if (c->op == DC_OP_SUM)
            COL_FOLD(double, d, acc[j].d + v);
        else if (c->op == DC_OP_MAX)
            COL_FOLD(double, d, (v > acc[j].d || v != v) ? v : acc[j].d);
        else
            COL_FOLD(double, d, (v < acc[j].d || v != v) ? v : acc[j].d);
        break;
    case DC_INT32:
        if (c->op == DC_OP_SUM)
            COL_FOLD(int32_t, i, (int64_t)((uint64_t)acc[j].i + (uint64_t)(int64_t)v));
        else if (c->op == DC_OP_MAX)
            COL_FOLD(int32_t, i, v > acc[j].i ? v : acc[j].i);
        else
            COL_FOLD(int32_t, i, v < acc[j].i ? v : acc[j].i);
        break;
    default:
        if (c->op == DC_OP_SUM)
            COL_FOLD(int64_t, i, (int64_t)((uint64_t)acc[j].i + (uint64_t)v));
        else if (c->op == DC_OP_MAX)
            COL_FOLD(int64_t, i, v > acc[j].i ? v : acc[j].i);
        else
            COL_FOLD(int64_t, i, v < acc[j].i ? v : acc[j].i);
        break;
    }
}

static void reduce_columns(const red_ctx *c, const dimset *k, const dimset *r, const char *in, char *out, int64_t R)
{
    const size_t ies = dc_dtype_size(c->in), oes = dc_dtype_size(c->out);
    const int kn = k->nd;
    const int64_t L = k->shape[kn - 1], ost = k->out_st[kn - 1];
    int64_t outer = 1;
    for (int d = 0; d < kn - 1; d++) outer *= k->shape[d];
    dimset ko = *k; /* kept dims without the inner one */
    ko.nd = kn - 1;
    /* column blocks: at most COLS wide, and at least two per thread when there are few outputs, so
     * a (rows, 1152) bias-gradient sum splits evenly over the team */
    const int nthr = cpu_max_threads();
    int64_t bw = outer >= 2 * nthr ? COLS : (L + 2 * nthr - 1) / (2 * nthr);
    bw = bw < 16 ? 16 : bw > COLS ? COLS : (bw + 15) / 16 * 16;
    const int64_t nblk = (L + bw - 1) / bw, ntask = outer * nblk;
    const int par = outer * L * R >= DC_CPU_PAR_MIN && ntask > 1;
    const int f32_sum = c->in == DC_FLOAT32 && c->op == DC_OP_SUM && r->nd == 1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t t = 0; t < ntask; t++) {
        acc_t acc[COLS];
        int64_t o = t / nblk, c0 = (t % nblk) * bw, w = L - c0 < bw ? L - c0 : bw;
        int64_t ioff = 0, ooff = 0;
        if (ko.nd) kept_offsets(&ko, o, &ioff, &ooff);
        const char *base = in + (ioff + c0) * (int64_t)ies;
        if (f32_sum) { /* the common case (bias gradients): one tight loop, double accumulators */
            double sum[COLS];
            for (int64_t j = 0; j < w; j++) sum[j] = 0;
            for (int64_t ri = 0; ri < R; ri++) {
                const float *x = (const float *)base + ri * r->in_st[0];
                _Pragma("omp simd") for (int64_t j = 0; j < w; j++) sum[j] += (double)x[j];
            }
            for (int64_t j = 0; j < w; j++) acc[j].d = sum[j];
        } else {
            acc_t init = acc_init(c);
            for (int64_t j = 0; j < w; j++) acc[j] = init;
            int64_t idx[DC_MAX_DIMS] = { 0 };
            for (int64_t ri = 0; ri < R; ri++) {
                int64_t roff = 0;
                for (int d = 0; d < r->nd; d++) roff += idx[d] * r->in_st[d];
                fold_row(c, acc, base + roff * (int64_t)ies, w);
                for (int d = r->nd - 1; d >= 0; d--) {
                    if (++idx[d] < r->shape[d]) break;
                    idx[d] = 0;
                }
            }
        }
        char *op = out + (ooff + c0 * ost) * (int64_t)oes;
        for (int64_t j = 0; j < w; j++) acc_store(c, op + j * ost * (int64_t)oes, acc[j]);
    }
}

dc_status dc_cpu_reduce(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    red_ctx c = { a->op, x->dtype, o->dtype, 0 };
    switch (x->dtype) {
    case DC_FLOAT32:
    case DC_FLOAT64:
        if (o->dtype != DC_FLOAT32 && o->dtype != DC_FLOAT64) return cpu_bad_dtype(a->op, o->dtype);
        break;
    case DC_INT32:
    case DC_INT64:
        c.is_int = 1;
        if (o->dtype != DC_INT32 && o->dtype != DC_INT64) return cpu_bad_dtype(a->op, o->dtype);
        break;
    default: return cpu_bad_dtype(a->op, x->dtype);
    }
    if (o->ndim != x->ndim)
        return dc_error(DC_ERR_SHAPE, "%s: output has %d dims, input %d", dc_op_names[a->op], o->ndim, x->ndim);
    dimset k = { 0 }, r = { 0 };
    int64_t R = 1, O = 1;
    for (int d = 0; d < x->ndim; d++) {
        int64_t n = x->shape[d];
        if (o->shape[d] == 1 && n != 1) {
            r.shape[r.nd] = n;
            r.in_st[r.nd] = x->strides[d];
            r.out_st[r.nd++] = 0;
            R *= n;
        } else if (o->shape[d] == n) {
            O *= n;
            if (n == 1) continue;
            k.shape[k.nd] = n;
            k.in_st[k.nd] = x->strides[d];
            k.out_st[k.nd++] = o->strides[d];
        } else {
            return dc_error(DC_ERR_SHAPE, "%s: output size %lld does not match input size %lld at dim %d",
                            dc_op_names[a->op], (long long)o->shape[d], (long long)n, d);
        }
    }
    if (O == 0) return DC_OK;
    if (R == 0) {
        if (a->op != DC_OP_SUM)
            return dc_error(DC_ERR_VALUE, "%s of an empty dimension has no identity", dc_op_names[a->op]);
        dc_kargs f = { .op = DC_OP_FILL, .nt = 1 };
        f.t[0] = *o;
        return dc_cpu_fill(&f);
    }
    dimset_coalesce(&k);
    dimset_coalesce(&r);
    if (r.nd == 0) { /* nothing reduced: a single-element fold per output keeps one code path */
        r.nd = 1;
        r.shape[0] = 1;
        r.in_st[0] = 0;
    }
    const size_t ies = dc_dtype_size(c.in), oes = dc_dtype_size(c.out);
    if (k.nd > 0 && k.in_st[k.nd - 1] == 1 && R > 1) {
        reduce_columns(&c, &k, &r, x->data, o->data, R);
        return DC_OK;
    }
    const int nthr = cpu_max_threads();
    if (O >= nthr || O * R < DC_CPU_PAR_MIN || nthr == 1) {
#pragma omp parallel for schedule(static) if (O * R >= DC_CPU_PAR_MIN && O > 1)
        for (int64_t i = 0; i < O; i++) {
            int64_t ioff = 0, ooff = 0;
            if (k.nd) kept_offsets(&k, i, &ioff, &ooff);
            acc_t v = fold_range(&c, &r, x->data + ioff * (int64_t)ies, 0, R);
            acc_store(&c, o->data + ooff * (int64_t)oes, v);
        }
        return DC_OK;
    }
    /* Few outputs, long reductions: split each reduction across the team, partials combined in
     * thread order on this thread. */
    acc_t *part = malloc(sizeof(acc_t) * (size_t)nthr);
    if (!part) return dc_error(DC_ERR_NOMEM, "%s: out of memory for %d partials", dc_op_names[a->op], nthr);
    for (int64_t i = 0; i < O; i++) {
        int64_t ioff = 0, ooff = 0;
        if (k.nd) kept_offsets(&k, i, &ioff, &ooff);
        const char *base = x->data + ioff * (int64_t)ies;
        int used = nthr;
#pragma omp parallel num_threads(nthr)
        {
            int t = cpu_thread_num(), nt = 1;
#ifdef _OPENMP
            nt = omp_get_num_threads();
#endif
            if (t == 0) used = nt;
            int64_t chunk = (R + nt - 1) / nt, b = t * chunk, e = b + chunk < R ? b + chunk : R;
            part[t] = fold_range(&c, &r, base, b, e);
        }
        acc_t v = acc_init(&c);
        for (int t = 0; t < used; t++) v = acc_combine(&c, v, part[t]);
        acc_store(&c, o->data + ooff * (int64_t)oes, v);
    }
    free(part);
    return DC_OK;
}

/* --- argmax / argmin ------------------------------------------------------------------------ */

/* First occurrence wins ties; the first NaN wins outright (NaN counts as the extreme). */
#define ARG_SCAN(T, CMP)                  \
    do {                                  \
        const T *x = (const T *)p;        \
        T b = x[0];                       \
        if (b != b) return 0;             \
        for (int64_t j = 1; j < n; j++) { \
            T v = x[j * st];              \
            if (v != v) return j;         \
            if (v CMP b) {                \
                b = v;                    \
                best = j;                 \
            }                             \
        }                                 \
    } while (0)

static int64_t arg_scan(dc_dtype dt, int is_max, const char *p, int64_t st, int64_t n)
{
    int64_t best = 0;
    switch (dt) {
    case DC_FLOAT32:
        if (is_max)
            ARG_SCAN(float, >);
        else
            ARG_SCAN(float, <);
        break;
    case DC_FLOAT64:
        if (is_max)
            ARG_SCAN(double, >);
        else
            ARG_SCAN(double, <);
        break;
    case DC_INT32:
        if (is_max)
            ARG_SCAN(int32_t, >);
        else
            ARG_SCAN(int32_t, <);
        break;
    default:
        if (is_max)
            ARG_SCAN(int64_t, >);
        else
            ARG_SCAN(int64_t, <);
        break;
    }
    return best;
}

dc_status dc_cpu_argreduce(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    dc_dtype dt = x->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_INT32 && dt != DC_INT64) return cpu_bad_dtype(a->op, dt);
    if (o->dtype != DC_INT64) return cpu_bad_dtype(a->op, o->dtype);
    int dim = (int)a->p.dim.dim;
    if (x->ndim == 0) {
        *(int64_t *)o->data = 0;
        return DC_OK;
    }
    if (dim < 0) dim += x->ndim;
    if (dim < 0 || dim >= x->ndim || o->ndim != x->ndim)
        return dc_error(DC_ERR_SHAPE, "%s: bad dim %lld for %d-d input", dc_op_names[a->op], (long long)a->p.dim.dim,
                        x->ndim);
    const int64_t n = x->shape[dim], st = x->strides[dim], rows = n ? cpu_numel(x) / n : 0;
    if (n == 0) {
        int64_t others = 1;
        for (int d = 0; d < x->ndim; d++) others *= d == dim ? 1 : x->shape[d];
        if (others == 0) return DC_OK;
        return dc_error(DC_ERR_VALUE, "%s of an empty dimension (dim %d has size 0)", dc_op_names[a->op], dim);
    }
    const int is_max = a->op == DC_OP_ARGMAX;
    const size_t es = dc_dtype_size(dt);
    /* Output dims match the input's except `dim` (size 1), so one unravel serves both views. */
    dc_kview xv = *x;
    const dc_kview *vv[2] = { &xv, o };
#pragma omp parallel for schedule(static) if (rows * n >= DC_CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[2];
        cpu_row_offsets(2, vv, dim, r, off);
        ((int64_t *)o->data)[off[1]] = arg_scan(dt, is_max, x->data + off[0] * (int64_t)es, st, n);
    }
    return DC_OK;
}
