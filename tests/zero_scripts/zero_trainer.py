"""One rank of the ZeRO / parameter-server Trainer tests (tests/test_zero.py starts it under mpirun,
or with --threads N as N thread ranks of one process).

A GPT LightningModule (LayerNorm + Linear + tied Embedding, an odd parameter count, AdamW with two
param groups) is fit for a few steps with each strategy in turn, in this one process (the process
group is reused); rank 0 writes, per strategy, the final parameters (<strategy>.npz) and every rank
its memory_per_rank() (mem-<strategy>-<rank>.json). With --ckpt, the zero2 run also saves a
checkpoint (out/zero2.ckpt) through the Trainer, for a single-process run to load.

    zero_trainer.py --out DIR [--strategies ddp,zero1,zero2,parameter_server] [--batch B] [--steps K]
                    [--accumulate A] [--ckpt] [--bucket-cap-mb MB] [--n-embd C --n-layer L --n-head H]
                    [--clip VAL [--clip-algorithm norm|value]]    (Trainer(gradient_clip_val=...))
                    [--resume-at K]   per strategy: 2K steps straight (<s>-full.npz); K steps + checkpoint,
                                      then a second fit from it to 2K (<s>-resumed.npz)
    zero_trainer.py --reference --world N --out DIR [--ckpt]   one process, batch N*B: reference.npz
                                                                (and reference.ckpt)"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import dutycycle as L  # noqa: E402
import dutycycle as torch  # noqa: E402
from dutycycle.data import DataLoader, TensorDataset  # noqa: E402

_BUILD = threading.Lock()  # thread ranks: seed + init of one model at a time (one global RNG)


class GPTModule(L.LightningModule):
    def __init__(self, n_embd=11, n_layer=1, n_head=1):
        super().__init__()
        self.gpt = common.make_model(n_embd=n_embd, n_layer=n_layer, n_head=n_head)
        self.batches_run = 0  # training_step calls in this fit (a resumed fit runs only the rest)

    def training_step(self, batch, batch_idx):
        self.batches_run += 1
        (xy,) = batch
        _, loss = self.gpt(xy[:, :-1], xy[:, 1:])
        return loss

    def configure_optimizers(self):
        return common.make_optimizer(self.gpt)


def dataset(n):
    g = np.random.default_rng(3)
    return TensorDataset(torch.from_numpy(g.integers(0, common.VOCAB, size=(n, common.BLOCK + 1)).astype(np.int64)))


def fit(
    strategy,
    devices,
    batch,
    steps,
    accumulate,
    model_kw,
    ckpt=None,
    comm=None,
    bucket_cap_mb=None,
    clip=None,
    clip_algorithm=None,
    data_steps=None,
    ckpt_path=None,
):
    with _BUILD:
        model = GPTModule(**model_kw)
    memory = MemoryAtTrainEnd()
    if strategy != "auto":
        kw = {}
        if strategy in ("ddp", "zero1", "zero2") and bucket_cap_mb:
            kw["bucket_cap_mb"] = bucket_cap_mb
        if comm is not None and strategy in ("zero1", "zero2"):
            kw["max_inflight"] = 1 << 20  # thread ranks run one backward at a time: never wait inside one
        strategy = L.strategies.from_name(strategy, **kw)
        if comm is not None:  # thread ranks: the thread world's comm instead of MPI's
            strategy._dc_comm = comm
    n = (data_steps or steps) * accumulate * batch * devices
    trainer = L.Trainer(
        strategy=strategy,
        devices=devices if comm is None else "auto",
        accelerator="cpu",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[memory],
        enable_model_summary=False,
        num_sanity_val_steps=0,
        barebones=True,
        gradient_clip_val=clip,
        gradient_clip_algorithm=clip_algorithm,
    )
    trainer.fit(model, DataLoader(dataset(n), batch_size=batch, shuffle=False), ckpt_path=ckpt_path)
    if ckpt:
        trainer.save_checkpoint(ckpt)
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    trainer.batches_run = model.batches_run
    return params, memory.mem, trainer


class MemoryAtTrainEnd(L.callbacks.Callback):
    """memory_per_rank() at the end of training (ddp: counted from the live tensors)."""

    mem = None

    def on_train_end(self, trainer, pl_module):
        s = trainer.strategy
        self.mem = s.memory_per_rank() if hasattr(s, "memory_per_rank") else ddp_memory(trainer)


def ddp_memory(trainer):
    """What ddp holds per rank, counted from the live tensors: parameters, .grad, the reducer's
    bucket buffers (apart from .grad unless gradient_as_bucket_view) and AdamW's state."""
    model_params = list(trainer.lightning_module.parameters())
    params = sum(p.numel() * p.element_size() for p in model_params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model_params if p.grad is not None)
    reducer = getattr(trainer.strategy, "reducer", None)
    buckets = sum(reducer.bucket_sizes()) if reducer is not None and not reducer.gradient_as_bucket_view else 0
    opt = trainer.optimizers[0]
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if hasattr(v, "numel"))
    return {"strategy": "ddp", "world_size": trainer.world_size, "rank": trainer.global_rank,
            "num_params": sum(p.numel() for p in model_params), "parameters": params, "gradients": grads,
            "gradient_buckets": buckets, "optimizer_state": state,
            "total": params + grads + buckets + state}  # fmt: skip


