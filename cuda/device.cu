/* device.cu: what every CUDA kernel file and the binding share: the current stream, the caching
 * device allocator, pinned host memory, cuBLASLt/cuDNN handles, streams and events in PyTorch's
 * shape, and the counted sync points.
 *
 * Streams. The compute stream of a device is the legacy default stream, as in PyTorch: every
 * kernel runs on it unless the thread made another current (dutycycle.cuda.stream(s)), and it is
 * ordered with every blocking stream. Streams created here are non-blocking (cudaStreamNonBlocking),
 * so copies and NCCL on them overlap the compute stream; order between streams is by events only.
 *
 * Memory. Device memory comes from one dc_cache (csrc/alloc/) per device over cudaMalloc: in the
 * steady state a training step calls neither cudaMalloc nor cudaFree (cudaFree also synchronises
 * the whole device). A block belongs to the stream it was allocated on; tensors used on another
 * stream are marked with record_stream, whose events the cache polls before reuse. Pinned host
 * memory (loader batches, checkpoint staging, non_blocking copies) comes from a second dc_cache over
 * cudaHostAlloc; a pinned block that fed an async copy is reused only after the copy's event.
 *
 * Sync points. Every host wait on the device goes through here or csrc/core and is counted
 * (dc_sync_note): the Trainer shows the count in its duty-cycle report and a test asserts that a
 * step outside the logging interval makes none. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <cublasLt.h>
#include <cudnn.h>

#include "../csrc/alloc/alloc.h"
#include "common.cuh"
#include "cuda-backend.h"

#define DC_MAX_GPUS 64

/* --- devices ------------------------------------------------------------------------------------ */

static std::atomic<int> g_device_count(-1);

/* Number of usable GPUs; 0, never an error, when there is no driver, no device or a broken
 * install. Cached: CUDA fixes the visible set (CUDA_VISIBLE_DEVICES) when it initialises. */
extern "C" int dc_cuda_device_count(void)
{
    int n = g_device_count.load(std::memory_order_relaxed);
    if (n >= 0) return n;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        n = 0;
        (void)cudaGetLastError(); /* "no driver" must not show up at the next launch check */
    }
    if (n > DC_MAX_GPUS) n = DC_MAX_GPUS;
    g_device_count.store(n, std::memory_order_relaxed);
    return n;
}

static dc_status check_device(int dev)
{
    int n = dc_cuda_device_count();
    if (dev < 0 || dev >= n)
        return dc_error(DC_ERR_DEVICE, "cuda:%d: invalid device ordinal (%d CUDA device(s) visible)", dev, n);
    return DC_OK;
}

/* Kernels get data pointers but no device: with one visible GPU the current device is always
 * right; with several, ask CUDA which device owns `p` (~1 us) and make it current. */
dc_status dc_cuda_use_device_of(const void *p)
{
    if (dc_cuda_device_count() <= 1) return DC_OK;
    cudaPointerAttributes attr;
    DC_CUDA_TRY(cudaPointerGetAttributes(&attr, p));
    if (attr.type == cudaMemoryTypeDevice && attr.device >= 0) DC_CUDA_TRY(cudaSetDevice(attr.device));
    return DC_OK;
}

static int current_device(void)
{
    int d = 0;
    if (cudaGetDevice(&d) != cudaSuccess) {
        (void)cudaGetLastError();
        d = 0;
    }
    return d;
}

/* --- the current stream ----------------------------------------------------------------------------- */

static thread_local cudaStream_t t_current[DC_MAX_GPUS]; /* NULL: the compute stream */

cudaStream_t dc_cuda_stream(void)
{
    int d = current_device();
    return (d >= 0 && d < DC_MAX_GPUS && t_current[d]) ? t_current[d] : cudaStreamLegacy;
}

extern "C" void *dc_cuda_current_stream(int dev)
{
    if (dev < 0 || dev >= DC_MAX_GPUS || !t_current[dev]) return (void *)cudaStreamLegacy;
    return (void *)t_current[dev];
}

extern "C" dc_status dc_cuda_set_current_stream(int dev, void *stream)
{
    DC_TRY(check_device(dev));
    t_current[dev] = (stream == (void *)cudaStreamLegacy) ? NULL : (cudaStream_t)stream;
    return DC_OK;
}

