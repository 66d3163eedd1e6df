"""dutycycle.load of PyTorch torch.save files (python/dutycycle/_torch_load.py).

Without torch: the files are built here, byte by byte. _Pickle writes a protocol-2 pickle stream
with the same opcodes torch's files hold (GLOBAL torch._utils _rebuild_tensor_v2, BINPERSID
storage ids, ...), write_zip lays it out as torch's zip archive and write_legacy as the
pre-1.6 format, so CI checks the loader, the allowlist and the malicious files (os.system,
eval, ... whose command would create a marker file that must not exist afterwards) on every run.
With DUTYCYCLE_TORCH_PYTHON=/path/to/python (a Python with torch), the torch tests have torch
itself write the files (state dicts of Linear/Conv/BatchNorm models, checkpoint dicts, tied
weights, strided views, half types, the legacy format) and compare with the values torch saved
as .npy next to them.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import nn
from dutycycle._torch_load import MAGIC_NUMBER, TorchLoadError, UnsafePickleError

TORCH_PYTHON = os.environ.get("DUTYCYCLE_TORCH_PYTHON")


# ---- a hand-written pickle stream ----------------------------------------------------------------

class G:
    """A global (GLOBAL module name)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class R:
    """callable(*args) (REDUCE); callable is a G or another R."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, tuple(args)


class PID:
    """A persistent id (BINPERSID) of the given tuple."""

    def __init__(self, value):
        self.value = value


class Raw:
    """Opcodes spliced in as they are."""

    def __init__(self, data):
        self.data = data


class _Pickle:
    def __init__(self):
        self.b = bytearray(b"\x80\x02")

    def emit(self, o):
        b = self.b
        if isinstance(o, Raw):
            b += o.data
        elif isinstance(o, G):
            b += f"c{o.module}\n{o.name}\n".encode()
        elif isinstance(o, R):
            self.emit(o.fn)
            self.emit(o.args)
            b += b"R"
        elif isinstance(o, PID):
            self.emit(o.value)
            b += b"Q"
        elif o is None:
            b += b"N"
        elif o is True or o is False:
            b += b"\x88" if o else b"\x89"
        elif isinstance(o, int):
            b += b"J" + struct.pack("<i", o) if -2**31 <= o < 2**31 else pickle.dumps(o, 2)[2:-1]
        elif isinstance(o, float):
            b += b"G" + struct.pack(">d", o)
        elif isinstance(o, str):
            s = o.encode()
            b += b"X" + struct.pack("<I", len(s)) + s
        elif isinstance(o, tuple):
            b += b"("
            for v in o:
                self.emit(v)
            b += b"t"
        elif isinstance(o, list):
            b += b"]("
            for v in o:
                self.emit(v)
            b += b"e"
        elif isinstance(o, dict):
            b += b"}("
            for k, v in o.items():
                self.emit(k)
                self.emit(v)
            b += b"u"
        else:
            raise TypeError(type(o))

    def dumps(self, o):
        self.emit(o)
        return bytes(self.b + b".")


def dumps(o):
    return _Pickle().dumps(o)


STORAGE = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
           "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
           "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}


def to_bf16_bits(a):
    return (np.asarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact for test values


class Store:
    """The storages of one file: key -> (torch dtype name, bytes)."""

    def __init__(self, byteorder="little"):
        self.data, self.byteorder = {}, byteorder

    def add(self, key, dtype, values):
        a = to_bf16_bits(values) if dtype == "bfloat16" else np.ascontiguousarray(values, np.dtype(
            "u1" if dtype == "bool" else dtype))
        if self.byteorder == "big":
            a = a.astype(a.dtype.newbyteorder(">"))
        self.data[key] = (dtype, a.reshape(-1).tobytes(), a.size)
        return key

    def tensor(self, key, size, stride=None, offset=0, legacy=False, requires_grad=False):
        dtype, _, numel = self.data[key]
        if stride is None:
            stride, acc = [], 1
            for s in reversed(size):
                stride.insert(0, acc)
                acc *= s
        pid = ("storage", G("torch", STORAGE[dtype]), key, "cpu", numel) + ((None,) if legacy else ())
        return R(G("torch._utils", "_rebuild_tensor_v2"),
                 (PID(pid), offset, tuple(size), tuple(stride), requires_grad, R(G("collections", "OrderedDict"), ())))


def write_zip(path, pkl, store=None, prefix="archive", extra=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", store.byteorder if store else "little")
        for key, (_, data, _) in (store.data.items() if store else ()):
            z.writestr(f"{prefix}/data/{key}", data)
        for name, data in (extra or {}).items():
            z.writestr(f"{prefix}/{name}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return str(path)


def write_legacy(path, pkl, store):
    with open(path, "wb") as f:
        f.write(pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(1001, 2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2))
        f.write(pkl)
        f.write(pickle.dumps(list(store.data), 2))
        for _, data, numel in store.data.values():
            f.write(struct.pack("<q", numel) + data)
    return str(path)


def state_dict_file(tmp_path, sd, legacy=False, name="weights.pt"):
    """A torch-format file holding {key: numpy array} as an OrderedDict of tensors."""
    st = Store()
    items = []
    for i, (k, a) in enumerate(sd.items()):
        st.add(str(i), str(a.dtype), a)
        items.append((k, st.tensor(str(i), a.shape, legacy=legacy)))
    od = R(G("collections", "OrderedDict"), ([tuple(kv) for kv in items],))
    pkl = dumps(od)
    return write_legacy(tmp_path / name, pkl, st) if legacy else write_zip(tmp_path / name, pkl, st)


# ---- torch-free: the format ----------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_loads_into_a_dutycycle_model(tmp_path, rng, legacy):
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    sd = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in src.state_dict().items()}
    path = state_dict_file(tmp_path, sd, legacy=legacy)
    loaded = dc.load(path)
    assert list(loaded) == list(sd)
    for k, a in sd.items():
        assert isinstance(loaded[k], dc.Tensor) and loaded[k].dtype == dc.float32
        np.testing.assert_array_equal(np.asarray(loaded[k]), a)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(dc.load(path))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    want = np.maximum(x @ sd["0.weight"].T + sd["0.bias"], 0) @ sd["2.weight"].T + sd["2.bias"]
    np.testing.assert_allclose(np.asarray(model(dc.tensor(x)).detach()), want, rtol=1e-5, atol=1e-6)


def test_conv_batchnorm_state_dict_with_int64_counter(tmp_path, rng):
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sd = {k: (np.array(7, np.int64) if k.endswith("num_batches_tracked") else
              rng.standard_normal(v.shape).astype(np.float32) + (2 if k.endswith("running_var") else 0))
          for k, v in ref.state_dict().items()}
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.load_state_dict(dc.load(state_dict_file(tmp_path, sd)))
    got = model.state_dict()
    assert got["1.num_batches_tracked"].dtype == dc.int64 and got["1.num_batches_tracked"].shape == ()
    assert int(got["1.num_batches_tracked"].item()) == 7
    for k, a in sd.items():
        np.testing.assert_array_equal(np.asarray(got[k]), a)


def test_checkpoint_dict_with_plain_values(tmp_path):
    st = Store()
    st.add("0", "float32", np.arange(6, dtype=np.float32))
    obj = {"model": R(G("collections", "OrderedDict"), ([("w", st.tensor("0", (2, 3)))],)),
           "optimizer": {"state": {0: {"step": 3}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999),
                                                                        "params": [0], "fused": None}]},
           "epoch": 3, "big": 2**70, "history": [1.5, -2.0, [True, False]], "name": "run-1",
           "tags": R(G("builtins", "set"), (["a", "b"],)),
           "blob": R(G("_codecs", "encode"), ("\x00\xff", "latin1")),
           "shape": R(G("torch", "Size"), ((2, 3),)), "dtype": G("torch", "float32"),
           "device": R(G("torch", "device"), ("cpu",))}
    ck = dc.load(write_zip(tmp_path / "ck.pth", dumps(obj), st))
    np.testing.assert_array_equal(np.asarray(ck["model"]["w"]), np.arange(6.0).reshape(2, 3))
    assert ck["optimizer"] == {"state": {0: {"step": 3}},
                               "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "fused": None}]}
    assert (ck["epoch"], ck["big"], ck["history"], ck["name"]) == (3, 2**70, [1.5, -2.0, [True, False]], "run-1")
    assert ck["tags"] == {"a", "b"} and ck["blob"] == b"\x00\xff" and ck["shape"] == (2, 3)
    assert ck["dtype"] is dc.float32 and str(ck["device"]) == "cpu"


def test_shared_storage_views_and_strides(tmp_path):
    st = Store()
    st.add("0", "float32", np.arange(12, dtype=np.float32))
    base = np.arange(12, dtype=np.float32)
    obj = {
        "emb": st.tensor("0", (3, 4)),
        "head": st.tensor("0", (3, 4)),  # tied: the same storage
        "t": st.tensor("0", (4, 3), stride=(1, 4)),  # a saved x.t()
        "step": st.tensor("0", (3, 2), stride=(4, 2), offset=1),  # x[:, 1::2]
        "tail": st.tensor("0", (5,), offset=7),
        "scalar": st.tensor("0", (), offset=11),
        "empty": st.tensor("0", (0, 4)),
    }
    sd = dc.load(write_zip(tmp_path / "v.pt", dumps(obj), st))
    x = base.reshape(3, 4)
    for k, want in {"emb": x, "head": x, "t": x.T, "step": x[:, 1::2], "tail": base[7:], "scalar": base[11],
                    "empty": np.zeros((0, 4), np.float32)}.items():
        assert sd[k].shape == want.shape, k
        np.testing.assert_array_equal(np.asarray(sd[k]), want, err_msg=k)
    model = nn.Linear(4, 3, bias=False)
    model.load_state_dict({"weight": sd["head"]})
    np.testing.assert_array_equal(np.asarray(model.weight.detach()), x)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_dtypes(tmp_path, byteorder):
    vals = {"float32": [1.5, -2.25], "float64": [1e-300, 3.0], "float16": [0.5, -65504.0],
            "bfloat16": [1.5, -3.0], "int64": [2**40, -1], "int32": [7, -2**31], "bool": [True, False]}
    st = Store(byteorder)
    obj = {}
    for i, (dt, v) in enumerate(vals.items()):
        st.add(str(i), dt, np.array(v))
        obj[dt] = st.tensor(str(i), (2,))
    sd = dc.load(write_zip(tmp_path / "d.pt", dumps(obj), st))
    for dt, v in vals.items():
        assert sd[dt].dtype == getattr(dc, dt), dt
        got = np.asarray(sd[dt].float() if dt == "bfloat16" else sd[dt])
        np.testing.assert_array_equal(got, np.array(v, dtype=np.float64 if dt == "bfloat16" else None), err_msg=dt)


@pytest.mark.parametrize("dt", ["int8", "int16", "uint8"])
def test_small_int_dtypes_load_or_name_the_tensor(tmp_path, dt):
    st = Store()
    st.add("0", dt, np.array([1, 2, 3]))
    path = write_zip(tmp_path / "i.pt", dumps({"enc": {"codes": st.tensor("0", (3,))}}), st)
    if hasattr(dc, dt):
        got = dc.load(path)["enc"]["codes"]
        assert got.dtype == getattr(dc, dt) and np.asarray(got).tolist() == [1, 2, 3]
    else:  # a dutycycle without the dtype names the tensor and the dtype
        with pytest.raises(TorchLoadError, match=rf"\['enc'\]\['codes'\] \(torch\.{dt}.*no {dt} dtype"):
            dc.load(path)


def test_parameter_and_map_location(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(3, np.float32))
    t = st.tensor("0", (3,))
    obj = {"p": R(G("torch._utils", "_rebuild_parameter"), (t, True, R(G("collections", "OrderedDict"), ()))),
           "q": st.tensor("0", (3,), requires_grad=True)}
    path = write_zip(tmp_path / "p.pt", dumps(obj), st)
    for loc in (None, "cpu", dc.device("cpu")):
        out = dc.load(path, map_location=loc)
        assert isinstance(out["p"], nn.Parameter) and out["p"].requires_grad and out["q"].requires_grad
        assert out["p"].device.type == "cpu"


def test_weights_only_false_warns_and_loads_the_same(tmp_path, rng):
    path = state_dict_file(tmp_path, {"w": rng.standard_normal(3).astype(np.float32)})
    with pytest.warns(UserWarning, match="weights_only=False is treated as weights_only=True"):
        sd = dc.load(path, weights_only=False)
    assert sd["w"].shape == (3,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dc.load(path, weights_only=True)
        dc.load(path)


def test_dutycycle_own_files_still_load(tmp_path):
    dc.save({"w": dc.ones(2)}, tmp_path / "own.pt")
    assert np.asarray(dc.load(tmp_path / "own.pt")["w"]).tolist() == [1.0, 1.0]


def test_record_prefix_is_the_archive_name(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(2, np.float32))
    path = write_zip(tmp_path / "resnet.pth", dumps({"w": st.tensor("0", (2,))}), st, prefix="resnet")
    assert dc.load(path)["w"].shape == (2,)


# ---- torch-free: malicious and broken files --------------------------------------------------------

def _evil_payloads(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": R(G("os", "system"), (cmd,)),
        "posix.system": R(G("posix", "system"), (cmd,)),
        "builtins.eval": R(G("builtins", "eval"), (f"__import__('os').system({cmd!r})",)),
        "builtins.exec": R(G("builtins", "exec"), (f"open({str(marker)!r}, 'w')",)),
        "subprocess.check_call": R(G("subprocess", "check_call"), (["touch", str(marker)],)),
        "builtins.getattr": R(R(G("builtins", "getattr"), (R(G("builtins", "__import__"), ("os",)), "system")),
                              (cmd,)),
        "__main__.Net": R(G("__main__", "Net"), ()),
        "torch.nn.modules.linear.Linear": R(G("torch.nn.modules.linear", "Linear"), ()),
    }


@pytest.mark.parametrize("layout", ["zip", "legacy", "in-storage-id"])
@pytest.mark.parametrize("name", list(_evil_payloads("m")))
def test_malicious_globals_are_refused_and_never_run(tmp_path, layout, name):
    marker = tmp_path / "PWNED"
    payload = _evil_payloads(marker)[name]
    st = Store()
    st.add("0", "float32", np.ones(2, np.float32))
    if layout == "in-storage-id":  # the global inside the persistent id
        obj = {"w": R(G("torch._utils", "_rebuild_tensor_v2"),
                      (PID(("storage", payload, "0", "cpu", 2)), 0, (2,), (1,), False, None))}
    else:
        obj = {"w": st.tensor("0", (2,), legacy=layout == "legacy"), "x": payload}
    pkl = dumps(obj)
    write = write_legacy if layout == "legacy" else write_zip
    path = write(tmp_path / "evil.pt", pkl, st)
    with pytest.raises(UnsafePickleError) as e:
        dc.load(path)
    first = name.split(".")[0]
    msg = str(e.value)
    assert "evil.pt" in msg and f"'{first}." in msg and "state_dict" in msg, msg
    assert isinstance(e.value, pickle.UnpicklingError) and isinstance(e.value, ValueError)
    assert not marker.exists()


def test_raw_malicious_pickle_is_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(dumps(R(G("os", "system"), (f"touch {marker}",))))
    with pytest.raises(ValueError, match="evil.pkl"):
        dc.load(path)
    assert not marker.exists()


def test_build_on_a_placeholder_is_refused(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(2, np.float32))
    p = _Pickle()
    p.emit(st.tensor("0", (2,)))
    p.b += b"}X\x07\x00\x00\x00storageK\x05sb"  # BUILD the placeholder with {'storage': 5}
    with pytest.raises(TorchLoadError, match="BUILD"):
        dc.load(write_zip(tmp_path / "b.pt", bytes(p.b + b"."), st))


def test_truncated_storage_names_the_tensor_and_record(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(2, np.float32))
    st.add("1", "float32", np.ones(6, np.float32))
    _, data, n = st.data["1"]
    st.data["1"] = ("float32", data[:10], n)  # 10 of 24 bytes
    path = write_zip(tmp_path / "t.pt", dumps({"a": st.tensor("0", (2,)), "fc.weight": st.tensor("1", (2, 3))}), st)
    with pytest.raises(TorchLoadError, match=r"t\.pt.*\['fc\.weight'\].*archive/data/1.*truncated"):
        dc.load(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_huge_claimed_storage_is_not_allocated(tmp_path, legacy):
    st = Store()
    st.add("0", "float32", np.ones(4, np.float32))
    t = st.tensor("0", (4,), legacy=legacy)
    t.args[0].value = t.args[0].value[:4] + (10**15,) + t.args[0].value[5:]  # claims 4 PB
    pkl = dumps({"w": t})
    path = write_legacy(tmp_path / "h.pt", pkl, st) if legacy else write_zip(tmp_path / "h.pt", pkl, st)
    with pytest.raises(TorchLoadError, match=r"h\.pt.*(\['w'\].*truncated|holds 4 elements, the pickle says 4)"):
        dc.load(path)


def test_missing_storage_record(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(2, np.float32))
    obj = {"w": st.tensor("0", (2,))}
    del st.data["0"]
    with pytest.raises(TorchLoadError, match=r"\['w'\].*archive/data/0.*missing"):
        dc.load(write_zip(tmp_path / "m.pt", dumps(obj), st))


def test_truncated_legacy_file(tmp_path):
    st = Store()
    st.add("0", "float32", np.ones(50, np.float32))
    path = write_legacy(tmp_path / "old.pt", dumps({"w": st.tensor("0", (50,), legacy=True)}), st)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-40])
    with pytest.raises(TorchLoadError, match=r"old\.pt.*\['w'\].*truncated"):
        dc.load(path)


@pytest.mark.parametrize("geom", [((3, 4), (4, 1), 0), ((2,), (1,), 5), ((2, 2), (-1, 1), 2), ((2,), (1, 1), 0)])
def test_out_of_bounds_geometry_is_refused(tmp_path, geom):
    size, stride, offset = geom
    st = Store()
    st.add("0", "float32", np.ones(6, np.float32))
    path = write_zip(tmp_path / "g.pt", dumps({"w": st.tensor("0", size, stride=stride, offset=offset)}), st)
    with pytest.raises(TorchLoadError, match=r"g\.pt.*\['w'\]"):
        dc.load(path)


def test_garbage_and_broken_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="junk.pt"):
        dc.load(junk)
    zipjunk = write_zip(tmp_path / "zipjunk.pt", b"\x80\x02not a pickle")
    with pytest.raises(TorchLoadError, match="zipjunk.pt.*corrupt"):
        dc.load(zipjunk)
    st = Store()
    st.add("0", "float32", np.ones(1000, np.float32))
    half = write_zip(tmp_path / "half.pt", dumps({"w": st.tensor("0", (1000,))}), st)
    data = open(half, "rb").read()
    open(half, "wb").write(data[:len(data) // 2])
    with pytest.raises(ValueError, match="half.pt"):
        dc.load(half)
    with pytest.raises(FileNotFoundError):
        dc.load(tmp_path / "nope.pt")


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    n = 200_000
    pkl = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    with pytest.raises(TorchLoadError, match="deep.pt"):
        dc.load(write_zip(tmp_path / "deep.pt", pkl))


def test_torchscript_archive_is_refused(tmp_path):
    path = write_zip(tmp_path / "s.pt", dumps({}), extra={"constants.pkl": dumps(()), "code/__torch__.py": "x"})
    with pytest.raises(TorchLoadError, match="TorchScript"):
        dc.load(path)


def test_unsupported_dtype_value(tmp_path):
    with pytest.raises(TorchLoadError, match=r"\['dt'\] is torch\.float8_e4m3fn"):
        dc.load(write_zip(tmp_path / "f.pt", dumps({"dt": G("torch", "float8_e4m3fn")})))


# ---- with torch: files torch itself wrote -----------------------------------------------------------

TORCH_WRITER = textwrap.dedent(r"""
    import sys, os, numpy as np, torch
    out = sys.argv[1]
    torch.manual_seed(0)
    def npy(name, t):
        np.save(os.path.join(out, name + ".npy"), t.detach().float().numpy() if t.is_floating_point() else t.numpy())

    # a Conv/BatchNorm/Linear model after a training step: running stats and num_batches_tracked move
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward(); opt.step()
    model.eval()
    npy("x", x); npy("y", model(x))
    torch.save(model.state_dict(), os.path.join(out, "cnn.pt"))
    torch.save(model.state_dict(), os.path.join(out, "cnn_legacy.pt"), _use_new_zipfile_serialization=False)
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
          "history": [0.5, 0.25], "name": "run", "cfg": {"lr": 1e-3, "betas": (0.9, 0.999)},
          "dtype": torch.float32, "shape": torch.Size([2, 3]), "device": torch.device("cpu")}
    for legacy in (False, True):
        torch.save(ck, os.path.join(out, "ck_legacy.pt" if legacy else "ck.pt"),
                   _use_new_zipfile_serialization=not legacy)
    npy("exp_avg0", opt.state_dict()["state"][0]["exp_avg"])

    # tied weights, views, half types
    emb = torch.nn.Embedding(10, 4); head = torch.nn.Linear(4, 10, bias=False); head.weight = emb.weight
    base = torch.arange(24.0).reshape(4, 6)
    views = {"emb": emb.state_dict()["weight"], "head": head.state_dict()["weight"], "t": base.t(),
             "step": base[:, 1::2], "row": base[2], "f16": torch.randn(3, 2).half(),
             "bf16": torch.randn(3, 2).bfloat16(), "f64": torch.randn(2).double(), "i32": torch.arange(3).int(),
             "mask": torch.tensor([True, False, True]), "param": torch.nn.Parameter(torch.ones(2))}
    for legacy in (False, True):
        torch.save(views, os.path.join(out, "views_legacy.pt" if legacy else "views.pt"),
                   _use_new_zipfile_serialization=not legacy)
    for k, v in views.items():
        npy("v_" + k, v)
    torch.save({"i8": torch.tensor([1, -2], dtype=torch.int8), "u8": torch.tensor([200, 3], dtype=torch.uint8)},
               os.path.join(out, "small_ints.pt"))
    torch.save(model, os.path.join(out, "whole_model.pt"))  # a pickled nn.Module: must be refused
    print("ok")
