"""dutycycle.optim: SGD/AdamW against numpy re-statements of torch's update rules, schedulers
against torch's numbers (written out in closed form here), gradient clipping, state_dict."""

import copy
import math

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import nn, optim
from dutycycle.nn.utils import clip_grad_norm_
from dutycycle.optim import lr_scheduler as S

rng = np.random.default_rng(1)
SHAPES = [(3, 4), (5,)]
STEPS = 6


def N(t):
    return t.detach().cpu().numpy()


def make_params(dtype=dc.float64):
    init = [rng.standard_normal(s) for s in SHAPES]
    params = [nn.Parameter(dc.from_numpy(a.copy()).to(dtype)) for a in init]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return params, init, grads


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = dc.from_numpy(g.copy()).to(p.dtype)


def ref_sgd(init, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    ps, bufs = [a.copy() for a in init], [None] * len(init)
    for step in grads:
        for i, g in enumerate(step):
            d = -g if maximize else g.copy()
            d = d + weight_decay * ps[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * d
    return ps


def ref_adamw(init, grads, lr, betas, eps, weight_decay, maximize=False):
    ps = [a.copy() for a in init]
    m, v = [np.zeros_like(a) for a in init], [np.zeros_like(a) for a in init]
    for t, step in enumerate(grads, start=1):
        for i, g in enumerate(step):
            g = -g if maximize else g
            ps[i] = ps[i] * (1 - lr * weight_decay)
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            denom = np.sqrt(v[i]) / math.sqrt(1 - betas[1] ** t) + eps
            ps[i] = ps[i] - lr / (1 - betas[0] ** t) * m[i] / denom
    return ps


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.5, "maximize": True},
    ],
)
def test_sgd_matches_reference(kw):
    params, init, grads = make_params()
    opt = optim.SGD(params, **kw)
    for g in grads:
        set_grads(params, g)
        opt.step()
    for p, r in zip(params, ref_sgd(init, grads, **kw)):
        np.testing.assert_allclose(N(p), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("maximize", [False, True])
def test_adamw_matches_reference(maximize):
    params, init, grads = make_params()
    kw = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    opt = optim.AdamW(params, maximize=maximize, **kw)
    for g in grads:
        set_grads(params, g)
        opt.step()
    for p, r in zip(params, ref_adamw(init, grads, maximize=maximize, **kw)):
        np.testing.assert_allclose(N(p), r, rtol=1e-10, atol=1e-12)
    assert all(opt.state[p]["step"] == STEPS for p in params)


def test_adamw_float32_defaults():
    params, init, grads = make_params(dc.float32)
    opt = optim.AdamW(params)
    for g in grads:
        set_grads(params, g)
        opt.step()
    for p, r in zip(params, ref_adamw(init, grads, 1e-3, (0.9, 0.999), 1e-8, 1e-2)):
        assert p.dtype == dc.float32
        np.testing.assert_allclose(N(p), r, rtol=1e-5, atol=1e-6)


def test_params_without_grad_are_skipped_and_groups_have_own_options():
    a, b = nn.Parameter(dc.ones(2)), nn.Parameter(dc.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    a.grad = dc.ones(2)
    opt.step()
    np.testing.assert_allclose(N(a), [0.9, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(N(b), [1.0, 1.0])
    opt.zero_grad()
    assert a.grad is None
    c = nn.Parameter(dc.ones(1))
    opt.add_param_group({"params": c, "lr": 1.0})
    assert opt.param_groups[2]["momentum"] == 0.0
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [a]})


def test_argument_validation():
    p = [nn.Parameter(dc.ones(1))]
    for bad in ({"lr": -1.0}, {"momentum": -0.1}, {"weight_decay": -1.0}, {"nesterov": True}):
        with pytest.raises(ValueError):
            optim.SGD(p, **bad)
    for bad in (
        {"lr": -1e-3},
        {"eps": -1.0},
        {"betas": (1.0, 0.9)},
        {"betas": (0.9, -0.1)},
        {"weight_decay": -0.1},
    ):
        with pytest.raises(ValueError):
            optim.AdamW(p, **bad)
    with pytest.raises(ValueError):
        optim.AdamW([])
    with pytest.raises(TypeError):
        optim.AdamW(nn.Parameter(dc.ones(1)))


def test_closure_is_called_with_grad_enabled():
    w = nn.Parameter(dc.tensor([2.0]))
    opt = optim.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(4.0)
    assert w.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    ],
)
def test_optimizer_state_dict_round_trip(make):
    params, _, grads = make_params()
    opt = make(params)
    for g in grads[:3]:
        set_grads(params, g)
        opt.step()
    saved = opt.state_dict()  # state tensors by reference, as torch: snapshot them
    sd = {
        "state": {
            k: {n: (v.clone() if isinstance(v, dc.Tensor) else v) for n, v in s.items()}
            for k, s in saved["state"].items()
        },
        "param_groups": copy.deepcopy(saved["param_groups"]),
    }
    assert sorted(sd["state"]) == [0, 1] and sd["param_groups"][0]["params"] == [0, 1]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = make(twins)
    opt2.param_groups[0]["lr"] = 123.0  # overwritten by the load
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for g in grads[3:]:
        set_grads(params, g)
        set_grads(twins, g)
        opt.step()
        opt2.step()
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(N(p), N(q))
    with pytest.raises(ValueError):
        make(params[:1]).load_state_dict(sd)


