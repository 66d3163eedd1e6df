"""The Trainer: Lightning's Trainer, same arguments, same hooks in the same order, one file.

One step of fit, top to bottom (the real code is `_fit_loop` / `_train_step` below):

    fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
      configure_callbacks, prepare_data, setup("fit"), configure_model
      restore model + callbacks from ckpt_path             (on_load_checkpoint)
      configure_optimizers; restore optimizers, schedulers, loop position
      on_fit_start
      sanity check: num_sanity_val_steps validation batches
      on_train_start
      for epoch in range(start_epoch, max_epochs):
          on_train_epoch_start
          for batch_idx, batch in train_dataloader:        # duty: data_wait (blocked in next())
              on_train_batch_start                         #   returning -1 ends the epoch
              batch -> device                              # duty: data_wait (host -> device copy)
              if last micro-batch of the accumulation window:
                  optimizer_step(closure)                  # duty: compute
                    closure: training_step, [on_before_zero_grad, zero_grad], on_before_backward,
                             backward(loss / accumulate_grad_batches), on_after_backward,
                             on_before_optimizer_step, configure_gradient_clipping
                  global_step += 1; lr schedulers with interval="step" (not ReduceLROnPlateau)
                  last batch of the epoch: lr schedulers with interval="epoch" (not ReduceLROnPlateau)
              else:
                  closure without the optimizer step       # duty: compute
              on_train_batch_end                           # checkpoints here: duty checkpoint_stall
              every log_every_n_steps: write step metrics + duty split to the loggers  # note: sync point
              validation when this batch is a val-check batch (val_check_interval, check_val_every_n_epoch)
              ReduceLROnPlateau with interval="step", stepped with its monitored metric
              stop if max_steps / max_time / should_stop (and min_epochs / min_steps are met)
          on_train_epoch_end (callbacks, module, then monitoring callbacks); epoch metrics to loggers
          ReduceLROnPlateau with interval="epoch" (after validation), when the epoch ran to its end
      on_train_end, on_fit_end, teardown("fit"); the duty-cycle table is printed

Hooks are called from one place (`_call_hook`: callbacks first, then the LightningModule, as
Lightning does), and every exception raised inside fit/validate/test/predict funnels through
`_run` (on_exception for callbacks and module, loggers finalised as "failed", then re-raised).

Resume is exact: the checkpoint holds model, optimizers, schedulers, callback states, the loop
position (epoch, batch inside the epoch, global step), the RNG states (dutycycle, numpy, random),
the train DataLoader's state_dict, the running epoch's self.log accumulators and the callback /
logged metrics; the RNG states are put back after the resumed epoch's iterator exists, so the run
continues bit for bit as if it had not stopped (epoch-end metrics included). As in Lightning, a
resumed fit skips the sanity check.
"""

from __future__ import annotations

import datetime
import difflib
import glob
import math
import os
import random
import warnings
from time import perf_counter

import numpy as np

import dutycycle as dc

from . import checkpoint_io
from .duty import DutyCycle
from .module import LightningDataModule, LightningModule
from .results import Results, to_float

# Strategies this build knows; the distributed issue adds "ddp" and "zero1".
STRATEGIES = {"auto": "one process, one device", "single_device": "one process, one device"}
_PRECISIONS_OK = {"32-true": "32-true", "32": "32-true", 32: "32-true", None: "32-true"}
_PRECISIONS_CUDA = {"bf16-mixed", "16-mixed", "bf16", "16", 16, "bf16-true", "16-true", "transformer-engine"}
_PRECISIONS_LATER = {"64-true", "64", 64}

_warned = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, UserWarning, stacklevel=3)


def seed_everything(seed=None, workers=False):
    """Seed dutycycle, numpy's global generator and Python's random with one seed (Lightning's
    seed_everything). No seed: PL_GLOBAL_SEED from the environment, else 0. Returns the seed."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        seed = int(env) if env is not None else 0
    seed = int(seed)
    max_seed = np.iinfo(np.uint32).max
    if not 0 <= seed <= max_seed:
        warnings.warn(f"{seed} is not in bounds, numpy accepts from 0 to {max_seed}; using 0")
        seed = 0
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    np.random.seed(seed)
    dc.manual_seed(seed)
    return seed


def _parse_max_time(max_time):
    if max_time is None or isinstance(max_time, datetime.timedelta):
        return max_time
    if isinstance(max_time, dict):
        return datetime.timedelta(**max_time)
    if isinstance(max_time, str):
        parts = max_time.strip().split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"max_time={max_time!r}: expected the string format 'DD:HH:MM:SS'")
        d, h, m, s = (int(p) for p in parts)
        return datetime.timedelta(days=d, hours=h, minutes=m, seconds=s)
    raise TypeError(f"max_time must be a 'DD:HH:MM:SS' string, a dict or a datetime.timedelta, got {max_time!r}")


def _noop():
    pass


def _is_noop(fn):
    """True for a function whose body is just `pass` (a base-class hook nobody overrode)."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_code == _noop.__code__.co_code and code.co_consts == _noop.__code__.co_consts


_NOOP_MODULE_HOOKS = frozenset(k for k, v in vars(LightningModule).items() if _is_noop(v))


def _is_instance_of(obj, names):
    return any(c.__name__ in names for c in type(obj).__mro__)


class TrainerState:
    def __init__(self):
        self.fn = None  # "fit" | "validate" | "test" | "predict"
        self.stage = None  # "train" | "sanity_check" | "validate" | "test" | "predict"
        self.status = "initializing"  # "running" | "finished" | "interrupted"

    def __repr__(self):
        return f"TrainerState(fn={self.fn!r}, stage={self.stage!r}, status={self.status!r})"


class LRSchedulerConfig:
    def __init__(
        self,
        scheduler,
        interval="epoch",
        frequency=1,
        monitor=None,
        name=None,
        strict=True,
        reduce_on_plateau=False,
        opt_idx=0,
    ):
        self.scheduler, self.interval, self.frequency, self.monitor = scheduler, interval, frequency, monitor
        self.name, self.strict, self.reduce_on_plateau, self.opt_idx = name, strict, reduce_on_plateau, opt_idx

    def __repr__(self):
        return (
            f"LRSchedulerConfig({type(self.scheduler).__name__}, interval={self.interval!r}, "
            f"frequency={self.frequency}, monitor={self.monitor!r})"
        )


class _EpochLoop:
    """Lightning's trainer.fit_loop.epoch_loop: batch_idx is the batch being run in the epoch."""

    def __init__(self):
        self.batch_idx = 0
        self.total_batch_idx = 0


class _FitLoop:
    def __init__(self):
        self.epoch_loop = _EpochLoop()


