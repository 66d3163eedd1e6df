"""Exact resume: stop a run at step k, resume from the checkpoint, and every later loss and the final
parameters equal an uninterrupted run's bit for bit (CPU). The model uses dropout (dutycycle's RNG),
the data is shuffled (seed drawn from dutycycle's RNG at each epoch), the training step draws from
numpy's and Python's global generators, and the optimizer is AdamW with a step-interval schedule, so
every piece of state the checkpoint must carry is exercised."""

import random

import numpy as np
import pytest
from trainer_helpers import Regressor, loader, quiet, regression_data

import dutycycle as dc
from dutycycle.trainer import Trainer, load_checkpoint, seed_everything


class Noisy(Regressor):
    def __init__(self):
        super().__init__(hidden=16, dropout=0.2, opt="adamw", lr=0.01)
        self.record = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        noise = float(np.random.rand()) * 1e-3 + random.random() * 1e-3  # global numpy / python RNGs
        loss = ((self(x) - y) ** 2).mean() + noise
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.record.append((self.trainer.global_step, self.current_epoch, batch_idx, outputs["loss"].item()))

    def configure_optimizers(self):
        opt = dc.optim.AdamW(self.parameters(), lr=0.01)
        sched = dc.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _run(callbacks=(), ckpt_path=None, max_epochs=3, max_steps=-1, num_workers=0, accumulate=1, **kw):
    seed_everything(123)
    x, y = regression_data(56)  # 7 batches of 8: epochs do not divide the stop steps evenly
    model = Noisy()
    trainer = Trainer(
        **quiet(
            max_epochs=max_epochs,
            max_steps=max_steps,
            callbacks=list(callbacks),
            accumulate_grad_batches=accumulate,
            **kw,
        )
    )
    trainer.fit(model, loader(x, y, shuffle=True, num_workers=num_workers), ckpt_path=ckpt_path)
    return model, trainer


def _params(m):
    return [p.detach().numpy().copy() for p in m.parameters()]


