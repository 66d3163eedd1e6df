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


# ---- crafted headers: every failure is a ValueError that names the file -----------------------------
def _file(header, data=b"", raw_header=None):
    """The bytes of a safetensors file with this header (a dict, or raw JSON text) and tensor data."""
    hdr = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(hdr)) + hdr + data


def _meta(doc):
    return {"__metadata__": {"dutycycle": doc if isinstance(doc, str) else json.dumps(doc)}}


_T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
_CRAFTED = {
    "nested_header": (None, b"[" * 100_000 + b"]" * 100_000),
    "nested_header_obj": (None, b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    "nested_metadata": (_meta("[" * 100_000 + "]" * 100_000), None),
    "nested_doc_decodes_deep": (_meta(json.loads("[" * 900 + "]" * 900)), None),
    "header_list": ([1, 2, 3], None),
    "header_string": ("x", None),
    "header_number": (7, None),
    "entry_list": ({"t": [1, 2]}, None),
    "entry_string": ({"t": "F32"}, None),
    "entry_null": ({"t": None}, None),
    "entry_empty": ({"t": {}}, None),
    "dtype_unknown": ({"t": {**_T, "dtype": "F8"}}, None),
    "dtype_list": ({"t": {**_T, "dtype": ["F32"]}}, None),
    "dtype_null": ({"t": {**_T, "dtype": None}}, None),
    "shape_dict": ({"t": {**_T, "shape": {"a": 1}}}, None),
    "shape_str": ({"t": {**_T, "shape": "2"}}, None),
    "shape_float": ({"t": {**_T, "shape": [2.0]}}, None),
    "shape_bool": ({"t": {**_T, "shape": [True, True]}}, None),
    "shape_negative": ({"t": {**_T, "shape": [-2, -1], "data_offsets": [0, 8]}}, None),
    "shape_huge": ({"t": {**_T, "shape": [2**40, 2**40, 2**40]}}, None),
    "offsets_str": ({"t": {**_T, "data_offsets": "ab"}}, None),
    "offsets_floats": ({"t": {**_T, "data_offsets": [0.0, 8.0]}}, None),
    "offsets_null": ({"t": {**_T, "data_offsets": None}}, None),
    "offsets_three": ({"t": {**_T, "data_offsets": [0, 4, 8]}}, None),
    "offsets_one": ({"t": {**_T, "data_offsets": [8]}}, None),
    "offsets_nested": ({"t": {**_T, "data_offsets": [[0], [8]]}}, None),
    "offsets_negative": ({"t": {**_T, "data_offsets": [-8, 0]}}, None),
    "offsets_reversed": ({"t": {**_T, "data_offsets": [8, 0]}}, None),
    "offsets_out_of_range": ({"t": {**_T, "data_offsets": [8, 16]}}, None),
    "offsets_huge": ({"t": {**_T, "data_offsets": [0, 2**70]}}, None),
    "offsets_overlap": ({"a": _T, "b": {**_T, "data_offsets": [4, 12]}}, None),
    "offsets_same": ({"a": _T, "b": _T}, None),
    "offsets_bigint_digits": (None, b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, ' + b"9" * 5000 + b"]}}"),  # noqa: E501
    "metadata_list": ({"__metadata__": [1]}, None),
    "metadata_doc_number": ({"__metadata__": {"dutycycle": 5}}, None),
    "metadata_doc_bad_json": (_meta("{nope"), None),
    "metadata_doc_points_nowhere": (_meta({"w": {"__tensor__": "missing"}}), None),
    "metadata_doc_tensor_list": (_meta({"w": {"__tensor__": ["x"]}}), None),
    "metadata_doc_bad_dict": (_meta({"d": {"__dict__": [[1]]}}), None),
    "metadata_doc_bad_dict_key": (_meta({"d": {"__dict__": [[{"a": 1}, 2]]}}), None),
    "metadata_doc_bad_float": (_meta({"f": {"__float__": "notafloat"}}), None),
    "metadata_doc_tuple_of_int": (_meta({"t": {"__tuple__": 5}}), None),
    "not_utf8": (None, b'{"\xff\xfe": 1}'),
}


def _crafted_files(tmp_path):
    data = np.array([1.0, 2.0], "<f4").tobytes()
    for name, (header, raw) in _CRAFTED.items():
        hdr = json.dumps(header).encode() if raw is None else raw
        if name.startswith("metadata") or name.startswith("nested_meta") or name.startswith("nested_doc"):
            header = {**header, "w": _T}
            hdr = json.dumps(header).encode()
        p = tmp_path / f"{name}.ckpt"
        p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + data)
        yield name, p
    p = tmp_path / "header_longer_than_file.ckpt"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    yield "header_longer_than_file", p


@pytest.mark.parametrize("reader", ["load_checkpoint", "dc.load", "read_safetensors"])
def test_crafted_headers_raise_value_error_naming_the_file(tmp_path, reader):
    fn = {"load_checkpoint": load_checkpoint, "dc.load": dc.load, "read_safetensors": checkpoint_io.read_safetensors}
    for name, p in _crafted_files(tmp_path):
        if reader == "read_safetensors" and name.startswith(("metadata", "nested_metadata", "nested_doc")):
            continue  # the metadata document is load_checkpoint's to read
        try:
            fn[reader](p)
        except ValueError as e:
            assert str(p) in str(e), (name, str(e)[:200])
        except BaseException as e:  # noqa: BLE001  any other type is the bug this test guards against
            raise AssertionError(f"{name}: {type(e).__name__} instead of ValueError: {str(e)[:200]}") from e
        else:
            raise AssertionError(f"{name}: loaded without an error")


def test_fuzzed_files_load_or_raise_value_error_naming_the_file(tmp_path):
    """Every truncation and thousands of random byte edits of a real checkpoint: each either loads
    or raises a ValueError naming the file — never another exception type."""
    good_path = tmp_path / "good.ckpt"
    save_checkpoint(
        good_path,
        {"w": dc.randn(3, 2), "b": dc.zeros(2, dtype=dc.float64), "n": np.arange(3, dtype=np.int32), "k": (1, 2.5)},
    )
    good = good_path.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    rng = np.random.default_rng(0)
    blobs = [good[:i] for i in range(0, len(good), 7)]
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, 8 + n))  # the length field and the header: where parsing happens
            json_byte = int(rng.choice([ord(c) for c in '{}[]",:-0123456789.eE aZ\\']))
            b[pos] = json_byte if rng.random() < 0.8 else int(rng.integers(0, 256))
        blobs.append(bytes(b))
    # structured edits: a field of a header entry (or the entry, or the metadata) becomes another JSON value
    header = json.loads(good[8 : 8 + n])
    data = good[8 + n :]
    pool = [None, True, -1, 0, 3, 2**64, 1.5, "F32", "x", [], [0], [-1, 4], [0, 2**63], [1.5, 2], ["a", "b"],
            {}, {"a": 1}, [[0, 1]], [0, 1, 2]]  # fmt: skip
    keys = [k for k in header if k != "__metadata__"]
    for _ in range(1500):
        h = json.loads(json.dumps(header))
        k = keys[int(rng.integers(len(keys)))]
        where = rng.random()
        if where < 0.7:
            h[k][["dtype", "shape", "data_offsets"][int(rng.integers(3))]] = pool[int(rng.integers(len(pool)))]
        elif where < 0.85:
            h[k] = pool[int(rng.integers(len(pool)))]
        else:
            h["__metadata__"]["dutycycle"] = json.dumps(pool[int(rng.integers(len(pool)))])
        hdr = json.dumps(h).encode()
        blobs.append(struct.pack("<Q", len(hdr)) + hdr + data)
    p = tmp_path / "fuzz.ckpt"
    for i, blob in enumerate(blobs):
        p.write_bytes(blob)
        try:
            load_checkpoint(p)
        except ValueError as e:
            assert str(p) in str(e), (i, str(e)[:200])
        except BaseException as e:  # noqa: BLE001
            raise AssertionError(f"blob {i}: {type(e).__name__}: {str(e)[:200]}") from e


def test_load_rejects_file_objects_like_save(tmp_path):
    p = tmp_path / "f.ckpt"
    dc.save({"a": dc.ones(2)}, p)
    with open(p, "rb") as f, pytest.raises(TypeError, match="f must be a file path, got BufferedReader"):
        dc.load(f)
    assert dc.load(str(p))["a"].tolist() == [1.0, 1.0]
