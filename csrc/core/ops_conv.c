/* ops_conv.c: the conv stack's ops (conv2d, conv_transpose2d, max/avg pooling, batch norm), NCHW:
 * argument checks with torch's rules and messages, output shapes, and their autograd nodes. The
 * kernels (csrc/cpu/conv.c; cuDNN in the CUDA issue) see contiguous operands only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops-impl.h"

/* --- shared ------------------------------------------------------------------------------------ */

static dc_status float_same(dc_tensor *x, dc_tensor *t, const char *what, const char *op)
{
    if (!t) return DC_OK;
    DC_TRY(same_device(x, t, op));
    if (t->dtype != x->dtype)
        return dc_error(DC_ERR_DTYPE, "%s: %s has dtype %s but the input has %s (convert one with .to())", op, what,
                        dc_dtype_name(t->dtype), dc_dtype_name(x->dtype));
    return DC_OK;
}

/* A contiguous copy (or x itself) without recording autograd: the ops record their own node. */
static dc_status contig_nograd(dc_tensor **out, dc_tensor *x)
{
    *out = NULL;
    if (!x) return DC_OK;
    int prev = dc_grad_enabled();
    dc_set_grad_enabled(0);
    dc_status st = dc_contiguous(out, x);
    dc_set_grad_enabled(prev);
    return st;
}

/* out = a new (N, C, H, W) tensor shaped `shape`, written by kernel op from t1, t2 (and bias). */
static dc_status launch3(dc_op op, dc_tensor **out, const int64_t *shape, dc_tensor *t1, dc_tensor *t2, dc_tensor *t3,
                         const dc_kparams *p)
{
    dc_tensor *c[3] = { NULL, NULL, NULL }, *src[3] = { t1, t2, t3 }, *y = NULL;
    dc_status st = DC_OK;
    for (int k = 0; k < 3 && !st; k++) st = contig_nograd(&c[k], src[k]);
    if (!st) st = dc_empty(&y, 4, shape, t1->dtype, t1->device);
    if (!st) {
        dc_kargs k = kargs_of(op);
        kargs_add(&k, y);
        kargs_add(&k, c[0]);
        kargs_add(&k, c[1]);
        if (c[2]) kargs_add(&k, c[2]);
        k.p = *p;
        st = dc_launch_or_free(y, &k);
    }
    for (int k = 0; k < 3; k++) dc_tensor_decref(c[k]);
    if (!st) *out = y;
    return st;
}

/* --- convolution ------------------------------------------------------------------------------- */

static void conv_params_to_node(dc_node *n, const struct dc_conv_params *p)
{
    for (int d = 0; d < 2; d++) {
        n->i[d] = p->stride[d];
        n->i[2 + d] = p->pad[d];
        n->i[4 + d] = p->dilation[d];
    }
    n->i[6] = p->groups;
}

static dc_kparams conv_params_of_node(const dc_node *n)
{
    dc_kparams p;
    memset(&p, 0, sizeof p);
    for (int d = 0; d < 2; d++) {
        p.conv.stride[d] = n->i[d];
        p.conv.pad[d] = n->i[2 + d];
        p.conv.dilation[d] = n->i[4 + d];
    }
    p.conv.groups = n->i[6];
    return p;
}

/* gb = sum of g over (N, H, W) */
static dc_status bias_grad(dc_tensor **gb, dc_tensor *g)
{
    int dims[3] = { 0, 2, 3 };
    return dc_sum(gb, g, 3, dims, 0);
}

static dc_status conv2d_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);
    SAVED(n, 1, w);
    dc_kparams p = conv_params_of_node(n);
    if (n->next[0]) DC_TRY(launch3(DC_OP_CONV2D_BWD_INPUT, &gin[0], x->shape, g, w, NULL, &p));
    if (n->next[1]) DC_TRY(launch3(DC_OP_CONV2D_BWD_WEIGHT, &gin[1], w->shape, g, x, NULL, &p));
    if (n->next[2]) DC_TRY(bias_grad(&gin[2], g));
    return DC_OK;
}

