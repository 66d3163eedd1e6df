"""dutycycle.s3 and the C client under it (csrc/s3), against a real moto server on 127.0.0.1,
directly and through s3_helpers.FaultProxy (503/500, resets, truncated bodies, stalls).

Covered: the SigV4 signer (AWS's published examples, botocore's own signer on awkward keys, and a
moto server that verifies signatures), get/range/head/list (lazy pages)/put/delete, multipart
uploads (parallel parts, abort on failure), errors (codes, URLs, attempts, no secrets), retries
under injected faults, config resolution, fork safety (in subprocesses), and a plain-C ASan run."""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import s3_helpers
from s3_helpers import FaultProxy, env_without_aws, free_port

import dutycycle
from dutycycle import _C, s3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWKWARD_KEYS = ["dir/with space.bin", "ünï/cödé-é.txt", "a+b=c&d.txt", "tilde~percent%25(x)!*'", "odd/./..//x"]


def blob(n, seed=0):
    return hashlib.shake_256(f"{seed}".encode()).digest(n)


s3_server = s3_helpers.s3_server  # the fixtures, by name in this module
s3_bucket = s3_helpers.s3_bucket


@pytest.fixture
def client(s3_server):
    with s3.Client(**s3_server.client_kwargs) as c:
        yield c


# --- the signer -----------------------------------------------------------------------------


