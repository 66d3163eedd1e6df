"""dutycycle.nn: Module bookkeeping, layers and functional ops against float64 numpy references,
and autograd through them via finite differences (dc.autograd.gradcheck)."""

import math

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import nn
from dutycycle.nn import functional as F


def T(a, dtype=None, requires_grad=False):
    """numpy array -> dutycycle tensor (copy), float64 by default for float input."""
    a = np.array(a)
    t = dc.from_numpy(np.ascontiguousarray(a.astype(np.float64) if a.dtype.kind == "f" else a))
    if dtype is not None:
        t = t.to(dtype)
    return t.requires_grad_(requires_grad) if requires_grad else t


def N(t):
    return t.detach().cpu().numpy()


rng = np.random.default_rng(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])
        self.scale = nn.Parameter(dc.ones(1))
        self.register_buffer("running", dc.zeros(4))
        self.register_buffer("scratch", dc.zeros(2), persistent=False)
        self.note = "plain attribute"

    def forward(self, x):
        for m in self.blocks:
            x = m(x) if m is not self.blocks[0] else m(self.fc(x))
        return x * self.scale + self.running


# ---- Module bookkeeping --------------------------------------------------------------------------


def test_registration_and_traversal():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "fc.weight", "fc.bias", "blocks.0.weight", "blocks.0.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf for p in net.parameters())
    assert isinstance(net.fc.weight, dc.Tensor)
    assert [n for n, _ in net.named_buffers()] == ["running", "scratch"]
    assert [n for n, _ in net.named_children()] == ["fc", "blocks"]
    assert [n for n, _ in net.named_modules()] == ["", "fc", "blocks", "blocks.0", "blocks.1"]
    assert len(list(net.modules())) == 5 and len(list(net.children())) == 2
    assert list(net.state_dict()) == [
        "scale",
        "running",
        "fc.weight",
        "fc.bias",
        "blocks.0.weight",
        "blocks.0.bias",
    ]
    assert net.note == "plain attribute" and "note" not in net._parameters
    assert net.get_submodule("blocks.0") is net.blocks[0]
    assert net.get_parameter("blocks.0.bias") is net.blocks[0].bias

    with pytest.raises(TypeError):
        net.scale = dc.ones(1)  # a plain tensor cannot replace a Parameter
    net.fc.bias = None
    assert [n for n, _ in net.named_parameters()][:3] == ["scale", "fc.weight", "blocks.0.weight"]
    net.add_module("extra", nn.Identity())
    assert net.extra is net._modules["extra"]
    del net.extra
    assert "extra" not in dict(net.named_children())
    with pytest.raises(AttributeError):
        _ = net.missing
    with pytest.raises(KeyError):
        net.register_buffer("a.b", dc.zeros(1))

    net(dc.randn(2, 3)).sum().backward()
    assert net.blocks[0].weight.grad is not None
    net.zero_grad(set_to_none=False)
    assert float(net.blocks[0].weight.grad.abs().sum().item()) == 0.0
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "Linear", "ReLU", "ModuleList", "Net"]


def test_module_without_forward_and_containers():
    class NoForward(nn.Module):
        pass

    with pytest.raises(TypeError, match="forward"):
        NoForward()(1)
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and len(seq[1:]) == 2
    assert tuple(seq(dc.randn(5, 2)).shape) == (5, 1)
    ml = nn.ModuleList([nn.ReLU()])
    ml.append(nn.Tanh())
    ml += [nn.SiLU()]
    ml.insert(0, nn.Identity())
    assert [type(m).__name__ for m in ml] == ["Identity", "ReLU", "Tanh", "SiLU"]
    with pytest.raises(IndexError):
        ml[4]
    md = nn.ModuleDict({"a": nn.ReLU(), "b": nn.Tanh()})
    md["c"] = nn.Identity()
    assert list(md) == ["a", "b", "c"] and "b" in md and len(md) == 3
    assert [n for n, _ in md.named_modules()] == ["", "a", "b", "c"]


