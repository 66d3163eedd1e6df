/* elementwise.c: copy/convert, fill, arange, unary, binary, comparison and where kernels.
 *
 * Each kernel builds a cpu_iter over its views and hands it an inner function that switches on
 * the op once per run, then runs a plain loop: unit-stride runs (the common case after coalescing)
 * get `omp simd` loops, runs with a stride-0 (broadcast) operand get their own loop with the
 * scalar hoisted, anything else a strided loop. <tgmath.h> lets one macro body serve float and
 * double with the single-precision libm calls for float; exp and tanh go through cpu.h's
 * branch-free versions so float loops vectorise. */
#include <stdlib.h>
#include <tgmath.h>

#include "cpu.h"

/* ================================ copy / convert ============================================= */

typedef struct {
    dc_dtype src, dst;
} conv_ctx;

#define CONV_LOOP(TS, TD, EXPR)                                           \
    do {                                                                  \
        if (s[0] == (int64_t)sizeof(TD) && s[1] == (int64_t)sizeof(TS)) { \
            TD *o_ = (TD *)p[0];                                          \
            const TS *i_ = (const TS *)p[1];                              \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)           \
            {                                                             \
                TS x = i_[i];                                             \
                o_[i] = (EXPR);                                           \
            }                                                             \
        } else {                                                          \
            for (int64_t i = 0; i < n; i++) {                             \
                TS x = *(const TS *)(p[1] + i * s[1]);                    \
                *(TD *)(p[0] + i * s[0]) = (EXPR);                        \
            }                                                             \
        }                                                                 \
    } while (0)

static void conv_inner(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    const conv_ctx *c = vctx;
    dc_dtype sd = c->src, dd = c->dst;
    /* The pairs mixed-precision training hits every step get typed loops; the rest go through
     * the scalar load/store helpers. */
    if (sd == DC_FLOAT32 && dd == DC_FLOAT64) {
        CONV_LOOP(float, double, (double)x);
        return;
    }
    if (sd == DC_FLOAT64 && dd == DC_FLOAT32) {
        CONV_LOOP(double, float, (float)x);
        return;
    }
    if (sd == DC_FLOAT32 && dd == DC_BFLOAT16) {
        CONV_LOOP(float, uint16_t, dc_f32_to_bf16(x));
        return;
    }
    if (sd == DC_BFLOAT16 && dd == DC_FLOAT32) {
        CONV_LOOP(uint16_t, float, dc_bf16_to_f32(x));
        return;
    }
    if (sd == DC_FLOAT32 && dd == DC_FLOAT16) {
        CONV_LOOP(float, uint16_t, dc_f32_to_f16(x));
        return;
    }
    if (sd == DC_FLOAT16 && dd == DC_FLOAT32) {
        CONV_LOOP(uint16_t, float, dc_f16_to_f32(x));
        return;
    }
    if (sd == DC_INT64 && dd == DC_FLOAT32) {
        CONV_LOOP(int64_t, float, (float)x);
        return;
    }
    if (sd == DC_INT32 && dd == DC_FLOAT32) {
        CONV_LOOP(int32_t, float, (float)x);
        return;
    }
    if (sd == DC_INT32 && dd == DC_INT64) {
        CONV_LOOP(int32_t, int64_t, (int64_t)x);
        return;
    }
    if (sd == DC_UINT8 && dd == DC_FLOAT32) { /* images */
        CONV_LOOP(uint8_t, float, (float)x);
        return;
    }
    if (sd == DC_BOOL && dd == DC_FLOAT32) {
        CONV_LOOP(uint8_t, float, x ? 1.0f : 0.0f);
        return;
    }
    if (cpu_is_intlike(sd)) {
        for (int64_t i = 0; i < n; i++) cpu_store_i(p[0] + i * s[0], dd, cpu_load_i(p[1] + i * s[1], sd));
    } else {
        for (int64_t i = 0; i < n; i++) cpu_store_f(p[0] + i * s[0], dd, cpu_load_f(p[1] + i * s[1], sd));
    }
}

#define SAME_LOOP(T)                                                                             \
    do {                                                                                         \
        for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) = *(const T *)(p[1] + i * s[1]); \
    } while (0)

static void same_inner(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    size_t es = *(const size_t *)vctx;
    if (s[0] == (int64_t)es && s[1] == (int64_t)es) {
        memcpy(p[0], p[1], (size_t)n * es);
        return;
    }
    switch (es) {
    case 1: SAME_LOOP(uint8_t); break;
    case 2: SAME_LOOP(uint16_t); break;
    case 4: SAME_LOOP(uint32_t); break;
    default: SAME_LOOP(uint64_t); break;
    }
}

