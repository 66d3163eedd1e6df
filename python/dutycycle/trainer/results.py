"""The metric store behind LightningModule.log(): Lightning's on_step/on_epoch semantics.

A logged value stays what it was given (a 0-d tensor, on its device) until the trainer writes it
out: step values every log_every_n_steps, epoch values at the epoch end. Epoch values are
reduced (weighted by batch_size for "mean") from the kept per-step values with a handful of
tensor ops and no host round trip. Only `to_float` reads a value back (a sync point on a GPU).
"""

from __future__ import annotations

import numbers

import dutycycle as dc

# Hooks whose self.log defaults to on_step=True, on_epoch=False (Lightning's _FxValidator table);
# every other hook defaults to on_step=False, on_epoch=True.
STEP_HOOKS = frozenset(
    {
        "training_step",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_before_zero_grad",
        "optimizer_step",
        "optimizer_zero_grad",
        "configure_gradient_clipping",
        "lr_scheduler_step",
        "backward",
    }
)
# Hooks where logging on_step makes no sense (Lightning raises for these too).
EPOCH_ONLY_HOOKS = frozenset(
    {
        "on_train_epoch_start",
        "on_train_epoch_end",
        "on_validation_epoch_start",
        "on_validation_epoch_end",
        "on_test_epoch_start",
        "on_test_epoch_end",
        "on_train_start",
        "on_validation_start",
        "on_test_start",
        "on_fit_start",
    }
)
_REDUCE = {"mean", "sum", "max", "min"}


def to_float(v):
    """A logged value as a Python float. # note: sync point (device -> host) for device tensors."""
    return float(v.item()) if isinstance(v, dc.Tensor) else float(v)


def extract_batch_size(batch):
    """Lightning's inference: the size of the first dim of the first tensor found in batch."""
    if isinstance(batch, dc.Tensor):
        return batch.shape[0] if batch.dim() > 0 else 1
    if isinstance(batch, (str, bytes)):
        return 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = extract_batch_size(v)
            if n is not None:
                return n
        return None
    if isinstance(batch, (list, tuple)):
        if batch and all(isinstance(x, str) for x in batch):
            return len(batch)
        for v in batch:
            n = extract_batch_size(v)
            if n is not None:
                return n
        return None
    try:
        import numpy as np

        if isinstance(batch, np.ndarray):
            return batch.shape[0] if batch.ndim else 1
    except ImportError:  # pragma: no cover
        pass
    return None


class Metric:
    __slots__ = (
        "key",
        "on_step",
        "on_epoch",
        "prog_bar",
        "logger",
        "reduce_fx",
        "values",
        "weights",
        "last",
        "step_dirty",
        "epoch_value",
    )

    def __init__(self, key, on_step, on_epoch, prog_bar, logger, reduce_fx):
        self.key, self.on_step, self.on_epoch = key, on_step, on_epoch
        self.prog_bar, self.logger, self.reduce_fx = prog_bar, logger, reduce_fx
        self.values, self.weights = [], []
        self.last, self.step_dirty, self.epoch_value = None, False, None

    def reduce(self):
        if not self.values:
            return None
        vals = self.values
        if len(vals) == 1 and self.reduce_fx != "sum":
            return vals[0]
        if all(not isinstance(v, dc.Tensor) for v in vals):
            if self.reduce_fx == "mean":
                return sum(v * w for v, w in zip(vals, self.weights)) / sum(self.weights)
            return {"sum": sum, "max": max, "min": min}[self.reduce_fx](vals)
        dev = next(v.device for v in vals if isinstance(v, dc.Tensor))
        t = dc.stack([(v if isinstance(v, dc.Tensor) else dc.tensor(v, device=dev)).reshape(()).float() for v in vals])
        if self.reduce_fx == "mean":
            w = dc.tensor([float(x) for x in self.weights], device=dev)
            return (t * w).sum() / float(sum(self.weights))
        if self.reduce_fx == "sum":
            return t.sum()
        return t.max() if self.reduce_fx == "max" else t.min()