extern "C" void *dc_cuda_compute_stream(void)
{
    return (void *)cudaStreamLegacy;
}

/* --- the caching device allocator --------------------------------------------------------------- */

typedef struct {
    int dev;
} dev_ctx;

static dev_ctx g_ctx[DC_MAX_GPUS];
static dc_cache *g_cache[DC_MAX_GPUS];
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static std::atomic<long> g_raw_mallocs(0), g_raw_frees(0);

static dc_status raw_device_alloc(void *ctx, size_t n, void **out)
{
    int dev = ((dev_ctx *)ctx)->dev;
    DC_CUDA_TRY(cudaSetDevice(dev));
    cudaError_t e = cudaMalloc(out, n);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *out = NULL;
        return DC_ERR_NOMEM; /* the cache frees what it holds and retries, then names the sizes */
    }
    DC_CUDA_TRY(e);
    g_raw_mallocs++;
    return DC_OK;
}

/* Cannot report: an error (e.g. cudaErrorCudartUnloading at interpreter exit) is dropped. */
static void raw_device_free(void *ctx, void *p)
{
    int dev = ((dev_ctx *)ctx)->dev;
    if (cudaSetDevice(dev) != cudaSuccess || cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
    g_raw_frees++;
}

static dc_status ev_record(void *ctx, void *stream, void **out)
{
    (void)ctx;
    cudaEvent_t ev;
    DC_CUDA_TRY(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    cudaError_t e = cudaEventRecord(ev, (cudaStream_t)stream);
    if (e != cudaSuccess) {
        cudaEventDestroy(ev);
        DC_CUDA_TRY(e);
    }
    *out = (void *)ev;
    return DC_OK;
}

static int ev_query(void *ctx, void *ev)
{
    (void)ctx;
    cudaError_t e = cudaEventQuery((cudaEvent_t)ev);
    if (e == cudaSuccess) return 1;
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return 0;
    }
    (void)cudaGetLastError();
    return -1; /* a failed device: nothing will run on it again, the memory is idle */
}

static void ev_destroy(void *ctx, void *ev)
{
    (void)ctx;
    if (cudaEventDestroy((cudaEvent_t)ev) != cudaSuccess) (void)cudaGetLastError();
}

/* Byte budget per device from DUTYCYCLE_CUDA_MEMORY_LIMIT_MB (tests, sharing a GPU), 0: none. */
static size_t memory_limit(void)
{
    const char *e = getenv("DUTYCYCLE_CUDA_MEMORY_LIMIT_MB");
    if (!e || !*e) return 0;
    char *end;
    long long mb = strtoll(e, &end, 10);
    return (*end == '\0' && mb > 0) ? (size_t)mb << 20 : 0;
}

static dc_status cache_of(int dev, dc_cache **out)
{
    DC_TRY(check_device(dev));
    pthread_mutex_lock(&g_cache_lock);
    dc_status st = DC_OK;
    if (!g_cache[dev]) {
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", dev);
        g_ctx[dev].dev = dev;
        dc_cache_config cfg = { name,      &g_ctx[dev], raw_device_alloc, raw_device_free,
                                ev_record, ev_query,    ev_destroy,       memory_limit() };
        st = dc_cache_init(&g_cache[dev], &cfg);
    }
    *out = g_cache[dev];
    pthread_mutex_unlock(&g_cache_lock);
    return st;
}

/* DUTYCYCLE_CUDA_POISON=1: every block handed out is filled with 0xFF bytes first (NaN in every
 * float dtype, -1 in integers), so a kernel that leaves an output element unwritten fails the
 * cross-device op test instead of passing on a lucky zero. Off by default (one memset per alloc). */
static int poison_enabled(void)
{
    static std::atomic<int> on(-1);
    int v = on.load(std::memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("DUTYCYCLE_CUDA_POISON");
        v = e && *e && strcmp(e, "0") != 0;
        on.store(v, std::memory_order_relaxed);
    }
    return v;
}

/* The table's alloc: a block for the current stream of `dev`. */
static dc_status cuda_alloc(dc_device dev, size_t nbytes, void **out)
{
    *out = NULL;
    if (nbytes == 0) return DC_OK;
    dc_cache *c = NULL;
    DC_TRY(cache_of(dev.index, &c));
    dc_status st = dc_cache_alloc(c, nbytes, dc_cuda_current_stream(dev.index), out);
    if (st == DC_ERR_NOMEM) {
        /* add what CUDA says is free to the cache's message */
        size_t free_b = 0, total_b = 0;
        if (cudaSetDevice(dev.index) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
            (void)cudaGetLastError();
        char msg[768];
        snprintf(msg, sizeof msg, "%s", dc_last_error());
        return dc_error(DC_ERR_NOMEM, "%s; the GPU has %.2f GiB free of %.2f GiB", msg, (double)free_b / (1 << 30),
                        (double)total_b / (1 << 30));
    }
    if (!st && poison_enabled()) {
        DC_CUDA_TRY(cudaSetDevice(dev.index));
        DC_CUDA_TRY(cudaMemsetAsync(*out, 0xFF, nbytes, (cudaStream_t)dc_cuda_current_stream(dev.index)));
    }
    return st;
}

static void cuda_free(dc_device dev, void *p)
{
    if (!p || dev.index < 0 || dev.index >= DC_MAX_GPUS || !g_cache[dev.index]) return;
    (void)dc_cache_release(g_cache[dev.index], p); /* a pointer the cache never gave: reported there */
}

static void cuda_cache_info(size_t *cached, size_t *limit)
{
    *cached = 0;
    *limit = 0;
    for (int d = 0; d < DC_MAX_GPUS; d++) {
        if (!g_cache[d]) continue;
        dc_cache_stats s;
        dc_cache_get_stats(g_cache[d], &s);
        *cached += (size_t)(s.reserved - s.allocated);
    }
}

extern "C" void dc_cuda_empty_cache(void)
{
    for (int d = 0; d < DC_MAX_GPUS; d++)
        if (g_cache[d]) dc_cache_empty(g_cache[d]);
}

extern "C" dc_status dc_cuda_memory_stats(int dev, dc_cache_stats *out, long *raw_mallocs, long *raw_frees)
{
    memset(out, 0, sizeof *out);
    *raw_mallocs = g_raw_mallocs.load();
    *raw_frees = g_raw_frees.load();
    DC_TRY(check_device(dev));
    if (g_cache[dev]) dc_cache_get_stats(g_cache[dev], out);
    return DC_OK;
}

extern "C" dc_status dc_cuda_reset_peak_memory_stats(int dev)
{
    DC_TRY(check_device(dev));
    if (g_cache[dev]) dc_cache_reset_peak(g_cache[dev]);
    return DC_OK;
}

extern "C" dc_status dc_cuda_record_stream(int dev, void *ptr, void *stream)
{
    dc_cache *c = NULL;
    DC_TRY(cache_of(dev, &c));
    return dc_cache_record_stream(c, ptr, stream);
}

extern "C" dc_status dc_cuda_mem_get_info(int dev, size_t *free_b, size_t *total_b)
{
    DC_TRY(check_device(dev));
    DC_CUDA_TRY(cudaSetDevice(dev));
    DC_CUDA_TRY(cudaMemGetInfo(free_b, total_b));
    return DC_OK;
}

dc_status dc_cuda_scratch(size_t nbytes, void **out)
{
    *out = NULL;
    if (nbytes == 0) return DC_OK;
    int d = current_device();
    dc_cache *c = NULL;
    DC_TRY(cache_of(d, &c));
    return dc_cache_alloc(c, nbytes, (void *)dc_cuda_stream(), out);
}

void dc_cuda_scratch_free(void *p)
{
    if (!p) return;
    int d = current_device();
    if (d >= 0 && d < DC_MAX_GPUS && g_cache[d]) (void)dc_cache_release(g_cache[d], p);
}

/* --- pinned host memory -------------------------------------------------------------------------- */

static dc_cache *g_pinned;

static dc_status raw_pinned_alloc(void *ctx, size_t n, void **out)
{
    (void)ctx;
    cudaError_t e = cudaHostAlloc(out, n, cudaHostAllocPortable);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *out = NULL;
        return DC_ERR_NOMEM;
    }
    DC_CUDA_TRY(e);
    return DC_OK;
}

static void raw_pinned_free(void *ctx, void *p)
{
    (void)ctx;
    if (cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}

static dc_status pinned_cache(dc_cache **out)
{
    if (dc_cuda_device_count() == 0)
        return dc_error(DC_ERR_DEVICE, "pinned host memory needs a CUDA device, and none is available");
    pthread_mutex_lock(&g_cache_lock);
    dc_status st = DC_OK;
    if (!g_pinned) {
        dc_cache_config cfg = { "pinned host memory", NULL, raw_pinned_alloc, raw_pinned_free, ev_record, ev_query,
                                ev_destroy,           0 };
        st = dc_cache_init(&g_pinned, &cfg);
    }
    *out = g_pinned;
    pthread_mutex_unlock(&g_cache_lock);
    return st;
}

/* Pinned blocks are not tied to a stream: all of them live in the pool of "stream" NULL, and a use
 * by an async copy is recorded with dc_cuda_host_record_stream. */
extern "C" dc_status dc_cuda_host_alloc(size_t nbytes, void **out)
{
    dc_cache *c = NULL;
    DC_TRY(pinned_cache(&c));
    return dc_cache_alloc(c, nbytes, NULL, out);
}

extern "C" void dc_cuda_host_free(void *p)
{
    if (p && g_pinned) (void)dc_cache_release(g_pinned, p);
}

extern "C" int dc_cuda_host_is_pinned_block(const void *p)
{
    return g_pinned && dc_cache_block_size(g_pinned, p) > 0;
}

extern "C" dc_status dc_cuda_host_record_stream(void *p, void *stream)
{
    dc_cache *c = NULL;
    DC_TRY(pinned_cache(&c));
    return dc_cache_record_stream(c, p, stream);
}

extern "C" void dc_cuda_host_stats(dc_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (g_pinned) dc_cache_get_stats(g_pinned, out);
}

extern "C" void dc_cuda_host_empty_cache(void)
{
    if (g_pinned) dc_cache_empty(g_pinned);
}

/* Page-lock memory someone else allocated (the loader's pooled batch buffers, the checkpoint
 * staging ring): done once per buffer, which is then reused for the life of the pool. */
extern "C" dc_status dc_cuda_host_register(void *p, size_t n)
{
    if (dc_cuda_device_count() == 0) return dc_error(DC_ERR_DEVICE, "host_register: no CUDA device is available");
    cudaError_t e = cudaHostRegister(p, n, cudaHostRegisterPortable);
    if (e == cudaErrorHostMemoryAlreadyRegistered) {
        (void)cudaGetLastError();
        return DC_OK;
    }
    DC_CUDA_TRY(e);
    return DC_OK;
}

extern "C" void dc_cuda_host_unregister(void *p)
{
    if (cudaHostUnregister(p) != cudaSuccess) (void)cudaGetLastError();
}

/* Is `p` page-locked (ours, registered, or anyone's cudaHostAlloc)? */
static int host_is_pinned(const void *p)
{
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return attr.type == cudaMemoryTypeHost;
}

/* --- copies ------------------------------------------------------------------------------------------ */

/* Sync point (counted by the core): returns when the bytes are on the host, after the work queued
 * on the current stream. */
static dc_status cuda_to_host(dc_device dev, void *dst, const void *src, size_t n)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    cudaStream_t s = (cudaStream_t)dc_cuda_current_stream(dev.index);
    DC_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, s));
    DC_CUDA_TRY(cudaStreamSynchronize(s));
    return DC_OK;
}

