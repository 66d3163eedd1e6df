/* ops_optim.c: the fused optimizer steps and gradient-norm helpers, in place, outside autograd; the
 * CPU and CUDA kernels read the same parameter structs (kernel-params.h). The launches of one call
 * go to the device together (dc_launch_many): the CUDA backend queues them as one multi-tensor
 * kernel per chunk of tensors, the CPU runs them one by one. */
#include <math.h>
#include <stdlib.h>

#include "ops-impl.h"

static dc_status check_pair(dc_tensor *p, dc_tensor *g, int k, const char *op, const char *what)
{
    if (!g) return dc_error(DC_ERR_VALUE, "%s: %s %d is missing", op, what, k);
    if (!dc_dtype_is_float(p->dtype)) /* 16-bit: precision="bf16-true"; the math is float32 */
        return dc_error(DC_ERR_DTYPE, "%s: parameter %d has dtype %s; expected a float dtype", op, k,
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

/* Launch a[0..na), built in order from the non-empty tensors of ts[0..n): each run of consecutive
 * tensors on one device goes to it together. */
static dc_status launch_grouped(int na, const dc_kargs *a, dc_tensor *const *ts, int n)
{
    int i = 0, start = 0, k = 0;
    dc_device dev = { 0, 0 };
    for (; k < n; k++) {
        if (!dc_numel(ts[k])) continue;
        if (i > start && !dc_device_eq(ts[k]->device, dev)) {
            DC_TRY(dc_launch_many(dev, i - start, a + start));
            start = i;
        }
        dev = ts[k]->device;
        i++;
    }
    if (i != na) return dc_error(DC_ERR_INTERNAL, "optimizer step: %d launches for %d non-empty tensors", na, i);
    return i > start ? dc_launch_many(dev, i - start, a + start) : DC_OK;
}

dc_status dc_sgd_step(int n, dc_tensor *const *params, dc_tensor *const *grads, dc_tensor *const *bufs, double lr,
                      double momentum, double dampening, double wd, int nesterov, int maximize, int first)
{
    for (int k = 0; k < n; k++) {
        DC_TRY(check_pair(params[k], grads[k], k, "sgd_step", "grad"));
        if (momentum != 0) DC_TRY(check_pair(params[k], bufs ? bufs[k] : NULL, k, "sgd_step", "momentum buffer"));
    }
    dc_kargs *all = n > 0 ? calloc((size_t)n, sizeof *all) : NULL;
    if (n > 0 && !all) return dc_error(DC_ERR_NOMEM, "sgd_step: out of memory for %d launches", n);
    int na = 0;
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
        all[na++] = a;
    }
    dc_status st = launch_grouped(na, all, params, n);
    free(all);
    return st;
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
    dc_kargs *all = n > 0 ? calloc((size_t)n, sizeof *all) : NULL;
    if (n > 0 && !all) return dc_error(DC_ERR_NOMEM, "adamw_step: out of memory for %d launches", n);
    int na = 0;
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
        all[na++] = a;
    }
    dc_status st = launch_grouped(na, all, params, n);
    free(all);
    return st;
}

/* Accumulate sum |t|^p (inf: max |t|) of every tensor into one float64 0-d tensor per device: one
 * (multi-tensor) launch per run of tensors on one device, no host read. *accs gets n slots; acc of
 * tensor k is accs[k] (shared by the tensors of a run), NULL for an empty tensor. */
static dc_status norm_accumulate(int n, dc_tensor *const *ts, double p, dc_tensor **accs)
{
    dc_kargs *all = n > 0 ? calloc((size_t)n, sizeof *all) : NULL;
    if (n > 0 && !all) return dc_error(DC_ERR_NOMEM, "grad_norm: out of memory for %d launches", n);
    dc_status st = DC_OK;
    int start = 0, na = 0;
    dc_tensor *acc = NULL;
    for (int k = 0; k < n; k++) accs[k] = NULL;
    for (int k = 0; k <= n; k++) {
        int flush = k == n || (acc && dc_numel(ts[k]) && !dc_device_eq(ts[k]->device, acc->device));
        if (flush && na > start) {
            if ((st = dc_launch_many(acc->device, na - start, all + start))) goto done;
            start = na;
            acc = NULL;
        }
        if (k == n) break;
        if ((st = need_float(ts[k], "grad_norm"))) goto done;
        if (!dc_numel(ts[k])) continue;
        if (!acc) {
            if ((st = dc_full(&acc, 0, NULL, 0.0, DC_FLOAT64, ts[k]->device))) goto done;
        } else {
            dc_tensor_incref(acc);
        }
        accs[k] = acc;
        dc_kargs a = kargs_of(DC_OP_NORM_POW);
        kargs_add(&a, acc);
        kargs_add(&a, ts[k]);
        a.p.norm.p = p;
        all[na++] = a;
    }
done:
    free(all);
    if (st)
        for (int k = 0; k < n; k++) dc_tensor_decref(accs[k]), accs[k] = NULL;
    return st;
}

