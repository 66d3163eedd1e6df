"""Running the distributed test scripts (tests/dist_scripts/*.py) as real multi-rank jobs: the
environment every job gets (root allowed, one thread per rank on the 2-core CI machines, this
checkout's dutycycle first on PYTHONPATH), mpirun/`dutycycle run` command lines, and a run with a
hard timeout that kills the whole process group so a hung job never outlives its test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "python"))


def script(name):
    return os.path.join(HERE, name)


def have_mpirun():
    return shutil.which("mpirun") is not None


def have_comm():
    try:
        import dutycycle.distributed as dist
    except Exception:
        return False
    return dist.is_available()


def job_env(**extra):
    env = dict(os.environ)
    for k in list(env):  # a test run under a launcher must not leak its rank into the jobs it starts
        if k.startswith(("OMPI_", "PMIX_", "SLURM_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                                "DUTYCYCLE_SELF_LAUNCHED"):
            del env[k]
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONUNBUFFERED", None)  # print() would write text and newline apart: two ranks' lines merge
    env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpirun_cmd(n, *argv):
    return ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(n), sys.executable, *argv]


def run_cmd(n, *argv):
    return [sys.executable, "-m", "dutycycle", "run", "-n", str(n), *argv]


class Result:
    def __init__(self, rc, out, err, seconds, timed_out):
        self.rc, self.out, self.err, self.seconds, self.timed_out = rc, out, err, seconds, timed_out

    def json_lines(self):
        """Every JSON object printed on stdout (the scripts report with print(json.dumps(...)))."""
        dec, rows = json.JSONDecoder(), []
        for line in self.out.splitlines():
            i = line.find("{")
            while i >= 0:
                try:
                    obj, end = dec.raw_decode(line, i)
                except ValueError:
                    i = line.find("{", i + 1)
                    continue
                rows.append(obj)
                i = line.find("{", end)
        return rows

    def __repr__(self):
        return (f"rc={self.rc} seconds={self.seconds:.1f} timed_out={self.timed_out}\n--- stdout\n{self.out[-4000:]}"
                f"\n--- stderr\n{self.err[-6000:]}")


def run(cmd, timeout=120, env=None, cwd=None):
    """Run cmd in its own process group; past `timeout` seconds kill the whole group (a hung job
    ends here, not in the CI runner)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env if env is not None else job_env(), cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers (orted, ranks) of a job that ended badly
        except ProcessLookupError:
            pass
    return Result(p.returncode, out, err, time.monotonic() - t0, timed_out)
