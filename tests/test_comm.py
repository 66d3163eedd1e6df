"""The collectives layer (csrc/comm, _C.Comm): every op on every buffer kind and dtype, overlap with
compute, and the failures (desync, hang, a killed rank) ending in bounded time with messages that
name the ranks. The multi-rank tests run worker scripts (tests/comm_workers/) under mpirun, each in
its own process group with a timeout, so a hang fails the test instead of the suite."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import dutycycle as dc
from dutycycle import _C

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "comm_workers")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dc.__file__)))

needs_mpi = pytest.mark.skipif(
    "mpi" not in _C.comm_backends() or shutil.which("mpirun") is None,
    reason="built without MPI, or no mpirun on PATH",
)


def _env(extra=None):
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=PKG_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra or {})
    return env


class Out(str):
    """mpirun's combined output, plus `.results`: the workers' result lines (from their files)."""

    results = ""


def run_mpi(n, script, *args, timeout=120, env=None):
    """Run `mpirun -n n python script args` in its own process group; kill the group on timeout.
    Returns (returncode, output, seconds); output.results holds the ranks' result lines."""
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(n), sys.executable,
           os.path.join(WORKERS, script), *args]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=_env(dict(env or {}, COMM_OUT=d)), start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            pytest.fail(f"{script} {args} under mpirun -n {n} did not end within {timeout} s:\n{out[-4000:]}")
        secs = time.monotonic() - t0
        out = Out(out)
        out.results = "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)))
    return p.returncode, out, secs


def lines(out, tag):
    """{rank: message} of the workers' result lines "TAG rank message"."""
    got = {}
    for m in re.finditer(rf"^{tag} (\d+) ?(.*)$", out.results, re.M):
        got[int(m.group(1))] = m.group(2)
    return got


# --- in this process (no MPI needed) ---------------------------------------------------------------

def test_exceptions_are_exported():
    assert issubclass(dc.DistributedError, dc.DutycycleError)
    assert issubclass(dc.CollectiveTimeoutError, dc.DistributedError)
    assert issubclass(dc.DesyncError, dc.DistributedError)
    assert _C.DistributedError is dc.DistributedError


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown communication backend 'tcp'"):
        _C.Comm(backend="tcp")
    with pytest.raises(ValueError, match="timeout"):
        _C.Comm(timeout=0)


@pytest.mark.skipif("nccl" in _C.comm_backends(), reason="this build has NCCL (checked on a GPU machine)")
def test_nccl_without_cuda_build_raises_distributed_error():
    with pytest.raises(dc.DistributedError, match="nccl.*not available"):
        _C.Comm(backend="nccl")


@pytest.mark.skipif("mpi" in _C.comm_backends(), reason="built with MPI")
def test_without_mpi_comm_raises_distributed_error():
    with pytest.raises(dc.DistributedError, match="without MPI"):
        _C.Comm()


# --- one process without a launcher (an MPI singleton) ----------------------------------------------