def test_one_fused_call_per_group(monkeypatch):
    calls = []
    real = dc._C.adamw_step
    monkeypatch.setattr(dc._C, "adamw_step", lambda *a: (calls.append(len(a[0])), real(*a))[1])
    params, _, grads = make_params()
    extra = nn.Parameter(dc.ones(3, dtype=dc.float64))
    opt = optim.AdamW([{"params": params}, {"params": [extra], "weight_decay": 0.0}])
    set_grads(params, grads[0])
    extra.grad = dc.ones(3, dtype=dc.float64)
    opt.step()
    assert calls == [2, 1]


# ---- clipping ------------------------------------------------------------------------------------


def test_clip_grad_norm():
    params, _, grads = make_params()
    set_grads(params, grads[0])
    flat = np.concatenate([g.ravel() for g in grads[0]])
    total = clip_grad_norm_(params, max_norm=1.0)
    assert tuple(total.shape) == () and total.dtype == dc.float64
    assert total.item() == pytest.approx(np.linalg.norm(flat), rel=1e-9)
    clipped = np.concatenate([N(p.grad).ravel() for p in params])
    np.testing.assert_allclose(clipped, flat / (np.linalg.norm(flat) + 1e-6), rtol=1e-9)
    # below the threshold nothing changes
    before = [N(p.grad).copy() for p in params]
    clip_grad_norm_(params, max_norm=100.0)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(N(p.grad), b)
    assert clip_grad_norm_(params, 1e9, norm_type=math.inf).item() == pytest.approx(np.abs(clipped).max())
    params[0].grad = dc.full((3, 4), float("inf"), dtype=dc.float64)
    with pytest.raises(RuntimeError):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


# ---- schedulers ----------------------------------------------------------------------------------


def lrs(sched, n):
    """lr in group 0 at epochs 0..n-1 (the value set at construction, then after each step)."""
    out = [sched.optimizer.param_groups[0]["lr"]]
    for _ in range(n - 1):
        sched.optimizer.step()
        sched.step()
        out.append(sched.optimizer.param_groups[0]["lr"])
    assert sched.get_last_lr()[0] == out[-1]
    return out


def new_opt(lr=1.0, **kw):
    return optim.SGD([nn.Parameter(dc.zeros(1))], lr=lr, **kw)


def approx(xs):
    return pytest.approx(xs, rel=1e-12, abs=1e-15)


def test_step_multistep_exponential_lambda():
    assert lrs(S.StepLR(new_opt(), step_size=2, gamma=0.5), 7) == approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125])
    assert lrs(S.MultiStepLR(new_opt(), milestones=[2, 5], gamma=0.1), 7) == approx(
        [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]
    )
    assert lrs(S.ExponentialLR(new_opt(2.0), gamma=0.5), 4) == approx([2, 1, 0.5, 0.25])
    assert lrs(S.LambdaLR(new_opt(0.5), lambda e: 1 / (e + 1)), 4) == approx([0.5, 0.25, 0.5 / 3, 0.125])


