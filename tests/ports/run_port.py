"""Run one ported script as `python script.py args...` would, from the test suite.

    python run_port.py SCRIPT [ARGS...]

The script runs as __main__ with its own folder first on sys.path (as Python does for a script).
With PORT_LOG=path, every value a LightningModule logs with self.log/self.log_dict is recorded
(name, step, value) and written to that JSON file at exit, so a test can check that the losses
of a Lightning script fall without the script printing them. With PORT_TORCH=1 the same script
runs on PyTorch + Lightning instead (`to_torch` below reverts the lines marked "dutycycle:"):
the baseline a port's losses are compared with, when PyTorch is installed."""

import json
import os
import re
import runpy
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def to_torch(source):
    """The original imports back: the port's only changes are its lines marked "# dutycycle:"."""
    out = []
    for line in source.splitlines(keepends=True):
        if "# dutycycle:" in line:
            code, _, _ = line.partition("# dutycycle:")
            code = code.replace("import dutycycle as L", "import lightning as L")
            code = code.replace("dutycycle.pytorch", "lightning.pytorch")
            code = re.sub(r"\bdutycycle\b", "torch", code)
            line = code.rstrip() + "\n"
        out.append(line)
    return "".join(out)


def main():
    script = os.path.abspath(sys.argv[1])
    sys.argv = [script] + sys.argv[2:]
    folder = os.path.dirname(script)
    if os.environ.get("PORT_TORCH") == "1":  # a copy of the ports with the original imports
        tmp = tempfile.mkdtemp(prefix="port-torch-")
        for root, _, files in os.walk(HERE):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), HERE)
                    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                    with open(os.path.join(root, f)) as src, open(os.path.join(tmp, rel), "w") as dst:
                        dst.write(to_torch(src.read()))
        script = os.path.join(tmp, os.path.relpath(script, HERE))
        folder = os.path.dirname(script)
        sys.argv[0] = script
    sys.path.insert(0, folder)
    sys.path.insert(1, HERE)  # synthetic.py, for scripts in subfolders
    logged = []
    path = os.environ.get("PORT_LOG")
    if path:
        if os.environ.get("PORT_TORCH") == "1":
            from lightning.pytorch import LightningModule
        else:
            from dutycycle import LightningModule
        original = LightningModule.log

        def log(self, name, value, *args, **kwargs):
            logged.append((name, int(self.global_step), float(value)))
            return original(self, name, value, *args, **kwargs)

        LightningModule.log = log
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if path:
            with open(path, "w") as f:
                json.dump(logged, f)


if __name__ == "__main__":
    main()
