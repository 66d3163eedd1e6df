/* ops-common.c: the helpers every op file shares (declared in ops-impl.h): broadcasting, reducing
 * a broadcast gradient back to its input's shape, launching a kernel into a fresh output (freed if
 * the launch fails), and recording autograd nodes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops-impl.h"

/* --- launching ------------------------------------------------------------------------------ */

dc_status dc_launch_or_free(dc_tensor *y, const dc_kargs *k)
{
    dc_status st = dc_numel(y) ? dc_launch(y->device, k) : DC_OK;
    if (st) dc_tensor_decref(y);
    return st;
}

/* --- type promotion ------------------------------------------------------------------------ */

dc_dtype dc_result_type(const dc_tensor *a, const dc_tensor *b)
{
    int za = a->ndim == 0, zb = b->ndim == 0;
    if (za == zb) return dc_promote_types(a->dtype, b->dtype);
    dc_dtype hi = za ? b->dtype : a->dtype, lo = za ? a->dtype : b->dtype;
    if (dc_dtype_is_float(hi)) return hi;
    if (hi == DC_BOOL || dc_dtype_is_float(lo)) return dc_promote_types(hi, lo);
    return hi;
}

/* --- broadcasting --------------------------------------------------------------------------- */

dc_status dc_broadcast_shape(int na, const int64_t *sa, int nb, const int64_t *sb, int *nd, int64_t *out,
                             const char *op)
{
    int n = na > nb ? na : nb;
    for (int d = 0; d < n; d++) {
        int da = d - (n - na), db = d - (n - nb);
        int64_t x = da >= 0 ? sa[da] : 1, y = db >= 0 ? sb[db] : 1;
        if (x != y && x != 1 && y != 1)
            return dc_error(DC_ERR_SHAPE, "%s: shapes %s and %s can't be broadcast together (dim %d: %lld vs %lld)", op,
                            dc_shape_str(na, sa), dc_shape_str(nb, sb), d, (long long)x, (long long)y);
        out[d] = x == 1 ? y : x;
    }
    *nd = n;
    return DC_OK;
}

void dc_kview_broadcast(dc_kview *v, const dc_tensor *t, int nd, const int64_t *shape)
{
    v->data = dc_data(t);
    v->dtype = t->dtype;
    v->ndim = nd;
    for (int d = 0; d < nd; d++) {
        int k = d - (nd - t->ndim);
        v->shape[d] = shape[d];
        v->strides[d] = (k < 0 || t->shape[k] != shape[d]) ? 0 : t->strides[k];
    }
}

dc_status dc_scalar_like(dc_tensor **out, double v, const dc_tensor *t)
{
    return dc_full(out, 0, NULL, v, t->dtype, t->device);
}

dc_status dc_mul_scalar(dc_tensor **out, dc_tensor *t, double v)
{
    dc_tensor *s;
    DC_TRY(dc_scalar_like(&s, v, t));
    dc_status st = dc_binary(out, DC_OP_MUL, t, s);
    dc_tensor_decref(s);
    return st;
}

/* Record a node for y if any input needs grad; *np gets it (or NULL). On failure y is freed. */
dc_status dc_record(dc_tensor *y, const char *name, dc_backward_fn fn, int n_in, dc_tensor *const *in, dc_node **np)
{
    *np = NULL;
    int need = 0;
    for (int k = 0; k < n_in; k++) need |= dc_needs_grad(in[k]);
    if (!need) return DC_OK;
    dc_status st = dc_node_new(np, name, fn, n_in, in);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    dc_node_attach(y, *np);
    return DC_OK;
}

/* Save an op's own output without a reference cycle (output -> node -> output). */
void dc_save_output(dc_node *n, dc_tensor *y)
{
    dc_tensor *a;
    if (dc_alias(&a, y, y->ndim, y->shape, y->strides, y->offset) != DC_OK) {
        dc_node_save(n, NULL);
        return;
    }
    dc_node_save(n, a);
    dc_tensor_decref(a);
}

/* --- reducing a broadcast gradient ----------------------------------------------------------- */

dc_status dc_sum_to(dc_tensor **out, dc_tensor *g, int ndim, const int64_t *shape)
{
    int same = g->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = g->shape[d] == shape[d];
    if (same) {
        dc_tensor_incref(g);
        *out = g;
        return DC_OK;
    }
    int mask[DC_MAX_DIMS] = { 0 }, lead = g->ndim - ndim, any = 0;
    if (lead < 0)
        return dc_error(DC_ERR_INTERNAL, "sum_to: %s is smaller than %s", DC_SHAPE(g), dc_shape_str(ndim, shape));
    for (int d = 0; d < g->ndim; d++) {
        mask[d] = d < lead || (shape[d - lead] == 1 && g->shape[d] != 1);
        any |= mask[d];
    }
    dc_tensor *s;
    if (any)
        DC_TRY(dc_reduce_raw(&s, DC_OP_SUM, g, mask, 1, g->dtype));
    else
        dc_tensor_incref(g), s = g;
    dc_status st = dc_reshape(out, s, ndim, shape);
    dc_tensor_decref(s);
    return st;
}
