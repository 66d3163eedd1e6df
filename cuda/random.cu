/* random.cu: the CREATE kernels that compute their values: arange, rand, randn, randint.
 *
 * The reference is csrc/cpu/random.c and dc_cpu_arange (csrc/cpu/elementwise.c). The generator is
 * counter-based (cpu.h's dc_cpu_rng_u64: splitmix64's mix over seed and counter), so element j of
 * the output (flat row-major index) draws from (seed, offset + j) -- (offset + 2j, + 2j + 1) for
 * randn -- on every device, whatever the launch shape: the same bits as the CPU for rand and
 * randint in every dtype, and for randn's float32/16-bit results (Box-Muller in double, then one
 * rounding; CUDA's double log and cos are within 1-2 ulp of glibc's, so a float32 value can differ
 * only when the double lands within a few ulp of a float rounding boundary, odds ~1e-8 per element,
 * and a float64 randn value can differ by an ulp or two).
 *
 * One generic kernel writes G(j) for every j: a contiguous output gets 16-byte vector stores, any
 * other view is indexed through dc_geom. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "common.cuh"

/* --- the generator (cpu.h) ---------------------------------------------------------------------- */

__host__ __device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* dc_cpu_rng_u64(seed, c) == rng_at(rng_key(seed), c): the seed's half is mixed once, on the host. */
static inline uint64_t rng_key(uint64_t seed)
{
    return mix64(seed + 0x632be59bd9b4e019ULL);
}
__device__ __forceinline__ uint64_t rng_at(uint64_t key, uint64_t counter)
{
    return mix64(key + (counter + 1) * 0x9e3779b97f4a7c15ULL);
}

/* --- element generators: value of flat element j, in storage type T ------------------------------- */

/* rand: uniform [0, 1). float32: 24 random bits, float64: 53; 16-bit: the float32 draw rounded
 * (to nearest even), stepped back below 1.0 when it rounded up to it. */
template <class T> struct rand_gen {
    typedef T type;
    uint64_t key, off;
    __device__ __forceinline__ T operator()(int64_t j) const
    {
        const uint64_t u = rng_at(key, off + (uint64_t)j);
        if constexpr (std::is_same<T, double>::value) {
            return (double)(u >> 11) * 0x1.0p-53;
        } else {
            const float x = (float)(u >> 40) * 0x1.0p-24f;
            if constexpr (std::is_same<T, float>::value) {
                return x;
            } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
                __nv_bfloat16 h = __float2bfloat16_rn(x);
                if (__bfloat162float(h) >= 1.0f)
                    h = __ushort_as_bfloat16((unsigned short)(__bfloat16_as_ushort(h) - 1));
                return h;
            } else {
                __half h = __float2half_rn(x);
                if (__half2float(h) >= 1.0f) h = __ushort_as_half((unsigned short)(__half_as_ushort(h) - 1));
                return h;
            }
        }
    }
};

/* randn: Box-Muller on (u1 in (0, 1], u2 in [0, 1)) in double, rounded once (16-bit: via float,
 * as the CPU's store). */
template <class T> struct randn_gen {
    typedef T type;
    uint64_t key, off;
    __device__ __forceinline__ T operator()(int64_t j) const
    {
        const uint64_t c = off + 2 * (uint64_t)j;
        const double u1 = __dmul_rn((double)(rng_at(key, c) >> 11) + 1.0, 0x1.0p-53);
        const double u2 = __dmul_rn((double)(rng_at(key, c + 1) >> 11), 0x1.0p-53);
        const double z = __dmul_rn(sqrt(__dmul_rn(-2.0, log(u1))), cos(__dmul_rn(6.283185307179586, u2)));
        return dc_store<T>(z);
    }
};

/* randint: [lo, hi) by multiply-shift of 64 random bits; int32 keeps the low 32 bits, floats
 * round to nearest. */
