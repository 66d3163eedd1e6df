/* backend.c: the CPU kernel table and host memory. Every slot of dc_kop is filled; the kernels
 * live in elementwise.c, random.c, reduce.c, nn.c, linalg.c and optim.c. */
#include "cpu.h"

#include <pthread.h>

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

static const dc_backend cpu_backend = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .alloc = dc_cpu_alloc,
    .free = dc_cpu_free,
    .to_host = cpu_memcpy,
    .from_host = cpu_memcpy,
    .synchronize = cpu_synchronize,
    .kernels = {
        [DC_K_COPY] = dc_cpu_copy,
        [DC_K_FILL] = dc_cpu_fill,
        [DC_K_ARANGE] = dc_cpu_arange,
        [DC_K_RAND] = dc_cpu_rand,
        [DC_K_RANDN] = dc_cpu_randn,
        [DC_K_RANDINT] = dc_cpu_randint,
        [DC_K_NEG] = dc_cpu_unary,
        [DC_K_EXP] = dc_cpu_unary,
        [DC_K_LOG] = dc_cpu_unary,
        [DC_K_SQRT] = dc_cpu_unary,
        [DC_K_RSQRT] = dc_cpu_unary,
        [DC_K_SIN] = dc_cpu_unary,
        [DC_K_COS] = dc_cpu_unary,
        [DC_K_TANH] = dc_cpu_unary,
        [DC_K_SIGMOID] = dc_cpu_unary,
        [DC_K_RELU] = dc_cpu_unary,
        [DC_K_GELU_TANH] = dc_cpu_unary,
        [DC_K_GELU_ERF] = dc_cpu_unary,
        [DC_K_SILU] = dc_cpu_unary,
        [DC_K_ABS] = dc_cpu_unary,
        [DC_K_CLAMP] = dc_cpu_unary,
        [DC_K_POW_SCALAR] = dc_cpu_unary,
        [DC_K_RPOW_SCALAR] = dc_cpu_unary,
        [DC_K_ADD] = dc_cpu_binary,
        [DC_K_SUB] = dc_cpu_binary,
        [DC_K_MUL] = dc_cpu_binary,
        [DC_K_DIV] = dc_cpu_binary,
        [DC_K_POW] = dc_cpu_binary,
        [DC_K_MAXIMUM] = dc_cpu_binary,
        [DC_K_MINIMUM] = dc_cpu_binary,
        [DC_K_EQ] = dc_cpu_compare,
        [DC_K_NE] = dc_cpu_compare,
        [DC_K_LT] = dc_cpu_compare,
        [DC_K_LE] = dc_cpu_compare,
        [DC_K_GT] = dc_cpu_compare,
        [DC_K_GE] = dc_cpu_compare,
        [DC_K_RELU_BWD] = dc_cpu_binary,
        [DC_K_GELU_TANH_BWD] = dc_cpu_binary,
        [DC_K_GELU_ERF_BWD] = dc_cpu_binary,
        [DC_K_SILU_BWD] = dc_cpu_binary,
        [DC_K_SIGMOID_BWD] = dc_cpu_binary,
        [DC_K_TANH_BWD] = dc_cpu_binary,
        [DC_K_CLAMP_BWD] = dc_cpu_binary,
        [DC_K_WHERE] = dc_cpu_where,
        [DC_K_SUM] = dc_cpu_reduce,
        [DC_K_MAX] = dc_cpu_reduce,
        [DC_K_MIN] = dc_cpu_reduce,
        [DC_K_ARGMAX] = dc_cpu_argreduce,
        [DC_K_ARGMIN] = dc_cpu_argreduce,
        [DC_K_SOFTMAX] = dc_cpu_softmax,
        [DC_K_LOG_SOFTMAX] = dc_cpu_softmax,
        [DC_K_SOFTMAX_BWD] = dc_cpu_softmax_bwd,
        [DC_K_LOG_SOFTMAX_BWD] = dc_cpu_softmax_bwd,
        [DC_K_LAYERNORM] = dc_cpu_layernorm,
        [DC_K_LAYERNORM_BWD] = dc_cpu_layernorm_bwd,
        [DC_K_MATMUL] = dc_cpu_matmul,
        [DC_K_GATHER] = dc_cpu_gather,
        [DC_K_SCATTER_ADD] = dc_cpu_scatter_add,
        [DC_K_INDEX_SELECT] = dc_cpu_index_select,
        [DC_K_INDEX_ADD] = dc_cpu_index_add,
        [DC_K_TRIL] = dc_cpu_tril,
        [DC_K_SGD] = dc_cpu_sgd,
        [DC_K_ADAMW] = dc_cpu_adamw,
        [DC_K_NORM_POW] = dc_cpu_norm_pow,
        [DC_K_SCALE] = dc_cpu_scale,
    },
};
/* A new dc_kop must get a slot above: DC_K_SCALE is the last id today. */
_Static_assert(DC_K_SCALE + 1 == DC_KOP_COUNT, "cpu backend: fill the slot of every new dc_kop");

int dc_cpu_forked_child;

static void on_fork_child(void)
{
    dc_cpu_forked_child = 1;
#ifdef _OPENMP
    omp_set_num_threads(1); /* for the parallel regions sized by the OpenMP default, and OpenBLAS's */
#endif
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
