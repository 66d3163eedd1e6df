"""The lightning.pytorch names (README "PyTorch and Lightning coverage"): the dutycycle.pytorch mirror
and its missing names, grad_norm, demos and the logo, steps without batch_idx, the model summary,
the profilers, overfit_batches, the default logger and its folders, and TensorBoard images through
the logger's experiment and dutycycle.utils.tensorboard.SummaryWriter (read back with TensorBoard's
own EventAccumulator)."""

import io
import math
import os
import warnings

import numpy as np
import pytest

import dutycycle as dc
from dutycycle._missing import NotInDutycycleError
from dutycycle.data import DataLoader, TensorDataset


def _data(n=64, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 4)).astype(np.float32)
    return dc.from_numpy(x), dc.from_numpy(x.sum(1, keepdims=True))


def _trainer(tmp_path, **kw):
    kw = {"default_root_dir": tmp_path, "enable_progress_bar": False, "enable_checkpointing": False,
          "logger": False, "num_sanity_val_steps": 0, **kw}  # fmt: skip
    return dc.Trainer(**kw)


class Reg(dc.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = dc.nn.Sequential(dc.nn.Linear(4, 8), dc.nn.ReLU(), dc.nn.Linear(8, 1))
        self.head = dc.nn.Linear(1, 1)
        self.seen = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].numpy().copy())
        x, y = batch
        loss = dc.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", dc.nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return dc.optim.SGD(self.parameters(), lr=0.05)


# ---- the mirror -----------------------------------------------------------------------------------
def test_mirror_is_dutycycle_itself():
    import dutycycle.pytorch as pl
    from dutycycle.pytorch.callbacks.model_checkpoint import ModelCheckpoint
    from dutycycle.pytorch.core import LightningDataModule, LightningModule
    from dutycycle.pytorch.core.module import LightningModule as LM2
    from dutycycle.pytorch.loggers import CSVLogger, TensorBoardLogger
    from dutycycle.pytorch.trainer import Trainer
    from dutycycle.pytorch.utilities import grad_norm, rank_zero_info, rank_zero_only, rank_zero_warn
    from dutycycle.pytorch.utilities.model_summary import ModelSummary
    from dutycycle.pytorch.utilities.rank_zero import rank_zero_only as rzo

    assert pl.Trainer is Trainer is dc.Trainer and pl.LightningModule is LightningModule is LM2 is dc.LightningModule
    assert pl.LightningDataModule is LightningDataModule is dc.LightningDataModule
    assert pl.Callback is dc.callbacks.Callback is dc.Callback and pl.seed_everything is dc.seed_everything
    assert ModelCheckpoint is dc.callbacks.ModelCheckpoint and pl.callbacks is dc.callbacks
    assert CSVLogger is dc.loggers.CSVLogger and TensorBoardLogger is dc.loggers.TensorBoardLogger
    assert rzo is rank_zero_only is dc.distributed.rank_zero.rank_zero_only
    assert callable(rank_zero_info) and callable(rank_zero_warn) and callable(grad_norm)
    assert ModelSummary is dc.trainer.summary.ModelSummary
    # `import dutycycle as L` (was lightning) and `import dutycycle as pl` (was pytorch_lightning)
    assert dc.pytorch is pl and dc.utilities is pl.utilities and dc.profilers is pl.profilers
    import dutycycle.utilities.rank_zero as rz

    assert rz is dc.distributed.rank_zero
    assert pl.profilers.SimpleProfiler is dc.trainer.profiler.SimpleProfiler


@pytest.mark.parametrize(
    "module,name,upstream",
    [
        ("dutycycle.pytorch", "Fabric", "lightning.pytorch"),
        ("dutycycle.pytorch.callbacks", "StochasticWeightAveraging", "lightning.pytorch.callbacks"),
        ("dutycycle.pytorch.loggers", "WandbLogger", "lightning.pytorch.loggers"),
        ("dutycycle.pytorch.utilities", "CombinedLoader", "lightning.pytorch.utilities"),
        ("dutycycle.pytorch.core", "LightningLightning", "lightning.pytorch.core"),
        ("dutycycle.pytorch.trainer", "connectors", "lightning.pytorch.trainer"),
        ("dutycycle.pytorch.demos", "MNISTDataModule", "lightning.pytorch.demos"),
        ("dutycycle.pytorch.profilers", "PyTorchProfiler", "lightning.pytorch.profilers"),
        ("dutycycle.utils.tensorboard", "FileWriter", "torch.utils.tensorboard"),
    ],
)
def test_missing_names_say_not_in_dutycycle(module, name, upstream):
    import importlib

    mod = importlib.import_module(module)
    with pytest.raises(NotInDutycycleError, match=f"{upstream}.{name} is not in dutycycle yet"):
        getattr(mod, name)
    assert not hasattr(mod, name)
    with pytest.raises(AttributeError) as e:
        _ = mod._private_probe
    assert type(e.value) is AttributeError


