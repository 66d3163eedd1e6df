"""nn/sampling.py: interpolate/Upsample, adaptive average pooling, pixel (un)shuffle, channel
dropout and group norm against NumPy references written here, literal PyTorch outputs for the
float32 rounding edge cases of the nearest modes (from torch 2.15, /work/venv-torch), autograd's
gradcheck, and the error messages.

With DUTYCYCLE_TORCH_PYTHON=/path/to/python (a Python with torch), test_matches_pytorch runs the
same random cases through torch.nn.functional in a subprocess and compares outputs and gradients.
"""

import json
import math
import os
import subprocess
import warnings

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.nn import sampling as S

TORCH_PYTHON = os.environ.get("DUTYCYCLE_TORCH_PYTHON")


def t(a, requires_grad=False):
    return dc.tensor(np.asarray(a), requires_grad=requires_grad)


def rand(rng, *shape, dtype="float64"):
    return rng.standard_normal(shape).astype(dtype)


# --- NumPy references (float64 loops straight from the definitions) -------------------------------

def ref_nearest_index(n_in, n_out, scale_factor=None, exact=False):
    s = 1.0 / scale_factor if scale_factor else n_in / n_out
    return [min(int(math.floor((d + 0.5) * s if exact else d * s)), n_in - 1) for d in range(n_out)]


