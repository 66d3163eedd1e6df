"""GPU benchmark: dutycycle against PyTorch on the same card in the same run (scripts/gpu-check runs it).

    python benchmarks/gpu.py [--quick] [--out DIR]

Cases (each timed after warm-up steps, the device synchronised around the timed region only):
  gpt2      GPT-2 124M training step, B=16, T=1024, bf16-mixed, AdamW: tokens/s and MFU for dutycycle,
            PyTorch eager and torch.compile (same architecture, same initialisation scheme)
  adamw     the fused AdamW step over GPT-2's parameters: bytes/s against a device-to-device copy of
            the same bytes (AdamW reads p, g, m, v and writes p, m, v: 7 x 4 bytes per float32 element)
  attention causal attention forward + backward (B=16, H=12, T=1024, D=64, bf16): dutycycle vs
            torch.nn.functional.scaled_dot_product_attention
  dit       DiT-B/2 training step at 256x256 images = 32x32x4 latents, B=32, bf16-mixed

MFU = 6 * N * tokens/s + the attention's 12 * L * T * C per token, over the card's dense bf16 peak
(H100/H200 SXM: 989.4 TFLOP/s, from NVIDIA's datasheet; A100: 312). Targets (issue 11): dutycycle >=
PyTorch eager tokens/s (goal >= torch.compile), MFU >= 45%, AdamW >= 80% of copy bandwidth.
Writes gpu-<card>.md and .json into --out (default benchmarks/results, or $DC_BENCH_OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}


def peak_for(name):
    for k, v in PEAK_BF16.items():
        if k in name:
            return v
    return None


# --- dutycycle ------------------------------------------------------------------------------------

def dc_sync():
    import dutycycle as dc

    dc.cuda.synchronize()


def timed(step, warmup, iters, sync):
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - t0) / iters


def dc_gpt2(B, T, warmup, iters):
    import dutycycle as dc
    from dutycycle.models.gpt import GPT, GPTConfig

    dc.manual_seed(0)
    cfg = GPTConfig(block_size=T, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
    model = GPT(cfg).cuda()
    opt = dc.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    x = dc.randint(0, 50257, (B, T)).cuda()
    y = dc.randint(0, 50257, (B, T)).cuda()

    def step():
        with dc.autocast("cuda", dtype=dc.bfloat16):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    s = timed(step, warmup, iters, dc_sync)
    n = sum(p.numel() for p in model.parameters())
    return s, n, model, opt


def dc_adamw(model, opt, warmup, iters):
    import dutycycle as dc

    for p in model.parameters():
        p.grad = dc.randn(*p.shape).cuda() * 1e-3
    nbytes = sum(p.numel() for p in model.parameters()) * 4
    s = timed(opt.step, warmup, iters, dc_sync)
    # a copy moving the same bytes: 3.5 x the parameter bytes read and as many written
    src = dc.empty((7 * nbytes) // 8 // 4, dtype=dc.float32).cuda()
    dst = dc.empty_like(src)
    c = timed(lambda: dst.copy_(src), warmup, iters, dc_sync)
    return 7 * nbytes / s, 2 * src.numel() * 4 / c


def dc_attention(B, H, T, D, warmup, iters):
    import dutycycle as dc
    import dutycycle.nn.functional as F

    q, k, v = (dc.randn(B, H, T, D).to(dc.bfloat16).cuda().requires_grad_() for _ in range(3))
    g = dc.randn(B, H, T, D).to(dc.bfloat16).cuda()

    def step():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(g)

    return timed(step, warmup, iters, dc_sync)


def dc_dit(B, warmup, iters):
    import dutycycle as dc
    from dutycycle.models.dit import DiT, DiTConfig

    dc.manual_seed(0)
    model = DiT(DiTConfig.from_name("DiT-B/2", input_size=32, num_classes=1000)).cuda()
    opt = dc.optim.AdamW(model.parameters(), lr=1e-4)
    x = dc.randn(B, 4, 32, 32).cuda()
    y = dc.randint(0, 1000, (B,)).cuda()

    def step():
        with dc.autocast("cuda", dtype=dc.bfloat16):
            loss = model.training_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, warmup, iters, dc_sync)


# --- PyTorch ------------------------------------------------------------------------------------------

def torch_gpt2(B, T, warmup, iters, compiled):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as tF

    class Block(tnn.Module):
        def __init__(self, C, nh):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(C), tnn.LayerNorm(C)
            self.c_attn, self.c_proj = tnn.Linear(C, 3 * C), tnn.Linear(C, C)
            self.c_fc, self.c_proj2 = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)
            self.nh = nh

        def forward(self, x):
            Bq, Tq, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(Bq, Tq, self.nh, C // self.nh).transpose(1, 2) for t in (q, k, v))
            y = tF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(Bq, Tq, C)
            x = x + self.c_proj(y)
            return x + self.c_proj2(tF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(tnn.Module):
        def __init__(self, V=50304, C=768, L=12, nh=12):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, C), tnn.Embedding(T, C)
            self.h = tnn.ModuleList(Block(C, nh) for _ in range(L))
            self.ln_f = tnn.LayerNorm(C)
            self.lm_head = tnn.Linear(C, V, bias=False)
            self.wte.weight = self.lm_head.weight

        def forward(self, idx, tgt):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for b in self.h:
                x = b(x)
            logits = self.lm_head(self.ln_f(x))
            return tF.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model) if compiled else model
    x = torch.randint(0, 50257, (B, T), device="cuda")
    y = torch.randint(0, 50257, (B, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return timed(step, warmup, iters, torch.cuda.synchronize)


def torch_attention(B, H, T, D, warmup, iters):
    import torch
    import torch.nn.functional as tF

    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)

    def step():
        tF.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

    return timed(step, warmup, iters, torch.cuda.synchronize)


# --- main ------------------------------------------------------------------------------------------

def run_case(rows, name, fn):
    t0 = time.perf_counter()
    try:
        out = fn()
        print(f"  {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)
        return out
    except Exception as e:  # a failing case is a row, not a stopped benchmark
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        print(f"  {name}: FAILED {msg}", flush=True)
        traceback.print_exc()
        rows.append({"case": name, "error": msg})
        return None


def table(rows, card, peak):
    import dutycycle as dc

    lines = [f"# GPU benchmark: {card}", "", f"host {platform.node()}, Python {sys.version.split()[0]}, "
             f"dutycycle {dc.__version__}, CUDA runtime {dc._C.cuda_runtime_version()}", "",
             f"MFU peak: {peak / 1e12:.1f} TFLOP/s dense bf16" if peak else "MFU peak: unknown card", "", "```"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:<52} FAILED {r['error']}")
        elif "tokens_s" in r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            lines.append(f"{r['case']:<40} {r['impl']:<14} {r['step_ms']:8.1f} ms {r['tokens_s']:10.0f} tok/s"
                         f"  MFU {mfu}")
        elif "GB_s" in r:
            lines.append(f"{r['case']:<40} {r['impl']:<14} {r['GB_s']:8.1f} GB/s vs copy {r['copy_GB_s']:.1f} GB/s "
                         f"= {100 * r['ratio']:.0f}%")
        elif "images_s" in r:
            lines.append(f"{r['case']:<40} {r['impl']:<14} {r['step_ms']:8.1f} ms {r['images_s']:10.1f} img/s")
        else:
            lines.append(f"{r['case']:<40} {r['impl']:<14} {r['ms']:8.2f} ms")
    lines.append("```")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (the gpu-check time box)")
    ap.add_argument("--out", default=os.environ.get("DC_BENCH_OUT") or os.path.join(os.path.dirname(__file__),
                                                                                      "results"))
    ap.add_argument("--skip-compile", action="store_true", help="no torch.compile row")
    args = ap.parse_args(argv)
    import dutycycle as dc

    if not dc.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device; nothing to measure")
        return 0
    card = dc._C.cuda_device_name(0)
    warm, iters = (3, 8) if args.quick else (5, 20)
    B, T = 16, 1024
    rows = []
    print(f"gpu benchmark on {card}", flush=True)
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    res = run_case(rows, "gpt2 dutycycle", lambda: dc_gpt2(B, T, warm, iters))
    n_params = None
    peak = peak_for(card)
    L_, C_ = 12, 768

    def gpt_row(label, s):
        tok = B * T / s
        flops = (6 * n_params + 12 * L_ * T * C_) * tok if n_params else float("nan")
        rows.append({"case": "GPT-2 124M B=16 T=1024 bf16-mixed", "impl": label, "step_ms": 1e3 * s, "tokens_s": tok,
                     "mfu": flops / peak if peak else None})

    slug = "".join(c if c.isalnum() else "-" for c in card).strip("-").lower() or "gpu"
    os.makedirs(args.out, exist_ok=True)

    def write():  # after every case: a run cut short by its time box still leaves its table
        text = table(rows, card, peak)
        with open(os.path.join(args.out, f"gpu-{slug}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, f"gpu-{slug}.json"), "w") as f:
            json.dump({"card": card, "rows": rows}, f, indent=1, default=lambda o: None if o != o else o)
        return text

    model = opt = None
    if res:
        s, n_params, model, opt = res
        gpt_row("dutycycle", s)
    write()
    if have_torch:
        s = run_case(rows, "gpt2 torch eager", lambda: torch_gpt2(B, T, warm, iters, False))
        if s:
            gpt_row("PyTorch eager", s)
        write()
    if model is not None:
        r = run_case(rows, "adamw", lambda: dc_adamw(model, opt, warm, iters))
        if r:
            bw, copy_bw = r
            rows.append({"case": "fused AdamW (GPT-2 params)", "impl": "dutycycle", "GB_s": bw / 1e9,
                         "copy_GB_s": copy_bw / 1e9, "ratio": bw / copy_bw})
        write()
    model = opt = None  # free GPT-2 before the next cases
    dc.cuda.empty_cache()
    s = run_case(rows, "attention dutycycle", lambda: dc_attention(16, 12, 1024, 64, warm, iters))
    if s:
        rows.append({"case": "causal attention fwd+bwd B16 H12 T1024 D64 bf16", "impl": "dutycycle", "ms": 1e3 * s})
    if have_torch:
        s = run_case(rows, "attention torch", lambda: torch_attention(16, 12, 1024, 64, warm, iters))
        if s:
            rows.append({"case": "causal attention fwd+bwd B16 H12 T1024 D64 bf16", "impl": "torch SDPA",
                         "ms": 1e3 * s})
    write()
    s = run_case(rows, "dit dutycycle", lambda: dc_dit(32, warm, iters))
    if s:
        rows.append({"case": "DiT-B/2 256x256 (32x32x4 latents) B=32 bf16-mixed", "impl": "dutycycle",
                     "step_ms": 1e3 * s, "images_s": 32 / s})
    write()
    # last: torch.compile spends a minute or more compiling before its first step
    if have_torch and not args.skip_compile:
        s = run_case(rows, "gpt2 torch.compile", lambda: torch_gpt2(B, T, warm, iters, True))
        if s:
            gpt_row("torch.compile", s)
    print(write())
    return 0 if not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
