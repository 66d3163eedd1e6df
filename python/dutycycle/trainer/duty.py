"""The duty cycle: where the wall time of a run went.

Wall time splits into compute (forward, backward, optimizer; validation forward too), data wait
(blocked fetching the next batch), communication wait (blocked on collectives: the distributed
code wraps its waits in `track("comm_wait")`), checkpoint stall (blocked in save_checkpoint) and
other (everything else: hooks, logging, the progress bar, Python). "other" is the remainder, so the
split always sums to the wall time.

Cost: two perf_counter() calls per tracked region, a few dict updates per step; no per-op hooks.
Regions nest: time spent in an inner region (a comm wait inside the backward) is taken out of the
outer one (compute), so nothing counts twice.

Host-device syncs (dutycycle.cuda.sync_counts(): device/stream/event synchronize, blocking
device -> host copies, item() on any device) are counted per step: the report shows how many steps
made none, which outside the logging interval should be all of them.

On a GPU, host timestamps only measure launches; the trainer synchronises the device (see
`sync`) at the report points (the log steps and the end of fit), never per step, so the device
backlog lands in the compute region that ends at such a point.
"""

from __future__ import annotations

import collections
from contextlib import contextmanager
from time import perf_counter

BUCKETS = ("compute", "data_wait", "comm_wait", "checkpoint_stall")
ALL = BUCKETS + ("other",)
LABELS = {
    "compute": "compute",
    "data_wait": "data wait",
    "comm_wait": "comm wait",
    "checkpoint_stall": "ckpt stall",
    "other": "other",
}


def _sync_total():
    """Host waits so far: synchronize calls + blocking device -> host copies + item() calls (an item()
    of a GPU tensor is one of each kind: counted once, as the item)."""
    from .. import _C

    s, d, i = _C.sync_counts()
    return s + max(d - i, 0) + i


