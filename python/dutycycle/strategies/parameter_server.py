"""The parameter server: the naive data-parallel baseline, honestly implemented, so benchmarks can
show it beside ddp and ZeRO. It is the loop the collectives replace: every rank sends its whole
gradient to rank 0, rank 0 averages, steps the optimizer alone (the optimizer state lives only
there) and sends the parameters back to every rank.

    rank r > 0:  backward -> send(grads, 0) ...................... recv(params, 0)
    rank 0:      backward -> recv(grads, r) for r = 1..N-1, average, optimizer.step(),
                             send(params, r) for r = 1..N-1

Point to point on purpose: rank 0's link carries 2 (N-1) model-sized messages per step (the hot
link), the others' one each way, which is what makes the parameter server stop scaling. Every
parameter is a view of one flat buffer (messages are one send each way) and every .grad a view of
a flat gradient buffer, made in `setup` before the first forward.
"""

from __future__ import annotations

import contextlib

import dutycycle as dc

from .parallel import ParallelStrategy
from .zero import (
    FlatBuffers,
    ShardLayout,
    _nbytes,
    check_params,
    format_memory,
    queue_clip,
)

GRAD_TAG, PARAM_TAG, MASK_TAG = 71, 72, 73


class ParameterServerEngine:
    """The parameter-server step on a list of parameters and a communicator (`send`/`recv`,
    `rank`, `size`, as `_C.Comm`). waiting: a context-manager factory around every blocking
    transfer (the trainer's duty-cycle comm_wait)."""

    def __init__(self, params, comm, names=None, waiting=None):
        self.params = check_params(params, names, "parameter_server")
        self.comm, self.names = comm, names
        self.rank, self.world_size = int(comm.rank), int(comm.size)
        self._waiting = waiting or contextlib.nullcontext
        # one bucket, no padding: the flat buffer is the parameters end to end
        self.layout = ShardLayout([p.numel() for p in self.params], 1, bucket_numel=1 << 62, first_bucket_numel=1 << 62)
        self.flat = FlatBuffers(self.params, self.layout, names, grads=True)
        p0 = self.params[0]
        # rank 0 receives one gradient at a time into this buffer (total,)
        self.recv_buf = dc.empty(self.layout.total, dtype=p0.dtype, device=p0.device) if self.rank == 0 else None
        self.optimizer_state_bytes = 0
        # which parameters got a gradient this step (post-accumulate-grad hooks): sent to rank 0 with the
        # gradient, so a parameter with a gradient on no rank is skipped by the step (its .grad None)
        self._got_grad = dc.zeros(len(self.params), dtype=dc.float32)  # (num_params,) 1.0 = got one
        self._mask_buf = dc.empty(len(self.params), dtype=dc.float32) if self.rank == 0 else None
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self.params)]

    def _make_hook(self, i):
        def hook(_param):
            self._got_grad[i] = 1.0

        return hook

    def close(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def broadcast_params(self):
        """Rank 0's parameters to every rank, one send per rank (the hot link, as every step)."""
        with self._waiting():
            if self.rank == 0:
                for dst in range(1, self.world_size):
                    self.comm.send(self.flat.param, dst, tag=PARAM_TAG)
            else:
                self.comm.recv(self.flat.param, 0, tag=PARAM_TAG)

    def before_backward(self):
        self.flat.attach_grads()

    def step(self, optimizer, clip=None):
        """Gradients to rank 0, averaged; (clip(optimizer) there, on the averaged gradients);
        optimizer.step() there; parameters back."""
        comm, flat = self.comm, self.flat
        got = self._got_grad
        self._got_grad = dc.zeros(len(self.params), dtype=dc.float32)
        if self.rank != 0:
            optimizer.state.clear()  # the state lives on rank 0 (one a resumed checkpoint gave us is dropped)
            with self._waiting():
                comm.send(flat.grad, 0, tag=GRAD_TAG)  # note: the whole gradient crosses rank 0's link
                comm.send(got, 0, tag=MASK_TAG)
                comm.recv(flat.param, 0, tag=PARAM_TAG)
            return
        with dc.no_grad():
            for src in range(1, self.world_size):
                with self._waiting():
                    comm.recv(self.recv_buf, src, tag=GRAD_TAG)
                    comm.recv(self._mask_buf, src, tag=MASK_TAG)
                flat.grad.add_(self.recv_buf)
                got.add_(self._mask_buf)
            if self.world_size > 1:
                flat.grad.div_(self.world_size)
        for i, g in enumerate(got.tolist()):  # no gradient on any rank: skipped by the step, as torch does
            if not g:
                self.params[i].grad = None  # (attach_grads gives it a zeroed view again before the next backward)
        if clip is not None:
            clip(optimizer)
        optimizer.step()  # rank 0 alone: .grad are views of the averaged flat gradient
        self.optimizer_state_bytes = sum(
            _nbytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, dc.Tensor)
        )
        with self._waiting():
            for dst in range(1, self.world_size):
                comm.send(flat.param, dst, tag=PARAM_TAG)

    def memory_per_rank(self):
        params, grads = _nbytes(self.flat.param), _nbytes(self.flat.grad) + _nbytes(self.recv_buf)
        state = self.optimizer_state_bytes
        return {
            "strategy": "parameter_server",
            "world_size": self.world_size,
            "rank": self.rank,
            "num_params": self.layout.num_params,
            "padded_numel": self.layout.total,
            "buckets": 1,
            "parameters": params,
            "gradients": grads,
            "optimizer_state": state,
            "total": params + grads + state,
        }


