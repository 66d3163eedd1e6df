"""dutycycle.cuda: is CUDA compiled in, and can a GPU be used now?"""

from __future__ import annotations

from . import _C


def is_built() -> bool:
    """True when this build compiled and linked the CUDA kernels (cuda/)."""
    return bool(_C.cuda_info()[0])


def device_count() -> int:
    """Number of GPUs usable now (0 without a driver or device, never an error)."""
    built, n = _C.cuda_info()
    return int(n) if built else 0


def is_available() -> bool:
    return device_count() > 0


def synchronize(device=None):
    """Wait for all work queued on the device (a sync point)."""
    if not is_available():
        raise RuntimeError("dutycycle.cuda.synchronize(): no CUDA device is available")
    from ._dtype import as_device

    d = as_device("cuda" if device is None else device)
    _C.synchronize(1, d.index or 0)


def current_device() -> int:
    return 0