/* dst(r, c) = src(r, c) where dst is unit-stride along c and src along r: walk 32x32 tiles so both
 * sides stay in cache instead of one of them striding through memory a whole row apart. */
#define TILE 32
#define TRANSPOSE_TILE(T)                 \
    for (int64_t c = c0; c < c1; c++)     \
        for (int64_t r = r0; r < r1; r++) \
    *(T *)(d + r * drs + c * (int64_t)sizeof(T)) = *(const T *)(sp + r * (int64_t)sizeof(T) + c * scs)

static void copy_transposed(const cpu_iter *it, size_t es)
{
    const int nd = it->ndim;
    const int64_t R = it->shape[nd - 2], C = it->shape[nd - 1];
    const int64_t drs = it->st[0][nd - 2], scs = it->st[1][nd - 1];
    int64_t outer = 1;
    for (int d = 0; d < nd - 2; d++) outer *= it->shape[d];
    const int64_t tr = (R + TILE - 1) / TILE, tc = (C + TILE - 1) / TILE, ntiles = outer * tr * tc;
#pragma omp parallel for schedule(static) if (it->numel >= DC_CPU_PAR_MIN)
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t o = t / (tr * tc), rem = t % (tr * tc);
        int64_t r0 = (rem / tc) * TILE, c0 = (rem % tc) * TILE;
        int64_t r1 = r0 + TILE < R ? r0 + TILE : R, c1 = c0 + TILE < C ? c0 + TILE : C;
        char *d = it->base[0];
        const char *sp = it->base[1];
        for (int dd = nd - 3; dd >= 0; dd--) { /* unravel the batch index */
            int64_t i = o % it->shape[dd];
            o /= it->shape[dd];
            d += i * it->st[0][dd];
            sp += i * it->st[1][dd];
        }
        switch (es) {
        case 1: TRANSPOSE_TILE(uint8_t); break;
        case 2: TRANSPOSE_TILE(uint16_t); break;
        case 4: TRANSPOSE_TILE(uint32_t); break;
        default: TRANSPOSE_TILE(uint64_t); break;
        }
    }
}

dc_status dc_cpu_copy(const dc_kargs *a)
{
    const dc_kview *v[2] = { &a->t[0], &a->t[1] };
    if ((unsigned)v[0]->dtype >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, v[0]->dtype);
    if ((unsigned)v[1]->dtype >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, v[1]->dtype);
    cpu_iter it;
    cpu_iter_init(&it, 2, v, 1);
    if (it.numel == 0) return DC_OK;
    if (v[0]->dtype == v[1]->dtype) {
        size_t es = cpu_esize(v[0]);
        const int nd = it.ndim;
        if (nd >= 2 && it.st[0][nd - 1] == (int64_t)es && it.st[1][nd - 2] == (int64_t)es &&
            it.st[1][nd - 1] != (int64_t)es && it.shape[nd - 1] >= 4 && it.shape[nd - 2] >= 4) {
            copy_transposed(&it, es);
            return DC_OK;
        }
        cpu_iter_run(&it, same_inner, &es, DC_CPU_PAR_MIN * 4);
        return DC_OK;
    }
    conv_ctx c = { v[1]->dtype, v[0]->dtype };
    cpu_iter_run(&it, conv_inner, &c, DC_CPU_PAR_MIN);
    return DC_OK;
}

/* ================================ fill / arange ============================================== */

#define FILL_LOOP(T)                                                         \
    do {                                                                     \
        T val;                                                               \
        memcpy(&val, vctx, sizeof(T));                                       \
        if (s[0] == (int64_t)sizeof(T)) {                                    \
            T *o_ = (T *)p[0];                                               \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o_[i] = val; \
        } else {                                                             \
            for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) = val;   \
        }                                                                    \
    } while (0)

static void fill1(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    FILL_LOOP(uint8_t);
}
static void fill2(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    FILL_LOOP(uint16_t);
}
static void fill4(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    FILL_LOOP(uint32_t);
}
static void fill8(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    FILL_LOOP(uint64_t);
}

dc_status dc_cpu_fill(const dc_kargs *a)
{
    const dc_kview *v[1] = { &a->t[0] };
    if ((unsigned)v[0]->dtype >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, v[0]->dtype);
    uint64_t val = 0; /* the value's bytes, converted once */
    const struct dc_fill_params *fp = &a->p.fill;
    if (fp->is_int && !dc_dtype_is_float(v[0]->dtype))
        cpu_store_i((char *)&val, v[0]->dtype, fp->ivalue); /* exact: int64 never goes through double */
    else
        cpu_store_f((char *)&val, v[0]->dtype, fp->value);
    cpu_iter it;
    cpu_iter_init(&it, 1, v, 1);
    static const cpu_inner_fn fns[9] = { [1] = fill1, [2] = fill2, [4] = fill4, [8] = fill8 };
    cpu_iter_run(&it, fns[cpu_esize(v[0])], &val, DC_CPU_PAR_MIN * 4);
    return DC_OK;
}

