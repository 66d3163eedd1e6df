"""Every op of the op table on every available device, against NumPy (ggml's test-backend-ops idea).

`dutycycle._C.ops.table()` lists every op of csrc/core/ops.def with the devices whose kernel table
fills its slot. CASES below holds one case per op: inputs, the dutycycle call, the NumPy reference
and whether to check gradients (finite differences on the CPU in float64; on other devices the
gradient is compared with the CPU's). Backward-helper ops (family "grad") and kernels that only
backward uses are covered by the case of the op whose backward launches them (`covers`).
`test_every_op_has_a_case` fails when a line is added to ops.def without a case here.

On a machine without a GPU only the CPU column runs; on a lent GPU the "cuda" column runs every op
that has a CUDA kernel and skips (naming it) every op that has none yet, with the device memory
poisoned (DUTYCYCLE_CUDA_POISON) so unwritten outputs fail."""

import math
import operator
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

# Fresh CUDA memory is filled with 0xFF (NaN) so an output element a kernel never writes fails the
# comparison (read by the allocator at its first allocation: set before any CUDA tensor exists).
os.environ.setdefault("DUTYCYCLE_CUDA_POISON", "1")

import dutycycle as dc  # noqa: E402

TABLE = {row["name"]: row for row in dc._C.ops.table()}
DEVICES = ["cpu"] + (["cuda"] if dc.cuda.is_available() else [])


@dataclass
class Case:
    inputs: Callable  # rng -> list of NumPy arrays (float64 unless the op needs another dtype)
    fn: Callable  # (*dc tensors) -> dc tensor
    ref: Callable = None  # (*NumPy arrays) -> NumPy array; None: `check` does its own comparison
    grad: bool = False  # gradcheck wrt the float inputs
    covers: tuple = ()  # other ops of the table this case exercises (backward kernels)
    check: Callable = None  # (out, inputs, device) -> None, for ops without a plain reference
    rtol: float = 1e-10
    atol: float = 1e-12
    dtypes: tuple = ("float64", "float32")  # dtypes the forward is compared in
    grad_inputs: tuple = None  # indices of inputs to differentiate (default: every float input)
    grad_data: Callable = None  # rng -> inputs for the gradient check (default: `inputs`)


def _x(*shape, lo=-2.0, hi=2.0):
    return lambda rng: [rng.uniform(lo, hi, shape)]


def _xy(shape_a, shape_b, lo=-2.0, hi=2.0):
    return lambda rng: [rng.uniform(lo, hi, shape_a), rng.uniform(lo, hi, shape_b)]


def _away_from(values, eps=0.05):
    """Inputs kept at least eps from each kink (relu, abs, clamp) so finite differences are exact."""

    def gen(rng):
        x = rng.uniform(-2, 2, (3, 4))
        for v in values:
            near = np.abs(x - v) < eps
            x[near] = v + np.where(x[near] >= v, eps, -eps) * 2
        return [x]

    return gen


def _np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


_erf = np.vectorize(math.erf)