def test_logo_and_demos(tmp_path, capsys):
    from dutycycle.pytorch import LIGHTNING_LOGO, cli_lightning_logo
    from dutycycle.pytorch.demos import BoringDataModule, BoringModel, ManualOptimBoringModel, RandomDataset

    cli_lightning_logo()
    out = capsys.readouterr().out
    assert LIGHTNING_LOGO in out and "\033[0;35m" in out and len(LIGHTNING_LOGO.splitlines()) > 8
    assert len(RandomDataset(32, 10)) == 10 and tuple(RandomDataset(32, 10)[3].shape) == (32,)
    for model, dm in ((BoringModel(), None), (ManualOptimBoringModel(), None), (BoringModel(), BoringDataModule())):
        t = _trainer(tmp_path, max_epochs=1, limit_train_batches=8, limit_val_batches=2, enable_model_summary=False)
        w0 = model.layer.weight.detach().numpy().copy()
        t.fit(model, datamodule=dm)
        assert t.global_step == 8 and not np.allclose(w0, model.layer.weight.detach().numpy())
        assert t.test(model, datamodule=dm, verbose=False)[0] == {}


# ---- grad_norm ------------------------------------------------------------------------------------
def test_grad_norm_keys_and_values():
    from dutycycle.pytorch.utilities import grad_norm

    m = dc.nn.Sequential(dc.nn.Linear(3, 4), dc.nn.Linear(4, 2))
    assert grad_norm(m, 2) == {}
    m(dc.randn(5, 3)).pow(2).sum().backward()
    m[1].bias.grad = None
    for p_norm in (1, 2, 2.5, "inf"):
        norms = grad_norm(m, p_norm)
        p = float(p_norm)
        names = ["0.weight", "0.bias", "1.weight"]
        assert list(norms) == [f"grad_{p}_norm/{n}" for n in names] + [f"grad_{p}_norm_total"]
        grads = [dict(m.named_parameters())[n].grad.numpy().ravel().astype(np.float64) for n in names]
        ref = [np.linalg.norm(g, p) for g in grads]
        got = [float(norms[f"grad_{p}_norm/{n}"]) for n in names]
        np.testing.assert_allclose(got, ref, rtol=1e-5)
        np.testing.assert_allclose(float(norms[f"grad_{p}_norm_total"]), np.linalg.norm(np.concatenate(grads), p),
                                   rtol=1e-5)  # fmt: skip
    assert "grad_2.0_norm_total" in grad_norm(m, 2, group_separator=".")
    assert list(grad_norm(m, 2, group_separator="."))[0] == "grad_2.0_norm.0.weight"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive number or 'inf'"):
            grad_norm(m, bad)


def test_grad_norm_logged_from_on_before_optimizer_step(tmp_path):
    from dutycycle.pytorch.utilities import grad_norm

    class M(Reg):
        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self.net, norm_type=2))

    t = _trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    x, y = _data()
    t.fit(M(), DataLoader(TensorDataset(x, y), batch_size=16))
    assert {"grad_2.0_norm/0.weight", "grad_2.0_norm/2.bias", "grad_2.0_norm_total"} <= set(t.callback_metrics)