def test_sigv4_aws_get_object_example():
    # AWS S3 docs, "Signature Calculations ... Examples": GET Object, the first 10 bytes of test.txt
    headers = [
        "Host: examplebucket.s3.amazonaws.com",
        "Range: bytes=0-9",
        f"x-amz-content-sha256:{EMPTY}",
        "x-amz-date: 20130524T000000Z",
    ]
    auth, creq, sts = _C.sigv4_sign(
        "GET", "/test.txt", None, headers, EMPTY, "20130524T000000Z", "us-east-1", "s3", AK, SK
    )
    assert creq == (
        f"GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
        f"x-amz-content-sha256:{EMPTY}\nx-amz-date:20130524T000000Z\n\n"
        f"host;range;x-amz-content-sha256;x-amz-date\n{EMPTY}"
    )
    assert sts.endswith("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_aws_examples_put_lifecycle_list():
    # the same page's PUT Object ("test$file.text"), GET Bucket Lifecycle and GET Bucket (List Objects)
    body_hash = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    date = "20130524T000000Z"
    host = "Host: examplebucket.s3.amazonaws.com"
    auth, _, _ = _C.sigv4_sign(
        "PUT",
        "/test$file.text",
        None,
        [
            "Date: Fri, 24 May 2013 00:00:00 GMT",
            host,
            f"x-amz-date: {date}",
            "x-amz-storage-class: REDUCED_REDUNDANCY",
            f"x-amz-content-sha256: {body_hash}",
        ],
        body_hash,
        date,
        "us-east-1",
        "s3",
        AK,
        SK,
    )
    assert auth.endswith("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    assert "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class," in auth
    auth, creq, _ = _C.sigv4_sign(
        "GET",
        "/",
        "lifecycle",
        [host, f"x-amz-date: {date}", f"x-amz-content-sha256: {EMPTY}"],
        EMPTY,
        date,
        "us-east-1",
        "s3",
        AK,
        SK,
    )
    assert creq.split("\n")[2] == "lifecycle="
    assert auth.endswith("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    auth, creq, _ = _C.sigv4_sign(
        "GET",
        "/",
        "max-keys=2&prefix=J",
        [host, f"x-amz-date: {date}", f"x-amz-content-sha256: {EMPTY}"],
        EMPTY,
        date,
        "us-east-1",
        "s3",
        AK,
        SK,
    )
    assert auth.endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_sigv4_test_suite_vanilla_query_order():
    # aws-sig-v4-test-suite get-vanilla-query-order-key-case (service "service", path "/")
    auth, _, _ = _C.sigv4_sign(
        "GET",
        "/",
        "Param2=value2&Param1=value1",
        ["Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"],
        EMPTY,
        "20150830T123600Z",
        "us-east-1",
        "service",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
    ).replace(", ", ",")


@pytest.mark.parametrize("key", AWKWARD_KEYS + ["plain"])
@pytest.mark.parametrize("query", [None, "list-type=2&prefix=a b+c&continuation-token=x/y=="])
def test_sigv4_matches_botocore(key, query):
    """Our canonical request and signature equal botocore's S3 signer for the same wire request."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    date = "20240101T010203Z"
    path = f"/bucket/{key}"
    wire_query = ""
    if query:
        pairs = sorted(
            (quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in (p.split("=", 1) for p in query.split("&"))
        )
        wire_query = "&".join(f"{k}={v}" for k, v in pairs)
    url = "http://127.0.0.1:9000" + quote(path, safe="/-_.~") + (f"?{wire_query}" if wire_query else "")
    hdrs = {
        "Host": "127.0.0.1:9000",
        "X-Amz-Date": date,
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
        "X-Amz-Security-Token": "tok/en==",
    }
    req = AWSRequest(method="GET", url=url, headers=hdrs)
    req.context["timestamp"] = date
    signer = S3SigV4Auth(Credentials(AK, SK, "tok/en=="), "s3", "eu-west-1")
    creq = signer.canonical_request(req)
    sig = signer.signature(signer.string_to_sign(req, creq), req)
    auth, ours, _ = _C.sigv4_sign(
        "GET", path, query, [f"{k}: {v}" for k, v in hdrs.items()], "UNSIGNED-PAYLOAD", date, "eu-west-1", "s3", AK, SK
    )
    assert ours == creq
    assert auth.endswith(f"Signature={sig}")


def test_sigv4_rejects_bad_input():
    with pytest.raises(ValueError):
        _C.sigv4_sign("GET", "/", None, ["no colon"], EMPTY, "20240101T000000Z", "r", "s3", AK, SK)
    with pytest.raises(ValueError):
        _C.sigv4_sign("GET", "/", None, ["Host: x"], EMPTY, "2024", "r", "s3", AK, SK)


SIGNED_SERVER = r"""
import os, sys
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
s.start()
print("ready", flush=True)
sys.stdin.read()
s.stop()
"""


def _wait_port(port, proc, timeout=20):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not come up")


def test_signatures_verified_by_server(tmp_path):
    """moto checks SigV4 when INITIAL_NO_AUTH_ACTION_COUNT is set: real keys work (awkward keys
    included, uploads too), a wrong secret is SignatureDoesNotMatch, an unknown key
    InvalidAccessKeyId; none is retried and no secret shows anywhere."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNED_SERVER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        _wait_port(port, proc)
        ep = f"http://127.0.0.1:{port}"
        anon = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        iam = boto3.client("iam", **anon)
        iam.create_user(UserName="u")  # the 4 unauthenticated actions
        key = iam.create_access_key(UserName="u")["AccessKey"]
        arn = iam.create_policy(
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
        )["Policy"]["Arn"]
        iam.attach_user_policy(UserName="u", PolicyArn=arn)
        ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
        boto3.client(
            "s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk
        ).create_bucket(Bucket="signed")
        c = s3.Client(endpoint=ep, access_key=ak, secret_key=sk, session_token=None)
        # moto's own verifier rebuilds the canonical request wrongly for non-ASCII, '+', '%' and '='
        # in keys and '/' in query values (boto3 fails there too); those are checked against
        # botocore's signer above
        keys = ["dir/with space.bin", "odd/./..//x", "plain/key_1.bin"]
        for k in keys:
            c.put(f"s3://signed/{k}", k.encode())
            assert c.get(f"s3://signed/{k}") == k.encode()
            assert c.get(f"s3://signed/{k}", offset=1, length=2) == k.encode()[1:3]
        assert sorted(o.key for o in c.list("s3://signed/", max_keys=2)) == sorted(keys)
        assert [o.key for o in c.list("s3://signed/dir")] == ["dir/with space.bin"]
        with c.open("s3://signed/multi", "wb", part_size=5 << 20) as f:
            f.write(blob(6 << 20))
        assert c.get("s3://signed/multi") == blob(6 << 20)

        bad = s3.Client(endpoint=ep, access_key=ak, secret_key="not-the-secret-" + "Q" * 10)
        with pytest.raises(s3.S3Error) as ei:
            bad.get("s3://signed/dir/with space.bin")
        assert ei.value.code == "SignatureDoesNotMatch" and ei.value.status == 403 and ei.value.attempts == 1
        assert "s3://signed/dir/with space.bin" in str(ei.value) and "not-the-secret" not in str(ei.value)
        unknown = s3.Client(endpoint=ep, access_key="AKIANOSUCHKEY0000000", secret_key="s3cr3t-value-xyz")
        with pytest.raises(s3.S3Error) as ei:
            unknown.put("s3://signed/x", b"1")
        assert ei.value.code == "InvalidAccessKeyId" and ei.value.attempts == 1
        assert "s3cr3t-value-xyz" not in str(ei.value) + repr(ei.value) + repr(unknown) + repr(unknown.c_client)
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


# --- objects --------------------------------------------------------------------------------


def test_put_get_head_delete(client, s3_bucket):
    url = f"s3://{s3_bucket}/a/b.bin"
    data = blob(100_000)
    client.put(url, data)
    assert client.get(url) == data
    assert client.get(url, offset=1000, length=10) == data[1000:1010]
    assert client.get(url, offset=99_990) == data[99_990:]
    info = client.head(url)
    assert info["size"] == len(data) and info["etag"].strip('"') == hashlib.md5(data).hexdigest()
    assert client.exists(url)
    client.put(f"s3://{s3_bucket}/empty", b"")
    assert client.get(f"s3://{s3_bucket}/empty") == b"" and client.head(f"s3://{s3_bucket}/empty")["size"] == 0
    client.put(f"s3://{s3_bucket}/mv", memoryview(bytearray(b"abc")))
    assert client.get(f"s3://{s3_bucket}/mv") == b"abc"
    client.delete(url)
    assert not client.exists(url)
    with pytest.raises(s3.S3Error) as ei:
        client.head(url)
    assert ei.value.status == 404 and ei.value.code == "NoSuchKey" and ei.value.url == url


def test_range_checks(client, s3_bucket):
    url = f"s3://{s3_bucket}/r"
    client.put(url, blob(1000))
    with pytest.raises(s3.S3Error, match=r"past the end of the object \(size 1000\)"):
        client.get(url, offset=990, length=20)
    with pytest.raises(s3.S3Error, match=r"past the end"):
        client.get(url, offset=5000, length=1)
    assert client.get(url, offset=1000, length=0) == b""
    buf = bytearray(100)
    assert client.c_client.get_range_into(s3_bucket, "r", 900, buf) == 1000 and bytes(buf) == blob(1000)[900:]


def test_awkward_keys_roundtrip_and_list(client, s3_bucket):
    keys = AWKWARD_KEYS + ["x&amp;<y>\"z'.txt", "日本/語 スペース"]
    for k in keys:
        client.put(f"s3://{s3_bucket}/{k}", k.encode())
    for k in keys:
        assert client.get(f"s3://{s3_bucket}/{k}") == k.encode()
    listed = list(client.list(f"s3://{s3_bucket}/"))
    assert sorted(o.key for o in listed) == sorted(keys)
    assert all(o.url == f"s3://{s3_bucket}/{o.key}" and o.size == len(o.key.encode()) for o in listed)


def test_large_get_is_parallel_ranges(client, s3_bucket):
    data = blob((3 << 20) + 17)
    client.put(f"s3://{s3_bucket}/big", data)
    before = client.stats()["requests"]
    assert client.c_client.get(s3_bucket, "big", part_size=1 << 20) == data
    assert client.stats()["requests"] - before == 4  # the first range (gives the size) + 3 in parallel
    assert client.get(f"s3://{s3_bucket}/big") == data


def test_range_ignored_by_server(s3_server, s3_bucket):
    """A server that answers a range GET with 200 and the whole object: the right slice is taken."""
    data = blob(300_000)
    s3_server.boto3.put_object(Bucket=s3_bucket, Key="k", Body=data)
    with FaultProxy(s3_server.endpoint, strip_range=True) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint})
        assert c.get(f"s3://{s3_bucket}/k", offset=123_456, length=1000) == data[123_456:124_456]
        assert c.get(f"s3://{s3_bucket}/k", offset=299_000) == data[299_000:]
        assert c.c_client.get(s3_bucket, "k", part_size=64 << 10) == data  # the first reply holds it all
        with pytest.raises(s3.S3Error, match="past the end"):
            c.get(f"s3://{s3_bucket}/k", offset=299_990, length=100)


