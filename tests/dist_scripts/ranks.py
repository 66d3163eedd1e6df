"""Prints, per rank, what the launcher told it (no collectives: runs without the comm layer).
With --raise-on R, rank R raises before anything else."""

import json
import os
import sys

import dutycycle.distributed as dist

if __name__ == "__main__":
    info = dist.launcher_env()
    info.update(env_rank=os.environ.get("RANK"), env_world=os.environ.get("WORLD_SIZE"),
                env_local=os.environ.get("LOCAL_RANK"), argv=sys.argv[1:], name=__name__,
                omp=os.environ.get("OMP_NUM_THREADS"), timeout=os.environ.get("DUTYCYCLE_COMM_TIMEOUT"),
                rank_zero=dist.rank_zero_only.rank)
    print(json.dumps(info), flush=True)
    if "--raise-on" in sys.argv and str(info["rank"]) == sys.argv[sys.argv.index("--raise-on") + 1]:
        raise ValueError(f"rank {info['rank']} was told to fail")
