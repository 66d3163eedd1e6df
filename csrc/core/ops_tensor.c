/* ops_tensor.c: creation, copies, device/dtype conversion and views, with their backward
 * formulas side by side. Views share storage and never copy; their nodes only record geometry. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops-impl.h"

/* --- creation ------------------------------------------------------------------------------- */

/* Integer fill values stay int64 all the way to the kernel (2**53 + 1 survives); a value the dtype
 * can't hold is refused instead of wrapping. */
static dc_status fill_params_int(struct dc_fill_params *fp, int64_t value, dc_dtype dt, const char *op)
{
    int64_t lo = INT64_MIN, hi = INT64_MAX;
    if (dt == DC_INT32) lo = INT32_MIN, hi = INT32_MAX;
    if (value < lo || value > hi)
        return dc_error(DC_ERR_VALUE, "%s: value %lld is out of range for %s", op, (long long)value, dc_dtype_name(dt));
    *fp = (struct dc_fill_params){ .value = (double)value, .ivalue = dt == DC_BOOL ? value != 0 : value, .is_int = 1 };
    return DC_OK;
}

static dc_status full_impl(dc_tensor **out, int ndim, const int64_t *shape, struct dc_fill_params fp, dc_dtype dt,
                           dc_device dev)
{
    dc_tensor *t;
    DC_TRY(dc_empty(&t, ndim, shape, dt, dev));
    dc_kargs a = kargs_of(DC_OP_FILL);
    kargs_add(&a, t);
    a.p.fill = fp;
    DC_TRY(dc_launch_or_free(t, &a));
    *out = t;
    return DC_OK;
}

dc_status dc_full(dc_tensor **out, int ndim, const int64_t *shape, double value, dc_dtype dt, dc_device dev)
{
    return full_impl(out, ndim, shape, (struct dc_fill_params){ .value = value }, dt, dev);
}

dc_status dc_full_int(dc_tensor **out, int ndim, const int64_t *shape, int64_t value, dc_dtype dt, dc_device dev)
{
    struct dc_fill_params fp;
    DC_TRY(fill_params_int(&fp, value, dt, "full"));
    return full_impl(out, ndim, shape, fp, dt, dev);
}

dc_status dc_arange(dc_tensor **out, double start, double end, double step, dc_dtype dt, dc_device dev)
{
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
        return dc_error(DC_ERR_VALUE, "arange: step must be non-zero and bounds finite (start=%g, end=%g, step=%g)",
                        start, end, step);
    if ((end - start) / step < 0)
        return dc_error(DC_ERR_VALUE, "arange: upper bound and step sign are inconsistent (start=%g, end=%g, step=%g)",
                        start, end, step);
    int64_t n = (int64_t)ceil((end - start) / step);
    dc_tensor *t;
    if (dev.type != DC_CPU && !dc_op_has_kernel(DC_OP_ARANGE, dev.type)) {
        dc_tensor *c;
        DC_TRY(dc_arange(&c, start, end, step, dt, (dc_device){ DC_CPU, 0 }));
        dc_status st = dc_to(out, c, dt, dev);
        dc_tensor_decref(c);
        return st;
    }
    DC_TRY(dc_empty(&t, 1, &n, dt, dev));
    dc_kargs a = kargs_of(DC_OP_ARANGE);
    kargs_add(&a, t);
    a.p.arange = (struct dc_arange_params){ .start = start, .step = step };
    DC_TRY(dc_launch_or_free(t, &a));
    *out = t;
    return DC_OK;
}

/* A new tensor of (ndim, shape, dt) on dev filled by random op `kind` from the next stretch of the
 * global counter-based stream (randn takes two counters per element). */
static dc_status random_draw(dc_tensor **out, dc_op kind, int ndim, const int64_t *shape, int64_t low, int64_t high,
                             dc_dtype dt, dc_device dev)
{
    dc_tensor *t;
    DC_TRY(dc_empty(&t, ndim, shape, dt, dev));
    int64_t n = dc_numel(t);
    uint64_t seed, offset;
    dc_rng_reserve(kind == DC_OP_RANDN ? 2 * (uint64_t)n : (uint64_t)n, &seed, &offset);
    dc_kargs a = kargs_of(kind);
    kargs_add(&a, t);
    a.p.random = (struct dc_random_params){ .seed = seed, .offset = offset, .low = low, .high = high };
    DC_TRY(dc_launch_or_free(t, &a));
    *out = t;
    return DC_OK;
}

