"""autocast: a region in which matmuls run in a lower precision, as torch's autocast. Per thread
(torch's autocast state is thread-local).

Inside an enabled region for a device type, on tensors of that device:
- matmuls (``@``, matmul, mm, bmm, F.linear, the two matmuls of scaled_dot_product_attention) cast
  their floating inputs to the region's dtype (bfloat16 or float16) and return that dtype: torch's
  "lower precision" list. On the CPU, whose elementwise kernels are float32/float64 only, the
  inputs are rounded to the region's dtype and the matmul runs and returns float32: the precision
  of the inputs is the GPU's, the output keeps float32 (torch's CPU autocast returns bfloat16).
  Parameters (leaves that require grad) are cast once per region and reused (torch's cast cache),
  so a weight used by several matmuls is copied once; the gradient flows back to the float32
  parameter through the cast.
- softmax, log_softmax, layer_norm, the attention softmax, cross_entropy, nll_loss and mse_loss
  run in float32 on 16-bit inputs: torch's "float32" list.
- everything else runs in its inputs' dtype; a 16-bit activation meeting a float32 one promotes to
  float32 (PyTorch's type promotion).
Convolutions are not cast yet (they stay float32 under autocast)."""

import functools
import threading
import warnings

from .._missing import missing_names

_DEVICE_TYPES = ("cpu", "cuda")
_local = threading.local()


def _stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _default_dtype(device_type):
    from .. import bfloat16, float16

    return float16 if device_type == "cuda" else bfloat16


def is_autocast_available(device_type):
    """Whether autocast accepts `device_type` ('cpu' and 'cuda')."""
    return device_type in _DEVICE_TYPES


def is_autocast_enabled(device_type=None):
    """True inside an enabled autocast region for `device_type` (any device when None)."""
    for dev, enabled, _ in reversed(_stack()):
        if device_type is None or dev == device_type:
            return enabled
    return False


def get_autocast_dtype(device_type):
    """The dtype of the innermost autocast region for `device_type` (torch's default when none)."""
    for dev, _, dtype in reversed(_stack()):
        if dev == device_type:
            return dtype
    return _default_dtype(device_type)


def _active_types(stack):
    """{device_type: dtype} of the enabled innermost regions (what the op hooks read)."""
    out = {}
    for dev, enabled, dtype in stack:
        if enabled:
            out[dev] = dtype
        else:
            out.pop(dev, None)
    return out


def _cache():
    if not hasattr(_local, "cache"):
        _local.cache = {}
    return _local.cache


def _to(t, dtype):
    out = t.to(dtype)
    if t.device.type == "cpu":  # the CPU's elementwise kernels are float32/float64: keep the rounding
        out = out.to(t.dtype)  # to `dtype`'s precision, compute and return in the input's dtype
    return out


def _cast(t, dtype):
    if t.dtype == dtype or not t.dtype.is_floating_point or t.dtype.itemsize == 2:
        return t
    if t.requires_grad and t.grad_fn is None:  # a parameter: cast once per region
        c = _cache()
        hit = c.get(id(t))
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        out = _to(t, dtype)
        c[id(t)] = (t, t._version, out)
        return out
    return _to(t, dtype)


def lower(a, b):
    """The operands of a matmul-class op under autocast (both unchanged outside a region)."""
    active = getattr(_local, "active", None)
    if not active:
        return a, b
    dtype = active.get(a.device.type)
    if dtype is None:
        return a, b
    return _cast(a, dtype), _cast(b, dtype)


def fp32(x):
    """A 16-bit input of a float32-list op (softmax, norms, losses) as float32 under autocast."""
    active = getattr(_local, "active", None)
    if not active or x.device.type not in active or x.dtype.itemsize != 2 or not x.dtype.is_floating_point:
        return x
    return x.float()


class autocast:
    """torch.autocast / torch.amp.autocast: a context manager and decorator."""

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        if not isinstance(device_type, str):
            raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
        device_type = device_type.split(":")[0]
        if device_type not in _DEVICE_TYPES:
            raise RuntimeError(f"User specified an unsupported autocast device_type '{device_type}' "
                               f"(dutycycle has {', '.join(_DEVICE_TYPES)})")
        from .. import bfloat16, float16

        self.device = device_type
        self.fast_dtype = _default_dtype(device_type) if dtype is None else dtype
        self._enabled = bool(enabled)
        self._cache_enabled = True if cache_enabled is None else bool(cache_enabled)
        if self._enabled and self.fast_dtype not in (bfloat16, float16):
            warnings.warn(f"In {device_type} autocast, but the target dtype {self.fast_dtype} is not supported "
                          f"(use bfloat16 or float16). Disabling autocast.")
            self._enabled = False

    def __enter__(self):
        st = _stack()
        st.append((self.device, self._enabled, self.fast_dtype))
        _local.active = _active_types(st)
        return self

    def __exit__(self, exc_type, exc, tb):
        st = _stack()
        st.pop()
        _local.active = _active_types(st)
        if not st:
            _cache().clear()  # torch: the cast cache lives as long as the outermost region
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.device, self.fast_dtype, self._enabled, self._cache_enabled):
                return fn(*args, **kwargs)

        return wrapped


__getattr__ = missing_names(__name__, "torch.amp.autocast_mode")
