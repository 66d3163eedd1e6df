/* test_cpu_kernels.c: every CPU kernel against a plain reference loop, on small random
 * strided / transposed / broadcast views, plus a few sizes large enough to take the OpenMP paths,
 * the index bounds errors and the backend table itself.
 *
 * Build and run from the repository root (no Makefile needed):
 *   gcc -O2 -fopenmp -std=c11 -Icsrc/core -o /tmp/test_cpu_kernels tests/c/test_cpu_kernels.c \
 *       csrc/cpu/?*.c csrc/core/status.c csrc/core/dtype.c csrc/core/backend.c -lopenblas -lm \
 *     && /tmp/test_cpu_kernels
 * Sanitizers: add -g -fsanitize=address,undefined -fno-omit-frame-pointer to the same line.
 * Prints "N passed, M failed"; exits 1 on any failure. The check counters, the random strided views
 * and the element access the tests share are in harness.h. */
#include "harness.h"

/* ================================ table ====================================================== */
static void test_table(void)
{
    BE = dc_cpu_backend_get();
    int all = 1;
    for (int k = 0; k < DC_OP_COUNT; k++)
        if (!BE->kernels[k]) {
            all = 0;
            printf("  empty slot %s\n", dc_op_names[k]);
        }
    check(all, "every kernel slot filled");
    check(BE->device_count() == 1, "device_count");
    dc_device dev = { DC_CPU, 0 };
    void *p = NULL;
    check(BE->alloc(dev, 0, &p) == DC_OK && p, "alloc(0) gives a pointer");
    BE->free(dev, p);
    check(BE->alloc(dev, 1000, &p) == DC_OK && ((uintptr_t)p & 63) == 0, "alloc 64-byte aligned");
    char src[16] = "hello", dst[16] = { 0 };
    check(BE->to_host(dev, dst, src, 6) == DC_OK && !strcmp(dst, "hello"), "to_host");
    check(BE->from_host(dev, p, src, 6) == DC_OK && !strcmp(p, "hello"), "from_host");
    check(BE->synchronize(dev) == DC_OK, "synchronize");
    BE->free(dev, p);
}

/* ================================ copy / fill / arange ======================================= */
static double convert_ref(double x, dc_dtype src, dc_dtype dst)
{
    char tmp[8];
    if (cpu_is_intlike(src))
        cpu_store_i(tmp, dst, (int64_t)x);
    else
        cpu_store_f(tmp, dst, x);
    return cpu_load_f(tmp, dst);
}

