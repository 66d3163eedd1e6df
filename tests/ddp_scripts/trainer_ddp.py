"""A Lightning-style script trained with Trainer(strategy="ddp", devices=N) (tests/test_trainer_ddp.py).

Run it under any launcher (mpirun, `dutycycle run -n N`, srun) or as a plain `python trainer_ddp.py
--devices N`, which self-launches N ranks. Rank 0 writes the final parameters (.npz), the synced
and local logged values and the gathered duty-cycle split to --out (JSON + npz).

    trainer_ddp.py --devices N --out DIR [--batch B] [--epochs E] [--accumulate A] [--shuffle]"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import dutycycle as L
import dutycycle as torch
from dutycycle.data import DataLoader, TensorDataset


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        self.ranks_seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True, on_step=True, on_epoch=True, prog_bar=True)
        self.log("rank_mean", float(self.global_rank), sync_dist=True, on_step=True, on_epoch=False)
        self.log("rank_max", float(self.global_rank), sync_dist=True, reduce_fx="max", on_step=True, on_epoch=False)
        self.log("local_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


def dataset():
    g = np.random.default_rng(7)
    x = g.standard_normal((96, 8)).astype(np.float32)
    y = x.sum(1, keepdims=True).astype(np.float32)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--shuffle", action="store_true")
    args = ap.parse_args()

    model = Regressor()
    loader = DataLoader(dataset(), batch_size=args.batch, shuffle=args.shuffle)
    trainer = L.Trainer(
        strategy=args.strategy,
        devices=args.devices,
        accelerator="cpu",
        max_epochs=args.epochs,
        accumulate_grad_batches=args.accumulate,
        logger=L.loggers.CSVLogger(os.path.join(args.out, "logs")),
        enable_checkpointing=True,
        callbacks=[L.callbacks.LearningRateMonitor(logging_interval="step")],  # logs from every rank
        default_root_dir=args.out,
        log_every_n_steps=1,
        enable_progress_bar=False,
    )
    trainer.fit(model, loader)
    m = trainer.callback_metrics
    info = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "num_training_batches": trainer.num_training_batches,
        "global_step": trainer.global_step,
        "train_loss_epoch": float(m["train_loss_epoch"]),
        "rank_mean": float(m["rank_mean"]),
        "rank_max": float(m["rank_max"]),
        "local_loss": float(m["local_loss"]),
        "duty_ranks": trainer.duty_cycle.ranks,
        "sampler": type(trainer.train_dataloader.sampler).__name__,
    }
    # every rank writes its own small file (rank 0's name is the one the tests compare)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(info, f)
    np.savez(
        os.path.join(args.out, f"params{trainer.global_rank}.npz"),
        **{n: p.detach().numpy() for n, p in model.named_parameters()},
    )


if __name__ == "__main__":
    main()
