# ruff: noqa: B023  (each lambda is called at once by cmp(), inside its loop iteration)
"""Conv stack vs torch (run by tests/test_conv.py::test_matches_pytorch with a Python that has torch):
outputs, input/weight/bias gradients and running statistics in float64; prints one line per case,
"BAD" on a mismatch."""

import numpy as np
import torch

import dutycycle as dc

rng = np.random.default_rng(0)


def cmp(name, fd, ft, *arrs):
    xd = [dc.tensor(a).requires_grad_(True) for a in arrs]
    xt = [torch.tensor(a, requires_grad=True) for a in arrs]
    yd, yt = fd(*xd), ft(*xt)
    e = np.abs(yd.detach().numpy() - yt.detach().numpy()).max()
    g = rng.standard_normal(tuple(yt.shape))
    yd.backward(dc.tensor(g))
    yt.backward(torch.tensor(g))
    ge = max(np.abs(a.grad.numpy() - b.grad.numpy()).max() for a, b in zip(xd, xt))
    ok = e < 1e-9 and ge < 1e-9
    print(f"{'ok ' if ok else 'BAD'} {name}: out {e:.1e} grad {ge:.1e}")


for N, Ci, Co, H, W, k, s, p, d, g in [
    (3, 4, 6, 7, 6, (3, 2), (2, 1), (1, 2), (1, 2), 2),
    (5, 3, 8, 1, 1, 1, 1, 0, 1, 1),
    (4, 8, 8, 4, 4, 3, 1, 1, 1, 8),
    (6, 16, 4, 2, 3, 1, 1, 0, 1, 1),
    (2, 2, 2, 9, 9, 3, 3, 0, 2, 1),
    (33, 4, 5, 3, 3, 2, 1, 0, 1, 1),
]:
    x = rng.standard_normal((N, Ci, H, W))
    w = rng.standard_normal((Co, Ci // g) + ((k, k) if isinstance(k, int) else k))
    b = rng.standard_normal(Co)
    cmp(
        f"conv2d {x.shape} {w.shape} s{s} p{p} d{d} g{g}",
        lambda x, w, b: dc.nn.functional.conv2d(x, w, b, s, p, d, g),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, s, p, d, g),
        x,
        w,
        b,
    )
for N, Ci, Co, H, k, s, p, op, d, g in [
    (3, 4, 6, 5, 3, 2, 1, 1, 1, 2),
    (40, 10, 6, 1, 4, 1, 0, 0, 1, 1),
    (2, 6, 4, 4, 4, 2, 1, 0, 1, 1),
    (3, 2, 2, 3, 3, 2, 0, 1, 2, 1),
    (17, 3, 3, 2, 1, 1, 0, 0, 1, 3),
]:
    x = rng.standard_normal((N, Ci, H, H + 1))
    w = rng.standard_normal((Ci, Co // g, k, k))
    b = rng.standard_normal(Co)
    cmp(
        f"conv_transpose2d {x.shape} {w.shape} s{s} p{p} op{op} d{d} g{g}",
        lambda x, w, b: dc.nn.functional.conv_transpose2d(x, w, b, s, p, op, g, d),
        lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, s, p, op, g, d),
        x,
        w,
        b,
    )
x = rng.standard_normal((2, 3, 10))
w = rng.standard_normal((4, 3, 4))
cmp(
    "conv1d same",
    lambda x, w: dc.nn.functional.conv1d(x, w, None, padding="same", dilation=2),
    lambda x, w: torch.nn.functional.conv1d(x, w, None, padding="same", dilation=2),
    x,
    w,
)
x = rng.standard_normal((3, 7, 8))
cmp(
    "conv2d unbatched same even",
    lambda x, w: dc.nn.functional.conv2d(x, w, padding="same"),
    lambda x, w: torch.nn.functional.conv2d(x, w, padding="same"),
    x,
    rng.standard_normal((2, 3, 4, 2)),
)
x = rng.standard_normal((2, 3, 9, 8))
for kw in [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(2, 1), dilation=(2, 1), padding=(1, 1)),
]:
    cmp(
        f"max_pool2d {kw}",
        lambda x: dc.nn.functional.max_pool2d(x, **kw),
        lambda x: torch.nn.functional.max_pool2d(x, **kw),
        x,
    )
for kw in [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), padding=(1, 1), divisor_override=5),
]:
    cmp(
        f"avg_pool2d {kw}",
        lambda x: dc.nn.functional.avg_pool2d(x, **kw),
        lambda x: torch.nn.functional.avg_pool2d(x, **kw),
        x,
    )
