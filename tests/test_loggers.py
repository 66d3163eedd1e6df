"""Loggers: CSVLogger (Lightning's metrics.csv/hparams.yaml layout), TensorBoardLogger (real event
files, read back with TensorBoard's own reader when it is installed), the YAML emitter, crc32c and
the TFRecord framing."""

import csv
import math
import os
import re
import struct
import warnings
from argparse import Namespace

import pytest

import dutycycle as dc
from dutycycle.loggers import CSVLogger, DummyLogger, Logger, TensorBoardLogger, _yaml, save_hparams_to_yaml
from dutycycle.loggers.tensorboard import crc32c, masked_crc32c, tfrecord

try:
    import yaml
except ImportError:  # the emitter is still checked against hand-written expectations
    yaml = None

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    EventAccumulator = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML not installed (pip install pyyaml) to read YAML back")
needs_tensorboard = pytest.mark.skipif(
    EventAccumulator is None, reason="tensorboard not installed (pip install tensorboard): cannot use its reader"
)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# ---------------------------------------------------------------------------------------------
# Logger base


def test_logger_base_defaults():
    class L(Logger):
        name = "n"
        version = 0

        def log_metrics(self, metrics, step=None):
            self.m = (metrics, step)

        def log_hyperparams(self, params, *a, **k):
            pass

    lg = L()
    assert lg.root_dir is None and lg.log_dir is None and lg.save_dir is None
    assert lg.group_separator == "/"
    lg.after_save_checkpoint(None)
    lg.finalize("success")
    d = DummyLogger()
    d.log_metrics({"a": 1}, 0)
    d.log_hyperparams({})
    with pytest.raises(NotImplementedError):
        Logger().log_metrics({}, 0)


# ---------------------------------------------------------------------------------------------
# CSVLogger


def test_csv_layout_and_version_increment(tmp_path):
    lg = CSVLogger(tmp_path)
    assert lg.name == "lightning_logs" and lg.version == 0
    assert lg.root_dir == os.path.join(str(tmp_path), "lightning_logs")
    assert lg.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    lg.log_metrics({"loss": 1.0}, step=0)
    lg.save()
    assert os.path.isfile(os.path.join(lg.log_dir, "metrics.csv"))
    assert os.path.isfile(os.path.join(lg.log_dir, "hparams.yaml"))
    # next free version after the largest version_<n> folder; other folders ignored
    os.makedirs(tmp_path / "lightning_logs" / "version_3")
    os.makedirs(tmp_path / "lightning_logs" / "version_x")
    os.makedirs(tmp_path / "lightning_logs" / "other")
    assert CSVLogger(tmp_path).version == 4
    assert CSVLogger(tmp_path, name="exp").version == 0
    # explicit int / string versions
    assert CSVLogger(tmp_path, version=7).log_dir.endswith(os.path.join("lightning_logs", "version_7"))
    assert CSVLogger(tmp_path, version="run_a").log_dir.endswith(os.path.join("lightning_logs", "run_a"))
    # empty name: versions directly under save_dir
    assert CSVLogger(tmp_path, name="").log_dir == os.path.join(str(tmp_path), "version_0")


def test_csv_rows_and_growing_header(tmp_path):
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=1000)
    lg.log_metrics({"train_loss": 0.5, "epoch": 0}, step=0)
    lg.save()
    header, rows = read_csv(os.path.join(lg.log_dir, "metrics.csv"))
    assert header == ["epoch", "step", "train_loss"]
    assert rows == [{"epoch": "0", "step": "0", "train_loss": "0.5"}]
    # a new key rewrites the file with the grown (sorted) header; old rows get empty cells
    lg.log_metrics({"train_loss": 0.25, "epoch": 0}, step=1)
    lg.log_metrics({"val_loss": 0.75, "epoch": 0}, step=1)
    lg.save()
    header, rows = read_csv(os.path.join(lg.log_dir, "metrics.csv"))
    assert header == ["epoch", "step", "train_loss", "val_loss"]
    assert rows == [
        {"epoch": "0", "step": "0", "train_loss": "0.5", "val_loss": ""},
        {"epoch": "0", "step": "1", "train_loss": "0.25", "val_loss": ""},
        {"epoch": "0", "step": "1", "train_loss": "", "val_loss": "0.75"},
    ]
    # appending without new keys keeps the header
    lg.log_metrics({"val_loss": 0.5}, step=2)
    lg.finalize("success")
    header, rows = read_csv(os.path.join(lg.log_dir, "metrics.csv"))
    assert header == ["epoch", "step", "train_loss", "val_loss"] and len(rows) == 4
    assert rows[-1]["val_loss"] == "0.5" and rows[-1]["step"] == "2"


