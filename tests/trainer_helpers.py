"""Small models, data and recorders shared by the trainer tests."""

import numpy as np

import dutycycle as dc
from dutycycle.trainer import LightningDataModule, LightningModule


def regression_data(n=64, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = np.arange(1, d + 1, dtype=np.float32).reshape(d, 1) / d
    y = x @ w + 0.01 * rng.standard_normal((n, 1)).astype(np.float32)
    return dc.from_numpy(x), dc.from_numpy(y)


def loader(x, y, batch_size=8, shuffle=False, **kw):
    from dutycycle.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, **kw)


class Regressor(LightningModule):
    """y = Linear(x); MSE; SGD. Logs train_loss (step) and val_loss (epoch)."""

    def __init__(self, d=4, lr=0.05, hidden=0, dropout=0.0, opt="sgd"):
        super().__init__()
        self.save_hyperparameters()
        if hidden:
            self.net = dc.nn.Sequential(
                dc.nn.Linear(d, hidden), dc.nn.ReLU(), dc.nn.Dropout(dropout), dc.nn.Linear(hidden, 1)
            )
        else:
            self.net = dc.nn.Linear(d, 1)
        self.losses = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", ((self(x) - y) ** 2).mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", ((self(x) - y) ** 2).mean())

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if outputs:
            self.losses.append(outputs["loss"].item())

    def configure_optimizers(self):
        if self.hparams.opt == "adamw":
            return dc.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return dc.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RegressionData(LightningDataModule):
    def __init__(self, n=64, batch_size=8):
        super().__init__()
        self.save_hyperparameters()
        self.calls = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        x, y = regression_data(self.hparams.n)
        self.x, self.y = x, y

    def train_dataloader(self):
        return loader(self.x, self.y, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return loader(self.x[:16], self.y[:16], self.hparams.batch_size)

    def test_dataloader(self):
        return loader(self.x[16:32], self.y[16:32], self.hparams.batch_size)

    def predict_dataloader(self):
        return loader(self.x[:8], self.y[:8], 4)


class RecordingLogger:
    """A Logger with Lightning's API that keeps what it is given."""

    def __init__(self):
        self.metrics, self.hparams, self.status = [], None, None
        self.name, self.version = "rec", 0
        self.save_dir = self.root_dir = self.log_dir = None

    @property
    def experiment(self):
        return self

    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams = dict(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def save(self):
        pass

    def finalize(self, status):
        self.status = status

    def after_save_checkpoint(self, checkpoint_callback):
        pass

    def keys(self):
        return {k for _, m in self.metrics for k in m}


def quiet(**kw):
    """Trainer kwargs for a fast, file-free test run (override with kw)."""
    base = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0, max_epochs=1
    )
    base.update(kw)
    return base
