"""Train a character-level GPT on a word list with dutycycle's Trainer, then invent new words.

This is the demo (`make demo`) as a plain script to copy and edit. It is written the way a
PyTorch Lightning script is: a LightningModule, a LightningDataModule and a Trainer with callbacks
and a logger. Porting from Lightning means changing the imports (`import dutycycle as L` and
`import dutycycle as torch`).

    python examples/train_gpt_words.py --steps 1000 --data /usr/share/dict/words
"""

import argparse

import numpy as np

import dutycycle as L
import dutycycle as torch
from dutycycle.models import GPT, GPTConfig
from dutycycle.utils.data import DataLoader, TensorDataset

CHARS = ".abcdefghijklmnopqrstuvwxyz"


class Words(L.LightningDataModule):
    def __init__(self, path, batch_size=64, max_len=15):
        super().__init__()
        self.path, self.batch_size, self.block = path, batch_size, max_len + 1

    def setup(self, stage=None):
        with open(self.path) as f:
            words = sorted({w.strip().lower() for w in f if w.strip().isalpha() and w.strip().isascii()
                            and 2 <= len(w.strip()) < self.block})
        self.words = set(words)
        x = np.zeros((len(words), self.block), dtype=np.int64)
        y = np.full((len(words), self.block), -1, dtype=np.int64)
        for r, w in enumerate(words):
            toks = [0] + [CHARS.index(c) for c in w] + [0]
            x[r, : len(toks) - 1], y[r, : len(toks) - 1] = toks[:-1], toks[1:]
        perm = np.random.default_rng(0).permutation(len(words))
        val, train = perm[: len(words) // 20], perm[len(words) // 20:]
        self.train_set = TensorDataset(torch.tensor(x[train]), torch.tensor(y[train]))
        self.val_set = TensorDataset(torch.tensor(x[val]), torch.tensor(y[val]))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=2)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=512)


class CharGPT(L.LightningModule):
    def __init__(self, block_size, lr=3e-3, steps=1000):
        super().__init__()
        self.save_hyperparameters()
        self.gpt = GPT(GPTConfig(block_size=block_size, vocab_size=len(CHARS), n_layer=3, n_head=4, n_embd=64))

    def training_step(self, batch, batch_idx):
        _, loss = self.gpt(*batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        _, loss = self.gpt(*batch)
        self.log("val_loss", loss, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=self.hparams.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/usr/share/dict/words")
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args()

    L.seed_everything(0)
    data = Words(args.data)
    model = CharGPT(data.block, steps=args.steps)
    trainer = L.Trainer(
        max_steps=args.steps,
        val_check_interval=250,
        check_val_every_n_epoch=None,
        limit_val_batches=4,
        callbacks=[L.callbacks.ModelCheckpoint(monitor="val_loss", save_last=True),
                   L.callbacks.LearningRateMonitor(logging_interval="step")],
        logger=L.loggers.CSVLogger("runs", name="char_gpt"),
    )
    trainer.fit(model, datamodule=data)

    model.gpt.eval()
    out = model.gpt.generate(torch.zeros(64, 1, dtype=torch.long), data.block, temperature=0.9).tolist()
    new = {"".join(CHARS[t] for t in row[1:]).split(".")[0] for row in out} - data.words - {""}
    print("new words:", ", ".join(sorted(new)[:20]))


if __name__ == "__main__":
    main()
