"""Top-level torch functions scripts call around the model rather than on tensors: thread count,
matmul precision, torch.compile, torch.seed, and the per-process fresh seed.

- ``set_num_threads(n)`` / ``get_num_threads()``: the OpenMP thread count of the CPU kernels and
  OpenBLAS GEMMs started from the calling thread (README "CPU threading"); other threads (loader
  threads) keep theirs.
- ``compile(model, ...)`` returns `model` itself (or, used as ``@compile`` / ``compile(fn)``, the
  function): dutycycle has no graph compiler; its kernels are already fused C ops. Every argument
  torch.compile takes is accepted and ignored, so ``model = torch.compile(model)`` ports unchanged
  (state_dict keys keep no ``_orig_mod.`` prefix).
- ``set_float32_matmul_precision`` / ``get_float32_matmul_precision``: stored for the CUDA backend
  (dutycycle.backends); CPU matmuls are always full float32.
- The process starts with a fresh seed (os.urandom), as torch's default generator: two unseeded
  runs differ and ``initial_seed()`` tells which seed a run used; ``manual_seed`` makes runs
  reproducible."""

import os

from . import _C
from .backends._flags import get_float32_matmul_precision, set_float32_matmul_precision

__all__ = ["compile", "get_float32_matmul_precision", "get_num_threads", "seed", "set_float32_matmul_precision",
           "set_num_threads"]


def _fresh_seed():
    """63 random bits from the OS (torch draws its default seed from /dev/urandom too)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def seed_fresh_at_import():
    _C.manual_seed(_fresh_seed())


def seed():
    """Seed the global generator with a fresh random seed and return it (torch.seed)."""
    s = _fresh_seed()
    _C.manual_seed(s)
    return s


def set_num_threads(n):
    """Use `n` threads for the CPU kernels and GEMMs started from this thread (torch.set_num_threads)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads():
    """How many threads a CPU kernel started from this thread may use."""
    return _C.get_num_threads()


def compile(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None, options=None,
            disable=False):
    """torch.compile: returns `model` unchanged (see the module docstring). Without a model it
    returns a decorator that returns the function unchanged (``@torch.compile(mode=...)``)."""
    if model is None:
        return lambda fn: fn
    if not callable(model):
        raise RuntimeError(f"compile: expected a Module or a callable, got {type(model).__name__}")
    return model