def test_list_pages_are_lazy(client, s3_server, s3_bucket):
    n = 2500
    s3_server.put_many(s3_bucket, [f"many/{i:05d}" for i in range(n)], b"v")
    client.put(f"s3://{s3_bucket}/other", b"x")
    before = client.stats()["requests"]
    it = client.list(f"s3://{s3_bucket}/many/", max_keys=200)
    first = next(it)
    assert first.key == "many/00000" and first.size == 1
    assert client.stats()["requests"] - before == 1  # one page so far, not 13
    rest = list(it)
    assert client.stats()["requests"] - before == 13
    assert [o.key for o in [first] + rest] == [f"many/{i:05d}" for i in range(n)]


def test_list_delimiter(client, s3_bucket):
    for k in ["top.txt", "d1/a", "d1/b", "d2/c", "d2/sub/d"]:
        client.put(f"s3://{s3_bucket}/{k}", b"1")
    got = list(client.list(f"s3://{s3_bucket}/", recursive=False))
    assert [(o.key, o.size) for o in got] == [("d1/", None), ("d2/", None), ("top.txt", 1)]
    got = list(client.list(f"s3://{s3_bucket}/d2/", delimiter="/"))
    assert [o.key for o in got] == ["d2/c", "d2/sub/"]
    assert list(client.list(f"s3://{s3_bucket}/nothing-here/")) == []


