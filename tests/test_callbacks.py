"""Callbacks: the Callback base, ModelCheckpoint, EarlyStopping, LearningRateMonitor and the progress
bars, driven by a small fake trainer (the attributes of the trainer contract) that calls the hooks in
Lightning's order; integration tests with the real Trainer are at the end."""

import io
import json
import logging
import math
import os
import re
import types
from datetime import timedelta

import pytest

import dutycycle as dc
from dutycycle.callbacks import (
    Callback,
    EarlyStopping,
    LambdaCallback,
    LearningRateMonitor,
    MisconfigurationException,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from dutycycle.callbacks import progress as progress_mod
from dutycycle.callbacks.callback import HOOK_NAMES
from dutycycle.loggers import CSVLogger

# ---------------------------------------------------------------------------------------------
# A fake trainer: the contract's attributes, and a fit loop that calls hooks in Lightning's order.


class FakeTrainer(types.SimpleNamespace):
    def __init__(self, tmp_path=None, callbacks=(), loggers=(), **kw):
        defaults = dict(
            current_epoch=0,
            global_step=0,
            max_epochs=None,
            max_steps=-1,
            should_stop=False,
            callback_metrics={},
            logged_metrics={},
            progress_bar_metrics={},
            lightning_module=None,
            optimizers=[],
            lr_scheduler_configs=[],
            loggers=list(loggers),
            callbacks=list(callbacks),
            default_root_dir=str(tmp_path) if tmp_path else os.getcwd(),
            is_global_zero=True,
            sanity_checking=False,
            training=False,
            validating=False,
            testing=False,
            predicting=False,
            state=types.SimpleNamespace(fn="fit"),
            num_training_batches=4,
            num_val_batches=[2],
            val_check_interval=1.0,
            check_val_every_n_epoch=1,
            log_every_n_steps=1,
            fast_dev_run=False,
            ckpt_path=None,
            enable_progress_bar=True,
            saved=[],
        )
        defaults.update(kw)
        super().__init__(**defaults)
        self.logger = self.loggers[0] if self.loggers else None

    def save_checkpoint(self, filepath, weights_only=False, async_save=False, link=None):
        with open(filepath, "w") as f:
            json.dump({"epoch": self.current_epoch, "global_step": self.global_step}, f)
        self.saved.append(os.path.basename(filepath))
        if link is not None:  # the real writer switches the link once the save committed
            from dutycycle.checkpoint import switch_link

            switch_link(link, filepath)  # linked, not saved: t.saved lists real writes only

    def call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(self, None, *args)

    def fit(self, epochs, val_metrics=None, train_metrics=None, steps_per_epoch=None, on_step=None):
        """Run `epochs` epochs; val_metrics[e] (a dict) becomes callback_metrics after epoch e's validation."""
        n = steps_per_epoch or self.num_training_batches
        self.call("setup", "fit")
        self.call("on_fit_start")
        if sum(self.num_val_batches):
            self.sanity_checking = True
            self.call("on_sanity_check_start")
            self.call("on_validation_start")
            for i in range(getattr(self, "num_sanity_val_batches", self.num_val_batches)[0]):
                self.call("on_validation_batch_start", None, i, 0)
                self.call("on_validation_batch_end", None, None, i, 0)
            self.call("on_validation_end")
            self.call("on_sanity_check_end")
            self.sanity_checking = False
        self.call("on_train_start")
        while self.current_epoch < epochs and not self.should_stop:
            e = self.current_epoch
            self.call("on_train_epoch_start")
            for i in range(n):
                self.call("on_train_batch_start", None, i)
                self.global_step += 1
                if on_step:
                    on_step(self)
                if train_metrics:
                    self.callback_metrics.update({k: dc.tensor(v) for k, v in train_metrics[e].items()})
                self.call("on_train_batch_end", None, None, i)
            if sum(self.num_val_batches):
                self.call("on_validation_start")
                for i in range(self.num_val_batches[0]):
                    self.call("on_validation_batch_start", None, i, 0)
                    self.call("on_validation_batch_end", None, None, i, 0)
                if val_metrics:
                    self.callback_metrics.update({k: dc.tensor(v) for k, v in val_metrics[e].items()})
                self.call("on_validation_end")
            self.call("on_train_epoch_end")
            self.current_epoch += 1
        self.call("on_train_end")
        self.call("on_fit_end")
        self.call("teardown", "fit")


def ckpts(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".ckpt"))


# ---------------------------------------------------------------------------------------------
# Callback base


def test_callback_has_every_lightning_hook_as_noop():
    expected = {
        "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
        "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
        "on_validation_epoch_start", "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end",
        "on_predict_epoch_start", "on_predict_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
        "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
        "on_train_start", "on_train_end", "on_validation_start", "on_validation_end", "on_test_start",
        "on_test_end", "on_predict_start", "on_predict_end", "on_exception", "on_save_checkpoint",
        "on_load_checkpoint", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
        "on_before_zero_grad",
    }  # fmt: skip
    assert expected <= set(HOOK_NAMES)
    cb = Callback()
    t = FakeTrainer()
    cb.setup(t, None, "fit")
    cb.on_train_batch_end(t, None, None, None, 0)
    cb.on_validation_batch_end(t, None, None, None, 0)
    cb.on_exception(t, None, RuntimeError("x"))
    assert cb.state_dict() == {}
    cb.load_state_dict({})
    assert cb.state_key == "Callback"
    assert cb._generate_state_key(a=1) == "Callback{'a': 1}"


def test_lambda_callback():
    seen = []
    cb = LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: seen.append(trainer.current_epoch))
    t = FakeTrainer(callbacks=[cb], num_val_batches=[0])
    t.fit(2)
    assert seen == [0, 1]
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_nothing=print)


# ---------------------------------------------------------------------------------------------
# ModelCheckpoint: names


