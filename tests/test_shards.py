"""ShardedDataset and ShardWriter over local files: the C pipeline (csrc/loader/pipeline.c), the
epoch order, distribution across ranks, exact and elastic resume, memory bounds and errors.
The same pipeline over S3 (moto, a fault-injecting proxy) is in test_shards_s3.py."""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import warnings

import numpy as np
import pytest

import dutycycle as dc
from dutycycle.data import ShardedDataset, ShardWriter, jpeg

SIZES = [37, 5, 60, 1, 23, 44, 9, 30]  # uneven shards, 209 samples


def make_shards(d, sizes=SIZES, prefix="train", extra=None):
    """Shards d/train-000000.tar ...; sample i has x.npy = [i, i, i, i] (float32), cls = i, txt."""
    w = ShardWriter(os.path.join(d, f"{prefix}-%06d.tar"), maxcount=10**9)
    i = 0
    for n in sizes:
        for _ in range(n):
            s = {"__key__": f"{i:06d}", "x.npy": np.full(4, i, np.float32), "cls": i, "txt": f"sample {i}"}
            if extra:
                s.update(extra(i))
            w.write(s)
            i += 1
        w._finish_shard()  # one shard per entry of sizes
    w.close()
    return os.path.join(d, f"{prefix}-{{000000..{len(sizes) - 1:06d}}}.tar"), i


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    pattern, n = make_shards(str(d))
    return pattern, n


def ids(ds):
    out = []
    for s in ds:
        out.extend(np.asarray(s["cls"]).reshape(-1).tolist())
    return out


# ---- writing --------------------------------------------------------------------------------------

def test_writer_output_is_plain_tar_and_webdataset(shards, tmp_path):
    pattern, n = shards
    d = os.path.dirname(pattern)
    idx = json.load(open(os.path.join(d, "train.index.json")))
    assert idx["__kind__"] == "wids-shard-index-v1"
    assert [e["nsamples"] for e in idx["shardlist"]] == SIZES
    first = os.path.join(d, "train-000000.tar")
    assert [e["filesize"] for e in idx["shardlist"]][0] == os.path.getsize(first)
    with tarfile.open(first) as t:
        names = t.getnames()
    assert names[:3] == ["000000.x.npy", "000000.cls", "000000.txt"]
    out = subprocess.run(["tar", "tf", first], capture_output=True, text=True, check=True).stdout.split()
    assert out == names
    wds = pytest.importorskip("webdataset")
    got = list(wds.WebDataset(first, shardshuffle=False))
    assert len(got) == SIZES[0]
    assert got[3]["__key__"] == "000003" and got[3]["cls"] == b"3"
    assert np.load(io.BytesIO(got[3]["x.npy"])).tolist() == [3, 3, 3, 3]


def test_writer_rejects_bad_samples(tmp_path):
    with ShardWriter(str(tmp_path / "a-%03d.tar")) as w:
        with pytest.raises(ValueError, match="__key__"):
            w.write({"x.npy": np.zeros(2)})
        with pytest.raises(ValueError, match="no '.'"):
            w.write({"__key__": "a.b", "txt": "x"})
        with pytest.raises(TypeError, match="'obj'.*cannot encode a object"):
            w.write({"__key__": "k", "obj": object()})
        w.write({"__key__": "ok", "txt": "fine"})
    assert os.path.exists(tmp_path / "a-000.tar") and not os.path.exists(tmp_path / "a-000.tar.tmp")
    with pytest.raises(ValueError, match="%d"):
        ShardWriter(str(tmp_path / "no-pattern.tar"))


def test_writer_aborted_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "b-%03d.tar")) as w:
            w.write({"__key__": "0", "txt": "x"})
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_maxcount_and_maxsize(tmp_path):
    with ShardWriter(str(tmp_path / "c-%03d.tar"), maxcount=10) as w:
        for i in range(25):
            w.write({"__key__": str(i), "txt": "x"})
    assert [c for _, c, _ in w.written] == [10, 10, 5]
    with ShardWriter(str(tmp_path / "d-%03d.tar"), maxsize=5000) as w:
        for i in range(10):
            w.write({"__key__": str(i), "bin": b"\0" * 1500})
    # + the end-of-archive blocks and tar's record padding
    assert all(sz <= 5000 + 1024 + 10240 for _, _, sz in w.written) and len(w.written) > 2


