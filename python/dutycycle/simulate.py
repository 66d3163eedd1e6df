"""Scaling model: where a data-parallel training step's time goes on 8 ... 4096 GPUs.

An alpha-beta model, from first principles (nothing here is fitted to the curves it draws): a
message of S bytes over a link costs alpha + S / B, and each collective is the sum of its steps.

- parameter server: every rank sends its gradients to rank 0, which sums them, runs the optimizer
  alone and sends the parameters back. Rank 0's link carries (N-1) x S in and (N-1) x S out, one
  after the other; the ranks on rank 0's node come over NVLink, the others over rank 0's one NIC.
- ring all-reduce: 2(N-1)/N * S / B + 2(N-1) alpha (reduce-scatter + all-gather, N-1 steps each).
  Across nodes NCCL runs one ring per NIC, so B = min(NVLink, NICs per node x NIC rate), and every
  step waits for its slowest hop, the inter-node one: alpha = the NIC's.
- tree all-reduce (double binary tree): 2 S / B (each rank sends and receives S on the way up and
  S on the way down, split over the two trees) + 2 ceil(log2 N) alpha.
- hierarchical: reduce-scatter inside the node over NVLink, all-reduce of each GPU's 1/g shard
  across the nodes (ring or tree over the GPU's share of the node's NICs), all-gather over NVLink.
- bucketed overlap with backward: gradients become ready at a uniform rate through backward
  (reverse layer order); bucket k is reduced once it is full and the previous bucket is done (one
  communication stream, buckets in order); what is left after backward ends is exposed, at least
  the last bucket's whole collective. Without overlap every bucket runs after backward.
- the optimizer step: memory bound, bytes per parameter / HBM bandwidth.
- ZeRO-1/2: reduce-scatter of the gradient buckets (overlapped as above), the optimizer on 1/N of
  the parameters, an all-gather of the parameters after the step (exposed). The same bytes on the
  wire as a ring all-reduce (reduce-scatter + all-gather), optimizer work divided by N.

Duty cycle = the time a rank computes (forward, backward, its optimizer work) / step time; scaling
efficiency = the one-GPU step time / the N-GPU step time (weak scaling: fixed batch per GPU).

    python -m dutycycle.simulate [--params 1.3e9 ...] [--plot out.png] [--json out.json]
    python -m dutycycle.simulate calibrate benchmarks/results/scaling-cpu.json

`calibrate` fits the link terms (alpha, beta per network) and a per-step overhead to measured runs
(the JSON of benchmarks/scaling.py), with the compute times measured in each run, and prints the
prediction against the measurement per row, with the leave-one-out error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace

MB = 1e6
GB = 1e9


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class Cluster:
    """Links. Bandwidths in bytes/s per GPU (NVLink: the bus bandwidth a ring reaches in a node;
    NIC: one NIC's rate), latencies (alpha) in seconds per step of a collective."""

    gpus_per_node: int = 8
    nvlink_bw: float = 370 * GB  # 8xH100 ring bus bandwidth (nccl-tests)
    nvlink_alpha: float = 2e-6
    nic_bw: float = 400e9 / 8  # 400 Gb/s
    nics_per_node: int = 8  # one per GPU, as on a DGX H100
    nic_alpha: float = 5e-6
    hbm_bw: float = 2000 * GB  # what a memory-bound kernel reaches (H100 SXM peak 3.35 TB/s)


@dataclass
class Workload:
    """One GPU's step: the model's size and the measured or given compute times (seconds)."""

    params: float = 1.3e9
    grad_bytes: int = 2  # bf16 gradients on the wire
    param_bytes: int = 2  # bf16 parameters sent back / all-gathered
    forward: float = 0.108
    backward: float = 0.216
    optimizer: float = 0.018

    @property
    def grad_size(self):
        return self.params * self.grad_bytes

    @property
    def param_size(self):
        return self.params * self.param_bytes


@dataclass
class Plan:
    """How gradients are synchronised. strategy: parameter_server | ddp | zero (ZeRO-1/2: the same
    communication; stage 2 only keeps less gradient memory). algorithm: ring | tree | hier_ring |
    hier_tree (ZeRO: ring or hier_ring; reduce-scatter/all-gather have no tree)."""

    strategy: str = "ddp"
    algorithm: str = "hier_tree"
    overlap: bool = True
    bucket_mb: float = 25.0
    first_bucket_mb: float = 1.0

    @property
    def label(self):
        if self.strategy == "parameter_server":
            return "parameter_server"
        ov = "overlap" if self.overlap else "no overlap"
        return f"{self.strategy} {self.algorithm}, {ov}, {self.bucket_mb:g} MB"


# ---- collectives (seconds) -------------------------------------------------------------------
def ring_all_reduce(nbytes, n, bw, alpha):
    """2(n-1)/n * S / B + 2(n-1) alpha."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha


def ring_reduce_scatter(nbytes, n, bw, alpha):
    """(n-1)/n * S / B + (n-1) alpha; nbytes is the whole (unsharded) buffer. All-gather: the same."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / bw + (n - 1) * alpha


ring_all_gather = ring_reduce_scatter


def tree_all_reduce(nbytes, n, bw, alpha):
    """Double binary tree: 2 S / B + 2 ceil(log2 n) alpha (reduce up, broadcast down, pipelined)."""
    if n <= 1:
        return 0.0
    return 2 * nbytes / bw + 2 * math.ceil(math.log2(n)) * alpha


def _shape(n, cl):
    """(GPUs per node used, nodes) for n GPUs."""
    local = min(n, cl.gpus_per_node)
    return local, math.ceil(n / local)


def _flat_bw(n, cl):
    local, nodes = _shape(n, cl)
    if nodes == 1:
        return cl.nvlink_bw, cl.nvlink_alpha
    # one ring (or tree pair) per NIC; the NVLink hops carry all of them
    return min(cl.nvlink_bw, cl.nics_per_node * cl.nic_bw), cl.nic_alpha


def _nic_share(local, cl):
    """Bandwidth of one GPU's share of its node's NICs."""
    return cl.nics_per_node * cl.nic_bw / local


def all_reduce_time(nbytes, n, cl, algorithm):
    local, nodes = _shape(n, cl)
    if algorithm in ("ring", "tree"):
        bw, alpha = _flat_bw(n, cl)
        if nodes == 1 or algorithm == "ring":
            return ring_all_reduce(nbytes, n, bw, alpha)
        return tree_all_reduce(nbytes, n, bw, alpha)
    if algorithm in ("hier_ring", "hier_tree"):
        intra = ring_reduce_scatter(nbytes, local, cl.nvlink_bw, cl.nvlink_alpha)
        inter_fn = ring_all_reduce if algorithm == "hier_ring" else tree_all_reduce
        inter = inter_fn(nbytes / local, nodes, _nic_share(local, cl), cl.nic_alpha)
        return 2 * intra + inter  # reduce-scatter + inter-node all-reduce + all-gather
    raise ValueError(f"unknown algorithm {algorithm!r}; expected ring, tree, hier_ring or hier_tree")


def reduce_scatter_time(nbytes, n, cl, algorithm):
    """Reduce-scatter (and, the same cost, all-gather) of an nbytes buffer over n GPUs."""
    local, nodes = _shape(n, cl)
    if algorithm in ("ring", "tree"):
        bw, alpha = _flat_bw(n, cl)
        return ring_reduce_scatter(nbytes, n, bw, alpha)
    if algorithm in ("hier_ring", "hier_tree"):
        intra = ring_reduce_scatter(nbytes, local, cl.nvlink_bw, cl.nvlink_alpha)
        return intra + ring_reduce_scatter(nbytes / local, nodes, _nic_share(local, cl), cl.nic_alpha)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def comm_bytes_per_rank(strategy, nbytes, n):
    """Bytes one rank sends per step (rank 0 for the parameter server), flat ring/naive layout."""
    if n <= 1:
        return 0.0
    if strategy == "parameter_server":
        return (n - 1) * nbytes  # rank 0: the parameters out (and as much in)
    return 2 * (n - 1) / n * nbytes  # ring all-reduce, or reduce-scatter + all-gather (ZeRO-1/2)


# ---- buckets and overlap ---------------------------------------------------------------------
def bucket_sizes(total, bucket_mb, first_bucket_mb=1.0):
    """Bucket byte sizes in the order they fill: a small first bucket, then bucket_mb each."""
    if bucket_mb <= 0 or bucket_mb * MB >= total:
        return [total]
    sizes, left = [], total
    first = min(first_bucket_mb * MB, total) if first_bucket_mb > 0 else bucket_mb * MB
    sizes.append(first)
    left -= first
    cap = bucket_mb * MB
    while left > 1e-9:
        s = min(cap, left)
        sizes.append(s)
        left -= s
    return sizes


def overlap_schedule(sizes, backward, cost, overlap=True):
    """Run buckets on one communication stream. Bucket k is ready when backward has produced its
    bytes (uniform rate) and starts when ready and when bucket k-1 is done.
    Returns (exposed seconds after backward ends, total communication seconds)."""
    total = sum(sizes)
    t_end = backward if not overlap else 0.0
    done = 0.0
    busy = 0.0
    for s in sizes:
        done += s
        ready = backward * done / total if overlap else backward
        c = cost(s)
        busy += c
        t_end = max(t_end, ready) + c
    return max(0.0, t_end - backward), busy


# ---- one step ----------------------------------------------------------------------------------
@dataclass
class StepResult:
    n: int
    step: float  # seconds
    compute: float  # seconds a rank computes
    comm: float  # seconds of communication in the step (busy time of the comm stream)
    exposed: float  # seconds the ranks wait for communication
    duty: float
    efficiency: float
    hidden: float  # share of the communication hidden behind backward

    def as_dict(self):
        return asdict(self)


def step_time(n, wl, cl, plan):
    t_fb = wl.forward + wl.backward
    single = t_fb + wl.optimizer
    if n <= 1:
        return StepResult(1, single, single, 0.0, 0.0, 1.0, 1.0, 1.0)
    S, P = wl.grad_size, wl.param_size
    local, nodes = _shape(n, cl)
    if plan.strategy == "parameter_server":
        # rank 0's NVLink port takes the local ranks' gradients while its NIC takes the others'
        def gather(nb):
            return max((local - 1) * nb / cl.nvlink_bw, (n - local) * nb / cl.nic_bw) + (n - 1) * (
                cl.nic_alpha if nodes > 1 else cl.nvlink_alpha
            )

        t_sum = (n - 1) * S / cl.hbm_bw  # rank 0 reads every rank's gradients once
        comm = gather(S) + gather(P)
        wait = comm + t_sum + wl.optimizer  # the workers idle while rank 0 sums and steps
        step = t_fb + wait
        compute = t_fb + (t_sum + wl.optimizer) / n  # mean over ranks: rank 0 also sums and steps
        return StepResult(n, step, compute, comm, step - compute, compute / step, single / step, 0.0)
    sizes = bucket_sizes(S, plan.bucket_mb, plan.first_bucket_mb)
    if plan.strategy == "ddp":
        exposed, comm = overlap_schedule(
            sizes, wl.backward, lambda s: all_reduce_time(s, n, cl, plan.algorithm), plan.overlap
        )
        opt = wl.optimizer
    elif plan.strategy in ("zero", "zero1", "zero2"):
        alg = "ring" if plan.algorithm in ("ring", "tree") else "hier_ring"
        exposed, comm = overlap_schedule(sizes, wl.backward, lambda s: reduce_scatter_time(s, n, cl, alg), plan.overlap)
        ag = reduce_scatter_time(P, n, cl, alg)  # parameters all-gathered after the sharded step
        exposed += ag
        comm += ag
        opt = wl.optimizer / n
    else:
        raise ValueError(f"unknown strategy {plan.strategy!r}; expected parameter_server, ddp or zero")
    compute = t_fb + opt
    step = compute + exposed
    hidden = max(0.0, 1.0 - exposed / comm) if comm > 0 else 1.0
    return StepResult(n, step, compute, comm, exposed, compute / step, single / step, hidden)


def memory_per_gpu(wl, strategy, n):
    """Bytes of model state per GPU, mixed-precision Adam (ZeRO paper: 2 + 2 + 12 bytes/param)."""
    p = wl.params
    if strategy == "zero1":
        return p * (2 + 2) + 12 * p / n
    if strategy == "zero2":
        return p * 2 + (2 + 12) * p / n
    return 16 * p


# ---- defaults from first principles ------------------------------------------------------------
def default_workload(
    params=1.3e9,
    tokens_per_gpu=16384,
    peak_tflops=989.0,
    mfu=0.40,
    backward_frac=2 / 3,
    compute_ms=None,
    optimizer_ms=None,
    opt_bytes_per_param=28,
    hbm_gbs=2000.0,
    grad_bytes=2,
    param_bytes=2,
):
    """Compute time from FLOPs: 6 * params * tokens (forward 2, backward 4) at `mfu` of the peak;
    the optimizer reads/writes opt_bytes_per_param (fp32 master, m, v, the gradient, the bf16 copy)."""
    t = compute_ms / 1e3 if compute_ms is not None else 6 * params * tokens_per_gpu / (mfu * peak_tflops * 1e12)
    opt = optimizer_ms / 1e3 if optimizer_ms is not None else params * opt_bytes_per_param / (hbm_gbs * GB)
    return Workload(
        params=params,
        grad_bytes=grad_bytes,
        param_bytes=param_bytes,
        forward=t * (1 - backward_frac),
        backward=t * backward_frac,
        optimizer=opt,
    )


def default_plans(bucket_mb=25.0):
    b = bucket_mb
    return [
        Plan("parameter_server", "naive", False, 0),
        Plan("ddp", "ring", False, b),
        Plan("ddp", "ring", True, b),
        Plan("ddp", "tree", True, b),
        Plan("ddp", "hier_ring", True, b),
        Plan("ddp", "hier_tree", False, b),
        Plan("ddp", "hier_tree", True, b),
        Plan("zero", "hier_ring", True, b),
    ]


def gpu_counts(lo=8, hi=4096):
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return out


@dataclass
class Simulation:
    workload: Workload = field(default_factory=default_workload)
    cluster: Cluster = field(default_factory=Cluster)
    plans: list = field(default_factory=default_plans)
    counts: list = field(default_factory=gpu_counts)

    def run(self):
        return {p.label: [step_time(n, self.workload, self.cluster, p) for n in self.counts] for p in self.plans}


# ---- output ----------------------------------------------------------------------------------------
def format_table(results, counts, key, fmt, title):
    w = max(len(k) for k in results) + 2
    lines = [title, " " * w + "".join(f"{n:>7d}" for n in counts)]
    for label, rows in results.items():
        lines.append(f"{label:<{w}}" + "".join(f"{fmt(getattr(r, key)):>7}" for r in rows))
    return "\n".join(lines)


def bucket_sweep(wl, cl, n, buckets=(1, 5, 25, 100, 500, 0)):
    """Duty at n GPUs for each algorithm x overlap x bucket size (0 = one bucket for everything)."""
    rows = []
    for strategy, algs in (("ddp", ("ring", "tree", "hier_ring", "hier_tree")), ("zero", ("ring", "hier_ring"))):
        for alg in algs:
            for ov in (False, True):
                duties = [step_time(n, wl, cl, Plan(strategy, alg, ov, b)).duty for b in buckets]
                rows.append((f"{strategy} {alg}, {'overlap' if ov else 'no overlap'}", duties))
    return rows


def report(sim):
    res = sim.run()
    wl, cl, counts = sim.workload, sim.cluster, sim.counts
    out = [
        f"model: {wl.params / 1e9:.2f}B params, {wl.grad_bytes} B/grad ({wl.grad_size / GB:.2f} GB of gradients); "
        f"per GPU: forward {wl.forward * 1e3:.0f} ms, backward {wl.backward * 1e3:.0f} ms, "
        f"optimizer {wl.optimizer * 1e3:.0f} ms",
        f"cluster: {cl.gpus_per_node} GPUs/node, NVLink {cl.nvlink_bw / GB:.0f} GB/s "
        f"alpha {cl.nvlink_alpha * 1e6:g} us, "
        f"{cl.nics_per_node} x {cl.nic_bw * 8 / 1e9:.0f} Gb/s NICs/node alpha {cl.nic_alpha * 1e6:g} us",
        "",
        format_table(res, counts, "duty", lambda v: f"{100 * v:.1f}", "duty cycle (%)"),
        "",
        format_table(res, counts, "step", lambda v: f"{1e3 * v:.0f}", "step time (ms)"),
        "",
        format_table(res, counts, "efficiency", lambda v: f"{100 * v:.1f}", "scaling efficiency (%)"),
        "",
        format_table(res, counts, "hidden", lambda v: f"{100 * v:.0f}", "communication hidden behind backward (%)"),
    ]
    n = counts[-1]
    buckets = (1, 5, 25, 100, 500, 0)
    sweep = bucket_sweep(wl, cl, n, buckets)
    w = max(len(r[0]) for r in sweep) + 2
    out += [
        "",
        f"what keeps duty >= 90% at {n} GPUs: duty (%) by bucket size (MB; 'all' = one bucket)",
        " " * w + "".join(f"{(str(b) if b else 'all'):>7}" for b in buckets),
    ]
    for label, duties in sweep:
        out.append(f"{label:<{w}}" + "".join(f"{100 * d:>7.1f}" for d in duties))
    ok = []
    for label, duties in sweep:
        good = [str(b) if b else "all" for b, d in zip(buckets, duties) if d >= 0.9]
        if good:
            ok.append(f"{label} ({'/'.join(good)} MB)")
    out.append(f"duty >= 90% at {n} GPUs: {'; '.join(ok) if ok else 'none'}")
    ps = res[next(iter(res))]
    out.append("parameter server idle share: " + ", ".join(f"{r.n}: {100 * (1 - r.duty):.0f}%" for r in ps))
    mem = ", ".join(f"{s} {memory_per_gpu(wl, s, n) / GB:.1f} GB" for s in ("ddp", "zero1", "zero2"))
    out.append(f"model state per GPU at {n} GPUs (mixed-precision Adam, 16 B/param): {mem}")
    return "\n".join(out), res


def plot(res, counts, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for label, rows in res.items():
        style = "--" if "no overlap" in label else "-"
        axes[0].plot(counts, [100 * r.duty for r in rows], style, marker="o", ms=3, label=label)
        axes[1].plot(counts, [100 * r.efficiency for r in rows], style, marker="o", ms=3, label=label)
    for ax, ylabel in zip(axes, ("duty cycle (%)", "scaling efficiency (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(ylabel)
        ax.axhline(90, color="grey", lw=0.6, ls=":")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "dutycycle simulate: data-parallel step on N GPUs (alpha-beta model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- calibration on measured runs --------------------------------------------------------------
# Measured rows (benchmarks/scaling.py): strategy, n, network ("shm": ranks of one host over
# Open MPI's shared memory; "tcp": one rank per network namespace over shaped veth links), the
# measured step/comm_wait/backward seconds per step, the gradient bytes and bucket size. The model
# predicts each row's step as (measured step - measured comm wait) + its own exposed communication,
# so only the communication terms are fitted: alpha and beta (s/byte) per network and a per-step
# overhead of communicating at all (copies into buckets, Python), 5 numbers for all rows.
CAL_PARAMS = ("alpha_shm", "beta_shm", "alpha_tcp", "beta_tcp", "overhead")


def predict_exposed(row, theta):
    """Communication seconds a rank waits for in one step of a measured row."""
    n = int(row["n"])
    if n <= 1:
        return 0.0
    net = "tcp" if row.get("network", "shm") == "tcp" else "shm"
    alpha, beta = theta[f"alpha_{net}"], theta[f"beta_{net}"]
    bw = 1.0 / beta
    S = float(row["grad_bytes"])
    P = float(row.get("param_bytes", S))
    strat = row["strategy"]
    if strat == "parameter_server":
        # rank 0's one link, (n-1) messages in and (n-1) out; rank 0's step (measured on one rank)
        comm = (n - 1) * (S + P) * beta + 2 * (n - 1) * alpha
        return comm + float(row.get("optimizer_single_s", 0.0)) + theta["overhead"]
    sizes = bucket_sizes(S, float(row.get("bucket_mb", 25.0)), float(row.get("first_bucket_mb", 1.0)))
    overlap = bool(row.get("overlap", True))
    backward = float(row.get("backward_s", 0.0))
    if strat == "ddp":
        exposed, _ = overlap_schedule(sizes, backward, lambda s: ring_all_reduce(s, n, bw, alpha), overlap)
    elif strat in ("zero", "zero1", "zero2"):
        exposed, _ = overlap_schedule(sizes, backward, lambda s: ring_reduce_scatter(s, n, bw, alpha), overlap)
        exposed += ring_all_gather(P, n, bw, alpha)
    else:
        raise ValueError(f"unknown strategy {strat!r} in the measured rows")
    return exposed + theta["overhead"]


def predict_step(row, theta):
    base = float(row["step_s"]) - float(row.get("comm_wait_s", 0.0))
    return base + predict_exposed(row, theta)


def _nelder_mead(f, x0, step=0.5, iters=2000, tol=1e-10):
    """Minimise f over R^d (a small dependency-free Nelder-Mead)."""
    d = len(x0)
    pts = [list(x0)] + [[x0[j] + (step if j == i else 0.0) for j in range(d)] for i in range(d)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = sorted(range(d + 1), key=lambda i: vals[i])
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        c = [sum(p[j] for p in pts[:-1]) / d for j in range(d)]
        xr = [c[j] + (c[j] - pts[-1][j]) for j in range(d)]
        fr = f(xr)
        if fr < vals[0]:
            xe = [c[j] + 2 * (c[j] - pts[-1][j]) for j in range(d)]
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = [c[j] + 0.5 * (pts[-1][j] - c[j]) for j in range(d)]
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0]] + [[pts[0][j] + 0.5 * (p[j] - pts[0][j]) for j in range(d)] for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    i = min(range(d + 1), key=lambda k: vals[k])
    return pts[i], vals[i]


# starting points and bounds (log space): alpha 1 us .. 10 ms, beta 1/(100 GB/s) .. 1/(1 MB/s)
_CAL_INIT = {"alpha_shm": 2e-5, "beta_shm": 1 / 2e9, "alpha_tcp": 1e-4, "beta_tcp": 1 / 1.2e8, "overhead": 1e-3}
_CAL_LO = {"alpha_shm": 1e-7, "beta_shm": 1e-12, "alpha_tcp": 1e-7, "beta_tcp": 1e-12, "overhead": 1e-6}
_CAL_HI = {"alpha_shm": 1e-2, "beta_shm": 1e-5, "alpha_tcp": 1e-1, "beta_tcp": 1e-5, "overhead": 1.0}


def fit(rows, fixed=None):
    """Fit CAL_PARAMS (those the rows can see) by least squares of the relative step-time error.
    Returns (theta, rms relative error)."""
    fixed = dict(fixed or {})
    nets = {("tcp" if r.get("network") == "tcp" else "shm") for r in rows if int(r["n"]) > 1}
    free = [k for k in CAL_PARAMS if k not in fixed and (k == "overhead" or k.split("_")[1] in nets)]
    base = {**_CAL_INIT, **fixed}

    def theta_of(x):
        th = dict(base)
        for k, v in zip(free, x):
            th[k] = min(max(math.exp(v), _CAL_LO[k]), _CAL_HI[k])
        return th

    def loss(x):
        th = theta_of(x)
        return sum(((predict_step(r, th) - r["step_s"]) / r["step_s"]) ** 2 for r in rows)

    best = None
    # a few starts: the fit is piecewise smooth (overlap introduces max()), so restart
    for scale in (1.0, 0.1, 10.0):
        x0 = [math.log(base[k] * scale) for k in free]
        x, v = _nelder_mead(loss, x0)
        x, v = _nelder_mead(loss, x, step=0.1)
        if best is None or v < best[1]:
            best = (x, v)
    theta = theta_of(best[0])
    return theta, math.sqrt(best[1] / max(1, len(rows)))


def calibrate(data, loo=True, fixed=None):
    """Fit on all rows; predict each row; leave-one-out: refit without the row, predict it.
    fixed: {name: value} of CAL_PARAMS held at a known value (e.g. beta_tcp from the link rate)."""
    rows = [r for r in data["rows"] if int(r["n"]) > 1 and "error" not in r]
    if not rows:
        raise ValueError("no measured rows with n > 1 to calibrate on")
    theta, rms = fit(rows, fixed)
    out = []
    for i, r in enumerate(rows):
        pred = predict_step(r, theta)
        loo_pred = None
        if loo and len(rows) > 2:
            th_i, _ = fit(rows[:i] + rows[i + 1 :], fixed)
            loo_pred = predict_step(r, th_i)
        out.append({**r, "pred_step_s": pred, "loo_pred_step_s": loo_pred, "pred_exposed_s": predict_exposed(r, theta)})
    return theta, rms, out


def format_calibration(theta, rms, out):
    lines = [
        "fitted: "
        + ", ".join(
            f"{k} {v * 1e6:.1f} us"
            if k.startswith("alpha") or k == "overhead"
            else f"{k} {1 / v / 1e6:.1f} MB/s (1/beta)"
            for k, v in theta.items()
            if k in CAL_PARAMS
        ),
        "at a bound of the search (not identifiable from these rows): "
        + (
            ", ".join(k for k in CAL_PARAMS if theta[k] <= _CAL_LO[k] * 1.01 or theta[k] >= _CAL_HI[k] * 0.99) or "none"
        ),
        "",
    ]
    hdr = (
        f"{'strategy':<18}{'n':>3} {'net':<4}{'measured ms':>12}{'model ms':>10}{'err %':>7}{'LOO ms':>9}"
        f"{'LOO err %':>10}{'comm wait ms':>13}{'model wait':>11}"
    )
    lines.append(hdr)
    errs, loo_errs = [], []
    for r in out:
        e = (r["pred_step_s"] - r["step_s"]) / r["step_s"]
        errs.append(abs(e))
        loo = r["loo_pred_step_s"]
        le = (loo - r["step_s"]) / r["step_s"] if loo is not None else None
        if le is not None:
            loo_errs.append(abs(le))
        lines.append(
            f"{r['strategy']:<18}{int(r['n']):>3} {r.get('network', 'shm'):<4}{1e3 * r['step_s']:>12.1f}"
            f"{1e3 * r['pred_step_s']:>10.1f}{100 * e:>7.1f}"
            + (f"{1e3 * loo:>9.1f}{100 * le:>10.1f}" if le is not None else f"{'-':>9}{'-':>10}")
            + f"{1e3 * r.get('comm_wait_s', 0.0):>13.1f}{1e3 * r['pred_exposed_s']:>11.1f}"
        )
    wait_errs = [abs(r["pred_exposed_s"] - r["comm_wait_s"]) / r["comm_wait_s"] for r in out if r.get("comm_wait_s")]
    lines.append(
        f"step time: mean |error| {100 * sum(errs) / len(errs):.1f}% (max {100 * max(errs):.1f}%), "
        f"{sum(e <= 0.15 for e in errs)}/{len(errs)} rows within 15%"
        + (
            f"; leave-one-out mean |error| {100 * sum(loo_errs) / len(loo_errs):.1f}% "
            f"(max {100 * max(loo_errs):.1f}%), {sum(e <= 0.15 for e in loo_errs)}/{len(loo_errs)} within 15%"
            if loo_errs
            else ""
        )
    )
    if wait_errs:
        lines.append(
            f"comm wait alone (the part the model predicts; compute is measured): mean |error| "
            f"{100 * sum(wait_errs) / len(wait_errs):.1f}% (max {100 * max(wait_errs):.1f}%), "
            f"{sum(e <= 0.15 for e in wait_errs)}/{len(wait_errs)} rows within 15%"
        )
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------
def _sim_parser():
    p = argparse.ArgumentParser(
        prog="dutycycle simulate",
        description="Alpha-beta model of data-parallel training on 8...4096 GPUs: step time, scaling "
        "efficiency and duty cycle for parameter server, ring/tree/hierarchical all-reduce and ZeRO. "
        "'dutycycle simulate calibrate RESULTS.json' fits it to measured runs.",
    )
    a = p.add_argument
    a("--params", type=float, default=1.3e9, help="model parameters (default 1.3e9)")
    a("--grad-bytes", type=int, default=2, help="bytes per gradient on the wire (default 2, bf16)")
    a("--param-bytes", type=int, default=2, help="bytes per parameter sent back/all-gathered (default 2)")
    a("--compute-ms", type=float, default=None, help="forward+backward ms per GPU per step (default: from FLOPs)")
    a("--tokens-per-gpu", type=int, default=16384, help="tokens per GPU per step for the FLOP count (default 16384)")
    a("--peak-tflops", type=float, default=989.0, help="GPU peak TFLOP/s (default 989, H100 SXM bf16 dense)")
    a("--mfu", type=float, default=0.40, help="model FLOP utilisation of the compute (default 0.40)")
    a("--backward-frac", type=float, default=2 / 3, help="backward's share of forward+backward (default 2/3)")
    a("--optimizer-ms", type=float, default=None, help="optimizer step ms (default: from bytes/param and HBM)")
    a("--opt-bytes-per-param", type=float, default=28, help="optimizer bytes moved per param (default 28)")
    a("--hbm-gbs", type=float, default=2000, help="achieved HBM GB/s (default 2000)")
    a("--gpus-per-node", type=int, default=8)
    a("--nvlink-gbs", type=float, default=370, help="NVLink ring bus bandwidth per GPU, GB/s (default 370)")
    a("--nvlink-us", type=float, default=2.0, help="NVLink latency per collective step, us (default 2)")
    a("--nic-gbps", type=float, default=400, help="NIC rate, Gb/s (default 400)")
    a("--nics-per-node", type=int, default=8, help="NICs per node (default 8, one per GPU)")
    a("--nic-us", type=float, default=5.0, help="inter-node latency per collective step, us (default 5)")
    a("--bucket-mb", type=float, default=25, help="gradient bucket cap, MB (default 25; 0 = one bucket)")
    a("--first-bucket-mb", type=float, default=1, help="first bucket, MB (default 1)")
    a("--min-gpus", type=int, default=8)
    a("--max-gpus", type=int, default=4096)
    a("--plot", metavar="PNG", help="draw duty cycle and scaling efficiency curves into this PNG")
    a("--json", metavar="PATH", help="write the results as JSON")
    return p


def _cal_parser():
    p = argparse.ArgumentParser(
        prog="dutycycle simulate calibrate",
        description="Fit the model's link terms to measured runs (the JSON of benchmarks/scaling.py) "
        "and print prediction vs measurement per row, with the leave-one-out error.",
    )
    p.add_argument("results", help="JSON written by benchmarks/scaling.py")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"hold a term at a known value instead of fitting it (names: {', '.join(CAL_PARAMS)}; "
        "seconds, beta in s/byte; e.g. beta_tcp=8.5e-9 for a 1 Gbit/s link's TCP goodput)",
    )
    p.add_argument("--json", metavar="PATH", help="write fitted terms and per-row predictions as JSON")
    return p


def simulation_from_args(args):
    wl = default_workload(
        params=args.params,
        tokens_per_gpu=args.tokens_per_gpu,
        peak_tflops=args.peak_tflops,
        mfu=args.mfu,
        backward_frac=args.backward_frac,
        compute_ms=args.compute_ms,
        optimizer_ms=args.optimizer_ms,
        opt_bytes_per_param=args.opt_bytes_per_param,
        hbm_gbs=args.hbm_gbs,
        grad_bytes=args.grad_bytes,
        param_bytes=args.param_bytes,
    )
    cl = Cluster(
        gpus_per_node=args.gpus_per_node,
        nvlink_bw=args.nvlink_gbs * GB,
        nvlink_alpha=args.nvlink_us * 1e-6,
        nic_bw=args.nic_gbps * 1e9 / 8,
        nics_per_node=args.nics_per_node,
        nic_alpha=args.nic_us * 1e-6,
        hbm_bw=args.hbm_gbs * GB,
    )
    plans = [replace(p, first_bucket_mb=args.first_bucket_mb) for p in default_plans(args.bucket_mb)]
    return Simulation(wl, cl, plans, gpu_counts(args.min_gpus, args.max_gpus))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "calibrate":
        args = _cal_parser().parse_args(argv[1:])
        with open(args.results) as f:
            data = json.load(f)
        fixed = {}
        for item in args.fix:
            name, _, value = item.partition("=")
            if name not in CAL_PARAMS or not value:
                raise SystemExit(f"--fix {item!r}: expected NAME=VALUE with NAME one of {', '.join(CAL_PARAMS)}")
            fixed[name] = float(value)
        theta, rms, out = calibrate(data, loo=not args.no_loo, fixed=fixed)
        if fixed:
            print("held fixed: " + ", ".join(f"{k}={v:g}" for k, v in fixed.items()))
        if data.get("machine"):
            print(f"measured on: {data['machine']}")
        print(format_calibration(theta, rms, out))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"theta": theta, "rms_rel_error": rms, "rows": out}, f, indent=1)
        return 0
    args = _sim_parser().parse_args(argv)
    sim = simulation_from_args(args)
    text, res = report(sim)
    print(text)
    if args.plot:
        plot(res, sim.counts, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "workload": asdict(sim.workload),
                    "cluster": asdict(sim.cluster),
                    "counts": sim.counts,
                    "results": {k: [r.as_dict() for r in v] for k, v in res.items()},
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