def test_csv_flush_every_n_steps_prefix_and_tensor_values(tmp_path):
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=3, prefix="fit")
    path = os.path.join(lg.log_dir, "metrics.csv")
    lg.log_metrics({"loss": dc.tensor(2.0)}, step=0)
    lg.log_metrics({"loss": dc.tensor([1.5])}, step=1)
    assert not os.path.exists(path)
    lg.log_metrics({"loss": 1}, step=2)  # (2 + 1) % 3 == 0: written
    header, rows = read_csv(path)
    assert header == ["fit-loss", "step"]
    assert [r["fit-loss"] for r in rows] == ["2.0", "1.5", "1"]
    # step=None numbers rows by the buffer length, as Lightning
    lg.log_metrics({"loss": 3.0})
    assert lg.experiment.metrics[-1]["step"] == 0


def test_csv_finalize_without_logging_creates_nothing(tmp_path):
    lg = CSVLogger(tmp_path)
    lg.finalize("success")
    assert not os.path.exists(tmp_path / "lightning_logs")


def test_csv_existing_dir_warns_and_replaces_metrics(tmp_path):
    d = tmp_path / "lightning_logs" / "version_0"
    os.makedirs(d)
    (d / "metrics.csv").write_text("old\n")
    lg = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        assert lg.experiment is not None
    assert not (d / "metrics.csv").exists()


@needs_yaml
def test_csv_hparams_yaml(tmp_path):
    lg = CSVLogger(tmp_path)
    lg.log_hyperparams({"lr": 1e-3, "model": {"layers": 2, "act": "gelu", "dims": (64, 128)}, "flag": True})
    lg.log_hyperparams(Namespace(seed=7, note=None))
    lg.save()
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as f:
        back = yaml.safe_load(f)
    assert back == {
        "lr": 1e-3,
        "model": {"layers": 2, "act": "gelu", "dims": [64, 128]},
        "flag": True,
        "seed": 7,
        "note": None,
    }


# ---------------------------------------------------------------------------------------------
# The YAML emitter

TRICKY = {
    "lr": 1e-05,
    "big": 1e20,
    "neg": -2.5,
    "zero": 0.0,
    "n": 3,
    "yes": "yes",
    "no": False,
    "on": "on",
    "null_str": "null",
    "tilde": "~",
    "none": None,
    "num_str": "123",
    "float_str": "1.5",
    "colon": "a: b # c",
    "dash": "- x",
    "empty": "",
    "quote": 'say "hi" \\ back',
    "multi": "line1\nline2\ttab",
    "unicode": "h\u00e9llo \u4e16\u754c \U0001f600",
    "control": "bell\x07del\x7f\x85",
    "inf": math.inf,
    "ninf": -math.inf,
    "nested": {"a": [1, 2, {"b": 3, "c": [4, 5]}], "empty_d": {}, "empty_l": [], "lol": [[1, 2], [3]]},
    "list_of_dicts": [{"a": 1}, {"b": [1, {"c": None}]}],
    "tuple": (1, "2"),
    7: "int key",
    "path/like.key": "/tmp/x.ckpt",
}


@needs_yaml
def test_yaml_round_trip_with_pyyaml():
    text = _yaml.dump(TRICKY)
    back = yaml.safe_load(text)
    expected = dict(TRICKY, tuple=[1, "2"])
    assert back == expected
    nan_back = yaml.safe_load(_yaml.dump({"x": math.nan}))
    assert math.isnan(nan_back["x"])


def test_yaml_plain_output_shapes():
    assert _yaml.dump({"a": 1, "b": "text", "c": [1, 2]}) == "a: 1\nb: text\nc:\n- 1\n- 2\n"
    assert _yaml.dump({"lr": 1e-05}) == "lr: 1.0e-05\n"
    assert _yaml.dump({"s": "yes"}) == 's: "yes"\n'
    assert _yaml.dump({}) == "{}\n"
    with pytest.raises(TypeError):
        _yaml.dump({"f": object()})


def test_yaml_numpy_and_tensor_values(tmp_path):
    import numpy as np

    text = _yaml.dump({"a": np.float64(0.5), "b": np.int64(3), "c": np.arange(3), "t": dc.tensor(2.5)})
    assert text == "a: 0.5\nb: 3\nc:\n- 0\n- 1\n- 2\nt: 2.5\n"


