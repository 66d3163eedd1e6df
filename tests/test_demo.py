"""The main job (python -m dutycycle.demo) runs end to end at a tiny size, and bad input is reported."""

import csv
import subprocess
import sys

import pytest

from dutycycle import demo

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda", "sigma",
         "omega", "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"] * 3


def test_demo_trains_and_prints_new_words(tmp_path, capsys):
    data = tmp_path / "words.txt"
    data.write_text("\n".join(WORDS) + "\n")
    root = tmp_path / "runs"
    assert demo.main(["--steps", "40", "--size", "tiny", "--data", str(data), "--val-every", "20", "--samples", "5",
                      "--batch-size", "16", "--root", str(root), "--no-progress", "--workers", "1",
                      "--log-every", "10"]) == 0
    out = capsys.readouterr().out
    assert "duty cycle (fit)" in out and "compute" in out  # the duty-cycle table
    with open(root / "words" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert len(train) >= 2 and train[-1] < train[0]
    assert len(val) == 2  # validated at steps 20 and 40
    assert list((root / "words" / "version_0" / "checkpoints").glob("last.ckpt"))
    printed = out.split("new words (not in the training list):")[1].split()
    assert printed and not set(printed) & set(WORDS)
    assert all(w.isalpha() and w.islower() for w in printed)


def test_demo_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="can't read the word list"):
        demo.main(["--data", str(tmp_path / "nope.txt"), "--steps", "1"])


def test_demo_rejects_tiny_word_list(tmp_path):
    data = tmp_path / "w.txt"
    data.write_text("ab\ncd\n")
    with pytest.raises(SystemExit, match="usable words"):
        demo.main(["--data", str(data), "--steps", "1"])


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "dutycycle", "demo", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--steps" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dutycycle", "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command" in r.stderr
