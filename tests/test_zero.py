"""ZeRO stages 1/2 and the parameter server (strategies/zero.py, strategies/parameter_server.py).

Three layers: the shard bookkeeping alone (ShardLayout: any parameter count, padding, who owns
what); the engines on N in-process ranks (threads behind `_C.Comm`'s interface: equal to one
process with the whole batch, memory per rank, consolidated checkpoints); and the strategies
under mpirun with the real communicator (equal to ddp and to one process)."""

import json
import os
import sys

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.strategies.parameter_server import ParameterServerEngine
from dutycycle.strategies.zero import ShardLayout, ZeroEngine

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "zero_scripts"))
import common  # noqa: E402
from fakecomm import ThreadComm, run_ranks  # noqa: E402

TOL = 1e-5


# ---- ShardLayout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "numels,bucket,first",
    [
        ([5], 100, 100),
        ([3, 0, 7, 1, 1, 12], 4, 2),
        ([1] * 13, 3, 1),
        ([1000, 3, 77, 2, 999], 500, 10),
        ([0, 0, 4], 2, 2),
    ],
)
def test_layout_covers_every_element_once(world_size, numels, bucket, first):
    L = ShardLayout(numels, world_size, bucket_numel=bucket, first_bucket_numel=first)
    assert L.total % world_size == 0 and L.shard_numel * world_size == L.total
    assert L.num_params == sum(numels)
    # buckets: contiguous, padded to the world size, in reverse parameter order, chunks end to end
    off = shard = 0
    order = []
    for k, b in enumerate(L.buckets):
        assert b.index == k and b.offset == off and b.shard_offset == shard
        assert b.padded % world_size == 0 and b.numel <= b.padded < b.numel + world_size
        assert b.chunk * world_size == b.padded
        off, shard = off + b.padded, shard + b.chunk
        order += b.params
        assert sum(numels[i] for i in b.params) == b.numel
    assert order == list(reversed(range(len(numels))))
    # every parameter element is owned by exactly one rank, at a unique place in its shard
    owned = {}
    for r in range(world_size):
        slots = set()
        for pc in L.pieces(r):
            assert 0 <= pc.lo < pc.hi <= numels[pc.param]
            assert L.chunk_range(L.param_bucket[pc.param], r)[0] <= pc.flat_lo
            for k in range(pc.hi - pc.lo):
                key = (pc.param, pc.lo + k)
                assert key not in owned
                owned[key] = r
                assert L.owner(pc.flat_lo + k) == r
                slot = pc.shard_lo + k
                assert 0 <= slot < L.shard_numel and slot not in slots
                slots.add(slot)
    assert len(owned) == sum(numels)
    # parameters do not overlap in the flat buffer
    spans = sorted((L.param_offset[i], L.param_offset[i] + n) for i, n in enumerate(numels) if n)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_layout_first_bucket_is_small_and_a_big_parameter_gets_its_own():
    L = ShardLayout([10, 10, 500, 10, 10], 4, bucket_numel=100, first_bucket_numel=15)
    assert [b.params for b in L.buckets] == [[4, 3], [2], [1, 0]]
    assert [b.padded for b in L.buckets] == [20, 500, 20]
    with pytest.raises(ValueError, match="world_size"):
        ShardLayout([3], 0)