def test_save_hparams_skips_unsupported_values(tmp_path):
    path = tmp_path / "sub" / "hparams.yaml"
    with pytest.warns(UserWarning, match="Skipping 'obj'"):
        save_hparams_to_yaml(str(path), {"obj": object(), "ok": 1})
    assert path.read_text() == "ok: 1\n"
    save_hparams_to_yaml(str(path), {})
    assert path.read_text() == "{}\n"


# ---------------------------------------------------------------------------------------------
# crc32c, masking, TFRecord framing


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"a") == 0xC1D04330
    # RFC 3720 (iSCSI) B.4 test vectors
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    # incremental == one shot
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


def test_masked_crc_and_record_framing():
    crc = crc32c(b"123456789")
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    rec = tfrecord(b"hello")
    (n,) = struct.unpack("<Q", rec[:8])
    assert n == 5
    assert struct.unpack("<I", rec[8:12])[0] == masked_crc32c(rec[:8])
    assert rec[12:17] == b"hello"
    assert struct.unpack("<I", rec[17:21])[0] == masked_crc32c(b"hello")
    assert len(rec) == 21


def _read_records(path):
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
        body = data[i + 12 : i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] == masked_crc32c(body)
        out.append(body)
        i += 16 + n
    return out


def _event_files(d):
    return sorted(f for f in os.listdir(d) if f.startswith("events.out.tfevents."))


# ---------------------------------------------------------------------------------------------
# TensorBoardLogger


def test_tensorboard_layout_and_framing(tmp_path):
    lg = TensorBoardLogger(tmp_path, name="exp")
    assert lg.version == 0 and lg.log_dir == os.path.join(str(tmp_path), "exp", "version_0")
    lg.log_metrics({"loss": 0.5}, step=3)
    lg.finalize("success")
    files = _event_files(lg.log_dir)
    assert len(files) == 1
    assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\.[^.]+(\..+)*\.\d+\.\d+", files[0]), files[0]
    recs = _read_records(os.path.join(lg.log_dir, files[0]))
    assert len(recs) == 2
    assert b"brain.Event:2" in recs[0]
    assert b"loss" in recs[1]
    assert os.path.isfile(os.path.join(lg.log_dir, "hparams.yaml"))
    assert TensorBoardLogger(tmp_path, name="exp").version == 1
    sub = TensorBoardLogger(tmp_path, name="exp", version="v", sub_dir="train")
    assert sub.log_dir == os.path.join(str(tmp_path), "exp", "v", "train")


