"""Ten public training scripts, ported by changing only their imports (tests/ports/*): each runs a
few dozen steps on synthetic data of the original's shapes and its losses fall.

The ports keep the upstream code as written (their lines marked "# dutycycle:" are the only
changes besides the data, marked "# synthetic:"). run_port.py runs each as `python script.py`
would; with PyTorch and Lightning installed (DUTYCYCLE_TORCH_PYTHON=/path/to/python), the same
scripts with their original imports give the baseline the losses are compared with."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = os.path.join(ROOT, "tests", "ports")
TORCH_PYTHON = os.environ.get("DUTYCYCLE_TORCH_PYTHON")


def floats(pattern, text):
    return [float(m) for m in re.findall(pattern, text)]


def logged(name):
    return lambda out, log, cwd: [v for n, _, v in log if n == name]


def chars_data(cwd):
    """nanoGPT's data/<dataset>/{train,val}.bin and meta.pkl for a small synthetic character corpus."""
    import pickle

    sys.path.insert(0, PORTS)
    from synthetic import text

    corpus = text(30000)
    chars = sorted(set(corpus))
    ids = np.array([chars.index(c) for c in corpus], dtype=np.uint16)
    d = cwd / "data" / "chars"
    d.mkdir(parents=True)
    ids[:27000].tofile(d / "train.bin")
    ids[27000:].tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars)}, f)
    (cwd / "configurator.py").write_text(open(os.path.join(ROOT, "tests", "ddp_scripts", "configurator.py")).read())


# name: (script, args, losses(stdout, logged values, cwd), setup(cwd) or None)
CASES = {
    "pytorch_quickstart": ("quickstart.py", ["4"], lambda out, log, cwd: floats(r"Avg loss: ([\d.]+)", out), None),
    "pytorch_vae": ("vae.py", ["--epochs", "3", "--log-interval", "4"],
                    lambda out, log, cwd: floats(r"Average loss: ([\d.]+)", out), None),
    "pytorch_mnist_cnn": ("mnist_cnn.py", ["--epochs", "2", "--log-interval", "2", "--test-batch-size", "256"],
                          lambda out, log, cwd: floats(r"\tLoss: ([\d.]+)", out), None),
    "pytorch_dcgan": ("dcgan.py", ["--batchSize", "16", "--ngf", "16", "--ndf", "16", "--niter", "1",
                                   "--niter-steps", "16", "--manualSeed", "1"],
                      lambda out, log, cwd: floats(r"Loss_D: ([\d.]+)", out), None),
    "lightning_docs_autoencoder": ("lightning_docs_autoencoder.py", [], logged("train_loss"), None),
    "lightning_autoencoder": ("lightning_autoencoder.py", [], logged("train_loss"), None),
    "lightning_gan": ("lightning_gan.py", ["--max_epochs", "2", "--limit", "16"], logged("d_loss"), None),
    "nanogpt": ("nanogpt/train.py",
                ["--device=cpu", "--dataset=chars", "--eval_interval=20", "--eval_iters=2", "--log_interval=1",
                 "--block_size=32", "--batch_size=8", "--n_layer=2", "--n_head=2", "--n_embd=64",
                 "--max_iters=40", "--lr_decay_iters=40", "--warmup_iters=4", "--learning_rate=3e-3",
                 "--gradient_accumulation_steps=1", "--dropout=0.0"],
                lambda out, log, cwd: floats(r"iter \d+: loss ([\d.]+)", out), chars_data),
    "mingpt_chargpt": ("chargpt.py", ["--model.model_type=gpt-nano", "--trainer.max_iters=61",
                                      "--trainer.batch_size=16", "--data.block_size=32", "--trainer.num_workers=0"],
                       lambda out, log, cwd: floats(r"train loss ([\d.]+)", out), None),
    "tiny_ddpm": ("ddpm.py", ["--num_epochs", "3", "--dataset_size", "1024", "--eval_batch_size", "100",
                              "--save_images_step", "3"],
                  lambda out, log, cwd: list(np.load(cwd / "exps" / "base" / "loss.npy")), None),
}


