"""The conv stack: convolutions, transposed convolutions, pooling and batch norm (issue 8).

Against NumPy loops (test_backend_ops's references) over the geometry space (stride, padding incl.
"same" on even kernels, dilation, groups, output_padding, ceil_mode, 1-D and unbatched inputs),
gradients by finite differences, torch's module semantics (init, buffers, state_dict, running
statistics, eval mode), and the errors bad arguments give. With DUTYCYCLE_TORCH_PYTHON set to a
Python that has torch, test_matches_pytorch runs tests/torch_scripts/conv_vs_torch.py there:
outputs, gradients and running statistics against torch's own, in float64.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from test_backend_ops import np_batch_norm, np_conv2d, np_conv_transpose2d, np_pool2d

import dutycycle as dc
import dutycycle.nn.functional as F
from dutycycle import nn

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_PYTHON = os.environ.get("DUTYCYCLE_TORCH_PYTHON")


def _t(a, grad=False):
    return dc.tensor(a).requires_grad_(grad)


CONV_CASES = [
    # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 8, 7), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2),
    ((2, 6, 5, 5), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((5, 8, 4, 4), (3, 8, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1: no im2col
    ((2, 2, 9, 9), (2, 2, 3, 3), (3, 3), (0, 0), (2, 2), 1),
    ((40, 3, 2, 2), (4, 3, 2, 2), (1, 1), (0, 0), (1, 1), 1),  # many samples share a GEMM
    ((1, 2, 4, 5), (3, 2, 4, 5), (1, 1), (0, 0), (1, 1), 1),  # kernel == input
]


@pytest.mark.parametrize("xs,ws,stride,pad,dil,groups", CONV_CASES)
def test_conv2d_matches_numpy_and_gradchecks(xs, ws, stride, pad, dil, groups):
    rng = np.random.default_rng(0)
    x, w, b = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws), rng.uniform(-1, 1, ws[0])
    got = F.conv2d(_t(x), _t(w), _t(b), stride, pad, dil, groups).numpy()
    np.testing.assert_allclose(got, np_conv2d(x, w, b, stride, pad, dil, groups), rtol=1e-10, atol=1e-12)
    f32 = F.conv2d(_t(x.astype(np.float32)), _t(w.astype(np.float32)), None, stride, pad, dil, groups)
    assert f32.dtype == dc.float32
    np.testing.assert_allclose(f32.numpy(), np_conv2d(x, w, None, stride, pad, dil, groups), rtol=1e-4, atol=1e-5)
    if np.prod(xs) <= 600:
        ins = [_t(x, True), _t(w, True), _t(b, True)]
        assert dc.autograd.gradcheck(lambda a, c, e: F.conv2d(a, c, e, stride, pad, dil, groups), ins)


TCONV_CASES = [
    # (x shape, w shape, stride, padding, output_padding, dilation, groups)
    ((2, 4, 3, 4), (4, 3, 3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 2),
    ((3, 5, 1, 1), (5, 4, 4, 4), (1, 1), (0, 0), (0, 0), (1, 1), 1),  # DCGAN's first layer
    ((2, 3, 4, 4), (3, 2, 4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1),
    ((2, 2, 3, 3), (2, 2, 3, 2), (2, 3), (0, 1), (1, 2), (2, 1), 1),
]


@pytest.mark.parametrize("xs,ws,stride,pad,opad,dil,groups", TCONV_CASES)
def test_conv_transpose2d_matches_numpy_and_gradchecks(xs, ws, stride, pad, opad, dil, groups):
    rng = np.random.default_rng(1)
    cout = ws[1] * groups
    x, w, b = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws), rng.uniform(-1, 1, cout)
    got = F.conv_transpose2d(_t(x), _t(w), _t(b), stride, pad, opad, groups, dil).numpy()
    want = np_conv_transpose2d(x, w, b, stride, pad, opad, dil, groups)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    ins = [_t(x, True), _t(w, True), _t(b, True)]
    assert dc.autograd.gradcheck(lambda a, c, e: F.conv_transpose2d(a, c, e, stride, pad, opad, groups, dil), ins)


def test_conv_transpose_is_the_adjoint_of_conv():
    """<conv(x), y> == <x, conv_transpose(y)> for the same weight: the defining identity."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    y = F.conv2d(_t(x), _t(w), None, 2, 1, 1, 2)
    r = rng.standard_normal(tuple(y.shape))
    back = F.conv_transpose2d(_t(r), _t(w), None, 2, 1, (0, 1), 2).numpy()
    assert back.shape == x.shape
    assert math.isclose(float((y.numpy() * r).sum()), float((x * back).sum()), rel_tol=1e-10)


