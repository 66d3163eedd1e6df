"""The conv stack of nn.functional: convolutions, transposed convolutions, pooling and batch norm.

The engine's kernels are 2-D and NCHW (csrc/core/ops_conv.c); 1-D versions run them on an
(N, C, 1, L) view, and unbatched inputs (C, H, W) get a batch dim of one, as in torch. This module
only normalises arguments (ints or pairs, "same"/"valid" padding, padding modes) with torch's rules
and messages; every check of shapes and dtypes happens in C.
"""

import operator

import dutycycle as dc

__all__ = [
    "avg_pool1d",
    "avg_pool2d",
    "batch_norm",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "max_pool1d",
    "max_pool2d",
]


def _tuple(v, n, name, fn):
    out = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    if len(out) == 1:
        out = out * n
    if len(out) != n:
        raise ValueError(f"{fn}: {name} must be an int or a {n}-tuple, got {v!r}")
    try:
        return tuple(operator.index(x) for x in out)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an int or a tuple of ints, got {v!r}") from None


def _batched(input, dims, fn):
    """(input with a batch dim, whether one was added) for an op on `dims` spatial dims."""
    if not isinstance(input, dc.Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() == dims + 2:
        return input, False
    if input.dim() == dims + 1:
        return input.unsqueeze(0), True
    want = ("(N, C, L)", "(C, L)") if dims == 1 else ("(N, C, H, W)", "(C, H, W)")
    raise ValueError(f"{fn}: expected a {dims + 2}-D input {want[0]} or a {dims + 1}-D unbatched input "
                     f"{want[1]}, got shape {tuple(input.shape)}")


def _conv_padding(padding, weight, dilation, stride, n, fn):
    """(pad before, pad after) per spatial dim, torch's "same" rule: the extra pixel goes at the end."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * n, (0,) * n
        if padding != "same":
            raise ValueError(f"{fn}: invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        if any(s != 1 for s in stride):
            raise ValueError(f"{fn}: padding='same' is not supported for strided convolutions")
        k = tuple(weight.shape[2:])
        total = [d * (kk - 1) for d, kk in zip(dilation, k)]
        lo = tuple(t // 2 for t in total)
        return lo, tuple(t - lo_ for t, lo_ in zip(total, lo))
    p = _tuple(padding, n, "padding", fn)
    return p, p


def _conv(input, weight, bias, stride, padding, dilation, groups, dims, fn):
    stride = _tuple(stride, dims, "stride", fn)
    dilation = _tuple(dilation, dims, "dilation", fn)
    x, added = _batched(input, dims, fn)
    if weight.dim() != dims + 2:
        raise ValueError(f"{fn}: expected a {dims + 2}-D weight (out_channels, in_channels / groups, "
                         f"{'kL' if dims == 1 else 'kH, kW'}), got shape {tuple(weight.shape)}")
    lo, hi = _conv_padding(padding, weight, dilation, stride, dims, fn)
    if dims == 1:
        x, w = x.unsqueeze(2), weight.unsqueeze(2)
        stride, dilation, lo, hi = (1, *stride), (1, *dilation), (0, *lo), (0, *hi)
    else:
        w = weight
    y = dc._C.conv2d(x, w, bias, stride, lo, hi, dilation, int(groups))
    if dims == 1:
        y = y.squeeze(2)
    return y.squeeze(0) if added else y


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) of (N, C, H, W) input, as torch.nn.functional.conv2d.
    padding: int, pair, 'valid' or 'same' (stride 1)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution of (N, C, L) input, as torch.nn.functional.conv1d."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def _conv_t(input, weight, bias, stride, padding, output_padding, groups, dilation, dims, fn):
    stride = _tuple(stride, dims, "stride", fn)
    padding = _tuple(padding, dims, "padding", fn)
    output_padding = _tuple(output_padding, dims, "output_padding", fn)
    dilation = _tuple(dilation, dims, "dilation", fn)
    x, added = _batched(input, dims, fn)
    if weight.dim() != dims + 2:
        raise ValueError(f"{fn}: expected a {dims + 2}-D weight (in_channels, out_channels / groups, "
                         f"{'kL' if dims == 1 else 'kH, kW'}), got shape {tuple(weight.shape)}")
    w = weight
    if dims == 1:
        x, w = x.unsqueeze(2), weight.unsqueeze(2)
        stride, padding, output_padding, dilation = (1, *stride), (0, *padding), (0, *output_padding), (1, *dilation)
    y = dc._C.conv_transpose2d(x, w, bias, stride, padding, output_padding, dilation, int(groups))
    if dims == 1:
        y = y.squeeze(2)
    return y.squeeze(0) if added else y


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution (the adjoint of conv2d), as torch.nn.functional.conv_transpose2d;
    weight is (in_channels, out_channels / groups, kH, kW)."""
    return _conv_t(input, weight, bias, stride, padding, output_padding, groups, dilation, 2, "conv_transpose2d")


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return _conv_t(input, weight, bias, stride, padding, output_padding, groups, dilation, 1, "conv_transpose1d")


def _pool_args(kernel_size, stride, padding, dims, fn):
    k = _tuple(kernel_size, dims, "kernel_size", fn)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _tuple(
        stride, dims, "stride", fn)
    p = _tuple(padding, dims, "padding", fn)
    return k, s, p


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over kH x kW windows of (N, C, H, W) input; with return_indices also the flat h * W + w
    index of each maximum in its plane (what max_unpool2d takes), as torch."""
    k, s, p = _pool_args(kernel_size, stride, padding, 2, "max_pool2d")
    d = _tuple(dilation, 2, "dilation", "max_pool2d")
    x, added = _batched(input, 2, "max_pool2d")
    r = dc._C.max_pool2d(x, k, s, p, d, bool(ceil_mode), bool(return_indices))
    if not added:
        return r
    return (r[0].squeeze(0), r[1].squeeze(0)) if return_indices else r.squeeze(0)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    k, s, p = _pool_args(kernel_size, stride, padding, 1, "max_pool1d")
    d = _tuple(dilation, 1, "dilation", "max_pool1d")
    x, added = _batched(input, 1, "max_pool1d")
    r = dc._C.max_pool2d(x.unsqueeze(2), (1, *k), (1, *s), (0, *p), (1, *d), bool(ceil_mode), bool(return_indices))
    if return_indices:
        y, i = r[0].squeeze(2), r[1].squeeze(2)
        return (y.squeeze(0), i.squeeze(0)) if added else (y, i)
    y = r.squeeze(2)
    return y.squeeze(0) if added else y


def _divisor(divisor_override):
    if divisor_override is None:
        return 0
    if int(divisor_override) <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got {divisor_override}")
    return int(divisor_override)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over kH x kW windows, as torch.nn.functional.avg_pool2d."""
    k, s, p = _pool_args(kernel_size, stride, padding, 2, "avg_pool2d")
    x, added = _batched(input, 2, "avg_pool2d")
    y = dc._C.avg_pool2d(x, k, s, p, bool(ceil_mode), bool(count_include_pad), _divisor(divisor_override))
    return y.squeeze(0) if added else y


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    k, s, p = _pool_args(kernel_size, stride, padding, 1, "avg_pool1d")
    x, added = _batched(input, 1, "avg_pool1d")
    y = dc._C.avg_pool2d(x.unsqueeze(2), (1, *k), (1, *s), (0, *p), bool(ceil_mode), bool(count_include_pad), 0)
    y = y.squeeze(2)
    return y.squeeze(0) if added else y


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Normalise each channel (dim 1) of (N, C, ...) input over N and the other dims, as
    torch.nn.functional.batch_norm: batch statistics when training (the running ones updated in
    place with momentum, the variance unbiased), else running_mean/running_var."""
    return dc._C.batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                            0.0 if momentum is None else float(momentum), float(eps))