def test_format_checkpoint_name():
    mc = ModelCheckpoint(filename="{epoch}-{step}-{val_loss:.3f}")
    assert mc.format_checkpoint_name({"epoch": 3, "step": 120, "val_loss": dc.tensor(0.1234)}) == (
        "epoch=3-step=120-val_loss=0.123.ckpt"
    )
    # default name, missing metric -> 0, version suffix, dirpath
    mc = ModelCheckpoint(dirpath="/tmp/ck")
    assert mc.format_checkpoint_name({"epoch": 1, "step": 5}) == "/tmp/ck/epoch=1-step=5.ckpt"
    assert mc.format_checkpoint_name({"epoch": 1, "step": 5}, ver=2) == "/tmp/ck/epoch=1-step=5-v2.ckpt"
    assert mc.format_checkpoint_name({}, filename="last") == "/tmp/ck/last.ckpt"
    mc = ModelCheckpoint(filename="{epoch:03d}-{acc:.2f}", auto_insert_metric_name=False)
    assert mc.format_checkpoint_name({"epoch": 7, "acc": 0.5}) == "007-0.50.ckpt"
    mc = ModelCheckpoint(filename="model-{missing}")
    assert mc.format_checkpoint_name({}) == "model-missing=0.ckpt"
    # names that contain others, and '/' in a metric name
    mc = ModelCheckpoint(filename="{val_loss_ema:.1f}-{val_loss:.1f}-{val/acc:.1f}")
    assert mc.format_checkpoint_name({"val_loss": 1.0, "val_loss_ema": 2.0, "val/acc": 0.5}) == (
        "val_loss_ema=2.0-val_loss=1.0-val/acc=0.5.ckpt"
    )
    assert ModelCheckpoint.CHECKPOINT_NAME_LAST == "last"


def test_invalid_configurations():
    with pytest.raises(MisconfigurationException, match="save_top_k"):
        ModelCheckpoint(save_top_k=-2)
    with pytest.raises(MisconfigurationException, match="mutually exclusive"):
        ModelCheckpoint(every_n_train_steps=2, every_n_epochs=1)
    with pytest.raises(MisconfigurationException, match="No quantity for top_k"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(MisconfigurationException, match="mode"):
        ModelCheckpoint(monitor="x", mode="avg")
    with pytest.raises(MisconfigurationException, match="every_n_train_steps"):
        ModelCheckpoint(every_n_train_steps=-1)
    assert isinstance(MisconfigurationException("x"), ValueError)


def test_state_key_distinguishes_instances():
    a = ModelCheckpoint(monitor="val_loss")
    b = ModelCheckpoint(monitor="val_acc", mode="max")
    assert a.state_key != b.state_key
    assert a.state_key.startswith("ModelCheckpoint{")


def test_dirpath_resolution(tmp_path):
    mc = ModelCheckpoint()
    t = FakeTrainer(tmp_path, loggers=[CSVLogger(tmp_path / "logs", name="exp")])
    mc.setup(t, None, "fit")
    assert mc.dirpath == os.path.realpath(tmp_path / "logs" / "exp" / "version_0" / "checkpoints")
    mc = ModelCheckpoint()
    mc.setup(FakeTrainer(tmp_path), None, "fit")
    assert mc.dirpath == os.path.realpath(tmp_path / "checkpoints")
    mc = ModelCheckpoint(dirpath=tmp_path / "given")
    mc.setup(FakeTrainer(tmp_path), None, "fit")
    assert mc.dirpath == os.path.realpath(tmp_path / "given")


# ---------------------------------------------------------------------------------------------
# ModelCheckpoint: top k


LOSSES = [5.0, 3.0, 4.0, 1.0, 2.0]


def test_top_k_min(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, filename="{epoch}-{val_loss:.1f}")
    t = FakeTrainer(tmp_path, callbacks=[mc])
    t.fit(5, val_metrics=[{"val_loss": v} for v in LOSSES])
    assert ckpts(tmp_path) == ["epoch=3-val_loss=1.0.ckpt", "epoch=4-val_loss=2.0.ckpt"]
    assert mc.best_model_path == str(tmp_path / "epoch=3-val_loss=1.0.ckpt")
    assert mc.best_model_score.item() == 1.0
    assert mc.kth_best_model_path == str(tmp_path / "epoch=4-val_loss=2.0.ckpt")
    assert mc.kth_value.item() == 2.0
    assert {os.path.basename(k): v.item() for k, v in mc.best_k_models.items()} == {
        "epoch=3-val_loss=1.0.ckpt": 1.0,
        "epoch=4-val_loss=2.0.ckpt": 2.0,
    }
    # saved in order: 0, 1, 2 (replaces 0), 3 (replaces 2), 4 (replaces 1)
    assert t.saved == [
        "epoch=0-val_loss=5.0.ckpt",
        "epoch=1-val_loss=3.0.ckpt",
        "epoch=2-val_loss=4.0.ckpt",
        "epoch=3-val_loss=1.0.ckpt",
        "epoch=4-val_loss=2.0.ckpt",
    ]


def test_top_k_max_and_not_in_top_k(tmp_path, caplog):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="acc", mode="max", save_top_k=1, verbose=True)
    t = FakeTrainer(tmp_path, callbacks=[mc])
    with caplog.at_level(logging.INFO, logger="dutycycle.callbacks"):
        t.fit(4, val_metrics=[{"acc": v} for v in [0.5, 0.7, 0.6, 0.9]])
    assert ckpts(tmp_path) == ["epoch=3-step=16.ckpt"]
    assert mc.best_model_score.item() == pytest.approx(0.9)
    assert len(t.saved) == 3  # epoch 2 (0.6) was not better than 0.7
    assert "'acc' was not in top 1" in caplog.text
    assert "reached 0.90000" in caplog.text


def test_save_top_k_all_zero_and_last(tmp_path):
    d_all, d_none = tmp_path / "all", tmp_path / "none"
    a = ModelCheckpoint(dirpath=d_all, monitor="val_loss", save_top_k=-1)
    n = ModelCheckpoint(dirpath=d_none, monitor="val_loss", save_top_k=0, save_last=True)
    t = FakeTrainer(tmp_path, callbacks=[a, n])
    t.fit(3, val_metrics=[{"val_loss": v} for v in LOSSES])
    assert ckpts(d_all) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert a.best_model_path.endswith("epoch=1-step=8.ckpt")
    assert ckpts(d_none) == ["last.ckpt"]
    assert n.last_model_path == str(d_none / "last.ckpt")
    with open(d_none / "last.ckpt") as f:
        assert json.load(f)["global_step"] == 12


