"""Conv-stack benchmark: convolution layers forward + backward vs PyTorch on the CPU, same run.

    PYTHONPATH=python /work/venv-torch/bin/python benchmarks/conv.py [--quick] [--json out.json]

(any interpreter that imports both dutycycle and torch). Rows: each convolution and transposed
convolution of PyTorch's DCGAN example (64x64 images, ngf = ndf = 64, nz = 100) and of a small
convolutional VAE / U-Net block, as layers (forward, then backward to the input and the weight:
what a training step does), then the DCGAN discriminator and generator as whole models (conv +
BatchNorm2d + LeakyReLU/ReLU + Tanh/Sigmoid) forward + backward, and BatchNorm2d / MaxPool2d alone.
The number is layer passes per second; ratio = dutycycle / PyTorch; target >= 0.8x (issue 8).
Both sides run on the same thread count (OMP_NUM_THREADS, default every CPU); timings are medians
after a warm-up, alternating sides (engine.py's `paired`). PyTorch's CPU convolutions run on
oneDNN (mkldnn); ours are im2col + OpenBLAS GEMM. Without torch the benchmark exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import _load, _torch, dc_threads, paired  # noqa: E402

import dutycycle as dc  # noqa: E402

# (name, kind, batch, in_ch, out_ch, H (input), kernel, stride, padding, output_padding)
LAYERS = [
    ("DCGAN D conv1 3->64 64x64 k4s2", "conv", 64, 3, 64, 64, 4, 2, 1, 0),
    ("DCGAN D conv2 64->128 32x32 k4s2", "conv", 64, 64, 128, 32, 4, 2, 1, 0),
    ("DCGAN D conv3 128->256 16x16 k4s2", "conv", 64, 128, 256, 16, 4, 2, 1, 0),
    ("DCGAN D conv4 256->512 8x8 k4s2", "conv", 64, 256, 512, 8, 4, 2, 1, 0),
    ("DCGAN G tconv1 100->512 1x1 k4s1", "tconv", 64, 100, 512, 1, 4, 1, 0, 0),
    ("DCGAN G tconv2 512->256 4x4 k4s2", "tconv", 64, 512, 256, 4, 4, 2, 1, 0),
    ("DCGAN G tconv3 256->128 8x8 k4s2", "tconv", 64, 256, 128, 8, 4, 2, 1, 0),
    ("DCGAN G tconv4 128->64 16x16 k4s2", "tconv", 64, 128, 64, 16, 4, 2, 1, 0),
    ("DCGAN G tconv5 64->3 32x32 k4s2", "tconv", 64, 64, 3, 32, 4, 2, 1, 0),
    ("VAE enc 3->32 64x64 k3s2", "conv", 32, 3, 32, 64, 3, 2, 1, 0),
    ("VAE enc 32->64 32x32 k3s2", "conv", 32, 32, 64, 32, 3, 2, 1, 0),
    ("VAE dec 64->32 16x16 k3s2 op1", "tconv", 32, 64, 32, 16, 3, 2, 1, 1),
    ("U-Net 64->64 32x32 k3s1", "conv", 16, 64, 64, 32, 3, 1, 1, 0),
    ("1x1 conv 256->64 16x16", "conv", 32, 256, 64, 16, 1, 1, 0, 0),
]


def _layer(lib, spec, seed):
    name, kind, n, ci, co, h, k, s, p, op = spec
    lib.manual_seed(seed)
    if kind == "conv":
        m = lib.nn.Conv2d(ci, co, k, s, p)
    else:
        m = lib.nn.ConvTranspose2d(ci, co, k, s, p, output_padding=op)
    return m


def layer_row(torch, spec, reps):
    name, kind, n, ci, co, h, k, s, p, op = spec
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ci, h, h), dtype=np.float32)
    md, mt = _layer(dc, spec, 0), _layer(torch, spec, 0)
    with torch.no_grad():  # the same weights on both sides
        mt.weight.copy_(torch.from_numpy(md.weight.detach().numpy()))
        mt.bias.copy_(torch.from_numpy(md.bias.detach().numpy()))
    xd, xt = dc.tensor(x).requires_grad_(True), torch.tensor(x, requires_grad=True)
    yd, yt = md(xd), mt(xt)
    err = np.abs(yd.detach().numpy() - yt.detach().numpy()).max() / (np.abs(yt.detach().numpy()).max() + 1e-12)
    if err > 1e-4:
        raise SystemExit(f"benchmark aborted: {name}: output differs from PyTorch (relative {err:.2e})")
    gy = rng.standard_normal(tuple(yt.shape), dtype=np.float32)
    gd, gt = dc.tensor(gy), torch.tensor(gy)
    yd.backward(gd)
    yt.backward(gt)
    for a, b, what in ((xd.grad, xt.grad, "input"), (md.weight.grad, mt.weight.grad, "weight")):
        e = np.abs(a.numpy() - b.numpy()).max() / (np.abs(b.numpy()).max() + 1e-12)
        if e > 1e-4:
            raise SystemExit(f"benchmark aborted: {name}: {what} gradient differs from PyTorch (relative {e:.2e})")

    def step(m, xx, g):
        def f():
            m.weight.grad = None
            m.bias.grad = None
            xx.grad = None
            m(xx).backward(g)
        return f

    t_d, t_t = paired(step(md, xd, gd), step(mt, xt, gt), reps)
    return (f"{name} (N={n})", "passes/s", 1 / t_d, 1 / t_t, 0.8)


def _dcgan(lib, which, nz=100, ngf=64, ndf=64, nc=3):
    nn = lib.nn
    if which == "G":
        return nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())


def model_row(torch, which, n, reps):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 100, 1, 1) if which == "G" else (n, 3, 64, 64), dtype=np.float32)
    md, mt = _dcgan(dc, which), _dcgan(torch, which)
    mt.load_state_dict({k: torch.from_numpy(v.detach().numpy().copy()) for k, v in md.state_dict().items()})
    xd, xt = dc.tensor(x), torch.tensor(x)
    yd, yt = md(xd), mt(xt)
    err = np.abs(yd.detach().numpy() - yt.detach().numpy()).max()
    if err > 1e-3:
        raise SystemExit(f"benchmark aborted: DCGAN {which}: output differs from PyTorch by {err:.2e}")

    def step(m, xx):
        def f():
            m.zero_grad()
            m(xx).mean().backward()
        return f

    t_d, t_t = paired(step(md, xd), step(mt, xt), reps)
    label = "generator" if which == "G" else "discriminator"
    return (f"DCGAN {label} fwd+bwd (N={n})", "steps/s", 1 / t_d, 1 / t_t, 0.8)


def small_rows(torch, reps):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 128, 16, 16), dtype=np.float32)
    rows = []
    for name, mk in (("BatchNorm2d(128) train 64x128x16x16", lambda lib: lib.nn.BatchNorm2d(128)),
                     ("MaxPool2d(2) 64x128x16x16", lambda lib: lib.nn.MaxPool2d(2))):
        md, mt = mk(dc), mk(torch)
        xd, xt = dc.tensor(x).requires_grad_(True), torch.tensor(x, requires_grad=True)
        np.testing.assert_allclose(md(xd).detach().numpy(), mt(xt).detach().numpy(), atol=1e-4, rtol=1e-4)

        def step(m, xx, lib):
            def f():
                xx.grad = None
                m(xx).sum().backward()
            return f

        t_d, t_t = paired(step(md, xd, dc), step(mt, xt, torch), reps)
        rows.append((name + " fwd+bwd", "passes/s", 1 / t_d, 1 / t_t, 0.8))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer layers and repeats (smoke run)")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    torch = _torch()
    if torch is None:
        print("benchmarks/conv.py compares against PyTorch: run it with an interpreter that imports torch")
        return 0
    reps = 2 if args.quick else 5
    load0 = _load()
    layers = LAYERS[::4] if args.quick else LAYERS
    rows = [layer_row(torch, spec, reps) for spec in layers]
    rows.append(model_row(torch, "D", 64, reps))
    rows.append(model_row(torch, "G", 64, reps))
    rows += small_rows(torch, reps)
    cpu = platform.processor() or platform.machine()
    print(f"dutycycle conv benchmark: {os.cpu_count()} CPUs ({cpu}), {dc_threads()} threads both sides, "
          f"torch {torch.__version__} (mkldnn {torch.backends.mkldnn.is_available()})")
    print(f"load average (1, 5, 15 min): {load0} at the start, {_load()} at the end")
    print(f"{'case':<50} {'unit':<9} {'dutycycle':>10} {'PyTorch':>10} {'ratio':>7}  target")
    out = []
    for name, unit, ours, base, target in rows:
        ratio = ours / base
        tgt = f">= {target:.2f}x " + ("ok" if ratio >= target else "MISSED")
        print(f"{name:<50} {unit:<9} {ours:>10.2f} {base:>10.2f} {ratio:>6.2f}x  {tgt}")
        out.append(dict(case=name, unit=unit, dutycycle=ours, baseline=base, ratio=ratio, target=target))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=dict(cpus=os.cpu_count(), threads=dc_threads(), processor=cpu,
                                        torch=torch.__version__), load=[load0, _load()], rows=out), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
