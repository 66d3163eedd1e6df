"""The launcher test's small job: init_process_group from the environment, a few collectives with
rank-dependent values, and one JSON line per rank with what it saw (launcher, ranks, results).
--slurm: before anything else, rewrite Open MPI's rank variables as SLURM's (as srun would set
them), so the SLURM parsing path is the one that finds the rank."""

import json
import os
import sys

import numpy as np

if "--slurm" in sys.argv:
    for ompi, slurm in (("RANK", "PROCID"), ("SIZE", "NTASKS"), ("LOCAL_RANK", "LOCALID")):
        os.environ[f"SLURM_{slurm}"] = os.environ.pop(f"OMPI_COMM_WORLD_{ompi}")
    os.environ["SLURM_TASKS_PER_NODE"] = os.environ.pop("OMPI_COMM_WORLD_LOCAL_SIZE")
    os.environ["SLURM_NODEID"] = "0"
    os.environ["SLURM_STEP_ID"] = "0"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)

import dutycycle as torch  # noqa: E402
import dutycycle.distributed as dist  # noqa: E402

if __name__ == "__main__":
    launcher = dist.launcher_env()["launcher"]
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.arange(6, dtype=torch.float32) * (rank + 1)
    dist.all_reduce(t)
    a = np.full(3, float(rank), dtype=np.float64)
    dist.all_reduce(a, op=dist.ReduceOp.MAX)
    b = torch.zeros(4) + rank
    dist.broadcast(b, src=world - 1)
    gathered = [torch.zeros(2) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([rank, 10.0 * rank]))
    print(json.dumps(dict(rank=rank, world=world, local_rank=dist.get_local_rank(), launcher=launcher,
                          sum=t.tolist(), max=a.tolist(), bcast=b.tolist(),
                          gathered=[g.tolist() for g in gathered], rank_zero=dist.rank_zero_only.rank)), flush=True)
    dist.barrier()
    dist.destroy_process_group()