# ---- steps without batch_idx ----------------------------------------------------------------------
def test_steps_without_batch_idx(tmp_path):
    calls = []

    class M(dc.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = dc.nn.Linear(4, 1)

        def training_step(self, batch):
            calls.append("train")
            return dc.nn.functional.mse_loss(self.lin(batch[0]), batch[1])

        def validation_step(self, batch):
            calls.append("val")

        def test_step(self, batch, *args):
            calls.append(("test", args))

        def predict_step(self, batch):
            return self.lin(batch[0])

        def configure_optimizers(self):
            return dc.optim.SGD(self.parameters(), lr=0.1)

    x, y = _data(32)
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    t = _trainer(tmp_path, max_epochs=1, enable_model_summary=False)
    t.fit(M(), dl, dl)
    assert calls == ["train", "train", "val", "val"]
    t.test(dataloaders=dl, verbose=False)
    assert calls[-2:] == [("test", (0,)), ("test", (1,))]  # *args: batch_idx is passed
    preds = t.predict(dataloaders=dl)
    assert len(preds) == 2 and tuple(preds[0].shape) == (16, 1)


# ---- model summary --------------------------------------------------------------------------------
def test_model_summary_table_matches_lightnings_layout():
    from dutycycle.pytorch.utilities.model_summary import ModelSummary, get_human_readable_count, summarize

    class M(dc.LightningModule):
        def __init__(self):
            super().__init__()
            self.enc = dc.nn.Sequential(dc.nn.Linear(8, 300), dc.nn.ReLU())
            self.dec = dc.nn.Linear(300, 1)
            self.frozen = dc.nn.Linear(10, 10)
            self.frozen.requires_grad_(False)
            self.dec.eval()

        def forward(self, x):
            return self.dec(self.enc(x))

    # the table Lightning 2.6 prints for this model (its FLOPs column aside)
    expected = (
        "  | Name   | Type       | Params | Mode \n"
        "----------------------------------------------\n"
        "0 | enc    | Sequential | 2.7 K  | train\n"
        "1 | dec    | Linear     | 301    | eval \n"
        "2 | frozen | Linear     | 110    | train\n"
        "----------------------------------------------\n"
        "3.0 K     Trainable params\n"
        "110       Non-trainable params\n"
        "3.1 K     Total params\n"
        "0.012     Total estimated model params size (MB)\n"
        "4         Modules in train mode\n"
        "1         Modules in eval mode"
    )
    m = M()
    assert str(ModelSummary(m)) == expected
    s = summarize(m, max_depth=-1)
    assert s.layer_names == ["enc", "enc.0", "enc.1", "dec", "frozen"] and s.total_parameters == 2700 + 301 + 110
    assert s.trainable_parameters == 3001 and math.isclose(s.model_size, 3111 * 4 / 1e6)
    # with example_input_array: one forward in eval mode records the sizes; modes come back as they were
    m.example_input_array = dc.zeros(2, 8)
    s = ModelSummary(m)
    assert s.in_sizes == [[2, 8], [2, 300], "?"] and s.out_sizes == [[2, 300], [2, 1], "?"]
    assert "In sizes" in str(s) and "[2, 300]" in str(s) and m.training and not m.dec.training
    assert "forward" not in m.enc.__dict__
    assert [get_human_readable_count(n) for n in (0, 999, 1000, 123456, 2_500_000)] == [
        "0  ", "999  ", "1.0 K", "123 K", "2.5 M"]  # fmt: skip
    with pytest.raises(ValueError):
        ModelSummary(m, max_depth=-2)


def test_model_summary_printed_at_fit_start_on_rank_zero_only(tmp_path, capsys):
    x, y = _data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    _trainer(tmp_path, max_epochs=1).fit(Reg(), dl)
    out = capsys.readouterr().out
    assert "  | Name | Type       | Params | Mode" in out and "0 | net  | Sequential | 49     | train" in out
    assert "Total estimated model params size (MB)" in out
    assert out.index("Trainable params") < out.index("duty cycle (fit)")
    _trainer(tmp_path, max_epochs=1, enable_model_summary=False).fit(Reg(), dl)
    assert "Trainable params" not in capsys.readouterr().out
    t = _trainer(tmp_path, max_epochs=1)
    cb = next(c for c in t.callbacks if isinstance(c, dc.callbacks.ModelSummary))

    class NotZero:
        is_global_zero = False

    cb.on_fit_start(NotZero(), Reg())
    assert capsys.readouterr().out == ""
    custom = dc.callbacks.ModelSummary(max_depth=-1)
    t = _trainer(tmp_path, max_epochs=1, callbacks=[custom])
    assert [c for c in t.callbacks if isinstance(c, dc.callbacks.ModelSummary)] == [custom]
    t.fit(Reg(), dl)
    assert "net.0" in capsys.readouterr().out


# ---- profilers ------------------------------------------------------------------------------------
def test_simple_profiler_report(tmp_path, capsys):
    x, y = _data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16)

    class Counter(dc.Callback):
        n = 0

        def on_train_batch_end(self, *args):
            self.n += 1

    counter = Counter()
    t = _trainer(tmp_path, max_epochs=2, profiler="simple", callbacks=[counter], enable_model_summary=False)
    t.fit(Reg(), dl, dl)
    out = capsys.readouterr().out
    assert "FIT Profiler Report" in out
    for col in ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"):
        assert col in out
    durations = t.profiler.recorded_durations
    assert len(durations["[LightningModule]Reg.training_step"]) == 8  # 2 epochs of 4 batches
    assert len(durations["[_TrainingEpochLoop].train_dataloader_next"]) == 8
    assert len(durations["[Strategy]SingleDeviceStrategy.backward"]) == 8
    assert len(durations["[Strategy]SingleDeviceStrategy.optimizer_step"]) == 8
    assert len(durations["[LightningModule]Reg.optimizer_step"]) == 8
    assert len(durations[f"[Callback]{counter.state_key}.on_train_batch_end"]) == 8 == counter.n
    assert len(durations["[LightningModule]Reg.validation_step"]) == 8 and len(durations["run_training_epoch"]) == 2
    assert len(durations["[_EvaluationLoop].val_next"]) == 8 and len(durations["run_training_batch"]) == 8
    rows, wall = t.profiler.report()
    assert all(0 <= r[4] <= 100 for r in rows) and rows == sorted(rows, key=lambda r: -r[3])
    # the step is inside the optimizer step's closure: nested timings add up
    step = sum(durations["[LightningModule]Reg.training_step"])
    assert step <= sum(durations["[LightningModule]Reg.optimizer_step"]) <= sum(durations["run_training_batch"])
    line = next(ln for ln in out.splitlines() if "[LightningModule]Reg.training_step" in ln)
    assert line.split("|")[3].strip() == "8"
    t.validate(Reg(), dl, verbose=False)
    assert "VALIDATE Profiler Report" in capsys.readouterr().out


