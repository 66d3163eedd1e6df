/* backend.cu: the CUDA backend's kernel table (see csrc/core/backend-impl.h): memory, host <-> device
 * copies, and the first kernels (copy, fill, add) that prove the dispatch path end to end.
 *
 * Only compiled when the build has CUDA (DC_WITH_CUDA); nothing here runs at load time, so
 * `import dutycycle` works without a driver or GPU, and device_count() then says 0.
 *
 * Streams: everything runs on the legacy default stream for now, so kernels, cudaMemcpyAsync and
 * the blocking host copies are ordered with each other (a later issue adds streams).
 *
 * Which device: the table's memory functions take a dc_device and call cudaSetDevice(dev.index).
 * Kernels get only a dc_kargs, which carries data pointers but no device; with one visible GPU the
 * current device is always right. With several, each kernel asks CUDA which device owns t0's
 * pointer (cudaPointerGetAttributes, ~1 us) and makes it current; operands on one device is the
 * op layer's check. Carrying the device in dc_kargs would make that lookup unnecessary. */
#include <math.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "common.cuh"
#include "cuda-backend.h"

/* --- devices ---------------------------------------------------------------------------------- */

static std::atomic<int> g_device_count(-1);

/* Number of usable GPUs; 0, never an error, when there is no driver, no device or a broken
 * install. Cached: CUDA fixes the visible set (CUDA_VISIBLE_DEVICES) when it initialises. */
static int device_count(void)
{
    int n = g_device_count.load(std::memory_order_relaxed);
    if (n >= 0) return n;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        n = 0;
        (void)cudaGetLastError(); /* "no driver" must not show up at the next launch check */
    }
    g_device_count.store(n, std::memory_order_relaxed);
    return n;
}

/* Make the device that owns `p` current (see the file comment). */
static dc_status use_device_of(const void *p)
{
    if (device_count() <= 1) return DC_OK;
    cudaPointerAttributes attr;
    DC_CUDA_TRY(cudaPointerGetAttributes(&attr, p));
    if (attr.type == cudaMemoryTypeDevice && attr.device >= 0) DC_CUDA_TRY(cudaSetDevice(attr.device));
    return DC_OK;
}

/* --- memory ----------------------------------------------------------------------------------- */

/* nbytes == 0 gives *out = NULL and DC_OK; free(NULL) is a no-op (the core frees only non-NULL). */
static dc_status cuda_alloc(dc_device dev, size_t nbytes, void **out)
{
    *out = NULL;
    if (nbytes == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    cudaError_t e = cudaMalloc(out, nbytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *out = NULL;
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        return dc_error(DC_ERR_NOMEM, "out of memory on %s allocating %zu bytes (%zu of %zu bytes free)",
                        dc_device_str(dev), nbytes, free_b, total_b);
    }
    DC_CUDA_TRY(e);
    return DC_OK;
}

/* Cannot report: the error (e.g. cudaErrorCudartUnloading when Python frees tensors at exit after
 * CUDA shut down) is dropped. Note: cudaFree synchronises the device. */
static void cuda_free(dc_device dev, void *p)
{
    if (!p) return;
    if (cudaSetDevice(dev.index) != cudaSuccess || cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}

/* Sync point: returns when the bytes are on the host (after all queued work on the device). */
static dc_status cuda_to_host(dc_device dev, void *dst, const void *src, size_t n)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    DC_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
    return DC_OK;
}

/* From pageable host memory: returns once `src` may be reused. */
static dc_status cuda_from_host(dc_device dev, void *dst, const void *src, size_t n)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    DC_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
    return DC_OK;
}

/* Sync point: waits for all work on the device; reports faults of earlier kernels. */
static dc_status cuda_synchronize(dc_device dev)
{
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    DC_CUDA_TRY(cudaDeviceSynchronize());
    return DC_OK;
}

/* --- geometry --------------------------------------------------------------------------------- */

static int64_t view_numel(const dc_kview *v)
{
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++) n *= v->shape[d];
    return n;
}

