"""dutycycle.distributed: collectives for data-parallel training, shaped like torch.distributed.

    import dutycycle.distributed as dist
    dist.init_process_group("mpi")          # reads the launcher's environment (mpirun, srun, dutycycle run)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    dist.destroy_process_group()

The collectives run in C (`_C.Comm`, csrc/comm/: MPI on CPU buffers, NCCL on CUDA buffers) on any
buffer: dutycycle tensors, NumPy arrays and, through DLPack, PyTorch tensors. There is one
process group (the world); the ranks find each other through MPI, never through a rendezvous of
our own, so a process must be started by a launcher (`dutycycle run -n N`, `mpirun -n N`, `srun`)
to be more than rank 0 of 1. An uncaught exception on a rank prints its traceback prefixed with the
rank and ends the whole job (see _failure.py); hangs and desyncs become CollectiveTimeoutError and
DesyncError from the comm layer's watchdog and fingerprints."""

from __future__ import annotations

import datetime
import enum
import os
import pickle
import types

import numpy as np

from .. import _C
from . import _failure, launch
from ._env import launcher_env
from .rank_zero import rank_zero_debug, rank_zero_info, rank_zero_only, rank_zero_warn

try:
    from .._C import CollectiveTimeoutError, DesyncError, DistributedError
except ImportError:  # a core built before the comm layer: same names, same hierarchy
    from .._C import DutycycleError

    class DistributedError(DutycycleError):
        """A collective failed: a peer died, the job was aborted, or MPI/NCCL reported an error."""

    class CollectiveTimeoutError(DistributedError):
        """The watchdog's timeout passed with a collective unfinished; names the lagging rank(s)."""

    class DesyncError(DistributedError):
        """The ranks issued different collectives; names both sides."""


__all__ = [
    "CollectiveTimeoutError", "DesyncError", "DistributedError", "ReduceOp", "Work", "all_gather",
    "all_gather_into_tensor", "all_gather_object", "all_reduce", "barrier", "broadcast", "broadcast_object_list",
    "destroy_process_group", "get_backend", "get_local_rank", "get_local_world_size", "get_rank", "get_world_size",
    "group", "init_process_group", "is_available", "is_initialized", "is_mpi_available", "is_nccl_available",
    "launch", "launcher_env", "rank_zero_debug", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "recv", "reduce",
    "reduce_scatter_tensor", "send",
]


class ReduceOp(str, enum.Enum):
    """How all_reduce / reduce_scatter combine: torch.distributed.ReduceOp's names, our C ops' values."""

    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"

    def __str__(self):
        return self.value


_OP_ALIASES = {"sum": "sum", "avg": "avg", "mean": "avg", "max": "max", "min": "min"}


def _op_name(op):
    if isinstance(op, ReduceOp):
        return op.value
    name = op if isinstance(op, str) else getattr(op, "name", None)  # torch's ReduceOp.SUM has .name "SUM"
    if isinstance(name, str) and name.lower() in _OP_ALIASES:
        return _OP_ALIASES[name.lower()]
    raise ValueError(f"unsupported reduce op {op!r}: use ReduceOp.SUM, AVG, MAX or MIN (or 'sum', 'avg'/'mean', "
                     "'max', 'min')")


class _WorldGroup:
    def __repr__(self):
        return "<dutycycle.distributed.group.WORLD>"


group = types.SimpleNamespace(WORLD=_WorldGroup())
GroupMember = group


class NotInitializedError(RuntimeError, ValueError):
    """A collective or rank query before init_process_group (a RuntimeError, and a ValueError as
    torch >= 2.2 raises)."""


# The default process group: one communicator for the world.
_state = types.SimpleNamespace(comm=None, backend=None)
_BACKENDS = {"mpi": "mpi", "gloo": "mpi", "nccl": "nccl"}


