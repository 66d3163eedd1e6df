/* optim.c: fused optimizer steps (SGD, AdamW), the norm accumulation gradient clipping uses, and
 * in-place scaling.
 *
 * Each step is one pass over param/grad/state, in the param's own precision, with PyTorch's
 * update order so results match torch.optim to rounding. NORM_POW accumulates into a float64
 * scalar across calls (one call per parameter tensor); its parallel partial sums are combined in
 * thread order. */
#include <stdlib.h>
#include <tgmath.h>

#include "cpu.h"

static dc_status check_contig(const dc_kargs *a, int n)
{
    const dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    const int64_t numel = cpu_numel(&a->t[0]);
    for (int k = 0; k < n; k++) {
        if (a->t[k].dtype != dt) return cpu_bad_dtype(a->op, a->t[k].dtype);
        if (cpu_numel(&a->t[k]) != numel)
            return dc_error(DC_ERR_SHAPE, "%s: operand %d has %lld elements, param has %lld", dc_op_names[a->op], k,
                            (long long)cpu_numel(&a->t[k]), (long long)numel);
        if (!cpu_is_contig(&a->t[k]))
            return dc_error(DC_ERR_INTERNAL, "%s: operand %d must be contiguous", dc_op_names[a->op], k);
    }
    return DC_OK;
}

/* ================================ SGD ======================================================== */

#define DEF_SGD(NAME, T)                                                                          \
    CPU_SIMD static void NAME(const dc_kargs *a, int64_t n)                                       \
    {                                                                                             \
        T *p = (T *)a->t[0].data;                                                                 \
        const T *gr = (const T *)a->t[1].data;                                                    \
        const struct dc_sgd_params *hp = &a->p.sgd;                                               \
        T *buf = hp->momentum != 0 ? (T *)a->t[2].data : NULL;                                    \
        const T lr = (T)hp->lr, mom = (T)hp->momentum, damp1 = (T)(1.0 - hp->dampening);          \
        const T wd = (T)hp->weight_decay, sign = hp->maximize ? (T)-1 : (T)1;                     \
        const int nesterov = hp->nesterov != 0, first = hp->first != 0;                           \
        _Pragma("omp parallel for simd if (n >= DC_CPU_PAR_MIN)") for (int64_t i = 0; i < n; i++) \
        {                                                                                         \
            T g = sign * gr[i] + wd * p[i];                                                       \
            if (buf) {                                                                            \
                T b = first ? g : mom * buf[i] + damp1 * g;                                       \
                buf[i] = b;                                                                       \
                g = nesterov ? g + mom * b : b;                                                   \
            }                                                                                     \
            p[i] -= lr * g;                                                                       \
        }                                                                                         \
    }
DEF_SGD(sgd_f32, float)
DEF_SGD(sgd_f64, double)

dc_status dc_cpu_sgd(const dc_kargs *a)
{
    DC_TRY(check_contig(a, a->p.sgd.momentum != 0 ? 3 : 2));
    const int64_t n = cpu_numel(&a->t[0]);
    if (a->t[0].dtype == DC_FLOAT32)
        sgd_f32(a, n);
    else
        sgd_f64(a, n);
    return DC_OK;
}

/* ================================ AdamW ====================================================== */

#define DEF_ADAMW(NAME, T)                                                                            \
    CPU_SIMD static void NAME(const dc_kargs *a, int64_t n)                                           \
    {                                                                                                 \
        T *p = (T *)a->t[0].data, *m = (T *)a->t[2].data, *v = (T *)a->t[3].data;                     \
        const T *gr = (const T *)a->t[1].data;                                                        \
        const struct dc_adamw_params *hp = &a->p.adamw;                                               \
        const T b1 = (T)hp->beta1, b2 = (T)hp->beta2, eps = (T)hp->eps;                               \
        const T decay = (T)(1.0 - hp->lr * hp->weight_decay);                                         \
        const T step = (T)(hp->lr / hp->bias_correction1);                                            \
        const T inv_sqrt_bc2 = (T)(1.0 / sqrt(hp->bias_correction2));                                 \
        const T sign = hp->maximize ? (T)-1 : (T)1;                                                   \
        _Pragma("omp parallel for simd if (n >= DC_CPU_PAR_MIN / 2)") for (int64_t i = 0; i < n; i++) \
        {                                                                                             \
            T g = sign * gr[i];                                                                       \
            T mi = b1 * m[i] + ((T)1 - b1) * g;                                                       \
            T vi = b2 * v[i] + ((T)1 - b2) * g * g;                                                   \
            m[i] = mi;                                                                                \
            v[i] = vi;                                                                                \
            p[i] = p[i] * decay - step * mi / (sqrt(vi) * inv_sqrt_bc2 + eps);                        \
        }                                                                                             \
    }
DEF_ADAMW(adamw_f32, float)
DEF_ADAMW(adamw_f64, double)

dc_status dc_cpu_adamw(const dc_kargs *a)
{
    DC_TRY(check_contig(a, 4));
    const struct dc_adamw_params *hp = &a->p.adamw;
    if (!(hp->bias_correction1 > 0) || !(hp->bias_correction2 > 0))
        return dc_error(DC_ERR_VALUE, "adamw: bias corrections must be > 0, got %g and %g", hp->bias_correction1,
                        hp->bias_correction2);
    const int64_t n = cpu_numel(&a->t[0]);
    if (a->t[0].dtype == DC_FLOAT32)
        adamw_f32(a, n);
    else
        adamw_f64(a, n);
    return DC_OK;
}

