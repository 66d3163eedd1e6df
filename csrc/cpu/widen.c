/* widen.c: every CPU op on bfloat16 and float16 tensors, through its float32 kernel.
 *
 * The CPU kernels compute in float32/float64 (matmul, copies and casts also read 16-bit floats
 * themselves). When a kernel refuses a 16-bit operand (DC_ERR_DTYPE), the launch is run again on
 * float32 copies of every 16-bit operand and each element the kernel changed is rounded back to
 * its 16-bit type (round to nearest even): one rounding per result, as PyTorch's CPU kernels do
 * by computing bfloat16/float16 in float. That is what makes precision="bf16-true" / "16-true",
 * 16-bit models and the GPU's 16-bit paths testable on the CPU.
 *
 * Which operands a kernel writes is not declared anywhere, so it is observed: each 16-bit operand
 * is kept as it was (its raw bits) next to its float32 copy, and after the kernel only the
 * elements whose float32 value no longer equals the widened original are stored. Widening is
 * exact, so an input comes back unchanged and is not written, an output is written where it
 * differs from what its memory held (where it equals it, the memory is already right), and
 * operands that alias (in-place ops) each compare with their own snapshot. */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

static int is16(dc_dtype d)
{
    return d == DC_BFLOAT16 || d == DC_FLOAT16;
}

static float widen1(dc_dtype d, uint16_t h)
{
    return d == DC_BFLOAT16 ? dc_bf16_to_f32(h) : dc_f16_to_f32(h);
}

static uint16_t narrow1(dc_dtype d, float f)
{
    return d == DC_BFLOAT16 ? dc_f32_to_bf16(f) : dc_f32_to_f16(f);
}

/* p[0] float32 copy, p[1] raw snapshot, p[2] the operand: copy and snapshot it. */
static void widen_run(char **p, const int64_t *s, int64_t n, const void *ctx)
{
    const dc_dtype d = *(const dc_dtype *)ctx;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p[2] + i * s[2], 2);
        memcpy(p[1] + i * s[1], &h, 2);
        float f = widen1(d, h);
        memcpy(p[0] + i * s[0], &f, 4);
    }
}

/* p[0] the operand, p[1] float32 copy after the kernel, p[2] raw snapshot: store what changed. */
static void narrow_run(char **p, const int64_t *s, int64_t n, const void *ctx)
{
    const dc_dtype d = *(const dc_dtype *)ctx;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        float f;
        memcpy(&h, p[2] + i * s[2], 2);
        memcpy(&f, p[1] + i * s[1], 4);
        float w = widen1(d, h);
        if (memcmp(&f, &w, 4) != 0) {
            uint16_t r = narrow1(d, f);
            memcpy(p[0] + i * s[0], &r, 2);
        }
    }
}

dc_status dc_cpu_launch_widened(const dc_kargs *a, dc_kernel_fn fn)
{
    dc_kargs w = *a;
    float *f32[DC_KARGS_MAX_T] = { 0 };
    uint16_t *raw[DC_KARGS_MAX_T] = { 0 };
    dc_status st = DC_OK;
    for (int k = 0; k < a->nt && !st; k++) {
        const dc_kview *v = &a->t[k];
        if (!is16(v->dtype)) continue;
        const int64_t n = cpu_numel(v);
        f32[k] = malloc((size_t)(n ? n : 1) * sizeof(float));
        raw[k] = malloc((size_t)(n ? n : 1) * sizeof(uint16_t));
        if (!f32[k] || !raw[k]) {
            st = dc_error(DC_ERR_NOMEM, "%s on %s: no host memory for a float32 copy of %lld elements",
                          dc_op_names[a->op], dc_dtype_name(v->dtype), (long long)n);
            break;
        }
        w.t[k] = dc_kview_contiguous(v, f32[k], DC_FLOAT32);
        if (n) {
            dc_kview snap = dc_kview_contiguous(v, raw[k], v->dtype);
            const dc_kview *vv[3] = { &w.t[k], &snap, v };
            cpu_iter it;
            cpu_iter_init(&it, 3, vv, 0);
            cpu_iter_run(&it, widen_run, &v->dtype, DC_CPU_PAR_MIN);
        }
    }
    if (!st) st = fn(&w);
    for (int k = 0; k < a->nt && !st; k++) {
        const dc_kview *v = &a->t[k];
        if (!f32[k] || cpu_numel(v) == 0) continue;
        dc_kview snap = dc_kview_contiguous(v, raw[k], v->dtype);
        const dc_kview *vv[3] = { v, &w.t[k], &snap };
        cpu_iter it;
        cpu_iter_init(&it, 3, vv, 0);
        cpu_iter_run(&it, narrow_run, &v->dtype, DC_CPU_PAR_MIN);
    }
    for (int k = 0; k < a->nt; k++) {
        free(f32[k]);
        free(raw[k]);
    }
    return st;
}

int dc_cpu_has_16bit(const dc_kargs *a)
{
    for (int k = 0; k < a->nt; k++)
        if (is16(a->t[k].dtype)) return 1;
    return 0;
}
