"""dutycycle.distributed's plain-loop API: in this process (ReduceOp, rank_zero_only, the failure
hooks, and the errors init_process_group and the collectives give before or without a job), and
under mpirun -n 2 and -n 4 (tests/dist_scripts/api.py: every collective's values, the ranks, the
errors for bad input)."""

import datetime
import sys
import threading
import warnings

import numpy as np
import pytest
from dist_scripts import harness

import dutycycle as dc
import dutycycle.distributed as dist
from dutycycle.distributed import _failure

needs_job = pytest.mark.skipif(not (harness.have_mpirun() and harness.have_comm()),
                               reason="needs Open MPI's mpirun and a core built with the comm layer")


@pytest.fixture
def no_launcher(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "SLURM_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                 "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_exports_and_exception_hierarchy():
    for name in dist.__all__:
        assert hasattr(dist, name), name
    assert issubclass(dist.CollectiveTimeoutError, dist.DistributedError)
    assert issubclass(dist.DesyncError, dist.DistributedError)
    assert issubclass(dist.DistributedError, dc.DutycycleError)
    assert dc.distributed is dist


def test_reduce_op_names():
    assert [op.value for op in dist.ReduceOp] == ["sum", "avg", "max", "min"]
    assert str(dist.ReduceOp.AVG) == "avg" and dist.ReduceOp.SUM == "sum"
    assert dist._op_name("mean") == dist._op_name("AVG") == dist._op_name(dist.ReduceOp.AVG) == "avg"

    class TorchLike:  # torch.distributed.ReduceOp.MAX has .name "MAX"
        name = "MAX"

    assert dist._op_name(TorchLike()) == "max"
    for bad in ("product", 3, None):
        with pytest.raises(ValueError, match="unsupported reduce op"):
            dist._op_name(bad)


def test_rank_zero_only_follows_its_rank(monkeypatch):
    monkeypatch.setattr(dist.rank_zero_only, "rank", 0)
    calls = []

    @dist.rank_zero_only
    def f(x):
        calls.append(x)
        return x * 2

    assert f(3) == 6 and calls == [3]
    monkeypatch.setattr(dist.rank_zero_only, "rank", 1)
    assert f(4) is None and calls == [3]
    assert dist.rank_zero_only(lambda: 1, default=-1)() == -1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dist.rank_zero_warn("not shown")
    assert not w
    monkeypatch.setattr(dist.rank_zero_only, "rank", 0)
    with pytest.warns(UserWarning, match="shown") as w:
        dist.rank_zero_warn("shown")
    assert w[0].filename == __file__  # reported at the caller's line
    monkeypatch.delattr(dist.rank_zero_only, "rank")
    with pytest.raises(RuntimeError, match="needs to be set"):
        f(1)


def test_rank_zero_info_logs_on_rank_zero(monkeypatch, caplog):
    monkeypatch.setattr(dist.rank_zero_only, "rank", 0)
    with caplog.at_level("INFO", logger="dutycycle"):
        dist.rank_zero_info("hello %s", "there")
    assert [r.getMessage() for r in caplog.records] == ["hello there"]
    assert caplog.records[0].filename == "test_distributed.py"
    caplog.clear()
    monkeypatch.setattr(dist.rank_zero_only, "rank", 2)
    with caplog.at_level("INFO", logger="dutycycle"):
        dist.rank_zero_info("hidden")
    assert not caplog.records


def test_collectives_before_init_raise():
    assert not dist.is_initialized()
    for fn, args in [(dist.get_rank, ()), (dist.get_world_size, ()), (dist.get_local_rank, ()),
                     (dist.get_backend, ()), (dist.barrier, ()), (dist.all_reduce, (np.zeros(2),)),
                     (dist.broadcast, (np.zeros(2), 0)), (dist.all_gather, ([np.zeros(2)], np.zeros(2))),
                     (dist.all_gather_into_tensor, (np.zeros(2), np.zeros(2))),
                     (dist.reduce_scatter_tensor, (np.zeros(2), np.zeros(2)))]:
        with pytest.raises(RuntimeError, match="init_process_group"):
            fn(*args)
        with pytest.raises(ValueError):  # torch >= 2.2 raises ValueError here: both catch it
            fn(*args)
    dist.destroy_process_group()  # no group: nothing to do


def test_init_refuses_a_torchrun_only_environment(no_launcher):
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="dutycycle run -n N"):
        dist.init_process_group("nccl")
    assert not dist.is_initialized()


def test_init_argument_errors(no_launcher):
    with pytest.raises(RuntimeError, match="not started by a launcher"):
        dist.init_process_group("gloo", world_size=2, rank=0)
    with pytest.raises(ValueError, match="unknown backend"):
        dist.init_process_group("ucc")
    with pytest.raises(ValueError, match="timeout must be positive"):
        dist.init_process_group("mpi", timeout=datetime.timedelta(seconds=0))
    assert dist._seconds(datetime.timedelta(minutes=2)) == 120.0 and dist._seconds(None) is None
    with pytest.raises(NotImplementedError, match="world"):
        dist.get_rank(group=object())


class FakeComm:
    hostname = "hostA"

    def __init__(self):
        self.aborted = []

    def abort(self, reason):
        self.aborted.append(reason)


