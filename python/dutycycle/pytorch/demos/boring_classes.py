"""The "boring" demo models and datasets of lightning.pytorch.demos: random inputs of `size`
features, a Linear(32, 2) model trained towards ones with SGD. What Lightning's docs and bug
reports use as the smallest complete LightningModule."""

import dutycycle as dc
from dutycycle.data import DataLoader, Dataset, IterableDataset
from dutycycle.trainer import LightningDataModule, LightningModule


class RandomDataset(Dataset):
    """`length` random vectors of `size` features (drawn once, at construction)."""

    def __init__(self, size, length):
        self.len = length
        self.data = dc.randn(length, size)

    def __getitem__(self, index):
        return self.data[index]

    def __len__(self):
        return self.len


class RandomDictDataset(Dataset):
    """RandomDataset's vectors as {"a": x, "b": x + 2}."""

    def __init__(self, size, length):
        self.len = length
        self.data = dc.randn(length, size)

    def __getitem__(self, index):
        a = self.data[index]
        return {"a": a, "b": a + 2}

    def __len__(self):
        return self.len


class RandomIterableDataset(IterableDataset):
    """`count` fresh random vectors per iteration, no length."""

    def __init__(self, size, count):
        self.count = count
        self.size = size

    def __iter__(self):
        for _ in range(self.count):
            yield dc.randn(self.size)


class RandomIterableDatasetWithLen(RandomIterableDataset):
    def __len__(self):
        return self.count


class BoringModel(LightningModule):
    """Linear(32, 2) fitted to ones (mse); SGD(lr=0.1) with StepLR(step_size=1). Each step hook
    returns what Lightning's BoringModel returns ({"loss"}, {"x"}, {"y"})."""

    def __init__(self):
        super().__init__()
        self.layer = dc.nn.Linear(32, 2)

    def forward(self, x):
        return self.layer(x)

    def loss(self, preds, labels=None):
        if labels is None:
            labels = dc.ones_like(preds)
        return dc.nn.functional.mse_loss(preds, labels)

    def step(self, batch):
        return self.loss(self(batch))

    def training_step(self, batch, batch_idx):
        return {"loss": self.step(batch)}

    def validation_step(self, batch, batch_idx):
        return {"x": self.step(batch)}

    def test_step(self, batch, batch_idx):
        return {"y": self.step(batch)}

    def configure_optimizers(self):
        optimizer = dc.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [dc.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self):
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self):
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self):
        return DataLoader(RandomDataset(32, 64))


class ManualOptimBoringModel(BoringModel):
    """BoringModel with manual optimization (one optimizer, stepped in training_step)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.step(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


class BoringDataModule(LightningDataModule):
    """RandomDataset(32, 64 * 4) split into fit/val/test/predict quarters."""

    def __init__(self):
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def setup(self, stage):
        from dutycycle.data import Subset

        quarter = [list(range(i * 64, (i + 1) * 64)) for i in range(4)]
        self.random_train = Subset(self.random_full, quarter[0])
        self.random_val = Subset(self.random_full, quarter[1])
        self.random_test = Subset(self.random_full, quarter[2])
        self.random_predict = Subset(self.random_full, quarter[3])

    def train_dataloader(self):
        return DataLoader(self.random_train)

    def val_dataloader(self):
        return DataLoader(self.random_val)

    def test_dataloader(self):
        return DataLoader(self.random_test)

    def predict_dataloader(self):
        return DataLoader(self.random_predict)


class DemoModel(LightningModule):
    """Two Linear layers on 32 features, cross entropy against random labels (for examples)."""

    def __init__(self, out_dim=10, learning_rate=0.02):
        super().__init__()
        self.l1 = dc.nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x):
        return dc.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch, batch_nb):
        x = batch
        loss = self(x).sum()
        return loss

    def configure_optimizers(self):
        return dc.optim.Adam(self.parameters(), lr=self.learning_rate)