def test_no_monitor_keeps_latest_and_last(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    t.fit(3)
    assert ckpts(tmp_path) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    assert mc.best_model_path.endswith("epoch=2-step=12.ckpt")
    assert mc.best_model_score is None


def test_nan_never_best(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    t = FakeTrainer(tmp_path, callbacks=[mc])
    t.fit(3, val_metrics=[{"val_loss": v} for v in [math.nan, 2.0, 3.0]])
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert mc.best_model_score.item() == 2.0


def test_every_n_train_steps_and_epochs(tmp_path):
    steps = ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=3, save_top_k=-1)
    epochs = ModelCheckpoint(dirpath=tmp_path / "e", every_n_epochs=2, save_top_k=-1)
    t = FakeTrainer(tmp_path, callbacks=[steps, epochs], num_val_batches=[0])
    t.fit(3)  # 12 steps
    assert ckpts(tmp_path / "s") == [
        "epoch=0-step=3.ckpt",
        "epoch=1-step=6.ckpt",
        "epoch=2-step=12.ckpt",
        "epoch=2-step=9.ckpt",
    ]
    assert ckpts(tmp_path / "e") == ["epoch=1-step=8.ckpt"]


def test_train_time_interval(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=0), save_top_k=-1)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    t.fit(1)
    assert len(ckpts(tmp_path)) == 4
    with pytest.raises(MisconfigurationException, match="timedelta"):
        ModelCheckpoint(train_time_interval=5)


def test_name_collision_gets_version_suffix(tmp_path):
    os.makedirs(tmp_path) if not tmp_path.exists() else None
    (tmp_path / "epoch=0-step=4.ckpt").write_text("other run")
    (tmp_path / "last.ckpt").write_text("other run")
    mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    with pytest.warns(UserWarning, match="exists and is not empty"):
        t.fit(2)
    assert ckpts(tmp_path) == [
        "epoch=0-step=4-v1.ckpt",
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
        "last-v1.ckpt",
        "last.ckpt",
    ]
    assert (tmp_path / "epoch=0-step=4.ckpt").read_text() == "other run"
    assert mc.last_model_path.endswith("last-v1.ckpt")


def test_step_and_epoch_end_do_not_save_twice(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True, save_top_k=-1)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    t.fit(2)
    # each step's checkpoint is written once; last.ckpt is switched to it (a link), never a second copy
    assert t.saved == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert os.readlink(tmp_path / "last.ckpt") == "epoch=1-step=8.ckpt"


def test_missing_monitor_warns_before_validation_and_raises_after(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_train_steps=1)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        t.fit(1)
    mc = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss")
    t = FakeTrainer(tmp_path, callbacks=[mc])
    with pytest.raises(MisconfigurationException, match=r"could not find the monitored key.*'epoch'"):
        t.fit(1, val_metrics=[{"val_acc": 1.0}])


def test_saves_after_validation_when_val_not_once_per_epoch(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    t = FakeTrainer(tmp_path, callbacks=[mc], val_check_interval=0.5)
    assert not mc._should_save_on_train_epoch_end(t)
    t2 = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    assert mc._should_save_on_train_epoch_end(t2)
    assert not ModelCheckpoint(save_on_train_epoch_end=False)._should_save_on_train_epoch_end(t2)
    t.fit(1, val_metrics=[{"val_loss": 1.0}])
    assert t.saved == ["epoch=0-step=4.ckpt"]


def test_no_save_in_sanity_check_or_outside_fit(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1)
    t = FakeTrainer(tmp_path, callbacks=[mc], state=types.SimpleNamespace(fn="validate"), global_step=5)
    mc.setup(t, None, "validate")
    mc.on_train_batch_end(t, None, None, None, 0)
    mc.on_validation_end(t, None)
    t.state.fn, t.sanity_checking = "fit", True
    mc.on_validation_end(t, None)
    t.sanity_checking, t.fast_dev_run = False, True
    mc.on_train_batch_end(t, None, None, None, 0)
    assert t.saved == []


def test_does_not_delete_resume_checkpoint_or_outside_files(tmp_path):
    resume = tmp_path / "epoch=0-step=4.ckpt"
    mc = ModelCheckpoint(dirpath=tmp_path)
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0], ckpt_path=str(resume))
    mc.best_model_path = str(resume)
    resume.write_text("resume")
    with pytest.warns(UserWarning, match="not empty"):
        mc.setup(t, None, "fit")
    t.global_step, t.current_epoch = 8, 1
    mc.on_train_epoch_end(t, None)
    assert ckpts(tmp_path) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert not mc._should_remove_checkpoint(t, "/elsewhere/x.ckpt", str(tmp_path / "y.ckpt"))


def test_after_save_checkpoint_reaches_loggers(tmp_path):
    seen = []

    class L(CSVLogger):
        def after_save_checkpoint(self, checkpoint_callback):
            seen.append(checkpoint_callback.last_model_path or checkpoint_callback.best_model_path)

    mc = ModelCheckpoint(dirpath=tmp_path / "c")
    t = FakeTrainer(tmp_path, callbacks=[mc], loggers=[L(tmp_path)], num_val_batches=[0])
    t.fit(2)
    assert [os.path.basename(p) for p in seen] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]


def test_save_last_link(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, save_last="link")
    t = FakeTrainer(tmp_path, callbacks=[mc], num_val_batches=[0])
    t.fit(2)
    last = tmp_path / "last.ckpt"
    assert last.exists()
    with open(last) as f:
        assert json.load(f)["global_step"] == 8
    assert t.saved == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]  # last.ckpt was linked, not saved


