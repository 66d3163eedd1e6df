"""The cost of the always-on desync check: two communicators in one job, one with the fingerprint
exchange and one without (DUTYCYCLE_COMM_DESYNC_CHECK=0, for this measurement only), used
alternately op by op so load on the machine hits both alike; median µs per all_reduce.

    mpirun -n N python tests/comm_workers/bench_desync.py [iters_small] [iters_large]"""

import json
import os
import statistics
import sys
import time

import numpy as np

from dutycycle import _C

os.environ["DUTYCYCLE_COMM_DESYNC_CHECK"] = "1"
on = _C.Comm(timeout=300)
os.environ["DUTYCYCLE_COMM_DESYNC_CHECK"] = "0"
off = _C.Comm(timeout=300)
assert on.stats()["desync_check"] and not off.stats()["desync_check"]
n_small = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
n_large = int(sys.argv[2]) if len(sys.argv) > 2 else 200

res = {}
for label, nbytes, iters in (("32 B", 32, n_small), ("1 MiB", 1 << 20, n_large)):
    a = np.ones(nbytes // 4, np.float32)
    t = {"on": [], "off": []}
    for c in (on, off):
        for _ in range(10):
            c.all_reduce(a)
    on.barrier()
    off.barrier()
    for k in range(iters):
        for name, c in (("on", on), ("off", off)) if k % 2 else (("off", off), ("on", on)):
            t0 = time.perf_counter_ns()
            c.all_reduce(a)
            t[name].append((time.perf_counter_ns() - t0) / 1e3)
    res[label] = {name: round(statistics.median(v), 1) for name, v in t.items()}
    res[label]["cost"] = round(res[label]["on"] - res[label]["off"], 1)
st = on.stats()
res["exchange_mean_us"] = round(st["desync_check_s"] / max(st["desync_checks"], 1) * 1e6, 1)
if on.rank == 0:
    print("BENCH", on.size, json.dumps(res), flush=True)
on.close()
off.close()