dc_status dc_cpu_arange(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    const int64_t n = cpu_numel(o), st = o->ndim ? o->strides[o->ndim - 1] : 1;
    const double start = a->p.arange.start, step = a->p.arange.step;
    /* start + i*step, never accumulated, so the last element has no drift. */
#define ARANGE_LOOP(T, CONV)                                                                                  \
    do {                                                                                                      \
        T *d = (T *)o->data;                                                                                  \
        _Pragma("omp parallel for simd if (n >= DC_CPU_PAR_MIN)") for (int64_t i = 0; i < n; i++) d[i * st] = \
            CONV(start + (double)i * step);                                                                   \
    } while (0)
    switch (o->dtype) {
    case DC_FLOAT32: ARANGE_LOOP(float, (float)); break;
    case DC_FLOAT64: ARANGE_LOOP(double, (double)); break;
    case DC_INT32: ARANGE_LOOP(int32_t, cpu_f2i32); break;
    case DC_INT64: ARANGE_LOOP(int64_t, cpu_f2i); break;
    case DC_INT16: ARANGE_LOOP(int16_t, (int16_t)cpu_f2i); break;
    case DC_INT8: ARANGE_LOOP(int8_t, (int8_t)cpu_f2i); break;
    case DC_UINT8: ARANGE_LOOP(uint8_t, (uint8_t)cpu_f2i); break;
    default: return cpu_bad_dtype(a->op, o->dtype);
    }
#undef ARANGE_LOOP
    return DC_OK;
}

/* ================================ unary ====================================================== */

typedef struct {
    dc_op op;
    double lo, hi, e;
    int has_lo, has_hi;
    atomic_int *zero_div; /* integer floor_divide/remainder: set when a divisor is 0 */
} ew_ctx;

#define UN_LOOP(T, EXPR)                                                \
    do {                                                                \
        if (s[0] == (int64_t)sizeof(T) && s[1] == (int64_t)sizeof(T)) { \
            T *o_ = (T *)p[0];                                          \
            const T *i_ = (const T *)p[1];                              \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)         \
            {                                                           \
                T x = i_[i];                                            \
                o_[i] = (EXPR);                                         \
            }                                                           \
        } else {                                                        \
            for (int64_t i = 0; i < n; i++) {                           \
                T x = *(const T *)(p[1] + i * s[1]);                    \
                *(T *)(p[0] + i * s[0]) = (EXPR);                       \
            }                                                           \
        }                                                               \
    } while (0)

/* Float unary ops. 1/(1+exp(-x)) is already safe at both ends in IEEE arithmetic (exp(-x) -> inf
 * gives 0, -> 0 gives 1), so sigmoid needs no branch and stays vectorisable. */
#define DEF_UNARY_FLOAT(NAME, T)                                                                     \
    CPU_SIMD static void NAME(char **p, const int64_t *s, int64_t n, const void *vctx)               \
    {                                                                                                \
        const ew_ctx *c = vctx;                                                                      \
        const T e = (T)c->e, one = 1, half = (T)0.5;                                                 \
        const T lo = c->has_lo ? (T)c->lo : (T)-INFINITY, hi = c->has_hi ? (T)c->hi : (T)INFINITY;   \
        switch (c->op) {                                                                             \
        case DC_OP_NEG: UN_LOOP(T, -x); break;                                                       \
        case DC_OP_EXP: UN_LOOP(T, cpu_exp(x)); break;                                               \
        case DC_OP_LOG: UN_LOOP(T, log(x)); break;                                                   \
        case DC_OP_SQRT: UN_LOOP(T, sqrt(x)); break;                                                 \
        case DC_OP_RSQRT: UN_LOOP(T, one / sqrt(x)); break;                                          \
        case DC_OP_SIN: UN_LOOP(T, sin(x)); break;                                                   \
        case DC_OP_COS: UN_LOOP(T, cos(x)); break;                                                   \
        case DC_OP_TANH: UN_LOOP(T, cpu_tanh(x)); break;                                             \
        case DC_OP_SIGMOID: UN_LOOP(T, one / (one + cpu_exp(-x))); break;                            \
        case DC_OP_RELU: UN_LOOP(T, x < 0 ? (T)0 : x); break;                                        \
        case DC_OP_GELU_TANH:                                                                        \
            /* 0.5x(1 + tanh(u)) == x * sigmoid(2u): one exp, no tanh */                             \
            UN_LOOP(T, x / (one + cpu_exp((T)-1.5957691216057308 * (x + (T)0.044715 * x * x * x)))); \
            break;                                                                                   \
        case DC_OP_GELU_ERF: UN_LOOP(T, half *x *(one + cpu_erf(x * (T)0.7071067811865476))); break; \
        case DC_OP_SILU: UN_LOOP(T, x / (one + cpu_exp(-x))); break;                                 \
        case DC_OP_ABS: UN_LOOP(T, fabs(x)); break;                                                  \
        case DC_OP_LOG1P: UN_LOOP(T, log1p(x)); break;                                               \
        case DC_OP_EXPM1: UN_LOOP(T, expm1(x)); break;                                               \
        case DC_OP_ERF: UN_LOOP(T, cpu_erf(x)); break;                                               \
        case DC_OP_CLAMP: UN_LOOP(T, x < lo ? lo : (x > hi ? hi : x)); break;                        \
        case DC_OP_POW_SCALAR:                                                                       \
            if (c->e == 2.0)                                                                         \
                UN_LOOP(T, x *x);                                                                    \
            else if (c->e == 1.0)                                                                    \
                UN_LOOP(T, x);                                                                       \
            else                                                                                     \
                UN_LOOP(T, pow(x, e));                                                               \
            break;                                                                                   \
        case DC_OP_RPOW_SCALAR: UN_LOOP(T, pow(e, x)); break;                                        \
        default: break;                                                                              \
        }                                                                                            \
    }
