"""Shared fixtures for the tensor-engine tests (test_ops, test_autograd, test_tensor, test_errors,
test_interop): a seeded NumPy generator per test, dutycycle's own generator reseeded per test, and
helpers that build dutycycle tensors from NumPy arrays in a chosen memory layout (contiguous, a
transposed view, or a slice with a step) so every op is also run on non-contiguous inputs."""

import os
import zlib

import numpy as np
import pytest

import dutycycle as dc

# `make sanitize` runs these tests against an ASan build copied elsewhere: make sure that is the
# dutycycle being imported, not the editable install.
_EXPECT = os.environ.get("DUTYCYCLE_EXPECT_PATH")
if _EXPECT and os.path.realpath(os.path.dirname(dc.__file__)) != os.path.realpath(_EXPECT):
    raise RuntimeError(f"expected dutycycle from {_EXPECT}, imported {os.path.dirname(dc.__file__)}")

LAYOUTS = ("contig", "transpose", "step")

# Forward tolerances (rtol, atol) against a float64 NumPy reference computed from the same
# (already rounded) input values.
TOL = {
    "float32": (2e-5, 2e-6),
    "float64": (1e-11, 1e-13),
}


@pytest.fixture(autouse=True)
def _seed_dutycycle():
    """Every test starts from the same dutycycle RNG state (dropout, rand, randn)."""
    dc.manual_seed(1234)
    yield


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's id: reproducible, different for each test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def dc_dtype(name):
    return getattr(dc, name)


def make(a, dtype="float64", layout="contig", requires_grad=False):
    """A dutycycle tensor holding the values of NumPy array `a` (converted to `dtype`).

    layout "contig": an ordinary contiguous tensor. "transpose": .transpose(-1, -2) of a contiguous
    buffer holding the swapped array (1-D arrays fall back to "step"). "step": the values sit at
    every other element of a bigger buffer ([..., ::2]), the rest is garbage. The non-contiguous
    layouts are leaves too (requires_grad is set on the view itself) and are asserted to be
    non-contiguous whenever the shape allows it."""
    a = np.asarray(a)
    dt = dc_dtype(dtype)
    if layout == "transpose" and a.ndim < 2:
        layout = "step"
    if layout == "contig" or a.ndim == 0:
        t = dc.tensor(a, dtype=dt)
    elif layout == "transpose":
        buf = np.ascontiguousarray(np.swapaxes(a, -1, -2))
        t = dc.tensor(buf, dtype=dt).transpose(-1, -2)
    elif layout == "step":
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        buf[..., ::2] = a
        buf[..., 1::2] = 777  # garbage that must never be read
        t = dc.tensor(buf, dtype=dt)[..., ::2]
    else:
        raise ValueError(layout)
    if layout != "contig" and a.size > 1 and (layout == "step" or min(a.shape[-2:]) > 1):
        assert not t.is_contiguous(), (layout, a.shape, t.stride())
    assert t.shape == a.shape
    assert t.is_leaf
    if requires_grad:
        t.requires_grad_(True)
    return t


@pytest.fixture
def noncontig():
    """noncontig(a, dtype="float64", layout="transpose"|"step", requires_grad=False) -> a
    non-contiguous dutycycle view holding the values of NumPy array `a`."""

    def f(a, dtype="float64", layout="transpose", requires_grad=False):
        return make(a, dtype, layout, requires_grad)

    return f


def to_np(t):
    """A float64 NumPy copy of any tensor (bf16 goes through float32)."""
    t = t.detach()
    if t.dtype == dc.bfloat16:
        t = t.float()
    return np.array(t.numpy(), dtype=np.float64) if t.dtype.is_floating_point else np.array(t.numpy())


def rounded(a, dtype):
    """`a` rounded to dtype's precision, as float64: the exact input the op saw."""
    if dtype == "float32":
        return np.asarray(a, dtype=np.float32).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def assert_close(t, ref, dtype=None, rtol=None, atol=None):
    """Check a tensor against a float64 reference: dtype, shape, values."""
    dtype = dtype or t.dtype.name
    if dtype in TOL:
        r, a = TOL[dtype]
        rtol = r if rtol is None else rtol
        atol = a if atol is None else atol
    ref = np.asarray(ref)
    assert t.dtype.name == dtype, (t.dtype, dtype)
    assert t.shape == ref.shape, (t.shape, ref.shape)
    np.testing.assert_allclose(to_np(t), ref, rtol=rtol or 0, atol=atol or 0)
