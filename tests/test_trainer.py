"""The Trainer: a Lightning-style script end to end, each argument's effect, hook order, logging,
optimizer configurations and bad input."""

import datetime
import os
import time
import warnings

import numpy as np
import pytest
from trainer_helpers import RecordingLogger, RegressionData, Regressor, loader, quiet, regression_data

import dutycycle as dc
from dutycycle.trainer import LightningModule, Trainer, seed_everything


@pytest.fixture
def data():
    seed_everything(0)
    return regression_data(64)


def params_of(m):
    return [p.detach().numpy().copy() for p in m.parameters()]


# ---- a Lightning script, end to end ---------------------------------------------------------------
def test_lightning_script_end_to_end(tmp_path, capsys):
    from dutycycle.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from dutycycle.loggers import CSVLogger

    seed_everything(42)
    model, dm = Regressor(lr=0.1), RegressionData()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpts",
        monitor="val_loss",
        save_top_k=2,
        save_last=True,
        filename="{epoch}-{step}-{val_loss:.3f}",
    )
    trainer = Trainer(
        max_epochs=4,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[ckpt, EarlyStopping("val_loss", patience=5), LearningRateMonitor()],
        log_every_n_steps=2,
        enable_progress_bar=True,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.calls[:2] == ["prepare_data", "setup:fit"]
    assert trainer.global_step == 32 and trainer.current_epoch == 4
    assert model.losses[-1] < model.losses[0] / 10
    assert float(trainer.callback_metrics["val_loss"]) < 0.05
    assert os.path.isdir(ckpt.best_model_path) and os.path.isdir(tmp_path / "ckpts" / "last.ckpt")
    csv = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    header = csv.splitlines()[0].split(",")
    for key in ("train_loss", "val_loss", "epoch", "step", "duty/compute_frac", "duty/data_wait_s"):
        assert key in header, header
    out = capsys.readouterr()
    assert "compute" in out.out and "data wait" in out.out and "ckpt stall" in out.out
    # validate / test / predict with the trained model
    (val,) = trainer.validate(model, datamodule=dm, verbose=False)
    assert val["val_loss"] < 0.05
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    assert "test_loss" in test
    preds = trainer.predict(model, datamodule=dm)
    assert len(preds) == 2 and tuple(preds[0].shape) == (4, 1)
    # test from the best checkpoint into a fresh model
    fresh = Regressor()
    (best,) = Trainer(logger=False, enable_progress_bar=False).test(
        fresh, datamodule=dm, ckpt_path=ckpt.best_model_path, verbose=False
    )
    assert best["test_loss"] < 0.05


# ---- hook order --------------------------------------------------------------------------------------
HOOKS = [
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_save_checkpoint",
]


def test_hooks_fire_in_lightnings_order(data, tmp_path):
    from dutycycle.callbacks import Callback

    calls = []

    def recorder(prefix, name):
        def hook(*args, **kwargs):
            calls.append(prefix + name)

        return hook

    class Rec(Regressor):
        pass

    class CB(Callback):
        pass

    for h in HOOKS:
        setattr(CB, h, recorder("Callback.", h))
    model_hooks = HOOKS + [
        "prepare_data",
        "configure_model",
        "configure_optimizers",
        "training_step",
        "validation_step",
        "optimizer_step",
        "optimizer_zero_grad",
        "backward",
        "configure_gradient_clipping",
        "configure_callbacks",
    ]
    for h in model_hooks:
        orig = getattr(Regressor, h, None) or getattr(LightningModule, h, None)

        def wrap(self, *a, _h=h, _orig=orig, **k):
            calls.append(_h)
            return _orig(self, *a, **k) if _orig is not None else None

        setattr(Rec, h, wrap)
    x, y = data
    trainer = Trainer(
        **quiet(callbacks=[CB()], max_steps=2, limit_val_batches=1, num_sanity_val_steps=1, limit_train_batches=2)
    )
    trainer.fit(Rec(), loader(x, y), loader(x, y))
    val = [
        "on_validation_model_eval",
        "Callback.on_validation_start",
        "on_validation_start",
        "Callback.on_validation_epoch_start",
        "on_validation_epoch_start",
        "Callback.on_validation_batch_start",
        "validation_step",
        "Callback.on_validation_batch_end",
        "Callback.on_validation_epoch_end",
        "on_validation_epoch_end",
        "Callback.on_validation_end",
        "on_validation_end",
    ]
    val = [v for v in val if v != "on_validation_model_eval"]

    def batch(i, zero):
        seq = ["Callback.on_train_batch_start", "on_train_batch_start", "optimizer_step", "training_step"]
        if zero:
            seq += ["Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad"]
        seq += [
            "Callback.on_before_backward",
            "on_before_backward",
            "backward",
            "Callback.on_after_backward",
            "on_after_backward",
            "Callback.on_before_optimizer_step",
            "on_before_optimizer_step",
            "configure_gradient_clipping",
            "Callback.on_train_batch_end",
            "on_train_batch_end",
        ]
        return seq

    expected = (
        [
            "configure_callbacks",
            "prepare_data",
            "Callback.setup",
            "setup",
            "configure_model",
            "configure_optimizers",
            "Callback.on_fit_start",
            "on_fit_start",
            "Callback.on_sanity_check_start",
        ]
        + val
        + [
            "Callback.on_sanity_check_end",
            "Callback.on_train_start",
            "on_train_start",
            "Callback.on_train_epoch_start",
            "on_train_epoch_start",
        ]
        + batch(0, True)
        + batch(1, True)
        + val
        + [
            "Callback.on_train_epoch_end",
            "on_train_epoch_end",
            "Callback.on_train_end",
            "on_train_end",
            "Callback.on_fit_end",
            "on_fit_end",
            "Callback.teardown",
            "teardown",
        ]
    )
    # validation_step is not wrapped by a "Callback." variant; module batch hooks come after callbacks
    got = [c for c in calls if c not in ("on_validation_batch_start", "on_validation_batch_end")]
    assert got == expected


def test_on_exception_is_called_and_error_propagates(data):
    from dutycycle.callbacks import Callback

    seen = []

    class CB(Callback):
        def on_exception(self, trainer, pl_module, exception):
            seen.append(type(exception).__name__)

    class Boom(Regressor):
        def training_step(self, batch, batch_idx):
            raise KeyError("boom")

    x, y = data
    logger = RecordingLogger()
    trainer = Trainer(**quiet(callbacks=[CB()], logger=logger))
    with pytest.raises(KeyError, match="boom"):
        trainer.fit(Boom(), loader(x, y))
    assert seen == ["KeyError"] and logger.status == "failed" and trainer.interrupted


# ---- loop limits -----------------------------------------------------------------------------------
def test_max_epochs_max_steps(data):
    x, y = data
    t = Trainer(**quiet(max_epochs=3))
    t.fit(Regressor(), loader(x, y))
    assert (t.current_epoch, t.global_step) == (3, 24)
    t = Trainer(**quiet(max_epochs=10, max_steps=5))
    m = Regressor()
    t.fit(m, loader(x, y))
    assert t.global_step == 5 and len(m.losses) == 5
    # Lightning's default: max_epochs=1000 when no other limit, -1 when max_steps is given
    assert Trainer(**{**quiet(), "max_epochs": None}).max_epochs == 1000
    assert Trainer(max_steps=10, logger=False).max_epochs == -1


def test_min_epochs_overrides_early_stop(data):
    from dutycycle.callbacks import Callback

    class StopNow(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    x, y = data
    t = Trainer(**quiet(max_epochs=10, callbacks=[StopNow()]))
    t.fit(Regressor(), loader(x, y))
    assert t.current_epoch == 1
    t = Trainer(**quiet(max_epochs=10, min_epochs=3, callbacks=[StopNow()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(Regressor(), loader(x, y))
    assert t.current_epoch == 3


def test_max_time_forms_and_stop(data):
    from dutycycle.trainer.trainer import _parse_max_time

    assert _parse_max_time("01:02:03:04") == datetime.timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert _parse_max_time({"minutes": 2}) == datetime.timedelta(minutes=2)
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        Trainer(max_time="1:2")

    class Slow(Regressor):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    x, y = data
    t = Trainer(**quiet(max_epochs=100, max_time=datetime.timedelta(seconds=0.15)))
    t0 = time.perf_counter()
    t.fit(Slow(), loader(x, y))
    assert time.perf_counter() - t0 < 2.0 and 0 < t.global_step < 50
    t = Trainer(**quiet(max_epochs=100, max_time="00:00:00:00", min_epochs=2))
    t.fit(Regressor(), loader(x, y))
    assert t.current_epoch == 2  # min_epochs wins over max_time, as in Lightning


def test_limit_batches_int_and_float(data):
    x, y = data
    t = Trainer(**quiet(limit_train_batches=3, limit_val_batches=0.5))
    calls = []

    class M(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append(batch_idx)

    t.fit(M(), loader(x, y), loader(x, y))
    assert t.global_step == 3 and t.num_training_batches == 3 and calls == [0, 1, 2, 3]
    t = Trainer(**quiet(limit_train_batches=0.25))
    t.fit(Regressor(), loader(x, y))
    assert t.global_step == 2
    t = Trainer(**quiet(limit_val_batches=0))
    calls.clear()
    t.fit(M(), loader(x, y), loader(x, y))
    assert calls == []
    (res,) = Trainer(**quiet(limit_test_batches=1)).test(M(), loader(x, y), verbose=False)
    assert "test_loss" in res


def test_val_check_interval_and_check_val_every_n_epoch(data):
    x, y = data
    counts = {}

    class M(Regressor):
        def on_validation_epoch_end(self):
            counts.setdefault("val", []).append(self.trainer.global_step)

    def run(**kw):
        counts.clear()
        Trainer(**quiet(**kw)).fit(M(), loader(x, y), loader(x, y))
        return counts.get("val", [])

    assert run(max_epochs=2) == [8, 16]
    assert run(max_epochs=1, val_check_interval=0.25) == [2, 4, 6, 8]
    assert run(max_epochs=1, val_check_interval=3) == [3, 6]
    assert run(max_epochs=2, val_check_interval=5, check_val_every_n_epoch=None) == [5, 10, 15]
    assert run(max_epochs=4, check_val_every_n_epoch=2) == [16, 32]
    with pytest.raises(ValueError, match="val_check_interval"):
        run(max_epochs=1, val_check_interval=100)


def test_num_sanity_val_steps(data):
    x, y = data
    seen = []

    class M(Regressor):
        def validation_step(self, batch, batch_idx):
            seen.append((self.trainer.sanity_checking, batch_idx))
            return super().validation_step(batch, batch_idx)

    for n, expect in ((0, 0), (2, 2), (-1, 8)):
        seen.clear()
        Trainer(**quiet(num_sanity_val_steps=n, limit_train_batches=1)).fit(M(), loader(x, y), loader(x, y))
        assert sum(s for s, _ in seen) == expect
    # sanity-check metrics are dropped, as in Lightning
    t = Trainer(**quiet(num_sanity_val_steps=2, limit_train_batches=0))
    t.fit(Regressor(), loader(x, y), loader(x, y))
    assert "val_loss" not in t.callback_metrics


def test_log_every_n_steps_and_duty_split_logged(data):
    x, y = data
    lg = RecordingLogger()
    Trainer(**quiet(logger=lg, log_every_n_steps=3, max_epochs=1)).fit(Regressor(), loader(x, y))
    steps = [s for s, m in lg.metrics if "train_loss" in m]
    assert steps == [2, 5]  # Lightning's step column: global_step - 1 at every 3rd step
    m = next(m for _, m in lg.metrics if "train_loss" in m)
    for b in ("compute", "data_wait", "comm_wait", "checkpoint_stall", "other"):
        assert f"duty/{b}_frac" in m and f"duty/{b}_s" in m
    fracs = sum(m[f"duty/{b}_frac"] for b in ("compute", "data_wait", "comm_wait", "checkpoint_stall", "other"))
    assert abs(fracs - 1.0) < 1e-6
    assert lg.hparams["lr"] == 0.05 and lg.status == "success"
    assert all(isinstance(v, float) for _, mm in lg.metrics for k, v in mm.items() if k != "epoch")


def test_fast_dev_run(data, tmp_path):
    x, y = data
    seen = []

    class M(Regressor):
        def validation_step(self, batch, batch_idx):
            seen.append(batch_idx)
            return super().validation_step(batch, batch_idx)

    t = Trainer(fast_dev_run=True, default_root_dir=tmp_path, enable_progress_bar=False)
    t.fit(M(), loader(x, y), loader(x, y))
    assert t.global_step == 1 and seen == [0] and t.loggers == []
    assert not any(p.suffix == ".ckpt" for p in tmp_path.rglob("*")) and not (tmp_path / "lightning_logs").exists()
    t = Trainer(fast_dev_run=3, default_root_dir=tmp_path, enable_progress_bar=False)
    t.fit(M(), loader(x, y), loader(x, y))
    assert t.global_step == 3


def test_default_root_dir_checkpointing_and_progress_bar(data, tmp_path, capsys):
    from dutycycle.callbacks import ModelCheckpoint, TQDMProgressBar

    x, y = data
    t = Trainer(default_root_dir=tmp_path, max_epochs=2, num_sanity_val_steps=0, log_every_n_steps=4)
    assert any(isinstance(c, TQDMProgressBar) for c in t.callbacks)
    assert isinstance(t.checkpoint_callback, ModelCheckpoint)
    t.fit(Regressor(), loader(x, y))
    ckpts = list((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["epoch=1-step=16.ckpt"]
    # Lightning's default logger: TensorBoardLogger when tensorboard(X) is installed, else CSVLogger
    from dutycycle.trainer.config import tensorboard_available

    written = [p.name for p in (tmp_path / "lightning_logs" / "version_0").iterdir()]
    if tensorboard_available():
        assert any(n.startswith("events.out.tfevents.") for n in written), written
    else:
        assert "metrics.csv" in written, written
    assert "Epoch 1" in capsys.readouterr().err
    t = Trainer(default_root_dir=tmp_path / "b", max_epochs=1, enable_checkpointing=False, enable_progress_bar=False)
    assert t.checkpoint_callback is None and t.progress_bar_callback is None
    t.fit(Regressor(), loader(x, y))
    assert not list((tmp_path / "b").rglob("*.ckpt"))
    assert "Epoch" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="enable_checkpointing=False"):
        Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_accelerator_precision_strategy_devices_deterministic_benchmark():
    t = Trainer(
        accelerator="cpu",
        devices=1,
        strategy="single_device",
        precision="32-true",
        deterministic=True,
        benchmark=False,
        logger=False,
    )
    assert t.root_device == dc.device("cpu") and t.precision == "32-true"
    assert Trainer(precision=32, logger=False).precision == "32-true"
    assert Trainer(precision="32", accelerator="auto", logger=False).precision == "32-true"
    for p in ("bf16-mixed", "16-mixed"):  # accepted on the CPU too (tests/test_precision.py)
        assert Trainer(precision=p, accelerator="cpu", logger=False).precision == p
    for p in ("bf16-true", "16-true", "64-true"):
        assert Trainer(precision=p, accelerator="cpu", logger=False).precision == p
    with pytest.raises(ValueError, match="not supported yet"):
        Trainer(precision="transformer-engine", accelerator="cpu", logger=False)
    if not dc.cuda.is_available():
        for a in ("gpu", "cuda"):
            with pytest.raises(RuntimeError, match="no CUDA device"):
                Trainer(accelerator=a, logger=False)
    with pytest.raises(ValueError, match=r"known strategies: \['auto', 'ddp'"):
        Trainer(strategy="deepspeed")
    # Lightning: "auto" with several devices is ddp (the ranks start at fit)
    assert type(Trainer(devices=2, accelerator="cpu", logger=False).strategy).__name__ == "DDPStrategy"


def test_unknown_trainer_argument():
    with pytest.raises(TypeError, match="'max_epoch'.*did you mean 'max_epochs'"):
        Trainer(max_epoch=3)
    with pytest.raises(TypeError, match="'frobnicate'"):
        Trainer(frobnicate=True)


# ---- optimization ---------------------------------------------------------------------------------
def test_accumulate_grad_batches_matches_big_batch(data):
    x, y = data
    seed_everything(1)
    a = Regressor(lr=0.1)
    b = Regressor(lr=0.1)
    b.load_state_dict(a.state_dict())
    ta = Trainer(**quiet(accumulate_grad_batches=2, max_epochs=2))
    ta.fit(a, loader(x, y, batch_size=8))
    Trainer(**quiet(max_epochs=2)).fit(b, loader(x, y, batch_size=16))
    assert ta.global_step == 8
    for pa, pb in zip(params_of(a), params_of(b)):
        np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)


class _RecordingSGD(dc.optim.SGD):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad.numpy().copy() for g in self.param_groups for p in g["params"]]
        self.seen.append(grads)
        super().step()
        return loss


@pytest.mark.parametrize("algo", ["norm", "value"])
def test_gradient_clipping(data, algo):
    x, y = data

    class M(Regressor):
        def configure_optimizers(self):
            self.opt = _RecordingSGD(self.parameters(), lr=0.01)
            return self.opt

    m = M()
    Trainer(**quiet(gradient_clip_val=0.01, gradient_clip_algorithm=algo, max_steps=3)).fit(m, loader(x * 10, y * 10))
    for grads in m.opt.seen:
        if algo == "norm":
            assert np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)) <= 0.01 * (1 + 1e-4)
        else:
            assert max(np.abs(g).max() for g in grads) <= 0.01 + 1e-7
    m2 = M()
    Trainer(**quiet(max_steps=3)).fit(m2, loader(x * 10, y * 10))
    assert max(np.abs(g).max() for g in m2.opt.seen[0]) > 0.1
    with pytest.raises(ValueError, match="gradient_clip_algorithm"):
        Trainer(gradient_clip_algorithm="max")


def _with_optim(config_fn):
    class M(Regressor):
        def configure_optimizers(self):
            return config_fn(self)

    return M


@pytest.mark.parametrize("form", ["single", "list", "tuple", "dict", "dict_sched", "tuple_sched", "list_dicts"])
def test_configure_optimizers_forms(data, form):
    x, y = data
    sched = dc.optim.lr_scheduler

    def cfg(self):
        opt = dc.optim.SGD(self.parameters(), lr=0.1)
        return {
            "single": lambda: opt,
            "list": lambda: [opt],
            "tuple": lambda: (opt,),
            "dict": lambda: {"optimizer": opt},
            "dict_sched": lambda: {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched.StepLR(opt, 1, 0.5), "interval": "step", "frequency": 2},
            },
            "tuple_sched": lambda: ([opt], [sched.StepLR(opt, 1, 0.5)]),
            "list_dicts": lambda: [{"optimizer": opt, "lr_scheduler": sched.StepLR(opt, 1, 0.5)}],
        }[form]()

    t = Trainer(**quiet(max_epochs=2))
    t.fit(_with_optim(cfg)(), loader(x, y))
    lr = t.optimizers[0].param_groups[0]["lr"]
    expected = {"dict_sched": 0.1 * 0.5**8, "tuple_sched": 0.1 * 0.25, "list_dicts": 0.1 * 0.25}.get(form, 0.1)
    assert lr == pytest.approx(expected)
    if form == "dict_sched":
        c = t.lr_scheduler_configs[0]
        assert (c.interval, c.frequency) == ("step", 2)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda self: "adam", "Unknown configuration"),
        (lambda self: {"lr_scheduler": None}, "no 'optimizer' key"),
        (lambda self: {"optimizer": dc.optim.SGD(self.parameters(), lr=0.1), "scheduler": 1}, "unknown keys"),
        (
            lambda self: (
                lambda o: {
                    "optimizer": o,
                    "lr_scheduler": {"scheduler": dc.optim.lr_scheduler.StepLR(o, 1), "interval": "batch"},
                }
            )(dc.optim.SGD(self.parameters(), lr=0.1)),
            "interval",
        ),
        (
            lambda self: [dc.optim.SGD(self.parameters(), lr=0.1), dc.optim.SGD(self.parameters(), lr=0.1)],
            "manual optimization",
        ),
        (lambda self: None, "Unknown configuration"),
    ],
)
def test_configure_optimizers_wrong_shape(data, bad, match):
    x, y = data
    with pytest.raises(ValueError, match=match):
        Trainer(**quiet()).fit(_with_optim(bad)(), loader(x, y))


