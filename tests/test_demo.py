"""The main job (python -m dutycycle.demo) runs end to end at a tiny size, and bad input is reported."""

import subprocess
import sys

import pytest

from dutycycle import demo

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda", "sigma",
         "omega", "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"] * 3


def test_demo_trains_and_prints_new_words(tmp_path, capsys):
    data = tmp_path / "words.txt"
    data.write_text("\n".join(WORDS) + "\n")
    assert demo.main(["--steps", "40", "--size", "tiny", "--data", str(data), "--eval-every", "20",
                      "--samples", "5", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    losses = [float(line.split("train loss")[1].split()[0]) for line in out.splitlines() if "train loss" in line]
    assert losses[-1] < losses[0], out
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
