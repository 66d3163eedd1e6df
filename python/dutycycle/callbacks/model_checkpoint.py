"""ModelCheckpoint: save checkpoints periodically, keep the best k by a monitored metric, and last.ckpt.

Same arguments, file names and bookkeeping as Lightning's ``ModelCheckpoint``:

* When: every ``every_n_train_steps`` optimizer steps (at ``on_train_batch_end``), every
  ``train_time_interval`` of wall time, or every ``every_n_epochs`` epochs (default 1, when none of
  the three is given) at the end of the training epoch — or after validation when validation
  does not run exactly once at each epoch's end (``save_on_train_epoch_end`` overrides).
* Names: ``filename`` is a format string over the monitored metrics plus ``epoch`` and ``step``:
  ``"{epoch}-{step}-{val_loss:.3f}"`` -> ``epoch=3-step=120-val_loss=0.123.ckpt`` (the ``name=``
  is inserted unless ``auto_insert_metric_name=False``). A name already taken on disk gets
  ``-v1``, ``-v2``, ...
* Which: ``save_top_k`` best by ``monitor`` (``mode`` "min"/"max"); -1 keeps all, 0 none; without
  ``monitor`` the latest one is kept. Files that fall out of the top k are deleted (never the
  checkpoint the run resumed from, nor files outside ``dirpath``). ``save_last=True`` also writes
  ``last.ckpt`` each time (``"link"``: a symlink to the checkpoint just saved).
* Leftovers of earlier runs (dutycycle's rule; Lightning leaves them and only warns): just before
  this fit's first checkpoint is named, global rank 0 removes from ``dirpath``

  - ``*.ckpt.tmp`` files: half-written checkpoints of a run that crashed mid-write (always, even
    with ``save_top_k=-1``);
  - unless ``save_top_k == -1``: ``*.ckpt`` files whose names this callback itself produces (its
    ``filename`` pattern, or ``last``, with an optional ``-vN``).

  Only files older than this fit's start are candidates, and never: the ``ckpt_path`` this fit
  resumed from, a file this callback tracks (``best_k_models``, ``best_model_path``,
  ``last_model_path`` — restored from the resumed checkpoint, so resuming keeps its bookkeeping),
  a file any checkpoint callback wrote in this fit, or a file whose name does not match (your
  ``pretrained.ckpt`` in the same directory stays). Nothing is removed before the resumed
  checkpoint is loaded, nor in a fit that never saves.

Saving goes through ``trainer.save_checkpoint(path, async_save=True)``: the state is snapshotted
into the staging ring (booked as "checkpoint stall", with any wait for a busy writer) and written
by a C thread (dutycycle.checkpoint). Each checkpoint is a directory; a top-k save with
``save_last`` also switches ``last.ckpt`` (a symlink) to itself once committed, and the
checkpoints it replaces are deleted only after that commit. dutycycle's extra arguments:
``async_save`` (default True), ``if_busy`` ("wait" or "skip" a save due while the previous one
writes), ``staging_bytes`` (the ring's size; default one state) and ``on_save_error`` ("stop":
fit raises the CheckpointError; "continue": warn and train on). Comparing a metric reads it as a
float: a sync point on a device.
"""

import os
import re
import time
from datetime import timedelta

from ._utils import (
    MisconfigurationException,
    fn_name,
    rank_zero_info,
    rank_zero_warn,
    to_float,
    to_scalar_tensor,
)
from .callback import Checkpoint


