"""CUDA backend: the tests marked `gpu` check the first CUDA kernels (fill, copy, add) against NumPy;
the rest run everywhere and check that a machine without a GPU or driver gets clean answers and
clean errors, never a crash.

Run just the GPU part with `pytest -m gpu tests/` (scripts/gpu-check does, on a lent GPU machine).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dutycycle as dc

HAS_GPU = dc.cuda.is_available()
NO_GPU_REASON = "no CUDA device (dutycycle.cuda.is_available() is False)"


def gpu(fn):
    """Mark a test `gpu` and skip it where no CUDA device can be used."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_GPU, reason=NO_GPU_REASON)(fn))


# --- helpers --------------------------------------------------------------------------------------

FLOAT_DTYPES = ["float32", "float64", "bfloat16", "float16"]
ALL_DTYPES = FLOAT_DTYPES + ["int32", "int64", "bool"]


def dcdt(name):
    return getattr(dc, name)


def round_bf16(x):
    """float32 array -> float32 array holding the nearest bfloat16 values (ties to even)."""
    x = np.array(x, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def round_to(x, name):
    """float32 values rounded to dtype `name`, returned as float32 (exact in that dtype)."""
    x = np.asarray(x, dtype=np.float32)
    if name == "bfloat16":
        return round_bf16(x)
    if name == "float16":
        return x.astype(np.float16).astype(np.float32)
    return x


def np_dtype(name):
    return {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
            "bool": np.bool_, "float16": np.float16}[name]


def to_device(a, name, device="cuda"):
    """NumPy array -> dutycycle tensor of dtype `name` on `device` (bf16 goes through float32)."""
    if name == "bfloat16":
        t = dc.from_numpy(round_bf16(a)).to(dc.bfloat16)
    else:
        t = dc.from_numpy(np.array(a, dtype=np_dtype(name), order="C"))
    return t.to(device)


def to_numpy(t):
    """Any tensor -> NumPy (bf16 comes back as float32, exactly)."""
    t = t.cpu()
    if t.dtype == dc.bfloat16:
        t = t.float()
    return t.numpy()


def sample(shape, name, rng):
    if name == "bool":
        return rng.random(shape) < 0.5
    if name in ("int32", "int64"):
        return rng.integers(-1000, 1000, size=shape)
    return rng.standard_normal(shape).astype(np.float32) * 10


# --- everywhere ---------------------------------------------------------------------------------


def test_is_built_is_bool():
    assert isinstance(dc.cuda.is_built(), bool)
    assert isinstance(dc.cuda.is_available(), bool)


def test_not_built_means_not_available():
    if not dc.cuda.is_built():
        assert dc.cuda.is_available() is False
        assert dc.cuda.device_count() == 0


def test_device_count_matches_availability():
    n = dc.cuda.device_count()
    assert isinstance(n, int) and n >= 0
    assert dc.cuda.is_available() == (n > 0)


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is available")
def test_cuda_tensor_without_gpu_raises():
    assert dc.cuda.is_available() is False
    with pytest.raises(RuntimeError, match="cuda"):
        dc.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        dc.ones(2, 3).to("cuda")
    # the failure left nothing behind: CPU work still runs
    assert to_numpy(dc.ones(2) + dc.ones(2)).tolist() == [2.0, 2.0]


def test_no_visible_device_in_fresh_process():
    """Hide every GPU (CUDA_VISIBLE_DEVICES=""): import must work, is_available() must say False
    and a CUDA tensor must raise RuntimeError, in both builds and on GPU machines too."""
    script = textwrap.dedent("""
        import dutycycle as dc
        assert isinstance(dc.cuda.is_built(), bool)
        assert dc.cuda.is_available() is False, "is_available() with CUDA_VISIBLE_DEVICES=''"
        assert dc.cuda.device_count() == 0
        try:
            dc.zeros(2, device="cuda")
        except RuntimeError as e:
            assert "cuda" in str(e).lower(), str(e)
        else:
            raise AssertionError("dc.zeros(2, device='cuda') did not raise")
        print("ok")
    """)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dc.__file__)))
    path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.stdout.strip().endswith("ok")


