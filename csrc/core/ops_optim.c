/* ops_optim.c: the fused optimizer steps and gradient-norm helpers. Each is one kernel launch per
 * tensor, in place, outside autograd; the CPU and CUDA kernels read the same parameter structs
 * (kernel-params.h). */
#include <math.h>

#include "ops-impl.h"

static dc_status check_pair(dc_tensor *p, dc_tensor *g, int k, const char *op, const char *what)
{
    if (!g) return dc_error(DC_ERR_VALUE, "%s: %s %d is missing", op, what, k);
    if (p->dtype != DC_FLOAT32 && p->dtype != DC_FLOAT64)
        return dc_error(DC_ERR_DTYPE, "%s: parameter %d has dtype %s; expected float32 or float64", op, k,
                        dc_dtype_name(p->dtype));
    if (g->dtype != p->dtype)
        return dc_error(DC_ERR_DTYPE, "%s: %s %d has dtype %s but its parameter is %s", op, what, k,
                        dc_dtype_name(g->dtype), dc_dtype_name(p->dtype));
    if (!dc_device_eq(g->device, p->device))
        return dc_error(DC_ERR_DEVICE, "%s: %s %d is on a different device than its parameter", op, what, k);
    if (g->ndim != p->ndim || memcmp(g->shape, p->shape, sizeof(int64_t) * p->ndim))
        return dc_error(DC_ERR_SHAPE, "%s: %s %d has shape %s but its parameter has shape %s", op, what, k, DC_SHAPE(g),
                        DC_SHAPE(p));
    if (!dc_is_contiguous(g) || !dc_is_contiguous(p))
        return dc_error(DC_ERR_VALUE, "%s: parameter %d and its %s must be contiguous", op, k, what);
    return DC_OK;
}

dc_status dc_sgd_step(int n, dc_tensor *const *params, dc_tensor *const *grads, dc_tensor *const *bufs, double lr,
                      double momentum, double dampening, double wd, int nesterov, int maximize, int first)
{
    for (int k = 0; k < n; k++) {
        DC_TRY(check_pair(params[k], grads[k], k, "sgd_step", "grad"));
        if (momentum != 0) DC_TRY(check_pair(params[k], bufs ? bufs[k] : NULL, k, "sgd_step", "momentum buffer"));
    }
    for (int k = 0; k < n; k++) {
        if (!dc_numel(params[k])) continue;
        atomic_fetch_add(&params[k]->storage->version, 1);
        dc_kargs a = kargs_of(DC_OP_SGD);
        kargs_add(&a, params[k]);
        kargs_add(&a, grads[k]);
        if (momentum != 0) kargs_add(&a, bufs[k]);
        a.p.sgd = (struct dc_sgd_params){ .lr = lr,
                                          .momentum = momentum,
                                          .dampening = dampening,
                                          .weight_decay = wd,
                                          .nesterov = nesterov,
                                          .maximize = maximize,
                                          .first = first };
        DC_TRY(dc_launch(params[k]->device, &a));
    }
    return DC_OK;
}

dc_status dc_adamw_step(int n, dc_tensor *const *params, dc_tensor *const *grads, dc_tensor *const *m,
                        dc_tensor *const *v, int64_t step, double lr, double beta1, double beta2, double eps, double wd,
                        int maximize)
{
    if (step < 1) return dc_error(DC_ERR_VALUE, "adamw_step: step must be >= 1, got %lld", (long long)step);
    for (int k = 0; k < n; k++) {
        DC_TRY(check_pair(params[k], grads[k], k, "adamw_step", "grad"));
        DC_TRY(check_pair(params[k], m[k], k, "adamw_step", "exp_avg"));
        DC_TRY(check_pair(params[k], v[k], k, "adamw_step", "exp_avg_sq"));
    }
    double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    for (int k = 0; k < n; k++) {
        if (!dc_numel(params[k])) continue;
        atomic_fetch_add(&params[k]->storage->version, 1);
        dc_kargs a = kargs_of(DC_OP_ADAMW);
        kargs_add(&a, params[k]);
        kargs_add(&a, grads[k]);
        kargs_add(&a, m[k]);
        kargs_add(&a, v[k]);
        a.p.adamw = (struct dc_adamw_params){ .lr = lr,
                                              .beta1 = beta1,
                                              .beta2 = beta2,
                                              .eps = eps,
                                              .weight_decay = wd,
                                              .bias_correction1 = bc1,
                                              .bias_correction2 = bc2,
                                              .step = step,
                                              .maximize = maximize };
        DC_TRY(dc_launch(params[k]->device, &a));
    }
    return DC_OK;
}

dc_status dc_total_norm(int n, dc_tensor *const *ts, double p, double *out)
{
    if (!(p > 0)) return dc_error(DC_ERR_VALUE, "norm type must be positive, got %g", p);
    double acc = 0;
    for (int k = 0; k < n; k++) {
        DC_TRY(need_float(ts[k], "grad_norm"));
        if (!dc_numel(ts[k])) continue;
        dc_tensor *s;
        DC_TRY(dc_full(&s, 0, NULL, 0.0, DC_FLOAT64, ts[k]->device));
        dc_kargs a = kargs_of(DC_OP_NORM_POW);
        kargs_add(&a, s);
        kargs_add(&a, ts[k]);
        a.p.norm.p = p;
        dc_status st = dc_launch(ts[k]->device, &a);
        double v = 0;
        if (!st) {
            const dc_backend *be = dc_backend_get(s->device.type);
            st = be->to_host(s->device, &v, dc_data(s), sizeof v); /* note: a device sync point */
        }
        dc_tensor_decref(s);
        if (st) return st;
        acc = isinf(p) ? (v > acc || isnan(v) ? v : acc) : acc + v;
    }
    *out = isinf(p) ? acc : pow(acc, 1.0 / p);
    return DC_OK;
}

dc_status dc_scale_(int n, dc_tensor *const *ts, double factor)
{
    for (int k = 0; k < n; k++) DC_TRY(need_float(ts[k], "scale_"));
    for (int k = 0; k < n; k++) {
        if (!dc_numel(ts[k])) continue;
        atomic_fetch_add(&ts[k]->storage->version, 1);
        dc_kargs a = kargs_of(DC_OP_SCALE);
        kargs_add(&a, ts[k]);
        a.p.scale.factor = factor;
        DC_TRY(dc_launch(ts[k]->device, &a));
    }
    return DC_OK;
}
