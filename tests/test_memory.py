"""Host memory: freed large blocks are cached and reused (no page faults every step), within a limit."""

import subprocess
import sys

import numpy as np

import dutycycle as dc
from dutycycle import _C


def test_large_blocks_are_cached_and_reused():
    _C.cpu_empty_cache()
    assert _C.cpu_cache_info()["cached_bytes"] == 0
    t = dc.zeros(1 << 20)  # 4 MiB
    ptr = t.data_ptr()
    del t
    info = _C.cpu_cache_info()
    assert info["cached_bytes"] >= 4 << 20
    u = dc.ones(1 << 20)  # same size class: the same block comes back, fully rewritten
    assert u.data_ptr() == ptr
    assert float(u.sum()) == float(1 << 20)
    del u
    _C.cpu_empty_cache()
    assert _C.cpu_cache_info()["cached_bytes"] == 0


def test_small_blocks_are_not_cached():
    _C.cpu_empty_cache()
    t = dc.zeros(100)
    del t
    assert _C.cpu_cache_info()["cached_bytes"] == 0


def test_reused_block_holds_correct_results():
    a = np.random.default_rng(0).standard_normal((512, 300)).astype(np.float32)
    for _ in range(3):  # each round reuses the previous round's freed blocks
        x = dc.from_numpy(a)
        y = (x * 2.0 + 1.0).sum(1)
        np.testing.assert_allclose(y.numpy(), (a * 2 + 1).sum(1), rtol=1e-5, atol=1e-3)


def test_cache_limit_from_environment():
    code = ("import dutycycle as dc; from dutycycle import _C; t = dc.zeros(1 << 20); del t; "
            "i = _C.cpu_cache_info(); print(i['cached_bytes'], i['limit_bytes'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "DUTYCYCLE_CPU_CACHE_MB": "0"}).stdout.split()
    assert out == ["0", "0"]
