/* backend.c: the CPU kernel table and host memory. Every slot of dc_op is filled (generated from
 * ops.def's kernel-group column); the kernels live in elementwise.c, random.c, reduce.c, nn.c,
 * conv.c, linalg.c and optim.c, and 16-bit launches they refuse run through widen.c. */
#include "cpu.h"

#include <pthread.h>
#include <stdio.h>

static int cpu_device_count(void)
{
    return 1;
}

static dc_status cpu_memcpy(dc_device dev, void *dst, const void *src, size_t n)
{
    (void)dev;
    if (n) memcpy(dst, src, n);
    return DC_OK;
}

static dc_status cpu_synchronize(dc_device dev)
{
    (void)dev; /* CPU kernels finish before they return */
    return DC_OK;
}

/* Every op of ops.def, by its kernel group: op X of group g runs dc_cpu_g. */
static const dc_kernel_fn cpu_kernels[DC_OP_COUNT] = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) [DC_OP_##id] = dc_cpu_##kern,
#include "../core/ops.def"
#undef DC_OP
};

/* Every launch: the op's kernel; a bfloat16/float16 launch its kernel refuses (DC_ERR_DTYPE: the op
 * layer has checked that the operands' dtypes agree, so a kernel's refusal is the dtype itself)
 * runs on float32 copies (widen.c). Refused again, the kernel's own error stands. */
static dc_status cpu_launch(const dc_kargs *a)
{
    dc_kernel_fn fn = cpu_kernels[a->op];
    dc_status st = fn(a);
    if (st != DC_ERR_DTYPE || !dc_cpu_has_16bit(a)) return st;
    char first[512];
    snprintf(first, sizeof first, "%s", dc_last_error());
    dc_status st2 = dc_cpu_launch_widened(a, fn);
    if (st2 == DC_ERR_DTYPE) return dc_error(st, "%s", first);
    return st2;
}

static const dc_backend cpu_backend = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .alloc = dc_cpu_alloc,
    .free = dc_cpu_free,
    .to_host = cpu_memcpy,
    .from_host = cpu_memcpy,
    .synchronize = cpu_synchronize,
    .cache_info = dc_cpu_cache_info,
    .empty_cache = dc_cpu_empty_cache,
    .kernels = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) [DC_OP_##id] = cpu_launch,
#include "../core/ops.def"
#undef DC_OP
    },
};

int dc_cpu_forked_child;

static void on_fork_child(void)
{
    dc_cpu_forked_child = 1;
#ifdef _OPENMP
    omp_set_num_threads(1); /* for the parallel regions sized by the OpenMP default, and OpenBLAS's */
#endif
}

void dc_cpu_set_num_threads(int n)
{
#ifdef _OPENMP
    if (n >= 1 && !dc_cpu_forked_child) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int dc_cpu_get_num_threads(void)
{
    return cpu_max_threads();
}

static void install_fork_handler(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

const dc_backend *dc_cpu_backend_get(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_fork_handler);
    return &cpu_backend;
}
