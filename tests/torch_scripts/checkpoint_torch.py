"""A plain PyTorch loop that checkpoints asynchronously with dutycycle.checkpoint (DLPack state).

    python checkpoint_torch.py FOLDER      (an interpreter with torch; dutycycle on PYTHONPATH)

Trains 20 steps saving every 5; then restores step 10's checkpoint into a fresh model and
optimizer, replays steps 11-20 and checks the weights equal the first run's bit for bit. Prints OK."""

import sys

import torch  # first: torch's own NCCL must load before a CUDA build of dutycycle's

import dutycycle.checkpoint as ckpt

folder = sys.argv[1]


def make():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    m[2].weight.data = m[2].weight.data.bfloat16().float()  # exact in bf16 as well
    return m, torch.optim.AdamW(m.parameters(), lr=1e-2)


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def train(m, opt, steps):
    for s in steps:
        x, y = batch(s)
        loss = torch.nn.functional.mse_loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


m, opt = make()
for s in range(0, 20, 5):
    train(m, opt, range(s, s + 5))
    ckpt.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "step": s + 5,
               "half": m[0].weight.detach().bfloat16()}, f"{folder}/step={s + 5}.ckpt", link=f"{folder}/last.ckpt")
ckpt.wait()
final = [p.detach().clone() for p in m.parameters()]

state = ckpt.load(f"{folder}/step=10.ckpt")
assert isinstance(state["model"]["0.weight"], torch.Tensor), type(state["model"]["0.weight"])
assert state["half"].dtype == torch.bfloat16
m2, opt2 = make()
m2.load_state_dict(state["model"])
opt2.load_state_dict(state["optimizer"])
train(m2, opt2, range(state["step"], 20))
for a, b in zip(final, m2.parameters()):
    assert torch.equal(a, b.detach()), (a - b).abs().max()
assert ckpt.load(f"{folder}/last.ckpt")["step"] == 20
print("OK")