def test_same_padding_even_kernel_pads_the_end_like_torch():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 4, 2))
    got = F.conv2d(_t(x), _t(w), padding="same")
    assert tuple(got.shape) == (2, 4, 6, 7)
    # total padding (k - 1) = 3 rows: 1 before, 2 after; 1 column: 0 before, 1 after
    np.testing.assert_allclose(got.numpy(), np_conv2d(x, w, pad=(1, 0), pad_end=(2, 1)), rtol=1e-10, atol=1e-12)
    assert tuple(F.conv2d(_t(x), _t(w), padding="valid").shape) == (2, 4, 3, 6)


def test_conv1d_and_unbatched_inputs():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 11)), rng.standard_normal((5, 3, 3)), rng.standard_normal(5)
    got = F.conv1d(_t(x), _t(w), _t(b), stride=2, padding=1, dilation=2)
    want = np_conv2d(x[:, :, None], w[:, :, None], b, (1, 2), (0, 1), (1, 2))[:, :, 0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    one = F.conv1d(_t(x[0]), _t(w), _t(b), stride=2, padding=1, dilation=2)
    np.testing.assert_allclose(one.numpy(), want[0], rtol=1e-10, atol=1e-12)
    x2 = rng.standard_normal((3, 6, 6))
    w2 = rng.standard_normal((2, 3, 3, 3))
    np.testing.assert_allclose(F.conv2d(_t(x2), _t(w2), padding=1).numpy(), np_conv2d(x2[None], w2, pad=(1, 1))[0],
                               rtol=1e-10, atol=1e-12)
    xt = rng.standard_normal((2, 4, 5))
    wt = rng.standard_normal((4, 3, 3))
    got = F.conv_transpose1d(_t(xt), _t(wt), None, 2, 1, 1)
    want = np_conv_transpose2d(xt[:, :, None], wt[:, :, None], None, (1, 2), (0, 1), (0, 1))[:, :, 0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)),
]


@pytest.mark.parametrize("kw", POOL_CASES)
def test_pools_match_numpy_and_gradcheck(kw):
    rng = np.random.default_rng(5)
    x = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8) / 7.0  # distinct values: max has one argmax
    k = kw["kernel_size"] if isinstance(kw["kernel_size"], tuple) else (kw["kernel_size"],) * 2
    s = kw.get("stride", k)
    s = s if isinstance(s, tuple) else (s, s)
    p = kw.get("padding", 0)
    p = p if isinstance(p, tuple) else (p, p)
    cm = kw.get("ceil_mode", False)
    np.testing.assert_allclose(F.max_pool2d(_t(x), **kw).numpy(), np_pool2d(x, k, s, p, "max", ceil_mode=cm))
    for cip in (True, False):
        got = F.avg_pool2d(_t(x), **kw, count_include_pad=cip).numpy()
        np.testing.assert_allclose(got, np_pool2d(x, k, s, p, "avg", ceil_mode=cm, count_include_pad=cip),
                                   rtol=1e-12)
    small = _t(x[:1, :2, :5, :5], True)
    assert dc.autograd.gradcheck(lambda a: F.max_pool2d(a, **kw), [small])
    assert dc.autograd.gradcheck(lambda a: F.avg_pool2d(a, **kw, count_include_pad=False), [small])


def test_max_pool_dilation_indices_and_nan():
    rng = np.random.default_rng(6)
    x = rng.permutation(2 * 2 * 7 * 7).reshape(2, 2, 7, 7).astype(np.float64)
    y, idx = F.max_pool2d(_t(x), 3, 2, 1, dilation=2, return_indices=True)
    np.testing.assert_array_equal(y.numpy(), np_pool2d(x, (3, 3), (2, 2), (1, 1), "max", dilation=(2, 2)))
    assert idx.dtype == dc.int64
    flat = x.reshape(2, 2, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, idx.numpy().reshape(2, 2, -1), 2).reshape(y.shape),
                                  y.numpy())
    x[0, 0, 0, 0] = np.nan  # a NaN in the window wins, as in torch
    y = F.max_pool2d(_t(x), 2).numpy()
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 0, 1])