def test_profiler_none_wraps_nothing_and_file_output(tmp_path, capsys):
    from dutycycle.pytorch.profilers import AdvancedProfiler, PassThroughProfiler, SimpleProfiler

    x, y = _data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    t = _trainer(tmp_path, max_epochs=1, enable_model_summary=False)
    assert isinstance(t.profiler, PassThroughProfiler) and not t._profiling
    m = Reg()
    t.fit(m, dl)
    assert "Profiler Report" not in capsys.readouterr().out
    _, mod_fn = t._hook_targets("training_step", False, True, None)
    assert mod_fn == m.training_step  # the bound method itself: no timing wrapper

    p = SimpleProfiler(dirpath=tmp_path / "prof", filename="perf")
    _trainer(tmp_path, max_epochs=1, profiler=p, enable_model_summary=False).fit(Reg(), dl)
    assert "Profiler Report" not in capsys.readouterr().out
    assert "[LightningModule]Reg.training_step" in (tmp_path / "prof" / "fit-perf.txt").read_text()
    with pytest.raises(ValueError, match="already started"):
        p.start("a")
        p.start("a")
    with pytest.raises(ValueError, match="never started"):
        p.stop("b")
    t = _trainer(tmp_path, max_epochs=1, profiler="advanced", enable_model_summary=False)
    assert isinstance(t.profiler, AdvancedProfiler)
    t.fit(Reg(), dl)
    out = capsys.readouterr().out
    assert "Profile stats for: [LightningModule]Reg.training_step" in out and "cumulative" in out
    with pytest.raises(ValueError, match="only be one of"):
        _trainer(tmp_path, profiler="fancy")
    with pytest.raises(ValueError, match="not in dutycycle yet"):
        _trainer(tmp_path, profiler="pytorch")


