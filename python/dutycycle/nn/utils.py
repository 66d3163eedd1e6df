"""nn.utils: gradient clipping over many tensors with one fused norm and one fused scale."""

import math

import dutycycle as dc


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients of parameters in place so that their joint norm is at most max_norm.

    Returns the total norm before clipping as a 0-d tensor (dtype and device of the gradients).
    """
    if isinstance(parameters, dc.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return dc.zeros(())
    if error_if_nonfinite:  # the check needs the value on the host, as in torch
        total = float(dc._C.grad_norm(grads, norm_type))  # note: sync point (the norm comes back as a float)
        if not math.isfinite(total):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot "
                "be clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
                "`error_if_nonfinite=False`"
            )
        coef = float(max_norm) / (total + 1e-6)
        if math.isnan(coef) or coef < 1.0:
            dc._C.scale_(grads, coef)
        return dc.full((), total, dtype=grads[0].dtype, device=grads[0].device)
    # norm, clip factor and scaling all on the gradients' device: no host read
    total = dc._C.clip_grad_norm_(grads, float(max_norm), norm_type)
    return total.to(grads[0].dtype)


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    if isinstance(parameters, dc.Tensor):
        parameters = [parameters]
    with dc.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad.copy_(p.grad.clamp(-clip_value, clip_value))
