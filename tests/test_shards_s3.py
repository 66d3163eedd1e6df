"""ShardedDataset and ShardWriter over S3: a moto server on 127.0.0.1, and the fault-injecting
proxy in front of it (503 SlowDown, 500, resets mid-body, bodies cut short, stalls)."""

import hashlib
import os
import warnings

import numpy as np
import pytest
from s3_helpers import FaultProxy, s3_bucket, s3_server  # noqa: F401  (fixtures by import)

import dutycycle as dc
from dutycycle import s3
from dutycycle.data import ShardedDataset, ShardWriter

N_SHARDS, PER_SHARD = 6, 25


def _payload(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, 3000 + 97 * (i % 40), dtype=np.uint8).tobytes()


@pytest.fixture
def s3_shards(s3_server, s3_bucket):  # noqa: F811
    client = s3.Client(**s3_server.client_kwargs)
    pattern = f"s3://{s3_bucket}/data/train-%06d.tar"
    with ShardWriter(pattern, maxcount=PER_SHARD, s3=client) as w:
        for i in range(N_SHARDS * PER_SHARD):
            w.write({"__key__": f"{i:06d}", "bin": _payload(i), "cls": i, "x.npy": np.full(3, i, np.int32)})
    return f"s3://{s3_bucket}/data/train-{{000000..{N_SHARDS - 1:06d}}}.tar", client


def _digest(batches):
    out = {}
    for b in batches:
        for k, data, c in zip(b["__key__"], b["bin"], b["cls"].tolist()):
            assert k not in out, f"sample {k} delivered twice"
            out[k] = (hashlib.sha256(data).hexdigest(), c)
    return out


def _expected():
    return {f"{i:06d}": (hashlib.sha256(_payload(i)).hexdigest(), i) for i in range(N_SHARDS * PER_SHARD)}


def test_write_and_read_shards_through_s3(s3_shards, s3_server):  # noqa: F811
    pattern, client = s3_shards
    bucket = pattern[5:].split("/")[0]
    keys = sorted(o["Key"] for o in s3_server.boto3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"data/train-{i:06d}.tar" for i in range(N_SHARDS)] + ["data/train.index.json"]
    before = client.stats()["requests"]
    ds = ShardedDataset(pattern, batch_size=10, s3=client, chunk_bytes=64 << 10)
    assert _digest(ds) == _expected()
    assert len(ds) == N_SHARDS * PER_SHARD // 10
    # start-up read the index (HEAD + GET), not one HEAD per shard
    st = client.stats()
    assert st["requests"] - before >= N_SHARDS  # the shards' range GETs
    # the same shards read as plain tar by boto3 + tarfile
    import io
    import tarfile

    body = s3_server.boto3.get_object(Bucket=bucket, Key="data/train-000002.tar")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as t:
        assert t.getnames()[:3] == ["000050.bin", "000050.cls", "000050.x.npy"]


def test_every_sample_exactly_once_through_faults(s3_shards, s3_server):  # noqa: F811
    pattern, _ = s3_shards
    with FaultProxy(s3_server.endpoint, rate=0.18, seed=3, stall_s=2.5, methods=["GET"]) as proxy:
        kw = dict(s3_server.client_kwargs, endpoint=proxy.endpoint)
        client = s3.Client(**kw, stall_timeout=1.0, max_attempts=10, backoff_base=0.01, backoff_cap=0.05)
        ds = ShardedDataset(pattern, batch_size=8, s3=client, shuffle=True, seed=1, chunk_bytes=32 << 10,
                            fetch_threads=6)
        got = _digest(ds)
        assert got == _expected()
        assert proxy.total_faults >= 5, proxy.faults
        assert client.stats()["retries"] >= proxy.total_faults - 1


def test_missing_bucket_key_and_bad_index(s3_server, s3_bucket):  # noqa: F811
    client = s3.Client(**s3_server.client_kwargs)
    with pytest.raises(s3.S3Error) as e:
        len(ShardedDataset("s3://no-such-bucket-here/train-{0..1}.tar", s3=client))
    assert e.value.code == "NoSuchBucket" or e.value.status == 404
    assert "no-such-bucket-here" in str(e.value)
    with ShardWriter(f"s3://{s3_bucket}/a-%03d.tar", s3=client) as w:
        for i in range(3):
            w.write({"__key__": str(i), "txt": "x"})
    with pytest.raises(s3.S3Error) as e:
        list(ShardedDataset(f"s3://{s3_bucket}/a-{{000..001}}.tar", s3=client))  # the index has no a-001
    assert "a-001.tar" in str(e.value) and (e.value.code in ("NoSuchKey", "404") or e.value.status == 404)
    client.put(f"s3://{s3_bucket}/b.index.json", b"{not json")
    with pytest.raises(ValueError, match="b.index.json"):
        len(ShardedDataset(f"s3://{s3_bucket}/b-000.tar", s3=client))


def test_no_index_on_s3_counts_with_a_warning(s3_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pattern, client = s3_shards
    client.delete(pattern.split("train-")[0] + "train.index.json")
    with pytest.warns(UserWarning, match="counting them"):
        ds = ShardedDataset(pattern, s3=client, batch_size=25)
        assert len(ds) == N_SHARDS
    assert _digest(ds) == _expected()


def test_resume_across_world_sizes_over_s3(s3_shards):
    pattern, client = s3_shards
    kw = dict(s3=client, shuffle=True, shuffle_buffer=30, seed=4, batch_size=5)
    seen = []
    states = []
    for r in range(3):
        ds = ShardedDataset(pattern, rank=r, world_size=3, **kw)
        it = iter(ds)
        for _ in range(4):
            seen += next(it)["__key__"]
        states.append(ds.state_dict())
    for r in range(2):
        ds = ShardedDataset(pattern, rank=r, world_size=2, **kw)
        ds.load_state_dict(states[0])
        for b in ds:
            seen += b["__key__"]
    assert len(seen) == len(set(seen)) == N_SHARDS * PER_SHARD


def test_default_client_from_environment(s3_shards, s3_server, monkeypatch):  # noqa: F811
    pattern, _ = s3_shards
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    s3.set_default_client(None)
    try:
        got = [s["cls"] for s in ShardedDataset(pattern.replace("{000000..000005}", "000001"))]
        assert got == list(range(PER_SHARD, 2 * PER_SHARD))
    finally:
        s3.set_default_client(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert isinstance(got[0], int) and dc.is_tensor(dc.tensor(got))
