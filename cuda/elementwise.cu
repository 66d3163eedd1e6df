/* elementwise.cu: the CUDA kernels of the elementwise families of ops.def: UNARY and SCALAR
 * (t0 = f(t1)), BINARY and GRAD (t0 = f(t1, t2)), COMPARE (bool t0) and WHERE; random.cu holds the
 * CREATE kernels (arange, rand, randn, randint).
 *
 * The reference is csrc/cpu/elementwise.c: same dtypes, same formulas in the same order, same NaN,
 * inf and integer-wrap behaviour. The CPU is built with -std=c11, i.e. without FMA contraction, and
 * its float exp/tanh/erf are its own branch-free polynomials (cpu.h). So every multiply here goes
 * through mul() (__fmul_rn/__dmul_rn, which nvcc never fuses into an FMA) and the float exp/tanh/erf
 * are the CPU's polynomials, operation for operation: float32 results of everything built on them
 * (exp, tanh, sigmoid, silu, gelu, erf and their backward helpers) are the CPU's bits. Where the CPU
 * calls libm the GPU calls CUDA's (non-fast-math) libm; see the note above the math helpers.
 * 16-bit floats (which the CPU kernels reject) compute in float and round once on store.
 *
 * Each family has two kernels: a contiguous one (every operand unit stride or a stride-0 scalar,
 * 16-byte vector loads when aligned) instantiated per op, so each op gets a tight loop; and one
 * strided kernel per dtype that switches on the op at run time (N-d views, broadcasts, transposes),
 * indexing with 32-bit magic-number division when the tensor has < 2^31 elements. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <limits>
#include <type_traits>

#include "common.cuh"

void dc_cuda_register_random(dc_kernel_fn *k); /* random.cu: arange, rand, randn, randint */

/* --- dtype groups ------------------------------------------------------------------------------ */

#define DT_FLOATS (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))
#define DT_INTS   (DC_DT_BIT(DC_INT32) | DC_DT_BIT(DC_INT64))

/* The CPU kernel's dtype rule for an op, with the 16-bit floats added to "float": DC_OK, else the
 * CPU's own error (DC_ERR_DTYPE, same text) when the CPU rejects it too, or DC_ERR_UNSUPPORTED for
 * the narrow integers (uint8, int8, int16) the CPU takes but cuda/ has no storage type for. */
static dc_status check_dtype(dc_op op, dc_dtype dt, bool float_ok, bool int_ok, bool bool_ok)
{
    bool is_f = dt == DC_FLOAT32 || dt == DC_FLOAT64 || dt == DC_BFLOAT16 || dt == DC_FLOAT16;
    bool is_i = dt == DC_INT32 || dt == DC_INT64;
    bool narrow = dt == DC_UINT8 || dt == DC_INT8 || dt == DC_INT16;
    if ((is_f && float_ok) || (is_i && int_ok) || (dt == DC_BOOL && bool_ok)) return DC_OK;
    if (narrow && int_ok)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", dc_op_names[op],
                        dc_dtype_name(dt));
    return dc_error(DC_ERR_DTYPE, "%s does not support %s", dc_op_names[op], dc_dtype_name(dt));
}

/* --- math helpers ------------------------------------------------------------------------------
 * mul(): a product nvcc may not fuse with a neighbouring add (the CPU never does). Every multiply
 * in a formula goes through it; adds, divides and sqrt are IEEE-rounded on both sides already.
 *
 * Where the CPU calls libm (glibc), CUDA's libm can differ: float log/log1p/expm1 are CUDA's
 * logf/log1pf/expm1f (<= 1 ulp; glibc's <= ~0.8 ulp); float sin/cos/pow go through double (CUDA's
 * sinf/cosf are 2 ulp and powf 4 ulp: rounding the double result is within ~0.5 ulp, as glibc's
 * float versions are). Double: CUDA's exp/log/log1p/expm1/tanh are <= 1 ulp, sin/cos/pow/erf
 * <= 2 ulp, where glibc's are < 1; sqrt, fmod, floor and division are exact on both. */

