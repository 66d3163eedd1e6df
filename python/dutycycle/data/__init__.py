"""dutycycle.data (also reachable as dutycycle.utils.data): datasets, samplers, collation and the
DataLoader, with torch.utils.data's names and meaning. num_workers > 0 means C threads
(csrc/loader/) that assemble batches ahead of the training step with the GIL released; see
dataloader.py for exactly what runs where."""

from .collate import default_collate, default_convert
from .dataloader import DataLoader, WorkerInfo, get_worker_info
from .dataset import ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, random_split
from .sampler import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from .shard_writer import ShardWriter
from .shards import IMAGENET_MEAN, IMAGENET_STD, ShardedDataset, expand_urls, jpeg

__all__ = [
    "BatchSampler",
    "ChainDataset",
    "ConcatDataset",
    "DataLoader",
    "DistributedSampler",
    "Dataset",
    "IterableDataset",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ShardWriter",
    "ShardedDataset",
    "Subset",
    "SubsetRandomSampler",
    "TensorDataset",
    "WeightedRandomSampler",
    "WorkerInfo",
    "default_collate",
    "default_convert",
    "expand_urls",
    "jpeg",
    "get_worker_info",
    "random_split",
]
