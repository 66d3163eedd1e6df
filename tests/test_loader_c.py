"""The C batch-assembly pool (csrc/loader/) through its binding _C.Loader: gathers, multi-part
columns, stacking, in-order delivery, errors stored and raised at next(), reset/close, and that
the GIL is released while a big gather runs."""

import threading
import time

import numpy as np
import pytest

import dutycycle as dc
from dutycycle import _C


def test_gather_rows_in_order_of_submission():
    L = _C.Loader(3, 4)
    x = dc.arange(60, dtype=dc.float32).reshape(20, 3)
    rng = np.random.default_rng(0)
    want = {}
    for b in range(12):  # more than prefetch: the rest queue
        idx = rng.integers(0, 20, size=5).astype(np.int64)
        L.submit(b, 5, [([x], idx, False)])
        want[b] = x.numpy()[idx]
    assert L.pending() == 12
    for b in range(12):
        got, (t,) = L.next()
        assert got == b
        assert t.shape == (5, 3) and t.dtype == dc.float32 and t.is_contiguous()
        np.testing.assert_array_equal(t.numpy(), want[b])
    assert L.pending() == 0
    L.close()
    assert L.closed


def test_multi_part_columns_and_dtypes():
    L = _C.Loader(2, 2)
    a = dc.tensor([[1, 2], [3, 4]], dtype=dc.int64)
    b = dc.tensor([[5, 6], [7, 8], [9, 10]], dtype=dc.int64)
    m = dc.tensor([True, False, True, True, False])
    idx = np.array([4, 0, 2, 3], dtype=np.int64)
    L.submit(7, 4, [([a, b], idx, False), ([m[:2].contiguous(), m[2:].contiguous()], idx, False)])
    got, (t, tm) = L.next()
    assert got == 7
    assert t.tolist() == [[9, 10], [1, 2], [5, 6], [7, 8]]
    assert tm.dtype == dc.bool and tm.tolist() == [False, True, True, True]


def test_stack_mode_and_identity_rows():
    L = _C.Loader(1, 1)
    parts = [dc.full((2, 2), float(i)) for i in range(3)]
    L.submit(0, 3, [(parts, None, True)])
    _, (t,) = L.next()
    assert t.shape == (3, 2, 2)
    assert t[:, 0, 0].tolist() == [0.0, 1.0, 2.0]
    x = dc.arange(10)
    L.submit(1, 4, [([x], None, False)])  # rows 0..3
    assert L.next()[1][0].tolist() == [0, 1, 2, 3]


def test_errors_are_stored_and_raised_at_next():
    L = _C.Loader(2, 2)
    x = dc.arange(10)
    L.submit(0, 2, [([x], np.array([1, 2]), False)])
    L.submit(1, 2, [([x], np.array([3, 10]), False)])  # out of range: fails on a worker
    L.submit(2, 1, [([x], np.array([9]), False)])
    assert L.next()[1][0].tolist() == [1, 2]
    with pytest.raises(IndexError, match=r"row index 10 .*batch 1.*10 rows"):
        L.next()
    assert L.next()[1][0].tolist() == [9]  # later batches are unaffected
    with pytest.raises(ValueError, match="no batch is outstanding"):
        L.next()


def test_bad_submissions_raise_at_once():
    L = _C.Loader(1, 1)
    x = dc.arange(10)
    with pytest.raises(ValueError, match="not contiguous"):
        L.submit(0, 2, [([dc.arange(20).reshape(10, 2).t()], np.array([0, 1]), False)])
    with pytest.raises(ValueError, match="rows of shape"):
        L.submit(0, 2, [([dc.zeros(2, 3), dc.zeros(2, 4)], np.array([0, 1]), False)])
    with pytest.raises(TypeError, match="int64"):
        L.submit(0, 2, [([x], np.array([0, 1], dtype=np.int32), False)])
    with pytest.raises(ValueError, match="2 indices for a batch of 3"):
        L.submit(0, 3, [([x], np.array([0, 1]), False)])
    L.submit(0, 1, [([x], np.array([0]), False)])
    with pytest.raises(ValueError, match="already outstanding"):
        L.submit(0, 1, [([x], np.array([0]), False)])
    with pytest.raises(ValueError):
        _C.Loader(0, 1)
    with pytest.raises(ValueError):
        _C.Loader(1, 0)


def test_timeout_reset_and_close():
    L = _C.Loader(1, 1)
    x = dc.arange(10)
    for b in range(5):
        L.submit(b, 1, [([x], np.array([b]), False)])
    L.reset()
    assert L.pending() == 0
    with pytest.raises(ValueError):
        L.next(0.01)
    L.submit(9, 1, [([x], np.array([4]), False)])
    assert L.next(5.0)[1][0].tolist() == [4]
    L.close()
    L.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        L.submit(0, 1, [([x], np.array([0]), False)])


def test_batches_outlive_sources_and_loader():
    L = _C.Loader(2, 2)
    x = dc.arange(1000, dtype=dc.float64)
    L.submit(0, 3, [([x], np.array([5, 6, 7]), False)])
    del x  # the loader keeps the source alive until the batch is out
    _, (t,) = L.next()
    del L
    assert t.tolist() == [5.0, 6.0, 7.0]  # the batch tensor owns its buffer


def test_free_with_outstanding_batches_does_not_hang():
    x = dc.zeros(100000, 16)
    for _ in range(5):
        L = _C.Loader(4, 8)
        for b in range(20):
            L.submit(b, 5000, [([x], np.arange(5000, dtype=np.int64), False)])
        del L  # joins the workers, drops the queued batches


def test_gil_is_released_during_a_big_gather():
    src = dc.zeros(1 << 20, 4)  # 16 MB of rows
    idx = np.random.default_rng(0).integers(0, 1 << 20, size=6 << 20).astype(np.int64)
    L = _C.Loader(1, 1)
    count = [0]
    running = threading.Event()
    done = threading.Event()

    def spin():
        running.set()
        while not done.is_set():
            count[0] += 1

    th = threading.Thread(target=spin)
    th.start()
    running.wait()
    try:
        L.submit(0, len(idx), [([src], idx, False)])
        c0, t0 = count[0], time.perf_counter()
        _, (t,) = L.next()  # waits without the GIL while a worker gathers ~100 MB
        elapsed, during = time.perf_counter() - t0, count[0] - c0
    finally:
        done.set()
        th.join()
    assert t.shape == (len(idx), 4)
    # with the GIL held through the wait the spinning thread could not count at all
    assert elapsed < 0.005 or during > 1000, (elapsed, during)