dc_status dc_random(dc_tensor **out, dc_op kind, int ndim, const int64_t *shape, int64_t low, int64_t high, dc_dtype dt,
                    dc_device dev)
{
    if (kind == DC_OP_RANDINT && low >= high)
        return dc_error(DC_ERR_VALUE, "randint: low (%lld) must be less than high (%lld)", (long long)low,
                        (long long)high);
    if (kind != DC_OP_RANDINT && dt != DC_FLOAT32 && dt != DC_FLOAT64 && dt != DC_BFLOAT16 && dt != DC_FLOAT16)
        return dc_error(DC_ERR_DTYPE, "%s: expected a floating-point dtype, got %s", dc_op_names[kind],
                        dc_dtype_name(dt));
    /* A device with the kernel draws in dt itself: the same numbers as the host path below (counter-
     * based, keyed by (seed, offset + i)), with no host work or copy (dropout masks every step). */
    int direct_dt = kind != DC_OP_RANDINT || dt == DC_INT64 || dt == DC_INT32 || dt == DC_FLOAT32 || dt == DC_FLOAT64;
    if (dev.type != DC_CPU && direct_dt && dc_op_has_kernel(kind, dev.type))
        return random_draw(out, kind, ndim, shape, low, high, dt, dev);
    /* Generated on the host in float64/int64 so every device and dtype sees the same stream. Uniform
     * bf16/fp16 are drawn in their own dtype: rounding a float64 draw up to 1.0 would break [0, 1). */
    int half = dt == DC_BFLOAT16 || dt == DC_FLOAT16;
    dc_dtype gen = kind == DC_OP_RANDINT                                ? DC_INT64
                   : (dt == DC_FLOAT32 || (kind == DC_OP_RAND && half)) ? dt
                                                                        : DC_FLOAT64;
    dc_tensor *t;
    DC_TRY(random_draw(&t, kind, ndim, shape, low, high, gen, (dc_device){ DC_CPU, 0 }));
    if (gen == dt && dev.type == DC_CPU) {
        *out = t;
        return DC_OK;
    }
    dc_status st = dc_to(out, t, dt, dev);
    dc_tensor_decref(t);
    return st;
}

/* --- copies ------------------------------------------------------------------------------------ */

/* New contiguous tensor on x's device holding x converted to dt (no autograd). */
static dc_status copy_convert(dc_tensor **out, dc_tensor *x, dc_dtype dt)
{
    dc_tensor *t;
    DC_TRY(dc_empty(&t, x->ndim, x->shape, dt, x->device));
    dc_kargs a = kargs_of(DC_OP_COPY);
    kargs_add(&a, t);
    kargs_add(&a, x);
    DC_TRY(dc_launch_or_free(t, &a));
    *out = t;
    return DC_OK;
}

/* Move a tensor between devices: contiguous bytes through the host. No autograd. */
static dc_status move_device(dc_tensor **out, dc_tensor *x, dc_device dev)
{
    dc_tensor *src = NULL, *host = NULL, *t = NULL;
    dc_status st;
    if ((st = dc_is_contiguous(x) ? (dc_tensor_incref(x), src = x, DC_OK) : copy_convert(&src, x, x->dtype))) return st;
    size_t nbytes = (size_t)dc_numel(x) * dc_dtype_size(x->dtype);
    if ((st = dc_empty(&t, x->ndim, x->shape, x->dtype, dev))) goto done;
    if (nbytes == 0) goto done;
    if (x->device.type == DC_CPU) {
        st = dc_backend_get(dev.type)->from_host(dev, dc_data(t), dc_data(src), nbytes);
    } else if (dev.type == DC_CPU) {
        dc_sync_note(DC_SYNC_D2H); /* note: a device -> host sync point */
        st = dc_backend_get(x->device.type)->to_host(x->device, dc_data(t), dc_data(src), nbytes);
    } else { /* device to device through the host */
        if ((st = dc_empty(&host, x->ndim, x->shape, x->dtype, (dc_device){ DC_CPU, 0 }))) goto done;
        dc_sync_note(DC_SYNC_D2H);
        if ((st = dc_backend_get(x->device.type)->to_host(x->device, dc_data(host), dc_data(src), nbytes))) goto done;
        st = dc_backend_get(dev.type)->from_host(dev, dc_data(t), dc_data(host), nbytes);
    }
done:
    dc_tensor_decref(src);
    dc_tensor_decref(host);
    if (st) {
        dc_tensor_decref(t);
        return st;
    }
    *out = t;
    return DC_OK;
}

