/* dtype.c: dtype tables. */
#include "dtype.h"

#include <stdio.h>

static const size_t dtype_sizes[] = { 4, 8, 2, 2, 4, 8, 1 };
static const char *const dtype_names[] = { "float32", "float64", "bfloat16", "float16", "int32", "int64", "bool" };
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

const char *dc_device_str(dc_device d)
{
    static _Thread_local char buf[32];
    if (d.type == DC_CPU) return "cpu";
    snprintf(buf, sizeof buf, "cuda:%d", d.index);
    return buf;
}
