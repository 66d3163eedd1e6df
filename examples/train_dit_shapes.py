"""Train a small diffusion transformer (DiT) on generated images, then sample new ones.

The images are 16x16 grey-scale pictures of a filled square or a filled disc at a random place and
size, drawn with NumPy (no download). The class label (0 = square, 1 = disc) conditions the model.
Samples are printed as ASCII art and written to dit_samples.png.

    python examples/train_dit_shapes.py --steps 600
"""

import argparse
import struct
import zlib

import numpy as np

import dutycycle as L
import dutycycle as torch
from dutycycle.models import DiT, DiTConfig
from dutycycle.utils.data import DataLoader, TensorDataset

SIZE = 16


def make_shapes(n, seed=0):
    """(n, 1, 16, 16) images in [-1, 1] and (n,) labels: 0 = square, 1 = disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.full((n, 1, SIZE, SIZE), -1.0, dtype=np.float32)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        r = rng.integers(3, 6)
        cy, cx = rng.integers(r, SIZE - r, 2)
        if labels[i] == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i, 0][mask] = 1.0
    return images, labels.astype(np.int64)


class Diffusion(L.LightningModule):
    def __init__(self, lr=1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.dit = DiT(DiTConfig(input_size=SIZE, patch_size=4, in_channels=1, hidden_size=64, depth=3, num_heads=4,
                                 num_classes=2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.dit.training_loss(x, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.0)


def write_png(path, img):
    """img (H, W) uint8 -> a grey-scale PNG (no imaging library needed)."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps when sampling")
    args = p.parse_args()

    L.seed_everything(0)
    x, y = make_shapes(4096)
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=64, shuffle=True, num_workers=2)
    model = Diffusion()
    trainer = L.Trainer(max_steps=args.steps, logger=L.loggers.CSVLogger("runs", name="dit_shapes"))
    trainer.fit(model, train_dataloaders=loader)

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    samples = model.dit.sample(8, y=labels, steps=args.sample_steps).numpy()[:, 0]  # (8, 16, 16)
    for name, group in (("squares", samples[:4]), ("discs", samples[4:])):
        print(name)
        for row in range(SIZE):
            print("  ".join("".join("#" if v > 0 else "." for v in img[row]) for img in group))
    grid = np.concatenate(list(samples), axis=1)
    write_png("dit_samples.png", ((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8))
    print("wrote dit_samples.png")


if __name__ == "__main__":
    main()