/* ================================ norm ======================================================= */

typedef struct {
    double p;
    int kind;     /* 0: general pow, 1: p=1, 2: p=2, 3: max (p=inf), 4: count nonzero (p=0) */
    double *part; /* one slot per thread, 8 doubles apart (no false sharing) */
    dc_dtype dt;
} norm_ctx;

#define NORM_RUN(T)                                                                                                \
    do {                                                                                                           \
        const T *x = (const T *)p[0];                                                                              \
        const int64_t st = s[0] / (int64_t)sizeof(T);                                                              \
        double acc = 0;                                                                                            \
        switch (c->kind) {                                                                                         \
        case 1:                                                                                                    \
            _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; i++) acc += (double)fabs(x[i * st]); \
            break;                                                                                                 \
        case 2:                                                                                                    \
            _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; i++)                                 \
            {                                                                                                      \
                double v = (double)x[i * st];                                                                      \
                acc += v * v;                                                                                      \
            }                                                                                                      \
            break;                                                                                                 \
        case 3:                                                                                                    \
            for (int64_t i = 0; i < n; i++) {                                                                      \
                double v = fabs((double)x[i * st]);                                                                \
                if (v > acc || v != v) acc = v != v ? v : (acc != acc ? acc : v);                                  \
            }                                                                                                      \
            break;                                                                                                 \
        case 4:                                                                                                    \
            for (int64_t i = 0; i < n; i++) acc += x[i * st] != 0;                                                 \
            break;                                                                                                 \
        default:                                                                                                   \
            for (int64_t i = 0; i < n; i++) acc += pow(fabs((double)x[i * st]), c->p);                             \
            break;                                                                                                 \
        }                                                                                                          \
        double *slot = &c->part[8 * cpu_thread_num()];                                                             \
        if (c->kind == 3)                                                                                          \
            *slot = (acc > *slot || acc != acc) ? acc : *slot;                                                     \
        else                                                                                                       \
            *slot += acc;                                                                                          \
    } while (0)

static void norm_inner(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    const norm_ctx *c = vctx;
    if (c->dt == DC_FLOAT32)
        NORM_RUN(float);
    else
        NORM_RUN(double);
}

dc_status dc_cpu_norm_pow(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *x = &a->t[1];
    if (o->dtype != DC_FLOAT64) return cpu_bad_dtype(a->op, o->dtype);
    if (x->dtype != DC_FLOAT32 && x->dtype != DC_FLOAT64) return cpu_bad_dtype(a->op, x->dtype);
    const double pv = a->p.norm.p;
    norm_ctx c = { pv, 0, NULL, x->dtype };
    if (pv == INFINITY)
        c.kind = 3;
    else if (pv == 1.0)
        c.kind = 1;
    else if (pv == 2.0)
        c.kind = 2;
    else if (pv == 0.0)
        c.kind = 4;
    else if (!(pv > 0))
        return dc_error(DC_ERR_VALUE, "norm: order %g is not supported (use p > 0, 0 or inf)", pv);
    const int nthr = cpu_max_threads();
    c.part = calloc((size_t)nthr * 8, sizeof(double));
    if (!c.part) return dc_error(DC_ERR_NOMEM, "norm: out of memory for %d partial sums", nthr);
    const dc_kview *v[1] = { x };
    cpu_iter it;
    cpu_iter_init(&it, 1, v, 1);
    cpu_iter_run(&it, norm_inner, &c, DC_CPU_PAR_MIN);
    double *out = (double *)o->data, r = *out;
    for (int t = 0; t < nthr; t++) {
        double v = c.part[8 * t];
        if (c.kind == 3)
            r = (v > r || v != v) ? v : r;
        else
            r += v;
    }
    *out = r;
    free(c.part);
    return DC_OK;
}

/* ================================ scale ====================================================== */

#define SCALE_RUN(T)                                                       \
    do {                                                                   \
        const T f = (T) * (const double *)vctx;                            \
        if (s[0] == (int64_t)sizeof(T)) {                                  \
            T *x = (T *)p[0];                                              \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) x[i] *= f; \
        } else {                                                           \
            for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) *= f;  \
        }                                                                  \
    } while (0)
static void scale_f32(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    SCALE_RUN(float);
}
static void scale_f64(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    SCALE_RUN(double);
}

dc_status dc_cpu_scale(const dc_kargs *a)
{
    const dc_kview *v[1] = { &a->t[0] };
    const dc_dtype dt = v[0]->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    cpu_iter it;
    cpu_iter_init(&it, 1, v, 1);
    double factor = a->p.scale.factor;
    if (a->p.scale.clip) { /* the clip_grad_norm_ factor from the norm accumulator t1 */
        if (a->nt < 2 || a->t[1].dtype != DC_FLOAT64)
            return dc_error(DC_ERR_INTERNAL, "scale: clip needs the float64 norm accumulator as operand 1");
        double acc = *(const double *)a->t[1].data, p = a->p.scale.norm_p;
        double total = isinf(p) ? acc : pow(acc, 1.0 / p);
        double coef = a->p.scale.max_norm / (total + 1e-6);
        factor = coef > 1.0 ? 1.0 : coef; /* NaN stays NaN, as torch's clamp(max=1) */
    }
    cpu_iter_run(&it, dt == DC_FLOAT32 ? scale_f32 : scale_f64, &factor, DC_CPU_PAR_MIN);
    return DC_OK;
}
