/* cpu.h: private header of the CPU backend: the strided N-d iterator every kernel file shares, the
 * counter-based RNG, small dtype helpers and the kernel entry points that backend.c puts in the
 * table.
 *
 * Kernels see dc_kview (data already offset, strides in elements, may be 0 or negative). The
 * iterator turns any set of same-shaped views into runs of the innermost dimension so the inner
 * loops are plain 1-D loops the compiler vectorises when the strides are unit. */
#ifndef DC_CPU_H
#define DC_CPU_H

/* Every CPU kernel file includes this first. No kernel relies on floating-point traps or errno from
 * libm, and with both assumed away GCC if-converts float selects (clamp, max, NaN checks) and
 * inlines sqrt, so those loops vectorise; with them the build flags we are given
 * (-O3 -fopenmp -std=c11) leave them scalar. */
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../core/backend-impl.h"
#include "cpu-backend.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Hot loops are compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and the loader picks the
 * best the CPU has (GCC function multiversioning through an ifunc): the wheel stays portable and
 * exp/softmax/layer norm use the full vector width where it exists. Off under the sanitizers,
 * whose runtime does not mix well with ifunc resolvers. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CPU_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_SIMD
#endif

/* Below this many elements a kernel runs on the calling thread: waking the OpenMP team costs
 * more than a pass over 32K floats. */
#define DC_CPU_PAR_MIN 32768

/* Set in the child of a fork(): the parent's OpenMP worker threads don't exist there, and GNU
 * libgomp hangs at the first parallel region that would use them. The child runs single-threaded,
 * as PyTorch's does (backend.c installs the handler). */
extern int dc_cpu_forked_child;

static inline int cpu_max_threads(void)
{
#ifdef _OPENMP
    if (dc_cpu_forked_child) return 1;
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static inline int cpu_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* A pragma whose text is built from macro arguments (_Pragma needs one string literal). */
#define CPU_PRAGMA(x) _Pragma(#x)

/* --- views ----------------------------------------------------------------------------------- */
static inline int64_t cpu_numel(const dc_kview *v)
{
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++) n *= v->shape[d];
    return n;
}
static inline int cpu_is_contig(const dc_kview *v)
{
    int64_t s = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != s) return 0;
        s *= v->shape[d];
    }
    return 1;
}
static inline size_t cpu_esize(const dc_kview *v)
{
    return dc_dtype_size(v->dtype);
}

/* One element of a float32 or float64 view as double, and back (the fused attention and loss
 * reference kernels, which accumulate in double whatever the input's precision). */
static inline double cpu_view_get(const dc_kview *v, int64_t i)
{
    return v->dtype == DC_FLOAT64 ? ((const double *)v->data)[i] : (double)((const float *)v->data)[i];
}

static inline void cpu_view_set(const dc_kview *v, int64_t i, double x)
{
    if (v->dtype == DC_FLOAT64)
        ((double *)v->data)[i] = x;
    else
        ((float *)v->data)[i] = (float)x;
}

/* widen.c: run kernel fn on float32 copies of a's bfloat16/float16 operands and round back what
 * it changed; does a have such an operand. */
dc_status dc_cpu_launch_widened(const dc_kargs *a, dc_kernel_fn fn);
int dc_cpu_has_16bit(const dc_kargs *a);

/* The uniform "op does not support dtype" error every kernel returns. */
static inline dc_status cpu_bad_dtype(dc_op op, dc_dtype d)
{
    return dc_error(DC_ERR_DTYPE, "%s does not support %s", dc_op_names[op], dc_dtype_name(d));
}

/* Element offset (in elements) of row `r` of each view, where rows enumerate, in row-major order,
 * every index of the views' common shape with dimension `skip` held at 0 (skip = -1: none). */
static inline void cpu_row_offsets(int nv, const dc_kview *const *v, int skip, int64_t r, int64_t *off)
{
    const dc_kview *v0 = v[0];
    for (int k = 0; k < nv; k++) off[k] = 0;
    for (int d = v0->ndim - 1; d >= 0; d--) {
        if (d == skip) continue;
        int64_t n = v0->shape[d], i = r % n;
        r /= n;
        for (int k = 0; k < nv; k++) off[k] += i * v[k]->strides[d];
    }
}

/* --- the strided iterator -------------------------------------------------------------------- */
/* Called once per run of the innermost (coalesced) dimension: p[k] points at operand k's first
 * element of the run, s[k] is its stride in BYTES, n the run length. Called from inside an OpenMP
 * team when the work is big, so it must only write the elements it is given. */
typedef void (*cpu_inner_fn)(char **p, const int64_t *s, int64_t n, const void *ctx);

