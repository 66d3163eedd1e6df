"""Mixed precision on every machine: autocast's casts (matmuls low, softmax/norms/losses float32),
the Trainer's precision plugins ("bf16-mixed", "16-mixed" with dynamic loss scaling: skipped steps,
scale back-off and growth, the scaler in checkpoints; "bf16-true", "16-true", "64-true": weights,
inputs, optimizer state and the default dtype in one dtype), and a bf16-mixed demo run that converges
like float32. On the CPU the 16-bit matmul rounds its inputs as a GPU would and computes in float32."""

import csv

import numpy as np
import pytest
from test_demo import WORDS

import dutycycle as L
import dutycycle as dc
from dutycycle import nn
from dutycycle.data import DataLoader, TensorDataset


def round_bf16(a):
    a = np.asarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


# --- autocast ------------------------------------------------------------------------------------

def test_autocast_matmul_sees_bf16_rounded_inputs():
    dc.manual_seed(0)
    a, b = dc.randn(7, 33), dc.randn(33, 5)
    with dc.autocast("cpu", dtype=dc.bfloat16):
        y = a @ b
    want = round_bf16(a.numpy()).astype(np.float64) @ round_bf16(b.numpy()).astype(np.float64)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y.numpy(), a.numpy() @ b.numpy(), rtol=1e-6, atol=0)  # it did round
    np.testing.assert_allclose((a @ b).numpy(), a.numpy() @ b.numpy(), rtol=1e-5)  # outside: float32


def test_autocast_float16_and_disabled_regions():
    a, b = dc.randn(4, 9), dc.randn(9, 3)
    with dc.autocast("cpu", dtype=dc.float16):
        y16 = a @ b
        with dc.autocast("cpu", enabled=False):
            y32 = a @ b
    want = a.numpy().astype(np.float16).astype(np.float64) @ b.numpy().astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(y16.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y32.numpy(), a.numpy() @ b.numpy(), rtol=1e-5)


def test_autocast_other_device_type_leaves_cpu_alone():
    a, b = dc.randn(4, 9), dc.randn(9, 3)
    with dc.autocast("cuda", dtype=dc.bfloat16):
        np.testing.assert_allclose((a @ b).numpy(), a.numpy() @ b.numpy(), rtol=1e-5)


def test_autocast_float32_list_and_gradients_reach_float32_weights():
    dc.manual_seed(1)
    m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4))
    x, t = dc.randn(6, 8), dc.tensor([0, 1, 2, 3, 0, 1])
    with dc.autocast("cpu", dtype=dc.bfloat16):
        loss = nn.functional.cross_entropy(m(x), t)
        s = dc.randn(3, 5).to(dc.bfloat16).softmax(-1)
    assert loss.dtype == dc.float32 and s.dtype == dc.float32
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == dc.float32 for p in m.parameters())
    ref = nn.functional.cross_entropy(m(x), t)
    assert abs(loss.item() - ref.item()) < 2e-2 * abs(ref.item())  # bf16 inputs: close, not equal


def test_autocast_casts_a_parameter_once_per_region():
    from dutycycle.amp import autocast_mode

    lin = nn.Linear(16, 16)
    x = dc.randn(2, 16)
    with dc.autocast("cpu", dtype=dc.bfloat16):
        lin(x)
        lin(x)
        cache = autocast_mode._cache()
        assert len([k for k in cache if cache[k][0] is lin.weight]) == 1
        with dc.no_grad():
            lin.weight.add_(1.0)  # an in-place update: the next use casts again (version changed)
        y = lin(x)
    assert not autocast_mode._cache()  # cleared when the outermost region ends
    with dc.no_grad():
        ref = x @ dc.from_numpy(round_bf16(lin.weight.detach().numpy())).t() + lin.bias
    np.testing.assert_allclose(y.detach().numpy(), ref.numpy(), rtol=2e-2, atol=2e-2)


def test_scaled_dot_product_attention_under_autocast():
    dc.manual_seed(2)
    q, k, v = dc.randn(2, 3, 8, 16), dc.randn(2, 3, 8, 16), dc.randn(2, 3, 8, 16)
    with dc.autocast("cpu", dtype=dc.bfloat16):
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert y.dtype == dc.float32
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=5e-2, atol=5e-2)


