"""ZeRO stages 1 and 2 (DeepSpeed's; Rajbhandari et al., 2020): data parallelism that shards the
optimizer state (stage 1) and also the gradients (stage 2) across the N ranks instead of keeping
a full copy on every rank, as ddp does. Parameters stay replicated (that would be stage 3).

The layout (ShardLayout, plain bookkeeping on parameter sizes, testable without MPI): every
trainable parameter becomes a view of one flat buffer, made in `setup`, before the first forward
(a parameter turned into a view after a forward saved it fails autograd's version check). The flat
buffer is cut into buckets in reverse parameter order (the order backward produces gradients; the
first bucket small so communication starts early); each bucket is padded to a multiple of N and
split into N equal chunks, and rank r owns chunk r of every bucket. A rank's shard is its chunks
end to end: any parameter count works and every rank's shard has the same size.

    flat buffer (padded):   | bucket 0: c0 c1 .. cN-1 | bucket 1: c0 c1 .. cN-1 | ...
    shard of rank r:        [bucket 0 chunk r][bucket 1 chunk r]...

One optimizer step (ZeroEngine):

    stage 1: backward accumulates into views of a flat gradient buffer (full gradients, as ddp);
             a post-accumulate-grad hook counts each bucket's final gradients and a full bucket
             is reduce-scattered (avg) into this rank's gradient shard while backward continues;
             with gradient accumulation only the last micro-batch communicates
    stage 2: a post-accumulate-grad hook copies each gradient into its bucket's buffer and frees
             it; a full bucket is reduce-scattered (avg) at once while backward continues, buckets
             in index order on every rank; the rank keeps only its shard (accumulated over
             micro-batches) and at most `max_inflight` bucket buffers
    both:    (gradient clipping on the shards: the norm from every rank's shard, padding
             excluded, one scalar all_reduce), then the fused AdamW (_C.adamw_step) on this rank's
             pieces of each parameter group, skipping parameters that got no gradient on any rank
             this step (one small all_reduce(max) of a per-parameter flag; step counts are per
             parameter, as torch's), then all_gather of the updated chunks, bucket by bucket, into
             the flat parameter buffer

Checkpoints: every rank writes its own shard file (dutycycle.checkpoint): rank 0 the model (every
rank holds it) and its slices of AdamW's exp_avg / exp_avg_sq, rank r > 0 its slices only; the
manifest names each parameter's state `optimizer/0/state/<i>/exp_avg` with the slices of its
flattened elements that each file holds. Nothing is gathered to save. A resumed fit at any world
size (ddp, zeroN at another N, one process) reads the slices it needs: a zero rank only the parts
that overlap its new shard. Checkpoints of earlier versions (consolidated state) load too.
"""

from __future__ import annotations

import collections
import contextlib

import dutycycle as dc

from .parallel import ParallelStrategy

MB = 1 << 20

Piece = collections.namedtuple("Piece", "param lo hi flat_lo shard_lo")
Piece.__doc__ = """Elements [lo, hi) of parameter `param` (flattened), at flat_lo in the flat buffer
and at shard_lo in the owning rank's shard."""


class Bucket:
    """A run of parameters, contiguous in the flat buffer, reduced (and gathered) together."""

    __slots__ = ("index", "offset", "numel", "padded", "chunk", "shard_offset", "params")

    def __init__(self, index, offset, numel, padded, chunk, shard_offset, params):
        self.index = index  # position in launch order
        self.offset = offset  # first element in the flat buffer
        self.numel = numel  # parameter elements in it
        self.padded = padded  # numel rounded up to a multiple of the world size
        self.chunk = chunk  # padded // world_size: what each rank owns
        self.shard_offset = shard_offset  # where this bucket's chunk starts in a rank's shard
        self.params = params  # parameter indices, in flat order

    def __repr__(self):
        return (
            f"Bucket({self.index}, offset={self.offset}, numel={self.numel}, padded={self.padded}, "
            f"chunk={self.chunk}, params={self.params})"
        )


