"""Checkpoints to s3:// (moto on 127.0.0.1): written to a local spool by the C writer, uploaded in
the background with the manifest object last; failures leave no committed-looking checkpoint."""

import numpy as np
import pytest
from s3_helpers import FaultProxy, s3_bucket, s3_server  # noqa: F401  (fixtures by import)

import dutycycle as dc
from dutycycle import checkpoint, s3


def _state(seed):
    g = np.random.default_rng(seed)
    return {"w": dc.tensor(g.standard_normal((300, 700)).astype(np.float32)),  # 840 KB: one PUT
            "big": dc.tensor(g.standard_normal(5 * 1024 * 1024).astype(np.float32)),  # 20 MiB: multipart
            "step": seed, "note": f"state {seed}"}


def _keys(s3_server, bucket, prefix=""):  # noqa: F811
    out = s3_server.boto3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in out)


def test_save_and_load_through_s3(s3_server, s3_bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DUTYCYCLE_CKPT_SPOOL", str(tmp_path / "spool"))
    client = s3.Client(**s3_server.client_kwargs)
    url = f"s3://{s3_bucket}/run1/step-1"
    with checkpoint.Checkpointer(s3=client, keep_last=1) as ck:
        st = ck.save(_state(1), url, link=f"s3://{s3_bucket}/run1/last.ckpt")
        assert st.path == url
        ck.wait()
        keys = _keys(s3_server, s3_bucket, "run1/step-1/")
        assert "run1/step-1/manifest.json" in keys and any(k.endswith(".safetensors") for k in keys)
        assert not list((tmp_path / "spool").rglob("*.safetensors"))  # the spool copy is gone
        ck.save(_state(2), f"s3://{s3_bucket}/run1/step-2", link=f"s3://{s3_bucket}/run1/last.ckpt")
    assert _keys(s3_server, s3_bucket, "run1/step-1/") == []  # keep_last=1 removed the older one
    for src in (f"s3://{s3_bucket}/run1/step-2", f"s3://{s3_bucket}/run1/last.ckpt"):
        got = checkpoint.load(src, s3=client)
        want = _state(2)
        assert got["step"] == 2 and got["note"] == "state 2"
        assert np.array_equal(got["big"].numpy(), want["big"].numpy())
        assert np.array_equal(got["w"].numpy(), want["w"].numpy())
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        checkpoint.load(f"s3://{s3_bucket}/run1/step-9", s3=client)


def test_failed_upload_commits_nothing(s3_server, s3_bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DUTYCYCLE_CKPT_SPOOL", str(tmp_path / "spool"))
    good = s3.Client(**s3_server.client_kwargs)
    with checkpoint.Checkpointer(s3=good) as ck:
        ck.save(_state(1), f"s3://{s3_bucket}/r/step-1", block=True)
    with FaultProxy(s3_server.endpoint, rate=1.0, kinds=["500"], methods=["PUT", "POST"]) as proxy:
        bad = s3.Client(**dict(s3_server.client_kwargs, endpoint=proxy.endpoint), max_attempts=2,
                        backoff_base=0.01, backoff_cap=0.02)
        ck = checkpoint.Checkpointer(s3=bad)
        ck.save(_state(2), f"s3://{s3_bucket}/r/step-2")
        with pytest.raises(checkpoint.CheckpointError, match=r"upload to 's3://.*/r/step-2' failed"):
            ck.wait()
        ck.close()
    assert "r/step-2/manifest.json" not in _keys(s3_server, s3_bucket, "r/")
    uploads = s3_server.boto3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []  # aborted, not orphaned
    with pytest.raises(FileNotFoundError):
        checkpoint.load(f"s3://{s3_bucket}/r/step-2", s3=good)
    assert checkpoint.load(f"s3://{s3_bucket}/r/step-1", s3=good)["step"] == 1  # the previous one stands


def test_corrupt_object_is_detected(s3_server, s3_bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DUTYCYCLE_CKPT_SPOOL", str(tmp_path / "spool"))
    client = s3.Client(**s3_server.client_kwargs)
    with checkpoint.Checkpointer(s3=client) as ck:
        ck.save({"w": dc.arange(1000.0)}, f"s3://{s3_bucket}/c/step-1", block=True)
    key = next(k for k in _keys(s3_server, s3_bucket, "c/step-1/") if k.endswith(".safetensors"))
    body = bytearray(s3_server.boto3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[-7] ^= 0xFF
    s3_server.boto3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    with pytest.raises(checkpoint.CheckpointCorruptError):
        checkpoint.load(f"s3://{s3_bucket}/c/step-1", s3=client)
