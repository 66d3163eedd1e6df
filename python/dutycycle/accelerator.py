"""torch.accelerator: the current accelerator, CUDA when a GPU is usable (CPU is not an
accelerator, so current_accelerator() is None without one, as in torch)."""

from . import cuda
from ._missing import missing_names


def is_available():
    """True when a GPU is usable."""
    return cuda.is_available()


def current_accelerator(check_available=False):
    """device('cuda') when CUDA is compiled in (and, with check_available, a GPU is usable); else None."""
    from ._dtype import device

    if cuda.is_available() or (cuda.is_built() and not check_available):
        return device("cuda")
    return None


def device_count():
    """Number of usable GPUs (0 without one)."""
    return cuda.device_count()


def current_device_index():
    """The index of the current GPU; raises without one."""
    if not cuda.is_available():
        raise RuntimeError("current_device_index(): no accelerator is available")
    return cuda.current_device()


def synchronize(device=None):
    """Wait for all work queued on the accelerator (a sync point)."""
    cuda.synchronize(device)


__getattr__ = missing_names(__name__, "torch.accelerator")