def test_manual_optimization_two_optimizers(data):
    x, y = data

    class GANish(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.head = dc.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            o1, o2 = self.optimizers()
            loss = ((self.head(self.net(x)) - y) ** 2).mean()
            o1.zero_grad()
            o2.zero_grad()
            self.manual_backward(loss)
            o1.step()
            o2.step()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return [dc.optim.SGD(self.net.parameters(), lr=0.05), dc.optim.SGD(self.head.parameters(), lr=0.05)]

    m = GANish()
    t = Trainer(**quiet(max_epochs=3))
    t.fit(m, loader(x, y))
    assert t.global_step == 48  # Lightning counts every optimizer step in manual optimization
    assert m.losses[-1] < m.losses[0]


# ---- self.log ----------------------------------------------------------------------------------------
def test_log_defaults_suffixes_and_weighted_epoch_mean(data):
    x, y = data
    lg = RecordingLogger()

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("both", float(batch_idx), on_step=True, on_epoch=True)
            self.log("weighted", float(batch_idx), on_step=False, on_epoch=True, batch_size=batch_idx + 1)
            self.log_dict({"a": 1.0, "b": dc.tensor(2.0)})
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx), batch_size=len(batch[0]))

        def on_train_epoch_end(self):
            self.log("epoch_thing", 7.0)

    t = Trainer(**quiet(logger=lg, log_every_n_steps=1, limit_train_batches=4))
    t.fit(M(), loader(x, y), loader(x[:12], y[:12]))  # val batches: 8 then 4 rows
    cm = t.callback_metrics
    assert set(["train_loss", "both", "both_step", "both_epoch", "weighted", "a", "b", "v", "epoch_thing"]) <= set(cm)
    assert float(cm["both_epoch"]) == pytest.approx(1.5)  # mean of 0..3
    assert float(cm["both_step"]) == 3.0
    assert float(cm["weighted"]) == pytest.approx((0 * 1 + 1 * 2 + 2 * 3 + 3 * 4) / 10)
    assert float(cm["v"]) == pytest.approx((0 * 8 + 1 * 4) / 12)  # weighted by batch size
    keys = lg.keys()
    assert {"both_step", "both_epoch", "train_loss", "weighted", "v", "epoch_thing"} <= keys
    assert "both" not in keys and "train_loss_epoch" not in keys
    assert t.logged_metrics["epoch_thing"] == 7.0 and isinstance(t.logged_metrics["v"], float)
    pb = t.progress_bar_metrics
    # Lightning 2: only prog_bar=True metrics (no automatic "loss"); ours adds the duty cycle
    assert "train_loss" in pb and "v" not in pb and 0.0 <= pb["duty"] <= 100.0 and "loss" not in pb
    assert set(pb) == {"train_loss", "duty"}


