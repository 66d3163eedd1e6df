"""Autograd mechanics: requires_grad and leaves, backward() with and without a gradient, .grad
accumulation, retain_graph, no_grad and friends, detach, grad_fn names, the in-place version check,
post-accumulate-grad hooks (timing, order, errors, removal) and the GIL being released while the C
engine runs a backward pass. Per-op gradients are checked in test_ops.py."""

import threading
import time

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.autograd import GradcheckError, gradcheck


def f64(a, requires_grad=False):
    return dc.tensor(np.asarray(a, dtype=np.float64), dtype=dc.float64, requires_grad=requires_grad)


# ============================================================================================ leaves and flags

def test_requires_grad_flags_and_leaves(rng):
    x = dc.tensor(rng.standard_normal(3))
    assert not x.requires_grad and x.is_leaf and x.grad_fn is None and x.grad is None
    assert x.requires_grad_() is x and x.requires_grad and x.is_leaf
    x.requires_grad = False
    assert not x.requires_grad
    x.requires_grad = True
    y = x * 2
    assert y.requires_grad and not y.is_leaf and y.grad_fn is not None
    z = dc.tensor(rng.standard_normal(3))
    w = z * 2  # no input requires grad: no graph
    assert not w.requires_grad and w.is_leaf and w.grad_fn is None
    for ctor in (lambda: dc.zeros(2, requires_grad=True), lambda: dc.ones(2, 2, requires_grad=True),
                 lambda: dc.randn(3, requires_grad=True), lambda: dc.tensor([1.0], requires_grad=True),
                 lambda: dc.full((2,), 1.5, requires_grad=True)):
        t = ctor()
        assert t.requires_grad and t.is_leaf
    # requires_grad can be switched on for a non-leaf (no-op) but not off
    y.requires_grad = True
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False


def test_only_float_tensors_require_grad():
    with pytest.raises(RuntimeError, match="floating-point"):
        dc.tensor([1, 2]).requires_grad_()
    with pytest.raises(RuntimeError, match="floating-point"):
        dc.zeros(2, dtype=dc.int64, requires_grad=True)
    # integer results of float inputs are not part of the graph
    x = dc.randn(4, requires_grad=True)
    assert not x.argmax().requires_grad and not (x > 0).requires_grad
    assert not x.long().requires_grad


def test_grad_fn_names():
    a = dc.randn(2, 3, dtype=dc.float64, requires_grad=True)
    b = dc.randn(3, 2, dtype=dc.float64, requires_grad=True)
    cases = {
        "AddBackward": a + 1, "SubBackward": a - a, "MulBackward": a * 2, "DivBackward": a / 2,
        "PowBackward": a**2, "NegBackward": -a, "ExpBackward": a.exp(), "TanhBackward": a.tanh(),
        "SigmoidBackward": a.sigmoid(), "ReluBackward": a.relu(), "MmBackward": a @ b,
        "SumBackward": a.sum(), "MeanBackward": a.mean(), "MaxBackward": a.amax(),
        "SoftmaxBackward": a.softmax(-1), "LogSoftmaxBackward": a.log_softmax(-1),
        "ViewBackward": a.view(6), "PermuteBackward": a.T, "ExpandBackward": a.expand(4, 2, 3),
        "SliceBackward": a[:, 1:], "SelectBackward": a[0], "UnsqueezeBackward": a.unsqueeze(0),
        "CatBackward": dc.cat([a, a]), "GatherBackward": a.gather(1, dc.tensor([[0], [2]])),
        "IndexSelectBackward": a.index_select(1, dc.tensor([0, 0])), "WhereBackward": dc.where(a > 0, a, 0.0),
        "ClampBackward": a.clamp(0, 1), "TrilBackward": a.tril(), "TriuBackward": a.triu(),
        "LayerNormBackward": dc._C.layer_norm(a, None, None, 1e-5), "GeluBackward": dc._C.gelu(a, True),
        "SiluBackward": dc._C.ops.silu(a), "CloneBackward": a.clone(), "ToCopyBackward": a.float(),
        "AbsBackward": a.abs(), "MaximumBackward": dc.maximum(a, a * 0.5),
    }
    for name, t in cases.items():
        assert t.grad_fn is not None and t.grad_fn.name() == name, (name, t.grad_fn)
        assert name in repr(t)
    assert a.grad_fn is None