# ---- the engines on in-process ranks -------------------------------------------------------------------
def _train(kind, N, steps=3, B=2, accumulate=1, resume_state=None, make_opt=common.make_optimizer):
    """K steps of `kind` on N thread ranks; returns per-rank (params, memory, engine, optimizer, comm)."""
    models = [common.make_model() for _ in range(N)]
    opts = [make_opt(m) for m in models]
    if resume_state is not None:
        for o in opts:
            o.load_state_dict(resume_state)
    data = common.batches(steps * accumulate, N * B)
    comms = ThreadComm.make(N)
    engines = []
    for m, comm in zip(models, comms):  # made here: the parameters become views before any forward
        params = [p for p in m.parameters()]
        if kind == "ps":
            engines.append(ParameterServerEngine(params, comm))
        else:  # tiny buckets: several per model, so uneven chunks and in-order launches are exercised
            engines.append(ZeroEngine(params, comm, stage=kind, bucket_cap_mb=0.003, first_bucket_mb=0.001,
                                      max_inflight=1 << 20))  # fmt: skip

    def fn(comm):
        r = comm.rank
        m, o, eng = models[r], opts[r], engines[r]
        eng.broadcast_params()
        for s in range(steps):
            o.zero_grad()
            for a in range(accumulate):
                xy = data[s * accumulate + a][r * B : (r + 1) * B]
                if kind != "ps":
                    eng.sync = a == accumulate - 1  # stage 1: only the last micro-batch communicates
                eng.before_backward()
                (common.loss_of(m, xy) / accumulate).backward()
                if kind != "ps":
                    eng.after_backward()
            if kind != "ps":
                eng.reduce_gradients()
            eng.step(o)
        state = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
        return state, eng.memory_per_rank(), eng, o, comm

    return run_ranks(N, fn, comms)


def _reference(steps=3, global_batch=4, accumulate=1, make_opt=common.make_optimizer):
    model = common.make_model()
    opt = make_opt(model)
    data = common.batches(steps * accumulate, global_batch)
    for s in range(steps):
        opt.zero_grad()
        for a in range(accumulate):
            (common.loss_of(model, data[s * accumulate + a]) / accumulate).backward()
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, opt, model


@pytest.mark.parametrize("kind", [1, 2, "ps"])
@pytest.mark.parametrize("N", [2, 3, 4])
def test_engine_equals_one_process_with_the_whole_batch(kind, N):
    ref, _, _ = _reference(global_batch=N * 2)
    out = _train(kind, N)
    for r in range(N):
        assert common.rel_err(out[r][0], ref) <= TOL, (kind, N, r)
    for r in range(1, N):  # every rank holds exactly the same parameters
        assert all(np.array_equal(out[r][0][k], out[0][0][k]) for k in ref)


@pytest.mark.parametrize("kind", [1, 2])
def test_engine_adam_with_l2_decay_and_maximize(kind):
    def adam(m):  # torch.optim.Adam's coupled decay (grad + wd * param) on one group, maximize on the other
        decay = [p for p in m.parameters() if p.dim() >= 2]
        rest = [p for p in m.parameters() if p.dim() < 2]
        return dc.optim.Adam([{"params": decay, "weight_decay": 0.1}, {"params": rest, "maximize": True}], lr=1e-2)

    ref, _, _ = _reference(global_batch=6, make_opt=adam)
    out = _train(kind, 3, make_opt=adam)
    assert common.rel_err(out[0][0], ref) <= TOL


@pytest.mark.parametrize("kind", [1, 2])
def test_engine_accumulation_equals_the_large_batch(kind):
    ref, _, _ = _reference(global_batch=8, accumulate=2)
    out = _train(kind, 2, B=4, accumulate=2)
    assert common.rel_err(out[0][0], ref) <= TOL
    eng, comm = out[0][2], out[0][4]
    reductions = sum(1 for r, op, _ in comm.world.ops if r == 0 and op.startswith("reduce_scatter"))
    # 3 steps x buckets: stage 1 reduces once per step, stage 2 once per micro-batch
    assert reductions == 3 * len(eng.layout.buckets) * (1 if kind == 1 else 2)