def test_log_bad_values(data):
    x, y = data

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("vec", dc.ones(3))

    with pytest.raises(ValueError, match="scalar"):
        Trainer(**quiet()).fit(M(), loader(x, y))

    class N(Regressor):
        def on_train_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(ValueError, match="on_step=True"):
        Trainer(**quiet()).fit(N(), loader(x, y))


# ---- training_step results -------------------------------------------------------------------------------
def test_training_step_none_skips_with_one_warning(data):
    x, y = data

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 == 0 else super().training_step(batch, batch_idx)

    class Skip(Regressor):
        def training_step(self, batch, batch_idx):
            return None

    m = Skip()
    before = params_of(m)
    with pytest.warns(UserWarning, match="returned `None`") as rec:
        Trainer(**quiet()).fit(m, loader(x, y))
    assert sum("returned `None`" in str(w.message) for w in rec) <= 1
    for a, b in zip(before, params_of(m)):
        np.testing.assert_array_equal(a, b)
    Trainer(**quiet()).fit(M(), loader(x, y))


@pytest.mark.parametrize(
    "ret, exc, match",
    [
        (lambda loss: dc.ones(3, requires_grad=True) * loss, ValueError, "scalar loss"),
        (lambda loss: {"not_loss": loss}, ValueError, "'loss' key"),
        (lambda loss: "loss", TypeError, "must return a Tensor"),
        (lambda loss: loss.detach(), RuntimeError, "does not require grad"),
    ],
)
def test_training_step_bad_returns(data, ret, exc, match):
    x, y = data

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            return ret(super().training_step(batch, batch_idx))

    with pytest.raises(exc, match=match):
        Trainer(**quiet()).fit(M(), loader(x, y))


