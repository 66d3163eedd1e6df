"""The Trainer: Lightning's Trainer, same arguments, same hooks in the same order.

This file is the loop, the one hook dispatcher (`_call_hook`) and the one exception funnel
(`_run`). Each concern the loop calls once lives next to it: config.py (arguments, checked;
configure_optimizers' return value), resume.py (the loop position a resumed fit starts from),
checkpoint_io.py (what a checkpoint holds and the file format), dataloaders.py (which loader,
how many batches), evaluation.py (the no-grad loops: sanity check, validation, test, predict) and
dutycycle.strategies (backward, optimizer step and checkpoint writes go through trainer.strategy).

One step of fit, top to bottom (the real code is `_fit_loop` / `_train_step` below):

    fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
      strategy.setup_environment()                         # ddp & co: launch check / self-launch, process group
      configure_callbacks, prepare_data, setup("fit"), configure_model
      restore model + callbacks from ckpt_path             (on_load_checkpoint)
      configure_optimizers, strategy.connect_optimizers; restore optimizers, schedulers, loop position
      on_fit_start                                         # the default ModelSummary callback prints the table
      sanity check: num_sanity_val_steps validation batches
      on_train_start
      for epoch in range(start_epoch, max_epochs):
          on_train_epoch_start
          for batch_idx, batch in train_dataloader:        # duty: data_wait (blocked in next())
              on_train_batch_start                         #   returning -1 ends the epoch
              batch -> device                              # duty: data_wait (host -> device copy)
              if last micro-batch of the accumulation window:
                  optimizer_step(closure)                  # duty: compute; -> strategy.optimizer_step
                    closure: training_step, [on_before_zero_grad, zero_grad], on_before_backward,
                             strategy.backward(loss / accumulate_grad_batches) (runs the module's
                             backward hook), on_after_backward,
                             on_before_optimizer_step, configure_gradient_clipping
                  global_step += 1; lr schedulers with interval="step" (not ReduceLROnPlateau)
                  last batch of the epoch: lr schedulers with interval="epoch" (not ReduceLROnPlateau)
              else:
                  closure without the optimizer step       # duty: compute; in strategy.block_backward_sync()
              on_train_batch_end                           # checkpoints here: duty checkpoint_stall
              every log_every_n_steps: write step metrics + duty split to the loggers  # note: sync point
              validation when this batch is a val-check batch (val_check_interval, check_val_every_n_epoch)
              ReduceLROnPlateau with interval="step", stepped with its monitored metric
              stop if max_steps / max_time / should_stop (and min_epochs / min_steps are met)
              several ranks: should_stop / max_time agreed over ranks (one rank's stop stops all)
          on_train_epoch_end (callbacks, module, then monitoring callbacks); epoch metrics to loggers
          ReduceLROnPlateau with interval="epoch" (after validation), when the epoch ran to its end
      on_train_end, on_fit_end, teardown("fit"); the duty-cycle table is printed (several ranks:
      gathered, mean and max over ranks; loggers and checkpoints are written by rank 0 only)

Steps get the arguments their signature takes (`_call_step`: `training_step(self, batch)` gets no
batch_idx). With Trainer(profiler="simple"), every hook `_call_hook` dispatches, each backward and
optimizer step, each dataloader fetch, epoch and batch are timed (profiler.py); the report is
printed when the entry point finishes. Hooks are called from one place (`_call_hook`: callbacks
first, then the LightningModule, as Lightning does), and every exception raised inside
fit/validate/test/predict funnels through `_run` (on_exception for callbacks and module, loggers
finalised as "failed", then re-raised).

Resume is exact: the checkpoint holds model, optimizers, schedulers, callback states, the loop
position (epoch, batch inside the epoch, global step), the RNG states (dutycycle, numpy, random),
the train DataLoader's state_dict, the running epoch's self.log accumulators and the callback /
logged metrics; the RNG states are put back after the resumed epoch's iterator exists, so the run
continues bit for bit as if it had not stopped (epoch-end metrics included). As in Lightning, a
resumed fit skips the sanity check.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings

import dutycycle as dc

from ..strategies import STRATEGIES
from . import checkpoint_io, evaluation
from . import dataloaders as data
from .config import (
    TRAINER_ATTRIBUTES,
    LRSchedulerConfig,
    TrainerConfig,
    _is_instance_of,
    _warn_once,
    build_callbacks,
    build_loggers,
    parse_optimizer_config,
    reorder_callbacks,
    training_loss,
)
from .config import parse_max_time as _parse_max_time  # noqa: F401  (its old home; tests import it here)
from .duty import DutyCycle
from .module import LightningDataModule, LightningModule, LightningOptimizer
from .profiler import PassThroughProfiler, build_profiler
from .results import Results, to_float
from .resume import LoopPosition, seed_everything


def _positional_capacity(fn):
    """How many of (batch, batch_idx, dataloader_idx) a step method takes: its positional
    parameters, or all three with *args (Lightning's is_param_in_hook_signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 3
    n = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return 3
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


__all__ = ["LRSchedulerConfig", "STRATEGIES", "Trainer", "TrainerState", "seed_everything"]


def _noop():
    pass


def _is_noop(fn):
    """True for a function whose body is just `pass` (a base-class hook nobody overrode)."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_code == _noop.__code__.co_code and code.co_consts == _noop.__code__.co_consts


_NOOP_MODULE_HOOKS = frozenset(k for k, v in vars(LightningModule).items() if _is_noop(v))


class TrainerState:
    def __init__(self):
        self.fn = None  # "fit" | "validate" | "test" | "predict"
        self.stage = None  # "train" | "sanity_check" | "validate" | "test" | "predict"
        self.status = "initializing"  # "running" | "finished" | "interrupted"

    def __repr__(self):
        return f"TrainerState(fn={self.fn!r}, stage={self.stage!r}, status={self.status!r})"


class _EpochLoop:
    """Lightning's trainer.fit_loop.epoch_loop: batch_idx is the batch being run in the epoch."""

    def __init__(self):
        self.batch_idx = 0
        self.total_batch_idx = 0


class _FitLoop:
    def __init__(self):
        self.epoch_loop = _EpochLoop()


class Trainer:
    """Lightning's Trainer, with Lightning's arguments (checked by TrainerConfig in config.py; the
    resolved values are in trainer.config). strategy: "auto", "single_device" or a
    dutycycle.strategies.Strategy instance (trainer.strategy is always the instance)."""

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
        overfit_batches=0.0,
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
        # ---- arguments: TrainerConfig parses and checks them; the loop reads them as attributes -------
        args = {k: v for k, v in locals().items() if k not in ("self", "unknown", "__class__")}
        self.config = TrainerConfig.from_kwargs({**args, **unknown})
        for name in TRAINER_ATTRIBUTES:
            setattr(self, name, getattr(self.config, name))
        self._fast_dev_run = self.config.fast_dev_run_batches
        self._default_root_dir = self.config.default_root_dir
        from .precision import plugin_for

        self.precision_plugin = plugin_for(self.precision, self.accelerator)
        self.callbacks = build_callbacks(
            callbacks, self.enable_checkpointing, self.enable_progress_bar, self.enable_model_summary and not barebones
        )
        self.loggers = build_loggers(logger, self._fast_dev_run, self.default_root_dir)
        self.profiler = build_profiler(profiler)  # profiler=None: PassThroughProfiler, nothing is wrapped
        self._profiling = not isinstance(self.profiler, PassThroughProfiler)

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
        self.num_val_batches, self.num_test_batches, self.num_predict_batches = [], [], []
        self.num_sanity_val_batches = []
        self.val_check_batch = float("inf")
        self.train_dataloader = self.val_dataloaders = self.test_dataloaders = self.predict_dataloaders = None
        self.ckpt_path = None
        self.duty_cycle = DutyCycle()
        self._results = Results(self)
        self.callback_metrics = self._results.callback_metrics
        self.logged_metrics = {}
        self.position = LoopPosition()  # where fit is, and where a resumed fit starts (resume.py)
        self._in_exception = False
        self._stepped = False
        self._hook_cache = {}

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

    # where and who: the strategy's answer
    root_device = property(lambda self: self.strategy.root_device)
    is_global_zero = property(lambda self: self.strategy.is_global_zero)
    global_rank = property(lambda self: self.strategy.global_rank)
    local_rank = property(lambda self: self.strategy.local_rank)
    node_rank = property(lambda self: self.strategy.node_rank)
    world_size = property(lambda self: self.strategy.world_size)

    device_ids = property(lambda self: [0])
    model = property(lambda self: self.lightning_module)
    interrupted = property(lambda self: self.state.status == "interrupted")
    lr_scheduler_configs_list = property(lambda self: self.lr_scheduler_configs)

    @property
    def checkpoint_callbacks(self):
        return [c for c in self.callbacks if _is_instance_of(c, ("ModelCheckpoint", "Checkpoint"))]

    @property
    def early_stopping_callbacks(self):
        return [c for c in self.callbacks if _is_instance_of(c, ("EarlyStopping",))]

    checkpoint_callback = property(lambda self: next(iter(self.checkpoint_callbacks), None))
    early_stopping_callback = property(lambda self: next(iter(self.early_stopping_callbacks), None))

    @property
    def progress_bar_callback(self):
        for c in self.callbacks:
            if "ProgressBar" in type(c).__name__ or _is_instance_of(c, ("ProgressBar",)):
                return c
        return None

    @property
    def enable_validation(self):
        m = self.lightning_module
        return (
            m is not None
            and data.has_step(m, "validation_step")
            and self.limit_val_batches != 0
            and data.val_source_exists(self)
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
            data.setup_train_data(self)
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
                    cb_fns.append(self._profiled(f"[Callback]{cb.state_key}.{name}", fn))
        mod_fn = None
        m = self.lightning_module
        if module and m is not None:
            fn = getattr(m, name, None)
            if fn is not None and not (
                name in _NOOP_MODULE_HOOKS and getattr(type(m), name, None) is getattr(LightningModule, name)
            ):
                mod_fn = self._profiled(f"[LightningModule]{type(m).__name__}.{name}", fn)
        return cb_fns, mod_fn

    def _profiled(self, action, fn):
        """fn timed as `action` by the profiler; fn itself when no profiler is on (no cost)."""
        if not self._profiling:
            return fn
        profile = self.profiler.profile

        def timed(*args, **kwargs):
            with profile(action):
                return fn(*args, **kwargs)

        return timed

    def _timed(self, action, fn, *args, **kwargs):
        """fn(*args, **kwargs), timed as `action` when a profiler is on."""
        if not self._profiling:
            return fn(*args, **kwargs)
        with self.profiler.profile(action):
            return fn(*args, **kwargs)

    def _call_step(self, name, batch, batch_idx, *extra):
        """training_step / validation_step / test_step / predict_step with the arguments its
        signature takes: Lightning passes batch_idx (and dataloader_idx) only to a step that
        accepts them (`def training_step(self, batch)` is fine)."""
        m = self.lightning_module
        key = ("step-args", name, id(m))
        takes = self._hook_cache.get(key)
        if takes is None:
            takes = self._hook_cache[key] = _positional_capacity(getattr(m, name, None))
        with self.precision_plugin.forward_context():  # bf16-mixed / 16-mixed: autocast
            return self._call_hook(name, *(batch, batch_idx, *extra)[:takes], callbacks=False)

    def _run(self, fn, *args):
        """Run a trainer entry point; every exception comes through here (on_exception, loggers
        finalised as "failed", teardown, re-raise)."""
        self.state.status = "running"
        try:
            self.strategy.setup_environment()  # multi-process: launch check / self-launch, process group
            self.profiler.setup(stage=self.state.fn, local_rank=self.local_rank, log_dir=None)
            out = fn(*args)
            self.state.status = "finished"
            self._profiler_report()
            return out
        except BaseException as exc:
            self.state.status = "interrupted"
            if self._in_exception:
                raise
            self._in_exception = True
            try:
                self._call_hook("on_exception", exc)
                for lg in self._rank_zero_loggers():
                    if hasattr(lg, "finalize"):
                        lg.finalize("failed")
            except Exception as hook_exc:  # a failing handler must not hide the real error
                warnings.warn(f"on_exception handler raised {type(hook_exc).__name__}: {hook_exc}")
            finally:
                self._in_exception = False
                self.duty_cycle.stop()
                self._set_flags(None)
            raise

    def _profiler_report(self):
        """The profiler's report for the entry point that just finished, on rank zero only."""
        if not self._profiling:
            return
        if self.is_global_zero:
            self.profiler._log_dir = self.log_dir
            self.profiler.describe()
        self.profiler.teardown(stage=self.state.fn)

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
        return self._run(evaluation.predict_impl, self, model, dataloaders, datamodule, ckpt_path, return_predictions)

    def _eval_entry(self, fn, model, dataloaders, ckpt_path, verbose, datamodule):
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self.state.fn = fn
        return self._run(evaluation.eval_impl, self, fn, model, dataloaders, ckpt_path, verbose, datamodule)

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
            self.callbacks = reorder_callbacks([c for c in self.callbacks if type(c) not in types] + extra)
        self.duty_cycle._sync_fn = dc.cuda.synchronize if self.root_device.type == "cuda" else None

    def _setup_stage(self, stage):
        """prepare_data, setup(stage), configure_model; the strategy puts the model on its device."""
        if self.datamodule is not None:
            self.datamodule.prepare_data()
        self._call_hook("prepare_data", callbacks=False)
        self._agree_logger_versions()
        for lg in self._rank_zero_loggers():  # create the experiment (directories) before callbacks resolve paths
            getattr(lg, "experiment", None)
        self._call_hook("setup", stage=stage, datamodule=True)
        self._call_hook("configure_model", callbacks=False)
        self.precision_plugin.convert_module(self.lightning_module)  # bf16-true/16-true/64-true: in place
        self.strategy.setup(self)  # note: host -> device copy of the parameters (on a GPU)

    def _rank_zero_loggers(self):
        """The loggers that write: all of them on global rank 0, none on the other ranks."""
        return self.loggers if self.is_global_zero else []

    def _agree_logger_versions(self):
        """Several ranks: rank 0 picks each file logger's version (version_N), the others take it,
        so ModelCheckpoint resolves the same directory on every rank. # note: one broadcast."""
        if self.world_size <= 1 or not self.loggers:
            return
        mine = [getattr(lg, "version", None) if hasattr(lg, "_version") else None for lg in self.loggers]
        agreed = self.strategy.broadcast(mine, src=0)
        for lg, v in zip(self.loggers, agreed):
            if v is not None and hasattr(lg, "_version"):
                lg._version = v

    def _teardown_stage(self, stage):
        if stage == "fit":  # a background save still writing finishes (and reports) inside fit
            with self.duty_cycle.track("checkpoint_stall"):
                self.strategy.checkpoint_wait()
        self._call_hook("teardown", stage=stage, datamodule=True)
        self.strategy.teardown()

    def _log_hyperparams(self):
        m = self.lightning_module
        hp = dict(m.hparams) if m.__dict__.get("_log_hyperparams", True) else {}
        if self.datamodule is not None and "_hparams" in self.datamodule.__dict__:
            hp.update(self.datamodule.hparams)
        for lg in self._rank_zero_loggers():
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams(hp)

    # ================================================================================================
    # fit
    # ================================================================================================
    def _fit_impl(self, model, train_dataloaders, val_dataloaders, datamodule, ckpt_path):
        self.duty_cycle.start()
        self.position.reset()
        self.position.start_clock()
        if ckpt_path not in (None, "last", "best", "hpc", "registry") and not os.path.exists(os.fspath(ckpt_path)):
            raise FileNotFoundError(f"Checkpoint file not found: ckpt_path='{os.fspath(ckpt_path)}'")
        self._attach(model, datamodule, "fit")
        self._train_source, self._val_source = train_dataloaders, val_dataloaders
        self.train_dataloader = self.val_dataloaders = None
        self.should_stop = False
        self.current_epoch = self.global_step = 0
        m = self.lightning_module

        self._setup_stage("fit")
        # ---- resume: weights and callback states, then optimizers and the loop position ---------------
        ckpt = self._load_checkpoint(ckpt_path, "fit")
        if ckpt is not None:
            self._restore_module_and_callbacks(ckpt)
        self._configure_optimizers()
        self.strategy.connect_optimizers(self.optimizers)
        if ckpt is not None:
            checkpoint_io.restore_training_state(self, ckpt)  # -> self.position knows where to start
        self._log_hyperparams()
        self._call_hook("on_fit_start")

        # Lightning skips the sanity check on resume: it would disturb the restored state
        if self.num_sanity_val_steps != 0 and self.enable_validation and not self.position.skip_sanity_check:
            evaluation.run_sanity_check(self)

        if self.train_dataloader is None:
            data.setup_train_data(self)
        m.train()
        with dc.enable_grad():
            self._fit_loop()

        self._call_hook("on_fit_end")
        for lg in self._rank_zero_loggers():
            if hasattr(lg, "save"):
                lg.save()
            if hasattr(lg, "finalize"):
                lg.finalize("success")
        self._teardown_stage("fit")
        self.duty_cycle.sync()  # note: sync point (CUDA): the table includes the queued device work
        self.duty_cycle.stop()
        self._set_flags(None)
        title = "duty cycle (fit)"
        if self.world_size > 1:  # every rank's split, gathered: the table shows mean and max over ranks
            self.duty_cycle.gather_ranks(self.strategy)
            title = f"duty cycle (fit, {self.world_size} ranks)"
        if self.is_global_zero and not self.barebones:
            print(self.duty_cycle.table(title))

    def _fit_loop(self):
        """Epochs. See the module docstring for the whole loop in pseudo-code."""
        self._set_flags("train")
        self._call_hook("on_train_start")
        start_epoch, skip = self.position.start(self.current_epoch)
        self.current_epoch = start_epoch
        while not self._fit_done():
            self._timed("run_training_epoch", self._train_epoch, skip)
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
        return self.position.elapsed() >= self.max_time.total_seconds()

    def _fit_done(self, epoch_end=False):
        if self._max_steps_reached():
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        if self.num_training_batches == 0 or self.limit_train_batches == 0:
            return True
        stop = self.should_stop or self._time_up()
        if self.world_size > 1:  # one rank's stop (EarlyStopping, max_time) stops all: same collectives after
            stop = self.should_stop = self.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self._can_stop_early():
            return True
        if self.should_stop and not self._can_stop_early():
            _warn_once(
                ("min", id(self)),
                f"Trainer was signaled to stop but the required `min_epochs="
                f"{self.min_epochs}` or `min_steps={self.min_steps}` has not been met; training continues",
            )
        return False

    def _epoch_should_stop(self):
        """Checked after every batch: end the epoch (and fit) now? With several ranks, one rank's
        should_stop / max_time stops every rank (else the others would wait in the next
        all-reduce forever). # note: one tiny all-reduce per batch when world_size > 1."""
        if self._max_steps_reached():
            return True
        stop = self.should_stop or self._time_up()
        if self.world_size > 1:
            stop = self.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.should_stop = True
        return self.should_stop and self._can_stop_early()

    def _train_epoch(self, skip):
        """One epoch of training batches, then validation (if due) and the epoch-end hooks."""
        m = self.lightning_module
        epoch = self.current_epoch
        loader = self.train_dataloader
        duty = self.duty_cycle
        pos = self.position
        restored = pos.begin_epoch(skip)  # resumed mid-epoch: the saved state; else None
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self._results.reset_stage("train")  # before the hook: what on_train_epoch_start logs counts
        self._call_hook("on_train_epoch_start")
        if restored is not None and restored.get("results") is not None:
            # mid-epoch resume: the epoch's self.log accumulators as they were at the checkpoint
            # (they include what on_train_epoch_start logged then, so its second call is replaced)
            self._results.load_state_dict("train", restored["results"], self.root_device)

        # ---- the epoch's batch iterator (a resumed epoch continues after its first `skip` batches) ----
        it = pos.epoch_iterator(loader, skip, restored)
        batch_idx = skip
        limit = self.num_training_batches
        exhausted = False

        while batch_idx < limit:
            # ---- fetch: time blocked waiting for the loader is data wait --------------------------------
            duty.begin("data_wait")
            try:
                batch = self._timed("[_TrainingEpochLoop].train_dataloader_next", next, it)
            except StopIteration:
                duty.end()
                exhausted = True
                break
            duty.end()
            self.fit_loop.epoch_loop.batch_idx = batch_idx
            stop_epoch = self._timed("run_training_batch", self._train_step, m, batch, batch_idx)
            is_last = pos.batches_done >= limit
            duty.step_end()
            if stop_epoch:
                break

            # ---- validation inside / at the end of the epoch ------------------------------------------
            if self._should_check_val(batch_idx, is_last):
                evaluation.run_validation(self)
                self._set_flags("train")
                m.train()
            if self._stepped:  # ReduceLROnPlateau on "step": after validation, so it sees val metrics
                self._update_lr_schedulers("step", plateau=True)
            if self._epoch_should_stop():
                break
            batch_idx += 1
        if exhausted:
            # the loader ran out before `limit`: that was the end of the epoch
            pos.epoch_exhausted(epoch)
            self._update_lr_schedulers("epoch")  # the last batch did not know it was the last
            if limit == float("inf") and self._should_check_val_epoch():
                evaluation.run_validation(self)
                self._set_flags("train")
                m.train()
        epoch_complete = exhausted or pos.batches_done >= limit
        if not epoch_complete:
            pos.cut_epoch(self)  # stopped mid-epoch (max_steps, max_time, should_stop)

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
        self.position.batch_done(self.current_epoch, batch_idx, self.num_training_batches)
        self.fit_loop.epoch_loop.total_batch_idx += 1

        self._call_hook("on_train_batch_end", outputs, batch, batch_idx)
        self.strategy.checkpoint_poll()  # a background save that finished: commit bookkeeping, errors

        # ---- write step metrics every log_every_n_steps (Lightning: step counts stepped batches) -----------
        if self._stepped and (self.global_step % self.log_every_n_steps == 0 or self.should_stop):
            metrics = self._results.step_log_metrics("train")
            metrics.update(self.duty_cycle.interval_metrics())
            if self.precision_plugin.scaler is not None:  # 16-mixed: the loss scaler's state
                metrics["precision/loss_scale"] = self.precision_plugin.scaler.get_scale()
                metrics["precision/skipped_steps"] = float(self.precision_plugin.skipped_steps)
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
            out = self._call_step("training_step", batch, batch_idx)
            loss = training_loss(out)
            result["out"], result["loss"] = out, loss
            if zero_grad_now:
                self._call_hook("on_before_zero_grad", opt)
                self._call_hook("optimizer_zero_grad", self.current_epoch, batch_idx, opt, callbacks=False)
            if loss is not None:
                self._backward(loss / acc if acc > 1 else loss)
            if stepping:
                self._call_hook("on_before_optimizer_step", opt)
                if self.gradient_clip_val:
                    self.precision_plugin.unscale_gradients(opt)  # 16-mixed: clip in unscaled units
                self._call_hook(
                    "configure_gradient_clipping",
                    opt,
                    self.gradient_clip_val,
                    self.gradient_clip_algorithm,
                    callbacks=False,
                )
            return loss

        if stepping:
            # the module's hook gets a LightningOptimizer: its step() goes through the strategy
            lopt = LightningOptimizer(opt, self, automatic=True)
            self._call_hook("optimizer_step", self.current_epoch, batch_idx, lopt, closure, callbacks=False)
            self.global_step += 1
            self._update_lr_schedulers("step")
        else:
            with self.strategy.block_backward_sync():  # accumulation: only the stepping micro-batch communicates
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
        out = self._call_step("training_step", batch, batch_idx)
        self._stepped = self.global_step > steps
        if isinstance(out, dc.Tensor):
            return {"loss": out.detach()}
        return out

    def _optimizer_step(self, optimizer, closure=None, automatic=False, **kwargs):
        """Every LightningOptimizer.step() comes here and goes on to strategy.optimizer_step.
        Automatic optimization: the closure calls on_before_optimizer_step (after backward) and the
        loop counts the step. Manual: the hook first, then the step, counted here; the lr schedulers
        are the user's to step (Lightning steps none in manual optimization)."""
        def step_fn(opt, clo):
            return self._timed(
                f"[Strategy]{type(self.strategy).__name__}.optimizer_step",
                self.strategy.optimizer_step, opt, clo, model=self.lightning_module, **kwargs,
            )  # fmt: skip

        if automatic:
            return self.precision_plugin.optimizer_step(optimizer, closure, step_fn)
        self._call_hook("on_before_optimizer_step", optimizer)
        out = self.precision_plugin.optimizer_step(optimizer, closure, step_fn)
        self.global_step += 1
        return out

    def _backward(self, loss, *args, **kwargs):
        """Every backward (automatic, and manual_backward): the strategy runs the module's backward hook."""
        self._call_hook("on_before_backward", loss)
        action = f"[Strategy]{type(self.strategy).__name__}.backward"
        loss = self.precision_plugin.pre_backward(loss)  # 16-mixed: the scaled loss
        self._timed(action, self.strategy.backward, loss, *args, **kwargs)
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
        return self.precision_plugin.convert_input(batch)  # *-true: floating inputs in the model's dtype

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
    # optimizers
    # ================================================================================================
    def _configure_optimizers(self):
        m = self.lightning_module
        out = self._call_hook("configure_optimizers", callbacks=False)
        self.optimizers, self.lr_scheduler_configs = parse_optimizer_config(out)
        if m.automatic_optimization and len(self.optimizers) > 1:
            raise ValueError(
                f"`configure_optimizers` returned {len(self.optimizers)} optimizers: training with several "
                "optimizers is only supported with manual optimization (set `self.automatic_optimization = False`)"
            )

    # ================================================================================================
    # logging
    # ================================================================================================
    def _log_metrics(self, metrics, step):
        """Hand metrics to the loggers. # note: sync point: tensors become floats only here."""
        if not metrics:
            return
        scalars = {k: to_float(v) for k, v in metrics.items()}
        self.logged_metrics.update(scalars)
        if not self._rank_zero_loggers():
            return
        scalars.setdefault("epoch", self.current_epoch)
        for lg in self._rank_zero_loggers():
            lg.log_metrics(scalars, step=step)

    # ================================================================================================
    # checkpoints
    # ================================================================================================
    def save_checkpoint(self, filepath, weights_only=False, storage_options=None, *, async_save=False, link=None):
        """Write the checkpoint to checkpoint directory filepath through the strategy (safetensors
        shard + manifest, committed atomically; see dutycycle.checkpoint). async_save=True returns
        after the snapshot and the write goes on in a C thread (ModelCheckpoint's default); link:
        a "last" path switched to this checkpoint once it committed. Timed as checkpoint stall."""
        m = self.lightning_module
        if m is None:
            raise RuntimeError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer. "
                "Did you call `Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,...}`?"
            )
        with self.duty_cycle.track("checkpoint_stall"):
            ckpt = checkpoint_io.dump_checkpoint(self, weights_only)
            if not weights_only:
                for cb in self._active_callbacks():
                    if hasattr(cb, "on_save_checkpoint"):
                        cb.on_save_checkpoint(self, m, ckpt)
            self._call_hook("on_save_checkpoint", ckpt, callbacks=False)
            info = {
                "step": int(self.global_step),
                "epoch": int(self.current_epoch),
                "world_size": int(self.world_size),
                "strategy": _strategy_name(self.strategy),
            }
            self.strategy._ckpt_save_options = {"async_save": async_save, "link": link, "info": info}
            try:
                stats = self.strategy.save_checkpoint(ckpt, filepath, storage_options=storage_options)
            finally:
                self.strategy._ckpt_save_options = None
        self.strategy.barrier("Trainer.save_checkpoint")
        return stats

    def _load_checkpoint(self, ckpt_path, fn):
        """ckpt_path of an entry point ("last"/"best" looked up) read through the strategy, or None."""
        if ckpt_path is None:
            return None
        path = checkpoint_io.resolve_ckpt_path(self, ckpt_path, fn)
        if path is None:
            return None
        self.ckpt_path = path
        return self.strategy.load_checkpoint(path)

    def _restore_module_and_callbacks(self, ckpt):
        """The module's on_load_checkpoint, the weights (and datamodule state), then each callback's
        on_load_checkpoint and state_dict, in Lightning's order."""
        m = self.lightning_module
        checkpoint_io.check_trainer_checkpoint(ckpt, self.ckpt_path)
        self._call_hook("on_load_checkpoint", ckpt, callbacks=False)
        checkpoint_io.restore_module(self, ckpt)
        cb_states = ckpt.get("callbacks") or {}
        for cb in self.callbacks:
            if hasattr(cb, "on_load_checkpoint"):
                cb.on_load_checkpoint(self, m, ckpt)
            key = checkpoint_io.callback_state_key(cb)
            if key in cb_states and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_states[key])


def _strategy_name(strategy):
    """The manifest's "strategy": the registered name ("ddp", "zero2", ...) or the class name."""
    name = getattr(strategy, "strategy_name", None)
    if isinstance(name, str):
        return name
    n = type(strategy).__name__
    return {"SingleDeviceStrategy": "single", "DDPStrategy": "ddp"}.get(n, n)
