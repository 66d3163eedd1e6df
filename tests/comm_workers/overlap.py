"""Overlap: an async all_reduce runs to its end while the Python thread computes (GIL held, in a pure
Python loop, and in NumPy). Prints the timestamps as OVERLAP <rank> <json>."""

import json
import time

import numpy as np
from _say import say

from dutycycle import _C

c = _C.Comm(timeout=60)
r = c.rank
a = np.full(1 << 20, r + 1.0, np.float32)  # 4 MiB
c.barrier()
t0 = time.monotonic_ns()
w = c.all_reduce(a, async_op=True)
x = np.random.default_rng(r).random((200, 200))
end = time.monotonic() + 1.0
k = 0
while time.monotonic() < end:  # compute: pure Python (holds the GIL) and NumPy
    k += 1
    if k % 1000 == 0:
        x = x @ x / 200.0
t_end = time.monotonic_ns()
completed_during = w.is_completed()
w.wait()
ev = [e for e in c.events() if e["seq"] == w.seq and e["op"] == "all_reduce"][0]
assert (a == c.size * (c.size + 1) / 2).all()
say("OVERLAP", r, json.dumps(dict(ev, t0=t0, compute_end=t_end, completed_during=completed_during,
                                    w_started=w.started_ns, w_finished=w.finished_ns)))
c.close()