def _install_hooks_for_the_job():
    """Under mpirun/srun: torchrun's RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE are set (unless set
    already), and in a multi-rank job a traceback names its rank even before init_process_group
    (with no comm yet, the rank exits non-zero and the launcher ends the job)."""
    try:
        info = launcher_env()
    except ValueError:
        return
    if info["launcher"] in ("mpirun", "srun"):
        # torchrun's variables too, so a script that tests RANK (nanoGPT) sees the job under a plain
        # mpirun/srun as it does under `dutycycle run`; a value already set is kept
        for k, v in (("RANK", "rank"), ("WORLD_SIZE", "world_size"), ("LOCAL_RANK", "local_rank"),
                     ("LOCAL_WORLD_SIZE", "local_world_size")):
            os.environ.setdefault(k, str(info[v]))
    if info["launcher"] in ("mpirun", "srun") and info["world_size"] > 1 and _failure._state["rank"] is None:
        _failure.set_job(info["rank"], info["world_size"])
        _failure.install()


_install_hooks_for_the_job()


def _check_group(group_arg, fn):
    if group_arg is not None and group_arg is not group.WORLD:
        raise NotImplementedError(f"{fn}: only the default (world) process group exists; pass group=None")


def _comm(fn):
    if _state.comm is None:
        raise NotInitializedError(f"{fn}: the default process group has not been initialized, please make sure to "
                                  "call dutycycle.distributed.init_process_group() first")
    return _state.comm


def is_available():
    """True when the C core was built with the comm layer and an MPI library."""
    comm_type = getattr(_C, "Comm", None)
    if comm_type is None:
        return False
    avail = getattr(_C, "comm_backends", None)
    if callable(avail):
        try:
            return "mpi" in avail()
        except Exception:
            return False
    return True


def is_mpi_available():
    return is_available()


def is_nccl_available():
    avail = getattr(_C, "comm_backends", None)
    if callable(avail):
        try:
            return "nccl" in avail()
        except Exception:
            return False
    from .. import cuda

    return is_available() and cuda.is_built()


def is_gloo_available():
    """"gloo" is accepted and runs on our MPI backend."""
    return is_available()


def is_initialized():
    return _state.comm is not None


def is_torchelastic_launched():
    return False


def _seconds(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if timeout <= 0:
        raise ValueError(f"init_process_group: timeout must be positive, got {timeout}")
    return timeout


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None,
                       group_name="", pg_options=None, device_id=None):
    """Join the job this process was started in (torch.distributed's signature).

    backend: "mpi" (CPU buffers), "nccl" (CUDA buffers) or "gloo" (runs on "mpi"); None = "mpi".
    The ranks come from the launcher's environment (Open MPI's OMPI_COMM_WORLD_*, SLURM's
    SLURM_PROCID/NTASKS/LOCALID, or RANK/WORLD_SIZE as `dutycycle run` sets them); `rank` and
    `world_size`, when given, must agree with it. init_method ("env://", "tcp://...") and store are
    accepted for compatibility and unused: the ranks find each other through MPI. timeout
    (timedelta or seconds) is the watchdog's collective timeout (default DUTYCYCLE_COMM_TIMEOUT or
    600 s)."""
    if _state.comm is not None:
        raise RuntimeError("trying to initialize the default process group twice!")
    name = "mpi" if backend is None else str(backend).lower()
    if name not in _BACKENDS:
        raise ValueError(f"init_process_group: unknown backend {backend!r}; one of 'mpi', 'nccl', 'gloo' (runs on mpi)")
    seconds = _seconds(timeout)
    rank = -1 if rank is None else rank
    world_size = -1 if world_size is None else world_size
    info = launcher_env()
    if info["launcher"] == "torchrun-env" and info["world_size"] > 1:
        raise RuntimeError(
            f"init_process_group: RANK={info['rank']} / WORLD_SIZE={info['world_size']} are set but this process is "
            "not part of an MPI job (started by torchrun?). dutycycle's ranks find each other through MPI, with no "
            "rendezvous of their own: start the script with `dutycycle run -n N script.py` or "
            "`mpirun -n N python script.py` (or srun under SLURM) instead"
        )
    if info["launcher"] is None and world_size not in (-1, 1):
        raise RuntimeError(
            f"init_process_group(world_size={world_size}): this process was not started by a launcher, so it is "
            f"rank 0 of 1; start it with `dutycycle run -n {world_size} script.py` or "
            f"`mpirun -n {world_size} python script.py`"
        )
    if world_size not in (-1, info["world_size"]):
        raise ValueError(f"init_process_group(world_size={world_size}): the launcher started "
                         f"{info['world_size']} ranks ({info['launcher']})")
    if rank not in (-1, info["rank"]):
        raise ValueError(f"init_process_group(rank={rank}): the launcher made this process rank {info['rank']} "
                         f"({info['launcher']})")
    if init_method not in (None, "", "env://"):
        rank_zero_warn(f"init_process_group: init_method={init_method!r} is ignored: the ranks find each other "
                       "through MPI (started by mpirun / srun / dutycycle run)")
    comm_type = getattr(_C, "Comm", None)
    if comm_type is None:
        raise RuntimeError("init_process_group: this build of dutycycle has no comm layer (_C.Comm); "
                           "rebuild with Open MPI installed (libopenmpi-dev)")
    comm = comm_type(backend=_BACKENDS[name], timeout=seconds)
    if info["launcher"] is not None and (comm.rank, comm.size) != (info["rank"], info["world_size"]):
        comm.close()
        raise RuntimeError(f"init_process_group: MPI says rank {comm.rank} of {comm.size} but the launcher's "
                           f"environment says rank {info['rank']} of {info['world_size']} ({info['launcher']})")
    _state.comm, _state.backend = comm, name
    rank_zero_only.rank = comm.rank
    _failure.set_job(comm.rank, comm.size, comm)
    _failure.install()