def test_errors_name_the_url_and_code(client, s3_bucket):
    with pytest.raises(s3.S3Error) as ei:
        client.get(f"s3://{s3_bucket}/missing/key")
    e = ei.value
    assert str(e) == f"S3 GET s3://{s3_bucket}/missing/key: 404 NoSuchKey: The specified key does not exist."
    assert (e.code, e.status, e.url, e.attempts) == ("NoSuchKey", 404, f"s3://{s3_bucket}/missing/key", 1)
    assert isinstance(e, dutycycle._C.DataIOError) and isinstance(e, OSError)
    with pytest.raises(s3.S3Error) as ei:
        list(client.list("s3://no-such-bucket-here/"))
    assert ei.value.code == "NoSuchBucket" and "s3://no-such-bucket-here/" in str(ei.value)
    with pytest.raises(s3.S3Error) as ei:
        client.put("s3://no-such-bucket-here/k", b"x")
    assert ei.value.code == "NoSuchBucket" and ei.value.attempts == 1
    assert client.stats()["retries"] == 0  # 4xx: never retried


def test_secrets_never_shown(s3_server, s3_bucket):
    secret, token = "SuperSecretKeyValue/123+abc", "SessionTokenValue//xyz=="
    c = s3.Client(endpoint=s3_server.endpoint, access_key="AKIDVISIBLE", secret_key=secret, session_token=token)
    texts = [repr(c), repr(c.c_client), str(c.c_client)]
    with pytest.raises(s3.S3Error) as ei:
        c.get(f"s3://{s3_bucket}/nope")
    texts += [str(ei.value), repr(ei.value)]
    refused = s3.Client(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="AK",
        secret_key=secret,
        session_token=token,
        max_attempts=2,
        backoff_base=0.01,
    )
    with pytest.raises(s3.S3Error) as ei:
        refused.get("s3://b/k")
    assert ei.value.status == 0 and ei.value.code == "" and ei.value.attempts == 2
    assert "after 2 attempts" in str(ei.value)
    texts += [str(ei.value), repr(refused)]
    for t in texts:
        assert secret not in t and token not in t and "Signature=" not in t and "Authorization" not in t