static dc_status conv_transpose2d_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);
    SAVED(n, 1, w);
    dc_kparams p = conv_params_of_node(n);
    /* the transposed convolution is conv2d's adjoint: its input gradient is conv2d of g, its weight
     * gradient conv2d's weight gradient with the roles of input and output swapped */
    if (n->next[0]) DC_TRY(launch3(DC_OP_CONV2D, &gin[0], x->shape, g, w, NULL, &p));
    if (n->next[1]) DC_TRY(launch3(DC_OP_CONV2D_BWD_WEIGHT, &gin[1], w->shape, x, g, NULL, &p));
    if (n->next[2]) DC_TRY(bias_grad(&gin[2], g));
    return DC_OK;
}

static dc_status conv_check(const char *op, dc_tensor *x, dc_tensor *w, dc_tensor *b, const dc_conv_opts *o,
                            int transposed)
{
    DC_TRY(need_float(x, op));
    DC_TRY(float_same(x, w, "weight", op));
    DC_TRY(float_same(x, b, "bias", op));
    if (w->ndim != 4)
        return dc_error(DC_ERR_SHAPE, "%s: expected a 4-D weight (out_channels, in_channels / groups, kH, kW), got %s",
                        op, DC_SHAPE(w));
    if (x->ndim != 4)
        return dc_error(DC_ERR_SHAPE, "%s: expected a 4-D input (N, C, H, W), got shape %s", op, DC_SHAPE(x));
    if (o->groups < 1) return dc_error(DC_ERR_VALUE, "%s: groups must be positive, got %lld", op, (long long)o->groups);
    for (int d = 0; d < 2; d++) {
        if (o->stride[d] < 1)
            return dc_error(DC_ERR_VALUE, "%s: stride must be positive, got %lld", op, (long long)o->stride[d]);
        if (o->dilation[d] < 1)
            return dc_error(DC_ERR_VALUE, "%s: dilation must be positive, got %lld", op, (long long)o->dilation[d]);
        if (o->pad[d] < 0 || o->pad_end[d] < 0)
            return dc_error(DC_ERR_VALUE, "%s: negative padding is not supported, got %lld", op,
                            (long long)(o->pad[d] < 0 ? o->pad[d] : o->pad_end[d]));
    }
    const int64_t C = x->shape[1];
    if (!transposed) {
        if (w->shape[0] % o->groups)
            return dc_error(DC_ERR_VALUE, "%s: out_channels (%lld, weight %s) must be divisible by groups (%lld)", op,
                            (long long)w->shape[0], DC_SHAPE(w), (long long)o->groups);
        if (w->shape[1] * o->groups != C)
            return dc_error(DC_ERR_SHAPE,
                            "%s: given groups=%lld, weight of size %s, expected input %s to have %lld channels, but "
                            "got %lld channels instead",
                            op, (long long)o->groups, DC_SHAPE(w), DC_SHAPE(x), (long long)(w->shape[1] * o->groups),
                            (long long)C);
        if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
            return dc_error(DC_ERR_SHAPE, "%s: bias has shape %s, expected (%lld,) (out_channels)", op, DC_SHAPE(b),
                            (long long)w->shape[0]);
    } else {
        if (w->shape[0] != C)
            return dc_error(DC_ERR_SHAPE,
                            "%s: given weight of size %s, expected input %s to have %lld channels, but got %lld "
                            "channels instead",
                            op, DC_SHAPE(w), DC_SHAPE(x), (long long)w->shape[0], (long long)C);
        if (C % o->groups)
            return dc_error(DC_ERR_VALUE, "%s: in_channels (%lld) must be divisible by groups (%lld)", op, (long long)C,
                            (long long)o->groups);
        if (b && (b->ndim != 1 || b->shape[0] != w->shape[1] * o->groups))
            return dc_error(DC_ERR_SHAPE, "%s: bias has shape %s, expected (%lld,) (out_channels)", op, DC_SHAPE(b),
                            (long long)(w->shape[1] * o->groups));
        for (int d = 0; d < 2; d++)
            if (o->output_padding[d] < 0 ||
                (o->output_padding[d] >= o->stride[d] && o->output_padding[d] >= o->dilation[d]))
                return dc_error(DC_ERR_VALUE,
                                "%s: output padding must be smaller than either stride or dilation, got "
                                "output_padding=%lld, stride=%lld, dilation=%lld",
                                op, (long long)o->output_padding[d], (long long)o->stride[d],
                                (long long)o->dilation[d]);
    }
    return DC_OK;
}