# ---- reading ----------------------------------------------------------------------------------------

def test_every_sample_once_in_order_unbatched(shards):
    pattern, n = shards
    ds = ShardedDataset(pattern)
    got = list(ds)
    assert [s["cls"] for s in got] == list(range(n))
    s = got[41]
    assert s["__key__"] == "000041" and s["txt"] == "sample 41" and s["__url__"].endswith("train-000001.tar")
    assert isinstance(s["x.npy"], dc.Tensor) and s["x.npy"].dtype == dc.float32 and s["x.npy"].tolist() == [41.0] * 4
    assert len(ds) == n


def test_batched_columns(shards):
    pattern, n = shards
    ds = ShardedDataset(pattern, batch_size=16)
    batches = list(ds)
    assert len(batches) == len(ds) == -(-n // 16)
    b = batches[0]
    assert b["x.npy"].shape == (16, 4) and b["cls"].dtype == dc.int64 and b["cls"].shape == (16,)
    assert b["txt"][:2] == ["sample 0", "sample 1"] and len(b["__key__"]) == 16
    assert batches[-1]["cls"].shape == (n % 16,)
    assert np.concatenate([x["cls"].numpy() for x in batches]).tolist() == list(range(n))
    ds = ShardedDataset(pattern, batch_size=16, drop_last=True)
    assert len(list(ds)) == len(ds) == n // 16


def test_fields_and_decoders(shards):
    pattern, _ = shards
    ds = ShardedDataset(pattern, fields=["cls"])
    s = next(iter(ds))
    assert set(s) == {"__key__", "__url__", "cls"}
    ds = ShardedDataset(pattern, decode={"txt": "bytes", "x.npy": lambda b: len(b), "cls": "skip"})
    s = next(iter(ds))
    assert s["txt"] == b"sample 0" and s["x.npy"] == len(io.BytesIO(_npy(np.zeros(4, np.float32))).getvalue())
    assert "cls" not in s
    with pytest.raises(ValueError, match="not a decoder"):
        ShardedDataset(pattern, decode={"txt": "nope"})


def _npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_python_decoder_error_names_sample(shards):
    pattern, _ = shards

    def bad(b):
        raise KeyError("x")

    with pytest.raises(KeyError) as e:
        next(iter(ShardedDataset(pattern, decode={"txt": bad})))
    assert "sample '000000'" in "".join(getattr(e.value, "__notes__", []))


def test_shuffle_is_seeded_and_thread_independent(shards):
    pattern, n = shards
    a = ids(ShardedDataset(pattern, shuffle=True, shuffle_buffer=50, seed=3, num_threads=1, fetch_threads=1))
    b = ids(ShardedDataset(pattern, shuffle=True, shuffle_buffer=50, seed=3, num_threads=4, fetch_threads=3,
                           chunk_bytes=1000, batch_size=7))
    c = ids(ShardedDataset(pattern, shuffle=True, shuffle_buffer=50, seed=4))
    assert a == b and sorted(a) == list(range(n)) and a != list(range(n)) and a != c


def test_epochs_reshuffle_and_continue(shards):
    pattern, n = shards
    ds = ShardedDataset(pattern, shuffle=True, shuffle_buffer=20, seed=1, batch_size=10)
    e0, e1 = ids(ds), ids(ds)
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1 and ds.epoch == 2
    ds.set_epoch(0)
    assert ids(ds) == e0
    ds.set_epoch(1)
    it = iter(ds)
    first = np.asarray(next(it)["cls"]).tolist()
    rest = ids(ds)  # a new iteration continues where the last one stopped
    assert first + rest == e1


@pytest.mark.parametrize("world", [2, 3, 4, 7])
@pytest.mark.parametrize("uneven", ["drop", "pad"])
def test_ranks_partition_the_epoch(shards, world, uneven):
    pattern, n = shards
    per = []
    for r in range(world):
        ds = ShardedDataset(pattern, shuffle=True, shuffle_buffer=16, seed=5, rank=r, world_size=world,
                            batch_size=4, uneven=uneven)
        got = list(ds)
        assert len(got) == len(ds)
        per.append(np.concatenate([b["cls"].numpy() for b in got]).tolist())
    assert len({len(p) for p in per}) == 1  # the same number of samples (so of batches) on every rank
    flat = sum(per, [])
    if uneven == "drop":
        assert len(flat) == len(set(flat)) == n - n % world
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world


def _take(ds, k):
    it = iter(ds)
    out = []
    for _ in range(k):
        out.extend(np.asarray(next(it)["cls"]).reshape(-1).tolist())
    return out


@pytest.mark.parametrize("k", [0, 1, 3, 9, 20])
def test_exact_resume(shards, k):
    pattern, _ = shards
    kw = dict(shuffle=True, shuffle_buffer=40, seed=11, batch_size=5, rank=1, world_size=2)
    full = ids(ShardedDataset(pattern, **kw))
    ds = ShardedDataset(pattern, **kw)
    head = _take(ds, k)
    state = json.loads(json.dumps(ds.state_dict()))
    ds2 = ShardedDataset(pattern, **kw)
    ds2.load_state_dict(state)
    assert head + ids(ds2) == full
    assert ds2.epoch == 1  # it went on to the next epoch's start


def test_resume_state_is_small_and_checked(shards):
    pattern, _ = shards
    ds = ShardedDataset(pattern, shuffle=True, seed=1, batch_size=4)
    _take(ds, 3)
    st = ds.state_dict()
    assert len(json.dumps(st)) < 400 and st["generations"] == [{"world_size": 1, "consumed": 12}]
    other = ShardedDataset(pattern, shuffle=True, seed=2, batch_size=4)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(st)
    with pytest.raises(ValueError, match="not a ShardedDataset state"):
        other.load_state_dict({"epoch": 1})


@pytest.mark.parametrize("old,new", [(3, 2), (2, 5), (4, 1), (1, 3)])
def test_elastic_resume_delivers_the_rest_exactly_once(shards, old, new):
    pattern, n = shards
    kw = dict(shuffle=True, shuffle_buffer=25, seed=7, batch_size=3)
    seen = []
    states = []
    for r in range(old):
        ds = ShardedDataset(pattern, rank=r, world_size=old, **kw)
        seen += _take(ds, 6)
        states.append(ds.state_dict())
    assert all(s == states[0] for s in states)  # the state is the same on every rank
    rest, counts = [], []
    for r in range(new):
        ds = ShardedDataset(pattern, rank=r, world_size=new, **kw)
        ds.load_state_dict(states[0])
        got = ids(ds)
        counts.append(len(got))
        rest += got
    assert len(set(counts)) == 1  # equal shares again
    allv = seen + rest
    assert len(allv) == len(set(allv))
    dropped = set(range(n)) - set(allv)
    # at most what the two equal splits could not place: (n mod old) then (rest mod new)
    assert len(dropped) <= (old - 1) + (new - 1)


def test_elastic_twice(shards):
    pattern, n = shards
    kw = dict(shuffle=True, shuffle_buffer=10, seed=2, batch_size=2)
    seen = []
    st = None
    for world, k in ((3, 5), (2, 7), (4, 3)):
        states = []
        for r in range(world):
            ds = ShardedDataset(pattern, rank=r, world_size=world, **kw)
            if st is not None:
                ds.load_state_dict(st)
            seen += _take(ds, k)
            states.append(ds.state_dict())
        st = states[0]
    assert len(st["generations"]) == 3
    for r in range(4):
        ds = ShardedDataset(pattern, rank=r, world_size=4, **kw)
        ds.load_state_dict(st)
        seen += ids(ds)
    assert len(seen) == len(set(seen)) and len(seen) >= n - 2 - 1 - 3


# ---- memory, images, errors -------------------------------------------------------------------------

def test_memory_stays_within_the_budget(tmp_path):
    big = np.arange(1 << 20, dtype=np.float32)  # 4 MiB samples, 8 per shard: 32 MiB shards
    with ShardWriter(str(tmp_path / "big-%03d.tar"), maxcount=8) as w:
        for i in range(24):
            w.write({"__key__": str(i), "x.npy": big + i})
    ds = ShardedDataset(str(tmp_path / "big-{000..002}.tar"), prefetch_bytes=2 << 20, chunk_bytes=1 << 20,
                        fetch_threads=4, prefetch_batches=1)
    it = iter(ds)
    vals = []
    for s in it:
        vals.append(float(s["x.npy"][5]))
        st = it.stats()
        if st:
            assert st["peak_fetch_bytes"] <= (2 << 20) + (1 << 20)
    assert vals == [5.0 + i for i in range(24)]


def _jpeg_bytes(h, w, seed=0):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    b = io.BytesIO()
    img.save(b, format="JPEG", quality=90)
    return b.getvalue()


def test_jpeg_pipeline(tmp_path):
    with ShardWriter(str(tmp_path / "img-%03d.tar"), maxcount=6) as w:
        for i in range(12):
            w.write({"__key__": f"{i:03d}", "jpg": _jpeg_bytes(60 + 7 * i, 90 - 3 * i, i), "cls": i % 3})
    spec = jpeg(resize=48, crop=40, mode="random", flip=True, dtype="float32", mean=dc.data.IMAGENET_MEAN,
                std=dc.data.IMAGENET_STD)
    ds = ShardedDataset(str(tmp_path / "img-{000..001}.tar"), decode={"jpg": spec}, batch_size=4, seed=3)
    a = list(ds)
    assert a[0]["jpg"].shape == (4, 3, 40, 40) and a[0]["jpg"].dtype == dc.float32
    ds.set_epoch(0)
    b = list(ds)
    assert all(np.array_equal(x["jpg"].numpy(), y["jpg"].numpy()) for x, y in zip(a, b))  # crops are seeded
    auto = list(ShardedDataset(str(tmp_path / "img-{000..001}.tar")))
    assert auto[1]["jpg"].shape == (67, 87, 3) and auto[1]["jpg"].dtype == dc.uint8
    with pytest.raises(dc.ShapeError, match="field 'jpg'.*batching stacks equal shapes"):
        list(ShardedDataset(str(tmp_path / "img-{000..001}.tar"), batch_size=4))


def test_corrupt_inputs_raise_naming_the_url(tmp_path):
    pattern, n = make_shards(str(tmp_path), sizes=[10, 10])
    good = tmp_path / "train-000001.tar"
    data = good.read_bytes()
    # truncated shard (the index still says 10 samples)
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(dc.DataFormatError, match=r"cut\.tar.*truncated|cut\.tar.*samples"):
        list(ShardedDataset(str(tmp_path / "cut.tar")))
    # a header with a bad checksum
    bad = bytearray(data)
    bad[1024 + 10] ^= 0x55  # the second member's header
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with pytest.raises(dc.DataFormatError, match=r"bad\.tar"):
        list(ShardedDataset(str(tmp_path / "bad.tar")))
    # a missing shard
    with pytest.raises(FileNotFoundError, match="nope-000.tar"):
        list(ShardedDataset(str(tmp_path / "nope-{000..001}.tar")))
    # a corrupt JPEG
    with ShardWriter(str(tmp_path / "cj-%03d.tar")) as w:
        j = _jpeg_bytes(64, 64)
        w.write({"__key__": "ok", "jpg": j})
        w.write({"__key__": "broken", "jpg": j[: len(j) // 2]})
    with pytest.raises(dc.DataFormatError, match=r"cj-000\.tar.*sample 'broken'.*field 'jpg'"):
        list(ShardedDataset(str(tmp_path / "cj-000.tar")))
    # the index disagrees with the shard
    (tmp_path / "train-000001.tar").write_bytes(data[:512 * 6])  # 2 samples left
    with pytest.raises(dc.DataFormatError, match="index says 10"):
        list(ShardedDataset(pattern))


def test_missing_field_in_a_batch(tmp_path):
    with ShardWriter(str(tmp_path / "m-%03d.tar")) as w:
        for i in range(4):
            s = {"__key__": str(i), "txt": "x"}
            if i != 2:
                s["cls"] = i
            w.write(s)
    with pytest.raises(dc.DataFormatError, match="sample '2' has no field 'cls'"):
        list(ShardedDataset(str(tmp_path / "m-000.tar"), batch_size=4))
    got = list(ShardedDataset(str(tmp_path / "m-000.tar")))  # unbatched: samples keep their own fields
    assert "cls" not in got[2] and got[3]["cls"] == 3


def test_pattern_matching_nothing(tmp_path):
    with pytest.raises(ValueError, match="no shard"):
        ShardedDataset([])
    with pytest.raises(FileNotFoundError, match="x-1.tar"):
        len(ShardedDataset(str(tmp_path / "x-{1..3}.tar")))


def test_no_index_counts_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pattern, n = make_shards(str(tmp_path / "d"), sizes=[3, 4, 5])
    os.unlink(tmp_path / "d" / "train.index.json")
    with pytest.warns(UserWarning, match="dutycycle shard index"):
        assert len(ShardedDataset(pattern)) == n
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ids(ShardedDataset(pattern)) == list(range(n))  # from the cache, no warning


def test_cli_write_and_index(tmp_path):
    src = tmp_path / "src"
    for i in range(7):
        (src / "a").mkdir(parents=True, exist_ok=True)
        (src / "a" / f"{i:03d}.txt").write_text(f"t{i}")
        (src / "a" / f"{i:03d}.cls").write_text(str(i))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dutycycle", "shard", "write", str(src), str(out / "s-%04d.tar"),
                        "--maxcount", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "7 samples in 3 shards" in r.stdout
    got = list(ShardedDataset(str(out / "s-{0000..0002}.tar")))
    assert [s["__key__"] for s in got] == [f"a/{i:03d}" for i in range(7)] and got[4]["txt"] == "t4"
    os.unlink(out / "s.index.json")
    r = subprocess.run([sys.executable, "-m", "dutycycle", "shard", "index", str(out / "s-{0000..0002}.tar")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [e["nsamples"] for e in json.load(open(out / "s.index.json"))["shardlist"]] == [3, 3, 1]
    r = subprocess.run([sys.executable, "-m", "dutycycle", "shard", "write", str(tmp_path / "none"), "x-%d.tar"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_forked_child_continues(shards, tmp_path):
    pattern, n = shards
    code = textwrap.dedent(f"""
        import os, sys, numpy as np
        from dutycycle.data import ShardedDataset
        ds = ShardedDataset({pattern!r}, batch_size=10)
        it = iter(ds)
        head = [int(v) for v in next(it)["cls"].numpy()]
        pid = os.fork()
        if pid == 0:
            rest = [int(v) for b in it for v in b["cls"].numpy()]
            os._exit(0 if head + rest == list(range({n})) else 3)
        _, status = os.waitpid(pid, 0)
        rest = [int(v) for b in it for v in b["cls"].numpy()]
        assert head + rest == list(range({n}))
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_abandoned_iterators_and_gc_do_not_hang(shards):
    pattern, _ = shards
    for _ in range(20):
        it = iter(ShardedDataset(pattern, batch_size=3, prefetch_batches=1, chunk_bytes=4096))
        next(it)
        del it


def test_trainer_fits_from_shards_and_reports_data_wait(shards, tmp_path):
    pattern, n = shards
    L = dc

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = dc.nn.Linear(4, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.extend(batch["cls"].tolist())
            x = batch["x.npy"] / 200.0
            return ((self.lin(x).squeeze(-1) - x[:, 0]) ** 2).mean()

        def configure_optimizers(self):
            return dc.optim.SGD(self.parameters(), lr=0.1)

    m = M()
    ds = ShardedDataset(pattern, shuffle=True, seed=0, batch_size=16)
    tr = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   default_root_dir=str(tmp_path))
    tr.fit(m, train_dataloaders=ds)
    assert sorted(m.seen[:n]) == list(range(n)) and sorted(m.seen[n:]) == list(range(n))
    assert m.seen[:n] != m.seen[n:]
    split = tr.duty_cycle.split()
    assert split["data_wait"] >= 0 and split["compute"] > 0 and "data wait" in tr.duty_cycle.table()


def test_trainer_resumes_mid_epoch_exactly(shards, tmp_path):
    pattern, n = shards
    L = dc

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = dc.nn.Linear(4, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.extend(batch["cls"].tolist())
            return self.lin(batch["x.npy"]).mean() * 0.0

        def configure_optimizers(self):
            return dc.optim.SGD(self.parameters(), lr=0.1)

    def run(max_steps, ckpt=None):
        m = M()
        ds = ShardedDataset(pattern, shuffle=True, seed=9, shuffle_buffer=30, batch_size=8)
        tr = L.Trainer(max_epochs=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                       default_root_dir=str(tmp_path), enable_checkpointing=False)
        tr.fit(m, train_dataloaders=ds, ckpt_path=ckpt)
        return m, tr

    full, _ = run(-1)
    head, tr = run(7)
    path = str(tmp_path / "mid.ckpt")
    tr.save_checkpoint(path)  # synchronous by default
    tail, _ = run(-1, ckpt=path)
    assert head.seen + tail.seen == full.seen