def test_memory_per_rank_shards_state_and_gradients():
    N = 4
    mems = {kind: _train(kind, N, steps=1) for kind in (1, 2, "ps")}
    P = sum(p.numel() for p in common.make_model().parameters())
    f = 4  # float32
    for r in range(N):
        z1, z2, ps = (mems[k][r][1] for k in (1, 2, "ps"))
        shard = -(-P // N)  # at most this plus one padding element per bucket
        nb = z1["buckets"]
        for m in (z1, z2):
            assert m["num_params"] == P and m["parameters"] == m["padded_numel"] * f
            assert 2 * shard * f <= m["optimizer_state"] <= 2 * (shard + nb) * f  # AdamW's m, v: 1/N each
        # stage 1 keeps the full gradient (backward writes it) and its shard; stage 2 only the shard
        assert z1["gradients"] == z1["padded_numel"] * f + z1["optimizer_state"] // 2
        assert z2["gradients"] == z2["optimizer_state"] // 2
        # (threads run one backward at a time, so here every bucket may be in flight at once; the
        # mpirun test checks the max_inflight bound)
        assert 0 < z2["gradient_buckets_peak"] <= z2["padded_numel"] * f
        # the parameter server: full state on rank 0 only, rank 0 also holds a receive buffer
        assert ps["optimizer_state"] == (2 * P * f if r == 0 else 0)
        assert ps["gradients"] == (2 if r == 0 else 1) * P * f


@pytest.mark.parametrize("kind", [1, 2])
def test_consolidated_state_loads_in_one_process(kind):
    N, steps = 3, 2
    ref, ref_opt, ref_model = _reference(steps=steps, global_batch=N * 2)
    out = _train(kind, N, steps=steps)

    def consolidate(comm):
        _, _, eng, opt, _ = out[comm.rank]
        return eng.consolidated_state_dict(opt)

    sds = run_ranks(N, consolidate, [o[4] for o in out])
    want = ref_opt.state_dict()
    for sd in sds:
        assert sd["param_groups"] == want["param_groups"]
        assert sorted(sd["state"]) == sorted(want["state"])
        for i, s in want["state"].items():
            assert sd["state"][i]["step"] == s["step"] == steps
            for name in ("exp_avg", "exp_avg_sq"):
                a, b = sd["state"][i][name].numpy(), s[name].numpy()
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9 if name == "exp_avg_sq" else 1e-7)
    # it loads into a single-process AdamW, and into the engine again (resume), and both go on alike
    single = common.make_model()
    single.load_state_dict({k: dc.tensor(v) for k, v in out[0][0].items()})
    opt = common.make_optimizer(single)
    opt.load_state_dict(sds[0])
    xy = common.batches(1, N * 2, seed=9)[0]
    opt.zero_grad()
    common.loss_of(single, xy).backward()
    opt.step()
    got = {k: v.detach().numpy().copy() for k, v in single.state_dict().items()}
    ref_opt.zero_grad()
    common.loss_of(ref_model, xy).backward()
    ref_opt.step()
    after = {k: v.detach().numpy().copy() for k, v in ref_model.state_dict().items()}
    assert common.rel_err(got, after) <= TOL


def test_engine_adopts_a_loaded_state_and_frees_it():
    N = 2
    _, ref_opt, _ = _reference(steps=2, global_batch=4)
    sd = ref_opt.state_dict()
    out = _train(1, N, steps=1, resume_state=sd)
    _, _, eng, opt, _ = out[0]
    assert not any(opt.state.values())  # the full state went into the shard and was dropped
    assert eng.param_steps == [3] * len(eng.params)