/* Every operand of an elementwise kernel must have v[0]'s shape (broadcast inputs come with
 * stride 0, per backend-impl.h); anything else is a bug in the op layer. */
static dc_status check_same_shape(const char *op, int n, const dc_kview *const v[])
{
    for (int k = 1; k < n; k++) {
        int ok = v[k]->ndim == v[0]->ndim;
        for (int d = 0; ok && d < v[0]->ndim; d++) ok = v[k]->shape[d] == v[0]->shape[d];
        if (!ok)
            return dc_error(DC_ERR_INTERNAL, "cuda %s: operand %d has shape %s, output %s", op, k,
                            dc_shape_str(v[k]->ndim, v[k]->shape), dc_shape_str(v[0]->ndim, v[0]->shape));
    }
    return DC_OK;
}

/* Geometry of N same-shape operands with size-1 dims dropped and neighbouring dims merged where
 * every operand walks them as one (stride[d] == stride[d+1] * shape[d+1]). Contiguous and
 * scalar-broadcast operands end up 1-D, which the kernels index without any division. */
template <int N> static dc_geom<N> geom_make(const dc_kview *const v[N])
{
    dc_geom<N> g;
    memset(&g, 0, sizeof g);
    int64_t sh[DC_MAX_DIMS], st[N][DC_MAX_DIMS]; /* innermost first */
    int nd = 0;
    for (int d = v[0]->ndim - 1; d >= 0; d--) {
        int64_t s = v[0]->shape[d];
        if (s == 1) continue;
        if (nd > 0) {
            bool merge = true;
            for (int k = 0; k < N; k++) merge = merge && v[k]->strides[d] == st[k][nd - 1] * sh[nd - 1];
            if (merge) {
                sh[nd - 1] *= s;
                continue;
            }
        }
        sh[nd] = s;
        for (int k = 0; k < N; k++) st[k][nd] = v[k]->strides[d];
        nd++;
    }
    if (nd == 0) { /* one element */
        sh[0] = 1;
        for (int k = 0; k < N; k++) st[k][0] = 0;
        nd = 1;
    }
    g.ndim = nd;
    for (int d = 0; d < nd; d++) {
        g.shape[d] = sh[nd - 1 - d];
        for (int k = 0; k < N; k++) g.st[k][d] = st[k][nd - 1 - d];
    }
    return g;
}

/* --- kernels ---------------------------------------------------------------------------------- */

#define DC_GRID_STRIDE_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* out = a + b; out, a, b: views of one shape (n elements); 16-bit floats add in float. */
template <class T, bool OneD> __global__ void add_kernel(T *out, const T *a, const T *b, dc_geom<3> g, int64_t n)
{
    DC_GRID_STRIDE_LOOP(i, n)
    {
        int64_t o[3];
        dc_geom_offsets<3, OneD>(g, i, o);
        out[o[0]] = dc_store<T>(dc_load(a[o[1]]) + dc_load(b[o[2]]));
    }
}

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

template <class T>
static dc_status add_forward(T *out, const T *a, const T *b, const dc_geom<3> &g, int64_t n, cudaStream_t stream)
{
    if (g.ndim == 1)
        add_kernel<T, true><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, a, b, g, n);
    else
        add_kernel<T, false><<<dc_cuda_blocks(n), DC_CUDA_THREADS, 0, stream>>>(out, a, b, g, n);
    DC_CUDA_CHECK_LAUNCH();
    return DC_OK;
}

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

/* DC_OP_ADD: t0 = t1 + t2, all one dtype; t1/t2 broadcast to t0's shape with stride 0. */
static dc_status k_add(const dc_kargs *a)
{
    const dc_kview *v[3] = { &a->t[0], &a->t[1], &a->t[2] };
    if (a->nt < 3) return dc_error(DC_ERR_INTERNAL, "cuda add: %d operands, want 3", a->nt);
    DC_TRY(check_same_shape("add", 3, v));
    if (v[1]->dtype != v[0]->dtype || v[2]->dtype != v[0]->dtype)
        return dc_error(DC_ERR_INTERNAL, "cuda add: dtypes %s = %s + %s", dc_dtype_name(v[0]->dtype),
                        dc_dtype_name(v[1]->dtype), dc_dtype_name(v[2]->dtype));
    int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(use_device_of(v[0]->data));
    dc_geom<3> g = geom_make<3>(v);
    return dc_dispatch<DC_DT_ARITH>(v[0]->dtype, "add", [&](auto tag) {
        typedef decltype(tag) T;
        return add_forward<T>((T *)v[0]->data, (const T *)v[1]->data, (const T *)v[2]->data, g, n, 0);
    });
}

