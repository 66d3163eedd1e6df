"""Engine benchmark: each row is dutycycle vs a baseline measured in the same run, same machine.

    python benchmarks/engine.py [--quick] [--json out.json]

Rows: float32 GEMM (512..4096) GFLOP/s vs NumPy; softmax, layer norm and GELU effective bandwidth
(bytes read + written once) vs NumPy doing the same math; small layers (Linear(128, 128) on 32 rows,
forward + backward, and a small VAE training step) and GPT training steps (forward + backward +
AdamW; the nanoGPT-style small row and two GPT-2-like shapes) vs the same model in PyTorch on the
CPU, same thread count, when torch is importable (without torch the Linear row runs against NumPy
doing the same math and the model rows are skipped); and one row that times our GEMM right after a
NumPy GEMM against the same GEMM after a pause (NumPy's BLAS threads keep spinning for a while).
Targets: GEMM >= 0.95x NumPy; fused elementwise/normalisation ops >= 2x NumPy; small layers and
GPT steps >= 1.0x PyTorch.
Timings take the median of several runs after a warm-up; the two sides alternate so neither gets a
warmer machine. `uptime`'s load average is printed with the table: other work on the machine moves
the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import dutycycle as dc


def timeit(fn, reps, min_time=0.2):
    fn()  # warm-up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * reps:
            break
    return statistics.median(times)


def paired(fn_a, fn_b, reps):
    """Time two functions in alternation (a, b, a, b, ...) and return both medians."""
    ta, tb = [], []
    for _ in range(3):
        # pauses let the other side's BLAS/OpenMP threads stop spinning before we time
        time.sleep(0.1)
        ta.append(timeit(fn_a, reps))
        time.sleep(0.1)
        tb.append(timeit(fn_b, reps))
    return min(ta), min(tb)


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gemm_rows(sizes, reps):
    rows = []
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        ta, tb = dc.from_numpy(a), dc.from_numpy(b)
        r = max(1, reps if n <= 1024 else 2)
        t_dc, t_np = paired(lambda ta=ta, tb=tb: ta @ tb, lambda a=a, b=b: a @ b, r)
        flops = 2.0 * n ** 3
        rows.append((f"GEMM f32 {n}x{n}x{n}", "GFLOP/s", flops / t_dc / 1e9, flops / t_np / 1e9, 0.95))
    return rows


def fused_rows(shape, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal(shape[-1], dtype=np.float32)
    b = rng.standard_normal(shape[-1], dtype=np.float32)
    tx, tw, tb = dc.from_numpy(x), dc.from_numpy(w), dc.from_numpy(b)
    nbytes = 2 * x.nbytes  # one read, one write
    rows = []
    cases = [
        ("softmax (last dim)", lambda: dc.softmax(tx, -1), lambda: np_softmax(x)),
        ("layer norm (last dim)", lambda: dc._C.layer_norm(tx, tw, tb, 1e-5), lambda: np_layer_norm(x, w, b)),
        ("GELU (tanh approx.)", lambda: dc._C.gelu(tx, True), lambda: np_gelu_tanh(x)),
    ]
    # correctness guard: a fast wrong kernel must not look good
    for name, f_dc, f_np in cases:
        got = f_dc().numpy()
        if not np.allclose(got, f_np(), atol=1e-4, rtol=1e-4):
            raise SystemExit(f"benchmark aborted: {name} differs from the NumPy reference")
    for name, f_dc, f_np in cases:
        t_dc, t_np = paired(f_dc, f_np, reps)
        rows.append((f"{name} {shape[0]}x{shape[1]}", "GB/s", nbytes / t_dc / 1e9, nbytes / t_np / 1e9, 2.0))
    return rows


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(dc_threads())
    return torch


def dc_threads():
    """The thread count our kernels use (OpenMP's; OMP_NUM_THREADS or every CPU)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def small_linear_row(reps, torch):
    """Linear(128, 128) on 32 rows, forward + backward (x and the parameters get gradients): the
    size where waking a thread team costs more than the GEMM."""
    N, I, O = 32, 128, 128
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((N, I), dtype=np.float32)
    lin = dc.nn.Linear(I, O)
    x = dc.tensor(xn, requires_grad=True)

    def dc_step():
        lin(x).sum().backward()

    if torch is not None:
        tlin = torch.nn.Linear(I, O)
        tx = torch.tensor(xn, requires_grad=True)

        def base_step():
            tlin(tx).sum().backward()

        base = "PyTorch"
    else:  # the same math in NumPy: y = x W^T + b; dx = g W; dW = g^T x; db = sum(g)
        w = lin.weight.detach().numpy()
        b = lin.bias.detach().numpy()

        def base_step():
            y = xn @ w.T + b
            g = np.ones_like(y)
            return g @ w, g.T @ xn, g.sum(0)

        base = "NumPy"
    r = max(reps, 20)
    t_dc, t_b = paired(dc_step, base_step, r)
    return (f"Linear {I}->{O} on {N} rows fwd+bwd (vs {base})", "steps/s", 1 / t_dc, 1 / t_b,
            1.0 if torch is not None else None)


def vae_row(reps, torch):
    """One training step of a small MLP VAE (784 -> 256 -> 2x32 -> 256 -> 784, batch 64): BCE with
    logits + KL, Adam."""
    if torch is None:
        return None
    Bt, D, Hd, Z = 64, 784, 256, 32
    rng = np.random.default_rng(0)
    xn = rng.random((Bt, D), dtype=np.float32)
    en = rng.standard_normal((Bt, Z), dtype=np.float32)

    def build(lib):
        nn = lib.nn
        enc = nn.Sequential(nn.Linear(D, Hd), nn.ReLU(), nn.Linear(Hd, 2 * Z))
        dec = nn.Sequential(nn.Linear(Z, Hd), nn.ReLU(), nn.Linear(Hd, D))
        params = list(enc.parameters()) + list(dec.parameters())
        opt = lib.optim.Adam(params, lr=1e-3)
        x, eps = lib.tensor(xn), lib.tensor(en)

        def step():
            h = enc(x)
            mu, logvar = h[:, :Z], h[:, Z:]
            z = mu + eps * (0.5 * logvar).exp()
            rec = lib.nn.functional.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
            kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
            loss = (rec + kl) / Bt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    dc.manual_seed(0)
    torch.manual_seed(0)
    t_dc, t_t = paired(build(dc), build(torch), max(reps, 10))
    return (f"VAE step MLP 784-256-32 B{Bt} (fwd+bwd+Adam)", "steps/s", 1 / t_dc, 1 / t_t, 1.0)


def numpy_handover_row(reps):
    """Our 512^3 GEMMs right after NumPy ran a 1024^3 one (NumPy's OpenBLAS keeps its own threads
    spinning for up to ~0.1 s after each call, on the cores our team needs) vs the same GEMMs after
    a 0.5 s pause. Each sample times the first 8 GEMMs (~10 ms). ratio = after-NumPy speed / paused
    speed: 1.0 means no interference."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((1024, 1024), dtype=np.float32)
    ta = dc.from_numpy(rng.standard_normal((512, 512), dtype=np.float32))

    def burst():
        t0 = time.perf_counter()
        for _ in range(8):
            ta @ ta
        return time.perf_counter() - t0

    burst()
    after, idle = [], []
    for _ in range(max(reps, 7)):
        big @ big  # NumPy's GEMM, threaded by its own BLAS
        after.append(burst())
        time.sleep(0.5)
        idle.append(burst())
    flops = 8 * 2.0 * 512 ** 3
    return ("GEMM 512^3 right after a NumPy GEMM (vs after a pause)", "GFLOP/s",
            flops / statistics.median(after) / 1e9, flops / statistics.median(idle) / 1e9, None)


GPT_SHAPES = [  # (B, T, n_layer, n_embd, n_head); vocab 256 throughout
    (16, 64, 4, 128, 4),
    (8, 256, 6, 384, 6),
    (4, 512, 12, 768, 12),
]


def gpt_row(reps, torch, shape):
    if torch is None:
        return None
    from dutycycle.models import GPT, GPTConfig

    B, T, L, C, H = shape
    V = 256
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0, bias=True)
    dc.manual_seed(0)
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3)
    rng = np.random.default_rng(0)
    xi = rng.integers(0, V, (B, T))
    yi = rng.integers(0, V, (B, T))
    x, y = dc.tensor(xi), dc.tensor(yi)

    def dc_step():
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tmodel, topt = _torch_gpt(torch, cfg)
    tx, ty = torch.tensor(xi), torch.tensor(yi)

    def torch_step():
        logits = tmodel(tx)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, V), ty.view(-1))
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    t_dc, t_t = paired(dc_step, torch_step, reps)
    tokens = B * T
    return (f"GPT step B{B} T{T} L{L} C{C} (fwd+bwd+AdamW)", "tokens/s", tokens / t_dc, tokens / t_t, 1.0)


def _torch_gpt(torch, cfg):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.n_embd
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, cfg.n_head, C // cfg.n_head).transpose(1, 2) for t in (q, k, v))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.proj(nn.functional.gelu(self.fc(self.ln_2(x))))

    class TGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.h = nn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.n_embd)
            self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            self.head.weight = self.wte.weight

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.h:
                x = b(x)
            return self.head(self.ln_f(x))

    m = TGPT()
    return m, torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)


def _load():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (CI smoke run)")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    reps = 3 if args.quick else 5
    sizes = [256, 512] if args.quick else [512, 1024, 2048, 4096]
    shape = (1024, 1024) if args.quick else (4096, 2048)

    torch = _torch()
    note = f"torch {torch.__version__}" if torch else "torch is not importable: model rows skipped"
    load0 = _load()
    rows = gemm_rows(sizes, reps) + fused_rows(shape, reps)
    rows.append(small_linear_row(reps, torch))
    rows.append(vae_row(reps, torch))
    for gs in GPT_SHAPES[:2] if args.quick else GPT_SHAPES:
        big = gs[2] * gs[3] ** 2 > 5e6
        rows.append(gpt_row(1 if big else reps, torch, gs))
    rows.append(numpy_handover_row(reps))
    rows = [r for r in rows if r is not None]

    cpu = platform.processor() or platform.machine()
    print(f"dutycycle engine benchmark: {os.cpu_count()} CPUs ({cpu}), {dc_threads()} threads both sides, "
          f"numpy {np.__version__}; {note}")
    print(f"load average (1, 5, 15 min): {load0} at the start, {_load()} at the end")
    print(f"{'case':<46} {'unit':<9} {'dutycycle':>10} {'baseline':>10} {'ratio':>7}  target")
    out = []
    for name, unit, ours, base, target in rows:
        ratio = ours / base
        tgt = "" if target is None else (f">= {target:.2f}x " + ("ok" if ratio >= target else "MISSED"))
        print(f"{name:<46} {unit:<9} {ours:>10.2f} {base:>10.2f} {ratio:>6.2f}x  {tgt}")
        out.append(dict(case=name, unit=unit, dutycycle=ours, baseline=base, ratio=ratio, target=target))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=dict(cpus=os.cpu_count(), threads=dc_threads(), processor=cpu,
                                        numpy=np.__version__, torch=torch.__version__ if torch else None),
                           load=[load0, _load()], rows=out), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
