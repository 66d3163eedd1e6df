"""The main job: train dutycycle's GPT as a character-level model on a word list through the
Trainer (validation, checkpoints, CSV logs, progress bar, the duty-cycle table), then print new
words it invents (words that are not in the training list).

    python -m dutycycle.demo --steps 1000
    dutycycle demo --size small --data /usr/share/dict/words

The default data is Debian's `wamerican` word list (/usr/share/dict/words), which `make demo`
installs. Any text file with one word per line works.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import dutycycle as dc
from dutycycle.data import DataLoader, TensorDataset
from dutycycle.models import GPT, GPTConfig

DEFAULT_DATA = "/usr/share/dict/words"
SIZES = {  # n_layer, n_head, n_embd
    "tiny": (2, 2, 32),
    "small": (3, 4, 64),
    "medium": (4, 4, 128),
    "large": (6, 6, 192),
}
ALPHABET = ".abcdefghijklmnopqrstuvwxyz"  # '.' starts and ends every word


def load_words(path, max_len):
    """Lower-case a-z words of 2..max_len letters, deduplicated, in file order."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read().split()
    except OSError as e:
        raise SystemExit(f"dutycycle demo: can't read the word list {path!r}: {e.strerror}. "
                         f"Install Debian's 'wamerican' package or pass --data FILE.") from None
    seen, words = set(), []
    for w in raw:
        w = w.strip().lower()
        if 2 <= len(w) <= max_len and w.isascii() and w.isalpha() and w not in seen:
            seen.add(w)
            words.append(w)
    if len(words) < 10:
        raise SystemExit(f"dutycycle demo: {path!r} has only {len(words)} usable words (a-z, 2..{max_len} "
                         f"letters); need at least 10")
    return words


def encode(words, block):
    """Rows of `block` tokens: '.', the word, then padding; targets are the next tokens, -1 past the end."""
    stoi = {c: i for i, c in enumerate(ALPHABET)}
    x = np.zeros((len(words), block), dtype=np.int64)
    y = np.full((len(words), block), -1, dtype=np.int64)
    for r, w in enumerate(words):
        toks = [0] + [stoi[c] for c in w] + [0]
        x[r, : len(toks) - 1] = toks[:-1]
        y[r, : len(toks) - 1] = toks[1:]
    return x, y


class WordsDataModule(dc.LightningDataModule):
    """One word per row; 5% of the words (at least one) held out for validation."""

    def __init__(self, path=DEFAULT_DATA, max_len=15, batch_size=64, seed=1337, num_workers=0):
        super().__init__()
        self.path, self.max_len, self.batch_size, self.seed = path, max_len, batch_size, seed
        self.num_workers = num_workers
        self.block = max_len + 1
        self.words = None

    def setup(self, stage=None):
        if self.words is not None:
            return
        self.words = load_words(self.path, self.max_len)
        x, y = encode(self.words, self.block)
        order = np.random.default_rng(self.seed).permutation(len(self.words))
        n_val = max(1, len(self.words) // 20)
        val, train = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(dc.from_numpy(x[train]), dc.from_numpy(y[train]))
        self.val_set = TensorDataset(dc.from_numpy(x[val[:2048]]), dc.from_numpy(y[val[:2048]]))
        self.n_train, self.n_val = len(train), n_val

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=512)


class WordGPT(dc.LightningModule):
    def __init__(self, size="small", block=16, lr=3e-3, total_steps=1000, weight_decay=0.01):
        super().__init__()
        self.save_hyperparameters()
        n_layer, n_head, n_embd = SIZES[size]
        self.model = GPT(GPTConfig(block_size=block, vocab_size=len(ALPHABET), n_layer=n_layer, n_head=n_head,
                                   n_embd=n_embd, dropout=0.0, bias=True))

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.log("val_loss", loss, prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        opt = self.model.configure_optimizers(hp.weight_decay, hp.lr, betas=(0.9, 0.99))
        sched = dc.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=hp.total_steps, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def sample_words(self, n, known, temperature=0.9, batches=8):
        """Generate until n distinct words that are not in `known` (or give up after a few batches)."""
        new = []
        self.model.eval()
        for _ in range(batches):
            start = dc.zeros(64, 1, dtype=dc.int64)
            out = self.model.generate(start, self.model.config.block_size, temperature=temperature).numpy()[:, 1:]
            for row in out:
                w = "".join(ALPHABET[t] for t in row).split(".")[0]
                if len(w) >= 2 and w not in known and w not in new:
                    new.append(w)
            if len(new) >= n:
                break
        self.model.train()
        return new[:n]


def main(argv=None):
    p = argparse.ArgumentParser(prog="dutycycle demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="model size (default small)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"word list, one word per line (default {DEFAULT_DATA})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-len", type=int, default=15, help="longest word used (letters)")
    p.add_argument("--samples", type=int, default=20, help="new words to print at the end")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--val-every", type=int, default=250, help="validate every N training steps")
    p.add_argument("--log-every", type=int, default=25, help="write metrics every N steps")
    p.add_argument("--workers", type=int, default=2, help="C loader threads assembling batches ahead")
    p.add_argument("--root", default="demo_runs", help="where logs and checkpoints go (default ./demo_runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain log lines)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--precision", default="32-true",
                   choices=["32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"],
                   help="Trainer precision (default 32-true; bf16-mixed: bfloat16 matmuls, float32 weights; "
                        "bf16-true: the whole model in bfloat16)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where to train (default auto: the GPU when there is one)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be positive")

    dc.seed_everything(args.seed)
    dm = WordsDataModule(args.data, args.max_len, args.batch_size, args.seed, args.workers)
    dm.setup("fit")
    model = WordGPT(args.size, dm.block, args.lr, args.steps)
    n_layer, n_head, n_embd = SIZES[args.size]
    print(f"dutycycle demo: {dm.n_train} training words, {dm.n_val} validation words from {args.data}")
    print(f"GPT {args.size}: {n_layer} layers, {n_head} heads, {n_embd} wide, {model.model.num_params():,} "
          f"parameters; {args.steps} steps of batch {args.batch_size}")
    ckpt = dc.callbacks.ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1, save_last=True,
                                        filename="{step}-{val_loss:.3f}")
    trainer = dc.Trainer(max_steps=args.steps, val_check_interval=min(args.val_every, args.steps),
                         check_val_every_n_epoch=None, limit_val_batches=4, log_every_n_steps=args.log_every,
                         default_root_dir=args.root, callbacks=[ckpt],
                         logger=dc.loggers.CSVLogger(args.root, name="words"),
                         enable_progress_bar=not args.no_progress, num_sanity_val_steps=0,
                         precision=args.precision, accelerator=args.accelerator)
    trainer.fit(model, datamodule=dm)
    print(f"best checkpoint: {ckpt.best_model_path} (val_loss {float(ckpt.best_model_score):.4f})")
    new = model.sample_words(args.samples, set(dm.words), args.temperature)
    print(f"\n{len(new)} new words (not in the training list):")
    print("  " + "\n  ".join(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
