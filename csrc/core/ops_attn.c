/* ops_attn.c: fused attention (FLASH_ATTN): softmax(scale * q k^T, causal mask) v with the scores
 * never stored; backward recomputes them from q, k and the saved row logsumexp (FlashAttention's
 * scheme). Memory is O(T) per row instead of the composed path's (..., Tq, Tk) scores, forward and
 * backward. The op flattens the batch dims into one (BH) and hands the kernels contiguous views. */
#include <math.h>

#include "ops-impl.h"

static dc_status flat3(dc_tensor **out, dc_tensor *x, int64_t bh)
{
    dc_tensor *c;
    DC_TRY(dc_contiguous(&c, x));
    int64_t shape[3] = { bh, x->shape[x->ndim - 2], x->shape[x->ndim - 1] };
    dc_status st = dc_reshape(out, c, 3, shape);
    dc_tensor_decref(c);
    return st;
}

static dc_status flash_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, q);   /* (BH, Tq, D) */
    SAVED(n, 1, k);   /* (BH, Tk, D) */
    SAVED(n, 2, v);   /* (BH, Tk, Dv) */
    SAVED(n, 3, out); /* (BH, Tq, Dv) */
    SAVED(n, 4, lse); /* (BH, Tq) */
    dc_tensor *dout = NULL, *go = NULL, *oo = NULL, *prod = NULL, *delta = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    dc_status st = flat3(&dout, g, q->shape[0]);
    /* delta = rowsum(dout * out), in the statistics' dtype (float32 for 16-bit inputs) */
    if (!st) st = dc_to(&go, dout, lse->dtype, dout->device);
    if (!st) st = dc_to(&oo, out, lse->dtype, out->device);
    if (!st) st = dc_binary(&prod, DC_OP_MUL, go, oo);
    int mask[3] = { 0, 0, 1 };
    if (!st) st = dc_reduce_raw(&delta, DC_OP_SUM, prod, mask, 0, lse->dtype);
    if (!st) st = dc_empty(&dq, 3, q->shape, q->dtype, q->device);
    if (!st) st = dc_empty(&dk, 3, k->shape, k->dtype, k->device);
    if (!st) st = dc_empty(&dv, 3, v->shape, v->dtype, v->device);
    if (!st) {
        dc_kargs a = kargs_of(DC_OP_FLASH_ATTN_BWD);
        dc_tensor *ops[9] = { dq, dk, dv, dout, q, k, v, lse, delta };
        for (int i = 0; i < 9; i++) kargs_add(&a, ops[i]);
        a.p.attn = (struct dc_attn_params){ .scale = n->f[0], .causal = (int)n->i[0] };
        if (dc_numel(dq) || dc_numel(dk) || dc_numel(dv)) st = dc_launch(q->device, &a);
    }
    dc_tensor *outs[3] = { dq, dk, dv };
    for (int i = 0; !st && i < 3; i++) {
        int nd = (int)n->in_ndim[i];
        st = dc_reshape(&gin[i], outs[i], nd, n->in_shape[i]);
    }
    dc_tensor *tmp[8] = { dout, go, oo, prod, delta, dq, dk, dv };
    for (int i = 0; i < 8; i++) dc_tensor_decref(tmp[i]);
    if (st)
        for (int i = 0; i < 3; i++) dc_tensor_decref(gin[i]), gin[i] = NULL;
    return st;
}