static struct dc_conv_params conv_params(const dc_conv_opts *o, int has_bias)
{
    struct dc_conv_params p;
    memset(&p, 0, sizeof p);
    for (int d = 0; d < 2; d++) {
        p.stride[d] = o->stride[d];
        p.pad[d] = o->pad[d];
        p.dilation[d] = o->dilation[d];
    }
    p.groups = o->groups;
    p.has_bias = has_bias;
    return p;
}

static dc_status conv_record(dc_tensor *y, dc_backward_fn fn, dc_tensor *x, dc_tensor *w, dc_tensor *b,
                             const struct dc_conv_params *p)
{
    dc_tensor *in[3] = { x, w, b };
    dc_node *n;
    DC_TRY(dc_record(y, "ConvolutionBackward", fn, 3, in, &n));
    if (n) {
        dc_tensor *xs, *ws;
        DC_TRY(dc_detach(&xs, x));
        dc_status st = dc_detach(&ws, w);
        if (st) {
            dc_tensor_decref(xs);
            return st;
        }
        dc_node_save(n, xs);
        dc_node_save(n, ws);
        dc_tensor_decref(xs);
        dc_tensor_decref(ws);
        conv_params_to_node(n, p);
    }
    return DC_OK;
}

dc_status dc_conv2d(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, const dc_conv_opts *o)
{
    DC_TRY(conv_check("conv2d", x, w, b, o, 0));
    int64_t shape[4] = { x->shape[0], w->shape[0], 0, 0 };
    for (int d = 0; d < 2; d++) {
        const int64_t in = x->shape[2 + d] + o->pad[d] + o->pad_end[d], k = o->dilation[d] * (w->shape[2 + d] - 1) + 1;
        if (in < k)
            return dc_error(DC_ERR_SHAPE,
                            "conv2d: calculated padded input size per channel: (%lld x %lld). Kernel size: (%lld x "
                            "%lld). Kernel size can't be greater than actual input size (input %s)",
                            (long long)(x->shape[2] + o->pad[0] + o->pad_end[0]),
                            (long long)(x->shape[3] + o->pad[1] + o->pad_end[1]),
                            (long long)(o->dilation[0] * (w->shape[2] - 1) + 1),
                            (long long)(o->dilation[1] * (w->shape[3] - 1) + 1), DC_SHAPE(x));
        shape[2 + d] = (in - k) / o->stride[d] + 1;
    }
    dc_kparams p;
    memset(&p, 0, sizeof p);
    p.conv = conv_params(o, b != NULL);
    dc_tensor *y;
    DC_TRY(launch3(DC_OP_CONV2D, &y, shape, x, w, b, &p));
    DC_TRY(conv_record(y, conv2d_backward, x, w, b, &p.conv));
    *out = y;
    return DC_OK;
}

