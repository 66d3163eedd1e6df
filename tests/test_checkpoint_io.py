"""Checkpoint files: one safetensors file (tensors + a JSON metadata document), durable writes,
clear errors, no pickle."""

import json
import math
import os
import struct

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.trainer import checkpoint_io
from dutycycle.trainer.checkpoint_io import load_checkpoint, save_checkpoint


def _sample():
    return {
        "f32": dc.randn(3, 4),
        "f64": dc.randn(2, dtype=dc.float64),
        "f16": dc.randn(5).half(),
        "bf16": dc.randn(7).bfloat16(),
        "i64": dc.arange(6).reshape(2, 3),
        "i32": dc.arange(4, dtype=dc.int32),
        "bool": dc.tensor([True, False, True]),
        "scalar": dc.tensor(3.5),
        "np_u32": np.arange(5, dtype=np.uint32),
        "nested": {
            "list": [1, 2.5, "s", None, True],
            "tuple": (1, (2, 3)),
            0: "int key",
            (1, 2): "tuple key",
            "__tensor__": "a key that looks like a tag",
        },
        "floats": [float("inf"), float("-inf"), float("nan"), 1e-300],
        "opt": {"state": {0: {"step": 3, "exp_avg": dc.zeros(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "big_int": 2**70,
        "dtype": dc.float32,
    }


def test_round_trip_is_exact(tmp_path):
    src = _sample()
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, src)
    out = load_checkpoint(path)
    for k in ("f32", "f64", "f16", "i64", "i32", "bool", "scalar"):
        assert out[k].dtype == src[k].dtype and out[k].shape == src[k].shape
        np.testing.assert_array_equal(out[k].numpy(), src[k].numpy())
    assert out["bf16"].dtype == dc.bfloat16
    np.testing.assert_array_equal(out["bf16"].float().numpy(), src["bf16"].float().numpy())
    assert isinstance(out["np_u32"], np.ndarray) and out["np_u32"].dtype == np.uint32
    assert out["nested"] == {
        "list": [1, 2.5, "s", None, True],
        "tuple": (1, (2, 3)),
        0: "int key",
        (1, 2): "tuple key",
        "__tensor__": "a key that looks like a tag",
    }
    assert out["floats"][:2] == [math.inf, -math.inf] and math.isnan(out["floats"][2])
    assert out["opt"]["state"][0]["step"] == 3 and out["big_int"] == 2**70
    assert out["dtype"] == "dutycycle.float32"
    assert not os.path.exists(str(path) + ".tmp")


def test_file_is_plain_safetensors(tmp_path):
    path = tmp_path / "b.safetensors"
    save_checkpoint(path, {"state_dict": {"w": dc.ones(2, 3), "b": dc.zeros(3, dtype=dc.float64)}, "step": 7})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["state_dict.w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 48]}
    assert header["state_dict.b"]["dtype"] == "F64" and header["state_dict.b"]["data_offsets"] == [0, 24]
    doc = json.loads(header["__metadata__"]["dutycycle"])
    assert doc["step"] == 7 and doc["state_dict"]["w"] == {"__tensor__": "state_dict.w"}
    w = np.frombuffer(raw[8 + n + 24 : 8 + n + 48], dtype="<f4")
    np.testing.assert_array_equal(w, np.ones(6, np.float32))
    assert len(raw) == 8 + n + 48
    # a plain safetensors file without our metadata loads as a flat dict of tensors
    hdr = json.dumps({"x": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(struct.pack("<Q", len(hdr)) + hdr + np.array([4, 5], "<i4").tobytes())
    assert load_checkpoint(plain)["x"].tolist() == [4, 5]


def test_overwrite_and_colliding_keys(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"a": dc.ones(1)})
    save_checkpoint(path, {"a.b": dc.ones(1), "a": {"b": dc.zeros(1)}})  # both flatten to "a.b"
    out = load_checkpoint(path)
    assert out["a.b"].tolist() == [1.0] and out["a"]["b"].tolist() == [0.0]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        load_checkpoint(tmp_path / "nothere.ckpt")
    path = tmp_path / "d.ckpt"
    save_checkpoint(path, {"w": dc.ones(100), "meta": {"x": 1}})
    good = path.read_bytes()
    cases = {
        "short": good[:5],
        "truncated": good[:-7],
        "huge_header": struct.pack("<Q", 10**12) + good[8:],
        "bad_json": good[:8] + b"[" + good[9:],
        "trailing": good + b"xx",
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.ckpt"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=f"{name}.ckpt"):
            load_checkpoint(p)


def test_unsupported_values_name_their_path(tmp_path):
    with pytest.raises(TypeError, match="'model.fn'.*never pickles"):
        save_checkpoint(tmp_path / "e.ckpt", {"model": {"fn": lambda: 1}})
    assert not list(tmp_path.iterdir())


def test_no_pickle_anywhere():
    with open(checkpoint_io.__file__) as f:
        src = f.read()
    assert "import pickle" not in src and "torch.save" not in src
