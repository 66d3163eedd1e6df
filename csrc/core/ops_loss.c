/* ops_loss.c: cross entropy fused with the softmax over the classes (CROSS_ENTROPY). The composed
 * path (log_softmax, gather) keeps an (N, C) log-probability matrix for backward: for a GPT's
 * vocabulary that is the largest tensor of the step. The fused op keeps only the row logsumexp and
 * recomputes the softmax from the logits (which backward holds anyway) in one pass. */
#include "ops-impl.h"

static dc_status ce_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);   /* (N, C) contiguous logits */
    SAVED(n, 1, t);   /* (N,) int64 */
    SAVED(n, 2, lse); /* (N,) */
    dc_tensor *gc = NULL, *dx = NULL;
    dc_status st = dc_to(&gc, g, lse->dtype, g->device);
    dc_tensor *gc2 = NULL;
    if (!st) st = dc_contiguous(&gc2, gc);
    if (!st) st = dc_empty(&dx, 2, x->shape, x->dtype, x->device);
    if (!st && dc_numel(dx)) {
        dc_kargs a = kargs_of(DC_OP_CROSS_ENTROPY_BWD);
        kargs_add(&a, dx);
        kargs_add(&a, gc2);
        kargs_add(&a, x);
        kargs_add(&a, t);
        kargs_add(&a, lse);
        a.p.ce = (struct dc_ce_params){ .ignore_index = n->i[0], .label_smoothing = n->f[0] };
        st = dc_launch(x->device, &a);
    }
    dc_tensor_decref(gc);
    dc_tensor_decref(gc2);
    if (st) {
        dc_tensor_decref(dx);
        return st;
    }
    gin[0] = dx;
    return DC_OK;
}

dc_status dc_cross_entropy(dc_tensor **out, dc_tensor *logits, dc_tensor *target, int64_t ignore_index,
                           double label_smoothing)
{
    *out = NULL;
    DC_TRY(need_float(logits, "cross_entropy"));
    if (target->dtype != DC_INT64)
        return dc_error(DC_ERR_DTYPE, "cross_entropy: target must be int64 class indices, got %s",
                        dc_dtype_name(target->dtype));
    if (logits->ndim != 2 || target->ndim != 1 || target->shape[0] != logits->shape[0])
        return dc_error(DC_ERR_SHAPE, "cross_entropy: logits %s and target %s: expected (N, C) and (N,)",
                        DC_SHAPE(logits), DC_SHAPE(target));
    if (!dc_device_eq(target->device, logits->device))
        return dc_error(DC_ERR_DEVICE, "cross_entropy: logits on %s, target on %s", dc_device_str(logits->device),
                        dc_device_str(target->device));
    if (!(label_smoothing >= 0 && label_smoothing <= 1))
        return dc_error(DC_ERR_VALUE, "cross_entropy: label_smoothing must be in [0, 1], got %g", label_smoothing);
    dc_dtype st_dt = logits->dtype == DC_FLOAT64 ? DC_FLOAT64 : DC_FLOAT32;
    dc_tensor *x = NULL, *t = NULL, *loss = NULL, *lse = NULL;
    dc_status st = dc_contiguous(&x, logits);
    if (!st) st = dc_contiguous(&t, target);
    if (!st) st = dc_empty(&loss, 1, logits->shape, st_dt, logits->device);
    if (!st) st = dc_empty(&lse, 1, logits->shape, st_dt, logits->device);
    if (!st && dc_numel(loss)) {
        dc_kargs a = kargs_of(DC_OP_CROSS_ENTROPY);
        kargs_add(&a, loss);
        kargs_add(&a, lse);
        kargs_add(&a, x);
        kargs_add(&a, t);
        a.p.ce = (struct dc_ce_params){ .ignore_index = ignore_index, .label_smoothing = label_smoothing };
        st = dc_launch(logits->device, &a);
    }
    dc_node *n = NULL;
    if (!st) {
        st = dc_record(loss, dc_op_info[DC_OP_CROSS_ENTROPY].node, ce_backward, 1, &logits, &n);
        if (st) loss = NULL; /* freed by dc_record */
    }
    if (!st && n) {
        dc_tensor *xd = NULL;
        if (!(st = dc_detach(&xd, x))) {
            dc_node_save(n, xd);
            dc_tensor_decref(xd);
            dc_node_save(n, t);
            dc_node_save(n, lse);
            n->i[0] = ignore_index;
            n->f[0] = label_smoothing;
        }
    }
    dc_tensor_decref(x);
    dc_tensor_decref(t);
    dc_tensor_decref(lse);
    if (st) {
        dc_tensor_decref(loss);
        return st;
    }
    *out = loss;
    return DC_OK;
}
