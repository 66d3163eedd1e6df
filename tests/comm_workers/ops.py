"""Every collective, sync and async, on NumPy arrays, dutycycle tensors, bytearrays and __dlpack__
objects, every dtype; then the argument errors. Run under mpirun -n N; prints OK <rank> at the end."""

import sys

import numpy as np

import dutycycle as dc
from dutycycle import _C

c = _C.Comm(timeout=60)
r, n = c.rank, c.size
assert 0 <= r < n and n >= 2, (r, n)
assert c.backend == "mpi" and c.hostname and c.local_size == n and 0 <= c.local_rank < n
assert c.hostname_of(r) == c.hostname


class DLOnly:
    """Exposes only __dlpack__ (as a PyTorch tensor does for us)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__()


NP_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_]
DC_DTYPES = [dc.float32, dc.float64, dc.float16, dc.bfloat16, dc.int32, dc.int64, dc.bool_]


def run(fn, *args, async_op=False, **kw):
    if async_op:
        w = fn(*args, async_op=True, **kw)
        assert isinstance(w, _C.Work), w
        w.wait()
        assert w.is_completed() and w.test()
        return w
    assert fn(*args, **kw) is None


def val(k):
    """Rank r's value at element k, small enough for every dtype."""
    return (r + 1) * (k % 3 + 1)