static void test_copy(void)
{
    const int64_t *sh = SH(3, 4, 5);
    for (int s = 0; s < DC_DTYPE_COUNT; s++)
        for (int d = 0; d < DC_DTYPE_COUNT; d++)
            for (int mode = 0; mode < 3; mode++) {
                dc_kview x = mkr(s, 3, sh, mode, mode == 2 ? 2u : 0u, -7, 7);
                dc_kview o = mode == 1 ? mk(d, 3, sh, TRANS, 0) : mk_out(d, 3, sh);
                dc_kargs a = { .op = DC_OP_COPY, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                int ok = K(&a) == DC_OK;
                int64_t idx[3];
                for (int64_t i = 0; i < 60 && ok; i++) {
                    unravel(3, sh, i, idx);
                    ok = get(&o, idx) == convert_ref(get(&x, idx), s, d);
                }
                check(ok, "copy %s -> %s mode %d", DT[s], DT[d], mode);
            }
    /* conversion rules spelled out */
    float fs[4] = { -2.7f, 2.7f, 0.5f, 0.0f };
    int32_t is[4];
    uint8_t bs[4];
    dc_kview x = { .data = (char *)fs, .ndim = 1, .shape = { 4 }, .strides = { 1 }, .dtype = DC_FLOAT32 };
    dc_kview oi = { .data = (char *)is, .ndim = 1, .shape = { 4 }, .strides = { 1 }, .dtype = DC_INT32 };
    dc_kview ob = { .data = (char *)bs, .ndim = 1, .shape = { 4 }, .strides = { 1 }, .dtype = DC_BOOL };
    dc_kargs a = { .op = DC_OP_COPY, .nt = 2 };
    a.t[0] = oi;
    a.t[1] = x;
    K(&a);
    check(is[0] == -2 && is[1] == 2 && is[2] == 0, "float->int truncates toward zero");
    a.t[0] = ob;
    K(&a);
    check(bs[0] == 1 && bs[2] == 1 && bs[3] == 0, "float->bool is nonzero");
    /* big transposed and contiguous copies (tile path, memcpy path, threads) */
    for (int dt = 0; dt < 2; dt++) {
        const int64_t *bsh = SH(300, 257);
        dc_kview bx = mk(dt, 2, bsh, TRANS, 0), bo = mk_out(dt, 2, bsh);
        a.t[0] = bo;
        a.t[1] = bx;
        int ok = K(&a) == DC_OK;
        int64_t idx[2];
        for (int64_t i = 0; i < 300 * 257 && ok; i++) {
            unravel(2, bsh, i, idx);
            ok = get(&bo, idx) == get(&bx, idx);
        }
        check(ok, "big transposed copy %s", DT[dt]);
        /* write into a transposed destination from a contiguous source */
        dc_kview cx = mk(dt, 2, bsh, CONTIG, 0), co = mk(dt, 2, bsh, TRANS, 0);
        a.t[0] = co;
        a.t[1] = cx;
        ok = K(&a) == DC_OK;
        for (int64_t i = 0; i < 300 * 257 && ok; i++) {
            unravel(2, bsh, i, idx);
            ok = get(&co, idx) == get(&cx, idx);
        }
        check(ok, "big copy into transposed %s", DT[dt]);
    }
    const int64_t *lsh = SH(200001);
    dc_kview lx = mk(DC_FLOAT32, 1, lsh, CONTIG, 0), lo = mk_out(DC_FLOAT32, 1, lsh);
    a.t[0] = lo;
    a.t[1] = lx;
    check(K(&a) == DC_OK && !memcmp(lo.data, lx.data, 200001 * 4), "big contiguous copy");
    /* scalar (0-d) copy */
    double one = 3.5;
    float outf = 0;
    dc_kview s0 = { .data = (char *)&one, .ndim = 0, .dtype = DC_FLOAT64 };
    dc_kview s1 = { .data = (char *)&outf, .ndim = 0, .dtype = DC_FLOAT32 };
    a.t[0] = s1;
    a.t[1] = s0;
    check(K(&a) == DC_OK && outf == 3.5f, "0-d copy");
}

static void test_fill_arange(void)
{
    const int64_t *sh = SH(4, 6);
    for (int d = 0; d < DC_DTYPE_COUNT; d++) {
        dc_kview o = mk(d, 2, sh, STEP, 0);
        dc_kargs a = { .op = DC_OP_FILL, .nt = 1 };
        a.t[0] = o;
        a.p.fill.value = d == DC_BOOL ? 1 : 3;
        int ok = K(&a) == DC_OK;
        int64_t idx[2];
        for (int64_t i = 0; i < 24 && ok; i++) {
            unravel(2, sh, i, idx);
            ok = get(&o, idx) == a.p.fill.value;
        }
        check(ok, "fill %s", DT[d]);
    }
    dc_dtype ads[] = { DC_FLOAT32, DC_FLOAT64, DC_INT32, DC_INT64 };
    for (int k = 0; k < 4; k++) {
        dc_kview o = mk_out(ads[k], 1, SH(50000));
        dc_kargs a = { .op = DC_OP_ARANGE, .nt = 1 };
        a.t[0] = o;
        a.p.arange.start = 2;
        a.p.arange.step = 3;
        int ok = K(&a) == DC_OK;
        for (int64_t i = 0; i < 50000 && ok; i++) ok = get(&o, &i) == convert_ref(2 + 3.0 * i, DC_FLOAT64, ads[k]);
        check(ok, "arange %s", DT[ads[k]]);
    }
    dc_kview o = mk_out(DC_FLOAT64, 1, SH(11));
    dc_kargs a = { .op = DC_OP_ARANGE, .nt = 1 };
    a.t[0] = o;
    a.p.arange.start = 0;
    a.p.arange.step = 0.1;
    K(&a);
    int64_t last = 10;
    check(get(&o, &last) == 10 * 0.1, "arange computes i*step, not a running sum");
    dc_kview ob = mk_out(DC_BOOL, 1, SH(3));
    a.t[0] = ob;
    check(K(&a) == DC_ERR_DTYPE && strstr(dc_last_error(), "arange does not support bool"), "arange bool error: %s",
          dc_last_error());
}

/* ================================ random ===================================================== */
static void test_random(void)
{
    const int64_t N = 100003;
    const uint64_t seed = 42, off = 1000;
    for (int d = 0; d < 2; d++) {
        dc_kview o = mk_out(d, 1, &N);
        dc_kargs a = { .op = DC_OP_RAND, .nt = 1 };
        a.t[0] = o;
        a.p.random.seed = seed;
        a.p.random.offset = off;
        int ok = K(&a) == DC_OK;
        double sum = 0;
        for (int64_t j = 0; j < N && ok; j++) {
            uint64_t u = dc_cpu_rng_u64(seed, off + j);
            double want = d == 0 ? (double)(u >> 40) * 0x1.0p-24 : (double)(u >> 11) * 0x1.0p-53;
            double g = get(&o, &j);
            ok = g == want && g >= 0 && g < 1;
            sum += g;
        }
        check(ok && fabs(sum / N - 0.5) < 0.01, "rand %s (mean %g)", DT[d], sum / N);
        /* the same numbers on one thread, and drawing the tail separately continues the stream */
        omp_set_num_threads(1);
        dc_kview o1 = mk_out(d, 1, &N);
        a.t[0] = o1;
        K(&a);
        omp_set_num_threads(omp_get_num_procs());
        check(!memcmp(o.data, o1.data, N * dc_dtype_size(d)), "rand %s independent of threads", DT[d]);
        dc_kview tail = mk_out(d, 1, SH(10));
        a.t[0] = tail;
        a.p.random.offset = off + 500;
        K(&a);
        check(!memcmp(tail.data, o.data + 500 * dc_dtype_size(d), 10 * dc_dtype_size(d)), "rand %s offsets", DT[d]);

        dc_kview z = mk_out(d, 1, &N);
        dc_kargs b = { .op = DC_OP_RANDN, .nt = 1 };
        b.t[0] = z;
        b.p.random.seed = seed;
        b.p.random.offset = off;
        ok = K(&b) == DC_OK;
        double m = 0, v = 0;
        for (int64_t j = 0; j < N; j++) {
            double g = get(&z, &j);
            m += g;
            v += g * g;
            ok &= isfinite(g);
        }
        m /= N;
        v = v / N - m * m;
        double u1 = ((double)(dc_cpu_rng_u64(seed, off + 6) >> 11) + 1) * 0x1.0p-53;
        double u2 = (double)(dc_cpu_rng_u64(seed, off + 7) >> 11) * 0x1.0p-53;
        double want3 = sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
        int64_t j3 = 3;
        check(ok && fabs(m) < 0.02 && fabs(v - 1) < 0.03 && close_to(get(&z, &j3), want3, tol_of(d)),
              "randn %s (mean %g var %g)", DT[d], m, v);
    }
    dc_dtype ids[] = { DC_INT32, DC_INT64, DC_FLOAT32, DC_FLOAT64 };
    for (int k = 0; k < 4; k++) {
        dc_kview o = mk_out(ids[k], 1, &N);
        dc_kargs a = { .op = DC_OP_RANDINT, .nt = 1 };
        a.t[0] = o;
        a.p.random = (struct dc_random_params){ .seed = 7, .offset = 0, .low = -3, .high = 4 };
        int ok = K(&a) == DC_OK, seen[7] = { 0 };
        for (int64_t j = 0; j < N && ok; j++) {
            double g = get(&o, &j);
            ok = g >= -3 && g < 4 && g == floor(g);
            if (ok) seen[(int)g + 3] = 1;
        }
        for (int t = 0; t < 7; t++) ok &= seen[t];
        check(ok, "randint %s", DT[ids[k]]);
    }
}

/* ================================ unary ====================================================== */
static double unary_ref(dc_op op, double x, double f0, double f1, int hl, int hh)
{
    switch (op) {
    case DC_OP_NEG: return -x;
    case DC_OP_EXP: return exp(x);
    case DC_OP_LOG: return log(x);
    case DC_OP_SQRT: return sqrt(x);
    case DC_OP_RSQRT: return 1 / sqrt(x);
    case DC_OP_SIN: return sin(x);
    case DC_OP_COS: return cos(x);
    case DC_OP_TANH: return tanh(x);
    case DC_OP_SIGMOID: return 1 / (1 + exp(-x));
    case DC_OP_RELU: return x > 0 ? x : 0;
    case DC_OP_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case DC_OP_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2)));
    case DC_OP_SILU: return x / (1 + exp(-x));
    case DC_OP_ABS: return fabs(x);
    case DC_OP_LOG1P: return log1p(x);
    case DC_OP_EXPM1: return expm1(x);
    case DC_OP_ERF: return erf(x);
    case DC_OP_CLAMP: return (hl && x < f0) ? f0 : (hh && x > f1) ? f1 : x;
    case DC_OP_POW_SCALAR: return pow(x, f0);
    case DC_OP_RPOW_SCALAR: return pow(f0, x);
    default: return NAN;
    }
}

