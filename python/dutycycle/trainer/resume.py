"""Resume bookkeeping: one LoopPosition says where the fit loop is and where a resumed fit starts.

A checkpoint taken at any moment of fit stores the position of the NEXT training batch (epoch,
batch inside the epoch), the global step, the time trained so far, the RNG states and the train
DataLoader's state. Restoring it answers, for the loop:

* where to start: `start(current_epoch)` -> (epoch, batches to skip in it);
* what to skip: the first `skip` batches of that epoch — by loading the DataLoader's state when it
  has one, else by replaying the epoch's order from its start-of-epoch RNG and dropping them;
* whether to run the sanity check: `skip_sanity_check` (a resumed fit skips it, as Lightning);
* which RNG states to put back, and when: at an epoch boundary before the epoch starts, mid-epoch
  after the epoch's iterator exists, so the run continues bit for bit;
* the running epoch's self.log accumulators (mid-epoch only), callback and logged metrics.

The loop reports progress back with `batch_done` / `epoch_exhausted`; `state_dict(trainer)`
is what a checkpoint stores under "loops".
"""

from __future__ import annotations

import os
import random
import warnings
from time import perf_counter

import numpy as np

import dutycycle as dc


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


def get_rng_states():
    return {
        "dutycycle": list(dc.get_rng_state()),
        "numpy": list(np.random.get_state()),
        "python": random.getstate(),
    }


