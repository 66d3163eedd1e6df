"""Tensor basics against NumPy: views (reshape, view, transpose, permute, indexing, squeeze,
expand, narrow, flatten, ...), in-place ops, dtype conversion for all seven dtypes (bf16 and fp16
rounding checked bit-exactly against a NumPy reference), constructors and the random generators."""

import numpy as np
import pytest
from conftest import LAYOUTS, make, to_np

import dutycycle as dc
from dutycycle.autograd import gradcheck

ALL_DTYPES = ["float32", "float64", "bfloat16", "float16", "int32", "int64", "bool"]


def shares_memory(t, base):
    """t's first element lies inside base's buffer (views share storage)."""
    lo = base.data_ptr()
    hi = lo + base.numel() * base.element_size()
    return lo <= t.data_ptr() < hi or (t.numel() == 0)


def round_bf16(x):
    """float64/float32 values -> the nearest bfloat16 (ties to even), returned as float32."""
    x = np.array(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    nan = np.isnan(x)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = u.view(np.float32)
    out[nan] = np.nan
    return out


# ============================================================================================ attributes

def test_attributes(rng):
    x = dc.tensor(rng.standard_normal((2, 3, 4)), dtype=dc.float32)
    assert x.shape == (2, 3, 4) and x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    assert x.dim() == 3 and x.ndim == 3 and x.numel() == 24 and len(x) == 2
    assert x.dtype == dc.float32 and x.dtype.itemsize == 4 and x.dtype.is_floating_point
    assert x.element_size() == 4 and x.is_floating_point()
    assert x.device == dc.device("cpu") and x.device.type == "cpu" and str(x.device) == "cpu"
    assert x.stride() == (12, 4, 1) and x.is_contiguous()
    assert dc.float is dc.float32 and dc.double is dc.float64 and dc.half is dc.float16
    assert dc.long is dc.int64 and dc.int is dc.int32
    assert not dc.int64.is_floating_point and dc.bool.itemsize == 1 and dc.bfloat16.itemsize == 2
    s = dc.tensor(3.5)
    assert s.shape == () and s.ndim == 0 and s.numel() == 1 and s.item() == 3.5 and float(s) == 3.5
    assert int(dc.tensor(7)) == 7 and bool(dc.tensor([True]))
    assert [list(r.shape) for r in x] == [[3, 4], [3, 4]]


def test_tensor_constructor_dtypes():
    assert dc.tensor([1.0, 2.0]).dtype == dc.float32
    assert dc.tensor([1, 2]).dtype == dc.int64
    assert dc.tensor([True, False]).dtype == dc.bool
    assert dc.tensor(np.zeros(2)).dtype == dc.float64
    assert dc.tensor(np.zeros(2, np.float32)).dtype == dc.float32
    assert dc.tensor(np.zeros(2, np.int32)).dtype == dc.int32
    assert dc.tensor([[1, 2], [3, 4]], dtype=dc.float64).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert dc.tensor(2.5).shape == () and dc.tensor(2.5).item() == 2.5
    assert dc.tensor(np.float64(1.5)).shape == ()
    t = dc.tensor([1.0, 2.0])
    c = dc.tensor(t)  # a copy
    c.fill_(0)
    assert t.tolist() == [1.0, 2.0]
    assert dc.tensor([dc.tensor(1.0), dc.tensor(2.0)]).tolist() == [1.0, 2.0]
    assert dc.tensor([[]]).shape == (1, 0)


# ============================================================================================ views

@pytest.mark.parametrize("layout", LAYOUTS)
def test_reshape_view_flatten(rng, layout):
    a = rng.standard_normal((4, 6))
    x = make(a, "float64", layout)
    for shape in [(24,), (2, 12), (6, -1), (-1, 2, 3), (2, 2, 2, 3), (1, 24, 1)]:
        np.testing.assert_array_equal(x.reshape(*shape).numpy(), a.reshape(*shape))
        np.testing.assert_array_equal(x.reshape(shape).numpy(), a.reshape(*shape))
    np.testing.assert_array_equal(x.flatten().numpy(), a.ravel())
    np.testing.assert_array_equal(x.unflatten(1, (2, 3)).numpy(), a.reshape(4, 2, 3))
    y = dc.tensor(rng.standard_normal((2, 3, 4, 5)))
    assert y.flatten(1).shape == (2, 60) and y.flatten(1, 2).shape == (2, 12, 5) and y.flatten(0, -2).shape == (24, 5)
    np.testing.assert_array_equal(y.flatten(1, 2).numpy(), y.numpy().reshape(2, 12, 5))
    assert dc.tensor(3.0).flatten().shape == (1,)
    if layout == "contig":
        v = x.view(3, 8)
        assert v.data_ptr() == x.data_ptr() and v.is_leaf is not False
        v[0, 0] = 100.0  # writes through
        assert x[0, 0].item() == 100.0
        assert x.reshape(24).data_ptr() == x.data_ptr()  # reshape of a contiguous tensor is a view
    if layout == "step":
        # rows of a [..., ::2] slice can still be viewed/merged in the leading dims
        v = x.view(2, 2, 6)
        np.testing.assert_array_equal(v.numpy(), a.reshape(2, 2, 6))
        assert shares_memory(v, x)


def test_view_of_permuted_tensor_that_is_compatible(rng):
    a = rng.standard_normal((2, 3, 4))
    x = dc.tensor(a).permute(1, 0, 2)  # (3, 2, 4): the last dim is still contiguous
    np.testing.assert_array_equal(x.view(3, 2, 2, 2).numpy(), a.transpose(1, 0, 2).reshape(3, 2, 2, 2))
    np.testing.assert_array_equal(x.reshape(6, 4).numpy(), a.transpose(1, 0, 2).reshape(6, 4))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transpose_permute(rng, layout):
    a = rng.standard_normal((2, 3, 4))
    x = make(a, "float32", layout)
    np.testing.assert_array_equal(x.transpose(0, 2).numpy(), a.astype(np.float32).transpose(2, 1, 0))
    np.testing.assert_array_equal(dc.transpose(x, -1, -2).numpy(), np.swapaxes(a, -1, -2).astype(np.float32))
    np.testing.assert_array_equal(x.permute(2, 0, 1).numpy(), a.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(x.permute((1, 2, 0)).numpy(), a.transpose(1, 2, 0).astype(np.float32))
    np.testing.assert_array_equal(x.permute(-1, 0, 1).numpy(), a.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(x.mT.numpy(), np.swapaxes(a, -1, -2).astype(np.float32))
    assert x.transpose(0, 1).data_ptr() == x.data_ptr()
    m = make(a[0], "float32", layout)
    np.testing.assert_array_equal(m.T.numpy(), a[0].T.astype(np.float32))
    np.testing.assert_array_equal(m.t().numpy(), a[0].T.astype(np.float32))
    assert dc.tensor([1.0, 2.0]).t().shape == (2,)
    assert x.T.shape == (4, 3, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_getitem(rng, layout):
    a = rng.standard_normal((4, 5, 6))
    x = make(a, "float64", layout)
    idxs = [
        1, -1, (2, 3), (-1, -2, -3), (slice(None), 2), (slice(1, 3),), (slice(None, None, 2),),
        (slice(1, None, 3), slice(None), slice(4, 0, 1)), (Ellipsis, 1), (1, Ellipsis), (None,),
        (None, 1, None), (slice(None), None, slice(2, 4)), (Ellipsis, None), (0, Ellipsis, slice(None, None, 2)),
        (slice(-3, -1), slice(-100, 100)), (slice(None), slice(None), -1), (3, 4, 5), (slice(None, None, 4),),
        (slice(10, 20),),
    ]
    for idx in idxs:
        got, want = x[idx], a[idx]
        assert got.shape == want.shape, idx
        np.testing.assert_array_equal(got.numpy(), want, err_msg=str(idx))
        if got.ndim and got.numel():
            assert shares_memory(got, x if x.is_contiguous() else got)
    v = x[1:3, ::2]
    assert v.shape == (2, 3, 6) and not v.is_contiguous()
    assert x[0, 0, 0].item() == a[0, 0, 0]


def test_numpy_integers_as_sizes_and_indices(rng):
    a = rng.standard_normal((4, 3))
    x = dc.tensor(a)
    np.testing.assert_array_equal(x[np.int64(1)].numpy(), a[1])
    np.testing.assert_array_equal(x[np.int32(-1), np.int64(2)].numpy(), a[-1, 2])
    np.testing.assert_array_equal(x[np.array([0, 2, 2])].numpy(), a[[0, 2, 2]])
    np.testing.assert_array_equal(x[np.array([True, False, True, False])].numpy(), a[[0, 2]])
    assert dc.zeros(np.int64(3), np.int32(2)).shape == (3, 2)
    assert x.reshape(np.int64(12)).shape == (12,) and x.view(np.int64(2), -1).shape == (2, 6)
    assert x.expand(np.int64(2), 4, 3).shape == (2, 4, 3)
    with pytest.raises(TypeError, match="float"):
        dc.zeros(np.float64(2.0))
    with pytest.raises(TypeError, match="float64"):
        x[np.float64(1.0)]


def test_setitem(rng):
    a = rng.standard_normal((4, 5))
    x = dc.tensor(a)
    x[0] = 1.0
    x[1, 2] = -7.0
    x[2:, ::2] = dc.tensor([9.0, 8.0, 7.0])
    x[..., -1] = dc.zeros(4, dtype=dc.float64)
    assert x.dtype == dc.float64
    a[0] = 1
    a[1, 2] = -7
    a[2:, ::2] = [9, 8, 7]
    a[..., -1] = 0
    np.testing.assert_array_equal(x.numpy(), a)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_squeeze_unsqueeze(rng, layout):
    a = rng.standard_normal((3, 1, 4))
    x = make(a, "float64", layout)
    assert x.unsqueeze(0).shape == (1, 3, 1, 4) and x.unsqueeze(-1).shape == (3, 1, 4, 1)
    assert x.unsqueeze(2).shape == (3, 1, 1, 4) and x.unsqueeze(-4).shape == (1, 3, 1, 4)
    np.testing.assert_array_equal(x.unsqueeze(1).numpy(), np.expand_dims(a, 1))
    np.testing.assert_array_equal(dc.unsqueeze(x, 3).numpy(), np.expand_dims(a, 3))
    np.testing.assert_array_equal(x.squeeze().numpy(), a.squeeze())
    np.testing.assert_array_equal(x.squeeze(1).numpy(), a.squeeze(1))
    np.testing.assert_array_equal(dc.squeeze(x, -2).numpy(), a.squeeze(1))
    assert x.squeeze(0).shape == (3, 1, 4)  # not size 1: unchanged
    assert dc.ones(1, 1).squeeze().shape == ()
    assert dc.tensor(2.0).unsqueeze(0).shape == (1,)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_expand(rng, layout):
    a = rng.standard_normal((3, 1))
    x = make(a, "float64", layout)
    e = x.expand(2, 3, 4)
    np.testing.assert_array_equal(e.numpy(), np.broadcast_to(a, (2, 3, 4)))
    assert e.stride()[0] == 0 and e.stride()[2] == 0 and e.data_ptr() == x.data_ptr()
    np.testing.assert_array_equal(x.expand(-1, 5).numpy(), np.broadcast_to(a, (3, 5)))
    np.testing.assert_array_equal(x.expand((3, 2)).numpy(), np.broadcast_to(a, (3, 2)))
    np.testing.assert_array_equal(x.expand_as(dc.zeros(3, 6)).numpy(), np.broadcast_to(a, (3, 6)))
    # an expanded tensor as an op input, and its contiguous copy
    np.testing.assert_array_equal((e * 2).numpy(), np.broadcast_to(a, (2, 3, 4)) * 2)
    c = e.contiguous()
    assert c.is_contiguous() and c.stride() == (12, 4, 1)
    np.testing.assert_array_equal(c.numpy(), np.broadcast_to(a, (2, 3, 4)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_contiguous_clone_narrow(rng, layout):
    a = rng.standard_normal((4, 6))
    x = make(a, "float64", layout)
    c = x.contiguous()
    assert c.is_contiguous()
    np.testing.assert_array_equal(c.numpy(), a)
    if layout == "contig":
        assert c is x  # already contiguous: the same tensor
    else:
        assert c.data_ptr() != x.data_ptr()
    cl = x.clone()
    assert cl.data_ptr() != x.data_ptr()
    np.testing.assert_array_equal(cl.numpy(), a)
    n = x.narrow(1, 2, 3)
    np.testing.assert_array_equal(n.numpy(), a[:, 2:5])
    np.testing.assert_array_equal(dc.narrow(x, 0, 1, 2).numpy(), a[1:3])
    assert shares_memory(n, x) or layout != "contig"
    ub = x.unbind(1)
    assert len(ub) == 6
    np.testing.assert_array_equal(ub[3].numpy(), a[:, 3])


def test_view_grads(rng):
    """Backward through every view op, on contiguous and non-contiguous inputs."""
    for layout in ("contig", "transpose", "step"):
        x = make(rng.standard_normal((4, 6)), "float64", layout, True)
        fns = [
            lambda t: t.reshape(3, 8) * dc.arange(8, dtype=dc.float64),
            lambda t: t.T * 2,
            lambda t: t.permute(1, 0)[::2, 1:] ** 2,
            lambda t: t[None, ..., -1],
            lambda t: t[1] * t[-1],
            lambda t: t.unsqueeze(1).expand(4, 3, 6) * dc.arange(3, dtype=dc.float64).reshape(1, 3, 1),
            lambda t: t[:, :1].squeeze() + t.narrow(1, 3, 1).squeeze(1),
            lambda t: t.flatten()[5:17:3],
            lambda t: t.contiguous().view(24).exp(),
            lambda t: t.clone().unflatten(1, (2, 3)).sum(-1),
            lambda t: [u * k for k, u in enumerate(t.unbind(0))],
        ]
        for fn in fns:
            assert gradcheck(fn, (x,))


# ============================================================================================ in place

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_inplace_ops(rng, dtype, layout):
    a = rng.integers(-5, 5, (3, 4)).astype(np.float64)
    b = rng.integers(-5, 5, (4,)).astype(np.float64)
    x = make(a, dtype, layout)
    ptr, v0 = x.data_ptr(), x._version
    assert x.add_(make(b, dtype)) is x
    want = a + b
    assert x.mul_(2) is x
    want = want * 2
    x.add_(make(b, dtype), alpha=3)
    want = want + 3 * b
    x.sub_(1)
    want = want - 1
    x += 2
    x *= make(b, dtype, layout)
    want = (want + 2) * b
    np.testing.assert_array_equal(to_np(x), want)
    assert x.data_ptr() == ptr and x._version > v0
    assert x.fill_(3) is x and (to_np(x) == 3).all()
    assert x.zero_() is x and (to_np(x) == 0).all()
    src = rng.integers(-5, 5, (3, 4)).astype(np.float64)
    assert x.copy_(make(src, dtype, "transpose")) is x
    np.testing.assert_array_equal(to_np(x), src)
    x.copy_(make(b, dtype))  # broadcast source
    np.testing.assert_array_equal(to_np(x), np.broadcast_to(b, (3, 4)))
    if dtype != "int64":
        x.div_(2)
        np.testing.assert_array_equal(to_np(x), np.broadcast_to(b, (3, 4)) / 2)


def test_inplace_writes_through_views(rng):
    a = rng.standard_normal((4, 6))
    base = dc.tensor(a, dtype=dc.float64)
    col = base[:, 1]  # non-contiguous view
    col.fill_(5.0)
    row = base[2, ::2]
    row.add_(dc.tensor([1.0, 2.0, 3.0], dtype=dc.float64))
    base.T[0].mul_(0.0)  # column 0 through a transpose
    base[1:3, 3:].copy_(dc.full((2, 3), -1.0, dtype=dc.float64))
    want = a.copy()
    want[:, 1] = 5
    want[2, ::2] += [1, 2, 3]
    want[:, 0] = 0
    want[1:3, 3:] = -1
    np.testing.assert_array_equal(base.numpy(), want)
    e = dc.zeros(3, 4)
    e.T.copy_(dc.arange(12, dtype=dc.float32).reshape(4, 3))
    np.testing.assert_array_equal(e.numpy(), np.arange(12).reshape(4, 3).T)


def test_inplace_with_overlapping_source(rng):
    """Source and destination share memory in a different layout: the result is as if the source
    had been read first (NumPy semantics), never half-updated values."""
    for n in (4, 300):  # small, and large enough for the tiled/parallel copy paths
        a = rng.standard_normal((n, n))
        x = dc.tensor(a)
        x.copy_(x.T)
        np.testing.assert_array_equal(x.numpy(), a.T)
        x = dc.tensor(a)
        x.T.copy_(x)
        np.testing.assert_array_equal(x.numpy(), a.T)
        x = dc.tensor(a)
        x.add_(x.T)
        np.testing.assert_array_equal(x.numpy(), a + a.T)
        x = dc.tensor(a)
        x.mul_(x[0])  # row 0 is read for every row, and written too
        np.testing.assert_array_equal(x.numpy(), a * a[0])
        x = dc.tensor(a)
        x[1:] = x[:-1]
        np.testing.assert_array_equal(x.numpy(), np.concatenate([a[:1], a[:-1]]))
        x = dc.tensor(a)
        x[:-1].sub_(x[1:])
        b = a.copy()
        b[:-1] -= a[1:]
        np.testing.assert_array_equal(x.numpy(), b)
    x = dc.tensor(a)
    x.mul_(x)  # the identical view is fine element by element
    np.testing.assert_array_equal(x.numpy(), a * a)
    # two tensors wrapping the same NumPy buffer
    arr = a[:4, :4].copy()
    want = arr.T.copy()
    dc.from_numpy(arr).copy_(dc.from_numpy(arr.T))
    np.testing.assert_array_equal(arr, want)


def test_copy_converts_dtype():
    x = dc.zeros(3, dtype=dc.float64)
    x.copy_(dc.tensor([1, 2, 3]))
    assert x.tolist() == [1.0, 2.0, 3.0] and x.dtype == dc.float64
    i = dc.zeros(2, dtype=dc.int32)
    i.copy_(dc.tensor([1.9, -2.9]))
    assert i.tolist() == [1, -2]
    b = dc.zeros(2, dtype=dc.bool)
    b.copy_(dc.tensor([0.0, 0.5]))
    assert b.tolist() == [False, True]
    x.copy_([7.0, 8.0, 9.0])
    assert x.tolist() == [7.0, 8.0, 9.0]


def test_normal_uniform_inplace():
    x = dc.empty(20000, dtype=dc.float64)
    x.normal_(2.0, 0.5)
    assert abs(x.mean().item() - 2.0) < 0.03 and abs(x.std().item() - 0.5) < 0.03
    x.uniform_(-1, 3)
    v = x.numpy()
    assert v.min() >= -1 and v.max() < 3 and abs(v.mean() - 1.0) < 0.05


# ============================================================================================ dtype conversion

def sample_values(rng):
    """Values that exercise rounding: ordinary, exact halfway cases, huge, tiny, negative zero."""
    v = np.concatenate([
        rng.standard_normal(200) * 10,
        [0.0, -0.0, 1.0, -1.0, 0.5, 2.5, 3.5, -2.5, 65504.0, 65520.0, 1e5, -1e5, 1e-3, 6e-8, 1e-9, 3e38],
        # bf16 tie cases: 1 + k * 2^-8 with k odd lies exactly between two bf16 numbers
        1.0 + np.array([1, 3, 5, 7]) * 2.0**-8,
        # fp16 tie cases: 1 + k * 2^-11 with k odd
        1.0 + np.array([1, 3, 5, 7]) * 2.0**-11,
    ])
    return v


def test_to_float16_matches_numpy(rng):
    v = sample_values(rng).astype(np.float32)
    h = dc.tensor(v).to(dc.float16)
    assert h.dtype == dc.float16
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)  # 65520 and up overflow to inf, as in the core
    np.testing.assert_array_equal(h.numpy().view(np.uint16), want.view(np.uint16))
    back = h.to(dc.float32)
    np.testing.assert_array_equal(back.numpy(), want.astype(np.float32))
    # float64 -> float16 directly (via float32 on the host is fine: same values here)
    h64 = dc.tensor(v.astype(np.float64)).half()
    np.testing.assert_array_equal(h64.numpy().view(np.uint16), want.view(np.uint16))
    # from_numpy of a float16 array, and half -> double
    np.testing.assert_array_equal(dc.from_numpy(want).double().numpy(), want.astype(np.float64))


def test_to_bfloat16_matches_reference(rng):
    v = sample_values(rng).astype(np.float32)
    b = dc.tensor(v).to(dc.bfloat16)
    assert b.dtype == dc.bfloat16 and b.element_size() == 2
    back = b.float().numpy()
    np.testing.assert_array_equal(back, round_bf16(v))
    # float64 source (rounded to float32 first, as torch does on CPU for these values)
    np.testing.assert_array_equal(dc.tensor(v.astype(np.float64)).bfloat16().double().numpy(),
                                  round_bf16(v).astype(np.float64))
    # NaN and inf survive
    s = dc.tensor([float("nan"), float("inf"), -float("inf")]).bfloat16().float().numpy()
    assert np.isnan(s[0]) and s[1] == np.inf and s[2] == -np.inf
    # a round trip of values already representable is exact
    exact = round_bf16(v)
    np.testing.assert_array_equal(dc.tensor(exact).bfloat16().float().numpy(), exact)
    # bf16 tensors print and convert to lists through float32
    assert dc.tensor([1.5, 2.0]).bfloat16().tolist() == [1.5, 2.0]
    assert "bfloat16" in repr(dc.tensor([1.5]).bfloat16())


@pytest.mark.parametrize("src", ALL_DTYPES)
@pytest.mark.parametrize("dst", ALL_DTYPES)
def test_to_all_dtype_pairs(rng, src, dst):
    vals = np.array([[0, 1, 2, 3], [-1, -2, 5, 100]], dtype=np.float64)  # exact in every dtype
    if src == "bool":
        vals = (vals != 0).astype(np.float64)
    x = dc.tensor(vals, dtype=getattr(dc, src))
    for layout_x in (x, x.T.contiguous().T):  # contiguous and transposed sources
        y = layout_x.to(getattr(dc, dst))
        assert y.dtype.name == dst and y.shape == (2, 4)
        np.testing.assert_array_equal(to_np(y), vals.astype(bool) if dst == "bool" else vals)
        z = y.to(getattr(dc, src))
        assert z.dtype.name == src
        if dst != "bool" and src != "bool":
            np.testing.assert_array_equal(to_np(z), vals)


def test_to_variants():
    x = dc.tensor([1.7, -1.7, 2.5])
    assert x.to(dc.float32) is x  # no-op conversions return the tensor itself
    assert x.to(dc.float32, copy=True) is not x
    assert x.to("cpu") is x and x.cpu() is x
    assert x.to(dtype=dc.int64).tolist() == [1, -1, 2]  # truncation toward zero
    assert x.long().tolist() == [1, -1, 2] and x.int().dtype == dc.int32
    assert x.double().dtype == dc.float64 and x.half().dtype == dc.float16 and x.float().dtype == dc.float32
    assert x.bool().tolist() == [True, True, True]
    other = dc.zeros(1, dtype=dc.float64)
    assert x.to(other).dtype == dc.float64
    assert x.to("cpu", dc.float64).dtype == dc.float64
    assert x.type(dc.float64).dtype == dc.float64 and x.type() == "dutycycle.float32"
    big = dc.tensor([3e10, -3e10, float("nan")], dtype=dc.float64)
    assert big.int().tolist() == [2**31 - 1, -(2**31), 0]  # saturates, NaN -> 0 (defined behaviour)


# ============================================================================================ constructors

def test_arange():
    assert dc.arange(5).tolist() == [0, 1, 2, 3, 4] and dc.arange(5).dtype == dc.int64
    assert dc.arange(2, 8, 3).tolist() == [2, 5]
    assert dc.arange(5, 0, -2).tolist() == [5, 3, 1]
    np.testing.assert_allclose(dc.arange(0, 1, 0.1).numpy(), np.arange(0, 1, 0.1, dtype=np.float32), rtol=1e-6)
    assert dc.arange(0.0, 1.0, 0.25).dtype == dc.float32
    assert dc.arange(4, dtype=dc.float64).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert dc.arange(3, dtype=dc.int32).dtype == dc.int32
    assert dc.arange(0).shape == (0,) and dc.arange(3, 3).shape == (0,)
    np.testing.assert_array_equal(dc.arange(-3, 3).numpy(), np.arange(-3, 3))
    x = dc.arange(1e6, dtype=dc.float64)
    assert x[-1].item() == 999999.0 and x.shape == (1000000,)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zeros_ones_full_empty(dtype):
    dt = getattr(dc, dtype)
    for size in [(2, 3), ((2, 3),), ([2, 3],)]:
        z, o, e = dc.zeros(*size, dtype=dt), dc.ones(*size, dtype=dt), dc.empty(*size, dtype=dt)
        assert z.shape == o.shape == e.shape == (2, 3)
        assert z.dtype == o.dtype == e.dtype == dt
        assert (to_np(z) == 0).all() and (to_np(o) == 1).all()
    f = dc.full((2, 2), 3, dtype=dt)
    assert f.dtype == dt and (to_np(f) == (1 if dtype == "bool" else 3)).all()
    assert dc.zeros(()).shape == () and dc.ones(0).shape == (0,) and dc.empty(2, 0, 3).numel() == 0
    like = dc.ones(3, 2, dtype=dc.float64)
    assert dc.zeros_like(like).dtype == dc.float64 and dc.zeros_like(like).shape == (3, 2)
    assert (to_np(dc.ones_like(like, dtype=dt)) == 1).all() and dc.ones_like(like, dtype=dt).dtype == dt
    assert dc.empty_like(like).shape == (3, 2)
    assert (to_np(dc.full_like(like, 7)) == 7).all() and dc.full_like(like, 7).dtype == dc.float64


def test_full_default_dtypes():
    assert dc.full((2,), 1.5).dtype == dc.float32
    assert dc.full((2,), 2).dtype == dc.int64
    assert dc.full((2,), True).dtype == dc.bool
    assert dc.full(3, 0.5).shape == (3,)
    assert dc.full((), 2.0).shape == ()


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_rand_randn_ranges(dtype):
    dt = getattr(dc, dtype)
    r = dc.rand(4000, dtype=dt)
    assert r.dtype == dt and r.shape == (4000,)
    v = to_np(r)
    assert v.min() >= 0.0 and v.max() < 1.0 and abs(v.mean() - 0.5) < 0.03
    n = dc.randn(2, 2000, dtype=dt)
    assert n.dtype == dt and n.shape == (2, 2000)
    w = to_np(n)
    assert abs(w.mean()) < 0.1 and abs(w.std() - 1.0) < 0.1
    assert dc.rand_like(n).dtype == dt and dc.randn_like(n).shape == (2, 2000)


def test_randn_statistics():
    x = dc.randn(100_000, dtype=dc.float64).numpy()
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1.0) < 0.02
    # tails look normal: about 4.55% beyond 2 sigma
    assert 0.040 < (np.abs(x) > 2).mean() < 0.051
    f = dc.randn(100_000).numpy()
    assert abs(f.mean()) < 0.02 and abs(f.std() - 1.0) < 0.02
    u = dc.rand(100_000).numpy()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005


def test_randint():
    r = dc.randint(3, 9, (1000,))
    assert r.dtype == dc.int64 and r.shape == (1000,)
    v = r.numpy()
    assert v.min() == 3 and v.max() == 8 and set(np.unique(v)) == set(range(3, 9))
    r2 = dc.randint(5, (2, 3))
    assert r2.shape == (2, 3) and r2.numpy().min() >= 0 and r2.numpy().max() < 5
    r3 = dc.randint(-4, -1, size=(500,), dtype=dc.int32)
    assert r3.dtype == dc.int32 and set(np.unique(r3.numpy())) == {-4, -3, -2}
    assert dc.randint(0, 2, 10).shape == (10,)
    assert dc.randint_like(r2, 10).shape == (2, 3)


def test_manual_seed_reproducible():
    dc.manual_seed(42)
    a = [dc.rand(5).numpy().copy(), dc.randn(3, 3).numpy().copy(), dc.randint(0, 100, (7,)).numpy().copy()]
    dc.manual_seed(42)
    b = [dc.rand(5).numpy(), dc.randn(3, 3).numpy(), dc.randint(0, 100, (7,)).numpy()]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    dc.manual_seed(43)
    assert not np.array_equal(dc.rand(5).numpy(), a[0])
    # consecutive draws differ
    dc.manual_seed(42)
    assert not np.array_equal(dc.rand(5).numpy(), dc.rand(5).numpy())
    # get/set_rng_state replays
    st = dc.get_rng_state()
    c = dc.randn(4).numpy().copy()
    dc.set_rng_state(st)
    np.testing.assert_array_equal(dc.randn(4).numpy(), c)
    assert dc.initial_seed() == 42


def test_random_values_do_not_depend_on_how_they_are_drawn():
    dc.manual_seed(5)
    whole = dc.rand(100).numpy().copy()
    dc.manual_seed(5)
    parts = np.concatenate([dc.rand(30).numpy(), dc.rand(70).numpy()])
    np.testing.assert_array_equal(whole, parts)
    dc.manual_seed(5)
    big = dc.randn(200_000).numpy()  # parallel path
    dc.manual_seed(5)
    np.testing.assert_array_equal(dc.randn(200_000).numpy(), big)


def test_repr_and_tolist():
    x = dc.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert repr(x).startswith("tensor(") and "3." in repr(x)
    assert "requires_grad=True" in repr(dc.ones(2, requires_grad=True))
    assert "dtype=dutycycle.float64" in repr(dc.ones(2, dtype=dc.float64))
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert dc.tensor(3).tolist() == 3


# --- PyTorch idioms that ported scripts use ---------------------------------------------------------

def test_negative_index_tensors_count_from_the_end():
    a = np.arange(12.0).reshape(3, 4)
    x = dc.tensor(a)
    assert x[:, [-1]].tolist() == a[:, [-1]].tolist()  # nanoGPT's top-k cut: v[:, [-1]]
    assert x[dc.tensor([-1, 0])].tolist() == a[[-1, 0]].tolist()
    with pytest.raises(IndexError, match="index -4 is out of bounds for dimension 0 with size 3"):
        x[[-4]]
    with pytest.raises(IndexError, match="index -5 is out of bounds for dimension 1 with size 4"):
        x[:, dc.tensor([-5])]


def test_setitem_with_masks_and_index_tensors():
    a = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    x = dc.tensor(a)
    x[x < 0] = 0.0
    b = a.copy()
    b[b < 0] = 0.0
    np.testing.assert_array_equal(to_np(x), b)
    x[dc.tensor([0, 2])] = 7.0
    x[:, [1, -1]] = dc.tensor([1.0, 2.0])
    b[[0, 2]] = 7.0
    b[:, [1, -1]] = [1.0, 2.0]
    np.testing.assert_array_equal(to_np(x), b)
    y = dc.tensor(a).masked_fill_(dc.tensor(a > 0), -1.0)
    np.testing.assert_array_equal(to_np(y), np.where(a > 0, -1.0, a))
    with pytest.raises(NotImplementedError, match="require grad"):
        dc.zeros(3, requires_grad=True)[[0]] = 1.0


def test_sort_topk_and_friends_match_numpy():
    a = np.random.default_rng(1).normal(size=(4, 6))
    x = dc.tensor(a)
    v, i = dc.topk(x, 3, dim=-1)
    np.testing.assert_allclose(to_np(v), -np.sort(-a, -1)[:, :3])
    np.testing.assert_array_equal(np.take_along_axis(a, to_np(i), -1), to_np(v))
    np.testing.assert_allclose(to_np(x.topk(2, dim=0, largest=False).values), np.sort(a, 0)[:2])
    np.testing.assert_allclose(to_np(dc.sort(x, dim=0, descending=True).values), -np.sort(-a, 0))
    np.testing.assert_array_equal(to_np(x.argsort(-1)), np.argsort(a, -1, kind="stable"))
    np.testing.assert_allclose(to_np(x.flip(0, 1)), a[::-1, ::-1])
    np.testing.assert_allclose(to_np(x.cumsum(1)), a.cumsum(1), rtol=1e-12)
    assert dc.arange(5).cumsum(0).tolist() == [0, 1, 3, 6, 10]
    np.testing.assert_allclose(to_np(dc.logsumexp(x, dim=1)), np.log(np.exp(a).sum(1)), rtol=1e-12)
    np.testing.assert_allclose(to_np(x.norm(dim=-1)), np.linalg.norm(a, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(float(x.norm()), np.linalg.norm(a), rtol=1e-12)
    np.testing.assert_allclose(to_np(x.norm(1, dim=0)), np.abs(a).sum(0), rtol=1e-12)
    np.testing.assert_allclose(to_np(x.repeat(2, 1, 3)), np.tile(a, (2, 1, 3)))
    assert dc.eye(2, 3).tolist() == np.eye(2, 3).tolist()
    assert (dc.arange(7) // 2).tolist() == (np.arange(7) // 2).tolist()
    assert (dc.arange(7) % 3).tolist() == (np.arange(7) % 3).tolist()
    assert dc.arange(5).type_as(x).dtype == dc.float64
    assert dc.nonzero(dc.tensor([0, 3, 0, 1])).tolist() == [[1], [3]]
    small = np.array([1e-10, -1e-7, 0.5, 3.0])
    np.testing.assert_allclose(to_np(dc.tensor(small).log1p()), np.log1p(small), rtol=1e-14)
    np.testing.assert_allclose(to_np(dc.tensor(small).expm1()), np.expm1(small), rtol=1e-14)
    # gradients flow through the values of sort / topk / flip / cumsum / logsumexp / norm / repeat
    for f in (lambda t: t.topk(2).values, lambda t: t.sort(0).values, lambda t: t.flip(1),
              lambda t: t.cumsum(1), lambda t: t.logsumexp(0), lambda t: t.norm(dim=1), lambda t: t.repeat(1, 2)):
        assert gradcheck(f, (dc.tensor(a, requires_grad=True),))


def test_all_any_return_tensors_like_torch():
    x = dc.tensor([[1.0, 0.0], [2.0, 3.0]])
    assert isinstance(x.all(), dc.Tensor) and x.all().item() is False and x.any().item() is True
    assert x.all(dim=1).tolist() == [False, True] and dc.any(x == 0, dim=0).tolist() == [False, True]
    assert dc.isnan(dc.tensor([1.0, float("nan")])).tolist() == [False, True]
    assert dc.isinf(dc.tensor([1.0, float("-inf")])).tolist() == [False, True]
    assert dc.equal(x, x.clone()) and not dc.equal(x, x + 1)


def test_multinomial_and_generator():
    dc.manual_seed(0)
    assert dc.multinomial(dc.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]), 1).tolist() == [[1], [2]]
    draws = dc.multinomial(dc.tensor([0.2, 0.8]), 20000, replacement=True)
    assert abs(draws.float().mean().item() - 0.8) < 0.02
    assert sorted(dc.multinomial(dc.ones(5), 5).tolist()) == [0, 1, 2, 3, 4]
    # a Generator is a stream of its own: drawing from it leaves the global stream alone
    dc.manual_seed(3)
    a = dc.randn(4)
    g = dc.Generator().manual_seed(7)
    ga = dc.randn(4, generator=g)
    b = dc.randn(4)
    dc.manual_seed(3)
    assert dc.equal(dc.randn(4), a) and dc.equal(dc.randn(4), b)
    assert dc.equal(dc.randn(4, generator=dc.Generator().manual_seed(7)), ga)
    assert not dc.equal(dc.randn(4, generator=g), ga)
    from dutycycle.data import random_split

    s1 = [list(s) for s in random_split(range(10), [0.7, 0.3], generator=dc.Generator().manual_seed(42))]
    s2 = [list(s) for s in random_split(range(10), [0.7, 0.3], generator=dc.Generator().manual_seed(42))]
    assert s1 == s2 and sorted(s1[0] + s1[1]) == list(range(10))


def test_save_and_load_state_dicts(tmp_path):
    model = dc.nn.Sequential(dc.nn.Linear(3, 4), dc.nn.ReLU(), dc.nn.Linear(4, 2))
    opt = dc.optim.AdamW(model.parameters())
    model(dc.randn(2, 3)).sum().backward()
    opt.step()
    dc.save(model.state_dict(), tmp_path / "m.pt")
    dc.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 3}, str(tmp_path / "all.pt"))
    m2 = dc.nn.Sequential(dc.nn.Linear(3, 4), dc.nn.ReLU(), dc.nn.Linear(4, 2))
    m2.load_state_dict(dc.load(tmp_path / "m.pt", map_location="cpu"))
    x = dc.randn(5, 3)
    assert dc.equal(m2(x), model(x))
    ck = dc.load(tmp_path / "all.pt")
    assert ck["epoch"] == 3
    dc.optim.AdamW(m2.parameters()).load_state_dict(ck["opt"])
    dc.save(dc.arange(4), tmp_path / "t.pt")
    assert dc.load(tmp_path / "t.pt").tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="cannot store"):
        dc.save({"m": model}, tmp_path / "bad.pt")


# --- einsum, prod, roll, repeat_interleave, meshgrid, unique, in-place unary ops ------------------

EINSUM_CASES = [
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...i,...i->...", [(2, 3, 4), (3, 4)]),
    ("b...,b->...", [(2, 3, 4), (2,)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ijk,ikl->jl", [(2, 3, 4), (2, 4, 5)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ab,cd->abcd", [(2, 3), (4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("i,i", [(3,), (3,)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("iij->j", [(3, 3, 2)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES, ids=[c[0] for c in EINSUM_CASES])
def test_einsum_matches_numpy_and_gradchecks(eq, shapes, rng):
    arrs = [rng.standard_normal(s) for s in shapes]
    got = dc.einsum(eq, *[dc.tensor(a) for a in arrs]).numpy()
    ref = np.einsum(eq, *arrs)
    assert got.shape == np.shape(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    ts = [dc.tensor(a, requires_grad=True) for a in arrs]
    assert gradcheck(lambda *t: dc.einsum(eq, *t), ts)


def test_einsum_list_operands_float32_and_errors():
    a, b = dc.randn(2, 3), dc.randn(3, 4)
    np.testing.assert_allclose(dc.einsum("ij,jk->ik", [a, b]).numpy(), a.numpy() @ b.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="subscript 'j' has size"):
        dc.einsum("ij,jk->ik", a, dc.randn(4, 4))
    with pytest.raises(ValueError, match="names 2 operands"):
        dc.einsum("ij,jk->ik", a)
    with pytest.raises(ValueError, match="name 3 dims"):
        dc.einsum("ijk->i", a)
    with pytest.raises(ValueError, match="does not appear"):
        dc.einsum("ij->iz", a)


def test_prod_matches_numpy_with_zeros_and_gradchecks(rng):
    a = rng.standard_normal((3, 7))
    a[0, 2] = 0.0  # one zero in a row
    a[1, 1] = a[1, 5] = 0.0  # two zeros in a row
    x = dc.tensor(a)
    np.testing.assert_allclose(x.prod().numpy(), np.prod(a))
    for d in (0, 1, -1):
        np.testing.assert_allclose(x.prod(d).numpy(), np.prod(a, d), rtol=1e-12)
        assert x.prod(d, keepdim=True).shape == np.prod(a, d, keepdims=True).shape
        assert gradcheck(lambda t, d=d: t.prod(d), [dc.tensor(a, requires_grad=True)])
    assert gradcheck(lambda t: dc.prod(t), [dc.tensor(a[0], requires_grad=True)])
    # the gradient is exact at zeros: d/dx_i prod = product of the others
    v = dc.tensor([2.0, 0.0, 3.0, 5.0], dtype=dc.float64, requires_grad=True)
    v.prod().backward()
    np.testing.assert_array_equal(v.grad.numpy(), [0.0, 30.0, 0.0, 0.0])
    assert dc.arange(1, 6).prod().item() == 120
    assert dc.zeros(2, 0).prod(1).tolist() == [1.0, 1.0]


def test_roll_and_repeat_interleave_match_numpy():
    a = np.arange(24.0).reshape(2, 3, 4)
    x = dc.tensor(a)
    np.testing.assert_array_equal(x.roll(5).numpy(), np.roll(a, 5))
    np.testing.assert_array_equal(x.roll(-1, 2).numpy(), np.roll(a, -1, 2))
    np.testing.assert_array_equal(dc.roll(x, (1, -2), (0, 2)).numpy(), np.roll(a, (1, -2), (0, 2)))
    np.testing.assert_array_equal(x.repeat_interleave(3, 1).numpy(), np.repeat(a, 3, 1))
    np.testing.assert_array_equal(x.repeat_interleave(2).numpy(), np.repeat(a, 2))
    np.testing.assert_array_equal(dc.repeat_interleave(x, dc.tensor([0, 2, 1]), dim=1).numpy(),
                                  np.repeat(a, [0, 2, 1], 1))
    g = dc.tensor(a, requires_grad=True)
    assert gradcheck(lambda t: t.roll((1, 3), (1, 2)), [g])
    assert gradcheck(lambda t: t.repeat_interleave(2, dim=-1), [g])


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_meshgrid_matches_numpy(indexing):
    a, b, c = np.arange(3.0), np.arange(4.0) * 10, np.arange(2.0) * 100
    got = dc.meshgrid(dc.tensor(a), dc.tensor(b), dc.tensor(c), indexing=indexing)
    for g, r in zip(got, np.meshgrid(a, b, c, indexing=indexing)):
        np.testing.assert_array_equal(g.numpy(), r)
    got = dc.meshgrid([dc.tensor(a), dc.tensor(b)], indexing=indexing)
    for g, r in zip(got, np.meshgrid(a, b, indexing=indexing)):
        np.testing.assert_array_equal(g.numpy(), r)


def test_unique_matches_numpy():
    a = np.array([[3, 1, 2], [3, 7, 1]])
    vals, inv, counts = dc.tensor(a).unique(return_inverse=True, return_counts=True)
    rv, ri, rc = np.unique(a, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(vals.numpy(), rv)
    np.testing.assert_array_equal(inv.numpy(), ri.reshape(a.shape))
    np.testing.assert_array_equal(counts.numpy(), rc)
    assert inv.dtype == dc.int64 and vals.dtype == dc.int64
    np.testing.assert_array_equal(dc.unique(dc.tensor([2.5, 1.0, 2.5])).numpy(), [1.0, 2.5])
    with pytest.raises(NotImplementedError):
        dc.tensor(a).unique(dim=0)


INPLACE = [("exp_", np.exp), ("log_", np.log), ("sqrt_", np.sqrt), ("relu_", lambda v: np.maximum(v, 0)),
           ("sigmoid_", lambda v: 1 / (1 + np.exp(-v))), ("tanh_", np.tanh), ("neg_", np.negative),
           ("abs_", np.abs)]


@pytest.mark.parametrize("name,ref", INPLACE, ids=[n for n, _ in INPLACE])
def test_inplace_unary_ops(name, ref):
    a = np.array([0.5, 2.0, 3.0]) if name in ("log_", "sqrt_") else np.array([-1.5, 0.0, 2.0])
    x = dc.tensor(a)
    ptr = x.data_ptr()
    assert getattr(x, name)() is x and x.data_ptr() == ptr
    np.testing.assert_allclose(x.numpy(), ref(a), rtol=1e-6)
    w = dc.tensor(a, requires_grad=True)
    with pytest.raises(dc.AutogradError, match=name):
        getattr(w, name)()
    with dc.no_grad():
        getattr(w, name)()
    np.testing.assert_allclose(w.detach().numpy(), ref(a), rtol=1e-6)


def test_inplace_pow_clamp_and_version_check():
    x = dc.tensor([1.0, -2.0, 3.0])
    x.pow_(2)
    np.testing.assert_array_equal(x.numpy(), [1.0, 4.0, 9.0])
    x.clamp_(max=5.0)
    np.testing.assert_array_equal(x.numpy(), [1.0, 4.0, 5.0])
    # an in-place op on a tensor autograd saved is caught at backward time
    w = dc.ones(3, requires_grad=True)
    c = dc.ones(3)
    y = w * c
    c.exp_()
    with pytest.raises(dc.AutogradError, match="modified by an in-place"):
        y.sum().backward()


def test_register_hook_points_to_the_alternative():
    t = dc.randn(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="register_post_accumulate_grad_hook"):
        t.register_hook(lambda g: g)