def test_bad_urls(client):
    for bad in ["http://b/k", "s3://", "s3:///k", "s3://bad bucket/k", "bucket/key"]:
        with pytest.raises(ValueError):
            s3.parse_url(bad)
    assert s3.parse_url("s3://b/k/x y") == ("b", "k/x y")
    assert s3.parse_url("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="names a bucket"):
        client.get("s3://b/")
    with pytest.raises(ValueError, match="mode"):
        client.open("s3://b/k", "r+")


# --- uploads --------------------------------------------------------------------------------


def test_multipart_parts_in_parallel(s3_server, s3_bucket):
    data = blob((20 << 20) + 1234)
    with FaultProxy(s3_server.endpoint, gather=("PUT", 3)) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint})
        with c.open(f"s3://{s3_bucket}/mp", "wb", part_size=5 << 20, max_inflight=4) as f:
            for off in range(0, len(data), 3 << 20):  # writes that straddle parts
                f.write(data[off : off + (3 << 20)])
        assert proxy.max_concurrent >= 3  # three part PUTs were in flight together
    assert s3_server.boto3.get_object(Bucket=s3_bucket, Key="mp")["Body"].read() == data
    parts = s3_server.boto3.head_object(Bucket=s3_bucket, Key="mp")["ETag"]
    assert parts.strip('"').endswith("-5")  # four full parts and the tail
    assert not s3_server.boto3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_small_upload_is_one_put(client, s3_bucket):
    before = client.stats()["requests"]
    with client.open(f"s3://{s3_bucket}/small", "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
        assert f.tell() == 11
    assert client.stats()["requests"] - before == 1
    assert client.get(f"s3://{s3_bucket}/small") == b"hello world"
    up = client.upload(f"s3://{s3_bucket}/empty-up")
    up.finish()
    assert client.get(f"s3://{s3_bucket}/empty-up") == b"" and up.done
    with pytest.raises(ValueError):
        client.upload(f"s3://{s3_bucket}/x", part_size=1 << 20)  # under S3's 5 MiB minimum


def test_exception_in_with_aborts(s3_server, s3_bucket, client):
    with pytest.raises(RuntimeError, match="boom"):
        with client.open(f"s3://{s3_bucket}/aborted", "wb", part_size=5 << 20) as f:
            f.write(blob(11 << 20))  # two parts already sent
            raise RuntimeError("boom")
    assert not client.exists(f"s3://{s3_bucket}/aborted")
    assert not s3_server.boto3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    w = client.open(f"s3://{s3_bucket}/dropped", "wb", part_size=5 << 20)
    w.write(blob(6 << 20))
    del w  # dropped unclosed: abandoned, not completed
    assert not client.exists(f"s3://{s3_bucket}/dropped")
    assert not s3_server.boto3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_failed_part_aborts_upload(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint, rate=1.0, kinds=("500",), methods=["PUT"]) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, max_attempts=2, backoff_base=0.01)
        with pytest.raises(s3.S3Error) as ei:
            with c.open(f"s3://{s3_bucket}/fails", "wb", part_size=5 << 20) as f:
                f.write(blob(16 << 20))
        assert ei.value.status == 500 and ei.value.code == "InternalError" and ei.value.attempts == 2
        assert "after 2 attempts" in str(ei.value)
    assert not s3_server.boto3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert "Contents" not in s3_server.boto3.list_objects_v2(Bucket=s3_bucket)


# --- retries under faults -------------------------------------------------------------------


def test_faults_everything_still_byte_identical(s3_server, s3_bucket):
    objs = {f"f/{i}": blob(50_000 + 7919 * i, seed=i) for i in range(12)}
    for k, v in objs.items():
        s3_server.boto3.put_object(Bucket=s3_bucket, Key=k, Body=v)
    with FaultProxy(s3_server.endpoint, rate=0.2, seed=7, stall_s=4) as proxy:
        c = s3.Client(
            **{**s3_server.client_kwargs, "endpoint": proxy.endpoint},
            max_attempts=8,
            stall_timeout=1,
            backoff_base=0.01,
            backoff_cap=0.1,
        )

        for kind in s3_helpers.FAULT_KINDS:  # each kind at least once, whatever the threads' order
            proxy.force(kind)

        def check(i):
            k = f"f/{i % 12}"
            v = objs[k]
            if i % 3 == 0:
                assert c.get(f"s3://{s3_bucket}/{k}") == v
            elif i % 3 == 1:
                assert c.c_client.get(s3_bucket, k, part_size=32 << 10) == v  # many ranges
            else:
                off = (i * 977) % (len(v) - 5000)
                assert c.get(f"s3://{s3_bucket}/{k}", offset=off, length=5000) == v[off : off + 5000]

        with ThreadPoolExecutor(6) as ex:
            list(ex.map(check, range(30)))
        up = blob((6 << 20) + 5)
        with c.open(f"s3://{s3_bucket}/up", "wb", part_size=5 << 20) as f:
            f.write(up)
        c.put(f"s3://{s3_bucket}/put", b"p" * 1000)
        assert sorted(o.key for o in c.list(f"s3://{s3_bucket}/f/", max_keys=5)) == sorted(objs)
        faults = dict(proxy.faults)
        stats = c.stats()
    assert s3_server.boto3.get_object(Bucket=s3_bucket, Key="up")["Body"].read() == up
    assert s3_server.boto3.get_object(Bucket=s3_bucket, Key="put")["Body"].read() == b"p" * 1000
    assert sum(faults.values()) >= 8 and all(n > 0 for n in faults.values())
    assert stats["retries"] >= sum(faults.values()) - 2  # (a stall cut by an abort may go unused)


