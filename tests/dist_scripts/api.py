"""The plain-loop API under a real job (mpirun -n 2 / 4): every collective on dutycycle tensors and
NumPy arrays (and PyTorch tensors when torch is importable), the rank queries, and the errors for
bad input and for use before init_process_group. Checks assert here; rank 0 prints one JSON line
with the values the test compares."""

import json
import threading

import numpy as np

import dutycycle as torch
import dutycycle.distributed as dist


def raises(exc, fn, *args, match=None, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        if match is not None:
            assert match in str(e), (match, str(e))
        return str(e)
    raise AssertionError(f"{fn.__name__}{args} did not raise {exc.__name__}")


if __name__ == "__main__":
    # ---- before init
    assert not dist.is_initialized()
    raises(RuntimeError, dist.get_rank, match="init_process_group")
    raises(ValueError, dist.all_reduce, np.zeros(2), match="has not been initialized")
    raises(dist.NotInitializedError, dist.barrier)
    env = dist.launcher_env()
    raises(ValueError, dist.init_process_group, "mpi", world_size=env["world_size"] + 1, match="launcher started")
    raises(ValueError, dist.init_process_group, "mpi", rank=(env["rank"] + 1) % env["world_size"], match="rank")
    raises(ValueError, dist.init_process_group, "smoke-signals", match="unknown backend")

    # ---- init
    dist.init_process_group(backend="mpi", init_method="env://")
    raises(RuntimeError, dist.init_process_group, match="twice")
    rank, n = dist.get_rank(), dist.get_world_size()
    assert (rank, n) == (env["rank"], env["world_size"]) and dist.is_initialized()
    assert dist.get_local_rank() == env["local_rank"] and dist.get_local_world_size() == env["local_world_size"]
    assert dist.get_backend() == "mpi" and dist.rank_zero_only.rank == rank
    tri = n * (n + 1) / 2
    out = {}

    # ---- all_reduce: every op, dutycycle tensors (contiguous or not) and NumPy arrays
    for op, want in [(dist.ReduceOp.SUM, tri), ("sum", tri), (dist.ReduceOp.AVG, tri / n), ("mean", tri / n),
                     (dist.ReduceOp.MAX, n), (dist.ReduceOp.MIN, 1), ("MAX", n)]:
        for dt in (torch.float32, torch.float64):
            t = torch.ones(3, 4, dtype=dt) * (rank + 1)
            assert dist.all_reduce(t, op=op) is None
            assert np.allclose(t.numpy(), want), (op, dt, t.tolist())
        a = np.full((2, 5), rank + 1.0)
        dist.all_reduce(a, op=op)
        assert np.allclose(a, want), (op, a)
    i = np.full(4, rank + 1, dtype=np.int64)
    dist.all_reduce(i)
    assert i.tolist() == [int(tri)] * 4
    ti = torch.full((3,), rank + 1, dtype=torch.int32)
    dist.all_reduce(ti, op="max")
    assert ti.tolist() == [n] * 3
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (rank + 1)
    view = base.t()  # non-contiguous: reduced through a contiguous copy, written back in place
    dist.all_reduce(view)
    assert np.allclose(base.numpy(), np.arange(12).reshape(3, 4) * tri)
    na = (np.arange(12.0).reshape(3, 4) * (rank + 1))[:, ::2]
    dist.all_reduce(na)
    assert np.allclose(na, np.arange(12.0).reshape(3, 4)[:, ::2] * tri)
    out["sum"] = base.tolist()

    # ---- bad input
    raises(ValueError, dist.all_reduce, np.zeros(2), op="product", match="unsupported reduce op")
    raises(TypeError, dist.all_reduce, [1.0, 2.0], match="NumPy array")
    raises(NotImplementedError, dist.all_reduce, np.zeros(2), group=object())
    raises(ValueError, dist.broadcast, np.zeros(2), src=n, match="outside world size")
    raises(ValueError, dist.all_gather, [np.zeros(2)] * (n + 1), np.zeros(2), match=f"world_size={n}")
    raises(ValueError, dist.all_gather, [np.zeros(3)] * n, np.zeros(2), match="tensor_list[0]")
    raises((ValueError, TypeError), dist.all_gather_into_tensor, np.zeros(2 * n + 1), np.zeros(2))
    raises((ValueError, TypeError), dist.reduce_scatter_tensor, np.zeros(2), np.zeros(2 * n + 1))
    raises((ValueError, TypeError), dist.all_gather_into_tensor, np.zeros(2 * n, np.float32), np.zeros(2))
    ro = np.zeros(3)
    ro.flags.writeable = False
    raises((ValueError, TypeError, BufferError), dist.all_reduce, ro)

    # ---- broadcast from every rank
    for src in range(n):
        t = torch.full((5,), float(rank))
        dist.broadcast(t, src=src)
        assert t.tolist() == [float(src)] * 5
    out["bcast"] = t.tolist()

    # ---- gathers and reduce_scatter
    got = [torch.zeros(2, 2) for _ in range(n)]
    dist.all_gather(got, torch.full((2, 2), float(rank)))
    assert [g.tolist() for g in got] == [[[float(r)] * 2] * 2 for r in range(n)]
    got_np = [np.zeros(3, np.int32) for _ in range(n)]
    dist.all_gather(got_np, np.arange(3, dtype=np.int32) + 10 * rank)
    assert [g.tolist() for g in got_np] == [[10 * r, 10 * r + 1, 10 * r + 2] for r in range(n)]
    flat = torch.zeros(n * 3)
    dist.all_gather_into_tensor(flat, torch.full((3,), float(rank)))
    assert flat.tolist() == [float(r) for r in range(n) for _ in range(3)]
    out["gathered"] = flat.tolist()
    rs_in = torch.arange(n * 2, dtype=torch.float64) + rank  # chunk r of the sum lands on rank r
    rs_out = torch.zeros(2, dtype=torch.float64)
    dist.reduce_scatter_tensor(rs_out, rs_in)
    assert rs_out.tolist() == [n * (2 * rank + k) + n * (n - 1) / 2 for k in range(2)], rs_out.tolist()
    rs_avg = np.zeros(2)
    dist.reduce_scatter_tensor(rs_avg, np.arange(n * 2, dtype=np.float64) * (rank + 1), op=dist.ReduceOp.AVG)
    assert np.allclose(rs_avg, np.arange(2 * rank, 2 * rank + 2) * tri / n)
    red = np.full(2, rank + 1.0)
    dist.reduce(red, dst=0)
    if rank == 0:
        assert red.tolist() == [tri, tri]

    # ---- async handles
    bufs = [torch.full((1000,), float(rank + k)) for k in range(3)]
    works = [dist.all_reduce(b, async_op=True) for b in bufs]
    assert all(isinstance(w, dist.Work) for w in works)
    assert all(w.wait() is True for w in works)
    assert all(w.is_completed() for w in works)
    assert [b[0].item() for b in bufs] == [tri - n + n * k for k in range(3)]
    nc = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    w = dist.all_reduce(nc.t(), async_op=True)  # the copy back happens at wait()
    w.wait()
    assert nc.tolist() == (np.arange(8.0).reshape(2, 4) * n).tolist()
    bw = dist.barrier(async_op=True)
    bw.wait()
    dist.barrier()

    # ---- point to point: a ring
    right, left = (rank + 1) % n, (rank - 1) % n
    msg = np.full(4, float(rank))
    recv = np.zeros(4)
    if rank % 2 == 0:
        dist.send(msg, right, tag=7)
        dist.recv(recv, left, tag=7)
    else:
        dist.recv(recv, left, tag=7)
        dist.send(msg, right, tag=7)
    assert recv.tolist() == [float(left)] * 4
    raises(ValueError, dist.send, msg, rank)

    # ---- Python objects
    objs = [{"seed": 1234 + rank}, "x"] if rank == n - 1 else [None, None]
    dist.broadcast_object_list(objs, src=n - 1)
    assert objs == [{"seed": 1234 + n - 1}, "x"]
    everyone = [None] * n
    dist.all_gather_object(everyone, {"rank": rank, "pad": "y" * rank})
    assert everyone == [{"rank": r, "pad": "y" * r} for r in range(n)]

    # ---- rank-zero helpers
    calls = []
    ret = dist.rank_zero_only(lambda: calls.append(rank) or "ran", default="skipped")()
    assert ret == ("ran" if rank == 0 else "skipped") and calls == ([0] if rank == 0 else [])

    # ---- collectives from a second thread (the progress thread keeps issue order per process)
    res = {}

    def worker():
        t = np.ones(3)
        dist.all_reduce(t)
        res["v"] = t.tolist()

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert res["v"] == [float(n)] * 3

    # ---- PyTorch tensors through DLPack (when torch is installed)
    try:
        import torch as real_torch
    except ImportError:
        out["torch"] = "skipped"
    else:
        tt = real_torch.full((4,), float(rank + 1))
        dist.all_reduce(tt)
        assert tt.tolist() == [tri] * 4
        lst = [real_torch.zeros(2) for _ in range(n)]
        dist.all_gather(lst, real_torch.full((2,), float(rank)))
        assert [x.tolist() for x in lst] == [[float(r)] * 2 for r in range(n)]
        out["torch"] = tt.tolist()

    # ---- destroy
    dist.destroy_process_group()
    assert not dist.is_initialized()
    raises(RuntimeError, dist.get_world_size)
    out.update(rank=rank, world=n, ok=True)
    print(json.dumps(out), flush=True)