# --- the Trainer's plugins ---------------------------------------------------------------------------

class Regressor(L.LightningModule):
    def __init__(self, blow_up_at=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 1))
        self.blow_up_at = blow_up_at
        self.dtypes = set()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.dtypes.add(dc.is_autocast_enabled("cpu"))
        loss = nn.functional.mse_loss(out, y)
        if self.blow_up_at is not None and self.global_step == self.blow_up_at:
            loss = loss * float("inf")  # a step whose gradients overflow
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return dc.optim.AdamW(self.parameters(), lr=3e-3)


def fit(tmp_path, precision, epochs=5, accelerator="cpu", module=None, **kw):
    """Train a Regressor (or module()) on a fixed regression task; (trainer, model, final mse). Also
    the GPU tests' helper (tests/test_cuda_models.py)."""
    dc.manual_seed(0)
    x = dc.randn(512, 8)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    m = module() if module is not None else Regressor(**kw)
    tr = L.Trainer(max_epochs=epochs, precision=precision, accelerator=accelerator, default_root_dir=str(tmp_path),
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   gradient_clip_val=1.0)
    tr.fit(m, DataLoader(TensorDataset(x, y), batch_size=32))
    w = m.net[0].weight  # the model's device and dtype (float32 master weights under *-mixed)
    with dc.no_grad():
        mse = nn.functional.mse_loss(m.net(x.to(w.device).to(w.dtype)).float(), y.to(w.device)).item()
    return tr, m, mse


def test_bf16_mixed_converges_like_float32(tmp_path):
    _, m32, mse32 = fit(tmp_path, "32-true")
    tr, m16, mse16 = fit(tmp_path, "bf16-mixed")
    assert m32.dtypes == {False} and m16.dtypes == {True}
    assert m16.net[0].weight.dtype == dc.float32  # master weights stay float32
    assert mse32 < 0.1 and abs(mse16 - mse32) < 0.25 * mse32
    assert tr.precision == "bf16-mixed" and tr.precision_plugin.scaler is None


def test_16_mixed_skips_an_overflowing_step_and_backs_off(tmp_path):
    tr, m, mse = fit(tmp_path, "16-mixed", epochs=1, blow_up_at=3)
    plugin = tr.precision_plugin
    assert plugin.skipped_steps >= 1
    assert plugin.scaler.get_scale() < 65536.0
    assert all(bool(p.isfinite().all()) for p in m.parameters())  # the bad step never touched them


