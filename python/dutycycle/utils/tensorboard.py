"""torch.utils.tensorboard: ``from dutycycle.utils.tensorboard import SummaryWriter`` (the writer of
dutycycle.loggers.tensorboard: real event files, PNG images, no tensorflow/tensorboard/Pillow)."""

from .._missing import missing_names
from ..loggers.tensorboard import SummaryWriter

__all__ = ["SummaryWriter"]

__getattr__ = missing_names(__name__, "torch.utils.tensorboard")
