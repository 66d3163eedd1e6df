"""Adadelta with torch.optim.Adadelta's update:

    v = rho * v + (1 - rho) * g^2
    delta = sqrt(u + eps) / sqrt(v + eps) * g
    u = rho * u + (1 - rho) * delta^2;  p -= lr * delta
"""

import dutycycle as dc

from ._elementwise import ElementwiseOptimizer, check_nonnegative, grad_of


class Adadelta(ElementwiseOptimizer):
    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False):
        check_nonnegative("lr", lr, "learning rate")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay, "maximize": maximize}
        super().__init__(params, defaults)

    def _update(self, p, group):
        s = self.state[p]
        if not s:
            s.update(step=0, square_avg=dc.zeros_like(p), acc_delta=dc.zeros_like(p))
        s["step"] += 1
        g = grad_of(p, group)
        rho, eps = group["rho"], group["eps"]
        v, u = s["square_avg"], s["acc_delta"]
        v.mul_(rho).add_(g * g * (1 - rho))
        delta = (u + eps).sqrt() / (v + eps).sqrt() * g
        u.mul_(rho).add_(delta * delta * (1 - rho))
        p.sub_(delta * group["lr"])