def test_tensorboard_rejects_unloggable_values(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="not supported"):
        lg.log_metrics({"bad": "text"}, step=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        TensorBoardLogger(tmp_path, nonsense=1)


@needs_tensorboard
def test_tensorboard_reader_reads_scalars(tmp_path):
    lg = TensorBoardLogger(tmp_path, name="exp", default_hp_metric=False)
    for i in range(5):
        lg.log_metrics({"train/loss": 1.0 / (i + 1), "epoch": i // 2}, step=i)
    lg.log_metrics({"lr": dc.tensor(0.125)}, step=4)
    lg.finalize("success")
    ea = EventAccumulator(lg.log_dir)
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == ["epoch", "lr", "train/loss"]
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2], rel=1e-6)
    assert [e.value for e in ea.Scalars("epoch")] == [0, 0, 1, 1, 2]
    assert ea.Scalars("lr")[0].value == 0.125
    assert ea.file_version == 2.0  # parsed from "brain.Event:2"


@needs_tensorboard
def test_tensorboard_reader_reads_hparams_and_scalar_groups(tmp_path):
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    lg = TensorBoardLogger(tmp_path)
    lg.log_hyperparams({"lr": 0.1, "opt": {"name": "sgd", "momentum": 0.9}, "flag": True, "layers": 2})
    lg.log_metrics({"group": {"a": 1.0, "b": 2.0}}, step=7)
    lg.finalize("success")
    acc = plugin_event_accumulator.EventAccumulator(lg.log_dir)
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [h.name for h in exp.hparam_infos] == ["lr", "opt/name", "opt/momentum", "flag", "layers"]
    assert [m.name.tag for m in exp.metric_infos] == ["hp_metric"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == 0.1 and hp["opt/name"].string_value == "sgd"
    assert hp["flag"].bool_value is True and hp["layers"].number_value == 2
    # default hp_metric = -1 at step 0, as Lightning
    ea = EventAccumulator(lg.log_dir)
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("hp_metric")] == [(0, -1.0)]
    # add_scalars: one sub-folder per key, scalar tag = the main tag (torch's layout)
    for key, value in (("a", 1.0), ("b", 2.0)):
        sub = EventAccumulator(os.path.join(lg.log_dir, f"group_{key}"))
        sub.Reload()
        assert [(e.step, e.value) for e in sub.Scalars("group")] == [(7, value)]


@needs_yaml
def test_tensorboard_hparams_yaml(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.log_hyperparams(Namespace(lr=0.01, sizes=[1, 2]))
    lg.finalize("success")
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f) == {"lr": 0.01, "sizes": [1, 2]}


def test_tensorboard_negative_step_and_large_values(tmp_path):
    # int64 negatives take the 10-byte varint; the file must still frame correctly
    lg = TensorBoardLogger(tmp_path, default_hp_metric=False)
    lg.log_metrics({"x": 1e30}, step=-1)
    lg.log_metrics({"x": -math.inf}, step=2**40)
    lg.finalize("success")
    (f,) = _event_files(lg.log_dir)
    assert len(_read_records(os.path.join(lg.log_dir, f))) == 3
    if EventAccumulator is not None:
        ea = EventAccumulator(lg.log_dir)
        ea.Reload()
        assert [e.step for e in ea.Scalars("x")] == [-1, 2**40]
        assert ea.Scalars("x")[1].value == -math.inf


def test_no_warnings_on_normal_use(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lg = CSVLogger(tmp_path)
        lg.log_hyperparams({"a": 1})
        lg.log_metrics({"m": 1.0}, 0)
        lg.finalize("success")
        tb = TensorBoardLogger(tmp_path)
        tb.log_metrics({"m": 1.0}, 0)
        tb.finalize("success")


# ---------------------------------------------------------------------------------------------
# Integration: the real Trainer writes through the loggers

try:
    from dutycycle.trainer import LightningModule, Trainer
except ImportError:  # the trainer package is built in parallel; these tests wait for it
    Trainer = None
    LightningModule = object

needs_trainer = pytest.mark.skipif(Trainer is None, reason="dutycycle.trainer is not importable yet")


class Regression(LightningModule):
    def __init__(self, lr=0.05, layers=(2, 1), name="reg"):
        super().__init__()
        self.save_hyperparameters()
        self.lin = dc.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.lin(x) - y) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", ((self.lin(x) - y) ** 2).mean())

    def configure_optimizers(self):
        return dc.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _fit(tmp_path, logger, epochs=2):
    dc.manual_seed(0)
    x = dc.randn(32, 2)
    y = x @ dc.tensor([[1.0], [-2.0]])
    try:
        from dutycycle.data import DataLoader, TensorDataset

        train = DataLoader(TensorDataset(x, y), batch_size=8)
        val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
    except ImportError:

        class _L:
            def __init__(self, batches):
                self.batches = batches

            def __iter__(self):
                return iter(self.batches)

            def __len__(self):
                return len(self.batches)

        train = _L([(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)])
        val = _L([(x[:16], y[:16])])
    trainer = Trainer(
        max_epochs=epochs, logger=logger, default_root_dir=str(tmp_path), log_every_n_steps=1,
        enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Regression(), train, val)
    return trainer


@needs_trainer
def test_trainer_csv_logger(tmp_path):
    lg = CSVLogger(tmp_path)
    trainer = _fit(tmp_path, lg)
    assert trainer.log_dir == lg.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    header, rows = read_csv(os.path.join(lg.log_dir, "metrics.csv"))
    assert {"epoch", "step", "train_loss", "val_loss"} <= set(header)
    assert header == sorted(header)
    train = [r for r in rows if r["train_loss"]]
    assert [int(r["step"]) for r in train] == list(range(8))  # log_every_n_steps=1, 2 epochs of 4
    assert [int(float(r["epoch"])) for r in train] == [0] * 4 + [1] * 4
    val = [r for r in rows if r["val_loss"]]
    assert [int(float(r["epoch"])) for r in val] == [0, 1]
    assert all(float(r["train_loss"]) >= 0 for r in train)
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as f:
        text = f.read()
    assert "lr: 0.05" in text and "name: reg" in text
    if yaml is not None:
        assert yaml.safe_load(text) == {"lr": 0.05, "layers": [2, 1], "name": "reg"}
    # the next run takes the next version
    assert CSVLogger(tmp_path).version == 1


@needs_trainer
@needs_tensorboard
def test_trainer_tensorboard_logger(tmp_path):
    lg = TensorBoardLogger(tmp_path, name="tb")
    _fit(tmp_path, lg)
    ea = EventAccumulator(lg.log_dir)
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train_loss", "val_loss", "epoch", "hp_metric"} <= scalars
    assert [e.step for e in ea.Scalars("train_loss")] == list(range(8))
    assert len(ea.Scalars("val_loss")) == 2
    assert os.path.isfile(os.path.join(lg.log_dir, "hparams.yaml"))