__device__ __forceinline__ float mul(float a, float b)
{
    return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul(double a, double b)
{
    return __dmul_rn(a, b);
}

/* cpu_expf (cpu.h): Cephes polynomial, ~2 ulp, results below ~1.2e-38 flush to 0. */
__device__ __forceinline__ float exp_(float x)
{
    const float hi = 88.7228317f, lo = -87.3365479f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const float t = mul(xc, 1.44269504088896341f) + 12582912.0f; /* round(x / ln2) in the low bits */
    const float n = t - 12582912.0f;
    const int32_t ni = __float_as_int(t) - 0x4b400000;
    float r = xc - mul(n, 0.693359375f);
    r = r - mul(n, -2.12194440e-4f);
    float p = 1.9875691500e-4f;
    p = mul(p, r) + 1.3981999507e-3f;
    p = mul(p, r) + 8.3334519073e-3f;
    p = mul(p, r) + 4.1665795894e-2f;
    p = mul(p, r) + 1.6666665459e-1f;
    p = mul(p, r) + 5.0000001201e-1f;
    p = mul(mul(p, r), r) + r + 1.0f;
    const int32_t up = ni > 0;
    const float sc = __int_as_float((int32_t)((uint32_t)(ni + 127 - up) << 23));
    float y = mul(mul(p, sc), up ? 2.0f : 1.0f);
    y = x > hi ? INFINITY : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}
__device__ __forceinline__ double exp_(double x)
{
    return exp(x);
}

/* cpu_tanhf: Eigen's rational approximation. */
__device__ __forceinline__ float tanh_(float x)
{
    const float c = 7.90531110763549805f;
    const float xc = x > c ? c : (x < -c ? -c : x);
    const float x2 = mul(xc, xc);
    float p = -2.76076847742355e-16f;
    p = mul(p, x2) + 2.00018790482477e-13f;
    p = mul(p, x2) + -8.60467152213735e-11f;
    p = mul(p, x2) + 5.12229709037114e-08f;
    p = mul(p, x2) + 1.48572235717979e-05f;
    p = mul(p, x2) + 6.37261928875436e-04f;
    p = mul(p, x2) + 4.89352455891786e-03f;
    p = mul(p, xc);
    float q = 1.19825839466702e-06f;
    q = mul(q, x2) + 1.18534705686654e-04f;
    q = mul(q, x2) + 2.26843463243900e-03f;
    q = mul(q, x2) + 4.89352518554385e-03f;
    float y = p / q;
    y = (x < 0.0004f && x > -0.0004f) ? x : y;
    return x != x ? x : y;
}
__device__ __forceinline__ double tanh_(double x)
{
    return tanh(x);
}

/* cpu_erff: odd/even minimax rational function on [-4, 4]. */
__device__ __forceinline__ float erf_(float x)
{
    const float xc = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
    const float x2 = mul(xc, xc);
    float p = -2.72614225801306e-10f;
    p = mul(p, x2) + 2.77068142495902e-08f;
    p = mul(p, x2) + -2.10102402082508e-06f;
    p = mul(p, x2) + -5.69250639462346e-05f;
    p = mul(p, x2) + -7.34990630326855e-04f;
    p = mul(p, x2) + -2.95459980854025e-03f;
    p = mul(p, x2) + -1.60960333262415e-02f;
    p = mul(p, xc);
    float q = -1.45660718464996e-05f;
    q = mul(q, x2) + -2.13374055278905e-04f;
    q = mul(q, x2) + -1.68282697438203e-03f;
    q = mul(q, x2) + -7.37332916720468e-03f;
    q = mul(q, x2) + -1.42647390514189e-02f;
    return x != x ? x : p / q;
}
__device__ __forceinline__ double erf_(double x)
{
    return erf(x);
}

__device__ __forceinline__ float log_(float x)
{
    return logf(x);
}
__device__ __forceinline__ double log_(double x)
{
    return log(x);
}
__device__ __forceinline__ float sqrt_(float x)
{
    return sqrtf(x); /* IEEE (nvcc's default -prec-sqrt=true) */
}
__device__ __forceinline__ double sqrt_(double x)
{
    return sqrt(x);
}
__device__ __forceinline__ float sin_(float x)
{
    return (float)sin((double)x);
}
__device__ __forceinline__ double sin_(double x)
{
    return sin(x);
}
__device__ __forceinline__ float cos_(float x)
{
    return (float)cos((double)x);
}
__device__ __forceinline__ double cos_(double x)
{
    return cos(x);
}
__device__ __forceinline__ float abs_(float x)
{
    return fabsf(x);
}
__device__ __forceinline__ double abs_(double x)
{
    return fabs(x);
}
__device__ __forceinline__ float log1p_(float x)
{
    return log1pf(x);
}
__device__ __forceinline__ double log1p_(double x)
{
    return log1p(x);
}
__device__ __forceinline__ float expm1_(float x)
{
    return expm1f(x);
}
__device__ __forceinline__ double expm1_(double x)
{
    return expm1(x);
}
__device__ __forceinline__ float pow_(float a, float b)
{
    return (float)pow((double)a, (double)b);
}
__device__ __forceinline__ double pow_(double a, double b)
{
    return pow(a, b);
}

/* Python's floor division and modulo (elementwise.c's floor_div_f / remainder_f, in double for
 * float and double alike, as there): exact where a naive floor(a / b) rounds across an integer. */
__device__ __forceinline__ double floor_div_d(double a, double b)
{
    if (b == 0) return a / b;
    double m = fmod(a, b), d = (a - m) / b;
    if (m != 0 && ((b < 0) != (m < 0))) d -= 1;
    if (d == 0) return copysign(0.0, a / b);
    double f = floor(d);
    return d - f > 0.5 ? f + 1 : f;
}
__device__ __forceinline__ double remainder_d(double a, double b)
{
    double m = fmod(a, b);
    return (m != 0 && ((b < 0) != (m < 0))) ? m + b : m;
}

/* --- element loads and stores --------------------------------------------------------------------
 * Compute type: float for the 16-bit floats, the type itself otherwise. Bool (uint8_t) stays raw
 * bytes, as the CPU's bool kernels compare and combine the stored bytes. */
template <class T> struct cty {
    typedef typename dc_acc<T>::type type;
};
template <> struct cty<uint8_t> {
    typedef uint8_t type;
};
template <class T> __device__ __forceinline__ typename cty<T>::type ld(T x)
{
    if constexpr (std::is_same<T, uint8_t>::value)
        return x;
    else
        return dc_load(x);
}
template <class T, class C> __device__ __forceinline__ T st(C c)
{
    if constexpr (std::is_same<T, uint8_t>::value)
        return (uint8_t)c;
    else
        return dc_store<T>(c);
}

/* --- the ops ------------------------------------------------------------------------------------ */

/* Parameters of the SCALAR ops and clamp_backward in compute type C, converted on the host as the
 * CPU converts them ((T)lo, the type's range when a bound is absent). */
template <class C> struct ew_prm {
    C lo, hi;   /* clamp, clamp_backward */
    C e;        /* pow_scalar: exponent; rpow_scalar: base */
    int e_kind; /* pow_scalar: 2 -> x * x, 1 -> x, 0 -> pow(x, e) (the CPU's special cases) */
};

/* t0 = op(x). Integer C: neg, abs, clamp (wrapping through the unsigned type, as the CPU). */
template <class C> __device__ __forceinline__ C unary_op(int op, C x, const ew_prm<C> &p)
{
    if constexpr (std::is_floating_point<C>::value) {
        const C one = 1, half = (C)0.5;
        switch (op) {
        case DC_OP_NEG: return -x;
        case DC_OP_EXP: return exp_(x);
        case DC_OP_LOG: return log_(x);
        case DC_OP_SQRT: return sqrt_(x);
        case DC_OP_RSQRT: return one / sqrt_(x);
        case DC_OP_SIN: return sin_(x);
        case DC_OP_COS: return cos_(x);
        case DC_OP_TANH: return tanh_(x);
        case DC_OP_SIGMOID: return one / (one + exp_(-x));
        case DC_OP_RELU: return x < 0 ? (C)0 : x;
        case DC_OP_GELU_TANH: /* 0.5x(1 + tanh(u)) == x * sigmoid(2u) */
            return x / (one + exp_(mul((C)-1.5957691216057308, x + mul(mul(mul((C)0.044715, x), x), x))));
        case DC_OP_GELU_ERF: return mul(mul(half, x), one + erf_(mul(x, (C)0.7071067811865476)));
        case DC_OP_SILU: return x / (one + exp_(-x));
        case DC_OP_ABS: return abs_(x);
        case DC_OP_LOG1P: return log1p_(x);
        case DC_OP_EXPM1: return expm1_(x);
        case DC_OP_ERF: return erf_(x);
        case DC_OP_CLAMP: return x < p.lo ? p.lo : (x > p.hi ? p.hi : x);
        case DC_OP_POW_SCALAR: return p.e_kind == 2 ? mul(x, x) : p.e_kind == 1 ? x : pow_(x, p.e);
        case DC_OP_RPOW_SCALAR: return pow_(p.e, x);
        default: return x;
        }
    } else {
        typedef typename std::make_unsigned<C>::type U;
        switch (op) {
        case DC_OP_NEG: return (C)((U)0 - (U)x);
        case DC_OP_ABS: return x < 0 ? (C)((U)0 - (U)x) : x;
        case DC_OP_CLAMP: return x < p.lo ? p.lo : (x > p.hi ? p.hi : x);
        default: return x;
        }
    }
}

/* t0 = op(a, b): BINARY and GRAD (a = grad, b = saved). Integers: the arithmetic wraps; floor
 * division and remainder by 0 give 0 (the CPU also raises ZeroDivisionError, which needs a
 * device -> host read: not done here). Bool: the bitwise ops, maximum = or, minimum = and. */
template <class C> __device__ __forceinline__ C binary_op(int op, C a, C b, const ew_prm<C> &p)
{
    if constexpr (std::is_floating_point<C>::value) {
        const C one = 1, half = (C)0.5;
        switch (op) {
        case DC_OP_ADD: return a + b;
        case DC_OP_SUB: return a - b;
        case DC_OP_MUL: return mul(a, b);
        case DC_OP_DIV: return a / b;
        case DC_OP_POW: return pow_(a, b);
        case DC_OP_MAXIMUM: return (a != a || a > b) ? a : b; /* NaN from either side */
        case DC_OP_MINIMUM: return (a != a || a < b) ? a : b;
        case DC_OP_FLOOR_DIVIDE: return (C)floor_div_d(a, b);
        case DC_OP_REMAINDER: return (C)remainder_d(a, b);
        case DC_OP_RELU_BWD: return b > 0 ? a : (C)0;
        case DC_OP_GELU_TANH_BWD: {
            const C k = (C)0.7978845608028654;
            const C t = tanh_(mul(k, b + mul(mul(mul((C)0.044715, b), b), b)));
            const C d =
                mul(half, one + t) + mul(mul(mul(mul(half, b), one - mul(t, t)), k), one + mul(mul((C)0.134145, b), b));
            return mul(a, d);
        }
        case DC_OP_GELU_ERF_BWD: {
            const C d = mul(half, one + erf_(mul(b, (C)0.7071067811865476))) +
                        mul(mul(b, exp_(mul(mul((C)-0.5, b), b))), (C)0.3989422804014327);
            return mul(a, d);
        }
        case DC_OP_SILU_BWD: {
            const C s = one / (one + exp_(-b));
            return mul(a, mul(s, one + mul(b, one - s)));
        }
        case DC_OP_SIGMOID_BWD: return mul(mul(a, b), one - b);
        case DC_OP_TANH_BWD: return mul(a, one - mul(b, b));
        case DC_OP_CLAMP_BWD: return (b >= p.lo && b <= p.hi) ? a : (C)0;
        case DC_OP_LOG1P_BWD: return a / (one + b);
        case DC_OP_EXPM1_BWD: return mul(a, b + one);
        case DC_OP_ERF_BWD: return mul(mul(a, (C)1.1283791670955126), exp_(mul(-b, b)));
        default: return a;
        }
    } else if constexpr (std::is_same<C, uint8_t>::value) {
        switch (op) {
        case DC_OP_BITWISE_AND:
        case DC_OP_MINIMUM: return a & b;
        case DC_OP_BITWISE_OR:
        case DC_OP_MAXIMUM: return a | b;
        case DC_OP_BITWISE_XOR: return a ^ b;
        default: return a;
        }
    } else {
        typedef typename std::make_unsigned<C>::type U;
        switch (op) {
        case DC_OP_ADD: return (C)((U)a + (U)b);
        case DC_OP_SUB: return (C)((U)a - (U)b);
        case DC_OP_MUL: return (C)((U)a * (U)b);
        case DC_OP_MAXIMUM: return a > b ? a : b;
        case DC_OP_MINIMUM: return a < b ? a : b;
        case DC_OP_BITWISE_AND: return a & b;
        case DC_OP_BITWISE_OR: return a | b;
        case DC_OP_BITWISE_XOR: return a ^ b;
        case DC_OP_FLOOR_DIVIDE:
            return b == 0 ? (C)0 : b == -1 ? (C)((U)0 - (U)a) : (C)(a / b - ((a % b != 0) && ((a < 0) != (b < 0))));
        case DC_OP_REMAINDER:
            return b == 0 || b == -1 ? (C)0 : (C)(a % b + ((a % b != 0 && ((a % b < 0) != (b < 0))) ? b : 0));
        default: return a;
        }
    }
}

template <class C> __device__ __forceinline__ uint8_t compare_op(int op, C a, C b)
{
    switch (op) {
    case DC_OP_EQ: return a == b;
    case DC_OP_NE: return a != b;
    case DC_OP_LT: return a < b;
    case DC_OP_LE: return a <= b;
    case DC_OP_GT: return a > b;
    case DC_OP_GE: return a >= b;
    default: return 0;
    }
}

/* Element functors: storage in, storage out. OP >= 0 fixes the op at compile time (the contiguous
 * kernels, one instantiation per op); OP == -1 reads it from `op` (the shared strided kernels). */
template <class T, int OP> struct unary_fn {
    typedef T in_t;
    typedef T out_t;
    typedef typename cty<T>::type C;
    int op;
    ew_prm<C> p;
    __device__ __forceinline__ T operator()(T x) const { return st<T>(unary_op<C>(OP >= 0 ? OP : op, ld(x), p)); }
};
template <class T, int OP> struct binary_fn {
    typedef T in_t;
    typedef T out_t;
    typedef typename cty<T>::type C;
    int op;
    ew_prm<C> p;
    __device__ __forceinline__ T operator()(T a, T b) const
    {
        return st<T>(binary_op<C>(OP >= 0 ? OP : op, ld(a), ld(b), p));
    }
};
template <class T, int OP> struct compare_fn {
    typedef T in_t;
    typedef uint8_t out_t;
    typedef typename cty<T>::type C;
    int op;
    __device__ __forceinline__ uint8_t operator()(T a, T b) const
    {
        return compare_op<C>(OP >= 0 ? OP : op, ld(a), ld(b)); /* 16-bit: exact in float */
    }
};
/* where by element size: the bits are moved, never converted. */
template <class T> struct where_fn {
    typedef T in_t;
    typedef T out_t;
    __device__ __forceinline__ T operator()(uint8_t c, T a, T b) const { return c ? a : b; }
};

/* --- strided geometry ----------------------------------------------------------------------------
 * dc_geom plus, for tensors of < 2^31 elements, 32-bit magic-number divisors (q = (umulhi(i, m) +
 * i) >> s, exact for i, d < 2^31, as PyTorch's IntDivider): the index math of a broadcast or
 * transposed operand costs a multiply-high per dim instead of a 64-bit division. */
template <int N> struct sgeom {
    int ndim;
    int small;
    uint32_t shape32[DC_MAX_DIMS], mul[DC_MAX_DIMS], shift[DC_MAX_DIMS];
    int64_t shape[DC_MAX_DIMS];
    int64_t st[N][DC_MAX_DIMS];
};

template <int N> static sgeom<N> sgeom_make(const dc_geom<N> &g, int64_t n)
{
    sgeom<N> s;
    memset(&s, 0, sizeof s);
    s.ndim = g.ndim;
    s.small = n <= INT32_MAX;
    for (int d = 0; d < g.ndim; d++) {
        s.shape[d] = g.shape[d];
        for (int k = 0; k < N; k++) s.st[k][d] = g.st[k][d];
        if (s.small) {
            uint32_t dv = (uint32_t)g.shape[d], sh = 0;
            while ((1ull << sh) < dv) sh++;
            s.shape32[d] = dv;
            s.shift[d] = sh;
            s.mul[d] = (uint32_t)(((1ull << 32) * ((1ull << sh) - dv)) / dv + 1);
        }
    }
    return s;
}

/* Offsets (elements) of flat index i in each operand; the outermost dim needs no division. */
template <int N> __device__ __forceinline__ void sgeom_offsets(const sgeom<N> &g, int64_t i, int64_t off[N])
{
#pragma unroll
    for (int k = 0; k < N; k++) off[k] = 0;
    if (g.small) {
        uint32_t r = (uint32_t)i;
        for (int d = g.ndim - 1; d > 0; d--) {
            uint32_t q = (__umulhi(r, g.mul[d]) + r) >> g.shift[d];
            int64_t idx = (int64_t)(r - q * g.shape32[d]);
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += idx * g.st[k][d];
            r = q;
        }
#pragma unroll
        for (int k = 0; k < N; k++) off[k] += (int64_t)r * g.st[k][0];
    } else {
        for (int d = g.ndim - 1; d > 0; d--) {
            int64_t q = i / g.shape[d], idx = i - q * g.shape[d];
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += idx * g.st[k][d];
            i = q;
        }
#pragma unroll
        for (int k = 0; k < N; k++) off[k] += i * g.st[k][0];
    }
}

/* --- kernels ------------------------------------------------------------------------------------
 * Contiguous kernels: out unit stride, each input unit stride (s = 1) or one broadcast scalar
 * (s = 0). vec: every unit-stride pointer is aligned to a V-element pack, so the body moves V
 * elements (16 bytes of the widest operand) per load; the last n % V go one by one. */

template <class T, int V> struct alignas(sizeof(T) * V) pack {
    T v[V];
};

template <class T, int V> __device__ __forceinline__ pack<T, V> load_pack(const T *p, int64_t s, int64_t k, T x0)
{
    pack<T, V> r;
    if (s) {
        r = reinterpret_cast<const pack<T, V> *>(p)[k];
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) r.v[j] = x0;
    }
    return r;
}