dc_status dc_flash_attention(dc_tensor **out, dc_tensor *q, dc_tensor *k, dc_tensor *v, double scale, int causal)
{
    *out = NULL;
    DC_TRY(need_float(q, "flash_attention"));
    if (!isfinite(scale)) return dc_error(DC_ERR_VALUE, "flash_attention: scale must be finite, got %g", scale);
    if (k->dtype != q->dtype || v->dtype != q->dtype)
        return dc_error(DC_ERR_DTYPE, "flash_attention: q, k, v have dtypes %s, %s, %s; they must match",
                        dc_dtype_name(q->dtype), dc_dtype_name(k->dtype), dc_dtype_name(v->dtype));
    if (!dc_device_eq(k->device, q->device) || !dc_device_eq(v->device, q->device))
        return dc_error(DC_ERR_DEVICE, "flash_attention: q, k and v must be on one device");
    int nd = q->ndim;
    if (nd < 2 || k->ndim != nd || v->ndim != nd)
        return dc_error(DC_ERR_SHAPE, "flash_attention: q %s, k %s, v %s: expected (..., T, D) with the same dims",
                        DC_SHAPE(q), DC_SHAPE(k), DC_SHAPE(v));
    int64_t bh = 1;
    for (int d = 0; d < nd - 2; d++) {
        if (k->shape[d] != q->shape[d] || v->shape[d] != q->shape[d])
            return dc_error(DC_ERR_SHAPE, "flash_attention: batch dims differ: q %s, k %s, v %s", DC_SHAPE(q),
                            DC_SHAPE(k), DC_SHAPE(v));
        bh *= q->shape[d];
    }
    const int64_t Tq = q->shape[nd - 2], D = q->shape[nd - 1], Tk = k->shape[nd - 2], Dv = v->shape[nd - 1];
    if (k->shape[nd - 1] != D || v->shape[nd - 2] != Tk)
        return dc_error(DC_ERR_SHAPE,
                        "flash_attention: q %s, k %s, v %s: q and k need one head dim, k and v one length", DC_SHAPE(q),
                        DC_SHAPE(k), DC_SHAPE(v));
    dc_tensor *q3 = NULL, *k3 = NULL, *v3 = NULL, *o3 = NULL, *lse = NULL, *y = NULL;
    dc_status st = flat3(&q3, q, bh);
    if (!st) st = flat3(&k3, k, bh);
    if (!st) st = flat3(&v3, v, bh);
    int64_t oshape[3] = { bh, Tq, Dv }, lshape[2] = { bh, Tq };
    if (!st) st = dc_empty(&o3, 3, oshape, q->dtype, q->device);
    if (!st) st = dc_empty(&lse, 2, lshape, q->dtype == DC_FLOAT64 ? DC_FLOAT64 : DC_FLOAT32, q->device);
    if (!st && dc_numel(o3)) {
        dc_kargs a = kargs_of(DC_OP_FLASH_ATTN);
        dc_tensor *ops[5] = { o3, lse, q3, k3, v3 };
        for (int i = 0; i < 5; i++) kargs_add(&a, ops[i]);
        a.p.attn = (struct dc_attn_params){ .scale = scale, .causal = causal != 0 };
        st = dc_launch(q->device, &a);
    }
    int64_t yshape[DC_MAX_DIMS];
    for (int d = 0; d < nd; d++) yshape[d] = q->shape[d];
    yshape[nd - 1] = Dv;
    dc_tensor *o3d = NULL;
    if (!st) st = dc_detach(&o3d, o3);
    if (!st) st = dc_reshape(&y, o3d, nd, yshape);
    dc_node *n = NULL;
    if (!st) {
        dc_tensor *in[3] = { q, k, v };
        st = dc_record(y, dc_op_info[DC_OP_FLASH_ATTN].node, flash_backward, 3, in, &n);
        if (st) y = NULL; /* freed by dc_record */
    }
    if (!st && n) {
        dc_tensor *keep[5] = { q3, k3, v3, o3, lse };
        for (int i = 0; i < 5; i++) {
            dc_tensor *d;
            if ((st = dc_detach(&d, keep[i]))) break;
            dc_node_save(n, d);
            dc_tensor_decref(d);
        }
        n->f[0] = scale;
        n->i[0] = causal != 0;
    }
    dc_tensor *tmp[6] = { q3, k3, v3, o3, lse, o3d };
    for (int i = 0; i < 6; i++) dc_tensor_decref(tmp[i]);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}