def test_training_step_dict_output(data):
    x, y = data
    seen = []

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx), "extra": 1}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(sorted(outputs))

    Trainer(**quiet(max_steps=2)).fit(M(), loader(x, y))
    assert seen == [["extra", "loss"]] * 2


# ---- checkpoints: bad paths ------------------------------------------------------------------------------
def test_ckpt_path_errors(data, tmp_path):
    x, y = data
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        Trainer(**quiet()).fit(Regressor(), loader(x, y), ckpt_path=missing)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="bad.ckpt"):
        Trainer(**quiet()).fit(Regressor(), loader(x, y), ckpt_path=bad)
    t = Trainer(**quiet(default_root_dir=tmp_path / "empty"))
    with pytest.warns(UserWarning, match="no last checkpoint"):
        t.fit(Regressor(), loader(x, y), ckpt_path="last")
    assert t.global_step == 8  # started fresh


def test_save_checkpoint_before_fit_errors(tmp_path):
    with pytest.raises(RuntimeError, match="attached"):
        Trainer(logger=False).save_checkpoint(tmp_path / "x.ckpt")


# ---- duty cycle ------------------------------------------------------------------------------------------
class _SlowDataset:
    def __init__(self, x, y, delay):
        self.x, self.y, self.delay = x, y, delay

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        if self.delay:  # sleep(0) still yields the core: on a loaded machine that alone is ms per item
            time.sleep(self.delay)
        return self.x[i], self.y[i]