def _np_softmax(x, dim):
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def _np_layer_norm(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def _np_attn(x, scale, causal):
    z = x * scale
    if causal:  # torch's is_causal: key j > query i masked (top-left aligned)
        z = np.where(np.triu(np.ones(z.shape[-2:], bool), 1), -np.inf, z)
    return _np_softmax(z, -1)


def _np_ce(x, t, ignore, eps):
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    safe = np.where(t == ignore, 0, t)
    loss = lse - (1 - eps) * x[np.arange(len(t)), safe] - eps * x.mean(-1)
    return np.where(t == ignore, 0.0, loss)


def np_conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, pad_end=None):
    """Direct loops over output positions: the reference the C kernels and the torch comparison
    share (tests/test_conv.py)."""
    pad_end = pad if pad_end is None else pad_end
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad_end[0]), (pad[1], pad_end[1])))
    Ho = (H + pad[0] + pad_end[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + pad[1] + pad_end[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((N, Co, Ho, Wo), dtype=np.result_type(x, w))
    cog = Co // groups
    for co in range(Co):
        g = co // cog
        for i in range(Ho):
            for j in range(Wo):
                h0, w0 = i * stride[0], j * stride[1]
                patch = xp[:, g * Cg:(g + 1) * Cg, h0:h0 + dilation[0] * (kh - 1) + 1:dilation[0],
                           w0:w0 + dilation[1] * (kw - 1) + 1:dilation[1]]
                y[:, co, i, j] = (patch * w[co]).sum(axis=(1, 2, 3))
    return y if b is None else y + b[None, :, None, None]


def np_conv_transpose2d(x, w, b=None, stride=(1, 1), pad=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1):
    """Scatter form: every input pixel adds its weight window to the output."""
    N, Ci, H, W = x.shape
    _, cog, kh, kw = w.shape
    Ho = (H - 1) * stride[0] - 2 * pad[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    Wo = (W - 1) * stride[1] - 2 * pad[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    full = np.zeros((N, cog * groups, Ho + 2 * pad[0] + stride[0] + dilation[0] * kh,
                     Wo + 2 * pad[1] + stride[1] + dilation[1] * kw), dtype=np.result_type(x, w))
    cig = Ci // groups
    for g in range(groups):
        xs, ws = x[:, g * cig:(g + 1) * cig], w[g * cig:(g + 1) * cig]
        for i in range(H):
            for j in range(W):
                contrib = np.einsum("nc,cokl->nokl", xs[:, :, i, j], ws)
                h0, w0 = i * stride[0], j * stride[1]
                full[:, g * cog:(g + 1) * cog, h0:h0 + dilation[0] * (kh - 1) + 1:dilation[0],
                     w0:w0 + dilation[1] * (kw - 1) + 1:dilation[1]] += contrib
    y = full[:, :, pad[0]:pad[0] + Ho, pad[1]:pad[1] + Wo]
    return y if b is None else y + b[None, :, None, None]


def np_pool2d(x, k, s, p, kind, dilation=(1, 1), ceil_mode=False, count_include_pad=True):
    """torch's window rules, looped."""
    N, C, H, W = x.shape

    def out(n, kk, ss, pp, dd):
        o = (n + 2 * pp - dd * (kk - 1) - 1 + (ss - 1 if ceil_mode else 0)) // ss + 1
        return o - 1 if ceil_mode and (o - 1) * ss >= n + pp else o

    Ho, Wo = out(H, k[0], s[0], p[0], dilation[0]), out(W, k[1], s[1], p[1], dilation[1])
    y = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            if kind == "max":
                hh = [h for h in range(hs, hs + dilation[0] * (k[0] - 1) + 1, dilation[0]) if 0 <= h < H]
                ww = [v for v in range(ws, ws + dilation[1] * (k[1] - 1) + 1, dilation[1]) if 0 <= v < W]
                y[:, :, i, j] = x[:, :, hh][:, :, :, ww].max(axis=(2, 3))
            else:
                he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                size = (he - hs) * (we - ws)
                h0, w0, h1, w1 = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                div = size if count_include_pad else (h1 - h0) * (w1 - w0)
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / div
    return y


def np_batch_norm(x, w, b, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w.reshape(shape) + b.reshape(shape)


def _check_rand(kind):
    def check(out, inputs, device):
        a = out.cpu().numpy()
        assert a.shape == (64, 33)
        if kind == "rand":
            assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.05
        elif kind == "randn":
            assert abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.1
        else:
            assert a.dtype == np.int64 and a.min() >= -3 and a.max() < 4 and set(np.unique(a)) == set(range(-3, 4))
        # the same stream on every device: counter-based, generated on the host
        dc.manual_seed(7)
        again = _RANDOM[kind](device).cpu().numpy()
        dc.manual_seed(7)
        cpu = _RANDOM[kind]("cpu").numpy()
        np.testing.assert_array_equal(again, cpu)

    return check


_RANDOM = {
    "rand": lambda dev: dc.rand(64, 33, dtype=dc.float64, device=dev),
    "randn": lambda dev: dc.randn(64, 33, dtype=dc.float64, device=dev),
    "randint": lambda dev: dc.randint(-3, 4, (64, 33), device=dev),
}


def _sgd_case():
    def fn(p, g, device=None):
        w = p.clone().requires_grad_(True)
        opt = dc.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
        for _ in range(2):
            w.grad = g.clone()
            opt.step()
        return w.detach()

    def ref(p, g):
        buf = None
        for _ in range(2):
            d = g + 0.01 * p
            buf = d if buf is None else 0.9 * buf + d
            p = p - 0.1 * (d + 0.9 * buf)
        return p

    return Case(inputs=_xy((5, 3), (5, 3)), fn=fn, ref=ref)


def _adamw_case():
    def fn(p, g):
        w = p.clone().requires_grad_(True)
        opt = dc.optim.AdamW([w], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        for _ in range(3):
            w.grad = g.clone()
            opt.step()
        return w.detach()

    def ref(p, g):
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t in range(1, 4):
            p = p * (1 - 0.01 * 0.1)
            m = 0.9 * m + 0.1 * g
            v = 0.99 * v + 0.01 * g * g
            mh, vh = m / (1 - 0.9**t), v / (1 - 0.99**t)
            p = p - 0.01 * mh / (np.sqrt(vh) + 1e-8)
        return p

    return Case(inputs=_xy((4, 6), (4, 6)), fn=fn, ref=ref, rtol=1e-9, atol=1e-12)


def _clip_case():
    def fn(a, b):
        wa, wb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        wa.grad, wb.grad = a.clone(), b.clone()
        total = dc.nn.utils.clip_grad_norm_([wa, wb], max_norm=0.5)
        return dc.cat([wa.grad.flatten(), wb.grad.flatten(), dc.tensor([float(total)], dtype=a.dtype, device=a.device)])

    def ref(a, b):
        total = math.sqrt((a**2).sum() + (b**2).sum())
        coef = min(1.0, 0.5 / (total + 1e-6))
        return np.concatenate([(a * coef).ravel(), (b * coef).ravel(), [total]])

    return Case(inputs=_xy((3, 4), (7,)), fn=fn, ref=ref, covers=("scale",), rtol=1e-6)


def _int_pair(rng):
    """Integer-valued floats, divisors away from 0: valid in every dtype, float or integer."""
    a = np.round(rng.uniform(-9, 9, (3, 4)))
    b = np.round(rng.uniform(1, 3, (4,))) * rng.choice([-1.0, 1.0], (4,))
    return [a, b]


def _ints(rng):
    return [rng.integers(-50, 50, (3, 4)).astype(np.float64), rng.integers(-50, 50, (3, 4)).astype(np.float64)]


_INT_DTYPES = ("int64", "int32", "bool")


def _idx(rng, n, shape):
    return rng.integers(0, n, shape).astype(np.int64)


CASES = {
    # creation and copies
    "copy": Case(inputs=_x(3, 4), fn=lambda x: x.t().contiguous(), ref=lambda x: x.T.copy()),
    "fill": Case(inputs=_x(3, 4), fn=lambda x: x.clone().fill_(2.5), ref=lambda x: np.full_like(x, 2.5)),
    "arange": Case(inputs=lambda rng: [], fn=None, check=None),
    "rand": Case(inputs=lambda rng: [], fn=None, check=_check_rand("rand")),
    "randn": Case(inputs=lambda rng: [], fn=None, check=_check_rand("randn")),
    "randint": Case(inputs=lambda rng: [], fn=None, check=_check_rand("randint")),
    # unary
    "neg": Case(inputs=_x(3, 4), fn=lambda x: -x, ref=np.negative, grad=True),
    "exp": Case(inputs=_x(3, 4), fn=lambda x: x.exp(), ref=np.exp, grad=True),
    "log": Case(inputs=_x(3, 4, lo=0.2, hi=3), fn=lambda x: x.log(), ref=np.log, grad=True),
    "sqrt": Case(inputs=_x(3, 4, lo=0.2, hi=3), fn=lambda x: x.sqrt(), ref=np.sqrt, grad=True),
    "rsqrt": Case(inputs=_x(3, 4, lo=0.2, hi=3), fn=lambda x: x.rsqrt(), ref=lambda x: 1 / np.sqrt(x), grad=True),
    "sin": Case(inputs=_x(3, 4), fn=lambda x: x.sin(), ref=np.sin, grad=True),
    "cos": Case(inputs=_x(3, 4), fn=lambda x: x.cos(), ref=np.cos, grad=True),
    "tanh": Case(inputs=_x(3, 4), fn=lambda x: x.tanh(), ref=np.tanh, grad=True, covers=("tanh_backward",),
                 rtol=1e-7),
    "sigmoid": Case(inputs=_x(3, 4), fn=lambda x: x.sigmoid(), ref=lambda x: 1 / (1 + np.exp(-x)), grad=True,
                    covers=("sigmoid_backward",), rtol=1e-7),
    "relu": Case(inputs=_away_from([0.0]), fn=lambda x: x.relu(), ref=lambda x: np.maximum(x, 0), grad=True,
                 covers=("relu_backward",)),
    "gelu_tanh": Case(inputs=_x(3, 4), fn=lambda x: dc.nn.functional.gelu(x, approximate="tanh"), ref=_np_gelu_tanh,
                      grad=True, covers=("gelu_tanh_backward",), rtol=1e-7),
    "gelu": Case(inputs=_x(3, 4), fn=lambda x: dc.nn.functional.gelu(x), ref=lambda x: 0.5 * x * (1 + _erf(x / 2**0.5)),
                 grad=True, covers=("gelu_backward",), rtol=1e-7, atol=1e-9),
    "silu": Case(inputs=_x(3, 4), fn=lambda x: dc.nn.functional.silu(x), ref=lambda x: x / (1 + np.exp(-x)),
                 grad=True, covers=("silu_backward",), rtol=1e-7),
    "abs": Case(inputs=_away_from([0.0]), fn=lambda x: x.abs(), ref=np.abs, grad=True),
    "log1p": Case(inputs=_x(3, 4, lo=-0.9, hi=3), fn=lambda x: x.log1p(), ref=np.log1p, grad=True,
                  covers=("log1p_backward",)),
    "expm1": Case(inputs=_x(3, 4), fn=lambda x: x.expm1(), ref=np.expm1, grad=True, covers=("expm1_backward",)),
    "erf": Case(inputs=_x(3, 4), fn=lambda x: dc.erf(x), ref=_erf, grad=True, covers=("erf_backward",), rtol=1e-7,
                atol=1e-9),
    # unary with a scalar parameter
    "clamp": Case(inputs=_away_from([-0.5, 1.0]), fn=lambda x: x.clamp(-0.5, 1.0), ref=lambda x: np.clip(x, -0.5, 1),
                  grad=True, covers=("clamp_backward",)),
    "pow_scalar": Case(inputs=_x(3, 4, lo=0.2, hi=2), fn=lambda x: x**2.5, ref=lambda x: x**2.5, grad=True),
    "rpow_scalar": Case(inputs=_x(3, 4), fn=lambda x: 1.7**x, ref=lambda x: 1.7**x, grad=True),
    # binary (broadcasting) and comparisons
    "add": Case(inputs=_xy((3, 4), (4,)), fn=lambda a, b: a + b, ref=np.add, grad=True),
    "sub": Case(inputs=_xy((3, 1), (3, 4)), fn=lambda a, b: a - b, ref=np.subtract, grad=True),
    "mul": Case(inputs=_xy((2, 3, 4), (3, 1)), fn=lambda a, b: a * b, ref=np.multiply, grad=True),
    "div": Case(inputs=lambda rng: [rng.uniform(-2, 2, (3, 4)), rng.uniform(0.5, 2, (4,))], fn=lambda a, b: a / b,
                ref=np.divide, grad=True),
    "pow": Case(inputs=lambda rng: [rng.uniform(0.5, 2, (3, 4)), rng.uniform(-1, 2, (3, 4))],
                fn=lambda a, b: a**b, ref=np.power, grad=True, rtol=1e-9),
    "maximum": Case(inputs=_xy((3, 4), (3, 4)), fn=dc.maximum, ref=np.maximum, grad=True),
    "minimum": Case(inputs=_xy((3, 4), (3, 4)), fn=dc.minimum, ref=np.minimum, grad=True),
    **{
        name: Case(inputs=lambda rng: [np.round(rng.uniform(-2, 2, (3, 4))), np.round(rng.uniform(-2, 2, (4,)))],
                   fn=lambda a, b, _o=name: getattr(operator, _o)(a, b),
                   ref=lambda a, b, _o=name: getattr(operator, _o)(a, b))
        for name in ("eq", "ne", "lt", "le", "gt", "ge")
    },
    "floor_divide": Case(inputs=_int_pair, fn=lambda a, b: a // b, ref=np.floor_divide,
                         dtypes=("float64", "float32", "int64", "int32")),
    "remainder": Case(inputs=_int_pair, fn=lambda a, b: a % b, ref=np.mod,
                      dtypes=("float64", "float32", "int64", "int32"), grad=True,
                      grad_data=lambda rng: [rng.uniform(0.1, 0.9, (3, 4)) + np.arange(4) * 2,
                                             rng.uniform(1.5, 1.9, (4,))]),
    "bitwise_and": Case(inputs=_ints, fn=lambda a, b: a & b, ref=np.bitwise_and, dtypes=_INT_DTYPES),
    "bitwise_or": Case(inputs=_ints, fn=lambda a, b: a | b, ref=np.bitwise_or, dtypes=_INT_DTYPES),
    "bitwise_xor": Case(inputs=_ints, fn=lambda a, b: a ^ b, ref=np.bitwise_xor, dtypes=_INT_DTYPES),
    "where": Case(inputs=_xy((3, 4), (4,)), fn=lambda a, b: dc.where(a > 0, a, b),
                  ref=lambda a, b: np.where(a > 0, a, b), grad=True),
    # reductions
    "sum": Case(inputs=_x(3, 4, 5), fn=lambda x: x.sum(dim=(0, 2)), ref=lambda x: x.sum(axis=(0, 2)), grad=True,
                rtol=1e-6),
    "max": Case(inputs=_x(3, 4, 5), fn=lambda x: x.amax(dim=1), ref=lambda x: x.max(axis=1), grad=True),
    "min": Case(inputs=_x(3, 4, 5), fn=lambda x: x.amin(dim=(0, 1)), ref=lambda x: x.min(axis=(0, 1)), grad=True),
    "argmax": Case(inputs=_x(3, 4, 5), fn=lambda x: x.argmax(dim=1), ref=lambda x: x.argmax(axis=1)),
    "argmin": Case(inputs=_x(3, 4, 5), fn=lambda x: x.argmin(dim=-1), ref=lambda x: x.argmin(axis=-1)),
    # softmax and normalisation
    "softmax": Case(inputs=_x(3, 5), fn=lambda x: x.softmax(dim=1), ref=lambda x: _np_softmax(x, 1), grad=True,
                    covers=("softmax_backward",), rtol=1e-7),
    "log_softmax": Case(inputs=_x(3, 5), fn=lambda x: x.log_softmax(dim=0), ref=lambda x: np.log(_np_softmax(x, 0)),
                        grad=True, covers=("log_softmax_backward",), rtol=1e-7),
    "attn_softmax": Case(inputs=_x(2, 3, 5, 6), fn=lambda x: dc._C.attn_softmax(x, 0.7, True),
                         ref=lambda x: _np_attn(x, 0.7, True), grad=True, covers=("attn_softmax_backward",),
                         rtol=1e-7, atol=1e-12),
    "flash_attention": Case(
        inputs=lambda rng: [rng.uniform(-2, 2, (2, 3, 5, 4)), rng.uniform(-2, 2, (2, 3, 7, 4)),
                            rng.uniform(-2, 2, (2, 3, 7, 6))],
        fn=lambda q, k, v: dc._C.flash_attention(q, k, v, 0.6, True),
        ref=lambda q, k, v: _np_attn(q @ np.swapaxes(k, -1, -2), 0.6, True) @ v, grad=True,
        covers=("flash_attention_backward",), rtol=1e-7, atol=1e-12),
    "cross_entropy": Case(
        inputs=lambda rng: [rng.uniform(-3, 3, (6, 9)), np.array([0, 8, -100, 3, 4, 1], dtype=np.int64)],
        fn=lambda x, t: dc._C.cross_entropy(x, t, -100, 0.1),
        ref=lambda x, t: _np_ce(x, t, -100, 0.1), grad=True, grad_inputs=(0,),
        covers=("cross_entropy_backward",), rtol=1e-7, atol=1e-12),
    "layer_norm": Case(inputs=lambda rng: [rng.uniform(-2, 2, (3, 6)), rng.uniform(0.5, 1.5, (6,)),
                                           rng.uniform(-1, 1, (6,))],
                       fn=lambda x, w, b: dc.nn.functional.layer_norm(x, (6,), w, b), ref=_np_layer_norm, grad=True,
                       covers=("layer_norm_backward",), rtol=1e-5, atol=1e-6),
    # the conv stack (NCHW)
    "conv2d": Case(inputs=lambda rng: [rng.uniform(-1, 1, (2, 4, 6, 5)), rng.uniform(-1, 1, (6, 2, 3, 2)),
                                       rng.uniform(-1, 1, (6,))],
                   fn=lambda x, w, b: dc.nn.functional.conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 2),
                   ref=lambda x, w, b: np_conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 2), grad=True,
                   covers=("conv2d_input_grad", "conv2d_weight_grad"), rtol=1e-7, atol=1e-9),
    "conv_transpose2d": Case(inputs=lambda rng: [rng.uniform(-1, 1, (2, 4, 3, 4)), rng.uniform(-1, 1, (4, 3, 3, 3)),
                                                 rng.uniform(-1, 1, (6,))],
                             fn=lambda x, w, b: dc.nn.functional.conv_transpose2d(x, w, b, 2, 1, 1, 2),
                             ref=lambda x, w, b: np_conv_transpose2d(x, w, b, (2, 2), (1, 1), (1, 1), (1, 1), 2),
                             grad=True, rtol=1e-7, atol=1e-9),
    "max_pool2d": Case(inputs=lambda rng: [rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0],
                       fn=lambda x: dc.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                       ref=lambda x: np_pool2d(x, (3, 3), (2, 2), (1, 1), "max", ceil_mode=True), grad=True,
                       covers=("max_pool2d_backward",)),
    "avg_pool2d": Case(inputs=_x(2, 3, 7, 6),
                       fn=lambda x: dc.nn.functional.avg_pool2d(x, (3, 2), (2, 1), (1, 1), count_include_pad=False),
                       ref=lambda x: np_pool2d(x, (3, 2), (2, 1), (1, 1), "avg", count_include_pad=False), grad=True,
                       covers=("avg_pool2d_backward",), rtol=1e-7),
    "batch_norm": Case(inputs=lambda rng: [rng.uniform(-2, 2, (4, 3, 2, 5)), rng.uniform(0.5, 1.5, (3,)),
                                           rng.uniform(-1, 1, (3,))],
                       fn=lambda x, w, b: dc.nn.functional.batch_norm(x, None, None, w, b, training=True),
                       ref=np_batch_norm, grad=True, covers=("batch_norm_backward",), rtol=1e-6, atol=1e-7),
    # linear algebra and indexing
    "matmul": Case(inputs=_xy((2, 3, 4), (4, 5)), fn=dc.matmul, ref=np.matmul, grad=True, rtol=1e-6, atol=1e-6),
    "gather": Case(inputs=lambda rng: [rng.uniform(-2, 2, (3, 5)), _idx(rng, 5, (3, 4))],
                   fn=lambda x, i: x.gather(1, i), ref=lambda x, i: np.take_along_axis(x, i, 1), grad=True,
                   covers=("scatter_add",), grad_inputs=(0,)),
    "index_select": Case(inputs=lambda rng: [rng.uniform(-2, 2, (4, 3)), _idx(rng, 4, (6,))],
                         fn=lambda x, i: x.index_select(0, i), ref=lambda x, i: x[i], grad=True,
                         covers=("index_add",), grad_inputs=(0,)),
    "tril": Case(inputs=_x(4, 5), fn=lambda x: x.tril(1), ref=lambda x: np.tril(x, 1), grad=True),
    # scans, sort orders, nonzero
    "cumsum": Case(inputs=_x(3, 4, 5), fn=lambda x: x.cumsum(1), ref=lambda x: np.cumsum(x, axis=1), grad=True,
                   dtypes=("float64", "float32", "int64", "bool"), rtol=1e-7),
    "cumprod": Case(inputs=lambda rng: [rng.uniform(0.5, 1.5, (3, 4, 5))], fn=lambda x: x.cumprod(1),
                    ref=lambda x: np.cumprod(x, axis=1), grad=True, covers=("cumprod_backward",), rtol=1e-6,
                    dtypes=("float64", "float32", "int64"),
                    grad_data=lambda rng: [np.where(rng.uniform(0, 1, (3, 5)) < 0.3, 0.0, rng.uniform(-2, 2, (3, 5)))]),
    "argsort": Case(inputs=lambda rng: [np.round(rng.uniform(-3, 3, (4, 9)))], fn=lambda x: x.argsort(dim=1),
                    ref=lambda x: np.argsort(x, axis=1, kind="stable"), dtypes=("float64", "float32", "int64")),
    "nonzero": Case(inputs=lambda rng: [np.round(rng.uniform(-1, 1, (3, 5)))], fn=lambda x: x.nonzero(),
                    ref=np.argwhere, dtypes=("float64", "int64", "bool")),
    # fused optimizer steps and gradient-norm helpers
    "sgd_step": _sgd_case(),
    "adamw_step": _adamw_case(),
    "norm": _clip_case(),
}
CASES["arange"] = Case(inputs=lambda rng: [], fn=lambda: dc.arange(-3.0, 5.0, 0.25, dtype=dc.float64),
                       ref=lambda: np.arange(-3.0, 5.0, 0.25))


def _covered():
    names = set(CASES)
    for case in CASES.values():
        names.update(case.covers)
    return names


def test_every_op_has_a_case():
    missing = sorted(set(TABLE) - _covered())
    assert not missing, f"ops of csrc/core/ops.def without a case in tests/test_backend_ops.py: {missing}"
    unknown = sorted(_covered() - set(TABLE))
    assert not unknown, f"cases for ops that are not in the table: {unknown}"


def test_every_backward_kernel_is_covered_by_its_op():
    """A unary op whose backward runs a GRAD op lists that op in `covers` (so its gradient check runs
    the kernel), and that case checks gradients."""
    for name, row in TABLE.items():
        if row["backward"]:
            assert row["backward"] in CASES[name].covers, (name, row["backward"])
            assert CASES[name].grad, name


def test_table_lists_the_cpu_kernel_of_every_op():
    for name, row in TABLE.items():
        assert "cpu" in row["devices"], f"{name} has no CPU kernel"


def _to(a, dtype, device):
    if a.dtype == np.int64:  # indices stay int64
        return dc.tensor(a, device=device)
    if dtype == "bool":
        return dc.tensor(a > 0, device=device)
    if dtype.startswith("int"):
        return dc.tensor(a.astype(dtype), device=device)
    return dc.tensor(a, dtype=getattr(dc, dtype), device=device)


def _np_of(t):
    t = t.detach().cpu()
    return t.numpy().astype(np.float64) if t.dtype.is_floating_point else t.numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_op(name, device, rng):
    row = TABLE[name]
    if device not in row["devices"]:
        # Only the CUDA column can skip (every op has a CPU kernel, asserted above): the CUDA backend
        # fills the rest of its table in its own issue; the skip names the op so the gap stays visible.
        pytest.skip(f"op {name} has no {device} kernel yet (the CUDA backend issue adds it)")
    case = CASES[name]
    inputs = case.inputs(rng)
    if case.check is not None:
        case.check(_RANDOM[name](device), inputs, device)
        return
    for dtype in case.dtypes:
        xs = [_to(a, dtype, device) for a in inputs]
        out = case.fn(*xs)
        ref = case.ref(*[np.asarray(_np_of(x)) for x in xs])
        got = _np_of(out)
        assert got.shape == np.shape(ref), (name, got.shape, np.shape(ref))
        if dtype == "float32":
            np.testing.assert_allclose(got, ref, rtol=max(case.rtol, 2e-5), atol=max(case.atol, 1e-5), err_msg=name)
        else:
            np.testing.assert_allclose(got, ref, rtol=case.rtol, atol=case.atol, err_msg=name)
    if not case.grad:
        return
    if case.grad_data is not None:
        inputs = case.grad_data(rng)
    which = case.grad_inputs if case.grad_inputs is not None else [
        k for k, a in enumerate(inputs) if a.dtype != np.int64]
    cpu = [_to(a, "float64", "cpu") for a in inputs]
    for k in which:
        cpu[k].requires_grad_(True)
    assert dc.autograd.gradcheck(case.fn, cpu), name
    if device != "cpu":  # the device's gradient against the CPU's
        dev = [_to(a, "float64", device) for a in inputs]
        for k in which:
            dev[k].requires_grad_(True)
        case.fn(*dev).sum().backward()
        cpu = [_to(a, "float64", "cpu") for a in inputs]
        for k in which:
            cpu[k].requires_grad_(True)
        case.fn(*cpu).sum().backward()
        for k in which:
            np.testing.assert_allclose(_np_of(dev[k].grad), _np_of(cpu[k].grad), rtol=1e-9, atol=1e-12)


# ---- 16-bit floats on the CPU --------------------------------------------------------------------
# The CPU kernels compute in float32/float64; a bfloat16/float16 launch runs on float32 copies and
# rounds what the kernel wrote (csrc/cpu/widen.c). Each op's case on 16-bit inputs must therefore
# equal the float32 op on the same (rounded) values, rounded once: bit for bit where the case is
# one op, within the 16-bit type's resolution where the case composes several.
_ONE_ROUNDING = {"add", "mul", "exp", "tanh", "gelu", "softmax", "layer_norm", "sum", "matmul", "where", "relu"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.check is None and "float32" in c.dtypes))
def test_op_in_16_bit_on_the_cpu(name, dtype, rng):
    case = CASES[name]
    inputs = case.inputs(rng)
    low = getattr(dc, dtype)
    xs16 = [_to(a, "float32", "cpu").to(low) if a.dtype != np.int64 else _to(a, "float32", "cpu") for a in inputs]
    xs32 = [x.float() if x.dtype == low else x for x in xs16]
    out16 = case.fn(*xs16)
    out32 = case.fn(*xs32)
    if not out32.dtype.is_floating_point:  # comparisons, argmax: exactly the float32 answer
        assert np.array_equal(_np_of(out16), _np_of(out32)), name
        return
    if out16.dtype != low:  # ops that make their own dtype (arange) or keep float32 (a loss): as is
        assert out16.dtype == out32.dtype, (name, out16.dtype, out32.dtype)
        np.testing.assert_allclose(_np_of(out16), _np_of(out32), rtol=1e-6, atol=1e-6, err_msg=name)
        return
    got = out16.float().numpy()
    want = out32.to(low).float().numpy()
    if name in _ONE_ROUNDING:
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        tol = 2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10
        np.testing.assert_allclose(got, want, rtol=4 * tol, atol=4 * tol, err_msg=name)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.check is None and "float32" in c.dtypes
                                        and "cuda" in TABLE[n]["devices"]))  # test_op names the ops without one
def test_op_in_bfloat16_on_cuda_against_the_cpu(name, rng):
    # the CUDA column in bfloat16: native 16-bit kernels and the float32 fallback alike, against the
    # CPU's 16-bit path (the float32 op rounded once), within bfloat16's tolerance
    case = CASES[name]
    inputs = case.inputs(rng)
    outs = []
    for device in ("cpu", "cuda"):
        xs = [_to(a, "float32", device).to(dc.bfloat16) if a.dtype != np.int64 else _to(a, "float32", device)
              for a in inputs]
        outs.append(_np_of(case.fn(*xs)))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-2, atol=1e-2, err_msg=name)


_TF32_OPS = [n for n in ("matmul", "conv2d", "conv_transpose2d") if n in CASES]


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("name", _TF32_OPS)
def test_tf32_ops_on_cuda_within_1e_3(name, rng):
    case = CASES[name]
    inputs = case.inputs(rng)
    cpu = _np_of(case.fn(*[_to(a, "float32", "cpu") for a in inputs]))
    old = dc.backends.cuda.matmul.allow_tf32, dc.backends.cudnn.allow_tf32
    dc.backends.cuda.matmul.allow_tf32 = dc.backends.cudnn.allow_tf32 = True
    try:
        got = _np_of(case.fn(*[_to(a, "float32", "cuda") for a in inputs]))
    finally:
        dc.backends.cuda.matmul.allow_tf32, dc.backends.cudnn.allow_tf32 = old
    np.testing.assert_allclose(got, cpu, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(cpu).max())), err_msg=name)
