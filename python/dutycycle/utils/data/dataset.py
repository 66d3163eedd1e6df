"""torch.utils.data.dataset: the dataset classes and random_split."""

from dutycycle.data.dataset import (
    ChainDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    Subset,
    TensorDataset,
    random_split,
)

from ..._missing import missing_names

__all__ = ["ChainDataset", "ConcatDataset", "Dataset", "IterableDataset", "Subset", "TensorDataset", "random_split"]

__getattr__ = missing_names(__name__, "torch.utils.data.dataset")
