"""DDPStrategy: Lightning's "ddp" — one process per rank, gradients averaged by the bucketed,
overlapped reducer (distributed/reducer.py) while backward runs.

    Trainer(strategy="ddp", devices=4)          # self-launches 4 ranks under mpirun, or checks the
                                                #   launcher's world size (mpirun/srun/dutycycle run)
    Trainer(strategy=DDPStrategy(timeout=timedelta(minutes=2), bucket_cap_mb=50,
                                 find_unused_parameters=True), devices=4)

What a step does on every rank: training_step on this rank's share of the batch (the Trainer
injected a DistributedSampler), backward (each parameter's gradient is copied into its bucket the
moment it is final; a full bucket is all-reduced with op="avg" at once, in bucket order), and at
the end of backward the wait for the buckets still in flight (timed as "comm wait"), then the
optimizer step — the same step on every rank, from the same averaged gradients, so the replicas
stay equal without sending parameters. Micro-batches of gradient accumulation that do not step
run inside `block_backward_sync()` (the reducer's no_sync): only the last one communicates.
"""

from __future__ import annotations

import contextlib

from .parallel import ParallelStrategy


class DDPStrategy(ParallelStrategy):
    """Distributed data parallel (torch's DistributedDataParallel semantics, Lightning's strategy).

    timeout: datetime.timedelta (or seconds) for every collective — the comm's watchdog names the
    lagging rank when it expires (default 10 minutes, or DUTYCYCLE_COMM_TIMEOUT). bucket_cap_mb:
    bucket size (the first bucket is 1 MB). find_unused_parameters, gradient_as_bucket_view,
    static_graph: as torch's DistributedDataParallel (see nn.parallel.DistributedDataParallel)."""

    strategy_name = "ddp"

    def __init__(
        self,
        accelerator=None,
        timeout=None,
        bucket_cap_mb=25,
        find_unused_parameters=False,
        gradient_as_bucket_view=False,
        static_graph=False,
        process_group_backend=None,
        num_nodes=1,
    ):
        super().__init__(
            accelerator=accelerator, timeout=timeout, process_group_backend=process_group_backend, num_nodes=num_nodes
        )
        if bucket_cap_mb is None or bucket_cap_mb <= 0:
            raise ValueError(f"DDPStrategy(bucket_cap_mb={bucket_cap_mb!r}): must be > 0")
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = bool(find_unused_parameters)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.static_graph = bool(static_graph)
        self.reducer = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer):
        """Join the group, rank 0's weights everywhere, then (for fit) the reducer's hooks on the
        module's parameters. validate/test/predict run no backward and need none."""
        super().setup(trainer)
        self._remove_reducer()
        m = self.lightning_module
        if m is None or getattr(getattr(trainer, "state", None), "fn", "fit") != "fit":
            return
        if self.world_size == 1:
            return  # one rank: its gradients are the average already; no hooks, no collectives
        from ..distributed.reducer import Reducer

        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        if not named:
            return
        self.reducer = Reducer(
            [p for _, p in named],
            self.comm,
            names=[n for n, _ in named],
            bucket_cap_mb=self.bucket_cap_mb,
            find_unused_parameters=self.find_unused_parameters,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
            static_graph=self.static_graph,
            wait=self.comm_wait,
        )

    def teardown(self):
        self._remove_reducer()
        return super().teardown()

    def _remove_reducer(self):
        if self.reducer is not None:
            self.reducer.remove()
            self.reducer = None

    # ---- the step --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def block_backward_sync(self):
        """Backward inside accumulates locally (no all-reduce): gradient accumulation's early micro-batches."""
        if self.reducer is None:
            yield
            return
        with self.reducer.no_sync():
            yield

    @contextlib.contextmanager
    def no_sync(self):
        """Alias of block_backward_sync (torch's name)."""
        with self.block_backward_sync():
            yield

    def __repr__(self):
        return (
            f"DDPStrategy(rank={self.global_rank}/{self.world_size}, root_device={self.root_device}, "
            f"bucket_cap_mb={self.bucket_cap_mb}, find_unused_parameters={self.find_unused_parameters})"
        )