# ============================================================================================ backward

def test_backward_scalar(rng):
    a = rng.standard_normal((3, 4))
    x = f64(a, True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * a)
    assert x.grad.dtype == dc.float64 and x.grad.shape == (3, 4) and not x.grad.requires_grad
    # a one-element tensor that is not 0-d also counts as a scalar
    y = f64(a, True)
    (y * 3).sum(dim=(0, 1), keepdim=True).backward()
    np.testing.assert_array_equal(y.grad.numpy(), np.full((3, 4), 3.0))
    # a 0-d leaf
    s = dc.tensor(2.0, requires_grad=True)
    s.backward()
    assert s.grad.item() == 1.0


def test_backward_with_gradient(rng):
    a = rng.standard_normal((2, 3))
    x = f64(a, True)
    y = x * x + 1
    g = rng.standard_normal((2, 3))
    y.backward(f64(g))
    np.testing.assert_allclose(x.grad.numpy(), 2 * a * g)
    # a gradient of another dtype is converted to the output's dtype
    x2 = dc.tensor(a, dtype=dc.float32, requires_grad=True)
    (x2 * 2).backward(dc.tensor(g, dtype=dc.float64))
    np.testing.assert_allclose(x2.grad.numpy(), 2 * g, rtol=1e-6)
    # a Python number as the gradient of a scalar
    x3 = f64(a, True)
    x3.sum().backward(2.0)
    np.testing.assert_array_equal(x3.grad.numpy(), np.full((2, 3), 2.0))


def test_grad_accumulates_across_backwards(rng):
    a = rng.standard_normal(5)
    x = f64(a, True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    np.testing.assert_allclose(g1, 2 * a)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * a)
    # a new graph keeps adding into the same .grad
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * a + 3)
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(5, 3.0))


def test_grad_setter(rng):
    x = f64(rng.standard_normal(3), True)
    x.grad = f64([1.0, 2.0, 3.0])
    (x * 1).sum().backward()
    assert x.grad.tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        x.grad = f64([1.0, 2.0])
    with pytest.raises(TypeError, match="dtype"):
        x.grad = dc.zeros(3)


def test_tensor_used_twice_grads_sum(rng):
    a = rng.standard_normal((2, 3))
    x = f64(a, True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * a + 1)
    # two branches joining late, one through a view
    x.grad = None
    h = x.exp()
    (h.sum() + (h.T @ x).sum() + x[0].sum()).backward()
    e = np.exp(a)
    # sum(e^T x) = sum_{k,i,j} e[k,i] x[k,j]: d/de[k,i] = sum_j x[k,j] and d/dx[k,j] = sum_i e[k,i]
    want = e + e * a.sum(1, keepdims=True) + e.sum(1, keepdims=True)
    want[0] += 1
    np.testing.assert_allclose(x.grad.numpy(), want)


def test_backward_through_dtype_and_views(rng):
    a = rng.standard_normal((3, 4))
    x = f64(a, True)
    y = x.float().T.reshape(2, 6)[:, ::2].sum()
    y.backward()
    assert x.grad.dtype == dc.float64
    want = np.zeros(12)
    want.reshape(2, 6)[:, ::2] = 1
    np.testing.assert_array_equal(x.grad.numpy(), want.reshape(4, 3).T)


def test_intermediate_grads_are_not_kept(rng):
    x = f64(rng.standard_normal(3), True)
    h = x * 2
    h.sum().backward()
    assert h.grad is None and x.grad is not None


