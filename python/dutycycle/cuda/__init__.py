"""dutycycle.cuda: is CUDA compiled in, can a GPU be used now, and torch.cuda's seeding functions.

dutycycle has one random generator for every device (a counter-based stream keyed by (seed,
offset)), so torch.cuda.manual_seed / manual_seed_all seed that generator, exactly as
dutycycle.manual_seed does: a script that seeds only through torch.cuda stays reproducible.
``dutycycle.cuda.amp`` has torch.cuda.amp's autocast and GradScaler."""

from __future__ import annotations

from .. import _C
from .._missing import missing_names


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
    from .._dtype import as_device

    d = as_device("cuda" if device is None else device)
    _C.synchronize(1, d.index or 0)


_current = 0


def current_device() -> int:
    """The index set_device chose (0 by default)."""
    return _current


def set_device(device):
    """torch.cuda.set_device: the GPU that "cuda" means from now on, in this process. Without a
    usable GPU it raises DeviceError (a DDP script run on CPU ranks calls it unconditionally: that
    is the script's CUDA path, not something to fake)."""
    global _current
    from .. import _C as C
    from .._dtype import as_device

    d = as_device(device) if not isinstance(device, int) else as_device(f"cuda:{device}")
    if d.type != "cuda":
        raise ValueError(f"cuda.set_device: expected a cuda device, but got: {d}")
    n = device_count()
    if n == 0:
        raise C.DeviceError(f"cuda.set_device({d}): no CUDA device is available here "
                            f"(built with CUDA: {is_built()}); run on the CPU with device='cpu'")
    if (d.index or 0) >= n:
        raise C.DeviceError(f"cuda.set_device({d}): invalid device ordinal, {n} CUDA device(s) visible")
    _current = d.index or 0


def is_bf16_supported(including_emulation=True):
    """True when a CUDA device is usable (the CUDA backend runs bfloat16 on every supported GPU)."""
    return is_available()


# --- seeding: the one global generator (see the module docstring) --------------------------------

def manual_seed(seed):
    """Seed the global generator (torch.cuda.manual_seed)."""
    from .._functions import manual_seed as _manual_seed

    _manual_seed(int(seed))


def manual_seed_all(seed):
    """Seed the global generator (torch.cuda.manual_seed_all: all devices share it here)."""
    manual_seed(seed)


def seed():
    """Seed the global generator with a fresh random number (torch.cuda.seed)."""
    from .._torch_names import _fresh_seed

    manual_seed(_fresh_seed())


seed_all = seed


def initial_seed():
    from .._functions import initial_seed as _initial_seed

    return _initial_seed()


from . import amp  # noqa: E402, F401  (torch.cuda.amp; imported last: it builds on dutycycle.amp)

__getattr__ = missing_names(__name__, "torch.cuda")