/* out = f(in); out, in: (n,) */
template <class F, int V>
__global__ void unary_contig_kernel(F f, typename F::out_t *out, const typename F::in_t *in, int64_t si, int64_t n,
                                    int vec)
{
    typedef typename F::in_t TI;
    typedef typename F::out_t TO;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nth = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (vec) {
        const int64_t nv = n / V;
        const TI x0 = in[0];
        for (int64_t k = tid; k < nv; k += nth) {
            pack<TI, V> x = load_pack<TI, V>(in, si, k, x0);
            pack<TO, V> y;
#pragma unroll
            for (int j = 0; j < V; j++) y.v[j] = f(x.v[j]);
            reinterpret_cast<pack<TO, V> *>(out)[k] = y;
        }
        done = nv * V;
    }
    for (int64_t i = done + tid; i < n; i += nth) out[i] = f(in[i * si]);
}

/* out = f(a, b); out, a, b: (n,) */
template <class F, int V>
__global__ void binary_contig_kernel(F f, typename F::out_t *out, const typename F::in_t *a, const typename F::in_t *b,
                                     int64_t sa, int64_t sb, int64_t n, int vec)
{
    typedef typename F::in_t TI;
    typedef typename F::out_t TO;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nth = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (vec) {
        const int64_t nv = n / V;
        const TI a0 = a[0], b0 = b[0];
        for (int64_t k = tid; k < nv; k += nth) {
            pack<TI, V> x = load_pack<TI, V>(a, sa, k, a0), y = load_pack<TI, V>(b, sb, k, b0);
            pack<TO, V> z;
#pragma unroll
            for (int j = 0; j < V; j++) z.v[j] = f(x.v[j], y.v[j]);
            reinterpret_cast<pack<TO, V> *>(out)[k] = z;
        }
        done = nv * V;
    }
    for (int64_t i = done + tid; i < n; i += nth) out[i] = f(a[i * sa], b[i * sb]);
}