def test_truncated_body_never_accepted(s3_server, s3_bucket):
    data = blob(200_000)
    s3_server.boto3.put_object(Bucket=s3_bucket, Key="t", Body=data)
    with FaultProxy(s3_server.endpoint) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, backoff_base=0.01)
        proxy.force("truncate")
        assert c.get(f"s3://{s3_bucket}/t") == data  # resumed from the bytes already received
        assert c.stats()["retries"] == 1
        proxy.force("reset")
        assert c.get(f"s3://{s3_bucket}/t", offset=10, length=150_000) == data[10:150_010]
        once = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, max_attempts=1)
        proxy.force("truncate")
        with pytest.raises(s3.S3Error) as ei:
            once.get(f"s3://{s3_bucket}/t")
        assert ei.value.attempts == 1 and ei.value.status == 0 and ei.value.curl_code == 18


def test_stall_is_retried(s3_server, s3_bucket):
    data = blob(100_000)
    s3_server.boto3.put_object(Bucket=s3_bucket, Key="s", Body=data)
    with FaultProxy(s3_server.endpoint, stall_s=6) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, stall_timeout=1, backoff_base=0.01)
        proxy.force("stall")
        assert c.get(f"s3://{s3_bucket}/s") == data
        assert c.stats()["retries"] == 1 and proxy.faults["stall"] == 1


def test_retries_exhausted(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint, rate=1.0, kinds=("503",)) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, max_attempts=3, backoff_base=0.01)
        with pytest.raises(s3.S3Error) as ei:
            c.get(f"s3://{s3_bucket}/x")
        e = ei.value
        assert (e.code, e.status, e.attempts) == ("SlowDown", 503, 3)
        assert str(e) == f"S3 GET s3://{s3_bucket}/x: 503 SlowDown: Please reduce your request rate. (after 3 attempts)"
        assert proxy.faults["503"] == 3 and c.stats()["retries"] == 2