def test_cosine_annealing():
    # torch: eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2, continuing periodically.
    expect = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(10)]
    assert lrs(S.CosineAnnealingLR(new_opt(), T_max=4, eta_min=0.1), 10) == approx(expect)
    assert expect[:6] == approx([1.0, 0.8681980515339464, 0.55, 0.2318019484660536, 0.1, 0.2318019484660536])


def test_linear_warmup_then_cosine():
    opt = new_opt()
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=3)
    cos = S.CosineAnnealingLR(opt, T_max=4)
    seq = S.SequentialLR(opt, [warm, cos], milestones=[3])
    assert lrs(seq, 9) == approx(
        [0.1, 0.4, 0.7, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.14644660940672616]
    )
    assert lrs(S.LinearLR(new_opt(), start_factor=0.25, total_iters=4), 6) == approx(
        [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0]
    )
    with pytest.raises(ValueError):
        S.LinearLR(new_opt(), start_factor=0.0)
    with pytest.raises(ValueError):
        S.SequentialLR(opt, [warm, cos], milestones=[])


def _cos_anneal(start, end, pct):
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def test_one_cycle_cos_and_momentum():
    opt = new_opt(momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    lo, hi, fin = 0.04, 1.0, 0.04 / 1e4  # max/div_factor, max, initial/final_div_factor
    expect = [_cos_anneal(lo, hi, t / 2) for t in range(3)] + [
        _cos_anneal(hi, fin, (t - 2) / 7) for t in range(3, 10)
    ]
    moms = [opt.param_groups[0]["momentum"]]
    got = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        sched.step()
        got.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
    assert got == approx(expect)
    assert got[:3] == approx([0.04, 0.52, 1.0]) and got[-1] == approx(4e-6)
    assert (
        moms[0] == pytest.approx(0.95) and moms[2] == pytest.approx(0.85) and moms[-1] == pytest.approx(0.95)
    )
    sched.step()  # torch allows last_epoch == total_steps ...
    with pytest.raises(ValueError):
        sched.step()  # ... and raises past it


def test_one_cycle_linear_three_phase_adamw_beta1():
    opt = optim.AdamW([nn.Parameter(dc.zeros(1))], lr=1.0)
    sched = S.OneCycleLR(
        opt, max_lr=0.5, total_steps=10, pct_start=0.25, anneal_strategy="linear", three_phase=True
    )
    lo, fin = 0.02, 0.02 / 1e4
    lin = lambda a, b, pct: (b - a) * pct + a
    # phase ends: 0.25*10-1 = 1.5, 2*0.25*10-2 = 3.0, 9
    expect = [lin(lo, 0.5, t / 1.5) for t in range(2)] + [lin(0.5, lo, (t - 1.5) / 1.5) for t in range(2, 4)]
    expect += [lin(lo, fin, (t - 3.0) / 6.0) for t in range(4, 10)]
    got = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        sched.step()
        got.append(opt.param_groups[0]["lr"])
    assert got == approx(expect)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95) and opt.param_groups[0]["betas"][1] == 0.999


def test_closed_form_matches_recursive():
    for make in (
        lambda o: S.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
        lambda o: S.StepLR(o, 3, 0.3),
        lambda o: S.LinearLR(o, 0.2, 0.9, 5),
    ):
        a, b = make(new_opt()), make(new_opt())
        for epoch in range(1, 12):
            a.step()
            b.step(epoch)
            assert a.get_last_lr()[0] == pytest.approx(b.get_last_lr()[0], rel=1e-12, abs=1e-15)


def test_scheduler_state_dict_round_trip():
    def build():
        opt = new_opt()
        return S.SequentialLR(
            opt, [S.LinearLR(opt, 0.1, total_iters=3), S.CosineAnnealingLR(opt, T_max=5)], milestones=[3]
        )

    a = build()
    for _ in range(4):
        a.step()
    b = build()
    b.load_state_dict(a.state_dict())
    b.optimizer.param_groups[0]["lr"] = a.optimizer.param_groups[0]["lr"]
    assert b.last_epoch == a.last_epoch == 4
    for _ in range(4):
        a.step()
        b.step()
        assert a.get_last_lr() == approx(b.get_last_lr())