static dc_status to_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    return dc_to(&gin[0], gout, n->in_dtype[0], (dc_device){ (int)n->i[0], (int)n->i[1] });
}

dc_status dc_to(dc_tensor **out, dc_tensor *x, dc_dtype dt, dc_device dev)
{
    if ((unsigned)dt >= DC_DTYPE_COUNT) return dc_error(DC_ERR_DTYPE, "to(): unknown dtype id %d", (int)dt);
    if (dt == x->dtype && dc_device_eq(dev, x->device)) {
        dc_tensor_incref(x);
        *out = x;
        return DC_OK;
    }
    dc_tensor *t = NULL, *tmp = NULL;
    dc_status st;
    if (dc_device_eq(dev, x->device)) {
        st = copy_convert(&t, x, dt);
    } else if (x->device.type == DC_CPU) { /* convert on the host, then upload */
        if (dt != x->dtype && (st = copy_convert(&tmp, x, dt))) return st;
        st = move_device(&t, tmp ? tmp : x, dev);
    } else { /* download, then convert on the host */
        if ((st = move_device(&tmp, x, dev.type == DC_CPU ? dev : (dc_device){ DC_CPU, 0 }))) return st;
        if (dt != x->dtype) {
            dc_tensor *c;
            st = copy_convert(&c, tmp, dt);
            dc_tensor_decref(tmp);
            tmp = st ? NULL : c;
        }
        if (!st && dev.type != DC_CPU)
            st = move_device(&t, tmp, dev);
        else if (!st) {
            t = tmp;
            tmp = NULL;
        }
    }
    dc_tensor_decref(tmp);
    if (st) return st;
    if (dc_needs_grad(x) && dc_dtype_is_float(dt)) {
        dc_node *n;
        if ((st = dc_node_new(&n, "ToCopyBackward", to_backward, 1, &x))) {
            dc_tensor_decref(t);
            return st;
        }
        n->i[0] = x->device.type;
        n->i[1] = x->device.index;
        dc_node_attach(t, n);
    }
    *out = t;
    return DC_OK;
}

static dc_status clone_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    (void)n;
    dc_tensor_incref(gout);
    gin[0] = gout;
    return DC_OK;
}

dc_status dc_clone(dc_tensor **out, dc_tensor *x)
{
    dc_tensor *t;
    DC_TRY(copy_convert(&t, x, x->dtype));
    if (dc_needs_grad(x)) {
        dc_node *n;
        dc_status st = dc_node_new(&n, "CloneBackward", clone_backward, 1, &x);
        if (st) {
            dc_tensor_decref(t);
            return st;
        }
        dc_node_attach(t, n);
    }
    *out = t;
    return DC_OK;
}

dc_status dc_contiguous(dc_tensor **out, dc_tensor *x)
{
    if (dc_is_contiguous(x)) {
        dc_tensor_incref(x);
        *out = x;
        return DC_OK;
    }
    return dc_clone(out, x);
}

dc_status dc_detach(dc_tensor **out, dc_tensor *x)
{
    return dc_alias(out, x, x->ndim, x->shape, x->strides, x->offset);
}

/* --- in place -------------------------------------------------------------------------------- */

dc_status dc_copy_(dc_tensor *dst, dc_tensor *src)
{
    int nd;
    int64_t shape[DC_MAX_DIMS];
    DC_TRY(dc_broadcast_shape(dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape, "copy_"));
    if (nd != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * nd))
        return dc_error(DC_ERR_SHAPE, "copy_: source of shape %s can't be broadcast to destination shape %s",
                        DC_SHAPE(src), DC_SHAPE(dst));
    DC_TRY(begin_inplace(dst, "copy_"));
    dc_tensor *s = src;
    if (!dc_device_eq(src->device, dst->device))
        DC_TRY(dc_to(&s, src, src->dtype, dst->device));
    else if (inplace_overlap(dst, src))
        DC_TRY(copy_convert(&s, src, src->dtype)); /* e.g. x.copy_(x.T) */
    else
        dc_tensor_incref(s);
    dc_kargs a = kargs_of(DC_OP_COPY);
    kargs_add(&a, dst);
    dc_kview_broadcast(&a.t[a.nt++], s, dst->ndim, dst->shape);
    dc_status st = dc_numel(dst) ? dc_launch(dst->device, &a) : DC_OK;
    dc_tensor_decref(s);
    return st;
}

