/* backend-impl.h: the per-device kernel table (private to the core).
 *
 * Op logic in ops.c checks arguments, picks shapes, allocates outputs and records autograd; it then
 * calls one kernel through the table of the operands' device. A backend (CPU here, CUDA in cuda/)
 * fills the slots it supports; an empty slot gives a clean DC_ERR_UNSUPPORTED naming op and
 * device. Kernels see plain strided views, never dc_tensor. The table is indexed by dc_op (op.h,
 * generated from ops.def). */
#ifndef DC_BACKEND_IMPL_H
#define DC_BACKEND_IMPL_H

#include "kernel-params.h"
#include "op.h"
#include "ops.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *data; /* first element (offset applied) */
    int ndim;
    int64_t shape[DC_MAX_DIMS];
    int64_t strides[DC_MAX_DIMS]; /* in elements */
    dc_dtype dtype;
} dc_kview;

/* v's shape with row-major contiguous strides, over `data` of dtype dt (a scratch copy's view). */
static inline dc_kview dc_kview_contiguous(const dc_kview *v, void *data, dc_dtype dt)
{
    dc_kview c = *v;
    c.data = (char *)data;
    c.dtype = dt;
    int64_t s = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        c.strides[d] = s;
        s *= v->shape[d];
    }
    return c;
}

#define DC_KARGS_MAX_T 10
/* One kernel launch: the op, its tensor operands (their order is documented at the op's line in
 * ops.def) and the named parameters of its family (ops.def's `params` column). */
typedef struct {
    dc_op op;
    int nt;
    dc_kview t[DC_KARGS_MAX_T];
    dc_kparams p;
} dc_kargs;

typedef dc_status (*dc_kernel_fn)(const dc_kargs *a);

typedef struct dc_backend {
    const char *name;
    int (*device_count)(void);
    dc_status (*alloc)(dc_device dev, size_t nbytes, void **out);
    void (*free)(dc_device dev, void *p);
    /* host <-> device; contiguous bytes */
    dc_status (*to_host)(dc_device dev, void *dst, const void *src, size_t n);
    dc_status (*from_host)(dc_device dev, void *dst, const void *src, size_t n);
    dc_status (*synchronize)(dc_device dev);
    /* the backend's caching allocator, when it has one (NULL otherwise) */
    void (*cache_info)(size_t *cached, size_t *limit);
    void (*empty_cache)(void);
    dc_kernel_fn kernels[DC_OP_COUNT];
    /* Optional (NULL: the core launches one by one): n launches of one op (a[i].op all equal, each
     * with its own tensors and parameters) queued as few kernels as the device can: the fused
     * multi-tensor optimizer steps (SGD, ADAMW, NORM_POW, SCALE), one launch for many parameters. */
    dc_status (*launch_many)(int n, const dc_kargs *a);
} dc_backend;

/* The table registered for a device type (dc_backend_register, ops.h); NULL when none is. The core
 * names no backend: backends (csrc/cpu/, cuda/) depend on the core, and whoever assembles the
 * library (the Python binding, the C kernel test) registers them. */
const dc_backend *dc_backend_get(int device_type);

/* Run one kernel on `dev`: DC_ERR_UNSUPPORTED with a clear message if the slot is empty. */
dc_status dc_launch(dc_device dev, const dc_kargs *a);
/* n launches of one op on `dev`: through the backend's launch_many when it has one. */
dc_status dc_launch_many(dc_device dev, int n, const dc_kargs *a);
/* Fill a dc_kview from a tensor. */
void dc_kview_of(dc_kview *v, const dc_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