DEF_UNARY_FLOAT(unary_f32, float)
DEF_UNARY_FLOAT(unary_f64, double)

/* Integer unary ops go through the unsigned type so -INT_MIN wraps instead of being UB. */
#define DEF_UNARY_INT(NAME, T, UT, TMIN, TMAX)                                      \
    static void NAME(char **p, const int64_t *s, int64_t n, const void *vctx)       \
    {                                                                               \
        const ew_ctx *c = vctx;                                                     \
        const T lo = c->has_lo ? (T)c->lo : TMIN, hi = c->has_hi ? (T)c->hi : TMAX; \
        switch (c->op) {                                                            \
        case DC_OP_NEG: UN_LOOP(T, (T)(0u - (UT)x)); break;                         \
        case DC_OP_ABS: UN_LOOP(T, x < 0 ? (T)(0u - (UT)x) : x); break;             \
        case DC_OP_CLAMP: UN_LOOP(T, x < lo ? lo : (x > hi ? hi : x)); break;       \
        default: break;                                                             \
        }                                                                           \
    }
DEF_UNARY_INT(unary_i32, int32_t, uint32_t, INT32_MIN, INT32_MAX)
DEF_UNARY_INT(unary_i64, int64_t, uint64_t, INT64_MIN, INT64_MAX)
DEF_UNARY_INT(unary_i16, int16_t, uint32_t, INT16_MIN, INT16_MAX)
DEF_UNARY_INT(unary_i8, int8_t, uint32_t, INT8_MIN, INT8_MAX)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtype-limits" /* x < 0 of an unsigned type: abs is the identity */
DEF_UNARY_INT(unary_ui8, uint8_t, uint32_t, 0, UINT8_MAX)
#pragma GCC diagnostic pop

static ew_ctx ew_ctx_of(const dc_kargs *a)
{
    ew_ctx c = { a->op, 0, 0, 0, 0, 0, NULL };
    if (dc_op_info[a->op].params[0] == 'c') { /* clamp, clamp_backward */
        const struct dc_clamp_params *p = &a->p.clamp;
        c.lo = p->lo, c.hi = p->hi, c.has_lo = p->has_lo, c.has_hi = p->has_hi;
    } else if (a->op == DC_OP_POW_SCALAR || a->op == DC_OP_RPOW_SCALAR) {
        c.e = a->p.scalar.value;
    }
    return c;
}

dc_status dc_cpu_unary(const dc_kargs *a)
{
    const dc_kview *v[2] = { &a->t[0], &a->t[1] };
    dc_dtype dt = v[1]->dtype;
    if (v[0]->dtype != dt) return cpu_bad_dtype(a->op, v[0]->dtype);
    cpu_inner_fn fn;
    int int_ok = a->op == DC_OP_NEG || a->op == DC_OP_ABS || a->op == DC_OP_CLAMP;
    switch (dt) {
    case DC_FLOAT32: fn = unary_f32; break;
    case DC_FLOAT64: fn = unary_f64; break;
    case DC_INT32: fn = int_ok ? unary_i32 : NULL; break;
    case DC_INT64: fn = int_ok ? unary_i64 : NULL; break;
    case DC_INT16: fn = int_ok ? unary_i16 : NULL; break;
    case DC_INT8: fn = int_ok ? unary_i8 : NULL; break;
    case DC_UINT8: fn = int_ok ? unary_ui8 : NULL; break;
    default: fn = NULL; break;
    }
    if (!fn) return cpu_bad_dtype(a->op, dt);
    ew_ctx c = ew_ctx_of(a);
    cpu_iter it;
    cpu_iter_init(&it, 2, v, 1);
    /* Transcendentals are ~10x the cost of a load, so they pay for threads sooner. */
    int cheap = a->op == DC_OP_NEG || a->op == DC_OP_ABS || a->op == DC_OP_RELU || a->op == DC_OP_CLAMP;
    cpu_iter_run(&it, fn, &c, cheap ? DC_CPU_PAR_MIN : DC_CPU_PAR_MIN / 4);
    return DC_OK;
}

