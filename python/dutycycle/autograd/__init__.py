"""Autograd utilities: grad-mode switches and gradcheck. The graph and the backward engine are C
(csrc/autograd); this module only holds what is naturally Python."""

from __future__ import annotations

import functools

import numpy as np

from .. import _C
from .._tensor import Tensor


class _GradMode:
    """Base for no_grad / enable_grad / set_grad_enabled: a context manager and a decorator.
    Grad mode is per thread, as in PyTorch."""

    _on = True

    def __enter__(self):
        self._prev = _C.set_grad_enabled(self._on)
        return self

    def __exit__(self, *exc):
        _C.set_grad_enabled(self._prev)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """Ops inside record no autograd graph (and in-place updates of parameters are allowed)."""

    _on = False


class enable_grad(_GradMode):
    _on = True


class set_grad_enabled(_GradMode):
    def __init__(self, mode):
        self._on = bool(mode)
        self._prev = _C.set_grad_enabled(self._on)  # takes effect as a plain call, too

    def __enter__(self):
        return self

    def __call__(self, fn):
        _C.set_grad_enabled(self._prev)
        mode = self._on

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        return wrapper


inference_mode = no_grad


def is_grad_enabled():
    return _C.is_grad_enabled()


def backward(tensors, grad_tensors=None, retain_graph=None):
    if isinstance(tensors, Tensor):
        tensors = [tensors]
        grad_tensors = [grad_tensors]
    grad_tensors = grad_tensors or [None] * len(tensors)
    for t, g in zip(tensors, grad_tensors):
        t.backward(g, retain_graph=True if retain_graph is None and len(tensors) > 1 else retain_graph)


class GradcheckError(AssertionError):
    pass


def _flat_outputs(out):
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [o for o in out if isinstance(o, Tensor)]
    raise TypeError(f"gradcheck: fn must return a tensor or a tuple of tensors, got {type(out).__name__}")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, n_projections=2, seed=0):
    """Compare autograd's gradient of ``fn`` with central finite differences, in float64.

    The check projects the outputs on random directions v (so one backward per direction gives
    v^T J) and compares with (f(x + eps e_i) - f(x - eps e_i)) . v / (2 eps) for every input element i.
    Inputs that require grad must be float64 CPU tensors; they may be non-contiguous views (each
    element is perturbed in place through a strided NumPy view of the tensor's memory)."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    diff = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not diff:
        raise ValueError("gradcheck: no input requires grad")
    for x in diff:
        if x.dtype.name != "float64":
            raise TypeError(f"gradcheck: inputs that require grad must be float64, got {x.dtype.name} "
                            f"(shape {x.shape})")
        if x.device.type != "cpu":
            raise ValueError("gradcheck runs on CPU tensors")
    rng = np.random.default_rng(seed)
    outs = [o.detach() for o in _flat_outputs(fn(*inputs))]
    for _ in range(n_projections):
        vs = [rng.standard_normal(o.shape) for o in outs]

        def proj(outputs, vs=vs):
            return float(sum(np.sum(o.detach().double().numpy() * v) for o, v in zip(outputs, vs)))

        for x in diff:
            x.grad = None
        res = _flat_outputs(fn(*inputs))
        total = None
        from .._functions import tensor

        for o, v in zip(res, vs):
            if not o.requires_grad:
                continue
            term = (o * tensor(v, dtype=o.dtype)).sum()
            total = term if total is None else total + term
        if total is not None:
            total.backward()
        for k, x in enumerate(diff):
            if x.grad is not None and x.grad.shape != x.shape:
                raise GradcheckError(f"gradcheck: input {k} has shape {x.shape} but its .grad has shape "
                                     f"{x.grad.shape}")
            analytic = np.zeros(x.shape) if x.grad is None else x.grad.numpy().copy()
            buf = x.detach().numpy()  # shares memory with x, with x's strides
            if any(st == 0 and n > 1 for st, n in zip(buf.strides, buf.shape)):
                raise ValueError("gradcheck: an input has a stride-0 (expanded) dim, so its elements share "
                                 "memory; pass .contiguous()")
            numeric = np.zeros(x.shape)
            for i in np.ndindex(*buf.shape):
                orig = buf[i]
                buf[i] = orig + eps
                fp = proj(_flat_outputs(fn(*inputs)))
                buf[i] = orig - eps
                fm = proj(_flat_outputs(fn(*inputs)))
                buf[i] = orig
                numeric[i] = (fp - fm) / (2 * eps)
            if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
                err = np.max(np.abs(analytic - numeric))
                msg = (f"gradcheck failed for input {k} (shape {x.shape}): max abs difference {err:.3e}\n"
                       f"analytic:\n{analytic}\nnumeric:\n{numeric}")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    for x in diff:
        x.grad = None
    return True
