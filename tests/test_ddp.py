"""DistributedDataParallel and its reducer (distributed/reducer.py), DistributedSampler.

Two kinds of tests:
- in one process, ranks as threads over tests/ddp_scripts/thread_comm.py (no MPI needed): the
  reducer's logic — equivalence with one big batch, no_sync, unused parameters, bucket layout and
  the rebuild, gradient_as_bucket_view, identical launch order on every rank;
- under mpirun (tests/ddp_scripts/ddp_worker.py as subprocesses with timeouts, OMP_NUM_THREADS=1):
  the same checks over the real comm layer, and the overlap of the first bucket with backward
  measured from the comm's own timestamps. Skipped when this build has no `_C.Comm` or no mpirun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.data import DistributedSampler
from dutycycle.distributed.reducer import MB, Reducer, _plan_buckets
from dutycycle.nn.parallel import DistributedDataParallel as DDP

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "ddp_scripts")
sys.path.insert(0, SCRIPTS)
from ddp_worker import TwoHeads  # noqa: E402  (the model the mpirun workers use too)
from thread_comm import run_ranks  # noqa: E402

REPO = os.path.dirname(HERE)


def mlp(seed=0, width=64):
    dc.manual_seed(seed)
    return dc.nn.Sequential(
        dc.nn.Linear(16, width), dc.nn.GELU(), dc.nn.Linear(width, width), dc.nn.GELU(), dc.nn.Linear(width, 4)
    )


def params_of(m):
    return [p.detach().numpy().copy() for p in m.parameters()]


def rel_err(got, want):
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(got, want))


def reference(X, Y, steps, make=mlp):
    m = make()
    opt = dc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for k in range(steps):
        opt.zero_grad()
        dc.nn.functional.mse_loss(m(X[k]), Y[k]).backward()
        opt.step()
    return params_of(m)


def data(k, n):
    dc.manual_seed(1234)
    return dc.randn(k, n, 16), dc.randn(k, n, 4)


# ---- in one process: ranks as threads -----------------------------------------------------------
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("bucket_view", [False, True])
def test_ddp_equals_one_process_with_the_whole_batch(world, bucket_view):
    K, B = 4, 4
    X, Y = data(K, world * B)
    models = [mlp() for _ in range(world)]
    for r in range(1, world):  # the other ranks start elsewhere: rank 0's weights are broadcast
        with dc.no_grad():
            for p in models[r].parameters():
                p.mul_(0.5)

    def rank(comm):
        m = models[comm.rank]
        ddp = DDP(m, comm=comm, bucket_cap_mb=0.005, gradient_as_bucket_view=bucket_view)
        opt = dc.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for k in range(K):
            opt.zero_grad()
            sl = slice(comm.rank * B, (comm.rank + 1) * B)
            dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]).backward()
            opt.step()
        return params_of(m), [e["op"] for e in comm.events()], ddp.reducer.bucket_sizes()

    out = run_ranks(world, rank)
    want = reference(X, Y, K)
    for got, ops, sizes in out:
        assert rel_err(got, want) <= 1e-5
        assert ops == out[0][1]  # the same collectives in the same order on every rank
        assert len(sizes) > 1


def test_no_sync_accumulates_and_equals_the_big_batch():
    world, K, B, A = 2, 3, 2, 3
    X, Y = data(K, world * B * A)
    models = [mlp() for _ in range(world)]

    def rank(comm):
        m = models[comm.rank]
        ddp = DDP(m, comm=comm)
        opt = dc.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        n_reduce = []
        for k in range(K):
            opt.zero_grad()
            for a in range(A):
                sl = slice((a * world + comm.rank) * B, (a * world + comm.rank + 1) * B)
                before = len(comm.events())
                if a < A - 1:
                    with ddp.no_sync():
                        (dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]) / A).backward()
                else:
                    (dc.nn.functional.mse_loss(ddp(X[k][sl]), Y[k][sl]) / A).backward()
                n_reduce.append(len(comm.events()) - before)
            opt.step()
        return params_of(m), n_reduce

    out = run_ranks(world, rank)
    want = reference(X, Y, K)
    for got, n_reduce in out:
        assert rel_err(got, want) <= 1e-5
        # only the last micro-batch of each step communicates
        assert [n > 0 for n in n_reduce] == [False, False, True] * K


def test_require_backward_grad_sync_is_no_sync():
    def rank(comm):
        ddp = DDP(mlp(), comm=comm)
        ddp.require_backward_grad_sync = False
        n0 = len(comm.events())
        ddp(dc.randn(2, 16)).sum().backward()
        n1 = len(comm.events())
        ddp.require_backward_grad_sync = True
        ddp(dc.randn(2, 16)).sum().backward()
        return n1 - n0, len(comm.events()) - n1

    for silent, loud in run_ranks(2, rank):
        assert silent == 0 and loud > 0


def test_unused_parameters_are_named_without_find_unused_parameters():
    def rank(comm):
        ddp = DDP(TwoHeads(), comm=comm)
        with pytest.raises(RuntimeError) as e:
            ddp(dc.randn(4, 16)).sum().backward()
        return str(e.value)

    for msg in run_ranks(2, rank):
        assert "head_b.weight" in msg and "head_b.bias" in msg and "head_a" not in msg
        assert "find_unused_parameters=True" in msg


def test_find_unused_parameters():
    """head_b unused by every rank keeps grad None; used by one rank only, it gets the average."""
    models = [TwoHeads() for _ in range(2)]
    x = [dc.randn(4, 16) for _ in range(2)]

    def rank(comm):
        m = models[comm.rank]
        ddp = DDP(m, comm=comm, find_unused_parameters=True)
        ddp(x[comm.rank]).sum().backward()
        none_when_unused_everywhere = m.head_b.weight.grad is None
        for p in m.parameters():
            p.grad = None
        out = ddp(x[comm.rank], use_b=comm.rank == 1).sum()
        out.backward()
        return none_when_unused_everywhere, m.head_b.weight.grad.numpy().copy(), m.head_a.weight.grad.numpy().copy()

    out = run_ranks(2, rank)
    # expected: rank 1's head_b gradient / 2 (rank 0 contributes zeros), and rank 0's head_a / 2
    ref = [TwoHeads() for _ in range(2)]
    ref[1](x[1], use_b=True).sum().backward()
    ref[0](x[0]).sum().backward()
    for none_first, gb, ga in out:
        assert none_first
        np.testing.assert_allclose(gb, ref[1].head_b.weight.grad.numpy() / 2, rtol=1e-6)
        np.testing.assert_allclose(ga, ref[0].head_a.weight.grad.numpy() / 2, rtol=1e-6)


def test_bucket_plan_reverse_order_first_bucket_and_cap():
    ps = [dc.nn.Parameter(dc.zeros(n)) for n in (MB // 4, MB // 8, MB // 8, 3 * MB // 4, 10)]  # float32: 4 B each
    plan = _plan_buckets(ps, list(range(len(ps)))[::-1], bucket_cap_bytes=4 * MB, first_bucket_bytes=MB)
    # reverse order; as torch, a bucket closes once it holds >= its limit (1 MB first, then the cap)
    assert plan == [[4, 3], [2, 1, 0]]
    plan = _plan_buckets(ps, [0, 1, 2, 3, 4], bucket_cap_bytes=MB, first_bucket_bytes=MB)
    assert plan == [[0], [1, 2], [3], [4]]
    half = [dc.nn.Parameter(dc.zeros(4, dtype=dc.float64)), dc.nn.Parameter(dc.zeros(4))]
    assert _plan_buckets(half, [0, 1], MB, MB) == [[0], [1]]  # one dtype per bucket


class Crossed(dc.nn.Module):
    """Registration order a, b, c; forward uses c first, so gradients arrive as a, b, c (reverse of use)."""

    def __init__(self):
        super().__init__()
        dc.manual_seed(0)
        self.a = dc.nn.Linear(8, 8)
        self.b = dc.nn.Linear(8, 8)
        self.c = dc.nn.Linear(8, 8)

    def forward(self, x):
        return self.a(self.b(self.c(x)))


def test_buckets_rebuilt_once_in_ready_order():
    def rank(comm):
        m = Crossed()
        r = Reducer(list(m.parameters()), comm, names=[n for n, _ in m.named_parameters()], bucket_cap_mb=0.0003)
        before = r.bucket_layout()
        m(dc.randn(2, 8)).sum().backward()
        after = r.bucket_layout()
        m(dc.randn(2, 8)).sum().backward()
        return before, after, r.bucket_layout()

    for before, after, again in run_ranks(2, rank):
        flat = [n for b in before for n in b]
        assert flat == ["c.bias", "c.weight", "b.bias", "b.weight", "a.bias", "a.weight"]  # reverse registration
        ready = [n for b in after for n in b]
        assert ready[:2] == ["a.bias", "a.weight"] or ready[:2] == ["a.weight", "a.bias"]  # a's grads are first
        assert ready[-2:] in (["c.bias", "c.weight"], ["c.weight", "c.bias"])
        assert again == after  # once


def test_state_dict_has_the_module_prefix():
    def rank(comm):
        m = mlp()
        ddp = DDP(m, comm=comm)
        return list(ddp.state_dict()), list(m.state_dict()), ddp.module is m

    for wrapped, plain, same in run_ranks(2, rank):
        assert same and wrapped == ["module." + k for k in plain]


def test_ddp_without_a_process_group_says_how_to_start_one():
    import dutycycle.distributed as dist

    dist.destroy_process_group()  # an earlier test of this process may have left the default group up
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        DDP(mlp())


# ---- DistributedSampler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(10, 4), (12, 4), (7, 2), (3, 4)])
def test_distributed_sampler_disjoint_equal_and_padded(n, world):
    ds = list(range(n))
    shares = [list(DistributedSampler(ds, num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    lens = {len(s) for s in shares}
    assert lens == {-(-n // world)}  # equal: every rank runs the same number of batches
    allidx = sorted(i for s in shares for i in s)
    assert set(allidx) == set(range(n))  # everything is seen
    assert len(allidx) - n == -(-n // world) * world - n  # duplicates are the padding only
    if n % world == 0:
        assert len(set(allidx)) == len(allidx)  # disjoint


def test_distributed_sampler_shuffle_epochs_and_drop_last():
    ds = list(range(20))
    s = [DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3) for r in range(2)]
    e0 = [list(x) for x in s]
    assert sorted(e0[0] + e0[1]) == list(range(20))
    assert e0 == [list(x) for x in s]  # same epoch: same order
    for x in s:
        x.set_epoch(1)
    e1 = [list(x) for x in s]
    assert e1 != e0 and sorted(e1[0] + e1[1]) == list(range(20))
    d = [DistributedSampler(list(range(11)), num_replicas=4, rank=r, shuffle=False, drop_last=True) for r in range(4)]
    assert [len(list(x)) for x in d] == [2, 2, 2, 2] and len({i for x in d for i in x}) == 8
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler(ds, num_replicas=2, rank=2)


# ---- under mpirun: the real comm layer --------------------------------------------------------------------
def _has_comm():
    return getattr(dc._C, "Comm", None) is not None and shutil.which("mpirun") is not None


needs_mpi = pytest.mark.skipif(not _has_comm(), reason="needs the comm layer (_C.Comm, built with Open MPI) and mpirun")


def mpi_env():
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), SCRIPTS, env.get("PYTHONPATH", "")]),
    )
    return env


def mpirun(n, *args, timeout=120, cwd=None):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def result_of(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0][len("RESULT ") :])


WORKER = os.path.join(SCRIPTS, "ddp_worker.py")


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_mpi_ddp_equals_the_whole_batch(n):
    r = result_of(mpirun(n, WORKER, "equiv", "4", "4"))
    assert r["world"] == n and r["rel_err"] <= 1e-5 and len(r["buckets"]) > 1


@needs_mpi
def test_mpi_bucket_view_and_no_sync_equal_the_whole_batch():
    assert result_of(mpirun(2, WORKER, "bucket_view", "3", "4"))["rel_err"] <= 1e-5
    assert result_of(mpirun(2, WORKER, "nosync", "3", "2", "3"))["rel_err"] <= 1e-5


@needs_mpi
def test_mpi_unused_and_find_unused():
    r = result_of(mpirun(2, WORKER, "unused"))
    assert "head_b.weight" in r["error"] and "find_unused_parameters=True" in r["error"]
    r = result_of(mpirun(2, WORKER, "find_unused", "3", "4"))
    assert r["head_b_grad_is_none"] and r["rel_err"] <= 1e-5


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_mpi_first_bucket_all_reduce_starts_before_backward_ends(n):
    """The comm layer's started_ns of the pass's first all-reduce precedes the end of the engine's
    backward (the reducer's end-of-backward timestamp, before any wait)."""
    r = result_of(mpirun(n, WORKER, "overlap", "6", timeout=240))
    print(
        f"\noverlap n={n}: first bucket started {r['job_margin_ms']} ms before the last rank's backward ended "
        f"({r['frac_of_backward']} of backward); per rank {r['margin_ms_per_rank']}; buckets {r['buckets']}; "
        f"share of rank 0's all-reduce time hidden behind backward {r['hidden_share_rank0']}"
    )
    assert r["enqueued_before_end"], r  # every rank issues its first bucket during its backward
    assert r["started_before_end"], r  # and it runs while backward is still going on somewhere
    assert len(r["buckets"]) >= 3


class WithBuffer(dc.nn.Module):
    def __init__(self, fill):
        super().__init__()
        dc.manual_seed(0)
        self.lin = dc.nn.Linear(4, 4)
        self.register_buffer("scale", dc.full((4,), float(fill)))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_buffers_come_from_rank_0_and_no_grad_forward_issues_nothing():
    def rank(comm):
        m = WithBuffer(fill=comm.rank + 1)
        ddp = DDP(m, comm=comm)
        at_wrap = m.scale.numpy().copy()
        with dc.no_grad():
            n = len(comm.events())
            if comm.rank == 0:  # a forward on one rank only (nanoGPT's evaluation) must not communicate
                ddp(dc.randn(2, 4))
            silent = len(comm.events()) == n
        ddp(dc.randn(2, 4)).sum().backward()
        return at_wrap, silent

    for at_wrap, silent in run_ranks(2, rank):
        assert at_wrap.tolist() == [1.0] * 4 and silent