template <class T> struct randint_gen {
    typedef T type;
    uint64_t key, off, lo, range;
    __device__ __forceinline__ T operator()(int64_t j) const
    {
        const uint64_t u = rng_at(key, off + (uint64_t)j);
        const int64_t v = (int64_t)(lo + __umul64hi(u, range));
        return static_cast<T>(v);
    }
};

/* arange: start + j * step, never accumulated; integers truncate toward zero, NaN gives 0 and
 * out-of-range values saturate (cpu.h's cpu_f2i / cpu_f2i32). */
template <class T> struct arange_gen {
    typedef T type;
    double start, step;
    __device__ __forceinline__ T operator()(int64_t j) const
    {
        const double x = __dadd_rn(start, __dmul_rn((double)j, step));
        if constexpr (std::is_same<T, int32_t>::value) {
            if (x != x) return 0;
            if (x >= 2147483647.0) return INT32_MAX;
            if (x <= -2147483648.0) return INT32_MIN;
            return (int32_t)x;
        } else if constexpr (std::is_same<T, int64_t>::value) {
            if (x != x) return 0;
            if (x >= 9.2233720368547758e18) return INT64_MAX;
            if (x <= -9.2233720368547758e18) return INT64_MIN;
            return (int64_t)x;
        } else {
            return (T)x;
        }
    }
};

/* --- kernel ------------------------------------------------------------------------------------------ */

template <class T, int V> struct alignas(sizeof(T) * V) gpack {
    T v[V];
};

/* out[j] = gen(j) for j < n. vec: out is contiguous and aligned, V elements per 16-byte store;
 * contig: out is contiguous; otherwise element j sits at dc_geom's offset of flat index j. */
template <class G, int V>
__global__ void generate_kernel(G gen, typename G::type *out, dc_geom<1> g, int64_t n, int contig, int vec)
{
    typedef typename G::type T;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, nth = (int64_t)gridDim.x * blockDim.x;
    if (!contig) {
        for (int64_t j = tid; j < n; j += nth) {
            int64_t o[1];
            dc_geom_offsets<1, false>(g, j, o);
            out[o[0]] = gen(j);
        }
        return;
    }
    int64_t done = 0;
    if (vec) {
        const int64_t nv = n / V;
        for (int64_t k = tid; k < nv; k += nth) {
            gpack<T, V> p;
#pragma unroll
            for (int i = 0; i < V; i++) p.v[i] = gen(k * V + i);
            reinterpret_cast<gpack<T, V> *>(out)[k] = p;
        }
        done = nv * V;
    }
    for (int64_t j = done + tid; j < n; j += nth) out[j] = gen(j);
}

template <class G> static dc_status generate(const G &gen, const dc_kview *o, int64_t n, cudaStream_t stream)
{
    typedef typename G::type T;
    constexpr int V = 16 / sizeof(T);
    const dc_kview *v[1] = { o };
    const dc_geom<1> g = geom_make<1>(v);
    const int contig = g.ndim == 1 && g.st[0][0] == 1;
    const int vec = contig && n >= V && ((uintptr_t)o->data % (sizeof(T) * V)) == 0;
    generate_kernel<G, V>
        <<<dc_cuda_blocks(vec ? n / V : n), DC_CUDA_THREADS, 0, stream>>>(gen, (T *)o->data, g, n, contig, vec);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* --- table entries -------------------------------------------------------------------------------------- */

/* The CPU's "op does not support dtype" error; the narrow integers, which the CPU's arange takes,
 * have no CUDA storage type. */
static dc_status bad_dtype(dc_op op, dc_dtype dt, bool narrow_ok)
{
    if (narrow_ok && (dt == DC_UINT8 || dt == DC_INT8 || dt == DC_INT16))
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no CUDA kernel for dtype %s", dc_op_names[op],
                        dc_dtype_name(dt));
    return dc_error(DC_ERR_DTYPE, "%s does not support %s", dc_op_names[op], dc_dtype_name(dt));
}