class Trainer:
    def __init__(
        self,
        *,
        accelerator="auto",
        strategy="auto",
        devices="auto",
        num_nodes=1,
        precision=None,
        logger=None,
        callbacks=None,
        fast_dev_run=False,
        max_epochs=None,
        min_epochs=None,
        max_steps=-1,
        min_steps=None,
        max_time=None,
        limit_train_batches=None,
        limit_val_batches=None,
        limit_test_batches=None,
        limit_predict_batches=None,
        val_check_interval=None,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=None,
        log_every_n_steps=None,
        enable_checkpointing=None,
        enable_progress_bar=None,
        enable_model_summary=None,
        accumulate_grad_batches=1,
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
        deterministic=None,
        benchmark=None,
        inference_mode=True,
        use_distributed_sampler=True,
        profiler=None,
        detect_anomaly=False,
        barebones=False,
        plugins=None,
        sync_batchnorm=False,
        reload_dataloaders_every_n_epochs=0,
        default_root_dir=None,
        **unknown,
    ):
        if unknown:
            known = [
                n for n in Trainer.__init__.__code__.co_varnames[1 : Trainer.__init__.__code__.co_kwonlyargcount + 1]
            ]
            name = next(iter(unknown))
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"Trainer.__init__() got an unexpected keyword argument {name!r}{hint}")

        # ---- hardware: accelerator, strategy, devices, precision --------------------------------
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a string (one of {sorted(STRATEGIES)}), got {type(strategy).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not known; known strategies: {sorted(STRATEGIES)}")
        self.strategy = strategy
        acc = str(accelerator).lower() if accelerator is not None else "auto"
        if acc not in ("auto", "cpu", "gpu", "cuda"):
            raise ValueError(f"accelerator={accelerator!r} is not known; expected one of 'cpu', 'gpu', 'cuda', 'auto'")
        if acc in ("gpu", "cuda") and not dc.cuda.is_available():
            raise RuntimeError(
                f"accelerator={accelerator!r} was requested but no CUDA device is available "
                f"(dutycycle.cuda.is_built()={dc.cuda.is_built()}, device_count()={dc.cuda.device_count()}); "
                "use accelerator='cpu' or 'auto'"
            )
        if acc == "auto":
            acc = "cuda" if dc.cuda.is_available() else "cpu"
        self.accelerator = "cuda" if acc == "gpu" else acc
        self.num_devices = self._parse_devices(devices)
        if int(num_nodes) != 1 or self.num_devices != 1:
            if strategy in ("auto", "single_device"):
                raise ValueError(
                    f"devices={devices!r}, num_nodes={num_nodes!r} ask for more than one process; "
                    f"strategy={strategy!r} runs one (multi-process strategies such as 'ddp' arrive with the "
                    "distributed issue)"
                )
        self.num_nodes = int(num_nodes)
        self.root_device = dc.device("cuda", 0) if self.accelerator == "cuda" else dc.device("cpu")
        self.precision = self._parse_precision(precision)

        # ---- loop limits ---------------------------------------------------------------------
        self.fast_dev_run = fast_dev_run
        if isinstance(fast_dev_run, bool):
            n_dev = 1 if fast_dev_run else 0
        elif isinstance(fast_dev_run, int) and fast_dev_run >= 0:
            n_dev = fast_dev_run
        else:
            raise ValueError(f"fast_dev_run={fast_dev_run!r} must be a bool or an int >= 0")
        self._fast_dev_run = n_dev
        self.max_time = _parse_max_time(max_time)
        self.max_steps = -1 if max_steps is None else int(max_steps)
        if self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (no limit) or >= 0, got {max_steps}")
        if max_epochs is None:
            max_epochs = 1000 if (self.max_steps == -1 and self.max_time is None) else -1
        self.max_epochs = int(max_epochs)
        self.min_epochs = min_epochs
        self.min_steps = min_steps
        self.limit_train_batches = self._parse_limit(limit_train_batches, "limit_train_batches")
        self.limit_val_batches = self._parse_limit(limit_val_batches, "limit_val_batches")
        self.limit_test_batches = self._parse_limit(limit_test_batches, "limit_test_batches")
        self.limit_predict_batches = self._parse_limit(limit_predict_batches, "limit_predict_batches")
        if val_check_interval is None:
            val_check_interval = 1.0
        if isinstance(val_check_interval, float) and not 0.0 < val_check_interval <= 1.0:
            raise ValueError(f"val_check_interval={val_check_interval} must be in (0.0, 1.0] as a float, or an int")
        if isinstance(val_check_interval, int) and val_check_interval < 1:
            raise ValueError(f"val_check_interval={val_check_interval} must be >= 1 as an int")
        self.val_check_interval = val_check_interval
        if check_val_every_n_epoch is not None and (
            not isinstance(check_val_every_n_epoch, int) or check_val_every_n_epoch < 1
        ):
            raise ValueError(f"check_val_every_n_epoch must be None or an int >= 1, got {check_val_every_n_epoch!r}")
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else int(num_sanity_val_steps)
        self.log_every_n_steps = 50 if log_every_n_steps is None else int(log_every_n_steps)
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}")
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_algorithm is not None and gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not one of 'norm', 'value'")
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm or ("norm" if gradient_clip_val else None)
        if deterministic not in (None, True, False, "warn"):
            raise ValueError(f"deterministic must be None, a bool or 'warn', got {deterministic!r}")
        self.deterministic = deterministic  # dutycycle's CPU kernels are deterministic already
        self.benchmark = benchmark  # accepted (cuDNN autotuning has no meaning here yet)
        self.inference_mode = inference_mode
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.barebones = barebones
        if n_dev:  # fast_dev_run: n batches of each, no sanity check, no loggers, no checkpoints
            self.max_steps, self.max_epochs = n_dev, 1
            self.limit_train_batches = self.limit_val_batches = n_dev
            self.limit_test_batches = self.limit_predict_batches = n_dev
            self.num_sanity_val_steps, self.val_check_interval = 0, 1.0
            self.check_val_every_n_epoch = 1

        # ---- callbacks, loggers, paths -------------------------------------------------------
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else None
        self.enable_progress_bar = True if enable_progress_bar is None else bool(enable_progress_bar)
        self.enable_checkpointing = True if enable_checkpointing is None else bool(enable_checkpointing)
        self.enable_model_summary = enable_model_summary
        self.callbacks = self._build_callbacks(callbacks)
        self.loggers = self._build_loggers(logger)

        # ---- run state -----------------------------------------------------------------------
        self.state = TrainerState()
        self.fit_loop = _FitLoop()
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.sanity_checking = False
        self.training = self.validating = self.testing = self.predicting = False
        self.lightning_module = None
        self.datamodule = None
        self.optimizers = []
        self.lr_scheduler_configs = []
        self.num_training_batches = float("inf")
        self.num_val_batches = []
        self.num_test_batches = []
        self.num_predict_batches = []
        self.num_sanity_val_batches = []
        self.val_check_batch = float("inf")
        self.train_dataloader = None
        self.val_dataloaders = None
        self.test_dataloaders = None
        self.predict_dataloaders = None
        self.ckpt_path = None
        self.duty_cycle = DutyCycle()
        self._results = Results(self)
        self.callback_metrics = self._results.callback_metrics
        self.logged_metrics = {}
        self._resume = None  # loop state read from a checkpoint, consumed by the fit loop
        self._batches_done = 0  # batches finished in the current epoch
        self._next_pos = (0, 0)  # (epoch, batch) of the next training batch: what resume continues from
        self._epoch_rng = None  # RNG states at the start of the epoch (resume without loader state)
        self._cut_metrics = None  # metric state of an epoch cut short, as it was before its epoch end
        self._time_offset = 0.0  # seconds trained before a resume (max_time)
        self._fit_t0 = None
        self._in_exception = False
        self._stepped = False
        self._hook_cache = {}

    # ================================================================================================
    # argument parsing
    # ================================================================================================
    def _parse_devices(self, devices):
        if devices in ("auto", None, -1, "-1"):
            return 1
        if isinstance(devices, (list, tuple)):
            return len(devices)
        if isinstance(devices, str):
            devices = devices.strip().rstrip(",")
            if "," in devices:
                return len(devices.split(","))
            if not devices.isdigit():
                raise ValueError(f"devices={devices!r} is not an int, a list or 'auto'")
            devices = int(devices)
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(f"devices={devices!r} must be 'auto', an int >= 1 or a list of device indices")
        if self.accelerator == "cuda" and devices > dc.cuda.device_count():
            raise ValueError(f"devices={devices} but only {dc.cuda.device_count()} CUDA device(s) are available")
        return devices

    def _parse_precision(self, precision):
        if precision in _PRECISIONS_OK:
            return _PRECISIONS_OK[precision]
        if precision in _PRECISIONS_CUDA:
            where = "on CPU" if self.accelerator == "cpu" else "yet"
            raise ValueError(
                f"precision={precision!r} is not available {where}: mixed/low precision training arrives with the "
                "CUDA backend (issue 'CUDA backend'); use precision='32-true'"
            )
        if precision in _PRECISIONS_LATER:
            raise ValueError(f"precision={precision!r} is not supported yet; use precision='32-true'")
        raise ValueError(
            f"precision={precision!r} is not known; expected '32-true' (or '32'/32), 'bf16-mixed', '16-mixed'"
        )

    @staticmethod
    def _parse_limit(value, name):
        if value is None:
            return 1.0
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an int or a float, got a bool")
        if isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} as a float must be in [0.0, 1.0] (a fraction of the batches)")
            return value
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
            return value
        raise TypeError(f"{name} must be an int or a float, got {type(value).__name__}")

    def _build_callbacks(self, callbacks):
        if callbacks is None:
            callbacks = []
        elif not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        has_ckpt = any(_is_instance_of(c, ("ModelCheckpoint", "Checkpoint")) for c in callbacks)
        if has_ckpt and not self.enable_checkpointing:
            raise ValueError(
                "Trainer was configured with enable_checkpointing=False but found a ModelCheckpoint in callbacks"
            )
        if self.enable_checkpointing and not has_ckpt:
            try:
                from dutycycle.callbacks import ModelCheckpoint

                callbacks.append(ModelCheckpoint())
            except ImportError:
                _warn_once("no-ckpt-cb", "dutycycle.callbacks is not available: no default ModelCheckpoint")
        if self.enable_progress_bar and not any(
            _is_instance_of(c, ("ProgressBar",)) or "ProgressBar" in type(c).__name__ for c in callbacks
        ):
            try:
                from dutycycle.callbacks import TQDMProgressBar

                callbacks.append(TQDMProgressBar())
            except ImportError:
                _warn_once("no-bar-cb", "dutycycle.callbacks is not available: no progress bar")
        return self._reorder(callbacks)

    @staticmethod
    def _reorder(callbacks):
        # Lightning runs checkpoint callbacks last, so they see every metric the others logged.
        ckpt = [c for c in callbacks if _is_instance_of(c, ("ModelCheckpoint", "Checkpoint"))]
        return [c for c in callbacks if c not in ckpt] + ckpt

    def _build_loggers(self, logger):
        if self._fast_dev_run or logger is False:
            return []
        if logger is None or logger is True:
            try:
                from dutycycle.loggers import CSVLogger
            except ImportError:
                _warn_once("no-logger", "dutycycle.loggers is not available: no default CSVLogger")
                return []
            return [CSVLogger(save_dir=self.default_root_dir, name="lightning_logs")]
        return list(logger) if isinstance(logger, (list, tuple)) else [logger]

    # ================================================================================================
    # attributes callbacks and loggers read (Lightning names)
    # ================================================================================================
    @property
    def default_root_dir(self):
        return self._default_root_dir if self._default_root_dir is not None else os.getcwd()

    @property
    def logger(self):
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger):
        self.loggers = [] if logger is None else [logger]

    @property
    def log_dir(self):
        if self.logger is not None:
            d = getattr(self.logger, "log_dir", None) or getattr(self.logger, "save_dir", None)
            if d is not None:
                return os.fspath(d)
        return self.default_root_dir

    @property
    def is_global_zero(self):
        return True

    global_rank = local_rank = node_rank = 0
    world_size = 1

    @property
    def device_ids(self):
        return [0]

    @property
    def model(self):
        return self.lightning_module

    @property
    def interrupted(self):
        return self.state.status == "interrupted"

    @property
    def checkpoint_callbacks(self):
        return [c for c in self.callbacks if _is_instance_of(c, ("ModelCheckpoint", "Checkpoint"))]

    @property
    def checkpoint_callback(self):
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self):
        return [c for c in self.callbacks if _is_instance_of(c, ("EarlyStopping",))]

    @property
    def early_stopping_callback(self):
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self):
        for c in self.callbacks:
            if "ProgressBar" in type(c).__name__ or _is_instance_of(c, ("ProgressBar",)):
                return c
        return None

    @property
    def lr_scheduler_configs_list(self):
        return self.lr_scheduler_configs

    @property
    def enable_validation(self):
        m = self.lightning_module
        return (
            m is not None
            and self._has_step(m, "validation_step")
            and self.limit_val_batches != 0
            and self._val_source_exists()
        )

    @property
    def progress_bar_metrics(self):
        """What the progress bar shows: the metrics logged with prog_bar=True (as Lightning 2, no
        automatic "loss" entry) and the live duty cycle (%, "duty").
        # note: sync point: reads the values back; the bar calls this at its refresh rate only."""
        out = {k: to_float(v) for k, v in self._results.progress_bar().items()}
        out["duty"] = 100.0 * self.duty_cycle.recent_fraction()
        return out

    @property
    def estimated_stepping_batches(self):
        if self.max_steps != -1:
            return self.max_steps
        if self.train_dataloader is None and self.lightning_module is not None:
            self._setup_train_data()
        n = self.num_training_batches
        if n == float("inf") or self.max_epochs == -1:
            return float("inf")
        return math.ceil(n / self.accumulate_grad_batches) * max(1, self.max_epochs)

    # ================================================================================================
    # the one place that calls hooks, and the one place exceptions go through
    # ================================================================================================
    def _active_callbacks(self, monitoring=None):
        cbs = self.callbacks
        if self._fast_dev_run:
            cbs = [
                c
                for c in cbs
                if not _is_instance_of(c, ("ModelCheckpoint", "Checkpoint", "EarlyStopping", "LearningRateMonitor"))
            ]
        if monitoring is not None:
            cbs = [
                c for c in cbs if _is_instance_of(c, ("ModelCheckpoint", "Checkpoint", "EarlyStopping")) == monitoring
            ]
        return cbs

    def _call_hook(self, name, *args, callbacks=True, module=True, datamodule=False, monitoring=None, **kwargs):
        """Call hook `name`: on the datamodule (if asked), every callback, then the LightningModule.
        Returns what the module's hook returned. Logging inside a hook knows which hook it is in.
        Hooks nobody overrides (base-class no-ops) are skipped: a cached lookup, a few dict reads."""
        m = self.lightning_module
        key = (name, callbacks, module, monitoring, id(self.callbacks), len(self.callbacks), id(m))
        targets = self._hook_cache.get(key)
        if targets is None:
            targets = self._hook_cache[key] = self._hook_targets(name, callbacks, module, monitoring)
        cb_fns, mod_fn = targets
        if not (cb_fns or mod_fn or (datamodule and self.datamodule is not None)):
            return None
        prev = m.__dict__.get("_current_fx") if m is not None else None
        if m is not None:
            object.__setattr__(m, "_current_fx", name)
        try:
            if datamodule and self.datamodule is not None:
                fn = getattr(self.datamodule, name, None)
                if fn is not None:
                    fn(*args, **kwargs)
            for fn in cb_fns:
                fn(self, m, *args, **kwargs)
            if mod_fn is not None:
                return mod_fn(*args, **kwargs)
            return None
        finally:
            if m is not None:
                object.__setattr__(m, "_current_fx", prev)

    def _hook_targets(self, name, callbacks, module, monitoring):
        cb_fns = []
        if callbacks:
            for cb in self._active_callbacks(monitoring):
                fn = getattr(cb, name, None)
                if fn is not None and not _is_noop(getattr(type(cb), name, None)):
                    cb_fns.append(fn)
        mod_fn = None
        m = self.lightning_module
        if module and m is not None:
            fn = getattr(m, name, None)
            if fn is not None and not (
                name in _NOOP_MODULE_HOOKS and getattr(type(m), name, None) is getattr(LightningModule, name)
            ):
                mod_fn = fn
        return cb_fns, mod_fn

    def _run(self, fn, *args):
        """Run a trainer entry point; every exception comes through here (on_exception, loggers
        finalised as "failed", teardown, re-raise)."""
        self.state.status = "running"
        try:
            out = fn(*args)
            self.state.status = "finished"
            return out
        except BaseException as exc:
            self.state.status = "interrupted"
            if self._in_exception:
                raise
            self._in_exception = True
            try:
                self._call_hook("on_exception", exc)
                for lg in self.loggers:
                    if hasattr(lg, "finalize"):
                        lg.finalize("failed")
            except Exception as hook_exc:  # a failing handler must not hide the real error
                warnings.warn(f"on_exception handler raised {type(hook_exc).__name__}: {hook_exc}")
            finally:
                self._in_exception = False
                self.duty_cycle.stop()
                self._set_flags(None)
            raise

    def _set_flags(self, stage):
        self.state.stage = stage
        self.training = stage == "train"
        self.sanity_checking = stage == "sanity_check"
        self.validating = stage in ("validate", "sanity_check")
        self.testing = stage == "test"
        self.predicting = stage == "predict"

    # ================================================================================================
    # entry points
    # ================================================================================================
    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None):
        """Train model. train_dataloaders may be a LightningDataModule (Lightning allows that)."""
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise ValueError("You cannot pass `train_dataloader` or `val_dataloaders` together with `datamodule`")
        self.state.fn = "fit"
        return self._run(self._fit_impl, model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)

    def validate(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None):
        return self._eval_entry("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None):
        return self._eval_entry("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None):
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self.state.fn = "predict"
        return self._run(self._predict_impl, model, dataloaders, datamodule, ckpt_path, return_predictions)

    # ---- shared set-up ---------------------------------------------------------------------------
    def _attach(self, model, datamodule, stage):
        if model is None:
            model = self.lightning_module
            if model is None:
                raise ValueError(f"`Trainer.{stage}()` requires a `LightningModule` when it hasn't been passed before")
        if not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a `LightningModule`, got {type(model).__name__}")
        self.lightning_module = model
        model.trainer = self
        self._hook_cache = {}
        if datamodule is not None:
            if not isinstance(datamodule, LightningDataModule):
                raise TypeError(f"`datamodule` must be a `LightningDataModule`, got {type(datamodule).__name__}")
            self.datamodule = datamodule
            datamodule.trainer = self
        extra = self._call_hook("configure_callbacks", callbacks=False)
        if extra:
            extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
            types = {type(c) for c in extra}
            self.callbacks = self._reorder([c for c in self.callbacks if type(c) not in types] + extra)
        self.duty_cycle._sync_fn = dc.cuda.synchronize if self.root_device.type == "cuda" else None

    def _setup_stage(self, stage):
        """prepare_data, setup(stage), configure_model; model to the device."""
        if self.datamodule is not None:
            self.datamodule.prepare_data()
        self._call_hook("prepare_data", callbacks=False)
        for lg in self.loggers:  # create the experiment (directories) before callbacks resolve paths
            getattr(lg, "experiment", None)
        self._call_hook("setup", stage=stage, datamodule=True)
        self._call_hook("configure_model", callbacks=False)
        m = self.lightning_module
        if self.root_device.type != "cpu":
            m.to(self.root_device)  # note: host -> device copy of the parameters
        object.__setattr__(m, "_device", self.root_device)

    def _teardown_stage(self, stage):
        self._call_hook("teardown", stage=stage, datamodule=True)

    def _log_hyperparams(self):
        m = self.lightning_module
        hp = dict(m.hparams) if m.__dict__.get("_log_hyperparams", True) else {}
        if self.datamodule is not None and "_hparams" in self.datamodule.__dict__:
            hp.update(self.datamodule.hparams)
        for lg in self.loggers:
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams(hp)

    # ================================================================================================
    # fit
    # ================================================================================================
    def _fit_impl(self, model, train_dataloaders, val_dataloaders, datamodule, ckpt_path):
        self.duty_cycle.start()
        self._fit_t0 = perf_counter()
        if ckpt_path not in (None, "last", "best", "hpc", "registry") and not os.path.isfile(os.fspath(ckpt_path)):
            raise FileNotFoundError(f"Checkpoint file not found: ckpt_path='{os.fspath(ckpt_path)}'")
        self._attach(model, datamodule, "fit")
        self._train_source, self._val_source = train_dataloaders, val_dataloaders
        self.train_dataloader = self.val_dataloaders = None
        self.should_stop = False
        self.current_epoch = self.global_step = 0
        self._batches_done, self._next_pos, self._resume, self._time_offset = 0, (0, 0), None, 0.0
        self._cut_metrics = None
        m = self.lightning_module

        self._setup_stage("fit")
        ckpt = self._load_for_resume(ckpt_path)
        if ckpt is not None:
            self._restore_module_and_callbacks(ckpt)
        self._configure_optimizers()
        if ckpt is not None:
            self._restore_training_state(ckpt)
        self._log_hyperparams()
        self._call_hook("on_fit_start")

        # Lightning skips the sanity check on resume: it would disturb the restored state
        if self.num_sanity_val_steps != 0 and self.enable_validation and ckpt is None:
            self._run_sanity_check()

        if self.train_dataloader is None:
            self._setup_train_data()
        m.train()
        with dc.enable_grad():
            self._fit_loop()

        self._call_hook("on_fit_end")
        for lg in self.loggers:
            if hasattr(lg, "save"):
                lg.save()
            if hasattr(lg, "finalize"):
                lg.finalize("success")
        self._teardown_stage("fit")
        self.duty_cycle.sync()  # note: sync point (CUDA): the table includes the queued device work
        self.duty_cycle.stop()
        self._set_flags(None)
        if self.is_global_zero and not self.barebones:
            print(self.duty_cycle.table("duty cycle (fit)"))

    def _fit_loop(self):
        """Epochs. See the module docstring for the whole loop in pseudo-code."""
        self._set_flags("train")
        self._call_hook("on_train_start")
        start_epoch, skip = self._next_pos if self._resume is not None else (self.current_epoch, 0)
        self.current_epoch = start_epoch
        while not self._fit_done():
            self._train_epoch(skip)
            skip = 0
            if self._fit_done(epoch_end=True):
                break
        self._set_flags("train")
        self._call_hook("on_train_end")
        self._set_flags(None)

    def _can_stop_early(self):
        met_epochs = self.current_epoch >= self.min_epochs if self.min_epochs else True
        met_steps = self.global_step >= self.min_steps if self.min_steps else True
        return met_epochs and met_steps

    def _max_steps_reached(self):
        return self.max_steps != -1 and self.global_step >= self.max_steps

    def _time_up(self):
        if self.max_time is None:
            return False
        return self._time_offset + perf_counter() - self._fit_t0 >= self.max_time.total_seconds()

    def _fit_done(self, epoch_end=False):
        if self._max_steps_reached():
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        if self.num_training_batches == 0 or self.limit_train_batches == 0:
            return True
        if (self.should_stop or self._time_up()) and self._can_stop_early():
            return True
        if self.should_stop and not self._can_stop_early():
            _warn_once(
                ("min", id(self)),
                f"Trainer was signaled to stop but the required `min_epochs="
                f"{self.min_epochs}` or `min_steps={self.min_steps}` has not been met; training continues",
            )
        return False

    def _epoch_should_stop(self):
        """Checked after every batch: end the epoch (and fit) now?"""
        if self._max_steps_reached():
            return True
        if self._time_up():
            self.should_stop = True
        return self.should_stop and self._can_stop_early()

    def _train_epoch(self, skip):
        """One epoch of training batches, then validation (if due) and the epoch-end hooks."""
        m = self.lightning_module
        epoch = self.current_epoch
        loader = self.train_dataloader
        duty = self.duty_cycle
        resume, self._resume = self._resume, None
        if resume is not None and not skip and resume.get("rng_states") is not None:
            self._set_rng_states(resume["rng_states"])  # resumed at an epoch boundary: RNG back first
        if not skip:
            resume = None
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self._cut_metrics = None
        self._results.reset_stage("train")  # before the hook: what on_train_epoch_start logs counts
        self._call_hook("on_train_epoch_start")
        if resume is not None and resume.get("results") is not None:
            # mid-epoch resume: the epoch's self.log accumulators as they were at the checkpoint
            # (they include what on_train_epoch_start logged then, so its second call is replaced)
            self._results.load_state_dict("train", resume["results"], self.root_device)

        # ---- the epoch's batch iterator (a resumed epoch continues at its saved position) -------------
        if resume is not None and resume.get("train_dataloader") is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(resume["train_dataloader"])
            it = iter(loader)
        elif resume is not None:
            if resume.get("epoch_rng") is not None:
                self._set_rng_states(resume["epoch_rng"])
            it = iter(loader)
            for _ in range(skip):  # no loader state: replay the epoch's order, drop what was done
                next(it)
        else:
            self._epoch_rng = self._get_rng_states()
            it = iter(loader)
        if resume is not None:
            self._epoch_rng = resume.get("epoch_rng")
            if resume.get("rng_states") is not None:
                self._set_rng_states(resume["rng_states"])  # after iter(): the run goes on bit for bit
        batch_idx = skip
        self._batches_done = skip
        limit = self.num_training_batches
        exhausted = False

        while batch_idx < limit:
            # ---- fetch: time blocked waiting for the loader is data wait --------------------------------
            duty.begin("data_wait")
            try:
                batch = next(it)
            except StopIteration:
                duty.end()
                exhausted = True
                break
            duty.end()
            self.fit_loop.epoch_loop.batch_idx = batch_idx
            stop_epoch = self._train_step(m, batch, batch_idx)
            is_last = self._batches_done >= limit
            duty.step_end()
            if stop_epoch:
                break

            # ---- validation inside / at the end of the epoch ------------------------------------------
            if self._should_check_val(batch_idx, is_last):
                self._run_validation()
                self._set_flags("train")
                m.train()
            if self._stepped:  # ReduceLROnPlateau on "step": after validation, so it sees val metrics
                self._update_lr_schedulers("step", plateau=True)
            if self._epoch_should_stop():
                break
            batch_idx += 1
        if exhausted:
            # the loader ran out before `limit`: that was the end of the epoch
            self._next_pos = (epoch + 1, 0)
            self._update_lr_schedulers("epoch")  # the last batch did not know it was the last
            if limit == float("inf") and self._should_check_val_epoch():
                self._run_validation()
                self._set_flags("train")
                m.train()
        epoch_complete = exhausted or self._batches_done >= limit
        if not epoch_complete:
            # stopped mid-epoch (max_steps, max_time, should_stop): a checkpoint taken from here on
            # resumes inside this epoch, so it keeps the metrics as they were before the epoch end
            self._cut_metrics = self._metric_state()

        # ---- epoch end: callbacks, module, then monitoring callbacks (Lightning's order) --------------
        self._call_hook("on_train_epoch_end", monitoring=False, module=False)
        self._call_hook("on_train_epoch_end", callbacks=False)
        self._call_hook("on_train_epoch_end", monitoring=True, module=False)
        self._log_metrics(self._results.epoch_end("train"), step=max(self.global_step - 1, 0))
        if epoch_complete:  # Lightning: only an epoch that ran all its batches steps them
            self._update_lr_schedulers("epoch", plateau=True)
        self.current_epoch += 1

    def _train_step(self, m, batch, batch_idx):
        """One training batch: hooks, forward, backward, optimizer step, step logging.
        Returns True when on_train_batch_start asked to end the epoch."""
        duty = self.duty_cycle
        self._results.batch = batch
        if self._call_hook("on_train_batch_start", batch, batch_idx) == -1:
            return True

        # ---- batch -> device (a host -> device copy on a GPU: data wait) ----------------------------------
        duty.begin("data_wait")
        batch = self._transfer_batch(m, batch, 0)
        duty.end()
        self._results.batch = batch

        # ---- forward, backward, optimizer: compute --------------------------------------------------------
        log_now = (self.global_step + 1) % self.log_every_n_steps == 0
        duty.begin("compute")
        if m.automatic_optimization:
            outputs = self._automatic_step(m, batch, batch_idx)
        else:
            outputs = self._manual_step(m, batch, batch_idx)
        if log_now:
            duty.sync()  # note: sync point (CUDA only, once per log_every_n_steps): device backlog -> compute
        duty.end()

        # the position a checkpoint taken from here on resumes at: after this batch
        self._batches_done = batch_idx + 1
        self.fit_loop.epoch_loop.total_batch_idx += 1
        done_epoch = self._batches_done >= self.num_training_batches
        self._next_pos = (self.current_epoch + 1, 0) if done_epoch else (self.current_epoch, self._batches_done)

        self._call_hook("on_train_batch_end", outputs, batch, batch_idx)

        # ---- write step metrics every log_every_n_steps (Lightning: step counts stepped batches) -----------
        if self._stepped and (self.global_step % self.log_every_n_steps == 0 or self.should_stop):
            metrics = self._results.step_log_metrics("train")
            metrics.update(self.duty_cycle.interval_metrics())
            self._log_metrics(metrics, step=self.global_step - 1)
        return False

    def _automatic_step(self, m, batch, batch_idx):
        """Lightning's automatic optimization for one batch (one optimizer)."""
        opt = self.optimizers[0]
        acc = self.accumulate_grad_batches
        last_in_epoch = batch_idx + 1 >= self.num_training_batches
        stepping = (batch_idx + 1) % acc == 0 or last_in_epoch
        zero_grad_now = batch_idx % acc == 0
        result = {}

        def closure():
            out = self._call_hook("training_step", batch, batch_idx, callbacks=False)
            loss = self._training_loss(out)
            result["out"], result["loss"] = out, loss
            if zero_grad_now:
                self._call_hook("on_before_zero_grad", opt)
                self._call_hook("optimizer_zero_grad", self.current_epoch, batch_idx, opt, callbacks=False)
            if loss is not None:
                self._backward(loss / acc if acc > 1 else loss)
            if stepping:
                self._call_hook("on_before_optimizer_step", opt)
                self._call_hook(
                    "configure_gradient_clipping",
                    opt,
                    self.gradient_clip_val,
                    self.gradient_clip_algorithm,
                    callbacks=False,
                )
            return loss

        if stepping:
            self._call_hook("optimizer_step", self.current_epoch, batch_idx, opt, closure, callbacks=False)
            self.global_step += 1
            self._update_lr_schedulers("step")
        else:
            closure()
        self._stepped = stepping
        if last_in_epoch:  # Lightning steps epoch-interval schedulers at the last batch of the epoch
            self._update_lr_schedulers("epoch")
        out, loss = result.get("out"), result.get("loss")
        if loss is None:
            return {}  # Lightning hands on_train_batch_end an empty dict for a skipped step
        loss = loss.detach()
        if isinstance(out, dict):
            return {**out, "loss": loss}
        return {"loss": loss}

    def _manual_step(self, m, batch, batch_idx):
        steps = self.global_step
        out = self._call_hook("training_step", batch, batch_idx, callbacks=False)
        self._stepped = self.global_step > steps
        if isinstance(out, dc.Tensor):
            return {"loss": out.detach()}
        return out

    def _manual_optimizer_step(self, optimizer, closure=None, **kwargs):
        """LightningOptimizer.step() in manual optimization: hook, step, count it. The lr schedulers
        are the user's to step (Lightning steps none in manual optimization)."""
        self._call_hook("on_before_optimizer_step", optimizer)
        out = optimizer.step(closure=closure, **kwargs)
        self.global_step += 1
        return out

    def _training_loss(self, out):
        if out is None:
            _warn_once(
                "none-loss",
                "`training_step` returned `None`. If this was on purpose, ignore this "
                "warning: the batch is skipped (no backward, no parameter update)",
            )
            return None
        if isinstance(out, dict):
            if "loss" not in out:
                raise ValueError(
                    "In automatic optimization, when `training_step` returns a dict, the 'loss' key needs to be "
                    f"present; got keys {sorted(out)}"
                )
            loss = out["loss"]
        else:
            loss = out
        if not isinstance(loss, dc.Tensor):
            raise TypeError(
                "In automatic optimization, `training_step` must return a Tensor, a dict with a 'loss' key, or None "
                f"(the step is skipped); got {type(loss).__name__}"
            )
        if loss.numel() != 1:
            raise ValueError(
                f"`training_step` must return a scalar loss (one element), got a tensor of shape {tuple(loss.shape)}; "
                "reduce it (e.g. .mean()) first"
            )
        if not loss.requires_grad:
            raise RuntimeError(
                "`training_step` returned a loss that does not require grad (was it computed under no_grad, or "
                "detached?)"
            )
        return loss

    def _backward(self, loss, *args, **kwargs):
        self._call_hook("on_before_backward", loss)
        self._call_hook("backward", loss, *args, callbacks=False, **kwargs)
        self._call_hook("on_after_backward")

    def _transfer_batch(self, m, batch, dataloader_idx):
        batch = self._call_hook("on_before_batch_transfer", batch, dataloader_idx, callbacks=False)
        if (
            self.datamodule is not None
            and type(self.datamodule).on_before_batch_transfer is not LightningDataModule.on_before_batch_transfer
        ):
            batch = self.datamodule.on_before_batch_transfer(batch, dataloader_idx)
        if self.root_device.type != "cpu":
            batch = self._call_hook(
                "transfer_batch_to_device", batch, self.root_device, dataloader_idx, callbacks=False
            )
        batch = self._call_hook("on_after_batch_transfer", batch, dataloader_idx, callbacks=False)
        if (
            self.datamodule is not None
            and type(self.datamodule).on_after_batch_transfer is not LightningDataModule.on_after_batch_transfer
        ):
            batch = self.datamodule.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    def _update_lr_schedulers(self, interval, plateau=False):
        """Lightning's _update_learning_rates: the schedulers of `interval` whose frequency divides the
        batch index + 1 ("step") or the epoch + 1 ("epoch"); the plateau ones (`plateau`) get their
        monitored metric from callback_metrics. Automatic optimization only."""
        m = self.lightning_module
        if not self.lr_scheduler_configs or m is None or not m.automatic_optimization:
            return
        for cfg in self.lr_scheduler_configs:
            if cfg.interval != interval or cfg.reduce_on_plateau != plateau:
                continue
            idx = (self.fit_loop.epoch_loop.batch_idx if interval == "step" else self.current_epoch) + 1
            if idx % cfg.frequency:
                continue
            metric = None
            if cfg.reduce_on_plateau:
                metric = self.callback_metrics.get(cfg.monitor)
                if metric is None:
                    if cfg.strict:
                        from dutycycle.callbacks import MisconfigurationException

                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available. "
                            f"Available metrics are: {list(self.callback_metrics)}. Condition can be set using "
                            "`monitor` key in lr scheduler dict"
                        )
                    warnings.warn(
                        f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available but strict "
                        "is set to `False`. Skipping learning rate update.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
            self._call_hook("lr_scheduler_step", cfg.scheduler, metric, callbacks=False)

    def _should_check_val_epoch(self):
        return self.enable_validation and (
            self.check_val_every_n_epoch is None or (self.current_epoch + 1) % self.check_val_every_n_epoch == 0
        )

    def _should_check_val(self, batch_idx, is_last):
        if not self._should_check_val_epoch():
            return False
        if self.should_stop and self._can_stop_early():
            return True
        if self.val_check_batch == float("inf"):
            return is_last
        i = self.fit_loop.epoch_loop.total_batch_idx - 1 if self.check_val_every_n_epoch is None else batch_idx
        return (i + 1) % self.val_check_batch == 0

    # ================================================================================================
    # data
    # ================================================================================================
    def _source(self, kind):
        """The dataloader(s) for kind: passed to the entry point, else the datamodule's, else the module's."""
        passed = {
            "train": self.__dict__.get("_train_source"),
            "val": self.__dict__.get("_val_source"),
            "test": self.__dict__.get("_test_source"),
            "predict": self.__dict__.get("_predict_source"),
        }[kind]
        if passed is not None:
            return passed
        for owner in (self.datamodule, self.lightning_module):
            fn = getattr(owner, f"{kind}_dataloader", None) if owner is not None else None
            if fn is not None and callable(fn):
                try:
                    return fn()
                except NotImplementedError:
                    continue
        return None

    def _val_source_exists(self):
        if self.__dict__.get("_val_source") is not None:
            return True
        return any(
            owner is not None and hasattr(owner, "val_dataloader") for owner in (self.datamodule, self.lightning_module)
        )

    @staticmethod
    def _has_step(m, name):
        return callable(getattr(m, name, None))

    @staticmethod
    def _num_batches(loader, limit, name):
        try:
            n = len(loader)
        except TypeError:
            n = float("inf")
        if isinstance(limit, int):
            return min(n, limit)
        if limit == 1.0:
            return n
        if n == float("inf"):
            if limit == 0.0:
                return 0
            raise ValueError(f"{name}={limit} as a fraction needs a dataloader with a length; pass an int instead")
        k = int(n * limit)
        if k == 0 and limit > 0.0:
            raise ValueError(
                f"You requested to check {limit} of the {name.split('_')[1]} dataloader but "
                f"{limit} * {n} < 1; use a larger fraction or an int"
            )
        return k

    def _setup_train_data(self):
        loader = self._source("train")
        if loader is None:
            raise ValueError(
                "No `train_dataloader()` method defined and no `train_dataloaders` passed to `Trainer.fit`"
            )
        self.train_dataloader = loader
        n = self._num_batches(loader, self.limit_train_batches, "limit_train_batches")
        self.num_training_batches = n
        vci = self.val_check_interval
        if isinstance(vci, int):
            if self.check_val_every_n_epoch is not None and n != float("inf") and vci > n:
                raise ValueError(
                    f"`val_check_interval` ({vci}) must be less than or equal to the number of the training "
                    f"batches ({n}). If you want to disable validation set `limit_val_batches` to 0.0 instead. If "
                    "you want to validate based on the total training batches, set `check_val_every_n_epoch=None`."
                )
            self.val_check_batch = vci
        elif n == float("inf"):
            self.val_check_batch = float("inf")
        else:
            self.val_check_batch = max(1, int(n * vci))

    def _as_list(self, loaders):
        if loaders is None:
            return []
        return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]

    # ================================================================================================
    # evaluation loops (sanity check, validation, test) and predict
    # ================================================================================================
    def _run_sanity_check(self):
        loaders = self._as_list(self._source("val"))
        if not loaders:
            return
        self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        self._set_flags("sanity_check")
        self._call_hook("on_sanity_check_start", module=False)
        n = self.num_sanity_val_steps
        limits = [self._num_batches(dl, self.limit_val_batches, "limit_val_batches") for dl in loaders]
        limits = limits if n == -1 else [min(n, k) for k in limits]
        self.num_sanity_val_batches = limits
        self._eval_loop("validation", loaders, limits)
        self._call_hook("on_sanity_check_end", module=False)
        # Lightning drops what the sanity check logged
        self._results.reset_stage("validation")
        for k in list(self.callback_metrics):
            del self.callback_metrics[k]
        self._set_flags("train")

    def _run_validation(self):
        loaders = (
            self._as_list(self.val_dataloaders)
            if self.val_dataloaders is not None
            else self._as_list(self._source("val"))
        )
        if not loaders:
            return
        self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        self.num_val_batches = [self._num_batches(dl, self.limit_val_batches, "limit_val_batches") for dl in loaders]
        self._set_flags("validate")
        self._eval_loop("validation", loaders, self.num_val_batches)

    def _eval_loop(self, kind, loaders, limits):
        """validation / test: eval mode, no grad, the step on each batch, epoch metrics reduced and
        logged at the end. Returns [{metric: float}] per dataloader (what validate()/test() return)."""
        m = self.lightning_module
        duty = self.duty_cycle
        step_name = f"{kind}_step"
        self._results.reset_stage(kind)
        self._results.stage = kind
        self._call_hook(f"on_{kind}_model_eval", callbacks=False)
        self._call_hook(f"on_{kind}_start")
        self._call_hook(f"on_{kind}_epoch_start")
        multi = len(loaders) > 1
        with dc.no_grad():
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
                self._results.dataloader_idx = dl_idx if multi else None
                extra = (dl_idx,) if multi else ()
                it = iter(loader)
                batch_idx = 0
                while batch_idx < limit:
                    duty.begin("data_wait")
                    try:
                        batch = next(it)
                    except StopIteration:
                        duty.end()
                        break
                    batch = self._transfer_batch(m, batch, dl_idx)
                    duty.end()
                    self._results.batch = batch
                    self._call_hook(f"on_{kind}_batch_start", batch, batch_idx, *extra)
                    duty.begin("compute")
                    out = self._call_hook(step_name, batch, batch_idx, *extra, callbacks=False)
                    duty.end()
                    self._call_hook(f"on_{kind}_batch_end", out, batch, batch_idx, *extra)
                    batch_idx += 1
        self._results.dataloader_idx = None
        self._call_hook(f"on_{kind}_epoch_end")
        epoch_metrics = self._results.epoch_end(kind)
        if not self.sanity_checking:
            step = max(self.global_step - 1, 0) if self.state.fn == "fit" else self.global_step
            self._log_metrics(epoch_metrics, step=step)
        self._call_hook(f"on_{kind}_end")
        self._call_hook(f"on_{kind}_model_train", callbacks=False)
        self._results.stage = "train"
        per_dl = []
        for i in range(len(loaders)):
            suffix = f"/dataloader_idx_{i}"
            d = {}
            for k, v in epoch_metrics.items():
                if multi and not k.endswith(suffix) and "/dataloader_idx_" in k:
                    continue
                d[k] = to_float(v)
            per_dl.append(d)
        return per_dl

    def _eval_entry(self, fn, model, dataloaders, ckpt_path, verbose, datamodule):
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self.state.fn = fn
        return self._run(self._eval_impl, fn, model, dataloaders, ckpt_path, verbose, datamodule)

    def _eval_impl(self, fn, model, dataloaders, ckpt_path, verbose, datamodule):
        kind = "validation" if fn == "validate" else "test"
        if model is None and ckpt_path is None and self.lightning_module is not None and self.state.fn:
            ckpt_path = None  # use the weights in memory (Lightning would pick "best"; we keep it simple)
        self._attach(model, datamodule, fn)
        m = self.lightning_module
        if not self._has_step(m, f"{kind}_step"):
            raise ValueError(f"No `{kind}_step()` method defined to run `Trainer.{fn}`")
        setattr(self, "_val_source" if kind == "validation" else "_test_source", dataloaders)
        self._setup_stage(fn)
        if ckpt_path is not None:
            ckpt = self._load_checkpoint_file(self._resolve_ckpt_path(ckpt_path, fn))
            if ckpt is not None:
                self._restore_module_and_callbacks(ckpt)
        loaders = self._as_list(self._source("val" if kind == "validation" else "test"))
        if not loaders:
            raise ValueError(
                f"No `{'val' if kind == 'validation' else 'test'}_dataloader()` method defined and no "
                f"dataloaders passed to `Trainer.{fn}`"
            )
        limit = self.limit_val_batches if kind == "validation" else self.limit_test_batches
        limits = [
            self._num_batches(dl, limit, "limit_val_batches" if kind == "validation" else "limit_test_batches")
            for dl in loaders
        ]
        if kind == "validation":
            self.val_dataloaders, self.num_val_batches = (loaders[0] if len(loaders) == 1 else loaders), limits
        else:
            self.test_dataloaders, self.num_test_batches = (loaders[0] if len(loaders) == 1 else loaders), limits
        self.duty_cycle.start()
        self._set_flags(fn)
        out = self._eval_loop(kind, loaders, limits)
        self.duty_cycle.stop()
        self._set_flags(None)
        for lg in self.loggers:
            if hasattr(lg, "save"):
                lg.save()
        self._teardown_stage(fn)
        if verbose and self.is_global_zero:
            for i, d in enumerate(out):
                if d:
                    print(f"{fn} metrics (dataloader {i}): " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(d.items())))
        return out

    def _predict_impl(self, model, dataloaders, datamodule, ckpt_path, return_predictions):
        self._attach(model, datamodule, "predict")
        m = self.lightning_module
        self._predict_source = dataloaders
        self._setup_stage("predict")
        if ckpt_path is not None:
            ckpt = self._load_checkpoint_file(self._resolve_ckpt_path(ckpt_path, "predict"))
            if ckpt is not None:
                self._restore_module_and_callbacks(ckpt)
        loaders = self._as_list(self._source("predict"))
        if not loaders:
            raise ValueError("No `predict_dataloader()` method defined and no dataloaders passed to `Trainer.predict`")
        self.predict_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        limits = [self._num_batches(dl, self.limit_predict_batches, "limit_predict_batches") for dl in loaders]
        self.num_predict_batches = limits
        step = m.predict_step if self._has_step(m, "predict_step") else m._default_predict_step
        self._set_flags("predict")
        self.duty_cycle.start()
        self._call_hook("on_predict_model_eval", callbacks=False)
        self._call_hook("on_predict_start")
        self._call_hook("on_predict_epoch_start")
        multi = len(loaders) > 1
        results = []
        with dc.no_grad():
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
                preds = []
                extra = (dl_idx,) if multi else ()
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = self._transfer_batch(m, batch, dl_idx)
                    self._call_hook("on_predict_batch_start", batch, batch_idx, *extra)
                    prev = m.__dict__.get("_current_fx")
                    object.__setattr__(m, "_current_fx", "predict_step")
                    try:
                        out = step(batch, batch_idx, *extra)
                    finally:
                        object.__setattr__(m, "_current_fx", prev)
                    self._call_hook("on_predict_batch_end", out, batch, batch_idx, *extra)
                    if return_predictions is not False:
                        preds.append(out)
                results.append(preds)
        self._call_hook("on_predict_epoch_end")
        self._call_hook("on_predict_end")
        self.duty_cycle.stop()
        self._set_flags(None)
        self._teardown_stage("predict")
        if return_predictions is False:
            return None
        return results[0] if len(results) == 1 else results

    # ================================================================================================
    # optimizers
    # ================================================================================================
    def _configure_optimizers(self):
        m = self.lightning_module
        out = self._call_hook("configure_optimizers", callbacks=False)
        self.optimizers, self.lr_scheduler_configs = self._parse_optim_config(out)
        if m.automatic_optimization and len(self.optimizers) > 1:
            raise ValueError(
                f"`configure_optimizers` returned {len(self.optimizers)} optimizers: training with several "
                "optimizers is only supported with manual optimization (set `self.automatic_optimization = False`)"
            )

    def _parse_optim_config(self, out):
        """Every form of configure_optimizers' return value -> (optimizers, [LRSchedulerConfig])."""

        def is_opt(o):
            return hasattr(o, "step") and hasattr(o, "param_groups") and hasattr(o, "zero_grad")

        def bad(why):
            return ValueError(
                f"Unknown configuration for model optimizers ({why}). `configure_optimizers` must return: an "
                "optimizer; a list/tuple of optimizers; a tuple (list of optimizers, list of schedulers); a dict "
                "{'optimizer': opt, 'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'step'|'epoch', "
                "'frequency': n, 'monitor': name}}; or a list/tuple of such dicts"
            )

        if out is None:
            raise bad("it returned None; Lightning would train without an optimizer, dutycycle needs one")
        opts, scheds = [], []
        if is_opt(out):
            opts = [out]
        elif isinstance(out, dict):
            opts, scheds = self._parse_opt_dict(out, bad)
        elif isinstance(out, (list, tuple)) and len(out) == 2 and isinstance(out[0], (list, tuple)):
            opts = list(out[0])
            scheds = [self._sched_config(s, bad) for s in (out[1] if isinstance(out[1], (list, tuple)) else [out[1]])]
        elif isinstance(out, (list, tuple)) and out and all(isinstance(o, dict) for o in out):
            for d in out:
                o, s = self._parse_opt_dict(d, bad)
                opts += o
                scheds += s
        elif isinstance(out, (list, tuple)) and out and all(is_opt(o) for o in out):
            opts = list(out)
        else:
            raise bad(f"got {type(out).__name__}")
        for i, o in enumerate(opts):
            if not is_opt(o):
                raise bad(f"optimizer #{i} is a {type(o).__name__}, not an optimizer")
        for cfg in scheds:
            owner = getattr(cfg.scheduler, "optimizer", None)
            cfg.opt_idx = next((j for j, o in enumerate(opts) if o is owner), 0)
        return opts, scheds

    def _parse_opt_dict(self, d, bad):
        extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
        if "optimizer" not in d:
            raise bad("the dict has no 'optimizer' key")
        if extra:
            raise bad(f"unknown keys {sorted(extra)} in the dict")
        scheds = []
        if d.get("lr_scheduler") is not None:
            scheds = [self._sched_config(d["lr_scheduler"], bad, monitor=d.get("monitor"))]
        return [d["optimizer"]], scheds

    @staticmethod
    def _sched_config(s, bad, monitor=None):
        if isinstance(s, dict):
            if "scheduler" not in s:
                raise bad("the 'lr_scheduler' dict has no 'scheduler' key")
            extra = set(s) - {"scheduler", "interval", "frequency", "monitor", "name", "strict", "reduce_on_plateau"}
            if extra:
                raise bad(f"unknown keys {sorted(extra)} in the 'lr_scheduler' dict")
            interval = s.get("interval", "epoch")
            if interval not in ("step", "epoch"):
                raise ValueError(
                    f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{interval}"'
                )
            freq = s.get("frequency", 1)
            if not isinstance(freq, int) or freq < 1:
                raise ValueError(f"lr scheduler 'frequency' must be an int >= 1, got {freq!r}")
            sched = s["scheduler"]
            plateau = s.get("reduce_on_plateau", type(sched).__name__ == "ReduceLROnPlateau")
            mon = s.get("monitor", monitor)
            if plateau and mon is None:
                raise ValueError(
                    "The lr scheduler dict must include a monitor when a `ReduceLROnPlateau` scheduler is "
                    'used. For example: {"scheduler": scheduler, "monitor": "your_loss"}'
                )
            cfg = LRSchedulerConfig(sched, interval, freq, mon, s.get("name"), s.get("strict", True), plateau)
        else:
            if not hasattr(s, "step"):
                raise bad(f"scheduler is a {type(s).__name__}, which has no step()")
            plateau = type(s).__name__ == "ReduceLROnPlateau"
            if plateau and monitor is None:
                raise ValueError(
                    "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used"
                )
            cfg = LRSchedulerConfig(s, "epoch", 1, monitor, None, True, plateau)
        return cfg

    # ================================================================================================
    # logging
    # ================================================================================================
    def _log_metrics(self, metrics, step):
        """Hand metrics to the loggers. # note: sync point: tensors become floats only here."""
        if not metrics:
            return
        scalars = {k: to_float(v) for k, v in metrics.items()}
        self.logged_metrics.update(scalars)
        if not self.loggers:
            return
        scalars.setdefault("epoch", self.current_epoch)
        for lg in self.loggers:
            lg.log_metrics(scalars, step=step)

    # ================================================================================================
    # checkpoints
    # ================================================================================================
    def _get_rng_states(self):
        return {
            "dutycycle": list(dc.get_rng_state()),
            "numpy": list(np.random.get_state()),
            "python": random.getstate(),
        }

    @staticmethod
    def _set_rng_states(states):
        if "dutycycle" in states:
            dc.set_rng_state(tuple(states["dutycycle"]))
        if "numpy" in states:
            np.random.set_state(tuple(states["numpy"]))
        if "python" in states:
            py = states["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))

    def _metric_state(self):
        return {
            "results": self._results.state_dict("train"),
            "callback_metrics": dict(self.callback_metrics),
            "logged_metrics": dict(self.logged_metrics),
        }

    def _loop_state(self):
        loader = self.train_dataloader
        loader_state = None
        if loader is not None and hasattr(loader, "state_dict") and self._next_pos[1] > 0:
            loader_state = loader.state_dict()
        elapsed = self._time_offset + (perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)
        metrics = self._cut_metrics if self._cut_metrics is not None else self._metric_state()
        return {
            "fit_loop": {
                "current_epoch": self.current_epoch,
                "global_step": self.global_step,
                "next_epoch": self._next_pos[0],
                "next_batch": self._next_pos[1],
                "total_batch_idx": self.fit_loop.epoch_loop.total_batch_idx,
                "time_elapsed": elapsed,
                "train_dataloader": loader_state,
                "epoch_rng": self._epoch_rng,
                # the running epoch's self.log accumulators (only mid-epoch: a new epoch starts empty)
                "results": metrics["results"] if self._next_pos[1] > 0 else None,
                "callback_metrics": metrics["callback_metrics"],
                "logged_metrics": metrics["logged_metrics"],
            }
        }

    def _dump_checkpoint(self, weights_only=False):
        m = self.lightning_module
        ckpt = {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "dutycycle_version": dc.__version__,
            "state_dict": m.state_dict(),
            "loops": self._loop_state(),
        }
        if not weights_only:
            ckpt["callbacks"] = {}
            for cb in self.callbacks:
                sd = cb.state_dict() if hasattr(cb, "state_dict") else {}
                if sd:
                    key = getattr(cb, "state_key", type(cb).__qualname__)
                    ckpt["callbacks"][key] = sd
            ckpt["optimizer_states"] = [o.state_dict() for o in self.optimizers]
            ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in self.lr_scheduler_configs]
            ckpt["rng_states"] = self._get_rng_states()
        hp = m.__dict__.get("_hparams")
        if hp:
            ckpt["hyper_parameters"] = _jsonable(dict(hp))
        if self.datamodule is not None:
            dsd = self.datamodule.state_dict()
            if dsd:
                ckpt["datamodule"] = {type(self.datamodule).__qualname__: dsd}
        if not weights_only:
            for cb in self._active_callbacks():
                if hasattr(cb, "on_save_checkpoint"):
                    cb.on_save_checkpoint(self, m, ckpt)
        self._call_hook("on_save_checkpoint", ckpt, callbacks=False)
        return ckpt

    def save_checkpoint(self, filepath, weights_only=False, storage_options=None):
        """Write the checkpoint to filepath (one safetensors file, durable). Timed as checkpoint stall."""
        if self.lightning_module is None:
            raise RuntimeError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer. "
                "Did you call `Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,...}`?"
            )
        with self.duty_cycle.track("checkpoint_stall"):
            ckpt = self._dump_checkpoint(weights_only)
            checkpoint_io.save_checkpoint(filepath, ckpt)

    def _resolve_ckpt_path(self, ckpt_path, fn):
        if ckpt_path in ("last", "best"):
            if ckpt_path == "best":
                cb = self.checkpoint_callback
                best = getattr(cb, "best_model_path", None) if cb is not None else None
                if not best:
                    raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` has no best checkpoint')
                return best
            path = self._find_last_checkpoint()
            if path is None:
                warnings.warn(
                    f'.{fn}(ckpt_path="last") is set, but there is no last checkpoint available. '
                    "No checkpoint will be loaded.",
                    UserWarning,
                    stacklevel=4,
                )
            return path
        path = os.fspath(ckpt_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: ckpt_path='{path}'")
        return path

    def _find_last_checkpoint(self):
        dirs = []
        for cb in self.checkpoint_callbacks:
            last = getattr(cb, "last_model_path", None)
            if last and os.path.isfile(last):
                return last
            d = getattr(cb, "dirpath", None)
            if d:
                dirs.append(os.fspath(d))
        dirs.append(os.path.join(self.log_dir, "checkpoints"))
        dirs += sorted(glob.glob(os.path.join(self.default_root_dir, "*", "version_*", "checkpoints")))
        dirs.append(os.path.join(self.default_root_dir, "checkpoints"))
        for d in dirs:
            cands = [p for p in glob.glob(os.path.join(d, "last*")) if os.path.isfile(p) and not p.endswith(".tmp")]
            if cands:
                return max(cands, key=os.path.getmtime)
        return None

    def _load_checkpoint_file(self, path):
        if path is None:
            return None
        self.ckpt_path = path
        return checkpoint_io.load_checkpoint(path)

    def _load_for_resume(self, ckpt_path):
        if ckpt_path is None:
            return None
        return self._load_checkpoint_file(self._resolve_ckpt_path(ckpt_path, "fit"))

    def _restore_module_and_callbacks(self, ckpt):
        m = self.lightning_module
        if "state_dict" not in ckpt:
            raise KeyError(f"checkpoint '{self.ckpt_path}' has no 'state_dict' (is it a dutycycle Trainer checkpoint?)")
        self._call_hook("on_load_checkpoint", ckpt, callbacks=False)
        m.load_state_dict(ckpt["state_dict"])
        dm = ckpt.get("datamodule") or {}
        if self.datamodule is not None and type(self.datamodule).__qualname__ in dm:
            self.datamodule.load_state_dict(dm[type(self.datamodule).__qualname__])
        cb_states = ckpt.get("callbacks") or {}
        for cb in self.callbacks:
            if hasattr(cb, "on_load_checkpoint"):
                cb.on_load_checkpoint(self, m, ckpt)
            key = getattr(cb, "state_key", type(cb).__qualname__)
            if key in cb_states and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_states[key])

    def _restore_training_state(self, ckpt):
        opt_states = ckpt.get("optimizer_states")
        if opt_states is None:
            raise KeyError(
                f"checkpoint '{self.ckpt_path}' was saved with weights_only=True: it has no optimizer "
                "states, so training cannot resume from it"
            )
        if len(opt_states) != len(self.optimizers):
            raise ValueError(
                f"checkpoint '{self.ckpt_path}' has {len(opt_states)} optimizer state(s), the model "
                f"configures {len(self.optimizers)}"
            )
        for o, s in zip(self.optimizers, opt_states):
            o.load_state_dict(s)
        sched_states = ckpt.get("lr_schedulers") or []
        for cfg, s in zip(self.lr_scheduler_configs, sched_states):
            cfg.scheduler.load_state_dict(s)
        loop = (ckpt.get("loops") or {}).get("fit_loop", {})
        self.global_step = int(loop.get("global_step", ckpt.get("global_step", 0)))
        self.current_epoch = int(loop.get("current_epoch", ckpt.get("epoch", 0)))
        self._next_pos = (int(loop.get("next_epoch", self.current_epoch)), int(loop.get("next_batch", 0)))
        self.fit_loop.epoch_loop.total_batch_idx = int(loop.get("total_batch_idx", 0))
        self._time_offset = float(loop.get("time_elapsed", 0.0))
        self._resume = {
            "train_dataloader": loop.get("train_dataloader"),
            "epoch_rng": loop.get("epoch_rng"),
            "rng_states": ckpt.get("rng_states"),
            "results": loop.get("results"),
        }
        if loop.get("callback_metrics") is not None:
            self.callback_metrics.clear()  # the dict the Results share: update it in place
            for k, v in loop["callback_metrics"].items():
                self.callback_metrics[k] = v.to(self.root_device) if isinstance(v, dc.Tensor) else v
        if loop.get("logged_metrics") is not None:
            self.logged_metrics = dict(loop["logged_metrics"])


def _jsonable(obj):
    """hparams as checkpoint-storable values (others become their repr, as Lightning's yaml does)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_jsonable(v) for v in obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (dc.Tensor, np.ndarray)):
        return obj
    return repr(obj)