# ---- overfit_batches ------------------------------------------------------------------------------
def test_overfit_batches_uses_the_first_batches_unshuffled(tmp_path):
    x, y = _data(64)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    val_seen = []

    class M(Reg):
        def validation_step(self, batch, batch_idx):
            val_seen.append(batch[0].numpy().copy())

    m = M()
    t = _trainer(tmp_path, max_epochs=3, overfit_batches=2)
    with pytest.warns(UserWarning, match="You requested to overfit but enabled training dataloader shuffling"):
        t.fit(m, train, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert t.num_training_batches == 2 and t.global_step == 6 and t.num_val_batches == [2]
    xn = x.numpy()
    for i, b in enumerate(m.seen):  # the first two batches, in order, every epoch
        np.testing.assert_array_equal(b, xn[(i % 2) * 8 : (i % 2 + 1) * 8])
    assert len(val_seen) == 6
    for i, b in enumerate(val_seen):
        np.testing.assert_array_equal(b, xn[(i % 2) * 8 : (i % 2 + 1) * 8])
    assert train.sampler.__class__.__name__ == "RandomSampler"  # the user's loader is left as it was

    m = M()
    t = _trainer(tmp_path, max_epochs=1, overfit_batches=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sequential loader: nothing to warn about
        t.fit(m, DataLoader(TensorDataset(x, y), batch_size=8))
    assert t.num_training_batches == 2
    assert _trainer(tmp_path).overfit_batches == 0.0
    with pytest.raises(ValueError, match="overfit_batches"):
        _trainer(tmp_path, overfit_batches=-1)


# ---- default logger and folders -------------------------------------------------------------------
def test_default_logger_is_tensorboard_when_installed(tmp_path, monkeypatch):
    from dutycycle.loggers import CSVLogger, TensorBoardLogger
    from dutycycle.trainer import config

    t = dc.Trainer(default_root_dir=tmp_path, enable_progress_bar=False)
    assert isinstance(t.logger, TensorBoardLogger if config.tensorboard_available() else CSVLogger)
    assert t.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    monkeypatch.setattr(config, "tensorboard_available", lambda: False)
    t = dc.Trainer(default_root_dir=tmp_path, enable_progress_bar=False)
    assert isinstance(t.logger, CSVLogger) and t.logger.root_dir == os.path.join(str(tmp_path), "lightning_logs")
    monkeypatch.setattr(config, "tensorboard_available", lambda: True)
    assert isinstance(dc.Trainer(default_root_dir=tmp_path, logger=True).logger, TensorBoardLogger)


def test_two_loggers_folder_layout(tmp_path):
    """Lightning 2.x: trainer.log_dir and the checkpoints follow the first logger."""
    from dutycycle.loggers import CSVLogger, TensorBoardLogger

    x, y = _data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    tb, csv = TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv", name="other")
    t = dc.Trainer(default_root_dir=tmp_path, logger=[tb, csv], max_epochs=1, enable_progress_bar=False,
                   log_every_n_steps=1, enable_model_summary=False)  # fmt: skip
    t.fit(Reg(), dl)
    assert t.log_dir == tb.log_dir == os.path.join(str(tmp_path), "tb", "lightning_logs", "version_0")
    ckpts = os.listdir(os.path.join(tb.log_dir, "checkpoints"))
    assert ckpts == ["epoch=0-step=4.ckpt"]
    assert os.path.isfile(os.path.join(str(tmp_path), "csv", "other", "version_0", "metrics.csv"))
    assert any(n.startswith("events.out.tfevents.") for n in os.listdir(tb.log_dir))


# ---- TensorBoard images ---------------------------------------------------------------------------
def _accumulate(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    ea.Reload()
    return ea


def _png(encoded):
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(encoded), format="png")


def test_png_encoder_decodes_back():
    import zlib

    from dutycycle.loggers.tensorboard import png_encode

    g = np.random.default_rng(0)
    for c in (1, 3, 4):
        px = g.integers(0, 256, (5, 7, c), dtype=np.uint8)
        png = png_encode(px)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
        idat = png.index(b"IDAT")
        n = int.from_bytes(png[idat - 4 : idat], "big")
        assert zlib.crc32(png[idat : idat + 4 + n]) == int.from_bytes(png[idat + 4 + n : idat + 8 + n], "big")
        rows = np.frombuffer(zlib.decompress(png[idat + 4 : idat + 4 + n]), np.uint8).reshape(5, 1 + 7 * c)
        assert (rows[:, 0] == 0).all() and (rows[:, 1:].reshape(5, 7, c) == px).all()
        back = _png(png)
        back = back[:, :, None] if back.ndim == 2 else back
        np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), px)


