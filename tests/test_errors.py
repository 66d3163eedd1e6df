"""Bad input raises a Python exception whose message names the problem (the shapes, dtypes, dims or
indices involved), never a crash. dutycycle's own exception classes also derive from the matching
builtin (ShapeError is a ValueError, DTypeError a TypeError, IndexError_ an IndexError)."""

import re

import numpy as np
import pytest

import dutycycle as dc


def raises(exc, *fragments):
    """pytest.raises that also checks every fragment appears (literally) in the message."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


def test_exception_hierarchy():
    assert issubclass(dc.ShapeError, ValueError) and issubclass(dc.ShapeError, dc.DutycycleError)
    assert issubclass(dc.DTypeError, TypeError) and issubclass(dc.IndexError_, IndexError)
    assert issubclass(dc.DutycycleError, RuntimeError)
    assert issubclass(dc.AutogradError, dc.DutycycleError) and issubclass(dc.DeviceError, dc.DutycycleError)


# ============================================================================================ shapes

def test_matmul_shape_mismatch():
    with raises(dc.ShapeError, "(2, 3)", "(4, 5)", "matmul"):
        dc.randn(2, 3) @ dc.randn(4, 5)
    with raises(ValueError, "(3,)", "(4,)"):
        dc.randn(3) @ dc.randn(4)
    with raises(ValueError, "(2, 3)", "(2,)"):
        dc.randn(2, 3) @ dc.randn(2)
    with raises(ValueError, "(2, 3, 4)", "(3, 4, 5)", "batch"):
        dc.randn(2, 3, 4) @ dc.randn(3, 4, 5)
    with raises(ValueError, "()", "(2, 3)"):
        dc.tensor(1.0) @ dc.randn(2, 3)
    with raises(ValueError, "(2, 3)", "(2, 3)", "3-D"):
        dc.bmm(dc.randn(2, 3), dc.randn(2, 3))
    with raises(ValueError, "batch", "(2, 3, 4)", "(3, 4, 5)"):
        dc.bmm(dc.randn(2, 3, 4), dc.randn(3, 4, 5))


def test_broadcast_shape_mismatch():
    a, b = dc.randn(2, 3), dc.randn(4, 5)
    for op in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a / b, lambda: a == b, lambda: dc.maximum(a, b)):
        with raises(dc.ShapeError, "(2, 3)", "(4, 5)", "broadcast"):
            op()
    with raises(ValueError, "(3, 3)", "(2, 3)"):
        a.add_(dc.randn(3, 3))
    with raises(ValueError, "(2, 4)", "(2, 3)"):
        a.add_(dc.randn(2, 4))
    with raises(ValueError, "(4, 5)", "(2, 3)"):
        a.copy_(b)
    with raises(ValueError, "(2, 3)", "(4, 5)"):
        dc.where(a > 0, a, b)


def test_dtype_mismatch():
    """Mixed dtypes promote (tests/test_promotion.py); what torch refuses still raises, naming both."""
    with raises(TypeError, "float32", "float64"):
        dc.randn(2, 3) @ dc.randn(3, 2, dtype=dc.float64)
    with raises(dc.DTypeError, "result type float32", "int64"):
        dc.tensor([1, 2]).add_(dc.tensor([1.0, 2.0]))
    with raises(TypeError, "conv2d", "float64", "float32"):
        dc.nn.functional.conv2d(dc.randn(1, 1, 3, 3), dc.randn(1, 1, 2, 2, dtype=dc.float64))


def test_op_needs_float():
    i = dc.tensor([1, 2, 3])
    with raises(TypeError, "mean", "int64"):
        i.mean()
    with raises(TypeError, "softmax", "int64"):
        i.softmax(0)
    with raises(TypeError, "sin", "int64"):
        i.sin()
    with raises(TypeError, "matmul", "int64"):
        dc.tensor([[1]]) @ dc.tensor([[1]])
    with raises(TypeError, "layer_norm", "int64"):
        dc._C.layer_norm(i, None, None, 1e-5)
    with raises(TypeError, "dropout", "int64"):
        dc._C.dropout(i, 0.5, True)
    with raises(TypeError, "rand", "int64"):
        dc.rand(3, dtype=dc.int64)
    # 16-bit floats are floats: computed in float32 on the CPU and rounded (csrc/cpu/widen.c)
    s = dc.ones(2).bfloat16() + dc.ones(2).bfloat16()
    assert s.dtype == dc.bfloat16 and s.float().tolist() == [2.0, 2.0]
    with raises(TypeError, "integer and bool", "bfloat16"):
        dc.ones(2).bfloat16() & dc.ones(2).bfloat16()


# ============================================================================================ devices

def test_cuda_without_device_or_cross_device():
    if dc.cuda.is_available():
        a, b = dc.ones(3), dc.ones(3, device="cuda")
        with raises(dc.DeviceError, "cpu", "cuda"):
            a + b
        with raises(dc.DeviceError, "cpu", "cuda"):
            dc.cat([a, b])
        with raises(dc.DeviceError, "cpu", "cuda"):
            dc.ones(2, 3) @ dc.ones(3, 2, device="cuda")
    else:
        with raises(dc.DeviceError, "cuda", "not available"):
            dc.zeros(2, device="cuda")
        with raises(dc.DeviceError, "cuda", "not available"):
            dc.ones(2).cuda()
        with raises(dc.DeviceError, "cuda:1", "not available"):
            dc.ones(2).to("cuda:1")
    with raises(ValueError, "tpu"):
        dc.zeros(2, device="tpu")
    with raises(ValueError, "cuda:x"):
        dc.device("cuda:x")


# ============================================================================================ autograd misuse

def test_backward_non_scalar_without_gradient():
    x = dc.randn(2, 3, requires_grad=True)
    with raises(dc.AutogradError, "scalar", "(2, 3)", "gradient"):
        (x * 2).backward()


def test_backward_twice_through_freed_graph():
    x = dc.randn(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with raises(dc.AutogradError, "second time", "retain_graph=True"):
        y.backward()


def test_backward_bad_gradient_and_no_graph():
    x = dc.randn(3, requires_grad=True)
    with raises(ValueError, "(4,)", "(3,)"):
        (x * 2).backward(dc.randn(4))
    with raises(dc.AutogradError, "does not require grad"):
        dc.randn(3).sum().backward()
    with raises(TypeError, "str"):
        (x * 2).backward("a")


def test_inplace_on_leaf_that_requires_grad():
    w = dc.ones(3, requires_grad=True)
    ops = (lambda: w.add_(1), lambda: w.mul_(2), lambda: w.fill_(0), lambda: w.zero_(), lambda: w.copy_(dc.ones(3)))
    for op in ops:
        with raises(dc.AutogradError, "in place", "(3,)", "no_grad"):
            op()
    assert w.tolist() == [1.0, 1.0, 1.0]


def test_requires_grad_on_integer_tensor():
    with raises(RuntimeError, "floating-point", "int64"):
        dc.tensor([1, 2]).requires_grad_()


# ============================================================================================ indices

def test_embedding_index_out_of_range():
    w = dc.randn(5, 3, requires_grad=True)
    with raises(dc.IndexError_, "10", "size 5"):
        w[dc.tensor([[1, 10]])]
    with raises(IndexError, "-6", "size 5"):  # -1 .. -5 count from the end, as in torch
        w[dc.tensor([[1, -6]])]
    with raises(IndexError, "5", "size 5"):
        w.index_select(0, dc.tensor([5]))
    with raises(IndexError, "-2", "size 3"):
        w.gather(1, dc.tensor([[-2]]))
    with raises(IndexError, "3", "dimension 1", "size 3"):
        w.gather(1, dc.tensor([[0], [3]]))
    # the failed lookups left no half-built graph behind
    w[dc.tensor([[1, 4]])].sum().backward()
    assert w.grad.shape == (5, 3)


def test_integer_index_out_of_range():
    x = dc.randn(2, 3)
    with raises(IndexError, "10", "dimension 0", "size 2"):
        x[10]
    with raises(IndexError, "-3", "size 2"):
        x[-3]
    with raises(IndexError, "5", "dimension 1", "size 3"):
        x[0, 5]
    with raises(IndexError, "7", "dimension 1", "size 3"):
        x[..., 7]
    with raises(IndexError, "too many indices", "(2, 3)"):
        x[0, 0, 0]
    with raises(IndexError, "too many indices", "()"):
        dc.tensor(1.0)[0]
    with raises(IndexError, "float32"):
        x[dc.tensor([0.0])]
    with raises(IndexError, "(1,)", "(2,)"):
        x[dc.tensor([True])]


def test_invalid_dims():
    x = dc.randn(2, 3)
    with raises(dc.IndexError_, "sum", "dim 5", "2 dim"):
        x.sum(dim=5)
    with raises(IndexError, "dim -3"):
        x.sum(-3)
    with raises(IndexError, "dim 5"):
        x.mean((0, 5))
    with raises(ValueError, "dim 0", "more than once"):
        x.sum((0, 0))
    with raises(IndexError, "dim 2"):
        x.softmax(2)
    with raises(IndexError, "dim 5"):
        x.max(5)
    with raises(IndexError, "dim 5"):
        x.argmax(5)
    with raises(IndexError, "dim 2"):
        x.transpose(0, 2)
    with raises(IndexError, "dim 4"):
        x.unsqueeze(4)
    with raises(IndexError, "dim 3"):
        x.squeeze(3)
    with raises(IndexError, "dim 5"):
        dc.cat([x, x], 5)
    with raises(IndexError, "dim 3"):
        dc.stack([x, x], 3)
    with raises(ValueError, "repeats"):
        x.permute(0, 0)
    with raises(ValueError, "1 dims", "(2, 3)"):
        x.permute(0)


# ============================================================================================ wrong Python types

def test_wrong_python_types():
    x = dc.randn(2, 3)
    with raises(TypeError, "size", "str"):
        dc.zeros("a")
    with raises(TypeError, "size", "float"):
        dc.ones(2.5)
    with raises(TypeError, "str"):
        x + "str"
    with raises(TypeError, "str"):
        "str" + x
    with raises(TypeError, "list"):
        x * [1, 2, 3]
    with raises(TypeError, "NoneType"):
        x - None
    with raises(TypeError, "view", "float"):
        x.view(1.5)
    with raises(TypeError, "reshape", "float"):
        x.reshape(2, 1.5)
    with raises(TypeError, "tensor", "int"):
        dc.cat([x, 1])
    with raises(TypeError, "list or tuple"):
        dc.cat(x)
    with raises(TypeError, "list or tuple"):
        dc.cat(5)
    with raises(TypeError, "int"):
        dc.stack([x, 3])
    with raises(TypeError, "matmul", "list"):
        dc.matmul(x, [[1.0], [2.0], [3.0]])
    with raises(TypeError, "matmul", "list"):
        x @ [[1.0]]
    with raises(TypeError, "matmul", "list"):
        dc.matmul([[1.0]], x)
    with raises(TypeError, "float"):
        x[1.5]
    with raises(TypeError, "str"):
        x["a"]
    with raises(TypeError, "dtype", "foo"):
        dc.zeros(2, dtype="foo")
    with raises(TypeError, "sum", "dim must be an int"):
        x.sum("a")
    with raises(TypeError, "to()", "3.5"):
        x.to(3.5)
    with raises(TypeError, "Tensor", "str"):
        dc._C.gelu("a", True)
    with raises(TypeError, "Tensor", "list"):
        dc._C.ops.silu([1.0])
    with raises(TypeError, "Tensor", "list"):
        dc._C.layer_norm([1.0], None, None, 1e-5)
    with raises(TypeError, "mask", "bool"):
        x.masked_fill(x, 0.0)
    with raises(TypeError, "str"):
        dc.tensor("abc")
    with raises(TypeError, "manual_seed", "str"):
        dc.manual_seed("a")
    with raises(TypeError, "grad", "int"):
        x.grad = 3
    with raises(TypeError, "Tensor()", "sizes", "sequence"):
        dc.Tensor(2, "a")  # the legacy constructor takes sizes or one sequence
    with raises(TypeError, "pickle"):
        __import__("pickle").dumps(x)


def test_view_of_transposed_tensor_suggests_reshape():
    x = dc.randn(2, 3)
    with raises(dc.ShapeError, "view", "(6,)", "(3, 2)", "reshape"):
        x.T.view(6)
    with raises(ValueError, "reshape"):
        dc.randn(4, 6)[:, :3].view(12)
    assert dc.randn(4, 6)[:, ::2].view(12).stride() == (2,)  # one stride still fits: a view
    assert x.T.reshape(6).shape == (6,)  # reshape copies instead


def test_bad_shapes_and_values():
    x = dc.randn(2, 3)
    with raises(ValueError, "(4, 2)", "size 6", "(2, 3)"):
        x.reshape(4, 2)
    with raises(ValueError, "only one dimension can be inferred"):
        x.reshape(-1, -1)
    with raises(ValueError, "(2, 3)", "(3, 3)", "size 3"):
        x.expand(3, 3)
    with raises(ValueError, "negative size", "-1"):
        dc.zeros(-1)
    with raises(ValueError, "at most 8 dims", "9"):
        dc.zeros(*([1] * 9))
    with raises(ValueError, "(2, 3)", "(4, 5)", "dim 0"):
        dc.cat([x, dc.randn(4, 5)])
    with raises(ValueError, "non-empty"):
        dc.cat([])
    with raises(ValueError, "(2, 3)", "(4, 5)"):
        dc.stack([x, dc.randn(4, 5)])
    with raises(ValueError, "weight", "(4,)", "3"):
        dc._C.layer_norm(x, dc.ones(4), None, 1e-5)
    with raises(ValueError, "bias", "(2,)", "3"):
        dc._C.layer_norm(x, None, dc.ones(2), 1e-5)
    with raises(ValueError, "between 0 and 1", "1.5"):
        dc._C.dropout(x, 1.5, True)
    with raises(ValueError, "tril", "(3,)"):
        dc.randn(3).tril()
    with raises(ValueError, "low (5)", "high (2)"):
        dc.randint(5, 2, (3,))
    with raises(ValueError, "step"):
        dc.arange(0, 1, 0)
    with raises(ValueError, "sign"):
        dc.arange(0, 5, -1)
    with raises(ValueError, "(2, 3)"):
        x.item()
    with raises(RuntimeError, "ambiguous", "(2, 3)"):
        bool(x)
    with raises(ValueError, "min or max"):
        x.clamp()
    with raises(IndexError, "narrow", "5", "size 3"):
        x.narrow(1, 2, 5)
    with raises(ValueError, "positive"):
        x.chunk(0)
    with raises(ValueError, "don't add up"):
        x.split([1, 2, 3])
    with raises(ValueError, "non-positive step"):
        x[::-1]
    with raises(ValueError, "non-empty", "(0, 3)"):
        dc.zeros(0, 3).max()
    with raises(ValueError, "index", "(1,)", "(2, 3)"):
        x.gather(1, dc.tensor([0]))
    with raises(TypeError, "int64", "int32"):
        x.gather(1, dc.tensor([[0]], dtype=dc.int32))
    with raises(ValueError, "1-D", "(1, 1)"):
        x.index_select(0, dc.tensor([[0]]))
    with raises(TypeError, "condition", "bool", "float32"):
        dc.where(x, x, x)
    with raises(MemoryError, "too large"):
        dc.empty(2**40, 2**40)


def test_numpy_conversion_errors():
    with raises(TypeError, "bfloat16", ".float()"):
        dc.ones(2).bfloat16().numpy()
    with raises(RuntimeError, "requires grad", "detach"):
        dc.ones(2, requires_grad=True).numpy()
    with raises(TypeError, "ndarray", "list"):
        dc.from_numpy([1, 2])
    with raises(TypeError, "unsupported array dtype"):
        dc.from_numpy(np.zeros(3, np.complex128))
    with raises(TypeError, "unsupported array dtype", "uint16"):
        dc.from_numpy(np.zeros(3, np.uint16))
    with raises(ValueError, "negative", "ascontiguousarray"):
        dc.from_numpy(np.arange(5.0)[::-1])


def test_errors_leave_the_engine_usable(rng):
    """After each kind of failure, ordinary work (incl. backward) still gives the right answer."""
    x = dc.tensor(rng.standard_normal((3, 4)), dtype=dc.float64, requires_grad=True)
    for bad in (lambda: x @ x, lambda: x + dc.ones(5, dtype=dc.float64), lambda: x[dc.tensor([9])],
                lambda: (x * 2).backward(), lambda: x.sum(7), lambda: x.view(5)):
        with pytest.raises((ValueError, TypeError, IndexError, RuntimeError)):
            bad()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy())
