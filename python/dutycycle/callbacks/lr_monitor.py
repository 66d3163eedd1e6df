"""LearningRateMonitor: log each optimizer's learning rate (and momentum, weight decay) through the
trainer's loggers, with Lightning's key names.

Keys: ``lr-<OptimizerClass>`` for one parameter group; ``lr-<OptimizerClass>/pg<i>`` (or the group's
``"name"``) for several; ``-<n>`` after the class name when the same optimizer class appears more
than once; a scheduler config's ``name`` replaces the whole prefix. ``logging_interval``: "step"
logs at log steps (``log_every_n_steps``), "epoch" at each epoch start, None follows each
scheduler's own interval (optimizers without a scheduler log at log steps).
"""

import itertools
from collections import defaultdict

from ._utils import MisconfigurationException, rank_zero_warn
from .callback import Callback


class LearningRateMonitor(Callback):
    def __init__(self, logging_interval=None, log_momentum=False, log_weight_decay=False):
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException("logging_interval should be `step` or `epoch` or `None`.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs = {}
        self.last_momentum_values = {}
        self.last_weight_decay_values = {}

    def on_train_start(self, trainer, *args, **kwargs):
        if not getattr(trainer, "loggers", None):
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."
            )
        configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if self.log_momentum:

            def _no_key(key):
                if configs:
                    return any(key not in c.scheduler.optimizer.defaults for c in configs)
                return any(key not in _unwrap(o).defaults for o in optimizers)

            if _no_key("momentum") and _no_key("betas"):
                rank_zero_warn(
                    "You have set log_momentum=True, but some optimizers do not have momentum. This will log a value"
                    " 0 for the momentum.",
                    RuntimeWarning,
                )
        names, seen, seen_types = self._find_names_from_schedulers(configs)
        opt_names, _ = self._find_names_from_optimizers(optimizers, seen, seen_types)
        flat = list(itertools.chain.from_iterable(names + opt_names))
        self.lrs = {n: [] for n in flat}
        self.last_momentum_values = {n + "-momentum": None for n in flat}
        self.last_weight_decay_values = {n + "-weight_decay": None for n in flat}

    def on_train_batch_start(self, trainer, *args, **kwargs):
        if not self._should_update_logs(trainer):
            return
        if self.logging_interval != "epoch":
            interval = "step" if self.logging_interval is None else "any"
            stats = self._extract_stats(trainer, interval)
            if stats:
                for logger in trainer.loggers:
                    logger.log_metrics(stats, step=_batches_that_stepped(trainer))

    def on_train_epoch_start(self, trainer, *args, **kwargs):
        if self.logging_interval != "step":
            interval = "epoch" if self.logging_interval is None else "any"
            stats = self._extract_stats(trainer, interval)
            if stats:
                for logger in trainer.loggers:
                    logger.log_metrics(stats, step=_batches_that_stepped(trainer))

    @staticmethod
    def _should_update_logs(trainer):
        n = max(int(getattr(trainer, "log_every_n_steps", 50) or 1), 1)
        return (_batches_that_stepped(trainer) + 1) % n == 0 or bool(getattr(trainer, "should_stop", False))

    def _extract_stats(self, trainer, interval):
        stats = {}
        configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
        sched_names, seen, seen_types = self._find_names_from_schedulers(configs)
        self._remap_keys(sched_names)
        for names, config in zip(sched_names, configs):
            if interval in (getattr(config, "interval", "epoch"), "any"):
                stats.update(self._get_optimizer_stats(config.scheduler.optimizer, names))
        opt_names, without_scheduler = self._find_names_from_optimizers(
            list(getattr(trainer, "optimizers", None) or []), seen, seen_types
        )
        self._remap_keys(opt_names)
        for opt, names in zip(without_scheduler, opt_names):
            stats.update(self._get_optimizer_stats(opt, names))
        cm = getattr(trainer, "callback_metrics", None)
        if cm is not None and stats:
            import dutycycle as dc

            cm.update({k: dc.tensor(float(v)) for k, v in stats.items()})
        return stats

    def _get_optimizer_stats(self, optimizer, names):
        stats = {}
        use_betas = "betas" in optimizer.defaults
        for pg, name in zip(optimizer.param_groups, names):
            lr = pg["lr"]
            self.lrs.setdefault(name, []).append(lr)
            stats[name] = lr
            if self.log_momentum:
                m = pg["betas"][0] if use_betas else pg.get("momentum", 0)
                self.last_momentum_values[f"{name}-momentum"] = m
                stats[f"{name}-momentum"] = m
            if self.log_weight_decay:
                wd = pg.get("weight_decay", 0)
                self.last_weight_decay_values[f"{name}-weight_decay"] = wd
                stats[f"{name}-weight_decay"] = wd
        return stats

    def _remap_keys(self, names, token="/pg1"):
        """A key first seen as "lr-X" becomes "lr-X/pg1" once a second group appears."""
        for group in names:
            for new in group:
                old = new.replace(token, "")
                if token in new and old in self.lrs:
                    self.lrs[new] = self.lrs.pop(old)
                elif new not in self.lrs:
                    self.lrs[new] = []

    @staticmethod
    def _add_prefix(name, optimizer_cls, seen_types):
        if optimizer_cls not in seen_types:
            return name
        count = seen_types[optimizer_cls]
        return name + f"-{count - 1}" if count > 1 else name

    @staticmethod
    def _add_suffix(name, param_groups, i, use_names=True):
        if len(param_groups) > 1:
            if not use_names:
                return f"{name}/pg{i + 1}"
            return f"{name}/{param_groups[i].get('name', f'pg{i + 1}')}"
        if use_names:
            pg_name = param_groups[i].get("name")
            return f"{name}/{pg_name}" if pg_name else name
        return name

    @staticmethod
    def _duplicate_param_group_names(param_groups):
        names = [pg.get("name", f"pg{i}") for i, pg in enumerate(param_groups, start=1)]
        if len(names) == len(set(names)):
            return set()
        return {n for n in names if names.count(n) > 1}

    def _find_names_from_schedulers(self, configs):
        names, seen, seen_types = [], [], defaultdict(int)
        for config in configs:
            sch = config.scheduler
            cfg_name = getattr(config, "name", None)
            name = cfg_name if cfg_name is not None else "lr-" + sch.optimizer.__class__.__name__
            names.append(self._check_duplicates_and_update_name(sch.optimizer, name, seen, seen_types, config))
        return names, seen, seen_types

    def _find_names_from_optimizers(self, optimizers, seen, seen_types):
        names, without_scheduler = [], []
        for opt in optimizers:
            opt = _unwrap(opt)
            if any(opt is s for s in seen):
                continue
            name = "lr-" + opt.__class__.__name__
            names.append(self._check_duplicates_and_update_name(opt, name, seen, seen_types, None))
            without_scheduler.append(opt)
        return names, without_scheduler

    def _check_duplicates_and_update_name(self, optimizer, name, seen, seen_types, config):
        seen.append(optimizer)
        cls = type(optimizer)
        if config is None or getattr(config, "name", None) is None:
            seen_types[cls] += 1
        groups = optimizer.param_groups
        dups = self._duplicate_param_group_names(groups)
        if dups:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical "
                f"`name` values. {name} has duplicated parameter group names {dups}"
            )
        name = self._add_prefix(name, cls, seen_types)
        return [self._add_suffix(name, groups, i) for i in range(len(groups))]


def _unwrap(opt):
    """LightningOptimizer -> the optimizer inside (Lightning's rule)."""
    return opt.optimizer if hasattr(opt, "optimizer") else opt


def _batches_that_stepped(trainer):
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    n = getattr(loop, "_batches_that_stepped", None)
    return int(n) if n is not None else int(trainer.global_step)
