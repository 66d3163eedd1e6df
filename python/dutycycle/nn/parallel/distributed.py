"""DistributedDataParallel: torch.nn.parallel.DistributedDataParallel for dutycycle modules.

    import dutycycle as torch
    import dutycycle.distributed as dist
    from dutycycle.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(backend="mpi")          # under mpirun / dutycycle run / srun
    model = DDP(model)                              # rank 0's weights everywhere, hooks registered
    loss = model(x).loss(...); loss.backward()      # gradients averaged, bucket by bucket, while
    opt.step()                                      #   backward runs; synced when backward returns
    with model.no_sync(): ...                       # accumulate locally, reduce on the next backward

The work is done by distributed/reducer.py (the same reducer the "ddp" strategy uses). `.module`
is the wrapped model; state_dict keys carry the "module." prefix, as in torch (save
`model.module.state_dict()` for prefix-free keys, as nanoGPT does).
"""

from __future__ import annotations

import contextlib

import dutycycle as dc

from ..module import Module


class DistributedDataParallel(Module):
    """Wrap module for data-parallel training over the default process group.

    device_ids / output_device: accepted for torch compatibility (each rank trains on the device
    its module is on; a list of one index is checked against it). bucket_cap_mb: bucket size
    (the first bucket is 1 MB). find_unused_parameters: allow parameters that get no gradient in
    a pass (they are reduced as zeros; one no rank used keeps .grad None). gradient_as_bucket_view:
    .grad tensors become views into the flat buckets (no copy back after the reduction).
    static_graph: accepted (the graph is assumed the same every pass; buckets are rebuilt once even
    with find_unused_parameters). broadcast_buffers: send rank 0's buffers before every forward
    (torch's default; nothing to send for modules without buffers). process_group: only None
    (the default group) or its comm."""

    def __init__(
        self,
        module,
        device_ids=None,
        output_device=None,
        dim=0,
        broadcast_buffers=True,
        process_group=None,
        bucket_cap_mb=25,
        find_unused_parameters=False,
        check_reduction=False,
        gradient_as_bucket_view=False,
        static_graph=False,
        comm=None,
        _wait=None,
    ):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(
                f"DistributedDataParallel(module): expected a dutycycle.nn.Module, got {type(module).__name__}"
            )
        if dim != 0:
            raise ValueError(f"DistributedDataParallel(dim={dim!r}): only dim=0 is supported")
        from ...distributed.reducer import Reducer

        if comm is None:
            comm = process_group if process_group is not None and hasattr(process_group, "all_reduce") else None
        if comm is None:
            from ... import distributed

            if not distributed.is_initialized():
                raise RuntimeError(
                    "DistributedDataParallel: the default process group is not initialized; call "
                    "dutycycle.distributed.init_process_group(backend='mpi') first (under mpirun, srun or "
                    "`dutycycle run -n N`)"
                )
            comm = distributed._default_comm()
        self.module = module
        dev = _module_device(module)
        if device_ids is not None:
            ids = list(device_ids) if isinstance(device_ids, (list, tuple)) else [device_ids]
            if len(ids) != 1:
                raise ValueError(f"DistributedDataParallel(device_ids={device_ids!r}): one device per process")
            want = ids[0]
            idx = want.index if hasattr(want, "index") else want
            if isinstance(idx, str):
                idx = int(idx.split(":")[-1]) if ":" in idx else 0
            if dev is not None and dev.type == "cuda" and dev.index != idx:
                raise ValueError(f"DistributedDataParallel(device_ids={device_ids!r}): the module is on {dev}")
        object.__setattr__(self, "device_ids", device_ids)
        object.__setattr__(self, "output_device", output_device)
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "_comm", comm)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        reducer = Reducer(
            [p for _, p in named],
            comm,
            names=[n for n, _ in named],
            bucket_cap_mb=bucket_cap_mb,
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
            wait=_wait,
        )
        object.__setattr__(self, "reducer", reducer)
        reducer.broadcast_parameters(module, 0)  # every rank starts from rank 0's weights

    find_unused_parameters = property(lambda self: self.reducer.find_unused_parameters)
    gradient_as_bucket_view = property(lambda self: self.reducer.gradient_as_bucket_view)
    static_graph = property(lambda self: self.reducer.static_graph)

    @property
    def require_backward_grad_sync(self):
        """False: the next backward passes accumulate locally (nanoGPT sets it per micro-step)."""
        return self.reducer.sync_enabled

    @require_backward_grad_sync.setter
    def require_backward_grad_sync(self, value):
        self.reducer.sync_enabled = bool(value)

    def forward(self, *args, **kwargs):
        # as torch: buffers are synced only before a forward whose backward will reduce (grad mode
        # on, sync on), so a no-grad forward on rank 0 alone (nanoGPT's evaluation) issues nothing
        if self.broadcast_buffers and self.reducer.sync_enabled and dc.is_grad_enabled():
            bufs = [b for b in self.module.buffers() if b is not None]
            if bufs:

                class _Only:  # reducer.broadcast_parameters walks parameters + buffers; buffers only here
                    def parameters(self):
                        return []

                    def buffers(self):
                        return bufs

                self.reducer.broadcast_parameters(_Only(), 0)  # note: one broadcast per buffer
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, without communication; the first
        backward after the block reduces the accumulated gradients (torch's no_sync)."""
        with self.reducer.no_sync():
            yield

    def __repr__(self):
        return f"DistributedDataParallel(\n  (module): {self.module!r}\n)"


def _module_device(module):
    for p in module.parameters():
        return p.device
    return None
