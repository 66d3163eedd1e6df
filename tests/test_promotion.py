"""PyTorch's type promotion and the narrow integer dtypes (uint8, int8, int16), issue 8.

The tables below were printed by torch 2.15 (torch.result_type on (2,)-shaped and 0-d tensors,
torch.can_cast) for the ten dtypes in dutycycle's id order; every entry is checked against our
promote_types / result_type / can_cast, and through real ops (add, mul, compare, where, cat,
in-place) for the dtypes with arithmetic kernels. With DUTYCYCLE_TORCH_PYTHON set, the same
checks regenerate the tables from torch itself."""

import os
import subprocess

import numpy as np
import pytest

import dutycycle as dc

NAMES = ["float32", "float64", "bfloat16", "float16", "int32", "int64", "bool", "uint8", "int8", "int16"]
DT = [getattr(dc, n if n != "bool" else "bool_") for n in NAMES]
# row a, column b: the id (index into NAMES) of torch.result_type(zeros(2, a), zeros(2, b))
DIM_DIM = ["0100000000", "1111111111", "0120222222", "0103333333", "0123454444", "0123555555", "0123456789",
           "0123457799", "0123458989", "0123459999"]
# ... of torch.result_type(zeros(2, a), zeros((), b)): a 0-d tensor counts only when of a higher category
DIM_ZERO = ["0000000000", "1111111111", "2222222222", "3333333333", "0123444444", "0123555555", "0123456789",
            "0123777777", "0123888888", "0123999999"]
# torch.can_cast(a, b)
CAN_CAST = ["1111000000", "1111000000", "1111000000", "1111000000", "1111110111", "1111110111", "1111111111",
            "1111110111", "1111110111", "1111110111"]
ARITH = {"float32", "float64", "int32", "int64", "uint8", "int8", "int16"}  # dtypes with add/mul kernels


@pytest.mark.parametrize("a", range(10), ids=NAMES)
def test_tables_match_torch(a):
    for b in range(10):
        assert dc.promote_types(DT[a], DT[b]) is DT[int(DIM_DIM[a][b])], (NAMES[a], NAMES[b])
        x, y0, y = dc.zeros(2, dtype=DT[a]), dc.zeros((), dtype=DT[b]), dc.zeros(2, dtype=DT[b])
        assert dc.result_type(x, y) is DT[int(DIM_DIM[a][b])], (NAMES[a], NAMES[b])
        assert dc.result_type(x, y0) is DT[int(DIM_ZERO[a][b])], (NAMES[a], "0-d", NAMES[b])
        assert dc.can_cast(DT[a], DT[b]) == (CAN_CAST[a][b] == "1"), (NAMES[a], NAMES[b])


@pytest.mark.parametrize("a", sorted(ARITH))
def test_ops_compute_in_the_result_type(a):
    rng = np.random.default_rng(0)
    for b in sorted(ARITH):
        da, db = getattr(dc, a), getattr(dc, b)
        xa = rng.integers(1, 5, (2, 3)).astype(a)
        xb = rng.integers(1, 5, (3,)).astype(b)
        ta, tb = dc.tensor(xa, dtype=da), dc.tensor(xb, dtype=db)
        want = dc.promote_types(da, db)
        for op, ref in ((lambda u, v: u + v, np.add), (lambda u, v: u * v, np.multiply),
                        (lambda u, v: u - v, np.subtract), (dc.maximum, np.maximum)):
            r = op(ta, tb)
            assert r.dtype is want, (a, b, r.dtype)
            np.testing.assert_array_equal(r.numpy(), ref(xa.astype(np.float64), xb.astype(np.float64))
                                          .astype(want.name))
        assert (ta < tb).dtype is dc.bool_
        np.testing.assert_array_equal((ta < tb).numpy(), xa < xb)
        assert dc.where(ta > 2, ta, tb).dtype is want
        assert dc.cat([ta.reshape(-1), tb]).dtype is want
        np.testing.assert_array_equal(dc.cat([ta.reshape(-1), tb]).numpy().astype(np.float64),
                                      np.concatenate([xa.reshape(-1), xb]).astype(np.float64))


def test_python_numbers_and_zero_dim_tensors():
    i = dc.tensor([1, 2, 3])
    assert (i + 2).dtype is dc.int64 and (i * 2.5).dtype is dc.float32 and (i / 2).dtype is dc.float32
    assert (dc.tensor([True, False]) + 1).dtype is dc.int64
    assert (dc.tensor([True, False]) * 1.5).dtype is dc.float32
    f = dc.ones(3)
    assert (f + dc.tensor(1.0, dtype=dc.float64)).dtype is dc.float32  # 0-d of the same category
    assert (i.int() + dc.tensor(7)).dtype is dc.int32
    assert (i + dc.tensor(0.5, dtype=dc.float64)).dtype is dc.float64  # 0-d of a higher category
    assert (dc.ones((), dtype=dc.float64) + dc.ones((), dtype=dc.float32)).dtype is dc.float64
    u = dc.tensor([250, 3], dtype=dc.uint8)
    assert (u + 10).dtype is dc.uint8
    np.testing.assert_array_equal((u + 10).numpy(), [4, 13])  # wraps, as torch
    assert dc.result_type(u, 1.0) is dc.float32 and dc.result_type(2, u) is dc.uint8
    old = dc.get_default_dtype()
    dc.set_default_dtype(dc.float64)
    try:
        assert (i * 0.5).dtype is dc.float64
    finally:
        dc.set_default_dtype(old)


