"""Common ops that used to round-trip through NumPy now run as C ops (sort/argsort/topk, unique,
nonzero, floor_divide/remainder, cumsum, integer bitwise ops), and the number semantics the
hardening pass fixed: exact int64 scalars, bool/int cumsum into int64, writes into expanded
memory refused, expand sizes that overflow int64 refused."""

import math

import numpy as np
import pytest

import dutycycle as dc


@pytest.fixture
def no_host_copies(monkeypatch):
    """Any trip through NumPy (Tensor.numpy, the array interface, tolist) fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("host round-trip through NumPy")

    monkeypatch.setattr(dc.Tensor, "numpy", boom)
    monkeypatch.setattr(dc.Tensor, "tolist", boom)
    monkeypatch.setattr(dc.Tensor, "__array_interface__", property(boom))
    monkeypatch.setattr(dc.Tensor, "__array__", boom, raising=False)


def test_common_ops_make_no_host_round_trip(no_host_copies):
    x = dc.tensor([[3.0, -1.0, 2.0, 2.0], [0.0, 5.0, -4.0, 1.0]])
    i = dc.tensor([[7, -7, 3, 0], [1, 2, -3, 4]])
    x.sort(dim=1)
    x.sort(dim=0, descending=True)
    x.argsort()
    x.topk(2)
    x.unique(return_inverse=True, return_counts=True)
    x.nonzero()
    x.nonzero(as_tuple=True)
    x // 2.0
    x % 1.5
    i // 2
    i % 3
    i & 6
    i | 1
    i ^ i
    x.cumsum(1)
    i.cumsum(0)
    (x > 0).cumsum(1)


def test_sort_matches_numpy_with_ties_and_nan(rng):
    a = np.round(rng.uniform(-3, 3, (5, 40)))
    a[0, 3] = a[2, 7] = np.nan
    x = dc.tensor(a)
    v, idx = x.sort(dim=1)
    np.testing.assert_array_equal(idx.numpy(), np.argsort(a, axis=1, kind="stable"))
    np.testing.assert_array_equal(v.numpy(), np.sort(a, axis=1))
    # descending: NaN first (torch), ties keep their input order
    vd, idd = x.sort(dim=1, descending=True)
    for r in range(5):
        row = a[r]
        nan = np.flatnonzero(np.isnan(row))
        rest = [k for k in np.argsort(-row, kind="stable") if not np.isnan(row[k])]
        assert idd[r].tolist() == list(nan) + rest
    assert math.isnan(vd[0, 0].item())


def test_sort_every_dtype_and_dim(rng):
    for dt in (dc.float32, dc.float64, dc.int32, dc.int64):
        a = rng.integers(-20, 20, (4, 6, 5))
        x = dc.tensor(a).to(dt)
        for dim in (0, 1, 2, -1):
            np.testing.assert_array_equal(x.argsort(dim=dim).numpy(), np.argsort(a, axis=dim, kind="stable"))
    b = dc.tensor([True, False, True, False])
    assert b.argsort().tolist() == [1, 3, 0, 2]
    assert dc.tensor(5.0).argsort().tolist() == 0


def test_sort_values_carry_the_gradient():
    x = dc.tensor([3.0, 1.0, 2.0], requires_grad=True)
    v, _ = x.sort()
    (v * dc.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert x.grad.tolist() == [100.0, 1.0, 10.0]


def test_topk_largest_and_smallest(rng):
    a = rng.permutation(50).astype(np.float64).reshape(5, 10)
    x = dc.tensor(a)
    v, i = x.topk(3, dim=1)
    np.testing.assert_array_equal(v.numpy(), -np.sort(-a, axis=1)[:, :3])
    np.testing.assert_array_equal(np.take_along_axis(a, i.numpy(), 1), v.numpy())
    v, i = x.topk(2, dim=0, largest=False)
    np.testing.assert_array_equal(v.numpy(), np.sort(a, axis=0)[:2])
    with pytest.raises(IndexError):
        x.topk(11)


def test_unique_matches_numpy(rng):
    a = rng.integers(-5, 5, (7, 9)).astype(np.float32)
    x = dc.tensor(a)
    vals, inv, counts = x.unique(return_inverse=True, return_counts=True)
    v2, i2, c2 = np.unique(a, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(vals.numpy(), v2)
    np.testing.assert_array_equal(inv.numpy(), i2.reshape(a.shape))
    np.testing.assert_array_equal(counts.numpy(), c2)
    assert vals.dtype == dc.float32 and inv.dtype == dc.int64
    empty = dc.zeros(0).unique(return_counts=True)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
    assert dc.tensor([2**53 + 1, 2**53, 2**53 + 1]).unique().tolist() == [2**53, 2**53 + 1]


def test_nonzero_forms(rng):
    a = np.round(rng.uniform(-1, 1, (4, 5, 3)))
    x = dc.tensor(a)
    np.testing.assert_array_equal(x.nonzero().numpy(), np.argwhere(a))
    for got, want in zip(x.nonzero(as_tuple=True), np.nonzero(a)):
        np.testing.assert_array_equal(got.numpy(), want)
    assert dc.zeros(3).nonzero().shape == (0, 1)
    assert dc.tensor(3.0).nonzero().shape == (1, 0)
    assert [t.tolist() for t in dc.tensor(3.0).nonzero(as_tuple=True)] == [[0]]
    assert [t.tolist() for t in dc.tensor(0.0).nonzero(as_tuple=True)] == [[]]
    assert dc.tensor([0.0, math.nan]).nonzero().tolist() == [[1]]  # NaN is not zero
    assert dc.argwhere(dc.tensor([[True, False], [False, True]])).tolist() == [[0, 0], [1, 1]]


def test_floor_divide_and_remainder_follow_python():
    for a in (7, -7, 6, 0):
        for b in (2, -2, 3, -1):
            assert (dc.tensor([a]) // b).tolist() == [a // b], (a, b)
            assert (dc.tensor([a]) % b).tolist() == [a % b], (a, b)
            assert (dc.tensor([float(a)]) // float(b)).tolist() == [float(a) // float(b)], (a, b)
            assert (dc.tensor([float(a)]) % float(b)).tolist() == [float(a) % float(b)], (a, b)
    assert (dc.tensor([5.5, -5.5]) % 2).tolist() == [1.5, 0.5]
    assert (7 // dc.tensor([2, -2])).tolist() == [3, -4]
    assert (7 % dc.tensor([4])).tolist() == [3]
    big = dc.tensor([-(2**63)])
    assert (big // -1).tolist() == [-(2**63)]  # wraps as in torch, no crash
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        dc.tensor([1, 2]) // 0
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        dc.tensor([1, 2]) % dc.tensor([1, 0])
    assert math.isinf((dc.tensor([1.0]) // 0.0).item())


def test_remainder_gradient():
    a = dc.tensor([5.5, -2.25], dtype=dc.float64, requires_grad=True)
    b = dc.tensor([2.0, 1.5], dtype=dc.float64, requires_grad=True)
    (a % b).sum().backward()
    assert a.grad.tolist() == [1.0, 1.0]
    assert b.grad.tolist() == [-2.0, 2.0]
    c = dc.tensor([5.5], requires_grad=True)
    (c // 2.0).sum().backward()
    assert c.grad.tolist() == [0.0]


def test_bitwise_ops():
    a, b = np.array([5, 3, -8, 0]), np.array([1, 6, 7, -1])
    for dt in (dc.int32, dc.int64):
        x, y = dc.tensor(a).to(dt), dc.tensor(b).to(dt)
        assert (x & y).tolist() == (a & b).tolist()
        assert (x | y).tolist() == (a | b).tolist()
        assert (x ^ y).tolist() == (a ^ b).tolist()
        assert (x & 4).dtype == dt
    m, n = dc.tensor([True, True, False]), dc.tensor([True, False, False])
    assert (m & n).tolist() == [True, False, False]
    assert (m | n).tolist() == [True, True, False]
    assert (m ^ n).tolist() == [False, True, False]
    assert (m & True).tolist() == [True, True, False]
    with pytest.raises(TypeError):
        dc.tensor([1.0]) & dc.tensor([2.0])


def test_cumsum_dtypes_and_accuracy(rng):
    b = dc.tensor([True, False, True, True])
    assert b.cumsum(0).dtype == dc.int64 and b.cumsum(0).tolist() == [1, 1, 2, 3]
    i = dc.tensor([1, 2, 3], dtype=dc.int32)
    assert i.cumsum(0).dtype == dc.int64
    assert dc.tensor([2**62, 2**62 - 1, 1]).cumsum(0).tolist() == [2**62, 2**63 - 1, -(2**63)]  # wraps
    # a long float32 row: accumulated in double, no drift
    x = dc.full((1_000_000,), 0.1, dtype=dc.float32)
    assert abs(x.cumsum(0)[-1].item() - 100000.0) < 0.05
    a = rng.uniform(-1, 1, (3, 4, 5))
    for dim in range(3):
        np.testing.assert_allclose(dc.tensor(a).cumsum(dim).numpy(), np.cumsum(a, axis=dim), rtol=1e-12)
    assert dc.tensor(a).cumsum(1, dtype=dc.float32).dtype == dc.float32


def test_cumsum_gradient_is_a_reverse_cumsum():
    x = dc.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x.cumsum(0) * dc.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert x.grad.tolist() == [111.0, 110.0, 100.0]


def test_int64_scalars_stay_exact():
    n = 2**53 + 1
    assert dc.full((2,), n).tolist() == [n, n]
    assert dc.zeros(1, dtype=dc.int64).fill_(n).tolist() == [n]
    assert (dc.tensor([0]) + n).tolist() == [n]
    assert (dc.tensor([n]) - 1).tolist() == [n - 1]
    assert (dc.tensor([n]) == n).tolist() == [True]
    with pytest.raises(OverflowError):
        dc.full((1,), 2**64)
    with pytest.raises(OverflowError):
        dc.tensor([1]) + 2**70
    with pytest.raises(ValueError, match="out of range for int32"):
        dc.zeros(1, dtype=dc.int32).fill_(2**40)
    assert dc.full((1,), 3, dtype=dc.float32).tolist() == [3.0]


def test_in_place_into_expanded_memory_raises():
    x = dc.zeros(1, 3).expand(4, 3)
    for write in (lambda: x.add_(1), lambda: x.fill_(2.0), lambda: x.copy_(dc.ones(4, 3)), lambda: x.mul_(2)):
        with pytest.raises(ValueError, match="single memory location"):
            write()
    y = dc.zeros(1, 3).expand(1, 3)  # size-1 stride-0 dims are fine
    y.add_(1)
    assert y.tolist() == [[1.0, 1.0, 1.0]]


def test_expand_whose_numel_overflows_raises():
    with pytest.raises(ValueError, match="more elements than an int64"):
        dc.zeros(1, 1).expand(2**40, 2**40)
    with pytest.raises(ValueError, match="more elements than an int64"):
        dc.zeros(1).expand(2**32, 2**32, 1)


def test_log1p_expm1_erf_are_accurate_at_tiny_values():
    for f, ref in ((dc.log1p, math.log1p), (dc.expm1, math.expm1), (dc.erf, math.erf)):
        for v in (1e-12, -3e-9, 0.5, 3.0):
            got = f(dc.tensor([v], dtype=dc.float64)).item()
            assert got == pytest.approx(ref(v), rel=1e-14), (f.__name__, v)
    assert dc.log1p(dc.tensor([-1.0])).item() == -math.inf
    x = dc.tensor([1e-10, 2.0], dtype=dc.float64, requires_grad=True)
    (x.log1p() + x.expm1() + x.erf()).sum().backward()
    want = [1 / (1 + v) + math.exp(v) + 2 / math.sqrt(math.pi) * math.exp(-v * v) for v in (1e-10, 2.0)]
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-14)


def test_randperm_and_multinomial_run_in_c(no_host_copies):
    dc.manual_seed(3)
    dc.randperm(10)
    p = dc.tensor([[0.1, 0.0, 0.9], [0.5, 0.5, 0.0]])
    dc.multinomial(p, 4, replacement=True)
    dc.multinomial(p, 2)
    dc.multinomial(dc.tensor([1.0, 2.0, 3.0]), 3)


def test_randperm_and_multinomial_values():
    dc.manual_seed(5)
    keys = dc.rand(50, dtype=dc.float64).numpy()
    dc.manual_seed(5)
    assert dc.randperm(50).tolist() == np.argsort(keys, kind="stable").tolist()
    dc.manual_seed(0)
    w = dc.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    draws = dc.multinomial(w, 4000, replacement=True)
    assert draws.shape == (2, 4000) and draws.dtype == dc.int64
    assert (draws[1] == 0).all()
    assert not (draws[0] == 0).any()
    assert abs((draws[0] == 2).float().mean().item() - 0.75) < 0.03
    s = dc.multinomial(dc.tensor([1.0, 1.0, 1.0, 0.0]), 3)
    assert sorted(s.tolist()) == [0, 1, 2]  # without replacement: every non-zero category once
    with pytest.raises(RuntimeError, match="cannot sample"):
        dc.multinomial(dc.tensor([1.0, 1.0]), 3)
    with pytest.raises(RuntimeError, match="n_sample <= 0"):
        dc.multinomial(dc.tensor([1.0, 1.0]), 0, replacement=True)
    with pytest.raises(RuntimeError, match="inf, nan or element < 0"):
        dc.multinomial(dc.tensor([1.0, -1.0]), 1)
    with pytest.raises(RuntimeError, match="sum of probabilities"):
        dc.multinomial(dc.tensor([0.0, 0.0]), 1)


@pytest.mark.parametrize("tq, tk", [(5, 5), (3, 7), (7, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_fused_softmax_matches_the_composed_formula(rng, tq, tk, causal):
    """scaled_dot_product_attention without a mask runs scale + causal mask + softmax as one C op
    (attn_softmax); values and gradients equal the composed ops it replaced."""
    F = dc.nn.functional
    q, k, v = (dc.tensor(rng.standard_normal(s), dtype=dc.float64, requires_grad=True)
               for s in ((2, 3, tq, 4), (2, 3, tk, 4), (2, 3, tk, 5)))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    g = dc.tensor(rng.standard_normal(out.shape), dtype=dc.float64)
    (out * g).sum().backward()
    grads = [t.grad.numpy().copy() for t in (q, k, v)]
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    att = (q2 @ k2.transpose(-2, -1)) * 0.5
    if causal:
        att = att.masked_fill(dc.ones(tq, tk).triu(1) > 0.5, float("-inf"))
    ref = att.softmax(-1) @ v2
    (ref * g).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, (q2.grad, k2.grad, v2.grad)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    assert out.grad_fn is not None


def test_attn_softmax_checks_its_input():
    with pytest.raises(ValueError, match="scalar"):
        dc._C.attn_softmax(dc.tensor(1.0), 1.0)
    with pytest.raises(TypeError):
        dc._C.attn_softmax(dc.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match="finite"):
        dc._C.attn_softmax(dc.ones(2, 2), math.inf)
    t = dc.randn(4, 6).t()  # non-contiguous scores are fine
    np.testing.assert_allclose(dc._C.attn_softmax(t, 1.0).numpy(), t.softmax(-1).numpy(), rtol=1e-6)