/* out = c ? a : b; out, c, a, b: (n,) */
template <class T, int V>
__global__ void where_contig_kernel(T *out, const uint8_t *c, const T *a, const T *b, int64_t sc, int64_t sa,
                                    int64_t sb, int64_t n, int vec)
{
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nth = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (vec) {
        const int64_t nv = n / V;
        const uint8_t c0 = c[0];
        const T a0 = a[0], b0 = b[0];
        for (int64_t k = tid; k < nv; k += nth) {
            pack<uint8_t, V> m = load_pack<uint8_t, V>(c, sc, k, c0);
            pack<T, V> x = load_pack<T, V>(a, sa, k, a0), y = load_pack<T, V>(b, sb, k, b0), z;
#pragma unroll
            for (int j = 0; j < V; j++) z.v[j] = m.v[j] ? x.v[j] : y.v[j];
            reinterpret_cast<pack<T, V> *>(out)[k] = z;
        }
        done = nv * V;
    }
    for (int64_t i = done + tid; i < n; i += nth) out[i] = c[i * sc] ? a[i * sa] : b[i * sb];
}

/* Strided kernels: any views of one shape (broadcast inputs with stride 0). */
template <class F>
__global__ void unary_strided_kernel(F f, typename F::out_t *out, const typename F::in_t *in, sgeom<2> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[2];
        sgeom_offsets<2>(g, i, o);
        out[o[0]] = f(in[o[1]]);
    }
}