/* Returns once `src` may be reused. From pageable memory the runtime stages the bytes before it
 * returns (no wait for the device); from page-locked memory the DMA reads `src` itself, so wait
 * for it (counted): callers who want the copy to overlap use dc_cuda_copy_h2d_async. */
static dc_status cuda_from_host(dc_device dev, void *dst, const void *src, size_t n)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    cudaStream_t s = (cudaStream_t)dc_cuda_current_stream(dev.index);
    DC_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s));
    if (host_is_pinned(src)) {
        dc_sync_note(DC_SYNC_SYNCHRONIZE);
        DC_CUDA_TRY(cudaStreamSynchronize(s));
    }
    return DC_OK;
}

/* Host -> device on `stream` without waiting: `src` must be one of our pinned blocks (or the
 * caller keeps it unchanged until the stream passes this point); ours is marked so the pinned
 * cache does not hand it out again before the copy has read it. */
extern "C" dc_status dc_cuda_copy_h2d_async(int dev, void *dst, const void *src, size_t n, void *stream,
                                            void *pinned_block)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev));
    DC_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, (cudaStream_t)stream));
    if (pinned_block) DC_TRY(dc_cuda_host_record_stream(pinned_block, stream));
    return DC_OK;
}

/* Device -> pinned host on `stream`, not waited for: the caller waits on an event before reading
 * (checkpoint snapshots). */