static dc_status fill_impl(dc_tensor *t, struct dc_fill_params fp)
{
    DC_TRY(begin_inplace(t, "fill_"));
    dc_kargs a = kargs_of(DC_OP_FILL);
    kargs_add(&a, t);
    a.p.fill = fp;
    return dc_numel(t) ? dc_launch(t->device, &a) : DC_OK;
}

dc_status dc_fill_(dc_tensor *t, double value)
{
    return fill_impl(t, (struct dc_fill_params){ .value = value });
}

dc_status dc_fill_int_(dc_tensor *t, int64_t value)
{
    struct dc_fill_params fp;
    DC_TRY(fill_params_int(&fp, value, t->dtype, "fill_"));
    return fill_impl(t, fp);
}

/* --- views ----------------------------------------------------------------------------------- */

static dc_status reshape_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    return dc_reshape(&gin[0], gout, n->in_ndim[0], n->in_shape[0]);
}

/* Alias x with new geometry and, if needed, a node with backward fn (geometry in node->i). */
static dc_status make_view(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *shape, const int64_t *strides,
                           int64_t offset, const char *name, dc_backward_fn fn, const int64_t *iargs, int ni)
{
    dc_tensor *v;
    DC_TRY(dc_alias(&v, x, ndim, shape, strides, offset));
    if (dc_needs_grad(x)) {
        dc_node *n;
        dc_status st = dc_node_new(&n, name, fn, 1, &x);
        if (st) {
            dc_tensor_decref(v);
            return st;
        }
        for (int k = 0; k < ni; k++) n->i[k] = iargs[k];
        dc_node_attach(v, n);
    }
    *out = v;
    return DC_OK;
}

static dc_status infer_shape(int64_t numel, int ndim, const int64_t *in, int64_t *shape, const char *op,
                             const dc_tensor *x)
{
    if (ndim > DC_MAX_DIMS) return dc_error(DC_ERR_SHAPE, "%s: at most %d dims", op, DC_MAX_DIMS);
    int infer = -1;
    int64_t prod = 1;
    for (int d = 0; d < ndim; d++) {
        shape[d] = in[d];
        if (in[d] == -1) {
            if (infer >= 0) return dc_error(DC_ERR_SHAPE, "%s: only one dimension can be inferred (-1)", op);
            infer = d;
        } else if (in[d] < 0) {
            return dc_error(DC_ERR_SHAPE, "%s: invalid shape dimension %lld", op, (long long)in[d]);
        } else {
            prod *= in[d];
        }
    }
    if (infer >= 0) {
        if (prod == 0 || numel % prod)
            return dc_error(DC_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)", op,
                            dc_shape_str(ndim, in), (long long)numel, DC_SHAPE(x));
        shape[infer] = numel / prod;
        prod = numel;
    }
    if (prod != numel)
        return dc_error(DC_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)", op,
                        dc_shape_str(ndim, in), (long long)numel, DC_SHAPE(x));
    return DC_OK;
}

