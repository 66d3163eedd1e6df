"""The shipped examples and the quickstart notebook run end to end (at a tiny size), so they cannot rot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.skipif(not os.path.exists("/usr/share/dict/words"), reason="needs Debian's wamerican word list")
def test_gpt_words_example(tmp_path):
    out = run([os.path.join(ROOT, "examples", "train_gpt_words.py"), "--steps", "20"], tmp_path)
    assert "new words:" in out
    assert (tmp_path / "runs" / "char_gpt").is_dir()


def test_dit_shapes_example(tmp_path):
    out = run([os.path.join(ROOT, "examples", "train_dit_shapes.py"), "--steps", "10", "--sample-steps", "5"],
              tmp_path)
    assert "squares" in out and "discs" in out
    png = (tmp_path / "dit_samples.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="notebook tools come with `pip install -e .[test]`")
    nbclient = pytest.importorskip("nbclient", reason="notebook tools come with `pip install -e .[test]`")
    path = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    # the notebook's 300 steps shrink to 30 here: same cells, same code paths
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("steps = 300", "steps = 30")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the loss curve and the duty-cycle plot"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "training words" in text
    json.dumps(nb)  # the executed notebook is still valid JSON
