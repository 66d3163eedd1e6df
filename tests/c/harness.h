/* harness.h: what test_cpu_kernels.c's tests share: pass/fail counting, random tensors in
 * contiguous / transposed / stepped / broadcast layouts (mkr, mk, mk_out), element access through
 * a view (get, set, unravel) and the kernel launcher K over the CPU table. Included by that one
 * file only, so everything here is static. */
#ifndef DC_TEST_HARNESS_H
#define DC_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/cpu/cpu.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static int n_pass, n_fail;
static const dc_backend *BE;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static int close_to(double got, double want, double tol)
{
    if (want != want) return got != got;
    if (isinf(want)) return got == want;
    return fabs(got - want) <= tol * (1.0 + fabs(want));
}
static double tol_of(dc_dtype d)
{
    switch (d) {
    case DC_FLOAT32: return 2e-5;
    case DC_FLOAT64: return 1e-11;
    case DC_BFLOAT16: return 1e-2;
    case DC_FLOAT16: return 2e-3;
    default: return 0;
    }
}

/* --- random numbers and test tensors ------------------------------------------------------- */
static uint64_t rng_state = 12345;
static double urand(void) /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

#define MAXT 4096
static void *pool[MAXT];
static int npool;

enum { CONTIG = 0, TRANS = 1, STEP = 2 };

/* A view of fresh random storage: CONTIG, TRANS (dims laid out in reverse order) or STEP (every
 * other element of the last dim); dims in bmask get stride 0 (broadcast). Floats uniform in
 * [lo, hi), ints rounded from it, bools 0/1. */
static dc_kview mkr(dc_dtype dt, int nd, const int64_t *shape, int mode, unsigned bmask, double lo, double hi)
{
    dc_kview v;
    memset(&v, 0, sizeof v);
    v.ndim = nd;
    v.dtype = dt;
    int64_t st = mode == STEP ? 2 : 1, total = 1;
    for (int k = 0; k < nd; k++) {
        int d = mode == TRANS ? k : nd - 1 - k;
        v.shape[d] = shape[d];
        v.strides[d] = st;
        st *= shape[d] > 0 ? shape[d] : 1;
        if (mode == STEP && k == 0) st *= 2;
    }
    total = st + 2;
    for (int d = 0; d < nd; d++)
        if (bmask >> d & 1) v.strides[d] = 0;
    size_t es = dc_dtype_size(dt);
    char *mem = malloc((size_t)total * es);
    pool[npool++] = mem;
    for (int64_t i = 0; i < total; i++) {
        double x = lo + (hi - lo) * urand();
        if (dt == DC_BOOL)
            x = urand() < 0.5;
        else if (cpu_is_intlike(dt))
            x = floor(x + 0.5);
        cpu_store_f(mem + i * es, dt, x);
    }
    v.data = mem;
    return v;
}
static dc_kview mk(dc_dtype dt, int nd, const int64_t *shape, int mode, unsigned bmask)
{
    return mkr(dt, nd, shape, mode, bmask, -2, 2);
}
static dc_kview mk_out(dc_dtype dt, int nd, const int64_t *shape)
{
    return mk(dt, nd, shape, CONTIG, 0);
}

static int64_t numel_of(int nd, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    return n;
}
static void unravel(int nd, const int64_t *shape, int64_t lin, int64_t *idx)
{
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = lin % shape[d];
        lin /= shape[d];
    }
}
static char *addr(const dc_kview *v, const int64_t *idx)
{
    int64_t off = 0;
    for (int d = 0; d < v->ndim; d++) off += idx[d] * v->strides[d];
    return v->data + off * (int64_t)dc_dtype_size(v->dtype);
}
static double get(const dc_kview *v, const int64_t *idx)
{
    return cpu_load_f(addr(v, idx), v->dtype);
}
static void set(const dc_kview *v, const int64_t *idx, double x)
{
    cpu_store_f(addr(v, idx), v->dtype, x);
}

static dc_status K(dc_kargs *a)
{
    return BE->kernels[a->op](a);
}

static const char *DT[DC_DTYPE_COUNT] = { "f32", "f64", "bf16", "f16", "i32", "i64", "bool", "u8", "i8", "i16" };
#define SH(...) ((const int64_t[]){ __VA_ARGS__ })

#endif
