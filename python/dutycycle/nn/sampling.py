"""Resampling, pooling, pixel shuffling, channel dropout and group norm (torch.nn's spellings).

Every function is a composition of differentiable Tensor ops, so autograd gives the gradients:

- ``interpolate`` (nearest, nearest-exact, linear, bilinear) and ``Upsample``: nearest modes are
  ``index_select`` on the spatial dims; (bi)linear is separable matmuls ``A_h @ x @ A_w^T`` with
  small interpolation matrices (Ho, H) and (Wo, W) built on the host.
- ``adaptive_avg_pool1d/2d``: separable averaging matmuls (``mean`` for a 1x1 output).
- ``pixel_shuffle`` / ``pixel_unshuffle``: reshape and permute.
- ``dropout1d/2d``: whole channels zeroed by a (N, C, 1, ...) mask, the rest scaled by 1/(1-p).
- ``group_norm``: layer_norm (no affine) over x.view(N, G, -1), then the per-channel affine.

Source indices and weights follow PyTorch's CPU kernels exactly, float32 rounding included:
nearest takes src = floor(dst * scale), nearest-exact floor((dst + 0.5) * scale) (clamped to the
last index), with scale = in / out, or 1 / scale_factor when a scale_factor is given and
recompute_scale_factor is not True; (bi)linear uses the area-pixel source index
scale * (dst + 0.5) - 0.5, negative values clamped to 0 (align_corners=False), or
dst * (in - 1) / (out - 1) (align_corners=True). Tensors are NCHW (dutycycle has no channels-last).
Two places part from torch on purpose: torch's 1-D nearest *backward* maps out == 2 * in to i >> 1
(and out == in to i) where its forward takes floor(i / scale_factor), so its gradient is not its
forward's adjoint there (ours is, the forward being identical); and torch's bilinear kernel choice
on one thread with C == 3 changes float32 weights by an ulp (here: the H_out + W_out <= 128 rule).
"""

import functools
import math
import numbers
import warnings

import numpy as np

import dutycycle as dc

from .._missing import COVERAGE
from . import functional as F
from . import init
from .module import Module
from .modules import _factory
from .parameter import Parameter

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "Dropout1d",
    "Dropout2d",
    "GroupNorm",
    "PixelShuffle",
    "PixelUnshuffle",
    "Upsample",
    "UpsamplingBilinear2d",
    "UpsamplingNearest2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "dropout1d",
    "dropout2d",
    "group_norm",
    "interpolate",
    "pixel_shuffle",
    "pixel_unshuffle",
    "upsample",
    "upsample_bilinear",
    "upsample_nearest",
]

_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "lanczos", "area", "nearest-exact")
_NOT_YET_MODES = ("bicubic", "trilinear", "lanczos", "area")
_LOW_PRECISION = ("float16", "bfloat16")


# --- host-side index and weight tables (cached: they depend only on sizes, scales and dtype) --------

def _scale_value(ft, scale, in_size, out_size):
    """torch's compute_scales_value<ft>: 1 / scale when a positive scale is given, else in / out."""
    if scale is not None and scale > 0:
        return ft(1.0 / scale)
    return ft(ft(in_size) / ft(out_size))


@functools.lru_cache(maxsize=256)
def _nearest_indices(in_size, out_size, scale, exact, vectorized, double):
    """Source index per output index. torch's CPU kernels take one of two paths: the vectorized one
    (2-D output with H_out + W_out <= 128) computes the scale in float32 and maps out == in and
    out == 2 * in directly; the generic one computes the scale in the input's precision (float64
    for float64 input) and rounds the source coordinate to float32 before taking the floor."""
    dst = np.arange(out_size)
    if vectorized:
        if not exact and out_size == in_size:
            return dst
        if not exact and out_size == 2 * in_size:
            return dst >> 1
        s = _scale_value(np.float32, scale, in_size, out_size)
        if exact:
            src = ((dst + 0.5) * np.float64(s)).astype(np.float32)
        else:
            src = dst.astype(np.float32) * s
    else:
        ft = np.float64 if double else np.float32
        s = _scale_value(ft, scale, in_size, out_size)
        if exact:  # round(max(s * (dst + 0.5) - 0.5, 0)), the multiply-add fused
            src = (np.float64(s) * (dst + 0.5) - 0.5).astype(ft)
            src = (np.maximum(src, ft(0)).astype(np.float64) + 0.5).astype(np.float32)
        else:
            src = (s * dst.astype(ft)).astype(np.float32)
    return np.minimum(np.floor(src).astype(np.int64), in_size - 1)