def destroy_process_group(group=None):
    """Close the default group's communicator (waits for nothing: finish async work first)."""
    _check_group(group, "destroy_process_group")
    comm = _state.comm
    if comm is None:
        return
    _state.comm = _state.backend = None
    _failure.set_job(comm.rank, comm.size, None)
    comm.close()


def _default_comm():
    """The `_C.Comm` of the default group, for the strategies and the reducer. Initialises the group
    from the environment when there is none yet (rank 0 of 1 when no launcher started us)."""
    if _state.comm is None:
        init_process_group()
    return _state.comm


def get_rank(group=None):
    _check_group(group, "get_rank")
    return _comm("get_rank").rank


def get_world_size(group=None):
    _check_group(group, "get_world_size")
    return _comm("get_world_size").size


def get_local_rank():
    return _comm("get_local_rank").local_rank


def get_local_world_size():
    return _comm("get_local_world_size").local_size


get_node_local_rank = get_local_rank


def get_backend(group=None):
    _check_group(group, "get_backend")
    _comm("get_backend")
    return _state.backend


# ---- buffers ---------------------------------------------------------------------------------------
def _is_dc(t):
    from .._tensor import Tensor

    return isinstance(t, Tensor)


def _kind(t, fn, arg):
    if _is_dc(t):
        return "dc"
    if isinstance(t, np.ndarray):
        return "np"
    if hasattr(t, "__dlpack__") and hasattr(t, "copy_"):
        return "torch"
    raise TypeError(f"{fn}: {arg} must be a dutycycle Tensor, a NumPy array or a PyTorch tensor, got "
                    f"{type(t).__name__}")


def _staged(t, fn, arg):
    """(buffer the comm reads/writes, copy-back or None): a non-contiguous tensor goes through a
    contiguous copy (note: one extra copy each way; pass contiguous tensors to avoid it)."""
    kind = _kind(t, fn, arg)
    if kind == "np":
        if t.flags.c_contiguous:
            return t, None
        if not t.flags.writeable:
            raise ValueError(f"{fn}: {arg} is a read-only NumPy array")
        buf = np.ascontiguousarray(t)
        return buf, lambda: np.copyto(t, buf)
    if t.is_contiguous():
        return t, None
    buf = t.contiguous()
    return buf, lambda: t.copy_(buf)