count = 0
for async_op in (False, True):
    # all_reduce on NumPy arrays, every reduction the dtype takes
    for dt in NP_DTYPES:
        k = np.arange(7)
        if dt is np.bool_:
            a = np.array([(r + j) % 2 == 0 for j in range(7)])
            want_or = np.array([any((q + j) % 2 == 0 for q in range(n)) for j in range(7)])
            b = a.copy()
            run(c.all_reduce, b, async_op=async_op)
            assert (b == want_or).all(), (b, want_or)
            b = a.copy()
            run(c.all_reduce, b, op="min", async_op=async_op)
            assert (b == np.array([all((q + j) % 2 == 0 for q in range(n)) for j in range(7)])).all()
            count += 2
            continue
        per = np.array([[(q + 1) * (j % 3 + 1) for j in range(7)] for q in range(n)], dtype=np.float64)
        for op, want in (("sum", per.sum(0)), ("max", per.max(0)), ("min", per.min(0)), ("avg", per.mean(0))):
            if op == "avg" and not np.issubdtype(dt, np.floating):
                continue
            a = np.array([val(j) for j in k], dtype=dt)
            run(c.all_reduce, a, op=op, async_op=async_op)
            assert np.allclose(a.astype(np.float64), want.astype(dt).astype(np.float64), rtol=1e-3), (dt, op, a, want)
            count += 1
    # dutycycle tensors (bfloat16 only exists here)
    for dt in DC_DTYPES:
        if dt is dc.bool_:
            t = dc.tensor([r == 0, False, True])
            run(c.all_reduce, t, async_op=async_op)
            assert t.numpy().tolist() == [True, False, True]
            continue
        t = dc.full((5,), float(r + 1), dtype=dt)
        run(c.all_reduce, t, async_op=async_op)
        assert (t.float().numpy() == n * (n + 1) / 2).all(), (dt, t)
        t = dc.full((2, 3), float(r + 1), dtype=dt)
        run(c.all_reduce, t, op="max", async_op=async_op)
        assert (t.float().numpy() == n).all()
        count += 2
    # a bytearray (uint8) and a __dlpack__-only object
    ba = bytearray([r + 1] * 9)
    run(c.all_reduce, ba, async_op=async_op)
    assert list(ba) == [n * (n + 1) // 2] * 9
    a = np.full(6, r + 1.0, np.float32)
    run(c.all_reduce, DLOnly(a), async_op=async_op)
    assert (a == n * (n + 1) / 2).all(), a
    t = dc.full((4,), float(r + 1))
    run(c.all_reduce, DLOnly(t), async_op=async_op)
    assert (t.numpy() == n * (n + 1) / 2).all()
    # reduce_scatter (sum and avg), numpy and tensors
    for dt in (np.float32, np.float64, np.int64, np.float16):
        send = (np.arange(n * 4) + r).astype(dt)
        recv = np.empty(4, dt)
        run(c.reduce_scatter, send, recv, async_op=async_op)
        want = (np.arange(n * 4).reshape(n, 4)[r] * n + n * (n - 1) // 2).astype(dt)
        assert (recv == want).all(), (dt, recv, want)
    send = dc.full((n * 3,), float(r))
    recv = dc.zeros(3)
    run(c.reduce_scatter, send, recv, op="avg", async_op=async_op)
    assert np.allclose(recv.numpy(), (n - 1) / 2)
    # reduce_scatter whose recv is this rank's slice of send (copied inside)
    buf = np.full(n * 2, r + 1.0, np.float32)
    run(c.reduce_scatter, buf, buf[r * 2 : r * 2 + 2], async_op=async_op)
    assert (buf[r * 2 : r * 2 + 2] == n * (n + 1) / 2).all(), buf
    # all_gather, also in place (send is this rank's slot of recv)
    for dt in (np.float32, np.int32, np.uint8, np.bool_, np.float16):
        send = np.full(3, r % 2 if dt is np.bool_ else r, dt)
        recv = np.zeros(n * 3, dt)
        run(c.all_gather, send, recv, async_op=async_op)
        assert (recv == np.repeat(np.arange(n) % 2 if dt is np.bool_ else np.arange(n), 3).astype(dt)).all(), recv
    g = np.zeros(n * 2, np.float64)
    g[r * 2 : r * 2 + 2] = r + 0.5
    run(c.all_gather, g[r * 2 : r * 2 + 2], g, async_op=async_op)
    assert (g == np.repeat(np.arange(n) + 0.5, 2)).all(), g
    gt = dc.zeros(n * 2, dtype=dc.bfloat16)
    run(c.all_gather, dc.full((2,), float(r), dtype=dc.bfloat16), gt, async_op=async_op)
    assert gt.float().numpy().tolist() == np.repeat(np.arange(n), 2).tolist()
    # broadcast from every root
    for root in range(n):
        b = np.full(5, r * 10, np.int64)
        run(c.broadcast, b, root=root, async_op=async_op)
        assert (b == root * 10).all(), (root, b)
    t = dc.full((3,), float(r), dtype=dc.float64)
    run(c.broadcast, t, root=n - 1, async_op=async_op)
    assert (t.numpy() == n - 1).all()
    run(c.barrier, async_op=async_op)
    # send/recv in a ring (all sends and receives are posted at once: no deadlock)
    out = np.full(4, r, np.int32)
    inn = np.empty(4, np.int32)
    ws = c.send(out, (r + 1) % n, tag=5, async_op=True)
    run(c.recv, inn, (r - 1) % n, tag=5, async_op=async_op)
    ws.wait()
    assert (inn == (r - 1) % n).all(), inn
    count += 10

# several async collectives in flight at once, waited in reverse order
bufs = [np.full(1000 * (k + 1), r + 1.0, np.float32) for k in range(6)]
works = [c.all_reduce(b, async_op=True) for b in bufs]
assert [w.seq for w in works] == sorted(w.seq for w in works)
for w in reversed(works):
    w.wait()
for b in bufs:
    assert (b == n * (n + 1) / 2).all()
# a Work keeps its buffer alive: drop our reference before waiting
w = c.all_reduce(np.full(100000, 1.0, np.float32), async_op=True)
import gc  # noqa: E402

gc.collect()
w.wait()
# a dropped Work still runs to the end
c.all_reduce(np.ones(10, np.float32), async_op=True)

# --- argument errors: clear exceptions, raised before anything is sent (so every rank agrees) ---
def expect(exc, words, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc as e:
        msg = str(e)
        for wd in words:
            assert wd in msg, (wd, msg)
        return
    raise AssertionError(f"{fn.__name__}{a} did not raise {exc.__name__}")


f32 = np.zeros(4, np.float32)
expect(ValueError, ["reduce_scatter", "send", "world size"], c.reduce_scatter, np.zeros(5, np.float32), f32)
expect(ValueError, ["all_gather", "recv", "world size"], c.all_gather, f32, np.zeros(4 * n + 1, np.float32))
expect(TypeError, ["reduce_scatter", "float64", "float32"], c.reduce_scatter, np.zeros(4 * n), f32)
expect(TypeError, ["all_gather", "int32"], c.all_gather, f32, np.zeros(4 * n, np.int32))
expect(ValueError, ["all_reduce", "buf", "contiguous"], c.all_reduce, np.zeros(8, np.float32)[::2])
expect(ValueError, ["all_reduce", "buf", "contiguous"], c.all_reduce, dc.zeros(3, 4).t())
expect(ValueError, ["all_reduce", "writable"], c.all_reduce, b"abcd")
expect(TypeError, ["all_reduce", "buf", "list"], c.all_reduce, [1.0, 2.0])
expect(TypeError, ["all_reduce", "unsupported dtype"], c.all_reduce, np.zeros(3, np.complex64))
expect(ValueError, ["all_reduce", "op", "'prod'"], c.all_reduce, f32, op="prod")
expect(TypeError, ["avg", "floating-point", "int64"], c.all_reduce, np.zeros(3, np.int64), op="avg")
expect(ValueError, ["broadcast", "root", str(n)], c.broadcast, f32, root=n)
expect(ValueError, ["send", "dst"], c.send, f32, -1)
expect(ValueError, ["recv", "src"], c.recv, f32, n)
expect(ValueError, ["tag"], c.send, f32, 0, tag=1 << 20)
expect(ValueError, ["timeout"], _C.Comm, timeout=-1)
expect(ValueError, ["unknown communication backend", "foo"], _C.Comm, backend="foo")
try:
    c.timeout = 0
    raise AssertionError("timeout 0 accepted")
except ValueError:
    pass
c.timeout = 33.0
assert c.timeout == 33.0
# the comm still works after all that
a = np.ones(3, np.float32)
c.all_reduce(a)
assert (a == n).all()

ev = c.events()
assert ev and all(e["started_ns"] >= e["enqueued_ns"] and e["finished_ns"] >= e["started_ns"] for e in ev)
assert {e["op"] for e in ev} >= {"all_reduce", "reduce_scatter", "all_gather", "broadcast", "barrier", "send", "recv"}
st = c.stats()
assert st["ops"] >= count and st["bytes"] > 0 and st["desync_checks"] > 0 and st["pending"] >= 0, st
assert c.events(clear=True) and c.events() == []
c.close()
c.close()  # idempotent
assert c.closed
expect(dc.DistributedError, ["closed"], c.all_reduce, a)
from _say import say  # noqa: E402

say("OK", r, "")
sys.exit(0)
