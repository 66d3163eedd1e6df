"""dutycycle.data: datasets, random_split, samplers, default_collate, and the DataLoader (argument
checks, lengths, shuffling from dutycycle's RNG, resume via state_dict, num_workers=0 vs C loader
threads giving the same batches, errors surfacing with the dataset index, overlap of a slow
dataset with the consumer, and clean shutdown)."""

import collections
import json
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.data import (
    BatchSampler,
    ChainDataset,
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    default_collate,
    default_convert,
    get_worker_info,
    random_split,
)


def as_np(batch):
    """A batch as nested plain Python/NumPy for equality checks."""
    if isinstance(batch, dc.Tensor):
        return ("T", batch.dtype.name, tuple(batch.shape), batch.numpy().tolist())
    if isinstance(batch, dict):
        return {k: as_np(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(as_np(x) for x in batch) if not hasattr(batch, "_fields") else \
            tuple(as_np(x) for x in batch)
    return batch


def run(loader):
    return [as_np(b) for b in loader]


def xy(n=50, d=3):
    x = dc.arange(n * d, dtype=dc.float32).reshape(n, d)
    y = dc.arange(n)
    return TensorDataset(x, y)


class DictDataset(Dataset):
    """A generic map-style dataset (Python __getitem__) with mixed leaves."""

    def __init__(self, n=23):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"img": np.full((2, 3), i, dtype=np.float32), "label": i, "w": float(i) / 2,
                "name": f"s{i}", "t": dc.tensor([i, -i]), "flag": i % 2 == 0}


class Stream(IterableDataset):
    def __init__(self, n=17, fail_at=None):
        self.n, self.fail_at = n, fail_at

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise ValueError("stream broke")
            yield np.array([i, i * i], dtype=np.int64)

    def __len__(self):
        return self.n


class NoLenStream(IterableDataset):
    def __iter__(self):
        yield from range(5)


# --- datasets -----------------------------------------------------------------------------------

def test_tensor_dataset():
    ds = xy(10)
    assert len(ds) == 10
    x, y = ds[3]
    assert x.tolist() == [9.0, 10.0, 11.0] and y.item() == 3
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(9,\)"):
        TensorDataset(dc.zeros(10, 3), dc.zeros(9))
    with pytest.raises(TypeError):
        TensorDataset(np.zeros(3))


def test_subset_concat_chain():
    ds = xy(10)
    s = Subset(ds, [9, 0, 4])
    assert len(s) == 3 and s[0][1].item() == 9 and s[-1][1].item() == 4
    c = ConcatDataset([ds, s])
    assert len(c) == 13 and c.cumulative_sizes == [10, 13]
    assert c[10][1].item() == 9 and c[-1][1].item() == 4
    with pytest.raises(IndexError):
        c[13]
    assert len(ds + s) == 13
    with pytest.raises(ValueError):
        ConcatDataset([])
    with pytest.raises(TypeError):
        ConcatDataset([Stream()])
    ch = Stream(3) + Stream(2)
    assert isinstance(ch, ChainDataset) and len(list(ch)) == 5 and len(ch) == 5


def test_random_split_lengths_and_fractions():
    ds = xy(10)
    a, b = random_split(ds, [7, 3])
    assert (len(a), len(b)) == (7, 3)
    assert sorted(a.indices + b.indices) == list(range(10))
    parts = random_split(ds, [0.33, 0.33, 0.34])  # floor -> 3,3,3; remainder 1 goes to the first
    assert [len(p) for p in parts] == [4, 3, 3]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        parts = random_split(xy(2), [0.9, 0.1])
    assert [len(p) for p in parts] == [2, 0] and any("index 1 is 0" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="does not equal"):
        random_split(ds, [5, 6])
    with pytest.raises(ValueError):
        random_split(ds, [1.5, -0.5])
    dc.manual_seed(3)
    r1 = [p.indices for p in random_split(ds, [5, 5])]
    dc.manual_seed(3)
    r2 = [p.indices for p in random_split(ds, [5, 5])]
    assert r1 == r2
    g1 = [p.indices for p in random_split(ds, [5, 5], generator=np.random.default_rng(1))]
    g2 = [p.indices for p in random_split(ds, [5, 5], generator=np.random.default_rng(1))]
    assert g1 == g2


# --- samplers -------------------------------------------------------------------------------------

def test_samplers():
    assert list(SequentialSampler(range(4))) == [0, 1, 2, 3]
    rs = RandomSampler(range(10))
    assert sorted(rs) == list(range(10)) and len(rs) == 10
    rs = RandomSampler(range(4), num_samples=10)
    got = list(rs)
    assert len(got) == 10 and sorted(got[:4]) == [0, 1, 2, 3] and sorted(got[4:8]) == [0, 1, 2, 3]
    rr = list(RandomSampler(range(3), replacement=True, num_samples=50))
    assert len(rr) == 50 and set(rr) <= {0, 1, 2}
    with pytest.raises(TypeError):
        RandomSampler(range(3), replacement=1)
    with pytest.raises(ValueError):
        RandomSampler(range(3), num_samples=0)
    bs = BatchSampler(SequentialSampler(range(10)), 4, False)
    assert list(bs) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(bs) == 3
    bs = BatchSampler(SequentialSampler(range(10)), 4, True)
    assert list(bs) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(bs) == 2
    with pytest.raises(ValueError):
        BatchSampler(range(3), 0, False)
    with pytest.raises(ValueError):
        BatchSampler(range(3), 2, "no")
    assert sorted(SubsetRandomSampler([5, 7, 9])) == [5, 7, 9]


def test_random_sampler_seed_and_epochs():
    a = RandomSampler(range(20), seed=5)
    e0, e1 = list(a), list(a)  # no set_epoch: each iteration advances the epoch
    assert e0 != e1
    b = RandomSampler(range(20), seed=5)
    b.set_epoch(1)
    assert list(b) == e1
    b.set_epoch(0)
    assert list(b) == e0
    dc.manual_seed(9)
    g1 = [list(RandomSampler(range(20))) for _ in range(2)]
    dc.manual_seed(9)
    g2 = [list(RandomSampler(range(20))) for _ in range(2)]
    assert g1 == g2 and g1[0] != g1[1]


# --- collation ----------------------------------------------------------------------------------

def test_default_collate_types():
    Point = collections.namedtuple("Point", "x y")
    batch = [{"t": dc.tensor([1.0, 2.0]), "a": np.ones((2, 2), np.float64), "i": 1, "f": 0.5, "b": True,
              "s": "u", "p": Point(1, 2.0), "tup": (1, "z")},
             {"t": dc.tensor([3.0, 4.0]), "a": np.zeros((2, 2), np.float64), "i": 2, "f": 1.5, "b": False,
              "s": "v", "p": Point(3, 4.0), "tup": (2, "w")}]
    out = default_collate(batch)
    assert out["t"].shape == (2, 2) and out["t"].dtype == dc.float32
    assert out["a"].shape == (2, 2, 2) and out["a"].dtype == dc.float64
    assert out["i"].dtype == dc.int64 and out["i"].tolist() == [1, 2]
    assert out["f"].dtype == dc.float32 and out["f"].tolist() == [0.5, 1.5]  # float32, not torch's float64
    assert out["b"].dtype == dc.bool and out["b"].tolist() == [True, False]
    assert out["s"] == ["u", "v"]
    assert isinstance(out["p"], Point) and out["p"].x.tolist() == [1, 3]
    assert isinstance(out["tup"], list) and out["tup"][1] == ["z", "w"]
    assert default_collate([np.uint8(3), np.uint8(4)]).dtype == dc.int32  # widened: no uint8 dtype
    assert default_convert({"a": np.arange(3)})["a"].dtype == dc.int64


@pytest.mark.parametrize("nw", [0, 2])
def test_numpy_scalars_collate_to_a_1d_batch(nw):
    # a Dataset returning (x[i], y[i]) from NumPy arrays gives 0-d np.float32 scalars for y; the
    # batch is (B,) as in torch, not (B, 1) (np.ascontiguousarray made 0-d arrays 1-d)
    ds = [(np.arange(3, dtype=np.float32), np.float32(i), np.array(i, np.int64)) for i in range(6)]
    x, y, k = next(iter(DataLoader(ds, batch_size=4, num_workers=nw)))
    assert x.shape == (4, 3) and y.shape == (4,) and k.shape == (4,)
    assert y.tolist() == [0.0, 1.0, 2.0, 3.0] and k.dtype == dc.int64
    assert default_convert(np.float32(2.5)).shape == () and default_convert(np.array(7)).shape == ()


def test_default_collate_errors():
    with pytest.raises(RuntimeError, match=r"batch item 0 has shape \(2,\) and batch item 2 has shape \(3,\)"):
        default_collate([dc.zeros(2), dc.zeros(2), dc.zeros(3)])
    with pytest.raises(RuntimeError, match=r"\(4,\).*\(5,\).*\['x'\]"):
        default_collate([{"x": np.zeros(4)}, {"x": np.zeros(5)}])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [1]])
    with pytest.raises(TypeError, match="found"):
        default_collate([object(), object()])


