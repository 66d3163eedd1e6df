/* dtype.c: dtype tables. */
#include "dtype.h"

#include <stdio.h>

static const size_t dtype_sizes[] = { 4, 8, 2, 2, 4, 8, 1, 1, 1, 2 };
static const char *const dtype_names[] = { "float32", "float64", "bfloat16", "float16", "int32",
                                           "int64",   "bool",    "uint8",    "int8",    "int16" };
_Static_assert(sizeof(dtype_sizes) / sizeof(dtype_sizes[0]) == DC_DTYPE_COUNT, "dtype_sizes");
_Static_assert(sizeof(dtype_names) / sizeof(dtype_names[0]) == DC_DTYPE_COUNT, "dtype_names");

size_t dc_dtype_size(dc_dtype d)
{
    return (unsigned)d < DC_DTYPE_COUNT ? dtype_sizes[d] : 0;
}
const char *dc_dtype_name(dc_dtype d)
{
    return (unsigned)d < DC_DTYPE_COUNT ? dtype_names[d] : "?";
}
int dc_dtype_is_float(dc_dtype d)
{
    return d == DC_FLOAT32 || d == DC_FLOAT64 || d == DC_BFLOAT16 || d == DC_FLOAT16;
}

int dc_dtype_is_int(dc_dtype d)
{
    return d == DC_INT32 || d == DC_INT64 || d == DC_UINT8 || d == DC_INT8 || d == DC_INT16;
}

/* 0 bool, 1 integer, 2 floating point */
static int category(dc_dtype d)
{
    return d == DC_BOOL ? 0 : dc_dtype_is_float(d) ? 2 : 1;
}

static int int_rank(dc_dtype d) /* signed width order */
{
    switch (d) {
    case DC_INT8: return 0;
    case DC_INT16: return 1;
    case DC_INT32: return 2;
    default: return 3; /* int64 */
    }
}

static int float_rank(dc_dtype d)
{
    return d == DC_FLOAT64 ? 2 : d == DC_FLOAT32 ? 1 : 0; /* the 16-bit floats */
}

dc_dtype dc_promote_types(dc_dtype a, dc_dtype b)
{
    if (a == b) return a;
    int ca = category(a), cb = category(b);
    if (ca != cb) return ca > cb ? a : b;
    if (ca == 2) {
        if (float_rank(a) == 0 && float_rank(b) == 0) return DC_FLOAT32; /* float16 with bfloat16 */
        return float_rank(a) > float_rank(b) ? a : b;
    }
    /* integers: uint8 meets a signed type */
    if (a == DC_UINT8 || b == DC_UINT8) {
        dc_dtype s = a == DC_UINT8 ? b : a;
        return s == DC_INT8 ? DC_INT16 : s;
    }
    return int_rank(a) > int_rank(b) ? a : b;
}

int dc_can_cast(dc_dtype from, dc_dtype to)
{
    if (dc_dtype_is_float(from) && !dc_dtype_is_float(to)) return 0;
    if (from != DC_BOOL && to == DC_BOOL) return 0;
    return 1;
}

const char *dc_device_str(dc_device d)
{
    static _Thread_local char buf[32];
    if (d.type == DC_CPU) return "cpu";
    snprintf(buf, sizeof buf, "cuda:%d", d.index);
    return buf;
}