def test_repr_like_torch():
    seq = nn.Sequential(
        nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Dropout(0.1), nn.LayerNorm(8), nn.Embedding(10, 3)
    )
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=8, bias=True)\n"
        "  (1): GELU(approximate='tanh')\n"
        "  (2): Dropout(p=0.1, inplace=False)\n"
        "  (3): LayerNorm((8,), eps=1e-05, elementwise_affine=True)\n"
        "  (4): Embedding(10, 3)\n"
        ")"
    )
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Parameter(dc.zeros(2))).startswith("Parameter containing:\n")


def test_tied_parameters_are_counted_once():
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    seq = nn.Sequential(a, b)
    b.weight = a.weight
    assert len(list(seq.parameters())) == 1
    assert list(seq.state_dict()) == ["0.weight", "1.weight"]
    seq.double()
    assert seq[0].weight is seq[1].weight and seq[0].weight.dtype == dc.float64


def test_state_dict_round_trip_and_errors():
    src, dst = Net(), Net()
    with dc.no_grad():
        src.running.fill_(3.0)
    x = dc.randn(4, 3)
    res = dst.load_state_dict(src.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    np.testing.assert_array_equal(N(dst(x)), N(src(x)))
    assert dst.fc.weight is not src.fc.weight  # copied, not aliased

    sd = src.state_dict()
    del sd["fc.bias"]
    sd["ghost.weight"] = dc.zeros(1)
    with pytest.raises(RuntimeError) as e:
        dst.load_state_dict(sd)
    assert '"fc.bias"' in str(e.value) and '"ghost.weight"' in str(e.value)
    res = dst.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc.bias"] and res.unexpected_keys == ["ghost.weight"]

    sd = src.state_dict()
    sd["fc.weight"] = dc.zeros(5, 3)
    with pytest.raises(RuntimeError, match=r"fc\.weight.*\(5, 3\).*\(4, 3\)"):
        dst.load_state_dict(sd, strict=False)


def test_to_dtype_converts_and_keeps_ties():
    net = Net()
    w = net.fc.weight
    net.to(dc.float64)
    assert net.fc.weight.dtype == dc.float64 and net.running.dtype == dc.float64
    assert isinstance(net.fc.weight, nn.Parameter) and net.fc.weight.requires_grad
    np.testing.assert_allclose(N(net.fc.weight), N(w).astype(np.float64), rtol=1e-7)
    data_settable = getattr(type(w).data, "fset", None) is not None
    if data_settable:  # torch keeps the Parameter objects (optimizers built earlier stay valid)
        assert net.fc.weight is w
    net.float()
    assert net.fc.weight.dtype == dc.float32
    assert net.to("cpu") is net


def test_train_eval_switches_dropout():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    assert model.training and model[1].training
    x = dc.ones(4000)
    drop = model[1]
    y = N(drop(x))
    assert set(np.unique(y).tolist()) <= {0.0, 2.0}
    assert 0.4 < (y == 0).mean() < 0.6
    model.eval()
    assert not model.training and not drop.training
    np.testing.assert_array_equal(N(drop(x)), N(x))
    model.train()
    assert drop.training
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    np.testing.assert_array_equal(N(F.dropout(x, 0.5, training=False)), N(x))


# ---- layers vs numpy -----------------------------------------------------------------------------


def test_linear_layernorm_embedding_forward():
    lin = nn.Linear(5, 3).double()
    x = rng.standard_normal((2, 4, 5))
    w, b = N(lin.weight), N(lin.bias)
    np.testing.assert_allclose(N(lin(T(x))), x @ w.T + b, rtol=1e-12, atol=1e-12)
    bound = 1 / math.sqrt(5)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound

    ln = nn.LayerNorm(5).double()
    with dc.no_grad():
        ln.weight.copy_(T(rng.standard_normal(5)))
        ln.bias.copy_(T(rng.standard_normal(5)))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * N(ln.weight) + N(ln.bias)
    np.testing.assert_allclose(N(ln(T(x))), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        N(nn.LayerNorm(5, elementwise_affine=False).double()(T(x))),
        (x - mu) / np.sqrt(var + 1e-5),
        atol=1e-10,
    )
    with pytest.raises(ValueError):
        F.layer_norm(T(x), (4,))
    with pytest.raises(ValueError):
        nn.LayerNorm((4, 5))

    emb = nn.Embedding(7, 3).double()
    idx = np.array([[0, 6, 2], [2, 2, 1]])
    np.testing.assert_array_equal(N(emb(T(idx))), N(emb.weight)[idx])
    with pytest.raises((IndexError, ValueError, RuntimeError)):
        emb(T(np.array([7])))
    with pytest.raises(TypeError):
        emb(T(np.array([0.0])))


def test_activations():
    x = rng.standard_normal((3, 4)) * 3
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(N(nn.GELU()(T(x))), 0.5 * x * (1 + erf(x / math.sqrt(2))), atol=1e-7)
    tanh_ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(N(nn.GELU("tanh")(T(x))), tanh_ref, atol=1e-7)
    np.testing.assert_allclose(N(nn.SiLU()(T(x))), x / (1 + np.exp(-x)), atol=1e-10)
    np.testing.assert_allclose(N(nn.ReLU()(T(x))), np.maximum(x, 0))
    np.testing.assert_allclose(N(nn.Tanh()(T(x))), np.tanh(x), atol=1e-12)
    np.testing.assert_allclose(
        N(F.softmax(T(x), -1)), np.exp(x) / np.exp(x).sum(-1, keepdims=True), atol=1e-12
    )
    with pytest.raises(ValueError):
        nn.GELU("fast")


def _np_cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    loss = (1 - label_smoothing) * nll + label_smoothing * (-logp.mean(-1))
    loss = np.where(keep, loss, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_vs_numpy(reduction, label_smoothing):
    logits = rng.standard_normal((6, 5)) * 2
    target = np.array([0, 4, -100, 2, 2, -100])
    got = F.cross_entropy(T(logits), T(target), reduction=reduction, label_smoothing=label_smoothing)
    ref = _np_cross_entropy(logits, target, -100, label_smoothing, reduction)
    np.testing.assert_allclose(N(got), ref, rtol=1e-12, atol=1e-12)
    # class-last 3-D layout (B, T, C) with targets (B, T), custom ignore_index
    logits3, target3 = rng.standard_normal((2, 3, 4)), np.array([[1, -1, 3], [0, 0, 2]])
    got3 = F.cross_entropy(
        T(logits3), T(target3), ignore_index=-1, reduction=reduction, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(
        N(got3), _np_cross_entropy(logits3, target3, -1, label_smoothing, reduction), rtol=1e-12, atol=1e-12
    )


def test_cross_entropy_validation():
    logits = T(rng.standard_normal((4, 3)))
    one = F.cross_entropy(logits[1], dc.full((), 2, dtype=dc.int64))  # unbatched (C,) with target ()
    assert tuple(one.shape) == () and one.item() == pytest.approx(
        F.cross_entropy(logits[1:2], T(np.array([2]))).item()
    )
    with pytest.raises(TypeError, match="int64"):
        F.cross_entropy(logits, T(np.array([0.0, 1.0, 2.0, 0.0])))
    with pytest.raises(TypeError, match="int64"):
        F.cross_entropy(logits, T(np.array([0, 1, 2, 0], dtype=np.int32)))
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(logits, T(np.array([0, 1, 2])))
    with pytest.raises(ValueError):
        F.cross_entropy(logits, T(np.array([0, 1, 2, 0])), reduction="avg")
    with pytest.raises(ValueError):
        F.cross_entropy(logits, T(np.array([0, 1, 2, 0])), label_smoothing=1.5)
    with pytest.raises(TypeError):
        F.cross_entropy(T(np.array([[1, 2]])), T(np.array([0])))


def test_mse_loss():
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(N(F.mse_loss(T(a), T(b))), ((a - b) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(N(F.mse_loss(T(a), T(b), reduction="sum")), ((a - b) ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(N(F.mse_loss(T(a), T(b), reduction="none")), (a - b) ** 2, rtol=1e-12)
    with pytest.raises(ValueError):
        F.mse_loss(T(a), T(b[:2]))


def _np_attention(q, k, v, mask=None, scale=None):
    s = q @ np.swapaxes(k, -1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def test_sdpa_vs_numpy():
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    causal = np.tril(np.ones((5, 5), dtype=bool))
    got = F.scaled_dot_product_attention(T(q), T(k), T(v), is_causal=True)
    np.testing.assert_allclose(N(got), _np_attention(q, k, v, causal), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(N(got)[..., 0, :], v[..., 0, :], atol=1e-12)  # first query sees only key 0
    np.testing.assert_allclose(
        N(F.scaled_dot_product_attention(T(q), T(k), T(v))), _np_attention(q, k, v), rtol=1e-10, atol=1e-12
    )
    mask = rng.random((5, 5)) > 0.3
    mask[:, 0] = True
    got = F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=T(mask), scale=0.3)
    np.testing.assert_allclose(N(got), _np_attention(q, k, v, mask, 0.3), rtol=1e-10, atol=1e-12)
    bias = rng.standard_normal((5, 5))
    s = q @ np.swapaxes(k, -1, -2) / 2.0 + bias
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref = ref / ref.sum(-1, keepdims=True) @ v
    np.testing.assert_allclose(
        N(F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=T(bias))), ref, rtol=1e-10, atol=1e-12
    )
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=T(mask), is_causal=True)


# ---- gradients -----------------------------------------------------------------------------------


def test_gradcheck_cross_entropy():
    logits = T(rng.standard_normal((4, 3)), requires_grad=True)
    target = T(np.array([2, -100, 0, 1]))
    assert dc.autograd.gradcheck(lambda z: F.cross_entropy(z, target, label_smoothing=0.1), (logits,))
    assert dc.autograd.gradcheck(lambda z: F.cross_entropy(z, target, reduction="none"), (logits,))


def test_gradcheck_layer_norm_and_linear():
    x = T(rng.standard_normal((2, 3, 4)), requires_grad=True)
    w = T(rng.standard_normal(4), requires_grad=True)
    b = T(rng.standard_normal(4), requires_grad=True)
    assert dc.autograd.gradcheck(lambda x, w, b: F.layer_norm(x, 4, w, b, 1e-5), (x, w, b))
    W = T(rng.standard_normal((3, 4)), requires_grad=True)
    bb = T(rng.standard_normal(3), requires_grad=True)
    assert dc.autograd.gradcheck(lambda x, W, bb: F.linear(x, W, bb), (x, W, bb))


def test_gradcheck_attention_and_activations():
    q, k, v = (T(rng.standard_normal((1, 2, 3, 2)), requires_grad=True) for _ in range(3))
    assert dc.autograd.gradcheck(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v)
    )
    x = T(rng.standard_normal((2, 3)), requires_grad=True)
    for fn in (F.silu, F.gelu, lambda t: F.gelu(t, approximate="tanh")):
        assert dc.autograd.gradcheck(fn, (x,))
    weight = T(rng.standard_normal((5, 2)), requires_grad=True)
    idx = T(np.array([[4, 0], [4, 1]]))
    assert dc.autograd.gradcheck(lambda w: F.embedding(idx, w), (weight,))


# ---- init ----------------------------------------------------------------------------------------


def test_init_functions():
    w = dc.empty(200, 50)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    assert np.abs(N(w)).max() <= 1 / math.sqrt(50) + 1e-7
    nn.init.xavier_uniform_(w)
    bound = math.sqrt(6 / 250)
    assert np.abs(N(w)).max() <= bound + 1e-7 and np.abs(N(w)).max() > 0.9 * bound
    nn.init.normal_(w, 1.0, 0.02)
    assert abs(N(w).mean() - 1.0) < 0.002 and abs(N(w).std() - 0.02) < 0.002
    nn.init.trunc_normal_(w, std=1.0, a=-1.0, b=0.5)
    assert N(w).min() >= -1.0 and N(w).max() <= 0.5 and N(w).std() > 0.2
    nn.init.zeros_(w)
    assert not N(w).any()
    nn.init.ones_(w)
    assert (N(w) == 1).all()
    with pytest.raises(ValueError):
        nn.init.xavier_uniform_(dc.empty(3))
    assert nn.init.calculate_gain("relu") == math.sqrt(2)
    p = nn.Linear(3, 3).weight  # requires grad: the initialisers must work on it too
    nn.init.normal_(p)
    assert p.requires_grad and p.is_leaf


# --- layers and losses that ported tutorials use -----------------------------------------------------

def test_common_tutorial_layers_and_losses_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3))
    x = T(a)
    assert nn.Flatten()(T(rng.normal(size=(2, 1, 3, 4)))).shape == (2, 12)
    assert nn.Unflatten(1, (3, 4))(T(np.zeros((2, 12)))).shape == (2, 3, 4)
    np.testing.assert_allclose(N(nn.Sigmoid()(x)), 1 / (1 + np.exp(-a)), rtol=1e-12)
    np.testing.assert_allclose(N(nn.LeakyReLU(0.2)(x)), np.where(a > 0, a, 0.2 * a))
    np.testing.assert_allclose(N(nn.Softplus()(x)), np.log1p(np.exp(a)), rtol=1e-12)
    np.testing.assert_allclose(N(nn.Softmax(dim=1)(x)), np.exp(a) / np.exp(a).sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(N(nn.LogSoftmax(dim=1)(x)), a - np.log(np.exp(a).sum(1, keepdims=True)), rtol=1e-12)
    np.testing.assert_allclose(N(F.normalize(x, dim=1)), a / np.linalg.norm(a, axis=1, keepdims=True), rtol=1e-12)
    assert F.one_hot(dc.tensor([0, 2]), num_classes=4).tolist() == np.eye(4, dtype=int)[[0, 2]].tolist()
    assert F.one_hot(dc.tensor([1, 2])).shape == (2, 3)

    b = rng.normal(size=(4, 3))
    y01 = (rng.random((4, 3)) > 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(float(nn.MSELoss()(x, T(b))), ((a - b) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(float(nn.L1Loss(reduction="sum")(x, T(b))), np.abs(a - b).sum(), rtol=1e-12)
    d = np.abs(a - b)
    np.testing.assert_allclose(float(nn.SmoothL1Loss()(x, T(b))), np.where(d < 1, 0.5 * d * d, d - 0.5).mean(),
                               rtol=1e-12)
    bce = -(y01 * np.log(p) + (1 - y01) * np.log(1 - p))
    np.testing.assert_allclose(float(nn.BCEWithLogitsLoss()(x, T(y01))), bce.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(nn.BCELoss()(T(p), T(y01))), bce.mean(), rtol=1e-12)
    pw = np.array([1.0, 2.0, 3.0])
    ref = -(pw * y01 * np.log(p) + (1 - y01) * np.log(1 - p))
    np.testing.assert_allclose(N(F.binary_cross_entropy_with_logits(x, T(y01), pos_weight=T(pw), reduction="none")),
                               ref, rtol=1e-12)
    # extreme logits stay finite (the stable form), probabilities of exactly 0/1 clamp at log = -100
    assert math.isfinite(float(F.binary_cross_entropy_with_logits(T([1000.0, -1000.0]), T([0.0, 1.0]))))
    assert float(F.binary_cross_entropy(T([0.0]), T([1.0]))) == 100.0
    tgt = np.array([0, 2, 1, 2])
    logp = a - np.log(np.exp(a).sum(1, keepdims=True))
    np.testing.assert_allclose(float(nn.NLLLoss()(T(logp), dc.tensor(tgt))), -logp[np.arange(4), tgt].mean(),
                               rtol=1e-12)
    np.testing.assert_allclose(float(nn.CrossEntropyLoss()(x, dc.tensor(tgt))), -logp[np.arange(4), tgt].mean(),
                               rtol=1e-12)
    assert float(nn.NLLLoss(ignore_index=2)(T(logp), dc.tensor(tgt))) == pytest.approx(
        -logp[[0, 2], [0, 1]].mean(), rel=1e-12)
    for f in (lambda t: F.binary_cross_entropy_with_logits(t, T(y01)), lambda t: F.leaky_relu(t, 0.1),
              lambda t: F.softplus(t), lambda t: F.normalize(t, dim=0), lambda t: F.smooth_l1_loss(t, T(b))):
        assert dc.autograd.gradcheck(f, (T(a, requires_grad=True),))


# --- pad, rms_norm / RMSNorm, ParameterList / ParameterDict ---------------------------------------

def test_pad_constant_matches_numpy_and_crops():
    a = rng.standard_normal((2, 3, 4))
    got = F.pad(T(a), (1, 2))
    np.testing.assert_array_equal(N(got), np.pad(a, ((0, 0), (0, 0), (1, 2))))
    got = F.pad(T(a), (1, -1, -1, 2), value=3.0)  # negative amounts crop
    ref = np.pad(a, ((0, 0), (0, 2), (1, 0)), constant_values=3.0)[:, 1:, :-1]
    np.testing.assert_array_equal(N(got), ref)
    got = F.pad(T(a), (0, 0, 0, 0, 1, 1), "constant", -1.0)
    np.testing.assert_array_equal(N(got), np.pad(a, ((1, 1), (0, 0), (0, 0)), constant_values=-1.0))
    assert F.pad(dc.arange(3), (1, 1)).tolist() == [0, 0, 1, 2, 0]
    assert dc.autograd.gradcheck(lambda t: F.pad(t, (2, -1, -1, 1), value=0.5), (T(a, requires_grad=True),))
    with pytest.raises(NotImplementedError, match="last 1-3 dims"):  # reflect pads (C, ...) or (N, C, ...)
        F.pad(T(a), (1, 1, 1, 1, 1, 1), mode="reflect")
    with pytest.raises(ValueError, match="unknown mode"):
        F.pad(T(a), (1, 1), mode="mirror")
    with pytest.raises(ValueError):
        F.pad(T(a), (1,))


def test_rms_norm_matches_numpy_and_gradchecks():
    a = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal(4)
    ref = a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(N(F.rms_norm(T(a), (4,), T(w), eps=1e-6)), ref, rtol=1e-12)
    w2 = rng.standard_normal((3, 4))
    ref2 = a / np.sqrt((a * a).mean((-2, -1), keepdims=True) + np.finfo(np.float64).eps) * w2
    np.testing.assert_allclose(N(F.rms_norm(T(a), [3, 4], T(w2))), ref2, rtol=1e-12)
    assert dc.autograd.gradcheck(lambda x, w: F.rms_norm(x, 4, w, 1e-5),
                                 (T(a, requires_grad=True), T(w, requires_grad=True)))
    m = nn.RMSNorm(4, dtype=dc.float64)
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    np.testing.assert_allclose(N(m(T(a))), a / np.sqrt((a * a).mean(-1, keepdims=True) + np.finfo(np.float64).eps),
                               rtol=1e-12)
    assert nn.RMSNorm(4, elementwise_affine=False).weight is None
    assert nn.RMSNorm(4)(dc.randn(2, 4)).dtype == dc.float32
    with pytest.raises(ValueError):
        F.rms_norm(T(a), 5)


def test_parameter_list_and_dict_register_parameters():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.pl = nn.ParameterList([nn.Parameter(dc.ones(2)), dc.zeros(3)])
            self.pd = nn.ParameterDict({"a": dc.ones(1)})
            self.pd["b"] = nn.Parameter(dc.zeros(2, 2))

    m = M()
    assert [n for n, _ in m.named_parameters()] == ["pl.0", "pl.1", "pd.a", "pd.b"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert list(m.state_dict()) == ["pl.0", "pl.1", "pd.a", "pd.b"]
    assert len(m.pl) == 2 and m.pl[-1].shape == (3,) and [p.shape for p in m.pl] == [(2,), (3,)]
    m.pl.append(dc.ones(4))
    m.pl[0] = nn.Parameter(dc.full((5,), 2.0))
    assert len(m.pl) == 3 and m.pl[0].tolist() == [2.0] * 5
    assert "a" in m.pd and len(m.pd) == 2 and list(m.pd.keys()) == ["a", "b"]
    del m.pd["a"]
    assert list(m.pd) == ["b"]
    opt = dc.optim.SGD(m.parameters(), lr=1.0)
    loss = sum((p * p).sum() for p in m.parameters())
    loss.backward()
    opt.step()
    assert m.pl[0].tolist() == [-2.0] * 5
    assert isinstance(nn.Identity()(dc.ones(2)), dc.Tensor)