/* DC_OP_FILL: t0 = p.fill (t0 may be a strided view); all dtypes. */
static dc_status k_fill(const dc_kargs *a)
{
    const dc_kview *v[1] = { &a->t[0] };
    if (a->nt < 1) return dc_error(DC_ERR_INTERNAL, "cuda fill: no output operand");
    int64_t n = view_numel(v[0]);
    if (n == 0) return DC_OK;
    DC_TRY(use_device_of(v[0]->data));
    dc_geom<1> g = geom_make<1>(v);
    const struct dc_fill_params *fp = &a->p.fill;
    double value = fp->is_int ? (double)fp->ivalue : fp->value;
    size_t esize = dc_dtype_size(v[0]->dtype);
    if (value == 0.0 && !signbit(value) && g.ndim == 1 && g.st[0][0] == 1 && esize) {
        /* +0 is all-zero bits in every dtype */
        DC_CUDA_TRY(cudaMemsetAsync(v[0]->data, 0, (size_t)n * esize, 0));
        return DC_OK;
    }
    return dc_dispatch<DC_DT_ALL>(v[0]->dtype, "fill", [&](auto tag) {
        typedef decltype(tag) T;
        T tv = host_cast<T>(value);
        if (std::is_integral<T>::value && fp->is_int) tv = (T)fp->ivalue; /* exact: no trip through double */
        return fill_forward<T>((T *)v[0]->data, g, n, tv, 0);
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
    DC_TRY(use_device_of(v[0]->data));
    dc_geom<2> g = geom_make<2>(v);
    dc_dtype dd = v[0]->dtype, sd = v[1]->dtype;
    if (dd == sd) {
        size_t esize = dc_dtype_size(dd);
        if (g.ndim == 1 && g.st[0][0] == 1 && g.st[1][0] == 1) {
            DC_CUDA_TRY(cudaMemcpyAsync(v[0]->data, v[1]->data, (size_t)n * esize, cudaMemcpyDefault, 0));
            return DC_OK;
        }
        switch (esize) {
        case 1: return copy_forward<uint8_t, uint8_t>((uint8_t *)v[0]->data, (const uint8_t *)v[1]->data, g, n, 0);
        case 2: return copy_forward<uint16_t, uint16_t>((uint16_t *)v[0]->data, (const uint16_t *)v[1]->data, g, n, 0);
        case 4: return copy_forward<uint32_t, uint32_t>((uint32_t *)v[0]->data, (const uint32_t *)v[1]->data, g, n, 0);
        case 8: return copy_forward<uint64_t, uint64_t>((uint64_t *)v[0]->data, (const uint64_t *)v[1]->data, g, n, 0);
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
                return copy_forward<D, S>((D *)v[0]->data, (const S *)v[1]->data, g, n, 0);
            }
        });
    });
}

/* --- the table -------------------------------------------------------------------------------- */

static dc_backend table_make(void)
{
    dc_backend b;
    memset(&b, 0, sizeof b);
    b.name = "cuda";
    b.device_count = device_count;
    b.alloc = cuda_alloc;
    b.free = cuda_free;
    b.to_host = cuda_to_host;
    b.from_host = cuda_from_host;
    b.synchronize = cuda_synchronize;
    b.kernels[DC_OP_COPY] = k_copy;
    b.kernels[DC_OP_FILL] = k_fill;
    b.kernels[DC_OP_ADD] = k_add;
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
    if (index < 0 || index >= device_count()) return buf;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
        (void)cudaGetLastError();
        return buf;
    }
    strncpy(buf, p.name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    return buf;
}
