"""dutycycle.optim: Optimizer base, SGD, Adam, AdamW (fused multi-tensor steps), RMSprop, Adagrad,
Adadelta, NAdam (per-parameter tensor expressions) and lr schedulers."""

from .._missing import missing_names
from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam
from .adamw import AdamW
from .nadam import NAdam
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "NAdam", "Optimizer", "RMSprop", "lr_scheduler"]

__getattr__ = missing_names(__name__, "torch.optim")