static double norm_combine(double acc, double v, double p)
{
    return isinf(p) ? (v > acc || isnan(v) ? v : acc) : acc + v;
}

dc_status dc_total_norm(int n, dc_tensor *const *ts, double p, double *out)
{
    if (!(p > 0)) return dc_error(DC_ERR_VALUE, "norm type must be positive, got %g", p);
    dc_tensor **accs = n > 0 ? calloc((size_t)n, sizeof *accs) : NULL;
    if (n > 0 && !accs) return dc_error(DC_ERR_NOMEM, "grad_norm: out of memory");
    dc_status st = norm_accumulate(n, ts, p, accs);
    double acc = 0;
    for (int k = 0; !st && k < n; k++) {
        if (!accs[k] || (k > 0 && accs[k] == accs[k - 1])) continue; /* one read per device run */
        double v = 0;
        if (accs[k]->device.type != DC_CPU) dc_sync_note(DC_SYNC_D2H);
        const dc_backend *be = dc_backend_get(accs[k]->device.type);
        st = be->to_host(accs[k]->device, &v, dc_data(accs[k]), sizeof v); /* note: a device sync point */
        acc = norm_combine(acc, v, p);
    }
    for (int k = 0; k < n; k++) dc_tensor_decref(accs[k]);
    free(accs);
    if (st) return st;
    *out = isinf(p) ? acc : pow(acc, 1.0 / p);
    return DC_OK;
}

static dc_status scale_launch(int n, dc_tensor *const *ts, double factor, int clip, double max_norm, double p,
                              dc_tensor *acc)
{
    dc_kargs *all = n > 0 ? calloc((size_t)n, sizeof *all) : NULL;
    if (n > 0 && !all) return dc_error(DC_ERR_NOMEM, "scale_: out of memory for %d launches", n);
    int na = 0;
    for (int k = 0; k < n; k++) {
        if (!dc_numel(ts[k])) continue;
        atomic_fetch_add(&ts[k]->storage->version, 1);
        dc_kargs a = kargs_of(DC_OP_SCALE);
        kargs_add(&a, ts[k]);
        if (clip) kargs_add(&a, acc);
        a.p.scale = (struct dc_scale_params){ .factor = factor, .clip = clip, .max_norm = max_norm, .norm_p = p };
        all[na++] = a;
    }
    dc_status st = launch_grouped(na, all, ts, n);
    free(all);
    return st;
}

dc_status dc_scale_(int n, dc_tensor *const *ts, double factor)
{
    for (int k = 0; k < n; k++) DC_TRY(need_float(ts[k], "scale_"));
    return scale_launch(n, ts, factor, 0, 0, 0, NULL);
}

dc_status dc_clip_grad_norm_(int n, dc_tensor *const *ts, double max_norm, double p, dc_tensor **total_out)
{
    *total_out = NULL;
    if (!(p > 0)) return dc_error(DC_ERR_VALUE, "norm type must be positive, got %g", p);
    dc_tensor *acc = NULL;
    for (int k = 0; k < n; k++) {
        DC_TRY(need_float(ts[k], "clip_grad_norm_"));
        if (k > 0 && !dc_device_eq(ts[k]->device, ts[0]->device))
            return dc_error(DC_ERR_DEVICE, "clip_grad_norm_: gradient %d is on %s, gradient 0 on %s", k,
                            dc_device_str(ts[k]->device), dc_device_str(ts[0]->device));
    }
    dc_tensor **accs = n > 0 ? calloc((size_t)n, sizeof *accs) : NULL;
    if (n > 0 && !accs) return dc_error(DC_ERR_NOMEM, "clip_grad_norm_: out of memory");
    dc_status st = norm_accumulate(n, ts, p, accs);
    for (int k = 0; !st && k < n && !acc; k++)
        if (accs[k]) dc_tensor_incref(acc = accs[k]);
    for (int k = 0; k < n; k++) dc_tensor_decref(accs[k]);
    free(accs);
    if (st) return st;
    if (!acc) { /* no elements at all: the norm is 0 and nothing is scaled */
        dc_device dev = n ? ts[0]->device : (dc_device){ DC_CPU, 0 };
        return dc_full(total_out, 0, NULL, 0.0, DC_FLOAT64, dev);
    }
    st = scale_launch(n, ts, 1.0, 1, max_norm, p, acc);
    if (!st) { /* total = acc^(1/p) on the device (inf: acc itself) */
        if (isinf(p)) {
            dc_tensor_incref(acc);
            *total_out = acc;
        } else {
            st = dc_pow_scalar(total_out, acc, 1.0 / p);
        }
    }
    dc_tensor_decref(acc);
    return st;
}
