"""DDPStrategy: data parallel with the bucketed, overlapped gradient all-reduce (placeholder; the
reducer lands next)."""

from __future__ import annotations

from .parallel import ParallelStrategy


class DDPStrategy(ParallelStrategy):
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
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = bool(find_unused_parameters)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.static_graph = bool(static_graph)
