/* ops-impl.h: helpers shared by the op files (private to the core). */
#ifndef DC_OPS_IMPL_H
#define DC_OPS_IMPL_H

#include <stdio.h>
#include <string.h>

#include "backend-impl.h"
#include "graph.h"
#include "ops.h"

static inline dc_kargs kargs_of(dc_op op)
{
    dc_kargs a;
    memset(&a, 0, sizeof a);
    a.op = op;
    return a;
}

static inline void kargs_add(dc_kargs *a, const dc_tensor *t)
{
    dc_kview_of(&a->t[a->nt++], t);
}

/* Normalise a possibly negative dim against ndim (rank 0 accepts -1 and 0). */
static inline dc_status wrap_dim(int *dim, int ndim, const char *op)
{
    int n = ndim > 0 ? ndim : 1;
    if (*dim < -n || *dim >= n)
        return dc_error(DC_ERR_INDEX, "%s: dim %d is out of range for a tensor with %d dim(s)", op, *dim, ndim);
    if (*dim < 0) *dim += n;
    return DC_OK;
}

static inline dc_status same_device(const dc_tensor *a, const dc_tensor *b, const char *op)
{
    if (!dc_device_eq(a->device, b->device)) {
        char da[32];
        snprintf(da, sizeof da, "%s", dc_device_str(a->device));
        return dc_error(DC_ERR_DEVICE, "%s: expected all tensors on the same device, got %s and %s", op, da,
                        dc_device_str(b->device));
    }
    return DC_OK;
}

static inline dc_status same_dtype(const dc_tensor *a, const dc_tensor *b, const char *op)
{
    if (a->dtype != b->dtype)
        return dc_error(DC_ERR_DTYPE, "%s: dtype mismatch: %s and %s (convert one with .to())", op,
                        dc_dtype_name(a->dtype), dc_dtype_name(b->dtype));
    return DC_OK;
}

static inline dc_dtype result_type2(const dc_tensor *a, const dc_tensor *b)
{
    return dc_result_type(a, b);
}

/* *out = x converted to dt (differentiable), or x itself (a new reference) when it already is. */
static inline dc_status cast_to(dc_tensor **out, dc_tensor *x, dc_dtype dt)
{
    if (x->dtype == dt) {
        dc_tensor_incref(x);
        *out = x;
        return DC_OK;
    }
    return dc_to(out, x, dt, x->device);
}

/* The narrow integers (uint8, int8, int16) have no reduction/sort kernels: those ops run on an
 * int32 copy (exact: every value fits) and convert back where the result keeps the dtype. */
static inline int narrow_int(dc_dtype d)
{
    return d == DC_UINT8 || d == DC_INT8 || d == DC_INT16;
}

static inline dc_status need_float(const dc_tensor *t, const char *op)
{
    if (t->dtype != DC_FLOAT32 && t->dtype != DC_FLOAT64 && t->dtype != DC_BFLOAT16 && t->dtype != DC_FLOAT16)
        return dc_error(DC_ERR_DTYPE, "%s: expected a floating-point tensor, got %s", op, dc_dtype_name(t->dtype));
    return DC_OK;
}

/* Refuse in-place writes autograd cannot track, and writes into memory several elements share (an
 * expanded, stride-0 view: which write wins would be undefined); bump the version counter otherwise. */
static inline dc_status begin_inplace(dc_tensor *t, const char *op)
{
    for (int d = 0; d < t->ndim; d++)
        if (t->strides[d] == 0 && t->shape[d] > 1)
            return dc_error(DC_ERR_VALUE,
                            "%s: more than one element of the written-to tensor (shape %s, an expanded view) refers "
                            "to a single memory location; clone() it before writing in place",
                            op, DC_SHAPE(t));
    if (dc_grad_enabled() && t->requires_grad)
        return dc_error(DC_ERR_AUTOGRAD,
                        "%s: a tensor that requires grad (shape %s) can't be modified in place while "
                        "grad mode is on; use `with dutycycle.no_grad():` or .detach()",
                        op, DC_SHAPE(t));
    atomic_fetch_add(&t->storage->version, 1);
    return DC_OK;
}

