/* ops_scan.c: running sums, sort orders and nonzero: the ops whose output position depends on
 * other elements of the row. cumsum is differentiable (its backward is the same sum taken from the
 * end of the dim); argsort and nonzero return int64 indices and carry no gradient (values follow
 * through gather, which does). */
#include <math.h>

#include "ops-impl.h"

static dc_status scan_impl(dc_tensor **out, dc_tensor *x, int dim, int reverse);

static dc_status cumsum_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    return scan_impl(&gin[0], g, (int)n->i[0], 1);
}

static dc_status scan_impl(dc_tensor **out, dc_tensor *x, int dim, int reverse)
{
    DC_TRY(wrap_dim(&dim, x->ndim, "cumsum"));
    /* integers and bool sum into int64, as torch.cumsum does */
    dc_dtype odt = dc_dtype_is_float(x->dtype) ? x->dtype : DC_INT64;
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, odt, x->device));
    dc_kargs k = kargs_of(DC_OP_CUMSUM);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.scan = (struct dc_scan_params){ .dim = dim, .reverse = reverse };
    DC_TRY(dc_launch_or_free(y, &k));
    if (dc_dtype_is_float(x->dtype)) {
        dc_node *n;
        DC_TRY(dc_record(y, dc_op_info[DC_OP_CUMSUM].node, cumsum_backward, 1, &x, &n));
        if (n) n->i[0] = dim;
    }
    *out = y;
    return DC_OK;
}

static dc_status cumprod_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);
    SAVED(n, 1, y);
    dc_tensor *dx;
    DC_TRY(dc_empty(&dx, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(DC_OP_CUMPROD_BWD);
    kargs_add(&k, dx);
    kargs_add(&k, g);
    kargs_add(&k, x);
    kargs_add(&k, y);
    k.p.scan = (struct dc_scan_params){ .dim = n->i[0], .reverse = 0 };
    DC_TRY(dc_launch_or_free(dx, &k));
    gin[0] = dx;
    return DC_OK;
}

dc_status dc_cumprod(dc_tensor **out, dc_tensor *x, int dim)
{
    DC_TRY(wrap_dim(&dim, x->ndim, "cumprod"));
    dc_dtype odt = dc_dtype_is_float(x->dtype) ? x->dtype : DC_INT64; /* as torch.cumprod */
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, odt, x->device));
    dc_kargs k = kargs_of(DC_OP_CUMPROD);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.scan = (struct dc_scan_params){ .dim = dim, .reverse = 0 };
    DC_TRY(dc_launch_or_free(y, &k));
    if (dc_dtype_is_float(x->dtype)) {
        dc_node *n;
        DC_TRY(dc_record(y, dc_op_info[DC_OP_CUMPROD].node, cumprod_backward, 1, &x, &n));
        if (n) {
            n->i[0] = dim;
            dc_tensor *xs;
            DC_TRY(dc_detach(&xs, x));
            dc_node_save(n, xs);
            dc_tensor_decref(xs);
            dc_save_output(n, y);
        }
    }
    *out = y;
    return DC_OK;
}

dc_status dc_cumsum(dc_tensor **out, dc_tensor *x, int dim)
{
    return scan_impl(out, x, dim, 0);
}

dc_status dc_argsort(dc_tensor **out, dc_tensor *x, int dim, int descending)
{
    DC_TRY(wrap_dim(&dim, x->ndim, "argsort"));
    if (x->dtype == DC_BFLOAT16 || x->dtype == DC_FLOAT16) { /* sort a float32 copy: same order */
        dc_tensor *f;
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        dc_status st = dc_to(&f, x, DC_FLOAT32, x->device);
        dc_set_grad_enabled(prev);
        if (st) return st;
        st = dc_argsort(out, f, dim, descending);
        dc_tensor_decref(f);
        return st;
    }
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, DC_INT64, x->device));
    dc_kargs k = kargs_of(DC_OP_ARGSORT);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.sort = (struct dc_sort_params){ .dim = dim, .descending = descending };
    DC_TRY(dc_launch_or_free(y, &k));
    *out = y;
    return DC_OK;
}

dc_status dc_nonzero(dc_tensor **out, dc_tensor *x)
{
    /* count first: the output's size depends on the data (a sync point on devices, as in torch) */
    int prev = dc_grad_enabled();
    dc_set_grad_enabled(0);
    dc_tensor *z = NULL, *ne = NULL, *cnt = NULL, *c64 = NULL;
    dc_status st = dc_full(&z, 0, NULL, 0.0, x->dtype, x->device);
    if (!st) st = dc_binary(&ne, DC_OP_NE, x, z);
    if (!st) st = dc_to(&c64, ne, DC_INT64, ne->device);
    if (!st) st = dc_sum(&cnt, c64, 0, NULL, 0);
    int64_t count = 0;
    if (!st) {
        dc_tensor *h = cnt;
        if (cnt->device.type != DC_CPU) st = dc_to(&h, cnt, DC_INT64, (dc_device){ DC_CPU, 0 });
        if (!st) {
            count = *(const int64_t *)dc_data(h);
            if (h != cnt) dc_tensor_decref(h);
        }
    }
    dc_set_grad_enabled(prev);
    dc_tensor_decref(z);
    dc_tensor_decref(ne);
    dc_tensor_decref(c64);
    dc_tensor_decref(cnt);
    if (st) return st;
    int64_t shape[2] = { count, x->ndim };
    dc_tensor *y;
    DC_TRY(dc_empty(&y, 2, shape, DC_INT64, x->device));
    dc_kargs k = kargs_of(DC_OP_NONZERO);
    kargs_add(&k, y);
    kargs_add(&k, x);
    if (count) DC_TRY(dc_launch_or_free(y, &k));
    *out = y;
    return DC_OK;
}
