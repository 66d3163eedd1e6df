"""dutycycle.optim: Optimizer base, SGD, Adam, AdamW (fused multi-tensor steps) and lr schedulers."""

from . import lr_scheduler
from .adam import Adam
from .adamw import AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
