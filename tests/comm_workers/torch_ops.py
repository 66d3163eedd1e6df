"""A plain PyTorch tensor through DLPack: all_reduce, broadcast and all_gather (run when torch is importable)."""

import torch

from dutycycle import _C

c = _C.Comm(timeout=60)
r, n = c.rank, c.size
t = torch.full((8,), float(r + 1))
c.all_reduce(t)
assert torch.all(t == n * (n + 1) / 2), t
t = torch.full((3,), float(r), dtype=torch.float64)
c.broadcast(t, root=n - 1)
assert torch.all(t == n - 1)
out = torch.zeros(2 * n, dtype=torch.int64)
c.all_gather(torch.full((2,), r, dtype=torch.int64), out)
assert out.tolist() == [q for q in range(n) for _ in range(2)]
w = c.all_reduce(torch.ones(1000, dtype=torch.bfloat16), op="avg", async_op=True)
w.wait()
c.close()
from _say import say  # noqa: E402

say("OK", r, "")
