"""Shared by the optimizers written as per-parameter tensor expressions (RMSprop, Adagrad,
Adadelta, NAdam): argument checks and the gradient as torch's update formulas first see it."""


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
