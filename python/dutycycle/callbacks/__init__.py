"""Callbacks with Lightning's names and meaning: the Callback base (every hook a no-op),
ModelCheckpoint, EarlyStopping, LearningRateMonitor, ModelSummary and the progress bars (our own
renderers). Missing Lightning callbacks raise NotInDutycycleError."""

from ._utils import MisconfigurationException
from .callback import Callback, Checkpoint, LambdaCallback
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .model_checkpoint import ModelCheckpoint
from .model_summary import ModelSummary
from .progress import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = [
    "Callback",
    "Checkpoint",
    "LambdaCallback",
    "ModelCheckpoint",
    "ModelSummary",
    "EarlyStopping",
    "LearningRateMonitor",
    "ProgressBar",
    "TQDMProgressBar",
    "RichProgressBar",
    "MisconfigurationException",
]

from .._missing import missing_names  # noqa: E402

__getattr__ = missing_names(__name__, "lightning.pytorch.callbacks")