def test_16_mixed_scaler_state_is_checkpointed_and_restored(tmp_path):
    tr, m, _ = fit(tmp_path, "16-mixed", epochs=1, blow_up_at=2)
    path = tmp_path / "s.ckpt"
    tr.save_checkpoint(str(path))
    scale = tr.precision_plugin.scaler.get_scale()
    m2 = Regressor()
    tr2 = L.Trainer(max_epochs=2, precision="16-mixed", default_root_dir=str(tmp_path), logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    seen = {}

    class Peek(L.Callback):
        def on_train_start(self, trainer, module):
            seen["scale"] = trainer.precision_plugin.scaler.get_scale()

    tr2.callbacks.append(Peek())
    x = dc.randn(64, 8)
    tr2.fit(m2, DataLoader(TensorDataset(x, x[:, :1]), batch_size=32), ckpt_path=str(path))
    assert seen["scale"] == scale and scale < 65536.0


def test_loss_scale_grows_after_clean_steps():
    lin = nn.Linear(4, 1)
    opt = dc.optim.SGD(lin.parameters(), lr=0.1)
    scaler = dc.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(lin(dc.randn(2, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 16.0


@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_unsupported_precisions_say_so(precision):
    with pytest.raises(ValueError, match="not supported yet"):
        L.Trainer(precision=precision)


# --- "bf16-true" / "16-true" / "64-true": the whole model in one dtype ----------------------------

class Seen(Regressor):
    """Records what a training step sees: its input's dtype and the default dtype there."""

    def training_step(self, batch, batch_idx):
        self.dtypes.add((batch[0].dtype, dc.get_default_dtype(), dc.zeros(1).dtype, batch[1].dtype))
        return super().training_step(batch, batch_idx)


def fit_true(tmp_path, precision, epochs=5, accelerator="cpu"):
    return fit(tmp_path, precision, epochs, accelerator, module=Seen)


@pytest.mark.parametrize("precision,dtype", [("bf16-true", dc.bfloat16), ("16-true", dc.float16),
                                             ("64-true", dc.float64)])
def test_true_precision_puts_weights_inputs_state_and_defaults_in_one_dtype(tmp_path, precision, dtype):
    _, _, mse32 = fit(tmp_path, "32-true")
    tr, m, mse = fit_true(tmp_path, precision)
    assert tr.precision == precision and tr.precision_plugin.scaler is None
    assert all(p.dtype == dtype for p in m.parameters())
    state = tr.optimizers[0].state[m.net[0].weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == dtype  # as torch's AdamW on such weights
    assert {d for d in m.dtypes if isinstance(d, tuple)} == {(dtype, dtype, dtype, dtype)}  # targets are floats too
    assert dc.get_default_dtype() == dc.float32  # restored after each step
    if dtype == dc.float64:
        assert abs(mse - mse32) < 0.02 * mse32, (mse, mse32)
    elif dtype == dc.bfloat16:
        assert mse < 0.1 and abs(mse - mse32) < 0.3 * mse32, (mse, mse32)
    else:  # float16 without master weights or loss scaling: Adam's second moment underflows, as in torch
        assert mse < 0.25, (mse, mse32)


def test_64_true_is_exactly_a_float64_loop(tmp_path):
    tr, m, _ = fit_true(tmp_path, "64-true", epochs=1)
    dc.manual_seed(0)
    x = dc.randn(512, 8)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    ref = Seen().double()
    opt = dc.optim.AdamW(ref.parameters(), lr=3e-3)
    for i in range(0, 512, 32):
        xb, yb = x[i:i + 32].double(), y[i:i + 32].double()
        opt.zero_grad()
        nn.functional.mse_loss(ref.net(xb), yb).backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_bf16_true_checkpoint_holds_bf16_weights_and_resumes(tmp_path):
    tr, m, _ = fit_true(tmp_path, "bf16-true", epochs=1)
    path = tmp_path / "t.ckpt"
    tr.save_checkpoint(str(path))
    sd = dc.load(str(path))["state_dict"]
    assert sd["net.0.weight"].dtype == dc.bfloat16
    m2 = Seen()
    tr2 = L.Trainer(max_epochs=2, precision="bf16-true", default_root_dir=str(tmp_path), logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    x = dc.randn(64, 8)
    tr2.fit(m2, DataLoader(TensorDataset(x, x[:, :1]), batch_size=32), ckpt_path=str(path))
    assert m2.net[0].weight.dtype == dc.bfloat16 and tr2.global_step == 16 + 2


def test_64_alias_warns_and_maps():
    with pytest.warns(UserWarning, match="64-true"):
        assert L.Trainer(precision=64, logger=False).precision == "64-true"


def test_old_aliases_warn_and_map():
    with pytest.warns(UserWarning, match="bf16-mixed"):
        assert L.Trainer(precision="bf16", logger=False).precision == "bf16-mixed"


def test_demo_bf16_mixed_converges_like_float32(tmp_path):
    from dutycycle import demo

    data = tmp_path / "words.txt"
    data.write_text("\n".join(WORDS) + "\n")
    finals = {}
    for prec in ("32-true", "bf16-mixed"):
        root = tmp_path / prec
        assert demo.main(["--steps", "60", "--size", "tiny", "--data", str(data), "--val-every", "60", "--samples",
                          "2", "--batch-size", "16", "--root", str(root), "--no-progress", "--workers", "1",
                          "--log-every", "10", "--precision", prec]) == 0
        with open(root / "words" / "version_0" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        finals[prec] = [float(r["val_loss"]) for r in rows if r.get("val_loss")][-1]
    assert abs(finals["bf16-mixed"] - finals["32-true"]) < 0.05 * finals["32-true"], finals
