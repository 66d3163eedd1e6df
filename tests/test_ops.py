"""Every op against a NumPy float64 reference, and every op's backward against central finite
differences.

Forward: fresh random inputs in float32 (looser tolerance) and float64, with broadcasting and with
non-contiguous inputs (a transposed view, a slice with a step; see conftest.make). Backward:
dutycycle.autograd.gradcheck in float64 on small shapes, including broadcast inputs (the gradient
must come back reduced to the input's shape) and non-contiguous inputs."""

import math

import numpy as np
import pytest
from conftest import LAYOUTS, assert_close, make, rounded, to_np

import dutycycle as dc
from dutycycle.autograd import gradcheck

DTYPES = ["float32", "float64"]
NC_LAYOUTS = ["contig", "step", "transpose"]

_erf = np.vectorize(math.erf)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def gc(fn, *inputs):
    """gradcheck, then also check each input's .grad came back with the input's own shape."""
    assert gradcheck(fn, inputs)
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    total = None
    for o in outs:
        s = (o * o).sum()
        total = s if total is None else total + s
    total.backward()
    for x in inputs:
        if isinstance(x, dc.Tensor) and x.requires_grad:
            assert x.grad is not None and x.grad.shape == x.shape, (x.shape, x.grad)
            x.grad = None


# ============================================================================================ unary

# name -> (dutycycle fn, NumPy reference, domain)
UNARY = {
    "neg": (lambda t: -t, lambda x: -x, "any"),
    "exp": (dc.exp, np.exp, "any"),
    "log": (dc.log, np.log, "pos"),
    "sqrt": (dc.sqrt, np.sqrt, "pos"),
    "rsqrt": (dc.rsqrt, lambda x: 1.0 / np.sqrt(x), "pos"),
    "sin": (dc.sin, np.sin, "any"),
    "cos": (dc.cos, np.cos, "any"),
    "tanh": (dc.tanh, np.tanh, "any"),
    "sigmoid": (dc.sigmoid, np_sigmoid, "any"),
    "relu": (dc.relu, lambda x: np.maximum(x, 0.0), "any"),
    "gelu_tanh": (lambda t: dc._C.gelu(t, True), np_gelu_tanh, "any"),
    "gelu_erf": (lambda t: dc._C.gelu(t, False), np_gelu_erf, "any"),
    "silu": (dc.nn.functional.silu, lambda x: x * np_sigmoid(x), "any"),
    "abs": (dc.abs, np.abs, "any"),
}


def unary_input(rng, shape, domain):
    a = rng.standard_normal(shape) * 2.0
    return np.abs(a) + 0.1 if domain == "pos" else a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_forward(rng, name, dtype, layout):
    fn, ref, domain = UNARY[name]
    a = unary_input(rng, (4, 6), domain)
    y = fn(make(a, dtype, layout))
    assert_close(y, ref(rounded(a, dtype)), dtype)


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "gelu_tanh", "silu", "relu", "abs", "neg"])
def test_unary_float32_large_and_extreme(rng, name):
    """The vectorised float32 paths (cpu_expf/cpu_tanhf, OpenMP split) on a big input incl. extremes."""
    fn, ref, _ = UNARY[name]
    a = np.concatenate([rng.standard_normal(70000) * 5, [0.0, -0.0, 30.0, -30.0, 80.0, -80.0, 1e-5, -1e-5]])
    a32 = rounded(a, "float32")
    with np.errstate(over="ignore"):
        want = ref(a32)
    assert_close(fn(dc.tensor(a, dtype=dc.float32)), want, "float32", rtol=1e-5, atol=1e-6)


def test_unary_method_forms_match_functions(rng):
    x = dc.tensor(np.abs(rng.standard_normal((3, 4))) + 0.5)
    for name in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "abs", "neg"):
        np.testing.assert_array_equal(getattr(x, name)().numpy(), getattr(dc, name)(x).numpy())
    np.testing.assert_array_equal(abs(-x).numpy(), x.numpy())
    np.testing.assert_array_equal((+x).numpy(), x.numpy())


def test_unary_int_neg_abs():
    x = dc.tensor([-3, 0, 5], dtype=dc.int32)
    assert (-x).tolist() == [3, 0, -5] and (-x).dtype == dc.int32
    assert x.abs().tolist() == [3, 0, 5]
    y = dc.tensor([-(2**40), 7])
    assert y.abs().tolist() == [2**40, 7] and y.abs().dtype == dc.int64


@pytest.mark.parametrize("layout", ["contig", "transpose"])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_grad(rng, name, layout):
    fn, _, domain = UNARY[name]
    a = unary_input(rng, (3, 4), domain)
    if name in ("relu", "abs"):
        a = np.where(np.abs(a) < 1e-3, 0.5, a)  # stay off the kink
    gc(fn, make(a, "float64", layout, requires_grad=True))


# ============================================================================================ binary

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a**b, np.power),
    "maximum": (dc.maximum, np.maximum),
    "minimum": (dc.minimum, np.minimum),
    "add_fn": (dc.add, np.add),
    "sub_fn": (dc.sub, np.subtract),
    "mul_fn": (dc.mul, np.multiply),
    "div_fn": (dc.div, np.divide),
    "pow_fn": (dc.pow, np.power),
}

BCAST = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 3, 4)),
    ((2, 1, 4), (3, 1)),
    ((), (3, 4)),
    ((3, 4), ()),
    ((2, 3, 1, 5), (3, 4, 1)),
]


def binary_inputs(rng, name, sa, sb):
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    if name.startswith("pow"):
        a = np.abs(a) + 0.5
    if name.startswith("div"):
        b = np.sign(b) * (np.abs(b) + 0.5)
    return a, b


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shapes", BCAST, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_forward(rng, name, dtype, shapes, layout):
    fn, ref = BINARY[name]
    a, b = binary_inputs(rng, name, *shapes)
    y = fn(make(a, dtype, layout), make(b, dtype, layout))
    assert_close(y, ref(rounded(a, dtype), rounded(b, dtype)), dtype)