def test_failure_hook_prefixes_the_rank_and_aborts(capsys):
    comm = FakeComm()
    saved = dict(_failure._state)
    try:
        _failure.set_job(3, 4, comm)
        try:
            raise KeyError("lost")
        except KeyError as e:
            _failure._excepthook(type(e), e, e.__traceback__)
        err = capsys.readouterr().err
        assert err.startswith("[rank 3] Traceback (most recent call last):")
        assert "[rank 3] KeyError: 'lost'" in err
        assert "dutycycle: rank 3 (host hostA) failed: KeyError: 'lost'" in err
        assert comm.aborted == ["uncaught KeyError (traceback above)"]

        def boom():
            raise ValueError("in a thread")

        _failure.install()
        th = threading.Thread(target=boom, name="loader")
        th.start()
        th.join()
        assert comm.aborted[-1] == "uncaught ValueError in thread 'loader' (traceback above)"
        err = capsys.readouterr().err
        assert "[rank 3] ValueError: in a thread" in err
        assert "dutycycle: rank 3 (host hostA) failed in thread 'loader': ValueError: in a thread" in err
    finally:
        _failure.uninstall()
        _failure._state.clear()
        _failure._state.update(saved)


def test_failure_hook_is_pythons_own_for_one_process(capsys):
    saved = dict(_failure._state)
    try:
        _failure._state.update(prev_sys=sys.__excepthook__, rank=0, size=1, comm=FakeComm())
        try:
            raise ValueError("single")
        except ValueError as e:
            _failure._excepthook(type(e), e, e.__traceback__)
        err = capsys.readouterr().err
        assert "ValueError: single" in err and "[rank" not in err
    finally:
        _failure._state.clear()
        _failure._state.update(saved)


@needs_job
@pytest.mark.parametrize("n", [2, 4])
def test_api_under_mpirun(n):
    r = harness.run(harness.mpirun_cmd(n, harness.script("api.py")), timeout=150)
    assert r.rc == 0, r
    rows = sorted(r.json_lines(), key=lambda x: x["rank"])
    assert [x["rank"] for x in rows] == list(range(n)), r
    tri = n * (n + 1) / 2
    for x in rows:
        assert x["ok"] and x["world"] == n
        assert x["sum"] == (np.arange(12).reshape(3, 4) * tri).tolist()
        assert x["bcast"] == [float(n - 1)] * 5
        assert x["gathered"] == [float(r) for r in range(n) for _ in range(3)]
        assert x["torch"] == "skipped" or x["torch"] == [tri] * 4


@needs_job
def test_default_comm_is_initialised_lazily_under_a_launcher():
    code = ("import numpy as np, dutycycle.distributed as d\n"
            "assert not d.is_initialized()\n"
            "c = d._default_comm()\n"
            "assert d.is_initialized() and c is d._default_comm() and d.get_backend() == 'mpi'\n"
            "a = np.ones(2); c.all_reduce(a); print('{\"size\": %d, \"v\": %g}' % (c.size, a[0]))\n")
    r = harness.run(harness.mpirun_cmd(2, "-c", code), timeout=60)
    assert r.rc == 0, r
    assert r.json_lines() == [{"size": 2, "v": 2.0}] * 2


@needs_job
def test_pytorch_tensors_through_dlpack():
    pytest.importorskip("torch")
    r = harness.run(harness.mpirun_cmd(2, harness.script("torch_plain.py")), timeout=120)
    assert r.rc == 0, r
    rows = sorted(r.json_lines(), key=lambda x: x["rank"])
    # d(sum(Wx + b))/dW = sum of the batch's x: 8 * (rank + 1) per weight, averaged over ranks 1 and 2
    for x in rows:
        assert x["grad"] == [[12.0] * 4] and x["bias"] == [8.0]
        assert x["gathered"] == [[0.0, 1.0], [1.0, 1.0]]


@needs_job
def test_one_process_without_a_launcher_is_a_world_of_one():
    code = ("import datetime, numpy as np, dutycycle.distributed as d\n"
            "c = d._default_comm()\n"
            "a = np.ones(2); d.all_reduce(a); assert a.tolist() == [1.0, 1.0]\n"
            "assert (d.get_rank(), d.get_world_size(), d.get_local_rank()) == (0, 1, 0)\n"
            "assert c.timeout == 600.0\n"
            "d.destroy_process_group(); assert not d.is_initialized()\n"
            "d.init_process_group('gloo', timeout=datetime.timedelta(seconds=42))\n"
            "assert d._default_comm().timeout == 42.0 and d.get_backend() == 'gloo'\n"
            "d.destroy_process_group()\n"
            "print('{\"ok\": 1}')\n")
    r = harness.run([sys.executable, "-c", code], timeout=60)
    assert r.rc == 0, r
    assert r.json_lines() == [{"ok": 1}]
    r = harness.run([sys.executable, "-c", "import dutycycle.distributed as d; d.init_process_group(); "
                     "print('{\"t\": %g}' % d._default_comm().timeout)"], timeout=60,
                    env=harness.job_env(DUTYCYCLE_COMM_TIMEOUT=7))
    assert r.rc == 0 and r.json_lines() == [{"t": 7.0}], r