@functools.lru_cache(maxsize=256)
def _linear_matrix(in_size, out_size, scale, align_corners, double, vectorized=False):
    """(out, in) matrix of torch's linear interpolation weights (two per row, summing to 1).
    float32 source coordinates are computed in float32 by the generic kernel, and in double then
    rounded by the vectorized one (2-D output with H_out + W_out <= 128)."""
    ft = np.float64 if double else np.float32
    if in_size == out_size:  # torch copies such a dim, whatever the scale_factor
        a = np.eye(in_size, dtype=ft)
        a.setflags(write=False)
        return a
    if align_corners:
        s = ft(ft(in_size - 1) / ft(out_size - 1)) if out_size > 1 else ft(0)
    else:
        s = _scale_value(ft, scale, in_size, out_size)
    a = np.zeros((out_size, in_size), dtype=ft)
    for i in range(out_size):
        if align_corners:
            real = ft(s * ft(i))
        else:
            if vectorized:
                real = ft(np.float64(s) * (i + 0.5) - 0.5)
            else:
                real = ft(s * ft(i + 0.5) - ft(0.5))
            real = max(real, ft(0))
        idx = min(int(math.floor(np.float32(real))), in_size - 1)
        lam = min(max(ft(real - ft(idx)), ft(0)), ft(1))
        off = 1 if idx < in_size - 1 else 0
        a[i, idx] += ft(1) - lam
        a[i, idx + off] += lam
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=256)
def _adaptive_matrix(in_size, out_size):
    """(out, in) averaging matrix over torch's adaptive bins [floor(i*in/out), ceil((i+1)*in/out))."""
    p = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = ((i + 1) * in_size + out_size - 1) // out_size
        p[i, start:end] = 1.0 / (end - start)
    p.setflags(write=False)
    return p


def _const(array, like, dtype=None):
    return dc.tensor(np.ascontiguousarray(array), dtype=like.dtype if dtype is None else dtype, device=like.device)


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# --- interpolate ---------------------------------------------------------------------------------

