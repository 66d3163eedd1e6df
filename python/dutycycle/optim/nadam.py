"""NAdam (Adam with Nesterov momentum and torch's momentum-decay schedule), torch.optim.NAdam's
update. With mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)) and prod_t = mu_1 ... mu_t:

    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    denom = sqrt(v / (1 - beta2^t)) + eps
    p -= lr * (1 - mu_t) / (1 - prod_t) * g / denom + lr * mu_{t+1} / (1 - prod_t * mu_{t+1}) * m / denom

weight_decay is L2 (added to g), or with decoupled_weight_decay p *= 1 - lr * weight_decay first.
prod_t is rounded to float32 after each step, as torch's float32 state tensor does.
"""

import numpy as np

import dutycycle as dc

from ._elementwise import ElementwiseOptimizer, check_nonnegative


class NAdam(ElementwiseOptimizer):
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("momentum_decay", momentum_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "momentum_decay": momentum_decay, "decoupled_weight_decay": decoupled_weight_decay,
                    "maximize": maximize}
        super().__init__(params, defaults)

    def _update(self, p, group):
        s = self.state[p]
        if not s:
            s.update(step=0, mu_product=1.0, exp_avg=dc.zeros_like(p), exp_avg_sq=dc.zeros_like(p))
        s["step"] += 1
        t = s["step"]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        g = -p.grad if group["maximize"] else p.grad
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            else:
                g = g + p * wd
        md = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * md))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * md))
        # torch keeps mu_product in a float32 tensor (multiplied in float32); we round the same way
        s["mu_product"] = float(np.float32(s["mu_product"]) * np.float32(mu))
        prod = s["mu_product"]
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m.mul_(beta1).add_(g * (1 - beta1))
        v.mul_(beta2).add_(g * g * (1 - beta2))
        denom = (v / (1 - beta2**t)).sqrt() + eps
        p.sub_(g / denom * (lr * (1 - mu) / (1 - prod)))
        p.sub_(m / denom * (lr * mu_next / (1 - prod * mu_next)))
