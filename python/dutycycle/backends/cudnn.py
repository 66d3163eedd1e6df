"""torch.backends.cudnn: ``benchmark``, ``deterministic``, ``enabled``, ``allow_tf32`` (plain module
attributes scripts assign) and ``is_available()`` / ``version()``. The CUDA backend's cuDNN ops read
them; on CPU there is no cuDNN and they change nothing."""

from .. import cuda as _cuda
from .._missing import missing_names

enabled = True
benchmark = False
deterministic = False
allow_tf32 = True  # torch's default for cuDNN convolutions


def is_available():
    """True when a CUDA device is usable (the CUDA build links cuDNN)."""
    return _cuda.is_available()


def version():
    """None: dutycycle does not report the cuDNN library version (torch returns None without cuDNN)."""
    return None


__getattr__ = missing_names(__name__, "torch.backends.cudnn")
