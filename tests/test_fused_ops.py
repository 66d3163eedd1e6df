"""The fused ops that keep big intermediates out of memory: flash attention (the (Tq, Tk) scores never
stored) and cross entropy fused with the softmax (no (N, C) probabilities kept). Their CPU kernels
are the references for the CUDA ones; here they must equal the composed paths on every device,
forward and backward."""

import numpy as np
import pytest

import dutycycle as dc

DEVICES = ["cpu"] + (["cuda"] if dc.cuda.is_available() else [])


def composed_attention(q, k, v, scale, causal):
    return dc._C.attn_softmax(q @ k.transpose(-2, -1), scale, causal) @ v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq,tk", [(7, 7), (5, 9), (9, 5), (1, 1), (64, 64)])
def test_flash_attention_equals_the_composition(device, causal, tq, tk):
    dc.manual_seed(tq * 100 + tk)
    q = dc.randn(2, 3, tq, 16, dtype=dc.float64).to(device).requires_grad_()
    k = dc.randn(2, 3, tk, 16, dtype=dc.float64).to(device).requires_grad_()
    v = dc.randn(2, 3, tk, 8, dtype=dc.float64).to(device).requires_grad_()
    g = dc.randn(2, 3, tq, 8, dtype=dc.float64).to(device)
    y = dc._C.flash_attention(q, k, v, 0.25, causal)
    (y * g).sum().backward()
    got = [y.detach().cpu().numpy()] + [t.grad.cpu().numpy() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    y2 = composed_attention(q, k, v, 0.25, causal)
    (y2 * g).sum().backward()
    want = [y2.detach().cpu().numpy()] + [t.grad.cpu().numpy() for t in (q, k, v)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_flash_attention_bad_shapes_name_them():
    q, k = dc.randn(2, 4, 8), dc.randn(2, 5, 6)
    with pytest.raises(ValueError, match="one head dim"):
        dc._C.flash_attention(q, k, k, 1.0, False)
    with pytest.raises(ValueError, match="batch dims differ"):
        dc._C.flash_attention(q, dc.randn(3, 4, 8), dc.randn(3, 4, 8), 1.0, False)
    with pytest.raises(TypeError):
        dc._C.flash_attention(q, q.double(), q, 1.0, False)


def composed_ce(x, t, ignore, eps):
    return dc.nn.functional.cross_entropy(x, t, ignore_index=ignore, reduction="none", label_smoothing=eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_equals_the_composition(device, eps):
    dc.manual_seed(3)
    x = (dc.randn(12, 37, dtype=dc.float64) * 3).to(device).requires_grad_()
    t = dc.tensor([0, 36, -100, 5, 7, 7, 1, 2, -100, 30, 11, 4]).to(device)
    g = dc.randn(12, dtype=dc.float64).to(device)
    loss = dc._C.cross_entropy(x, t, -100, eps)
    (loss * g).sum().backward()
    got = [loss.detach().cpu().numpy(), x.grad.cpu().numpy()]
    x.grad = None
    ref = composed_ce(x.cpu().detach().requires_grad_(), t.cpu(), -100, eps)
    xc = x.detach().cpu().requires_grad_()
    ref = composed_ce(xc, t.cpu(), -100, eps)
    (ref * g.cpu()).sum().backward()
    np.testing.assert_allclose(got[0], ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], xc.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert got[0][2] == 0 and not got[1][2].any()  # ignored rows: no loss, no gradient


def test_cross_entropy_masked_logits_stay_finite_without_smoothing():
    x = dc.tensor([[0.0, 1.0, float("-inf")], [2.0, float("-inf"), 0.5]], dtype=dc.float64)
    loss = dc._C.cross_entropy(x, dc.tensor([1, 0]), -100, 0.0)
    assert np.isfinite(loss.numpy()).all()


def test_cross_entropy_out_of_range_target_is_an_index_error():
    with pytest.raises(IndexError, match="target 9 of row 1 is out of range for 4 classes"):
        dc._C.cross_entropy(dc.randn(3, 4), dc.tensor([0, 9, 1]), -100, 0.0)
