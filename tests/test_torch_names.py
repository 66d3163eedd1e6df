"""The PyTorch names scripts import, imported and used the way ported scripts write them
(`import dutycycle as torch`): namespaces as packages, backends switches, accelerator, amp,
seeding, threads, compile, activations with inplace=, and NotInDutycycleError for the rest."""

import importlib
import os
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

import dutycycle as torch
import dutycycle.nn as nn
import dutycycle.nn.functional as F
from dutycycle._missing import NotInDutycycleError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- namespaces as packages ----------------------------------------------------------------------

def test_utils_data_imports_as_scripts_write_them():
    import dutycycle.utils.data
    import dutycycle.utils.data.distributed
    from dutycycle.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, random_split
    from dutycycle.utils.data.dataloader import DataLoader as DL2
    from dutycycle.utils.data.dataloader import default_collate, get_worker_info
    from dutycycle.utils.data.dataset import ConcatDataset, Subset
    from dutycycle.utils.data.distributed import DistributedSampler
    from dutycycle.utils.data.sampler import BatchSampler, RandomSampler, SequentialSampler, WeightedRandomSampler

    assert DataLoader is DL2 is torch.data.DataLoader is torch.utils.data.DataLoader
    assert dutycycle.utils.data.distributed.DistributedSampler is DistributedSampler is torch.data.DistributedSampler
    assert get_worker_info() is None
    ds = TensorDataset(torch.arange(10).float(), torch.arange(10))
    a, b = random_split(ds, [7, 3])
    assert len(a) == 7 and len(b) == 3 and isinstance(a, Subset) and isinstance(ds, Dataset)
    assert len(ConcatDataset([a, b])) == 10 and issubclass(IterableDataset, Dataset)
    xs = [x for x, _ in DataLoader(ds, batch_size=4, shuffle=True)]
    assert sorted(np.concatenate([x.numpy() for x in xs]).tolist()) == list(range(10))
    assert default_collate([1, 2]).tolist() == [1, 2]
    s = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    assert list(s) == [1, 3, 5, 7, 9]
    assert len(list(BatchSampler(SequentialSampler(ds), 3, False))) == 4
    assert len(RandomSampler(ds)) == 10
    w = list(WeightedRandomSampler([0.0, 1.0, 0.0, 1.0], 50))
    assert len(w) == 50 and set(w) <= {1, 3}
    w = list(WeightedRandomSampler([0.1, 1.0, 0.0, 1.0], 3, replacement=False))
    assert sorted(w) == [0, 1, 3]


