"""ShardWriter: WebDataset tar shards (webdataset's API), to a local directory or s3://.

    with ShardWriter("out/train-%06d.tar", maxcount=10000) as w:
        for i, (x, y) in enumerate(data):
            w.write({"__key__": f"{i:08d}", "x.npy": x, "cls": y})

Each sample's fields become tar members ``<key>.<field>``, in the order given; values are
encoded by type: bytes as they are, str as UTF-8, int/float as decimal text, NumPy arrays and
dutycycle tensors as .npy, dicts/lists as JSON (for a field ending in "json"). A new shard starts
when the current one reaches maxcount samples or maxsize bytes. Closing writes the shards'
sample counts to "<stem>.index.json" next to them (webdataset's wids index format), which
ShardedDataset reads instead of counting.

Local shards are written as "<name>.tmp" and renamed when complete; S3 shards are multipart
uploads completed on close (aborted if the writer fails), so a reader never sees half a shard.
"""

import io
import json
import os
import tarfile
import time

__all__ = ["ShardWriter", "encode_field", "write_index"]


def _npy_bytes(a):
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_field(field, value):
    """The bytes of one field of a sample (see the module docstring for the rules)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return str(int(value)).encode()
    if isinstance(value, (int, float)):
        return str(value).encode()
    if field.endswith("json"):
        return json.dumps(value).encode()
    mod = type(value).__module__.split(".")[0]
    if mod == "numpy":
        if field.endswith("npy"):
            return _npy_bytes(value)
        if getattr(value, "ndim", 1) == 0:
            return str(value.item()).encode()
    if mod in ("dutycycle", "torch") and hasattr(value, "numpy"):
        if field.endswith("npy"):
            return _npy_bytes(value.detach().cpu().numpy())
        if value.ndim == 0:
            return str(value.item()).encode()
    if isinstance(value, (dict, list, tuple)) and not field.endswith("json"):
        raise TypeError(f"field {field!r}: a {type(value).__name__} needs a field name ending in 'json'")
    raise TypeError(f"field {field!r}: cannot encode a {type(value).__name__} (give bytes, str, a number, an "
                    "array for a '.npy' field, or JSON data for a '.json' field)")


def write_index(url, shards, name=None, client=None):
    """Write a wids-style index: shards = [(url relative to the index, nsamples, filesize)]."""
    doc = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name or "",
           "shardlist": [{"url": u, "nsamples": int(n), "filesize": int(sz)} for u, n, sz in shards]}
    data = (json.dumps(doc, indent=1) + "\n").encode()
    if url.startswith("s3://"):
        from .. import s3 as _s3

        (client or _s3.default_client()).put(url, data)
        return
    path = url[7:] if url.startswith("file://") else url
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _CountingFile:
    """A write-only file object that counts bytes (tarfile's stream target)."""

    def __init__(self, f):
        self.f = f
        self.n = 0
        self.dead = False  # aborted: tarfile's own clean-up writes go nowhere

    def write(self, b):
        if not self.dead:
            self.f.write(b)
            self.n += len(b)
        return len(b)

    def tell(self):
        return self.n


class ShardWriter:
    """Write samples into numbered tar shards (see the module docstring).

    pattern: "out/train-%06d.tar" or "s3://bucket/prefix/train-%06d.tar" (a printf pattern of
    the shard number). maxcount / maxsize: when to start the next shard. start_shard: the first
    number. index: write "<stem>.index.json" next to the shards on close (default True).
    s3: a dutycycle.s3.Client for s3:// patterns (default: from the environment)."""

    def __init__(self, pattern, maxcount=100000, maxsize=3e9, *, start_shard=0, index=True, s3=None,
                 verbose=False):
        pattern = os.fspath(pattern)
        try:
            pattern % 0
        except TypeError:
            raise ValueError(f"ShardWriter pattern {pattern!r} needs one %d-style field for the shard number") from None
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount ({maxcount}) and maxsize ({maxsize}) must be positive")
        self.pattern = pattern
        self.maxcount, self.maxsize = int(maxcount), float(maxsize)
        self.shard = int(start_shard)
        self.index = index
        self.verbose = verbose
        self._s3 = s3
        self._is_s3 = pattern.startswith("s3://")
        if not self._is_s3:
            d = os.path.dirname(pattern[7:] if pattern.startswith("file://") else pattern)
            if d:
                os.makedirs(d, exist_ok=True)
        self._tar = None
        self._out = None
        self._count = 0
        self._mtime = time.time()
        self.written = []  # [(url, nsamples, filesize)]
        self.total = 0
        self._closed = False

    # ---- one shard ----
    def _client(self):
        if self._s3 is None:
            from .. import s3 as _s3

            self._s3 = _s3.default_client()
        return self._s3

    def _open_shard(self):
        url = self.pattern % self.shard
        self.shard += 1
        if self._is_s3:
            raw = self._client().open(url, "wb")
            tmp = None
        else:
            path = url[7:] if url.startswith("file://") else url
            tmp = f"{path}.tmp"
            raw = open(tmp, "wb")
        self._out = (url, raw, tmp)
        self._counter = _CountingFile(raw)
        self._bytes = 0  # headers + padded data so far (tarfile buffers, so the file lags behind)
        self._tar = tarfile.open(fileobj=self._counter, mode="w|", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _finish_shard(self, ok=True):
        if self._tar is None:
            return
        url, raw, tmp = self._out
        tar, self._tar, self._out = self._tar, None, None
        try:
            if ok:
                tar.close()  # the end-of-archive blocks
                if tmp is not None:
                    raw.flush()
                    os.fsync(raw.fileno())
                raw.close()  # S3: completes the multipart upload
                if tmp is not None:
                    os.replace(tmp, tmp[:-4])
                self.written.append((url, self._count, self._counter.n))
                if self.verbose:
                    print(f"# wrote {url}: {self._count} samples, {self._counter.n} bytes", flush=True)
            else:
                self._counter.dead = True
                tar.close()
                if hasattr(raw, "abort"):
                    raw.abort()
                else:
                    raw.close()
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # ---- API ----
    def write(self, sample):
        """Append one sample: a dict with "__key__" and its fields."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        if not isinstance(sample, dict) or "__key__" not in sample:
            raise ValueError("ShardWriter.write: a sample is a dict with a '__key__' entry")
        key = str(sample["__key__"])
        base = key.rsplit("/", 1)[-1]
        if not key or "." in base:
            raise ValueError(f"sample key {key!r}: must be non-empty with no '.' in its last component (the part "
                             "after the first '.' is the field name)")
        members = []
        for field, value in sample.items():
            if field.startswith("__"):
                continue
            if not field or field.startswith("."):
                raise ValueError(f"sample {key!r}: bad field name {field!r}")
            if value is None:
                continue
            members.append((f"{key}.{field}", encode_field(field, value)))
        if not members:
            raise ValueError(f"sample {key!r} has no fields")
        size = sum(512 + (len(d) + 511) // 512 * 512 for _, d in members)
        if self._tar is not None and (self._count >= self.maxcount or self._bytes + size > self.maxsize):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = self._mtime
            info.mode = 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
        self._bytes += size
        self._count += 1
        self.total += 1

    def close(self):
        """Finish the last shard and write the index."""
        if self._closed:
            return
        self._closed = True
        self._finish_shard()
        if self.index and self.written:
            from .shards import index_stem

            first = self.written[0][0]
            d = first.rsplit("/", 1)[0] if "/" in first else ""
            url = (f"{d}/" if d else "") + index_stem(first) + ".index.json"
            write_index(url, [(u.rsplit("/", 1)[-1], n, sz) for u, n, sz in self.written],
                        name=index_stem(first), client=self._s3 if self._is_s3 else None)
            self.index_url = url

    def abort(self):
        """Drop the shard being written (its temporary file, or its multipart upload)."""
        self._closed = True
        self._finish_shard(ok=False)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
