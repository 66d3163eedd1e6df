"""lightning.pytorch.utilities: the rank-zero helpers (dutycycle.distributed.rank_zero's),
grad_norm, the model summary (dutycycle.trainer.summary's), AttributeDict, move_data_to_device and
MisconfigurationException. Also reachable as dutycycle.utilities (for `import dutycycle as pl`)."""

import sys

from ..._missing import missing_names
from ...distributed import rank_zero as _rank_zero
from ...distributed.rank_zero import (
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)
from ...trainer import summary as _summary
from ...trainer.module import AttributeDict, move_data_to_device
from . import exceptions, grads  # noqa: F401  (submodules, as Lightning's)
from .exceptions import MisconfigurationException
from .grads import grad_norm

# lightning.pytorch.utilities.rank_zero / .model_summary: the modules that hold them here
sys.modules[f"{__name__}.rank_zero"] = _rank_zero
sys.modules[f"{__name__}.model_summary"] = _summary
rank_zero = _rank_zero
model_summary = _summary

__all__ = [
    "AttributeDict",
    "MisconfigurationException",
    "grad_norm",
    "move_data_to_device",
    "rank_zero_debug",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
]

__getattr__ = missing_names(__name__, "lightning.pytorch.utilities")