typedef struct {
    int n;    /* operands */
    int ndim; /* >= 1 after init; dim ndim-1 innermost */
    int64_t numel;
    int64_t shape[DC_MAX_DIMS];
    int64_t st[DC_KARGS_MAX_T][DC_MAX_DIMS]; /* byte strides */
    char *base[DC_KARGS_MAX_T];
} cpu_iter;

/* All views share v[0]'s shape (broadcast ones carry stride 0). reorder: put operand 0's largest
 * strides outermost first (elementwise ops only, where the visiting order does not matter). */
void cpu_iter_init(cpu_iter *it, int n, const dc_kview *const *v, int reorder);
/* Visit every element; parallel over contiguous linear ranges when numel >= par_min. */
void cpu_iter_run(const cpu_iter *it, cpu_inner_fn fn, const void *ctx, int64_t par_min);
/* Visit linear elements [start, end) on the calling thread. */
void cpu_iter_range(const cpu_iter *it, int64_t start, int64_t end, cpu_inner_fn fn, const void *ctx);

/* --- scalar conversions ------------------------------------------------------------------------ */
static inline int cpu_is_intlike(dc_dtype d)
{
    return d == DC_INT32 || d == DC_INT64 || d == DC_BOOL || d == DC_UINT8 || d == DC_INT8 || d == DC_INT16;
}
static inline double cpu_load_f(const char *p, dc_dtype d)
{
    switch (d) {
    case DC_FLOAT32: return *(const float *)p;
    case DC_FLOAT64: return *(const double *)p;
    case DC_BFLOAT16: return dc_bf16_to_f32(*(const uint16_t *)p);
    case DC_FLOAT16: return dc_f16_to_f32(*(const uint16_t *)p);
    case DC_INT32: return *(const int32_t *)p;
    case DC_INT64: return (double)*(const int64_t *)p;
    case DC_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    case DC_UINT8: return *(const uint8_t *)p;
    case DC_INT8: return *(const int8_t *)p;
    case DC_INT16: return *(const int16_t *)p;
    default: return 0;
    }
}
static inline int64_t cpu_load_i(const char *p, dc_dtype d)
{
    switch (d) {
    case DC_INT32: return *(const int32_t *)p;
    case DC_INT64: return *(const int64_t *)p;
    case DC_BOOL: return *(const uint8_t *)p != 0;
    case DC_UINT8: return *(const uint8_t *)p;
    case DC_INT8: return *(const int8_t *)p;
    case DC_INT16: return *(const int16_t *)p;
    default: return (int64_t)cpu_load_f(p, d);
    }
}
/* float -> int truncates toward zero; NaN gives 0 and out-of-range saturates, so the conversion is
 * always defined behaviour. */
static inline int64_t cpu_f2i(double x)
{
    if (x != x) return 0;
    if (x >= 9.2233720368547758e18) return INT64_MAX;
    if (x <= -9.2233720368547758e18) return INT64_MIN;
    return (int64_t)x;
}
static inline int32_t cpu_f2i32(double x)
{
    if (x != x) return 0;
    if (x >= 2147483647.0) return INT32_MAX;
    if (x <= -2147483648.0) return INT32_MIN;
    return (int32_t)x;
}
static inline void cpu_store_f(char *p, dc_dtype d, double x)
{
    switch (d) {
    case DC_FLOAT32: *(float *)p = (float)x; break;
    case DC_FLOAT64: *(double *)p = x; break;
    case DC_BFLOAT16: *(uint16_t *)p = dc_f32_to_bf16((float)x); break;
    case DC_FLOAT16: *(uint16_t *)p = dc_f32_to_f16((float)x); break;
    case DC_INT32: *(int32_t *)p = cpu_f2i32(x); break;
    case DC_INT64: *(int64_t *)p = cpu_f2i(x); break;
    case DC_BOOL: *(uint8_t *)p = x != 0; break;
    /* the narrow integers wrap, as torch's conversions do on x86 (through int64) */
    case DC_UINT8: *(uint8_t *)p = (uint8_t)(uint64_t)cpu_f2i(x); break;
    case DC_INT8: *(int8_t *)p = (int8_t)(uint8_t)(uint64_t)cpu_f2i(x); break;
    case DC_INT16: *(int16_t *)p = (int16_t)(uint16_t)(uint64_t)cpu_f2i(x); break;
    default: break;
    }
}
static inline void cpu_store_i(char *p, dc_dtype d, int64_t x)
{
    switch (d) {
    case DC_INT32: *(int32_t *)p = (int32_t)x; break;
    case DC_INT64: *(int64_t *)p = x; break;
    case DC_BOOL: *(uint8_t *)p = x != 0; break;
    case DC_UINT8: *(uint8_t *)p = (uint8_t)(uint64_t)x; break;
    case DC_INT8: *(int8_t *)p = (int8_t)(uint8_t)(uint64_t)x; break;
    case DC_INT16: *(int16_t *)p = (int16_t)(uint16_t)(uint64_t)x; break;
    case DC_FLOAT32: *(float *)p = (float)x; break;
    default: cpu_store_f(p, d, (double)x); break;
    }
}