def _slow_loader(x, y, delay):
    from dutycycle.data import DataLoader

    return DataLoader(_SlowDataset(x, y, delay), batch_size=8)


def test_duty_split_sums_to_wall_time_and_data_wait_grows(data, capsys):
    x, y = data
    res = {}
    for delay in (0.0, 0.002):
        t = Trainer(**quiet(max_epochs=2))
        t0 = time.perf_counter()
        t.fit(Regressor(), _slow_loader(x, y, delay))
        wall = time.perf_counter() - t0
        s = t.duty_cycle.split()
        parts = sum(s[b] for b in ("compute", "data_wait", "comm_wait", "checkpoint_stall", "other"))
        assert parts == pytest.approx(s["total"], rel=1e-9)
        assert s["total"] == pytest.approx(wall, rel=0.05, abs=0.01)
        assert 0.0 <= t.duty_cycle.fraction() <= 1.0
        last = t.duty_cycle.last_step()
        assert last["total"] > 0 and last["compute"] > 0
        res[delay] = s
    assert res[0.002]["data_wait"] > 0.1  # 16 batches x 8 rows x 2 ms
    assert res[0.002]["data_wait"] > 10 * res[0.0]["data_wait"]
    assert res[0.002]["data_wait"] / res[0.002]["total"] > 0.5
    out = capsys.readouterr().out
    assert "duty cycle (fit)" in out and "comm wait" in out