@pytest.mark.parametrize("kind", [1, 2])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_engine_clip_grad_norm_over_the_shards(kind, norm_type):
    """The norm from the shards (padding excluded, one scalar all_reduce) is the full gradient's,
    and the clipped step equals one process's clip_grad_norm_ + step (N=3: every bucket padded)."""
    N, B, steps = 3, 2, 2
    data = common.batches(steps, N * B)
    ref = common.make_model()
    ref_opt = common.make_optimizer(ref)
    ref_norms = []
    for xy in data:
        ref_opt.zero_grad()
        common.loss_of(ref, xy).backward()
        ref_norms.append(float(dc.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.05, norm_type)))
        ref_opt.step()
    want = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    models = [common.make_model() for _ in range(N)]
    opts = [common.make_optimizer(m) for m in models]
    comms = ThreadComm.make(N)
    engines = [ZeroEngine(list(m.parameters()), c, stage=kind, bucket_cap_mb=0.003, first_bucket_mb=0.001,
                          max_inflight=1 << 20) for m, c in zip(models, comms)]  # fmt: skip

    def fn(comm):
        r = comm.rank
        m, o, eng = models[r], opts[r], engines[r]
        norms = []
        for xy in data:
            o.zero_grad()
            eng.before_backward()
            common.loss_of(m, xy[r * B : (r + 1) * B]).backward()
            eng.after_backward()
            eng.reduce_gradients()
            norms.append(eng.clip_grad_norm_(0.05, norm_type))
            eng.step(o)
        return norms, {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}

    out = run_ranks(N, fn, comms)
    for norms, params in out:
        np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
        assert common.rel_err(params, want) <= TOL
    assert min(ref_norms) > 0.05  # the clipping acted at every step


@pytest.mark.parametrize("kind", [1, 2, "ps"])
def test_parameters_without_a_gradient_are_skipped(kind):
    """As torch's AdamW: a parameter with no gradient in a step (on any rank) is not stepped (no
    decay, state not advanced); one that never gets a gradient has no state in the checkpoint."""
    N, B, steps = 2, 2, 3
    data = common.batches(steps, N * B)

    def build():
        m = common.make_model()
        dc.manual_seed(5)
        extra = dc.nn.Parameter(dc.randn(5))  # gets a gradient at steps 0 and 2 only
        never = dc.nn.Parameter(dc.randn(7))  # never gets one
        decay = [p for p in m.parameters() if p.dim() >= 2]
        rest = [p for p in m.parameters() if p.dim() < 2]
        opt = dc.optim.AdamW([{"params": decay + [never], "weight_decay": 0.1},
                              {"params": rest + [extra], "weight_decay": 0.1}], lr=1e-2)  # fmt: skip
        return m, extra, never, opt

    def loss(m, extra, xy, s):
        out = common.loss_of(m, xy)
        return out + (extra * extra).sum() * 0.01 if s != 1 else out

    def snap(m, extra, never):
        d = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
        d["extra"], d["never"] = extra.detach().numpy().copy(), never.detach().numpy().copy()
        return d

    rm, rextra, rnever, ropt = build()
    never0 = rnever.detach().numpy().copy()
    for s, xy in enumerate(data):
        ropt.zero_grad()
        loss(rm, rextra, xy, s).backward()
        ropt.step()
    want, want_sd = snap(rm, rextra, rnever), ropt.state_dict()
    built = [build() for _ in range(N)]
    comms = ThreadComm.make(N)
    engines = []
    for (m, extra, never, _), c in zip(built, comms):
        params = list(m.parameters()) + [extra, never]
        engines.append(ParameterServerEngine(params, c) if kind == "ps" else
                       ZeroEngine(params, c, stage=kind, bucket_cap_mb=0.003, first_bucket_mb=0.001,
                                  max_inflight=1 << 20))  # fmt: skip

    def fn(comm):
        r = comm.rank
        (m, extra, never, o), eng = built[r], engines[r]
        for s, xy in enumerate(data):
            o.zero_grad()
            eng.before_backward()
            loss(m, extra, xy[r * B : (r + 1) * B], s).backward()
            if kind != "ps":
                eng.after_backward()
                eng.reduce_gradients()
            eng.step(o)
        sd = eng.consolidated_state_dict(o) if kind != "ps" else (o.state_dict() if r == 0 else None)
        return snap(m, extra, never), sd

    out = run_ranks(N, fn, comms)
    for params, _ in out:
        np.testing.assert_array_equal(params["never"], never0)  # no decay: not stepped at all
        assert common.rel_err(params, want) <= TOL
    sd = out[0][1]
    assert sorted(sd["state"]) == sorted(want_sd["state"])  # the never-used parameter has no state
    for i, st in want_sd["state"].items():
        assert int(sd["state"][i]["step"]) == int(st["step"])
    assert {int(st["step"]) for st in sd["state"].values()} == {2, 3}  # extra: 2 steps, the rest 3


