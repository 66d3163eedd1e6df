"""ParallelStrategy: the base of every multi-process strategy (ddp, zero1/2, parameter_server).

One process per rank, no manager node. This class owns what every data-parallel strategy shares:
who this process is (`global_rank`, `local_rank`, `node_rank`, `world_size`), the communicator
(`self.comm`, the `_C.Comm` of `dutycycle.distributed`'s default group, created in
`setup_environment`), the collectives the Trainer and its callbacks use (`reduce`, `all_gather`,
`broadcast`, `barrier`, `reduce_boolean_decision`), the launch check (world size == devices x
num_nodes, or a self-launch under mpirun for a plain `python train.py`), rank-0 checkpoint
writes (the base class) and the DistributedSampler's arguments.

Every blocking wait on the communicator goes through `self.comm_wait()`, a context manager that
times the block into the trainer's duty cycle as "comm wait" (a no-op outside a running fit).

Subclass API (what DDPStrategy and the zero/parameter-server strategies override):

    class MyStrategy(ParallelStrategy):
        strategy_name = "my"
        def setup(self, trainer):           # super().setup(trainer) first: model on its device,
            super().setup(trainer)          #   parameters + buffers broadcast from rank 0;
            ...                             #   then wrap the model / register hooks
        def connect_optimizers(self, optimizers):   # after configure_optimizers (and a resume's
            ...                             #   optimizer-state restore is done later by the trainer
                                            #   through optimizer.load_state_dict); build flat
                                            #   buffers here, BEFORE the first training forward
        def backward(self, loss, *a, **kw): # super().backward runs the module's backward hook
        def block_backward_sync(self):      # context manager: a micro-batch that does not step
                                            #   (gradient accumulation) must not communicate
        def optimizer_step(self, optimizer, closure=None, model=None, **kw)
        def lightning_module_state_dict(self) / optimizer_state(self, optimizer)   # gather shards
        def teardown(self)                  # super().teardown() last

Helpers for subclasses: `self.comm` (the `_C.Comm`), `self.comm_wait()` (duty-cycle timing of a
wait), `self.broadcast_module(module)` (parameters and buffers from rank 0, in place),
`self._reduce_tensor(t, op)` (a reduced copy). Objects go between ranks pickle-free: `broadcast`
sends JSON (str, numbers, bools, None, lists, dicts with str keys; tuples arrive as lists) or a
Tensor / NumPy array as raw bytes.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

import dutycycle as dc

from .strategy import Strategy, _check_reduce_op

_COMM_OPS = {"mean": "avg", "avg": "avg", "sum": "sum", "max": "max", "min": "min"}


def _distributed():
    """dutycycle.distributed, or a clear error when this build has none."""
    try:
        from .. import distributed
    except ImportError as e:  # pragma: no cover - the package ships it
        raise RuntimeError(f"multi-process strategies need dutycycle.distributed, which failed to import: {e}") from e
    return distributed


def _env_int(*names):
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                continue
    return None


def launcher_env():
    """{rank, world_size, local_rank, local_world_size, launcher} from the launcher's environment
    (dutycycle.distributed.launcher_env when there is one; the same variables read here otherwise)."""
    try:
        from .. import distributed

        fn = getattr(distributed, "launcher_env", None)
    except ImportError:
        fn = None
    if fn is not None:
        return dict(fn())
    if _env_int("OMPI_COMM_WORLD_SIZE") is not None:
        p, launcher = "OMPI_COMM_WORLD_", "mpirun"
        return {
            "rank": _env_int(p + "RANK"),
            "world_size": _env_int(p + "SIZE"),
            "local_rank": _env_int(p + "LOCAL_RANK"),
            "local_world_size": _env_int(p + "LOCAL_SIZE"),
            "launcher": launcher,
        }
    if _env_int("SLURM_NTASKS") is not None and _env_int("SLURM_PROCID") is not None:
        return {
            "rank": _env_int("SLURM_PROCID"),
            "world_size": _env_int("SLURM_NTASKS"),
            "local_rank": _env_int("SLURM_LOCALID"),
            "local_world_size": _env_int("SLURM_NTASKS_PER_NODE"),
            "launcher": "srun",
        }
    if _env_int("WORLD_SIZE") is not None and _env_int("RANK") is not None:
        return {
            "rank": _env_int("RANK"),
            "world_size": _env_int("WORLD_SIZE"),
            "local_rank": _env_int("LOCAL_RANK"),
            "local_world_size": _env_int("LOCAL_WORLD_SIZE"),
            "launcher": "torchrun-env",
        }
    return {"rank": 0, "world_size": 1, "local_rank": 0, "local_world_size": 1, "launcher": None}


class ParallelStrategy(Strategy):
    """Base class of the multi-process strategies: one rank per process, collectives over `comm`.

    accelerator: "cpu" or "cuda" (each rank then trains on cuda:local_rank); timeout: a
    datetime.timedelta or seconds for every collective (the comm's watchdog; None -> the
    DUTYCYCLE_COMM_TIMEOUT env or 600 s); process_group_backend: "mpi", "nccl" or "gloo" (-> mpi);
    None picks nccl on CUDA, mpi on the CPU."""

    strategy_name = "parallel"

    def __init__(self, accelerator=None, timeout=None, process_group_backend=None, num_nodes=1):
        super().__init__()
        if accelerator not in (None, "auto", "cpu", "cuda", "gpu"):
            raise ValueError(f"accelerator={accelerator!r} is not known; expected 'cpu', 'cuda' or None")
        self._accelerator = None if accelerator in (None, "auto") else ("cuda" if accelerator == "gpu" else accelerator)
        self._timeout = _timeout_seconds(timeout)
        if process_group_backend not in (None, "mpi", "nccl", "gloo"):
            raise ValueError(f"process_group_backend={process_group_backend!r}: expected 'mpi', 'nccl', 'gloo' or None")
        self._backend = process_group_backend
        self.num_nodes = int(num_nodes)
        self.num_devices = None  # set by the Trainer's config (devices=N): ranks per node expected
        self._dc_comm = None
        self._env = None

    # ---- who and where ---------------------------------------------------------------------------
    def _launch_env(self):
        if self._env is None:
            self._env = launcher_env()
        return self._env

    @property
    def global_rank(self):
        return self._dc_comm.rank if self._dc_comm is not None else int(self._launch_env()["rank"] or 0)

    @property
    def world_size(self):
        return self._dc_comm.size if self._dc_comm is not None else int(self._launch_env()["world_size"] or 1)

    @property
    def local_rank(self):
        if self._dc_comm is not None:
            return self._dc_comm.local_rank
        lr = self._launch_env()["local_rank"]
        return int(lr) if lr is not None else self.global_rank

    @property
    def local_world_size(self):
        if self._dc_comm is not None:
            return self._dc_comm.local_size
        lws = self._launch_env()["local_world_size"]
        return int(lws) if lws is not None else max(1, self.world_size // max(1, self.num_nodes))

    @property
    def node_rank(self):
        return self.global_rank // max(1, self.local_world_size)

    @property
    def root_device(self):
        if self._accelerator == "cuda":
            return dc.device("cuda", self.local_rank)
        return dc.device("cpu")

    @property
    def comm(self):
        """The `_C.Comm` of the default process group (created by setup_environment)."""
        if self._dc_comm is None:
            self.setup_environment()
        return self._dc_comm

    @property
    def distributed_sampler_kwargs(self):
        """What the Trainer hands a DistributedSampler (Lightning's name)."""
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def setup_environment(self):
        """Before anything of an entry point runs: check the launch, self-launch a plain
        `python train.py` under mpirun when devices x num_nodes > 1 ranks are wanted and no
        launcher started us, then join the default process group (dutycycle.distributed)."""
        if self._dc_comm is not None:
            return
        env = self._launch_env()
        want = None if self.num_devices is None else self.num_devices * max(1, self.num_nodes)
        if env["launcher"] is None and want is not None and want > 1:
            dist = _distributed()
            launch = getattr(dist, "launch", None)
            if launch is None or not hasattr(launch, "self_launch"):
                raise RuntimeError(
                    f"{type(self).__name__} with devices={self.num_devices}: this process was not started by a "
                    "launcher and dutycycle.distributed.launch.self_launch is not available; start it with "
                    f"`dutycycle run -n {want} script.py` or `mpirun -n {want} python script.py`"
                )
            launch.self_launch(want)  # replaces this process (os.execvpe mpirun); returns only if it cannot
            raise RuntimeError(f"self_launch({want}) returned: the job could not be started under mpirun")
        if want is not None and env["launcher"] is not None and int(env["world_size"] or 1) != want:
            raise ValueError(
                f"{type(self).__name__}: the launcher ({env['launcher']}) started {env['world_size']} processes but "
                f"the Trainer asks for devices={self.num_devices} x num_nodes={self.num_nodes} = {want}; make them "
                f"equal (e.g. `dutycycle run -n {want} ...`, or Trainer(devices={env['world_size']}))"
            )
        dist = _distributed()
        if not dist.is_initialized():
            backend = self._backend or ("nccl" if self._accelerator == "cuda" else "mpi")
            kwargs = {"backend": backend}
            if self._timeout is not None:
                import datetime

                kwargs["timeout"] = datetime.timedelta(seconds=self._timeout)
            dist.init_process_group(**kwargs)
        self._dc_comm = dist._default_comm()
        dist.rank_zero_only.rank = self._dc_comm.rank  # loggers and rank_zero_* helpers write on rank 0 only
        if self._timeout is not None:
            self._dc_comm.timeout = self._timeout
        self._env = None  # the comm answers from now on

    def setup(self, trainer):
        """Attach, join the group (if setup_environment has not run yet), put the model on
        root_device and make every rank start from rank 0's parameters and buffers."""
        self._trainer = trainer
        self.setup_environment()
        self.model_to_device()
        m = self.lightning_module
        if m is not None:
            self.broadcast_module(m)

    def teardown(self):
        """Nothing to free per entry point: the process group lives until the interpreter exits
        (a later fit in the same process reuses it), as torch's default group does."""
        return None

    # ---- duty cycle ---------------------------------------------------------------------------------
    def comm_wait(self):
        """Time the enclosed blocking wait as "comm wait" in the trainer's duty cycle."""
        t = self._trainer
        duty = getattr(t, "duty_cycle", None) if t is not None else None
        if duty is None or not duty.running:
            return contextlib.nullcontext()
        return duty.track("comm_wait")

    # ---- collectives ----------------------------------------------------------------------------------
    def _reduce_tensor(self, tensor, op):
        """A reduced copy of tensor (`op` one of sum/avg/max/min); the input is left alone."""
        t = tensor.detach()
        if op == "avg" and not t.dtype.is_floating_point:
            t = t.float()
        dev = t.device
        # note: device -> host copy on a GPU for the mpi backend (CPU buffers); a copy on the CPU
        buf = t.to("cpu").contiguous().clone() if (dev.type != "cpu" and self.comm.backend == "mpi") else t.clone()
        with self.comm_wait():
            self.comm.all_reduce(buf, op=op)
        return buf.to(dev) if buf.device != dev else buf

    def reduce(self, tensor, group=None, reduce_op="mean"):
        """tensor reduced over all ranks ('mean'/'avg', 'sum', 'max', 'min'); numbers become
        tensors (as Lightning). Returns a new tensor."""
        _check_reduce_op(reduce_op)
        if group is not None:
            raise NotImplementedError("reduce(group=...): only the default group (all ranks) is supported")
        op = _COMM_OPS[reduce_op.lower()]
        if not isinstance(tensor, dc.Tensor):
            tensor = dc.tensor(float(tensor), dtype=dc.float64 if op == "avg" else None)
        return self._reduce_tensor(tensor, op)

    def all_gather(self, tensor, group=None, sync_grads=False):
        """Every rank's tensor stacked along a new first dim: shape (world_size, *tensor.shape)."""
        if group is not None:
            raise NotImplementedError("all_gather(group=...): only the default group (all ranks) is supported")
        if sync_grads:
            raise NotImplementedError("all_gather(sync_grads=True) is not supported: the result carries no grad")
        if not isinstance(tensor, dc.Tensor):
            tensor = dc.tensor(tensor)
        t = tensor.detach().to("cpu").contiguous()
        out = dc.empty((self.world_size,) + tuple(t.shape), dtype=t.dtype)
        with self.comm_wait():
            self.comm.all_gather(t, out)
        return out.to(tensor.device) if tensor.device.type != "cpu" else out

    def broadcast(self, obj, src=0):
        """obj as rank src has it, on every rank. Tensors and NumPy arrays go as raw bytes (shape
        and dtype must agree on every rank); anything else as JSON (never pickle)."""
        if not 0 <= src < self.world_size:
            raise ValueError(f"broadcast(src={src!r}): src must be a rank in [0, {self.world_size})")
        if isinstance(obj, dc.Tensor):
            buf = obj.detach().to("cpu").contiguous().clone()
            with self.comm_wait():
                self.comm.broadcast(buf, root=src)
            return buf.to(obj.device) if obj.device.type != "cpu" else buf
        if isinstance(obj, np.ndarray):
            buf = np.ascontiguousarray(obj).copy()
            with self.comm_wait():
                self.comm.broadcast(buf, root=src)
            return buf
        return self._broadcast_json(obj, src)

    def _broadcast_json(self, obj, src):
        payload = b""
        if self.global_rank == src:
            try:
                payload = json.dumps(obj, allow_nan=True).encode()
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"broadcast(obj of type {type(obj).__name__}): objects go between ranks as JSON (no pickle); "
                    f"pass str, numbers, bools, None, lists or dicts with str keys, or a Tensor/ndarray ({e})"
                ) from None
        n = np.array([len(payload)], dtype=np.int64)
        with self.comm_wait():
            self.comm.broadcast(n, root=src)
            data = (
                np.frombuffer(payload, dtype=np.uint8).copy()
                if self.global_rank == src
                else np.empty(int(n[0]), dtype=np.uint8)
            )
            if data.size:
                self.comm.broadcast(data, root=src)
        return obj if self.global_rank == src else json.loads(data.tobytes().decode())

    def _gather_json(self, obj):
        """[obj of every rank] on rank 0, None elsewhere (JSON-able objects; a collective)."""
        out = [self._broadcast_json(obj if r == self.global_rank else None, r) for r in range(self.world_size)]
        return out if self.global_rank == 0 else None

    def barrier(self, name=None):
        with self.comm_wait():
            self.comm.barrier()

    def reduce_boolean_decision(self, decision, all=True):
        """True when every rank (all=True) or any rank (all=False) decided True."""
        votes = np.array([1 if bool(decision) else 0], dtype=np.int32)
        with self.comm_wait():
            self.comm.all_reduce(votes, op="sum")
        return bool(votes[0] == self.world_size) if all else bool(votes[0] > 0)

    def broadcast_module(self, module, src=0):
        """Parameters and buffers of module overwritten in place by rank src's (one collective per
        tensor, in state_dict order, identical on every rank). # note: host copies on a GPU."""
        with dc.no_grad():
            for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
                if t.device.type != "cpu" and self.comm.backend == "mpi":
                    buf = t.detach().to("cpu").contiguous()
                    self.comm.broadcast(buf, root=src)
                    t.copy_(buf.to(t.device))
                elif t.is_contiguous():
                    self.comm.broadcast(t.detach(), root=src)
                else:
                    buf = t.detach().contiguous()
                    self.comm.broadcast(buf, root=src)
                    t.copy_(buf)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.global_rank}/{self.world_size}, root_device={self.root_device})"


def _timeout_seconds(timeout):
    """A timedelta or seconds -> float seconds; None stays None (env / default 600 s)."""
    if timeout is None:
        return None
    if hasattr(timeout, "total_seconds"):
        s = float(timeout.total_seconds())
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        s = float(timeout)
    else:
        raise TypeError(f"timeout must be a datetime.timedelta or seconds, got {type(timeout).__name__}")
    if s <= 0:
        raise ValueError(f"timeout must be positive, got {s} s")
    return s