def test_logger_experiment_add_image_read_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from dutycycle.loggers import TensorBoardLogger

    lg = TensorBoardLogger(tmp_path)
    chw = np.linspace(0, 1, 3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    lg.experiment.add_image("chw", dc.from_numpy(chw), 3)
    lg.experiment.add_image("hwc", chw.transpose(1, 2, 0), 4, dataformats="HWC")
    gray = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
    lg.experiment.add_image("hw_uint8", gray, 5, dataformats="HW")
    lg.experiment.add_image("clipped", dc.from_numpy(chw * 3 - 1), 6)
    lg.experiment.add_images("grid", dc.from_numpy(np.stack([chw * k / 9 for k in range(10)])), 7)
    lg.finalize("success")
    ea = _accumulate(lg.log_dir)
    assert set(ea.Tags()["images"]) == {"chw", "hwc", "hw_uint8", "clipped", "grid"}
    ref = np.floor(chw.transpose(1, 2, 0) * 255)
    for tag, step in (("chw", 3), ("hwc", 4)):
        (ev,) = ea.Images(tag)
        assert (ev.step, ev.width, ev.height) == (step, 5, 4)
        np.testing.assert_array_equal(np.round(_png(ev.encoded_image_string) * 255), ref)
    (ev,) = ea.Images("hw_uint8")  # one channel is written as RGB, as torch writes it
    img = np.round(_png(ev.encoded_image_string) * 255)
    assert img.shape == (3, 4, 3) and (img == gray[:, :, None]).all()
    img = _png(ea.Images("clipped")[0].encoded_image_string)
    assert img.min() == 0.0 and img.max() == 1.0
    (ev,) = ea.Images("grid")  # 10 images: 8 per row, 2 rows, the last 6 cells empty
    assert (ev.width, ev.height) == (40, 8)
    grid = np.round(_png(ev.encoded_image_string) * 255)
    np.testing.assert_allclose(grid[4:8, 0:5], np.floor(chw.transpose(1, 2, 0) * 8 / 9 * 255), atol=1)
    assert (grid[4:, 10:] == 0).all()
    with pytest.raises(ValueError, match="dataformats"):
        lg.experiment.add_image("bad", chw, dataformats="CHWX")
    with pytest.raises(ValueError, match="channels"):
        lg.experiment.add_image("bad", np.zeros((2, 4, 4), np.float32))


def test_gan_style_add_image_from_a_module_hook(tmp_path):
    pytest.importorskip("tensorboard")
    from dutycycle.loggers import TensorBoardLogger

    class M(Reg):
        def on_validation_epoch_end(self):
            grid = dc.rand(1, 6, 12)
            for logger in self.loggers:
                logger.experiment.add_image("generated_images", grid, self.current_epoch)

    x, y = _data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    t = dc.Trainer(default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path), max_epochs=2,
                   enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    t.fit(M(), dl, dl)
    evs = _accumulate(t.logger.log_dir).Images("generated_images")
    assert [e.step for e in evs] == [0, 1] and (evs[0].width, evs[0].height) == (12, 6)


def test_utils_tensorboard_summary_writer(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import socket

    from dutycycle.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "run") as w:
        w.add_scalar("loss", dc.tensor(0.5), 1)
        w.add_scalar("loss", 0.25, 2)
        w.add_scalars("multi", {"a": 1.0, "b": 2.0}, 3)
        w.add_image("img", dc.rand(3, 4, 4), 1)
        w.add_text("note", "hello **world**", 2)
        w.add_histogram("weights", dc.randn(1000), 4)
        w.flush()
    assert w.get_logdir() == str(tmp_path / "run")
    ea = _accumulate(tmp_path / "run")
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert ea.Images("img")[0].width == 4
    assert ea.Tensors("note/text_summary")[0].tensor_proto.string_val == [b"hello **world**"]
    (h,) = ea.Histograms("weights")
    hv = h.histogram_value
    assert h.step == 4 and hv.num == 1000 and sum(hv.bucket) == 1000 and len(hv.bucket) == len(hv.bucket_limit)
    assert hv.min < 0 < hv.max
    assert [e.value for e in _accumulate(tmp_path / "run" / "multi_a").Scalars("multi")] == [1.0]
    monkeypatch.chdir(tmp_path)
    w = SummaryWriter(comment="_exp")
    assert w.log_dir.startswith("runs" + os.sep) and w.log_dir.endswith(socket.gethostname() + "_exp")
    w.add_scalar("x", 1.0)
    w.close()
    assert os.listdir(w.log_dir)[0].startswith("events.out.tfevents.")