extern "C" dc_status dc_cuda_copy_d2h_async(int dev, void *dst, const void *src, size_t n, void *stream)
{
    if (n == 0) return DC_OK;
    DC_CUDA_TRY(cudaSetDevice(dev));
    DC_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
    return DC_OK;
}

extern "C" dc_status dc_cuda_index_error_check(void); /* index.cu */

/* Sync point (counted by the core's dc_synchronize): every stream of the device. An out-of-range
 * index met by a gather/scatter kernel since the last check is reported here (DC_ERR_INDEX): the
 * kernels cannot raise without a sync of their own (the Trainer synchronises at each log step). */
static dc_status cuda_synchronize(dc_device dev)
{
    DC_CUDA_TRY(cudaSetDevice(dev.index));
    DC_CUDA_TRY(cudaDeviceSynchronize());
    return dc_cuda_index_error_check();
}

/* --- streams and events (dutycycle.cuda.Stream / Event) ------------------------------------------- */

extern "C" dc_status dc_cuda_stream_create(int dev, int priority, void **out)
{
    DC_TRY(check_device(dev));
    DC_CUDA_TRY(cudaSetDevice(dev));
    int lo = 0, hi = 0;
    DC_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&lo, &hi)); /* lo: least urgent (0), hi: most (negative) */
    if (priority < hi) priority = hi;
    if (priority > lo) priority = lo;
    cudaStream_t s;
    DC_CUDA_TRY(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
    *out = (void *)s;
    return DC_OK;
}

