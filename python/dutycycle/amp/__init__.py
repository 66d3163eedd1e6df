"""torch.amp look-alike: ``autocast`` and ``GradScaler``.

autocast(device_type, dtype=None, enabled=True, cache_enabled=None) is accepted as a context
manager or a decorator, nests, and is reported by ``is_autocast_enabled()`` /
``get_autocast_dtype()``. Inside it matmuls run in the region's dtype and softmax, norms and
losses in float32, as torch's autocast (see autocast_mode for the lists); on the CPU the 16-bit
matmul widens to float32 for the GEMM and rounds the result once. Convolutions are not cast yet.

GradScaler is torch's dynamic loss scaler. Disabled (enabled=False, or device "cuda" without a usable
GPU, which warns and disables as torch does) it is an exact no-op: scale() returns its argument,
step() calls optimizer.step(), update() and unscale_() do nothing, get_scale() is 1.0 and
state_dict() is {}. Enabled (device "cpu", or a GPU) it really scales, unscales, skips steps
whose gradients hold inf/NaN and grows/backs off the scale, with torch's defaults and errors.
"""

from .._missing import missing_names
from .autocast_mode import autocast, get_autocast_dtype, is_autocast_available, is_autocast_enabled
from .grad_scaler import GradScaler

__all__ = ["GradScaler", "autocast", "get_autocast_dtype", "is_autocast_available", "is_autocast_enabled"]

__getattr__ = missing_names(__name__, "torch.amp")