/* ================================ binary ===================================================== */

#define BIN_LOOP(T, EXPR)                                                             \
    do {                                                                              \
        const int64_t sz_ = (int64_t)sizeof(T);                                       \
        const char *pa_ = p[1], *pb_ = p[2];                                          \
        if (s[0] == sz_ && s[1] == sz_ && s[2] == sz_) {                              \
            T *o_ = (T *)p[0];                                                        \
            const T *A_ = (const T *)pa_, *B_ = (const T *)pb_;                       \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                       \
            {                                                                         \
                T a = A_[i], b = B_[i];                                               \
                o_[i] = (EXPR);                                                       \
            }                                                                         \
        } else if (s[0] == sz_ && s[1] == sz_ && s[2] == 0) {                         \
            T *o_ = (T *)p[0];                                                        \
            const T *A_ = (const T *)pa_, b = *(const T *)pb_;                        \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                       \
            {                                                                         \
                T a = A_[i];                                                          \
                o_[i] = (EXPR);                                                       \
            }                                                                         \
        } else if (s[0] == sz_ && s[1] == 0 && s[2] == sz_) {                         \
            T *o_ = (T *)p[0];                                                        \
            const T *B_ = (const T *)pb_, a = *(const T *)pa_;                        \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                       \
            {                                                                         \
                T b = B_[i];                                                          \
                o_[i] = (EXPR);                                                       \
            }                                                                         \
        } else {                                                                      \
            for (int64_t i = 0; i < n; i++) {                                         \
                T a = *(const T *)(pa_ + i * s[1]), b = *(const T *)(pb_ + i * s[2]); \
                *(T *)(p[0] + i * s[0]) = (EXPR);                                     \
            }                                                                         \
        }                                                                             \
    } while (0)

/* Derivatives used by the backward helpers, shared by float and double through tgmath. */
#define GELU_TANH_GRAD(T, x)                                                                                           \
    ({                                                                                                                 \
        T x_ = (x), t_ = cpu_tanh((T)0.7978845608028654 * (x_ + (T)0.044715 * x_ * x_ * x_));                          \
        (T)0.5 * ((T)1 + t_) + (T)0.5 * x_ *((T)1 - t_ * t_) * (T)0.7978845608028654 * ((T)1 + (T)0.134145 * x_ * x_); \
    })
#define GELU_ERF_GRAD(T, x)                                         \
    ({                                                              \
        T x_ = (x);                                                 \
        (T)0.5 * ((T)1 + cpu_erf(x_ * (T)0.7071067811865476)) +     \
            x_ *cpu_exp((T)-0.5 * x_ * x_) * (T)0.3989422804014327; \
    })
#define SILU_GRAD(T, x)                                \
    ({                                                 \
        T x_ = (x), s_ = (T)1 / ((T)1 + cpu_exp(-x_)); \
        s_ *((T)1 + x_ * ((T)1 - s_));                 \
    })

/* Python's (and torch's) floor division and modulo for floats: the remainder has the divisor's sign
 * and the quotient is exact where a naive floor(a / b) rounds across an integer (fmod first). */
static inline double floor_div_f(double a, double b)
{
    if (b == 0) return a / b;
    double m = fmod(a, b), d = (a - m) / b;
    if (m != 0 && ((b < 0) != (m < 0))) d -= 1;
    if (d == 0) return copysign(0.0, a / b);
    double f = floor(d);
    return d - f > 0.5 ? f + 1 : f;
}
static inline double remainder_f(double a, double b)
{
    double m = fmod(a, b);
    return (m != 0 && ((b < 0) != (m < 0))) ? m + b : m;
}