# --- GPU: basics ----------------------------------------------------------------------------------


@gpu
def test_zeros_plus_ones():
    a = dc.zeros(2, 3, device="cuda")
    b = dc.ones(2, 3, device="cuda")
    c = a + b
    assert c.device.type == "cuda"
    assert str(c.device) == "cuda:0"
    assert c.shape == (2, 3)
    np.testing.assert_array_equal(to_numpy(c), np.ones((2, 3), np.float32))


@gpu
def test_device_spellings():
    for spec in ("cuda", "cuda:0", dc.device("cuda:0")):
        t = dc.zeros(3, device=spec)
        assert t.device.type == "cuda" and t.device.index == 0
    assert dc.ones(2).cuda().device.type == "cuda"


@gpu
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip(name):
    rng = np.random.default_rng(0)
    a = sample((5, 7), name, rng)
    x = to_device(a, name, "cpu")
    y = x.to("cuda")
    assert y.device.type == "cuda" and y.dtype == x.dtype and y.shape == (5, 7)
    back = y.cpu()
    assert back.device.type == "cpu" and back.dtype == x.dtype
    np.testing.assert_array_equal(to_numpy(back), to_numpy(x))


@gpu
def test_empty_and_scalar_tensors():
    z = dc.zeros(0, 3, device="cuda") + dc.zeros(0, 3, device="cuda")
    assert z.shape == (0, 3)
    assert to_numpy(z).shape == (0, 3)
    s = dc.tensor(2.0).to("cuda") + dc.tensor(3.0).to("cuda")
    assert s.shape == ()
    assert s.item() == 5.0


# --- GPU: add -------------------------------------------------------------------------------------

BROADCAST_SHAPES = [
    ((4, 5), (4, 5)),
    ((4, 5), (5,)),
    ((3, 1, 5), (1, 4, 1)),
    ((), (2, 3)),
    ((2, 1, 3, 1), (1, 4, 1, 6)),
    ((1,), (7,)),
    ((64, 129), (129,)),
]


@gpu
@pytest.mark.parametrize("name", FLOAT_DTYPES + ["int32", "int64"])
@pytest.mark.parametrize("sa,sb", BROADCAST_SHAPES)
def test_add_broadcast(name, sa, sb):
    rng = np.random.default_rng(1)
    a, b = sample(sa, name, rng), sample(sb, name, rng)
    if name in ("bfloat16", "float16"):
        a, b = round_to(a, name), round_to(b, name)
        # 16-bit floats add in float32, then round once (ties to even): exact reference
        want = round_to(a + b, name)
    else:
        a, b = a.astype(np_dtype(name)), b.astype(np_dtype(name))
        want = a + b
    got = to_device(a, name) + to_device(b, name)
    assert got.dtype == dcdt(name)
    assert got.shape == np.broadcast_shapes(np.shape(a), np.shape(b))
    np.testing.assert_array_equal(to_numpy(got), want)


@gpu
@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_add_matches_cpu(name):
    """Same inputs on both backends: results agree bit for bit."""
    rng = np.random.default_rng(2)
    a, b = sample((33, 17), name, rng), sample((17,), name, rng)
    xa, xb = to_device(a, name, "cpu"), to_device(b, name, "cpu")
    cpu = xa + xb
    cuda = xa.to("cuda") + xb.to("cuda")
    np.testing.assert_array_equal(to_numpy(cuda), to_numpy(cpu))


@gpu
def test_add_strided_inputs():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal((8, 6)).astype(np.float32)
    x, y = dc.from_numpy(a).to("cuda"), dc.from_numpy(b).to("cuda")
    np.testing.assert_array_equal(to_numpy(x + y.t()), a + b.T)
    np.testing.assert_array_equal(to_numpy(x[:, ::2] + y.t()[:, 1::2]), a[:, ::2] + b.T[:, 1::2])


