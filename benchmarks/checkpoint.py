"""Checkpoint cost for a GPT whose training state (weights + AdamW moments) is ~1 GB, in one run:

  1. training stall per checkpoint: asynchronous save (snapshot into the staging ring) vs a
     synchronous save of the same state (snapshot + write + fsync + commit)   target: <= 5%
  2. step-time overhead of training with an async checkpoint every N steps vs no checkpoints
                                                                               target: <= 3.5%
  3. peak host memory: the process's high-water RSS over the run vs state + staging pool
                                                                               target: no more
  4. persist throughput of the background writer vs `dd ... conv=fsync` writing the same number
     of bytes to the same disk                                                 target: >= 0.8x

    python benchmarks/checkpoint.py [--layers 12] [--steps 30] [--every 10] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import dutycycle as dc
import dutycycle.checkpoint as ckpt
from dutycycle.models import GPT, GPTConfig


def rss_hwm():
    """(current RSS, high-water RSS) of this process in bytes (Linux /proc)."""
    cur = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cur, hwm


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def dd(path, nbytes):
    """Seconds dd takes to write nbytes (16 MiB blocks) and fsync them."""
    bs = 16 << 20
    count = max(1, (nbytes + bs - 1) // bs)
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={count}", "conv=fsync"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    secs = time.perf_counter() - t
    os.unlink(path)
    return secs, count * bs


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--saves", type=int, default=3, help="repeats of the stall measurement")
    ap.add_argument("--dir", default="bench-ckpt", help="where checkpoints go (a real disk, not tmpfs)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    threads = dc.get_num_threads()
    os.makedirs(a.dir, exist_ok=True)

    dc.manual_seed(0)
    cfg = GPTConfig(block_size=128, vocab_size=a.vocab, n_layer=a.layers, n_head=12, n_embd=a.embd)
    model = GPT(cfg)
    opt = dc.optim.AdamW(model.parameters(), lr=1e-4)
    x = dc.randint(0, a.vocab, (1, 64))

    def step():
        logits, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def state():
        return {"model": model.state_dict(), "optimizer": opt.state_dict()}

    step()  # AdamW moments exist now: the state is complete
    nparams = sum(p.numel() for p in model.parameters())
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state_bytes += sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, dc.Tensor)
    )
    base_rss, _ = rss_hwm()
    print(f"dutycycle checkpoint benchmark: {os.cpu_count()} CPUs ({platform.machine()}), {threads} threads, "
          f"GPT {a.layers}x{a.embd}, {nparams / 1e6:.1f} M params, state {state_bytes / 2**20:.0f} MiB, "
          f"dir {os.path.abspath(a.dir)}")  # fmt: skip
    print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()), "at the start")

    # ---- 1. stall: async vs sync, same state -------------------------------------------------------
    w = ckpt.Checkpointer()
    reset_hwm()
    sync_s, async_s, write_s, written = [], [], [], []
    for i in range(a.saves):
        p = os.path.join(a.dir, f"sync-{i}.ckpt")
        t = time.perf_counter()
        w.save(state(), p, block=True)
        sync_s.append(time.perf_counter() - t)
        ckpt.remove(p)
        p = os.path.join(a.dir, f"async-{i}.ckpt")
        s = w.save(state(), p)
        async_s.append(s.stall_s)
        w.wait()
        write_s.append(s.write_s)
        written.append(s.bytes)
        ckpt.remove(p)
    pool = w._w.capacity
    _, hwm_saves = rss_hwm()

    # ---- 2. step-time overhead ---------------------------------------------------------------------
    def run(steps, every):
        times = []
        t0 = time.perf_counter()
        for k in range(steps):
            step()
            if every and (k + 1) % every == 0:
                w.save(state(), os.path.join(a.dir, f"step-{k + 1}.ckpt"))
            times.append(time.perf_counter())
        w.wait()
        for k in range(steps):
            p = os.path.join(a.dir, f"step-{k + 1}.ckpt")
            if os.path.exists(p):
                ckpt.remove(p)
        return time.perf_counter() - t0

    run(3, 0)  # warm-up
    plain, with_ck = [], []
    for _ in range(2):  # interleaved, so drift affects both
        plain.append(run(a.steps, 0))
        with_ck.append(run(a.steps, a.every))
    overhead = min(with_ck) / min(plain) - 1.0
    _, hwm_all = rss_hwm()

    # ---- 4. persist throughput vs dd: alternating, same disk, nothing else running; best of each ---
    persist, dds = [], []
    for i in range(2):
        p = os.path.join(a.dir, f"persist-{i}.ckpt")
        s = w.save(state(), p)
        w.wait()
        persist.append((s.bytes, s.write_s))
        ckpt.remove(p)
        dds.append(dd(os.path.join(a.dir, "dd.bin"), s.bytes))
    ours = max(b / t for b, t in persist)
    theirs = max(b / t for t, b in dds)
    dd_s, dd_bytes = dds[0]
    w.close()
    shutil.rmtree(a.dir, ignore_errors=True)

    stall_ratio = statistics.median(async_s) / statistics.median(sync_s)
    extra = hwm_all - base_rss
    overhead_row = "ok" if overhead <= 0.035 else "MISSED (<= 3.5%)"
    rows = [
        ("stall per checkpoint, sync save", f"{statistics.median(sync_s) * 1e3:.0f} ms", "", ""),
        ("stall per checkpoint, async save", f"{statistics.median(async_s) * 1e3:.0f} ms",
         f"{stall_ratio * 100:.1f}% of sync", "ok" if stall_ratio <= 0.05 else "MISSED (<= 5%)"),
        (f"step time, ckpt every {a.every} steps vs none", f"{min(with_ck) / a.steps * 1e3:.0f} vs "
         f"{min(plain) / a.steps * 1e3:.0f} ms", f"{overhead * 100:+.1f}%", overhead_row),
        ("peak RSS above the trained model", f"{extra / 2**20:.0f} MiB", f"pool {pool / 2**20:.0f} MiB",
         "ok" if extra <= pool * 1.05 + (64 << 20) else "MISSED (<= pool)"),
        ("persist throughput (write+CRC+fsync)", f"{ours / 2**20:.0f} MiB/s", f"dd {theirs / 2**20:.0f} MiB/s "
         f"= {ours / theirs:.2f}x", "ok" if ours / theirs >= 0.8 else "MISSED (>= 0.8x)"),
    ]  # fmt: skip
    print(f"{'measure':46s} {'value':>22s} {'vs':>26s}  target")
    for r in rows:
        print(f"{r[0]:46s} {r[1]:>22s} {r[2]:>26s}  {r[3]}")
    print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()), "at the end")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({
                "params": nparams, "state_bytes": state_bytes, "sync_stall_s": sync_s, "async_stall_s": async_s,
                "write_s": write_s, "bytes": written, "plain_run_s": plain, "ckpt_run_s": with_ck,
                "steps": a.steps, "every": a.every, "overhead": overhead, "pool_bytes": pool,
                "rss_base": base_rss, "rss_hwm_saves": hwm_saves, "rss_hwm": hwm_all, "persist": persist,
                "dd": dds, "threads": threads, "crc32c_hw": bool(dc._C.crc32c_hw()),
            }, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