def test_connections_reused_across_threads(s3_server, s3_bucket):
    s3_server.boto3.put_object(Bucket=s3_bucket, Key="k", Body=b"x" * 1000)
    with FaultProxy(s3_server.endpoint) as proxy:
        c = s3.Client(**{**s3_server.client_kwargs, "endpoint": proxy.endpoint}, max_connections=4)
        with ThreadPoolExecutor(8) as ex:
            assert all(r == b"x" * 1000 for r in ex.map(lambda i: c.get(f"s3://{s3_bucket}/k"), range(64)))
        st = c.stats()
        assert st["requests"] == 64 and st["connections"] <= 8 and proxy.connections <= 8


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_verified_by_default(s3_server, s3_bucket, tmp_path):
    import ssl

    cert, key = s3_helpers.self_signed_cert(str(tmp_path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s3_server.boto3.put_object(Bucket=s3_bucket, Key="tls", Body=b"secure")
    with FaultProxy(s3_server.endpoint, ssl_context=ctx) as proxy:
        kw = {**s3_server.client_kwargs, "endpoint": proxy.endpoint}
        with pytest.raises(s3.S3Error) as ei:  # an unknown CA: refused, and not retried
            s3.Client(**kw).get(f"s3://{s3_bucket}/tls")
        assert ei.value.status == 0 and ei.value.curl_code == 60 and ei.value.attempts == 1
        assert s3.Client(**kw, ca_file=cert).get(f"s3://{s3_bucket}/tls") == b"secure"
        assert s3.Client(**kw, verify_tls=False).get(f"s3://{s3_bucket}/tls") == b"secure"


# --- reading through open() -----------------------------------------------------------------


def test_reader(client, s3_bucket):
    data = blob(1_000_003)
    client.put(f"s3://{s3_bucket}/r", data)
    with client.open(f"s3://{s3_bucket}/r", part_size=64 << 10) as f:
        assert f.readable() and f.seekable() and not f.writable() and f.size == len(data)
        assert f.read(10) == data[:10] and f.tell() == 10
        before = client.stats()["requests"]
        assert f.read(100) == data[10:110]  # from the read-ahead buffer
        assert client.stats()["requests"] == before
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:] and f.read(10) == b""
        f.seek(500_000)
        buf = bytearray(200_000)  # larger than the buffer: straight into buf
        assert f.readinto(buf) == 200_000 and bytes(buf) == data[500_000:700_000]
        f.seek(0)
        assert f.read() == data
        f.seek(10, io.SEEK_SET)
        f.seek(5, io.SEEK_CUR)
        assert f.read(3) == data[15:18]
    with pytest.raises(ValueError):
        f.read()
    with client.open(f"s3://{s3_bucket}/r") as f:
        assert io.BufferedReader(f, 4096).read(7) == data[:7]  # usable as a raw stream too
    with pytest.raises(s3.S3Error):
        client.open(f"s3://{s3_bucket}/missing")


# --- configuration --------------------------------------------------------------------------


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_config_env_over_files(tmp_path):
    creds = _write(
        tmp_path / "credentials",
        """
        [default]
        aws_access_key_id = FILEKEY
        aws_secret_access_key = filesecret
        [dev]
        aws_access_key_id = DEVKEY
        aws_secret_access_key = devsecret
        aws_session_token = devtoken
    """,
    )
    conf = _write(
        tmp_path / "config",
        """
        [default]
        region = eu-central-1
        endpoint_url = http://config-endpoint:9000
        [profile dev]
        region = ap-south-1
        s3 =
          endpoint_url = http://dev-s3:9000
          addressing_style = virtual
    """,
    )
    base = env_without_aws({"AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": conf, "HOME": str(tmp_path)})
    r = s3.resolve_config(env=base)
    assert (r["access_key"], r["secret_key"], r["region"], r["endpoint"], r["path_style"]) == (
        "FILEKEY",
        "filesecret",
        "eu-central-1",
        "http://config-endpoint:9000",
        True,
    )
    r = s3.resolve_config(env={**base, "AWS_PROFILE": "dev"})
    assert (r["access_key"], r["session_token"], r["region"], r["endpoint"], r["path_style"]) == (
        "DEVKEY",
        "devtoken",
        "ap-south-1",
        "http://dev-s3:9000",
        False,
    )
    env = {
        **base,
        "AWS_ACCESS_KEY_ID": "ENVKEY",
        "AWS_SECRET_ACCESS_KEY": "envsecret",
        "AWS_SESSION_TOKEN": "envtok",
        "AWS_DEFAULT_REGION": "us-west-1",
        "AWS_ENDPOINT_URL": "http://generic:1",
    }
    r = s3.resolve_config(env=env)
    assert (r["access_key"], r["session_token"], r["region"], r["endpoint"]) == (
        "ENVKEY",
        "envtok",
        "us-west-1",
        "http://generic:1",
    )
    r = s3.resolve_config(env={**env, "AWS_REGION": "sa-east-1", "AWS_ENDPOINT_URL_S3": "http://s3-only:2/"})
    assert (r["region"], r["endpoint"]) == ("sa-east-1", "http://s3-only:2")
    r = s3.resolve_config(env=env, profile="dev")  # an explicit profile skips the env credentials
    assert r["access_key"] == "DEVKEY"
    r = s3.resolve_config(env=env, region="explicit-1", endpoint="http://explicit:3", access_key="A", secret_key="S")
    assert (r["region"], r["endpoint"], r["access_key"]) == ("explicit-1", "http://explicit:3", "A")
    r = s3.resolve_config(env={**env, "AWS_NO_SIGN_REQUEST": "true"})
    assert r["anonymous"] and r["access_key"] is None
    assert s3.resolve_config(env=env, anonymous=True)["secret_key"] is None


def test_config_home_files_and_defaults(tmp_path):
    (tmp_path / ".aws").mkdir()
    _write(tmp_path / ".aws" / "credentials", "[default]\naws_access_key_id = HOMEKEY\naws_secret_access_key = hs\n")
    r = s3.resolve_config(env=env_without_aws({"HOME": str(tmp_path)}))
    assert (r["access_key"], r["region"], r["endpoint"], r["path_style"]) == ("HOMEKEY", "us-east-1", None, False)
    r = s3.resolve_config(env=env_without_aws({"HOME": str(tmp_path / "nowhere")}))
    assert r["anonymous"] and r["access_key"] is None


def test_client_from_environment(s3_server, s3_bucket, tmp_path, monkeypatch):
    creds = _write(tmp_path / "credentials", "[p]\naws_access_key_id = K\naws_secret_access_key = verysecret\n")
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "p")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    s3.set_default_client(None)
    try:
        s3.put(f"s3://{s3_bucket}/env", b"from env")
        assert s3.get(f"s3://{s3_bucket}/env") == b"from env"
        assert s3.head(f"s3://{s3_bucket}/env")["size"] == 8
        assert [o.key for o in s3.list(f"s3://{s3_bucket}/")] == ["env"]
        with s3.open(f"s3://{s3_bucket}/env") as f:
            assert f.read() == b"from env"
        d = s3.default_client()
        assert d.profile == "p" and d.endpoint == s3_server.endpoint and "verysecret" not in repr(d)
        assert repr(d) == (
            f"dutycycle.s3.Client(endpoint='{s3_server.endpoint}', region='us-east-1', profile='p', anonymous=False)"
        )
        s3.delete(f"s3://{s3_bucket}/env")
    finally:
        s3.set_default_client(None)


