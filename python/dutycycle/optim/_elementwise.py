"""Shared by the optimizers written as per-parameter tensor expressions (RMSprop, Adagrad,
Adadelta, NAdam): their step loop, argument checks and the gradient as torch's update formulas
first see it."""

import dutycycle as dc

from .optimizer import Optimizer


class ElementwiseOptimizer(Optimizer):
    """step() calls `self._update(p, group)` under no_grad for every parameter that has a grad."""

    def step(self, closure=None):
        loss = self._closure_loss(closure)
        with dc.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, group)
        return loss

    def _update(self, p, group):
        raise NotImplementedError


def check_nonnegative(name, value, label=None):
    if not 0.0 <= value:
        raise ValueError(f"Invalid {label or name} value: {value}")


def grad_of(p, group):
    """-grad when maximizing, plus weight_decay * param (the L2 form torch's optimizers use)."""
    g = p.grad
    if group.get("maximize", False):
        g = -g
    wd = group.get("weight_decay", 0.0)
    if wd != 0:
        g = g + p * wd
    return g