def test_retain_graph_false_frees_saved_tensors(rng):
    x = f64(rng.standard_normal(3), True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(dc.AutogradError, match="second time.*retain_graph=True"):
        y.backward()


def test_gradcheck_itself(rng):
    x = f64(rng.standard_normal((2, 3)), True)
    assert gradcheck(lambda t: (t * t).sum(), (x,))
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda t: t * t.detach(), (x,))  # d/dx is 2x, autograd sees x
    assert gradcheck(lambda t: t * t.detach(), (x,), raise_exception=False) is False
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t * 2, (dc.randn(2, requires_grad=True),))
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda t: t * 2, (f64([1.0]),))
    # inputs are left unchanged and without .grad
    before = x.detach().numpy().copy()
    gradcheck(lambda t: t.sin(), (x,))
    np.testing.assert_array_equal(x.detach().numpy(), before)
    assert x.grad is None
    # non-contiguous inputs work (strided perturbation)
    xt = dc.tensor(rng.standard_normal((4, 3)), dtype=dc.float64).T.requires_grad_()
    assert not xt.is_contiguous() and gradcheck(lambda t: t.exp() @ t.T, (xt,))
    xe = dc.randn(3, dtype=dc.float64).expand(1, 3).requires_grad_()  # stride 0 on a size-1 dim is fine
    assert gradcheck(lambda t: t.exp(), (xe,))
    with pytest.raises(ValueError, match="stride-0"):  # elements sharing memory can't be perturbed alone
        gradcheck(lambda t: t.exp(), (dc.randn(1, dtype=dc.float64).expand(3).requires_grad_(),))


# ============================================================================================ grad mode

def test_no_grad_context(rng):
    x = dc.randn(3, requires_grad=True)
    assert dc.is_grad_enabled()
    with dc.no_grad():
        assert not dc.is_grad_enabled()
        y = x * 2
        assert not y.requires_grad and y.grad_fn is None
        with dc.enable_grad():
            assert dc.is_grad_enabled()
            assert (x * 2).requires_grad
        assert not dc.is_grad_enabled()
    assert dc.is_grad_enabled()
    assert (x * 2).requires_grad
    # restored on exceptions too
    with pytest.raises(KeyError), dc.no_grad():
        raise KeyError("x")
    assert dc.is_grad_enabled()


def test_no_grad_decorator():
    x = dc.randn(3, requires_grad=True)

    @dc.no_grad()
    def f(t):
        """doc"""
        assert not dc.is_grad_enabled()
        return t * 2

    y = f(x)
    assert not y.requires_grad and dc.is_grad_enabled() and f.__doc__ == "doc" and f.__name__ == "f"

    @dc.enable_grad()
    def g(t):
        return t * 2

    with dc.no_grad():
        assert g(x).requires_grad


def test_set_grad_enabled():
    x = dc.randn(2, requires_grad=True)
    dc.set_grad_enabled(False)
    try:
        assert not dc.is_grad_enabled() and not (x + 1).requires_grad
    finally:
        dc.set_grad_enabled(True)
    assert dc.is_grad_enabled()
    with dc.set_grad_enabled(False):
        assert not (x + 1).requires_grad
    assert dc.is_grad_enabled()
    with dc.no_grad():
        with dc.set_grad_enabled(True):
            assert (x + 1).requires_grad
        assert not dc.is_grad_enabled()


def test_grad_mode_is_per_thread():
    x = dc.randn(2, requires_grad=True)
    seen = {}

    def worker():
        seen["enabled"] = dc.is_grad_enabled()
        seen["rg"] = (x * 2).requires_grad

    with dc.no_grad():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen == {"enabled": True, "rg": True}


def test_inplace_allowed_under_no_grad_only():
    w = dc.ones(3, requires_grad=True)
    with pytest.raises(dc.AutogradError, match="in place.*no_grad"):
        w.add_(1)
    with dc.no_grad():
        w.add_(1)
        w.mul_(2)
    assert w.tolist() == [4.0, 4.0, 4.0] and w.requires_grad and w.is_leaf


def test_detach_and_data(rng):
    x = dc.tensor(rng.standard_normal(4), requires_grad=True)
    y = x * 2
    d = y.detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    assert d.data_ptr() == y.data_ptr()
    d.fill_(1.0)  # shares memory with y
    assert y.tolist() == [1.0] * 4
    dx = x.data
    assert not dx.requires_grad and dx.data_ptr() == x.data_ptr()
    dx.zero_()  # allowed: .data does not require grad
    assert x.tolist() == [0.0] * 4
    # detached values don't contribute gradient
    z = dc.tensor(rng.standard_normal(4), requires_grad=True)
    (z * z.detach()).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), z.detach().numpy())