def _assert_same(full, resumed, k):
    later = [r for r in full.record if r[0] > k]
    assert resumed.record == later  # (step, epoch, batch_idx, loss) for every later step, bit for bit
    for a, b in zip(_params(full), _params(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [4, 7, 10])  # mid-epoch, at the epoch boundary, in the second epoch
def test_resume_after_max_steps_is_bit_exact(tmp_path, k):
    full, ft = _run()
    part, pt = _run(max_steps=k)
    assert pt.global_step == k
    pt.save_checkpoint(tmp_path / "k.ckpt")
    resumed, rt = _run(ckpt_path=tmp_path / "k.ckpt")
    _assert_same(full, resumed, k)
    assert rt.global_step == ft.global_step == 21 and rt.current_epoch == 3


def test_resume_from_modelcheckpoint_mid_epoch_with_should_stop(tmp_path):
    from dutycycle.callbacks import Callback, ModelCheckpoint

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 9:
                trainer.should_stop = True

    full, _ = _run()
    ck = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    part, pt = _run(callbacks=[ck, StopAt()], enable_checkpointing=True)
    assert pt.global_step == 9 and any(tmp_path.glob("*step=9*.ckpt"))
    ck2 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    resumed, rt = _run(callbacks=[ck2], ckpt_path="last", enable_checkpointing=True)
    _assert_same(full, resumed, 9)
    # the callback's state came back too
    assert ck2.state_dict()["best_model_path"] and rt.current_epoch == 3


def test_resume_with_loader_threads_and_accumulation(tmp_path):
    full, _ = _run(num_workers=2, accumulate=2, max_epochs=2)
    part, pt = _run(num_workers=2, accumulate=2, max_epochs=2, max_steps=3)
    pt.save_checkpoint(tmp_path / "a.ckpt")
    resumed, _ = _run(num_workers=2, accumulate=2, max_epochs=2, ckpt_path=tmp_path / "a.ckpt")
    _assert_same(full, resumed, 3)


def test_checkpoint_contents(tmp_path):
    part, pt = _run(max_steps=4)
    pt.save_checkpoint(tmp_path / "c.ckpt")
    ck = load_checkpoint(tmp_path / "c.ckpt")
    for key in (
        "epoch",
        "global_step",
        "dutycycle_version",
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "callbacks",
        "loops",
        "hyper_parameters",
        "rng_states",
    ):
        assert key in ck, key
    assert ck["global_step"] == 4 and set(ck["rng_states"]) == {"dutycycle", "numpy", "python"}
    loop = ck["loops"]["fit_loop"]
    assert (loop["next_epoch"], loop["next_batch"]) == (0, 4) and loop["train_dataloader"]["batches_yielded"] == 4
    assert ck["hyper_parameters"]["hidden"] == 16
    for name, t in part.state_dict().items():
        np.testing.assert_array_equal(ck["state_dict"][name].numpy(), t.numpy())
    weights = tmp_path / "w.ckpt"
    pt.save_checkpoint(weights, weights_only=True)
    assert "optimizer_states" not in load_checkpoint(weights)
    with pytest.raises(KeyError, match="weights_only"):
        _run(ckpt_path=weights)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    _, pt = _run(max_steps=2)
    path = tmp_path / "t.ckpt"
    pt.save_checkpoint(path)  # a checkpoint directory: one shard + manifest.json
    shard = path / "rank-00000-of-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match=r"t\.ckpt.*rank-00000-of-00001\.safetensors"):
        _run(ckpt_path=path)


# ---- epoch-level self.log values survive a mid-epoch resume -------------------------------------------
class EpochLogs(Noisy):
    """Logs on_epoch values of every kind: weighted mean, sum, max, min, a Python float, step+epoch,
    and a value logged in on_train_epoch_start."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("ep_mean", loss, on_step=False, on_epoch=True, batch_size=batch_idx + 1)
        self.log("ep_both", loss * 2, on_step=True, on_epoch=True, prog_bar=True)
        self.log("ep_sum", loss, on_epoch=True, reduce_fx="sum")
        self.log("ep_max", loss, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("ep_min", loss, on_step=False, on_epoch=True, reduce_fx="min")
        self.log("ep_float", float(batch_idx) / 3, on_step=False, on_epoch=True)
        if batch_idx == 1:
            self.log("only_batch_1", loss)  # on_step only: lives in callback_metrics
        return loss

    def on_train_epoch_start(self):
        self.log("ep_start", 1.0, reduce_fx="sum")


def _epoch_end_records(logger):
    """(step, metrics) the logger got at each training epoch end (the records with epoch keys)."""
    return [(s, m) for s, m in logger.metrics if "ep_mean" in m]


@pytest.mark.parametrize("k", [4, 10])  # in the first epoch, in the second
@pytest.mark.parametrize("saver", ["after_fit", "callback"])  # after the cut epoch ended / at the batch end
def test_resume_mid_epoch_keeps_epoch_metrics_exact(tmp_path, k, saver):
    from trainer_helpers import RecordingLogger

    from dutycycle.callbacks import ModelCheckpoint

    def run(ckpt_path=None, max_steps=-1, callbacks=()):
        seed_everything(123)
        x, y = regression_data(56)  # 7 batches an epoch
        lg = RecordingLogger()
        kw = dict(max_epochs=3, max_steps=max_steps, logger=lg, log_every_n_steps=1, callbacks=list(callbacks))
        t = Trainer(**quiet(enable_checkpointing=bool(callbacks), **kw))
        t.fit(EpochLogs(), loader(x, y, shuffle=True), ckpt_path=ckpt_path)
        return t, lg

    full, full_lg = run()
    if saver == "after_fit":
        part, _ = run(max_steps=k)
        part.save_checkpoint(tmp_path / "k.ckpt")
    else:
        run(max_steps=k, callbacks=[ModelCheckpoint(dirpath=tmp_path / "mc", every_n_train_steps=k, save_top_k=-1)])
        (path,) = (tmp_path / "mc").glob(f"*step={k}*.ckpt")
        path.rename(tmp_path / "k.ckpt")
    resumed, res_lg = run(ckpt_path=tmp_path / "k.ckpt")
    # every epoch that ends after the resume ends with the uninterrupted run's values, bit for bit
    want = [r for r in _epoch_end_records(full_lg) if r[0] >= k]
    assert len(want) == (3 if k < 7 else 2)
    assert _epoch_end_records(res_lg) == want
    assert want[0][1]["ep_start"] == 1.0  # counted once, not again by the resumed epoch's start
    cm = {n: float(v) for n, v in resumed.callback_metrics.items()}
    assert cm == {n: float(v) for n, v in full.callback_metrics.items()}

    def logged(t):  # the duty split is wall time, the rest must match
        return {n: v for n, v in t.logged_metrics.items() if not n.startswith("duty/")}

    assert logged(resumed) == logged(full) and "ep_mean" in logged(full)
    assert resumed.progress_bar_metrics.keys() == full.progress_bar_metrics.keys()
    # the accumulators are in the checkpoint's loop state (tensors and numbers, no pickle)
    saved = load_checkpoint(tmp_path / "k.ckpt")["loops"]["fit_loop"]
    names = [d["name"] for d in saved["results"]]
    assert names[:2] == ["ep_start", "train_loss"] and "ep_float" in names
    ep_mean = next(d for d in saved["results"] if d["name"] == "ep_mean")
    done = k % 7
    assert len(ep_mean["values"]) == done and ep_mean["weights"] == list(range(1, done + 1))
    assert isinstance(ep_mean["values"][0], dc.Tensor)


def test_resume_at_epoch_boundary_saves_no_accumulators(tmp_path):
    part, pt = _run(max_steps=7)
    pt.save_checkpoint(tmp_path / "b.ckpt")
    loop = load_checkpoint(tmp_path / "b.ckpt")["loops"]["fit_loop"]
    assert (loop["next_epoch"], loop["next_batch"]) == (1, 0) and loop["results"] is None
    assert "train_loss" in loop["callback_metrics"]