# ---- through the Trainer, on thread ranks ----------------------------------------------------------------
def _args(**kw):
    ns = {"out": None, "strategies": "", "devices": 1, "batch": 2, "steps": 3, "accumulate": 1, "n_embd": 11,
          "n_layer": 1, "n_head": 1, "ckpt": False, "bucket_cap_mb": 0.002, "clip": None,
          "clip_algorithm": None, "resume_at": None}  # fmt: skip
    ns.update(kw)
    return type("Args", (), ns)


def _thread_fits(N, strategies, tmp_path, **kw):
    import zero_trainer

    args = _args(out=str(tmp_path), strategies=",".join(strategies), devices=N, **kw)
    run_ranks(N, lambda comm: zero_trainer.run(args, comm))
    return {s: dict(np.load(tmp_path / f"{s}.npz")) for s in strategies}


def _reference_fit(N, tmp_path, **kw):
    import zero_trainer

    a = _args(**kw)
    model_kw = {"n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head}
    ckpt = str(tmp_path / "reference.ckpt") if a.ckpt else None
    params, _, trainer = zero_trainer.fit(
        "auto", 1, a.batch * N, a.steps, a.accumulate, model_kw, ckpt, clip=a.clip, clip_algorithm=a.clip_algorithm
    )
    return params, trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_trainer_strategies_equal_one_process_on_thread_ranks(tmp_path, accumulate):
    N = 2
    got = _thread_fits(N, ["zero1", "zero2", "parameter_server"], tmp_path, accumulate=accumulate)
    ref, _ = _reference_fit(N, tmp_path, accumulate=accumulate)
    for name, params in got.items():
        assert common.rel_err(params, ref) <= TOL, name


@pytest.mark.parametrize("algo,val", [("norm", 0.05), ("value", 0.002)])
def test_trainer_gradient_clipping_on_thread_ranks(tmp_path, algo, val):
    """Trainer(gradient_clip_val=...) under zero1/zero2 (clipped on the shards) and the parameter
    server (on rank 0) reaches one process's clipped run; the clipping really acts."""
    N = 2
    got = _thread_fits(N, ["zero1", "zero2", "parameter_server"], tmp_path, clip=val, clip_algorithm=algo)
    ref, _ = _reference_fit(N, tmp_path, clip=val, clip_algorithm=algo)
    unclipped, _ = _reference_fit(N, tmp_path)
    assert common.rel_err(ref, unclipped) > 1e-3
    for name, params in got.items():
        assert common.rel_err(params, ref) <= TOL, name


def _check_resumed(tmp_path, strategies, K, accumulate=1):
    for s in strategies:
        full, resumed = (dict(np.load(tmp_path / f"{s}-{w}.npz")) for w in ("full", "resumed"))
        info = json.load(open(tmp_path / f"{s}-resumed.json"))
        assert info["global_step"] == 2 * K, s
        assert info["batches_run"] == K * accumulate, s  # the resumed fit ran only the second half
        assert common.rel_err(resumed, full) <= TOL, s


def test_trainer_resume_on_thread_ranks_with_accumulation(tmp_path):
    """fit K steps + checkpoint, then fit(ckpt_path=...) to 2K == one fit of 2K steps, with gradient
    accumulation (stage 2 sums micro-batches in the shard)."""
    strategies = ["zero1", "zero2", "parameter_server"]
    args = _args(out=str(tmp_path), strategies=",".join(strategies), devices=2, resume_at=2, accumulate=2)
    import zero_trainer

    run_ranks(2, lambda comm: zero_trainer.run(args, comm))
    _check_resumed(tmp_path, strategies, 2, accumulate=2)


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "parameter_server"])
def test_manual_optimization_clip_gradients_on_thread_ranks(strategy):
    """Manual optimization: self.clip_gradients(...) before opt.step() is done on the reduced
    gradients at the step, and matches one process's manual loop."""
    import zero_trainer

    import dutycycle as L

    class Manual(zero_trainer.GPTModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            (xy,) = batch
            _, loss = self.gpt(xy[:, :-1], xy[:, 1:])
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.05, gradient_clip_algorithm="norm")
            opt.step()
            return loss

    def fit(strat, devices, batch, comm=None):
        with zero_trainer._BUILD:
            model = Manual()
        if comm is not None:
            strat = L.strategies.from_name(strat, **({} if strat == "parameter_server" else {"max_inflight": 1 << 20}))
            strat._dc_comm = comm
        trainer = L.Trainer(strategy=strat, devices="auto", accelerator="cpu", max_steps=3, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, barebones=True)  # fmt: skip
        data = zero_trainer.dataset(3 * batch * devices)
        trainer.fit(model, zero_trainer.DataLoader(data, batch_size=batch, shuffle=False))
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    ref = fit("auto", 1, 4)
    got = run_ranks(2, lambda comm: fit(strategy, 2, 2, comm))
    assert common.rel_err(got[0], ref) <= TOL
    init = {k: v.detach().numpy() for k, v in zero_trainer.GPTModule().state_dict().items()}
    unclipped, _ = _reference_fit(2, None)
    assert common.rel_err(ref, init) > 1e-3 and common.rel_err(ref, unclipped) > 1e-3  # it trained, clipped