#define DT_RANDF (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_BFLOAT16) | DC_DT_BIT(DC_FLOAT16))
#define DT_RANDI (DC_DT_BIT(DC_FLOAT32) | DC_DT_BIT(DC_FLOAT64) | DC_DT_BIT(DC_INT32) | DC_DT_BIT(DC_INT64))

static bool in_mask(dc_dtype dt, unsigned mask)
{
    return (unsigned)dt < 32 && (mask & DC_DT_BIT(dt));
}

/* ARANGE: t0 (n,) = start + i * step; float32, float64, int32, int64. */
static dc_status k_arange(const dc_kargs *a)
{
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda arange: no output operand");
    const dc_kview *o = &a->t[0];
    if (!in_mask(o->dtype, DT_RANDI)) return bad_dtype(a->op, o->dtype, true);
    const int64_t n = view_numel(o);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    const double start = a->p.arange.start, step = a->p.arange.step;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DT_RANDI>(o->dtype, "arange", [&](auto tag) {
        typedef decltype(tag) T;
        return generate(arange_gen<T>{ start, step }, o, n, stream);
    });
}

/* RAND: t0 uniform in [0, 1); float32, float64, bfloat16, float16. */
static dc_status k_rand(const dc_kargs *a)
{
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda rand: no output operand");
    const dc_kview *o = &a->t[0];
    if (!in_mask(o->dtype, DT_RANDF)) return bad_dtype(a->op, o->dtype, false);
    const int64_t n = view_numel(o);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    const uint64_t key = rng_key(a->p.random.seed), off = a->p.random.offset;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DT_RANDF>(o->dtype, "rand", [&](auto tag) {
        typedef decltype(tag) T;
        return generate(rand_gen<T>{ key, off }, o, n, stream);
    });
}

/* RANDN: t0 standard normal; float32, float64, bfloat16, float16. Uses counters offset .. offset +
 * 2n - 1. */
static dc_status k_randn(const dc_kargs *a)
{
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda randn: no output operand");
    const dc_kview *o = &a->t[0];
    if (!in_mask(o->dtype, DT_RANDF)) return bad_dtype(a->op, o->dtype, false);
    const int64_t n = view_numel(o);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(o->data));
    const uint64_t key = rng_key(a->p.random.seed), off = a->p.random.offset;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DT_RANDF>(o->dtype, "randn", [&](auto tag) {
        typedef decltype(tag) T;
        return generate(randn_gen<T>{ key, off }, o, n, stream);
    });
}

/* RANDINT: t0 uniform integers in [low, high); float32, float64, int32, int64. */
static dc_status k_randint(const dc_kargs *a)
{
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda randint: no output operand");
    const dc_kview *o = &a->t[0];
    if (!in_mask(o->dtype, DT_RANDI)) return bad_dtype(a->op, o->dtype, false);
    const int64_t n = view_numel(o), lo = a->p.random.low, hi = a->p.random.high;
    if (n == 0) return DC_OK;
    if (hi <= lo) return dc_error(DC_ERR_VALUE, "randint: empty range [%lld, %lld)", (long long)lo, (long long)hi);
    DC_TRY(dc_cuda_use_device_of(o->data));
    const uint64_t key = rng_key(a->p.random.seed), off = a->p.random.offset;
    const uint64_t range = (uint64_t)hi - (uint64_t)lo;
    cudaStream_t stream = dc_cuda_stream();
    return dc_dispatch<DT_RANDI>(o->dtype, "randint", [&](auto tag) {
        typedef decltype(tag) T;
        return generate(randint_gen<T>{ key, off, (uint64_t)lo, range }, o, n, stream);
    });
}

/* Called from dc_cuda_register_elementwise (elementwise.cu). */
void dc_cuda_register_random(dc_kernel_fn *k)
{
    k[DC_OP_ARANGE] = k_arange;
    k[DC_OP_RAND] = k_rand;
    k[DC_OP_RANDN] = k_randn;
    k[DC_OP_RANDINT] = k_randint;
}
