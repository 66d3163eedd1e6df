"""EarlyStopping: stop training when a monitored metric stops improving (Lightning's semantics).

Checked at the end of the training epoch when validation runs exactly once per epoch at its end,
otherwise after each validation (``check_on_train_epoch_end`` overrides). Each check, in order:
not finite (``check_finite``) -> stop; past ``stopping_threshold`` -> stop; past
``divergence_threshold`` -> stop; improved by more than ``min_delta`` -> new best, wait = 0;
else wait += 1 and stop once wait >= ``patience``. Stopping sets ``trainer.should_stop``; the
trainer still honours ``min_epochs``/``min_steps``. Reading the metric is a sync point on a device.
"""

import math

from ._utils import MisconfigurationException, fn_name, log, rank_zero_warn, to_float, to_scalar_tensor
from .callback import Callback


class EarlyStopping(Callback):
    mode_dict = {"min": lambda a, b: a < b, "max": lambda a, b: a > b}
    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor,
        min_delta=0.0,
        patience=3,
        verbose=False,
        mode="min",
        strict=True,
        check_finite=True,
        stopping_threshold=None,
        divergence_threshold=None,
        check_on_train_epoch_end=None,
        log_rank_zero_only=False,
    ):
        super().__init__()
        self.monitor = monitor
        self.min_delta = min_delta
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.wait_count = 0
        self.stopped_epoch = 0
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only
        if self.mode not in self.mode_dict:
            raise MisconfigurationException(f"`mode` can be {', '.join(self.mode_dict.keys())}, got {self.mode}")
        # improvement means current - min_delta < best (min) / current + min_delta > best (max)
        self.min_delta *= 1 if self.mode == "max" else -1
        self.best_score = to_scalar_tensor(math.inf if self.mode == "min" else -math.inf)

    @property
    def state_key(self):
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self):
        return self.mode_dict[self.mode]

    def setup(self, trainer, pl_module, stage):
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = (
                getattr(trainer, "val_check_interval", 1.0) == 1.0
                and getattr(trainer, "check_val_every_n_epoch", 1) == 1
            )

    def _validate_condition_metric(self, logs):
        monitor_val = logs.get(self.monitor)
        error_msg = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available."
            " Pass in or modify your `EarlyStopping` callback to use any of the following:"
            f" `{'`, `'.join(list(logs.keys()))}`"
        )
        if monitor_val is None:
            if self.strict:
                raise RuntimeError(error_msg)
            if self.verbose > 0:
                rank_zero_warn(error_msg, RuntimeWarning)
            return False
        return True

    def state_dict(self):
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict):
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = to_scalar_tensor(state_dict["best_score"])
        self.patience = int(state_dict["patience"])

    def _should_skip_check(self, trainer):
        return fn_name(trainer) not in (None, "fit") or bool(getattr(trainer, "sanity_checking", False))

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer, pl_module):
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def _run_early_stopping_check(self, trainer):
        logs = getattr(trainer, "callback_metrics", {}) or {}
        if getattr(trainer, "fast_dev_run", False) or not self._validate_condition_metric(logs):
            return
        current = to_float(logs[self.monitor])  # note: a sync point on a device
        should_stop, reason = self._evaluate_stopping_criteria(current)
        trainer.should_stop = bool(trainer.should_stop or should_stop)
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
        if reason and self.verbose:
            log.info(reason)

    def _evaluate_stopping_criteria(self, current):
        """(should_stop, reason) for the metric value ``current`` (a float)."""
        should_stop = False
        reason = None
        best = to_float(self.best_score)
        if self.check_finite and not math.isfinite(current):
            should_stop = True
            reason = (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {best:.3f}. Signaling Trainer to stop."
            )
        elif self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            should_stop = True
            reason = (
                "Stopping threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        elif self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            should_stop = True
            reason = (
                "Divergence threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        elif self.monitor_op(current - self.min_delta, best):
            reason = self._improvement_message(current, best)
            self.best_score = to_scalar_tensor(current)
            self.wait_count = 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                should_stop = True
                reason = (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
                    f" Best score: {best:.3f}. Signaling Trainer to stop."
                )
        return should_stop, reason

    def _improvement_message(self, current, best):
        if math.isfinite(best):
            return (
                f"Metric {self.monitor} improved by {abs(best - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"