def test_gradients_flow_back_in_each_inputs_dtype():
    w = dc.ones(3, requires_grad=True)
    d = dc.tensor([1.0, 2.0, 3.0], dtype=dc.float64, requires_grad=True)
    y = w * d
    assert y.dtype is dc.float64
    y.sum().backward()
    assert w.grad.dtype is dc.float32 and d.grad.dtype is dc.float64
    np.testing.assert_array_equal(w.grad.numpy(), [1, 2, 3])
    m = dc.ones(2, 2, requires_grad=True)
    idx = dc.tensor([[1, 0], [0, 1]])
    (m * idx).sum().backward()  # int64 * float32 -> float32 (the DDPM-style mask product)
    np.testing.assert_array_equal(m.grad.numpy(), [[1, 0], [0, 1]])


def test_in_place_keeps_the_destination_dtype_and_refuses_what_torch_refuses():
    x = dc.ones(3)
    x += dc.ones(3, dtype=dc.float64)
    assert x.dtype is dc.float32
    x.mul_(dc.tensor([1, 2, 3]))
    assert x.dtype is dc.float32 and x.tolist() == [2.0, 4.0, 6.0]
    k = dc.tensor([1, 2], dtype=dc.int32)
    k += dc.tensor([10, 20])
    assert k.dtype is dc.int32 and k.tolist() == [11, 22]
    with pytest.raises(dc.DTypeError, match="result type float32 can't be cast to the desired output type int64"):
        i = dc.arange(3)
        i += dc.ones(3)
    with pytest.raises(dc.DTypeError, match="can't be cast to the desired output type bool"):
        b = dc.tensor([True])
        b.add_(dc.tensor([1]))


def test_narrow_integer_dtypes():
    img = np.array([[[0, 128, 255], [1, 2, 3]]], dtype=np.uint8)
    u = dc.from_numpy(img)
    assert u.dtype is dc.uint8 and u.element_size() == 1 and u.numpy().dtype == np.uint8
    np.testing.assert_array_equal(u.numpy(), img)
    img[0, 0, 0] = 7  # from_numpy shares memory
    assert int(u[0, 0, 0]) == 7
    np.testing.assert_allclose((u.float() / 255).numpy(), img / 255, rtol=1e-6)
    assert (u / 255).dtype is dc.float32
    assert u.sum().dtype is dc.int64 and int(u.sum()) == int(img.astype(np.int64).sum())
    assert u.max().dtype is dc.uint8 and int(u.max()) == 255 and int(u.argmax()) == 2
    assert u.permute(2, 0, 1).contiguous().shape == (3, 1, 2)
    for name in ("int8", "int16"):
        a = np.array([-100, 5, 100], dtype=name)
        t = dc.from_numpy(a)
        assert t.dtype is getattr(dc, name)
        np.testing.assert_array_equal((-t).numpy(), -a)
        np.testing.assert_array_equal(t.abs().numpy(), np.abs(a))
        np.testing.assert_array_equal((t * 2).numpy(), (a * 2).astype(name))  # wraps in int8
        np.testing.assert_array_equal(t.sort().values.numpy(), np.sort(a))
        np.testing.assert_array_equal(t.cumsum(0).numpy(), np.cumsum(a.astype(np.int64)))
    assert dc.tensor([300.7, -1.2]).to(dc.uint8).tolist() == [44, 255]  # torch's wrap on x86
    assert dc.zeros(2, dtype=dc.short).dtype is dc.int16
    assert dc.tensor([1, 2]).byte().dtype is dc.uint8 and dc.tensor([1]).char().dtype is dc.int8
    assert dc.arange(4, dtype=dc.uint8).tolist() == [0, 1, 2, 3]
    r = dc.randint(0, 256, (1000,), dtype=dc.uint8)
    assert r.dtype is dc.uint8 and 0 <= int(r.min()) and int(r.max()) <= 255
    t = dc.from_dlpack(dc.tensor([1, 2], dtype=dc.uint8))
    assert t.dtype is dc.uint8
    with pytest.raises(TypeError, match="uint16"):
        dc.from_numpy(np.zeros(3, np.uint16))


@pytest.mark.skipif(not os.environ.get("DUTYCYCLE_TORCH_PYTHON"), reason="set DUTYCYCLE_TORCH_PYTHON to a Python "
                    "with torch")
def test_tables_are_torchs():
    code = ("import torch\nn=" + repr(NAMES) + "\nd=[getattr(torch,x) for x in n]\n"
            "f=lambda a,b,z: n.index(str(torch.result_type(torch.zeros(2,dtype=a),"
            "torch.zeros(() if z else 2,dtype=b))).split('.')[1])\n"
            "print([''.join(str(f(a,b,0)) for b in d) for a in d])\n"
            "print([''.join(str(f(a,b,1)) for b in d) for a in d])\n"
            "print([''.join('1' if torch.can_cast(a,b) else '0' for b in d) for a in d])\n")
    out = subprocess.run([os.environ["DUTYCYCLE_TORCH_PYTHON"], "-c", code], capture_output=True, text=True,
                         timeout=120).stdout.splitlines()
    assert out == [repr(DIM_DIM), repr(DIM_ZERO), repr(CAN_CAST)]