def _stacked_like(t, n):
    """An empty (n, *t.shape) buffer of t's kind, dtype and device."""
    kind = _kind(t, "all_gather", "tensor")
    if kind == "np":
        return np.empty((n,) + t.shape, dtype=t.dtype)
    if kind == "dc":
        from .._functions import empty

        return empty((n,) + tuple(t.shape), dtype=t.dtype, device=t.device)
    import torch  # a PyTorch tensor: torch is importable

    return torch.empty((n,) + tuple(t.shape), dtype=t.dtype, device=t.device)


def _copy(dst, src):
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
    else:
        dst.copy_(src)


class Work:
    """Handle of an asynchronous collective (torch's Work): wait() blocks until done (and raises
    the collective's error), is_completed() polls. Keeps the buffers alive until done."""

    def __init__(self, work, after=None):
        self._work, self._after = work, after

    def _finish(self):
        after, self._after = self._after, None
        if after is not None:
            after()

    def wait(self, timeout=None):
        self._work.wait(_seconds(timeout) if timeout is not None else None)
        self._finish()
        return True

    def is_completed(self):
        done = self._work.test()
        if done and self._after is not None:
            self._finish()
        return done

    @property
    def seq(self):
        return self._work.seq

    def __repr__(self):
        return f"<dutycycle.distributed.Work {self._work.op} #{self._work.seq}>"


def _run(work, async_op, after=None):
    """Return a Work for async_op, else finish now (work is None for a synchronous call)."""
    if async_op:
        return Work(work, after)
    if after is not None:
        after()
    return None


# ---- collectives --------------------------------------------------------------------------------------
def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduce `tensor` across ranks in place (op: ReduceOp.SUM, AVG, MAX, MIN or their names)."""
    _check_group(group, "all_reduce")
    name = _op_name(op)
    c = _comm("all_reduce")
    buf, back = _staged(tensor, "all_reduce", "tensor")
    return _run(c.all_reduce(buf, op=name, async_op=async_op), async_op, back)


def reduce(tensor, dst=0, op=ReduceOp.SUM, group=None, async_op=False):
    """torch's reduce: `dst` gets the result (here every rank does: it runs as an all_reduce)."""
    _check_group(group, "reduce")
    c = _comm("reduce")
    if not 0 <= dst < c.size:
        raise ValueError(f"reduce: dst={dst} outside world size {c.size}")
    return all_reduce(tensor, op=op, async_op=async_op)


def broadcast(tensor, src=0, group=None, async_op=False):
    """Copy rank `src`'s `tensor` into every rank's `tensor`, in place."""
    _check_group(group, "broadcast")
    c = _comm("broadcast")
    if not isinstance(src, int) or not 0 <= src < c.size:
        raise ValueError(f"broadcast: src={src!r} outside world size {c.size}")
    buf, back = _staged(tensor, "broadcast", "tensor")
    return _run(c.broadcast(buf, root=src, async_op=async_op), async_op, back)


