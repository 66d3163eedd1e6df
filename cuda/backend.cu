/* backend.cu: the CUDA backend's kernel table (see csrc/core/backend-impl.h), assembled from
 * device.cu (memory, copies, sync) and each op family's file, plus copy and fill.
 *
 * Only compiled when the build has CUDA (DC_WITH_CUDA); nothing here runs at load time, so
 * `import dutycycle` works without a driver or GPU, and device_count() then says 0.
 *
 * Streams, memory and which device a kernel runs on: see device.cu. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "common.cuh"
#include "cuda-backend.h"

/* --- kernels ---------------------------------------------------------------------------------- */

/* out[...] = value (converted to T on the host by host_cast, by dc_store's rules). */
template <class T, bool OneD> __global__ void fill_kernel(T *out, dc_geom<1> g, int64_t n, T value)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[1];
        dc_geom_offsets<1, OneD>(g, i, o);
        out[o[0]] = value;
    }
}

/* out = (D)in, element by element; bool -> 0/1, any -> bool is "nonzero". */
template <class D, class S, bool OneD> __global__ void copy_kernel(D *out, const S *in, dc_geom<2> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[2];
        dc_geom_offsets<2, OneD>(g, i, o);
        out[o[0]] = dc_store<D>(dc_load(in[o[1]]));
    }
}

/* --- launchers (plain names, stream last; each launch followed by a check) --------------------- */

template <class T> static dc_status fill_forward(T *out, const dc_geom<1> &g, int64_t n, T value, cudaStream_t stream)
{
    if (g.ndim == 1)
        fill_kernel<T, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, g, n, value);
    else
        fill_kernel<T, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, g, n, value);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

template <class D, class S>
static dc_status copy_forward(D *out, const S *in, const dc_geom<2> &g, int64_t n, cudaStream_t stream)
{
    if (g.ndim == 1)
        copy_kernel<D, S, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, in, g, n);
    else
        copy_kernel<D, S, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, in, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

/* --- host-side value conversion (same rules as dc_store on the device) -------------------------- */

template <class T> static T host_cast(double v)
{
    return static_cast<T>(v);
}
template <> __half host_cast<__half>(double v)
{
    __half_raw r;
    r.x = dc_f32_to_f16((float)v);
    return __half(r);
}
template <> __nv_bfloat16 host_cast<__nv_bfloat16>(double v)
{
    __nv_bfloat16_raw r;
    r.x = dc_f32_to_bf16((float)v);
    return __nv_bfloat16(r);
}
template <> uint8_t host_cast<uint8_t>(double v)
{
    return v != 0.0;
}

/* --- table entries ---------------------------------------------------------------------------- */

/* DC_OP_FILL: t0 = p.fill (t0 may be a strided view); all dtypes. */
static dc_status k_fill(const dc_kargs *a)
{
    const dc_kview *v[1] = { &a->t[0] };
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda fill: no output operand");
    int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    dc_geom<1> g = geom_make<1>(v);
    const struct dc_fill_params *fp = &a->p.fill;
    double value = fp->is_int ? (double)fp->ivalue : fp->value;
    size_t esize = dc_dtype_size(v[0]->dtype);
    if (value == 0.0 && !signbit(value) && g.ndim == 1 && g.st[0][0] == 1 && esize) {
        /* +0 is all-zero bits in every dtype */
        DC_CUDA_TRY(cudaMemsetAsync(v[0]->data, 0, (size_t)n * esize, dc_cuda_stream()));
        return DC_OK;
    }
    return dc_dispatch<DC_DT_ALL>(v[0]->dtype, "fill", [&](auto tag) {
        typedef decltype(tag) T;
        T tv = host_cast<T>(value);
        if (std::is_integral<T>::value && fp->is_int) tv = (T)fp->ivalue; /* exact: no trip through double */
        return fill_forward<T>((T *)v[0]->data, g, n, tv, dc_cuda_stream());
    });
}

/* DC_OP_COPY: t0 <- t1, same shape, both on this device, any strides and dtypes.
 * Same dtype and both contiguous: one cudaMemcpyAsync (cudaMemcpyDefault also covers a peer copy
 * between GPUs). Otherwise a kernel; same-dtype strided copies move raw bits. */