# ---- ReduceLROnPlateau: torch's rules, numbers traced by hand ---------------------------------------
def plateau_lrs(sched, metrics):
    out = []
    for m in metrics:
        sched.step(m)
        out.append(sched.optimizer.param_groups[0]["lr"])
        assert sched.get_last_lr() == [g["lr"] for g in sched.optimizer.param_groups]
    return out


def test_reduce_on_plateau_min_rel_patience_cooldown_min_lr():
    opt = new_opt(1.0)
    sched = S.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2, threshold=0.1, cooldown=1, min_lr=0.03)
    assert opt.param_groups[0]["lr"] == 1.0 and sched.get_last_lr() == [1.0]  # no initial step
    # best=10 after step 1; 9.5/9.2/9.1 are not < 10*(1-0.1)=9 -> 3 bad > patience 2 -> 0.5, cooldown 1;
    # 9.0 (not < 9: strict) is swallowed by the cooldown; 8.0 is the new best; then every 3 bad steps
    # after a cooldown step halve the lr (steps 9, 13, 17, 21), then min_lr clamps (step 25:
    # max(0.015625, 0.03)), then a reduction to max(0.015, 0.03) changes nothing (step 29).
    metrics = [10, 9.5, 9.2, 9.1, 9.0, 8.0] + [8.0] * 23
    expect = [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    expect += [0.0625] * 4 + [0.03125] * 4 + [0.03] * 5
    assert plateau_lrs(sched, metrics) == expect
    assert (sched.best, sched.last_epoch, sched.num_bad_epochs, sched.cooldown_counter) == (8.0, 29, 0, 1)


def test_reduce_on_plateau_max_abs_and_strict_threshold():
    sched = S.ReduceLROnPlateau(new_opt(1.0), mode="max", factor=0.1, patience=0, threshold=0.5, threshold_mode="abs")
    # 1 is the best; 1.4 is not > 1 + 0.5 -> reduce; 2.0 > 1.5 is the new best; 2.4 is not > 2.5 -> reduce
    assert plateau_lrs(sched, [1.0, 1.4, 2.0, 2.4]) == [1.0, 1.0 * 0.1, 1.0 * 0.1, 1.0 * 0.1 * 0.1]
    # min/abs: 0.9 is not < 1.0 - 0.1 (strict), 0.89 is
    sched = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=0, threshold=0.1, threshold_mode="abs")
    assert plateau_lrs(sched, [1.0, 0.9, 0.89]) == [1.0, 0.5, 0.5]
    # max/rel: better means > best * (1 + threshold)
    sched = S.ReduceLROnPlateau(new_opt(1.0), mode="max", factor=0.5, patience=0, threshold=0.1)
    assert plateau_lrs(sched, [1.0, 1.1, 1.11]) == [1.0, 0.5, 0.5]
    # a 0-d tensor is a metric too (float(metrics), as torch)
    sched = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=0)
    assert plateau_lrs(sched, [dc.tensor(1.0), dc.tensor(2.0)]) == [1.0, 0.5]