def test_state_dict_round_trip(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    t = FakeTrainer(tmp_path, callbacks=[mc])
    t.fit(3, val_metrics=[{"val_loss": v} for v in LOSSES])
    sd = mc.state_dict()
    assert set(sd) == {
        "monitor", "best_model_score", "best_model_path", "current_score", "dirpath", "best_k_models",
        "kth_best_model_path", "kth_value", "last_model_path",
    }  # fmt: skip
    # the checkpoint stores plain leaves: tensors, str, None
    fresh = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    fresh.load_state_dict(sd)
    assert fresh.best_model_path == mc.best_model_path
    assert fresh.best_model_score.item() == mc.best_model_score.item() == 3.0
    assert fresh.kth_best_model_path == mc.kth_best_model_path
    assert {k: v.item() for k, v in fresh.best_k_models.items()} == {k: v.item() for k, v in mc.best_k_models.items()}
    assert fresh.last_model_path == mc.last_model_path
    # floats are accepted as well as tensors
    fresh.load_state_dict(dict(sd, best_model_score=1.5, kth_value=2.5))
    assert fresh.best_model_score.item() == 1.5 and fresh.kth_value.item() == 2.5
    # a different dirpath keeps only best_model_path, with a warning
    other = ModelCheckpoint(dirpath=tmp_path / "other", monitor="val_loss")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        other.load_state_dict(sd)
    assert other.best_model_path == mc.best_model_path and other.best_k_models == {}


def test_resumed_top_k_continues(tmp_path):
    """After load_state_dict, the top k continues as if the run had not stopped."""
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    FakeTrainer(tmp_path, callbacks=[mc]).fit(3, val_metrics=[{"val_loss": v} for v in LOSSES])
    sd = mc.state_dict()
    resumed = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    resumed.load_state_dict(sd)
    t = FakeTrainer(tmp_path, callbacks=[resumed], current_epoch=3, global_step=12)
    with pytest.warns(UserWarning, match="not empty"):
        t.fit(5, val_metrics=[{"val_loss": v} for v in LOSSES])
    assert ckpts(tmp_path) == ["epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt"]


# ---------------------------------------------------------------------------------------------
# EarlyStopping


def run_es(es, values, key="val_loss", **kw):
    t = FakeTrainer(callbacks=[es], **kw)
    t.fit(len(values), val_metrics=[{key: v} for v in values])
    return t


def test_early_stopping_patience():
    es = EarlyStopping(monitor="val_loss", patience=2)
    t = run_es(es, [1.0, 0.9, 0.95, 0.95, 0.5, 0.4])
    # epoch 2 and 3 do not improve on 0.9: stop after epoch 3
    assert t.should_stop and es.stopped_epoch == 3 and t.current_epoch == 4
    assert es.wait_count == 2 and es.best_score.item() == pytest.approx(0.9)


def test_early_stopping_min_delta_and_max_mode():
    es = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.1)
    t = run_es(es, [1.0, 0.95, 0.5])
    assert t.should_stop and es.stopped_epoch == 1  # 0.95 is not 0.1 better than 1.0
    es = EarlyStopping(monitor="acc", mode="max", patience=2)
    t = run_es(es, [0.5, 0.6, 0.6, 0.55, 0.9], key="acc")
    assert t.should_stop and es.stopped_epoch == 3 and es.best_score.item() == pytest.approx(0.6)


def test_early_stopping_thresholds_and_finite(caplog):
    es = EarlyStopping(monitor="val_loss", stopping_threshold=0.5, patience=10, verbose=True)
    with caplog.at_level(logging.INFO, logger="dutycycle.callbacks"):
        t = run_es(es, [1.0, 0.7, 0.4, 0.3])
    assert t.should_stop and es.stopped_epoch == 2
    assert "Stopping threshold reached: val_loss = 0.4" in caplog.text
    es = EarlyStopping(monitor="val_loss", divergence_threshold=10.0, patience=10)
    t = run_es(es, [1.0, 5.0, 11.0, 1.0])
    assert t.should_stop and es.stopped_epoch == 2
    es = EarlyStopping(monitor="val_loss", patience=10)
    t = run_es(es, [1.0, math.inf, 0.5])
    assert t.should_stop and es.stopped_epoch == 1
    es = EarlyStopping(monitor="val_loss", patience=10, check_finite=False)
    t = run_es(es, [1.0, math.nan, 0.5])
    assert not t.should_stop


def test_early_stopping_strict():
    es = EarlyStopping(monitor="val_loss")
    with pytest.raises(RuntimeError, match=r"`val_loss` which is not available.*`val_acc`"):
        run_es(es, [1.0], key="val_acc")
    es = EarlyStopping(monitor="val_loss", strict=False)
    t = run_es(es, [1.0, 2.0, 3.0, 4.0, 5.0], key="val_acc")
    assert not t.should_stop and es.wait_count == 0
    with pytest.raises(MisconfigurationException, match="mode"):
        EarlyStopping(monitor="x", mode="up")


def test_early_stopping_check_point_in_epoch():
    # validation more often than once per epoch: checked at each validation end
    es = EarlyStopping(monitor="val_loss", patience=1)
    t = FakeTrainer(callbacks=[es], val_check_interval=0.5)
    es.setup(t, None, "fit")
    assert es._check_on_train_epoch_end is False
    # training-only metric: checked at the train epoch end
    es = EarlyStopping(monitor="train_loss", patience=1)
    t = FakeTrainer(callbacks=[es], num_val_batches=[0])
    t.fit(4, train_metrics=[{"train_loss": v} for v in [1.0, 0.5, 0.6, 0.1]])
    assert t.should_stop and es.stopped_epoch == 2


def test_early_stopping_skips_sanity_and_other_stages():
    es = EarlyStopping(monitor="val_loss")
    t = FakeTrainer(callbacks=[es], sanity_checking=True, check_val_every_n_epoch=2)
    es.setup(t, None, "fit")
    es.on_validation_end(t, None)  # would raise (strict, metric missing) if it checked
    t.sanity_checking, t.state.fn = False, "validate"
    es.on_validation_end(t, None)


def test_early_stopping_state_dict():
    es = EarlyStopping(monitor="val_loss", patience=3)
    run_es(es, [1.0, 2.0])
    sd = es.state_dict()
    assert sd["wait_count"] == 1 and sd["best_score"].item() == 1.0 and sd["patience"] == 3
    fresh = EarlyStopping(monitor="val_loss", patience=3)
    fresh.load_state_dict(sd)
    assert fresh.wait_count == 1 and fresh.best_score.item() == 1.0
    t = FakeTrainer(callbacks=[fresh], current_epoch=2)
    t.fit(4, val_metrics=[{}, {}, {"val_loss": 3.0}, {"val_loss": 3.0}])
    assert t.should_stop and fresh.stopped_epoch == 3
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