dc_status dc_conv_transpose2d(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, const dc_conv_opts *o)
{
    DC_TRY(conv_check("conv_transpose2d", x, w, b, o, 1));
    int64_t shape[4] = { x->shape[0], w->shape[1] * o->groups, 0, 0 };
    for (int d = 0; d < 2; d++) {
        shape[2 + d] = (x->shape[2 + d] - 1) * o->stride[d] - 2 * o->pad[d] + o->dilation[d] * (w->shape[2 + d] - 1) +
                       o->output_padding[d] + 1;
        if (shape[2 + d] < 1)
            return dc_error(DC_ERR_SHAPE, "conv_transpose2d: the output size (%lld x %lld) for input %s is too small",
                            (long long)((x->shape[2] - 1) * o->stride[0] - 2 * o->pad[0] +
                                        o->dilation[0] * (w->shape[2] - 1) + o->output_padding[0] + 1),
                            (long long)((x->shape[3] - 1) * o->stride[1] - 2 * o->pad[1] +
                                        o->dilation[1] * (w->shape[3] - 1) + o->output_padding[1] + 1),
                            DC_SHAPE(x));
    }
    dc_kparams p;
    memset(&p, 0, sizeof p);
    p.conv = conv_params(o, b != NULL);
    dc_tensor *y;
    DC_TRY(launch3(DC_OP_CONV_TRANSPOSE2D, &y, shape, x, w, b, &p));
    p.conv.has_bias = 0;
    DC_TRY(conv_record(y, conv_transpose2d_backward, x, w, b, &p.conv));
    *out = y;
    return DC_OK;
}

/* --- pooling ----------------------------------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* torch's pooling output size: with ceil_mode the last window must start inside the input or its
 * left padding. */
static int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, int ceil_mode)
{
    int64_t out = floor_div(in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p) out--;
    return out;
}

static dc_status pool_check(const char *op, dc_tensor *x, const dc_pool_opts *o, int64_t *shape)
{
    DC_TRY(need_float(x, op));
    if (x->ndim != 4)
        return dc_error(DC_ERR_SHAPE, "%s: expected a 4-D input (N, C, H, W), got shape %s", op, DC_SHAPE(x));
    for (int d = 0; d < 2; d++) {
        if (o->kernel[d] < 1 || o->stride[d] < 1 || o->dilation[d] < 1)
            return dc_error(DC_ERR_VALUE,
                            "%s: kernel_size, stride and dilation must be positive, got kernel_size=%lld, stride=%lld, "
                            "dilation=%lld",
                            op, (long long)o->kernel[d], (long long)o->stride[d], (long long)o->dilation[d]);
        const int64_t eff = o->dilation[d] * (o->kernel[d] - 1) + 1;
        if (o->pad[d] < 0 || o->pad[d] > eff / 2)
            return dc_error(DC_ERR_VALUE,
                            "%s: pad should be at most half of effective kernel size, but got pad=%lld, "
                            "kernel_size=%lld and dilation=%lld",
                            op, (long long)o->pad[d], (long long)o->kernel[d], (long long)o->dilation[d]);
    }
    shape[0] = x->shape[0], shape[1] = x->shape[1];
    for (int d = 0; d < 2; d++)
        shape[2 + d] = pool_out(x->shape[2 + d], o->kernel[d], o->stride[d], o->pad[d], o->dilation[d], o->ceil_mode);
    if (shape[2] < 1 || shape[3] < 1)
        return dc_error(DC_ERR_SHAPE,
                        "%s: given input size: (%lld x %lld x %lld). Calculated output size: (%lld x %lld x %lld). "
                        "Output size is too small",
                        op, (long long)x->shape[1], (long long)x->shape[2], (long long)x->shape[3],
                        (long long)x->shape[1], (long long)shape[2], (long long)shape[3]);
    return DC_OK;
}

static dc_kparams pool_params(const dc_pool_opts *o)
{
    dc_kparams p;
    memset(&p, 0, sizeof p);
    for (int d = 0; d < 2; d++) {
        p.pool.kernel[d] = o->kernel[d];
        p.pool.stride[d] = o->stride[d];
        p.pool.pad[d] = o->pad[d];
        p.pool.dilation[d] = o->dilation[d];
    }
    p.pool.divisor = o->divisor;
    p.pool.count_include_pad = o->count_include_pad != 0;
    return p;
}

