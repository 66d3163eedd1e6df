"""dutycycle.models: GPT and DiT build, count their parameters, learn a tiny task with AdamW,
and generate / sample with the right shapes."""

import math

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.models import GPT, DiT, DiTConfig, GPTConfig
from dutycycle.optim import AdamW


def N(t):
    return t.detach().cpu().numpy()


def tiny_gpt(**kw):
    cfg = {
        "block_size": 16,
        "vocab_size": 11,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "dropout": 0.0,
        "bias": True,
    }
    return GPT(GPTConfig(**{**cfg, **kw}))


def tiny_dit(**kw):
    cfg = {
        "input_size": 8,
        "patch_size": 4,
        "in_channels": 1,
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 0,
        "num_timesteps": 100,
    }
    return DiT(DiTConfig(**{**cfg, **kw}))


# ---- GPT -----------------------------------------------------------------------------------------


def test_gpt2_parameter_count_from_config():
    cfg = GPTConfig.gpt2()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size) == (12, 12, 768, 50257, 1024)
    assert cfg.num_params(non_embedding=False) == 124_439_808  # GPT-2 small, lm_head tied
    assert cfg.num_params() == 124_439_808 - 1024 * 768
    assert GPT.config_for("gpt2-medium").n_layer == 24
    with pytest.raises(ValueError):
        GPTConfig.from_name("gpt5")


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_structure_and_tied_head(bias):
    dc.manual_seed(0)
    model = tiny_gpt(bias=bias)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params(non_embedding=False) == model.config.num_params(non_embedding=False)
    assert model.num_params() == model.config.num_params()
    sd = model.state_dict()
    assert "lm_head.weight" in sd and "transformer.wte.weight" in sd
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and len(names) == len(set(names))
    std = float(np.std(N(model.transformer.h[0].attn.c_proj.weight)))
    assert std == pytest.approx(0.02 / math.sqrt(4), rel=0.25)
    assert float(np.std(N(model.transformer.h[0].mlp.c_fc.weight))) == pytest.approx(0.02, rel=0.25)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    twin = tiny_gpt(bias=bias)
    twin.load_state_dict(sd)
    idx = dc.tensor([[1, 2, 3]])
    np.testing.assert_array_equal(N(twin(idx)[0]), N(model(idx)[0]))


def test_gpt_forward_shapes_and_errors():
    model = tiny_gpt()
    idx = dc.randint(0, 11, (3, 7))
    logits, loss = model(idx)
    assert tuple(logits.shape) == (3, 1, 11) and loss is None
    logits, loss = model(idx, dc.randint(0, 11, (3, 7)))
    assert tuple(logits.shape) == (3, 7, 11) and tuple(loss.shape) == ()
    assert loss.item() == pytest.approx(math.log(11), rel=0.1)  # small init: near-uniform predictions
    with pytest.raises(ValueError):
        model(dc.randint(0, 11, (1, 17)))


def test_gpt_memorises_a_sequence():
    dc.manual_seed(0)
    model = tiny_gpt()
    seq = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 2
    data = dc.tensor([seq[i : i + 16] for i in range(4)])  # (4, 16)
    targets = dc.tensor([seq[i + 1 : i + 17] for i in range(4)])
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(40):
        _, loss = model(data, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    out = model.generate(dc.tensor([[1, 2, 3]]), max_new_tokens=5, temperature=0)
    assert out.tolist()[0][:3] == [1, 2, 3]
    assert out.tolist()[0][3:] == [4, 5, 6, 7, 8]


def test_gpt_generate_shapes():
    dc.manual_seed(0)
    model = tiny_gpt().eval()
    start = dc.randint(0, 11, (2, 14))
    out = model.generate(start, max_new_tokens=6, temperature=0.8, top_k=3)  # crosses block_size
    assert tuple(out.shape) == (2, 20) and out.dtype == dc.int64
    assert out[:, :14].tolist() == start.tolist()
    assert all(0 <= v < 11 for row in out.tolist() for v in row)
    dc.manual_seed(5)
    a = model.generate(start, 4).tolist()
    dc.manual_seed(5)
    assert model.generate(start, 4).tolist() == a


# ---- DiT -----------------------------------------------------------------------------------------


def test_dit_shapes_and_zero_init():
    dc.manual_seed(0)
    model = tiny_dit(num_classes=3)
    x = dc.randn(2, 1, 8, 8)
    t = dc.tensor([0, 99])
    y = dc.tensor([0, 2])
    out = model(x, t, y)
    assert tuple(out.shape) == (2, 1, 8, 8)
    assert not N(out).any()  # adaLN-Zero + zero final layer: the untrained model predicts 0
    assert "pos_embed" not in model.state_dict() and tuple(model.pos_embed.shape) == (1, 4, 32)
    with pytest.raises(ValueError):
        model(x, t)  # conditional model needs labels
    with pytest.raises(ValueError):
        tiny_dit()(x, t, y)  # unconditional model takes none
    with pytest.raises(ValueError):
        model(dc.randn(2, 1, 4, 4), t, y)
    assert DiTConfig.from_name("DiT-XL/2").hidden_size == 1152


def test_dit_patchify_round_trip():
    model = tiny_dit(patch_size=2, in_channels=3)
    x = dc.randn(2, 3, 8, 8)
    tokens = model.patchify(x)
    assert tuple(tokens.shape) == (2, 16, 12)
    # token 5 is patch row 1, column 1: pixels [2:4, 2:4] of every channel, channel-major
    np.testing.assert_array_equal(N(tokens)[1, 5], N(x)[1, :, 2:4, 2:4].reshape(-1))
    # unpatchify expects features (p, p, C): build that layout from the image and invert it
    xn = N(x)
    pq = xn.reshape(2, 3, 4, 2, 4, 2).transpose(0, 2, 4, 3, 5, 1).reshape(2, 16, 12)
    np.testing.assert_array_equal(N(model.unpatchify(dc.from_numpy(np.ascontiguousarray(pq)))), xn)


def test_dit_learns_a_fixed_pattern():
    dc.manual_seed(0)
    model = tiny_dit()
    pattern = np.where((np.add.outer(np.arange(8), np.arange(8)) % 4) < 2, 1.0, -1.0).astype(np.float32)
    x0 = dc.from_numpy(np.ascontiguousarray(np.broadcast_to(pattern, (16, 1, 8, 8))))
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = model.training_loss(x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, losses


def test_dit_sampling_shapes():
    dc.manual_seed(0)
    model = tiny_dit(num_classes=4, num_timesteps=20)
    imgs = model.sample(3, steps=None)
    assert tuple(imgs.shape) == (3, 1, 8, 8) and np.isfinite(N(imgs)).all()
    imgs = model.sample(2, y=[1, 3], steps=5)
    assert tuple(imgs.shape) == (2, 1, 8, 8) and np.isfinite(N(imgs)).all()
    with pytest.raises(ValueError):
        model.sample(2, steps=50)


def test_dit_learn_sigma():
    dc.manual_seed(0)
    model = tiny_dit(learn_sigma=True, num_timesteps=10)
    assert model.out_channels == 2
    x0 = dc.rand(4, 1, 8, 8) * 2.0 - 1.0
    loss = model.training_loss(x0)
    assert tuple(loss.shape) == () and math.isfinite(loss.item())
    loss.backward()
    assert model.final_layer.linear.weight.grad is not None
    imgs = model.sample(2)
    assert tuple(imgs.shape) == (2, 1, 8, 8) and np.isfinite(N(imgs)).all()