def barrier(group=None, async_op=False, device_ids=None):
    _check_group(group, "barrier")
    return _run(_comm("barrier").barrier(async_op=async_op), async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """output_tensor (world_size * input's elements, contiguous) gets every rank's input_tensor,
    rank order, concatenated along the first dim (or stacked: any shape with the right size)."""
    _check_group(group, "all_gather_into_tensor")
    c = _comm("all_gather_into_tensor")
    src, _ = _staged(input_tensor, "all_gather_into_tensor", "input_tensor")
    out, back = _staged(output_tensor, "all_gather_into_tensor", "output_tensor")
    return _run(c.all_gather(src, out, async_op=async_op), async_op, back)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """tensor_list[i] (world_size tensors shaped like `tensor`) gets rank i's `tensor`.
    Note: the gather lands in one staging buffer, then one copy per rank into the list."""
    _check_group(group, "all_gather")
    c = _comm("all_gather")
    if not isinstance(tensor_list, (list, tuple)) or len(tensor_list) != c.size:
        n = len(tensor_list) if isinstance(tensor_list, (list, tuple)) else type(tensor_list).__name__
        raise ValueError(f"all_gather: tensor_list must hold world_size={c.size} tensors, got {n}")
    for i, t in enumerate(tensor_list):
        if tuple(t.shape) != tuple(tensor.shape) or t.dtype != tensor.dtype:
            raise ValueError(f"all_gather: tensor_list[{i}] is {tuple(t.shape)} {t.dtype}, tensor is "
                             f"{tuple(tensor.shape)} {tensor.dtype}")
    src, _ = _staged(tensor, "all_gather", "tensor")
    out = _stacked_like(tensor, c.size)

    def back():
        for i, t in enumerate(tensor_list):
            _copy(t, out[i])

    return _run(c.all_gather(src, out, async_op=async_op), async_op, back)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduce `input` (world_size * output's elements) across ranks; rank r gets chunk r in `output`."""
    _check_group(group, "reduce_scatter_tensor")
    name = _op_name(op)
    c = _comm("reduce_scatter_tensor")
    src, _ = _staged(input, "reduce_scatter_tensor", "input")
    out, back = _staged(output, "reduce_scatter_tensor", "output")
    return _run(c.reduce_scatter(src, out, op=name, async_op=async_op), async_op, back)


def send(tensor, dst, group=None, tag=0):
    _check_group(group, "send")
    c = _comm("send")
    if not 0 <= dst < c.size or dst == c.rank:
        raise ValueError(f"send: dst={dst} must be another rank of the {c.size}")
    buf, _ = _staged(tensor, "send", "tensor")
    c.send(buf, dst, tag=tag)


def recv(tensor, src, group=None, tag=0):
    """Receive into `tensor` from rank `src` (required: no any-source receive)."""
    _check_group(group, "recv")
    c = _comm("recv")
    if src is None or not 0 <= src < c.size or src == c.rank:
        raise ValueError(f"recv: src={src} must be another rank of the {c.size}")
    buf, back = _staged(tensor, "recv", "tensor")
    c.recv(buf, src, tag=tag)
    if back is not None:
        back()
    return src


# ---- Python objects (pickled; between the ranks of one job only) ---------------------------------------
def broadcast_object_list(object_list, src=0, group=None, device=None):
    """Replace object_list's items on every rank with rank `src`'s (pickled)."""
    _check_group(group, "broadcast_object_list")
    c = _comm("broadcast_object_list")
    payload = np.frombuffer(pickle.dumps(list(object_list)), dtype=np.uint8) if c.rank == src else None
    n = np.array([payload.size if payload is not None else 0], dtype=np.int64)
    broadcast(n, src)
    buf = payload.copy() if payload is not None else np.empty(int(n[0]), dtype=np.uint8)
    broadcast(buf, src)
    object_list[:] = pickle.loads(buf.tobytes())


def all_gather_object(object_list, obj, group=None):
    """object_list[i] = rank i's obj (pickled; padded to the longest)."""
    _check_group(group, "all_gather_object")
    c = _comm("all_gather_object")
    if len(object_list) != c.size:
        raise ValueError(f"all_gather_object: object_list must have world_size={c.size} items, got {len(object_list)}")
    data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = np.empty(c.size, dtype=np.int64)
    c.all_gather(np.array([data.size], dtype=np.int64), sizes)
    width = int(sizes.max())
    mine = np.zeros(width, dtype=np.uint8)
    mine[: data.size] = data
    everyone = np.empty(width * c.size, dtype=np.uint8)
    c.all_gather(mine, everyone)
    for i in range(c.size):
        object_list[i] = pickle.loads(everyone[i * width: i * width + int(sizes[i])].tobytes())