/* --- vectorisable float math -------------------------------------------------------------------- */
/* libm's expf/tanhf are scalar calls, so a loop using them never vectorises and runs ~4x slower
 * than NumPy's SIMD exp. These are branch-free (selects only) so `omp simd` loops vectorise them on
 * the baseline x86-64 target. Accuracy: expf within ~2 ulp (Cephes polynomial; results below
 * ~1.2e-38 flush to 0); tanhf within a few ulp (Eigen's rational approximation). */
static inline float cpu_expf(float x)
{
    const float hi = 88.7228317f, lo = -87.3365479f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    /* n = round(x / ln2) by the 1.5*2^23 trick: the integer lands in the low mantissa bits */
    union {
        float f;
        int32_t i;
    } t, sc;
    t.f = xc * 1.44269504088896341f + 12582912.0f;
    const float n = t.f - 12582912.0f;
    const int32_t ni = t.i - 0x4b400000;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n from its exponent bits, n in [-126, 128]; n > 0 goes as 2^(n-1) * 2 so 128 fits */
    const int32_t up = ni > 0;
    sc.i = (int32_t)((uint32_t)(ni + 127 - up) << 23); /* unsigned: NaN inputs give garbage, not UB */
    float y = p * sc.f * (up ? 2.0f : 1.0f);
    y = x > hi ? (float)INFINITY : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}
static inline float cpu_tanhf(float x)
{
    const float c = 7.90531110763549805f;
    float xc = x > c ? c : (x < -c ? -c : x);
    const float x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * xc;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float y = p / q;
    y = (x < 0.0004f && x > -0.0004f) ? x : y;
    return x != x ? x : y;
}
/* erf for float as a branch-free rational function of x on [-4, 4] (the odd/even minimax form
 * used by Eigen and XLA); beyond 4, erf(x) is +-1 in float. Max abs error 4.2e-7 (measured against
 * libm's double erf on a 1e-5 grid over [-6, 6]). libm's erff is a scalar call, which kept
 * GELU(exact) loops ~10x slower than the rest. */
static inline float cpu_erff(float x)
{
    float xc = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
    float x2 = xc * xc;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    p = p * xc;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x != x ? x : p / q;
}
/* Type-generic picks: the fast float versions for float, libm for double. */
#define cpu_exp(x)  _Generic((x), float : cpu_expf, default : cpu_exp_d)(x)
#define cpu_tanh(x) _Generic((x), float : cpu_tanhf, default : cpu_tanh_d)(x)
#define cpu_erf(x)  _Generic((x), float : cpu_erff, default : cpu_erf_d)(x)
static inline double cpu_erf_d(double x)
{
    return (erf)(x);
}
static inline double cpu_exp_d(double x)
{
    return (exp)(x);
}
static inline double cpu_tanh_d(double x)
{
    return (tanh)(x);
}

/* --- counter-based RNG ------------------------------------------------------------------------- */
/* splitmix64's output mix over (scrambled seed + counter * golden gamma): each number depends only
 * on (seed, counter), so results never depend on how the work was split between threads. */
static inline uint64_t cpu_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline uint64_t dc_cpu_rng_u64(uint64_t seed, uint64_t counter)
{
    return cpu_mix64(cpu_mix64(seed + 0x632be59bd9b4e019ULL) + (counter + 1) * 0x9e3779b97f4a7c15ULL);
}

/* --- BLAS threading (linalg.c, conv.c) -------------------------------------------------------- */
/* Threading by problem size (what PyTorch's at::parallel_for grain and OpenBLAS's
 * GEMM_MULTITHREAD_THRESHOLD do): a thread is worth waking only for about GEMM_GRAIN
 * multiply-adds (~2M: ~40 us of one AVX-512 core), since waking and joining a team costs ~5-10 us
 * on an idle machine and far more on a loaded one, where a descheduled team member stalls the
 * whole GEMM for a time slice. Linear(128, 128) on 32 rows (0.5M) took 200 us on two threads and
 * 24 us on one. GEMM_SMALL: below this a matrix is not split into row blocks (each block would be
 * too thin for BLAS's kernels); many such matrices go one per thread. */