@gpu
def test_add_python_scalar():
    x = dc.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3)).to("cuda")
    np.testing.assert_array_equal(to_numpy(x + 1.5), np.arange(6, dtype=np.float32).reshape(2, 3) + 1.5)


@gpu
def test_add_large_grid_stride():
    """More elements than one launch covers (65536 blocks x 256 threads)."""
    n = 65536 * 256 * 2 + 17
    a = np.arange(n, dtype=np.float32) % 1000
    got = to_numpy(dc.from_numpy(a).to("cuda") + dc.ones(n, device="cuda"))
    np.testing.assert_array_equal(got, a + 1)


@gpu
def test_add_dtype_mismatch_raises():
    with pytest.raises(TypeError, match="dtype"):
        dc.ones(3, device="cuda") + dc.ones(3, dtype=dc.float64, device="cuda")


@gpu
def test_add_mixed_devices_raises():
    with pytest.raises((RuntimeError, ValueError)):
        dc.ones(3, device="cuda") + dc.ones(3)


# --- GPU: fill ------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_full(name):
    value = {"bool": True, "int32": -7, "int64": 2**40 + 3}.get(name, 2.5)
    t = dc.full((3, 4), value, dtype=dcdt(name), device="cuda")
    assert t.dtype == dcdt(name) and t.device.type == "cuda"
    np.testing.assert_array_equal(to_numpy(t), np.full((3, 4), value, dtype=to_numpy(t).dtype))


@gpu
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_zeros_ones(name):
    z, o = dc.zeros(5, dtype=dcdt(name), device="cuda"), dc.ones(5, dtype=dcdt(name), device="cuda")
    assert to_numpy(z).tolist() == [0] * 5
    assert to_numpy(o).tolist() == [1] * 5


@gpu
def test_fill_strided_view():
    x = dc.zeros(4, 6, device="cuda")
    with dc.no_grad():
        x[:, 1::2].fill_(3.0)
        x[1].fill_(-1.0)
    want = np.zeros((4, 6), np.float32)
    want[:, 1::2] = 3.0
    want[1] = -1.0
    np.testing.assert_array_equal(to_numpy(x), want)
    with dc.no_grad():
        x.t()[2:].zero_()
    want[:, 2:] = 0
    np.testing.assert_array_equal(to_numpy(x), want)


@gpu
def test_fill_half_rounding():
    """The fill value is rounded the way the CPU rounds it."""
    for name in ("bfloat16", "float16"):
        v = 1.0 / 3.0
        got = to_numpy(dc.full((2,), v, dtype=dcdt(name), device="cuda"))
        want = to_numpy(dc.full((2,), v, dtype=dcdt(name)))
        np.testing.assert_array_equal(got, want)


# --- GPU: copy ------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_copy_strided(name):
    rng = np.random.default_rng(4)
    a = sample((3, 4, 5), name, rng)
    if name in ("bfloat16", "float16"):
        a = round_to(a, name)
    x = to_device(a, name)
    ref = np.asarray(to_numpy(x))
    np.testing.assert_array_equal(to_numpy(x.permute(2, 0, 1).contiguous()), ref.transpose(2, 0, 1))
    np.testing.assert_array_equal(to_numpy(x[:, ::2, 1:].contiguous()), ref[:, ::2, 1:])
    np.testing.assert_array_equal(to_numpy(x.transpose(0, 2).clone()), ref.transpose(2, 1, 0))


@gpu
def test_copy_into_strided_destination():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    y = dc.zeros(6, 4, device="cuda")
    with dc.no_grad():
        y.t().copy_(dc.from_numpy(a).to("cuda"))
    np.testing.assert_array_equal(to_numpy(y), a.T)


