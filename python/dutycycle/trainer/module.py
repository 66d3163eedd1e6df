"""LightningModule and LightningDataModule: Lightning's user-facing classes, same names, same meaning.

A LightningModule is an nn.Module that also says how to train itself (training_step,
configure_optimizers, ...). Every hook here is a no-op the user overrides; the Trainer calls them
all from one place (Trainer._call_hook), in Lightning's documented order. self.log() hands values
to the trainer's metric store (trainer._results): no float conversion and no sync happens here.
"""

from __future__ import annotations

import inspect
import warnings

import dutycycle as dc
from dutycycle import nn


class AttributeDict(dict):
    """A dict with attribute access (Lightning's hparams type)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"'AttributeDict' object has no attribute '{key}'") from None

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        del self[key]


def _init_args_from_frame(frame, ignore):
    """The arguments of the __init__ running in frame (Lightning's save_hyperparameters())."""
    code = frame.f_code
    local = frame.f_locals
    nargs = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:nargs])
    if code.co_flags & inspect.CO_VARARGS:
        nargs += 1
    out = {n: local[n] for n in names[1:] if n in local}  # [0] is self
    if code.co_flags & inspect.CO_VARKEYWORDS:
        out.update(local.get(code.co_varnames[nargs], {}) or {})
    return {k: v for k, v in out.items() if k not in ignore and not k.startswith("__")}


class HyperparametersMixin:
    def save_hyperparameters(self, *args, ignore=None, frame=None, logger=True):
        """Store the caller's __init__ arguments (or the named ones) in self.hparams."""
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        if len(args) == 1 and isinstance(args[0], dict):
            hp = dict(args[0])
        else:
            if frame is None:
                frame = inspect.currentframe().f_back
            init_args = _init_args_from_frame(frame, ignore)
            if args:
                missing = [a for a in args if a not in init_args]
                if missing:
                    raise ValueError(f"save_hyperparameters: {missing} are not arguments of __init__")
                hp = {a: init_args[a] for a in args}
            else:
                hp = init_args
        object.__setattr__(self, "_hparams", AttributeDict(hp))
        object.__setattr__(self, "_log_hyperparams", logger)

    @property
    def hparams(self):
        if "_hparams" not in self.__dict__:
            object.__setattr__(self, "_hparams", AttributeDict())
        return self.__dict__["_hparams"]


class LightningOptimizer:
    """What module.optimizers() returns, and what the optimizer_step hook gets: the optimizer,
    whose step() goes through the trainer to trainer.strategy.optimizer_step (and, in manual
    optimization, the on_before_optimizer_step hook and the step count), as Lightning's
    LightningOptimizer does. Attributes pass through, and isinstance() sees the optimizer's class."""

    def __init__(self, optimizer, trainer, automatic=False):
        self._optimizer = optimizer
        self._trainer = trainer
        self._automatic = automatic  # made by the loop for the optimizer_step hook

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def __class__(self):
        # isinstance(opt, dc.optim.SGD) stays True for the wrapper (type() still says LightningOptimizer)
        return type(self._optimizer)

    def step(self, closure=None, **kwargs):
        return self._trainer._optimizer_step(self._optimizer, closure, automatic=self._automatic, **kwargs)

    def zero_grad(self, set_to_none=True):
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        return getattr(self._optimizer, name)


