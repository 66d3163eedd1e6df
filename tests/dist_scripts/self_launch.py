"""`python self_launch.py N [--collect]`: re-runs itself as N ranks (launch.self_launch, the
Trainer's devices=N path), each printing one JSON line; with --collect also an all_reduce."""

import json
import os
import sys

import dutycycle.distributed as dist
from dutycycle.distributed import launch

if __name__ == "__main__":
    n = int(sys.argv[1])
    launch.self_launch(n)  # returns only inside the job (never in the first process)
    info = dist.launcher_env()
    row = dict(rank=info["rank"], world=info["world_size"], launcher=info["launcher"], argv=sys.argv[1:],
               marker=os.environ.get("DUTYCYCLE_SELF_LAUNCHED"), env_rank=os.environ.get("RANK"))
    if "--collect" in sys.argv:
        import numpy as np

        dist.init_process_group()
        a = np.array([info["rank"] + 1.0])
        dist.all_reduce(a)
        row["sum"] = float(a[0])
        dist.destroy_process_group()
    print(json.dumps(row), flush=True)
