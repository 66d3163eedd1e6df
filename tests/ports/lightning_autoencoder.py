# Lightning's examples/pytorch/basics/autoencoder.py on dutycycle.
# Changed: the imports (marked "dutycycle:"), MNIST replaced by synthetic data of the same shapes
# (marked "synthetic:"), torchvision's make_grid/save_image replaced by a grid reshape and a .npy
# file (marked "make_grid:"), and LightningCLI (not in dutycycle: see the README's coverage table)
# replaced by the Trainer call it makes (marked "cli:").
"""MNIST autoencoder example.

To run: python autoencoder.py --trainer.max_epochs=50
"""

from os import path
from typing import Optional, Tuple

import numpy as np
import dutycycle as torch  # dutycycle: was import torch
import dutycycle.nn.functional as F  # dutycycle: was import torch.nn.functional as F
from dutycycle.pytorch import LightningDataModule, LightningModule, Trainer, callbacks, cli_lightning_logo  # dutycycle: was lightning.pytorch
from dutycycle.pytorch.utilities import rank_zero_only  # dutycycle: was from lightning.pytorch.utilities import rank_zero_only
from dutycycle import nn  # dutycycle: was from torch import nn
from dutycycle.utils.data import DataLoader, random_split  # dutycycle: was from torch.utils.data import DataLoader, random_split

from synthetic import images  # synthetic: was from lightning.pytorch.demos.mnist_datamodule import MNIST

DATASETS_PATH = path.join(path.dirname(__file__), "..", "..", "Datasets")


class MNIST(torch.utils.data.Dataset):  # synthetic: the shape of MNIST(..., transform=transforms.ToTensor())
    def __init__(self, root, train=True, download=False, transform=None):
        self.x, self.y = images(1200 if train else 200, seed=0 if train else 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


class ImageSampler(callbacks.Callback):
    def __init__(
        self,
        num_samples: int = 3,
        nrow: int = 8,
        padding: int = 2,
        normalize: bool = True,
        value_range: Optional[Tuple[int, int]] = None,
        scale_each: bool = False,
        pad_value: int = 0,
    ) -> None:
        """
        Args:
            num_samples: Number of images displayed in the grid. Default: ``3``.
            nrow: Number of images displayed in each row of the grid.
                The final grid size is ``(B / nrow, nrow)``. Default: ``8``.
            padding: Amount of padding. Default: ``2``.
            normalize: If ``True``, shift the image to the range (0, 1),
                by the min and max values specified by :attr:`range`. Default: ``True``.
            value_range: Tuple (min, max) where min and max are numbers,
                then these numbers are used to normalize the image. By default, min and max
                are computed from the tensor.
            scale_each: If ``True``, scale each image in the batch of
                images separately rather than the (min, max) over all images. Default: ``False``.
            pad_value: Value for the padded pixels. Default: ``0``.
        """
        super().__init__()
        self.num_samples = num_samples
        self.nrow = nrow
        self.padding = padding
        self.normalize = normalize
        self.value_range = value_range
        self.scale_each = scale_each
        self.pad_value = pad_value

    def _to_grid(self, images):
        n, c, h, w = images.shape  # make_grid: was torchvision.utils.make_grid(...)
        return images.permute(1, 2, 0, 3).reshape(c, h, n * w)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images, _ = next(iter(DataLoader(trainer.datamodule.mnist_val, batch_size=self.num_samples)))
        images_flattened = images.view(images.size(0), -1)

        # generate images
        with torch.no_grad():
            pl_module.eval()
            images_generated = pl_module(images_flattened.to(pl_module.device))
            pl_module.train()

        if trainer.current_epoch == 0:
            np.save(f"grid_ori_{trainer.current_epoch}.npy", self._to_grid(images).numpy())  # make_grid: was save_image
        np.save(f"grid_generated_{trainer.current_epoch}.npy",
                self._to_grid(images_generated.reshape(images.shape)).numpy())  # make_grid: was save_image


class LitAutoEncoder(LightningModule):
    """
    >>> LitAutoEncoder()  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    LitAutoEncoder(
      (encoder): ...
      (decoder): ...
    )
    """

    def __init__(self, hidden_dim: int = 64, learning_rate=10e-3):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
        self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 28 * 28))

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z)

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, batch_idx, "train")

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=None):
        x = self._prepare_batch(batch)
        return self(x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

    def _prepare_batch(self, batch):
        x, _ = batch
        return x.view(x.size(0), -1)

    def _common_step(self, batch, batch_idx, stage: str):
        x = self._prepare_batch(batch)
        loss = F.mse_loss(x, self(x))
        self.log(f"{stage}_loss", loss, on_step=True)
        return loss


class MyDataModule(LightningDataModule):
    def __init__(
        self,
        batch_size: int = 32,
    ):
        super().__init__()
        dataset = MNIST(DATASETS_PATH, train=True, download=True)
        self.mnist_test = MNIST(DATASETS_PATH, train=False, download=True)
        self.mnist_train, self.mnist_val = random_split(
            dataset, [1000, 200], generator=torch.Generator().manual_seed(42)
        )
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)


def cli_main():
    # cli: was LightningCLI(LitAutoEncoder, MyDataModule, seed_everything_default=1234, run=False,
    #      trainer_defaults={"callbacks": ImageSampler(), "max_epochs": 10}, ...)
    torch.manual_seed(1234)
    model, datamodule = LitAutoEncoder(), MyDataModule()
    trainer = Trainer(callbacks=ImageSampler(), max_epochs=3)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(ckpt_path="best", datamodule=datamodule)
    predictions = trainer.predict(ckpt_path="best", datamodule=datamodule)
    print(predictions[0])


if __name__ == "__main__":
    cli_lightning_logo()
    cli_main()