cmp(
    "max_pool1d",
    lambda x: dc.nn.functional.max_pool1d(x, 3, 2, 1),
    lambda x: torch.nn.functional.max_pool1d(x, 3, 2, 1),
    rng.standard_normal((2, 3, 11)),
)
cmp(
    "avg_pool1d",
    lambda x: dc.nn.functional.avg_pool1d(x, 3, 2, 1),
    lambda x: torch.nn.functional.avg_pool1d(x, 3, 2, 1),
    rng.standard_normal((2, 3, 11)),
)
for shape in [(4, 3, 5, 6), (7, 5), (3, 4, 9)]:
    C = shape[1]
    w = rng.uniform(0.5, 1.5, C)
    b = rng.standard_normal(C)
    rmd, rvd = dc.zeros(C, dtype=dc.float64), dc.ones(C, dtype=dc.float64)
    rmt, rvt = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    cmp(
        f"batch_norm train {shape}",
        lambda x, w, b: dc.nn.functional.batch_norm(x, rmd, rvd, w, b, True, 0.3),
        lambda x, w, b: torch.nn.functional.batch_norm(x, rmt, rvt, w, b, True, 0.3),
        rng.standard_normal(shape) * 3 + 2,
        w,
        b,
    )
    print("   running", np.abs(rmd.numpy() - rmt.numpy()).max(), np.abs(rvd.numpy() - rvt.numpy()).max())
    cmp(
        f"batch_norm eval {shape}",
        lambda x, w, b: dc.nn.functional.batch_norm(x, rmd, rvd, w, b, False),
        lambda x, w, b: torch.nn.functional.batch_norm(x, rmt, rvt, w, b, False),
        rng.standard_normal(shape),
        w,
        b,
    )

# modules with the same weights: a DCGAN-style block, train then eval
torch.manual_seed(0)
tm = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 4, 2, 1, bias=False),
    torch.nn.BatchNorm2d(8),
    torch.nn.LeakyReLU(0.2),
    torch.nn.ConvTranspose2d(8, 3, 4, 2, 1),
    torch.nn.Tanh(),
).double()
dm = dc.nn.Sequential(
    dc.nn.Conv2d(3, 8, 4, 2, 1, bias=False),
    dc.nn.BatchNorm2d(8),
    dc.nn.LeakyReLU(0.2),
    dc.nn.ConvTranspose2d(8, 3, 4, 2, 1),
    dc.nn.Tanh(),
).double()
dm.load_state_dict({k: dc.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
x = rng.standard_normal((4, 3, 8, 8))
for mode in ("train", "eval"):
    getattr(tm, mode)()
    getattr(dm, mode)()
    for _ in range(2):
        yt, yd = tm(torch.tensor(x)), dm(dc.tensor(x))
        yt.sum().backward()
        yd.sum().backward()
    e = np.abs(yt.detach().numpy() - yd.detach().numpy()).max()
    sd_t, sd_d = tm.state_dict(), dm.state_dict()
    se = max(float(np.abs(sd_t[k].numpy().astype(np.float64) - sd_d[k].numpy().astype(np.float64)).max()) for k in sd_t)
    ge = max(float(np.abs(p.grad.numpy() - q.grad.numpy()).max()) for p, q in zip(tm.parameters(), dm.parameters()))
    ok = e < 1e-9 and se < 1e-9 and ge < 1e-8
    print(f"{'ok ' if ok else 'BAD'} DCGAN block {mode}: out {e:.1e} state {se:.1e} grads {ge:.1e}")
