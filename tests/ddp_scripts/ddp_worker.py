"""One rank of the DDP tests (run under mpirun / dutycycle run; tests/test_ddp.py starts it).

    ddp_worker.py equiv K B          K steps of DDP (per-rank batch B) vs one process with batch N*B
    ddp_worker.py nosync K B A       A micro-batches per step under no_sync vs the big batch
    ddp_worker.py unused             a parameter without gradient: the error names it
    ddp_worker.py find_unused K B    find_unused_parameters=True vs the big batch (one branch unused)
    ddp_worker.py overlap STEPS      when the first bucket's all-reduce started vs the end of backward

Rank 0 prints one line `RESULT {json}`; every rank exits 0 on success."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np

import dutycycle as dc
import dutycycle.distributed as dist
from dutycycle.nn.parallel import DistributedDataParallel as DDP


def mlp(width=64, depth=3, seed=0):
    dc.manual_seed(seed)
    layers = [dc.nn.Linear(16, width), dc.nn.GELU()]
    for _ in range(depth - 1):
        layers += [dc.nn.Linear(width, width), dc.nn.GELU()]
    layers.append(dc.nn.Linear(width, 4))
    return dc.nn.Sequential(*layers)


class TwoHeads(dc.nn.Module):
    """head_b is used only when use_b (find_unused_parameters)."""

    def __init__(self):
        super().__init__()
        dc.manual_seed(0)
        self.body = dc.nn.Linear(16, 32)
        self.head_a = dc.nn.Linear(32, 4)
        self.head_b = dc.nn.Linear(32, 4)

    def forward(self, x, use_b=False):
        h = dc.nn.functional.gelu(self.body(x))
        return self.head_b(h) if use_b else self.head_a(h)


def data(k, n):
    dc.manual_seed(1234)
    return dc.randn(k, n, 16), dc.randn(k, n, 4)


def params_of(m):
    return [p.detach().numpy().copy() for p in m.parameters()]


def rel_err(got, want):
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(got, want))


def reference(make, X, Y, steps):
    m = make()
    opt = dc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for k in range(steps):
        opt.zero_grad()
        dc.nn.functional.mse_loss(m(X[k]), Y[k]).backward()
        opt.step()
    return params_of(m)


def main():
    mode = sys.argv[1]
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {"mode": mode, "world": world}

    if mode in ("equiv", "bucket_view"):
        K, B = int(sys.argv[2]), int(sys.argv[3])
        X, Y = data(K, world * B)
        m = mlp()
        if rank:
            with dc.no_grad():  # rank 0's weights must win (the broadcast at wrap time)
                for p in m.parameters():
                    p.add_(1.0)
        ddp = DDP(m, bucket_cap_mb=0.005, gradient_as_bucket_view=(mode == "bucket_view"))
        opt = dc.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for k in range(K):
            opt.zero_grad()
            sl = slice(rank * B, (rank + 1) * B)
            dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]).backward()
            opt.step()
        out["buckets"] = ddp.reducer.bucket_sizes()
        if rank == 0:
            out["rel_err"] = rel_err(params_of(m), reference(mlp, X, Y, K))

    elif mode == "nosync":
        K, B, A = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        X, Y = data(K, world * B * A)
        m = mlp()
        ddp = DDP(m, bucket_cap_mb=0.005)
        opt = dc.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for k in range(K):
            opt.zero_grad()
            for a in range(A):  # micro-batch a of rank r: rows [(a*world + r)*B, ...+B)
                sl = slice((a * world + rank) * B, (a * world + rank + 1) * B)
                ctx = ddp.no_sync() if a < A - 1 else contextlib.nullcontext()
                with ctx:
                    (dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]) / A).backward()
            opt.step()
        if rank == 0:
            out["rel_err"] = rel_err(params_of(m), reference(mlp, X, Y, K))

    elif mode == "unused":
        ddp = DDP(TwoHeads())
        x = dc.randn(4, 16)
        try:
            ddp(x).sum().backward()
            out["error"] = None
        except RuntimeError as e:
            out["error"] = str(e)

    elif mode == "find_unused":
        K, B = int(sys.argv[2]), int(sys.argv[3])
        X, Y = data(K, world * B)
        m = TwoHeads()
        ddp = DDP(m, find_unused_parameters=True)
        opt = dc.optim.SGD(ddp.parameters(), lr=0.1)
        for k in range(K):
            opt.zero_grad()
            sl = slice(rank * B, (rank + 1) * B)
            dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]).backward()
            opt.step()
        out["head_b_grad_is_none"] = m.head_b.weight.grad is None
        if rank == 0:
            out["rel_err"] = rel_err(params_of(m), _ref_sgd(X, Y, K))

    elif mode == "overlap":
        # A collective starts once every rank has issued it (the comm's fingerprint exchange), so
        # a rank that runs ahead sees its first bucket start late; the job overlaps when the first
        # bucket started before the backward of the last rank to finish had ended. Both the
        # per-rank margins and that job-level one are reported.
        steps = int(sys.argv[2])
        comm = dist._default_comm()
        dc.manual_seed(0)
        width = 512  # 1 MB per weight matrix: several buckets, backward long enough to overlap
        m = dc.nn.Sequential(*[dc.nn.Sequential(dc.nn.Linear(width, width), dc.nn.GELU()) for _ in range(8)])
        ddp = DDP(m, bucket_cap_mb=2)
        opt = dc.optim.SGD(ddp.parameters(), lr=1e-3)
        x = dc.randn(256, width)
        rows = []  # per step: t0, first bucket enqueued, started, finished, backward end, backward returned
        hidden = []  # per step: the share of this rank's all-reduce time that ran before backward ended
        for step in range(steps):
            opt.zero_grad()
            loss = ddp(x).pow(2).mean()
            comm.events(clear=True)
            t0 = time.monotonic_ns()
            loss.backward()
            t_ret = time.monotonic_ns()
            lp = ddp.reducer.last_pass
            ars = [e for e in comm.events() if e["op"] == "all_reduce" and e["enqueued_ns"] >= t0]
            first = min(ars, key=lambda e: e["seq"])
            opt.step()
            if step == 0:
                continue  # the first pass rebuilds the buckets
            hidden.append(lp["hidden_share"])
            rows.append([t0, first["enqueued_ns"], first["started_ns"], first["finished_ns"],
                         lp["backward_end_ns"], t_ret])
        mine = np.array(rows, dtype=np.int64)  # (steps - 1, 6)
        every = np.zeros((world,) + mine.shape, dtype=np.int64)
        comm.all_gather(mine, every)  # same CLOCK_MONOTONIC on one machine
        t0, enq, start, _, end, ret = (every[:, :, i] for i in range(6))  # each (world, steps - 1)
        job_margin = (end.max(0) - start.min(0)) / 1e6  # (steps - 1,)
        out.update(
            buckets=ddp.reducer.bucket_sizes(),
            margin_ms_per_rank=((end - start) / 1e6).round(3).tolist(),
            enqueued_margin_ms_per_rank=((end - enq) / 1e6).round(3).tolist(),
            backward_ms_per_rank=((end - t0) / 1e6).round(3).tolist(),
            job_margin_ms=job_margin.round(3).tolist(),
            frac_of_backward=(job_margin / ((end.max(0) - t0.min(0)) / 1e6)).round(3).tolist(),
            hidden_share_rank0=[round(h, 3) for h in hidden],
            # with more ranks than cores (4 on a 2-core CI machine) a rank descheduled for a few ms
            # delays every collective's start (it starts once all ranks issued it): the job overlaps
            # when some step's first bucket ran during backward; that every rank issues it during its
            # own backward holds on every step (enqueued_before_end)
            started_before_end=bool((job_margin > 0).any()),
            steps_started_before_end=int((job_margin > 0).sum()),
            enqueued_before_end=bool((end > enq).all()),
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def _ref_sgd(X, Y, K):
    m = TwoHeads()
    opt = dc.optim.SGD(m.parameters(), lr=0.1)
    for k in range(K):
        opt.zero_grad()
        dc.nn.functional.mse_loss(m(X[k]), Y[k]).backward()
        opt.step()
    return params_of(m)


if __name__ == "__main__":
    main()
