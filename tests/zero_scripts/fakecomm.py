"""ThreadComm: N in-process "ranks" (threads) behind `_C.Comm`'s interface, for testing the ZeRO
and parameter-server bookkeeping without MPI. Collectives are matched by per-rank sequence number
and completed (with NumPy, in float64 for sums) by the last rank to issue them; send/recv go
through per-(src, dst, tag) queues. Asynchronous ops never block when issued, so they may be
issued from inside a backward pass (which runs one thread at a time)."""

import queue
import threading

import numpy as np


class _Work:
    def __init__(self, op, seq):
        self.op, self.seq = op, seq
        self._done = threading.Event()

    def wait(self, timeout=None):
        if not self._done.wait(30 if timeout is None else timeout):
            raise TimeoutError(f"ThreadComm: {self.op} #{self.seq} never completed")

    def test(self):
        return self._done.is_set()

    is_completed = test


class _World:
    def __init__(self, size):
        self.size = size
        self.lock = threading.Lock()
        self.pending = {}  # seq -> {rank: (op, args, work)}
        self.queues = {}
        self.ops = []  # (rank, op, nbytes) as issued, for tests that count traffic

    def queue(self, src, dst, tag):
        with self.lock:
            return self.queues.setdefault((src, dst, tag), queue.Queue())


def _arr(t):
    return t if isinstance(t, np.ndarray) else t.numpy()


class ThreadComm:
    def __init__(self, world, rank):
        self.world, self.rank, self.size = world, rank, world.size
        self.local_rank, self.local_size, self.backend = rank, world.size, "threads"
        self._seq = 0

    @staticmethod
    def make(size):
        w = _World(size)
        return [ThreadComm(w, r) for r in range(size)]

    def _issue(self, op, args, async_op):
        self._seq += 1
        work = _Work(op, self._seq)
        w = self.world
        with w.lock:
            w.ops.append((self.rank, op, sum(_arr(a).nbytes for a in args if hasattr(a, "shape"))))
            slot = w.pending.setdefault(self._seq, {})
            slot[self.rank] = (op, args, work)
            complete = len(slot) == self.size
            if complete:
                del w.pending[self._seq]
        if complete:
            self._complete(slot)
        if not async_op:
            work.wait()
            return None
        return work

    def _complete(self, slot):
        ops = {v[0] for v in slot.values()}
        if len(ops) != 1:
            raise RuntimeError(f"ThreadComm desync: {sorted(ops)}")
        op = ops.pop()
        n = self.size
        ranks = range(n)
        if op.startswith("all_reduce"):
            red = op.split(":")[1]
            data = np.stack([_arr(slot[r][1][0]).astype(np.float64) for r in ranks])
            res = {"sum": data.sum(0), "avg": data.sum(0) / n, "max": data.max(0), "min": data.min(0)}[red]
            for r in ranks:
                a = _arr(slot[r][1][0])
                a[...] = res.astype(a.dtype)
        elif op.startswith("reduce_scatter"):
            red = op.split(":")[1]
            total = sum(_arr(slot[r][1][0]).astype(np.float64) for r in ranks)
            if red == "avg":
                total = total / n
            for r in ranks:
                recv = _arr(slot[r][1][1])
                k = recv.size
                recv[...] = total.reshape(-1)[r * k : (r + 1) * k].reshape(recv.shape).astype(recv.dtype)
        elif op == "all_gather":
            parts = [_arr(slot[r][1][0]).reshape(-1).copy() for r in ranks]
            for r in ranks:
                recv = _arr(slot[r][1][1])
                recv.reshape(-1)[...] = np.concatenate(parts)
        elif op.startswith("broadcast"):
            root = int(op.split(":")[1])
            src = _arr(slot[root][1][0]).copy()
            for r in ranks:
                _arr(slot[r][1][0])[...] = src
        elif op == "barrier":
            pass
        for v in slot.values():
            v[2]._done.set()

    # ---- _C.Comm's interface ----------------------------------------------------------------------
    def all_reduce(self, buf, op="sum", async_op=False):
        return self._issue(f"all_reduce:{op}", (buf,), async_op)

    def reduce_scatter(self, send, recv, op="sum", async_op=False):
        if _arr(send).nbytes != self.size * _arr(recv).nbytes:
            raise ValueError("reduce_scatter: send.nbytes must be size * recv.nbytes")
        return self._issue(f"reduce_scatter:{op}", (send, recv), async_op)

    def all_gather(self, send, recv, async_op=False):
        if _arr(recv).nbytes != self.size * _arr(send).nbytes:
            raise ValueError("all_gather: recv.nbytes must be size * send.nbytes")
        return self._issue("all_gather", (send, recv), async_op)

    def broadcast(self, buf, root=0, async_op=False):
        return self._issue(f"broadcast:{root}", (buf,), async_op)

    def barrier(self, async_op=False):
        return self._issue("barrier", (), async_op)

    def send(self, buf, dst, tag=0):
        a = _arr(buf)
        with self.world.lock:
            self.world.ops.append((self.rank, f"send->{dst}", a.nbytes))
        self.world.queue(self.rank, dst, tag).put(a.copy())

    def recv(self, buf, src, tag=0):
        a = _arr(buf)
        data = self.world.queue(src, self.rank, tag).get(timeout=30)
        if data.nbytes != a.nbytes:
            raise ValueError(f"recv: expected {a.nbytes} bytes from rank {src}, got {data.nbytes}")
        a.reshape(-1)[...] = data.reshape(-1)


def run_ranks(size, fn, comms=None):
    """fn(comm) on `size` threads (comms: ThreadComm.make(size) unless given); returns the results
    in rank order, re-raising the first error."""
    comms = comms or ThreadComm.make(size)
    out, errs = [None] * size, [None] * size

    def body(r):
        try:
            out[r] = fn(comms[r])
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errs[r] = e

    ts = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    for e in errs:
        if e is not None:
            raise e
    return out