def test_reduce_on_plateau_eps_min_lr_list_and_bad_arguments():
    # a reduction smaller than eps is not applied: 2e-8 -> 1e-8 differs by 1e-8, not > eps=1e-8
    assert plateau_lrs(S.ReduceLROnPlateau(new_opt(2e-8), factor=0.5, patience=0), [1, 1, 1]) == [2e-8] * 3
    assert plateau_lrs(S.ReduceLROnPlateau(new_opt(2e-8), factor=0.5, patience=0, eps=1e-9), [1, 1]) == [2e-8, 1e-8]
    p1, p2 = nn.Parameter(dc.zeros(1)), nn.Parameter(dc.zeros(1))
    opt = optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.5}], lr=1.0)
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=[0.4, 0.1])
    seen = []
    for _ in range(4):
        sched.step(1.0)
        seen.append(sched.get_last_lr())
    assert seen == [[1.0, 0.5], [0.5, 0.25], [0.4, 0.125], [0.4, 0.1]]
    with pytest.raises(ValueError, match="expected 2 min_lrs, got 1"):
        S.ReduceLROnPlateau(opt, min_lr=[0.1])
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        S.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode avg is unknown"):
        S.ReduceLROnPlateau(opt, mode="avg")
    with pytest.raises(ValueError, match="threshold mode pct is unknown"):
        S.ReduceLROnPlateau(opt, threshold_mode="pct")
    # a param group added later: a scalar min_lr follows it, a per-group list is an error (torch's rules)
    sched_scalar = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=0, min_lr=0.2)
    sched_list = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=0, min_lr=[0.2])
    for s in (sched_scalar, sched_list):
        s.optimizer.add_param_group({"params": [nn.Parameter(dc.zeros(1))], "lr": 0.3})
        s.step(1.0)
    sched_scalar.step(1.0)
    assert sched_scalar.get_last_lr() == [0.5, 0.2] and sched_scalar.min_lrs == [0.2, 0.2]
    with pytest.raises(RuntimeError, match="number of param groups"):
        sched_list.step(1.0)


def test_reduce_on_plateau_state_dict_round_trip_through_a_checkpoint(tmp_path):
    from dutycycle.trainer import load_checkpoint, save_checkpoint

    fresh = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=1, cooldown=2)
    sd = fresh.state_dict()
    assert "optimizer" not in sd and sd["best"] == math.inf and sd["mode_worse"] == math.inf
    for key in ("factor", "min_lrs", "default_min_lr", "patience", "cooldown", "cooldown_counter", "mode"):
        assert key in sd
    for key in ("threshold", "threshold_mode", "num_bad_epochs", "eps", "last_epoch", "_last_lr"):
        assert key in sd
    a = S.ReduceLROnPlateau(new_opt(1.0), factor=0.5, patience=1, cooldown=2)
    plateau_lrs(a, [3.0, 2.0, 2.0, 2.0])  # reduced at the 4th step: in cooldown now
    save_checkpoint(tmp_path / "s.ckpt", {"sched": a.state_dict(), "fresh": sd})
    back = load_checkpoint(tmp_path / "s.ckpt")
    assert back["fresh"]["best"] == math.inf  # a non-finite float survives the JSON metadata
    b = S.ReduceLROnPlateau(new_opt(0.5), mode="max", factor=0.9)  # overwritten by load_state_dict
    b.load_state_dict(back["sched"])
    assert (b.mode, b.mode_worse, b.cooldown_counter, b.last_epoch) == ("min", math.inf, 2, 4)
    tail = [2.0, 2.0, 2.0, 2.0, 1.0]
    assert plateau_lrs(b, tail) == plateau_lrs(a, tail)


def _adam_reference(p, grads, lr, b1, b2, eps, wd, maximize):
    """torch.optim.Adam's update, in float64 numpy."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = -g if maximize else g
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    return p


@pytest.mark.parametrize("wd,maximize", [(0.0, False), (0.1, False), (0.1, True), (0.0, True)])
def test_adam_matches_torch_semantics(wd, maximize):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(4)]
    p = dc.tensor(p0, dtype=dc.float64, requires_grad=True)
    opt = dc.optim.Adam([p], lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=wd, maximize=maximize)
    for g in grads:
        p.grad = dc.tensor(g, dtype=dc.float64)
        opt.step()
    ref = _adam_reference(p0, grads, 0.05, 0.8, 0.9, 1e-6, wd, maximize)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    assert opt.state[p]["step"] == 4
    # Adam and AdamW differ only in how weight decay enters
    if wd == 0 and not maximize:
        q = dc.tensor(p0, dtype=dc.float64, requires_grad=True)
        opt2 = dc.optim.AdamW([q], lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.0)
        for g in grads:
            q.grad = dc.tensor(g, dtype=dc.float64)
            opt2.step()
        np.testing.assert_array_equal(q.detach().numpy(), p.detach().numpy())