/* Strides for viewing x as `shape` without a copy (PyTorch's computeStride); 0 if impossible. */
static int view_strides(const dc_tensor *x, int ndim, const int64_t *shape, int64_t *strides)
{
    if (x->ndim == 0 || dc_numel(x) == 0) {
        dc_contiguous_strides(ndim, shape, strides);
        return 1;
    }
    int view_d = ndim - 1;
    int64_t chunk_base = x->strides[x->ndim - 1], tensor_numel = 1, view_numel = 1;
    for (int td = x->ndim - 1; td >= 0; td--) {
        tensor_numel *= x->shape[td];
        if (td == 0 || (x->shape[td - 1] != 1 && x->strides[td - 1] != tensor_numel * chunk_base)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return 0;
            if (td > 0) {
                chunk_base = x->strides[td - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

dc_status dc_view(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *in)
{
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    DC_TRY(infer_shape(dc_numel(x), ndim, in, shape, "view", x));
    if (!view_strides(x, ndim, shape, strides))
        return dc_error(DC_ERR_SHAPE,
                        "view: shape %s is not compatible with the input's size and stride (shape %s): "
                        "at least one dimension spans two contiguous subspaces; use .reshape()",
                        dc_shape_str(ndim, shape), DC_SHAPE(x));
    return make_view(out, x, ndim, shape, strides, x->offset, "ViewBackward", reshape_backward, NULL, 0);
}

dc_status dc_reshape(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *in)
{
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    DC_TRY(infer_shape(dc_numel(x), ndim, in, shape, "reshape", x));
    if (view_strides(x, ndim, shape, strides))
        return make_view(out, x, ndim, shape, strides, x->offset, "ViewBackward", reshape_backward, NULL, 0);
    dc_tensor *c;
    DC_TRY(dc_clone(&c, x));
    dc_status st = dc_view(out, c, ndim, shape);
    dc_tensor_decref(c);
    return st;
}

static dc_status permute_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    int inv[DC_MAX_DIMS];
    for (int d = 0; d < n->in_ndim[0]; d++) inv[n->i[d]] = d;
    return dc_permute(&gin[0], gout, inv);
}

dc_status dc_permute(dc_tensor **out, dc_tensor *x, const int *dims)
{
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS], iargs[DC_MAX_DIMS];
    int seen[DC_MAX_DIMS] = { 0 };
    for (int d = 0; d < x->ndim; d++) {
        int s = dims[d];
        DC_TRY(wrap_dim(&s, x->ndim, "permute"));
        if (seen[s]) return dc_error(DC_ERR_VALUE, "permute: dim %d repeats in the permutation", dims[d]);
        seen[s] = 1;
        shape[d] = x->shape[s];
        strides[d] = x->strides[s];
        iargs[d] = s;
    }
    return make_view(out, x, x->ndim, shape, strides, x->offset, "PermuteBackward", permute_backward, iargs, x->ndim);
}

dc_status dc_transpose(dc_tensor **out, dc_tensor *x, int d0, int d1)
{
    DC_TRY(wrap_dim(&d0, x->ndim, "transpose"));
    DC_TRY(wrap_dim(&d1, x->ndim, "transpose"));
    int dims[DC_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) dims[d] = d;
    if (x->ndim == 0) {
        dc_tensor_incref(x);
        *out = x;
        return DC_OK;
    }
    dims[d0] = d1;
    dims[d1] = d0;
    return dc_permute(out, x, dims);
}

static dc_status expand_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    return dc_sum_to(&gin[0], gout, n->in_ndim[0], n->in_shape[0]);
}

dc_status dc_expand(dc_tensor **out, dc_tensor *x, int ndim, const int64_t *in)
{
    if (ndim < x->ndim || ndim > DC_MAX_DIMS)
        return dc_error(DC_ERR_SHAPE, "expand: the number of sizes (%d) must be >= the tensor's dims (%d, shape %s)",
                        ndim, x->ndim, DC_SHAPE(x));
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    int lead = ndim - x->ndim;
    for (int d = 0; d < ndim; d++) {
        int64_t want = in[d];
        if (d < lead) {
            if (want < 0) return dc_error(DC_ERR_SHAPE, "expand: -1 is not allowed for a new leading dim");
            shape[d] = want;
            strides[d] = 0;
            continue;
        }
        int64_t have = x->shape[d - lead];
        if (want == -1) want = have;
        if (want == have) {
            shape[d] = have;
            strides[d] = x->strides[d - lead];
        } else if (have == 1 && want >= 0) {
            shape[d] = want;
            strides[d] = 0;
        } else {
            return dc_error(DC_ERR_SHAPE,
                            "expand: size %lld must match the existing size %lld at dim %d (shape %s to %s)",
                            (long long)want, (long long)have, d, DC_SHAPE(x), dc_shape_str(ndim, in));
        }
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (__builtin_mul_overflow(numel, shape[d], &numel))
            return dc_error(DC_ERR_SHAPE, "expand: shape %s has more elements than an int64 can count",
                            dc_shape_str(ndim, shape));
    return make_view(out, x, ndim, shape, strides, x->offset, "ExpandBackward", expand_backward, NULL, 0);
}

static dc_status slice_backward(dc_node *n, dc_tensor *gout, dc_tensor **gin)
{
    dc_tensor *z, *v;
    DC_TRY(dc_zeros_of(&z, n->in_ndim[0], n->in_shape[0], gout->dtype, gout->device));
    dc_status st =
        n->i[4] ? dc_select(&v, z, (int)n->i[0], n->i[1]) : dc_slice(&v, z, (int)n->i[0], n->i[1], n->i[2], n->i[3]);
    if (st == DC_OK) {
        st = dc_copy_(v, gout);
        dc_tensor_decref(v);
    }
    if (st) {
        dc_tensor_decref(z);
        return st;
    }
    gin[0] = z;
    return DC_OK;
}

dc_status dc_slice(dc_tensor **out, dc_tensor *x, int dim, int64_t start, int64_t end, int64_t step)
{
    DC_TRY(wrap_dim(&dim, x->ndim, "slice"));
    if (x->ndim == 0) return dc_error(DC_ERR_INDEX, "slice: can't slice a 0-d tensor");
    int64_t size = x->shape[dim];
    if (step <= 0) return dc_error(DC_ERR_VALUE, "slice: step must be positive, got %lld", (long long)step);
    if (start < 0) start += size;
    if (end < 0) end += size;
    start = start < 0 ? 0 : start > size ? size : start;
    end = end < start ? start : end > size ? size : end;
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    memcpy(strides, x->strides, sizeof strides);
    shape[dim] = (end - start + step - 1) / step;
    strides[dim] = x->strides[dim] * step;
    int64_t iargs[5] = { dim, start, end, step, 0 };
    return make_view(out, x, x->ndim, shape, strides, x->offset + start * x->strides[dim], "SliceBackward",
                     slice_backward, iargs, 5);
}

dc_status dc_select(dc_tensor **out, dc_tensor *x, int dim, int64_t index)
{
    DC_TRY(wrap_dim(&dim, x->ndim, "select"));
    if (x->ndim == 0) return dc_error(DC_ERR_INDEX, "select: can't index a 0-d tensor");
    int64_t size = x->shape[dim];
    if (index < -size || index >= size)
        return dc_error(DC_ERR_INDEX, "index %lld is out of bounds for dimension %d with size %lld", (long long)index,
                        dim, (long long)size);
    if (index < 0) index += size;
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    for (int d = 0, k = 0; d < x->ndim; d++) {
        if (d == dim) continue;
        shape[k] = x->shape[d];
        strides[k++] = x->strides[d];
    }
    int64_t iargs[5] = { dim, index, 0, 0, 1 };
    return make_view(out, x, x->ndim - 1, shape, strides, x->offset + index * x->strides[dim], "SelectBackward",
                     slice_backward, iargs, 5);
}

dc_status dc_unsqueeze(dc_tensor **out, dc_tensor *x, int dim)
{
    if (dim < -(x->ndim + 1) || dim > x->ndim)
        return dc_error(DC_ERR_INDEX, "unsqueeze: dim %d is out of range for a tensor with %d dim(s)", dim, x->ndim);
    if (dim < 0) dim += x->ndim + 1;
    if (x->ndim >= DC_MAX_DIMS) return dc_error(DC_ERR_SHAPE, "unsqueeze: tensors have at most %d dims", DC_MAX_DIMS);
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    for (int d = 0, k = 0; d <= x->ndim; d++) {
        if (d == dim) {
            shape[d] = 1;
            strides[d] = dim < x->ndim ? x->shape[dim] * x->strides[dim] : 1;
        } else {
            shape[d] = x->shape[k];
            strides[d] = x->strides[k++];
        }
    }
    return make_view(out, x, x->ndim + 1, shape, strides, x->offset, "UnsqueezeBackward", reshape_backward, NULL, 0);
}

dc_status dc_squeeze(dc_tensor **out, dc_tensor *x, int dim)
{
    if (dim != DC_ALL_DIMS) DC_TRY(wrap_dim(&dim, x->ndim, "squeeze"));
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (x->shape[d] == 1 && (dim == DC_ALL_DIMS || d == dim)) continue;
        shape[k] = x->shape[d];
        strides[k++] = x->strides[d];
    }
    return make_view(out, x, k, shape, strides, x->offset, "SqueezeBackward", reshape_backward, NULL, 0);
}