def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """torch.nn.functional.interpolate for 3-D (N, C, L: nearest, nearest-exact, linear) and 4-D
    (N, C, H, W: nearest, nearest-exact, bilinear) input. Pass exactly one of size (int or tuple)
    and scale_factor (float or tuple); see the module docstring for the index rules."""
    if not isinstance(input, dc.Tensor):
        raise TypeError(f"interpolate: input must be a Tensor, got {type(input).__name__}")
    if mode not in _MODES:
        raise NotImplementedError(f"interpolate: mode={mode!r} is not one of {' | '.join(_MODES)}")
    if mode in ("nearest", "area", "nearest-exact"):
        if align_corners is not None:
            raise ValueError("interpolate: align_corners option can only be set with the interpolating modes: "
                             f"linear | bilinear | bicubic | trilinear (got mode={mode!r})")
    elif align_corners is None:
        align_corners = False
    if mode in _NOT_YET_MODES:
        raise NotImplementedError(f"interpolate: mode={mode!r} is not in dutycycle yet (supported: nearest, "
                                  f"nearest-exact, linear, bilinear; what exists: {COVERAGE})")
    if input.dim() == 5:
        raise NotImplementedError("interpolate: 5-D input (N, C, D, H, W) is not in dutycycle yet (3-D and 4-D "
                                  f"input are supported; what exists: {COVERAGE})")
    if input.dim() not in (3, 4):
        raise NotImplementedError(f"interpolate: input must be 3-D (N, C, L) or 4-D (N, C, H, W), got {input.dim()}-D "
                                  f"input of shape {tuple(input.shape)}")
    dim = input.dim() - 2
    if mode == "linear" and dim != 1:
        raise NotImplementedError(f"interpolate: got {input.dim()}D input, but mode='linear' needs 3D input")
    if mode == "bilinear" and dim != 2:
        raise NotImplementedError(f"interpolate: got {input.dim()}D input, but mode='bilinear' needs 4D input")
    in_sizes = [int(s) for s in input.shape[2:]]

    if size is not None and scale_factor is not None:
        raise ValueError("interpolate: only one of size or scale_factor should be defined")
    if size is not None:
        scales = None
        if isinstance(size, (list, tuple)):
            if len(size) != dim:
                raise ValueError(
                    "interpolate: input and output must have the same number of spatial dimensions, but got input "
                    f"with spatial dimensions of {in_sizes} and output size of {size}. Please provide input tensor "
                    "in (N, C, d1, d2, ...,dK) format and output size in (o1, o2, ...,oK) format.")
            if not all(_is_int(s) for s in size):
                raise TypeError("interpolate: expected size to be one of int or Tuple[int] or Tuple[int, int], but "
                                f"got size with types {[type(s) for s in size]}")
            out_sizes = [int(s) for s in size]
        else:
            if not _is_int(size):
                raise TypeError(f"interpolate: expected size to be an int or a tuple of ints, got {type(size)}")
            out_sizes = [int(size)] * dim
    elif scale_factor is not None:
        if isinstance(scale_factor, (list, tuple)):
            if len(scale_factor) != dim:
                raise ValueError(
                    "interpolate: input and scale_factor must have the same number of spatial dimensions, but got "
                    f"input with spatial dimensions of {in_sizes} and scale_factor of shape {scale_factor}. Please "
                    "provide input tensor in (N, C, d1, d2, ...,dK) format and scale_factor in (s1, s2, ...,sK) "
                    "format.")
            scales = [float(s) for s in scale_factor]
        else:
            scales = [float(scale_factor)] * dim
        out_sizes = [math.floor(float(n) * s) for n, s in zip(in_sizes, scales)]
    else:
        raise ValueError("interpolate: either size or scale_factor should be defined")
    if recompute_scale_factor and size is not None:
        raise ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size.")
    if recompute_scale_factor:
        scales = None  # the kernels then use in / out, from the integer output size
    if antialias:
        if not (mode in ("bilinear", "bicubic", "lanczos") and input.dim() == 4):
            raise ValueError("interpolate: anti-alias option is restricted to bilinear, bicubic, and lanczos modes "
                             "and requires a 4-D tensor as input")
        raise NotImplementedError(f"interpolate: antialias=True is not in dutycycle yet (what exists: {COVERAGE})")
    if min(in_sizes) <= 0 or min(out_sizes) <= 0:
        names = ("L",) if dim == 1 else ("H", "W")
        desc = lambda sizes: ", ".join(f"{n}: {s}" for n, s in zip(names, sizes))
        raise RuntimeError(f"interpolate: input and output sizes should be greater than 0, but got input "
                           f"({desc(in_sizes)}) output ({desc(out_sizes)})")
    scales = [None] * dim if scales is None else scales

    if mode in ("nearest", "nearest-exact"):
        vectorized = dim == 2 and sum(out_sizes) <= 128
        double = input.dtype == dc.float64
        out = input
        for d, (n_in, n_out, s) in enumerate(zip(in_sizes, out_sizes, scales)):
            idx = _nearest_indices(n_in, n_out, s, mode == "nearest-exact", vectorized, double)
            if n_in == n_out and np.array_equal(idx, np.arange(n_out)):
                continue
            out = out.index_select(2 + d, _const(idx, input, dc.int64))
        return out.clone() if out is input else out

    if not input.dtype.is_floating_point:
        raise TypeError(f"interpolate: mode={mode!r} needs a floating point input, got {input.dtype}")
    low = input.dtype.name in _LOW_PRECISION
    x = input.float() if low else input
    double = x.dtype == dc.float64
    vectorized = dim == 2 and sum(out_sizes) <= 128
    mats = [None if n_in == n_out else
            _const(_linear_matrix(n_in, n_out, s, bool(align_corners), double, vectorized), x)
            for n_in, n_out, s in zip(in_sizes, out_sizes, scales)]  # None: torch copies that dim
    out = x  # along W first, then H: torch's order of the sums (h0 * (w0 x00 + w1 x01) + h1 * ...)
    if mats[-1] is not None:
        out = out @ mats[-1].t()
    if dim == 2 and mats[0] is not None:
        out = mats[0] @ out
    if out is input:
        return input.clone()
    return out.to(input.dtype) if low else out


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Deprecated torch alias of interpolate."""
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input, size=None, scale_factor=None):
    """Deprecated torch alias: interpolate(..., mode='nearest')."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input, size=None, scale_factor=None):
    """Deprecated torch alias: interpolate(..., mode='bilinear', align_corners=True)."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


class Upsample(Module):
    """Module form of interpolate (torch.nn.Upsample)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.name = type(self).__name__
        self.size = size
        if isinstance(scale_factor, tuple):
            self.scale_factor = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input):
        return interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                           recompute_scale_factor=self.recompute_scale_factor)

    def extra_repr(self):
        if self.scale_factor is not None:
            info = "scale_factor=" + repr(self.scale_factor)
        else:
            info = "size=" + repr(self.size)
        return info + ", mode=" + repr(self.mode)


