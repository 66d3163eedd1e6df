"""CPU threading by problem size: small GEMMs stay on the calling thread (OpenBLAS included), large
ones use our OpenMP team, every path gives NumPy's answer with two threads, and the OpenMP spin
count set at start-up is applied only while the core loads.

Thread checks run in a subprocess with OMP_NUM_THREADS=2, so the result does not depend on the
machine's core count or on what earlier tests started."""

import os
import subprocess
import sys
import textwrap

import pytest

from dutycycle import _platform

PYTHONPATH = os.path.dirname(os.path.dirname(_platform.__file__))


def run_py(code, **env):
    e = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=PYTHONPATH)
    e.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc and RUSAGE_THREAD")
def test_small_gemm_stays_on_the_calling_thread_large_gemm_does_not():
    # Linear(128, 128) on 32 rows is x @ W^T. OpenBLAS used to thread that call itself, from a
    # nested OpenMP region: a thread was created and destroyed for every call (~50 voluntary context
    # switches of the calling thread over these 50 pairs of GEMMs, 0.2-4 ms a call instead of 15 us).
    # Now it runs here, without ever blocking.
    r = run_py("""
        import os, resource, numpy as np, dutycycle as dc
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((32, 128), dtype=np.float32), rng.standard_normal((128, 128), dtype=np.float32)
        tx, tw = dc.from_numpy(x), dc.from_numpy(w)
        y, g = tx @ tw.t(), tx.t() @ tx
        n0 = len(os.listdir("/proc/self/task"))
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        for _ in range(50):
            y = tx @ tw.t()
            g = tx.t() @ tx
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        n1 = len(os.listdir("/proc/self/task"))
        assert np.allclose(y.numpy(), x @ w.T, atol=1e-4), "small NT GEMM is wrong"
        assert np.allclose(g.numpy(), x.T @ x, atol=1e-4), "small TN GEMM is wrong"
        big = dc.from_numpy(rng.standard_normal((512, 512), dtype=np.float32))
        big @ big
        n2 = len(os.listdir("/proc/self/task"))
        print(r1.ru_nvcsw - r0.ru_nvcsw, n1 - n0, n2 - n1)
    """)
    assert r.returncode == 0, r.stderr
    waits, small_threads, big_threads = map(int, r.stdout.split())
    assert waits < 10, f"the calling thread blocked {waits} times in 100 small GEMMs (threads handed work?)"
    assert small_threads == 0, f"small GEMMs left {small_threads} new thread(s)"
    assert big_threads > 0, "a 512^3 GEMM should run on the OpenMP team (the thread count was not restored?)"


def test_gemm_paths_match_numpy_with_two_threads():
    r = run_py("""
        import numpy as np, dutycycle as dc
        rng = np.random.default_rng(1)
        def f(*s):
            return rng.standard_normal(s, dtype=np.float32)
        cases = [
            (f(32, 128), f(128, 128).T),        # serial, B transposed
            (f(1, 7), f(7, 5)),                 # tiny
            (f(48, 64, 32), f(48, 32, 64)),     # many small matrices, one per thread
            (f(4, 300, 200), f(4, 200, 100)),   # few large matrices (batch >= threads)
            (f(1024, 256), f(256, 96)),         # one large matrix: row blocks
            (f(96, 256), f(1024, 256).T),       # one large matrix: column blocks, B transposed
            (f(256, 1024).T, f(256, 512)),      # A transposed
        ]
        for a, b in cases:
            got = (dc.from_numpy(np.ascontiguousarray(a)) @ dc.from_numpy(np.ascontiguousarray(b))).numpy()
            ta = dc.from_numpy(np.ascontiguousarray(a.swapaxes(-1, -2))).transpose(-1, -2)
            tb = dc.from_numpy(np.ascontiguousarray(b.swapaxes(-1, -2))).transpose(-1, -2)
            got_t = (ta @ tb).numpy()
            want = a.astype(np.float64) @ b.astype(np.float64)
            for g in (got, got_t):
                assert np.allclose(g, want, rtol=1e-4, atol=1e-3), (a.shape, b.shape, np.abs(g - want).max())
        qkv = f(2, 64, 3 * 96)  # heads sliced out of a fused projection (wide leading dim)
        t = dc.from_numpy(qkv).reshape(2, 64, 3, 4, 24).permute(2, 0, 3, 1, 4)
        q, k = t[0], t[1]
        got = (q @ k.transpose(-1, -2)).numpy()
        qn = qkv.reshape(2, 64, 3, 4, 24).transpose(2, 0, 3, 1, 4)
        assert np.allclose(got, qn[0] @ qn[1].swapaxes(-1, -2), rtol=1e-4, atol=1e-3)
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_omp_spincount_policy(monkeypatch):
    for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "DUTYCYCLE_GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)
    assert _platform.omp_spincount() == str(_platform.GOMP_SPINS)
    monkeypatch.setenv("DUTYCYCLE_GOMP_SPINCOUNT", "default")
    assert _platform.omp_spincount() is None
    monkeypatch.setenv("DUTYCYCLE_GOMP_SPINCOUNT", "1234")
    assert _platform.omp_spincount() == "1234"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's OpenMP settings win
    assert _platform.omp_spincount() is None
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "infinite")
    assert _platform.omp_spincount() is None


def test_import_leaves_the_environment_as_it_was():
    # the user set neither: the core loads with our spin count, and the variable is gone again
    r = run_py("""
        import os
        for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
            os.environ.pop(k, None)
        before = dict(os.environ)
        import dutycycle
        print(sorted(set(dict(os.environ).items()) ^ set(before.items())))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
