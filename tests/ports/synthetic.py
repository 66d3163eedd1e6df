"""Synthetic stand-ins for the datasets the ported scripts download, with the same shapes and value
ranges, learnable (class prototypes plus noise), NumPy only: the scripts wrap them in their own
Dataset classes exactly where they would construct torchvision's.

Each port marks the one line that builds data with `# synthetic:` and the original call."""

import numpy as np


def images(n, shape=(1, 28, 28), classes=10, seed=0):
    """n images in [0, 1] (float32, (n, *shape)) and labels (int64): each class a smooth blob
    pattern, plus noise. The patterns do not depend on `seed` (only the draws do), so a test split
    made with another seed comes from the training split's distribution."""
    p = np.random.default_rng(0)
    g = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    protos = np.zeros((classes, c, h, w), np.float32)
    for k in range(classes):
        for _ in range(3):
            cy, cx, s = p.uniform(0.2, 0.8), p.uniform(0.2, 0.8), p.uniform(0.08, 0.2)
            protos[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[None] * p.uniform(0.5, 1, (c, 1, 1))
    protos = np.clip(protos, 0, 1)
    labels = g.integers(0, classes, n)
    x = np.clip(protos[labels] + 0.15 * g.standard_normal((n, c, h, w)), 0, 1).astype(np.float32)
    return x, labels.astype(np.int64)


def moons(n, noise=0.05, seed=0):
    """sklearn.datasets.make_moons(n, noise=...) without sklearn: (n, 2) float, labels."""
    g = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    outer = np.stack([np.cos(np.linspace(0, np.pi, n_out)), np.sin(np.linspace(0, np.pi, n_out))], 1)
    inner = np.stack([1 - np.cos(np.linspace(0, np.pi, n_in)), 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5], 1)
    x = np.concatenate([outer, inner]) + noise * g.standard_normal((n, 2))
    return x, np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])


def text(n_chars=20000, seed=0):
    """A character corpus with structure (repeated words) for char-level language models."""
    g = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "to", "see", "sun"]
    out, size = [], 0
    while size < n_chars:
        line = " ".join(g.choice(words, g.integers(3, 9))) + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]
