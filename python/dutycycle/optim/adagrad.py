"""Adagrad with torch.optim.Adagrad's update (state made at construction, as torch does):

    clr = lr / (1 + (step - 1) * lr_decay);  sum += g^2;  p -= clr * g / (sqrt(sum) + eps)
"""

import dutycycle as dc

from ._elementwise import ElementwiseOptimizer, check_nonnegative, grad_of


class Adagrad(ElementwiseOptimizer):
    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None):
        check_nonnegative("lr", lr, "learning rate")
        check_nonnegative("lr_decay", lr_decay)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("initial_accumulator_value", initial_accumulator_value)
        check_nonnegative("eps", eps, "epsilon")
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value, "maximize": maximize}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = 0
                self.state[p]["sum"] = dc.full(tuple(p.shape), float(group["initial_accumulator_value"]),
                                               dtype=p.dtype, device=p.device)

    def _update(self, p, group):
        s = self.state[p]
        if "sum" not in s:  # a parameter group added after construction
            s["step"] = 0
            s["sum"] = dc.full(tuple(p.shape), float(group["initial_accumulator_value"]), dtype=p.dtype,
                               device=p.device)
        s["step"] += 1
        g = grad_of(p, group)
        clr = group["lr"] / (1 + (s["step"] - 1) * group["lr_decay"])
        s["sum"].add_(g * g)
        p.sub_(g / (s["sum"].sqrt() + group["eps"]) * clr)
