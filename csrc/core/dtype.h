/* dtype.h: element types, devices and the half-precision conversions every backend shares. */
#ifndef DC_DTYPE_H
#define DC_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Numbers are part of the Python ABI (dutycycle.dtype.id): never renumber. */
typedef enum {
    DC_FLOAT32 = 0,
    DC_FLOAT64 = 1,
    DC_BFLOAT16 = 2,
    DC_FLOAT16 = 3,
    DC_INT32 = 4,
    DC_INT64 = 5,
    DC_BOOL = 6,
    DC_UINT8 = 7,
    DC_INT8 = 8,
    DC_INT16 = 9,
    DC_DTYPE_COUNT
} dc_dtype;

size_t dc_dtype_size(dc_dtype d);
const char *dc_dtype_name(dc_dtype d); /* "float32" */
int dc_dtype_is_float(dc_dtype d);     /* float32/64, bf16, fp16 */
int dc_dtype_is_int(dc_dtype d);       /* the integer types (not bool) */
/* PyTorch's type promotion of two dtypes of the same priority (promoteTypes): bool < the integers
 * (uint8 with int8 -> int16; otherwise the wider) < the floats (float16 with bfloat16 -> float32). */
dc_dtype dc_promote_types(dc_dtype a, dc_dtype b);
/* torch.can_cast: a result of dtype `from` may be written into `to` (no float -> integer, no
 * non-bool -> bool). */
int dc_can_cast(dc_dtype from, dc_dtype to);

typedef enum { DC_CPU = 0, DC_CUDA = 1, DC_DEVICE_TYPE_COUNT } dc_device_type;

typedef struct {
    int type;  /* dc_device_type */
    int index; /* 0 for the CPU */
} dc_device;

static inline int dc_device_eq(dc_device a, dc_device b)
{
    return a.type == b.type && a.index == b.index;
}
/* "cpu", "cuda:1" into a static per-thread buffer. */
const char *dc_device_str(dc_device d);

/* Round-to-nearest-even conversions; NaN stays NaN. */
static inline uint16_t dc_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float dc_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t dc_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absx < 0x38800000u) {                                   /* subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t lower = r & 0x1fffu;
    r >>= 13;
    if (lower > 0x1000u || (lower == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}
static inline float dc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        if (m == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            e = 113;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            u = sign | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        u = sign | 0x7f800000u | (m << 13);
    } else {
        u = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#ifdef __cplusplus
}
#endif
#endif