def set_rng_states(states):
    if "dutycycle" in states:
        dc.set_rng_state(tuple(states["dutycycle"]))
    if "numpy" in states:
        np.random.set_state(tuple(states["numpy"]))
    if "python" in states:
        py = states["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))


def metric_state(trainer):
    """The train stage's self.log accumulators and the callback / logged metrics, as stored."""
    return {
        "results": trainer._results.state_dict("train"),
        "callback_metrics": dict(trainer.callback_metrics),
        "logged_metrics": dict(trainer.logged_metrics),
    }


class LoopPosition:
    """Where fit is: the next training batch, and (after a restore) what the first epoch resumes."""

    def __init__(self):
        self.reset()

    def reset(self):
        """A new fit: start at epoch 0, batch 0, nothing restored."""
        self.next_epoch = 0  # (next_epoch, next_batch): the batch a checkpoint taken now resumes at
        self.next_batch = 0
        self.batches_done = 0  # batches finished in the running epoch
        self.epoch_rng = None  # RNG states at the start of the running epoch (resume without loader state)
        self.cut_metrics = None  # metric state of an epoch cut short, as it was before its epoch end
        self.time_offset = 0.0  # seconds trained before a resume (max_time)
        self.t0 = None
        self.restored = None  # what a checkpoint said, until the first epoch consumes it

    # ---- answers for the loop -------------------------------------------------------------------
    @property
    def resuming(self):
        return self.restored is not None

    @property
    def skip_sanity_check(self):
        return self.resuming  # Lightning skips it on resume: it would disturb the restored state

    def start(self, current_epoch):
        """(epoch, batches to skip in it) for fit's first epoch."""
        return (self.next_epoch, self.next_batch) if self.resuming else (current_epoch, 0)

    def start_clock(self):
        self.t0 = perf_counter()

    def elapsed(self):
        """Seconds trained in this fit, plus those before the resume."""
        return self.time_offset + (perf_counter() - self.t0 if self.t0 is not None else 0.0)

    def begin_epoch(self, skip):
        """Hand the restored state to this (the first) epoch. At an epoch boundary (skip == 0) the
        RNG states go back now and nothing else is needed: returns None. Mid-epoch returns the
        restored dict, for the metric accumulators and epoch_iterator."""
        restored, self.restored = self.restored, None
        self.cut_metrics = None
        if restored is not None and not skip and restored.get("rng_states") is not None:
            set_rng_states(restored["rng_states"])
        return restored if skip else None

    def epoch_iterator(self, loader, skip, restored):
        """iter(loader) for the epoch; a resumed epoch continues after its first `skip` batches."""
        if restored is not None and restored.get("train_dataloader") is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(restored["train_dataloader"])
            it = iter(loader)
        elif restored is not None:
            if restored.get("epoch_rng") is not None:
                set_rng_states(restored["epoch_rng"])
            it = iter(loader)
            for _ in range(skip):  # no loader state: replay the epoch's order, drop what was done
                next(it)
        else:
            self.epoch_rng = get_rng_states()
            it = iter(loader)
        if restored is not None:
            self.epoch_rng = restored.get("epoch_rng")
            if restored.get("rng_states") is not None:
                set_rng_states(restored["rng_states"])  # after iter(): the run goes on bit for bit
        self.batches_done = skip
        return it

    # ---- progress reports from the loop -----------------------------------------------------------
    def batch_done(self, epoch, batch_idx, num_batches):
        """Batch batch_idx of epoch finished: a checkpoint from here on resumes after it."""
        self.batches_done = batch_idx + 1
        if self.batches_done >= num_batches:
            self.next_epoch, self.next_batch = epoch + 1, 0
        else:
            self.next_epoch, self.next_batch = epoch, self.batches_done

    def epoch_exhausted(self, epoch):
        """The loader ran out: the next batch is the next epoch's first."""
        self.next_epoch, self.next_batch = epoch + 1, 0

    def cut_epoch(self, trainer):
        """fit stopped mid-epoch: a checkpoint taken from here on (at or after the epoch-end hooks)
        resumes inside this epoch, so it keeps the metrics as they were before the epoch end."""
        self.cut_metrics = metric_state(trainer)

    # ---- checkpoint -------------------------------------------------------------------------------
    def state_dict(self, trainer):
        """checkpoint["loops"]."""
        loader = trainer.train_dataloader
        mid_epoch = self.next_batch > 0
        loader_state = None
        if loader is not None and hasattr(loader, "state_dict") and mid_epoch:
            loader_state = loader.state_dict()
        metrics = self.cut_metrics if self.cut_metrics is not None else metric_state(trainer)
        return {
            "fit_loop": {
                "current_epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "next_epoch": self.next_epoch,
                "next_batch": self.next_batch,
                "total_batch_idx": trainer.fit_loop.epoch_loop.total_batch_idx,
                "time_elapsed": self.elapsed(),
                "train_dataloader": loader_state,
                "epoch_rng": self.epoch_rng,
                # the running epoch's self.log accumulators (only mid-epoch: a new epoch starts empty)
                "results": metrics["results"] if mid_epoch else None,
                "callback_metrics": metrics["callback_metrics"],
                "logged_metrics": metrics["logged_metrics"],
            }
        }

    def load_state_dict(self, trainer, ckpt):
        """Put the loop back where ckpt says: the trainer's counters and metrics now, the rest
        (loader state, RNG, accumulators) for the first epoch to consume."""
        loop = (ckpt.get("loops") or {}).get("fit_loop", {})
        trainer.global_step = int(loop.get("global_step", ckpt.get("global_step", 0)))
        trainer.current_epoch = int(loop.get("current_epoch", ckpt.get("epoch", 0)))
        self.next_epoch = int(loop.get("next_epoch", trainer.current_epoch))
        self.next_batch = int(loop.get("next_batch", 0))
        trainer.fit_loop.epoch_loop.total_batch_idx = int(loop.get("total_batch_idx", 0))
        self.time_offset = float(loop.get("time_elapsed", 0.0))
        self.restored = {
            "train_dataloader": loop.get("train_dataloader"),
            "epoch_rng": loop.get("epoch_rng"),
            "rng_states": ckpt.get("rng_states"),
            "results": loop.get("results"),
        }
        if loop.get("callback_metrics") is not None:
            trainer.callback_metrics.clear()  # the dict the Results share: update it in place
            for k, v in loop["callback_metrics"].items():
                trainer.callback_metrics[k] = v.to(trainer.root_device) if isinstance(v, dc.Tensor) else v
        if loop.get("logged_metrics") is not None:
            trainer.logged_metrics = dict(loop["logged_metrics"])