def test_duty_checkpoint_stall_and_comm_wait(data, tmp_path):
    from dutycycle.callbacks import Callback

    class SaveEveryStep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.save_checkpoint(tmp_path / "step.ckpt")
            with trainer.duty_cycle.track("comm_wait"):
                time.sleep(0.005)

    x, y = data
    t = Trainer(**quiet(callbacks=[SaveEveryStep()]))
    t.fit(Regressor(), loader(x, y))
    s = t.duty_cycle.split()
    assert s["checkpoint_stall"] > 0 and s["comm_wait"] >= 8 * 0.005
    assert t.duty_cycle.last_step()["comm_wait"] >= 0.005
    with pytest.raises(ValueError, match="bucket"):
        with t.duty_cycle.track("nap"):
            pass


def test_duty_nesting_does_not_double_count():
    from dutycycle.trainer import DutyCycle

    d = DutyCycle()
    d.start()
    t0 = time.perf_counter()
    with d.track("compute"):
        time.sleep(0.02)
        t1 = time.perf_counter()
        with d.track("comm_wait"):
            time.sleep(0.02)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    d.step_end()
    d.stop()
    s = d.split()
    # measured against the real sleeps (a loaded machine oversleeps): the nested wait is not compute
    assert s["comm_wait"] >= 0.02 and s["compute"] <= (t1 - t0) + (t3 - t2) + 0.005
    assert s["compute"] + s["comm_wait"] + s["other"] == pytest.approx(s["total"])


# ---- lr schedulers: ReduceLROnPlateau's monitor path, Lightning's stepping rules -------------------------
class _Plateau(Regressor):
    """Validation logs a scripted val_loss per epoch; records each lr_scheduler_step call and the lr
    each epoch starts with."""

    def __init__(self, script, sched_cfg=None, **sched_kw):
        super().__init__(lr=0.1)
        self.script, self.sched_cfg, self.sched_kw = script, dict(sched_cfg or {}), sched_kw
        self.calls, self.epoch_lrs = [], []

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.script[self.current_epoch])

    def on_train_epoch_start(self):
        self.epoch_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        opt = dc.optim.SGD(self.parameters(), lr=0.1)
        sched = dc.optim.lr_scheduler.ReduceLROnPlateau(opt, **self.sched_kw)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", **self.sched_cfg}}

    def lr_scheduler_step(self, scheduler, metric):
        self.calls.append((self.current_epoch, self.trainer.global_step, float(metric)))
        super().lr_scheduler_step(scheduler, metric)


def test_reduce_on_plateau_steps_after_validation_with_the_monitored_metric(data):
    x, y = data
    script = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    m = _Plateau(script, factor=0.5, patience=1)
    t = Trainer(**quiet(max_epochs=6, num_sanity_val_steps=2))  # the sanity check's val_loss is dropped
    t.fit(m, loader(x, y), loader(x[:8], y[:8]))
    # once per epoch, after that epoch's validation (epoch 0 already sees its own val_loss)
    assert m.calls == [(e, 8 * (e + 1), v) for e, v in enumerate(script)]
    # by hand (torch): best 1.0; bad 1; bad 2 > patience 1 -> 0.05; 0.5 best; bad 1; bad 2 -> 0.025
    assert m.epoch_lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert t.optimizers[0].param_groups[0]["lr"] == 0.025
    assert t.lr_scheduler_configs[0].reduce_on_plateau and t.lr_scheduler_configs[0].interval == "epoch"
    # frequency=2 steps at epochs 1, 3, 5 (Lightning: (epoch + 1) % frequency == 0)
    m2 = _Plateau(script, {"frequency": 2}, factor=0.5, patience=0)
    Trainer(**quiet(max_epochs=6)).fit(m2, loader(x, y), loader(x[:8], y[:8]))
    assert [c[0] for c in m2.calls] == [1, 3, 5]