class LightningModule(HyperparametersMixin, nn.Module):
    """An nn.Module that knows how to train itself. Subclass it; override what you need."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        d = object.__setattr__
        d(self, "_trainer", None)
        d(self, "_automatic_optimization", True)
        d(self, "_current_fx", None)
        d(self, "_device", dc.device("cpu"))
        d(self, "example_input_array", None)

    # ---- properties --------------------------------------------------------------------------
    @property
    def trainer(self):
        t = self.__dict__.get("_trainer")
        if t is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a `Trainer`.")
        return t

    @trainer.setter
    def trainer(self, trainer):
        object.__setattr__(self, "_trainer", trainer)

    @property
    def _attached(self):
        return self.__dict__.get("_trainer") is not None

    @property
    def device(self):
        for p in self.parameters():
            return p.device
        return self.__dict__.get("_device", dc.device("cpu"))

    @property
    def dtype(self):
        for p in self.parameters():
            return p.dtype
        return dc.float32

    @property
    def global_step(self):
        return self.trainer.global_step if self._attached else 0

    @property
    def current_epoch(self):
        return self.trainer.current_epoch if self._attached else 0

    @property
    def automatic_optimization(self):
        return self.__dict__.get("_automatic_optimization", True)

    @automatic_optimization.setter
    def automatic_optimization(self, value):
        object.__setattr__(self, "_automatic_optimization", bool(value))

    @property
    def logger(self):
        return self.trainer.logger if self._attached else None

    @property
    def loggers(self):
        return self.trainer.loggers if self._attached else []

    @property
    def on_gpu(self):
        return self.device.type == "cuda"

    @property
    def local_rank(self):
        t = self.__dict__.get("_trainer")
        return t.local_rank if t is not None else 0

    @property
    def global_rank(self):
        t = self.__dict__.get("_trainer")
        return t.global_rank if t is not None else 0

    # ---- logging -----------------------------------------------------------------------------
    def log(
        self,
        name,
        value,
        prog_bar=False,
        logger=None,
        on_step=None,
        on_epoch=None,
        reduce_fx="mean",
        enable_graph=False,
        sync_dist=False,
        sync_dist_group=None,
        add_dataloader_idx=True,
        batch_size=None,
        metric_attribute=None,
        rank_zero_only=False,
    ):
        """Record a metric. Defaults follow the hook it is called from (Lightning's table):
        training_step and the train-batch hooks log on_step; everything else on_epoch.
        With both on, the logger gets "name_step" and "name_epoch". The value stays a tensor
        (no sync) until the trainer writes it out."""
        if not self._attached:
            warnings.warn(
                f"You are trying to `self.log({name!r})` but the `self.trainer` reference is not registered "
                "on the model yet; the value is dropped.",
                stacklevel=2,
            )
            return
        self.trainer._results.log(
            self.__dict__.get("_current_fx"),
            name,
            value,
            prog_bar=prog_bar,
            logger=logger,
            on_step=on_step,
            on_epoch=on_epoch,
            reduce_fx=reduce_fx,
            sync_dist=sync_dist,
            batch_size=batch_size,
            add_dataloader_idx=add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary,
        prog_bar=False,
        logger=None,
        on_step=None,
        on_epoch=None,
        reduce_fx="mean",
        enable_graph=False,
        sync_dist=False,
        sync_dist_group=None,
        add_dataloader_idx=True,
        batch_size=None,
        rank_zero_only=False,
    ):
        for k, v in dictionary.items():
            self.log(
                k,
                v,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                sync_dist=sync_dist,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
            )

    def print(self, *args, **kwargs):
        print(*args, **kwargs)

    # ---- steps -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def training_step(self, *args, **kwargs):
        raise NotImplementedError("`training_step` must be implemented to be used with the Lightning Trainer")

    def configure_optimizers(self):
        raise NotImplementedError("`configure_optimizers` must be implemented to be used with the Lightning Trainer")

    # validation_step / test_step / predict_step: deliberately NOT defined here, so the trainer
    # can tell whether the user wrote one (Lightning skips the loop otherwise). predict_step
    # has Lightning's default (forward on the batch) via _default_predict_step.
    def _default_predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch)

    def configure_callbacks(self):
        return []

    def configure_model(self):
        pass

    # ---- optimization helpers ----------------------------------------------------------------
    def optimizers(self, use_pl_optimizer=True):
        opts = self.trainer.optimizers
        if use_pl_optimizer:
            opts = [LightningOptimizer(o, self.trainer) for o in opts]
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self):
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def toggle_optimizer(self, optimizer):
        """Make only `optimizer`'s parameters require grad (the others are switched off until
        untoggle_optimizer), as Lightning does for alternating GAN updates."""
        opt = getattr(optimizer, "optimizer", optimizer)
        mine = {id(p) for g in opt.param_groups for p in g["params"]}
        saved = {}
        for o in self.trainer.optimizers:
            for g in o.param_groups:
                for p in g["params"]:
                    if id(p) not in mine and id(p) not in saved:
                        saved[id(p)] = (p, p.requires_grad)
                        p.requires_grad = False
        self._toggled = saved

    def untoggle_optimizer(self, optimizer):
        """Restore the requires_grad flags that toggle_optimizer switched off."""
        for p, flag in getattr(self, "_toggled", {}).values():
            p.requires_grad = flag
        self._toggled = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=True, **kwargs):
        """A new `cls` built from the checkpoint's saved hyperparameters (overridden by kwargs),
        with its weights loaded (Lightning's classmethod). map_location: a device to move to."""
        from .checkpoint_io import load_checkpoint

        if hparams_file is not None:
            raise NotImplementedError("hparams_file is not supported; hyperparameters come from the checkpoint")
        ckpt = load_checkpoint(checkpoint_path)
        if "state_dict" not in ckpt:
            raise ValueError(f"{checkpoint_path}: not a Trainer checkpoint (no 'state_dict' entry)")
        hp = dict(ckpt.get("hyper_parameters") or {})
        hp.update(kwargs)
        model = cls(**hp)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"], strict=strict)
        if map_location is not None and not callable(map_location):
            model.to(map_location)
        return model

    def manual_backward(self, loss, *args, **kwargs):
        self.trainer._backward(loss, *args, **kwargs)

    def backward(self, loss, *args, **kwargs):
        loss.backward(*args, **kwargs)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler, metric):
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algo = gradient_clip_algorithm or "norm"
        if algo not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm {algo!r} is not one of 'norm', 'value'")
        trainer = self.__dict__.get("_trainer")
        if trainer is not None:  # the strategy clips: a sharded one waits for the reduced gradients
            return trainer.strategy.clip_gradients(optimizer, gradient_clip_val, algo)
        return clip_local_gradients(optimizer, gradient_clip_val, algo)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- data transfer -----------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx):
        return batch

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch

    # ---- hooks (no-ops) ----------------------------------------------------------------------
    def prepare_data(self):
        pass

    def setup(self, stage):
        pass

    def teardown(self, stage):
        pass

    def on_fit_start(self):
        pass

    def on_fit_end(self):
        pass

    def on_train_start(self):
        pass

    def on_train_end(self):
        pass

    def on_validation_start(self):
        pass

    def on_validation_end(self):
        pass

    def on_test_start(self):
        pass

    def on_test_end(self):
        pass

    def on_predict_start(self):
        pass

    def on_predict_end(self):
        pass

    def on_train_epoch_start(self):
        pass

    def on_train_epoch_end(self):
        pass

    def on_validation_epoch_start(self):
        pass

    def on_validation_epoch_end(self):
        pass

    def on_test_epoch_start(self):
        pass

    def on_test_epoch_end(self):
        pass

    def on_predict_epoch_start(self):
        pass

    def on_predict_epoch_end(self):
        pass

    def on_train_batch_start(self, batch, batch_idx):
        pass

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        pass

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        pass

    def on_test_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0):
        pass

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    def on_before_backward(self, loss):
        pass

    def on_after_backward(self):
        pass

    def on_before_optimizer_step(self, optimizer):
        pass

    def on_before_zero_grad(self, optimizer):
        pass

    def on_save_checkpoint(self, checkpoint):
        pass

    def on_load_checkpoint(self, checkpoint):
        pass

    def on_validation_model_eval(self):
        self.eval()

    def on_validation_model_train(self):
        self.train()

    def on_test_model_eval(self):
        self.eval()

    def on_test_model_train(self):
        self.train()

    def on_predict_model_eval(self):
        self.eval()


