/* random.c: RAND, RANDN, RANDINT from the counter-based generator in cpu.h.
 *
 * Element j of the (contiguous) output uses counter offset + j (offset + 2j, 2j+1 for normals), so
 * a tensor's values depend only on (seed, offset): the same on 1 or 64 threads, and the same as
 * drawing the tensor in pieces. */
#include "cpu.h"

#define TWO_PI 6.283185307179586

static inline double u53(uint64_t u)
{
    return (double)(u >> 11) * 0x1.0p-53;
} /* [0, 1) */
static inline float u24(uint64_t u)
{
    return (float)(u >> 40) * 0x1.0p-24f;
} /* [0, 1) */

dc_status dc_cpu_rand(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    const int64_t n = cpu_numel(o);
    const uint64_t seed = a->p.random.seed, off = a->p.random.offset;
    switch (o->dtype) {
    case DC_FLOAT32: {
        float *d = (float *)o->data;
#pragma omp parallel for if (n >= DC_CPU_PAR_MIN / 4)
        for (int64_t j = 0; j < n; j++) d[j] = u24(dc_cpu_rng_u64(seed, off + (uint64_t)j));
        break;
    }
    case DC_FLOAT64: {
        double *d = (double *)o->data;
#pragma omp parallel for if (n >= DC_CPU_PAR_MIN / 4)
        for (int64_t j = 0; j < n; j++) d[j] = u53(dc_cpu_rng_u64(seed, off + (uint64_t)j));
        break;
    }
    case DC_BFLOAT16:
    case DC_FLOAT16: {
        /* Rounding to 8/11 mantissa bits can reach 1.0; step back to the largest value below. */
        char *d = o->data;
        const dc_dtype dt = o->dtype;
#pragma omp parallel for if (n >= DC_CPU_PAR_MIN / 4)
        for (int64_t j = 0; j < n; j++) {
            float x = u24(dc_cpu_rng_u64(seed, off + (uint64_t)j));
            uint16_t h = dt == DC_BFLOAT16 ? dc_f32_to_bf16(x) : dc_f32_to_f16(x);
            float back = dt == DC_BFLOAT16 ? dc_bf16_to_f32(h) : dc_f16_to_f32(h);
            if (back >= 1.0f) h--;
            ((uint16_t *)d)[j] = h;
        }
        break;
    }
    default: return cpu_bad_dtype(a->op, o->dtype);
    }
    return DC_OK;
}

/* Box-Muller on (u1 in (0,1], u2 in [0,1)): u1 never 0, so log never sees 0. Computed in double and
 * rounded once to the output type. */
static inline double normal_at(uint64_t seed, uint64_t c)
{
    double u1 = ((double)(dc_cpu_rng_u64(seed, c) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = u53(dc_cpu_rng_u64(seed, c + 1));
    return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

dc_status dc_cpu_randn(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    const int64_t n = cpu_numel(o);
    const uint64_t seed = a->p.random.seed, off = a->p.random.offset;
    const dc_dtype dt = o->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_BFLOAT16 && dt != DC_FLOAT16) return cpu_bad_dtype(a->op, dt);
    const size_t es = cpu_esize(o);
#pragma omp parallel for if (n >= DC_CPU_PAR_MIN / 8)
    for (int64_t j = 0; j < n; j++) {
        double z = normal_at(seed, off + 2 * (uint64_t)j);
        if (dt == DC_FLOAT32)
            ((float *)o->data)[j] = (float)z;
        else if (dt == DC_FLOAT64)
            ((double *)o->data)[j] = z;
        else
            cpu_store_f(o->data + j * es, dt, z);
    }
    return DC_OK;
}

dc_status dc_cpu_randint(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0];
    const int64_t n = cpu_numel(o), lo = a->p.random.low, hi = a->p.random.high;
    const uint64_t seed = a->p.random.seed, off = a->p.random.offset;
    const dc_dtype dt = o->dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_INT32 && dt != DC_INT64) return cpu_bad_dtype(a->op, dt);
    if (hi <= lo && n > 0)
        return dc_error(DC_ERR_VALUE, "randint: empty range [%lld, %lld)", (long long)lo, (long long)hi);
    /* Multiply-shift maps 64 random bits onto the range with bias below 2^-32 for any sane range. */
    const uint64_t range = (uint64_t)hi - (uint64_t)lo;
    const size_t es = cpu_esize(o);
#pragma omp parallel for if (n >= DC_CPU_PAR_MIN / 4)
    for (int64_t j = 0; j < n; j++) {
        uint64_t u = dc_cpu_rng_u64(seed, off + (uint64_t)j);
        int64_t v = (int64_t)((uint64_t)lo + (uint64_t)(((unsigned __int128)u * range) >> 64));
        cpu_store_i(o->data + j * es, dt, v);
    }
    return DC_OK;
}