# ============================================================================================ in-place checks

def test_inplace_on_saved_tensor_is_detected(rng):
    w = f64(rng.standard_normal(3), True)
    a = f64(rng.standard_normal(3))
    y = (w * a).sum()  # MulBackward saves a
    a.add_(1.0)
    with pytest.raises(dc.AutogradError, match=r"modified by an in-place operation") as ei:
        y.backward()
    assert "MulBackward" in str(ei.value) and "(3,)" in str(ei.value)


def test_inplace_on_saved_param_under_no_grad_is_detected(rng):
    w = f64(rng.standard_normal(3), True)
    y = w.exp().sum()  # ExpBackward saves its output (a separate tensor): fine after w changes
    z = (w * w).sum()  # MulBackward saves w itself
    with dc.no_grad():
        w.mul_(2.0)
    y.backward()
    with pytest.raises(dc.AutogradError, match="in-place"):
        z.backward()


def test_inplace_through_a_view_is_detected(rng):
    base = f64(rng.standard_normal((2, 3)))
    w = f64(rng.standard_normal(3), True)
    y = (w * base[1]).sum()  # saves a view of base
    base[1, 2] = 5.0  # writes the storage the view shares
    with pytest.raises(dc.AutogradError, match="in-place"):
        y.backward()


# ============================================================================================ hooks

def make_mlp(rng):
    """x -> Linear(3, 4) -> tanh -> Linear(4, 2) -> loss; returns (params in order of use, loss fn)."""
    w1 = f64(rng.standard_normal((3, 4)), True)
    b1 = f64(rng.standard_normal(4), True)
    w2 = f64(rng.standard_normal((4, 2)), True)
    b2 = f64(rng.standard_normal(2), True)
    x = f64(rng.standard_normal((5, 3)))

    def loss():
        h = (x @ w1 + b1).tanh()
        return ((h @ w2 + b2) ** 2).mean()

    return [w1, b1, w2, b2], loss


def test_post_accumulate_hooks_order_and_final_grad(rng):
    params, loss = make_mlp(rng)
    names = ["w1", "b1", "w2", "b2"]
    loss().backward()
    expected = [p.grad.numpy().copy() for p in params]
    for p in params:
        p.grad = None

    calls = []

    def hook_for(k):
        def hook(p):
            assert p is params[k]
            # the grad is final when the hook runs: it already equals the full gradient
            np.testing.assert_allclose(p.grad.numpy(), expected[k] * (1 + rounds[0]), rtol=1e-12)
            calls.append(names[k])

        return hook

    rounds = [0]
    handles = [p.register_post_accumulate_grad_hook(hook_for(k)) for k, p in enumerate(params)]
    loss().backward()
    # once per parameter, last layer first (reverse order of use)
    assert calls == ["b2", "w2", "b1", "w1"]
    calls.clear()
    rounds[0] = 1  # grads accumulate: the hook sees 2x the single-pass gradient
    loss().backward()
    assert calls == ["b2", "w2", "b1", "w1"]
    for h in handles:
        h.remove()
    calls.clear()
    loss().backward()
    assert calls == []


def test_hook_fires_once_for_a_param_used_twice(rng):
    w = f64(rng.standard_normal((3, 3)), True)
    x = f64(rng.standard_normal((2, 3)))
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.numpy().copy()))
    y = ((x @ w).tanh() @ w).sum()  # w used by two layers
    y.backward()
    assert len(seen) == 1
    w2 = f64(w.detach().numpy(), True)
    ((x @ w2).tanh() @ w2).sum().backward()
    np.testing.assert_allclose(seen[0], w2.grad.numpy(), rtol=1e-12)


