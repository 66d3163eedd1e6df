"""Alias of dutycycle.data, so `from torch.utils.data import X` ports as `from dutycycle.utils.data import X`."""

from dutycycle.data import *  # noqa: F403
from dutycycle.data import __all__  # noqa: F401
