"""torch.utils.data.distributed: DistributedSampler (each rank's share of a dataset)."""

from dutycycle.data.sampler import DistributedSampler

from ..._missing import missing_names

__all__ = ["DistributedSampler"]

__getattr__ = missing_names(__name__, "torch.utils.data.distributed")