@pytest.mark.parametrize("layout", ["contig", "step"])
@pytest.mark.parametrize("shapes", BCAST[:6] + [((2, 1, 3), (2, 1))], ids=str)
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum"])
def test_binary_grad(rng, name, shapes, layout):
    fn, _ = BINARY[name]
    a, b = binary_inputs(rng, name, *shapes)
    gc(fn, make(a, "float64", layout, True), make(b, "float64", layout, True))


def test_binary_grad_one_side_only(rng):
    """Only one operand requires grad (the other is a constant): no gradient for the constant."""
    a = dc.tensor(np.abs(rng.standard_normal((2, 3))) + 0.5, dtype=dc.float64, requires_grad=True)
    c = dc.tensor(np.abs(rng.standard_normal(3)) + 0.5, dtype=dc.float64)
    for name in ("add", "sub", "mul", "div", "pow", "maximum", "minimum"):
        fn = BINARY[name][0]
        gc(lambda x, fn=fn: fn(x, c), a)
        gc(lambda x, fn=fn: fn(c, x), a)
    assert c.grad is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_python_scalars(rng, dtype):
    a = rng.standard_normal((3, 4))
    p = np.abs(a) + 0.5
    x, xp = make(a, dtype), make(p, dtype)
    ar, pr = rounded(a, dtype), rounded(p, dtype)
    cases = [
        (x + 2, ar + 2), (2 + x, 2 + ar), (x - 2.5, ar - 2.5), (2.5 - x, 2.5 - ar), (x * 3, ar * 3),
        (3 * x, 3 * ar), (x / 4, ar / 4), (4 / xp, 4 / pr), (xp**2, pr**2), (xp**0.5, pr**0.5),
        (xp**-1.5, pr**-1.5), (2**x, 2**ar), (1.5**x, 1.5**ar), (xp**3, pr**3), (x**1, ar),
        (x**0, np.ones_like(ar)),
    ]
    for y, want in cases:
        assert_close(y, want, dtype)
    # a NumPy scalar counts as a number
    assert_close(x * np.float64(2.0), ar * 2, dtype)


def test_pow_scalar_grads(rng):
    x = dc.tensor(np.abs(rng.standard_normal((2, 3))) + 0.5, dtype=dc.float64, requires_grad=True)
    for p in (2, 3, 0.5, -1.5, 1):
        gc(lambda t, p=p: t**p, x)
    gc(lambda t: 2.0**t, x)
    gc(lambda t: 0.5**t, x)
    gc(lambda t: 1.0 / t - 3.0 - t, x)


def test_pow_grad_at_zero():
    """d/dx x**0 is 0 everywhere (not 0 * inf at x = 0); d/db a**b is 0 where a == 0 and b >= 0."""
    x = dc.tensor([0.0, 2.0, -1.5], dtype=dc.float64, requires_grad=True)
    (x**0).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]
    x.grad = None
    (x**2).sum().backward()
    assert x.grad.tolist() == [0.0, 4.0, -3.0]
    a = dc.tensor([0.0, 2.0, 0.0], dtype=dc.float64, requires_grad=True)
    b = dc.tensor([0.0, 3.0, 2.0], dtype=dc.float64, requires_grad=True)
    (a**b).sum().backward()
    assert a.grad.tolist() == [0.0, 12.0, 0.0]
    np.testing.assert_allclose(b.grad.numpy(), [0.0, 8 * math.log(2), 0.0])


def test_integer_arithmetic():
    a = dc.tensor([[1, 2, 3], [4, 5, 6]])
    b = dc.tensor([10, 20, 30])
    assert (a + b).tolist() == [[11, 22, 33], [14, 25, 36]] and (a + b).dtype == dc.int64
    assert (a - b).tolist() == [[-9, -18, -27], [-6, -15, -24]]
    assert (a * b).tolist() == [[10, 40, 90], [40, 100, 180]]
    assert (a * 2 + 1).dtype == dc.int64
    q = a / 2  # true division of ints gives float32, as in torch
    assert q.dtype == dc.float32 and q.tolist() == [[0.5, 1.0, 1.5], [2.0, 2.5, 3.0]]
    r = a + 0.5
    assert r.dtype == dc.float32 and r.tolist()[0] == [1.5, 2.5, 3.5]
    i32 = dc.tensor([1, 2], dtype=dc.int32)
    assert (i32 + 1).dtype == dc.int32 and (i32 * 3).tolist() == [3, 6]
    assert dc.maximum(a, dc.tensor(3)).tolist() == [[3, 3, 3], [4, 5, 6]]


# ============================================================================================ comparisons

