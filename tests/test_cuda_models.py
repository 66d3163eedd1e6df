"""GPU end-to-end checks (marked `gpu`, skipped without a CUDA device; scripts/gpu-check runs them on a
lent GPU): GPT and DiT train on the GPU and match the CPU's first-step loss, bf16-mixed converges like
float32, bf16-true trains like on the CPU (16-bit operands of kernels without 16-bit code through
float32 copies), Trainer(accelerator="gpu") runs the demo, the caching allocator makes no cudaMalloc in the
steady state, streams/events/pinned copies behave as torch's, and a 1-GPU NCCL communicator runs."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import nn

HAS_GPU = dc.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")]


def first_steps(model_fn, batch_fn, loss_fn, device, steps=3, lr=1e-3):
    dc.manual_seed(0)
    model = model_fn()
    model_dev = copy.deepcopy(model).to(device) if device != "cpu" else model
    opt = dc.optim.AdamW(model_dev.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    for i in range(steps):
        batch = [b.to(device) for b in batch_fn(i)]
        loss = loss_fn(model_dev, *batch)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model_dev.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def gpt_case():
    from dutycycle.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 512, size=(3, 8, 65))

    def batch(i):
        return dc.from_numpy(data[i, :, :-1].copy()), dc.from_numpy(data[i, :, 1:].copy())

    return (lambda: GPT(cfg)), batch, (lambda m, x, y: m(x, y)[1])


def dit_case():
    from dutycycle.models.dit import DiT, DiTConfig

    cfg = DiTConfig(input_size=16, patch_size=2, in_channels=4, hidden_size=96, depth=2, num_heads=4,
                    num_classes=10)
    rng = np.random.default_rng(1)

    def batch(i):
        x = dc.from_numpy(rng.standard_normal((4, 4, 16, 16)).astype(np.float32))
        t = dc.from_numpy(rng.integers(0, 1000, size=4))
        y = dc.from_numpy(rng.integers(0, 10, size=4))
        noise = dc.from_numpy(rng.standard_normal((4, 4, 16, 16)).astype(np.float32))
        return x, t, y, noise

    def loss(m, x, t, y, noise):
        xt = m.q_sample(x, t, noise) if hasattr(m, "q_sample") else x + noise
        out = m(xt, t, y)
        return nn.functional.mse_loss(out[:, : x.shape[1]], noise)

    return (lambda: DiT(cfg)), batch, loss


@pytest.mark.parametrize("case", [gpt_case, dit_case], ids=["gpt", "dit"])
def test_model_trains_on_gpu_and_matches_cpu_first_step(case):
    model_fn, batch_fn, loss_fn = case()
    cpu = first_steps(model_fn, batch_fn, loss_fn, "cpu")
    model_fn, batch_fn, loss_fn = case()
    gpu = first_steps(model_fn, batch_fn, loss_fn, "cuda")
    assert abs(gpu[0] - cpu[0]) <= 1e-4 * abs(cpu[0]), (cpu, gpu)
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3)
    assert gpu[-1] < gpu[0]


def test_bf16_mixed_converges_like_float32_on_gpu(tmp_path):
    from test_precision import fit  # the CPU test's task and model

    f32, b16 = fit(tmp_path, "32-true", accelerator="gpu")[2], fit(tmp_path, "bf16-mixed", accelerator="gpu")[2]
    assert f32 < 0.1 and abs(b16 - f32) < 0.25 * f32


def test_bf16_true_trains_on_gpu_like_on_the_cpu(tmp_path):
    from test_precision import fit_true

    (_, m_cpu, cpu), (_, m_gpu, gpu) = (fit_true(tmp_path, "bf16-true", 3, a) for a in ("cpu", "gpu"))
    assert all(p.dtype == dc.bfloat16 and p.device.type == "cuda" for p in m_gpu.parameters())
    assert gpu < 0.2 and abs(gpu - cpu) < 0.3 * cpu, (cpu, gpu)


def test_16_bit_ops_without_16_bit_kernels_run_through_float32_like_the_cpu():
    # reductions, scans, index_add (embedding backward), convolutions and the optimizer steps have
    # float32/float64 CUDA kernels: 16-bit operands go through float32 copies (cuda/backend.cu)
    dc.manual_seed(0)
    for dt in (dc.bfloat16, dc.float16):
        x = dc.randn(64, 33).to(dt)
        for f in (lambda t: t.sum(), lambda t: t.sum(1), lambda t: t.amax(0), lambda t: t.cumsum(1),
                  lambda t: t.norm()):
            np.testing.assert_allclose(f(x.cuda()).float().cpu().numpy(), f(x).float().numpy(), rtol=2e-2, atol=2e-2)
        emb_cpu = nn.Embedding(50, 16).to(dt)
        emb_gpu = copy.deepcopy(emb_cpu).cuda()
        idx = dc.randint(0, 50, (8, 12))
        emb_cpu(idx).float().sum().backward()
        emb_gpu(idx.cuda()).float().sum().backward()
        np.testing.assert_allclose(emb_gpu.weight.grad.float().cpu().numpy(), emb_cpu.weight.grad.float().numpy())
        w = dc.randn(8, 4, 3, 3).to(dt)
        img = dc.randn(2, 4, 9, 9).to(dt)
        np.testing.assert_allclose(nn.functional.conv2d(img.cuda(), w.cuda()).float().cpu().numpy(),
                                   nn.functional.conv2d(img, w).float().numpy(), rtol=2e-2, atol=5e-2)
        lin = nn.Linear(16, 16).to(dt)
        lin_gpu = copy.deepcopy(lin).cuda()
        for mod in (lin, lin_gpu):
            opt = dc.optim.AdamW(mod.parameters(), lr=1e-2)
            dev = mod.weight.device
            mod(dc.ones(4, 16, dtype=dt).to(dev)).float().pow(2).sum().backward()
            nn.utils.clip_grad_norm_(mod.parameters(), 0.5)
            opt.step()
            assert opt.state[mod.weight]["exp_avg"].dtype == dt
        np.testing.assert_allclose(lin_gpu.weight.float().cpu().numpy(), lin.weight.float().numpy(), rtol=1e-2,
                                   atol=1e-2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_16_bit_optimizer_steps_match_the_cpu_bit_for_bit(dtype, opt_name):
    # the multi-tensor kernels step 16-bit parameters in float32 and round once, as the CPU's float32
    # fallback does: identical numbers (sizes 37 and 1000 leave lanes outside whole 16-byte packs)
    dt = getattr(dc, dtype)
    dc.manual_seed(0)
    shapes = [(37,), (10, 100), (3, 5, 7)]
    cpu = [dc.randn(*s).to(dt).requires_grad_() for s in shapes]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    kw = {"lr": 1e-2, "weight_decay": 0.1} if opt_name == "AdamW" else {"lr": 1e-2, "momentum": 0.9, "nesterov": True}
    opts = [getattr(dc.optim, opt_name)(ps, **kw) for ps in (cpu, gpu)]
    for _ in range(3):
        grads = [dc.randn(*s).to(dt) for s in shapes]
        for ps, opt in zip((cpu, gpu), opts):
            for p, g in zip(ps, grads):
                p.grad = g.to(p.device)
            opt.step()
    for a, b in zip(cpu, gpu):
        assert b.dtype == dt
        np.testing.assert_array_equal(b.detach().float().cpu().numpy(), a.detach().float().numpy())


def test_trainer_gpu_runs_the_demo(tmp_path):
    from test_demo import WORDS

    from dutycycle import demo

    data = tmp_path / "words.txt"
    data.write_text("\n".join(WORDS) + "\n")
    assert demo.main(["--steps", "30", "--size", "tiny", "--data", str(data), "--val-every", "30", "--samples", "3",
                      "--batch-size", "16", "--root", str(tmp_path / "runs"), "--no-progress", "--workers", "1",
                      "--accelerator", "gpu", "--precision", "bf16-mixed"]) == 0


def test_steady_state_makes_no_cuda_malloc():
    lin = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)).cuda()
    opt = dc.optim.AdamW(lin.parameters(), lr=1e-3)
    x = dc.randn(64, 256).cuda()
    for i in range(6):
        loss = lin(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 2:
            before = dc.cuda.memory_stats()["num_device_alloc"]
            plans = dc.cuda.plan_cache_stats()["matmul"]
    dc.cuda.synchronize()
    s = dc.cuda.memory_stats()
    assert s["num_device_alloc"] == before, s
    warm = dc.cuda.plan_cache_stats()["matmul"]  # warm steps build no cuBLASLt plan
    assert warm["misses"] == plans["misses"] > 0 and warm["hits"] > plans["hits"], (plans, warm)
    assert dc.cuda.max_memory_allocated() >= dc.cuda.memory_allocated() > 0
    assert dc.cuda.memory_reserved() >= dc.cuda.memory_allocated()
    del lin, opt, x, loss
    dc.cuda.empty_cache()
    assert dc.cuda.memory_reserved() <= s["reserved_bytes.all.current"]


def test_streams_events_and_pinned_copies():
    a = dc.arange(1 << 20, dtype=dc.float32)
    p = a.pin_memory()
    assert p.is_pinned() and not a.is_pinned()
    s = dc.cuda.Stream()
    start, end = dc.cuda.Event(enable_timing=True), dc.cuda.Event(enable_timing=True)
    with dc.cuda.stream(s):
        assert dc.cuda.current_stream() == s
        start.record()
        g = p.to("cuda", non_blocking=True)
        h = g * 2
        end.record()
    assert dc.cuda.current_stream() == dc.cuda.default_stream()
    dc.cuda.current_stream().wait_stream(s)
    h.record_stream(dc.cuda.current_stream())
    end.synchronize()
    assert end.query() and start.elapsed_time(end) >= 0
    np.testing.assert_array_equal(h.cpu().numpy(), a.numpy() * 2)


def test_sync_counter_counts_item_and_synchronize():
    c0 = dc.cuda.sync_counts()
    t = dc.ones(3, device="cuda").sum()
    t.item()
    dc.cuda.synchronize()
    c1 = dc.cuda.sync_counts()
    assert c1["item"] == c0["item"] + 1 and c1["d2h_copy"] >= c0["d2h_copy"] + 1
    assert c1["synchronize"] == c0["synchronize"] + 1


def test_one_gpu_nccl_communicator():
    code = (
        "import dutycycle as dc\nfrom dutycycle import _C\nc = _C.Comm(backend='nccl')\n"
        "t = dc.arange(8, dtype=dc.float32).cuda()\nw = c.all_reduce(t, op='sum', async_op=True)\nw.wait()\n"
        "assert t.cpu().tolist() == list(map(float, range(8))), t\nc.close()\nprint('NCCL OK')\n"
    )
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and "NCCL OK" in p.stdout, p.stdout + p.stderr
