/* cuda-backend.h: what the rest of dutycycle may call in cuda/ (only linked when the build compiled
 * cuda/, DC_WITH_CUDA): the kernel table, for whoever assembles the library to register with
 * dc_backend_register (core/ops.h), and device.cu's streams, events, memory statistics and pinned
 * host memory for the binding (csrc/python/cuda_py.c). Streams and events are opaque pointers
 * (cudaStream_t / cudaEvent_t); the compute stream is the legacy default stream. Every function
 * that can fail returns dc_status with the message in the thread's error buffer. */
#ifndef DC_CUDA_BACKEND_H
#define DC_CUDA_BACKEND_H

#include <stddef.h>

#include "../csrc/alloc/alloc.h"
#include "../csrc/core/status.h"
#include "../csrc/plan/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dc_backend;
const struct dc_backend *dc_cuda_backend_get(void);

int dc_cuda_device_count(void); /* 0 without a driver or device, never an error */
int dc_cuda_runtime_version(void);
const char *dc_cuda_device_name(int index);

/* streams: the current one per (thread, device); NULL/compute = the legacy default stream */
void *dc_cuda_compute_stream(void);
void *dc_cuda_current_stream(int dev);
dc_status dc_cuda_set_current_stream(int dev, void *stream);
dc_status dc_cuda_stream_create(int dev, int priority, void **out); /* non-blocking */
void dc_cuda_stream_destroy(void *stream);
dc_status dc_cuda_stream_synchronize(void *stream); /* counted sync point */
dc_status dc_cuda_stream_query(void *stream, int *done);
dc_status dc_cuda_stream_wait_event(void *stream, void *event);

dc_status dc_cuda_event_create(int timing, int blocking, void **out);
void dc_cuda_event_destroy(void *event);
dc_status dc_cuda_event_record(void *event, void *stream);
dc_status dc_cuda_event_synchronize(void *event); /* counted sync point */
dc_status dc_cuda_event_query(void *event, int *done);
dc_status dc_cuda_event_elapsed_ms(void *start, void *end, float *ms);

/* the caching device allocator */
dc_status dc_cuda_memory_stats(int dev, dc_cache_stats *out, long *raw_mallocs, long *raw_frees);
dc_status dc_cuda_reset_peak_memory_stats(int dev);
void dc_cuda_empty_cache(void);
dc_status dc_cuda_record_stream(int dev, void *ptr, void *stream);
dc_status dc_cuda_mem_get_info(int dev, size_t *free_bytes, size_t *total_bytes);

/* pinned host memory: a caching allocator over cudaHostAlloc, and registration of others' buffers */
dc_status dc_cuda_host_alloc(size_t nbytes, void **out);
void dc_cuda_host_free(void *p);
int dc_cuda_host_is_pinned_block(const void *p);
dc_status dc_cuda_host_record_stream(void *p, void *stream);
void dc_cuda_host_stats(dc_cache_stats *out);
void dc_cuda_host_empty_cache(void);
dc_status dc_cuda_host_register(void *p, size_t n);
void dc_cuda_host_unregister(void *p);

/* async copies on a given stream (not waited for) */
dc_status dc_cuda_copy_h2d_async(int dev, void *dst, const void *src, size_t n, void *stream, void *pinned_block);
dc_status dc_cuda_copy_d2h_async(int dev, void *dst, const void *src, size_t n, void *stream);

/* matmul (linalg.cu): tf32 for float32 GEMMs and convolutions (torch.backends.cuda.matmul.allow_tf32) */
void dc_cuda_set_allow_tf32(int on);
int dc_cuda_get_allow_tf32(void);
/* The plan caches of the cuBLASLt matmuls (linalg.cu) and the cuDNN convolutions (conv.cu):
 * dutycycle.cuda.plan_cache_stats(); a warm training step makes no miss. */
void dc_cuda_matmul_cache_stats(dc_plan_cache_stats *s);
void dc_cuda_conv_cache_stats(dc_plan_cache_stats *s);

#ifdef __cplusplus
}
#endif
#endif