class ShardLayout:
    """Where each parameter lives in the flat buffer and which rank owns which elements.

    numels: element count of each parameter, in model order. Buckets are filled in reverse order
    (backward's order) until they hold at least `bucket_numel` elements (`first_bucket_numel` for
    the first one); a parameter never straddles two buckets."""

    def __init__(self, numels, world_size, bucket_numel=25 * MB // 4, first_bucket_numel=MB // 4):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if bucket_numel < 1 or first_bucket_numel < 1:
            raise ValueError(f"bucket sizes must be >= 1 element, got {first_bucket_numel}, {bucket_numel}")
        self.numels = [int(n) for n in numels]
        self.world_size = N = int(world_size)
        self.param_offset = [0] * len(self.numels)
        self.param_bucket = [0] * len(self.numels)
        self.buckets = []
        offset = shard_offset = 0
        pending, size = [], 0

        def close():
            nonlocal offset, shard_offset, pending, size
            padded = -(-size // N) * N
            b = Bucket(len(self.buckets), offset, size, padded, padded // N, shard_offset, pending)
            pos = offset
            for i in pending:
                self.param_offset[i], self.param_bucket[i] = pos, b.index
                pos += self.numels[i]
            self.buckets.append(b)
            offset += padded
            shard_offset += b.chunk
            pending, size = [], 0

        for i in reversed(range(len(self.numels))):
            pending.append(i)
            size += self.numels[i]
            if size >= (first_bucket_numel if not self.buckets else bucket_numel):
                close()
        if pending or not self.buckets:
            close()
        self.total = offset  # elements of the flat buffer, padding included
        self.shard_numel = shard_offset  # elements of every rank's shard
        self.num_params = sum(self.numels)

    def chunk_range(self, bucket, rank):
        """[lo, hi) in the flat buffer of the chunk of `bucket` that `rank` owns."""
        b = self.buckets[bucket] if isinstance(bucket, int) else bucket
        lo = b.offset + rank * b.chunk
        return lo, lo + b.chunk

    def pieces(self, rank):
        """The parameter slices that `rank` owns, in flat order (one per parameter and chunk)."""
        out = []
        for b in self.buckets:
            lo, hi = self.chunk_range(b, rank)
            for i in b.params:
                p_lo = max(lo, self.param_offset[i])
                p_hi = min(hi, self.param_offset[i] + self.numels[i])
                if p_lo < p_hi:
                    off = self.param_offset[i]
                    out.append(Piece(i, p_lo - off, p_hi - off, p_lo, b.shard_offset + p_lo - lo))
        return out

    def owner(self, flat_index):
        """The rank that owns element `flat_index` of the flat buffer."""
        for b in self.buckets:
            if b.offset <= flat_index < b.offset + b.padded:
                return (flat_index - b.offset) // b.chunk
        raise IndexError(f"flat index {flat_index} is outside the flat buffer of {self.total} elements")

    def __repr__(self):
        return (
            f"ShardLayout({len(self.numels)} params, {self.num_params} elements, world_size={self.world_size}, "
            f"{len(self.buckets)} buckets, total={self.total}, shard={self.shard_numel})"
        )


def _nbytes(t):
    return 0 if t is None else t.numel() * t.element_size()


def check_params(params, names, who):
    """The trainable parameters as a list: at least one, unique, floating point, one dtype and device."""
    params = list(params)
    if not params:
        raise ValueError(f"{who} needs at least one trainable parameter")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{who} got the same parameter twice (tied weights must be passed once)")
    dtype, device = params[0].dtype, params[0].device
    for k, p in enumerate(params):
        name = repr(names[k]) if names else f"#{k}"
        if p.dtype != dtype or p.device != device:
            raise TypeError(
                f"{who} keeps one flat buffer: every trainable parameter must have one dtype and device, but "
                f"{name} is {p.dtype} on {p.device} and the first is {dtype} on {device}"
            )
        if not p.dtype.is_floating_point:
            raise TypeError(f"{who}: parameter {name} is {p.dtype}, not floating point")
    return params


class FlatBuffers:
    """Parameters as views of one flat buffer laid out by a ShardLayout, and optionally a flat
    gradient buffer that each .grad views (backward then accumulates straight into it, as ddp's
    gradient_as_bucket_view). Shared by ZeRO and the parameter server."""

    def __init__(self, params, layout, names=None, grads=True):
        self.params, self.layout, self.names = params, layout, names
        p0 = params[0]
        itemsize = p0.element_size()
        self.param = dc.zeros(layout.total, dtype=p0.dtype, device=p0.device)  # (total,) padded
        with dc.no_grad():
            for i, p in enumerate(params):
                v = self.view(self.param, i)
                v.copy_(p.detach())  # note: copy of the parameter into the flat buffer, once
                p.data = v
        base = self.param.data_ptr()
        self._param_ptr = [base + layout.param_offset[i] * itemsize for i in range(len(params))]
        self.grad = dc.zeros(layout.total, dtype=p0.dtype, device=p0.device) if grads else None  # (total,)
        if grads:
            base = self.grad.data_ptr()
            self._grad_ptr = [base + layout.param_offset[i] * itemsize for i in range(len(params))]

    def view(self, flat, i):
        """Parameter i's place in `flat` (any buffer with this layout), shaped like the parameter."""
        off, n = self.layout.param_offset[i], self.layout.numels[i]
        return flat[off : off + n].view(self.params[i].shape)

    def check_views(self):
        """Raise if a parameter stopped being a view of the flat buffer (`p.data = x`, `module.to()`)."""
        for i, p in enumerate(self.params):
            if p.numel() and p.data_ptr() != self._param_ptr[i]:
                name = repr(self.names[i]) if self.names else f"#{i}"
                raise RuntimeError(
                    f"parameter {name} is no longer a view of the strategy's flat parameter buffer (was its .data "
                    "replaced, or the module moved, after setup?); copy new values in place instead "
                    "(param.copy_(x) under no_grad)"
                )

    def attach_grads(self):
        """Before a backward: every .grad a view of the flat gradient buffer, so backward
        accumulates there. A missing .grad gets a zeroed view; one the user made is copied in."""
        self.check_views()
        params = self.params
        missing, foreign = [], []
        for i, p in enumerate(params):
            g = p.grad
            if g is None:
                missing.append(i)
            elif g.data_ptr() != self._grad_ptr[i] or g.shape != p.shape:
                foreign.append(i)
        with dc.no_grad():
            if len(missing) == len(params):
                self.grad.zero_()  # one fill instead of one per parameter (padding stays zero)
            for i in missing:
                v = self.view(self.grad, i)
                if len(missing) != len(params):
                    v.zero_()
                params[i].grad = v
            for i in foreign:  # note: copy of a gradient the user set into the flat buffer
                v = self.view(self.grad, i)
                v.copy_(params[i].grad)
                params[i].grad = v


class ZeroEngine:
    """The sharded data-parallel step on a list of parameters and a communicator.

    params: the trainable parameters (unique, one dtype and device), in model order; they become
    views of `flat_param` here. comm: anything with `rank`, `size`, `broadcast`, `reduce_scatter`
    and `all_gather` (`_C.Comm`'s signatures, async_op=True returning a Work with `wait()`).
    waiting: a context-manager factory around every wait (the trainer's duty-cycle comm_wait)."""

    def __init__(
        self,
        params,
        comm,
        stage=1,
        bucket_cap_mb=25,
        first_bucket_mb=1,
        names=None,
        waiting=None,
        max_inflight=2,
    ):
        if stage not in (1, 2):
            raise ValueError(f"ZeRO stage must be 1 or 2, got {stage!r}")
        params = check_params(params, names, "ZeRO")
        dtype, device = params[0].dtype, params[0].device
        self.params, self.names, self.comm, self.stage = params, names, comm, stage
        self.rank, self.world_size = int(comm.rank), int(comm.size)
        self.itemsize = dc.empty(0, dtype=dtype).element_size()
        self.layout = ShardLayout(
            [p.numel() for p in params],
            self.world_size,
            max(1, int(bucket_cap_mb * MB) // self.itemsize),
            max(1, int(first_bucket_mb * MB) // self.itemsize),
        )
        self._waiting = waiting or contextlib.nullcontext
        self.max_inflight = max(1, int(max_inflight))
        L = self.layout

        # ---- flat parameters (every parameter a view, before the first forward); stage 1: flat grads -----
        self.flat = FlatBuffers(params, L, names, grads=stage == 1)
        self.flat_param, self.flat_grad = self.flat.param, self.flat.grad

        # ---- gradients and optimizer state: the shards ----------------------------------------------
        self.grad_shard = dc.zeros(L.shard_numel, dtype=dtype, device=device)  # (shard,) averaged gradients
        self.exp_avg = dc.zeros(L.shard_numel, dtype=dtype, device=device)  # (shard,) AdamW's m
        self.exp_avg_sq = dc.zeros(L.shard_numel, dtype=dtype, device=device)  # (shard,) AdamW's v
        self.param_steps = [0] * len(params)  # steps taken by each parameter (torch's per-parameter state["step"])
        self._got_grad = [False] * len(params)  # this step: parameter i got a gradient in a backward on this rank
        self._pieces = L.pieces(self.rank)
        self._group_cache = None  # (key, [(group, views)])
        self._index = {id(p): i for i, p in enumerate(params)}

        # ---- post-accumulate-grad hooks: full buckets reduced during backward ----------------------
        nb = len(L.buckets)
        self.sync = True  # stage 1: False inside block_backward_sync (accumulation: reduce only at the last)
        self._reduced = False  # stage 1: this step's buckets were launched during a backward
        self._bucket_buf = [None] * nb
        self._ready = [0] * nb
        self._seen = [False] * len(params)
        self._next_launch = 0
        self._inflight = collections.deque()  # (work, bucket, temporary receive buffer or None)
        self._shard_fresh = [True] * nb  # the bucket's gradient chunk is zero (nothing reduced since the step)
        self._bucket_bytes = 0
        self.peak_bucket_bytes = 0
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(params)]

    # ---- helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _name(names, k):
        return repr(names[k]) if names else f"#{k}"

    def _flat_view(self, flat, i):
        return self.flat.view(flat, i)

    def check_views(self):
        self.flat.check_views()

    def close(self):
        """Remove the hooks (the parameters keep their values; they stay views of flat_param)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def broadcast_params(self, root=0):
        """Every rank starts from root's parameters (one broadcast of the flat buffer)."""
        w = self.comm.broadcast(self.flat_param, root=root, async_op=True)
        with self._waiting():
            w.wait()

    # ---- backward -----------------------------------------------------------------------------------------
    def before_backward(self):
        """Stage 1: make every .grad a view of the flat gradient buffer, so backward accumulates
        there (no copy afterwards). Stage 2: nothing to prepare (the hooks do the work)."""
        if self.stage == 2:  # (a .grad set before backward is added to, and goes into the bucket with it)
            self.flat.check_views()
            return
        self.flat.attach_grads()

    def _make_hook(self, i):
        def hook(_param):
            self._grad_ready(i)

        return hook

    def _grad_ready(self, i):
        """On the backward thread: parameter i's gradient is final for this backward. Stage 1: it
        is already in the flat gradient buffer; stage 2: copy it into its bucket and free it. A
        bucket whose gradients are all final is launched (in bucket order)."""
        L, p = self.layout, self.params[i]
        b = L.param_bucket[i]
        bucket = L.buckets[b]
        self._got_grad[i] = True
        if self.stage == 1 and not self.sync:
            return
        if b < self._next_launch:
            raise RuntimeError(
                f"ZeRO stage {self.stage}: parameter {self._name(self.names, i)} got a second gradient in one "
                "backward after its bucket was already reduced (backward through the same graph twice is not "
                "supported with ZeRO)"
            )
        if self.stage == 1:
            if p.grad.data_ptr() != self.flat._grad_ptr[i]:  # a hook replaced .grad: back into the flat buffer
                v = self._flat_view(self.flat_grad, i)
                with dc.no_grad():
                    v.copy_(p.grad)
                p.grad = v
            if not self._seen[i]:
                self._seen[i] = True
                self._ready[b] += 1
            self._launch_ready()
            return
        buf = self._bucket_buf[b]
        if buf is None:
            buf = self._bucket_buf[b] = dc.zeros(bucket.padded, dtype=p.dtype, device=p.device)  # (padded,)
            self._bucket_bytes += _nbytes(buf)
            self.peak_bucket_bytes = max(self.peak_bucket_bytes, self._bucket_bytes)
        off = L.param_offset[i] - bucket.offset
        with dc.no_grad():
            dst = buf[off : off + L.numels[i]]
            if self._seen[i]:
                dst.add_(p.grad.reshape(-1))
            else:
                dst.copy_(p.grad.reshape(-1))  # note: the one copy of the gradient, into its bucket
        p.grad = None  # the full gradient is freed: this rank keeps only its shard
        if not self._seen[i]:
            self._seen[i] = True
            self._ready[b] += 1
        self._launch_ready()

    def _launch_ready(self):
        """Launch full buckets strictly in index order (the same order on every rank)."""
        L = self.layout
        while self._next_launch < len(L.buckets) and self._ready[self._next_launch] == len(
            L.buckets[self._next_launch].params
        ):
            self._launch(self._next_launch)
            self._next_launch += 1

    def _launch(self, b):
        L = self.layout
        bucket = L.buckets[b]
        if self.stage == 1:  # the flat gradient buffer is the send buffer; no in-flight bound is needed
            send = self.flat_grad[bucket.offset : bucket.offset + bucket.padded]
            recv = self.grad_shard[bucket.shard_offset : bucket.shard_offset + bucket.chunk]
            self._inflight.append((self.comm.reduce_scatter(send, recv, op="avg", async_op=True), b, None, 0))
            return
        buf = self._bucket_buf[b]
        if buf is None:  # no parameter of it got a gradient: reduce zeros, as every rank must take part
            buf = dc.zeros(bucket.padded, dtype=self.flat_param.dtype, device=self.flat_param.device)
            self._bucket_bytes += _nbytes(buf)
            self.peak_bucket_bytes = max(self.peak_bucket_bytes, self._bucket_bytes)
        while len(self._inflight) >= self.max_inflight:
            self._finish_oldest()
        lo = bucket.shard_offset
        if self._shard_fresh[b]:  # the first reduction of this bucket since the step: straight into the shard
            recv, tmp = self.grad_shard[lo : lo + bucket.chunk], None
            self._shard_fresh[b] = False
        else:  # accumulation: reduce into a temporary chunk, added once it arrives
            recv = tmp = dc.empty(bucket.chunk, dtype=buf.dtype, device=buf.device)
        w = self.comm.reduce_scatter(buf, recv, op="avg", async_op=True)
        self._bucket_buf[b] = None
        self._inflight.append((w, b, tmp, _nbytes(buf)))

    def _finish_oldest(self):
        w, b, tmp, nbytes = self._inflight.popleft()
        with self._waiting():
            w.wait()
        if tmp is not None:
            lo = self.layout.buckets[b].shard_offset
            with dc.no_grad():
                self.grad_shard[lo : lo + tmp.numel()].add_(tmp)
        self._bucket_bytes -= nbytes

    def after_backward(self):
        """Launch the buckets that are still waiting (parameters that got no gradient count as
        zeros), then get ready for the next backward. Stage 1 inside block_backward_sync: nothing."""
        L = self.layout
        if self.stage == 2 or self.sync:
            for b in range(self._next_launch, len(L.buckets)):
                self._launch(b)
            self._reduced = True
        self._next_launch = 0
        self._ready = [0] * len(L.buckets)
        self._seen = [False] * len(self.params)

    # ---- the step -------------------------------------------------------------------------------------------
    def reduce_gradients(self):
        """This rank's shard of the averaged gradients, complete: wait for what backward launched.
        Stage 1 when no backward reduced this step (every one ran under block_backward_sync, or
        backward did not go through the strategy): reduce-scatter the flat gradient buffer now."""
        if self.stage == 1 and not self._reduced:
            for b in range(len(self.layout.buckets)):
                self._launch(b)
        while self._inflight:
            self._finish_oldest()
        self._reduced = False

    def _groups(self, optimizer):
        """[(group, (params, grads, exp_avgs, exp_avg_sqs))] of views into this rank's shard, per
        parameter group; adjacent pieces of one group are merged (fewer kernel launches)."""
        key = (id(optimizer), tuple(tuple(id(p) for p in g["params"]) for g in optimizer.param_groups))
        if self._group_cache is not None and self._group_cache[0] == key:
            return self._group_cache[1]
        if not isinstance(optimizer, dc.optim.AdamW):
            raise TypeError(
                f"ZeRO shards AdamW's state (AdamW and Adam, stepped by the fused _C.adamw_step); got "
                f"{type(optimizer).__name__}: use strategy='ddp' for other optimizers"
            )
        group_of = {}
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                i = self._index.get(id(p))
                if i is None:
                    if not p.requires_grad:
                        continue
                    raise ValueError(
                        f"ZeRO: the optimizer's param group {gi} holds a parameter (shape {tuple(p.shape)}) that is "
                        "not a trainable parameter of the LightningModule the strategy set up"
                    )
                group_of[i] = gi
        merged = [[] for _ in optimizer.param_groups]  # per group: [flat_lo, flat_hi, shard_lo]
        for pc in self._pieces:
            gi = group_of.get(pc.param)
            if gi is None:
                continue
            n = pc.hi - pc.lo
            runs = merged[gi]
            if runs and runs[-1][1] == pc.flat_lo and runs[-1][3] == self.layout.param_bucket[pc.param]:
                runs[-1][1] += n
            else:
                runs.append([pc.flat_lo, pc.flat_lo + n, pc.shard_lo, self.layout.param_bucket[pc.param]])
        out, members, pieces = [], [[] for _ in optimizer.param_groups], [[] for _ in optimizer.param_groups]
        for i, gi in group_of.items():
            members[gi].append(i)
        for pc in self._pieces:  # unmerged, for steps where some parameters are skipped
            gi = group_of.get(pc.param)
            if gi is not None:
                pieces[gi].append((pc.param, self._piece_views(pc.flat_lo, pc.flat_lo + pc.hi - pc.lo, pc.shard_lo)))
        for gi in range(len(optimizer.param_groups)):
            views = ([], [], [], [])
            for f_lo, f_hi, s_lo, _ in merged[gi]:
                for acc, v in zip(views, self._piece_views(f_lo, f_hi, s_lo)):
                    acc.append(v)
            out.append((gi, views))
        self._group_cache = (key, out)
        self._group_members, self._group_pieces = members, pieces
        return out

    def _piece_views(self, f_lo, f_hi, s_lo):
        s_hi = s_lo + f_hi - f_lo
        return (self.flat_param[f_lo:f_hi], self.grad_shard[s_lo:s_hi], self.exp_avg[s_lo:s_hi],
                self.exp_avg_sq[s_lo:s_hi])  # fmt: skip

    def _stepping(self):
        """Which parameters got a gradient in this step on any rank (one small all_reduce(max)):
        the others are skipped by the step, as torch's AdamW skips a parameter whose .grad is None."""
        got = self._got_grad
        self._got_grad = [False] * len(self.params)
        if self.world_size > 1:
            mask = dc.tensor([1.0 if g else 0.0 for g in got], dtype=dc.float32)  # (num_params,)
            w = self.comm.all_reduce(mask, op="max", async_op=True)
            with self._waiting():
                w.wait()
            got = [v > 0 for v in mask.tolist()]
        return got

    def _grad_views(self):
        """This rank's gradient shard without the padding: per bucket, the real part of its chunk
        (a prefix of it: a bucket's padding is at its end)."""
        L, out = self.layout, []
        for b in L.buckets:
            lo, hi = L.chunk_range(b, self.rank)
            n = max(0, min(hi, b.offset + b.numel) - lo)
            if n:
                out.append(self.grad_shard[b.shard_offset : b.shard_offset + n])
        return out

    def clip_grad_norm_(self, max_norm, norm_type=2.0):
        """nn.utils.clip_grad_norm_ over the sharded averaged gradients (after reduce_gradients):
        the norm of the full gradient from every rank's shard (padding excluded; one all_reduce of a
        scalar), and every rank scales its own shard. A collective. Returns the norm before clipping."""
        import math

        norm_type = float(norm_type)
        views = self._grad_views()
        local = float(dc._C.grad_norm(views, norm_type)) if views else 0.0
        inf = math.isinf(norm_type)
        part = dc.tensor([local if inf else local**norm_type], dtype=dc.float64)  # (1,)
        if self.world_size > 1:
            w = self.comm.all_reduce(part, op="max" if inf else "sum", async_op=True)
            with self._waiting():
                w.wait()
        total = float(part.tolist()[0])
        total = total if inf else total ** (1.0 / norm_type)
        coef = float(max_norm) / (total + 1e-6)
        if views and (math.isnan(coef) or coef < 1.0):
            dc._C.scale_(views, coef)
        return total

    def clip_grad_value_(self, clip_value):
        """nn.utils.clip_grad_value_ on this rank's gradient shard (elementwise: no communication)."""
        with dc.no_grad():
            self.grad_shard.copy_(self.grad_shard.clamp(-clip_value, clip_value))

    def step(self, optimizer):
        """AdamW on this rank's shard (one fused call per param group), then all_gather the
        parameters. Reads lr/betas/eps/weight_decay from the groups at every step (schedulers)."""
        groups = self._groups(optimizer)
        self._adopt_state(optimizer)
        decoupled = optimizer._decoupled_weight_decay
        stepping = self._stepping()
        with dc.no_grad():
            for gi, views in groups:
                g = optimizer.param_groups[gi]
                members = [i for i in self._group_members[gi] if stepping[i]]
                if not members:
                    continue
                counts = {self.param_steps[i] for i in members}
                if len(members) == len(self._group_members[gi]) and len(counts) == 1:
                    runs = [(counts.pop() + 1, views)]  # the usual case: the whole group, merged pieces
                else:  # some parameters skipped, or steps differ: per-piece views, one call per step count
                    by_step = {}
                    for i, pv in self._group_pieces[gi]:
                        if stepping[i]:
                            acc = by_step.setdefault(self.param_steps[i] + 1, ([], [], [], []))
                            for a, v in zip(acc, pv):
                                a.append(v)
                    runs = list(by_step.items())
                for i in members:
                    self.param_steps[i] += 1
                beta1, beta2 = g["betas"]
                wd, maximize = g["weight_decay"], bool(g["maximize"])
                coupled = wd != 0 and not decoupled
                for step, (params, grads, ms, vs) in runs:
                    if not params:
                        continue
                    if coupled:  # torch.optim.Adam: g = (-grad if maximize else grad) + wd * param
                        grads = [(-gr if maximize else gr) + p * wd for gr, p in zip(grads, params)]
                    dc._C.adamw_step(
                        params, grads, ms, vs, step, g["lr"], beta1, beta2, g["eps"],
                        0.0 if coupled else wd, maximize and not coupled,
                    )  # fmt: skip
        self.gather_params()
        if self.stage == 2:
            with dc.no_grad():
                self.grad_shard.zero_()
            self._shard_fresh = [True] * len(self.layout.buckets)

    def gather_params(self):
        """Every rank's updated chunks into every rank's flat parameter buffer, bucket by bucket."""
        L, works = self.layout, []
        for bucket in L.buckets:
            lo, hi = L.chunk_range(bucket, self.rank)
            send = self.flat_param[lo:hi].clone()  # note: copy: the send buffer must not alias the receive
            recv = self.flat_param[bucket.offset : bucket.offset + bucket.padded]
            works.append(self.comm.all_gather(send, recv, async_op=True))
        with self._waiting():
            for w in works:
                w.wait()

    # ---- optimizer state: adopt a loaded one, consolidate for a checkpoint -----------------------------
    def _adopt_state(self, optimizer):
        """Move full AdamW state that optimizer.load_state_dict put into optimizer.state (a resumed
        checkpoint) into this rank's shard, and free it."""
        held = [(i, optimizer.state[p]) for i, p in enumerate(self.params) if p in optimizer.state]
        held = [(i, s) for i, s in held if s]
        if not held:
            return
        steps = {}
        for i, s in held:
            st = s.get("step", 0)
            steps[i] = int(st.item()) if isinstance(st, dc.Tensor) else int(st)
        with dc.no_grad():
            for pc in self._pieces:
                s = optimizer.state.get(self.params[pc.param])
                if not s:
                    continue
                n = pc.hi - pc.lo
                for name, shard in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    src = s[name].detach().reshape(-1)[pc.lo : pc.hi]
                    shard[pc.shard_lo : pc.shard_lo + n].copy_(src.to(shard.device).to(shard.dtype))
        for i, st in steps.items():
            self.param_steps[i] = st
        for i, _ in held:
            del optimizer.state[self.params[i]]

    def sharded_state_dict(self, optimizer):
        """AdamW's state_dict with this rank's pieces: each parameter's exp_avg / exp_avg_sq as a
        checkpoint.Sharded (the whole tensor's shape, the range of its flattened elements held here;
        an empty range where this rank holds none of it). No communication; every rank calls it."""
        from ..checkpoint import Sharded

        self._groups(optimizer)
        self._adopt_state(optimizer)
        mine = {pc.param: pc for pc in self._pieces}
        sd = optimizer.state_dict()
        state, index = {}, 0
        for g in optimizer.param_groups:
            for p in g["params"]:
                i = self._index.get(id(p))
                if i is not None and self.param_steps[i] > 0:
                    pc, shape = mine.get(i), list(self.params[i].shape)
                    entry = {"step": self.param_steps[i]}
                    for name, shard in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                        if pc is None:
                            entry[name] = Sharded(dc.zeros(0, dtype=shard.dtype), shape, 0, 0)
                        else:
                            n = pc.hi - pc.lo
                            entry[name] = Sharded(shard[pc.shard_lo : pc.shard_lo + n], shape, pc.lo, pc.hi)
                    state[index] = entry
                elif p in optimizer.state and optimizer.state[p]:
                    state[index] = dict(optimizer.state[p])
                index += 1
        sd["state"] = state
        return sd

    def load_sharded(self, optimizer, osd):
        """A checkpoint's optimizer state (its exp_avg / exp_avg_sq possibly LazyTensors) into this
        rank's shards, reading only this rank's pieces of them."""
        from ..checkpoint import LazyTensor

        optimizer.load_state_dict({"state": {}, "param_groups": osd["param_groups"]})
        by_index = {}
        for g, sg in zip(optimizer.param_groups, osd["param_groups"]):
            for sid, p in zip(sg["params"], g["params"]):
                by_index[sid] = p
        held = {}
        for sid, s in (osd.get("state") or {}).items():
            p = by_index.get(sid)
            i = self._index.get(id(p)) if p is not None else None
            if i is None:
                if p is not None:
                    optimizer.state[p] = {
                        k: (v.materialize() if isinstance(v, LazyTensor) else v) for k, v in s.items()
                    }
                continue
            held[i] = s
        with dc.no_grad():
            for pc in self._pieces:
                s = held.get(pc.param)
                if not s:
                    continue
                n = pc.hi - pc.lo
                for name, shard in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    v = s[name]
                    src = v.read(pc.lo, pc.hi) if isinstance(v, LazyTensor) else v.detach().reshape(-1)[pc.lo : pc.hi]
                    shard[pc.shard_lo : pc.shard_lo + n].copy_(src.to(shard.device).to(shard.dtype))
        for i, s in held.items():
            st = s.get("step", 0)
            self.param_steps[i] = int(st.item()) if isinstance(st, dc.Tensor) else int(st)

    def consolidated_state_dict(self, optimizer):
        """AdamW's ordinary state_dict (full per-parameter exp_avg/exp_avg_sq, step), the shards
        all-gathered. A collective: every rank must call it; every rank gets the result.
        Note: needs 2 full-size temporary buffers on every rank."""
        self._groups(optimizer)  # checks the optimizer
        self._adopt_state(optimizer)
        L = self.layout
        full = {}
        for name, shard in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            f = full[name] = dc.zeros(L.total, dtype=shard.dtype, device=shard.device)  # (total,)
            works = []
            for b in L.buckets:
                send = shard[b.shard_offset : b.shard_offset + b.chunk]
                works.append(self.comm.all_gather(send, f[b.offset : b.offset + b.padded], async_op=True))
            with self._waiting():
                for w in works:
                    w.wait()
        sd = optimizer.state_dict()  # the param groups (hyperparameters, indices) as the optimizer numbers them
        state, index = {}, 0
        for g in optimizer.param_groups:
            for p in g["params"]:
                i = self._index.get(id(p))
                if i is not None and self.param_steps[i] > 0:  # a parameter never stepped has no state (torch)
                    state[index] = {
                        "step": self.param_steps[i],
                        "exp_avg": self._flat_view(full["exp_avg"], i).clone(),
                        "exp_avg_sq": self._flat_view(full["exp_avg_sq"], i).clone(),
                    }
                elif p in optimizer.state and optimizer.state[p]:
                    state[index] = dict(optimizer.state[p])
                index += 1
        sd["state"] = state
        return sd

    # ---- memory ----------------------------------------------------------------------------------------------
    def memory_per_rank(self):
        """Bytes this rank holds for parameters, gradients and optimizer state (the buffers this
        engine allocated; the same on every rank)."""
        grads = _nbytes(self.flat_grad) + _nbytes(self.grad_shard)
        state = _nbytes(self.exp_avg) + _nbytes(self.exp_avg_sq)
        params = _nbytes(self.flat_param)
        out = {
            "strategy": f"zero{self.stage}",
            "world_size": self.world_size,
            "rank": self.rank,
            "num_params": self.layout.num_params,
            "padded_numel": self.layout.total,
            "buckets": len(self.layout.buckets),
            "parameters": params,
            "gradients": grads,
            "optimizer_state": state,
        }
        if self.stage == 2:  # the bucket buffers alive at once during backward (measured; 0 before the first):
            # at most max_inflight buckets in flight plus the ones filling while an earlier one is not yet full
            out["gradient_buckets_peak"] = self.peak_bucket_bytes
            out["largest_bucket"] = max(b.padded for b in self.layout.buckets) * self.itemsize
        out["total"] = params + grads + state + out.get("gradient_buckets_peak", 0)
        return out


# ---- gradient clipping through the strategy ---------------------------------------------------------------
# LightningModule.clip_gradients hands the request to strategy.clip_gradients, inside the optimizer closure
# right after backward. Under zero1/zero2/parameter_server the averaged gradient is not in .grad then (zero2
# frees it; zero1's reductions are still in flight; the parameter server averages on rank 0 inside the step),
# so the strategies queue the request and optimizer_step applies it to the reduced gradients. A
# configure_gradient_clipping override that calls nn.utils directly clips local gradients (unsupported).
_CLIP_ALGORITHMS = ("norm", "value")


def queue_clip(strategy, gradient_clip_val, gradient_clip_algorithm):
    if gradient_clip_val is None or gradient_clip_val == 0:
        return
    algo = gradient_clip_algorithm or "norm"
    if algo not in _CLIP_ALGORITHMS:
        raise ValueError(f"gradient_clip_algorithm {algo!r} is not one of 'norm', 'value'")
    if not hasattr(strategy, "_clips"):
        strategy._clips = []
    strategy._clips.append((float(gradient_clip_val), algo))


def format_memory(mem):
    """One line for the log: 'zero2 rank 0/4: params 9.2 MB, grads 2.3 MB, optimizer state 4.6 MB'."""

    def mb(b):
        return f"{b / 1e6:.2f} MB"

    s = (
        f"{mem['strategy']} rank {mem['rank']}/{mem['world_size']}: {mem['num_params']:,} params; "
        f"parameters {mb(mem['parameters'])}, gradients {mb(mem['gradients'])}"
    )
    if "gradient_buckets_peak" in mem:
        s += f" (+ buckets in flight {mb(mem['gradient_buckets_peak'])})"
    return s + f", optimizer state {mb(mem['optimizer_state'])}, total {mb(mem['total'])}"


class ZeroStrategy(ParallelStrategy):
    """ZeRO data parallelism: Trainer(strategy="zero1" | "zero2") or ZeroStrategy(stage=2, ...).

    stage 1 shards AdamW's state, stage 2 also the gradients (see the module docstring). Works with
    dutycycle.optim.AdamW / Adam. Gradient clipping (gradient_clip_val, "norm" or "value") is done
    on the shards after the reduction: the norm from every rank's shard (one scalar all_reduce)."""

    strategy_name = "zero"

    def __init__(
        self,
        stage=1,
        accelerator=None,
        timeout=None,
        bucket_cap_mb=25,
        max_inflight=2,
        process_group_backend=None,
        num_nodes=1,
    ):
        super().__init__(
            accelerator=accelerator, timeout=timeout, process_group_backend=process_group_backend, num_nodes=num_nodes
        )
        if stage not in (1, 2):
            raise ValueError(f"ZeroStrategy(stage={stage!r}): stage must be 1 or 2")
        if bucket_cap_mb is None or bucket_cap_mb <= 0:
            raise ValueError(f"ZeroStrategy(bucket_cap_mb={bucket_cap_mb!r}): must be > 0")
        self.stage = stage
        self.strategy_name = f"zero{stage}"
        self.bucket_cap_mb = bucket_cap_mb
        self.max_inflight = max_inflight
        self._engine = None
        self._memory_logged = False

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def setup(self, trainer):
        """Join the group and take rank 0's weights (ParallelStrategy), then, for fit, make the
        parameters views of the flat buffer: here, before the first forward saves any of them."""
        super().setup(trainer)
        self._close_engine()
        m = self.lightning_module
        if m is None or getattr(getattr(trainer, "state", None), "fn", "fit") != "fit":
            return
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        self._engine = ZeroEngine(
            [p for _, p in named],
            self.comm,
            stage=self.stage,
            bucket_cap_mb=self.bucket_cap_mb,
            first_bucket_mb=min(1, self.bucket_cap_mb),  # ddp's first bucket: 1 MB, communication starts early
            names=[n for n, _ in named],
            waiting=self.comm_wait,
            max_inflight=self.max_inflight,
        )
        self._memory_logged = False
        self._clips = []

    @contextlib.contextmanager
    def block_backward_sync(self):
        """Gradient accumulation's early micro-batches: stage 1 accumulates locally and reduces at
        the last one; stage 2 still reduces every micro-batch (it keeps no full gradient to add to)."""
        engine = self._engine
        if engine is None:
            yield
            return
        prev, engine.sync = engine.sync, False
        try:
            yield
        finally:
            engine.sync = prev

    def connect_optimizers(self, optimizers):
        """Check at once that the optimizer is one ZeRO can shard (AdamW/Adam over the module's parameters)."""
        if self._engine is not None:
            for o in optimizers:
                self._engine._groups(getattr(o, "optimizer", o))

    def teardown(self):
        """Remove the stage-2 hooks. The engine (the shards) stays until the next setup, so a
        checkpoint saved after fit and memory_per_rank() still see the optimizer state."""
        if self._engine is not None:
            self._engine.close()
        return super().teardown()

    def _close_engine(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _require_engine(self, what):
        if self._engine is None:
            raise RuntimeError(f"{type(self).__name__}.{what}(): the strategy is not set up for fit yet")
        return self._engine

    # ---- the step ---------------------------------------------------------------------------------------------
    def backward(self, loss, *args, **kwargs):
        """The module's backward hook, between the engine's before/after (stage 2: the hooks reduce
        full buckets during it, and the rest are launched at its end)."""
        engine = self._require_engine("backward")
        engine.before_backward()
        try:
            super().backward(loss, *args, **kwargs)
        finally:
            engine.after_backward()

    def optimizer_step(self, optimizer, closure=None, model=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's optimizer
        loss = None
        if closure is not None:
            with dc.enable_grad():
                loss = closure()
        engine = self._require_engine("optimizer_step")
        engine.reduce_gradients()
        for val, algo in self._take_clips():  # gradient clipping, on the sharded averaged gradients
            if algo == "norm":
                engine.clip_grad_norm_(val)
            else:
                engine.clip_grad_value_(val)
        engine.step(optimizer)
        if not self._memory_logged:
            self._memory_logged = True
            print(format_memory(self.memory_per_rank()), flush=True)
        return loss

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """LightningModule.clip_gradients under this strategy: the clipping is queued and done in
        optimizer_step, once the averaged gradients are reduced (into the shards)."""
        queue_clip(self, gradient_clip_val, gradient_clip_algorithm)

    def _take_clips(self):
        clips, self._clips = getattr(self, "_clips", []), []
        return clips

    def memory_per_rank(self):
        """{'parameters', 'gradients', 'optimizer_state', 'total', ...} in bytes on this rank."""
        return self._require_engine("memory_per_rank").memory_per_rank()

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def lightning_module_state_dict(self):
        """The full weights: every rank holds them after the all_gather (ZeRO 1/2 shard no parameters)."""
        return self.lightning_module.state_dict()

    def optimizer_state(self, optimizer):
        """AdamW's state_dict with this rank's pieces as checkpoint.Sharded values (no communication;
        each rank writes its own shard file). consolidated_optimizer_state() gathers it instead."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if self._engine is None:  # not set up for fit (or torn down): the optimizer holds what there is
            return optimizer.state_dict()
        return self._engine.sharded_state_dict(optimizer)

    def consolidated_optimizer_state(self, optimizer):
        """AdamW's ordinary state_dict, the shards all-gathered (a collective: every rank calls it)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if self._engine is None:
            return optimizer.state_dict()
        return self._engine.consolidated_state_dict(optimizer)

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        """Every rank writes its shard of the checkpoint; rank 0 commits it (dutycycle.checkpoint)."""
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        opts = self.__dict__.get("_ckpt_save_options") or {}
        return self.checkpointer.save(
            checkpoint, filepath, link=opts.get("link"), info=opts.get("info"), block=not opts.get("async_save", False),
            rank=self.global_rank, world_size=self.world_size, gather=self._gather_json,
        )  # fmt: skip

    def load_checkpoint(self, checkpoint_path):
        """The checkpoint with its optimizer tensors lazy: each rank reads only its pieces of them."""
        from .. import checkpoint

        return checkpoint.load(checkpoint_path, lazy=lambda name: name.startswith("optimizer/"))

    def load_optimizer_state(self, optimizer, state):
        if self._engine is None:
            return super().load_optimizer_state(optimizer, state)
        self._engine.load_sharded(getattr(optimizer, "optimizer", optimizer), state)

    def __repr__(self):
        return (
            f"ZeroStrategy(stage={self.stage}, rank={self.global_rank}/{self.world_size}, "
            f"root_device={self.root_device})"
        )
