/* backend.c: device dispatch. Looks up the kernel table for a device and launches one kernel. */
#include <stdatomic.h>
#include <string.h>

#include "backend-impl.h"

/* --- tables generated from ops.def --------------------------------------------------------- */

const char *const dc_op_names[DC_OP_COUNT] = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) name,
#include "ops.def"
#undef DC_OP
};
_Static_assert(sizeof(dc_op_names) / sizeof(dc_op_names[0]) == DC_OP_COUNT, "dc_op_names must name every dc_op");

const dc_op_info_t dc_op_info[DC_OP_COUNT] = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) \
    { name, DC_FAM_##fam, DC_OP_##bwd, DC_SAVES_##saves, #params, node },
#include "ops.def"
#undef DC_OP
};
_Static_assert(sizeof(dc_op_info) / sizeof(dc_op_info[0]) == DC_OP_COUNT, "dc_op_info must describe every dc_op");

const char *const dc_op_family_names[DC_FAM_COUNT] = {
    "create",  "unary", "scalar", "binary", "compare", "grad", "where", "reduce", "argreduce",
    "softmax", "norm",  "linalg", "index",  "scan",    "sort", "optim", "conv",   "pool",
};
_Static_assert(sizeof(dc_op_family_names) / sizeof(dc_op_family_names[0]) == DC_FAM_COUNT,
               "dc_op_family_names must name every family");

/* Every params column names a member of dc_kparams, and every backward column a GRAD op. */
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) \
    enum { dc_check_params_##id = sizeof(((dc_kparams *)0)->params) };
#include "ops.def"
#undef DC_OP

dc_op dc_op_by_name(const char *name)
{
    for (int k = 0; name && k < DC_OP_COUNT; k++)
        if (!strcmp(dc_op_names[k], name)) return (dc_op)k;
    return DC_OP_NONE;
}

static const dc_backend *registry[DC_DEVICE_TYPE_COUNT];

void dc_backend_register(int device_type, const dc_backend *be)
{
    if (device_type >= 0 && device_type < DC_DEVICE_TYPE_COUNT) registry[device_type] = be;
}

const dc_backend *dc_backend_get(int device_type)
{
    return device_type >= 0 && device_type < DC_DEVICE_TYPE_COUNT ? registry[device_type] : NULL;
}

void dc_kview_of(dc_kview *v, const dc_tensor *t)
{
    v->data = dc_data(t);
    v->ndim = t->ndim;
    v->dtype = t->dtype;
    for (int d = 0; d < t->ndim; d++) {
        v->shape[d] = t->shape[d];
        v->strides[d] = t->strides[d];
    }
}

dc_status dc_launch(dc_device dev, const dc_kargs *a)
{
    const dc_backend *be = dc_backend_get(dev.type);
    if (!be)
        return dc_error(DC_ERR_DEVICE, "device %s is not available: dutycycle was built without CUDA",
                        dc_device_str(dev));
    if ((unsigned)a->op >= DC_OP_COUNT) return dc_error(DC_ERR_INTERNAL, "bad kernel id %d", (int)a->op);
    dc_kernel_fn fn = be->kernels[a->op];
    if (!fn)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no kernel for device %s yet", dc_op_names[a->op],
                        dc_device_str(dev));
    return fn(a);
}

/* --- the public device API of ops.h ---------------------------------------------------------- */

int dc_device_built(int device_type)
{
    return dc_backend_get(device_type) != NULL;
}

int dc_device_count(int device_type)
{
    const dc_backend *be = dc_backend_get(device_type);
    return be ? be->device_count() : 0;
}

const char *dc_device_type_name(int device_type)
{
    const dc_backend *be = dc_backend_get(device_type);
    return be ? be->name : NULL;
}

int dc_op_has_kernel(int op, int device_type)
{
    const dc_backend *be = dc_backend_get(device_type);
    return be && op >= 0 && op < DC_OP_COUNT && be->kernels[op] != NULL;
}

void dc_device_cache_info(int device_type, size_t *cached, size_t *limit)
{
    const dc_backend *be = dc_backend_get(device_type);
    *cached = *limit = 0;
    if (be && be->cache_info) be->cache_info(cached, limit);
}

void dc_device_empty_cache(int device_type)
{
    const dc_backend *be = dc_backend_get(device_type);
    if (be && be->empty_cache) be->empty_cache();
}

dc_status dc_synchronize(dc_device dev)
{
    const dc_backend *be = dc_backend_get(dev.type);
    if (!be)
        return dc_error(DC_ERR_DEVICE, "synchronize: device %s is not built into this dutycycle", dc_device_str(dev));
    if (dev.type != DC_CPU) dc_sync_note(DC_SYNC_SYNCHRONIZE);
    return be->synchronize(dev);
}

/* --- sync points ------------------------------------------------------------------------------ */

static _Atomic int64_t sync_counts[DC_SYNC_KINDS];

void dc_sync_note(dc_sync_kind kind)
{
    if ((unsigned)kind < DC_SYNC_KINDS) atomic_fetch_add_explicit(&sync_counts[kind], 1, memory_order_relaxed);
}

void dc_sync_counts(int64_t out[DC_SYNC_KINDS])
{
    for (int k = 0; k < DC_SYNC_KINDS; k++) out[k] = atomic_load_explicit(&sync_counts[k], memory_order_relaxed);
}

/* --- many launches of one op --------------------------------------------------------------------- */

dc_status dc_launch_many(dc_device dev, int n, const dc_kargs *a)
{
    if (n <= 0) return DC_OK;
    const dc_backend *be = dc_backend_get(dev.type);
    if (be && be->launch_many) return be->launch_many(n, a);
    for (int i = 0; i < n; i++) DC_TRY(dc_launch(dev, &a[i]));
    return DC_OK;
}