extern "C" void dc_cuda_stream_destroy(void *s)
{
    if (s && s != (void *)cudaStreamLegacy && cudaStreamDestroy((cudaStream_t)s) != cudaSuccess)
        (void)cudaGetLastError();
}

extern "C" dc_status dc_cuda_stream_synchronize(void *s)
{
    dc_sync_note(DC_SYNC_SYNCHRONIZE);
    DC_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)s));
    return DC_OK;
}

/* 1: all work done, 0: not yet (never waits) */
extern "C" dc_status dc_cuda_stream_query(void *s, int *done)
{
    cudaError_t e = cudaStreamQuery((cudaStream_t)s);
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        *done = 0;
        return DC_OK;
    }
    DC_CUDA_TRY(e);
    *done = 1;
    return DC_OK;
}

extern "C" dc_status dc_cuda_stream_wait_event(void *s, void *ev)
{
    DC_CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)s, (cudaEvent_t)ev, 0));
    return DC_OK;
}

extern "C" dc_status dc_cuda_event_create(int timing, int blocking, void **out)
{
    if (dc_cuda_device_count() == 0) return dc_error(DC_ERR_DEVICE, "Event: no CUDA device is available");
    unsigned flags = (timing ? 0u : cudaEventDisableTiming) | (blocking ? cudaEventBlockingSync : 0u);
    cudaEvent_t ev;
    DC_CUDA_TRY(cudaEventCreateWithFlags(&ev, flags));
    *out = (void *)ev;
    return DC_OK;
}

extern "C" void dc_cuda_event_destroy(void *ev)
{
    if (ev && cudaEventDestroy((cudaEvent_t)ev) != cudaSuccess) (void)cudaGetLastError();
}

extern "C" dc_status dc_cuda_event_record(void *ev, void *s)
{
    DC_CUDA_TRY(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)s));
    return DC_OK;
}

extern "C" dc_status dc_cuda_event_synchronize(void *ev)
{
    dc_sync_note(DC_SYNC_SYNCHRONIZE);
    DC_CUDA_TRY(cudaEventSynchronize((cudaEvent_t)ev));
    return DC_OK;
}

