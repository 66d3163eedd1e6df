"""Callbacks with Lightning's names and meaning: the Callback base (every hook a no-op),
ModelCheckpoint, EarlyStopping, LearningRateMonitor and the progress bars (our own renderers)."""

from ._utils import MisconfigurationException
from .callback import Callback, Checkpoint, LambdaCallback
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .model_checkpoint import ModelCheckpoint
from .progress import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = [
    "Callback",
    "Checkpoint",
    "LambdaCallback",
    "ModelCheckpoint",
    "EarlyStopping",
    "LearningRateMonitor",
    "ProgressBar",
    "TQDMProgressBar",
    "RichProgressBar",
    "MisconfigurationException",
]