class UpsamplingNearest2d(Upsample):
    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


# --- adaptive average pooling --------------------------------------------------------------------

def _check_nonempty(name, input, first):
    for d in range(first, input.dim()):
        if input.shape[d] == 0:
            raise RuntimeError(f"{name}(): Expected input to have non-zero size for non-batch dimensions, but input "
                               f"has sizes {list(input.shape)} with dimension {d} being empty")


def adaptive_avg_pool2d(input, output_size):
    """Average over torch's adaptive bins: input (N, C, H, W) or (C, H, W); output_size an int or
    an (Ho, Wo) pair whose None entries keep the input's size."""
    if input.dim() not in (3, 4):
        raise RuntimeError(f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got {list(input.shape)}")
    H, W = int(input.shape[-2]), int(input.shape[-1])
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 2:
            raise RuntimeError(f"adaptive_avg_pool2d: output_size must be 2, got {tuple(output_size)}")
        out = tuple(n if o is None else int(o) for n, o in zip((H, W), output_size))
    elif output_size is None:
        out = (H, W)
    else:
        out = (int(output_size), int(output_size))
    if out[0] < 0 or out[1] < 0:
        raise RuntimeError(f"adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but "
                           f"received {out}")
    _check_nonempty("adaptive_avg_pool2d", input, input.dim() - 3)
    if not input.dtype.is_floating_point:
        raise TypeError(f"adaptive_avg_pool2d: input must be floating point, got {input.dtype}")
    low = input.dtype.name in _LOW_PRECISION  # computed in float32, as torch's opmath
    x = input.float() if low else input
    if out == (1, 1):
        y = x.mean((-2, -1), keepdim=True)
    else:
        y = _const(_adaptive_matrix(H, out[0]), x) @ x @ _const(_adaptive_matrix(W, out[1]), x).t()
    return y.to(input.dtype) if low else y


def adaptive_avg_pool1d(input, output_size):
    """Average over torch's adaptive bins: input (N, C, L) or (C, L); output_size an int (or a 1-tuple)."""
    if input.dim() not in (2, 3):
        raise RuntimeError(f"adaptive_avg_pool1d: expected 2 to 3 dimensions, but got {input.dim()}-dimensional "
                           f"tensor of shape {list(input.shape)}")
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 1:
            raise RuntimeError(f"adaptive_avg_pool1d() argument 'output_size' should contain one int "
                               f"(got {len(output_size)})")
        output_size = output_size[0]
    L = int(input.shape[-1])
    out = L if output_size is None else int(output_size)
    if out < 0:
        raise RuntimeError(f"adaptive_avg_pool1d: output_size must be greater than or equal to 0 but received {out}")
    _check_nonempty("adaptive_avg_pool1d", input, input.dim() - 2)
    if not input.dtype.is_floating_point:
        raise TypeError(f"adaptive_avg_pool1d: input must be floating point, got {input.dtype}")
    low = input.dtype.name in _LOW_PRECISION
    x = input.float() if low else input
    y = x.mean(-1, keepdim=True) if out == 1 else x @ _const(_adaptive_matrix(L, out), x).t()
    return y.to(input.dtype) if low else y


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(AdaptiveAvgPool2d):
    def forward(self, input):
        return adaptive_avg_pool1d(input, self.output_size)


# --- pixel shuffle -------------------------------------------------------------------------------

def pixel_shuffle(input, upscale_factor):
    """(*, C * r**2, H, W) -> (*, C, H * r, W * r)."""
    r = int(upscale_factor)
    if input.dim() < 3:
        raise RuntimeError(f"pixel_shuffle expects input to have at least 3 dimensions, but got input with "
                           f"{input.dim()} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_shuffle expects a positive upscale_factor, but got {r}")
    *batch, c, h, w = (int(s) for s in input.shape)
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the square of "
                           f"upscale_factor, but input.size(-3)={c} is not divisible by {r * r}")
    nb = len(batch)
    x = input.reshape(*batch, c // (r * r), r, r, h, w)
    perm = list(range(nb)) + [nb, nb + 3, nb + 1, nb + 4, nb + 2]
    return x.permute(*perm).reshape(*batch, c // (r * r), h * r, w * r)


def pixel_unshuffle(input, downscale_factor):
    """(*, C, H * r, W * r) -> (*, C * r**2, H, W)."""
    r = int(downscale_factor)
    if input.dim() < 3:
        raise RuntimeError(f"pixel_unshuffle expects input to have at least 3 dimensions, but got input with "
                           f"{input.dim()} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_unshuffle expects a positive downscale_factor, but got {r}")
    *batch, c, h, w = (int(s) for s in input.shape)
    if h % r:
        raise RuntimeError(f"pixel_unshuffle expects height to be divisible by downscale_factor, but "
                           f"input.size(-2)={h} is not divisible by {r}")
    if w % r:
        raise RuntimeError(f"pixel_unshuffle expects width to be divisible by downscale_factor, but "
                           f"input.size(-1)={w} is not divisible by {r}")
    nb = len(batch)
    x = input.reshape(*batch, c, h // r, r, w // r, r)
    perm = list(range(nb)) + [nb, nb + 2, nb + 4, nb + 1, nb + 3]
    return x.permute(*perm).reshape(*batch, c * r * r, h // r, w // r)


class PixelShuffle(Module):
    def __init__(self, upscale_factor):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input):
        return pixel_shuffle(input, self.upscale_factor)

    def extra_repr(self):
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    def __init__(self, downscale_factor):
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, input):
        return pixel_unshuffle(input, self.downscale_factor)

    def extra_repr(self):
        return f"downscale_factor={self.downscale_factor}"


# --- channel dropout -----------------------------------------------------------------------------

def _check_p(p):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _feature_dropout(input, p, training, inplace):
    """torch's feature_dropout: one Bernoulli(1 - p) draw per (sample, channel), scaled by 1/(1-p)."""
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return F._maybe_inplace(input, input * 0.0, inplace)
    q = 1.0 - p
    shape = [int(input.shape[0]), int(input.shape[1])] + [1] * (input.dim() - 2)
    mask_dtype = dc.float64 if input.dtype == dc.float64 else dc.float32  # drawn in float32 for half types
    mask = (dc.rand(*shape, dtype=mask_dtype, device=input.device) < q).to(input.dtype) * (1.0 / q)
    return F._maybe_inplace(input, input * mask, inplace)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, H, W) input with probability p (3-D input is treated as (N, C, L),
    with torch's warning)."""
    _check_p(p)
    d = input.dim()
    if d not in (3, 4):
        warnings.warn(f"dropout2d: Received a {d}-D input to dropout2d, which is deprecated and will result in an "
                      "error in a future release. To retain the behavior and silence this warning, please use "
                      "dropout instead. Note that dropout2d exists to provide channel-wise dropout on inputs with 2 "
                      "spatial dimensions, a channel dimension, and an optional batch dimension (i.e. 3D or 4D "
                      "inputs).", stacklevel=2)
    if d == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "This behavior will change in a future release to interpret the input as one without a "
                      "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", stacklevel=2)
    return _feature_dropout(input, p, training, inplace)


def dropout1d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, L) or (C, L) input with probability p."""
    _check_p(p)
    d = input.dim()
    if d not in (2, 3):
        raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {d}D input. Note that dropout1d "
                           "exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel "
                           "dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
    if d == 3 or not training or p == 0.0:
        return _feature_dropout(input, p, training, inplace)
    out = _feature_dropout(input.unsqueeze(0), p, training, False).squeeze(0)  # (C, L): one draw per channel
    return F._maybe_inplace(input, out, inplace)


class _DropoutNd(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        _check_p(p)
        self.p, self.inplace = p, inplace

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(_DropoutNd):
    """Zeroes whole channels with probability p in training mode (torch.nn.Dropout2d)."""

    def forward(self, input):
        return dropout2d(input, self.p, self.training, self.inplace)


class Dropout1d(_DropoutNd):
    """Zeroes whole channels with probability p in training mode (torch.nn.Dropout1d)."""

    def forward(self, input):
        return dropout1d(input, self.p, self.training, self.inplace)


# --- group norm ----------------------------------------------------------------------------------

def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalise (N, C, *) input over groups of C // num_groups channels (and all spatial positions),
    then scale and shift each channel by weight[c], bias[c]."""
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    if not _is_int(num_groups) or num_groups <= 0:
        raise ValueError(f"group_norm: num_groups must be a positive int, got {num_groups!r}")
    shape = [int(s) for s in input.shape]
    N, C = shape[0], shape[1]
    size = [N * C // num_groups, num_groups] + shape[2:]
    if size[0] * math.prod(shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if C % num_groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input of "
                           f"shape {shape} and num_groups={num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != C):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of channels in input, "
                               f"but got {name} of shape {list(t.shape)} and input of shape {shape}")
    y = dc._C.layer_norm(input.reshape(N, num_groups, -1), None, None, eps).view(*shape)
    affine = [1, C] + [1] * (len(shape) - 2)
    if weight is not None:
        y = y * weight.view(*affine)
    if bias is not None:
        y = y + bias.view(*affine)
    return y


class GroupNorm(Module):
    """torch.nn.GroupNorm: weight (num_channels,) ones and bias (num_channels,) zeros when affine
    (bias=False, keyword-only as in torch, leaves the bias out)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        kw = _factory(device, dtype)
        self.weight = Parameter(dc.empty(num_channels, **kw)) if affine else None
        self.bias = Parameter(dc.empty(num_channels, **kw)) if affine and bias else None
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")