class DutyCycle:
    """Per-bucket seconds for the whole run, the latest step and the latest log interval."""

    def __init__(self, window=20):
        self._sync_fn = None
        self._window_len = window
        self.reset()

    def reset(self):
        self.ranks = None  # every rank's split() after gather_ranks (several processes)
        self._totals = dict.fromkeys(BUCKETS, 0.0)
        self._step = dict.fromkeys(BUCKETS, 0.0)
        self._interval = dict.fromkeys(BUCKETS, 0.0)
        self._stack = []  # [bucket, start, time of nested regions]
        self._t_start = None
        self._t_stop = None
        self._t_step = None
        self._t_interval = None
        self._last_step = None
        self._window = collections.deque(maxlen=self._window_len)
        self._sync_step = self._sync_start = _sync_total()
        self.steps = 0
        self.syncs = 0  # host syncs (d2h copies + synchronize, and item() calls) over all steps
        self.steps_with_sync = 0
        self.last_step_syncs = 0

    # ---- run and step boundaries -------------------------------------------------------------
    def start(self):
        self.reset()
        self._t_start = self._t_step = self._t_interval = perf_counter()

    def stop(self):
        self._t_stop = perf_counter()

    @property
    def running(self):
        return self._t_start is not None and self._t_stop is None

    def step_end(self):
        """Close the current step (the trainer calls it once per training batch)."""
        now = perf_counter()
        split = dict(self._step)
        split["total"] = now - self._t_step
        split["other"] = max(0.0, split["total"] - sum(self._step.values()))
        self._last_step = split
        self._window.append(split)
        self._step = dict.fromkeys(BUCKETS, 0.0)
        self._t_step = now
        c = _sync_total()
        self.last_step_syncs = c - self._sync_step
        self._sync_step = c
        self.steps += 1
        self.syncs += self.last_step_syncs
        self.steps_with_sync += self.last_step_syncs > 0

    # ---- regions -----------------------------------------------------------------------------
    def begin(self, bucket):
        self._stack.append([bucket, perf_counter(), 0.0])

    def end(self):
        bucket, t0, nested = self._stack.pop()
        dt = perf_counter() - t0
        own = dt - nested
        self._totals[bucket] += own
        self._step[bucket] += own
        self._interval[bucket] += own
        if self._stack:
            self._stack[-1][2] += dt
        return dt

    @contextmanager
    def track(self, bucket):
        """Time the enclosed block into bucket ("compute", "data_wait", "comm_wait", "checkpoint_stall")."""
        if bucket not in self._totals:
            raise ValueError(f"unknown duty-cycle bucket {bucket!r}; expected one of {BUCKETS}")
        self.begin(bucket)
        try:
            yield
        finally:
            self.end()

    def sync(self):
        """Wait for the device, so host time includes the queued device work (a sync point on
        CUDA; nothing on the CPU). Called only at report points."""
        if self._sync_fn is not None:
            self._sync_fn()

    # ---- reports -----------------------------------------------------------------------------
    def _split(self, acc, total):
        out = {b: acc[b] for b in BUCKETS}
        out["other"] = max(0.0, total - sum(acc.values()))
        out["total"] = total
        return out

    def split(self):
        """{"compute", "data_wait", "comm_wait", "checkpoint_stall", "other", "total"} in seconds, run so far."""
        if self._t_start is None:
            return dict.fromkeys(ALL + ("total",), 0.0)
        end = self._t_stop if self._t_stop is not None else perf_counter()
        return self._split(self._totals, end - self._t_start)

    def last_step(self):
        """The same dict for the latest finished training step (zeros before the first)."""
        return dict(self._last_step) if self._last_step else dict.fromkeys(ALL + ("total",), 0.0)

    def fraction(self):
        """Compute time over wall time for the run so far, in [0, 1]."""
        s = self.split()
        return s["compute"] / s["total"] if s["total"] > 0 else 0.0

    def recent_fraction(self):
        """Compute fraction over the last few steps (the live number the progress bar shows)."""
        if not self._window:
            return self.fraction()
        tot = sum(s["total"] for s in self._window)
        return sum(s["compute"] for s in self._window) / tot if tot > 0 else 0.0

    def interval_metrics(self):
        """Split since the previous call, as logger metrics ("duty/compute_s", "duty/compute_frac", ...)."""
        now = perf_counter()
        total = now - (self._t_interval if self._t_interval is not None else now)
        split = self._split(self._interval, total)
        self._interval = dict.fromkeys(BUCKETS, 0.0)
        self._t_interval = now
        out = {}
        for b in ALL:
            out[f"duty/{b}_s"] = split[b]
            out[f"duty/{b}_frac"] = split[b] / total if total > 0 else 0.0
        return out

    def gather_ranks(self, strategy):
        """Every rank's split of the run, gathered through strategy (a collective: call it on
        every rank); kept in `self.ranks` (a list, rank order) for table() and reduced()."""
        import dutycycle as dc

        s = self.split()
        mine = dc.tensor([s[k] for k in ALL + ("total",)], dtype=dc.float64)
        rows = strategy.all_gather(mine).numpy()  # (world_size, len(ALL) + 1)
        self.ranks = [dict(zip(ALL + ("total",), (float(x) for x in row))) for row in rows]
        return self.ranks

    def reduced(self):
        """{"mean": split, "max": split} over the gathered ranks (None before gather_ranks)."""
        if not self.ranks:
            return None
        keys = ALL + ("total",)
        n = len(self.ranks)
        return {
            "mean": {k: sum(r[k] for r in self.ranks) / n for k in keys},
            "max": {k: max(r[k] for r in self.ranks) for k in keys},
        }

    def table(self, title="duty cycle"):
        s = self.split()
        tot = s["total"]
        red = self.reduced()
        if red is not None:  # several ranks: mean and max seconds over ranks, % of the mean wall time
            mean, mx = red["mean"], red["max"]
            tot = mean["total"]
            lines = [
                f"{title} ({tot:.2f} s wall, mean over ranks)",
                f"  {'':<12}{'mean s':>10}{'max s':>10}{'%':>8}",
            ]
            for b in ALL:
                pct = 100.0 * mean[b] / tot if tot > 0 else 0.0
                lines.append(f"  {LABELS[b]:<12}{mean[b]:>10.3f}{mx[b]:>10.3f}{pct:>8.1f}")
            waits = " ".join(f"{r['comm_wait']:.3f}" for r in self.ranks)
            lines.append(f"  comm wait per rank (s): {waits}")
            return "\n".join(lines)
        lines = [f"{title} ({tot:.2f} s wall)", f"  {'':<12}{'seconds':>10}{'%':>8}"]
        for b in ALL:
            pct = 100.0 * s[b] / tot if tot > 0 else 0.0
            lines.append(f"  {LABELS[b]:<12}{s[b]:>10.3f}{pct:>8.1f}")
        if self.steps:
            lines.append(f"  host syncs   {self.syncs} in {self.steps} steps; "
                         f"{self.steps - self.steps_with_sync} steps made none")
        return "\n".join(lines)

    def __repr__(self):
        s = self.split()
        return f"DutyCycle(fraction={self.fraction():.3f}, total={s['total']:.3f}s)"