# --- DataLoader arguments -------------------------------------------------------------------------

def test_dataloader_argument_checks():
    ds = xy(10)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, shuffle=True, sampler=SequentialSampler(ds))
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_size=4, batch_sampler=BatchSampler(SequentialSampler(ds), 2, False))
    with pytest.raises(ValueError, match="drop_last"):
        DataLoader(ds, batch_size=None, drop_last=True)
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(Stream(), shuffle=True)
    with pytest.raises(ValueError, match="sampler"):
        DataLoader(Stream(), sampler=SequentialSampler(range(3)))
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(ds, prefetch_factor=2)
    with pytest.raises(ValueError, match="persistent_workers"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="non-negative"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="timeout"):
        DataLoader(ds, timeout=-1)
    dl = DataLoader(ds, num_workers=2)
    assert dl.prefetch_factor == 2
    with pytest.raises(ValueError, match="should not be set"):
        dl.batch_size = 3


def test_len():
    assert len(DataLoader(xy(10), batch_size=4)) == 3
    assert len(DataLoader(xy(10), batch_size=4, drop_last=True)) == 2
    assert len(DataLoader(Stream(17), batch_size=4)) == 5
    assert len(DataLoader(Stream(17), batch_size=4, drop_last=True)) == 4
    with pytest.raises(TypeError):
        len(DataLoader(NoLenStream(), batch_size=2))
    assert [b.tolist() for b in DataLoader(NoLenStream(), batch_size=2)] == [[0, 1], [2, 3], [4]]


