"""torch.utils look-alike: `import dutycycle.utils.data` / `from dutycycle.utils.data import DataLoader`
port `torch.utils.data ...` unchanged (the package is an alias of dutycycle.data: the same classes).
`dutycycle.utils.tensorboard` is imported on demand, as in torch."""

from .._missing import missing_names
from . import data  # noqa: F401  (torch.utils.data is reachable as an attribute)

__getattr__ = missing_names(__name__, "torch.utils")