def test_avg_pool_divisor_override_and_1d():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    got = F.avg_pool2d(_t(x), 2, divisor_override=3).numpy()
    np.testing.assert_allclose(got, np_pool2d(x, (2, 2), (2, 2), (0, 0), "avg") * 4 / 3)
    x1 = np.arange(10.0).reshape(1, 1, 10)
    np.testing.assert_allclose(F.avg_pool1d(_t(x1), 3, 2, 1).numpy()[0, 0], [1 / 3, 2, 4, 6, 8])
    np.testing.assert_array_equal(F.max_pool1d(_t(x1), 4).numpy()[0, 0], [3, 7])


def test_batch_norm_functional_training_and_eval():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 3, 5)) * 3 + 1
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    rm, rv = dc.zeros(4, dtype=dc.float64), dc.ones(4, dtype=dc.float64)
    y = F.batch_norm(_t(x), rm, rv, _t(w), _t(b), training=True, momentum=0.25)
    np.testing.assert_allclose(y.numpy(), np_batch_norm(x, w, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rm.numpy(), 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    e = F.batch_norm(_t(x), rm, rv, _t(w), _t(b), training=False).numpy()
    want = (x - rm.numpy()[:, None, None]) / np.sqrt(rv.numpy()[:, None, None] + 1e-5) * w[:, None, None]
    np.testing.assert_allclose(e, want + b[:, None, None], rtol=1e-10, atol=1e-12)
    ins = [_t(x[:3, :, :2, :2], True), _t(w, True), _t(b, True)]
    assert dc.autograd.gradcheck(lambda a, c, d: F.batch_norm(a, rm, rv, c, d, False), ins)
    ins2 = [_t(rng.standard_normal((5, 3)), True)]
    assert dc.autograd.gradcheck(lambda a: F.batch_norm(a, None, None, training=True), ins2)


def test_conv_modules_init_like_torch():
    dc.manual_seed(0)
    m = nn.Conv2d(8, 16, 3, padding=1)
    assert tuple(m.weight.shape) == (16, 8, 3, 3) and tuple(m.bias.shape) == (16,)
    bound = 1 / math.sqrt(8 * 9)  # kaiming_uniform(a=sqrt(5)) on fan_in = in/groups * kH * kW
    assert float(m.weight.abs().max()) <= bound and float(m.weight.abs().max()) > 0.9 * bound
    assert float(m.bias.abs().max()) <= bound
    t = nn.ConvTranspose2d(8, 4, 4, 2, 1, groups=2)
    assert tuple(t.weight.shape) == (8, 2, 4, 4)
    tb = 1 / math.sqrt(2 * 16)  # torch computes fan_in from dim 1 of the stored weight
    assert float(t.weight.abs().max()) <= tb and float(t.bias.abs().max()) <= tb
    assert list(m.state_dict()) == ["weight", "bias"]
    assert nn.Conv1d(3, 6, 5, groups=3, bias=False).bias is None
    assert repr(nn.Conv2d(3, 8, 3, stride=2, padding="same" if False else 1, bias=False)) == (
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)")


def test_conv_module_padding_modes_match_explicit_pad():
    rng = np.random.default_rng(8)
    x = _t(rng.standard_normal((2, 3, 6, 5)).astype(np.float32))
    for mode in ("reflect", "replicate", "circular"):
        m = nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode=mode)
        want = F.conv2d(F.pad(x, (2, 2, 1, 1), mode=mode), m.weight, m.bias)
        np.testing.assert_allclose(m(x).detach().numpy(), want.detach().numpy(), rtol=1e-6, atol=1e-6)
    xp = F.pad(_t(np.arange(5.0).reshape(1, 1, 5)), (2, 3), mode="reflect").numpy()[0, 0]
    np.testing.assert_array_equal(xp, [2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    xp = F.pad(_t(np.arange(3.0).reshape(1, 1, 3)), (1, 2), mode="circular").numpy()[0, 0]
    np.testing.assert_array_equal(xp, [2, 0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="reflect"):
        F.pad(_t(np.zeros((1, 1, 3))), (3, 0), mode="reflect")


def test_conv_transpose_output_size():
    m = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    x = dc.randn(1, 3, 5, 5)
    assert tuple(m(x).shape) == (1, 2, 9, 9)
    assert tuple(m(x, output_size=(10, 10)).shape) == (1, 2, 10, 10)
    assert tuple(m(x, output_size=[1, 2, 10, 9]).shape) == (1, 2, 10, 9)
    with pytest.raises(ValueError, match="valid sizes range from 9 to 10"):
        m(x, output_size=(11, 11))


def test_batchnorm_modules_like_torch():
    rng = np.random.default_rng(9)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert bn.num_batches_tracked.dtype == dc.int64
    x = (rng.standard_normal((4, 3, 5, 5)) + 2).astype(np.float32)
    y = bn(_t(x))
    np.testing.assert_allclose(y.detach().numpy(), np_batch_norm(x, np.ones(3), np.zeros(3)), rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.2 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    bn.eval()
    before = bn.running_mean.numpy().copy()
    bn(_t(x))
    np.testing.assert_array_equal(bn.running_mean.numpy(), before)  # eval: no update
    assert int(bn.num_batches_tracked) == 1
    # momentum=None: cumulative moving average (1/num_batches_tracked)
    cma = nn.BatchNorm1d(2, momentum=None)
    xs = [(rng.standard_normal((6, 2)) + k).astype(np.float32) for k in range(3)]
    for a in xs:
        cma(_t(a))
    np.testing.assert_allclose(cma.running_mean.numpy(), np.mean([a.mean(0) for a in xs], axis=0), rtol=1e-5)
    # without running statistics, eval mode still normalises with the batch's
    nr = nn.BatchNorm1d(2, affine=False, track_running_stats=False).eval()
    assert nr.running_mean is None and nr.weight is None
    np.testing.assert_allclose(nr(_t(xs[0])).numpy(), np_batch_norm(xs[0], np.ones(2), np.zeros(2)), rtol=1e-5,
                               atol=1e-6)
    # a torch-style checkpoint round-trips (names and the int64 counter)
    sd = bn.state_dict()
    bn2 = nn.BatchNorm2d(3)
    bn2.load_state_dict(sd)
    np.testing.assert_array_equal(bn2.running_var.numpy(), bn.running_var.numpy())
    assert int(bn2.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(dc.randn(3, 4))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        nn.BatchNorm1d(3)(dc.randn(2, 3, 4, 5))


def test_bn_trains_a_small_cnn():
    """Conv + BatchNorm + pool + Linear learns a separable image task (loss falls)."""
    dc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AvgPool2d(4), nn.Flatten(), nn.Linear(8, 2))
    opt = dc.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    x[y == 1, :, :4] += 1.5  # class 1: bright top half
    xt, yt = dc.tensor(x), dc.tensor(y)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    acc = float((model(xt).argmax(1) == yt).float().mean())
    assert acc > 0.95


ERRORS = [
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 2, 3, 3)), "expected input .* to have 2 channels"),
    (lambda: F.conv2d(dc.randn(1, 4, 8, 8), dc.randn(6, 2, 3, 3), groups=3), "expected input .* to have 6 channels"),
    (lambda: F.conv2d(dc.randn(1, 3, 2, 2), dc.randn(4, 3, 3, 3)), "Kernel size can't be greater"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3, 3), stride=2, padding="same"),
     "not supported for strided"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3, 3), dc.randn(5)), r"bias has shape \(5,\)"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3, 3, dtype=dc.float64)), "weight has dtype float64"),
    (lambda: F.conv2d(dc.randn(3, 8), dc.randn(4, 3, 3, 3)), "expected a 4-D input"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3)), "expected a 4-D weight"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3, 3), stride=0), "stride must be positive"),
    (lambda: F.conv2d(dc.randn(1, 3, 8, 8), dc.randn(4, 3, 3, 3), padding=-1), "negative padding"),
    (lambda: F.conv2d(dc.randint(0, 3, (1, 3, 8, 8)), dc.randn(4, 3, 3, 3)), "floating-point"),
    (lambda: F.conv_transpose2d(dc.randn(1, 3, 4, 4), dc.randn(4, 2, 3, 3)), "expected input .* to have 4 channels"),
    (lambda: F.conv_transpose2d(dc.randn(1, 3, 4, 4), dc.randn(3, 2, 3, 3), stride=2, output_padding=2),
     "output padding must be smaller"),
    (lambda: F.max_pool2d(dc.randn(1, 1, 4, 4), 2, padding=2), "pad should be at most half"),
    (lambda: F.max_pool2d(dc.randn(1, 1, 2, 2), 3), "Output size is too small"),
    (lambda: F.avg_pool2d(dc.randn(1, 1, 4, 4), 2, divisor_override=0), "divisor_override must be positive"),
    (lambda: F.max_pool2d(dc.randn(1, 4, 4), 0), "must be positive"),
    (lambda: F.batch_norm(dc.randn(1, 3), None, None, training=True), "more than 1 value per channel"),
    (lambda: F.batch_norm(dc.randn(4, 3), dc.zeros(3), dc.ones(3), dc.ones(4)), "weight should contain 3 elements"),
    (lambda: F.batch_norm(dc.randn(4, 3), None, None, training=False), "must be defined in evaluation mode"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), "out_channels .* must be divisible by groups"),
    (lambda: nn.Conv2d(3, 6, 3, padding="half"), "invalid padding string"),
    (lambda: nn.Conv2d(3, 6, 3, padding_mode="mirror"), "padding_mode must be one of"),
]