def test_reduce_on_plateau_missing_monitor_is_lightnings_error(data):
    from dutycycle.callbacks import MisconfigurationException

    x, y = data

    class Typo(_Plateau):
        def configure_optimizers(self):
            cfg = super().configure_optimizers()
            cfg["lr_scheduler"]["monitor"] = "val_los"
            return cfg

    with pytest.raises(MisconfigurationException) as e:
        Trainer(**quiet()).fit(Typo([1.0]), loader(x, y), loader(x[:8], y[:8]))
    msg = str(e.value)
    assert msg.startswith("ReduceLROnPlateau conditioned on metric val_los which is not available.")
    assert "Available metrics are: ['train_loss', 'val_loss']" in msg and "`monitor` key" in msg
    # strict=False: a RuntimeWarning, the lr is left alone
    m = _Plateau([1.0, 1.0], {"monitor": "nope", "strict": False}, factor=0.5, patience=0)
    with pytest.warns(RuntimeWarning, match="nope which is not available but strict is set to `False`"):
        Trainer(**quiet(max_epochs=2)).fit(m, loader(x, y), loader(x[:8], y[:8]))
    assert m.calls == [] and m.epoch_lrs == [0.1, 0.1]
    # a plateau scheduler without any monitor is refused when configure_optimizers is read
    with pytest.raises(ValueError, match="must include a monitor"):
        Trainer(**quiet()).fit(
            _with_optim(
                lambda self: (lambda o: {"optimizer": o, "lr_scheduler": dc.optim.lr_scheduler.ReduceLROnPlateau(o)})(
                    dc.optim.SGD(self.parameters(), lr=0.1)
                )
            )(),
            loader(x, y),
        )


def test_reduce_on_plateau_interval_step_monitors_a_step_metric(data):
    x, y = data
    seen = []

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            seen.append((self.trainer.global_step, batch_idx, loss.item()))
            return loss

        def configure_optimizers(self):
            opt = dc.optim.SGD(self.parameters(), lr=0.1)
            sched = dc.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "monitor": "train_loss"}}

        def lr_scheduler_step(self, scheduler, metric):
            self.calls.append((self.trainer.global_step, float(metric)))
            super().lr_scheduler_step(scheduler, metric)

    m = M()
    m.calls = []
    t = Trainer(**quiet(max_epochs=2, accumulate_grad_batches=2))
    t.fit(m, loader(x, y))
    # after each optimizer step (every 2nd batch), with the train_loss of that batch
    stepping = [(g + 1, loss) for g, b, loss in seen if b % 2 == 1]
    assert m.calls == stepping and len(stepping) == 8
    # mode="max", patience=0 on a falling loss: every step after the first reduces the lr
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**7)


def test_step_scheduler_frequency_counts_batches_of_the_epoch(data):
    x, y = data

    def cfg(self):
        opt = dc.optim.SGD(self.parameters(), lr=0.1)
        sched = dc.optim.lr_scheduler.StepLR(opt, 1, 0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 2}}

    t = Trainer(**quiet(max_epochs=2))
    t.fit(_with_optim(cfg)(), loader(x[:40], y[:40]))  # 5 batches an epoch
    # Lightning: (batch_idx + 1) % frequency == 0 -> batches 1 and 3 of each epoch: 4 steps (not 5)
    assert t.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5**4


def test_manual_optimization_does_not_step_schedulers(data):
    x, y = data

    class Manual(Regressor):
        def __init__(self, user_steps):
            super().__init__()
            self.automatic_optimization = False
            self.user_steps = user_steps

        def training_step(self, batch, batch_idx):
            x, y = batch
            opt = self.optimizers()
            loss = ((self(x) - y) ** 2).mean()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            if self.user_steps:
                self.lr_schedulers().step()

        def configure_optimizers(self):
            opt = dc.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": dc.optim.lr_scheduler.StepLR(opt, 1, 0.5)}}

    for user_steps, n in ((False, 0), (True, 8)):
        t = Trainer(**quiet(max_epochs=1))
        t.fit(Manual(user_steps), loader(x, y))
        assert t.global_step == 8
        assert t.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5**n  # once per user call, never by the trainer


def test_epoch_scheduler_steps_with_an_unsized_loader(data):
    x, y = data

    class Batches:
        """An iterable with no len(): the trainer learns the epoch ended when it runs out."""

        def __iter__(self):
            return iter(list(loader(x, y)))

    def cfg(self):
        opt = dc.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": dc.optim.lr_scheduler.StepLR(opt, 1, 0.5)}

    t = Trainer(**quiet(max_epochs=3))
    t.fit(_with_optim(cfg)(), Batches())
    assert t.global_step == 24 and t.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5**3


def test_epoch_plateau_scheduler_skips_an_epoch_cut_short(data):
    x, y = data
    m = _Plateau([1.0], factor=0.5, patience=0)
    t = Trainer(**quiet(max_epochs=1, max_steps=3))  # the epoch stops after 3 of its 8 batches
    t.fit(m, loader(x, y), loader(x[:8], y[:8]))
    assert m.calls == [] and t.global_step == 3


def test_log_in_on_train_epoch_start_is_kept(data):
    x, y = data
    lg = RecordingLogger()

    class M(Regressor):
        def on_train_epoch_start(self):
            self.log("start_thing", 3.0 + self.current_epoch)

    t = Trainer(**quiet(max_epochs=2, logger=lg))
    t.fit(M(), loader(x, y))
    assert t.callback_metrics["start_thing"] == 4.0
    assert [m["start_thing"] for _, m in lg.metrics if "start_thing" in m] == [3.0, 4.0]