@gpu
def test_copy_expanded_source():
    row = dc.from_numpy(np.arange(5, dtype=np.float32)).to("cuda")
    got = row.unsqueeze(0).expand(3, 5).contiguous()
    np.testing.assert_array_equal(to_numpy(got), np.tile(np.arange(5, dtype=np.float32), (3, 1)))


@gpu
@pytest.mark.parametrize("src", ALL_DTYPES)
@pytest.mark.parametrize("dst", ALL_DTYPES)
def test_copy_dtype_conversion(src, dst):
    """Converting on the GPU gives what converting on the CPU gives."""
    rng = np.random.default_rng(6)
    a = sample((4, 6), src, rng)
    if src in FLOAT_DTYPES:
        a = round_to(a, src)
    x = to_device(a, src, "cpu")
    want = to_numpy(x.to(dcdt(dst)))
    got = x.to("cuda").to(dcdt(dst))
    assert got.device.type == "cuda" and got.dtype == dcdt(dst)
    np.testing.assert_array_equal(to_numpy(got), want)
    # and from a strided source
    got_t = x.to("cuda").t().to(dcdt(dst))
    np.testing.assert_array_equal(to_numpy(got_t), want.T)


@gpu
def test_synchronize():
    x = dc.ones(1024, device="cuda") + dc.ones(1024, device="cuda")
    dc.cuda.synchronize()
    assert to_numpy(x)[0] == 2.0


# --- GPU: ops without a CUDA kernel yet -----------------------------------------------------------


@gpu
def test_op_without_cuda_kernel_raises_clearly():
    x = dc.ones(3, device="cuda")
    # NotImplementedError is a RuntimeError too
    with pytest.raises(RuntimeError) as info:
        dc.exp(x)
    msg = str(info.value)
    assert "exp" in msg and "cuda" in msg, msg
    # the error is clean: the tensor and the device still work
    np.testing.assert_array_equal(to_numpy(x + x), np.full(3, 2.0, np.float32))


# --- the torch.cuda API on a machine without a GPU: clean answers and clean errors ----------------

@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU answers")
def test_memory_functions_without_gpu_report_nothing():
    assert dc.cuda.memory_stats() == {}
    assert dc.cuda.memory_allocated() == dc.cuda.max_memory_allocated() == 0
    assert dc.cuda.memory_reserved() == dc.cuda.max_memory_reserved() == 0
    dc.cuda.reset_peak_memory_stats()
    dc.cuda.empty_cache()
    assert "no CUDA device" in dc.cuda.memory_summary()
    with pytest.raises(RuntimeError, match="no CUDA device"):
        dc.cuda.mem_get_info()
    plans = dc.cuda.plan_cache_stats()  # no plan was ever built (empty dicts without CUDA built in)
    assert set(plans) == {"matmul", "conv"} and all(p.get("misses", 0) == 0 for p in plans.values())


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU answers")
def test_streams_and_events_without_gpu_raise_clearly():
    for make in (dc.cuda.Stream, dc.cuda.Event, dc.cuda.current_stream, dc.cuda.default_stream):
        with pytest.raises(RuntimeError, match="no CUDA device is available"):
            make()
    with dc.cuda.stream(None):  # torch: stream(None) is a no-op context
        pass


def test_pin_memory_and_record_stream_on_the_cpu():
    t = dc.arange(6, dtype=dc.float32)
    p = t.pin_memory()
    if not HAS_GPU:
        assert p is t and not t.is_pinned()  # nothing to pin for: ported loaders still run
    else:
        assert p.is_pinned() and p.tolist() == t.tolist()
    with pytest.raises(RuntimeError, match="expected a CUDA tensor"):
        t.record_stream(None)
    assert t.to("cpu", non_blocking=True) is t


def test_out_of_memory_error_is_torchs_name():
    assert dc.cuda.OutOfMemoryError is MemoryError