# --- batches: workers vs none ------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: xy(50),
    lambda: Subset(xy(50), list(range(49, -1, -2))),
    lambda: ConcatDataset([xy(20), Subset(xy(30), [3, 1, 2, 29]), xy(7)]),
    lambda: DictDataset(23),
], ids=["tensor", "subset", "concat", "generic"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_workers_give_the_same_batches(make, drop_last):
    ds = make()
    runs = []
    for nw in (0, 1, 3):
        dc.manual_seed(42)
        dl = DataLoader(ds, batch_size=4, shuffle=True, num_workers=nw, drop_last=drop_last)
        runs.append(run(dl) + run(dl))  # two epochs
        assert len(runs[-1]) == 2 * len(dl)
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][: len(runs[0]) // 2] != runs[0][len(runs[0]) // 2:]  # epochs are shuffled differently
    if drop_last:
        assert all(len(b[1][3] if isinstance(b, list) else b["label"][3]) == 4 for b in runs[0])


def test_non_contiguous_and_other_dtypes_on_the_fast_path():
    base = dc.arange(60, dtype=dc.float64).reshape(3, 20)
    flags = dc.tensor([i % 3 == 0 for i in range(20)])
    ds = TensorDataset(base.t(), flags, dc.arange(20).int(), dc.randn(20, 2, 2).bfloat16())
    assert not ds.tensors[0].is_contiguous()
    runs = []
    for nw in (0, 2):
        dc.manual_seed(4)
        runs.append([[(t.dtype, t.shape, t.float().numpy().tolist()) for t in b]
                     for b in DataLoader(ds, batch_size=6, shuffle=True, num_workers=nw)])
    assert runs[0] == runs[1]
    dc.manual_seed(4)
    ref = [[(t.dtype, t.shape, t.float().numpy().tolist()) for t in default_collate([ds[i] for i in idx])]
           for idx in BatchSampler(RandomSampler(ds), 6, False)]
    assert runs[0] == ref


def test_workers_give_the_same_batches_iterable():
    for bs in (4, None):
        runs = [run(DataLoader(Stream(17), batch_size=bs, num_workers=nw)) for nw in (0, 2)]
        assert runs[0] == runs[1]
    b = list(DataLoader(Stream(17), batch_size=4, num_workers=2, drop_last=True))
    assert len(b) == 4 and b[-1].tolist()[-1] == [15, 225]


def test_column_protocol_never_calls_getitem():
    class Cols(Dataset):
        def __init__(self):
            self.a = np.arange(40, dtype=np.float64).reshape(20, 2)
            self.b = np.arange(20, dtype=np.uint8)

        def __len__(self):
            return 20

        def __dc_columns__(self):
            return self.a, self.b

        def __getitem__(self, i):
            raise AssertionError("the loader should gather columns, not call __getitem__")

    for nw in (0, 2):
        dc.manual_seed(1)
        batches = list(DataLoader(Cols(), batch_size=8, shuffle=True, num_workers=nw))
        dc.manual_seed(1)
        order = list(RandomSampler(range(20)))[:8]
        a, b = batches[0]
        assert a.dtype == dc.float64 and b.dtype == dc.int32  # uint8 widened, as default_collate does
        np.testing.assert_array_equal(a.numpy(), np.arange(40.0).reshape(20, 2)[order])
        assert b.tolist() == order


def test_batch_size_none_and_custom_collate():
    for nw in (0, 2):
        items = list(DataLoader(DictDataset(5), batch_size=None, num_workers=nw))
        assert len(items) == 5 and items[2]["img"].shape == (2, 3) and items[2]["label"] == 2

        def collate(items):
            return {"n": len(items), "labels": [it["label"] for it in items], "tid": threading.get_ident()}

        out = list(DataLoader(DictDataset(10), batch_size=4, collate_fn=collate, num_workers=nw))
        assert [o["n"] for o in out] == [4, 4, 2] and out[2]["labels"] == [8, 9]
        assert (out[0]["tid"] == threading.get_ident()) == (nw == 0)
        # custom collate on a column dataset takes the item path
        out = list(DataLoader(xy(6), batch_size=4, collate_fn=lambda b: [int(y) for _, y in b], num_workers=nw))
        assert out == [[0, 1, 2, 3], [4, 5]]


def test_custom_samplers():
    ds = xy(10)
    bs = BatchSampler(SequentialSampler(range(10)), 3, True)
    for nw in (0, 2):
        got = [b[1].tolist() for b in DataLoader(ds, batch_sampler=bs, num_workers=nw)]
        assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
        got = [b[1].tolist() for b in DataLoader(ds, batch_size=4, sampler=[9, 8, 7, 1, 0], num_workers=nw)]
        assert got == [[9, 8, 7, 1], [0]]


# --- determinism and resume ---------------------------------------------------------------------

def test_manual_seed_reproduces_the_order():
    def order(seed, nw):
        dc.manual_seed(seed)
        dl = DataLoader(xy(30), batch_size=5, shuffle=True, num_workers=nw)
        return [b[1].tolist() for b in dl] + [b[1].tolist() for b in dl]

    assert order(1, 0) == order(1, 0) == order(1, 2)
    assert order(1, 0) != order(2, 0)
    s1 = [b[1].tolist() for b in DataLoader(xy(30), batch_size=5, shuffle=True, seed=7)]
    s2 = [b[1].tolist() for b in DataLoader(xy(30), batch_size=5, shuffle=True, seed=7)]
    assert s1 == s2
    dl = DataLoader(xy(30), batch_size=5, shuffle=True, seed=7)
    dl.set_epoch(3)
    e3 = [b[1].tolist() for b in dl]
    dl2 = DataLoader(xy(30), batch_size=5, shuffle=True, seed=7)
    dl2.set_epoch(3)
    assert [b[1].tolist() for b in dl2] == e3 != s1


@pytest.mark.parametrize("nw", [0, 2])
@pytest.mark.parametrize("kind", ["tensor", "generic", "iterable", "seeded"])
def test_resume_mid_epoch_matches_uninterrupted(nw, kind):
    def make():
        if kind == "tensor":
            return DataLoader(xy(37), batch_size=4, shuffle=True, num_workers=nw)
        if kind == "generic":
            return DataLoader(DictDataset(37), batch_size=4, shuffle=True, num_workers=nw)
        if kind == "seeded":
            return DataLoader(xy(37), batch_size=4, shuffle=True, num_workers=nw, seed=11)
        return DataLoader(Stream(37), batch_size=4, num_workers=nw)

    # uninterrupted: epoch 0 and epoch 1
    dc.manual_seed(5)
    full = make()
    ref = run(full) + run(full)

    # interrupted after 3 batches of epoch 0: save loader + RNG state
    dc.manual_seed(5)
    dl = make()
    it = iter(dl)
    first = [as_np(next(it)) for _ in range(3)]
    state = json.loads(json.dumps(dl.state_dict()))  # must be plain JSON data
    rng = dc.get_rng_state()
    assert state["batches_yielded"] == 3
    del it, dl

    dc.manual_seed(999)  # a fresh process would start elsewhere
    dc.set_rng_state(rng)
    dl = make()
    dl.load_state_dict(state)
    rest = run(dl)
    nxt = run(dl)
    assert first + rest == ref[: len(ref) // 2]
    assert nxt == ref[len(ref) // 2:]


def test_state_dict_between_epochs():
    dc.manual_seed(5)
    dl = DataLoader(xy(12), batch_size=4, shuffle=True, seed=3)
    run(dl)
    st = dl.state_dict()
    assert st["batches_yielded"] == 0
    want = run(dl)
    dl2 = DataLoader(xy(12), batch_size=4, shuffle=True, seed=3)
    dl2.load_state_dict(st)
    assert run(dl2) == want
    with pytest.raises(ValueError):
        dl2.load_state_dict({"nope": 1})


# --- errors ----------------------------------------------------------------------------------------

class Faulty(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        if i == 6:
            raise KeyError(f"bad sample {i}")
        return np.array([i], dtype=np.int64)


@pytest.mark.parametrize("nw", [0, 2])
def test_dataset_error_names_the_index_and_chains(nw):
    it = iter(DataLoader(Faulty(), batch_size=4, num_workers=nw))
    assert next(it).tolist() == [[0], [1], [2], [3]]
    with pytest.raises(KeyError, match=r"dataset\[6\]") as ei:
        next(it)
    assert isinstance(ei.value.__cause__, KeyError) and "bad sample 6" in str(ei.value.__cause__)
    assert next(it).tolist() == [[8], [9], [10], [11]]  # map-style iteration goes on, as in torch
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("nw", [0, 2])
def test_iterable_error_and_bad_index(nw):
    it = iter(DataLoader(Stream(20, fail_at=9), batch_size=4, num_workers=nw))
    next(it), next(it)
    with pytest.raises(ValueError, match="at item 9") as ei:
        next(it)
    assert "stream broke" in str(ei.value.__cause__)
    # a sampler giving an index past the end of a column dataset
    it = iter(DataLoader(xy(5), batch_size=2, sampler=[0, 1, 7, 2], num_workers=nw))
    assert next(it)[1].tolist() == [0, 1]
    with pytest.raises(IndexError, match="7"):
        next(it)


def test_timeout():
    class Slow(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            time.sleep(0.5)
            return i

    with pytest.raises(RuntimeError, match="timed out"):
        next(iter(DataLoader(Slow(), batch_size=2, num_workers=1, timeout=0.1)))


def test_worker_info_and_init_fn():
    seen = []

    class WhoAmI(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            info = get_worker_info()
            return -1 if info is None else info.num_workers

    assert get_worker_info() is None
    dl = DataLoader(WhoAmI(), batch_size=2, num_workers=2, worker_init_fn=seen.append, persistent_workers=True)
    assert [b.tolist() for b in dl] == [[1, 1], [1, 1]]
    list(dl)
    assert seen == [0]  # persistent: once per DataLoader
    assert [b.tolist() for b in DataLoader(WhoAmI(), batch_size=2)] == [[-1, -1], [-1, -1]]


# --- threads: overlap, shutdown -------------------------------------------------------------------

def test_slow_getitem_overlaps_with_the_consumer():
    class Slow(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            time.sleep(0.005)  # I/O-like: releases the GIL
            return np.full(8, i, dtype=np.float32)

    def epoch(nw):
        t0 = time.perf_counter()
        n = 0
        for b in DataLoader(Slow(), batch_size=4, num_workers=nw):
            time.sleep(0.02)  # the "step", also GIL-free
            n += b.shape[0]
        assert n == 40
        return time.perf_counter() - t0

    serial = epoch(0)  # ~10 * (20 ms fetch + 20 ms step)
    overlapped = epoch(2)  # ~10 * max(20, 20) ms
    assert overlapped < 0.85 * serial, (overlapped, serial)


def test_abandoned_iterators_and_deleted_loaders_do_not_hang():
    t0 = time.perf_counter()
    for nw in (1, 3):
        for ds in (xy(200), DictDataset(200), Stream(200)):
            dl = DataLoader(ds, batch_size=4, num_workers=nw)
            it = iter(dl)
            next(it)
            del dl  # mid-epoch
            next(it)
            del it
    for _ in range(5):  # restart epochs repeatedly
        dl = DataLoader(DictDataset(100), batch_size=2, num_workers=2)
        for _ in range(3):
            it = iter(dl)
            next(it)
    assert time.perf_counter() - t0 < 20


def test_interpreter_exit_mid_epoch():
    code = textwrap.dedent("""
        import time, numpy as np, dutycycle as dc
        from dutycycle.data import DataLoader, Dataset, TensorDataset
        class Slow(Dataset):
            def __len__(self): return 1000
            def __getitem__(self, i):
                time.sleep(0.01); return np.zeros(4, np.float32)
        a = iter(DataLoader(Slow(), batch_size=8, num_workers=4))
        b = iter(DataLoader(TensorDataset(dc.zeros(1000, 64)), batch_size=8, num_workers=4))
        next(a); next(b)
        print("ok", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
