"""torch.utils.data as a package: everything dutycycle.data has (the very same classes and
functions, so isinstance checks and subclassing agree), with torch's submodules ``.dataloader``,
``.dataset``, ``.sampler`` and ``.distributed`` for scripts that import from them."""

from dutycycle.data import *  # noqa: F403
from dutycycle.data import __all__  # noqa: F401

from ..._missing import missing_names
from . import dataloader, dataset, distributed, sampler  # noqa: F401

__getattr__ = missing_names(__name__, "torch.utils.data")
