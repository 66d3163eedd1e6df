"""torch.utils.data.sampler: the samplers (DistributedSampler lives in .distributed, as in torch)."""

from dutycycle.data.sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ..._missing import missing_names

__all__ = [
    "BatchSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "SubsetRandomSampler",
    "WeightedRandomSampler",
]

__getattr__ = missing_names(__name__, "torch.utils.data.sampler")
