"""A world of N ranks as N threads of one process, with `_C.Comm`'s Python interface (the subset
the reducer and the strategies use): all_reduce / broadcast / all_gather / barrier, sync or async,
and events() with monotonic timestamps. Collectives complete when every rank has issued the same
sequence number; issuing different ops at one sequence number raises (a desync).

It lets the reducer's logic (bucket order, no_sync, unused parameters, rebuilds) be tested in one
process, without MPI. The real comm is tested under mpirun (test_ddp.py's MPI cases)."""

from __future__ import annotations

import threading
import time

import numpy as np


def _np(buf):
    if hasattr(buf, "numpy"):
        return buf.numpy()
    return np.asarray(buf)


class _World:
    def __init__(self, size):
        self.size = size
        self.cv = threading.Condition()
        self.pending = {}  # seq -> {"op", "arrs": {rank: array}, "done": bool, ...}


class _Work:
    def __init__(self, world, seq, event):
        self._world, self.seq, self._event = world, seq, event

    def wait(self, timeout=None):
        w = self._world
        with w.cv:
            ok = w.cv.wait_for(lambda: w.pending[self.seq]["done"] or w.pending[self.seq].get("error"), 30.0)
            if not ok:
                raise TimeoutError(f"thread_comm: collective #{self.seq} did not complete")
            if w.pending[self.seq].get("error"):
                raise RuntimeError(w.pending[self.seq]["error"])

    def test(self):
        with self._world.cv:
            return self._world.pending[self.seq]["done"]

    is_completed = test


class ThreadComm:
    backend = "mpi"

    def __init__(self, world, rank, delay_s=0.0):
        self._w, self.rank, self.size = world, rank, world.size
        self.local_rank, self.local_size, self.hostname = rank, world.size, "localhost"
        self.timeout = 30.0
        self._seq = 0
        self._events = []
        self.delay_s = delay_s

    def _issue(self, op, arr, finish, async_op, **info):
        seq = self._seq
        self._seq += 1
        ev = {
            "seq": seq,
            "op": op,
            "nbytes": int(getattr(arr, "nbytes", 0)),
            "enqueued_ns": time.monotonic_ns(),
            "started_ns": 0,
            "finished_ns": 0,
        }
        self._events.append(ev)
        w = self._w
        with w.cv:
            slot = w.pending.setdefault(seq, {"op": op, "arrs": {}, "done": False, "info": info})
            if slot["op"] != op or slot["info"] != info:
                slot["error"] = f"desync at #{seq}: {op}{info} vs {slot['op']}{slot['info']}"
                w.cv.notify_all()
                raise RuntimeError(slot["error"])
            slot["arrs"][self.rank] = arr
            ev["started_ns"] = time.monotonic_ns()
            if len(slot["arrs"]) == w.size:
                if self.delay_s:
                    time.sleep(self.delay_s)
                finish([slot["arrs"][r] for r in range(w.size)])
                slot["done"] = True
                w.cv.notify_all()
        work = _Work(w, seq, ev)

        def done_hook():
            ev["finished_ns"] = time.monotonic_ns()

        if async_op:
            orig = work.wait

            def wait(timeout=None):
                orig(timeout)
                done_hook()

            work.wait = wait
            return work
        work.wait()
        done_hook()
        return None

    def all_reduce(self, buf, op="sum", async_op=False):
        arr = _np(buf)

        def finish(arrs):
            stack = np.stack([a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrs])
            r = {"sum": stack.sum(0), "avg": stack.sum(0) / len(arrs), "max": stack.max(0), "min": stack.min(0)}[op]
            for a in arrs:
                a[...] = r.astype(a.dtype)

        return self._issue("all_reduce", arr, finish, async_op, count=arr.size, dtype=str(arr.dtype), rop=op)

    def broadcast(self, buf, root=0, async_op=False):
        arr = _np(buf)

        def finish(arrs):
            for a in arrs:
                a[...] = arrs[root]

        return self._issue("broadcast", arr, finish, async_op, count=arr.size, root=root)

    def all_gather(self, send, recv, async_op=False):
        s, r = _np(send), _np(recv)
        pair = (s, r)

        def finish(pairs):
            cat = np.concatenate([p[0].reshape(-1) for p in pairs])
            for p in pairs:
                p[1].reshape(-1)[...] = cat

        return self._issue("all_gather", pair, finish, async_op, count=s.size)

    def barrier(self, async_op=False):
        return self._issue("barrier", None, lambda arrs: None, async_op)

    def events(self, clear=False):
        out = [dict(e) for e in self._events]
        if clear:
            self._events = []
        return out


def run_ranks(n, fn, delay_s=0.0):
    """fn(comm) on n threads (one per rank); returns the results in rank order, re-raises the first error."""
    world = _World(n)
    comms = [ThreadComm(world, r, delay_s) for r in range(n)]
    out, errs = [None] * n, [None] * n

    def run(r):
        try:
            out[r] = fn(comms[r])
        except BaseException as e:  # noqa: B036 - handed to the caller
            errs[r] = e
            with world.cv:
                for slot in world.pending.values():
                    slot.setdefault("error", f"rank {r} failed: {e}")
                world.cv.notify_all()

    ts = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for e in errs:
        if e is not None:
            raise e
    return out