static void pool_to_node(dc_node *n, const dc_kparams *p)
{
    for (int d = 0; d < 2; d++) {
        n->i[d] = p->pool.kernel[d];
        n->i[2 + d] = p->pool.stride[d];
        n->i[4 + d] = p->pool.pad[d];
        n->i[6 + d] = p->pool.dilation[d];
    }
    n->i[8] = p->pool.divisor;
    n->i[9] = p->pool.count_include_pad;
}

static dc_kparams pool_of_node(const dc_node *n)
{
    dc_kparams p;
    memset(&p, 0, sizeof p);
    for (int d = 0; d < 2; d++) {
        p.pool.kernel[d] = n->i[d];
        p.pool.stride[d] = n->i[2 + d];
        p.pool.pad[d] = n->i[4 + d];
        p.pool.dilation[d] = n->i[6 + d];
    }
    p.pool.divisor = n->i[8];
    p.pool.count_include_pad = (int)n->i[9];
    return p;
}

static dc_status max_pool2d_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, idx);
    dc_kparams p = pool_of_node(n);
    return launch3(DC_OP_MAX_POOL2D_BWD, &gin[0], n->in_shape[0], g, idx, NULL, &p);
}

dc_status dc_max_pool2d(dc_tensor **out, dc_tensor **indices, dc_tensor *x, const dc_pool_opts *o)
{
    int64_t shape[4];
    DC_TRY(pool_check("max_pool2d", x, o, shape));
    dc_kparams p = pool_params(o);
    dc_tensor *xc = NULL, *y = NULL, *idx = NULL;
    dc_status st = contig_nograd(&xc, x);
    if (!st) st = dc_empty(&y, 4, shape, x->dtype, x->device);
    if (!st) st = dc_empty(&idx, 4, shape, DC_INT64, x->device);
    if (!st && dc_numel(y)) {
        dc_kargs k = kargs_of(DC_OP_MAX_POOL2D);
        kargs_add(&k, y);
        kargs_add(&k, idx);
        kargs_add(&k, xc);
        k.p = p;
        st = dc_launch(x->device, &k);
    }
    dc_tensor_decref(xc);
    dc_node *n = NULL;
    if (!st) {
        st = dc_record(y, "MaxPool2DWithIndicesBackward", max_pool2d_backward, 1, &x, &n);
        if (st) y = NULL;
    }
    if (st) {
        dc_tensor_decref(y);
        dc_tensor_decref(idx);
        return st;
    }
    if (n) {
        dc_node_save(n, idx);
        pool_to_node(n, &p);
    }
    *out = y;
    if (indices)
        *indices = idx;
    else
        dc_tensor_decref(idx);
    return DC_OK;
}

static dc_status avg_pool2d_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    dc_kparams p = pool_of_node(n);
    dc_tensor *gc;
    DC_TRY(contig_nograd(&gc, g));
    dc_tensor *dx;
    dc_status st = dc_empty(&dx, 4, n->in_shape[0], g->dtype, g->device);
    if (!st && dc_numel(dx)) {
        dc_kargs k = kargs_of(DC_OP_AVG_POOL2D_BWD);
        kargs_add(&k, dx);
        kargs_add(&k, gc);
        k.p = p;
        st = dc_launch_or_free(dx, &k);
    }
    dc_tensor_decref(gc);
    if (!st) gin[0] = dx;
    return st;
}

