"""Who this process is in a job, read from the launcher's environment: Open MPI's mpirun, SLURM's
srun, or torchrun-style variables (which `dutycycle run` also sets per rank through its shim).

Pure functions of an environment mapping (os.environ by default), so every launcher's variables
can be tested with a fake dict. Nothing here talks to another process: the ranks find each other
through MPI, never through a home-made rendezvous."""

from __future__ import annotations

import os
import re

# Set by self_launch in the environment of the mpirun it starts: a child that sees it but no
# launcher variables was not started by mpirun, and must not launch again (no recursion).
SELF_LAUNCH_MARKER = "DUTYCYCLE_SELF_LAUNCHED"

LAUNCHERS = ("mpirun", "srun", "torchrun-env")


def _int(env, name):
    v = env.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"launcher environment: {name}={v!r} is not an integer") from None


def slurm_tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """The task count of node `node_id` from SLURM's compressed list, e.g. "4(x2),3" = 4, 4, 3."""
    counts = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"launcher environment: cannot parse SLURM tasks per node {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise ValueError(f"launcher environment: SLURM_NODEID={node_id} outside tasks per node {tasks_per_node!r}")
    return counts[node_id]


def _mpirun(env):
    rank = _int(env, "OMPI_COMM_WORLD_RANK")
    if rank is None:
        return None
    size = _int(env, "OMPI_COMM_WORLD_SIZE")
    local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
    local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
    return dict(rank=rank, world_size=size, local_rank=local_rank, local_world_size=local_size, launcher="mpirun")


def _srun(env):
    # SLURM_PROCID alone is also set in an sbatch script outside any srun step; a job step (srun)
    # sets SLURM_STEP_ID too.
    rank = _int(env, "SLURM_PROCID")
    if rank is None or (env.get("SLURM_STEP_ID") is None and env.get("SLURM_STEPID") is None):
        return None
    size = _int(env, "SLURM_STEP_NUM_TASKS")
    if size is None:
        size = _int(env, "SLURM_NTASKS")
    local_rank = _int(env, "SLURM_LOCALID")
    tpn = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node_id = _int(env, "SLURM_NODEID") or 0
    local_size = slurm_tasks_on_node(tpn, node_id) if tpn else None
    return dict(rank=rank, world_size=size, local_rank=local_rank, local_world_size=local_size, launcher="srun")


def _torchrun(env):
    rank = _int(env, "RANK")
    size = _int(env, "WORLD_SIZE")
    if rank is None and size is None:
        return None
    local_rank = _int(env, "LOCAL_RANK")
    local_size = _int(env, "LOCAL_WORLD_SIZE")
    return dict(rank=rank, world_size=size, local_rank=local_rank, local_world_size=local_size,
                launcher="torchrun-env")


def launcher_env(env=None) -> dict:
    """dict(rank, world_size, local_rank, local_world_size, launcher) for this process.

    launcher is "mpirun" (Open MPI's OMPI_COMM_WORLD_* variables), "srun" (SLURM_PROCID inside a
    job step), "torchrun-env" (only RANK/WORLD_SIZE/LOCAL_RANK: torchrun, or a user's own
    script — there is then no MPI job to join), or None (a plain `python train.py`: rank 0 of 1).
    Open MPI's variables win over SLURM's (Open MPI under srun sets both) and both over
    torchrun's (`dutycycle run` sets RANK etc. from Open MPI's). Missing local values default to
    rank/world size on one node; inconsistent values raise ValueError naming the variables."""
    env = os.environ if env is None else env
    info = _mpirun(env) or _srun(env) or _torchrun(env)
    if info is None:
        return dict(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher=None)
    if info["world_size"] is None:
        raise ValueError(f"launcher environment ({info['launcher']}): the rank is set but not the world size")
    if info["rank"] is None:
        raise ValueError(f"launcher environment ({info['launcher']}): the world size is set but not the rank")
    if info["local_rank"] is None:
        info["local_rank"] = info["rank"]
    if info["local_world_size"] is None:
        info["local_world_size"] = info["world_size"]
    if not 0 <= info["rank"] < info["world_size"]:
        raise ValueError(f"launcher environment ({info['launcher']}): rank {info['rank']} "
                         f"outside world size {info['world_size']}")
    if not 0 <= info["local_rank"] < info["local_world_size"] <= info["world_size"]:
        raise ValueError(f"launcher environment ({info['launcher']}): local rank {info['local_rank']} / local "
                         f"world size {info['local_world_size']} inconsistent with world size {info['world_size']}")
    return info