CMP = {
    "eq": (lambda a, b: a == b, np.equal),
    "ne": (lambda a, b: a != b, np.not_equal),
    "lt": (lambda a, b: a < b, np.less),
    "le": (lambda a, b: a <= b, np.less_equal),
    "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES + ["int32", "int64"])
@pytest.mark.parametrize("name", sorted(CMP))
def test_compare(rng, name, dtype, layout):
    fn, ref = CMP[name]
    # small integers so that equal pairs actually occur
    a = rng.integers(-2, 3, (3, 4)).astype(np.float64)
    b = rng.integers(-2, 3, (4,)).astype(np.float64)
    y = fn(make(a, dtype, layout), make(b, dtype, layout))
    assert y.dtype == dc.bool and y.shape == (3, 4)
    np.testing.assert_array_equal(y.numpy(), ref(a, b))
    ys = fn(make(a, dtype, layout), 1)
    np.testing.assert_array_equal(ys.numpy(), ref(a, 1))
    assert not y.requires_grad


def test_compare_bool_and_methods(rng):
    a = dc.tensor([True, False, True])
    b = dc.tensor([True, True, False])
    assert (a == b).tolist() == [True, False, False]
    assert (a != b).tolist() == [False, True, True]
    assert (~a).tolist() == [False, True, False]
    assert (a & b).tolist() == [True, False, False]
    assert (a | b).tolist() == [True, True, True]
    x = dc.tensor(rng.standard_normal(5))
    for name in CMP:
        np.testing.assert_array_equal(getattr(x, name)(0.0).numpy(), CMP[name][1](x.numpy(), 0.0))
    # comparisons with NaN are all False except !=
    n = dc.tensor([float("nan"), 1.0])
    m = n.clone()
    assert (n == m).tolist() == [False, True] and (n != m).tolist() == [True, False]
    assert (n < 2).tolist() == [False, True]


# ============================================================================================ reductions

RED_DIMS = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", RED_DIMS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin", "var", "var_biased", "std", "std_biased"])
def test_reduce(rng, op, dtype, dim, keepdim, layout):
    a = rng.standard_normal((3, 4, 5))
    x = make(a, dtype, layout)
    ar = rounded(a, dtype)
    ax = dim
    if op.startswith(("var", "std")):
        unbiased = not op.endswith("biased")
        y = getattr(x, op[:3])(dim, keepdim=keepdim, unbiased=unbiased)
        want = getattr(np, op[:3])(ar, axis=ax, keepdims=keepdim, ddof=1 if unbiased else 0)
        assert_close(y, want, dtype, rtol=1e-4 if dtype == "float32" else 1e-10)
        return
    y = getattr(x, op)(dim, keepdim=keepdim)
    fn_y = getattr(dc, op)(x, dim=dim, keepdim=keepdim)
    want = getattr(np, op if op in ("sum", "mean") else {"amax": "max", "amin": "min"}[op])(
        ar, axis=ax, keepdims=keepdim)
    assert_close(y, want, dtype)
    assert_close(fn_y, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
@pytest.mark.parametrize("dtype", DTYPES + ["int32", "int64"])
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_with_dim(rng, op, dtype, dim, keepdim, layout):
    a = rng.permutation(60).reshape(3, 4, 5).astype(np.float64) - 30  # distinct: unique arg
    x = make(a, dtype, layout)
    res = getattr(x, op)(dim, keepdim=keepdim)
    values, indices = res
    assert res.values is values and res.indices is indices
    want_v = getattr(np, op)(a, axis=dim, keepdims=keepdim)
    want_i = getattr(np, "arg" + op)(a, axis=dim)
    if keepdim:
        want_i = np.expand_dims(want_i, dim)
    assert values.dtype.name == dtype
    np.testing.assert_array_equal(to_np(values), want_v)
    assert indices.dtype == dc.int64
    np.testing.assert_array_equal(indices.numpy(), want_i)
    # function form, no dim: a 0-d tensor
    full = getattr(dc, op)(x)
    assert full.shape == () and full.item() == getattr(np, op)(a)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("dtype", DTYPES + ["int32", "int64"])
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_argmax_argmin(rng, op, dtype, dim, keepdim, layout):
    a = rng.permutation(60).reshape(3, 4, 5).astype(np.float64)
    x = make(a, dtype, layout)
    y = getattr(x, op)(dim, keepdim=keepdim)
    assert y.dtype == dc.int64
    want = getattr(np, op)(a, axis=dim)
    if dim is not None and keepdim:
        want = np.expand_dims(want, dim)
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal(getattr(dc, op)(x, dim=dim, keepdim=keepdim).numpy(), want)


def test_argmax_ties_take_the_first():
    x = dc.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    assert x.argmax(1).tolist() == [1, 0]
    assert x.argmin(1).tolist() == [0, 2]
    assert x.argmax().item() == 1


def test_integer_and_bool_sums():
    i = dc.tensor([[1, 2, 3], [4, 5, 6]], dtype=dc.int32)
    s = i.sum()
    assert s.dtype == dc.int64 and s.item() == 21
    assert i.sum(0).tolist() == [5, 7, 9] and i.sum(1, keepdim=True).tolist() == [[6], [15]]
    b = dc.tensor([True, False, True, True])
    assert b.sum().item() == 3 and b.sum().dtype == dc.int64
    assert dc.tensor([5, -2, 9]).max().item() == 9 and dc.tensor([5, -2, 9]).min().item() == -2


def test_reduce_large_float32_accuracy(rng):
    """Long reductions (the OpenMP split and the column strategy) stay accurate."""
    a = rng.standard_normal((300, 400)) + 3.0
    x = dc.tensor(a, dtype=dc.float32)
    ar = rounded(a, "float32")
    assert_close(x.sum(), ar.sum(), "float32", rtol=1e-6)
    assert_close(x.sum(0), ar.sum(0), "float32", rtol=1e-6, atol=1e-5)
    assert_close(x.mean(1), ar.mean(1), "float32", rtol=1e-6)
    assert_close(x.T.sum(0), ar.T.sum(0), "float32", rtol=1e-6, atol=1e-5)
    assert_close(x.amax(0), ar.max(0), "float32")
    assert_close(x.var(), ar.var(ddof=1), "float32", rtol=1e-4)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 1, (0, 2), -1], ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin", "var", "std"])
def test_reduce_grad(rng, op, dim, keepdim):
    a = rng.permutation(24).reshape(2, 3, 4) / 7.0 + rng.uniform(0, 0.01, (2, 3, 4))  # distinct
    for layout in ("contig", "transpose"):
        gc(lambda t: getattr(t, op)(dim, keepdim=keepdim), make(a, "float64", layout, True))


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_grad(rng, op):
    a = rng.permutation(24).reshape(2, 3, 4) / 5.0
    x = make(a, "float64", "step", True)
    gc(lambda t: getattr(t, op)(), x)
    gc(lambda t: getattr(t, op)(1).values, x)
    gc(lambda t: getattr(t, op)(-1, keepdim=True)[0], x)
    # a tie splits the gradient evenly
    t = dc.tensor([1.0, 5.0, 5.0], dtype=dc.float64, requires_grad=True)
    t.max().backward()
    assert t.grad.tolist() == [0.0, 0.5, 0.5]