dc_status dc_avg_pool2d(dc_tensor **out, dc_tensor *x, const dc_pool_opts *o)
{
    int64_t shape[4];
    dc_pool_opts oo = *o;
    for (int d = 0; d < 2; d++) oo.dilation[d] = 1;
    DC_TRY(pool_check("avg_pool2d", x, &oo, shape));
    if (o->divisor < 0)
        return dc_error(DC_ERR_VALUE, "avg_pool2d: divisor_override must be positive, got %lld", (long long)o->divisor);
    dc_kparams p = pool_params(&oo);
    dc_tensor *xc = NULL, *y = NULL;
    dc_status st = contig_nograd(&xc, x);
    if (!st) st = dc_empty(&y, 4, shape, x->dtype, x->device);
    if (!st && dc_numel(y)) {
        dc_kargs k = kargs_of(DC_OP_AVG_POOL2D);
        kargs_add(&k, y);
        kargs_add(&k, xc);
        k.p = p;
        st = dc_launch_or_free(y, &k);
    }
    dc_tensor_decref(xc);
    if (st) return st;
    dc_node *n;
    DC_TRY(dc_record(y, "AvgPool2DBackward", avg_pool2d_backward, 1, &x, &n));
    if (n) pool_to_node(n, &p);
    *out = y;
    return DC_OK;
}

/* --- batch norm -------------------------------------------------------------------------------- */

static dc_status batch_norm_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x); /* (N, C, L) contiguous */
    SAVED(n, 1, mean);
    SAVED(n, 2, rstd);
    SAVED(n, 3, w);
    const int64_t C = x->shape[1];
    dc_tensor *gc = NULL, *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    dc_status st = contig_nograd(&gc, g);
    if (!st) st = dc_reshape(&dy, gc, 3, x->shape);
    if (!st) st = dc_empty(&dx, 3, x->shape, x->dtype, x->device);
    if (!st && n->i[1]) st = dc_empty(&dw, 1, &C, x->dtype, x->device);
    if (!st && n->i[2]) st = dc_empty(&db, 1, &C, x->dtype, x->device);
    if (!st) {
        dc_kargs k = kargs_of(DC_OP_BATCHNORM_BWD);
        k.nt = 8;
        dc_kview_of(&k.t[0], dx);
        if (dw) dc_kview_of(&k.t[1], dw);
        if (db) dc_kview_of(&k.t[2], db);
        dc_kview_of(&k.t[3], dy);
        dc_kview_of(&k.t[4], x);
        dc_kview_of(&k.t[5], mean);
        dc_kview_of(&k.t[6], rstd);
        if (w) dc_kview_of(&k.t[7], w);
        k.p.batchnorm.training = (int)n->i[0];
        k.p.batchnorm.has_w = dw != NULL;
        k.p.batchnorm.has_b = db != NULL;
        if (C) st = dc_launch(x->device, &k);
    }
    if (!st) st = dc_reshape(&gin[0], dx, n->in_ndim[0], n->in_shape[0]);
    dc_tensor_decref(gc);
    dc_tensor_decref(dy);
    dc_tensor_decref(dx);
    if (!st && n->next[1]) {
        gin[1] = dw;
        dw = NULL;
    }
    if (!st && n->next[2]) {
        gin[2] = db;
        db = NULL;
    }
    dc_tensor_decref(dw);
    dc_tensor_decref(db);
    return st;
}

