"""Small helpers the callbacks share: metric values as Python numbers, trainer-state checks, and
Lightning's configuration error."""

import logging
import math
import warnings

log = logging.getLogger("dutycycle.callbacks")


class MisconfigurationException(ValueError):
    """A callback was configured in a way that cannot work (Lightning's exception of that name)."""


def to_float(v):
    """A metric (dc.Tensor with one element, numpy scalar, number) as a Python float.
    Note: on a device tensor this is a sync point."""
    if isinstance(v, (int, float)):
        return float(v)
    if hasattr(v, "item"):
        return float(v.item())
    return float(v)


def to_scalar_tensor(v):
    """A metric as a detached 0-d dc.Tensor (what Lightning keeps as best scores); floats become float64."""
    import dutycycle as dc

    if isinstance(v, dc.Tensor):
        return v.detach().reshape(()).clone()
    return dc.tensor(to_float(v), dtype=dc.float64)


def is_finite(x):
    return math.isfinite(x)


def fn_name(trainer):
    """trainer.state.fn as a plain string ("fit", "validate", ...); accepts enums with .value."""
    state = getattr(trainer, "state", None)
    fn = getattr(state, "fn", None)
    fn = getattr(fn, "value", fn)
    return None if fn is None else str(fn)


def rank_zero_warn(msg, category=UserWarning):
    warnings.warn(msg, category, stacklevel=3)


def rank_zero_info(msg):
    log.info(msg)
