"""The bucketed gradient reducer behind DistributedDataParallel and the "ddp" strategy.

PyTorch's DDP reducer, in Python over `_C.Comm` (the collectives themselves run in C on the
comm's progress thread, so they advance while backward keeps computing):

- Buckets. Parameters are grouped, in REVERSE registration order (the last layers' gradients are
  ready first), into flat buffers: as in torch, a bucket closes once it holds >= 1 MB (the first)
  or >= `bucket_cap_mb` (25 MB, the others). A bucket holds one dtype. After the first backward the buckets are
  rebuilt once, in the order the gradients really became ready (rank 0's order, broadcast, so
  every rank has the same layout), unless find_unused_parameters is on without static_graph.
- Readiness. Each parameter's post-accumulate-grad hook (the engine calls it the moment .grad is
  final in this pass) copies .grad into its slot of the bucket (no copy when the grad already is
  that slot: gradient_as_bucket_view) and counts the bucket down. A full bucket is all-reduced
  at once, asynchronously, with op="avg" (the average is the reduction; no division after).
  Buckets launch strictly in bucket order (bucket i waits for buckets < i), so every rank issues
  the same collectives in the same order whatever order its own gradients arrive in.
- End of backward. The first hook of a pass queues an end-of-backward callback
  (`_tensor._queue_backward_callback`, which Tensor.backward runs when the pass returns). It marks
  parameters that got no gradient: with find_unused_parameters=True their slots are zeros and the
  buckets left launch; an int32 "used" map is all-reduced too, so a parameter no rank used keeps
  .grad None (as torch). With find_unused_parameters=False it raises, naming them. Then it waits
  for what is still in flight (the only wait: inside the caller's `wait` context, the trainer's
  "comm wait") and copies the averages back into .grad (or leaves them in place: bucket views).
- no_sync(): hooks only record use; the gradients accumulate locally and the first backward
  outside the context reduces the accumulated .grad.
- Timestamps (time.monotonic_ns, the comm's clock) of every launch, of each bucket's all-reduce
  (started, finished) and of the end of the backward pass are kept per pass (`last_pass`), with
  `hidden_share`: the share of the all-reduce time that ran before backward ended.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

import dutycycle as dc

from .. import _tensor

MB = 1024 * 1024


class _Bucket:
    """One flat gradient buffer: params[i] lives at flat[offsets[i] : offsets[i] + numel]."""

    def __init__(self, index, idxs, params, device):
        self.index = index
        self.idxs = list(idxs)  # indices into the reducer's parameter list
        self.dtype = params[self.idxs[0]].dtype
        numels = [params[i].numel() for i in self.idxs]
        self.offsets = np.concatenate([[0], np.cumsum(numels)[:-1]]).astype(np.int64).tolist() if numels else []
        self.numel = int(sum(numels))
        self.flat = dc.zeros(self.numel, dtype=self.dtype, device=device)  # (numel,) this bucket's gradients
        self.views = [
            self.flat[o : o + n].view(tuple(params[i].shape)) for i, o, n in zip(self.idxs, self.offsets, numels)
        ]
        self.pending = len(self.idxs)
        self.work = None

    @property
    def nbytes(self):
        return self.numel * self.flat.element_size()


def _plan_buckets(params, order, bucket_cap_bytes, first_bucket_bytes):
    """Lists of parameter indices: `order` cut into buckets the way torch does
    (compute_bucket_assignment_by_size): a parameter joins the open bucket, which closes once it
    holds >= its limit (first_bucket_bytes for the first, bucket_cap_bytes after); one dtype each."""
    out, cur, cur_bytes, cur_dtype = [], [], 0, None
    for i in order:
        p = params[i]
        if cur and p.dtype != cur_dtype:
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += p.numel() * p.element_size()
        cur_dtype = p.dtype
        if cur_bytes >= (first_bucket_bytes if not out else bucket_cap_bytes):
            out.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        out.append(cur)
    return out


class Reducer:
    """Average the gradients of `params` over all ranks of `comm`, bucket by bucket, during backward.

    params: the parameters (requires_grad) in registration order; names: their names (for error
    messages); wait: a callable returning a context manager around every blocking wait (the
    trainer's duty-cycle "comm wait"); None: no timing."""

    def __init__(
        self,
        params,
        comm,
        names=None,
        bucket_cap_mb=25,
        first_bucket_mb=1,
        find_unused_parameters=False,
        gradient_as_bucket_view=False,
        static_graph=False,
        wait=None,
    ):
        seen, ps, ns = set(), [], []
        names = list(names) if names is not None else [f"parameter {i}" for i in range(len(params))]
        for p, n in zip(params, names):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            ps.append(p)
            ns.append(n)
        if not ps:
            raise ValueError("DistributedDataParallel: the module has no parameter that requires a gradient")
        devs = {str(p.device) for p in ps}
        if len(devs) > 1:
            raise ValueError(f"DistributedDataParallel: all parameters must be on one device, got {sorted(devs)}")
        if bucket_cap_mb is None or bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        self.params, self.names = ps, ns
        self.comm = comm
        self.device = ps[0].device
        self.bucket_cap_bytes = int(bucket_cap_mb * MB)
        self.first_bucket_bytes = int(min(first_bucket_mb * MB, self.bucket_cap_bytes))
        self.find_unused_parameters = bool(find_unused_parameters)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.static_graph = bool(static_graph)
        self._wait_ctx = wait if wait is not None else contextlib.nullcontext
        if self.device.type != "cpu" and getattr(comm, "backend", "mpi") == "mpi":
            raise ValueError(
                "DistributedDataParallel: the mpi backend reduces CPU buffers; parameters on "
                f"{self.device} need backend='nccl'"
            )

        self._index = {id(p): i for i, p in enumerate(ps)}
        self._build(list(range(len(ps)))[::-1])
        self._rebuilt = False
        self.sync_enabled = True  # False inside no_sync()
        self._in_pass = False
        self._ready = [False] * len(ps)
        self._used = np.zeros(len(ps), dtype=np.int32)  # used locally since the last reduction
        self._ready_order = []
        self._next = 0
        self.last_pass = {}  # timestamps and sizes of the latest reduced pass
        self.passes = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(ps)]

    # ---- layout ---------------------------------------------------------------------------------
    def _build(self, order):
        plan = _plan_buckets(self.params, order, self.bucket_cap_bytes, self.first_bucket_bytes)
        self.buckets = [_Bucket(k, idxs, self.params, self.device) for k, idxs in enumerate(plan)]
        self._where = [None] * len(self.params)  # param index -> (bucket, slot)
        for b in self.buckets:
            for slot, i in enumerate(b.idxs):
                self._where[i] = (b, slot)

    def bucket_layout(self):
        """[[parameter names of bucket 0], [bucket 1], ...] in launch order."""
        return [[self.names[i] for i in b.idxs] for b in self.buckets]

    def bucket_sizes(self):
        """Bytes of each bucket, in launch order."""
        return [b.nbytes for b in self.buckets]

    def _maybe_rebuild(self):
        """Once, after the first reduced pass: buckets in the order the gradients became ready
        (rank 0's order, so every rank agrees)."""
        if self._rebuilt:
            return
        self._rebuilt = True
        if self.find_unused_parameters and not self.static_graph:
            return  # torch does not rebuild then: the ready order may change from pass to pass
        order = list(self._ready_order)
        order += [i for i in range(len(self.params)) if i not in set(order)]
        arr = np.array(order, dtype=np.int64)
        with self._wait_ctx():
            self.comm.broadcast(arr, root=0)
        order = arr.tolist()
        if order == [i for b in self.buckets for i in b.idxs]:
            return  # the gradients arrive in the initial order: same layout
        old_views = [self._where[i][0].views[self._where[i][1]] for i in range(len(self.params))]
        self._build(order)
        if self.gradient_as_bucket_view:
            with dc.no_grad():
                for i, p in enumerate(self.params):
                    b, slot = self._where[i]
                    if p.grad is not None and p.grad is old_views[i]:
                        b.views[slot].copy_(p.grad)
                        p.grad = b.views[slot]

    # ---- the hooks (run on the backward thread, during backward) ----------------------------------
    def _make_hook(self, i):
        def hook(p):
            self._mark_ready(i, p)

        return hook

    def _begin_pass(self):
        self._in_pass = True
        self._ready = [False] * len(self.params)
        self._ready_order = []
        self._next = 0
        for b in self.buckets:
            b.pending = len(b.idxs)
            b.work = None
        self._launch_ns = []
        self._first_hook_ns = time.monotonic_ns()
        _tensor._queue_backward_callback(self._end_pass)

    def _mark_ready(self, i, p):
        self._used[i] = 1
        if not self.sync_enabled:
            return
        if not self._in_pass:
            self._begin_pass()
        if self._ready[i]:
            return  # a second AccumulateGrad of the same leaf in one pass cannot happen; be safe
        self._ready[i] = True
        self._ready_order.append(i)
        b, slot = self._where[i]
        view = b.views[slot]
        g = p.grad
        if g is not view:
            with dc.no_grad():
                view.copy_(g)  # note: copy of the gradient into the bucket (skipped for bucket views)
            if self.gradient_as_bucket_view:
                p.grad = view
        b.pending -= 1
        if b.pending == 0:
            self._launch_ready()

    def _launch_ready(self):
        """Launch, in bucket order, every bucket that is full and whose predecessors are launched."""
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            b = self.buckets[self._next]
            self._launch_ns.append(time.monotonic_ns())
            b.work = self.comm.all_reduce(b.flat, op="avg", async_op=True)
            self._next += 1

    # ---- end of the backward pass ----------------------------------------------------------------------
    def _end_pass(self, ok=True):
        t_end = time.monotonic_ns()  # the engine is done: what follows is exposed communication
        self._in_pass = False
        if not ok:
            self._drain()
            return
        missing = [i for i, r in enumerate(self._ready) if not r]
        used_map = None
        if missing:
            if not self.find_unused_parameters:
                self._drain()
                raise RuntimeError(
                    "DistributedDataParallel: these parameters received no gradient in this backward pass: "
                    + ", ".join(self.names[i] for i in missing)
                    + ". Every rank must reduce every bucket, so this would hang or reduce wrong buffers. "
                    "Pass find_unused_parameters=True (DistributedDataParallel(..., find_unused_parameters=True) "
                    "or DDPStrategy(find_unused_parameters=True)), or make every parameter take part in the loss."
                )
        if self.find_unused_parameters:
            with dc.no_grad():
                for i in missing:
                    b, slot = self._where[i]
                    g = self.params[i].grad
                    if g is not None and g is not b.views[slot]:
                        b.views[slot].copy_(g)  # accumulated in earlier no_sync micro-batches
                    elif g is None:
                        b.views[slot].zero_()
                    self._ready[i] = True
                    b.pending -= 1
            self._launch_ready()
            used_map = self._used.copy()
            used_work = self.comm.all_reduce(used_map, op="max", async_op=True)
        else:
            used_work = None
        spans = []
        with self._wait_ctx():
            t_wait = time.monotonic_ns()
            for b in self.buckets:
                b.work.wait()
                spans.append((getattr(b.work, "started_ns", 0), getattr(b.work, "finished_ns", 0)))
                b.work = None
            if used_work is not None:
                used_work.wait()
            t_done = time.monotonic_ns()
        with dc.no_grad():
            for i, p in enumerate(self.params):
                b, slot = self._where[i]
                view = b.views[slot]
                if used_map is not None and not used_map[i]:
                    continue  # no rank used it: .grad stays as it was (None after zero_grad)
                if self.gradient_as_bucket_view:
                    if p.grad is not view:
                        p.grad = view
                elif p.grad is None:
                    p.grad = view.clone()
                else:
                    p.grad.copy_(view)  # note: copy of the averaged gradient back into .grad
        self._used[:] = 0
        self.last_pass = {
            "first_hook_ns": self._first_hook_ns,
            "launch_ns": list(self._launch_ns),
            "backward_end_ns": t_end,
            "wait_start_ns": t_wait,
            "wait_end_ns": t_done,
            "buckets": len(self.buckets),
            "bucket_spans_ns": spans,  # (started, finished) of each bucket's all-reduce (comm clock)
            "hidden_share": _hidden_share(spans, t_end),
        }
        self.passes += 1
        self._maybe_rebuild()

    def _drain(self):
        """Wait for whatever this pass launched (a failed pass must leave no collective behind on
        a buffer the next pass reuses); the pass is then dropped."""
        for b in self.buckets:
            if b.work is not None:
                try:
                    b.work.wait()
                finally:
                    b.work = None

    # ---- control -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate .grad locally; the next one outside reduces the sum."""
        prev = self.sync_enabled
        self.sync_enabled = False
        try:
            yield
        finally:
            self.sync_enabled = prev

    def broadcast_parameters(self, module, src=0):
        """Parameters and buffers of module overwritten by rank src's (at start: every rank begins
        from the same weights). One broadcast per tensor, in module order."""
        with dc.no_grad():
            for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
                if t.is_contiguous():
                    self.comm.broadcast(t.detach(), root=src)
                else:
                    buf = t.detach().contiguous()
                    self.comm.broadcast(buf, root=src)
                    t.copy_(buf)

    def remove(self):
        """Unregister the hooks (the module trains alone again)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def _hidden_share(spans, t_end):
    """Share of the time the buckets' all-reduces ran (union of their spans) that lay before the end
    of backward, i.e. was hidden behind compute; None without timestamps."""
    spans = sorted((a, b) for a, b in spans if a and b and b >= a)
    if not spans:
        return None
    busy = hidden = 0
    cur_a, cur_b = spans[0]
    for a, b in spans[1:] + [(None, None)]:
        if a is not None and a <= cur_b:
            cur_b = max(cur_b, b)
            continue
        busy += cur_b - cur_a
        hidden += max(0, min(cur_b, t_end) - cur_a)
        if a is not None:
            cur_a, cur_b = a, b
    return hidden / busy if busy > 0 else None
