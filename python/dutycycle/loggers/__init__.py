"""Experiment loggers with Lightning's API: ``CSVLogger`` (metrics.csv + hparams.yaml) and
``TensorBoardLogger`` (real TensorBoard event files, no tensorflow/tensorboard needed)."""

from ._yaml import save_hparams_to_yaml
from .csv_logs import CSVLogger
from .logger import DummyLogger, Logger, rank_zero_experiment
from .tensorboard import TensorBoardLogger

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger", "rank_zero_experiment", "save_hparams_to_yaml"]

from .._missing import missing_names  # noqa: E402

__getattr__ = missing_names(
    __name__, "lightning.pytorch.loggers", {n: "use CSVLogger or TensorBoardLogger" for n in (
        "WandbLogger", "MLFlowLogger", "CometLogger", "NeptuneLogger")}
)