/* Would writing dst in place change elements of src before they are read? True when their memory
 * ranges intersect (the same storage, or two wrappers of one NumPy array), unless src is exactly dst
 * (same elements in the same order, as in x.mul_(x)). In-place ops then read a copy of src, as
 * NumPy does, instead of half-updated values. */
static inline int inplace_overlap(const dc_tensor *dst, const dc_tensor *src)
{
    if (!dc_device_eq(dst->device, src->device) || !dc_numel(dst) || !dc_numel(src)) return 0;
    const dc_tensor *v[2] = { dst, src };
    char *lo[2], *hi[2];
    for (int k = 0; k < 2; k++) {
        int64_t a = 0, b = 0, es = (int64_t)dc_dtype_size(v[k]->dtype);
        for (int d = 0; d < v[k]->ndim; d++) {
            int64_t span = (v[k]->shape[d] - 1) * v[k]->strides[d] * es;
            if (span < 0)
                a += span;
            else
                b += span;
        }
        lo[k] = dc_data(v[k]) + a;
        hi[k] = dc_data(v[k]) + b + es;
    }
    if (hi[0] <= lo[1] || hi[1] <= lo[0]) return 0;
    int same = dc_data(dst) == dc_data(src) && dst->dtype == src->dtype && dst->ndim == src->ndim;
    for (int d = 0; same && d < dst->ndim; d++)
        same = dst->shape[d] == src->shape[d] && (dst->shape[d] == 1 || dst->strides[d] == src->strides[d]);
    return !same;
}

/* --- ops-common.c --------------------------------------------------------------------------- */

/* Launch k on y's device when y has elements; on failure y is freed (the caller's reference). */
dc_status dc_launch_or_free(dc_tensor *y, const dc_kargs *k);
/* Broadcast shapes a and b into out (ndim returned in *nd). */
dc_status dc_broadcast_shape(int na, const int64_t *sa, int nb, const int64_t *sb, int *nd, int64_t *out,
                             const char *op);
/* A kview of t broadcast to (nd, shape): stride 0 on expanded dims. */
void dc_kview_broadcast(dc_kview *v, const dc_tensor *t, int nd, const int64_t *shape);
/* Reduce a broadcast gradient g back to `shape` (sums the broadcast dims). */
dc_status dc_sum_to(dc_tensor **out, dc_tensor *g, int ndim, const int64_t *shape);
/* 0-d tensor of value v with t's dtype and device; t * v. */
dc_status dc_scalar_like(dc_tensor **out, double v, const dc_tensor *t);
dc_status dc_mul_scalar(dc_tensor **out, dc_tensor *t, double v);
/* Record a node for y if any input needs grad; *np gets it (or NULL). On failure y is freed. */
dc_status dc_record(dc_tensor *y, const char *name, dc_backward_fn fn, int n_in, dc_tensor *const *in, dc_node **np);
/* Save an op's own output without a reference cycle (output -> node -> output). */
void dc_save_output(dc_node *n, dc_tensor *y);
/* Backward helpers return DC_OK with gin set; these shorten the common shapes. */
#define SAVED(n, k, var) \
    dc_tensor *var;      \
    DC_TRY(dc_node_saved((n), (k), &var))

/* Sum (or max/min) of x over the dims where mask[d] is set (ops_math.c). */
dc_status dc_reduce_raw(dc_tensor **out, dc_op op, dc_tensor *x, const int *mask, int keepdim, dc_dtype dt);
/* Zero-filled tensor of the given geometry. */
static inline dc_status dc_zeros_of(dc_tensor **out, int ndim, const int64_t *shape, dc_dtype dt, dc_device dev)
{
    return dc_full(out, ndim, shape, 0.0, dt, dev);
}

#endif
