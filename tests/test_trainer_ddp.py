"""Trainer(strategy="ddp"): the distributed sampler, accumulation, sync_dist, rank-0 writes, the
duty-cycle report over ranks, and the three launchers (mpirun, `dutycycle run`, self-launch)
giving the same parameters as one process with the whole batch.

In-process tests run the ranks as threads over tests/ddp_scripts/thread_comm.py; the launcher
tests run tests/ddp_scripts/trainer_ddp.py as subprocesses (skipped without `_C.Comm`/mpirun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dutycycle as L
import dutycycle as dc
from dutycycle.data import DataLoader, DistributedSampler
from dutycycle.strategies import DDPStrategy, ParallelStrategy

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "ddp_scripts")
sys.path.insert(0, SCRIPTS)
from test_ddp import mpi_env, needs_mpi  # noqa: E402
from thread_comm import run_ranks  # noqa: E402
from trainer_ddp import Regressor, dataset  # noqa: E402

REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(SCRIPTS, "trainer_ddp.py")


def single_process(batch, epochs=2, accumulate=1, shuffle=False, tmp=None):
    model = Regressor()
    t = L.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        barebones=False,
    )
    t.fit(model, DataLoader(dataset(), batch_size=batch, shuffle=shuffle))
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}, t


def rel_err(got, want):
    return max(float(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()) for k in want)


def thread_fit(world, batch, accumulate=1, epochs=2, **trainer_kwargs):
    models = [Regressor() for _ in range(world)]

    def rank(comm):
        s = DDPStrategy()
        s._dc_comm = comm  # the thread world's comm instead of the MPI one
        t = L.Trainer(
            strategy=s,
            max_epochs=epochs,
            accumulate_grad_batches=accumulate,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            **trainer_kwargs,
        )
        t.fit(models[comm.rank], DataLoader(dataset(), batch_size=batch))
        params = {n: p.detach().numpy().copy() for n, p in models[comm.rank].named_parameters()}
        return params, t

    return run_ranks(world, rank)


# ---- in one process ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world, accumulate", [(2, 1), (4, 1), (2, 3)])
def test_ddp_trainer_equals_one_process_with_the_whole_batch(world, accumulate):
    B = 4
    want, ref = single_process(world * B, accumulate=accumulate)
    for params, t in thread_fit(world, B, accumulate=accumulate):
        assert isinstance(t.train_dataloader.sampler, DistributedSampler)
        assert t.num_training_batches == ref.num_training_batches  # equal counts on every rank
        assert t.global_step == ref.global_step
        assert rel_err(params, want) <= 1e-5


def test_sync_dist_is_the_mean_over_ranks_and_local_values_stay_local():
    out = thread_fit(2, 4)
    (p0, t0), (p1, t1) = out
    m0, m1 = t0.callback_metrics, t1.callback_metrics
    assert float(m0["rank_mean"]) == float(m1["rank_mean"]) == 0.5
    assert float(m0["rank_max"]) == float(m1["rank_max"]) == 1.0
    assert float(m0["train_loss_step"]) == pytest.approx(float(m1["train_loss_step"]), rel=1e-6)
    assert float(m0["local_loss"]) != float(m1["local_loss"])  # not synced: each rank's own batch
    # sync_dist's step value is the mean of the two ranks' local values
    assert float(m0["train_loss_step"]) == pytest.approx((float(m0["local_loss"]) + float(m1["local_loss"])) / 2)


def test_duty_cycle_report_over_ranks():
    out = thread_fit(2, 4)
    for _, t in out:
        ranks = t.duty_cycle.ranks
        assert len(ranks) == 2 and all(r["comm_wait"] > 0 for r in ranks)
        red = t.duty_cycle.reduced()
        assert red["max"]["comm_wait"] >= red["mean"]["comm_wait"] > 0
        table = t.duty_cycle.table("x")
        assert "mean s" in table and "max s" in table and "comm wait per rank" in table


def test_early_stop_on_one_rank_stops_every_rank():
    class StopOnRank1(L.callbacks.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_rank == 1 and trainer.global_step == 3:
                trainer.should_stop = True

    out = thread_fit(2, 4, callbacks=[StopOnRank1()])
    assert [t.global_step for _, t in out] == [3, 3]


def test_strategy_names_and_devices():
    t = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False)
    assert isinstance(t.strategy, DDPStrategy) and t.strategy.num_devices == 2
    t = L.Trainer(strategy="ddp_find_unused_parameters_true", logger=False)
    assert t.strategy.find_unused_parameters and t.strategy.num_devices == 1
    s = DDPStrategy(bucket_cap_mb=5, static_graph=True)
    assert L.Trainer(strategy=s, devices=4, logger=False).strategy is s and s.num_devices == 4
    assert isinstance(s, ParallelStrategy)
    assert s.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}  # before launch: this process alone
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DDPStrategy(bucket_cap_mb=0)


def test_broadcast_reduce_all_gather_over_threads():
    def rank_ok(comm):
        s = DDPStrategy()
        s._dc_comm = comm
        obj = s.broadcast({"path": "/ckpt/last.ckpt", "n": [1, 2]} if comm.rank == 0 else None)
        red = s.reduce(dc.tensor([float(comm.rank + 1)]), reduce_op="sum")
        gathered = s.all_gather(dc.tensor([comm.rank, 10 + comm.rank]))
        return (
            obj,
            red.numpy().tolist(),
            gathered.numpy().tolist(),
            s.reduce_boolean_decision(comm.rank == 1, all=False),
            s.reduce_boolean_decision(comm.rank == 1, all=True),
        )

    for obj, red, gathered, any_true, all_true in run_ranks(2, rank_ok):
        assert obj == {"path": "/ckpt/last.ckpt", "n": [1, 2]}
        assert red == [3.0] and gathered == [[0, 10], [1, 11]]
        assert any_true and not all_true
    s = DDPStrategy()
    with pytest.raises(TypeError, match="JSON"):
        s._broadcast_json(object(), 0)


# ---- launchers: mpirun, dutycycle run, self-launch ------------------------------------------------------
def run(cmd, timeout=180, env=None):
    return subprocess.run(cmd, env=env or mpi_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def check(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-4000:]}"


def load(out, rank=0):
    with open(os.path.join(out, f"rank{rank}.json")) as f:
        info = json.load(f)
    return info, dict(np.load(os.path.join(out, f"params{rank}.npz")))


@needs_mpi
def test_launchers_give_the_parameters_of_one_process(tmp_path):
    N, B = 2, 4
    want, ref = single_process(N * B)
    outs = {name: str(tmp_path / name) for name in ("mpirun", "dutycycle_run", "self_launch")}
    check(
        run(
            ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(N), sys.executable, SCRIPT]
            + ["--devices", str(N), "--out", outs["mpirun"]]
        )
    )
    check(
        run(
            [
                sys.executable,
                "-m",
                "dutycycle",
                "run",
                "-n",
                str(N),
                SCRIPT,
                "--devices",
                str(N),
                "--out",
                outs["dutycycle_run"],
            ]
        )
    )
    plain = {k: v for k, v in mpi_env().items() if not k.startswith(("OMPI_COMM_WORLD", "PMIX", "SLURM"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        plain.pop(k, None)
    p = run([sys.executable, SCRIPT, "--devices", str(N), "--out", outs["self_launch"]], env=plain)
    check(p)
    results = {}
    for name, out in outs.items():
        info0, params0 = load(out, 0)
        info1, params1 = load(out, 1)
        assert info0["world_size"] == N and info0["sampler"] == "DistributedSampler"
        assert info0["num_training_batches"] == ref.num_training_batches
        assert rel_err(params0, want) <= 1e-5, name
        assert rel_err(params1, params0) == 0.0  # the replicas stay identical
        assert info0["rank_mean"] == 0.5 and info0["rank_max"] == 1.0
        assert info0["train_loss_epoch"] == pytest.approx(info1["train_loss_epoch"], rel=1e-6)
        assert len(info0["duty_ranks"]) == N
        # rank 0 writes the logs and checkpoints: one version directory, one checkpoint directory
        assert os.listdir(os.path.join(out, "logs", "lightning_logs")) == ["version_0"]
        results[name] = params0
    assert rel_err(results["dutycycle_run"], results["mpirun"]) == 0.0
    assert rel_err(results["self_launch"], results["mpirun"]) == 0.0
    assert "comm wait per rank" in p.stdout


@needs_mpi
def test_mpirun_4_ranks_with_accumulation(tmp_path):
    N, B, A = 4, 3, 2
    want, ref = single_process(N * B, accumulate=A)
    check(
        run(
            ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(N), sys.executable, SCRIPT]
            + ["--devices", str(N), "--batch", str(B), "--accumulate", str(A), "--out", str(tmp_path)]
        )
    )
    info, params = load(str(tmp_path), 0)
    assert info["world_size"] == N and info["global_step"] == ref.global_step
    assert rel_err(params, want) <= 1e-5
    assert info["rank_mean"] == 1.5 and info["rank_max"] == 3.0


@needs_mpi
def test_world_size_must_match_devices(tmp_path):
    p = run(
        [
            "mpirun",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-n",
            "2",
            sys.executable,
            SCRIPT,
            "--devices",
            "3",
            "--out",
            str(tmp_path),
        ],
        timeout=120,
    )
    assert p.returncode != 0
    assert "started 2 processes but the Trainer asks for devices=3" in (p.stdout + p.stderr)


@needs_mpi
def test_nanogpt_train_py_under_dutycycle_run(tmp_path):
    """nanoGPT's train.py and model.py (the port in tests/ports/nanogpt) on 2 ranks: DDP-wrapped
    model, RANK detection, rank-0 logging and checkpoint. The one edit is the one nanoGPT needs on
    CPU ranks under torch too: its DDP branch calls torch.cuda.set_device unconditionally."""
    import pickle
    import shutil

    d = tmp_path / "data" / "chars"
    d.mkdir(parents=True)
    g = np.random.default_rng(0)
    text = (np.arange(4000) % 17 + g.integers(0, 3, 4000)).astype(np.uint16)
    text[:3600].tofile(d / "train.bin")
    text[3600:].tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 20}, f)
    shutil.copy(os.path.join(SCRIPTS, "configurator.py"), tmp_path)
    port = os.path.join(HERE, "ports", "nanogpt")
    shutil.copy(os.path.join(port, "model.py"), tmp_path)
    cuda_only = "    device = f'cuda:{ddp_local_rank}'\n    torch.cuda.set_device(device)\n"
    train = open(os.path.join(port, "train.py")).read()
    assert cuda_only in train
    guarded = "    if device.startswith('cuda'):\n" + cuda_only.replace("    ", "        ")
    (tmp_path / "train.py").write_text(train.replace(cuda_only, guarded))
    tiny = ["--device=cpu", "--backend=gloo", "--dataset=chars", "--eval_iters=4", "--batch_size=4",
            "--block_size=32", "--n_layer=2", "--n_head=2", "--n_embd=64", "--gradient_accumulation_steps=2",
            "--learning_rate=1e-3", "--warmup_iters=5", "--lr_decay_iters=20", "--min_lr=1e-4", "--dropout=0.0"]
    p = subprocess.run(
        [sys.executable, "-m", "dutycycle", "run", "-n", "2", str(tmp_path / "train.py"), *tiny,
         "--max_iters=10", "--eval_interval=5"],
        env=mpi_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    check(p)
    out = p.stdout
    assert out.count("step 5: train loss") == 1 and out.count("step 10: train loss") == 1  # rank 0 only
    assert out.count("iter 10: loss") == 1
    assert "tokens per iteration will be: 256" in out  # 1 micro-step per rank x 2 ranks x 4 x 32
    ckpt = dc.load(str(tmp_path / "out" / "ckpt.pt"))
    assert ckpt["iter_num"] == 10 and not any(k.startswith("module.") for k in ckpt["model"])
    losses = [float(ln.split("loss ")[1].split(",")[0]) for ln in out.splitlines() if ln.startswith("iter ")]
    assert losses[-1] < losses[0]


def test_rank_zero_writes_logs_and_checkpoints(tmp_path):
    models = [Regressor() for _ in range(2)]

    def rank(comm):
        s = DDPStrategy()
        s._dc_comm = comm
        t = L.Trainer(
            strategy=s,
            max_epochs=1,
            logger=L.loggers.CSVLogger(str(tmp_path / "logs")),
            callbacks=[L.callbacks.ModelCheckpoint(monitor="train_loss", save_last=True)],
            enable_progress_bar=False,
            log_every_n_steps=1,
            default_root_dir=str(tmp_path),
        )
        t.fit(models[comm.rank], DataLoader(dataset(), batch_size=4))
        return t.logger.version, t.checkpoint_callback.dirpath

    (v0, d0), (v1, d1) = run_ranks(2, rank)
    assert v0 == v1 == 0 and d0 == d1
    assert os.listdir(tmp_path / "logs" / "lightning_logs") == ["version_0"]
    files = sorted(os.listdir(d0))
    assert "last.ckpt" in files and not any(f.endswith(".tmp") for f in files)
    ckpt = dc.load(os.path.join(d0, "last.ckpt"))
    assert "state_dict" in ckpt


def test_validation_with_sync_dist_and_a_monitored_checkpoint(tmp_path):
    class WithVal(Regressor):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", dc.nn.functional.mse_loss(self.net(x), y), sync_dist=True)
            self.log("val_rank", float(self.global_rank), sync_dist=True)

    models = [WithVal() for _ in range(2)]

    def rank(comm):
        s = DDPStrategy()
        s._dc_comm = comm
        t = L.Trainer(
            strategy=s,
            max_epochs=2,
            logger=False,
            callbacks=[L.callbacks.ModelCheckpoint(dirpath=str(tmp_path), monitor="val_loss", save_top_k=1)],
            enable_progress_bar=False,
        )
        loader = DataLoader(dataset(), batch_size=4)
        t.fit(models[comm.rank], loader, DataLoader(dataset(), batch_size=5))  # 96 / 2 / 5: a short last batch
        return float(t.callback_metrics["val_loss"]), float(t.callback_metrics["val_rank"]), t.num_val_batches

    (v0, r0, n0), (v1, r1, n1) = run_ranks(2, rank)
    assert v0 == pytest.approx(v1, rel=1e-6) and r0 == r1 == 0.5 and n0 == n1 == [10]
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".ckpt")]) == 1


def test_mid_epoch_resume_continues_exactly(tmp_path):
    def fit(comm, model, max_steps, ckpt_dir=None, ckpt_path=None):
        s = DDPStrategy()
        s._dc_comm = comm
        cbs = [L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=7, save_last=True)] if ckpt_dir else []
        t = L.Trainer(
            strategy=s,
            max_steps=max_steps,
            logger=False,
            enable_checkpointing=bool(ckpt_dir),
            callbacks=cbs,
            enable_progress_bar=False,
        )
        t.fit(model, DataLoader(dataset(), batch_size=4, shuffle=True), ckpt_path=ckpt_path)
        return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}

    # models are built here, not on the rank threads: their init draws from the one global generator
    m = [Regressor() for _ in range(6)]
    whole = run_ranks(2, lambda comm: fit(comm, m[comm.rank], 18))
    run_ranks(2, lambda comm: fit(comm, m[2 + comm.rank], 7, ckpt_dir=str(tmp_path)))
    resumed = run_ranks(
        2, lambda comm: fit(comm, m[4 + comm.rank], 18, ckpt_dir=str(tmp_path), ckpt_path=str(tmp_path / "last.ckpt"))
    )
    for r in range(2):
        assert rel_err(resumed[r], whole[r]) == 0.0


def test_checkpoint_decisions_agree_when_the_monitored_metric_differs_per_rank(tmp_path):
    """`local_loss` is not synced: the ranks disagree on the top-k; they must still call
    save_checkpoint (a barrier) together, and only rank 0 writes."""
    models = [Regressor() for _ in range(2)]

    def rank(comm):
        s = DDPStrategy()
        s._dc_comm = comm
        ck = L.callbacks.ModelCheckpoint(
            dirpath=str(tmp_path), monitor="local_loss", save_top_k=2, every_n_train_steps=1, save_last="link"
        )
        t = L.Trainer(strategy=s, max_steps=10, logger=False, callbacks=[ck], enable_progress_bar=False)
        t.fit(models[comm.rank], DataLoader(dataset(), batch_size=4))
        return ck._last_global_step_saved

    saved = run_ranks(2, rank)
    assert saved[0] == saved[1] > 0, saved
    files = sorted(os.listdir(tmp_path))
    assert "last.ckpt" in files and len([f for f in files if f.startswith("epoch=")]) == 2