extern "C" dc_status dc_cuda_event_query(void *ev, int *done)
{
    cudaError_t e = cudaEventQuery((cudaEvent_t)ev);
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        *done = 0;
        return DC_OK;
    }
    DC_CUDA_TRY(e);
    *done = 1;
    return DC_OK;
}

extern "C" dc_status dc_cuda_event_elapsed_ms(void *start, void *end, float *ms)
{
    DC_CUDA_TRY(cudaEventElapsedTime(ms, (cudaEvent_t)start, (cudaEvent_t)end));
    return DC_OK;
}

/* --- library handles ---------------------------------------------------------------------------------- */

static cublasLtHandle_t g_lt[DC_MAX_GPUS];
static cudnnHandle_t g_dnn[DC_MAX_GPUS];

dc_status dc_cuda_cublaslt(struct cublasLtContext **handle)
{
    int d = current_device();
    DC_TRY(check_device(d));
    pthread_mutex_lock(&g_cache_lock);
    dc_status st = DC_OK;
    if (!g_lt[d]) {
        cublasStatus_t r = cublasLtCreate(&g_lt[d]);
        if (r != CUBLAS_STATUS_SUCCESS) {
            g_lt[d] = NULL;
            st = dc_error(DC_ERR_CUDA, "cuda:%d: cublasLtCreate failed (status %d)", d, (int)r);
        }
    }
    *handle = g_lt[d];
    pthread_mutex_unlock(&g_cache_lock);
    return st;
}

dc_status dc_cuda_cudnn(struct cudnnContext **handle)
{
    int d = current_device();
    DC_TRY(check_device(d));
    pthread_mutex_lock(&g_cache_lock);
    dc_status st = DC_OK;
    if (!g_dnn[d]) {
        cudnnStatus_t r = cudnnCreate(&g_dnn[d]);
        if (r != CUDNN_STATUS_SUCCESS) {
            g_dnn[d] = NULL;
            st = dc_error(DC_ERR_CUDA, "cuda:%d: cudnnCreate failed: %s", d, cudnnGetErrorString(r));
        }
    }
    cudnnHandle_t h = g_dnn[d];
    pthread_mutex_unlock(&g_cache_lock);
    if (st) return st;
    cudnnStatus_t r = cudnnSetStream(h, dc_cuda_stream());
    if (r != CUDNN_STATUS_SUCCESS) return dc_error(DC_ERR_CUDA, "cudnnSetStream: %s", cudnnGetErrorString(r));
    *handle = h;
    return DC_OK;
}

/* --- the table ------------------------------------------------------------------------------------ */

static int table_device_count(void)
{
    return dc_cuda_device_count();
}

extern "C" dc_status dc_cuda_optim_launch_many(int n, const dc_kargs *a);
extern "C" int dc_cuda_launch_has_16bit(const dc_kargs *a); /* backend.cu */

static dc_status launch_many(int n, const dc_kargs *a)
{
    const dc_backend *b = dc_cuda_backend_get();
    /* SGD and AdamW step 16-bit tensors themselves; SCALE and NORM_POW on 16-bit gradients go one by
     * one through the table's float32 fallback (NORM_POW adds into t0) */
    bool any16 = false;
    for (int i = 0; i < n && !any16; i++) any16 = dc_cuda_launch_has_16bit(&a[i]);
    if (any16 && n > 0 && a[0].op != DC_OP_SGD && a[0].op != DC_OP_ADAMW && b->kernels[a[0].op]) {
        for (int i = 0; i < n; i++) DC_TRY(b->kernels[a[i].op](&a[i]));
        return DC_OK;
    }
    if (n > 0 && n < 2 && a[0].op != DC_OP_NORM_POW) { /* one tensor: the table's kernel */
        if (b->kernels[a[0].op]) return b->kernels[a[0].op](&a[0]);
    }
    return dc_cuda_optim_launch_many(n, a);
}

extern "C" void dc_cuda_fill_table(dc_backend *b)
{
    b->name = "cuda";
    b->device_count = table_device_count;
    b->alloc = cuda_alloc;
    b->free = cuda_free;
    b->to_host = cuda_to_host;
    b->from_host = cuda_from_host;
    b->synchronize = cuda_synchronize;
    b->cache_info = cuda_cache_info;
    b->empty_cache = dc_cuda_empty_cache;
    b->launch_many = launch_many;
}
