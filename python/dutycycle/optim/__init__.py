"""dutycycle.optim: Optimizer base, SGD, AdamW (fused multi-tensor steps) and lr schedulers."""

from . import lr_scheduler
from .adamw import AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["SGD", "AdamW", "Optimizer", "lr_scheduler"]