# ============================================================================================ softmax

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
def test_softmax(rng, log, dtype, dim, layout):
    a = rng.standard_normal((3, 4, 5)) * 3
    x = make(a, dtype, layout)
    y = x.log_softmax(dim) if log else x.softmax(dim)
    y2 = dc.log_softmax(x, dim) if log else dc.softmax(x, dim)
    want = (np_log_softmax if log else np_softmax)(rounded(a, dtype), dim)
    assert_close(y, want, dtype, atol=1e-6 if dtype == "float32" else None)
    np.testing.assert_array_equal(to_np(y), to_np(y2))


def test_softmax_extreme_values():
    x = dc.tensor([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
    np.testing.assert_allclose(x.softmax(-1).numpy(), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-7)
    ls = x.log_softmax(-1).numpy()
    np.testing.assert_allclose(ls[0, :2], [0.0, -1000.0], atol=1e-4)
    assert np.isfinite(ls).all() or ls[0, 2] == -2000.0


@pytest.mark.parametrize("layout", ["contig", "transpose", "step"])
@pytest.mark.parametrize("dim", [0, -1, 1])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_grad(rng, log, dim, layout):
    x = make(rng.standard_normal((2, 3, 4)), "float64", layout, True)
    gc(lambda t: t.log_softmax(dim) if log else t.softmax(dim), x)


# ============================================================================================ matmul

MATMUL = [
    ((4,), (4,)),
    ((3, 4), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((4, 5), (2, 5, 3)),
    ((2, 3, 4), (2, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 5)),
    ((2, 3, 3, 4), (2, 3, 4, 2)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
    ((3, 1), (1, 4)),
    ((1, 4), (4, 1)),
]


def np_matmul(a, b):
    return np.matmul(a, b)


@pytest.mark.parametrize("layout", ["contig", "transpose", "step"])
@pytest.mark.parametrize("shapes", MATMUL, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(rng, dtype, shapes, layout):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    x, y = make(a, dtype, layout), make(b, dtype, layout)
    want = np_matmul(rounded(a, dtype), rounded(b, dtype))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {}
    assert_close(x @ y, want, dtype, **tol)
    assert_close(dc.matmul(x, y), want, dtype, **tol)
    assert_close(x.matmul(y), want, dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_mixed_layouts_and_bmm(rng, dtype):
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {}
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    ar, br = rounded(a, dtype), rounded(b, dtype)
    for la in LAYOUTS:
        for lb in LAYOUTS:
            assert_close(dc.bmm(make(a, dtype, la), make(b, dtype, lb)), ar @ br, dtype, **tol)
    # operands that are transposes of contiguous tensors (BLAS trans flags) and a permuted batch
    x = dc.tensor(rng.standard_normal((5, 3)), dtype=dc_dtype_of(dtype))
    w = dc.tensor(rng.standard_normal((4, 5)), dtype=dc_dtype_of(dtype))
    assert_close(x.T @ w.T, to_np(x).T @ to_np(w).T, dtype, **tol)
    p = dc.tensor(rng.standard_normal((3, 2, 4)), dtype=dc_dtype_of(dtype)).permute(1, 0, 2)  # (2, 3, 4)
    assert_close(p @ make(b, dtype), to_np(p) @ br, dtype, **tol)
    # broadcast (expanded, stride-0) batch operand
    e = dc.tensor(rng.standard_normal((1, 3, 4)), dtype=dc_dtype_of(dtype)).expand(2, 3, 4)
    assert_close(e @ make(b, dtype), to_np(e) @ br, dtype, **tol)


def dc_dtype_of(name):
    return getattr(dc, name)


def test_matmul_large_float32(rng):
    a, b = rng.standard_normal((64, 200)), rng.standard_normal((200, 48))
    x, y = dc.tensor(a, dtype=dc.float32), dc.tensor(b, dtype=dc.float32)
    assert_close(x @ y, rounded(a, "float32") @ rounded(b, "float32"), "float32", rtol=1e-4, atol=1e-4)


def test_matmul_empty():
    z = dc.zeros(3, 0) @ dc.zeros(0, 4)
    assert z.shape == (3, 4) and z.sum().item() == 0.0
    assert (dc.zeros(0, 3) @ dc.zeros(3, 2)).shape == (0, 2)


@pytest.mark.parametrize("layout", ["contig", "transpose"])
@pytest.mark.parametrize("shapes", MATMUL, ids=str)
def test_matmul_grad(rng, shapes, layout):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    gc(lambda x, y: x @ y, make(a, "float64", layout, True), make(b, "float64", layout, True))


def test_bmm_grad_one_side(rng):
    a = dc.tensor(rng.standard_normal((2, 3, 4)), dtype=dc.float64, requires_grad=True)
    b = dc.tensor(rng.standard_normal((2, 4, 2)), dtype=dc.float64)
    gc(lambda x: dc.bmm(x, b), a)
    gc(lambda x: dc.bmm(b.transpose(1, 2), x.transpose(1, 2)), a)


# ============================================================================================ cat / stack / split

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", DTYPES + ["int64", "bool"])
def test_cat(rng, dtype, dim, layout):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    shapes = [tuple(s if d != dim % 3 else s + k for d, s in enumerate(sh)) for k, sh in enumerate(shapes)]
    arrs = [rng.integers(-3, 4, s).astype(np.float64) for s in shapes]
    if dtype == "bool":
        arrs = [a > 0 for a in arrs]
    xs = [make(a, dtype, layout) for a in arrs]
    y = dc.cat(xs, dim)
    assert y.dtype.name == dtype
    np.testing.assert_array_equal(to_np(y), np.concatenate(arrs, dim).astype(to_np(y).dtype))
    assert dc.cat(tuple(xs), dim=dim).shape == y.shape


def test_cat_many_and_empty(rng):
    arrs = [rng.standard_normal((k + 1, 2)) for k in range(11)]  # > 4 inputs: grouped path
    y = dc.cat([dc.tensor(a, dtype=dc.float64) for a in arrs])
    np.testing.assert_array_equal(y.numpy(), np.concatenate(arrs))
    e = dc.cat([dc.zeros(0, 2), dc.ones(2, 2), dc.zeros(0, 2)])
    assert e.shape == (2, 2) and e.sum().item() == 4.0
    assert dc.cat([dc.ones(3)]).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("n", [2, 6])
def test_cat_grad(rng, n):
    xs = [make(rng.standard_normal((2, k + 1)), "float64", "step" if k % 2 else "contig", True) for k in range(n)]
    gc(lambda *ts: dc.cat(list(ts), 1), *xs)
    ys = [make(rng.standard_normal((k + 1, 3)), "float64", "transpose", True) for k in range(n)]
    gc(lambda *ts: dc.cat(ts, 0), *ys)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack(rng, dim):
    arrs = [rng.standard_normal((2, 3)) for _ in range(3)]
    for layout in LAYOUTS:
        y = dc.stack([make(a, "float64", layout) for a in arrs], dim)
        np.testing.assert_array_equal(y.numpy(), np.stack(arrs, dim))
    xs = [make(a, "float64", "transpose", True) for a in arrs]
    gc(lambda *ts: dc.stack(list(ts), dim), *xs)


def test_split_chunk(rng):
    a = rng.standard_normal((7, 4))
    x = dc.tensor(a, dtype=dc.float64)
    parts = x.split(3)
    assert [p.shape for p in parts] == [(3, 4), (3, 4), (1, 4)]
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), a)
    parts = dc.split(x, [2, 5], dim=0)
    assert [p.shape for p in parts] == [(2, 4), (5, 4)]
    np.testing.assert_array_equal(parts[1].numpy(), a[2:])
    cols = x.split(2, dim=1)
    assert [p.shape for p in cols] == [(7, 2), (7, 2)]
    np.testing.assert_array_equal(cols[1].numpy(), a[:, 2:])
    ch = x.chunk(3)
    assert [p.shape[0] for p in ch] == [3, 3, 1]
    ch = dc.chunk(x, 2, dim=1)
    np.testing.assert_array_equal(ch[0].numpy(), a[:, :2])
    # pieces are views of x
    assert cols[1].data_ptr() == x.data_ptr() + 2 * 8
    nc = make(a, "float64", "transpose")
    np.testing.assert_array_equal(nc.split(2, dim=1)[1].numpy(), a[:, 2:4])


def test_split_chunk_grad(rng):
    x = make(rng.standard_normal((5, 4)), "float64", "step", True)
    gc(lambda t: [p * (k + 1) for k, p in enumerate(t.split(2))], x)
    gc(lambda t: [p.exp() for p in t.chunk(2, dim=1)], x)
    gc(lambda t: t.split([1, 4])[1], x)


# ==================================================================================== where / clamp / masked_fill

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES + ["int64"])
def test_where(rng, dtype, layout):
    c = rng.standard_normal((3, 1)) > 0
    a = rng.integers(-5, 5, (3, 4)).astype(np.float64)
    b = rng.integers(-5, 5, (4,)).astype(np.float64)
    y = dc.where(make(c, "bool", layout), make(a, dtype, layout), make(b, dtype, layout))
    assert y.dtype.name == dtype
    np.testing.assert_array_equal(to_np(y), np.where(c, a, b))
    y = dc.where(make(c, "bool"), make(a, dtype), 7)
    np.testing.assert_array_equal(to_np(y), np.where(c, a, 7))
    y = dc.where(make(c, "bool"), 2, make(b, dtype))
    np.testing.assert_array_equal(to_np(y), np.where(c, 2, b))
    y = make(a, dtype).where(make(c, "bool"), make(b, dtype))
    np.testing.assert_array_equal(to_np(y), np.where(c, a, b))


def test_where_grad(rng):
    c = dc.tensor(rng.standard_normal((3, 1)) > 0)
    a = make(rng.standard_normal((3, 4)), "float64", "transpose", True)
    b = make(rng.standard_normal((4,)), "float64", "step", True)
    gc(lambda x, y: dc.where(c, x, y), a, b)
    gc(lambda x: dc.where(c, x, 0.0), a)


CLAMPS = [{"min": -0.5}, {"max": 0.3}, {"min": -0.5, "max": 0.3}, {"min": 0.2, "max": 0.2}]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", CLAMPS, ids=str)
def test_clamp(rng, kw, dtype, layout):
    a = rng.standard_normal((4, 5))
    x = make(a, dtype, layout)
    want = np.clip(rounded(a, dtype), kw.get("min"), kw.get("max"))
    want = want.astype(np.float32).astype(np.float64) if dtype == "float32" else want
    assert_close(x.clamp(**kw), want, dtype)
    assert_close(dc.clamp(x, **kw), want, dtype)
    assert_close(x.clip(**kw), want, dtype)


def test_clamp_int():
    x = dc.tensor([-5, 0, 5])
    assert x.clamp(min=-1).tolist() == [-1, 0, 5]
    assert x.clamp(max=2).tolist() == [-5, 0, 2]
    assert x.clamp(-1, 1).tolist() == [-1, 0, 1] and x.clamp(-1, 1).dtype == dc.int64


@pytest.mark.parametrize("kw", CLAMPS[:3], ids=str)
def test_clamp_grad(rng, kw):
    a = rng.standard_normal((3, 4))
    a = np.where(np.abs(a + 0.5) < 1e-3, 0.1, a)
    a = np.where(np.abs(a - 0.3) < 1e-3, 0.1, a)
    gc(lambda t: t.clamp(**kw), make(a, "float64", "transpose", True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES + ["int64"])
@pytest.mark.parametrize("mshape", [(3, 4), (3, 1), (4,)], ids=str)
def test_masked_fill(rng, mshape, dtype, layout):
    a = rng.integers(-5, 5, (3, 4)).astype(np.float64)
    m = rng.standard_normal(mshape) > 0
    y = make(a, dtype, layout).masked_fill(make(m, "bool", layout), -3)
    np.testing.assert_array_equal(to_np(y), np.where(m, -3, a))
    y = dc.masked_fill(make(a, dtype), make(m, "bool"), 2)
    np.testing.assert_array_equal(to_np(y), np.where(m, 2, a))
    if dtype != "int64":
        y = make(a, dtype).masked_fill(make(m, "bool"), float("-inf"))
        assert np.isneginf(to_np(y)[np.broadcast_to(m, a.shape)]).all()


def test_masked_fill_grad(rng):
    m = dc.tensor(rng.standard_normal((3, 1)) > 0)
    gc(lambda t: t.masked_fill(m, 0.5), make(rng.standard_normal((3, 4)), "float64", "transpose", True))
    x = dc.tensor(rng.standard_normal((3, 4)), dtype=dc.float64, requires_grad=True)
    x.masked_fill(m, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.broadcast_to(~m.numpy(), (3, 4)).astype(float))


# ============================================================================ gather / index_select / embedding

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", DTYPES + ["int64"])
def test_gather(rng, dtype, dim, layout):
    a = rng.integers(-9, 9, (4, 5)).astype(np.float64)
    ishape = (3, 5) if dim == 0 else (4, 3)
    idx = rng.integers(0, a.shape[dim], ishape)
    y = make(a, dtype, layout).gather(dim, make(idx, "int64", layout))
    np.testing.assert_array_equal(to_np(y), np.take_along_axis(a, idx, axis=dim))
    y = dc.gather(make(a, dtype), dim, dc.tensor(idx))
    np.testing.assert_array_equal(to_np(y), np.take_along_axis(a, idx, axis=dim))


def test_gather_smaller_index(rng):
    a = rng.standard_normal((4, 5))
    idx = np.array([[0, 4], [3, 3]])  # (2, 2): smaller than the input in the other dim
    y = dc.tensor(a, dtype=dc.float64).gather(1, dc.tensor(idx))
    np.testing.assert_array_equal(y.numpy(), np.take_along_axis(a[:2], idx, axis=1))


@pytest.mark.parametrize("dim", [0, 1])
def test_gather_grad(rng, dim):
    idx = dc.tensor(np.array([[0, 1, 1], [2, 0, 0]]) if dim == 1 else np.array([[1, 2, 0], [1, 1, 2]]))
    gc(lambda t: t.gather(dim, idx), make(rng.standard_normal((3, 3)), "float64", "transpose", True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", DTYPES + ["int32", "bool"])
def test_index_select(rng, dtype, dim, layout):
    a = rng.integers(-9, 9, (4, 5, 3)).astype(np.float64)
    if dtype == "bool":
        a = a > 0
    idx = rng.integers(0, a.shape[dim], 7)  # with repeats
    x = make(a, dtype, layout)
    y = x.index_select(dim, make(idx, "int64", layout))
    np.testing.assert_array_equal(to_np(y), np.take(a, idx, axis=dim).astype(to_np(y).dtype))
    y2 = dc.index_select(x, dim, dc.tensor(idx))
    np.testing.assert_array_equal(to_np(y2), to_np(y))


def test_index_with_int_tensor_and_list(rng):
    a = rng.standard_normal((6, 3))
    x = dc.tensor(a, dtype=dc.float64)
    np.testing.assert_array_equal(x[dc.tensor([4, 0, 4])].numpy(), a[[4, 0, 4]])
    np.testing.assert_array_equal(x[[1, 2]].numpy(), a[[1, 2]])
    np.testing.assert_array_equal(x[:, dc.tensor([2, 0])].numpy(), a[:, [2, 0]])
    np.testing.assert_array_equal(x[dc.tensor([1, 3], dtype=dc.int32)].numpy(), a[[1, 3]])
    mask = a[:, 0] > 0
    np.testing.assert_array_equal(x[dc.tensor(mask)].numpy(), a[mask])


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_lookup(rng, dtype):
    w = rng.standard_normal((10, 4))
    idx = np.array([[1, 9, 1], [0, 3, 9]])
    weight = make(w, dtype)
    y = weight[dc.tensor(idx)]
    assert y.shape == (2, 3, 4)
    assert_close(y, rounded(w, dtype)[idx], dtype)
    # a non-contiguous table and a transposed index
    wt = make(w, dtype, "transpose")
    y = wt[dc.tensor(np.ascontiguousarray(idx.T)).T]
    assert_close(y, rounded(w, dtype)[idx], dtype)
    y = make(w, dtype, "step")[dc.tensor(idx)]
    assert_close(y, rounded(w, dtype)[idx], dtype)


def test_embedding_grad(rng):
    idx = dc.tensor(np.array([[1, 4, 1], [0, 3, 4]]))
    gc(lambda w: w[idx], make(rng.standard_normal((5, 3)), "float64", "contig", True))
    gc(lambda w: w[idx], make(rng.standard_normal((5, 3)), "float64", "transpose", True))
    w = dc.tensor(rng.standard_normal((5, 3)), dtype=dc.float64, requires_grad=True)
    w[idx].sum().backward()
    counts = np.bincount(idx.numpy().ravel(), minlength=5).astype(float)
    np.testing.assert_array_equal(w.grad.numpy(), np.repeat(counts[:, None], 3, 1))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_index_select_grad(rng, dim):
    idx = dc.tensor(np.array([1, 0, 1, 1]))
    gc(lambda t: t.index_select(dim, idx), make(rng.standard_normal((2, 3, 2)), "float64", "step", True))


# ============================================================================================ tril / triu

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("diagonal", [-2, -1, 0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES + ["int64", "bool"])
@pytest.mark.parametrize("upper", [False, True])
def test_tril_triu(rng, upper, dtype, diagonal, layout):
    a = rng.integers(1, 9, (2, 4, 5)).astype(np.float64)
    x = make(a, dtype, layout)
    name = "triu" if upper else "tril"
    want = getattr(np, name)(a, k=diagonal)
    y = getattr(x, name)(diagonal)
    np.testing.assert_array_equal(to_np(y), want.astype(to_np(y).dtype))
    np.testing.assert_array_equal(to_np(getattr(dc, name)(x, diagonal=diagonal)), to_np(y))
    if diagonal == 0:
        np.testing.assert_array_equal(to_np(getattr(x, name)()), to_np(y))


@pytest.mark.parametrize("upper", [False, True])
def test_tril_triu_grad(rng, upper):
    for k in (-1, 0, 1):
        x = make(rng.standard_normal((2, 3, 4)), "float64", "transpose", True)
        gc(lambda t, k=k: t.triu(k) if upper else t.tril(k), x)


# ============================================================================================ dropout

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_train(rng, dtype, p):
    n = 100_000
    a = rng.uniform(0.5, 1.5, n)
    x = make(a, dtype)
    y = dc._C.dropout(x, p, True)
    out = to_np(y)
    zero = out == 0
    assert abs(zero.mean() - p) < 0.01, zero.mean()  # ~6 sigma at n = 100k
    want = rounded(a, dtype)[~zero] * (1.0 / (1.0 - p))
    np.testing.assert_allclose(out[~zero], want, rtol=1e-6 if dtype == "float32" else 1e-14)
    # a fresh mask each call
    assert (to_np(dc._C.dropout(x, p, True)) == 0).tolist() != zero.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_eval_and_edges(rng, dtype):
    x = make(rng.standard_normal((4, 5)), dtype)
    y = dc._C.dropout(x, 0.5, False)
    np.testing.assert_array_equal(to_np(y), to_np(x))
    np.testing.assert_array_equal(to_np(dc._C.dropout(x, 0.0, True)), to_np(x))
    assert (to_np(dc._C.dropout(x, 1.0, True)) == 0).all()
    nc = make(rng.standard_normal((300, 40)), dtype, "transpose")
    y = to_np(dc._C.dropout(nc, 0.25, True))
    keep = y != 0
    np.testing.assert_allclose(y[keep], to_np(nc)[keep] / 0.75, rtol=1e-6)


def test_dropout_reproducible_with_seed():
    x = dc.ones(1000)
    dc.manual_seed(7)
    a = dc._C.dropout(x, 0.5, True).numpy().copy()
    dc.manual_seed(7)
    b = dc._C.dropout(x, 0.5, True).numpy()
    np.testing.assert_array_equal(a, b)


def test_dropout_grad(rng):
    x = dc.tensor(rng.standard_normal((50, 40)), dtype=dc.float64, requires_grad=True)
    y = dc._C.dropout(x, 0.3, True)
    y.sum().backward()
    keep = y.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), keep / 0.7, rtol=1e-14)

    def fn(t):
        dc.manual_seed(3)  # the same mask on every call, so finite differences make sense
        return dc._C.dropout(t, 0.4, True)

    gc(fn, make(rng.standard_normal((3, 4)), "float64", "transpose", True))


# ============================================================================================ layer norm

def np_layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 8), (2, 3, 5)], ids=str)
def test_layer_norm(rng, shape, dtype, affine, layout):
    a = rng.standard_normal(shape) * 2 + 1
    D = shape[-1]
    w = rng.standard_normal(D) if "w" in affine else None
    b = rng.standard_normal(D) if "b" in affine else None
    for eps in (1e-5, 0.1):
        y = dc._C.layer_norm(make(a, dtype, layout), None if w is None else make(w, dtype, layout),
                             None if b is None else make(b, dtype, layout), eps)
        want = np_layer_norm(rounded(a, dtype), None if w is None else rounded(w, dtype),
                             None if b is None else rounded(b, dtype), eps)
        assert_close(y, want, dtype, rtol=1e-5 if dtype == "float32" else 1e-10,
                     atol=1e-5 if dtype == "float32" else 1e-12)


def test_layer_norm_default_eps_and_large_offset(rng):
    a = rng.standard_normal((4, 16)) * 0.1 + 1000.0  # |mean| >> std: two-pass variance needed
    y = dc._C.layer_norm(dc.tensor(a, dtype=dc.float32), None, None)
    assert_close(y, np_layer_norm(rounded(a, "float32"), None, None, 1e-5), "float32", rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
@pytest.mark.parametrize("layout", ["contig", "transpose"])
def test_layer_norm_grad(rng, affine, layout):
    x = make(rng.standard_normal((2, 3, 4)), "float64", layout, True)
    w = make(rng.standard_normal(4), "float64", "step", True) if "w" in affine else None
    b = make(rng.standard_normal(4), "float64", "contig", True) if "b" in affine else None
    ins = [t for t in (x, w, b) if t is not None]

    def fn(*ts):
        it = iter(ts)
        xx = next(it)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return dc._C.layer_norm(xx, ww, bb, 1e-5)

    gc(fn, *ins)


def test_layer_norm_grad_params_only(rng):
    x = dc.tensor(rng.standard_normal((5, 4)), dtype=dc.float64)
    w = dc.tensor(rng.standard_normal(4), dtype=dc.float64, requires_grad=True)
    b = dc.tensor(rng.standard_normal(4), dtype=dc.float64, requires_grad=True)
    gc(lambda ww, bb: dc._C.layer_norm(x, ww, bb, 1e-5), w, b)


# ============================================================================================ composites

def test_composite_mlp_grad(rng):
    """A tiny MLP with most ops chained: the chain rule across nodes, broadcasting and views."""
    x = dc.tensor(rng.standard_normal((4, 3)), dtype=dc.float64)
    w1 = dc.tensor(rng.standard_normal((3, 5)), dtype=dc.float64, requires_grad=True)
    b1 = dc.tensor(rng.standard_normal(5), dtype=dc.float64, requires_grad=True)
    w2 = dc.tensor(rng.standard_normal((5, 2)), dtype=dc.float64, requires_grad=True)

    def fn(w1, b1, w2):
        h = dc._C.gelu(x @ w1 + b1, True)
        h = dc._C.layer_norm(h, None, None, 1e-5)
        logits = (h @ w2).T.reshape(-1, 4)
        return logits.log_softmax(-1).mean() + (h**2).sum(1).sqrt().mean()

    gc(fn, w1, b1, w2)


def test_same_input_many_paths(rng):
    x = make(rng.standard_normal((3, 3)), "float64", "transpose", True)
    gc(lambda t: t @ t + t * t.T - t.sum(0, keepdim=True) * t.exp(), x)


# ============================================================================================ big inputs

def test_large_inputs_take_the_parallel_paths(rng):
    """Sizes past the kernels' OpenMP thresholds (32K elements), forward and backward, in float64."""
    a = rng.standard_normal((300, 260))
    x = dc.tensor(a, dtype=dc.float64)
    xt = make(a.T, "float64", "transpose")  # values a.T, memory of a
    np.testing.assert_array_equal(xt.contiguous().numpy(), a.T)  # tiled transposed copy
    np.testing.assert_allclose((x * 2 + x.T.T.exp()).numpy(), a * 2 + np.exp(a), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose((x + dc.tensor(a[0], dtype=dc.float64)).numpy(), a + a[0], rtol=1e-14)
    np.testing.assert_allclose(xt.sum(0).numpy(), a.T.sum(0), rtol=1e-12)
    np.testing.assert_allclose(xt.sum(1).numpy(), a.T.sum(1), rtol=1e-12)
    np.testing.assert_allclose(x.sum().item(), a.sum(), rtol=1e-12)
    np.testing.assert_array_equal(x.amax(0).numpy(), a.max(0))
    np.testing.assert_array_equal(xt.argmax(1).numpy(), a.T.argmax(1))
    np.testing.assert_array_equal(x.argmin(0).numpy(), a.argmin(0))
    np.testing.assert_allclose(xt.softmax(1).numpy(), np_softmax(a.T, 1), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal((x > 0).numpy(), a > 0)
    np.testing.assert_array_equal(dc.where(x > 0, x, -x).numpy(), np.abs(a))
    np.testing.assert_array_equal(x.tril(3).numpy(), np.tril(a, 3))

    # layer norm forward and backward (per-thread dw/db partials) against the closed form
    w, b = rng.standard_normal(260), rng.standard_normal(260)
    g = rng.standard_normal((300, 260))
    tx = dc.tensor(a, dtype=dc.float64, requires_grad=True)
    tw = dc.tensor(w, dtype=dc.float64, requires_grad=True)
    tb = dc.tensor(b, dtype=dc.float64, requires_grad=True)
    y = dc._C.layer_norm(tx, tw, tb, 1e-5)
    y.backward(dc.tensor(g, dtype=dc.float64))
    mu, var = a.mean(1, keepdims=True), a.var(1, keepdims=True)
    rstd = 1 / np.sqrt(var + 1e-5)
    xh = (a - mu) * rstd
    np.testing.assert_allclose(y.detach().numpy(), xh * w + b, rtol=1e-10, atol=1e-12)
    gx = g * w
    dx = rstd * (gx - gx.mean(1, keepdims=True) - xh * (gx * xh).mean(1, keepdims=True))
    np.testing.assert_allclose(tx.grad.numpy(), dx, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(tw.grad.numpy(), (g * xh).sum(0), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(tb.grad.numpy(), g.sum(0), rtol=1e-9, atol=1e-11)

    # softmax backward
    s = dc.tensor(a, dtype=dc.float64, requires_grad=True)
    s.softmax(-1).backward(dc.tensor(g, dtype=dc.float64))
    p = np_softmax(a, -1)
    np.testing.assert_allclose(s.grad.numpy(), p * (g - (g * p).sum(-1, keepdims=True)), rtol=1e-9, atol=1e-12)

    # embedding backward (index_add) and gather backward (scatter_add), with many duplicates
    table = dc.tensor(rng.standard_normal((50, 700)), dtype=dc.float64, requires_grad=True)
    idx = rng.integers(0, 50, (30, 20))
    out = table[dc.tensor(idx)]
    go = rng.standard_normal((30, 20, 700))
    out.backward(dc.tensor(go, dtype=dc.float64))
    want = np.zeros((50, 700))
    np.add.at(want, idx.ravel(), go.reshape(-1, 700))
    np.testing.assert_allclose(table.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    src = dc.tensor(a, dtype=dc.float64, requires_grad=True)
    gi = rng.integers(0, 260, (300, 200))
    src.gather(1, dc.tensor(gi)).backward(dc.tensor(g[:, :200], dtype=dc.float64))
    want = np.zeros_like(a)
    np.add.at(want, (np.arange(300)[:, None].repeat(200, 1), gi), g[:, :200])
    np.testing.assert_allclose(src.grad.numpy(), want, rtol=1e-12, atol=1e-12)

    # broadcast (stride-0) batch matmul and its gradient reduced back over the batch
    m = dc.tensor(rng.standard_normal((1, 64, 80)), dtype=dc.float64, requires_grad=True)
    v = dc.tensor(rng.standard_normal((6, 80, 70)), dtype=dc.float64, requires_grad=True)
    (m @ v).sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), v.detach().numpy().sum(-1).sum(0)[None, None, :].repeat(64, 1),
                               rtol=1e-10)
    np.testing.assert_allclose(v.grad.numpy(), np.broadcast_to(m.detach().numpy().sum(1)[..., None], (6, 80, 70)),
                               rtol=1e-10)
