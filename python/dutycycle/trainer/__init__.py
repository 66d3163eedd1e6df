"""dutycycle.trainer: Lightning's Trainer, LightningModule and LightningDataModule.

trainer.py holds the whole fit loop (read its docstring first); config.py the Trainer's arguments
(TrainerConfig); resume.py the loop position a resumed fit starts from; checkpoint_io.py what a
checkpoint holds and its safetensors file; dataloaders.py / evaluation.py the dataloaders and the
no-grad loops; module.py the user-facing classes; results.py what self.log() stores; duty.py
the duty-cycle timer. Strategies (backward, optimizer step, checkpoint writes) are in
dutycycle.strategies.
"""

from .checkpoint_io import load_checkpoint, save_checkpoint
from .config import TrainerConfig
from .duty import DutyCycle
from .module import AttributeDict, LightningDataModule, LightningModule, LightningOptimizer
from .resume import LoopPosition
from .trainer import STRATEGIES, LRSchedulerConfig, Trainer, TrainerState, seed_everything

__all__ = [
    "AttributeDict",
    "DutyCycle",
    "LRSchedulerConfig",
    "LightningDataModule",
    "LightningModule",
    "LightningOptimizer",
    "LoopPosition",
    "STRATEGIES",
    "Trainer",
    "TrainerConfig",
    "TrainerState",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]

from .._missing import missing_names  # noqa: E402

__getattr__ = missing_names(__name__, "lightning.pytorch.trainer")