def test_zero_rejects_what_it_cannot_shard():
    from dutycycle.strategies import from_name

    with pytest.raises(ValueError, match="stage"):
        from_name("zero1", stage=3)
    m = common.make_model()
    (eng,) = run_ranks(1, lambda comm: ZeroEngine(list(m.parameters()), comm))
    with pytest.raises(TypeError, match="AdamW"):
        eng._groups(dc.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not a trainable parameter"):
        eng._groups(dc.optim.AdamW([dc.nn.Parameter(dc.zeros(3))]))
    with dc.no_grad():
        m.lm_head.weight.data = dc.zeros(m.lm_head.weight.shape)
    with pytest.raises(RuntimeError, match="no longer a view"):
        eng.before_backward()


# ---- under mpirun: the real comm layer -------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "zero_scripts", "zero_trainer.py")
STRATEGIES = ["ddp", "zero1", "zero2", "parameter_server"]


def _has_mpi():
    import shutil

    return getattr(dc._C, "Comm", None) is not None and shutil.which("mpirun") is not None


needs_mpi = pytest.mark.skipif(not _has_mpi(), reason="needs the comm layer (_C.Comm, built with Open MPI) and mpirun")


def _mpirun(n, *args, timeout=120):
    import subprocess

    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(HERE), "python"), env.get("PYTHONPATH", "")]),
    )
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(n), sys.executable, WORKER, *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@needs_mpi
@pytest.mark.parametrize("N", [2, 4])
def test_mpi_strategies_equal_ddp_and_one_process(tmp_path, N):

    # several buckets (~1 KB each): uneven chunks, stage 2's in-flight bound, in-order launches
    p = _mpirun(N, "--out", str(tmp_path), "--ckpt", "--bucket-cap-mb", "0.001")
    ref, ref_trainer = _reference_fit(N, tmp_path, ckpt=True)
    got = {s: dict(np.load(tmp_path / f"{s}.npz")) for s in STRATEGIES}
    assert common.rel_err(got["ddp"], ref) <= TOL
    for s in STRATEGIES[1:]:
        assert common.rel_err(got[s], got["ddp"]) <= TOL, s
        assert common.rel_err(got[s], ref) <= TOL, s
    for r in range(N):  # the memory line is logged once on every rank
        assert f"zero2 rank {r}/{N}:" in p.stdout and f"parameter_server rank {r}/{N}:" in p.stdout

    # ---- memory per rank: zero1's state is ddp's / N, zero2's gradients too; the parameter server's
    # state all on rank 0
    mem = {(s, r): json.load(open(tmp_path / f"mem-{s}-{r}.json")) for s in STRATEGIES for r in range(N)}
    P, f = mem["ddp", 0]["num_params"], 4
    for r in range(N):
        ddp, z1, z2, ps = (mem[s, r] for s in STRATEGIES)
        assert ddp["optimizer_state"] == 2 * P * f and ddp["gradients"] == P * f
        for z in (z1, z2):
            assert z["optimizer_state"] == 2 * z["padded_numel"] * f // N
            assert abs(z["optimizer_state"] - ddp["optimizer_state"] / N) <= 2 * f * z["buckets"] * N
        assert z2["gradients"] == z2["padded_numel"] * f // N
        # backward's order is the buckets' order here: max_inflight=2 in flight + the one filling
        assert z2["buckets"] >= 4 and z2["gradient_buckets_peak"] <= 3 * z2["largest_bucket"]
        assert z2["gradient_buckets_peak"] < z2["padded_numel"] * f
        assert z1["gradients"] >= ddp["gradients"]  # stage 1 keeps the full gradient (and its shard)
        assert ps["optimizer_state"] == (2 * P * f if r == 0 else 0)

    # ---- checkpoints: full weights + AdamW's state consolidated, as one process writes them
    from dutycycle.trainer import checkpoint_io

    want = checkpoint_io.load_checkpoint(str(tmp_path / "reference.ckpt"))
    for s in ("zero1", "zero2", "parameter_server"):
        ck = checkpoint_io.load_checkpoint(str(tmp_path / f"{s}.ckpt"))
        sd = {k: v.numpy() for k, v in ck["state_dict"].items()}
        assert common.rel_err(sd, {k: v.numpy() for k, v in want["state_dict"].items()}) <= TOL, s
        (opt,), (ref_opt,) = ck["optimizer_states"], want["optimizer_states"]
        assert opt["param_groups"] == ref_opt["param_groups"], s
        assert sorted(opt["state"]) == sorted(ref_opt["state"]), s
        for i, st in ref_opt["state"].items():
            assert int(opt["state"][i]["step"]) == int(st["step"])
            for name in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_allclose(opt["state"][i][name].numpy(), st[name].numpy(), rtol=1e-3, atol=1e-8)
        # and it loads into a single-process model + AdamW
        m = common.make_model()
        m.load_state_dict({k[len("gpt.") :]: v for k, v in ck["state_dict"].items()})
        common.make_optimizer(m).load_state_dict(opt)


