"""Interop without copies: from_numpy / .numpy() share memory both ways and keep each other's
buffers alive, strides are honoured, DLPack works both ways with NumPy, and with PyTorch when it
can be imported."""

import gc

import numpy as np
import pytest

import dutycycle as dc

NP_DTYPES = {
    np.float32: dc.float32, np.float64: dc.float64, np.float16: dc.float16,
    np.int32: dc.int32, np.int64: dc.int64, np.bool_: dc.bool,
}


def churn():
    """Free and reallocate memory so a dangling pointer would read garbage."""
    gc.collect()
    return [dc.randn(4096) for _ in range(8)] + [np.random.default_rng(0).standard_normal(4096) for _ in range(8)]


# ============================================================================================ from_numpy / numpy()

@pytest.mark.parametrize("np_dtype", list(NP_DTYPES), ids=lambda d: d.__name__)
def test_from_numpy_shares_memory_both_ways(np_dtype):
    a = (np.arange(12).reshape(3, 4) % 2 == 0) if np_dtype is np.bool_ else np.arange(12, dtype=np_dtype).reshape(3, 4)
    t = dc.from_numpy(a)
    assert t.dtype == NP_DTYPES[np_dtype] and t.shape == (3, 4) and t.stride() == (4, 1)
    assert t.data_ptr() == a.ctypes.data
    a[1, 2] = 0 if np_dtype is np.bool_ else 42  # numpy -> tensor
    assert to_list(t)[1][2] == a[1, 2]
    t.fill_(1)  # tensor -> numpy
    assert (a == 1).all()
    t[0, 0] = 0
    assert a[0, 0] == 0


def to_list(t):
    return t.tolist()


def test_from_numpy_keeps_the_array_alive():
    a = np.arange(1000, dtype=np.float64)
    t = dc.from_numpy(a)
    del a
    junk = churn()
    np.testing.assert_array_equal(t.numpy(), np.arange(1000))
    assert (t * 2).sum().item() == 999 * 1000
    del junk


def test_numpy_shares_memory_and_keeps_tensor_alive(rng):
    t = dc.tensor(rng.standard_normal(1000))
    a = t.numpy()
    assert a.ctypes.data == t.data_ptr() and a.dtype == np.float64
    t.mul_(2)  # tensor -> numpy
    expected = a.copy()
    a[0] = -5.0  # numpy -> tensor
    assert t[0].item() == -5.0
    expected[0] = -5.0
    del t
    junk = churn()
    np.testing.assert_array_equal(a, expected)  # the array still owns a live buffer
    a[:] = 1.0  # and may still write to it
    del junk


def test_numpy_of_views_and_non_contiguous_tensors(rng):
    base = dc.tensor(rng.standard_normal((4, 6)), dtype=dc.float32)
    v = base.T[1:, ::2]  # non-contiguous view
    a = v.numpy()
    np.testing.assert_array_equal(a, base.numpy().T[1:, ::2])
    assert a.strides == tuple(s * 4 for s in v.stride())
    assert np.shares_memory(a, base.numpy())
    a[0, 0] = 123.0
    assert base[0, 1].item() == 123.0  # v[0, 0] is base.T[1, 0]
    e = dc.ones(3, 1).expand(3, 4)  # stride 0
    assert e.numpy().strides == (4, 0) and e.numpy().shape == (3, 4)
    assert np.asarray(base).ctypes.data == base.data_ptr()
    c = np.array(base)  # np.array copies
    c[0, 0] = 7
    assert base[0, 0].item() != 7


def test_numpy_on_requires_grad_tensor_errors():
    w = dc.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad.*detach"):
        w.numpy()
    with pytest.raises(RuntimeError, match="requires grad"):
        (w * 2).numpy()
    a = w.detach().numpy()
    a[0] = 9.0
    assert w[0].item() == 9.0  # detach() shares memory