#define GEMM_GRAIN ((double)(1 << 21))
#define GEMM_SMALL ((double)(1 << 21))

/* OpenBLAS's OpenMP build threads any call made outside an active parallel region over
 * omp_get_max_threads() threads (it re-reads that on every call; OPENBLAS_NUM_THREADS only seeds it
 * at start-up), and runs serially when that is 1. Called from our inactive one-thread region it even
 * created and destroyed a nested team thread per call (0.2-4 ms for a 15 us GEMM). So a GEMM we
 * chose to run on this thread sets this thread's OpenMP thread count to 1 around its BLAS calls. The
 * setting is a per-thread ICV, restored right after: other threads and the user's setting are
 * untouched. */
static inline int cpu_blas_serial_begin(void)
{
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    if (saved != 1 && !omp_in_parallel()) omp_set_num_threads(1);
    return saved;
#else
    return 1;
#endif
}

static inline void cpu_blas_serial_end(int saved)
{
#ifdef _OPENMP
    if (saved != 1 && !omp_in_parallel()) omp_set_num_threads(saved);
#else
    (void)saved;
#endif
}

/* --- kernels (one per table slot; grouped by file) -------------------------------------------- */
/* elementwise.c */
dc_status dc_cpu_copy(const dc_kargs *a);
dc_status dc_cpu_fill(const dc_kargs *a);
dc_status dc_cpu_arange(const dc_kargs *a);
dc_status dc_cpu_unary(const dc_kargs *a);
dc_status dc_cpu_binary(const dc_kargs *a);
dc_status dc_cpu_compare(const dc_kargs *a);
dc_status dc_cpu_where(const dc_kargs *a);
/* random.c */
dc_status dc_cpu_rand(const dc_kargs *a);
dc_status dc_cpu_randn(const dc_kargs *a);
dc_status dc_cpu_randint(const dc_kargs *a);
/* reduce.c */
dc_status dc_cpu_reduce(const dc_kargs *a);
dc_status dc_cpu_argreduce(const dc_kargs *a);
/* nn.c */
dc_status dc_cpu_softmax(const dc_kargs *a);
dc_status dc_cpu_softmax_bwd(const dc_kargs *a);
dc_status dc_cpu_attn_softmax(const dc_kargs *a);
dc_status dc_cpu_attn_softmax_bwd(const dc_kargs *a);
dc_status dc_cpu_flash_attn(const dc_kargs *a); /* attention.c */
dc_status dc_cpu_flash_attn_bwd(const dc_kargs *a);
dc_status dc_cpu_cross_entropy(const dc_kargs *a); /* loss.c */
dc_status dc_cpu_cross_entropy_bwd(const dc_kargs *a);
dc_status dc_cpu_layernorm(const dc_kargs *a);
dc_status dc_cpu_layernorm_bwd(const dc_kargs *a);
/* linalg.c */
dc_status dc_cpu_matmul(const dc_kargs *a);
dc_status dc_cpu_gather(const dc_kargs *a);
dc_status dc_cpu_scatter_add(const dc_kargs *a);
dc_status dc_cpu_index_select(const dc_kargs *a);
dc_status dc_cpu_index_add(const dc_kargs *a);
dc_status dc_cpu_tril(const dc_kargs *a);
/* sort.c, scan.c */
dc_status dc_cpu_argsort(const dc_kargs *a);
dc_status dc_cpu_nonzero(const dc_kargs *a);
dc_status dc_cpu_cumsum(const dc_kargs *a);
dc_status dc_cpu_cumprod(const dc_kargs *a);
dc_status dc_cpu_cumprod_bwd(const dc_kargs *a);
/* conv.c */
dc_status dc_cpu_conv2d(const dc_kargs *a);
dc_status dc_cpu_conv2d_bwd_input(const dc_kargs *a);
dc_status dc_cpu_conv2d_bwd_weight(const dc_kargs *a);
dc_status dc_cpu_max_pool2d(const dc_kargs *a);
dc_status dc_cpu_max_pool2d_bwd(const dc_kargs *a);
dc_status dc_cpu_avg_pool2d(const dc_kargs *a);
dc_status dc_cpu_avg_pool2d_bwd(const dc_kargs *a);
dc_status dc_cpu_batchnorm(const dc_kargs *a);
dc_status dc_cpu_batchnorm_bwd(const dc_kargs *a);
/* optim.c */
dc_status dc_cpu_sgd(const dc_kargs *a);
dc_status dc_cpu_adamw(const dc_kargs *a);
dc_status dc_cpu_norm_pow(const dc_kargs *a);
dc_status dc_cpu_scale(const dc_kargs *a);

#endif
