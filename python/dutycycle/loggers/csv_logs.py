"""CSVLogger: Lightning's plain-file logger.

Layout (as Lightning's): ``<save_dir>/<name>/version_<n>/metrics.csv`` and ``hparams.yaml``. Rows are
buffered and written every ``flush_logs_every_n_steps`` steps and at ``save()``/``finalize()``; when
a new metric key shows up after the file was started, the file is rewritten with the grown header
(Lightning's ExperimentWriter does the same), so every row has every column.
"""

import csv
import os

from ._yaml import save_hparams_to_yaml
from .logger import (
    _add_prefix,
    _convert_params,
    _to_python_scalar,
    _VersionedFolderLogger,
    _warn,
    rank_zero_experiment,
    rank_zero_only,
)


class ExperimentWriter:
    """Buffers metric rows and writes metrics.csv / hparams.yaml in ``log_dir``."""

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir):
        self.hparams = {}
        self.metrics = []  # buffered rows: dict column -> value
        self.metrics_keys = []  # the header written so far (sorted, as Lightning)
        self.log_dir = log_dir
        if os.path.isdir(log_dir) and os.listdir(log_dir):
            _warn(
                f"Experiment logs directory {log_dir} exists and is not empty. Previous log files in this "
                "directory will be deleted when the new ones are saved!"
            )
        os.makedirs(log_dir, exist_ok=True)
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        if os.path.isfile(self.metrics_file_path):
            os.remove(self.metrics_file_path)

    def log_hparams(self, params):
        self.hparams.update(params)

    def log_metrics(self, metrics_dict, step):
        row = {k: _to_python_scalar(v) for k, v in metrics_dict.items()}
        row["step"] = step
        self.metrics.append(row)

    def save(self):
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        file_exists = os.path.isfile(self.metrics_file_path)
        if new_keys and file_exists:
            self._rewrite_with_new_header(self.metrics_keys)
        with open(self.metrics_file_path, "a" if file_exists else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []

    def _record_new_keys(self):
        current = set().union(*self.metrics)
        new = current - set(self.metrics_keys)
        self.metrics_keys.extend(new)
        self.metrics_keys.sort()
        return new

    def _rewrite_with_new_header(self, fieldnames):
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)


class CSVLogger(_VersionedFolderLogger):
    """Log to local CSV files: ``CSVLogger(save_dir, name="lightning_logs", version=None, prefix="",
    flush_logs_every_n_steps=100)``. ``version=None`` takes the next free ``version_<n>``; a string
    version is used as the folder name as is."""

    def __init__(self, save_dir, name="lightning_logs", version=None, prefix="", flush_logs_every_n_steps=100):
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._experiment = None
        self._flush_logs_every_n_steps = flush_logs_every_n_steps

    @property
    def log_dir(self):
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The ExperimentWriter (created, with its folder, on first use)."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params=None, *args, **kwargs):
        self.experiment.log_hparams(_convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            step = len(self.experiment.metrics)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self):
        super().save()
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status):
        if self._experiment is None:
            return  # nothing was logged: create no folder
        self.save()
