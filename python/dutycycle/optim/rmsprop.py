"""RMSprop with torch.optim.RMSprop's update (alpha, eps outside the square root, L2 weight decay,
momentum, centered), one parameter at a time in tensor ops:

    v = alpha * v + (1 - alpha) * g^2
    centered: m = alpha * m + (1 - alpha) * g;  avg = sqrt(v - m^2) + eps   else  avg = sqrt(v) + eps
    momentum > 0: buf = momentum * buf + g / avg;  p -= lr * buf           else  p -= lr * g / avg
"""

import dutycycle as dc

from ._elementwise import ElementwiseOptimizer, check_nonnegative, grad_of


class RMSprop(ElementwiseOptimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 *, maximize=False, foreach=None, capturable=False, differentiable=False):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("alpha", alpha)
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum,
                    "centered": centered, "maximize": maximize}
        super().__init__(params, defaults)

    def _update(self, p, group):
        s = self.state[p]
        if not s:
            s["step"] = 0
            s["square_avg"] = dc.zeros_like(p)
            if group["momentum"] > 0:
                s["momentum_buffer"] = dc.zeros_like(p)
            if group["centered"]:
                s["grad_avg"] = dc.zeros_like(p)
        s["step"] += 1
        g = grad_of(p, group)
        alpha, eps = group["alpha"], group["eps"]
        v = s["square_avg"]
        v.mul_(alpha).add_(g * g * (1 - alpha))
        if group["centered"]:
            m = s["grad_avg"]
            m.mul_(alpha).add_(g * (1 - alpha))
            avg = (v - m * m).sqrt() + eps
        else:
            avg = v.sqrt() + eps
        if group["momentum"] > 0:
            buf = s["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(g / avg)
            p.sub_(buf * group["lr"])
        else:
            p.sub_(g / avg * group["lr"])
