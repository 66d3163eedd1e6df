"""Host-device sync points are counted (dutycycle.cuda.sync_counts()), and a Trainer step outside the
logging interval makes none. On the CPU the counter that matters is item(): every item() would be a
device sync on a GPU; on a lent GPU the same test also counts the real syncs (synchronize calls and
blocking device -> host copies)."""

import pytest

import dutycycle as L
import dutycycle as dc
from dutycycle import nn
from dutycycle.data import DataLoader, TensorDataset

HAS_GPU = dc.cuda.is_available()


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", 1e-3)
        return loss

    def configure_optimizers(self):
        return dc.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)


class PerStep(L.Callback):
    """Syncs between the starts of consecutive batches: everything one step did."""

    def __init__(self):
        self.prev, self.rows = None, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        c = dc.cuda.sync_counts()
        if self.prev is not None:
            self.rows.append((trainer.global_step, {k: c[k] - self.prev[k] for k in c}))
        self.prev = c


def run(tmp_path, accelerator="cpu", **kw):
    dc.manual_seed(0)
    x, y = dc.randn(320, 8), dc.randn(320, 1)
    cb = PerStep()
    trainer = L.Trainer(max_epochs=1, log_every_n_steps=10, callbacks=[cb], accelerator=accelerator,
                        default_root_dir=str(tmp_path), enable_checkpointing=False, gradient_clip_val=1.0, **kw)
    trainer.fit(Regressor(), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    return trainer, cb.rows


def test_sync_counts_shape():
    c = dc.cuda.sync_counts()
    assert set(c) == {"synchronize", "d2h_copy", "item", "host_syncs"}
    t = dc.ones(())
    before = dc.cuda.sync_counts()["item"]
    t.item()
    float(t)
    assert dc.cuda.sync_counts()["item"] == before + 2


def test_clip_grad_norm_reads_nothing_on_the_host():
    lin = nn.Linear(64, 64)
    lin(dc.randn(4, 64)).pow(2).sum().backward()
    g0 = lin.weight.grad.clone()
    before = dc.cuda.sync_counts()
    total = nn.utils.clip_grad_norm_(lin.parameters(), 0.01)
    after = dc.cuda.sync_counts()
    assert after == before  # no item(), no copy to the host
    # the same numbers as the host computation
    norm = (g0.pow(2).sum() + lin.bias.grad.pow(2).sum() / (0.01 / (total.item() + 1e-6)) ** 2).sqrt()
    assert abs(total.item() - float(norm)) < 1e-3 * float(norm)
    assert abs(float(lin.weight.grad.pow(2).sum() + lin.bias.grad.pow(2).sum()) ** 0.5 - 0.01) < 1e-5


def test_clip_grad_norm_with_nan_scales_by_nan_as_torch():
    p = nn.Parameter(dc.ones(3))
    p.grad = dc.tensor([1.0, float("nan"), 2.0])
    total = nn.utils.clip_grad_norm_([p], 1.0)
    assert total.isnan().item() and p.grad.isnan().all().item()
    with pytest.raises(RuntimeError, match="non-finite"):
        p.grad = dc.tensor([1.0, float("inf"), 2.0])
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


def test_trainer_step_outside_logging_interval_makes_no_sync(tmp_path):
    trainer, rows = run(tmp_path)
    assert len(rows) == 39
    for step, d in rows:
        if step % 10 == 0:
            continue  # a logging step: metrics go to the loggers (the loss is read)
        assert d == {"synchronize": 0, "d2h_copy": 0, "item": 0, "host_syncs": 0}, (step, d)
    logging_steps = [d for step, d in rows if step % 10 == 0]
    assert logging_steps and all(d["item"] >= 1 for d in logging_steps)  # the counter does see syncs
    duty = trainer.duty_cycle
    assert duty.steps == 40 and duty.steps - duty.steps_with_sync >= 35  # 4 logging steps + the epoch end
    assert "host syncs" in duty.table()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device (dutycycle.cuda.is_available() is False)")
def test_gpu_trainer_step_outside_logging_interval_makes_no_sync(tmp_path):
    trainer, rows = run(tmp_path, accelerator="gpu")
    for step, d in rows:
        if step % 10 == 0:
            continue
        assert d["host_syncs"] == 0 and d["item"] == 0, (step, d)