""")


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    if not TORCH_PYTHON:
        pytest.skip("set DUTYCYCLE_TORCH_PYTHON to a Python with torch")
    out = tmp_path_factory.mktemp("torch_files")
    r = subprocess.run([TORCH_PYTHON, "-c", TORCH_WRITER, str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _npy(d, name):
    return np.load(d / f"{name}.npy")


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("name", ["cnn.pt", "cnn_legacy.pt"])
def test_torch_cnn_state_dict_gives_torch_outputs(torch_files, name):
    sd = dc.load(torch_files / name)
    assert sd["1.num_batches_tracked"].dtype == dc.int64 and int(sd["1.num_batches_tracked"].item()) == 1
    model = _cnn()
    model.load_state_dict(sd)
    model.eval()
    y = model(dc.tensor(_npy(torch_files, "x")))
    np.testing.assert_allclose(np.asarray(y.detach()), _npy(torch_files, "y"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["ck.pt", "ck_legacy.pt"])
def test_torch_checkpoint_dict(torch_files, name):
    ck = dc.load(torch_files / name, weights_only=True)
    assert (ck["epoch"], ck["history"], ck["name"], ck["cfg"]) == (3, [0.5, 0.25], "run",
                                                                 {"lr": 1e-3, "betas": (0.9, 0.999)})
    assert ck["dtype"] is dc.float32 and ck["shape"] == (2, 3) and str(ck["device"]) == "cpu"
    _cnn().load_state_dict(ck["model"])
    st = ck["optimizer"]["state"][0]
    np.testing.assert_array_equal(np.asarray(st["exp_avg"]), _npy(torch_files, "exp_avg0"))
    assert ck["optimizer"]["param_groups"][0]["lr"] == 1e-3


@pytest.mark.parametrize("name", ["views.pt", "views_legacy.pt"])
def test_torch_views_tied_and_half_types(torch_files, name):
    v = dc.load(torch_files / name)
    dtypes = {"f16": dc.float16, "bf16": dc.bfloat16, "f64": dc.float64, "i32": dc.int32, "mask": dc.bool}
    for k, t in v.items():
        want = _npy(torch_files, "v_" + k)
        assert t.shape == want.shape, k
        assert t.dtype == dtypes.get(k, dc.float32), k
        got = np.asarray((t.float() if k in ("f16", "bf16") else t).detach())
        np.testing.assert_array_equal(got, want, err_msg=k)
    assert isinstance(v["param"], nn.Parameter)
    head = nn.Linear(4, 10, bias=False)
    head.load_state_dict({"weight": v["head"]})


def test_torch_small_int_dtypes(torch_files):
    if not (hasattr(dc, "int8") and hasattr(dc, "uint8")):
        with pytest.raises(TorchLoadError, match="int8"):
            dc.load(torch_files / "small_ints.pt")
        return
    sd = dc.load(torch_files / "small_ints.pt")
    assert (sd["i8"].dtype, sd["u8"].dtype) == (dc.int8, dc.uint8)
    assert np.asarray(sd["i8"]).tolist() == [1, -2] and np.asarray(sd["u8"]).tolist() == [200, 3]


def test_torch_whole_model_pickle_is_refused(torch_files):
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules.*state_dict"):
        dc.load(torch_files / "whole_model.pt")


def test_helpers_are_self_consistent():
    """The hand-written pickle stream is what pickle itself reads."""
    obj = {"a": [1, 2.5, "x", None, True, (3, 2**40)], "b": {}}
    assert pickle.loads(dumps(obj)) == obj
    assert pickle.load(io.BytesIO(dumps([]))) == []
    assert sys.byteorder in ("little", "big")
