"""dutycycle.nn.parallel: DistributedDataParallel (torch.nn.parallel's name) for hand-written loops."""

from .distributed import DistributedDataParallel

__all__ = ["DistributedDataParallel"]