# ---------------------------------------------------------------------------------------------
# LearningRateMonitor


class MemLogger(CSVLogger):
    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.rows = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def _params(n=2):
    return [dc.zeros(2, requires_grad=True) for _ in range(n)]


def test_lr_monitor_single_optimizer_per_step(tmp_path):
    opt = dc.optim.SGD(_params(), lr=0.1, momentum=0.9)
    lg = MemLogger(tmp_path)
    lrm = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    t = FakeTrainer(tmp_path, callbacks=[lrm], loggers=[lg], optimizers=[opt], num_val_batches=[0], log_every_n_steps=2)

    def decay(tr):
        opt.param_groups[0]["lr"] *= 0.5

    t.fit(1, on_step=decay)
    # optimizers without a scheduler: at the epoch start, then at on_train_batch_start when
    # (step + 1) % log_every_n_steps == 0 (steps 1 and 3), as Lightning
    assert lg.rows == [
        (0, {"lr-SGD": 0.1, "lr-SGD-momentum": 0.9, "lr-SGD-weight_decay": 0}),
        (1, {"lr-SGD": 0.05, "lr-SGD-momentum": 0.9, "lr-SGD-weight_decay": 0}),
        (3, {"lr-SGD": 0.0125, "lr-SGD-momentum": 0.9, "lr-SGD-weight_decay": 0}),
    ]
    assert lrm.lrs == {"lr-SGD": [0.1, 0.05, 0.0125]}
    assert t.callback_metrics["lr-SGD"].item() == pytest.approx(0.0125)


def test_lr_monitor_param_groups_and_duplicates(tmp_path):
    a = dc.optim.AdamW([{"params": _params(1)}, {"params": _params(1), "lr": 0.5}], lr=0.1)
    b = dc.optim.AdamW(_params(1), lr=0.2)
    named = dc.optim.SGD([{"params": _params(1), "name": "enc"}, {"params": _params(1), "name": "dec"}], lr=0.3)
    lg = MemLogger(tmp_path)
    lrm = LearningRateMonitor(logging_interval="step", log_momentum=True)
    t = FakeTrainer(tmp_path, callbacks=[lrm], loggers=[lg], optimizers=[a, b, named], num_val_batches=[0])
    with pytest.warns(RuntimeWarning, match="some optimizers do not have momentum"):  # SGD without momentum
        t.fit(1, steps_per_epoch=1)
    assert lg.rows == [
        (
            0,
            {
                "lr-AdamW/pg1": 0.1,
                "lr-AdamW/pg1-momentum": 0.9,
                "lr-AdamW/pg2": 0.5,
                "lr-AdamW/pg2-momentum": 0.9,
                "lr-AdamW-1": 0.2,
                "lr-AdamW-1-momentum": 0.9,
                "lr-SGD/enc": 0.3,
                "lr-SGD/enc-momentum": 0,
                "lr-SGD/dec": 0.3,
                "lr-SGD/dec-momentum": 0,
            },
        )
    ]
    dup = dc.optim.SGD([{"params": _params(1), "name": "x"}, {"params": _params(1), "name": "x"}], lr=0.1)
    t = FakeTrainer(tmp_path, callbacks=[LearningRateMonitor()], loggers=[lg], optimizers=[dup])
    with pytest.raises(MisconfigurationException, match="duplicated parameter group names"):
        t.fit(1)


def test_lr_monitor_scheduler_intervals(tmp_path):
    opt = dc.optim.SGD(_params(), lr=1.0)
    sched = dc.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    cfg = types.SimpleNamespace(scheduler=sched, interval="epoch", frequency=1, monitor=None, name=None)
    lg = MemLogger(tmp_path)
    t = FakeTrainer(
        tmp_path, callbacks=[LearningRateMonitor()], loggers=[lg], optimizers=[opt], lr_scheduler_configs=[cfg],
        num_val_batches=[0],
    )  # fmt: skip

    def epoch_end(tr, pl):
        sched.step()

    t.callbacks.append(LambdaCallback(on_train_epoch_end=epoch_end))
    t.fit(3)
    # an epoch-interval scheduler is logged at each epoch start, never per step
    assert lg.rows == [(0, {"lr-SGD": 1.0}), (4, {"lr-SGD": 0.5}), (8, {"lr-SGD": 0.25})]
    # a scheduler config's name replaces the key
    cfg.name = "my-lr"
    lg.rows.clear()
    t = FakeTrainer(
        tmp_path, callbacks=[LearningRateMonitor(logging_interval="epoch")], loggers=[lg], optimizers=[opt],
        lr_scheduler_configs=[cfg], num_val_batches=[0],
    )  # fmt: skip
    t.fit(1)
    assert lg.rows == [(0, {"my-lr": 0.125})]


def test_lr_monitor_errors(tmp_path):
    with pytest.raises(MisconfigurationException, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")
    t = FakeTrainer(tmp_path, callbacks=[LearningRateMonitor()], optimizers=[dc.optim.SGD(_params(), lr=0.1)])
    with pytest.raises(MisconfigurationException, match="no logger"):
        t.fit(1)

    class Plain(dc.optim.Optimizer):  # no "momentum" nor "betas" in its defaults
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

    opt = Plain(_params(), lr=0.1)
    t = FakeTrainer(tmp_path, callbacks=[LearningRateMonitor(log_momentum=True)], loggers=[MemLogger(tmp_path)],
                    optimizers=[opt], num_val_batches=[0])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="do not have momentum"):
        LearningRateMonitor(log_momentum=True).on_train_start(t)


# ---------------------------------------------------------------------------------------------
# Progress bars


class TTY(io.StringIO):
    def isatty(self):
        return True


def run_bar(bar, tmp_path, epochs=2, **kw):
    t = FakeTrainer(
        tmp_path,
        callbacks=[bar],
        loggers=[CSVLogger(tmp_path)],
        progress_bar_metrics={"loss": 0.123456, "duty": 97.1},
        **kw,
    )
    t.fit(epochs)
    return t