@needs_mpi
def test_singleton_without_launcher():
    code = (
        "import numpy as np\nfrom dutycycle import _C\nc = _C.Comm()\nassert (c.rank, c.size) == (0, 1)\n"
        "a = np.arange(4.0); c.all_reduce(a, op='avg'); assert (a == np.arange(4.0)).all()\n"
        "g = np.zeros(4); c.all_gather(a, g); assert (g == a).all()\nc.barrier(); c.close()\n"
        "assert c.timeout == 2.5, c.timeout  # DUTYCYCLE_COMM_TIMEOUT\n"
        "c2 = _C.Comm(timeout=7); assert c2.timeout == 7.0; c2.all_reduce(a); c2.close()  # a second one after close\n"
        "print('SINGLE OK')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_env({"DUTYCYCLE_COMM_TIMEOUT": "2.5"}), start_new_session=True)
    assert p.returncode == 0 and "SINGLE OK" in p.stdout, p.stdout + p.stderr


@needs_mpi
def test_nccl_backend_without_gpu_is_a_clear_error():
    """On a machine without a GPU (or a build without CUDA) backend='nccl' raises DistributedError."""
    code = (
        "import dutycycle as dc\nfrom dutycycle import _C\ntry:\n    _C.Comm(backend='nccl')\n"
        "except dc.DistributedError as e:\n    print('NCCLERR', e)\nelse:\n    print('NCCL CREATED')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(),
                       start_new_session=True)
    if "NCCL CREATED" in p.stdout:
        pytest.skip("this machine has a GPU with NCCL, so the no-GPU error this test checks cannot happen here")
    assert "NCCLERR" in p.stdout and "nccl" in p.stdout.lower(), p.stdout + p.stderr


# --- under mpirun ----------------------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_every_op_every_buffer_kind(n):
    rc, out, _ = run_mpi(n, "ops.py")
    assert rc == 0, out[-4000:]
    assert sorted(lines(out, "OK")) == list(range(n)), out[-4000:]


@needs_mpi
def test_pytorch_tensors_through_dlpack():
    pytest.importorskip("torch")
    rc, out, _ = run_mpi(2, "torch_ops.py")
    assert rc == 0 and sorted(lines(out, "OK")) == [0, 1], out[-4000:]


@needs_mpi
def test_async_all_reduce_overlaps_compute():
    rc, out, _ = run_mpi(2, "overlap.py")
    assert rc == 0, out[-4000:]
    got = {r: json.loads(v) for r, v in lines(out, "OVERLAP").items()}
    assert sorted(got) == [0, 1], out
    for r, e in got.items():
        assert e["t0"] <= e["enqueued_ns"] <= e["started_ns"] <= e["finished_ns"], e
        assert e["started_ns"] < e["compute_end"], f"rank {r}: started after the compute ended: {e}"
        assert e["finished_ns"] < e["compute_end"], f"rank {r}: did not finish while Python computed: {e}"
        assert e["completed_during"], e
        assert (e["w_started"], e["w_finished"]) == (e["started_ns"], e["finished_ns"])


DESYNC_CASES = {
    "desync-size": (4, ["all_reduce #1 (float32 x 4, sum)", "rank 1 issued all_reduce #1 (float32 x 5, sum)",
                        "ranks 0,2,3 issued"]),
    "desync-big": (2, ["rank 0 issued all_reduce #1 (float32 x 4, sum)",
                       "rank 1 issued all_reduce #1 (float32 x 65536, sum)"]),
    "desync-op": (2, ["rank 0 issued broadcast #1", "rank 1 issued all_reduce #1"]),
    "desync-dtype": (2, ["rank 0 issued all_reduce #1 (float32 x 4", "rank 1 issued all_reduce #1 (float64 x 4"]),
    "desync-skip": (3, ["ranks 0,2 issued all_reduce #1", "rank 1 issued all_gather #1"]),
}


@needs_mpi
@pytest.mark.parametrize("mode", sorted(DESYNC_CASES))
def test_desync_is_reported_with_both_sides(mode):
    n, words = DESYNC_CASES[mode]
    rc, out, secs = run_mpi(n, "failures.py", mode, timeout=90, env={"WORKER_TIMEOUT": "30"})
    got = lines(out, "DESYNC")
    assert sorted(got) == list(range(n)), out[-4000:]
    for r, msg in got.items():
        assert msg.startswith(f"rank {r} (host "), msg
        for w in words:
            assert w in msg, (w, msg)
    assert sorted(lines(out, "STILL")) == list(range(n)), out[-4000:]  # the comm stays failed
    assert sorted(lines(out, "CLOSED")) == list(range(n)), out[-4000:]
    assert "NOERROR" not in out.results
    assert secs < 60


@needs_mpi
def test_p2p_size_mismatch_is_a_desync():
    rc, out, _ = run_mpi(2, "failures.py", "p2p-size", timeout=90)
    got = lines(out, "DESYNC")
    assert 1 in got and "recv #0 from rank 0" in got[1] and "longer than the 4 float32" in got[1], out[-4000:]


@needs_mpi
def test_hang_names_the_lagging_rank():
    """Rank 1 is busy in Python (GIL held) for 20 s; the timeout is 3 s: the others fail with a message
    naming rank 1 and what everyone waits in (rank 1's watchdog answered while its Python was busy),
    then rank 0 aborts the job: it ends long before rank 1 would have come back."""
    rc, out, secs = run_mpi(3, "failures.py", "hang", timeout=90, env={"WORKER_TIMEOUT": "3"})
    got = lines(out, "TIMEOUT")
    assert 0 in got, out[-4000:]
    for r, msg in got.items():
        assert r != 1
        assert f"rank {r} (host" in msg and "collective timeout: all_reduce #1 (float32 x 4, sum)" in msg, msg
        assert "within 3 s" in msg
        assert re.search(r"lagging: rank 1 \(host [^,]+, pid \d+\) is in no collective \(last issued all_reduce #0\)",
                         msg), msg
        assert "its caller busy elsewhere" in msg, msg
        assert "ranks 0,2 are waiting in all_reduce #1" in msg, msg
    assert rc != 0 and secs < 19, (rc, secs)  # ended by rank 0's abort, not by rank 1's return
    assert "aborting the job" in out


@needs_mpi
def test_killed_rank_is_named_and_nobody_hangs():
    rc, out, secs = run_mpi(3, "failures.py", "kill", timeout=90)
    assert rc != 0 and secs < 60, (rc, secs, out[-4000:])
    ours = re.search(r"peer rank 1 \(host [^,]+, pid \d+\) died", out)
    mpiruns = re.search(r"process rank 1 .* exited on signal 9", out)
    assert ours or mpiruns, out[-4000:]
    assert "NOERROR" not in out.results