class ParameterServerStrategy(ParallelStrategy):
    """Trainer(strategy="parameter_server"): the naive baseline (see the module docstring). Works
    with any optimizer (it runs the optimizer's own step, on rank 0 only)."""

    strategy_name = "parameter_server"

    def __init__(self, accelerator=None, timeout=None, process_group_backend=None, num_nodes=1):
        super().__init__(
            accelerator=accelerator, timeout=timeout, process_group_backend=process_group_backend, num_nodes=num_nodes
        )
        self._engine = None
        self._memory_logged = False

    def setup(self, trainer):
        """Join the group and take rank 0's weights (ParallelStrategy), then, for fit, the flat
        buffers (before the first forward)."""
        super().setup(trainer)
        if self._engine is not None:
            self._engine.close()
        self._engine = None
        m = self.lightning_module
        if m is None or getattr(getattr(trainer, "state", None), "fn", "fit") != "fit":
            return
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        self._engine = ParameterServerEngine(
            [p for _, p in named], self.comm, names=[n for n, _ in named], waiting=self.comm_wait
        )
        self._memory_logged = False
        self._clips = []

    def teardown(self):
        if self._engine is not None:
            self._engine.close()
        return super().teardown()

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """LightningModule.clip_gradients under this strategy: queued, and done by rank 0 in the
        step on the averaged gradients (the module's own clip_gradients, nn.utils)."""
        queue_clip(self, gradient_clip_val, gradient_clip_algorithm)

    def _require_engine(self, what):
        if self._engine is None:
            raise RuntimeError(f"ParameterServerStrategy.{what}(): the strategy is not set up for fit yet")
        return self._engine

    def backward(self, loss, *args, **kwargs):
        self._require_engine("backward").before_backward()
        super().backward(loss, *args, **kwargs)

    def optimizer_step(self, optimizer, closure=None, model=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)
        loss = None
        if closure is not None:
            with dc.enable_grad():
                loss = closure()
        clips, self._clips = getattr(self, "_clips", []), []
        from ..trainer.module import clip_local_gradients

        def clip(opt):  # rank 0, on the averaged gradients: a local clip, as one process would
            for val, algo in clips:
                clip_local_gradients(opt, val, algo)

        self._require_engine("optimizer_step").step(optimizer, clip if clips else None)
        if not self._memory_logged:
            self._memory_logged = True
            print(format_memory(self.memory_per_rank()), flush=True)
        return loss

    def memory_per_rank(self):
        """{'parameters', 'gradients', 'optimizer_state', 'total', ...} in bytes on this rank."""
        return self._require_engine("memory_per_rank").memory_per_rank()

    def lightning_module_state_dict(self):
        return self.lightning_module.state_dict()  # every rank has rank 0's parameters after the step

    def optimizer_state(self, optimizer):
        """Rank 0's optimizer state (the only one there is); rank 0 writes the checkpoint."""
        return getattr(optimizer, "optimizer", optimizer).state_dict()

    def __repr__(self):
        return f"ParameterServerStrategy(rank={self.global_rank}/{self.world_size}, root_device={self.root_device})"