@pytest.mark.parametrize("call,match", ERRORS, ids=[m for _, m in ERRORS])
def test_errors_name_what_is_wrong(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError, IndexError)) as ei:
        call()
    assert __import__("re").search(match, str(ei.value)), str(ei.value)


def test_bad_geometries_raise_in_a_subprocess_never_crash():
    """Degenerate shapes and arguments through the C kernels: each raises or returns, none crashes."""
    code = r"""
import dutycycle as dc, dutycycle.nn.functional as F
calls = [
    lambda: F.conv2d(dc.randn(0, 3, 5, 5), dc.randn(4, 3, 3, 3)),
    lambda: F.conv2d(dc.randn(2, 0, 5, 5), dc.randn(4, 0, 3, 3)),
    lambda: F.conv2d(dc.randn(2, 3, 5, 5), dc.randn(0, 3, 3, 3)),
    lambda: F.conv_transpose2d(dc.randn(0, 3, 2, 2), dc.randn(3, 2, 3, 3)),
    lambda: F.conv2d(dc.randn(1, 3, 5, 5), dc.randn(4, 3, 3, 3), stride=10**12),
    lambda: F.conv2d(dc.randn(1, 3, 5, 5), dc.randn(4, 3, 1, 1), dilation=10**6),
    lambda: F.max_pool2d(dc.randn(0, 2, 4, 4), 2),
    lambda: F.max_pool2d(dc.randn(1, 2, 4, 4), 2, stride=10**12),
    lambda: F.avg_pool2d(dc.randn(1, 2, 4, 4), 2, padding=1, ceil_mode=True),
    lambda: F.batch_norm(dc.randn(4, 0, 3), None, None, training=True),
    lambda: F.conv2d(dc.randn(1, 3, 5, 5).t() if False else dc.randn(1, 3, 5, 5)[:, :, ::2, ::2], dc.randn(2, 3, 2, 2)),
    lambda: F.conv2d(dc.randn(2, 3, 6, 6).permute(0, 1, 3, 2), dc.randn(4, 3, 3, 3).transpose(2, 3)),
]
for k, c in enumerate(calls):
    try:
        r = c()
        print(k, "ok", tuple(r.shape))
    except Exception as e:
        print(k, type(e).__name__, str(e)[:80])
print("done")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("done"), r.stdout
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines()[:-1])
    assert lines["0"].startswith("ok (0, 4, 3, 3)")
    assert lines["4"].startswith("ok (1, 4, 1, 1)")
    assert lines["5"].startswith("ok (1, 4, 5, 5)")  # a 1x1 kernel spans one pixel at any dilation


def test_strided_views_equal_contiguous_copies():
    rng = np.random.default_rng(10)
    x = _t(rng.standard_normal((2, 3, 6, 7))).permute(0, 1, 3, 2)  # not contiguous
    w = _t(rng.standard_normal((4, 3, 3, 2))).transpose(2, 3)
    got = F.conv2d(x, w, padding=1).numpy()
    np.testing.assert_allclose(got, F.conv2d(x.contiguous(), w.contiguous(), padding=1).numpy(), rtol=1e-12)


@pytest.mark.skipif(not TORCH_PYTHON, reason="set DUTYCYCLE_TORCH_PYTHON to a Python with torch")
def test_matches_pytorch():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(HERE, "..", "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([TORCH_PYTHON, os.path.join(HERE, "torch_scripts", "conv_vs_torch.py")], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "BAD" not in r.stdout, r.stdout