def test_from_numpy_non_contiguous_arrays(rng):
    a = rng.standard_normal((5, 8))
    for view in (a[:, ::2], a[1::2, 1:7:3], a.T, a[::2].T, np.asfortranarray(a), a[:, 3]):
        t = dc.from_numpy(view)
        assert t.shape == view.shape
        assert t.stride() == tuple(s // 8 for s in view.strides)
        np.testing.assert_array_equal(t.numpy(), view)
        np.testing.assert_allclose((t * 2 + 1).numpy(), view * 2 + 1)
        np.testing.assert_allclose(t.sum().item(), view.sum())
        np.testing.assert_allclose(t.contiguous().numpy(), view)
    v = a[:, ::2]
    t = dc.from_numpy(v)
    t.fill_(0.5)  # writes through the strides, and only there
    assert (a[:, ::2] == 0.5).all() and not (a[:, 1::2] == 0.5).any()


def test_from_numpy_negative_strides_error():
    a = np.arange(10.0)
    for bad in (a[::-1], np.arange(12.0).reshape(3, 4)[:, ::-1], np.flipud(np.ones((2, 2)))):
        with pytest.raises(ValueError, match="negative.*ascontiguousarray"):
            dc.from_numpy(bad)
    # the suggested fix works
    np.testing.assert_array_equal(dc.from_numpy(np.ascontiguousarray(a[::-1])).numpy(), a[::-1])


def test_from_numpy_edge_cases():
    s = dc.from_numpy(np.array(2.5))
    assert s.shape == () and s.item() == 2.5
    e = dc.from_numpy(np.zeros((0, 3), np.float32))
    assert e.shape == (0, 3) and e.numpy().shape == (0, 3)
    with pytest.raises(TypeError, match="unsupported array dtype"):
        dc.from_numpy(np.zeros(3, dtype=">f4"))  # big-endian
    with pytest.raises(TypeError, match="ndarray"):
        dc.from_numpy(dc.ones(2))
    # dc.tensor() copies instead
    a = np.ones(3)
    t = dc.tensor(a)
    a[0] = 5
    assert t[0].item() == 1.0


def test_from_numpy_read_only_arrays_are_refused(tmp_path):
    """Tensors are always writable, so sharing a read-only buffer could crash on the first write
    (a read-only memory map segfaults): refuse with a message pointing at the copying constructor."""
    np.save(tmp_path / "a.npy", np.arange(100.0))
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    for ro in (mm, np.broadcast_to(np.ones(3), (2, 3)), np.frombuffer(b"\0" * 16, dtype=np.float32)):
        assert not ro.flags.writeable
        with pytest.raises(ValueError, match="read-only.*dutycycle.tensor"):
            dc.from_numpy(ro)
    t = dc.tensor(mm)  # the suggested copy works
    t.fill_(0.0)
    assert t.sum().item() == 0.0 and mm.sum() == 4950.0


# ============================================================================================ DLPack with NumPy

def test_numpy_from_dlpack_shares_memory(rng):
    t = dc.tensor(rng.standard_normal((3, 4)), dtype=dc.float32)
    a = np.from_dlpack(t)
    assert a.dtype == np.float32 and a.shape == (3, 4) and a.ctypes.data == t.data_ptr()
    t.add_(1.0)  # tensor -> array
    np.testing.assert_array_equal(a, t.numpy())
    assert a.flags.writeable
    a[0, 0] = 77.0  # array -> tensor
    assert t[0, 0].item() == 77.0
    # non-contiguous
    b = np.from_dlpack(t.T[::2])
    np.testing.assert_array_equal(b, t.numpy().T[::2])
    assert np.shares_memory(b, a)
    # dtypes
    for dt, npdt in ((dc.float64, np.float64), (dc.int32, np.int32), (dc.int64, np.int64), (dc.bool, np.bool_),
                     (dc.float16, np.float16)):
        x = dc.ones(2, 3, dtype=dt)
        y = np.from_dlpack(x)
        assert y.dtype == npdt and (y == 1).all()
    assert np.from_dlpack(dc.tensor(3.0)).shape == ()


def test_numpy_from_dlpack_keeps_tensor_alive(rng):
    t = dc.tensor(rng.standard_normal(2000))
    a = np.from_dlpack(t)
    ref = a.copy()
    del t
    junk = churn()
    np.testing.assert_array_equal(a, ref)
    del junk


def test_numpy_from_dlpack_copy_and_legacy_capsule():
    t = dc.arange(4, dtype=dc.float64)
    c = np.from_dlpack(t, copy=True)
    c[0] = -1.0
    assert t[0].item() == 0.0
    cap = t.__dlpack__()  # no max_version: the legacy "dltensor" capsule
    assert "dltensor" in repr(cap)
    u = dc.from_dlpack(cap)
    assert u.data_ptr() == t.data_ptr()
    with pytest.raises(ValueError, match="unused"):
        dc.from_dlpack(cap)  # a capsule can be consumed only once
    assert t.__dlpack_device__() == (1, 0)
    del cap  # a never-consumed capsule frees its export on its own
    t.__dlpack__(max_version=(1, 0))
    gc.collect()


def test_dlpack_export_refuses_requires_grad():
    w = dc.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad.*detach"):
        np.from_dlpack(w)
    np.testing.assert_array_equal(np.from_dlpack(w.detach()), [1, 1, 1])


def test_dc_from_dlpack_numpy_shares_memory(rng):
    a = rng.standard_normal((3, 5))
    t = dc.from_dlpack(a)
    assert t.dtype == dc.float64 and t.shape == (3, 5) and t.data_ptr() == a.ctypes.data
    t.mul_(2.0)
    np.testing.assert_array_equal(a, t.numpy())
    a[2, 4] = 1234.0
    assert t[2, 4].item() == 1234.0
    v = dc.from_dlpack(a[:, 1::2])
    assert v.stride() == (5, 2)
    np.testing.assert_array_equal(v.numpy(), a[:, 1::2])
    for npdt, dt in NP_DTYPES.items():
        assert dc.from_dlpack(np.zeros(2, npdt)).dtype == dt
    # the array stays alive as long as the tensor
    b = np.arange(500.0)
    tb = dc.from_dlpack(b)
    del b
    junk = churn()
    np.testing.assert_array_equal(tb.numpy(), np.arange(500.0))
    del junk


def test_dlpack_round_trip_through_dutycycle():
    t = dc.randn(3, 4)
    u = dc.from_dlpack(t)
    assert u.data_ptr() == t.data_ptr() and u.shape == t.shape
    bf = dc.tensor([1.5, -2.25]).bfloat16()
    back = dc.from_dlpack(bf)  # bf16 travels through DLPack (NumPy can't hold it)
    assert back.dtype == dc.bfloat16 and back.float().tolist() == [1.5, -2.25]


# ============================================================================================ PyTorch

def _torch():
    try:
        import torch
    except (ImportError, OSError) as e:  # not installed, or a broken install
        pytest.skip(f"PyTorch is not importable here ({type(e).__name__}: {e})")
    return torch


def test_torch_from_dlpack_shares_memory():
    torch = _torch()
    t = dc.arange(12, dtype=dc.float32).reshape(3, 4)
    tt = torch.from_dlpack(t)
    assert tt.dtype == torch.float32 and tuple(tt.shape) == (3, 4)
    t.add_(1.0)
    assert tt[0, 0].item() == 1.0
    tt[1, 1] = 50.0
    assert t[1, 1].item() == 50.0
    tv = torch.from_dlpack(t.T)
    assert tuple(tv.stride()) == (1, 4)


def test_dc_from_dlpack_torch_shares_memory():
    torch = _torch()
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    t = dc.from_dlpack(x)
    assert t.dtype == dc.float64 and t.shape == (2, 3)
    t.fill_(2.0)
    assert x.sum().item() == 12.0
    bf = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert dc.from_dlpack(bf).dtype == dc.bfloat16 and dc.from_dlpack(bf).float().tolist() == [1.5, -2.25]
    nc = torch.arange(12.0).reshape(3, 4).t()
    np.testing.assert_array_equal(dc.from_dlpack(nc).numpy(), nc.numpy())


def test_torch_matches_dutycycle_ops():
    torch = _torch()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    da, db = dc.tensor(a, requires_grad=True), dc.tensor(b, requires_grad=True)
    torch.nn.functional.gelu(ta @ tb, approximate="tanh").log_softmax(-1).sum().backward()
    dc._C.gelu(da @ db, True).log_softmax(-1).sum().backward()
    np.testing.assert_allclose(da.grad.numpy(), ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db.grad.numpy(), tb.grad.numpy(), rtol=1e-10, atol=1e-12)