def test_hook_exception_propagates_from_backward(rng):
    params, loss = make_mlp(rng)
    err = ValueError("boom from hook")

    def bad(p):
        raise err

    handle = params[1].register_post_accumulate_grad_hook(bad)
    with pytest.raises(ValueError, match="boom from hook") as ei:
        loss().backward()
    assert ei.value is err
    handle.remove()
    handle.remove()  # idempotent
    for p in params:
        p.grad = None
    loss().backward()  # works again once the hook is gone
    assert all(p.grad is not None for p in params)


def test_hook_other_exception_types(rng):
    x = f64([1.0, 2.0], True)

    class MyError(Exception):
        pass

    x.register_post_accumulate_grad_hook(lambda p: (_ for _ in ()).throw(MyError("custom")))
    with pytest.raises(MyError, match="custom"):
        (x * 2).sum().backward()


def test_hook_registration_rules():
    with pytest.raises(RuntimeError, match="leaf"):
        dc.ones(2).register_post_accumulate_grad_hook(lambda p: None)
    x = dc.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2).register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(TypeError, match="callable"):
        x.register_post_accumulate_grad_hook(42)


def test_hook_can_mutate_grad_and_use_ops(rng):
    x = f64(rng.standard_normal(3), True)

    def clip(p):
        with dc.no_grad():
            p.grad.mul_(0.5)  # a hook may rescale the final grad (e.g. all-reduce averaging)

    x.register_post_accumulate_grad_hook(clip)
    (x * 4).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


# ============================================================================================ the GIL

def test_backward_releases_the_gil():
    """A Python thread keeps running while the C engine does a long backward pass.

    The helper thread stamps the time in a loop that sleeps briefly (so it never holds the GIL
    long). If backward held the GIL, no stamp could fall inside the backward call; we require
    stamps in its middle half."""
    dc.manual_seed(0)
    n = 384
    x = dc.randn(n, n)

    def build(layers):
        ws = [(dc.randn(n, n) * (1.0 / n**0.5)).requires_grad_() for _ in range(layers)]
        h = x
        for w in ws:
            h = (h @ w).tanh()
        return h.sum()

    layers = 8
    while True:  # make the backward long enough (>= ~0.15 s) on this machine
        loss = build(layers)
        t0 = time.perf_counter()
        loss.backward()
        dt = time.perf_counter() - t0
        if dt >= 0.15 or layers >= 256:
            break
        layers = min(256, int(layers * max(2.0, 0.3 / max(dt, 1e-3))))

    stamps, stop = [], threading.Event()

    def spin():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0002)

    loss = build(layers)
    th = threading.Thread(target=spin)
    th.start()
    try:
        time.sleep(0.02)
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
    finally:
        stop.set()
        th.join()
    lo, hi = t0 + 0.25 * (t1 - t0), t1 - 0.25 * (t1 - t0)
    inside = [s for s in stamps if lo < s < hi]
    assert len(inside) >= 3, (len(inside), t1 - t0, layers)


def test_concurrent_backwards_in_threads(rng):
    """Two threads each run their own graph's backward at the same time (refcounts are atomic)."""
    results, errors = {}, []

    def work(k):
        try:
            local = np.random.default_rng(k)
            a = local.standard_normal((64, 64))
            w = dc.tensor(a, dtype=dc.float64, requires_grad=True)
            for _ in range(20):
                w.grad = None
                ((w @ w).tanh() * w).sum().backward()
            t = np.tanh(a @ a)
            g = (1 - t**2) * a
            results[k] = np.allclose(w.grad.numpy(), g @ a.T + a.T @ g + t, rtol=1e-9, atol=1e-9)
        except Exception as e:  # noqa: BLE001 - any failure in the thread is reported below
            errors.append(e)

    ths = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors and results == {0: True, 1: True, 2: True}