def run(args, comm=None):
    model_kw = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head}
    os.makedirs(args.out, exist_ok=True)
    clip = {"clip": getattr(args, "clip", None), "clip_algorithm": getattr(args, "clip_algorithm", None)}
    if getattr(args, "resume_at", None):
        return run_resume(args, comm, model_kw, clip)
    for name in args.strategies.split(","):
        ckpt = os.path.join(args.out, f"{name}.ckpt") if args.ckpt and name != "ddp" else None
        params, mem, trainer = fit(
            name,
            args.devices,
            args.batch,
            args.steps,
            args.accumulate,
            model_kw,
            ckpt,
            comm,
            args.bucket_cap_mb,
            **clip,
        )
        rank = trainer.global_rank
        with open(os.path.join(args.out, f"mem-{name}-{rank}.json"), "w") as f:
            json.dump(mem, f)
        if rank == 0:
            np.savez(os.path.join(args.out, f"{name}.npz"), **params)


def run_resume(args, comm, model_kw, clip):
    """Per strategy: 2K steps in one fit; K steps and a checkpoint, then a fit resumed from it to 2K."""
    K = args.resume_at
    for name in args.strategies.split(","):
        ckpt = os.path.join(args.out, f"{name}-step{K}.ckpt")
        common_kw = dict(model_kw=model_kw, comm=comm, bucket_cap_mb=args.bucket_cap_mb, data_steps=2 * K, **clip)
        full, _, trainer = fit(name, args.devices, args.batch, 2 * K, args.accumulate, **common_kw)
        fit(name, args.devices, args.batch, K, args.accumulate, ckpt=ckpt, **common_kw)
        resumed, _, trainer = fit(name, args.devices, args.batch, 2 * K, args.accumulate, ckpt_path=ckpt, **common_kw)
        if trainer.global_rank == 0:
            np.savez(os.path.join(args.out, f"{name}-full.npz"), **full)
            np.savez(os.path.join(args.out, f"{name}-resumed.npz"), **resumed)
            with open(os.path.join(args.out, f"{name}-resumed.json"), "w") as f:
                json.dump({"global_step": trainer.global_step, "batches_run": trainer.batches_run}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--strategies", default="ddp,zero1,zero2,parameter_server")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--world", type=int, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--n-embd", type=int, default=11)
    ap.add_argument("--n-layer", type=int, default=1)
    ap.add_argument("--n-head", type=int, default=1)
    ap.add_argument("--ckpt", action="store_true")
    ap.add_argument("--bucket-cap-mb", type=float, default=None)
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--clip", type=float, default=None)
    ap.add_argument("--clip-algorithm", default=None)
    ap.add_argument("--resume-at", type=int, default=None)
    args = ap.parse_args()
    if args.reference:
        model_kw = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head}
        os.makedirs(args.out, exist_ok=True)
        ckpt = os.path.join(args.out, "reference.ckpt") if args.ckpt else None
        params, _, _ = fit(
            "auto",
            1,
            args.batch * args.world,
            args.steps,
            args.accumulate,
            model_kw,
            ckpt,
            clip=args.clip,
            clip_algorithm=args.clip_algorithm,
        )
        np.savez(os.path.join(args.out, "reference.npz"), **params)
        return
    if args.devices is None:
        args.devices = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    run(args)


if __name__ == "__main__":
    main()