def test_progress_bar_plain_lines(tmp_path):
    out = io.StringIO()
    run_bar(TQDMProgressBar(file=out), tmp_path)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2, lines  # one per epoch (validation inside fit prints no line of its own)
    for e, line in enumerate(lines):
        assert line.startswith(f"Epoch {e}: 100% 4/4 [")
        assert "it/s" in line and "v_num=0" in line and "loss=0.123" in line and "duty=97.1%" in line


def test_progress_bar_plain_periodic_lines(tmp_path):
    out = io.StringIO()
    bar = TQDMProgressBar(file=out, line_interval=0.0)
    t = FakeTrainer(tmp_path, callbacks=[bar], num_val_batches=[2], progress_bar_metrics={"loss": 1.0})
    t.num_sanity_val_batches = [0]
    t.fit(1)
    lines = out.getvalue().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == [
        "Epoch 0:  25% 1/4",
        "Epoch 0:  50% 2/4",
        "Epoch 0:  75% 3/4",
        "Epoch 0: 100% 4/4",
        "Validation:  50% 1/2",
        "Validation: 100% 2/2",
        "Epoch 0: 100% 4/4",  # the epoch's line, with the validation metrics
    ]


def test_progress_bar_tty(tmp_path):
    out = TTY()
    run_bar(TQDMProgressBar(file=out, mininterval=0.0), tmp_path)
    text = out.getvalue()
    assert text.count("\r") > 8 and text.endswith("\n") and text.count("\n") == 1
    assert "Sanity Checking" in text and "Validation" in text
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("Epoch 1: 100%|") and "| 4/4 [" in last and "duty=97.1%" in last
    out = TTY()
    run_bar(TQDMProgressBar(file=out, mininterval=0.0, leave=True), tmp_path)
    assert out.getvalue().count("\n") == 2  # one kept line per epoch


def test_progress_bar_refresh_rate_and_disable(tmp_path):
    out = TTY()
    run_bar(TQDMProgressBar(file=out, refresh_rate=0), tmp_path)
    assert out.getvalue() == ""
    bar = TQDMProgressBar(file=out, refresh_rate=2)
    assert bar.is_enabled
    bar.disable()
    assert bar.is_disabled
    run_bar(bar, tmp_path)
    assert out.getvalue() == ""
    bar.enable()
    assert bar._should_update(2, 4) and not bar._should_update(3, 4) and bar._should_update(3, 3)


def test_progress_bar_get_metrics_and_duty_fallback(tmp_path):
    bar = TQDMProgressBar()
    t = FakeTrainer(tmp_path, loggers=[CSVLogger(tmp_path, version="run-abcdef")], progress_bar_metrics={"a": 1.0})
    assert bar.get_metrics(t, None) == {"v_num": "cdef", "a": 1.0}
    t.duty_cycle = types.SimpleNamespace(recent_fraction=lambda: 0.5, running=True)
    assert bar._metrics(t, None, training=True)["duty"] == 50.0
    assert progress_mod._format_value("duty", 50.0) == "50.0%"
    assert progress_mod._format_value("duty", 0.5) == "0.5%"
    assert progress_mod._format_value("loss", 0.000123456) == "0.000123"
    assert progress_mod._format_value("loss", dc.tensor(2.5)) == "2.5"
    assert progress_mod._format_value("n", 12345678) == "1.23e+7"
    assert isinstance(bar, ProgressBar)