def run(case, cwd, python=sys.executable, torch=False):
    script, args, losses_of, setup = CASES[case]
    if setup:
        setup(cwd)
    log_path = cwd / "logged.json"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PORT_LOG": str(log_path), "PORT_TORCH": "1" if torch else "0"}
    p = subprocess.run([python, os.path.join(PORTS, "run_port.py"), os.path.join(PORTS, script), *args],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{script} failed (exit {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    return p.stdout, losses_of(p.stdout, log, cwd)


def falls(losses):
    """The mean of the last quarter below the mean of the first quarter (noisy single steps aside)."""
    q = max(1, len(losses) // 4)
    return float(np.mean(losses[-q:])) < float(np.mean(losses[:q]))


# What each port still lacks in dutycycle (issue 8, open): strict, so a port that starts passing fails
# here until its entry is removed.
NOT_YET = {
}


# Final-loss ratio allowed against PyTorch (default 1.5). A GAN's discriminator loss swings with the
# initial draw: DCGAN's last-quarter Loss_D over --manualSeed 1-4 measured 0.21-0.37 here and
# 0.17-0.41 on PyTorch (seed 1 alone: 0.21 vs 0.41).
# The Lightning autoencoder's 3-number bottleneck makes its final loss depend on the initial draw as
# much: the same training (3 epochs, Adam 1e-2) over seeds 0-9 ended at 0.025-0.072 on PyTorch and
# 0.023-0.044 here; the port's seed 1234 gives 0.054 here and 0.027 on PyTorch; started from PyTorch's
# initial weights, our per-step losses equal PyTorch's (to 4 digits over all 96 steps).
RANGE = {"pytorch_dcgan": 2.5, "lightning_autoencoder": 3.0}


def _blocked(c):
    return pytest.mark.xfail(reason=f"not in dutycycle yet (issue 8): {NOT_YET[c]}", strict=True)


@pytest.mark.parametrize("case", [pytest.param(c, marks=_blocked(c)) if c in NOT_YET else c for c in sorted(CASES)])
def test_port_runs_and_trains(case, tmp_path):
    out, losses = run(case, tmp_path)
    assert len(losses) >= 3, f"{case}: too few losses found in its output:\n{out[-3000:]}"
    assert all(math.isfinite(v) for v in losses), losses
    assert falls(losses), f"{case}: losses did not fall: {losses}"


@pytest.mark.skipif(not TORCH_PYTHON, reason="set DUTYCYCLE_TORCH_PYTHON to a Python with torch (and lightning)")
@pytest.mark.parametrize("case", [pytest.param(c, marks=_blocked(c)) if c in NOT_YET else c for c in sorted(CASES)])
def test_port_matches_pytorch_range(case, tmp_path):
    """The same script on PyTorch: the final losses of the two runs within a factor of 1.5 (RANGE
    for GANs; the initialisation draws differ, the data is the same)."""
    if case.startswith("lightning"):
        check = subprocess.run([TORCH_PYTHON, "-c", "import lightning"], capture_output=True)
        if check.returncode:
            pytest.skip("lightning is not installed next to torch")
    (tmp_path / "dc").mkdir()
    (tmp_path / "pt").mkdir()
    _, ours = run(case, tmp_path / "dc")
    _, theirs = run(case, tmp_path / "pt", python=TORCH_PYTHON, torch=True)
    q = max(1, min(len(ours), len(theirs)) // 4)
    a, b = float(np.mean(ours[-q:])), float(np.mean(theirs[-q:]))
    f = RANGE.get(case, 1.5)
    assert b / f <= a <= b * f, f"{case}: final losses dutycycle {a:.4f}, PyTorch {b:.4f}"