template <class F>
__global__ void binary_strided_kernel(F f, typename F::out_t *out, const typename F::in_t *a, const typename F::in_t *b,
                                      sgeom<3> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[3];
        sgeom_offsets<3>(g, i, o);
        out[o[0]] = f(a[o[1]], b[o[2]]);
    }
}

template <class T>
__global__ void where_strided_kernel(T *out, const uint8_t *c, const T *a, const T *b, sgeom<4> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[4];
        sgeom_offsets<4>(g, i, o);
        out[o[0]] = c[o[1]] ? a[o[2]] : b[o[3]];
    }
}

/* --- launchers (plain names, stream last) ---------------------------------------------------------- */

/* Elements per 16-byte pack of the widest operand. */
template <class TI, class TO> constexpr int pack_width()
{
    return 16 / (sizeof(TI) > sizeof(TO) ? sizeof(TI) : sizeof(TO));
}

static inline bool aligned(const void *p, size_t bytes)
{
    return ((uintptr_t)p % bytes) == 0;
}

/* The contiguous kernels take a view set whose geometry is 1-D, out unit stride, inputs 0 or 1. */
template <int N> static bool is_contig(const dc_geom<N> &g)
{
    if (g.ndim != 1 || g.st[0][0] != 1) return false;
    for (int k = 1; k < N; k++)
        if (g.st[k][0] != 0 && g.st[k][0] != 1) return false;
    return true;
}

