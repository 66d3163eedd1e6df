"""nn.init: in-place weight initialisers (run under no_grad), with PyTorch's fan/gain rules.

Fans as torch computes them: for a weight (out, in, *kernel) fan_in = in * prod(kernel) and
fan_out = out * prod(kernel) (a conv weight (out, in/groups, kH, kW) included; a ConvTranspose
weight (in, out/groups, kH, kW) gets torch's same — swapped — reading). Random draws come from
dutycycle's generator, so manual_seed makes them reproducible."""

import math

import numpy as np

import dutycycle as dc


def calculate_gain(nonlinearity, param=None):
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                  "sigmoid", "identity")
    if nonlinearity in linear_fns:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(t):
    if t.dim() < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = 1
    for s in t.shape[2:]:
        receptive *= s
    return t.shape[1] * receptive, t.shape[0] * receptive


def _fan(t, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} not supported, use 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(t, a=0.0, b=1.0):
    with dc.no_grad():
        t.uniform_(a, b)
    return t


def normal_(t, mean=0.0, std=1.0):
    with dc.no_grad():
        t.normal_(mean, std)
    return t


def constant_(t, val):
    with dc.no_grad():
        t.fill_(val)
    return t


def zeros_(t):
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


def xavier_uniform_(t, gain=1.0):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -a, a)


def xavier_normal_(t, gain=1.0):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    fan = _fan(t, mode)
    if fan == 0:
        return t
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    fan = _fan(t, mode)
    if fan == 0:
        return t
    return normal_(t, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan))


def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """N(mean, std) restricted to [a, b]: draw, then redraw the entries that fell outside.

    Each round keeps every in-range draw, so the result is exactly the truncated normal; rounds
    stop once nothing is outside (a final clamp guards pathological [a, b] far in the tail).
    """
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    mid, half = (a + b) / 2.0, (b - a) / 2.0
    with dc.no_grad():
        t.normal_(mean, std)
        for _ in range(64):
            outside = (t - mid).abs() > half
            if outside.to(t.dtype).sum().item() == 0:  # sync point: one scalar per round
                break
            t.copy_(dc.where(outside, dc.empty_like(t).normal_(mean, std), t))
        t.copy_(t.clamp(a, b))
    return t



def _calculate_correct_fan(t, mode):
    return _fan(t, mode)


def eye_(t):
    """The identity in a 2-D tensor (ones on the diagonal of a possibly non-square matrix)."""
    if t.dim() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    with dc.no_grad():
        t.copy_(dc.eye(t.shape[0], t.shape[1], dtype=t.dtype, device=t.device))
    return t


def dirac_(t, groups=1):
    """The Dirac delta in a 3-, 4- or 5-d conv weight (out, in, *kernel): each of the first
    min(out/groups, in) output channels of a group passes its input channel through unchanged."""
    if t.dim() not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    out_per_group = t.shape[0] // groups
    if t.shape[0] % groups != 0:
        raise ValueError("dim 0 must be divisible by groups")
    w = np.zeros(tuple(t.shape), dtype=np.float64)  # built on the host, copied in once
    centre = tuple(k // 2 for k in t.shape[2:])
    for g in range(groups):
        for d in range(min(out_per_group, t.shape[1])):
            w[(g * out_per_group + d, d) + centre] = 1.0
    with dc.no_grad():
        t.copy_(dc.tensor(w, dtype=t.dtype, device=t.device))
    return t


def orthogonal_(t, gain=1.0):
    """A (semi-)orthogonal matrix (rows x prod(other dims)), as torch: QR of a standard normal draw,
    signs fixed by R's diagonal so the result is uniform over orthogonal matrices, times gain. The
    normal draw comes from dutycycle's generator; the QR runs in NumPy on the host (a round trip
    of one weight, at initialisation only)."""
    if t.dim() < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if t.numel() == 0:
        return t
    rows = t.shape[0]
    cols = t.numel() // rows
    flat = dc.randn(rows, cols, dtype=dc.float64).numpy()
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    with dc.no_grad():
        t.copy_(dc.tensor(np.ascontiguousarray(q * gain).reshape(tuple(t.shape)), dtype=t.dtype, device=t.device))
    return t


def sparse_(t, sparsity, std=0.01):
    """A 2-D tensor N(0, std) with a fraction `sparsity` of each column's entries zeroed."""
    if t.dim() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rows, cols = t.shape
    nz = int(math.ceil(sparsity * rows))
    with dc.no_grad():
        t.normal_(0.0, std)
        keep = np.ones((rows, cols), dtype=bool)
        for c in range(cols):
            keep[dc.randperm(rows).numpy()[:nz], c] = False
        t.copy_(t * dc.tensor(keep.astype(np.float64), dtype=t.dtype, device=t.device))
    return t


# torch's pre-underscore spellings (deprecated there, still seen in older scripts)
uniform = uniform_
normal = normal_
constant = constant_
xavier_uniform = xavier_uniform_
xavier_normal = xavier_normal_
kaiming_uniform = kaiming_uniform_
kaiming_normal = kaiming_normal_
orthogonal = orthogonal_

from .._missing import missing_names  # noqa: E402

__getattr__ = missing_names(__name__, "torch.nn.init")
