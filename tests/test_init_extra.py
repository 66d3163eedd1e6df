"""nn.init: bounds and statistics of every initialiser, torch's fans for linear and conv weights,
calculate_gain, orthogonal/eye/dirac structure, reproducibility under manual_seed."""

import math

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.nn import init


def _w(*shape):
    return dc.empty(*shape)


def test_fans_linear_and_conv():
    assert init._calculate_fan_in_and_fan_out(_w(30, 20)) == (20, 30)
    assert init._calculate_fan_in_and_fan_out(_w(16, 3, 5, 5)) == (75, 400)  # Conv2d(3, 16, 5)
    assert init._calculate_fan_in_and_fan_out(_w(8, 4, 3)) == (12, 24)  # Conv1d(4, 8, 3)
    with pytest.raises(ValueError, match="fewer than 2"):
        init.xavier_uniform_(_w(5))


def test_calculate_gain():
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("leaky_relu", 0.2) == math.sqrt(2 / 1.04)
    assert init.calculate_gain("conv_transpose2d") == 1.0 and init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


@pytest.mark.parametrize("shape", [(256, 128), (64, 32, 3, 3)])
def test_kaiming_and_xavier_statistics(shape):
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(_w(*shape))
    w = init.kaiming_uniform_(_w(*shape), a=0.0, nonlinearity="relu").numpy()
    bound = math.sqrt(2) * math.sqrt(3 / fan_in)
    assert np.abs(w).max() <= bound + 1e-6 and np.abs(w).max() > 0.95 * bound
    w = init.kaiming_normal_(_w(*shape), mode="fan_out", nonlinearity="relu").numpy()
    assert abs(w.std() - math.sqrt(2 / fan_out)) < 0.05 * math.sqrt(2 / fan_out) and abs(w.mean()) < 0.01
    w = init.kaiming_normal_(_w(*shape), a=0.2).numpy()  # leaky_relu(0.2), fan_in
    assert abs(w.std() - math.sqrt(2 / 1.04 / fan_in)) < 0.05 * math.sqrt(2 / 1.04 / fan_in)
    w = init.xavier_uniform_(_w(*shape), gain=2.0).numpy()
    a = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= a + 1e-6 and np.abs(w).max() > 0.95 * a
    w = init.xavier_normal_(_w(*shape)).numpy()
    assert abs(w.std() - math.sqrt(2 / (fan_in + fan_out))) < 0.05 * math.sqrt(2 / (fan_in + fan_out))


def test_trunc_normal_bounds_and_moments():
    w = init.trunc_normal_(_w(200, 200), mean=0.5, std=1.0, a=-1.0, b=2.0).numpy()
    assert w.min() >= -1.0 and w.max() <= 2.0
    # moments of N(0.5, 1) truncated to [-1.5, 1.5] standard units: symmetric, so the mean stays 0.5
    z = 1.5
    phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(z / math.sqrt(2))
    var = 1 - 2 * z * phi / mass
    assert abs(w.mean() - 0.5) < 0.01 and abs(w.var() - var) < 0.01
    w = init.trunc_normal_(_w(1000), std=0.02).numpy()  # timm/ViT's call: bounds far away
    assert abs(w.std() - 0.02) < 0.002
    with pytest.raises(ValueError):
        init.trunc_normal_(_w(3), a=1.0, b=0.0)


def test_simple_fills():
    assert np.allclose(init.constant_(_w(2, 2), 0.3).numpy(), 0.3)
    assert init.zeros_(_w(3)).tolist() == [0, 0, 0] and init.ones_(_w(3)).tolist() == [1, 1, 1]
    u = init.uniform_(_w(10000), -0.5, 0.25).numpy()
    assert u.min() >= -0.5 and u.max() <= 0.25 and abs(u.mean() + 0.125) < 0.01
    n = init.normal_(_w(10000), 2.0, 0.5).numpy()
    assert abs(n.mean() - 2.0) < 0.03 and abs(n.std() - 0.5) < 0.03
    assert init.eye_(_w(2, 3)).tolist() == [[1, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError):
        init.eye_(_w(2, 2, 2))


def test_orthogonal():
    for shape in ((6, 10), (10, 6), (4, 2, 3, 3)):
        w = init.orthogonal_(_w(*shape), gain=2.0).numpy().reshape(shape[0], -1)
        if w.shape[0] <= w.shape[1]:
            assert np.allclose(w @ w.T, 4 * np.eye(w.shape[0]), atol=1e-5)
        else:
            assert np.allclose(w.T @ w, 4 * np.eye(w.shape[1]), atol=1e-5)


def test_dirac_passes_input_through_a_conv():
    w = init.dirac_(_w(4, 2, 3, 3)).numpy()
    assert w.sum() == 2 and w[0, 0, 1, 1] == 1 and w[1, 1, 1, 1] == 1 and w[2:].sum() == 0
    w = init.dirac_(_w(4, 2, 3), groups=2).numpy()
    assert w[0, 0, 1] == w[1, 1, 1] == w[2, 0, 1] == w[3, 1, 1] == 1 and w.sum() == 4


def test_reproducible_and_no_grad_on_parameters():
    p = dc.nn.Parameter(dc.empty(8, 4))
    dc.manual_seed(5)
    a = init.kaiming_normal_(p).detach().numpy().copy()
    dc.manual_seed(5)
    b = init.kaiming_normal_(p).detach().numpy().copy()
    assert np.array_equal(a, b) and p.requires_grad and p.grad is None
    dc.manual_seed(5)
    o1 = init.orthogonal_(_w(3, 3)).numpy()
    dc.manual_seed(5)
    assert np.array_equal(o1, init.orthogonal_(_w(3, 3)).numpy())


def test_old_spellings():
    assert init.xavier_uniform is init.xavier_uniform_ and init.normal is init.normal_
