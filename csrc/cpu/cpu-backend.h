/* cpu-backend.h: what the CPU backend hands to whoever assembles the library (the Python binding,
 * the C kernel test): its kernel table, to register with dc_backend_register (core/ops.h), and its
 * caching host allocator, which the table's alloc/free/cache slots use. */
#ifndef DC_CPU_BACKEND_H
#define DC_CPU_BACKEND_H

#include <stddef.h>

#include "../core/status.h"
#include "../core/tensor.h"

struct dc_backend;
const struct dc_backend *dc_cpu_backend_get(void);

/* Host memory: freed large blocks are cached for reuse, up to DUTYCYCLE_CPU_CACHE_MB. */
dc_status dc_cpu_alloc(dc_device dev, size_t nbytes, void **out);
void dc_cpu_free(dc_device dev, void *p);
void dc_cpu_cache_info(size_t *cached, size_t *limit);
void dc_cpu_empty_cache(void);

/* The thread count of the kernels (and OpenBLAS's GEMMs) started from the calling thread: OpenMP's
 * per-thread nthreads setting, as torch.set_num_threads. n < 1 is ignored; a forked child stays at 1. */
void dc_cpu_set_num_threads(int n);
int dc_cpu_get_num_threads(void);

#endif