static dc_status k_copy(const dc_kargs *a)
{
    const dc_kview *v[2] = { &a->t[0], &a->t[1] };
    if (a->nt < 2) return dc_error(DC_ERR_INTERNAL, "cuda copy: %d operands, want 2", a->nt);
    DC_TRY(check_same_shape("copy", 2, v));
    int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(dc_cuda_use_device_of(v[0]->data));
    dc_geom<2> g = geom_make<2>(v);
    dc_dtype dd = v[0]->dtype, sd = v[1]->dtype;
    if (dd == sd) {
        size_t esize = dc_dtype_size(dd);
        if (g.ndim == 1 && g.st[0][0] == 1 && g.st[1][0] == 1) {
            DC_CUDA_TRY(
                cudaMemcpyAsync(v[0]->data, v[1]->data, (size_t)n * esize, cudaMemcpyDefault, dc_cuda_stream()));
            return DC_OK;
        }
        switch (esize) {
        case 1:
            return copy_forward<uint8_t, uint8_t>((uint8_t *)v[0]->data, (const uint8_t *)v[1]->data, g, n,
                                                  dc_cuda_stream());
        case 2:
            return copy_forward<uint16_t, uint16_t>((uint16_t *)v[0]->data, (const uint16_t *)v[1]->data, g, n,
                                                    dc_cuda_stream());
        case 4:
            return copy_forward<uint32_t, uint32_t>((uint32_t *)v[0]->data, (const uint32_t *)v[1]->data, g, n,
                                                    dc_cuda_stream());
        case 8:
            return copy_forward<uint64_t, uint64_t>((uint64_t *)v[0]->data, (const uint64_t *)v[1]->data, g, n,
                                                    dc_cuda_stream());
        default: return dc_error(DC_ERR_DTYPE, "cuda copy: unknown dtype id %d", (int)dd);
        }
    }
    return dc_dispatch<DC_DT_ALL>(dd, "copy", [&](auto dtag) {
        typedef decltype(dtag) D;
        return dc_dispatch<DC_DT_ALL>(sd, "copy", [&](auto stag) -> dc_status {
            typedef decltype(stag) S;
            if constexpr (std::is_same<D, S>::value) {
                return dc_error(DC_ERR_INTERNAL, "cuda copy: unreachable same-dtype path");
            } else {
                return copy_forward<D, S>((D *)v[0]->data, (const S *)v[1]->data, g, n, dc_cuda_stream());
            }
        });
    });
}

/* --- 16-bit floats through the float32 kernels ---------------------------------------------------
 * As csrc/cpu/widen.c: a kernel that refuses a bfloat16/float16 operand (DC_ERR_UNSUPPORTED:
 * reductions, scans, index_add, convolutions, the optimizer steps) runs again on float32 copies of
 * every 16-bit operand, and each element it changed is rounded back (nearest even). Which operands
 * a kernel writes is observed, not declared: each 16-bit operand keeps a snapshot of its raw bits,
 * and only elements whose float32 value no longer equals the widened snapshot are stored. All of it
 * on the current stream, scratch from the caching allocator. Correct, not fast: precision="bf16-true"
 * pays two extra passes over those ops' operands. */

static dc_kernel_fn g_kernels[DC_OP_COUNT]; /* the families' own kernels */

__device__ __forceinline__ float widen16(uint16_t h, bool bf16)
{
    return bf16 ? __uint_as_float((uint32_t)h << 16) : __half2float(__ushort_as_half(h));
}

/* o[0]: the float32 copy and the snapshot (contiguous), o[1]: the operand */
template <bool OneD>
__global__ void widen_kernel(float *f32, uint16_t *snap, const uint16_t *src, dc_geom<2> g, int64_t n, bool bf16)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[2];
        dc_geom_offsets<2, OneD>(g, i, o);
        const uint16_t h = src[o[1]];
        snap[o[0]] = h;
        f32[o[0]] = widen16(h, bf16);
    }
}

/* o[0]: the operand, o[1]: the float32 copy and the snapshot */
template <bool OneD>
__global__ void narrow_kernel(uint16_t *dst, const float *f32, const uint16_t *snap, dc_geom<2> g, int64_t n, bool bf16)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[2];
        dc_geom_offsets<2, OneD>(g, i, o);
        const float f = f32[o[1]];
        if (__float_as_uint(f) != __float_as_uint(widen16(snap[o[1]], bf16)))
            dst[o[0]] = bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
    }
}

static bool is16(dc_dtype d)
{
    return d == DC_BFLOAT16 || d == DC_FLOAT16;
}