class ModelCheckpoint(Checkpoint):
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath=None,
        filename=None,
        monitor=None,
        verbose=False,
        save_last=None,
        save_top_k=1,
        save_weights_only=False,
        mode="min",
        auto_insert_metric_name=True,
        every_n_train_steps=None,
        train_time_interval=None,
        every_n_epochs=None,
        save_on_train_epoch_end=None,
        enable_version_counter=True,
        async_save=True,
        if_busy="wait",
        staging_bytes=None,
        on_save_error="stop",
    ):
        super().__init__()
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        if if_busy not in ("wait", "skip"):
            raise MisconfigurationException(f"`if_busy` can be 'wait' or 'skip', got {if_busy!r}")
        if on_save_error not in ("stop", "continue"):
            raise MisconfigurationException(f"`on_save_error` can be 'stop' or 'continue', got {on_save_error!r}")
        if staging_bytes is not None and (not isinstance(staging_bytes, int) or staging_bytes <= 0):
            raise MisconfigurationException(f"`staging_bytes` must be a positive int or None, got {staging_bytes!r}")
        self.async_save = bool(async_save)
        self.if_busy = if_busy
        self.staging_bytes = staging_bytes
        self.on_save_error = on_save_error
        self._linked_step = None  # global step whose top-k save also switches the last link
        self._last_path_cache = None  # (step, path) of last.ckpt for this step
        self._last_global_step_saved = 0  # no need to save when no steps were taken
        self._last_time_checked = None
        self._last_checkpoint_saved = ""
        self._val_has_run = False
        self._fit_started = None  # time.time() at setup("fit"): older files may be leftovers
        self._swept = True  # leftovers of earlier runs removed (armed at setup("fit"))
        self._written = set()  # paths this callback wrote in this fit
        self.current_score = None
        self.best_k_models = {}  # path -> 0-d tensor
        self.kth_best_model_path = ""
        self.best_model_score = None
        self.best_model_path = ""
        self.last_model_path = ""

        if mode not in ("min", "max"):
            raise MisconfigurationException(f"`mode` can be min or max, got {mode!r}")
        self.mode = mode
        self.kth_value = to_scalar_tensor(float("inf") if mode == "min" else float("-inf"))

        if save_last not in (None, True, False, "link"):
            raise MisconfigurationException(f"`save_last` can be None, True, False or 'link', got {save_last!r}")
        if dirpath is not None:
            dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath)))
        self.dirpath = dirpath
        self.filename = filename
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise MisconfigurationException(
                f"`train_time_interval` must be a datetime.timedelta, got {type(train_time_interval).__name__}"
            )
        self._init_triggers(every_n_train_steps, every_n_epochs, train_time_interval)
        self._validate_init_configuration()

    # ---- configuration ------------------------------------------------------------------------
    def _init_triggers(self, every_n_train_steps, every_n_epochs, train_time_interval):
        # Default: once per epoch. Otherwise exactly the trigger that was asked for.
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1
            every_n_train_steps = 0
        self._every_n_train_steps = every_n_train_steps or 0
        self._every_n_epochs = every_n_epochs or 0
        self._train_time_interval = train_time_interval

    def _validate_init_configuration(self):
        if self.save_top_k < -1:
            raise MisconfigurationException(f"Invalid value for save_top_k={self.save_top_k}. Must be >= -1")
        if self._every_n_train_steps < 0:
            raise MisconfigurationException(
                f"Invalid value for every_n_train_steps={self._every_n_train_steps}. Must be >= 0"
            )
        if self._every_n_epochs < 0:
            raise MisconfigurationException(f"Invalid value for every_n_epochs={self._every_n_epochs}. Must be >= 0")
        given = [self._every_n_train_steps > 0, self._every_n_epochs > 0, self._train_time_interval is not None]
        if sum(given) > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={self._every_n_train_steps}, "
                f"every_n_epochs={self._every_n_epochs} and train_time_interval={self._train_time_interval} "
                "should be mutually exclusive."
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            # -1: save all epochs, 0: nothing is saved, 1: save last epoch
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={self.save_top_k}, monitor=None) is not a valid configuration."
                " No quantity for top_k to track."
            )

    @property
    def state_key(self):
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self):
        return self._every_n_epochs

    @property
    def every_n_train_steps(self):
        return self._every_n_train_steps

    @property
    def train_time_interval(self):
        return self._train_time_interval

    # ---- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        self.dirpath = self._resolve_ckpt_dir(trainer)
        strategy = getattr(trainer, "strategy", None)
        if stage == "fit" and strategy is not None and hasattr(strategy, "checkpointer"):
            c = strategy.checkpointer  # one writer per process, shared by every ModelCheckpoint
            c.if_busy = self.if_busy
            c.on_error = "raise" if self.on_save_error == "stop" else "warn"
            if self.staging_bytes is not None:
                c.pool_bytes = self.staging_bytes
        if stage == "fit":
            self._val_has_run = False
            self._fit_started, self._swept, self._written = time.time(), False, set()
            if getattr(trainer, "is_global_zero", True):
                self._warn_if_dir_not_empty(self.dirpath)

    def on_train_start(self, trainer, pl_module):
        self._last_time_checked = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Save every ``every_n_train_steps`` steps or ``train_time_interval``."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        skip_batch = self._every_n_train_steps < 1 or (trainer.global_step % self._every_n_train_steps != 0)
        skip_time = True
        now = time.monotonic()
        if self._train_time_interval is not None:
            prev = self._last_time_checked
            skip_time = prev is None or (now - prev) < self._train_time_interval.total_seconds()
        if skip_batch and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now
        if self._busy_skip(trainer):  # asked only when a save is due: no collective on other steps
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer, pl_module):
        """Save at the end of the training epoch (when validation does not decide)."""
        if (
            not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer)
            and not self._busy_skip(trainer)
        ):
            candidates = self._monitor_candidates(trainer)
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_validation_end(self, trainer, pl_module):
        """Save after validation, unless saving happens at the train epoch end."""
        if getattr(trainer, "sanity_checking", False):
            return
        self._val_has_run = True
        if (
            not self._should_skip_saving_checkpoint(trainer)
            and not self._should_save_on_train_epoch_end(trainer)
            and not self._busy_skip(trainer)
        ):
            candidates = self._monitor_candidates(trainer)
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def state_dict(self):
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict):
        def t(v):
            return None if v is None else to_scalar_tensor(v)

        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if self.dirpath == dirpath_from_ckpt:
            self.best_model_score = t(state_dict.get("best_model_score"))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            if state_dict.get("kth_value") is not None:
                self.kth_value = t(state_dict["kth_value"])
            self.best_k_models = {k: t(v) for k, v in (state_dict.get("best_k_models") or {}).items()}
            self.last_model_path = state_dict.get("last_model_path", "")
            self.current_score = t(state_dict.get("current_score"))
        else:
            rank_zero_warn(
                f"The dirpath has changed from {dirpath_from_ckpt!r} to {self.dirpath!r},"
                " therefore `best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and"
                " `best_k_models` won't be reloaded. Only `best_model_path` will be reloaded."
            )
        self.best_model_path = state_dict.get("best_model_path", "")

    # ---- decisions ------------------------------------------------------------------------------
    def _should_skip_saving_checkpoint(self, trainer):
        return (
            bool(getattr(trainer, "fast_dev_run", False))
            or fn_name(trainer) not in (None, "fit")
            or bool(getattr(trainer, "sanity_checking", False))
            or self._last_global_step_saved == trainer.global_step
        )

    def _busy_skip(self, trainer):
        """if_busy="skip" and the previous save still writes: skip this one (rank 0 decides for all;
        a broadcast, so it is asked only when a save is due)."""
        if self.if_busy != "skip" or not self.async_save:
            return False
        strategy = getattr(trainer, "strategy", None)
        c = strategy.__dict__.get("_checkpointer") if strategy is not None else None
        busy = bool(c is not None and c.busy)
        if strategy is not None and getattr(strategy, "world_size", 1) > 1:
            busy = bool(strategy.broadcast(busy))
        if busy:
            c = c or strategy.checkpointer
            c.skips += 1
            if self.verbose:
                rank_zero_info(f"step {trainer.global_step}: checkpoint skipped, the previous save is still writing")
        return busy

    def _should_save_on_train_epoch_end(self, trainer):
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # Validation that runs more or less often than once per epoch decides when to save.
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        nvb = getattr(trainer, "num_val_batches", 0)
        num_val_batches = sum(nvb) if isinstance(nvb, (list, tuple)) else nvb
        if not num_val_batches:
            return True
        return getattr(trainer, "val_check_interval", 1.0) == 1.0

    def check_monitor_top_k(self, trainer, current=None):
        """Whether ``current`` makes it into the top k."""
        if current is None:
            return False
        if self.save_top_k == -1:
            return True
        if len(self.best_k_models) < self.save_top_k:
            return True
        kth = to_float(self.best_k_models[self.kth_best_model_path])
        cur = to_float(current)
        better = cur < kth if self.mode == "min" else cur > kth
        # several ranks: every rank must take the same decision (trainer.save_checkpoint is a
        # collective: a barrier), so all ranks agree to save only when all of them would (Lightning)
        return _agree(trainer, better)

    def _monitor_candidates(self, trainer):
        """callback_metrics plus "epoch" and "step" (ints)."""
        candidates = dict(getattr(trainer, "callback_metrics", {}) or {})
        epoch = candidates.get("epoch")
        candidates["epoch"] = int(to_float(epoch)) if epoch is not None else int(trainer.current_epoch)
        step = candidates.get("step")
        candidates["step"] = int(to_float(step)) if step is not None else int(trainer.global_step)
        return candidates

    # ---- saving ---------------------------------------------------------------------------------
    def _save_topk_checkpoint(self, trainer, candidates):
        self._remove_leftovers(trainer)
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_none_monitor_checkpoint(trainer, candidates)
            return
        if self.monitor not in candidates:
            m = (
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned"
                f" metrics: {list(candidates)}. HINT: Did you call `log({self.monitor!r}, value)` in the"
                " `LightningModule`?"
            )
            if self._val_has_run:
                raise MisconfigurationException(m)
            rank_zero_warn(m)
            return
        self._save_monitor_checkpoint(trainer, candidates)

    def _save_monitor_checkpoint(self, trainer, candidates):
        current = candidates.get(self.monitor)
        if self.check_monitor_top_k(trainer, current):
            self._update_best_and_save(current, trainer, candidates)
        elif self.verbose:
            rank_zero_info(
                f"Epoch {candidates['epoch']:d}, global step {candidates['step']:d}: {self.monitor!r} was not in"
                f" top {self.save_top_k}"
            )

    def _save_none_monitor_checkpoint(self, trainer, candidates):
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, self.best_model_path)
        previous, self.best_model_path = self.best_model_path, filepath
        self._save_checkpoint(trainer, filepath, candidates)
        if self.save_top_k == 1 and previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _update_best_and_save(self, current, trainer, candidates):
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        del_filepath = None
        if len(self.best_k_models) == k and k > 0:
            del_filepath = self.kth_best_model_path
            self.best_k_models.pop(del_filepath)

        current = to_scalar_tensor(current)
        if to_float(current) != to_float(current):  # nan never wins
            current = to_scalar_tensor(float("inf") if self.mode == "min" else float("-inf"))

        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, del_filepath)
        self.current_score = current
        self.best_k_models[filepath] = current
        scores = {p: to_float(v) for p, v in self.best_k_models.items()}
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(scores, key=scores.get)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(scores, key=scores.get)
        self.best_model_score = self.best_k_models[self.best_model_path]

        if self.verbose:
            rank_zero_info(
                f"Epoch {candidates['epoch']:d}, global step {candidates['step']:d}: {self.monitor!r} reached"
                f" {to_float(current):0.5f} (best {to_float(self.best_model_score):0.5f}), saving model to"
                f" {filepath!r} as top {k}"
            )
        self._save_checkpoint(trainer, filepath, candidates)
        if del_filepath and self._should_remove_checkpoint(trainer, del_filepath, filepath):
            self._remove_checkpoint(trainer, del_filepath)

    def _last_path(self, trainer, candidates):
        """Where last.ckpt goes at this step (with -vN when an earlier run's is in the way)."""
        step = trainer.global_step
        if self._last_path_cache is not None and self._last_path_cache[0] == step:
            return self._last_path_cache[1]
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        self._last_path_cache = (step, filepath)
        return filepath

    def _save_last_checkpoint(self, trainer, candidates):
        if not self.save_last:
            return
        self._remove_leftovers(trainer)
        filepath = self._last_path(trainer, candidates)
        previous, self.last_model_path = self.last_model_path, filepath
        if self._linked_step == trainer.global_step:
            pass  # this step's checkpoint was saved with the link: it switches to it once committed
        elif self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            if getattr(trainer, "is_global_zero", True):  # rank 0 owns the files
                self._link_checkpoint(trainer, self._last_checkpoint_saved, filepath)
            strategy = getattr(trainer, "strategy", None)
            if strategy is not None:
                strategy.barrier("ModelCheckpoint._link_checkpoint")
        else:
            self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_checkpoint(self, trainer, filepath, candidates=None):
        """Save through the trainer (asynchronously unless async_save=False). A top-k save
        (candidates given) with save_last also switches last.ckpt to itself once committed, so
        last.ckpt always names the newest committed checkpoint and is never a second copy."""
        d = os.path.dirname(filepath)
        if d:
            os.makedirs(d, exist_ok=True)
        link = None
        if candidates is not None and self.save_last:
            link = self._last_path(trainer, candidates)
            if os.path.abspath(link) == os.path.abspath(filepath):
                link = None
        stats = trainer.save_checkpoint(filepath, self.save_weights_only, async_save=self.async_save, link=link)
        if stats is not None and getattr(stats, "skipped", False):
            if self.verbose:
                rank_zero_info(f"checkpoint {filepath!r} skipped: the previous save is still writing (if_busy='skip')")
            return
        if link is not None:
            self._linked_step = trainer.global_step
        self._written.add(os.path.abspath(filepath))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        for logger in getattr(trainer, "loggers", None) or []:
            logger.after_save_checkpoint(self)

    @staticmethod
    def _link_checkpoint(trainer, filepath, linkpath):
        """Point linkpath at filepath atomically (a symlink renamed into place), once filepath's
        save has committed."""
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and hasattr(strategy, "checkpointer"):
            strategy.checkpointer.link_after_commit(linkpath, filepath)
        else:
            from dutycycle.checkpoint import switch_link

            switch_link(linkpath, filepath)

    def _should_remove_checkpoint(self, trainer, previous, current):
        """Never delete the checkpoint just written, the one the run resumed from, or files outside dirpath."""
        if previous == current:
            return False
        previous = os.path.abspath(previous)
        resume = getattr(trainer, "ckpt_path", None)
        if resume and os.path.abspath(resume) == previous:
            return False
        if self.dirpath is None:
            return False
        dirpath = os.path.abspath(self.dirpath)
        return os.path.commonpath([dirpath, previous]) == dirpath and previous != dirpath

    def _remove_checkpoint(self, trainer, filepath):
        remove = getattr(getattr(trainer, "strategy", None), "remove_checkpoint", None)
        if remove is not None:
            remove(filepath)
        elif os.path.lexists(filepath):
            os.remove(filepath)

    # ---- leftovers of earlier runs (the rule is in the module docstring) ---------------------
    def _remove_leftovers(self, trainer):
        if self._swept:
            return
        self._swept = True
        if not getattr(trainer, "is_global_zero", True) or not self.dirpath or not os.path.isdir(self.dirpath):
            return
        for path in self._leftovers(trainer):
            self._remove_checkpoint(trainer, path)

    def _leftovers(self, trainer):
        """The files in dirpath the rule lets this fit remove (see the module docstring)."""
        keep = {os.path.abspath(p) for p in (self.best_model_path, self.last_model_path, self.kth_best_model_path) if p}
        keep |= {os.path.abspath(p) for p in self.best_k_models}
        for cb in getattr(trainer, "checkpoint_callbacks", None) or [self]:
            keep |= getattr(cb, "_written", set())
        resume = getattr(trainer, "ckpt_path", None)
        if resume:
            keep.add(os.path.abspath(resume))
        keep |= {os.path.realpath(p) for p in keep}  # what a kept last.ckpt link points at stays too
        own = self._own_name_regex()
        out = []
        for name in sorted(os.listdir(self.dirpath)):
            path = os.path.abspath(os.path.join(self.dirpath, name))
            if path in keep:
                continue
            tmp = name.endswith((self.FILE_EXTENSION + ".tmp", self.FILE_EXTENSION + ".tmp.old"))
            if os.path.isdir(path) and not os.path.islink(path) and not tmp:
                if not os.path.exists(os.path.join(path, "manifest.json")):
                    tmp = any(n.endswith((".safetensors", ".tmp", ".crc")) for n in os.listdir(path))  # never committed
                if not tmp and not os.path.exists(os.path.join(path, "manifest.json")):
                    continue  # a folder of the user's
            if not tmp and (self.save_top_k == -1 or own is None or not own.fullmatch(name)):
                continue
            try:
                if os.lstat(path).st_mtime >= self._fit_started:
                    continue  # written since this fit began: not a leftover
            except OSError:
                continue
            out.append(path)
        return out

    def _own_name_regex(self):
        """The names this callback writes: its filename pattern (metric values as wildcards) or
        `last`, each with an optional -vN, plus the extension. None when the pattern has folders."""
        template = self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        if "/" in template or os.sep in template:
            return None
        rx = ""
        for part in re.split(r"(\{[^{}]*\})", template):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1].split(":")[0]
                rx += (re.escape(name + self.CHECKPOINT_EQUALS_CHAR) if self.auto_insert_metric_name else "") + ".+?"
            else:
                rx += re.escape(part)
        last, join = re.escape(self.CHECKPOINT_NAME_LAST), re.escape(self.CHECKPOINT_JOIN_CHAR)
        return re.compile(rf"(?:{rx}|{last})(?:{join}v\d+)?{re.escape(self.FILE_EXTENSION)}")

    # ---- names ----------------------------------------------------------------------------------
    def _get_metric_interpolated_filepath_name(self, candidates, trainer, del_filepath=None):
        filepath = self.format_checkpoint_name(candidates)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != del_filepath:
                filepath = self.format_checkpoint_name(candidates, ver=version)
                version += 1
        return filepath

    @classmethod
    def _format_checkpoint_name(cls, filename, metrics, prefix="", auto_insert_metric_name=True):
        if not filename:
            filename = "{epoch}" + cls.CHECKPOINT_JOIN_CHAR + "{step}"
        # {name} / {name:fmt} groups; longest first so "{val_loss_x" is replaced before "{val_loss"
        groups = sorted(re.findall(r"(\{.*?)[:\}]", filename), key=len, reverse=True)
        values = {}
        for k, v in metrics.items():
            values[k] = v if isinstance(v, (int, float, str)) else _metric_value(v)
        for group in groups:
            name = group[1:]
            if auto_insert_metric_name:
                filename = filename.replace(group, name + cls.CHECKPOINT_EQUALS_CHAR + "{" + name)
            filename = filename.replace(group, f"{{0[{name}]")
            values.setdefault(name, 0)
        filename = filename.format(values)
        if prefix:
            filename = cls.CHECKPOINT_JOIN_CHAR.join([prefix, filename])
        return filename

    def format_checkpoint_name(self, metrics, filename=None, ver=None):
        """The path a checkpoint with these metrics gets, e.g. with ``filename="{epoch}-{val_loss:.2f}"``
        and ``{"epoch": 2, "val_loss": 0.123}``: ``<dirpath>/epoch=2-val_loss=0.12.ckpt``."""
        filename = filename or self.filename
        filename = self._format_checkpoint_name(filename, metrics, auto_insert_metric_name=self.auto_insert_metric_name)
        if ver is not None:
            filename = self.CHECKPOINT_JOIN_CHAR.join((filename, f"v{ver}"))
        name = f"{filename}{self.FILE_EXTENSION}"
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _resolve_ckpt_dir(self, trainer):
        """dirpath, else ``<save_dir>/<name>/<version>/checkpoints`` of the first logger (with
        several loggers too: Lightning 2.x no longer joins their names and versions), else
        ``<default_root_dir>/checkpoints`` (Lightning's rule)."""
        if self.dirpath is not None:
            return self.dirpath
        loggers = list(getattr(trainer, "loggers", None) or [])
        root = getattr(trainer, "default_root_dir", None) or os.getcwd()
        if loggers:
            first = loggers[0]
            save_dir = first.save_dir or root
            name, version = first.name, first.version
            version = version if isinstance(version, str) else f"version_{version}"
            path = os.path.join(save_dir, str(name), version, "checkpoints")
        else:
            path = os.path.join(root, "checkpoints")
        return os.path.realpath(os.path.expanduser(path))

    def _warn_if_dir_not_empty(self, dirpath):
        if self.save_top_k != 0 and os.path.isdir(dirpath) and os.listdir(dirpath):
            rank_zero_warn(f"Checkpoint directory {dirpath} exists and is not empty.")

    def file_exists(self, filepath, trainer):
        """Whether filepath exists, as rank 0 sees it (so every rank picks the same file name)."""
        exists = os.path.lexists(filepath)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(strategy, "world_size", 1) > 1:
            exists = bool(strategy.broadcast(exists))
        return exists

    def to_yaml(self, filepath=None):
        """Write ``best_k_models`` (path -> score) to ``<dirpath>/best_k_models.yaml``."""
        from dutycycle.loggers._yaml import dump

        best_k = {k: to_float(v) for k, v in self.best_k_models.items()}
        if filepath is None:
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w", encoding="utf-8") as f:
            f.write(dump(best_k))


def _metric_value(v):
    """A metric for a file name: ints stay ints, everything else a float (sync point on a device)."""
    if hasattr(v, "dtype") and hasattr(v, "item"):
        x = v.item()
        return x
    return to_float(v)


def _agree(trainer, decision):
    """decision, reduced over ranks (True only when every rank decided True); one process: itself."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or getattr(strategy, "world_size", 1) <= 1:
        return bool(decision)
    return strategy.reduce_boolean_decision(bool(decision), all=True)
