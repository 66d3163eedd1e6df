"""What the user configures, parsed and checked once: the Trainer's arguments (TrainerConfig) and
the return value of `configure_optimizers` (parse_optimizer_config -> LRSchedulerConfig).

TrainerConfig is a dataclass with one field per Trainer argument, same names and defaults
(a test keeps the two signatures equal). Building it validates every argument with the messages
users already know, resolves the "auto" values (accelerator, strategy, devices, max_epochs) and
applies fast_dev_run's overrides; the Trainer copies the resolved values (TRAINER_ATTRIBUTES) onto
itself, where the loop and the callbacks read them under Lightning's names.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import warnings
from typing import Any

import dutycycle as dc

_PRECISIONS_OK = {"32-true": "32-true", "32": "32-true", 32: "32-true", None: "32-true",
                  "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed", "16-mixed": "16-mixed", "16": "16-mixed",
                  16: "16-mixed", "bf16-true": "bf16-true", "16-true": "16-true", "64-true": "64-true",
                  "64": "64-true", 64: "64-true"}
_PRECISIONS_LATER = {"transformer-engine", "transformer-engine-float16"}

_warned = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, UserWarning, stacklevel=3)


def _is_instance_of(obj, names):
    return any(c.__name__ in names for c in type(obj).__mro__)


@dataclasses.dataclass
class TrainerConfig:
    """Trainer(**kwargs) as one checked object. After construction the fields hold the resolved
    values (e.g. accelerator 'cpu'/'cuda', strategy a Strategy instance, max_time a timedelta)."""

    accelerator: Any = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: Any = 1
    precision: Any = None
    logger: Any = None
    callbacks: Any = None
    fast_dev_run: Any = False
    max_epochs: Any = None
    min_epochs: Any = None
    max_steps: Any = -1
    min_steps: Any = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: Any = 1
    num_sanity_val_steps: Any = None
    log_every_n_steps: Any = None
    enable_checkpointing: Any = None
    enable_progress_bar: Any = None
    enable_model_summary: Any = None
    accumulate_grad_batches: Any = 1
    gradient_clip_val: Any = None
    gradient_clip_algorithm: Any = None
    deterministic: Any = None
    benchmark: Any = None
    inference_mode: Any = True
    use_distributed_sampler: Any = True
    profiler: Any = None
    detect_anomaly: Any = False
    barebones: Any = False
    plugins: Any = None
    sync_batchnorm: Any = False
    reload_dataloaders_every_n_epochs: Any = 0
    default_root_dir: Any = None
    # resolved, not arguments
    num_devices: int = dataclasses.field(default=1, init=False)
    fast_dev_run_batches: int = dataclasses.field(default=0, init=False)

    @classmethod
    def from_kwargs(cls, kwargs):
        """TrainerConfig(**kwargs), but an unknown name raises the TypeError the Trainer raises
        ("Trainer.__init__() got an unexpected keyword argument ...; did you mean ...?")."""
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"Trainer.__init__() got an unexpected keyword argument {name!r}{hint}")
        return cls(**kwargs)

    def __post_init__(self):
        self._parse_hardware()
        self._parse_loop_limits()
        self.default_root_dir = None if self.default_root_dir is None else _fspath(self.default_root_dir)
        self.enable_progress_bar = True if self.enable_progress_bar is None else bool(self.enable_progress_bar)
        self.enable_checkpointing = True if self.enable_checkpointing is None else bool(self.enable_checkpointing)
        self.enable_model_summary = True if self.enable_model_summary is None else bool(self.enable_model_summary)

    # ---- hardware: accelerator, strategy, devices, precision --------------------------------------
    def _parse_hardware(self):
        from ..strategies import STRATEGIES, ParallelStrategy, SingleDeviceStrategy, Strategy, from_name

        strategy, accelerator = self.strategy, self.accelerator
        given = strategy if isinstance(strategy, Strategy) else None
        if given is None and not isinstance(strategy, str):
            raise TypeError(
                f"strategy must be a string (one of {sorted(STRATEGIES)}) or a dutycycle.strategies.Strategy, "
                f"got {type(strategy).__name__}"
            )
        if given is None and strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not known; known strategies: {sorted(STRATEGIES)}")
        acc = str(accelerator).lower() if accelerator is not None else "auto"
        if acc not in ("auto", "cpu", "gpu", "cuda"):
            raise ValueError(f"accelerator={accelerator!r} is not known; expected one of 'cpu', 'gpu', 'cuda', 'auto'")
        if acc in ("gpu", "cuda") and not dc.cuda.is_available():
            raise RuntimeError(
                f"accelerator={accelerator!r} was requested but no CUDA device is available "
                f"(dutycycle.cuda.is_built()={dc.cuda.is_built()}, device_count()={dc.cuda.device_count()}); "
                "use accelerator='cpu' or 'auto'"
            )
        acc = "cuda" if acc == "gpu" else acc
        if given is not None:  # the strategy's device decides; an explicit accelerator must agree
            dev_type = given.root_device.type
            if acc not in ("auto", dev_type):
                raise ValueError(
                    f"accelerator={accelerator!r} does not match strategy={given!r}, whose root_device is "
                    f"{given.root_device}; pass accelerator='auto' or {dev_type!r}"
                )
            acc = dev_type
        if acc == "auto":
            acc = "cuda" if dc.cuda.is_available() else "cpu"
        self.accelerator = acc
        if given is None and strategy == "auto" and (int(self.num_nodes) > 1 or self._parse_devices(self.devices) > 1):
            strategy = "ddp"  # Lightning: "auto" with several devices is ddp
        if given is None and strategy not in ("auto", "single_device"):
            given = from_name(strategy, accelerator=acc)  # ddp, zero1, ...: a ParallelStrategy
        if isinstance(given, ParallelStrategy):
            self.num_devices = self._parse_parallel_devices(self.devices, given)
            self.num_nodes = int(self.num_nodes)
            given.num_devices, given.num_nodes = self.num_devices, self.num_nodes
            self.strategy = given
            self.precision = self._parse_precision(self.precision)
            return
        self.num_devices = self._parse_devices(self.devices)
        one_process = given is None or given.world_size == 1
        if (int(self.num_nodes) != 1 or self.num_devices != 1) and one_process:
            raise ValueError(
                f"devices={self.devices!r}, num_nodes={self.num_nodes!r} ask for more than one process; "
                f"strategy={strategy!r} runs one; use strategy='ddp' (or another multi-process strategy)"
            )
        self.num_nodes = int(self.num_nodes)
        if given is None:
            given = SingleDeviceStrategy(dc.device("cuda", 0) if acc == "cuda" else dc.device("cpu"))
        self.strategy = given
        self.precision = self._parse_precision(self.precision)

    def _parse_parallel_devices(self, devices, strategy):
        """Ranks per node for a multi-process strategy. devices="auto": what the launcher started
        (world size / num_nodes), or 1 for a plain `python train.py` (Lightning: 1 CPU device)."""
        if devices in ("auto", None, -1, "-1"):
            from ..strategies.parallel import launcher_env

            env = launcher_env()
            if env["launcher"] is None:
                return 1
            return max(1, int(env["world_size"] or 1) // max(1, int(self.num_nodes)))
        if self.accelerator == "cpu" and isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
            return devices  # CPU ranks: any number of processes
        return self._parse_devices(devices)

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
            if precision in ("bf16", "16", 16, "64", 64):
                _warn_once(("precision", precision),
                           f"precision={precision!r} is supported for historical reasons but its usage is discouraged. "
                           f"Please set your precision to {_PRECISIONS_OK[precision]!r} instead!")
            return _PRECISIONS_OK[precision]
        if precision in _PRECISIONS_LATER:
            raise ValueError(f"precision={precision!r} is not supported yet (Transformer Engine's fp8 is not "
                             "built in); use precision='bf16-mixed' (float32 weights, bfloat16 matmuls) or '32-true'")
        raise ValueError(
            f"precision={precision!r} is not known; expected '32-true' (or '32'/32), 'bf16-mixed', '16-mixed', "
            "'bf16-true', '16-true' or '64-true'"
        )

    # ---- loop limits --------------------------------------------------------------------------------
    def _parse_loop_limits(self):
        fast_dev_run = self.fast_dev_run
        if isinstance(fast_dev_run, bool):
            n_dev = 1 if fast_dev_run else 0
        elif isinstance(fast_dev_run, int) and fast_dev_run >= 0:
            n_dev = fast_dev_run
        else:
            raise ValueError(f"fast_dev_run={fast_dev_run!r} must be a bool or an int >= 0")
        self.fast_dev_run_batches = n_dev
        self.max_time = parse_max_time(self.max_time)
        max_steps = self.max_steps
        self.max_steps = -1 if max_steps is None else int(max_steps)
        if self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (no limit) or >= 0, got {max_steps}")
        if self.max_epochs is None:
            self.max_epochs = 1000 if (self.max_steps == -1 and self.max_time is None) else -1
        self.max_epochs = int(self.max_epochs)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
            setattr(self, name, parse_limit(getattr(self, name), name))
        self.overfit_batches = parse_limit(0.0 if self.overfit_batches is None else self.overfit_batches,
                                           "overfit_batches")  # fmt: skip
        vci = 1.0 if self.val_check_interval is None else self.val_check_interval
        if isinstance(vci, float) and not 0.0 < vci <= 1.0:
            raise ValueError(f"val_check_interval={vci} must be in (0.0, 1.0] as a float, or an int")
        if isinstance(vci, int) and vci < 1:
            raise ValueError(f"val_check_interval={vci} must be >= 1 as an int")
        self.val_check_interval = vci
        cv = self.check_val_every_n_epoch
        if cv is not None and (not isinstance(cv, int) or cv < 1):
            raise ValueError(f"check_val_every_n_epoch must be None or an int >= 1, got {cv!r}")
        self.num_sanity_val_steps = 2 if self.num_sanity_val_steps is None else int(self.num_sanity_val_steps)
        self.log_every_n_steps = 50 if self.log_every_n_steps is None else int(self.log_every_n_steps)
        acc = self.accumulate_grad_batches
        if not isinstance(acc, int) or acc < 1:
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {acc!r}")
        algo = self.gradient_clip_algorithm
        if algo is not None and algo not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm={algo!r} is not one of 'norm', 'value'")
        self.gradient_clip_algorithm = algo or ("norm" if self.gradient_clip_val else None)
        if self.deterministic not in (None, True, False, "warn"):
            raise ValueError(f"deterministic must be None, a bool or 'warn', got {self.deterministic!r}")
        if n_dev:  # fast_dev_run: n batches of each, no sanity check, no loggers, no checkpoints
            self.max_steps, self.max_epochs = n_dev, 1
            self.limit_train_batches = self.limit_val_batches = n_dev
            self.limit_test_batches = self.limit_predict_batches = n_dev
            self.num_sanity_val_steps, self.val_check_interval = 0, 1.0
            self.check_val_every_n_epoch = 1
        if self.overfit_batches > 0:  # Lightning: overrides limit_train/val_batches (fast_dev_run's too)
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches


# What the Trainer copies from its TrainerConfig onto itself (Lightning's attribute names).
TRAINER_ATTRIBUTES = (
    "strategy", "accelerator", "num_devices", "num_nodes", "precision", "fast_dev_run", "max_time", "max_steps",
    "max_epochs", "min_epochs", "min_steps", "limit_train_batches", "limit_val_batches", "limit_test_batches",
    "limit_predict_batches", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "log_every_n_steps", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "deterministic", "benchmark", "inference_mode", "reload_dataloaders_every_n_epochs", "barebones",
    "enable_progress_bar", "enable_checkpointing", "enable_model_summary", "overfit_batches",
)  # fmt: skip


def _fspath(p):
    import os

    return os.fspath(p)


def parse_max_time(max_time):
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


def parse_limit(value, name):
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


# ---- callbacks and loggers ------------------------------------------------------------------------
def build_callbacks(callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary=False):
    """The user's callbacks plus the defaults (ModelSummary, ModelCheckpoint, progress bar),
    checkpoints last."""
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    has_ckpt = any(_is_instance_of(c, ("ModelCheckpoint", "Checkpoint")) for c in callbacks)
    if has_ckpt and not enable_checkpointing:
        raise ValueError(
            "Trainer was configured with enable_checkpointing=False but found a ModelCheckpoint in callbacks"
        )
    if enable_checkpointing and not has_ckpt:
        try:
            from dutycycle.callbacks import ModelCheckpoint

            callbacks.append(ModelCheckpoint())
        except ImportError:
            _warn_once("no-ckpt-cb", "dutycycle.callbacks is not available: no default ModelCheckpoint")
    if enable_model_summary and not any(_is_instance_of(c, ("ModelSummary",)) for c in callbacks):
        from dutycycle.callbacks import ModelSummary

        callbacks.append(ModelSummary())
    if enable_progress_bar and not any(
        _is_instance_of(c, ("ProgressBar",)) or "ProgressBar" in type(c).__name__ for c in callbacks
    ):
        try:
            from dutycycle.callbacks import TQDMProgressBar

            callbacks.append(TQDMProgressBar())
        except ImportError:
            _warn_once("no-bar-cb", "dutycycle.callbacks is not available: no progress bar")
    return reorder_callbacks(callbacks)


def reorder_callbacks(callbacks):
    # Lightning runs checkpoint callbacks last, so they see every metric the others logged.
    ckpt = [c for c in callbacks if _is_instance_of(c, ("ModelCheckpoint", "Checkpoint"))]
    return [c for c in callbacks if c not in ckpt] + ckpt


def build_loggers(logger, fast_dev_run_batches, default_root_dir):
    if fast_dev_run_batches or logger is False:
        return []
    if logger is None or logger is True:
        # Lightning's default: TensorBoardLogger when tensorboard (or tensorboardX) is installed, else
        # CSVLogger; both in <default_root_dir>/lightning_logs/version_<n>. Our TensorBoardLogger writes
        # the event files itself: the package only decides, as it does for Lightning, which one you get.
        from dutycycle.loggers import CSVLogger, TensorBoardLogger

        cls = TensorBoardLogger if tensorboard_available() else CSVLogger
        return [cls(save_dir=default_root_dir, name="lightning_logs")]
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def tensorboard_available():
    """Whether `tensorboard` or `tensorboardX` is installed (found, not imported: importing is slow)."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


# ---- configure_optimizers' return value ---------------------------------------------------------
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


def parse_optimizer_config(out):
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
        opts, scheds = _parse_opt_dict(out, bad)
    elif isinstance(out, (list, tuple)) and len(out) == 2 and isinstance(out[0], (list, tuple)):
        opts = list(out[0])
        scheds = [_sched_config(s, bad) for s in (out[1] if isinstance(out[1], (list, tuple)) else [out[1]])]
    elif isinstance(out, (list, tuple)) and out and all(isinstance(o, dict) for o in out):
        for d in out:
            o, s = _parse_opt_dict(d, bad)
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


def _parse_opt_dict(d, bad):
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if "optimizer" not in d:
        raise bad("the dict has no 'optimizer' key")
    if extra:
        raise bad(f"unknown keys {sorted(extra)} in the dict")
    scheds = []
    if d.get("lr_scheduler") is not None:
        scheds = [_sched_config(d["lr_scheduler"], bad, monitor=d.get("monitor"))]
    return [d["optimizer"]], scheds


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


# ---- training_step's return value (automatic optimization) -----------------------------------------
def training_loss(out):
    """The loss in what training_step returned (a Tensor, a dict with "loss", or None: skip),
    checked as automatic optimization needs it."""
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