class LightningDataModule(HyperparametersMixin):
    """Groups the data steps: prepare_data (download once), setup(stage) (split/build datasets),
    and the *_dataloader() factories. Same names and call order as Lightning."""

    def __init__(self):
        self.trainer = None

    def prepare_data(self):
        pass

    def setup(self, stage):
        pass

    def teardown(self, stage):
        pass

    def train_dataloader(self):
        raise NotImplementedError(f"{type(self).__name__} does not define train_dataloader()")

    # val/test/predict_dataloader: not defined here, so the trainer can tell they are absent.

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass

    def on_before_batch_transfer(self, batch, dataloader_idx):
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return move_data_to_device(batch, device)

    @classmethod
    def from_datasets(
        cls,
        train_dataset=None,
        val_dataset=None,
        test_dataset=None,
        predict_dataset=None,
        batch_size=1,
        num_workers=0,
        **loader_kwargs,
    ):
        from dutycycle.data import DataLoader

        dm = cls()

        def mk(ds, shuffle):
            if ds is None:
                return None
            return lambda: DataLoader(
                ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **loader_kwargs
            )

        for name, ds, sh in (
            ("train", train_dataset, True),
            ("val", val_dataset, False),
            ("test", test_dataset, False),
            ("predict", predict_dataset, False),
        ):
            fn = mk(ds, sh)
            if fn is not None:
                setattr(dm, f"{name}_dataloader", fn)
        return dm


def apply_to_tensors(batch, fn):
    """batch with fn applied to every tensor in it (dicts, lists, tuples, namedtuples, nested);
    everything else left as it is."""
    if isinstance(batch, dc.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return type(batch)((k, apply_to_tensors(v, fn)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(apply_to_tensors(v, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(apply_to_tensors(v, fn) for v in batch)
    return batch


def move_data_to_device(batch, device):
    """Tensors anywhere in batch (dicts, lists, tuples, namedtuples) moved to device; a no-op
    (no copy) when they are already there."""

    def move(t):
        if t.device == device:
            return t
        if device.type == "cuda" and t.device.type == "cpu":
            return dc.cuda._copy_to_device_overlapped(t, device)  # on the copy stream: no host wait
        return t.to(device)  # note: host -> device copy

    return apply_to_tensors(batch, move)


def clip_local_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm="norm"):
    """Clip this process's .grad of optimizer's parameters (what one device, and ddp after its
    all-reduce, clips): by global norm or by value."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if gradient_clip_algorithm == "norm":
        nn.utils.clip_grad_norm_(params, gradient_clip_val)  # on the device: no sync
    else:
        nn.utils.clip_grad_value_(params, gradient_clip_val)
