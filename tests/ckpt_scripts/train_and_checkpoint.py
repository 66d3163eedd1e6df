"""A plain dutycycle training loop that checkpoints asynchronously every few steps (the crash test's child).

    python train_and_checkpoint.py FOLDER STEPS EVERY OUT.npy

Resumes from the newest committed checkpoint in FOLDER when there is one (model, optimizer, step,
RNG state), trains to STEPS, and writes the final parameters to OUT.npy. The data of step s is a
function of s and the RNG, so an interrupted-and-resumed run must end bit for bit where an
uninterrupted one does. Prints "step N" after each step (the parent kills at random moments)."""

import os
import sys

import numpy as np

import dutycycle as dc
import dutycycle.checkpoint as ckpt

folder, steps, every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dc.set_num_threads(1)
dc.manual_seed(0)
model = dc.nn.Sequential(dc.nn.Linear(256, 1024), dc.nn.GELU(), dc.nn.Linear(1024, 256))  # ~2 MB + Adam state
opt = dc.optim.AdamW(model.parameters(), lr=1e-3)
start = 0
if os.path.isdir(folder) and ckpt.find_checkpoints(folder):
    state = ckpt.load(folder)  # the newest committed checkpoint, verified
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    dc.set_rng_state(tuple(state["rng"]))
    start = state["step"]
print(f"start {start}", flush=True)
writer = ckpt.Checkpointer(keep_last=2)
for step in range(start, steps):
    x = dc.randn(32, 256)
    loss = ((model(x) - x.roll(1, 1)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    done = step + 1
    if done % every == 0:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done}
        state["rng"] = list(dc.get_rng_state())
        path = os.path.join(folder, f"step={done:05d}.ckpt")
        writer.save(state, path, link=os.path.join(folder, "last.ckpt"), info={"step": done})
    print(f"step {done}", flush=True)
writer.close()
np.save(out, np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]))
print("finished", flush=True)