def test_resume_skips_the_sanity_check(data, tmp_path):
    from dutycycle.callbacks import Callback

    x, y = data

    class Count(Callback):
        def __init__(self):
            self.n = 0

        def on_sanity_check_start(self, trainer, pl_module):
            self.n += 1

    c1 = Count()
    t = Trainer(**quiet(max_steps=3, num_sanity_val_steps=1, callbacks=[c1]))
    t.fit(Regressor(), loader(x, y), loader(x[:8], y[:8]))
    t.save_checkpoint(tmp_path / "a.ckpt")
    c2 = Count()
    t2 = Trainer(**quiet(num_sanity_val_steps=1, callbacks=[c2]))
    t2.fit(Regressor(), loader(x, y), loader(x[:8], y[:8]), ckpt_path=tmp_path / "a.ckpt")
    assert (c1.n, c2.n) == (1, 0) and t2.global_step == 8


def test_progress_bar_shows_v_num_prog_bar_metrics_and_duty_only(data):
    import io

    from dutycycle.callbacks import TQDMProgressBar

    x, y = data

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)  # train_loss, prog_bar=True
            self.log("hidden", 1.0)  # not on the bar
            return loss

    out = io.StringIO()  # not a terminal: one plain line per epoch
    bar = TQDMProgressBar(file=out)
    t = Trainer(**quiet(max_epochs=1, logger=RecordingLogger(), enable_progress_bar=True, callbacks=[bar]))
    t.fit(M(), loader(x, y))
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("Epoch 0"))
    post = line[line.index("[") + 1 : line.rindex("]")]  # elapsed<remaining, rate, key=value, ...
    keys = [kv.split("=")[0].strip() for kv in post.split(",") if "=" in kv]
    assert keys == ["duty", "v_num", "train_loss"], line
    assert set(bar.get_metrics(t, t.lightning_module)) == {"v_num", "train_loss", "duty"}


@pytest.mark.parametrize("k", [20, 24])  # mid-epoch 2, at the end of epoch 2
def test_reduce_on_plateau_resumes_exactly(data, tmp_path, k):
    from dutycycle.callbacks import LearningRateMonitor

    x, y = data
    script = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]

    def run(max_steps=-1, ckpt_path=None):
        m = _Plateau(script, factor=0.5, patience=1)
        lg = RecordingLogger()
        t = Trainer(**quiet(max_epochs=6, max_steps=max_steps, logger=lg, callbacks=[LearningRateMonitor()]))
        t.fit(m, loader(x, y), loader(x[:8], y[:8]), ckpt_path=ckpt_path)
        return m, t, lg

    full, ft, flg = run()
    _, pt, _ = run(max_steps=k)
    pt.save_checkpoint(tmp_path / "p.ckpt")
    resumed, rt, rlg = run(ckpt_path=tmp_path / "p.ckpt")
    assert resumed.calls == [c for c in full.calls if c[1] > k]  # the cut epoch is stepped once, on resume
    assert rt.optimizers[0].param_groups[0]["lr"] == ft.optimizers[0].param_groups[0]["lr"] == 0.025
    assert rt.lr_scheduler_configs[0].scheduler.state_dict() == ft.lr_scheduler_configs[0].scheduler.state_dict()
    lrs = [m["lr-SGD"] for _, m in flg.metrics if "lr-SGD" in m]
    assert lrs[0] == 0.1 and lrs[-1] == 0.05  # LearningRateMonitor logs the plateau scheduler's lr each epoch


def test_toggle_optimizer_switches_other_params_off_and_back(data):
    x, y = data
    seen = []

    class GANish(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.head = dc.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            o1, o2 = self.optimizers()
            self.toggle_optimizer(o2)
            seen.append((all(not p.requires_grad for p in self.net.parameters()),
                         all(p.requires_grad for p in self.head.parameters())))
            loss = ((self.head(self.net(x)) - y) ** 2).mean()
            o2.zero_grad()
            self.manual_backward(loss)
            o2.step()
            self.untoggle_optimizer(o2)
            assert all(p.requires_grad for p in self.parameters())
            assert all(p.grad is None for p in self.net.parameters())  # the toggled-off side got no grads

        def configure_optimizers(self):
            return [dc.optim.SGD(self.net.parameters(), lr=0.05), dc.optim.SGD(self.head.parameters(), lr=0.05)]

    Trainer(**quiet(max_epochs=1)).fit(GANish(), loader(x, y))
    assert seen and all(a and b for a, b in seen)


def test_load_from_checkpoint_rebuilds_the_module(data, tmp_path):
    x, y = data
    m = Regressor(d=4, lr=0.07, hidden=8)
    t = Trainer(**quiet(max_epochs=2))
    t.fit(m, loader(x, y))
    path = str(tmp_path / "m.ckpt")
    t.save_checkpoint(path)
    back = Regressor.load_from_checkpoint(path)
    assert back.hparams.lr == 0.07 and back.hparams.hidden == 8
    for (k, a), (k2, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert Regressor.load_from_checkpoint(path, lr=0.5).hparams.lr == 0.5  # kwargs override
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        Regressor.load_from_checkpoint(str(tmp_path / "nope.ckpt"))
