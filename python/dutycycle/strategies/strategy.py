"""The Strategy base class: the seam between the fit loop and the devices/processes it runs on.

Same shape as Lightning's `Strategy`: the loop never calls `loss.backward()`, `optimizer.step()`
or writes a checkpoint file itself; it asks the strategy. A single-device run does the obvious
thing (SingleDeviceStrategy); a data-parallel strategy overrides `backward` (gradients averaged
across processes), `optimizer_step` (a sharded step) and the collectives, and keeps the rest.

Hooks stay the Trainer's: `backward` runs the LightningModule's `backward` hook through the
Trainer's one hook dispatcher, so `self.log` inside it and the hook order are unchanged.
"""

from __future__ import annotations

import abc
import contextlib

# reduce_op names every strategy accepts ("avg" is Lightning's alias for "mean").
REDUCE_OPS = ("mean", "avg", "sum", "max", "min")


class Strategy(abc.ABC):
    """Base class. Subclasses define `root_device`; everything else has a one-process default."""

    def __init__(self):
        self._trainer = None  # set by setup(trainer); borrowed, the trainer owns the strategy

    # ---- who and where ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def root_device(self):
        """The device this process trains on (a dutycycle.device)."""

    @property
    def global_rank(self):
        return 0

    @property
    def local_rank(self):
        return 0

    @property
    def node_rank(self):
        return 0

    @property
    def world_size(self):
        return 1

    @property
    def is_global_zero(self):
        return self.global_rank == 0

    @property
    def trainer(self):
        return self._trainer

    @property
    def lightning_module(self):
        return self._trainer.lightning_module if self._trainer is not None else None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def setup_environment(self):
        """Called first by every entry point (fit/validate/test/predict), before any hook: a
        multi-process strategy checks its launch and joins its process group here."""
        return None

    def setup(self, trainer):
        """Called once per fit/validate/test/predict, after configure_model: attach to the trainer
        and put the model on root_device."""
        self._trainer = trainer
        self.model_to_device()

    def model_to_device(self):
        m = self.lightning_module
        if m is None:
            return
        if self.root_device.type != "cpu":
            m.to(self.root_device)  # note: host -> device copy of the parameters
        object.__setattr__(m, "_device", self.root_device)

    def teardown(self):
        """Called at the end of every entry point (after the module's teardown hook). Nothing to
        release for one process; a multi-process strategy frees its process group here."""
        return None

    def connect_optimizers(self, optimizers):
        """Called by fit right after configure_optimizers (before any training forward): a
        sharded strategy builds its flat buffers / optimizer shards here."""
        return None

    # ---- the step ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def block_backward_sync(self):
        """The Trainer runs the backward of a micro-batch that does not step (gradient
        accumulation) inside this: a data-parallel strategy skips its gradient communication."""
        yield

    def backward(self, loss, *args, **kwargs):
        """loss.backward() by way of the LightningModule's `backward` hook (the user may override
        it). The Trainer calls on_before_backward / on_after_backward around this."""
        trainer = self._require_trainer("backward")
        trainer._call_hook("backward", loss, *args, callbacks=False, **kwargs)

    def optimizer_step(self, optimizer, closure=None, model=None, **kwargs):
        """Run closure (training_step + backward) and step optimizer: optimizer.step(closure)."""
        return optimizer.step(closure=closure, **kwargs)

    def clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm="norm"):
        """LightningModule.clip_gradients comes here (inside the closure, right after backward).
        Default: clip this process's .grad (for ddp they are already averaged). A sharded strategy
        overrides it to clip the reduced gradients in its optimizer step."""
        from ..trainer.module import clip_local_gradients

        return clip_local_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- collectives (identity for one process) ----------------------------------------------------
    def reduce(self, tensor, group=None, reduce_op="mean"):
        """Reduce tensor across processes with reduce_op ('mean', 'sum', 'max', 'min'). One
        process: the tensor itself (after checking reduce_op, so a typo fails on one device too)."""
        _check_reduce_op(reduce_op)
        return tensor

    def all_gather(self, tensor, group=None, sync_grads=False):
        """Every process's tensor stacked along a new first dim; one process: the tensor itself
        (Lightning's SingleDeviceStrategy returns it unchanged too)."""
        return tensor

    def broadcast(self, obj, src=0):
        """obj as process src has it, on every process; one process: obj."""
        if src != 0:
            raise ValueError(f"broadcast(src={src!r}): this run has world_size={self.world_size}, so src must be 0")
        return obj

    def barrier(self, name=None):
        """Wait until every process reaches this point. One process: returns at once."""
        return None

    def reduce_boolean_decision(self, decision, all=True):
        """Whether all (or any) processes decided True; one process: its own decision."""
        return bool(decision)

    # ---- checkpoints -------------------------------------------------------------------------------
    def lightning_module_state_dict(self):
        """The weights that go into a checkpoint (a sharded strategy gathers them here)."""
        return self.lightning_module.state_dict()

    def optimizer_state(self, optimizer):
        """One optimizer's state_dict for a checkpoint (a sharded strategy consolidates it here)."""
        return optimizer.state_dict()

    @property
    def checkpointer(self):
        """The background checkpoint writer (dutycycle.checkpoint.Checkpointer) of this process,
        created at the first save; ModelCheckpoint sets its options."""
        c = self.__dict__.get("_checkpointer")
        if c is None:
            from ..checkpoint import Checkpointer

            c = self._checkpointer = Checkpointer()
        return c

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        """Write checkpoint (a dict) to checkpoint directory filepath; only global rank 0 writes.
        Lightning's signature, so a subclass that overrides it and calls super() keeps working;
        Trainer.save_checkpoint passes its options in `self._ckpt_save_options`: async_save (return
        after the snapshot, the write goes on in the background), link (a "last" path switched to
        it once committed), info (manifest fields). Returns the SaveStats (None off rank 0)."""
        opts = self.__dict__.get("_ckpt_save_options") or {}
        async_save, link, info = opts.get("async_save", False), opts.get("link"), opts.get("info")
        if storage_options is not None:
            raise TypeError(
                f"save_checkpoint(storage_options={storage_options!r}): dutycycle writes local files only; "
                "pass storage_options=None"
            )
        if self.is_global_zero:
            return self.checkpointer.save(checkpoint, filepath, link=link, info=info, block=not async_save)
        return None

    def load_optimizer_state(self, optimizer, state):
        """Put a checkpoint's optimizer state into optimizer (fit's resume). A sharded strategy
        takes its own part of it here; the default reads it whole."""
        from ..checkpoint import materialize

        optimizer.load_state_dict(materialize(state))

    def load_checkpoint(self, checkpoint_path):
        """Read a checkpoint back into a dict (tensors on the CPU), verified: a checkpoint
        directory, a last.ckpt link, or a single-file checkpoint of earlier versions."""
        from .. import checkpoint

        return checkpoint.load(checkpoint_path)

    def remove_checkpoint(self, filepath):
        """Delete a checkpoint (ModelCheckpoint's top-k bookkeeping) once the save in flight has
        committed; only global rank 0 deletes."""
        if self.is_global_zero:
            c = self.__dict__.get("_checkpointer")
            if c is not None:
                c.remove_after_commit(filepath)
            else:
                from ..checkpoint import remove

                remove(filepath)

    def checkpoint_poll(self):
        """Bookkeeping of a background save that finished; raises its error (on_error="raise")."""
        c = self.__dict__.get("_checkpointer")
        if c is not None:
            c.poll()

    def checkpoint_wait(self):
        """Wait for the background save in flight (end of fit); raises its error."""
        c = self.__dict__.get("_checkpointer")
        if c is not None:
            c.wait()

    # ---- helpers -----------------------------------------------------------------------------------
    def _require_trainer(self, what):
        if self._trainer is None:
            raise RuntimeError(
                f"{type(self).__name__}.{what}() needs a trainer: the Trainer calls strategy.setup(trainer) "
                "at the start of fit/validate/test/predict"
            )
        return self._trainer

    def __repr__(self):
        return f"{type(self).__name__}(root_device={self.root_device})"


def _check_reduce_op(reduce_op):
    op = reduce_op.lower() if isinstance(reduce_op, str) else reduce_op
    if op not in REDUCE_OPS:
        raise ValueError(f"reduce_op={reduce_op!r} is not known; expected one of {list(REDUCE_OPS)}")
