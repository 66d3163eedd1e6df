"""autocast: a region in which torch would run some ops in lower precision. Recorded per thread
(torch's autocast state is thread-local); see the package docstring for what it changes (on the
CPU engine: nothing, every op stays float32)."""

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
        _stack().append((self.device, self._enabled, self.fast_dtype))
        return self

    def __exit__(self, exc_type, exc, tb):
        _stack().pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.device, self.fast_dtype, self._enabled, self._cache_enabled):
                return fn(*args, **kwargs)

        return wrapped


__getattr__ = missing_names(__name__, "torch.amp.autocast_mode")