/* maximum/minimum propagate NaN from either side, as torch.maximum does. */
#define DEF_BINARY_FLOAT(NAME, T)                                                                  \
    CPU_SIMD static void NAME(char **p, const int64_t *s, int64_t n, const void *vctx)             \
    {                                                                                              \
        const ew_ctx *c = vctx;                                                                    \
        const T lo = c->has_lo ? (T)c->lo : (T)-INFINITY, hi = c->has_hi ? (T)c->hi : (T)INFINITY; \
        switch (c->op) {                                                                           \
        case DC_OP_ADD: BIN_LOOP(T, a + b); break;                                                 \
        case DC_OP_SUB: BIN_LOOP(T, a - b); break;                                                 \
        case DC_OP_MUL: BIN_LOOP(T, a *b); break;                                                  \
        case DC_OP_DIV: BIN_LOOP(T, a / b); break;                                                 \
        case DC_OP_POW: BIN_LOOP(T, pow(a, b)); break;                                             \
        case DC_OP_MAXIMUM: BIN_LOOP(T, (a != a || a > b) ? a : b); break;                         \
        case DC_OP_MINIMUM: BIN_LOOP(T, (a != a || a < b) ? a : b); break;                         \
        case DC_OP_RELU_BWD: BIN_LOOP(T, b > 0 ? a : (T)0); break;                                 \
        case DC_OP_GELU_TANH_BWD: BIN_LOOP(T, a *GELU_TANH_GRAD(T, b)); break;                     \
        case DC_OP_GELU_ERF_BWD: BIN_LOOP(T, a *GELU_ERF_GRAD(T, b)); break;                       \
        case DC_OP_SILU_BWD: BIN_LOOP(T, a *SILU_GRAD(T, b)); break;                               \
        case DC_OP_SIGMOID_BWD: BIN_LOOP(T, a *b *((T)1 - b)); break;                              \
        case DC_OP_TANH_BWD: BIN_LOOP(T, a *((T)1 - b * b)); break;                                \
        case DC_OP_CLAMP_BWD: BIN_LOOP(T, (b >= lo && b <= hi) ? a : (T)0); break;                 \
        case DC_OP_FLOOR_DIVIDE: BIN_LOOP(T, floor_div_f(a, b)); break;                            \
        case DC_OP_REMAINDER: BIN_LOOP(T, remainder_f(a, b)); break;                               \
        case DC_OP_LOG1P_BWD: BIN_LOOP(T, a / ((T)1 + b)); break;                                  \
        case DC_OP_EXPM1_BWD: BIN_LOOP(T, a *(b + (T)1)); break;                                   \
        case DC_OP_ERF_BWD: BIN_LOOP(T, a *(T)1.1283791670955126 * cpu_exp(-b * b)); break;        \
        default: break;                                                                            \
        }                                                                                          \
    }
DEF_BINARY_FLOAT(binary_f32, float)
DEF_BINARY_FLOAT(binary_f64, double)

/* Integer arithmetic wraps (through the unsigned type) instead of being UB on overflow. */
#define DEF_BINARY_INT(NAME, T, UT)                                                                   \
    static void NAME(char **p, const int64_t *s, int64_t n, const void *vctx)                         \
    {                                                                                                 \
        const ew_ctx *c = vctx;                                                                       \
        switch (c->op) {                                                                              \
        case DC_OP_ADD: BIN_LOOP(T, (T)((UT)a + (UT)b)); break;                                       \
        case DC_OP_SUB: BIN_LOOP(T, (T)((UT)a - (UT)b)); break;                                       \
        case DC_OP_MUL: BIN_LOOP(T, (T)((UT)a * (UT)b)); break;                                       \
        case DC_OP_MAXIMUM: BIN_LOOP(T, a > b ? a : b); break;                                        \
        case DC_OP_MINIMUM: BIN_LOOP(T, a < b ? a : b); break;                                        \
        case DC_OP_BITWISE_AND: BIN_LOOP(T, a &b); break;                                             \
        case DC_OP_BITWISE_OR: BIN_LOOP(T, a | b); break;                                             \
        case DC_OP_BITWISE_XOR: BIN_LOOP(T, a ^ b); break;                                            \
        case DC_OP_FLOOR_DIVIDE:                                                                      \
            BIN_LOOP(T, b == 0    ? (atomic_store(c->zero_div, 1), (T)0)                              \
                        : b == -1 ? (T)(0u - (UT)a)                                                   \
                                  : (T)(a / b - ((a % b != 0) && ((a < 0) != (b < 0)))));             \
            break;                                                                                    \
        case DC_OP_REMAINDER:                                                                         \
            BIN_LOOP(T, b == 0    ? (atomic_store(c->zero_div, 1), (T)0)                              \
                        : b == -1 ? (T)0                                                              \
                                  : (T)(a % b + ((a % b != 0 && ((a % b < 0) != (b < 0))) ? b : 0))); \
            break;                                                                                    \
        default: break;                                                                               \
        }                                                                                             \
    }
