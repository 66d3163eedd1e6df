"""lightning.pytorch.demos: what Lightning's examples and tests import from it — the logo printed by
the example scripts (cli_lightning_logo, also at dutycycle.pytorch.cli_lightning_logo as in
Lightning) and the small "boring" models and datasets (random data, no downloads).

Not here yet: MNIST / MNISTDataModule (they download the data set), the LSTM demo (nn.LSTM) and the
Transformer/WikiText2 demo (nn.Transformer, a download)."""

from ..._missing import missing_names
from .boring_classes import (
    BoringDataModule,
    BoringModel,
    DemoModel,
    ManualOptimBoringModel,
    RandomDataset,
    RandomDictDataset,
    RandomIterableDataset,
    RandomIterableDatasetWithLen,
)

# Our own drawing of a lightning bolt in a circle (not Lightning's logo art).
LIGHTNING_LOGO = r"""
                 ..::::::::::..
             .::''            ''::.
          .:'           /\        ':.
        .:'            /  \         ':.
       :'             /   /           ':
      :              /   /__            :
      :             /___   /            :
      :                /  /             :
       :.             /  /             .:
        ':.          /  /            .:'
          ':.        \ /           .:'
             '::..    V       ..::'
                 ''::::::::::''
"""


def cli_lightning_logo():
    """Print the logo (in magenta, as the Lightning example scripts do at start)."""
    print()
    print("\033[0;35m" + LIGHTNING_LOGO + "\033[0m")
    print()


__all__ = [
    "BoringDataModule",
    "BoringModel",
    "DemoModel",
    "LIGHTNING_LOGO",
    "ManualOptimBoringModel",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
    "cli_lightning_logo",
]

__getattr__ = missing_names(
    __name__,
    "lightning.pytorch.demos",
    {
        "MNIST": "it downloads MNIST; use a Dataset over your own arrays",
        "MNISTDataModule": "it downloads MNIST; use a LightningDataModule over your own arrays",
        "LightningLSTM": "nn.LSTM is not in dutycycle yet",
        "SimpleLSTM": "nn.LSTM is not in dutycycle yet",
        "SequenceSampler": "it belongs to the LSTM demo (nn.LSTM is not in dutycycle yet)",
        "Transformer": "the demo needs nn.Transformer (decoder layers), not in dutycycle yet",
        "LightningTransformer": "the demo needs nn.Transformer (decoder layers), not in dutycycle yet",
        "WikiText2": "it downloads WikiText-2",
    },
)