def ref_linear_weights(n_in, n_out, align_corners, scale_factor=None):
    """(n_out, n_in) matrix: each output is (1 - lam) * x[i0] + lam * x[i0 + 1]."""
    w = np.zeros((n_out, n_in))
    for d in range(n_out):
        if align_corners:
            src = d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = 1.0 / scale_factor if scale_factor else n_in / n_out
            src = max((d + 0.5) * s - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        w[d, i0] += 1 - lam
        w[d, i1] += lam
    return w


def ref_adaptive(x, out_sizes):
    """Average over bins [floor(i*n/o), ceil((i+1)*n/o)) along the trailing len(out_sizes) dims."""
    k = len(out_sizes)
    in_sizes = x.shape[-k:]
    out = np.zeros(x.shape[:-k] + tuple(out_sizes))
    for idx in np.ndindex(*out_sizes):
        sl = tuple(slice(math.floor(i * n / o), math.ceil((i + 1) * n / o))
                   for i, n, o in zip(idx, in_sizes, out_sizes))
        out[(...,) + idx] = x[(...,) + sl].mean(axis=tuple(range(-k, 0)))
    return out


def ref_pixel_shuffle(x, r):
    *b, c, h, w = x.shape
    out = np.zeros((*b, c // (r * r), h * r, w * r))
    for ch in range(c // (r * r)):
        for i in range(r):
            for j in range(r):
                out[..., ch, i::r, j::r] = x[..., ch * r * r + i * r + j, :, :]
    return out


def ref_group_norm(x, g, weight=None, bias=None, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape(n, g, -1)
    y = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)).reshape(x.shape)
    aff = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(aff)
    if bias is not None:
        y = y + bias.reshape(aff)
    return y


# --- interpolate -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("n_in,n_out", [(4, 8), (5, 3), (3, 7), (7, 2), (4, 4), (1, 5), (6, 1)])
def test_nearest_size_matches_reference(mode, n_in, n_out):
    rng = np.random.default_rng(0)
    x = rand(rng, 2, 3, n_in, n_in + 1)
    y = S.interpolate(t(x), size=(n_out, n_out + 2), mode=mode).detach().numpy()
    ih = ref_nearest_index(n_in, n_out, exact=mode == "nearest-exact")
    iw = ref_nearest_index(n_in + 1, n_out + 2, exact=mode == "nearest-exact")
    np.testing.assert_array_equal(y, x[:, :, ih][:, :, :, iw])
    x1 = rand(rng, 2, 3, n_in)
    y1 = S.interpolate(t(x1), size=n_out, mode=mode).detach().numpy()
    np.testing.assert_array_equal(y1, x1[:, :, ih])


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("sf", [0.5, 2.0, 3.0, 2.5, 0.75])
def test_nearest_scale_factor_matches_reference(mode, sf):
    x = np.arange(2 * 8 * 6, dtype=np.float64).reshape(1, 2, 8, 6)
    y = S.interpolate(t(x), scale_factor=sf, mode=mode).detach().numpy()
    ho, wo = math.floor(8 * sf), math.floor(6 * sf)
    exact = mode == "nearest-exact"
    ref = x[:, :, ref_nearest_index(8, ho, sf, exact)][:, :, :, ref_nearest_index(6, wo, sf, exact)]
    np.testing.assert_array_equal(y, ref)


# torch 2.15's CPU outputs (source indices) where float32 rounding and the kernels' special cases
# part from the float64 definition: the 1-D kernel computes floor(i / 1.3) for 3 -> 3, the 2-D
# one (H_out + W_out <= 128) copies a dim whose size does not change and maps out == 2 * in to i >> 1.
TORCH_NEAREST_LITERALS = [
    ((1, 1, 3), dict(scale_factor=1.3, mode="nearest"), "float32", [0, 0, 1]),
    ((1, 1, 3, 1), dict(scale_factor=(1.3, 1.0), mode="nearest"), "float64", [0, 1, 2]),
    ((1, 1, 3, 100), dict(scale_factor=(1.3, 1.0), mode="nearest"), "float32", [0, 1, 2]),
    ((1, 1, 3, 100), dict(scale_factor=(1.3, 1.5), mode="nearest"), "float32", [0, 0, 1]),
    ((1, 1, 5, 1), dict(scale_factor=(2.05, 1.0), mode="nearest"), "float64", [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),
    ((1, 1, 5), dict(scale_factor=2.05, mode="nearest"), "float64", [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]),
    ((1, 1, 6), dict(size=37, mode="nearest-exact"), "float32",
     [0] * 6 + [1] * 6 + [2] * 7 + [3] * 6 + [4] * 6 + [5] * 6),
    ((1, 1, 6), dict(size=37, mode="nearest-exact"), "float64",
     [0] * 6 + [1] * 6 + [2] * 6 + [3] * 7 + [4] * 6 + [5] * 6),
    ((1, 1, 6, 1), dict(size=(37, 1), mode="nearest-exact"), "float64",
     [0] * 6 + [1] * 6 + [2] * 7 + [3] * 6 + [4] * 6 + [5] * 6),
    ((1, 1, 16), dict(scale_factor=1.3, mode="nearest-exact"), "float32",
     [0, 1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12, 13, 14, 15]),
]


@pytest.mark.parametrize("shape,kw,dtype,expected", TORCH_NEAREST_LITERALS)
def test_nearest_matches_torch_literals(shape, kw, dtype, expected):
    n = shape[2]
    x = np.broadcast_to(np.arange(n, dtype=dtype).reshape((1, 1, n) + (1,) * (len(shape) - 3)), shape).copy()
    y = S.interpolate(t(x), **kw).detach().numpy()
    got = y[0, 0] if len(shape) == 3 else y[0, 0, :, 0]
    assert got.astype(int).tolist() == expected


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n_in,n_out", [(4, 8), (5, 3), (3, 7), (7, 2), (1, 4), (4, 1), (6, 13)])
def test_linear_and_bilinear_match_reference(align_corners, n_in, n_out):
    rng = np.random.default_rng(1)
    x1 = rand(rng, 2, 3, n_in)
    y1 = S.interpolate(t(x1), size=n_out, mode="linear", align_corners=align_corners).detach().numpy()
    np.testing.assert_allclose(y1, x1 @ ref_linear_weights(n_in, n_out, align_corners).T, rtol=1e-12, atol=1e-12)
    x2 = rand(rng, 2, 3, n_in, n_in + 2)
    y2 = S.interpolate(t(x2), size=(n_out, n_out + 1), mode="bilinear", align_corners=align_corners).detach().numpy()
    ah = ref_linear_weights(n_in, n_out, align_corners)
    aw = ref_linear_weights(n_in + 2, n_out + 1, align_corners)
    np.testing.assert_allclose(y2, ah @ x2 @ aw.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sf,recompute", [(1.7, None), (1.7, True), (0.6, None), (2.0, False), (2.5, True)])
def test_bilinear_scale_factor_and_recompute(sf, recompute):
    rng = np.random.default_rng(2)
    x = rand(rng, 1, 2, 5, 7)
    y = S.interpolate(t(x), scale_factor=sf, mode="bilinear", recompute_scale_factor=recompute).detach().numpy()
    ho, wo = math.floor(5 * sf), math.floor(7 * sf)
    given = None if recompute else sf
    ref = ref_linear_weights(5, ho, False, given) @ x @ ref_linear_weights(7, wo, False, given).T
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_linear_float32_and_unchanged_dims():
    rng = np.random.default_rng(3)
    x = rand(rng, 2, 3, 5, 6, dtype="float32")
    y = S.interpolate(t(x), size=(9, 4), mode="bilinear")
    assert y.dtype == dc.float32
    ref = ref_linear_weights(5, 9, False) @ x.astype(np.float64) @ ref_linear_weights(6, 4, False).T
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    # a dim whose size does not change is copied (torch does so even with a scale_factor of 1.1: 5 -> 5)
    y = S.interpolate(t(x), scale_factor=(1.1, 2.0), mode="bilinear").detach().numpy()
    np.testing.assert_allclose(y, x @ ref_linear_weights(6, 12, False, 2.0).T.astype(np.float32), rtol=1e-6, atol=1e-6)
    same = S.interpolate(t(x), size=(5, 6), mode="bilinear")
    np.testing.assert_array_equal(same.detach().numpy(), x)


def test_interpolate_gradcheck():
    rng = np.random.default_rng(4)
    x4 = t(rand(rng, 1, 2, 3, 4), requires_grad=True)
    x3 = t(rand(rng, 2, 2, 5), requires_grad=True)
    cases = [
        (x4, dict(size=(5, 7), mode="nearest")),
        (x4, dict(scale_factor=0.5, mode="nearest-exact")),
        (x4, dict(size=(6, 3), mode="bilinear")),
        (x4, dict(size=(2, 7), mode="bilinear", align_corners=True)),
        (x3, dict(size=8, mode="linear")),
        (x3, dict(scale_factor=0.6, mode="linear", align_corners=True)),
        (x3, dict(scale_factor=2.0, mode="nearest")),
    ]
    for x, kw in cases:
        assert dc.autograd.gradcheck(lambda a, kw=kw: S.interpolate(a, **kw), [x]), kw


def test_interpolate_errors():
    x = dc.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="only one of size or scale_factor"):
        S.interpolate(x, size=2, scale_factor=2)
    with pytest.raises(ValueError, match="either size or scale_factor"):
        S.interpolate(x)
    with pytest.raises(ValueError, match="align_corners option can only be set"):
        S.interpolate(x, size=2, mode="nearest", align_corners=True)
    for mode in ("bicubic", "area", "trilinear"):
        with pytest.raises(NotImplementedError, match=f"mode='{mode}' is not in dutycycle yet"):
            S.interpolate(x, size=2, mode=mode)
    with pytest.raises(NotImplementedError, match="is not one of"):
        S.interpolate(x, size=2, mode="cubic")
    with pytest.raises(NotImplementedError, match="needs 4D input"):
        S.interpolate(dc.zeros(1, 2, 4), size=2, mode="bilinear")
    with pytest.raises(NotImplementedError, match="needs 3D input"):
        S.interpolate(x, size=2, mode="linear")
    with pytest.raises(NotImplementedError, match=r"input must be 3-D .* got 2-D"):
        S.interpolate(dc.zeros(2, 3), size=2)
    with pytest.raises(NotImplementedError, match="5-D input .* not in dutycycle yet"):
        S.interpolate(dc.zeros(1, 1, 2, 2, 2), size=2)
    with pytest.raises(ValueError, match="same number of spatial dimensions.*output size of"):
        S.interpolate(x, size=(2, 3, 4))
    with pytest.raises(ValueError, match="same number of spatial dimensions.*scale_factor of shape"):
        S.interpolate(x, scale_factor=(2.0,))
    with pytest.raises(TypeError, match="expected size to be one of int"):
        S.interpolate(x, size=(2.0, 3))
    with pytest.raises(ValueError, match="recompute_scale_factor is not meaningful"):
        S.interpolate(x, size=2, recompute_scale_factor=True)
    with pytest.raises(NotImplementedError, match="antialias=True is not in dutycycle yet"):
        S.interpolate(x, size=2, mode="bilinear", antialias=True)
    with pytest.raises(ValueError, match="anti-alias option is restricted"):
        S.interpolate(x, size=2, mode="nearest", antialias=True)
    with pytest.raises(RuntimeError, match=r"sizes should be greater than 0.*\(H: 4, W: 4\) output \(H: 0, W: 0\)"):
        S.interpolate(x, scale_factor=0.1)
    with pytest.raises(TypeError, match="floating point"):
        S.interpolate(dc.zeros(1, 1, 4, dtype=dc.int64), size=2, mode="linear")


def test_nearest_on_integers_and_identity_is_a_copy():
    x = dc.arange(6, dtype=dc.int64).view(1, 1, 2, 3)
    y = S.interpolate(x, scale_factor=2)
    assert y.detach().numpy()[0, 0].tolist() == [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2
    y = S.interpolate(x, size=(2, 3))
    assert y is not x and y.detach().numpy().tolist() == x.detach().numpy().tolist()


def test_upsample_modules():
    rng = np.random.default_rng(5)
    x = rand(rng, 1, 2, 3, 4)
    up = S.Upsample(scale_factor=2)
    assert repr(up) == "Upsample(scale_factor=2.0, mode='nearest')"
    np.testing.assert_array_equal(up(t(x)).detach().numpy(), x.repeat(2, axis=2).repeat(2, axis=3))
    assert repr(S.Upsample(size=(5, 6), mode="bilinear")) == "Upsample(size=(5, 6), mode='bilinear')"
    assert S.Upsample(scale_factor=(2, 3)).scale_factor == (2.0, 3.0)
    near = S.UpsamplingNearest2d(size=(6, 8))
    assert repr(near) == "UpsamplingNearest2d(size=(6, 8), mode='nearest')"
    np.testing.assert_array_equal(near(t(x)).detach().numpy(), up(t(x)).detach().numpy())
    bil = S.UpsamplingBilinear2d(scale_factor=2)
    assert repr(bil) == "UpsamplingBilinear2d(scale_factor=2.0, mode='bilinear')"
    assert bil.align_corners is True
    ref = ref_linear_weights(3, 6, True) @ x @ ref_linear_weights(4, 8, True).T
    np.testing.assert_allclose(bil(t(x)).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S.upsample_bilinear(t(x), scale_factor=2).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(S.upsample_nearest(t(x), scale_factor=2).detach().numpy(), up(t(x)).detach().numpy())
    lin = S.Upsample(size=7, mode="linear", align_corners=True)
    x1 = rand(rng, 2, 3, 4)
    np.testing.assert_allclose(lin(t(x1)).detach().numpy(), x1 @ ref_linear_weights(4, 7, True).T,
                               rtol=1e-12, atol=1e-12)


# --- adaptive average pooling ---------------------------------------------------------------------

@pytest.mark.parametrize("hw,out", [((7, 5), (3, 2)), ((4, 4), 2), ((5, 9), (None, 4)), ((3, 3), (5, 4)),
                                    ((6, 7), 1), ((6, 7), (6, 7)), ((5, 6), (1, 3))])
def test_adaptive_avg_pool2d_matches_reference(hw, out):
    rng = np.random.default_rng(6)
    x = rand(rng, 2, 3, *hw)
    o = (out, out) if isinstance(out, int) else tuple(n if s is None else s for n, s in zip(hw, out))
    y = S.adaptive_avg_pool2d(t(x), out)
    assert tuple(y.shape) == (2, 3) + o
    np.testing.assert_allclose(y.detach().numpy(), ref_adaptive(x, o), rtol=1e-12, atol=1e-12)
    y3 = S.adaptive_avg_pool2d(t(x[0]), out)  # (C, H, W)
    np.testing.assert_allclose(y3.detach().numpy(), ref_adaptive(x[0], o), rtol=1e-12, atol=1e-12)
    m = S.AdaptiveAvgPool2d(out)
    np.testing.assert_allclose(m(t(x)).detach().numpy(), y.detach().numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("n,out", [(7, 3), (4, 1), (5, 8), (6, 6), (10, 4)])
def test_adaptive_avg_pool1d_matches_reference(n, out):
    rng = np.random.default_rng(7)
    x = rand(rng, 2, 3, n)
    np.testing.assert_allclose(S.adaptive_avg_pool1d(t(x), out).detach().numpy(), ref_adaptive(x, (out,)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S.AdaptiveAvgPool1d((out,))(t(x[0])).detach().numpy(), ref_adaptive(x[0], (out,)),
                               rtol=1e-12, atol=1e-12)


def test_adaptive_pool_gradcheck_repr_and_errors():
    rng = np.random.default_rng(8)
    x = t(rand(rng, 1, 2, 5, 4), requires_grad=True)
    for out in ((3, 2), 1, (2, None)):
        assert dc.autograd.gradcheck(lambda a, out=out: S.adaptive_avg_pool2d(a, out), [x]), out
    x1 = t(rand(rng, 2, 2, 7), requires_grad=True)
    assert dc.autograd.gradcheck(lambda a: S.adaptive_avg_pool1d(a, 3), [x1])
    assert repr(S.AdaptiveAvgPool2d((None, 3))) == "AdaptiveAvgPool2d(output_size=(None, 3))"
    assert repr(S.AdaptiveAvgPool1d(3)) == "AdaptiveAvgPool1d(output_size=3)"
    with pytest.raises(RuntimeError, match=r"Expected 3D or 4D tensor, but got \[4\]"):
        S.adaptive_avg_pool2d(dc.zeros(4), 2)
    with pytest.raises(RuntimeError, match="output_size must be 2"):
        S.adaptive_avg_pool2d(dc.zeros(1, 2, 4, 4), (2, 2, 2))
    with pytest.raises(RuntimeError, match="non-zero size for non-batch dimensions.*dimension 2 being empty"):
        S.adaptive_avg_pool2d(dc.zeros(1, 2, 0, 4), 2)
    with pytest.raises(RuntimeError, match="greater than or equal to 0"):
        S.adaptive_avg_pool2d(dc.zeros(1, 2, 4, 4), -1)
    with pytest.raises(RuntimeError, match="expected 2 to 3 dimensions, but got 4-dimensional"):
        S.adaptive_avg_pool1d(dc.zeros(1, 2, 4, 4), 2)
    with pytest.raises(RuntimeError, match="should contain one int"):
        S.adaptive_avg_pool1d(dc.zeros(1, 2, 4), (2, 2))


# --- pixel shuffle ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,r", [((2, 8, 3, 4), 2), ((18, 2, 3), 3), ((2, 2, 4, 1, 2), 2), ((1, 3, 2, 2), 1)])
def test_pixel_shuffle_roundtrip_and_reference(shape, r):
    rng = np.random.default_rng(9)
    x = rand(rng, *shape)
    y = S.pixel_shuffle(t(x), r)
    np.testing.assert_array_equal(y.detach().numpy(), ref_pixel_shuffle(x, r))
    np.testing.assert_array_equal(S.pixel_unshuffle(y, r).detach().numpy(), x)
    np.testing.assert_array_equal(S.PixelUnshuffle(r)(S.PixelShuffle(r)(t(x))).detach().numpy(), x)


def test_pixel_shuffle_gradcheck_repr_and_errors():
    rng = np.random.default_rng(10)
    x = t(rand(rng, 1, 8, 2, 3), requires_grad=True)
    assert dc.autograd.gradcheck(lambda a: S.pixel_shuffle(a, 2), [x])
    x = t(rand(rng, 1, 2, 4, 6), requires_grad=True)
    assert dc.autograd.gradcheck(lambda a: S.pixel_unshuffle(a, 2), [x])
    assert repr(S.PixelShuffle(2)) == "PixelShuffle(upscale_factor=2)"
    assert repr(S.PixelUnshuffle(3)) == "PixelUnshuffle(downscale_factor=3)"
    with pytest.raises(RuntimeError, match="at least 3 dimensions, but got input with 2 dimension"):
        S.pixel_shuffle(dc.zeros(3, 4), 2)
    with pytest.raises(RuntimeError, match=r"input.size\(-3\)=6 is not divisible by 4"):
        S.pixel_shuffle(dc.zeros(1, 6, 2, 2), 2)
    with pytest.raises(RuntimeError, match="positive upscale_factor, but got 0"):
        S.pixel_shuffle(dc.zeros(1, 4, 2, 2), 0)
    with pytest.raises(RuntimeError, match=r"height to be divisible by downscale_factor, but input.size\(-2\)=3"):
        S.pixel_unshuffle(dc.zeros(1, 4, 3, 2), 2)
    with pytest.raises(RuntimeError, match=r"width to be divisible by downscale_factor, but input.size\(-1\)=3"):
        S.pixel_unshuffle(dc.zeros(1, 4, 2, 3), 2)
    with pytest.raises(RuntimeError, match="positive downscale_factor, but got 0"):
        S.pixel_unshuffle(dc.zeros(1, 4, 2, 2), 0)


# --- channel dropout --------------------------------------------------------------------------------

def _channels_kept(y, x, scale):
    """Each (n, c) slice of y is either all 0 or x * scale; returns the kept fraction."""
    n, c = y.shape[:2]
    ys, xs = y.reshape(n, c, -1), x.reshape(n, c, -1)
    zero = np.all(ys == 0, axis=-1)
    kept = np.all(np.isclose(ys, xs * scale, rtol=1e-12, atol=0), axis=-1)
    assert np.all(zero | kept)
    return kept.mean()


def test_dropout2d_zeroes_whole_channels():
    dc.manual_seed(0)
    rng = np.random.default_rng(11)
    x = rand(rng, 8, 64, 3, 4) + 5.0  # no zeros in x
    xt = t(x, requires_grad=True)
    y = S.dropout2d(xt, p=0.25)
    frac = _channels_kept(y.detach().numpy(), x, 1 / 0.75)
    assert 0.6 < frac < 0.9
    y.sum().backward()  # the gradient is the mask: 0 or 1/(1-p), per channel
    g = xt.grad.detach().numpy()
    assert set(np.unique(g).round(12)) <= {0.0, round(1 / 0.75, 12)}
    np.testing.assert_array_equal(g != 0, y.detach().numpy() != 0)
    m = S.Dropout2d(0.5)
    assert repr(m) == "Dropout2d(p=0.5, inplace=False)"
    _channels_kept(m(t(x)).detach().numpy(), x, 2.0)
    m.eval()
    np.testing.assert_array_equal(m(t(x)).detach().numpy(), x)
    np.testing.assert_array_equal(S.dropout2d(t(x), 0.0).detach().numpy(), x)
    np.testing.assert_array_equal(S.dropout2d(t(x), 1.0).detach().numpy(), np.zeros_like(x))
    np.testing.assert_array_equal(S.dropout2d(t(x), 0.7, training=False).detach().numpy(), x)


def test_dropout1d_and_inplace():
    dc.manual_seed(1)
    rng = np.random.default_rng(12)
    x = rand(rng, 4, 32, 6) + 5.0
    _channels_kept(S.dropout1d(t(x), 0.5).detach().numpy(), x, 2.0)
    x2 = rand(rng, 64, 5) + 5.0  # (C, L): one draw per channel
    y2 = S.Dropout1d(0.5)(t(x2)).detach().numpy()
    assert y2.shape == (64, 5)
    _channels_kept(y2[None], x2[None], 2.0)
    x2t = t(x2)
    assert S.dropout1d(x2t, 0.5, training=False) is x2t and S.dropout1d(x2t, 0.0) is x2t
    with dc.no_grad():
        assert S.dropout1d(x2t, 0.5, inplace=True) is x2t
    _channels_kept(x2t.detach().numpy()[None], x2[None], 2.0)
    xt = t(x)
    with dc.no_grad():
        out = S.dropout1d(xt, 0.5, inplace=True)
    assert out is xt
    _channels_kept(xt.detach().numpy(), x, 2.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _channels_kept(S.dropout2d(t(x), 0.5).detach().numpy(), x, 2.0)  # 3-D: (N, C, L), with torch's warning
    assert any("Received a 3D input to dropout2d" in str(i.message) for i in w)


def test_dropout_errors():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            S.dropout2d(dc.zeros(1, 2, 3, 3), bad)
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            S.Dropout1d(bad)
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
        S.dropout1d(dc.zeros(1, 2, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"):
            S.dropout2d(dc.zeros(3))


# --- group norm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,g", [((2, 6, 4, 3), 3), ((3, 4, 5), 2), ((2, 4), 4), ((2, 6, 2, 2), 1), ((1, 4, 3), 4)])
def test_group_norm_matches_reference(shape, g):
    rng = np.random.default_rng(13)
    x = rand(rng, *shape) * 3 + 1
    w, b = rand(rng, shape[1]), rand(rng, shape[1])
    np.testing.assert_allclose(S.group_norm(t(x), g).detach().numpy(), ref_group_norm(x, g), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(S.group_norm(t(x), g, t(w), t(b), eps=1e-3).detach().numpy(),
                               ref_group_norm(x, g, w, b, eps=1e-3), rtol=1e-9, atol=1e-9)
    m = S.GroupNorm(g, shape[1], dtype=dc.float64)
    np.testing.assert_allclose(m(t(x)).detach().numpy(), ref_group_norm(x, g), rtol=1e-9, atol=1e-9)


def test_group_norm_gradcheck():
    rng = np.random.default_rng(14)
    x = t(rand(rng, 2, 4, 3, 2), requires_grad=True)
    w = t(rand(rng, 4), requires_grad=True)
    b = t(rand(rng, 4), requires_grad=True)
    assert dc.autograd.gradcheck(lambda a, ww, bb: S.group_norm(a, 2, ww, bb), [x, w, b])
    assert dc.autograd.gradcheck(lambda a: S.group_norm(a, 4), [x])


def test_group_norm_module_and_errors():
    m = S.GroupNorm(2, 6)
    assert repr(m) == "GroupNorm(2, 6, eps=1e-05, affine=True, bias=True)"
    assert list(m.state_dict()) == ["weight", "bias"]
    np.testing.assert_array_equal(m.weight.detach().numpy(), np.ones(6))
    np.testing.assert_array_equal(m.bias.detach().numpy(), np.zeros(6))
    with dc.no_grad():
        m.weight.mul_(3.0)
    m.reset_parameters()
    np.testing.assert_array_equal(m.weight.detach().numpy(), np.ones(6))
    n = S.GroupNorm(1, 3, eps=1e-3, affine=False)
    assert repr(n) == "GroupNorm(1, 3, eps=0.001, affine=False, bias=False)"
    assert n.weight is None and n.bias is None and list(n.parameters()) == []
    nb = S.GroupNorm(3, 3, bias=False, dtype=dc.float64)
    assert nb.bias is None and nb.weight.dtype == dc.float64
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        S.GroupNorm(4, 6)
    msg = r"divisible by num_groups, but got input of shape \[2, 6, 3\] and num_groups=4"
    with pytest.raises(RuntimeError, match=msg):
        S.group_norm(dc.zeros(2, 6, 3), 4)
    with pytest.raises(RuntimeError, match="Expected at least 2 dimensions for input tensor but received 1"):
        S.group_norm(dc.zeros(3), 1)
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training, got input size \[1, 2\]"):
        S.group_norm(dc.zeros(1, 2), 2)
    with pytest.raises(RuntimeError, match=r"Expected weight to be a vector .* weight of shape \[4\]"):
        S.group_norm(dc.zeros(2, 6, 3), 2, weight=dc.ones(4))
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        S.group_norm(dc.zeros(2, 6, 3), 0)


def test_all_names_exist():
    for name in S.__all__:
        assert getattr(S, name) is not None


# --- the same cases through PyTorch (subprocess) ----------------------------------------------------

_TORCH_SCRIPT = r"""
import json, sys
import numpy as np
import torch
import torch.nn.functional as F
cases = json.load(open(sys.argv[1]))
data = dict(np.load(sys.argv[2]))
res = {}
for i, c in enumerate(cases):
    xs = [torch.tensor(data[f"{i}_in{k}"], requires_grad=True) for k in range(c["n_inputs"])]
    kw = dict(c["kwargs"])
    for k, name in enumerate(c["tensor_kwargs"]):
        kw[name] = xs[1 + k]
    y = getattr(F, c["fn"])(xs[0], *c["args"], **kw)
    y.backward(torch.tensor(data[f"{i}_gy"]))
    res[f"{i}_y"] = y.detach().numpy()
    for k, x in enumerate(xs):
        res[f"{i}_g{k}"] = x.grad.numpy()
    if c["fn"] == "interpolate" and c["kwargs"]["mode"].startswith("nearest"):
        # the adjoint of torch's own forward: its source index map, from an input holding flat indices
        code = torch.arange(xs[0].numel(), dtype=torch.float64).view(xs[0].shape)
        src = F.interpolate(code, **kw).long().view(-1).numpy()
        gy = data[f"{i}_gy"].astype(np.float64).reshape(-1)
        res[f"{i}_adjoint"] = np.bincount(src, weights=gy, minlength=xs[0].numel()).reshape(xs[0].shape)
np.savez(sys.argv[3], **res)
"""


def _torch_cases():
    """(fn, input shape, positional args, kwargs) for float64 and float32; kwargs' "tensor_kwargs"
    names per-channel tensor arguments (group_norm's weight and bias) drawn as extra inputs."""
    cases = []
    for dtype in ("float64", "float32"):
        def add(fn, shape, args, kw, dtype=dtype):
            kw = dict(kw)
            tk = kw.pop("tensor_kwargs", [])
            cases.append(dict(fn=fn, shape=list(shape), args=args, kwargs=kw, tensor_kwargs=tk, dtype=dtype))

        for n_in, n_out in ((5, 3), (3, 8), (7, 7), (6, 13), (2, 40)):
            for mode in ("nearest", "nearest-exact"):
                add("interpolate", (1, 2, n_in), [], dict(size=n_out, mode=mode))
                add("interpolate", (2, 2, n_in, n_in + 1), [], dict(size=(n_out, n_in), mode=mode))
                add("interpolate", (1, 2, n_in, 3), [], dict(size=(n_out, 130), mode=mode))  # generic kernel
            for ac in (False, True):
                add("interpolate", (2, 2, n_in), [], dict(size=n_out, mode="linear", align_corners=ac))
                add("interpolate", (1, 3, n_in, 4), [], dict(size=(n_out, 6), mode="bilinear", align_corners=ac))
                add("interpolate", (1, 1, n_in, 4), [], dict(size=(n_out, 125), mode="bilinear", align_corners=ac))
        for sf in (0.5, 1.3, 1.7, 2.0, 2.05, 3.3):
            for rc in (None, True):
                for mode in ("nearest", "nearest-exact", "bilinear"):
                    add("interpolate", (1, 2, 5, 7), [], dict(scale_factor=sf, mode=mode, recompute_scale_factor=rc))
                for mode in ("nearest", "nearest-exact", "linear"):
                    add("interpolate", (1, 2, 9), [], dict(scale_factor=sf, mode=mode, recompute_scale_factor=rc))
            add("interpolate", (1, 2, 5, 7), [], dict(scale_factor=(sf, 1.5), mode="bilinear", align_corners=True))
        for hw, out in (((7, 5), [3, 2]), ((4, 4), 1), ((5, 9), [None, 4]), ((3, 3), [5, 4]), ((6, 7), [6, 7])):
            add("adaptive_avg_pool2d", (2, 3) + hw, [out], {})
        for n, out in ((7, 3), (4, 1), (5, 8)):
            add("adaptive_avg_pool1d", (2, 3, n), [out], {})
        add("pixel_shuffle", (2, 8, 3, 4), [2], {})
        add("pixel_unshuffle", (2, 2, 6, 9), [3], {})
        for shape, g in (((2, 6, 4, 3), 3), ((3, 4, 5), 2), ((2, 8), 4)):
            add("group_norm", shape, [g], {"eps": 1e-4})
            add("group_norm", shape, [g], {"tensor_kwargs": ["weight", "bias"]})
    return cases


@pytest.mark.skipif(not TORCH_PYTHON, reason="set DUTYCYCLE_TORCH_PYTHON to a Python with torch")
def test_matches_pytorch(tmp_path):
    cases = _torch_cases()
    rng = np.random.default_rng(15)
    data, ours = {}, {}
    for i, c in enumerate(cases):
        shapes = [c["shape"]] + [[c["shape"][1]]] * len(c["tensor_kwargs"])
        xs = [rand(rng, *s, dtype=c["dtype"]) for s in shapes]
        c["n_inputs"] = len(xs)
        for k, x in enumerate(xs):
            data[f"{i}_in{k}"] = x
        ts = [t(x, requires_grad=True) for x in xs]
        kw = dict(c["kwargs"], **{name: ts[1 + k] for k, name in enumerate(c["tensor_kwargs"])})
        y = getattr(S, c["fn"])(ts[0], *c["args"], **kw)
        gy = rand(rng, *y.shape, dtype=c["dtype"])
        data[f"{i}_gy"] = gy
        y.backward(t(gy))
        ours[f"{i}_y"] = y.detach().numpy()
        for k, x in enumerate(ts):
            ours[f"{i}_g{k}"] = x.grad.detach().numpy()
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    np.savez(tmp_path / "in.npz", **data)
    (tmp_path / "ref.py").write_text(_TORCH_SCRIPT)
    proc = subprocess.run([TORCH_PYTHON, str(tmp_path / "ref.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    torch_inconsistent = []
    for i, c in enumerate(cases):
        exact_nearest = c["fn"] == "interpolate" and c["kwargs"]["mode"].startswith("nearest")
        tol = 1e-12 if c["dtype"] == "float64" else 2e-6
        for key in [k for k in ours if k.startswith(f"{i}_")]:
            a, b = ours[key], theirs[key]
            assert a.shape == b.shape, (c, key, a.shape, b.shape)
            if key.endswith("_y"):
                if exact_nearest:
                    np.testing.assert_array_equal(a, b, err_msg=f"{c} {key}")
                else:
                    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{c} {key}")
                continue
            scale = max(1.0, float(np.abs(b).max()))
            gtol = 1e-12 if c["dtype"] == "float64" else 1e-5
            if exact_nearest:
                adj = theirs[f"{i}_adjoint"]  # ours is always the adjoint of the (identical) forward
                np.testing.assert_allclose(a, adj, rtol=gtol, atol=gtol * scale, err_msg=f"{c} {key} adjoint")
                if not np.allclose(b, adj, rtol=gtol, atol=gtol * scale):
                    torch_inconsistent.append(c)
                    continue
            np.testing.assert_allclose(a, b, rtol=gtol, atol=gtol * scale, err_msg=f"{c} {key}")
    # torch's 1-D nearest backward maps out == 2 * in to i >> 1 (and out == in to i) while its forward
    # takes floor(i / scale_factor): its gradient is not its forward's adjoint there; ours is
    assert torch_inconsistent, "torch's 1-D nearest backward now matches its forward: tighten this test"
    for c in torch_inconsistent:
        n_in, sf = c["shape"][2], c["kwargs"].get("scale_factor")
        assert len(c["shape"]) == 3 and c["kwargs"]["mode"] == "nearest" and sf is not None, c
        assert not c["kwargs"].get("recompute_scale_factor") and math.floor(n_in * sf) in (n_in, 2 * n_in), c