@needs_mpi
@pytest.mark.parametrize("algo,val", [("norm", 0.05), ("value", 0.002)])
def test_mpi_gradient_clipping_equals_ddp(tmp_path, algo, val):
    """Trainer(gradient_clip_val=val, gradient_clip_algorithm=algo), N=2 under mpirun: zero1/zero2
    clip on the shards, the parameter server on rank 0, and all reach ddp's clipped parameters."""
    N = 2
    _mpirun(N, "--out", str(tmp_path), "--bucket-cap-mb", "0.001", "--clip", str(val), "--clip-algorithm", algo)
    got = {s: dict(np.load(tmp_path / f"{s}.npz")) for s in STRATEGIES}
    unclipped, _ = _reference_fit(N, tmp_path)
    assert common.rel_err(got["ddp"], unclipped) > 1e-3  # the clipping acted
    for s in STRATEGIES[1:]:
        assert common.rel_err(got[s], got["ddp"]) <= TOL, s


@needs_mpi
def test_mpi_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """N=2 under mpirun, through the Trainer: zero1/zero2 (and the parameter server) fit K=3 steps
    and save a checkpoint (the shards consolidated), then a fresh fit(model, ckpt_path=...) resumes
    it to 2K (the state moved back into the shards) and reaches the parameters of one 2K-step fit."""
    strategies = ["zero1", "zero2", "parameter_server"]
    K = 3
    _mpirun(2, "--out", str(tmp_path), "--bucket-cap-mb", "0.001", "--resume-at", str(K),
            "--strategies", ",".join(strategies))  # fmt: skip
    _check_resumed(tmp_path, strategies, K)


