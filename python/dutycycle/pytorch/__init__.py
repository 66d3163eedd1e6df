"""dutycycle.pytorch: the `lightning.pytorch` (and `pytorch_lightning`) namespace over dutycycle's
trainer, so a Lightning script ports by changing its imports only:

    import lightning.pytorch as pl                  ->  import dutycycle.pytorch as pl
    from lightning.pytorch.callbacks import X       ->  from dutycycle.pytorch.callbacks import X
    from lightning.pytorch.utilities import Y       ->  from dutycycle.pytorch.utilities import Y

Nothing is implemented twice: `callbacks`, `loggers`, `trainer` and `strategies` ARE dutycycle's
packages (registered here under the mirror's names, submodules included, so
`dutycycle.pytorch.callbacks.model_checkpoint` is `dutycycle.callbacks.model_checkpoint`); `core`,
`utilities`, `profilers` and `demos` are small packages that re-export what lives in dutycycle.trainer
and dutycycle.distributed (plus grad_norm and the demo models, which are new here). A Lightning name
we lack raises NotInDutycycleError naming the lightning.pytorch spelling.
"""

import sys

from .. import callbacks as _callbacks
from .. import loggers as _loggers
from .. import strategies as _strategies
from .. import trainer as _trainer
from .._missing import missing_names


def _alias(name, module, parent=__name__):
    """Register `module` (and its imported submodules) as <parent>.<name>[.<sub>]."""
    full = f"{parent}.{name}"
    prefix = module.__name__ + "."
    sys.modules[full] = module
    for sub, mod in list(sys.modules.items()):
        if sub.startswith(prefix) and mod is not None:
            sys.modules[full + "." + sub[len(prefix):]] = mod
    return module


callbacks = _alias("callbacks", _callbacks)
loggers = _alias("loggers", _loggers)
strategies = _alias("strategies", _strategies)
trainer = _alias("trainer", _trainer)

from ..callbacks import Callback  # noqa: E402
from ..trainer import LightningDataModule, LightningModule, Trainer, seed_everything  # noqa: E402
from . import core, demos, profilers, utilities  # noqa: E402, F401  (subpackages, as lightning.pytorch's)
from .demos import LIGHTNING_LOGO, cli_lightning_logo  # noqa: E402, F401  (lightning.pytorch has them here)

__all__ = ["Trainer", "LightningDataModule", "LightningModule", "Callback", "seed_everything"]

__getattr__ = missing_names(__name__, "lightning.pytorch")