DEF_BINARY_INT(binary_i32, int32_t, uint32_t)
DEF_BINARY_INT(binary_i64, int64_t, uint64_t)
DEF_BINARY_INT(binary_i16, int16_t, uint32_t)
DEF_BINARY_INT(binary_i8, int8_t, uint32_t)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtype-limits"
DEF_BINARY_INT(binary_ui8, uint8_t, uint32_t)
#pragma GCC diagnostic pop

/* bool: the bitwise ops (torch's & | ^ on masks) and maximum/minimum (or/and). */
static void binary_u8(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    const ew_ctx *c = vctx;
    switch (c->op) {
    case DC_OP_BITWISE_AND:
    case DC_OP_MINIMUM: BIN_LOOP(uint8_t, a & b); break;
    case DC_OP_BITWISE_OR:
    case DC_OP_MAXIMUM: BIN_LOOP(uint8_t, a | b); break;
    case DC_OP_BITWISE_XOR: BIN_LOOP(uint8_t, a ^ b); break;
    default: break;
    }
}

dc_status dc_cpu_binary(const dc_kargs *a)
{
    const dc_kview *v[3] = { &a->t[0], &a->t[1], &a->t[2] };
    dc_dtype dt = v[0]->dtype;
    if (v[1]->dtype != dt) return cpu_bad_dtype(a->op, v[1]->dtype);
    if (v[2]->dtype != dt) return cpu_bad_dtype(a->op, v[2]->dtype);
    const dc_op op = a->op;
    int bitwise = op == DC_OP_BITWISE_AND || op == DC_OP_BITWISE_OR || op == DC_OP_BITWISE_XOR;
    int int_ok = bitwise || op == DC_OP_ADD || op == DC_OP_SUB || op == DC_OP_MUL || op == DC_OP_MAXIMUM ||
                 op == DC_OP_MINIMUM || op == DC_OP_FLOOR_DIVIDE || op == DC_OP_REMAINDER;
    int bool_ok = bitwise || op == DC_OP_MAXIMUM || op == DC_OP_MINIMUM;
    cpu_inner_fn fn;
    switch (dt) {
    case DC_FLOAT32: fn = bitwise ? NULL : binary_f32; break;
    case DC_FLOAT64: fn = bitwise ? NULL : binary_f64; break;
    case DC_INT32: fn = int_ok ? binary_i32 : NULL; break;
    case DC_INT64: fn = int_ok ? binary_i64 : NULL; break;
    case DC_INT16: fn = int_ok ? binary_i16 : NULL; break;
    case DC_INT8: fn = int_ok ? binary_i8 : NULL; break;
    case DC_UINT8: fn = int_ok ? binary_ui8 : NULL; break;
    case DC_BOOL: fn = bool_ok ? binary_u8 : NULL; break;
    default: fn = NULL; break;
    }
    if (!fn) return cpu_bad_dtype(a->op, dt);
    atomic_int zero_div = 0;
    ew_ctx c = ew_ctx_of(a);
    c.zero_div = &zero_div;
    cpu_iter it;
    cpu_iter_init(&it, 3, v, 1);
    int cheap =
        a->op != DC_OP_POW && a->op != DC_OP_GELU_TANH_BWD && a->op != DC_OP_GELU_ERF_BWD && a->op != DC_OP_SILU_BWD;
    cpu_iter_run(&it, fn, &c, cheap ? DC_CPU_PAR_MIN : DC_CPU_PAR_MIN / 4);
    if (atomic_load(&zero_div))
        return dc_error(DC_ERR_VALUE, "ZeroDivisionError: integer %s by zero", dc_op_names[a->op]);
    return DC_OK;
}

/* ================================ comparisons ================================================ */

#define CMP_LOOP(T, EXPR)                                                               \
    do {                                                                                \
        const int64_t sz_ = (int64_t)sizeof(T);                                         \
        uint8_t *o_ = (uint8_t *)p[0];                                                  \
        if (s[0] == 1 && s[1] == sz_ && s[2] == sz_) {                                  \
            const T *A_ = (const T *)p[1], *B_ = (const T *)p[2];                       \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                         \
            {                                                                           \
                T a = A_[i], b = B_[i];                                                 \
                o_[i] = (EXPR);                                                         \
            }                                                                           \
        } else if (s[0] == 1 && s[1] == sz_ && s[2] == 0) {                             \
            const T *A_ = (const T *)p[1], b = *(const T *)p[2];                        \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                         \
            {                                                                           \
                T a = A_[i];                                                            \
                o_[i] = (EXPR);                                                         \
            }                                                                           \
        } else {                                                                        \
            for (int64_t i = 0; i < n; i++) {                                           \
                T a = *(const T *)(p[1] + i * s[1]), b = *(const T *)(p[2] + i * s[2]); \
                o_[i * s[0]] = (EXPR);                                                  \
            }                                                                           \
        }                                                                               \
    } while (0)