dc_status dc_batch_norm(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, dc_tensor *running_mean,
                        dc_tensor *running_var, int training, double momentum, double eps)
{
    const char *op = "batch_norm";
    DC_TRY(need_float(x, op));
    if (x->ndim < 2)
        return dc_error(DC_ERR_SHAPE, "%s: expected an input of at least 2 dims (N, C, ...), got shape %s", op,
                        DC_SHAPE(x));
    const int64_t N = x->shape[0], C = x->shape[1], L = C && N ? dc_numel(x) / (N * C) : 0;
    dc_tensor *p[4] = { w, b, running_mean, running_var };
    const char *names[4] = { "weight", "bias", "running_mean", "running_var" };
    for (int k = 0; k < 4; k++) {
        if (!p[k]) continue;
        DC_TRY(float_same(x, p[k], names[k], op));
        if (p[k]->ndim != 1 || p[k]->shape[0] != C)
            return dc_error(DC_ERR_SHAPE,
                            "%s: %s should contain %lld elements (the input's channels, dim 1 of %s), not %lld", op,
                            names[k], (long long)C, DC_SHAPE(x), (long long)dc_numel(p[k]));
    }
    if ((running_mean == NULL) != (running_var == NULL))
        return dc_error(DC_ERR_VALUE, "%s: running_mean and running_var must both be given or both be None", op);
    if (!training && !running_mean)
        return dc_error(DC_ERR_VALUE, "%s: running_mean and running_var must be defined in evaluation mode", op);
    if (training && N * L <= 1)
        return dc_error(DC_ERR_VALUE, "%s: expected more than 1 value per channel when training, got input size %s", op,
                        DC_SHAPE(x));
    const int upd = training && running_mean;
    if (upd) {
        DC_TRY(begin_inplace(running_mean, op));
        DC_TRY(begin_inplace(running_var, op));
        if (!dc_is_contiguous(running_mean) || !dc_is_contiguous(running_var))
            return dc_error(DC_ERR_VALUE, "%s: running_mean and running_var must be contiguous to be updated", op);
    }
    int64_t s3[3] = { N, C, L };
    dc_tensor *xc = NULL, *x3 = NULL, *y3 = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *c[4] = { 0 };
    dc_status st = contig_nograd(&xc, x);
    if (!st) {
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        st = dc_reshape(&x3, xc, 3, s3);
        dc_set_grad_enabled(prev);
    }
    for (int k = 0; k < 2 && !st; k++) st = contig_nograd(&c[k], p[k]);
    if (!st) st = dc_empty(&y3, 3, s3, x->dtype, x->device);
    if (!st) st = dc_empty(&mean, 1, &C, x->dtype, x->device);
    if (!st) st = dc_empty(&rstd, 1, &C, x->dtype, x->device);
    if (!st && C) {
        dc_kargs k = kargs_of(DC_OP_BATCHNORM);
        k.nt = 8;
        dc_kview_of(&k.t[0], y3);
        dc_kview_of(&k.t[1], mean);
        dc_kview_of(&k.t[2], rstd);
        dc_kview_of(&k.t[3], x3);
        if (c[0]) dc_kview_of(&k.t[4], c[0]);
        if (c[1]) dc_kview_of(&k.t[5], c[1]);
        if (running_mean) {
            dc_kview_of(&k.t[6], running_mean);
            dc_kview_of(&k.t[7], running_var);
        }
        k.p.batchnorm = (struct dc_batchnorm_params){ .eps = eps,
                                                      .momentum = momentum,
                                                      .training = training != 0,
                                                      .has_w = w != NULL,
                                                      .has_b = b != NULL,
                                                      .has_running = running_mean != NULL };
        st = dc_launch(x->device, &k);
    }
    if (!st) {
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        st = dc_reshape(&y, y3, x->ndim, x->shape);
        dc_set_grad_enabled(prev);
    }
    dc_node *n = NULL;
    if (!st) {
        dc_tensor *in[3] = { x, w, b };
        st = dc_record(y, "NativeBatchNormBackward", batch_norm_backward, 3, in, &n);
        if (st) y = NULL;
    }
    if (!st && n) {
        dc_tensor *xs;
        if (!(st = dc_detach(&xs, x3))) {
            dc_node_save(n, xs);
            dc_tensor_decref(xs);
        }
        dc_node_save(n, mean);
        dc_node_save(n, rstd);
        dc_node_save(n, c[0]);
        n->i[0] = training != 0;
        n->i[1] = w != NULL;
        n->i[2] = b != NULL;
    }
    dc_tensor_decref(xc);
    dc_tensor_decref(x3);
    dc_tensor_decref(y3);
    dc_tensor_decref(mean);
    dc_tensor_decref(rstd);
    for (int k = 0; k < 2; k++) dc_tensor_decref(c[k]);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}
