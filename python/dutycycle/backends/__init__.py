"""torch.backends look-alike: the switches scripts set at the top (``torch.backends.cudnn.benchmark
= True``, ``torch.backends.cuda.matmul.allow_tf32 = True``, ...).

Every switch is accepted, type-checked and stored here, where the engine's backends read it. On
the CPU backend none of them changes a result (CPU matmuls are always full float32, there is no
cuDNN); the CUDA backend reads them when it picks its cuBLAS/cuDNN math modes. ``mps`` is never
available. ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.set_float32_matmul_precision`` are
one setting, as in torch ("highest" <-> allow_tf32=False)."""

from .._missing import missing_names
from . import cpu, cuda, cudnn, mps  # noqa: F401

__all__ = ["cpu", "cuda", "cudnn", "mps"]

__getattr__ = missing_names(__name__, "torch.backends")
