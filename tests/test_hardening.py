"""Regression tests for defects found by trying to break dutycycle (issue 6): lifetimes across
`.data =`, asserts reachable from Python, deep graphs, weakref resurrection, threads, fork, hooks
that add hooks, and silently wrong indexing. Cases that used to crash run in a subprocess, so a
crash fails the test instead of killing pytest."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.data import DataLoader, TensorDataset

PYTHONPATH = os.pathsep.join([os.path.dirname(os.path.dirname(dc.__file__))] + sys.path)


def run_py(code, timeout=120, **env_extra):
    """Run code in a fresh interpreter; return the CompletedProcess (a crash is a nonzero rc)."""
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, PYTHONFAULTHANDLER="1", **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(code, timeout=120, **env_extra):
    r = run_py(code, timeout, **env_extra)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    return r.stdout


# --- lifetime: views, capsules and the loader keep the storage alive ----------------------------

def test_numpy_view_survives_data_assignment():
    out = ok("""
        import numpy as np, dutycycle as dc
        t = dc.zeros(1000000)
        a = np.asarray(t)
        t.data = dc.ones(3)
        junk = [dc.full((1000000,), 7.0) for _ in range(4)]  # would reuse the freed block
        print(a[:3].tolist(), float(a.sum()), t.tolist())
    """)
    assert out.split("\n")[0] == "[0.0, 0.0, 0.0] 0.0 [1.0, 1.0, 1.0]"


def test_numpy_view_of_strided_tensor_keeps_offset_and_strides():
    x = dc.arange(0, 24.0).reshape(4, 6)
    v = x[1:, ::2].T
    a = np.asarray(v)
    assert np.array_equal(a, np.arange(24.0).reshape(4, 6)[1:, ::2].T)
    a[0, 0] = -1  # still a view
    assert x[1, 0].item() == -1


def test_dlpack_export_survives_data_assignment():
    out = ok("""
        import numpy as np, dutycycle as dc
        t = dc.zeros(1000000)
        a = np.from_dlpack(t)
        cap = t.__dlpack__()
        t.data = dc.ones(3)
        junk = [dc.full((1000000,), 7.0) for _ in range(4)]
        b = dc.from_dlpack(cap) if hasattr(dc, "from_dlpack") else None
        print(float(a.sum()), None if b is None else b.sum().item())
    """)
    assert out.split()[0] == "0.0" and out.split()[1] in ("0.0", "None")


def test_loader_survives_data_assignment_of_its_source():
    """The workers gather from t's storage without the GIL; `t.data = ...` used to free it under
    them (the freed block was reused by the next tensor: batches of 9s, or a crash)."""
    out = ok("""
        import dutycycle as dc
        from dutycycle.data import DataLoader, TensorDataset
        t = dc.ones(1000000, 16)
        dl = DataLoader(TensorDataset(t), batch_size=125000, num_workers=1, prefetch_factor=8, shuffle=True)
        it = iter(dl)  # prefetch starts here: 8 batches of 8 MB in flight
        t.data = dc.zeros(3)
        junk = dc.full((16000000,), 9.0)  # would reuse the freed block
        print(sorted({b[0].sum().item() for b in it}))
    """)
    assert out.strip() == "[2000000.0]"


# --- no assert reachable from Python -------------------------------------------------------------

def test_data_of_other_shape_then_backward_raises():
    out = ok("""
        import dutycycle as dc
        w = dc.randn(2, 2, requires_grad=True)
        y = (w * 2).sum()
        w.data = dc.randn(3)
        try:
            y.backward()
        except dc.AutogradError as e:
            print("AutogradError", e)
    """)
    assert "AutogradError" in out and "(2, 2)" in out and "(3,)" in out


def test_data_of_other_shape_saved_by_an_op_then_backward_raises():
    w = dc.randn(2, 2, requires_grad=True)
    x = dc.randn(2, 2)
    y = (w * x).sum()  # MulBackward saves x and w
    w.data = dc.randn(4)
    with pytest.raises(RuntimeError, match=r"shape"):
        y.backward()


# --- deep graphs ---------------------------------------------------------------------------------

def test_300k_op_chain_backward_and_free_do_not_recurse():
    out = ok("""
        import resource, dutycycle as dc
        w = dc.randn(4, requires_grad=True)
        x = w
        for _ in range(300000):
            x = x * 1.0001
        x.sum().backward()
        print("backward", w.grad.shape)
        del x
        print("freed")
    """, timeout=300)
    assert "backward (4,)" in out and "freed" in out


# --- weakref callbacks ---------------------------------------------------------------------------

def test_weakref_callback_cannot_resurrect_dying_wrapper():
    out = ok("""
        import gc, weakref, dutycycle as dc
        p = dc.randn(3, requires_grad=True)
        (p * 2).sum().backward()
        keep = []
        g = p.grad
        r = weakref.ref(g, lambda _: keep.append(p.grad))
        del g
        gc.collect()
        junk = [dc.randn(3) for _ in range(100)]
        print((keep[0] + 1).tolist(), keep[0] is p.grad)
    """)
    assert out.strip() == "[3.0, 3.0, 3.0] True"


# --- threads -------------------------------------------------------------------------------------

def test_threads_replacing_data_and_grad_during_backward():
    """Backward accumulates into w.grad and reads w (saved by MulBackward) without the GIL while
    other threads replace w.data and w.grad and run ops on w: under the ASan build this was a
    heap-use-after-free in accumulate(); now the replacements wait for what is in flight."""
    out = ok("""
        import threading, dutycycle as dc
        w = dc.randn(1024, 1024, requires_grad=True)
        x = dc.randn(1024, 1024)
        stop = threading.Event()
        errors = []

        def backward_loop():
            try:
                for _ in range(100):
                    (w * x).sum().backward()
            except Exception as e:
                errors.append(type(e).__name__)
            finally:
                stop.set()

        def data_loop():
            while not stop.is_set():
                w.data = dc.randn(1024, 1024)

        def grad_loop():
            while not stop.is_set():
                w.grad = None
                w.grad = dc.zeros(1024, 1024)

        def op_loop():
            while not stop.is_set():
                (w * 2).sum()

        ts = [threading.Thread(target=f) for f in (backward_loop, data_loop, grad_loop, op_loop)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print("done", errors)
    """, timeout=300, OMP_NUM_THREADS="2")
    assert "done []" in out


def test_threads_replacing_data_during_forward_ops():
    ok("""
        import threading, dutycycle as dc
        a = dc.randn(512, 512)
        stop = threading.Event()

        def ops():
            for _ in range(200):
                (a @ a).sum().item(); (a * 2 + 1).exp().mean().item()
            stop.set()

        def data():
            i = 0
            while not stop.is_set():
                a.data = dc.randn(512, 512) if i % 2 else dc.randn(512, 512)
                i += 1

        ts = [threading.Thread(target=f) for f in (ops, data)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    """, timeout=300)


def test_hook_replacing_data_during_backward_does_not_deadlock():
    w = dc.randn(3, requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda p: setattr(p, "data", p.data * 0))
    (w * 2).sum().backward()
    assert w.tolist() == [0.0, 0.0, 0.0] and w.grad.tolist() == [2.0, 2.0, 2.0]


# --- fork ----------------------------------------------------------------------------------------

def test_fork_after_openmp_work_does_not_hang():
    out = ok("""
        import os, threading, dutycycle as dc
        x = dc.randn(1000, 1000)
        (x * 2 + 1).sum(); x @ x; x.softmax(1); x.exp().mean(0)  # wakes the OpenMP team
        pid = os.fork()
        if pid == 0:
            y = dc.randn(1000, 1000)
            (y * 2 + 1).sum(); y @ y; y.softmax(1); y.exp().mean(0); dc.cat([y, y]).sum()
            w = dc.randn(1000, 1000, requires_grad=True)
            (w * y).sum().backward()
            t = threading.Thread(target=lambda: (dc.randn(1000, 1000) * 3).sum())
            t.start(); t.join()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """, timeout=60, OMP_NUM_THREADS="2")  # a real OpenMP team in the parent, whatever pytest runs with
    assert "child 0" in out


# --- hooks ---------------------------------------------------------------------------------------

def test_hook_registering_a_hook_does_not_loop_forever():
    out = ok("""
        import dutycycle as dc
        w = dc.randn(3, requires_grad=True)
        calls = []
        def h(p):
            calls.append(1)
            p.register_post_accumulate_grad_hook(h)
        w.register_post_accumulate_grad_hook(h)
        (w * 2).sum().backward()
        print(len(calls))
        (w * 2).sum().backward()  # the hook added in pass 1 runs from pass 2
        print(len(calls))
    """, timeout=30)
    assert out.split() == ["1", "3"]


# --- indexing ------------------------------------------------------------------------------------

A = np.arange(120.0).reshape(2, 3, 4, 5)
JOINT = [
    ([0, 1], [0, 1]),
    (slice(None), [0, 2], [1, 3]),
    ([0, 1], slice(None), [1, 2]),
    (0, [0, 2], [1, 3]),
    (1, slice(None), [0, 1]),
    ([[0], [1]], [0, 2]),
    (Ellipsis, [0, 1], [1, -1]),
    (None, [0, 1], 0, [1, 2]),
    (slice(None), [[0], [2]], slice(1, 3), [1, 4]),
    (np.array([0, 1]), 1, np.array([2, 3])),
    (np.array([[True, False, True], [False, True, True]]), [1, 2, 3, 0]),
    ([0, 1], 2, slice(None), [0, 4]),
    (slice(None), 1, [0, 1], 2),
]


@pytest.mark.parametrize("idx", JOINT, ids=[str(i) for i in range(len(JOINT))])
def test_advanced_indices_pair_up_like_numpy(idx):
    x = dc.tensor(A)
    got = x[idx].numpy()
    assert got.shape == A[idx].shape and np.array_equal(got, A[idx])
    y = dc.tensor(A.copy())
    want = A.copy()
    want[idx] = -1
    y[idx] = -1
    assert np.array_equal(y.numpy(), want)


def test_paired_indices_grad_and_errors():
    w = dc.tensor(A, requires_grad=True)
    w[[0, 1], [1, 2]].sum().backward()
    g = np.zeros_like(A)
    g[[0, 1], [1, 2]] += 1
    assert np.array_equal(w.grad.numpy(), g)
    with pytest.raises(IndexError, match="broadcast"):
        dc.tensor(A)[[0, 1], [0, 1, 2]]
    with pytest.raises(IndexError, match="out of bounds"):
        dc.tensor(A)[[0, 5], [0, 1]]


@pytest.mark.parametrize("call", [
    lambda x: x.sum(dim=2 ** 32),
    lambda x: x.mean(dim=(0, 2 ** 33)),
    lambda x: x.transpose(0, 2 ** 32),
    lambda x: x.unsqueeze(2 ** 40),
    lambda x: x.softmax(2 ** 32),
    lambda x: x.argmax(2 ** 32),
    lambda x: x.squeeze(2 ** 32),
    lambda x: x.permute(0, 1, 2 ** 32 + 2),
    lambda x: dc.cat([x, x], 2 ** 32),
])
def test_huge_dims_raise_index_error(call):
    with pytest.raises(IndexError):
        call(dc.randn(2, 3, 4))


def test_index_assignment_bumps_the_version_counter():
    x = dc.randn(3, requires_grad=True)
    y = x.exp()  # ExpBackward saves y
    v = y._version
    y.detach()[[0]] = 5.0  # through an index list (NumPy writes the memory)
    assert y._version > v
    with pytest.raises(dc.AutogradError, match="modified by an in-place operation"):
        y.sum().backward()
    z = x.exp()
    with dc.no_grad():
        z[0] = 1.0
    with pytest.raises(dc.AutogradError, match="modified by an in-place operation"):
        z.sum().backward()


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_reads_non_contiguous_tensors_live(workers):
    t = dc.zeros(3, 4)
    dl = DataLoader(TensorDataset(t.T), batch_size=4, num_workers=workers)
    first = next(iter(dl))[0]
    assert first.shape == (4, 3) and first.sum().item() == 0
    with dc.no_grad():
        t.add_(1.0)
    assert next(iter(dl))[0].sum().item() == 12.0
