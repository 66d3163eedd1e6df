"""Trainer overhead: the same GPT training steps through Trainer.fit and through a hand-written loop
on the engine, in one run, on the same data and model size. Prints the time ratio (target <= 1.03x)
and the trainer's duty-cycle split.

    python benchmarks/trainer.py [--steps 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import dutycycle as dc
from dutycycle.data import DataLoader, TensorDataset
from dutycycle.models import GPT, GPTConfig

B, T, V, L, H, C = 16, 64, 256, 4, 4, 128


def make_data(n_batches):
    dc.manual_seed(0)
    x = dc.randint(0, V, (n_batches * B, T))
    y = dc.randint(0, V, (n_batches * B, T))
    return TensorDataset(x, y)


def make_model():
    dc.manual_seed(1)
    return GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0))


class Module(dc.LightningModule):
    def __init__(self):
        super().__init__()
        self.gpt = make_model()

    def training_step(self, batch, batch_idx):
        _, loss = self.gpt(*batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return dc.optim.AdamW(self.parameters(), lr=1e-3)


def hand_loop(ds, steps):
    model = make_model()
    opt = dc.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=B, shuffle=True)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        for x, y in loader:
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += 1
            if n == steps:
                break
    loss.item()  # note: the one sync point, at the end
    return time.perf_counter() - t0


def trainer_loop(ds, steps, root, **kw):
    module = Module()
    loader = DataLoader(ds, batch_size=B, shuffle=True)
    trainer = dc.Trainer(max_steps=steps, default_root_dir=root, num_sanity_val_steps=0, **kw)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - t0, trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    ds = make_data(32)
    root = tempfile.mkdtemp(prefix="dc-bench-")
    hand_loop(ds, 5)  # warm-up: allocator cache, BLAS threads
    bare, full, hand = [], [], []
    trainer = None
    for _ in range(args.repeats):  # alternate the sides so neither gets a warmer machine
        hand.append(hand_loop(ds, args.steps))
        t, _ = trainer_loop(ds, args.steps, root, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False)
        bare.append(t)
        t, trainer = trainer_loop(ds, args.steps, root, log_every_n_steps=10, enable_progress_bar=False)
        full.append(t)
    th, tb, tf = statistics.median(hand), statistics.median(bare), statistics.median(full)
    split = trainer.duty_cycle.split()
    print(f"dutycycle trainer benchmark: GPT B{B} T{T} L{L} C{C}, {args.steps} steps, median of {args.repeats}, "
          f"{os.cpu_count()} CPU threads")
    print(f"{'loop':<52} {'s/step':>9} {'ratio':>7}  target")
    print(f"{'hand-written loop':<52} {th / args.steps:>9.4f} {1.0:>6.3f}x")
    ok = "ok" if tb / th <= 1.03 else "MISSED"
    print(f"{'Trainer.fit (no logger, no checkpoint, no bar)':<52} {tb / args.steps:>9.4f} {tb / th:>6.3f}x  "
          f"<= 1.03x {ok}")
    print(f"{'Trainer.fit (CSV logger, checkpoint at end)':<52} {tf / args.steps:>9.4f} {tf / th:>6.3f}x")
    frac = trainer.duty_cycle.fraction()
    print(f"duty cycle of the last Trainer run: {100 * frac:.1f}% compute; split (s): "
          + ", ".join(f"{k} {split[k]:.3f}" for k in ("compute", "data_wait", "comm_wait", "checkpoint_stall",
                                                         "other")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(hand=hand, bare=bare, full=full, steps=args.steps, split=split, duty=frac), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