template <class F>
static dc_status unary_forward(const F &f, typename F::out_t *out, const typename F::in_t *in, const dc_geom<2> &g,
                               int64_t n, cudaStream_t stream)
{
    typedef typename F::in_t TI;
    typedef typename F::out_t TO;
    constexpr int V = pack_width<TI, TO>();
    const int64_t si = g.st[1][0];
    const int vec = n >= V && aligned(out, sizeof(TO) * V) && (si == 0 || aligned(in, sizeof(TI) * V));
    unary_contig_kernel<F, V><<<dc_cuda_blocks(vec ? n / V : n), DC_CUDA_THREADS, 0, stream>>>(f, out, in, si, n, vec);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class F>
static dc_status unary_forward_strided(const F &f, typename F::out_t *out, const typename F::in_t *in,
                                       const dc_geom<2> &g, int64_t n, cudaStream_t stream)
{
    unary_strided_kernel<F><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(f, out, in, sgeom_make<2>(g, n), n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class F>
static dc_status binary_forward(const F &f, typename F::out_t *out, const typename F::in_t *a,
                                const typename F::in_t *b, const dc_geom<3> &g, int64_t n, cudaStream_t stream)
{
    typedef typename F::in_t TI;
    typedef typename F::out_t TO;
    constexpr int V = pack_width<TI, TO>();
    const int64_t sa = g.st[1][0], sb = g.st[2][0];
    const int vec = n >= V && aligned(out, sizeof(TO) * V) && (sa == 0 || aligned(a, sizeof(TI) * V)) &&
                    (sb == 0 || aligned(b, sizeof(TI) * V));
    binary_contig_kernel<F, V>
        <<<dc_cuda_blocks(vec ? n / V : n), DC_CUDA_THREADS, 0, stream>>>(f, out, a, b, sa, sb, n, vec);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class F>
static dc_status binary_forward_strided(const F &f, typename F::out_t *out, const typename F::in_t *a,
                                        const typename F::in_t *b, const dc_geom<3> &g, int64_t n, cudaStream_t stream)
{
    binary_strided_kernel<F><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(f, out, a, b, sgeom_make<3>(g, n), n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class T>
static dc_status where_forward(T *out, const uint8_t *c, const T *a, const T *b, const dc_geom<4> &g, int64_t n,
                               cudaStream_t stream)
{
    if (!is_contig<4>(g)) {
        where_strided_kernel<T>
            <<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, c, a, b, sgeom_make<4>(g, n), n);
        DC_CUDA_CHECK_LAUNCH();
        return DC_OK;
    }
    constexpr int V = 16 / sizeof(T);
    const int64_t sc = g.st[1][0], sa = g.st[2][0], sb = g.st[3][0];
    const int vec = n >= V && aligned(out, sizeof(T) * V) && (sc == 0 || aligned(c, V)) &&
                    (sa == 0 || aligned(a, sizeof(T) * V)) && (sb == 0 || aligned(b, sizeof(T) * V));
    where_contig_kernel<T, V>
        <<<dc_cuda_blocks(vec ? n / V : n), DC_CUDA_THREADS, 0, stream>>>(out, c, a, b, sc, sa, sb, n, vec);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* --- parameters (host) ------------------------------------------------------------------------------ */

/* (C)v as the CPU converts a double parameter: a plain C cast (for floats: round to nearest). */
template <class C> static ew_prm<C> prm_of(const dc_kargs *a)
{
    ew_prm<C> p;
    memset(&p, 0, sizeof p);
    if constexpr (std::is_floating_point<C>::value) {
        p.lo = (C)-INFINITY;
        p.hi = (C)INFINITY;
    } else {
        p.lo = std::numeric_limits<C>::min();
        p.hi = std::numeric_limits<C>::max();
    }
    if (a->op == DC_OP_CLAMP || a->op == DC_OP_CLAMP_BWD) {
        const struct dc_clamp_params *c = &a->p.clamp;
        if (c->has_lo) p.lo = (C)c->lo;
        if (c->has_hi) p.hi = (C)c->hi;
    } else if (a->op == DC_OP_POW_SCALAR || a->op == DC_OP_RPOW_SCALAR) {
        const double e = a->p.scalar.value;
        if constexpr (std::is_floating_point<C>::value) p.e = (C)e;
        p.e_kind = a->op == DC_OP_POW_SCALAR ? (e == 2.0 ? 2 : e == 1.0 ? 1 : 0) : 0;
    }
    return p;
}

/* --- unary / scalar --------------------------------------------------------------------------------- */

/* The ops each dtype class has a contiguous kernel for (the CPU's dtype rules); with_*_op calls
 * `go(std::integral_constant<int, DC_OP_X>())` for the op, instantiating one kernel per listed op. */
/* clang-format off */
#define UNARY_FLOAT_OPS(X) \
    X(NEG) X(EXP) X(LOG) X(SQRT) X(RSQRT) X(SIN) X(COS) X(TANH) X(SIGMOID) X(RELU) X(GELU_TANH) X(GELU_ERF) \
    X(SILU) X(ABS) X(LOG1P) X(EXPM1) X(ERF) X(CLAMP) X(POW_SCALAR) X(RPOW_SCALAR)
#define UNARY_INT_OPS(X) X(NEG) X(ABS) X(CLAMP)
#define BINARY_FLOAT_OPS(X) \
    X(ADD) X(SUB) X(MUL) X(DIV) X(POW) X(MAXIMUM) X(MINIMUM) X(FLOOR_DIVIDE) X(REMAINDER) \
    X(RELU_BWD) X(GELU_TANH_BWD) X(GELU_ERF_BWD) X(SILU_BWD) X(SIGMOID_BWD) X(TANH_BWD) X(CLAMP_BWD) \
    X(LOG1P_BWD) X(EXPM1_BWD) X(ERF_BWD)
#define BINARY_INT_OPS(X) \
    X(ADD) X(SUB) X(MUL) X(MAXIMUM) X(MINIMUM) X(FLOOR_DIVIDE) X(REMAINDER) X(BITWISE_AND) X(BITWISE_OR) X(BITWISE_XOR)
#define BINARY_BOOL_OPS(X) X(MAXIMUM) X(MINIMUM) X(BITWISE_AND) X(BITWISE_OR) X(BITWISE_XOR)
#define COMPARE_OPS(X) X(EQ) X(NE) X(LT) X(LE) X(GT) X(GE)
/* clang-format on */
#define OP_CASE(ID) \
    case DC_OP_##ID: return go(std::integral_constant<int, DC_OP_##ID>());

template <class T, class G> static dc_status with_unary_op(dc_op op, G &&go)
{
    if constexpr (std::is_floating_point<typename cty<T>::type>::value) {
        switch (op) {
            UNARY_FLOAT_OPS(OP_CASE)
        default: break;
        }
    } else {
        switch (op) {
            UNARY_INT_OPS(OP_CASE)
        default: break;
        }
    }
    return dc_error(DC_ERR_INTERNAL, "cuda %s: not a unary op", dc_op_names[op]);
}

template <class T, class G> static dc_status with_binary_op(dc_op op, G &&go)
{
    typedef typename cty<T>::type C;
    if constexpr (std::is_floating_point<C>::value) {
        switch (op) {
            BINARY_FLOAT_OPS(OP_CASE)
        default: break;
        }
    } else if constexpr (std::is_same<C, uint8_t>::value) {
        switch (op) {
            BINARY_BOOL_OPS(OP_CASE)
        default: break;
        }
    } else {
        switch (op) {
            BINARY_INT_OPS(OP_CASE)
        default: break;
        }
    }
    return dc_error(DC_ERR_INTERNAL, "cuda %s: not a binary op", dc_op_names[op]);
}

template <class G> static dc_status with_compare_op(dc_op op, G &&go)
{
    switch (op) {
        COMPARE_OPS(OP_CASE)
    default: break;
    }
    return dc_error(DC_ERR_INTERNAL, "cuda %s: not a comparison", dc_op_names[op]);
}

/* Operands of one elementwise entry: count, same shape, dtypes; DC_ERR_INTERNAL on a mismatch (the
 * op layer guarantees them). want[k] < 0: operand k's dtype is checked by the caller. */
static dc_status check_operands(const dc_kargs *a, int nt, const dc_kview *const v[], const int want[])
{
    const char *name = dc_op_names[a->op];
    if (a->nt < nt) return dc_error(DC_ERR_INTERNAL, "cuda %s: %d operands, want %d", name, a->nt, nt);
    DC_TRY(check_same_shape(name, nt, v));
    for (int k = 0; k < nt; k++)
        if (want[k] >= 0 && v[k]->dtype != (dc_dtype)want[k])
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d is %s, want %s", name, k, dc_dtype_name(v[k]->dtype),
                            dc_dtype_name((dc_dtype)want[k]));
    return DC_OK;
}

/* UNARY and SCALAR ops: t0 = op(t1), one dtype, t0 contiguous (any view works). */
static dc_status k_unary(const dc_kargs *a)
{
    const dc_kview *v[2] = { &a->t[0], &a->t[1] };
    const dc_op op = a->op;
    const dc_dtype dt = v[1]->dtype;
    const int want[2] = { (int)dt, -1 };
    DC_TRY(check_operands(a, 2, v, want));
    DC_TRY(check_dtype(op, dt, true, op == DC_OP_NEG || op == DC_OP_ABS || op == DC_OP_CLAMP, false));
    const int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const dc_geom<2> g = geom_make<2>(v);
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DT_FLOATS | DT_INTS>(dt, dc_op_names[op], [&](auto tag) {
        typedef decltype(tag) T;
        typedef typename cty<T>::type C;
        T *out = (T *)v[0]->data;
        const T *in = (const T *)v[1]->data;
        const ew_prm<C> p = prm_of<C>(a);
        if (!is_contig<2>(g)) return unary_forward_strided(unary_fn<T, -1>{ (int)op, p }, out, in, g, n, stream);
        return with_unary_op<T>(op, [&](auto k) {
            return unary_forward(unary_fn<T, decltype(k)::value>{ (int)op, p }, out, in, g, n, stream);
        });
    });
}

/* --- binary / grad / compare / where ---------------------------------------------------------------- */

/* BINARY and GRAD ops: t0 = op(t1, t2), one dtype; t1, t2 broadcast to t0's shape (stride 0). */
static dc_status k_binary(const dc_kargs *a)
{
    const dc_kview *v[3] = { &a->t[0], &a->t[1], &a->t[2] };
    const dc_op op = a->op;
    const dc_dtype dt = v[0]->dtype;
    const int want[3] = { (int)dt, (int)dt, (int)dt };
    DC_TRY(check_operands(a, 3, v, want));
    const bool bitwise = op == DC_OP_BITWISE_AND || op == DC_OP_BITWISE_OR || op == DC_OP_BITWISE_XOR;
    const bool int_ok = bitwise || op == DC_OP_ADD || op == DC_OP_SUB || op == DC_OP_MUL || op == DC_OP_MAXIMUM ||
                        op == DC_OP_MINIMUM || op == DC_OP_FLOOR_DIVIDE || op == DC_OP_REMAINDER;
    const bool bool_ok = bitwise || op == DC_OP_MAXIMUM || op == DC_OP_MINIMUM;
    DC_TRY(check_dtype(op, dt, !bitwise, int_ok, bool_ok));
    const int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const dc_geom<3> g = geom_make<3>(v);
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_DT_ALL>(dt, dc_op_names[op], [&](auto tag) {
        typedef decltype(tag) T;
        typedef typename cty<T>::type C;
        T *out = (T *)v[0]->data;
        const T *x = (const T *)v[1]->data, *y = (const T *)v[2]->data;
        const ew_prm<C> p = prm_of<C>(a);
        if (!is_contig<3>(g)) return binary_forward_strided(binary_fn<T, -1>{ (int)op, p }, out, x, y, g, n, stream);
        return with_binary_op<T>(op, [&](auto k) {
            return binary_forward(binary_fn<T, decltype(k)::value>{ (int)op, p }, out, x, y, g, n, stream);
        });
    });
}

/* COMPARE ops: t0 (bool) = t1 op t2, t1 and t2 of one dtype, broadcast. */
static dc_status k_compare(const dc_kargs *a)
{
    const dc_kview *v[3] = { &a->t[0], &a->t[1], &a->t[2] };
    const dc_op op = a->op;
    const dc_dtype dt = v[1]->dtype;
    const int want[3] = { DC_BOOL, -1, (int)dt };
    DC_TRY(check_operands(a, 3, v, want));
    DC_TRY(check_dtype(op, dt, true, true, true));
    const int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const dc_geom<3> g = geom_make<3>(v);
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DC_DT_ALL>(dt, dc_op_names[op], [&](auto tag) {
        typedef decltype(tag) T;
        uint8_t *out = (uint8_t *)v[0]->data;
        const T *x = (const T *)v[1]->data, *y = (const T *)v[2]->data;
        if (!is_contig<3>(g)) return binary_forward_strided(compare_fn<T, -1>{ (int)op }, out, x, y, g, n, stream);
        return with_compare_op(op, [&](auto k) {
            return binary_forward(compare_fn<T, decltype(k)::value>{ (int)op }, out, x, y, g, n, stream);
        });
    });
}

/* WHERE: t0 = t1 ? t2 : t3, t1 bool, t0/t2/t3 one dtype (any, moved as bits), broadcast. */
static dc_status k_where(const dc_kargs *a)
{
    const dc_kview *v[4] = { &a->t[0], &a->t[1], &a->t[2], &a->t[3] };
    const dc_dtype dt = v[0]->dtype;
    if (a->nt >= 2 && v[1]->dtype != DC_BOOL)
        return dc_error(DC_ERR_DTYPE, "where: condition must be bool, got %s", dc_dtype_name(v[1]->dtype));
    const int want[4] = { (int)dt, DC_BOOL, (int)dt, (int)dt };
    DC_TRY(check_operands(a, 4, v, want));
    if ((unsigned)dt >= DC_DTYPE_COUNT) return check_dtype(a->op, dt, false, false, false);
    const int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    const dc_geom<4> g = geom_make<4>(v);
    cudaStream_t stream = dc_cuda_stream();
    const uint8_t *c = (const uint8_t *)v[1]->data;
    switch (dc_dtype_size(dt)) {
    case 1:
        return where_forward<uint8_t>((uint8_t *)v[0]->data, c, (const uint8_t *)v[2]->data,
                                      (const uint8_t *)v[3]->data, g, n, stream);
    case 2:
        return where_forward<uint16_t>((uint16_t *)v[0]->data, c, (const uint16_t *)v[2]->data,
                                       (const uint16_t *)v[3]->data, g, n, stream);
    case 4:
        return where_forward<uint32_t>((uint32_t *)v[0]->data, c, (const uint32_t *)v[2]->data,
                                       (const uint32_t *)v[3]->data, g, n, stream);
    case 8:
        return where_forward<uint64_t>((uint64_t *)v[0]->data, c, (const uint64_t *)v[2]->data,
                                       (const uint64_t *)v[3]->data, g, n, stream);
    default: return dc_error(DC_ERR_INTERNAL, "cuda where: dtype %s has no element size", dc_dtype_name(dt));
    }
}

/* --- registration ------------------------------------------------------------------------------------ */

void dc_cuda_register_elementwise(dc_kernel_fn *k)
{
#define SET(ID) k[DC_OP_##ID] = k_unary;
    UNARY_FLOAT_OPS(SET)
#undef SET
#define SET(ID) k[DC_OP_##ID] = k_binary;
    BINARY_FLOAT_OPS(SET)
    k[DC_OP_BITWISE_AND] = k_binary;
    k[DC_OP_BITWISE_OR] = k_binary;
    k[DC_OP_BITWISE_XOR] = k_binary;
#undef SET
#define SET(ID) k[DC_OP_##ID] = k_compare;
    COMPARE_OPS(SET)
#undef SET
    k[DC_OP_WHERE] = k_where;
    dc_cuda_register_random(k);
}