def test_progress_bar_standalone_validate_and_test(tmp_path):
    out = io.StringIO()
    bar = TQDMProgressBar(file=out)
    t = FakeTrainer(tmp_path, callbacks=[bar], state=types.SimpleNamespace(fn="validate"), num_test_batches=[3])
    t.callback_metrics = {"val_loss": dc.tensor(0.5)}
    t.progress_bar_metrics = {"val_loss": 0.5}
    t.call("setup", "validate")
    t.call("on_validation_start")
    for i in range(2):
        t.call("on_validation_batch_start", None, i, 0)
        t.call("on_validation_batch_end", None, None, i, 0)
    t.call("on_validation_end")
    t.state.fn = "test"
    t.call("on_test_start")
    for i in range(3):
        t.call("on_test_batch_start", None, i, 0)
        t.call("on_test_batch_end", None, None, i, 0)
    t.call("on_test_end")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Validation: 100% 2/2 [") and "val_loss=0.5" in lines[0]
    assert lines[1].startswith("Testing: 100% 3/3 [")


def test_progress_bar_unknown_total_and_exception(tmp_path):
    out = TTY()
    bar = TQDMProgressBar(file=out, mininterval=0.0)
    t = FakeTrainer(tmp_path, callbacks=[bar], num_training_batches=float("inf"), num_val_batches=[0])
    t.call("setup", "fit")
    t.call("on_train_start")
    t.call("on_train_epoch_start")
    t.call("on_train_batch_end", None, None, 0)
    assert "Epoch 0: 1 [" in out.getvalue()
    t.call("on_exception", RuntimeError("boom"))
    assert out.getvalue().endswith("\n")


def test_rich_progress_bar_falls_back_to_text(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "_rich_available", lambda: False)
    a, b = io.StringIO(), io.StringIO()
    run_bar(TQDMProgressBar(file=a), tmp_path)
    run_bar(RichProgressBar(file=b), tmp_path)
    strip = lambda s: [ln.split(" [")[0] + ln[ln.index(",") :].split("it/s")[-1] for ln in s.splitlines()]
    assert strip(a.getvalue()) == strip(b.getvalue())
    assert isinstance(RichProgressBar(), TQDMProgressBar)


def test_rich_progress_bar_with_rich(tmp_path):
    pytest.importorskip("rich", reason="rich not installed: RichProgressBar uses the text renderer")
    out = TTY()
    bar = RichProgressBar(file=out, mininterval=0.0, console_kwargs={"force_terminal": True, "width": 120})
    run_bar(bar, tmp_path)
    text = out.getvalue()
    assert "Epoch 1" in text and "4/4" in text


# ---------------------------------------------------------------------------------------------
# Integration: the real Trainer

try:
    from dutycycle.trainer import LightningModule, Trainer
    from dutycycle.trainer import load_checkpoint as _load_ckpt
except ImportError:  # the trainer package is built in parallel; these tests wait for it
    Trainer = None
    LightningModule = object

needs_trainer = pytest.mark.skipif(Trainer is None, reason="dutycycle.trainer is not importable yet")


class _Loader:
    """A minimal data loader (a re-iterable list of batches with a length)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def make_loaders(n=32, batch_size=8):
    """(train, val) loaders over y = x @ [1, -2]: 4 training batches of 8, one validation batch."""
    dc.manual_seed(0)
    x = dc.randn(n, 2)
    y = x @ dc.tensor([[1.0], [-2.0]])
    try:
        from dutycycle.data import DataLoader, TensorDataset

        return (
            DataLoader(TensorDataset(x, y), batch_size=batch_size),
            DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16),
        )
    except ImportError:
        return (
            _Loader([(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]),
            _Loader([(x[:16], y[:16])]),
        )


class Scripted(LightningModule):
    """Linear regression whose logged validation metric follows a script, one value per epoch."""

    def __init__(self, script=None, lr=0.1, metric="val_loss", scheduler=None):
        super().__init__()
        self.save_hyperparameters("lr")
        self.lin = dc.nn.Linear(2, 1)
        self.script, self.metric, self.scheduler = script, metric, scheduler
        self.epochs_run = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.lin(x) - y) ** 2).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.lin(x) - y) ** 2).mean()
        if self.script is not None:
            self.log(self.metric, dc.tensor(float(self.script[self.current_epoch])))
        else:
            self.log(self.metric, loss, prog_bar=True)

    def on_train_epoch_end(self):
        self.epochs_run += 1

    def configure_optimizers(self):
        opt = dc.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.5)
        if self.scheduler is None:
            return opt
        interval, gamma = self.scheduler
        sched = dc.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def fit(tmp_path, model, callbacks, max_epochs, logger=False, ckpt_path=None, **kw):
    train, val = make_loaders()
    kw.setdefault("enable_progress_bar", False)
    trainer = Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=logger, default_root_dir=str(tmp_path),
        num_sanity_val_steps=0, **kw,
    )  # fmt: skip
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer


@needs_trainer
def test_trainer_checkpoint_top_k_last_and_files(tmp_path):
    d = tmp_path / "ck"
    mc = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}-{val_loss:.1f}")
    fit(tmp_path, Scripted(LOSSES), [mc], 5)
    assert ckpts(d) == ["epoch=3-val_loss=1.0.ckpt", "epoch=4-val_loss=2.0.ckpt", "last.ckpt"]
    assert mc.best_model_path == str(d / "epoch=3-val_loss=1.0.ckpt")
    assert mc.best_model_score.item() == 1.0
    best = _load_ckpt(mc.best_model_path)
    assert best["epoch"] == 3 and best["global_step"] == 16
    last = _load_ckpt(mc.last_model_path)
    assert last["global_step"] == 20
    state = last["callbacks"][mc.state_key]
    assert state["best_model_path"] == mc.best_model_path
    assert {k: float(v.item()) for k, v in state["best_k_models"].items()} == {
        str(d / "epoch=3-val_loss=1.0.ckpt"): 1.0,
        str(d / "epoch=4-val_loss=2.0.ckpt"): 2.0,
    }


@needs_trainer
def test_trainer_checkpoint_max_mode_and_default_callback(tmp_path):
    d = tmp_path / "ck"
    mc = ModelCheckpoint(dirpath=d, monitor="val_acc", mode="max")
    fit(tmp_path, Scripted([0.5, 0.7, 0.6, 0.9, 0.8], metric="val_acc"), [mc], 5)
    assert ckpts(d) == ["epoch=3-step=16.ckpt"] and mc.best_model_score.item() == pytest.approx(0.9)
    # no callbacks given: the default ModelCheckpoint keeps the latest epoch under the logger's folder
    trainer = fit(tmp_path / "default", Scripted(), None, 2, logger=None)
    cb = trainer.checkpoint_callback
    assert isinstance(cb, ModelCheckpoint)
    expected = tmp_path / "default" / "lightning_logs" / "version_0" / "checkpoints"
    assert cb.dirpath == os.path.realpath(expected)
    assert ckpts(expected) == ["epoch=1-step=8.ckpt"]


@needs_trainer
def test_trainer_checkpoint_every_n_train_steps(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=3, save_top_k=-1)
    fit(tmp_path, Scripted(), [mc], 2)
    assert ckpts(tmp_path / "s") == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]


@needs_trainer
def test_trainer_resume_continues_top_k(tmp_path):
    def cb(d):
        return ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, save_last=True)

    full = cb(tmp_path / "full")
    fit(tmp_path, Scripted(LOSSES), [full], 5)
    part = cb(tmp_path / "part")
    fit(tmp_path, Scripted(LOSSES), [part], 3)
    resumed = cb(tmp_path / "part")
    with pytest.warns(UserWarning, match="not empty"):
        fit(tmp_path, Scripted(LOSSES), [resumed], 5, ckpt_path="last")
    assert ckpts(tmp_path / "part") == ckpts(tmp_path / "full")
    assert os.path.basename(resumed.best_model_path) == os.path.basename(full.best_model_path)
    assert {os.path.basename(k) for k in resumed.best_k_models} == {os.path.basename(k) for k in full.best_k_models}


@needs_trainer
def test_trainer_early_stopping(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2)
    model = Scripted([1.0, 0.9, 0.95, 0.95, 0.5, 0.4])
    trainer = fit(tmp_path, model, [es], 6)
    assert es.stopped_epoch == 3 and model.epochs_run == 4 and trainer.should_stop
    # the strict error names the available metrics
    with pytest.raises(RuntimeError, match=r"`val_nope` which is not available.*`val_loss`"):
        fit(tmp_path / "strict", Scripted(), [EarlyStopping(monitor="val_nope")], 2)


@needs_trainer
def test_trainer_lr_monitor(tmp_path):
    lg = MemLogger(tmp_path)
    fit(tmp_path, Scripted(scheduler=("epoch", 0.5)), [LearningRateMonitor(log_momentum=True)], 3, logger=lg)
    rows = [(s, m) for s, m in lg.rows if "lr-SGD" in m]
    assert rows == [
        (0, {"lr-SGD": 0.1, "lr-SGD-momentum": 0.5}),
        (4, {"lr-SGD": 0.05, "lr-SGD-momentum": 0.5}),
        (8, {"lr-SGD": 0.025, "lr-SGD-momentum": 0.5}),
    ]
    lg = MemLogger(tmp_path)
    fit(tmp_path, Scripted(scheduler=("step", 0.5)), [LearningRateMonitor()], 1, logger=lg, log_every_n_steps=2)
    rows = [(s, m["lr-SGD"]) for s, m in lg.rows if "lr-SGD" in m]
    assert rows == [(1, 0.05), (3, 0.0125)]


@needs_trainer
def test_trainer_progress_bar(tmp_path, capsys):
    fit(tmp_path, Scripted(), [TQDMProgressBar()], 2, enable_progress_bar=True)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("Epoch")]
    assert [ln.split(" [")[0] for ln in lines] == ["Epoch 0: 100% 4/4", "Epoch 1: 100% 4/4"]
    assert all("it/s" in ln and "train_loss=" in ln and "val_loss=" in ln and "duty=" in ln for ln in lines)
    assert all(re.search(r"duty=\d+\.\d%", ln) for ln in lines)


# ---- leftovers of an earlier, crashed run in the same directory ------------------------------
def _crashed_run_dir(d, age=3600):
    """A checkpoint directory as a crashed earlier run (and the user) left it; files `age` s old."""
    d.mkdir(parents=True, exist_ok=True)
    names = ["epoch=7-step=80.ckpt", "epoch=8-step=90.ckpt", "last.ckpt", "last-v1.ckpt", "x.ckpt.tmp",
             "epoch=9-step=99.ckpt.tmp", "pretrained.ckpt", "notes.txt", "data.tmp"]  # fmt: skip
    for n in names:
        (d / n).write_bytes(b"old")
        t = os.path.getmtime(d / n) - age
        os.utime(d / n, (t, t))
    return names


@needs_trainer
def test_trainer_checkpoint_removes_leftovers_of_a_crashed_run(tmp_path):
    d = tmp_path / "ck"
    _crashed_run_dir(d)
    mc = ModelCheckpoint(dirpath=d, save_top_k=1, save_last=True)
    fit(tmp_path, Scripted(), [mc], 2)
    # the new top-1 and last, the user's files; no stale checkpoints, no half-written .ckpt.tmp
    assert sorted(os.listdir(d)) == ["data.tmp", "epoch=1-step=8.ckpt", "last.ckpt", "notes.txt", "pretrained.ckpt"]
    assert _load_ckpt(d / "last.ckpt")["global_step"] == 8  # this run's, not the old bytes


@needs_trainer
def test_trainer_checkpoint_save_top_k_all_keeps_old_checkpoints_but_not_tmp(tmp_path):
    d = tmp_path / "ck"
    old = _crashed_run_dir(d)
    fit(tmp_path, Scripted(), [ModelCheckpoint(dirpath=d, save_top_k=-1)], 2)
    kept = [n for n in old if not n.endswith(".ckpt.tmp")]
    assert sorted(os.listdir(d)) == sorted(kept + ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"])


@needs_trainer
def test_trainer_checkpoint_leftovers_other_patterns_and_fresh_files_stay(tmp_path):
    d = tmp_path / "ck"
    _crashed_run_dir(d)
    (d / "epoch=5-step=50.ckpt").write_bytes(b"new")  # written just now (e.g. by another process): not stale
    mc = ModelCheckpoint(dirpath=d, save_top_k=1, filename="best-{epoch}")
    fit(tmp_path, Scripted(), [mc], 1)
    # only last* and best-* are this callback's names; the default-pattern files are someone else's
    assert sorted(os.listdir(d)) == sorted(
        ["best-epoch=0.ckpt", "data.tmp", "epoch=5-step=50.ckpt", "epoch=7-step=80.ckpt", "epoch=8-step=90.ckpt",
         "notes.txt", "pretrained.ckpt"]
    )  # fmt: skip


@needs_trainer
def test_trainer_checkpoint_resume_from_the_directory_keeps_what_resume_needs(tmp_path):
    d = tmp_path / "ck"
    first = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=1, save_last=True)
    fit(tmp_path, Scripted([5.0, 1.0, 3.0]), [first], 2)  # best: epoch 1 (1.0), last: step 8
    assert sorted(os.listdir(d)) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    for n in os.listdir(d):  # make them look like an earlier run's
        t = os.path.getmtime(d / n) - 3600
        os.utime(d / n, (t, t))
    (d / "epoch=0-step=4.ckpt.tmp").write_bytes(b"half")
    os.utime(d / "epoch=0-step=4.ckpt.tmp", (t, t))
    # resume from last.ckpt in the same directory: loaded before anything is removed, and kept
    second = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=1, save_last=True)
    trainer = fit(tmp_path, Scripted([5.0, 1.0, 3.0]), [second], 3, ckpt_path=d / "last.ckpt")
    assert trainer.global_step == 12 and trainer.ckpt_path == str(d / "last.ckpt")
    # the restored best (epoch 1, still best) stays; epoch 2 (3.0) is not top-1; last.ckpt rewritten
    assert sorted(os.listdir(d)) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert second.best_model_path == str(d / "epoch=1-step=8.ckpt")
    assert _load_ckpt(d / "last.ckpt")["global_step"] == 12


@needs_trainer
def test_trainer_checkpoint_resume_file_with_a_stale_name_is_not_removed(tmp_path):
    d = tmp_path / "ck"
    fit(tmp_path, Scripted(), [ModelCheckpoint(dirpath=d, save_top_k=1)], 1)
    (src,) = os.listdir(d)
    os.rename(d / src, d / "epoch=7-step=70.ckpt")  # an old run's name, untracked by the new callback
    t = os.path.getmtime(d / "epoch=7-step=70.ckpt") - 3600
    os.utime(d / "epoch=7-step=70.ckpt", (t, t))
    mc = ModelCheckpoint(dirpath=d, save_top_k=1)
    trainer = fit(tmp_path, Scripted(), [mc], 2, ckpt_path=d / "epoch=7-step=70.ckpt")
    assert trainer.global_step == 8
    assert sorted(os.listdir(d)) == ["epoch=1-step=8.ckpt", "epoch=7-step=70.ckpt"]