def test_concurrent_backwards_sharing_a_parameter():
    """Threads backpropagating into the same leaf at once: every contribution lands exactly once.

    (Backward runs without the GIL; the shared AccumulateGrad node and .grad must not race.)"""
    a = np.random.default_rng(0).standard_normal((48, 48))
    w = dc.tensor(a, dtype=dc.float64, requires_grad=True)
    n_iter, n_thr, errors = 40, 4, []

    def work(k):
        try:
            x = dc.tensor(np.random.default_rng(k).standard_normal((8, 48)), dtype=dc.float64)
            for _ in range(n_iter):
                (x @ w).tanh().sum().backward()
        except Exception as e:  # noqa: BLE001 - any failure in the thread is reported below
            errors.append(e)

    ths = [threading.Thread(target=work, args=(k,)) for k in range(n_thr)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors
    want = np.zeros_like(a)
    for k in range(n_thr):
        x = np.random.default_rng(k).standard_normal((8, 48))
        want += n_iter * x.T @ (1 - np.tanh(x @ a) ** 2)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-9, atol=1e-9)


def test_hook_may_run_another_backward():
    """A hook that itself calls backward (on another graph) neither deadlocks nor corrupts the outer pass."""
    x = f64([1.0, 2.0], True)
    v = f64([3.0], True)

    def hook(p):
        assert not dc.is_grad_enabled()  # grad mode is off during backward, as in torch
        with dc.enable_grad():
            (v * 5).sum().backward()

    x.register_post_accumulate_grad_hook(hook)
    (x * x).sum().backward()
    assert x.grad.tolist() == [2.0, 4.0] and v.grad.tolist() == [5.0]


def test_hook_removing_itself_or_others_during_backward():
    """One-shot hooks (remove their own handle while running) and hooks that remove or add others."""
    w = dc.ones(3, requires_grad=True)
    calls, handles = [], {}

    def once(p):
        calls.append("once")
        handles["once"].remove()

    def killer(p):
        calls.append("killer")
        handles["victim"].remove()  # a later hook of the same pass: must not run
        handles["late"] = w.register_post_accumulate_grad_hook(lambda p: calls.append("late"))

    handles["once"] = w.register_post_accumulate_grad_hook(once)
    handles["killer"] = w.register_post_accumulate_grad_hook(killer)
    handles["victim"] = w.register_post_accumulate_grad_hook(lambda p: calls.append("victim"))
    (w * 2).sum().backward()
    assert calls == ["once", "killer"]  # a hook added while hooks run first runs in the next pass
    handles["killer"].remove()
    calls.clear()
    (w * 2).sum().backward()
    assert calls == ["late"] and w.grad.tolist() == [4.0, 4.0, 4.0]


def test_hooks_removed_from_another_thread_during_backward():
    """Register/remove hooks in a second thread while backward passes call them (the engine walks
    the hook list without the GIL)."""
    w = dc.randn(64, 64, dtype=dc.float64, requires_grad=True)
    x = dc.randn(16, 64, dtype=dc.float64)
    stop, errors, count = threading.Event(), [], [0]

    def churn_hooks():
        try:
            while not stop.is_set():
                hs = [w.register_post_accumulate_grad_hook(lambda p: count.__setitem__(0, count[0] + 1))
                      for _ in range(5)]
                for h in hs:
                    h.remove()
        except Exception as e:  # noqa: BLE001 - any failure in the thread is reported below
            errors.append(e)

    th = threading.Thread(target=churn_hooks)
    th.start()
    try:
        for _ in range(300):
            (x @ w).tanh().sum().backward()
    finally:
        stop.set()
        th.join()
    assert not errors and w.grad.shape == (64, 64)


def test_hook_closure_cycle_is_collected():
    """A hook that refers to its own parameter doesn't keep it alive forever..."""
    import gc
    import weakref

    def make():
        w = dc.ones(1000, requires_grad=True)
        w.register_post_accumulate_grad_hook(lambda p: w)  # param -> (C) hook -> closure -> param
        return weakref.ref(w)

    ref = make()
    gc.collect()
    assert ref() is None

    # ...but while a graph still holds the parameter, its hook stays alive and fires
    calls = []

    def build():
        w = dc.ones(3, requires_grad=True)
        w.register_post_accumulate_grad_hook(lambda p: calls.append(w is p))
        return (w * 2).sum()

    loss = build()
    gc.collect()
    loss.backward()
    assert calls == [True]