static void test_unary(void)
{
    const int64_t *sh = SH(5, 7, 3);
    for (int op = 0; op < DC_OP_COUNT; op++)
        for (int d = 0; d < 6 && (dc_op_is(op, DC_FAM_UNARY) || dc_op_is(op, DC_FAM_SCALAR)); d++) {
            int int_ok = op == DC_OP_NEG || op == DC_OP_ABS || op == DC_OP_CLAMP;
            if (d == DC_BFLOAT16 || d == DC_FLOAT16) continue;
            int pos =
                op == DC_OP_LOG || op == DC_OP_SQRT || op == DC_OP_RSQRT || op == DC_OP_POW_SCALAR || op == DC_OP_LOG1P;
            for (int variant = 0; variant < (op == DC_OP_CLAMP ? 3 : op == DC_OP_POW_SCALAR ? 3 : 1); variant++) {
                dc_kview x = mkr(d, 3, sh, variant == 1 ? STEP : TRANS, 0, pos ? 0.1 : -6, pos ? 4 : 6);
                dc_kview o = mk_out(d, 3, sh);
                dc_kargs a = { .op = op, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                double f0 = op == DC_OP_CLAMP ? -1 : op == DC_OP_POW_SCALAR ? (double[]){ 3, 2, 0.5 }[variant] : 1.7;
                if (op == DC_OP_CLAMP)
                    a.p.clamp =
                        (struct dc_clamp_params){ .lo = f0, .hi = 2, .has_lo = variant != 2, .has_hi = variant != 1 };
                else
                    a.p.scalar.value = f0;
                dc_status st = K(&a);
                if (d >= DC_INT32 && !int_ok) {
                    check(st == DC_ERR_DTYPE, "%s %s rejected", dc_op_names[op], DT[d]);
                    continue;
                }
                int ok = st == DC_OK;
                int64_t idx[3];
                for (int64_t i = 0; i < 105 && ok; i++) {
                    unravel(3, sh, i, idx);
                    double want = unary_ref(op, get(&x, idx), f0, 2, variant != 2, variant != 1);
                    ok = close_to(get(&o, idx), want, d >= DC_INT32 ? 0 : tol_of(d) * 2);
                    if (!ok) printf("  x=%g got %g want %g\n", get(&x, idx), get(&o, idx), want);
                }
                check(ok, "%s %s variant %d", dc_op_names[op], DT[d], variant);
            }
        }
    /* sigmoid/silu at the extremes: no NaN, right limits */
    float xs[4] = { -1000, 1000, -89, 89 }, ys[4];
    dc_kview x = { .data = (char *)xs, .ndim = 1, .shape = { 4 }, .strides = { 1 }, .dtype = DC_FLOAT32 };
    dc_kview y = { .data = (char *)ys, .ndim = 1, .shape = { 4 }, .strides = { 1 }, .dtype = DC_FLOAT32 };
    dc_kargs a = { .op = DC_OP_SIGMOID, .nt = 2 };
    a.t[0] = y;
    a.t[1] = x;
    K(&a);
    check(ys[0] == 0 && ys[1] == 1 && ys[2] >= 0 && ys[3] == 1, "sigmoid stable at +-1000");
    /* the vectorised float exp/tanh keep IEEE special values */
    xs[0] = NAN, xs[1] = INFINITY, xs[2] = -INFINITY, xs[3] = -100;
    a.op = DC_OP_EXP;
    K(&a);
    check(isnan(ys[0]) && ys[1] == INFINITY && ys[2] == 0 && ys[3] == 0, "exp f32 special values");
    a.op = DC_OP_TANH;
    K(&a);
    check(isnan(ys[0]) && ys[1] == 1 && ys[2] == -1 && ys[3] == -1, "tanh f32 special values");
    /* a big one for the threaded path */
    const int64_t *bsh = SH(300, 301);
    dc_kview bx = mk(DC_FLOAT32, 2, bsh, TRANS, 0), bo = mk_out(DC_FLOAT32, 2, bsh);
    a.op = DC_OP_TANH;
    a.t[0] = bo;
    a.t[1] = bx;
    int ok = K(&a) == DC_OK;
    int64_t idx[2];
    for (int64_t i = 0; i < 300 * 301 && ok; i++) {
        unravel(2, bsh, i, idx);
        ok = close_to(get(&bo, idx), tanh(get(&bx, idx)), 1e-5);
    }
    check(ok, "big tanh");
}

/* ================================ binary ===================================================== */
static double binary_ref(dc_op op, double a, double b, const dc_kargs *k)
{
    const double c = sqrt(2 / M_PI);
    switch (op) {
    case DC_OP_ADD: return a + b;
    case DC_OP_SUB: return a - b;
    case DC_OP_MUL: return a * b;
    case DC_OP_DIV: return a / b;
    case DC_OP_POW: return pow(a, b);
    case DC_OP_MAXIMUM: return a > b ? a : b;
    case DC_OP_MINIMUM: return a < b ? a : b;
    case DC_OP_EQ: return a == b;
    case DC_OP_NE: return a != b;
    case DC_OP_LT: return a < b;
    case DC_OP_LE: return a <= b;
    case DC_OP_GT: return a > b;
    case DC_OP_GE: return a >= b;
    case DC_OP_RELU_BWD: return b > 0 ? a : 0;
    case DC_OP_GELU_TANH_BWD: {
        /* central difference of the forward, in double */
        double h = 1e-6,
               f = (unary_ref(DC_OP_GELU_TANH, b + h, 0, 0, 0, 0) - unary_ref(DC_OP_GELU_TANH, b - h, 0, 0, 0, 0)) /
                   (2 * h);
        (void)c;
        return a * f;
    }
    case DC_OP_GELU_ERF_BWD: {
        double h = 1e-6,
               f = (unary_ref(DC_OP_GELU_ERF, b + h, 0, 0, 0, 0) - unary_ref(DC_OP_GELU_ERF, b - h, 0, 0, 0, 0)) /
                   (2 * h);
        return a * f;
    }
    case DC_OP_SILU_BWD: {
        double h = 1e-6,
               f = (unary_ref(DC_OP_SILU, b + h, 0, 0, 0, 0) - unary_ref(DC_OP_SILU, b - h, 0, 0, 0, 0)) / (2 * h);
        return a * f;
    }
    case DC_OP_SIGMOID_BWD: return a * b * (1 - b);
    case DC_OP_TANH_BWD: return a * (1 - b * b);
    case DC_OP_CLAMP_BWD: {
        const struct dc_clamp_params *c = &k->p.clamp;
        return ((!c->has_lo || b >= c->lo) && (!c->has_hi || b <= c->hi)) ? a : 0;
    }
    case DC_OP_FLOOR_DIVIDE: {
        double m = fmod(a, b), q = (a - m) / b;
        return (m != 0 && ((b < 0) != (m < 0))) ? q - 1 : q;
    }
    case DC_OP_REMAINDER: {
        double m = fmod(a, b);
        return (m != 0 && ((b < 0) != (m < 0))) ? m + b : m;
    }
    case DC_OP_BITWISE_AND: return (double)((int64_t)a & (int64_t)b);
    case DC_OP_BITWISE_OR: return (double)((int64_t)a | (int64_t)b);
    case DC_OP_BITWISE_XOR: return (double)((int64_t)a ^ (int64_t)b);
    case DC_OP_LOG1P_BWD: return a / (1 + b);
    case DC_OP_EXPM1_BWD: return a * (b + 1);
    case DC_OP_ERF_BWD: return a * 2 / sqrt(M_PI) * exp(-b * b);
    default: return NAN;
    }
}

static void test_binary(void)
{
    const int64_t *sh = SH(3, 4, 5);
    const dc_backend *cpu = dc_cpu_backend_get();
    for (int op = 0; op < DC_OP_COUNT; op++) /* every op of the binary and compare kernels */
        for (int d = 0; d < DC_DTYPE_COUNT && (cpu->kernels[op] == dc_cpu_binary || cpu->kernels[op] == dc_cpu_compare);
             d++) {
            if (d == DC_BFLOAT16 || d == DC_FLOAT16) continue;
            int cmp = dc_op_is(op, DC_FAM_COMPARE);
            int bitwise = op == DC_OP_BITWISE_AND || op == DC_OP_BITWISE_OR || op == DC_OP_BITWISE_XOR;
            int divides = op == DC_OP_DIV || op == DC_OP_FLOOR_DIVIDE || op == DC_OP_REMAINDER;
            int int_ok = cmp || bitwise || op == DC_OP_ADD || op == DC_OP_SUB || op == DC_OP_MUL ||
                         op == DC_OP_MAXIMUM || op == DC_OP_MINIMUM || op == DC_OP_FLOOR_DIVIDE ||
                         op == DC_OP_REMAINDER;
            if (d == DC_BOOL && !cmp) continue;
            int pos = op == DC_OP_POW;
            for (int variant = 0; variant < 3; variant++) {
                /* variant 0: (3,1,5)-broadcast with transposed; 1: stepped with scalar; 2: scalar with contiguous */
                dc_kview x = variant == 0   ? mkr(d, 3, sh, CONTIG, 2u, pos ? 0.1 : -3, 3)
                             : variant == 1 ? mkr(d, 3, sh, STEP, 0, pos ? 0.1 : -3, 3)
                                            : mkr(d, 3, sh, CONTIG, 7u, pos ? 0.1 : -3, 3);
                dc_kview y = variant == 0   ? mkr(d, 3, sh, TRANS, 0, -3, 3)
                             : variant == 1 ? mkr(d, 3, sh, CONTIG, 7u, -3, 3)
                                            : mkr(d, 3, sh, CONTIG, 0, -3, 3);
                if (divides) { /* keep divisors away from 0 */
                    int64_t idx[3];
                    for (int64_t i = 0; i < 60; i++) {
                        unravel(3, sh, i, idx);
                        if (fabs(get(&y, idx)) < 0.1) set(&y, idx, d >= DC_INT32 ? 2 : 0.5);
                    }
                }
                dc_kview o = mk_out(cmp ? DC_BOOL : d, 3, sh);
                dc_kargs a = { .op = op, .nt = 3 };
                a.t[0] = o;
                a.t[1] = x;
                a.t[2] = y;
                a.p.clamp =
                    (struct dc_clamp_params){ .lo = -1, .hi = 1.5, .has_lo = variant != 1, .has_hi = variant != 2 };
                dc_status st = K(&a);
                if ((d >= DC_INT32 && !int_ok) || (d < DC_INT32 && bitwise)) {
                    check(st == DC_ERR_DTYPE, "%s %s rejected", dc_op_names[op], DT[d]);
                    continue;
                }
                int ok = st == DC_OK;
                int64_t idx[3];
                double tol = op >= DC_OP_GELU_TANH_BWD && op <= DC_OP_SILU_BWD ? (d == 0 ? 1e-4 : 1e-7) : tol_of(d) * 2;
                for (int64_t i = 0; i < 60 && ok; i++) {
                    unravel(3, sh, i, idx);
                    double want = binary_ref(op, get(&x, idx), get(&y, idx), &a);
                    if (!cmp && d != DC_BOOL) want = convert_ref(want, DC_FLOAT64, d);
                    ok = close_to(get(&o, idx), want, tol);
                    if (!ok) printf("  a=%g b=%g got %g want %g\n", get(&x, idx), get(&y, idx), get(&o, idx), want);
                }
                check(ok, "%s %s variant %d", dc_op_names[op], DT[d], variant);
            }
        }
    /* NaN propagation of maximum/minimum */
    double xs[2] = { NAN, 1 }, ys[2] = { 1, NAN }, os[2];
    dc_kview x = { .data = (char *)xs, .ndim = 1, .shape = { 2 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kview y = { .data = (char *)ys, .ndim = 1, .shape = { 2 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kview o = { .data = (char *)os, .ndim = 1, .shape = { 2 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kargs a = { .op = DC_OP_MAXIMUM, .nt = 3 };
    a.t[0] = o;
    a.t[1] = x;
    a.t[2] = y;
    K(&a);
    check(isnan(os[0]) && isnan(os[1]), "maximum propagates NaN");
    /* big broadcast add (threads): (400, 300) + (300,) */
    const int64_t *bsh = SH(400, 300);
    dc_kview bx = mk(DC_FLOAT32, 2, bsh, CONTIG, 0), by = mk(DC_FLOAT32, 2, bsh, CONTIG, 1u);
    dc_kview bo = mk_out(DC_FLOAT32, 2, bsh);
    a.op = DC_OP_ADD;
    a.t[0] = bo;
    a.t[1] = bx;
    a.t[2] = by;
    int ok = K(&a) == DC_OK;
    int64_t idx[2];
    for (int64_t i = 0; i < 400 * 300 && ok; i++) {
        unravel(2, bsh, i, idx);
        ok = get(&bo, idx) == (float)(get(&bx, idx) + get(&by, idx));
    }
    check(ok, "big broadcast add");
}

static void test_where(void)
{
    const int64_t *sh = SH(3, 4, 5);
    for (int d = 0; d < DC_DTYPE_COUNT; d++) {
        dc_kview c = mk(DC_BOOL, 3, sh, CONTIG, 1u), x = mk(d, 3, sh, TRANS, 0), y = mk(d, 3, sh, CONTIG, 4u);
        dc_kview o = mk_out(d, 3, sh);
        dc_kargs a = { .op = DC_OP_WHERE, .nt = 4 };
        a.t[0] = o;
        a.t[1] = c;
        a.t[2] = x;
        a.t[3] = y;
        int ok = K(&a) == DC_OK;
        int64_t idx[3];
        for (int64_t i = 0; i < 60 && ok; i++) {
            unravel(3, sh, i, idx);
            ok = get(&o, idx) == (get(&c, idx) ? get(&x, idx) : get(&y, idx));
        }
        check(ok, "where %s", DT[d]);
    }
}

/* ================================ reductions ================================================= */
static void test_reduce(void)
{
    const int64_t *sh = SH(4, 5, 6);
    dc_dtype ds[] = { DC_FLOAT32, DC_FLOAT64, DC_INT32, DC_INT64 };
    for (int op = DC_OP_SUM; op <= DC_OP_MIN; op++)
        for (int k = 0; k < 4; k++)
            for (unsigned mask = 0; mask < 8; mask++)
                for (int mode = 0; mode < 3; mode++) {
                    dc_dtype d = ds[k];
                    dc_kview x = mk(d, 3, sh, mode, 0);
                    int64_t osh[3];
                    for (int dd = 0; dd < 3; dd++) osh[dd] = mask >> dd & 1 ? 1 : sh[dd];
                    dc_dtype od = op == DC_OP_SUM && d >= DC_INT32 ? DC_INT64 : d;
                    dc_kview o = mk_out(od, 3, osh);
                    dc_kargs a = { .op = op, .nt = 2 };
                    a.t[0] = o;
                    a.t[1] = x;
                    int ok = K(&a) == DC_OK;
                    int64_t on = numel_of(3, osh), oi[3], xi[3];
                    for (int64_t i = 0; i < on && ok; i++) {
                        unravel(3, osh, i, oi);
                        double acc = op == DC_OP_SUM ? 0 : op == DC_OP_MAX ? -INFINITY : INFINITY;
                        for (int64_t j = 0; j < 120; j++) {
                            unravel(3, sh, j, xi);
                            int in = 1;
                            for (int dd = 0; dd < 3; dd++) in &= (mask >> dd & 1) || xi[dd] == oi[dd];
                            if (!in) continue;
                            double v = get(&x, xi);
                            acc = op == DC_OP_SUM ? acc + v : op == DC_OP_MAX ? fmax(acc, v) : fmin(acc, v);
                        }
                        ok = close_to(get(&o, oi), convert_ref(acc, DC_FLOAT64, od), tol_of(od));
                    }
                    check(ok, "%s %s mask %u mode %d", dc_op_names[op], DT[d], mask, mode);
                }
    /* big reductions: full (partials path), columns (sum over rows), rows */
    const int64_t *bsh = SH(1001, 203);
    for (int d = 0; d < 2; d++)
        for (unsigned mask = 1; mask < 4; mask++)
            for (int op = DC_OP_SUM; op <= DC_OP_MAX; op++) {
                dc_kview x = mk(d, 2, bsh, mask == 3 ? TRANS : CONTIG, 0);
                int64_t osh[2] = { mask & 1 ? 1 : 1001, mask & 2 ? 1 : 203 };
                dc_kview o = mk_out(d, 2, osh);
                dc_kargs a = { .op = op, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                int ok = K(&a) == DC_OK;
                int64_t on = numel_of(2, osh), oi[2], xi[2];
                for (int64_t i = 0; i < on && ok; i++) {
                    unravel(2, osh, i, oi);
                    double acc = op == DC_OP_SUM ? 0 : -INFINITY;
                    for (xi[0] = mask & 1 ? 0 : oi[0]; xi[0] < (mask & 1 ? 1001 : oi[0] + 1); xi[0]++)
                        for (xi[1] = mask & 2 ? 0 : oi[1]; xi[1] < (mask & 2 ? 203 : oi[1] + 1); xi[1]++)
                            acc = op == DC_OP_SUM ? acc + get(&x, xi) : fmax(acc, get(&x, xi));
                    ok = close_to(get(&o, oi), acc, d == 0 ? 1e-6 : 1e-12);
                }
                check(ok, "big %s %s mask %u", dc_op_names[op], DT[d], mask);
            }
    /* NaN propagates; empty reductions */
    double xs[5] = { 1, NAN, 3, 2, 0 }, r;
    dc_kview x = { .data = (char *)xs, .ndim = 1, .shape = { 5 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kview o = { .data = (char *)&r, .ndim = 1, .shape = { 1 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kargs a = { .op = DC_OP_MAX, .nt = 2 };
    a.t[0] = o;
    a.t[1] = x;
    check(K(&a) == DC_OK && isnan(r), "max propagates NaN");
    a.op = DC_OP_MIN;
    check(K(&a) == DC_OK && isnan(r), "min propagates NaN");
    x.shape[0] = 0;
    a.t[1] = x;
    check(K(&a) == DC_ERR_VALUE, "min of empty is an error");
    a.op = DC_OP_SUM;
    r = 5;
    check(K(&a) == DC_OK && r == 0, "sum of empty is 0");
}

static void test_argreduce(void)
{
    const int64_t *sh = SH(4, 5, 6);
    dc_dtype ds[] = { DC_FLOAT32, DC_FLOAT64, DC_INT32, DC_INT64 };
    for (int op = DC_OP_ARGMAX; op <= DC_OP_ARGMIN; op++)
        for (int k = 0; k < 4; k++)
            for (int dim = 0; dim < 3; dim++) {
                dc_kview x = mk(ds[k], 3, sh, TRANS, 0); /* ints in [-2, 2]: plenty of ties */
                int64_t osh[3] = { sh[0], sh[1], sh[2] };
                osh[dim] = 1;
                dc_kview o = mk_out(DC_INT64, 3, osh);
                dc_kargs a = { .op = op, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                a.p.dim.dim = dim;
                int ok = K(&a) == DC_OK;
                int64_t on = numel_of(3, osh), oi[3], xi[3];
                for (int64_t i = 0; i < on && ok; i++) {
                    unravel(3, osh, i, oi);
                    memcpy(xi, oi, sizeof xi);
                    int64_t best = 0;
                    double bv = get(&x, xi);
                    for (int64_t j = 1; j < sh[dim]; j++) {
                        xi[dim] = j;
                        double v = get(&x, xi);
                        if (op == DC_OP_ARGMAX ? v > bv : v < bv) {
                            bv = v;
                            best = j;
                        }
                    }
                    ok = get(&o, oi) == best;
                }
                check(ok, "%s %s dim %d", dc_op_names[op], DT[ds[k]], dim);
            }
    double xs[5] = { 1, 3, NAN, 3, NAN };
    int64_t r;
    dc_kview x = { .data = (char *)xs, .ndim = 1, .shape = { 5 }, .strides = { 1 }, .dtype = DC_FLOAT64 };
    dc_kview o = { .data = (char *)&r, .ndim = 1, .shape = { 1 }, .strides = { 1 }, .dtype = DC_INT64 };
    dc_kargs a = { .op = DC_OP_ARGMAX, .nt = 2 };
    a.t[0] = o;
    a.t[1] = x;
    check(K(&a) == DC_OK && r == 2, "argmax: first NaN wins");
    x.shape[0] = 2;
    a.t[1] = x;
    check(K(&a) == DC_OK && r == 1, "argmax plain");
    x.shape[0] = 0;
    a.t[1] = x;
    check(K(&a) == DC_ERR_VALUE, "argmax of empty is an error");
}

/* ================================ softmax / layernorm ======================================== */
static void test_softmax(void)
{
    const int64_t *sh = SH(3, 4, 5);
    for (int d = 0; d < 2; d++)
        for (int dim = 0; dim < 3; dim++)
            for (int lg = 0; lg < 2; lg++) {
                dc_kview x = mkr(d, 3, sh, dim == 2 ? CONTIG : TRANS, 0, -5, 5);
                dc_kview y = mk_out(d, 3, sh);
                dc_kargs a = { .op = lg ? DC_OP_LOG_SOFTMAX : DC_OP_SOFTMAX, .nt = 2 };
                a.t[0] = y;
                a.t[1] = x;
                a.p.dim.dim = dim;
                int ok = K(&a) == DC_OK;
                /* backward with a strided dy */
                dc_kview dy = mk(d, 3, sh, STEP, 0), dx = mk_out(d, 3, sh);
                dc_kargs b = { .op = lg ? DC_OP_LOG_SOFTMAX_BWD : DC_OP_SOFTMAX_BWD, .nt = 3 };
                b.t[0] = dx;
                b.t[1] = dy;
                b.t[2] = y;
                b.p.dim.dim = dim;
                ok &= K(&b) == DC_OK;
                int64_t idx[3], ri[3];
                for (int64_t i = 0; i < 60 && ok; i++) {
                    unravel(3, sh, i, idx);
                    memcpy(ri, idx, sizeof ri);
                    double m = -INFINITY, s = 0, sdy = 0, sdyy = 0;
                    for (ri[dim] = 0; ri[dim] < sh[dim]; ri[dim]++) m = fmax(m, get(&x, ri));
                    for (ri[dim] = 0; ri[dim] < sh[dim]; ri[dim]++) s += exp(get(&x, ri) - m);
                    double p = exp(get(&x, idx) - m) / s, want = lg ? get(&x, idx) - m - log(s) : p;
                    ok = close_to(get(&y, idx), want, tol_of(d) * 4);
                    for (ri[dim] = 0; ri[dim] < sh[dim]; ri[dim]++) {
                        sdy += get(&dy, ri);
                        sdyy += get(&dy, ri) * get(&y, ri);
                    }
                    double yv = get(&y, idx), gv = get(&dy, idx);
                    double wantdx = lg ? gv - exp(yv) * sdy : yv * (gv - sdyy);
                    ok &= close_to(get(&dx, idx), wantdx, tol_of(d) * 4);
                }
                check(ok, "%s fwd+bwd %s dim %d", lg ? "log_softmax" : "softmax", DT[d], dim);
            }
    /* big rows (threads), huge logits */
    const int64_t *bsh = SH(300, 257);
    dc_kview x = mkr(DC_FLOAT32, 2, bsh, CONTIG, 0, -80, 80), y = mk_out(DC_FLOAT32, 2, bsh);
    dc_kargs a = { .op = DC_OP_SOFTMAX, .nt = 2 };
    a.t[0] = y;
    a.t[1] = x;
    a.p.dim.dim = 1;
    int ok = K(&a) == DC_OK;
    for (int64_t r = 0; r < 300 && ok; r++) {
        double s = 0;
        for (int64_t c = 0; c < 257; c++) s += ((float *)y.data)[r * 257 + c];
        ok = fabs(s - 1) < 1e-5;
    }
    check(ok, "big softmax rows sum to 1");
}

static void test_layernorm(void)
{
    for (int d = 0; d < 2; d++)
        for (int hw = 0; hw < 2; hw++)
            for (int hb = 0; hb < 2; hb++)
                for (int big = 0; big < 2; big++) {
                    const int64_t N = big ? 301 : 7, D = big ? 257 : 33;
                    dc_kview x = mkr(d, 2, SH(N, D), CONTIG, 0, 1, 5), w = mk(d, 1, &D, CONTIG, 0),
                             b = mk(d, 1, &D, CONTIG, 0);
                    dc_kview y = mk_out(d, 2, SH(N, D)), mean = mk_out(d, 1, &N), rstd = mk_out(d, 1, &N);
                    dc_kargs a = { .op = DC_OP_LAYERNORM, .nt = 6 };
                    a.t[0] = y;
                    a.t[1] = mean;
                    a.t[2] = rstd;
                    a.t[3] = x;
                    if (hw) a.t[4] = w;
                    if (hb) a.t[5] = b;
                    a.p.layernorm = (struct dc_layernorm_params){ .eps = 1e-5, .has_w = hw, .has_b = hb };
                    int ok = K(&a) == DC_OK;
                    dc_kview dy = mk(d, 2, SH(N, D), CONTIG, 0), dx = mk_out(d, 2, SH(N, D));
                    dc_kview dw = mk_out(d, 1, &D), db = mk_out(d, 1, &D);
                    dc_kargs g = { .op = DC_OP_LAYERNORM_BWD, .nt = 8 };
                    g.t[0] = dx;
                    if (hw) g.t[1] = dw;
                    if (hb) g.t[2] = db;
                    g.t[3] = dy;
                    g.t[4] = x;
                    g.t[5] = mean;
                    g.t[6] = rstd;
                    if (hw) g.t[7] = w;
                    g.p.layernorm = (struct dc_layernorm_params){ .eps = 1e-5, .has_w = hw, .has_b = hb };
                    ok &= K(&g) == DC_OK;
                    double tol = d == 0 ? 1e-4 : 1e-10;
                    double *rdw = calloc(D, sizeof(double)), *rdb = calloc(D, sizeof(double));
                    for (int64_t n = 0; n < N && ok; n++) {
                        double m = 0, v = 0, sg = 0, sgx = 0;
                        int64_t ix[2] = { n, 0 };
                        for (ix[1] = 0; ix[1] < D; ix[1]++) m += get(&x, ix);
                        m /= D;
                        for (ix[1] = 0; ix[1] < D; ix[1]++) v += (get(&x, ix) - m) * (get(&x, ix) - m);
                        double r = 1 / sqrt(v / D + 1e-5);
                        ok &= close_to(get(&mean, &n), m, tol) && close_to(get(&rstd, &n), r, tol);
                        for (ix[1] = 0; ix[1] < D; ix[1]++) {
                            double wv = hw ? get(&w, &ix[1]) : 1, bv = hb ? get(&b, &ix[1]) : 0;
                            double xh = (get(&x, ix) - m) * r;
                            ok &= close_to(get(&y, ix), xh * wv + bv, tol);
                            double gg = get(&dy, ix) * wv;
                            sg += gg;
                            sgx += gg * xh;
                            rdw[ix[1]] += get(&dy, ix) * xh;
                            rdb[ix[1]] += get(&dy, ix);
                        }
                        for (ix[1] = 0; ix[1] < D; ix[1]++) {
                            double wv = hw ? get(&w, &ix[1]) : 1, xh = (get(&x, ix) - m) * r;
                            double want = r * (get(&dy, ix) * wv - sg / D - xh * sgx / D);
                            ok &= close_to(get(&dx, ix), want, tol * 10);
                        }
                    }
                    for (int64_t j = 0; j < D && ok; j++) {
                        if (hw) ok &= close_to(get(&dw, &j), rdw[j], tol * 10);
                        if (hb) ok &= close_to(get(&db, &j), rdb[j], tol * 10);
                    }
                    free(rdw);
                    free(rdb);
                    check(ok, "layernorm fwd+bwd %s w=%d b=%d big=%d", DT[d], hw, hb, big);
                }
}

/* ================================ matmul ===================================================== */
static void test_matmul(void)
{
    for (int d = 0; d < 2; d++)
        for (int ma = 0; ma < 3; ma++)
            for (int mb = 0; mb < 3; mb++)
                for (int bcast = 0; bcast < 2; bcast++) {
                    const int64_t B = 3, M = 4, Kd = 5, N = 6;
                    dc_kview A = mk(d, 3, SH(B, M, Kd), ma, 0);
                    dc_kview Bm = mk(d, 3, SH(B, Kd, N), mb, bcast ? 1u : 0u);
                    dc_kview O = mk_out(d, 3, SH(B, M, N));
                    dc_kargs a = { .op = DC_OP_MATMUL, .nt = 3 };
                    a.t[0] = O;
                    a.t[1] = A;
                    a.t[2] = Bm;
                    int ok = K(&a) == DC_OK;
                    for (int64_t b = 0; b < B && ok; b++)
                        for (int64_t i = 0; i < M; i++)
                            for (int64_t j = 0; j < N; j++) {
                                double s = 0;
                                for (int64_t k = 0; k < Kd; k++) s += get(&A, SH(b, i, k)) * get(&Bm, SH(b, k, j));
                                ok &= close_to(get(&O, SH(b, i, j)), s, tol_of(d) * 5);
                            }
                    check(ok, "matmul %s A mode %d B mode %d bcast %d", DT[d], ma, mb, bcast);
                }
    /* 2-d, large (BLAS threads), K == 0 */
    const int64_t M = 130, Kd = 70, N = 90;
    dc_kview A = mk(DC_FLOAT32, 2, SH(M, Kd), TRANS, 0), Bm = mk(DC_FLOAT32, 2, SH(Kd, N), CONTIG, 0);
    dc_kview O = mk_out(DC_FLOAT32, 2, SH(M, N));
    dc_kargs a = { .op = DC_OP_MATMUL, .nt = 3 };
    a.t[0] = O;
    a.t[1] = A;
    a.t[2] = Bm;
    int ok = K(&a) == DC_OK;
    for (int64_t i = 0; i < M && ok; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < Kd; k++) s += get(&A, SH(i, k)) * get(&Bm, SH(k, j));
            ok &= close_to(get(&O, SH(i, j)), s, 1e-4);
        }
    check(ok, "matmul 2-d 130x70x90");
    dc_kview A0 = mk(DC_FLOAT64, 3, SH(2, 3, 0), CONTIG, 0), B0 = mk(DC_FLOAT64, 3, SH(2, 0, 4), CONTIG, 0);
    dc_kview O0 = mk_out(DC_FLOAT64, 3, SH(2, 3, 4));
    a.t[0] = O0;
    a.t[1] = A0;
    a.t[2] = B0;
    ok = K(&a) == DC_OK;
    for (int i = 0; i < 24; i++) ok &= ((double *)O0.data)[i] == 0;
    check(ok, "matmul K=0 gives zeros");
}

/* ================================ indexing =================================================== */
static void test_indexing(void)
{
    const int64_t *xs = SH(4, 5, 3);
    dc_dtype ds[] = { DC_FLOAT32, DC_FLOAT64, DC_INT32, DC_INT64, DC_BOOL };
    for (int k = 0; k < 5; k++)
        for (int dim = 0; dim < 3; dim++) {
            /* gather: idx shape (3,4,2) clipped to x in non-dim dims */
            int64_t ish[3] = { 3, 4, 2 };
            dc_kview x = mk(ds[k], 3, xs, TRANS, 0);
            dc_kview idx = mkr(DC_INT64, 3, ish, STEP, 0, 0, 1);
            int64_t ii[3];
            for (int64_t i = 0; i < 24; i++) {
                unravel(3, ish, i, ii);
                set(&idx, ii, (double)(int64_t)(urand() * xs[dim]));
            }
            dc_kview o = mk_out(ds[k], 3, ish);
            dc_kargs a = { .op = DC_OP_GATHER, .nt = 3 };
            a.t[0] = o;
            a.t[1] = x;
            a.t[2] = idx;
            a.p.dim.dim = dim;
            int ok = K(&a) == DC_OK;
            for (int64_t i = 0; i < 24 && ok; i++) {
                unravel(3, ish, i, ii);
                int64_t xi[3] = { ii[0], ii[1], ii[2] };
                xi[dim] = (int64_t)get(&idx, ii);
                ok = get(&o, ii) == get(&x, xi);
            }
            check(ok, "gather %s dim %d", DT[ds[k]], dim);

            /* index_select: 7 indices (with repeats) along dim */
            int64_t iv[7];
            for (int j = 0; j < 7; j++) iv[j] = (int64_t)(urand() * xs[dim]);
            dc_kview i1 = { .data = (char *)iv, .ndim = 1, .shape = { 7 }, .strides = { 1 }, .dtype = DC_INT64 };
            int64_t osh[3] = { xs[0], xs[1], xs[2] };
            osh[dim] = 7;
            dc_kview so = mk_out(ds[k], 3, osh);
            dc_kargs b = { .op = DC_OP_INDEX_SELECT, .nt = 3 };
            b.t[0] = so;
            b.t[1] = x;
            b.t[2] = i1;
            b.p.dim.dim = dim;
            ok = K(&b) == DC_OK;
            for (int64_t i = 0; i < numel_of(3, osh) && ok; i++) {
                unravel(3, osh, i, ii);
                int64_t xi[3] = { ii[0], ii[1], ii[2] };
                xi[dim] = iv[ii[dim]];
                ok = get(&so, ii) == get(&x, xi);
            }
            check(ok, "index_select %s dim %d", DT[ds[k]], dim);

            if (k >= 2) continue;
            /* scatter_add of the gather's source shape (duplicates summed) */
            dc_kview src = mk(ds[k], 3, ish, TRANS, 0);
            dc_kview acc = mk_out(ds[k], 3, xs);
            memset(acc.data, 0, 60 * dc_dtype_size(ds[k]));
            dc_kargs c = { .op = DC_OP_SCATTER_ADD, .nt = 3 };
            c.t[0] = acc;
            c.t[1] = src;
            c.t[2] = idx;
            c.p.dim.dim = dim;
            ok = K(&c) == DC_OK;
            double ref[60] = { 0 };
            for (int64_t i = 0; i < 24; i++) {
                unravel(3, ish, i, ii);
                int64_t xi[3] = { ii[0], ii[1], ii[2] };
                xi[dim] = (int64_t)get(&idx, ii);
                ref[(xi[0] * 5 + xi[1]) * 3 + xi[2]] += get(&src, ii);
            }
            for (int i = 0; i < 60 && ok; i++)
                ok = close_to(cpu_load_f(acc.data + i * dc_dtype_size(ds[k]), ds[k]), ref[i], tol_of(ds[k]));
            check(ok, "scatter_add %s dim %d", DT[ds[k]], dim);

            /* index_add: contiguous fast path and strided path */
            for (int strided = 0; strided < 2; strided++) {
                dc_kview t = mk(ds[k], 3, xs, strided ? TRANS : CONTIG, 0);
                dc_kview add = mk(ds[k], 3, osh, strided ? STEP : CONTIG, 0);
                double before[60];
                for (int i = 0; i < 60; i++) {
                    unravel(3, xs, i, ii);
                    before[i] = get(&t, ii);
                }
                dc_kargs e = { .op = DC_OP_INDEX_ADD, .nt = 3 };
                e.t[0] = t;
                e.t[1] = add;
                e.t[2] = i1;
                e.p.dim.dim = dim;
                ok = K(&e) == DC_OK;
                for (int64_t i = 0; i < numel_of(3, osh); i++) {
                    unravel(3, osh, i, ii);
                    int64_t xi[3] = { ii[0], ii[1], ii[2] };
                    xi[dim] = iv[ii[dim]];
                    before[(xi[0] * 5 + xi[1]) * 3 + xi[2]] += get(&add, ii);
                }
                for (int i = 0; i < 60 && ok; i++) {
                    unravel(3, xs, i, ii);
                    ok = close_to(get(&t, ii), before[i], tol_of(ds[k]));
                }
                check(ok, "index_add %s dim %d strided %d", DT[ds[k]], dim, strided);
            }
        }
    /* big index_add with many duplicates (threads) */
    {
        const int64_t V = 50, Dd = 700, n = 400;
        dc_kview t = mk_out(DC_FLOAT32, 2, SH(V, Dd));
        memset(t.data, 0, V * Dd * 4);
        dc_kview src = mk(DC_FLOAT32, 2, SH(n, Dd), CONTIG, 0);
        int64_t *iv = malloc(n * sizeof(int64_t));
        pool[npool++] = iv;
        for (int j = 0; j < n; j++) iv[j] = j % 7;
        dc_kview i1 = { .data = (char *)iv, .ndim = 1, .shape = { n }, .strides = { 1 }, .dtype = DC_INT64 };
        dc_kargs e = { .op = DC_OP_INDEX_ADD, .nt = 3 };
        e.t[0] = t;
        e.t[1] = src;
        e.t[2] = i1;
        int ok = K(&e) == DC_OK;
        for (int64_t r = 0; r < 7 && ok; r++)
            for (int64_t c = 0; c < Dd; c += 37) {
                double s = 0;
                for (int j = r; j < n; j += 7) s += ((float *)src.data)[j * Dd + c];
                ok &= close_to(((float *)t.data)[r * Dd + c], s, 1e-5);
            }
        check(ok, "big index_add with duplicates");
    }
    /* bounds errors, with the exact message */
    int64_t bad[3] = { 1, 7, 2 };
    dc_kview bi = { .data = (char *)bad, .ndim = 1, .shape = { 3 }, .strides = { 1 }, .dtype = DC_INT64 };
    dc_kview x = mk(DC_FLOAT32, 1, SH(5), CONTIG, 0), o = mk_out(DC_FLOAT32, 1, SH(3));
    dc_kargs a = { .op = DC_OP_INDEX_SELECT, .nt = 3 };
    a.t[0] = o;
    a.t[1] = x;
    a.t[2] = bi;
    dc_status st = K(&a);
    check(st == DC_ERR_INDEX && !strcmp(dc_last_error(), "index 7 is out of bounds for dimension 0 with size 5"),
          "index_select bounds error: %s", dc_last_error());
    a.op = DC_OP_GATHER;
    check(K(&a) == DC_ERR_INDEX, "gather bounds error");
    bad[1] = -1;
    check(K(&a) == DC_ERR_INDEX && strstr(dc_last_error(), "index -1 is out of bounds"), "negative index error: %s",
          dc_last_error());
    dc_kview acc = mk_out(DC_FLOAT32, 1, SH(5)), src = mk(DC_FLOAT32, 1, SH(3), CONTIG, 0);
    bad[1] = 5;
    memset(acc.data, 0, 20);
    a.op = DC_OP_SCATTER_ADD;
    a.t[0] = acc;
    a.t[1] = src;
    check(K(&a) == DC_ERR_INDEX, "scatter_add bounds error");
    a.op = DC_OP_INDEX_ADD;
    check(K(&a) == DC_ERR_INDEX, "index_add bounds error");
    int untouched = 1;
    for (int i = 0; i < 5; i++) untouched &= ((float *)acc.data)[i] == 0;
    check(untouched, "bad indices leave the output untouched");
}

static void test_tril(void)
{
    const int64_t *sh = SH(2, 4, 5);
    dc_dtype ds[] = { DC_FLOAT32, DC_INT64, DC_BOOL, DC_BFLOAT16 };
    for (int k = 0; k < 4; k++)
        for (int diag = -2; diag <= 2; diag++)
            for (int up = 0; up < 2; up++) {
                dc_kview x = mk(ds[k], 3, sh, TRANS, 0), o = mk_out(ds[k], 3, sh);
                dc_kargs a = { .op = DC_OP_TRIL, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                a.p.tril = (struct dc_tril_params){ .diagonal = diag, .upper = up };
                int ok = K(&a) == DC_OK;
                int64_t idx[3];
                for (int64_t i = 0; i < 40 && ok; i++) {
                    unravel(3, sh, i, idx);
                    int keep = up ? idx[2] - idx[1] >= diag : idx[2] - idx[1] <= diag;
                    ok = get(&o, idx) == (keep ? get(&x, idx) : 0);
                }
                check(ok, "%s %s diag %d", up ? "triu" : "tril", DT[ds[k]], diag);
            }
}

/* ================================ optimizers ================================================= */
static void test_optim(void)
{
    const int64_t N = 40000; /* above the threading threshold */
    for (int d = 0; d < 2; d++)
        for (int v = 0; v < 6; v++) {
            dc_kview p = mk(d, 1, &N, CONTIG, 0), g = mk(d, 1, &N, CONTIG, 0), buf = mk(d, 1, &N, CONTIG, 0);
            double *p0 = malloc(N * 8), *b0 = malloc(N * 8);
            for (int64_t i = 0; i < N; i++) {
                p0[i] = get(&p, &i);
                b0[i] = get(&buf, &i);
            }
            double lr = 0.1, mom = v == 0 ? 0 : 0.9, damp = v == 3 ? 0.2 : 0, wd = v >= 2 ? 0.01 : 0;
            int nest = v == 4, maxi = v == 5, first = v == 2;
            dc_kargs a = { .op = DC_OP_SGD, .nt = mom != 0 ? 3 : 2 };
            a.t[0] = p;
            a.t[1] = g;
            if (mom != 0) a.t[2] = buf;
            a.p.sgd = (struct dc_sgd_params){ .lr = lr,
                                              .momentum = mom,
                                              .dampening = damp,
                                              .weight_decay = wd,
                                              .nesterov = nest,
                                              .maximize = maxi,
                                              .first = first };
            int ok = K(&a) == DC_OK;
            for (int64_t i = 0; i < N && ok; i++) {
                double gg = maxi ? -get(&g, &i) : get(&g, &i);
                gg += wd * p0[i];
                if (mom != 0) {
                    double b = first ? gg : mom * b0[i] + (1 - damp) * gg;
                    ok &= close_to(get(&buf, &i), b, tol_of(d) * 5);
                    gg = nest ? gg + mom * b : b;
                }
                ok &= close_to(get(&p, &i), p0[i] - lr * gg, tol_of(d) * 5);
            }
            check(ok, "sgd %s variant %d", DT[d], v);
            free(p0);
            free(b0);
        }
    for (int d = 0; d < 2; d++)
        for (int maxi = 0; maxi < 2; maxi++) {
            dc_kview p = mk(d, 1, &N, CONTIG, 0), g = mk(d, 1, &N, CONTIG, 0), m = mk(d, 1, &N, CONTIG, 0),
                     v = mkr(d, 1, &N, CONTIG, 0, 0, 1);
            double *p0 = malloc(N * 8), *m0 = malloc(N * 8), *v0 = malloc(N * 8);
            for (int64_t i = 0; i < N; i++) {
                p0[i] = get(&p, &i);
                m0[i] = get(&m, &i);
                v0[i] = get(&v, &i);
            }
            double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, step = 3;
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            dc_kargs a = { .op = DC_OP_ADAMW, .nt = 4 };
            a.t[0] = p;
            a.t[1] = g;
            a.t[2] = m;
            a.t[3] = v;
            a.p.adamw = (struct dc_adamw_params){ .lr = lr,
                                                  .beta1 = b1,
                                                  .beta2 = b2,
                                                  .eps = eps,
                                                  .weight_decay = wd,
                                                  .bias_correction1 = bc1,
                                                  .bias_correction2 = bc2,
                                                  .maximize = maxi };
            int ok = K(&a) == DC_OK;
            for (int64_t i = 0; i < N && ok; i++) {
                double gg = maxi ? -get(&g, &i) : get(&g, &i);
                double pp = p0[i] * (1 - lr * wd);
                double mm = b1 * m0[i] + (1 - b1) * gg, vv = b2 * v0[i] + (1 - b2) * gg * gg;
                pp -= lr / bc1 * mm / (sqrt(vv) / sqrt(bc2) + eps);
                ok &= close_to(get(&m, &i), mm, tol_of(d) * 5) && close_to(get(&v, &i), vv, tol_of(d) * 5) &&
                      close_to(get(&p, &i), pp, tol_of(d) * 20);
            }
            check(ok, "adamw %s maximize %d", DT[d], maxi);
            free(p0);
            free(m0);
            free(v0);
        }
    /* norm: p = 1, 2, 3, inf on strided input, accumulated onto a previous value */
    double ps[] = { 1, 2, 3, INFINITY, 0 };
    for (int d = 0; d < 2; d++)
        for (int k = 0; k < 5; k++)
            for (int big = 0; big < 2; big++) {
                const int64_t *sh = big ? SH(300, 301) : SH(5, 7);
                dc_kview x = mk(d, 2, sh, TRANS, 0);
                double acc = k == 3 ? 0.5 : 1.25;
                dc_kview o = { .data = (char *)&acc, .ndim = 0, .dtype = DC_FLOAT64 };
                dc_kargs a = { .op = DC_OP_NORM_POW, .nt = 2 };
                a.t[0] = o;
                a.t[1] = x;
                a.p.norm.p = ps[k];
                double want = acc;
                int ok = K(&a) == DC_OK;
                int64_t idx[2];
                for (int64_t i = 0; i < numel_of(2, sh); i++) {
                    unravel(2, sh, i, idx);
                    double v = fabs(get(&x, idx));
                    if (k == 3)
                        want = fmax(want, v);
                    else if (k == 4)
                        want += v != 0;
                    else
                        want += pow(v, ps[k]);
                }
                check(ok && close_to(acc, want, 1e-10), "norm p=%g %s big %d", ps[k], DT[d], big);
            }
    /* scale in place on a strided view */
    for (int d = 0; d < 2; d++) {
        dc_kview x = mk(d, 2, SH(6, 7), STEP, 0);
        double before[42];
        int64_t idx[2];
        for (int i = 0; i < 42; i++) {
            unravel(2, SH(6, 7), i, idx);
            before[i] = get(&x, idx);
        }
        dc_kargs a = { .op = DC_OP_SCALE, .nt = 1 };
        a.t[0] = x;
        a.p.scale.factor = -0.5;
        int ok = K(&a) == DC_OK;
        for (int i = 0; i < 42 && ok; i++) {
            unravel(2, SH(6, 7), i, idx);
            ok = close_to(get(&x, idx), before[i] * -0.5, tol_of(d));
        }
        check(ok, "scale %s", DT[d]);
    }
}

int main(void)
{
    dc_backend_register(DC_CPU, dc_cpu_backend_get());
    test_table();
    test_copy();
    test_fill_arange();
    test_random();
    test_unary();
    test_binary();
    test_where();
    test_reduce();
    test_argreduce();
    test_softmax();
    test_layernorm();
    test_matmul();
    test_indexing();
    test_tril();
    test_optim();
    for (int i = 0; i < npool; i++) free(pool[i]);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