/* One pass: widen (to_f32) or narrow; a and b the geometry's two views. */
static dc_status convert(bool to_f32, const dc_kview *a, const dc_kview *b, float *f32, uint16_t *snap, uint16_t *x,
                         bool bf16, cudaStream_t stream)
{
    const int64_t n = view_numel(a);
    const dc_kview *vv[2] = { a, b };
    dc_geom<2> g = geom_make<2>(vv);
    if (to_f32) {
        if (g.ndim == 1)
            widen_kernel<true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(f32, snap, x, g, n, bf16);
        else
            widen_kernel<false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(f32, snap, x, g, n, bf16);
    } else {
        if (g.ndim == 1)
            narrow_kernel<true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(x, f32, snap, g, n, bf16);
        else
            narrow_kernel<false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(x, f32, snap, g, n, bf16);
    }
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

static dc_status launch_widened(const dc_kargs *a, dc_kernel_fn fn)
{
    dc_kargs w = *a;
    dc_scratch_guard f32[DC_KARGS_MAX_T], snap[DC_KARGS_MAX_T];
    bool placed = false;
    for (int k = 0; k < a->nt; k++) {
        const dc_kview *v = &a->t[k];
        if (!is16(v->dtype)) continue;
        if (!placed) {
            placed = true;
            DC_TRY(dc_cuda_use_device_of(v->data));
        }
        const int64_t n = view_numel(v);
        DC_TRY(dc_cuda_scratch((size_t)n * sizeof(float), &f32[k].p));
        DC_TRY(dc_cuda_scratch((size_t)n * sizeof(uint16_t), &snap[k].p));
        w.t[k] = dc_kview_contiguous(v, f32[k].p, DC_FLOAT32);
        if (n)
            DC_TRY(convert(true, &w.t[k], v, (float *)f32[k].p, (uint16_t *)snap[k].p, (uint16_t *)v->data,
                           v->dtype == DC_BFLOAT16, dc_cuda_stream()));
    }
    DC_TRY(fn(&w));
    for (int k = 0; k < a->nt; k++) {
        const dc_kview *v = &a->t[k];
        if (!is16(v->dtype) || view_numel(v) == 0) continue;
        DC_TRY(convert(false, v, &w.t[k], (float *)f32[k].p, (uint16_t *)snap[k].p, (uint16_t *)v->data,
                       v->dtype == DC_BFLOAT16, dc_cuda_stream()));
    }
    return DC_OK; /* the scratch goes back stream-ordered: the queued passes still see it */
}

static bool has16(const dc_kargs *a)
{
    for (int k = 0; k < a->nt; k++)
        if (is16(a->t[k].dtype)) return true;
    return false;
}

/* Every slot the families filled: their kernel, and the float32 fallback when it refused a launch
 * with 16-bit operands (DC_ERR_UNSUPPORTED: the op layer has checked that the dtypes agree). Refused
 * again (a limit other than the dtype), the kernel's own error stands. */
static dc_status k_any(const dc_kargs *a)
{
    dc_kernel_fn fn = g_kernels[a->op];
    dc_status st = fn(a);
    if (st != DC_ERR_UNSUPPORTED || !has16(a)) return st;
    char first[512];
    snprintf(first, sizeof first, "%s", dc_last_error());
    dc_status st2 = launch_widened(a, fn);
    if (st2 == DC_ERR_UNSUPPORTED) return dc_error(st, "%s", first);
    return st2;
}

extern "C" int dc_cuda_launch_has_16bit(const dc_kargs *a)
{
    return has16(a);
}

/* --- the table -------------------------------------------------------------------------------- */

extern "C" void dc_cuda_fill_table(dc_backend *b); /* device.cu: memory, copies, sync, launch_many */

static dc_backend table_make(void)
{
    dc_backend b;
    memset(&b, 0, sizeof b);
    dc_cuda_fill_table(&b);
    b.kernels[DC_OP_COPY] = k_copy;
    b.kernels[DC_OP_FILL] = k_fill;
    dc_cuda_register_elementwise(b.kernels);
    dc_cuda_register_reduce(b.kernels);
    dc_cuda_register_scan(b.kernels);
    dc_cuda_register_nn(b.kernels);
    dc_cuda_register_linalg(b.kernels);
    dc_cuda_register_index(b.kernels);
    dc_cuda_register_optim(b.kernels);
    dc_cuda_register_conv(b.kernels);
    dc_cuda_register_loss(b.kernels);
    dc_cuda_register_attention(b.kernels);
    for (int op = 0; op < DC_OP_COUNT; op++) {
        g_kernels[op] = b.kernels[op];
        if (b.kernels[op]) b.kernels[op] = k_any; /* an empty slot stays empty: the op has no CUDA kernel */
    }
    return b;
}

/* Built by a static initialiser when the library loads (touches no CUDA API), so lookups need no
 * lock and no C++ runtime guard symbols. */
static const dc_backend g_table = table_make();

extern "C" const dc_backend *dc_cuda_backend_get(void)
{
    return &g_table;
}

/* --- diagnostics -------------------------------------------------------------------------------- */

/* CUDA runtime version this library was linked against (e.g. 13000), 0 on failure. */
extern "C" int dc_cuda_runtime_version(void)
{
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return v;
}

/* Name of GPU `index` ("NVIDIA H100 80GB HBM3") in a per-thread buffer; "" when there is no such
 * device or no driver. */
extern "C" const char *dc_cuda_device_name(int index)
{
    static thread_local char buf[256];
    buf[0] = '\0';
    if (index < 0 || index >= dc_cuda_device_count()) return buf;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
        (void)cudaGetLastError();
        return buf;
    }
    strncpy(buf, p.name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    return buf;
}