@pytest.mark.parametrize("stage", [1, 2])
def test_buckets_are_reduced_while_backward_runs(stage):
    """Full buckets are launched from the post-accumulate-grad hooks, in bucket order, before
    backward returns (the rest at its end)."""
    m = common.make_model()
    (comm,) = ThreadComm.make(1)
    eng = ZeroEngine(list(m.parameters()), comm, stage=stage, bucket_cap_mb=0.001, first_bucket_mb=0.001)
    launched, phase = [], ["before"]
    rs = comm.reduce_scatter

    def spy(send, recv, op="sum", async_op=False):
        launched.append(phase[0])
        return rs(send, recv, op=op, async_op=async_op)

    comm.reduce_scatter = spy
    eng.before_backward()
    phase[0] = "during"
    common.loss_of(m, common.batches(1, 2)[0]).backward()
    phase[0] = "after"
    eng.after_backward()
    eng.reduce_gradients()
    nb = len(eng.layout.buckets)
    assert nb >= 4 and len(launched) == nb
    assert launched.count("during") >= nb - 1  # the last bucket holds wte, final only at the very end


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_checkpoint_saved_at_4_ranks_resumes_at_2_and_at_1(tmp_path, strategy):
    """Resharding: a checkpoint saved by 4 thread ranks (zero2: each rank writes its own shard of
    the optimizer state, nothing gathered) resumes at 2 ranks and in one process; each continues
    to 2K steps and reaches the parameters of an uninterrupted 4-rank run."""
    import zero_trainer

    import dutycycle.checkpoint as ckpt

    K, kw = 3, {"model_kw": {"n_embd": 11, "n_layer": 1, "n_head": 1}, "bucket_cap_mb": 0.001, "data_steps": 6}
    path = str(tmp_path / "w4.ckpt")

    def fit(world, steps, **more):
        def one(comm):
            return zero_trainer.fit(strategy if world > 1 else "auto", world, 8 // world, steps, 1,
                                    comm=comm if world > 1 else None, **kw, **more)[0]  # fmt: skip

        return run_ranks(world, one)[0] if world > 1 else one(None)

    full = fit(4, 2 * K)
    fit(4, K, ckpt=path)
    m = json.load(open(os.path.join(path, "manifest.json")))
    shards = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    assert m["world_size"] == 4 and m["strategy"] == strategy
    if strategy == "zero2":
        assert shards == [f"rank-{r:05d}-of-00004.safetensors" for r in range(4)]
        exp = {n: t for n, t in m["tensors"].items() if n.endswith("/exp_avg")}
        assert exp and max(len(t["slices"]) for t in exp.values()) > 1  # a parameter spread over ranks
        assert {s["file"] for t in exp.values() for s in t["slices"]} == set(shards)
        r1 = [n for n, t in m["tensors"].items() if any(s["file"] == shards[1] for s in t["slices"])]
        assert r1 and all(n.startswith("optimizer/") for n in r1)  # rank 1 wrote only its optimizer slices
    else:
        assert shards == ["rank-00000-of-00001.safetensors"]  # ddp: the replicas are equal, rank 0 writes
    one = ckpt.load(path)  # one process: the slices assembled into AdamW's ordinary state
    st = one["optimizer_states"][0]["state"]
    assert all(list(s["exp_avg"].shape) == m["tensors"][f"optimizer/0/state/{i}/exp_avg"]["shape"]
               for i, s in st.items())  # fmt: skip
    for world in (2, 1):
        resumed = fit(world, 2 * K, ckpt_path=path)
        assert common.rel_err(resumed, full) <= TOL, world
