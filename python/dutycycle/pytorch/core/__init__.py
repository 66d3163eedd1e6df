"""lightning.pytorch.core: LightningModule, LightningDataModule (dutycycle.trainer.module's)."""

import sys

from ..._missing import missing_names
from ...trainer import module as _module
from ...trainer.module import AttributeDict, LightningDataModule, LightningModule, LightningOptimizer

# lightning.pytorch.core.module / .datamodule / .optimizer: all three classes live in one file here
for _sub in ("module", "datamodule", "optimizer"):
    sys.modules[f"{__name__}.{_sub}"] = _module
module = datamodule = optimizer = _module

__all__ = ["LightningDataModule", "LightningModule", "LightningOptimizer", "AttributeDict"]

__getattr__ = missing_names(__name__, "lightning.pytorch.core")