def test_subclassing_utils_data_dataset():
    from dutycycle.utils.data import DataLoader, Dataset

    class Squares(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i * i

    batches = list(DataLoader(Squares(), batch_size=3))
    assert batches[1][1].tolist() == [9, 16, 25]


def test_random_sampler_with_replacement_is_lazy():
    from dutycycle.utils.data import RandomSampler

    torch.manual_seed(3)
    s = RandomSampler(range(7), replacement=True, num_samples=10**10)  # minGPT's value
    assert len(s) == 10**10
    tracemalloc.start()
    it = iter(s)
    first = [next(it) for _ in range(100_000)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"iterating 1e5 of 1e10 draws took {peak} bytes"
    assert set(first) <= set(range(7)) and len(set(first)) == 7
    torch.manual_seed(3)
    it2 = iter(RandomSampler(range(7), replacement=True, num_samples=10**10))
    assert [next(it2) for _ in range(100_000)] == first  # seeded runs stay reproducible


def test_random_sampler_without_replacement_more_samples_than_data():
    from dutycycle.utils.data import RandomSampler

    out = list(RandomSampler(range(5), num_samples=12))
    assert len(out) == 12
    assert sorted(out[:5]) == list(range(5)) and sorted(out[5:10]) == list(range(5))


def test_backends_switches():
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = True
    assert torch.backends.cudnn.enabled is True
    assert torch.backends.cudnn.is_available() == torch.cuda.is_available()
    assert torch.backends.mps.is_available() is False
    assert torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2", "DEFAULT")
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert torch.backends.cuda.matmul.allow_tf32 is False
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert torch.backends.cuda.matmul.allow_tf32 is True
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        with pytest.raises(TypeError):
            torch.backends.cuda.matmul.allow_tf32 = "yes"
        with pytest.raises(AttributeError):
            torch.backends.cuda.matmul.allow_tf33 = True
        with pytest.raises(ValueError):
            torch.set_float32_matmul_precision("fast")
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = False
    torch.backends.cuda.enable_flash_sdp(False)
    assert torch.backends.cuda.flash_sdp_enabled() is False
    torch.backends.cuda.enable_flash_sdp(True)
    with torch.backends.cuda.sdp_kernel(enable_flash=False):
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()


def test_accelerator():
    assert torch.accelerator.is_available() == torch.cuda.is_available()
    assert torch.accelerator.device_count() == torch.cuda.device_count()
    acc = torch.accelerator.current_accelerator()
    if torch.cuda.is_built():
        assert acc.type == "cuda"
    else:
        assert acc is None
    device = acc if torch.accelerator.is_available() else "cpu"  # the idiom scripts use
    assert torch.zeros(2, device=device).shape == (2,)


def test_top_level_names():
    assert torch.compile is not compile
    m = nn.Linear(2, 2)
    assert torch.compile(m) is m
    assert torch.compile(m, mode="max-autotune", fullgraph=True, dynamic=False) is m

    @torch.compile(mode="reduce-overhead")
    def f(x):
        return x + 1

    assert f(torch.ones(1)).item() == 2.0
    assert list(torch.compile(m).state_dict()) == ["weight", "bias"]  # no _orig_mod. prefix


def test_set_num_threads_round_trip():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1
        a = torch.randn(300, 300)
        ref = (a @ a).numpy()
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
        assert np.allclose((a @ a).numpy(), ref, rtol=1e-5, atol=1e-4)
        with pytest.raises(ValueError):
            torch.set_num_threads(0)
        with pytest.raises(TypeError):
            torch.set_num_threads(1.5)
    finally:
        torch.set_num_threads(n)


# --- seeds ---------------------------------------------------------------------------------------

def _run(code):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_unseeded_processes_draw_fresh_seeds_and_seeded_ones_repeat():
    unseeded = "import dutycycle as torch; print(torch.initial_seed(), torch.rand(3).tolist())"
    a, b = _run(unseeded), _run(unseeded)
    assert a.split()[0] != b.split()[0] and a != b
    seeded = "import dutycycle as torch; torch.manual_seed(7); print(torch.initial_seed(), torch.rand(3).tolist())"
    c, d = _run(seeded), _run(seeded)
    assert c == d and c.split()[0] == "7"


def test_cuda_seeding_seeds_the_global_generator():
    torch.cuda.manual_seed_all(123)
    a = torch.randn(4)
    torch.cuda.manual_seed(123)
    b = torch.randn(4)
    torch.manual_seed(123)
    c = torch.randn(4)
    assert a.tolist() == b.tolist() == c.tolist()
    assert torch.cuda.initial_seed() == 123
    s = torch.seed()
    assert torch.initial_seed() == s


# --- amp -----------------------------------------------------------------------------------------

def test_autocast_cpu_rounds_matmul_inputs_and_nests():
    from dutycycle.amp import autocast

    x = torch.randn(3, 4)
    w = torch.randn(4, 2)
    assert not torch.is_autocast_enabled()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled() and torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        y = x @ w
        with autocast("cpu", enabled=False):
            assert not torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled()
    # on the CPU: inputs rounded to bf16, the GEMM and its result in float32 (see amp.autocast_mode)
    assert y.dtype == torch.float32 and y.tolist() != (x @ w).tolist()
    assert (y - x @ w).abs().max().item() < 0.05

    @torch.amp.autocast("cuda")
    def g(t):
        return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

    assert g(x) == (True, torch.float16)
    with torch.cuda.amp.autocast(enabled=False):
        assert not torch.is_autocast_enabled("cuda")
    with pytest.raises(RuntimeError):
        torch.autocast("tpu")
    with pytest.warns(UserWarning):
        ac = torch.autocast("cpu", dtype=torch.float64)
    with ac:
        assert not torch.is_autocast_enabled("cpu")


def _tiny_step(scaler, opt, model, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    return loss


def test_grad_scaler_disabled_is_an_exact_no_op():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    runs = []
    for use_scaler in (False, True):
        torch.manual_seed(1)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.cuda.amp.GradScaler(enabled=False)
        for _ in range(3):
            if use_scaler:
                loss = _tiny_step(scaler, opt, model, x, y)
                assert scaler.scale(loss) is loss
            else:
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
        runs.append(model.weight.detach().numpy().copy())
        assert scaler.get_scale() == 1.0 and scaler.state_dict() == {} and not scaler.is_enabled()
    assert np.array_equal(runs[0], runs[1])


def test_grad_scaler_cuda_without_gpu_warns_and_disables():
    if torch.cuda.is_available():
        pytest.skip("tests the no-GPU fallback; a GPU is usable here, so GradScaler(\"cuda\") stays enabled")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        s = torch.amp.GradScaler("cuda")
    assert not s.is_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.amp.GradScaler("cuda", enabled=False)  # no warning when disabled on purpose


def test_grad_scaler_enabled_on_cpu_scales_skips_and_adapts():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    model = nn.Linear(3, 1)
    ref = nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    assert scaler.scale(torch.tensor(1.5)).item() == 1.5 * 2**10
    for _ in range(4):
        _tiny_step(scaler, opt, model, x, y)
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_opt.step()
    assert np.allclose(model.weight.detach().numpy(), ref.weight.detach().numpy(), atol=1e-6)
    assert scaler.get_scale() == 2.0**12  # grew twice (growth_interval=2)
    # an inf gradient: the step is skipped and the scale backs off
    w_before = model.weight.detach().numpy().copy()
    opt.zero_grad()
    scaler.scale(model(x).sum() * float("inf")).backward()
    assert scaler.step(opt) is None
    scaler.update()
    assert np.array_equal(model.weight.detach().numpy(), w_before)
    assert scaler.get_scale() == 2.0**11
    sd = scaler.state_dict()
    other = torch.amp.GradScaler("cpu")
    other.load_state_dict(sd)
    assert other.get_scale() == 2.0**11 and other.state_dict() == sd
    # torch's call-order errors
    F.mse_loss(model(x), y).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="empty"):
        other.load_state_dict({})


# --- activations with inplace= and the other new modules ------------------------------------------

def test_activation_modules_match_formulas():
    x = torch.linspace(-5, 5, 41, dtype=torch.float64)
    a = x.numpy()
    softplus = np.log1p(np.exp(a))
    cases = [
        (nn.ReLU(inplace=True), np.maximum(a, 0)),
        (nn.LeakyReLU(0.2, inplace=True), np.where(a > 0, a, 0.2 * a)),
        (nn.SiLU(inplace=True), a / (1 + np.exp(-a))),
        (nn.Mish(), a * np.tanh(softplus)),
        (nn.Hardswish(), a * np.clip(a + 3, 0, 6) / 6),
        (nn.Hardsigmoid(), np.clip(a / 6 + 0.5, 0, 1)),
        (nn.ELU(), np.where(a > 0, a, np.expm1(a))),
        (nn.ELU(alpha=0.5, inplace=True), np.where(a > 0, a, 0.5 * np.expm1(a))),
        (nn.CELU(2.0), np.where(a > 0, a, 2.0 * np.expm1(a / 2.0))),
        (nn.SELU(), 1.0507009873554805 * np.where(a > 0, a, 1.6732632423543772 * np.expm1(a))),
        (nn.ReLU6(), np.clip(a, 0, 6)),
        (nn.Hardtanh(-2, 2), np.clip(a, -2, 2)),
        (nn.LogSigmoid(), -np.log1p(np.exp(-a))),
        (nn.Softsign(), a / (1 + np.abs(a))),
        (nn.Tanhshrink(), a - np.tanh(a)),
        (nn.GELU(approximate="tanh"), 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))),
        (nn.Tanh(), np.tanh(a)),
        (nn.Sigmoid(), 1 / (1 + np.exp(-a))),
        (nn.Identity(54, unused="x"), a),
    ]
    for m, ref in cases:
        got = m(x.clone()).numpy()
        assert np.allclose(got, ref, atol=1e-12), m
    assert repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"


