"""Logger base class and the small helpers every logger shares, with Lightning's names and meaning.

A logger receives plain Python numbers: the trainer turns metric tensors into floats (a device sync
point) only when it calls ``log_metrics``, every ``log_every_n_steps`` steps and at epoch ends. The
helpers here (prefixing, flattening and sanitising hyper-parameters, version scanning) are what
Lightning's ``lightning.fabric.utilities.logger`` holds.
"""

import functools
import os
import warnings
from argparse import Namespace
from enum import Enum


def _global_rank():
    """This process's global rank (dutycycle.distributed.rank_zero_only.rank: from the launcher's
    environment, then from the process group); 0 when there is no distributed layer."""
    try:
        from ..distributed.rank_zero import rank_zero_only
    except ImportError:
        return 0
    return getattr(rank_zero_only, "rank", 0) or 0


def rank_zero_only(fn):
    """Lightning's decorator for logger methods: run on global rank 0, return None on the others
    (several ranks would otherwise write the same files)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if _global_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped


class _DummyExperiment:
    """What ``experiment`` is on ranks other than 0: every method call does nothing."""

    def nop(self, *args, **kwargs):
        return None

    def __getattr__(self, _):
        return self.nop

    def __getitem__(self, idx):
        return self


def rank_zero_experiment(fn):
    """Lightning's decorator for the ``experiment`` property: the real one on global rank 0, a
    do-nothing stand-in on the others."""

    @functools.wraps(fn)
    def experiment(self):
        if _global_rank() != 0:
            return _DummyExperiment()
        return fn(self)

    return experiment


class Logger:
    """Base class of experiment loggers (Lightning's ``lightning.pytorch.loggers.Logger``).

    Subclasses implement ``name``, ``version``, ``log_metrics`` and ``log_hyperparams``; everything
    else has a sensible default."""

    LOGGER_JOIN_CHAR = "-"

    @property
    def name(self):
        """The experiment name (a folder under ``root_dir`` for file loggers)."""
        raise NotImplementedError

    @property
    def version(self):
        """The experiment version: an int (folder ``version_<n>``) or a string (used as is)."""
        raise NotImplementedError

    @property
    def root_dir(self):
        return None

    @property
    def log_dir(self):
        return None

    @property
    def save_dir(self):
        return None

    @property
    def group_separator(self):
        return "/"

    @property
    def experiment(self):
        return None

    def log_metrics(self, metrics, step=None):
        """Record ``metrics`` (str -> number) at ``step``."""
        raise NotImplementedError

    def log_hyperparams(self, params, *args, **kwargs):
        """Record the hyper-parameters (a dict or an ``argparse.Namespace``)."""
        raise NotImplementedError

    def log_graph(self, model, input_array=None):
        pass

    def save(self):
        """Write what is buffered."""

    def finalize(self, status):
        """Called once at the end of fit/validate/test with "success", "failed" or "finished"."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback):
        """Called after a checkpoint callback wrote a checkpoint."""


class _VersionedFolderLogger(Logger):
    """Shared by the file loggers: <save_dir>/<name>/version_<n>, the version picked on first use
    by scanning the existing version_* folders (subclasses set _save_dir, _name, _version)."""

    @property
    def name(self):
        return self._name

    @property
    def version(self):
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self):
        return self._save_dir

    @property
    def root_dir(self):
        return os.path.join(self.save_dir, self.name)


class DummyLogger(Logger):
    """A logger that does nothing (Lightning uses it for ``fast_dev_run``)."""

    @property
    def name(self):
        return ""

    @property
    def version(self):
        return ""

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


# ---------------------------------------------------------------------------------------------
# Helpers (lightning.fabric.utilities.logger)


def _add_prefix(metrics, prefix, separator):
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


def _convert_params(params):
    """A Namespace or None becomes a dict."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if hasattr(params, "items"):
        return dict(params.items())
    raise TypeError(f"hyper-parameters must be a dict or an argparse.Namespace, got {type(params).__name__}")


def _flatten_dict(params, delimiter="/", parent_key=""):
    """{"a": {"b": 1}} -> {"a/b": 1}; Namespaces are opened too."""
    out = {}
    for k, v in params.items():
        key = f"{parent_key}{delimiter}{k}" if parent_key else str(k)
        if isinstance(v, Namespace):
            v = vars(v)
        if isinstance(v, dict) and v:
            out.update(_flatten_dict(v, delimiter, key))
        else:
            out[key] = v
    return out


def _to_python_scalar(v):
    """dc.Tensor / numpy scalar with one element -> Python number; other values unchanged.
    Note: on a device tensor this is a sync point."""
    if hasattr(v, "item") and hasattr(v, "shape") and not isinstance(v, (int, float, bool, str)):
        try:
            n = 1
            for s in v.shape:
                n *= s
            if n == 1:
                return v.item()
        except Exception:
            return v
    return v


def _sanitize_params(params):
    """Values TensorBoard's hparams plugin can show: numbers, strings, bools; others become str."""
    out = {}
    for k, v in params.items():
        v = _to_python_scalar(v)
        if isinstance(v, Enum):
            v = v.name
        elif callable(v) and hasattr(v, "__name__") and not isinstance(v, type):
            v = v.__name__
        if not isinstance(v, (bool, int, float, str)) or v is None:
            v = str(v)
        out[k] = v
    return out


def _version(loggers, separator="_"):
    if len(loggers) == 1:
        return loggers[0].version
    return separator.join(dict.fromkeys(str(lg.version) for lg in loggers))


def _name(loggers, separator="_"):
    if len(loggers) == 1:
        return loggers[0].name
    return separator.join(dict.fromkeys(str(lg.name) for lg in loggers))


def _next_version(versions_root):
    """Lightning's version scan: 1 + the largest n of the version_<n> folders in versions_root, or 0."""
    if not os.path.isdir(versions_root):
        return 0
    found = []
    for entry in os.listdir(versions_root):
        full = os.path.join(versions_root, entry)
        if os.path.isdir(full) and entry.startswith("version_"):
            num = entry.split("_")[1]
            if num.isdigit():
                found.append(int(num))
    return max(found) + 1 if found else 0


def _warn(msg, category=UserWarning):
    warnings.warn(msg, category, stacklevel=3)