#define DEF_COMPARE(NAME, T)                                                  \
    static void NAME(char **p, const int64_t *s, int64_t n, const void *vctx) \
    {                                                                         \
        switch (*(const dc_op *)vctx) {                                       \
        case DC_OP_EQ: CMP_LOOP(T, a == b); break;                            \
        case DC_OP_NE: CMP_LOOP(T, a != b); break;                            \
        case DC_OP_LT: CMP_LOOP(T, a < b); break;                             \
        case DC_OP_LE: CMP_LOOP(T, a <= b); break;                            \
        case DC_OP_GT: CMP_LOOP(T, a > b); break;                             \
        case DC_OP_GE: CMP_LOOP(T, a >= b); break;                            \
        default: break;                                                       \
        }                                                                     \
    }
DEF_COMPARE(cmp_f32, float)
DEF_COMPARE(cmp_f64, double)
DEF_COMPARE(cmp_i32, int32_t)
DEF_COMPARE(cmp_i64, int64_t)
DEF_COMPARE(cmp_u8, uint8_t)
DEF_COMPARE(cmp_i8, int8_t)
DEF_COMPARE(cmp_i16, int16_t)

dc_status dc_cpu_compare(const dc_kargs *a)
{
    const dc_kview *v[3] = { &a->t[0], &a->t[1], &a->t[2] };
    dc_dtype dt = v[1]->dtype;
    if (v[0]->dtype != DC_BOOL) return cpu_bad_dtype(a->op, v[0]->dtype);
    if (v[2]->dtype != dt) return cpu_bad_dtype(a->op, v[2]->dtype);
    cpu_inner_fn fn;
    switch (dt) {
    case DC_FLOAT32: fn = cmp_f32; break;
    case DC_FLOAT64: fn = cmp_f64; break;
    case DC_INT32: fn = cmp_i32; break;
    case DC_INT64: fn = cmp_i64; break;
    case DC_BOOL:
    case DC_UINT8: fn = cmp_u8; break;
    case DC_INT8: fn = cmp_i8; break;
    case DC_INT16: fn = cmp_i16; break;
    default: return cpu_bad_dtype(a->op, dt);
    }
    dc_op op = a->op;
    cpu_iter it;
    cpu_iter_init(&it, 3, v, 1);
    cpu_iter_run(&it, fn, &op, DC_CPU_PAR_MIN);
    return DC_OK;
}

/* ================================ where ====================================================== */

#define WHERE_LOOP(T)                                                                               \
    do {                                                                                            \
        const int64_t sz_ = (int64_t)sizeof(T);                                                     \
        if (s[0] == sz_ && s[1] == 1 && s[2] == sz_ && s[3] == sz_) {                               \
            T *o_ = (T *)p[0];                                                                      \
            const uint8_t *c_ = (const uint8_t *)p[1];                                              \
            const T *A_ = (const T *)p[2], *B_ = (const T *)p[3];                                   \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o_[i] = c_[i] ? A_[i] : B_[i];      \
        } else {                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                         \
                *(T *)(p[0] + i * s[0]) =                                                           \
                    p[1][i * s[1]] ? *(const T *)(p[2] + i * s[2]) : *(const T *)(p[3] + i * s[3]); \
        }                                                                                           \
    } while (0)

static void where1(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    (void)vctx;
    WHERE_LOOP(uint8_t);
}
static void where2(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    (void)vctx;
    WHERE_LOOP(uint16_t);
}
static void where4(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    (void)vctx;
    WHERE_LOOP(uint32_t);
}
static void where8(char **p, const int64_t *s, int64_t n, const void *vctx)
{
    (void)vctx;
    WHERE_LOOP(uint64_t);
}

dc_status dc_cpu_where(const dc_kargs *a)
{
    const dc_kview *v[4] = { &a->t[0], &a->t[1], &a->t[2], &a->t[3] };
    if (v[1]->dtype != DC_BOOL)
        return dc_error(DC_ERR_DTYPE, "where: condition must be bool, got %s", dc_dtype_name(v[1]->dtype));
    dc_dtype dt = v[0]->dtype;
    if ((unsigned)dt >= DC_DTYPE_COUNT) return cpu_bad_dtype(a->op, dt);
    if (v[2]->dtype != dt) return cpu_bad_dtype(a->op, v[2]->dtype);
    if (v[3]->dtype != dt) return cpu_bad_dtype(a->op, v[3]->dtype);
    static const cpu_inner_fn fns[9] = { [1] = where1, [2] = where2, [4] = where4, [8] = where8 };
    cpu_iter it;
    cpu_iter_init(&it, 4, v, 1);
    cpu_iter_run(&it, fns[dc_dtype_size(dt)], NULL, DC_CPU_PAR_MIN);
    return DC_OK;
}