# --- fork safety (in subprocesses: a crash fails the test, it does not kill pytest) ---------

FORK_SCRIPT = r"""
import os, sys, multiprocessing as mp
from dutycycle import s3
ep, bucket = sys.argv[1], sys.argv[2]
c = s3.Client(endpoint=ep, access_key="k", secret_key="s")
c.put(f"s3://{bucket}/fork/base", b"base" * 1000)
assert c.get(f"s3://{bucket}/fork/base") == b"base" * 1000   # the engine runs in the parent
pid = os.fork()
if pid == 0:
    try:
        assert c.get(f"s3://{bucket}/fork/base") == b"base" * 1000
        c.put(f"s3://{bucket}/fork/child", b"child")
        assert [o.key for o in c.list(f"s3://{bucket}/fork/")] == ["fork/base", "fork/child"]
        os._exit(0)
    except BaseException as e:
        print("child failed:", repr(e), flush=True)
        os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert c.get(f"s3://{bucket}/fork/child") == b"child"        # the parent's engine is untouched

def work(i):
    return len(c.get(f"s3://{bucket}/fork/base", offset=i, length=10))

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        assert pool.map(work, range(12)) == [10] * 12
    assert c.get(f"s3://{bucket}/fork/base", offset=0, length=4) == b"base"
    print("fork ok")
"""


def test_fork_safety(s3_server, s3_bucket):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(dutycycle.__file__)))
    r = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, s3_server.endpoint, s3_bucket],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "fork ok" in r.stdout, r.stdout + r.stderr


# --- the plain-C test under ASan/UBSan (leak-checked) ---------------------------------------


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_client_under_asan(s3_server, s3_bucket, tmp_path):
    exe = tmp_path / "test_s3_client"
    srcs = [os.path.join(ROOT, "tests", "c", "test_s3_client.c"), os.path.join(ROOT, "csrc", "core", "status.c")]
    srcs += sorted(
        os.path.join(ROOT, "csrc", "s3", f) for f in os.listdir(os.path.join(ROOT, "csrc", "s3")) if f.endswith(".c")
    )
    subprocess.run(
        [
            "gcc",
            "-std=c11",
            "-g",
            "-O1",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-I" + os.path.join(ROOT, "csrc"),
            *srcs,
            "-lcurl",
            "-lcrypto",
            "-lpthread",
            "-lm",
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    r = subprocess.run([str(exe), s3_server.endpoint, s3_bucket], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
