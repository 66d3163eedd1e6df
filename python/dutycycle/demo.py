"""The main job: train dutycycle's GPT as a character-level model on a word list, then print new
words it invents (words that are not in the training list).

    python -m dutycycle.demo --steps 1000
    dutycycle demo --size small --data /usr/share/dict/words

The default data is Debian's `wamerican` word list (/usr/share/dict/words), which `make demo`
installs. Any text file with one word per line works.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import dutycycle as dc
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
    """Rows of block+1 tokens: '.', the word, '.', then padding. Targets past the end are -1."""
    stoi = {c: i for i, c in enumerate(ALPHABET)}
    x = np.zeros((len(words), block), dtype=np.int64)
    y = np.full((len(words), block), -1, dtype=np.int64)
    for r, w in enumerate(words):
        toks = [0] + [stoi[c] for c in w] + [0]
        x[r, : len(toks) - 1] = toks[:-1]
        y[r, : len(toks) - 1] = toks[1:]
    return x, y


def sample_words(model, n, block, temperature, known, rng_batches=8):
    """Generate until n distinct words that are not in `known` (or give up after a few batches)."""
    new = []
    model.eval()
    for _ in range(rng_batches):
        start = dc.zeros(64, 1, dtype=dc.int64)
        out = model.generate(start, block, temperature=temperature).numpy()[:, 1:]
        for row in out:
            w = "".join(ALPHABET[t] for t in row).split(".")[0]
            if len(w) >= 2 and w not in known and w not in new:
                new.append(w)
        if len(new) >= n:
            break
    model.train()
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
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be positive")

    dc.manual_seed(args.seed)
    words = load_words(args.data, args.max_len)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(words))
    n_val = max(1, len(words) // 20)
    block = args.max_len + 1
    x_all, y_all = encode(words, block)
    val_idx, train_idx = order[:n_val], order[n_val:]
    n_layer, n_head, n_embd = SIZES[args.size]
    cfg = GPTConfig(block_size=block, vocab_size=len(ALPHABET), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    dropout=0.0, bias=True)
    model = GPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.01, learning_rate=args.lr, betas=(0.9, 0.99))
    sched = dc.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    print(f"dutycycle demo: {len(train_idx)} training words, {n_val} validation words from {args.data}")
    print(f"GPT {args.size}: {n_layer} layers, {n_head} heads, {n_embd} wide, {model.num_params():,} parameters; "
          f"{args.steps} steps of batch {args.batch_size}")

    def val_loss():
        with dc.no_grad():
            model.eval()
            b = val_idx[:1024]
            _, loss = model(dc.from_numpy(x_all[b]), dc.from_numpy(y_all[b]))
            model.train()
            return loss.item()

    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        b = train_idx[rng.integers(0, len(train_idx), args.batch_size)]
        _, loss = model(dc.from_numpy(x_all[b]), dc.from_numpy(y_all[b]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step == 1 or step % args.eval_every == 0 or step == args.steps:
            dt = time.perf_counter() - t0
            print(f"step {step:5d}  train loss {loss.item():.4f}  val loss {val_loss():.4f}  "
                  f"{step / dt:.1f} steps/s", flush=True)
    known = set(words)
    new = sample_words(model, args.samples, block, args.temperature, known)
    print(f"\n{len(new)} new words (not in the training list):")
    print("  " + "\n  ".join(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