class Results:
    """Logged metrics of the running loops, keyed by (stage, name)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.metrics = {}  # (stage, name) -> Metric
        self.callback_metrics = {}
        self.logged_metrics = {}
        self.stage = "train"
        self.dataloader_idx = None  # set by the eval loop when there are several dataloaders
        self.batch = None  # the current batch, for batch_size inference (only read when needed)

    # ---- called by LightningModule.log -------------------------------------------------------
    def log(
        self,
        fx,
        name,
        value,
        *,
        prog_bar,
        logger,
        on_step,
        on_epoch,
        reduce_fx,
        sync_dist,
        batch_size,
        add_dataloader_idx,
    ):
        if not isinstance(name, str):
            raise TypeError(f"self.log(name=...) expects a str name, got {type(name).__name__}")
        step_hook = fx in STEP_HOOKS
        on_step = step_hook if on_step is None else bool(on_step)
        on_epoch = (not step_hook) if on_epoch is None else bool(on_epoch)
        if on_step and fx in EPOCH_ONLY_HOOKS:
            raise ValueError(
                f"You can't `self.log({name!r}, ..., on_step=True)` in `{fx}`: it runs once per "
                "epoch; use on_epoch=True"
            )
        if not (on_step or on_epoch):
            raise ValueError(f"self.log({name!r}): at least one of on_step / on_epoch must be True")
        if callable(reduce_fx):
            reduce_fx = getattr(reduce_fx, "__name__", str(reduce_fx))
        reduce_fx = str(reduce_fx).lower()
        if reduce_fx not in _REDUCE:
            raise ValueError(f"self.log({name!r}): reduce_fx must be one of {sorted(_REDUCE)}, got {reduce_fx!r}")
        value = self._check_value(name, value)
        if sync_dist and self.trainer.world_size > 1:
            # the value reduced over ranks with reduce_fx's op (mean of the ranks' values for "mean").
            # note: sync point: one blocking all-reduce per synced log call (timed as comm wait)
            value = self.trainer.strategy.reduce(value, reduce_op=reduce_fx)
        if add_dataloader_idx and self.dataloader_idx is not None:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        key = (self.stage, name)
        m = self.metrics.get(key)
        if m is None:
            m = self.metrics[key] = Metric(
                name, on_step, on_epoch, prog_bar, True if logger is None else logger, reduce_fx
            )
        if on_step:
            m.last = value
            m.step_dirty = True
            if on_epoch:
                self.callback_metrics[name + "_step"] = value
            self.callback_metrics[name] = value
        if on_epoch:
            if reduce_fx == "mean":
                if batch_size is None:
                    batch_size = extract_batch_size(self.batch) if self.batch is not None else 1
                    batch_size = 1 if batch_size is None else batch_size
                m.weights.append(batch_size)
            m.values.append(value)

    @staticmethod
    def _check_value(name, value):
        if isinstance(value, dc.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"self.log({name!r}, value): `value` must be a scalar (one element), got a tensor of "
                    f"shape {tuple(value.shape)}"
                )
            return value.detach()
        if isinstance(value, bool) or not isinstance(value, numbers.Number):
            raise TypeError(
                f"self.log({name!r}, value): `value` must be a number or a one-element Tensor, got "
                f"{type(value).__name__}"
            )
        return float(value)

    # ---- read out by the trainer -------------------------------------------------------------
    def step_log_metrics(self, stage):
        """Latest on_step values logged since the previous call, for the logger (tensors)."""
        out = {}
        for (st, _), m in self.metrics.items():
            if st == stage and m.on_step and m.step_dirty:
                m.step_dirty = False
                if m.logger:
                    out[m.key + "_step" if m.on_epoch else m.key] = m.last
        return out

    def epoch_end(self, stage):
        """Reduce this stage's on_epoch values; returns {name: value} for the logger (tensors)."""
        out = {}
        for (st, _), m in self.metrics.items():
            if st != stage or not m.on_epoch or not m.values:
                continue
            v = m.reduce()
            m.values, m.weights = [], []
            m.epoch_value = v
            key = m.key + "_epoch" if m.on_step else m.key
            self.callback_metrics[key] = v
            self.callback_metrics[m.key] = v
            if m.logger:
                out[key] = v
        return out

    def reset_stage(self, stage):
        for k in [k for k in self.metrics if k[0] == stage]:
            del self.metrics[k]

    # ---- checkpoint (the loops state): tensors, numbers, strings and bools only, no pickle ----------
    def state_dict(self, stage):
        """The running epoch's accumulators of `stage`, in logging order, for a checkpoint."""
        out = []
        for (st, name), m in self.metrics.items():
            if st != stage:
                continue
            out.append(
                {
                    "name": name,
                    "on_step": m.on_step,
                    "on_epoch": m.on_epoch,
                    "prog_bar": m.prog_bar,
                    "logger": m.logger,
                    "reduce_fx": m.reduce_fx,
                    "values": list(m.values),
                    "weights": list(m.weights),
                    "last": m.last,
                }
            )
        return out

    def load_state_dict(self, stage, state, device=None):
        """Replace `stage`'s accumulators by those of state_dict(stage); tensors go to `device`.
        # note: host -> device copies of the saved values (once, at resume)"""

        def to_dev(v):
            if isinstance(v, dc.Tensor) and device is not None and v.device != device:
                return v.to(device)
            return v

        self.reset_stage(stage)
        for d in state:
            m = Metric(d["name"], d["on_step"], d["on_epoch"], d["prog_bar"], d["logger"], d["reduce_fx"])
            m.values = [to_dev(v) for v in d["values"]]
            m.weights = list(d["weights"])
            m.last = to_dev(d["last"])
            self.metrics[(stage, d["name"])] = m

    def progress_bar(self):
        out = {}
        for m in self.metrics.values():
            if not m.prog_bar:
                continue
            if m.on_step and m.last is not None:
                out[m.key + "_step" if m.on_epoch else m.key] = m.last
            if m.on_epoch and m.epoch_value is not None:
                out[m.key + "_epoch" if m.on_step else m.key] = m.epoch_value
        return out
