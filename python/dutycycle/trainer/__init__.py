"""dutycycle.trainer: Lightning's Trainer, LightningModule and LightningDataModule.

trainer.py holds the whole fit loop (read its docstring first); module.py the user-facing
classes; results.py what self.log() stores; duty.py the duty-cycle timer; checkpoint_io.py the
safetensors checkpoint files.
"""

from .checkpoint_io import load_checkpoint, save_checkpoint
from .duty import DutyCycle
from .module import AttributeDict, LightningDataModule, LightningModule, LightningOptimizer
from .trainer import STRATEGIES, LRSchedulerConfig, Trainer, TrainerState, seed_everything

__all__ = [
    "AttributeDict",
    "DutyCycle",
    "LRSchedulerConfig",
    "LightningDataModule",
    "LightningModule",
    "LightningOptimizer",
    "STRATEGIES",
    "Trainer",
    "TrainerState",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]
