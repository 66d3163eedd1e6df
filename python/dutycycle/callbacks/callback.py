"""Callback: every Lightning hook as a no-op, plus state for checkpoints.

The trainer calls hooks from one place (its ``_call_callback_hooks``), in Lightning's documented order;
a callback overrides the hooks it needs. ``state_dict()`` is saved under ``state_key`` in the
checkpoint's "callbacks" dict and handed back to ``load_state_dict`` on resume.
"""


class Callback:
    """Base class of callbacks (Lightning's ``lightning.pytorch.callbacks.Callback``)."""

    @property
    def state_key(self):
        """Key of this callback's state in the checkpoint; unique per class unless overridden
        (callbacks that can appear more than once build it from their arguments)."""
        return self.__class__.__qualname__

    @property
    def _legacy_state_key(self):
        return type(self)

    def _generate_state_key(self, **kwargs):
        """``ClassName{'arg': value, ...}``, as Lightning builds keys for repeatable callbacks."""
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    # ---- stages -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        """Called when fit, validate, test or predict begins."""

    def teardown(self, trainer, pl_module, stage):
        """Called when fit, validate, test or predict ends."""

    def on_fit_start(self, trainer, pl_module):
        pass

    def on_fit_end(self, trainer, pl_module):
        pass

    def on_sanity_check_start(self, trainer, pl_module):
        pass

    def on_sanity_check_end(self, trainer, pl_module):
        pass

    # ---- training ---------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        pass

    def on_train_end(self, trainer, pl_module):
        pass

    def on_train_epoch_start(self, trainer, pl_module):
        pass

    def on_train_epoch_end(self, trainer, pl_module):
        """Called after the training epoch (and the validation at its end, if any)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass

    def on_before_backward(self, trainer, pl_module, loss):
        pass

    def on_after_backward(self, trainer, pl_module):
        pass

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        pass

    # ---- validation -------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        pass

    def on_validation_end(self, trainer, pl_module):
        pass

    def on_validation_epoch_start(self, trainer, pl_module):
        pass

    def on_validation_epoch_end(self, trainer, pl_module):
        pass

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pass

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    # ---- test -------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module):
        pass

    def on_test_end(self, trainer, pl_module):
        pass

    def on_test_epoch_start(self, trainer, pl_module):
        pass

    def on_test_epoch_end(self, trainer, pl_module):
        pass

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pass

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    # ---- predict ----------------------------------------------------------------------------
    def on_predict_start(self, trainer, pl_module):
        pass

    def on_predict_end(self, trainer, pl_module):
        pass

    def on_predict_epoch_start(self, trainer, pl_module):
        pass

    def on_predict_epoch_end(self, trainer, pl_module):
        pass

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pass

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pass

    # ---- failures and checkpoints -----------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception):
        """Called when fit/validate/test/predict raises."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """Called while the checkpoint dict is built; may add to it."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        """Called when a checkpoint is restored, with the whole checkpoint dict."""

    def state_dict(self):
        """This callback's state, saved in checkpoints (leaves: tensors, numbers, str, None, containers)."""
        return {}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict`` returned."""


class Checkpoint(Callback):
    """Base class of checkpoint-saving callbacks (the trainer looks for these)."""


HOOK_NAMES = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value) and (name.startswith("on_") or name in ("setup", "teardown"))
)


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_train_epoch_end=fn, ...)`` (Lightning's)."""

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(HOOK_NAMES))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hook names {unknown}; known hooks: {list(HOOK_NAMES)}")
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)