def test_inplace_without_autograd_writes_into_the_input():
    x = torch.tensor([-1.0, 2.0])
    y = nn.ReLU(inplace=True)(x)
    assert y is x and x.tolist() == [0.0, 2.0]
    x = torch.tensor([-1.0, 2.0])
    assert F.leaky_relu(x, 0.5, True) is x and x.tolist() == [-0.5, 2.0]
    x = torch.tensor([-1.0, 2.0])
    F.relu(x)
    assert x.tolist() == [-1.0, 2.0]
    with torch.no_grad():
        x = torch.tensor([-1.0, 3.0], requires_grad=True)
        assert F.elu(x, inplace=True) is x


def test_inplace_under_autograd_keeps_gradients():
    # DCGAN's discriminator: Conv -> LeakyReLU(0.2, inplace=True); here Linear -> the same
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    grads = []
    for inplace in (False, True):
        model = nn.Sequential(lin, nn.LeakyReLU(0.2, inplace=inplace), nn.Dropout(0.0, inplace=inplace),
                              nn.ReLU(inplace=inplace))
        lin.zero_grad()
        model(x).sum().backward()
        grads.append(lin.weight.grad.numpy().copy())
    assert np.array_equal(grads[0], grads[1]) and np.abs(grads[0]).sum() > 0


def test_dropout_inplace_and_positional_p():
    torch.manual_seed(0)
    d = nn.Dropout(0.5, True)
    assert d.p == 0.5 and d.inplace
    x = torch.ones(1000)
    y = d(x)
    kept = y.numpy()
    assert set(np.unique(kept).tolist()) <= {0.0, 2.0} and 300 < (kept == 0).sum() < 700
    d.eval()
    assert d(x) is x


