"""dutycycle.cuda: is CUDA compiled in, can a GPU be used now, and torch.cuda's seeding functions.

Streams, events and the caching allocator's statistics are here in torch.cuda's shape (``Stream``,
``Event``, ``stream()``, ``current_stream()``, ``memory_stats()``, ``max_memory_allocated()``,
``empty_cache()``, ...), with ``sync_counts()``: how many times the host waited for a device.

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
    """Wait for all work queued on the device (a sync point, counted in sync_counts())."""
    if not is_available():
        raise RuntimeError("dutycycle.cuda.synchronize(): no CUDA device is available")
    _C.synchronize(1, _index(device))


def _index(device):
    """Device index of a torch-style device argument (None: the current device)."""
    if device is None:
        return _current
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    from .._dtype import as_device

    d = as_device(device)
    if d.type != "cuda":
        raise ValueError(f"expected a cuda device, but got: {d}")
    return _current if d.index is None else d.index


_copy_streams = {}


def _copy_to_device_overlapped(t, device):
    """A CPU tensor on `device` (cuda) without a host wait: staged in pinned memory (a host memcpy
    unless it is pinned already), copied on the device's copy stream, and the current stream waits
    for the copy on the device. The copy overlaps the kernels still queued from the previous step:
    the Trainer moves each batch this way (Lightning's transfer_batch_to_device)."""
    i = _index(device)
    if t.requires_grad:  # autograd records the copy: the plain path
        return t.to(device)
    if not t.is_contiguous():
        t = t.contiguous()
    s = _copy_streams.get(i)
    if s is None:
        s = _copy_streams[i] = Stream(i, priority=-1)  # copies first when both are ready
    pinned = t if t.is_pinned() else t.pin_memory()
    return _C.cuda_to_device_async(pinned, i, s._handle)


_snapshot_pending = set()


def _snapshot_to_host(t):
    """A CUDA tensor's bytes into pinned host memory, queued on the device's copy stream (no host
    wait): checkpoint snapshots call this per tensor and _snapshot_wait() once for all of them."""
    i = t.device.index or 0
    s = _copy_streams.get(i)
    if s is None:
        s = _copy_streams[i] = Stream(i, priority=-1)
    _snapshot_pending.add(i)
    return _C.cuda_to_host_async(t.detach().contiguous(), s._handle)


def _snapshot_wait():
    """Wait for the snapshots queued by _snapshot_to_host (one sync per device, counted)."""
    for i in sorted(_snapshot_pending):
        _copy_streams[i].synchronize()
    _snapshot_pending.clear()


def sync_counts():
    """Host-device synchronisations since the process started: {"synchronize": device, stream and
    event synchronize calls; "d2h_copy": blocking device -> host copies (item(), .cpu(), .tolist() of a
    GPU tensor, a norm read on the host); "item": item() calls on any device, the CPU included (each
    would be a sync on a GPU); "host_syncs": synchronize + d2h_copy}. The Trainer's duty-cycle report
    shows the per-step count."""
    s, d, i = _C.sync_counts()
    return {"synchronize": s, "d2h_copy": d, "item": i, "host_syncs": s + d}


def plan_cache_stats():
    """The plan caches of the cuBLASLt matmuls and the cuDNN convolutions: {"matmul": {...}, "conv":
    {...}}, each with slots, used, hits, misses (plans built) and evictions. Once a training loop is
    warm its steps make no miss; misses that keep growing mean shapes that keep changing (or more
    distinct problems than slots). Empty dicts on a build without CUDA."""
    if not is_built():
        return {"matmul": {}, "conv": {}}
    return _C.cuda_plan_cache_stats()


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
from ._memory import (  # noqa: E402, F401
    OutOfMemoryError,
    empty_cache,
    max_memory_allocated,
    max_memory_reserved,
    mem_get_info,
    memory_allocated,
    memory_reserved,
    memory_stats,
    memory_summary,
    reset_max_memory_allocated,
    reset_peak_memory_stats,
)
from ._streams import Event, Stream, StreamContext, current_stream, default_stream, set_stream, stream  # noqa: E402, F401

__getattr__ = missing_names(__name__, "torch.cuda")