def test_activation_gradcheck():
    x = torch.tensor(np.array([-2.3, -0.7, 0.4, 1.9, 3.6]), requires_grad=True)
    for fn in (F.mish, F.hardswish, F.hardsigmoid, F.elu, F.selu, F.celu, F.logsigmoid, F.softsign, F.tanhshrink,
               lambda t: F.hardtanh(t, -1.5, 2.0), F.relu6):
        assert torch.autograd.gradcheck(fn, (x,)), fn


def test_softmax_modules_signatures():
    x = torch.randn(2, 3)
    assert np.allclose(nn.Softmax(dim=1)(x).numpy().sum(1), 1.0, atol=1e-6)
    assert np.allclose(np.exp(nn.LogSoftmax(1)(x).numpy()).sum(1), 1.0, atol=1e-6)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = nn.Softmax()(x)  # torch's legacy choice: dim=1 for 2-D input
    assert np.allclose(y.numpy().sum(1), 1.0, atol=1e-6)
    u = nn.Unflatten(1, (2, 3))(torch.randn(4, 6))
    assert u.shape == (4, 2, 3)
    assert nn.Flatten()(u).shape == (4, 6)


# --- what is missing says so ---------------------------------------------------------------------

@pytest.mark.parametrize("module, name, upstream", [
    ("dutycycle", "fft_rfft_missing", "torch"),
    ("dutycycle.nn", "Conv3dMissing", "torch.nn"),
    ("dutycycle.nn.functional", "grid_sample_missing", "torch.nn.functional"),
    ("dutycycle.nn.init", "missing_init_", "torch.nn.init"),
    ("dutycycle.optim", "LBFGSMissing", "torch.optim"),
    ("dutycycle.utils", "checkpoint_missing", "torch.utils"),
    ("dutycycle.utils.data", "StackDatasetMissing", "torch.utils.data"),
    ("dutycycle.backends", "opt_einsum_missing", "torch.backends"),
    ("dutycycle.backends.cudnn", "missing_flag", "torch.backends.cudnn"),
    ("dutycycle.amp", "custom_fwd_missing", "torch.amp"),
    ("dutycycle.cuda", "get_device_properties_missing", "torch.cuda"),
    ("dutycycle.cuda.amp", "custom_bwd_missing", "torch.cuda.amp"),
    ("dutycycle.accelerator", "memory_missing", "torch.accelerator"),
])
def test_missing_names_raise_not_in_dutycycle(module, name, upstream):
    mod = importlib.import_module(module)
    with pytest.raises(NotInDutycycleError, match=f"{upstream}.{name} is not in dutycycle yet"):
        getattr(mod, name)
    assert not hasattr(mod, name)  # still an AttributeError
    with pytest.raises(ImportError):
        exec(f"from {module} import {name}", {})


def test_private_names_keep_plain_attribute_error():
    with pytest.raises(AttributeError) as e:
        _ = torch._no_such_private
    assert not isinstance(e.value, NotInDutycycleError)


def test_cuda_set_device_without_a_gpu_is_a_device_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(torch.DeviceError, match="no CUDA device is available"):
        torch.cuda.set_device("cuda:0")
    with pytest.raises(ValueError, match="expected a cuda device"):
        torch.cuda.set_device("cpu")
    assert torch.cuda.current_device() == 0


def test_legacy_constructors_and_format():
    assert torch.Tensor(2, 3).shape == (2, 3) and torch.Tensor(2, 3).dtype is torch.float32
    assert torch.Tensor([1, 2]).tolist() == [1.0, 2.0] and torch.Tensor().shape == (0,)
    assert torch.LongTensor([1, 2]).dtype is torch.int64 and torch.ByteTensor(4).dtype is torch.uint8
    assert isinstance(torch.ones(2), torch.FloatTensor) and not isinstance(torch.ones(2), torch.LongTensor)
    assert isinstance(torch.arange(2), torch.LongTensor) and isinstance(torch.ones(1), torch.Tensor)
    assert torch.Tensor(np.arange(3)).dtype is torch.float32
    loss = torch.tensor(0.123456)
    assert f"{loss:.4f}" == "0.1235" and f"{torch.tensor(7):3d}" == "  7"
    with pytest.raises(TypeError):
        torch.Tensor(2, "a")
    with pytest.raises(TypeError):
        f"{torch.ones(2):.2f}"


def test_cumprod_like_torch():
    x = torch.tensor([[1.0, 2.0, 0.0, 3.0], [2.0, 0.5, 4.0, 1.0]], dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(torch.cumprod(x, axis=1).detach().numpy(), np.cumprod(x.detach().numpy(), 1))
    assert torch.autograd.gradcheck(lambda t: t.cumprod(dim=1), [x])
    assert torch.tensor([1, 2, 3]).cumprod(0).tolist() == [1, 2, 6]
    assert torch.tensor([True, True]).cumprod(0).dtype is torch.int64
    with pytest.raises(TypeError, match="dim and axis"):
        x.cumprod(1, axis=1)
