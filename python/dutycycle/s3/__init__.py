"""dutycycle.s3: read and write S3 (and S3-compatible) objects from the C client.

The transfers run in C (``dutycycle._C.S3Client``: one curl multi handle and one transfer thread
per client, SigV4 signing, the AWS SDKs' standard retries, range GETs that resume where they
broke); this module resolves the configuration the way the AWS CLI does and gives the client a
Pythonic face::

    from dutycycle import s3
    data = s3.get("s3://bucket/shard-000.tar")                 # the default client, from the env
    for obj in s3.list("s3://bucket/train/"):                  # streamed page by page
        print(obj.key, obj.size)
    with s3.open("s3://bucket/out.bin", "wb") as f:            # a multipart upload
        f.write(payload)                                       # an exception inside aborts it

    client = s3.Client(endpoint="http://127.0.0.1:9000", profile="minio")

Configuration, highest first (explicit arguments always win):

* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (unless a
  ``profile=`` is given), then the profile in the shared credentials file
  (``AWS_SHARED_CREDENTIALS_FILE``, default ``~/.aws/credentials``), then the same profile in the
  config file; the profile is ``profile=``, ``AWS_PROFILE``, ``AWS_DEFAULT_PROFILE`` or "default".
  ``anonymous=True`` or ``AWS_NO_SIGN_REQUEST=true`` sends unsigned requests (public buckets); with
  no credentials found anywhere the requests are unsigned too.
* region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the config file's ``region``, "us-east-1".
* endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the config file's ``s3 =`` nested
  ``endpoint_url``, its top-level ``endpoint_url``; none means AWS. A custom endpoint uses
  path-style addressing (``endpoint/bucket/key``) unless ``path_style=False`` or the config's
  nested ``addressing_style = virtual`` says otherwise.
* config file (``AWS_CONFIG_FILE``, default ``~/.aws/config``): sections ``[default]`` and
  ``[profile NAME]``; also ``ca_bundle`` (or ``AWS_CA_BUNDLE``) and ``max_attempts`` (or
  ``AWS_MAX_ATTEMPTS``).

Errors are :class:`S3Error` (a :class:`dutycycle.DataIOError`, hence an ``OSError``) with ``.code``
("NoSuchKey", "" for a transport error), ``.status`` (HTTP, 0 for transport), ``.url`` and
``.attempts``. No message or repr ever shows a key, token or signature.
"""

from __future__ import annotations

import configparser
import heapq
import io
import os
import re
import threading
from typing import Iterator, NamedTuple

from .. import _C

S3Error = _C.S3Error

__all__ = [
    "Client",
    "ObjectInfo",
    "S3Error",
    "default_client",
    "delete",
    "get",
    "head",
    "list",
    "open",
    "parse_url",
    "put",
    "set_default_client",
]

_open = open
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
DEFAULT_READ_BUFFER = 8 << 20


class ObjectInfo(NamedTuple):
    """One listing entry: an object (size in bytes) or, with a delimiter, a common prefix (size None)."""

    url: str
    key: str
    size: int | None


def parse_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/some/key"`` -> ``("bucket", "some/key")``; the key may be empty (a bucket or a
    prefix). Raises ValueError for anything that is not an s3:// URL with a valid bucket name."""
    if not isinstance(url, str):
        raise TypeError(f"an s3:// URL must be a str, got {type(url).__name__}")
    if not url.startswith("s3://"):
        raise ValueError(f"not an S3 URL (expected s3://bucket/key): {url!r}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"S3 URL without a bucket: {url!r}")
    if not _BUCKET.match(bucket):
        raise ValueError(f"S3 URL with an invalid bucket name {bucket!r}: {url!r}")
    if "\0" in key:
        raise ValueError(f"S3 key with a NUL character: {url!r}")
    return bucket, key


def _object(url: str) -> tuple[str, str]:
    bucket, key = parse_url(url)
    if not key:
        raise ValueError(f"{url!r} names a bucket, not an object (expected s3://bucket/key)")
    return bucket, key


# --- configuration ---------------------------------------------------------------------------


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def _read_ini(path: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, default_section="__no_default__")
    try:
        with _open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except FileNotFoundError:
        pass
    except (OSError, configparser.Error) as e:
        raise ValueError(f"cannot read AWS configuration file {path}: {e.__class__.__name__}") from None
    return cp


def _section(cp: configparser.ConfigParser, name: str) -> dict:
    return dict(cp.items(name)) if cp.has_section(name) else {}


def _nested(value: str | None) -> dict:
    """The ``s3 =`` block of a config file: indented ``key = value`` lines."""
    out = {}
    for line in (value or "").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def resolve_config(
    *,
    profile: str | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool | None = None,
    path_style: bool | None = None,
    ca_file: str | None = None,
    max_attempts: int | None = None,
    env=None,
) -> dict:
    """The settings a Client would use, as a dict (keys: profile, region, endpoint, access_key,
    secret_key, session_token, anonymous, path_style, ca_file, max_attempts). Mind that it holds
    the secrets: do not print it."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    explicit_profile = profile is not None
    profile = profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    creds_path = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    config_path = env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
    creds = _section(_read_ini(os.path.expanduser(creds_path)), profile)
    cfg_ini = _read_ini(os.path.expanduser(config_path))
    conf = _section(cfg_ini, "default" if profile == "default" else f"profile {profile}")
    if not conf and profile == "default":
        conf = _section(cfg_ini, "profile default")
    s3conf = _nested(conf.get("s3"))

    if anonymous is None:
        anonymous = _truthy(env.get("AWS_NO_SIGN_REQUEST", ""))
    if anonymous:
        access_key = secret_key = session_token = None
    elif access_key is None:
        if not explicit_profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            access_key, secret_key = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
            session_token = session_token or env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN")
        else:
            for src in (creds, conf):
                if src.get("aws_access_key_id") and src.get("aws_secret_access_key"):
                    access_key, secret_key = src["aws_access_key_id"], src["aws_secret_access_key"]
                    session_token = session_token or src.get("aws_session_token") or src.get("aws_security_token")
                    break
    if access_key is not None and secret_key is None:
        raise ValueError("an S3 access key was given without its secret key")
    if access_key is None:
        anonymous = True

    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region") or "us-east-1"
    endpoint = (
        endpoint
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
        or s3conf.get("endpoint_url")
        or conf.get("endpoint_url")
        or None
    )
    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
    if path_style is None:
        style = s3conf.get("addressing_style", "auto").lower()
        path_style = style == "path" or (style == "auto" and endpoint is not None)
    ca_file = ca_file or env.get("AWS_CA_BUNDLE") or conf.get("ca_bundle") or None
    if max_attempts is None:
        raw = env.get("AWS_MAX_ATTEMPTS") or conf.get("max_attempts")
        max_attempts = int(raw) if raw else 5
    return dict(
        profile=profile,
        region=region,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        anonymous=bool(anonymous),
        path_style=bool(path_style),
        ca_file=ca_file,
        max_attempts=max_attempts,
    )


# --- the client ------------------------------------------------------------------------------


class Client:
    """An S3 client: configuration resolved as the AWS CLI does (see the module docstring), then one
    C engine shared by every thread that uses this object. Thread-safe; usable after ``fork``."""

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        path_style: bool | None = None,
        max_connections: int = 16,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        verify_tls: bool = True,
        ca_file: str | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 20.0,
        *,
        profile: str | None = None,
        anonymous: bool | None = None,
    ):
        cfg = resolve_config(
            profile=profile,
            region=region,
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            anonymous=anonymous,
            path_style=path_style,
            ca_file=ca_file,
            max_attempts=max_attempts,
        )
        self.profile = cfg["profile"]
        self.region = cfg["region"]
        self.endpoint = cfg["endpoint"]
        self.anonymous = cfg["anonymous"]
        self.path_style = cfg["path_style"]
        self._c = _C.S3Client(
            endpoint=cfg["endpoint"],
            region=cfg["region"],
            access_key=cfg["access_key"],
            secret_key=cfg["secret_key"],
            session_token=cfg["session_token"],
            path_style=cfg["path_style"],
            max_connections=max_connections,
            max_attempts=cfg["max_attempts"],
            connect_timeout=connect_timeout,
            stall_timeout=stall_timeout,
            verify_tls=verify_tls,
            ca_file=cfg["ca_file"],
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )

    def __repr__(self) -> str:
        return (
            f"dutycycle.s3.Client(endpoint={self.endpoint!r}, region={self.region!r}, profile={self.profile!r}, "
            f"anonymous={self.anonymous})"
        )

    @property
    def c_client(self):
        """The ``_C.S3Client`` (for C pipelines such as the data loader)."""
        return self._c

    def get(self, url: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes, or ``length`` bytes from ``offset`` (exactly that many, else S3Error).
        A whole object is read as parallel range GETs when it is large."""
        bucket, key = _object(url)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"get {url}: offset and length must be >= 0")
        if length is None:
            if offset == 0:
                return self._c.get(bucket, key)
            length = max(self._c.head(bucket, key)[0] - offset, 0)
        return self._c.get_range(bucket, key, offset, length)

    def head(self, url: str) -> dict:
        """``{"size": bytes, "etag": str}`` of an object; a missing one raises S3Error (code NoSuchKey)."""
        size, etag = self._c.head(*_object(url))
        return {"size": size, "etag": etag}

    def exists(self, url: str) -> bool:
        try:
            self.head(url)
            return True
        except S3Error as e:
            if e.status == 404:
                return False
            raise

    def list(
        self, url: str, *, delimiter: str | None = None, recursive: bool = True, max_keys: int = 1000
    ) -> Iterator[ObjectInfo]:
        """The objects under a prefix (``s3://bucket/prefix``), streamed: one ListObjectsV2 page is
        fetched only when the previous one is used up. ``recursive=False`` (or a delimiter) also
        yields the common prefixes ("directories", size None). Keys come in S3's lexicographic order."""
        bucket, prefix = parse_url(url)
        if delimiter is None and not recursive:
            delimiter = "/"
        return self._pages(bucket, prefix, delimiter, max_keys)

    def _pages(self, bucket, prefix, delimiter, max_keys):
        token = None
        while True:
            keys, prefixes, token = self._c.list_page(bucket, prefix or None, delimiter, token, max_keys)
            entries = heapq.merge(
                (ObjectInfo(f"s3://{bucket}/{k}", k, s) for k, s in keys),
                (ObjectInfo(f"s3://{bucket}/{p}", p, None) for p in prefixes),
                key=lambda o: o.key,
            )
            yield from entries
            if not token:
                return

    def put(self, url: str, data) -> None:
        """One PUT of a bytes-like object (<= 5 GiB; use open(url, "wb") for more)."""
        bucket, key = _object(url)
        self._c.put(bucket, key, data)

    def delete(self, url: str) -> None:
        bucket, key = _object(url)
        self._c.delete(bucket, key)

    def upload(self, url: str, *, part_size: int = 0, max_inflight: int = 0):
        """A low-level multipart upload (``_C.S3Upload``: write/finish/abort)."""
        bucket, key = _object(url)
        return self._c.upload(bucket, key, part_size=part_size, max_inflight=max_inflight)

    def open(self, url: str, mode: str = "rb", *, part_size: int | None = None, max_inflight: int = 0):
        """A binary file object. "rb": seekable reader with read-ahead of ``part_size`` bytes
        (default 8 MiB). "wb": a multipart upload in parts of ``part_size`` (default 16 MiB, >= 5 MiB)
        sent in the background; close() completes it, an exception inside ``with`` aborts it."""
        if mode in ("rb", "r"):
            return S3Reader(self, url, buffer_size=part_size or DEFAULT_READ_BUFFER)
        if mode in ("wb", "w"):
            return S3Writer(self, url, part_size=part_size or 0, max_inflight=max_inflight)
        raise ValueError(f"open {url}: mode must be 'rb' or 'wb' (binary only), got {mode!r}")

    def stats(self) -> dict:
        """Counters since creation: requests, retries, bytes_in, bytes_out, connections."""
        return self._c.stats()

    def close(self) -> None:
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class S3Reader(io.BufferedIOBase):
    """A read-only, seekable view of one object: reads go through a buffer filled by range GETs of
    ``buffer_size`` bytes; a read at least that large goes straight into the caller's memory."""

    def __init__(self, client: Client, url: str, buffer_size: int = DEFAULT_READ_BUFFER):
        super().__init__()
        self._client = client
        self._bucket, self._key = _object(url)
        self.name = url
        self._size, self.etag = client._c.head(self._bucket, self._key)
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._bufsize = max(int(buffer_size), 1)

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _check(self):
        if self.closed:
            raise ValueError("I/O operation on closed S3 file")

    def _buffered(self, n: int) -> bytes:
        off = self._pos - self._buf_start
        if 0 <= off < len(self._buf):
            return self._buf[off : off + n]
        return b""

    def readinto(self, b) -> int:
        self._check()
        mv = memoryview(b).cast("B")
        want = min(len(mv), max(self._size - self._pos, 0))
        done = 0
        while done < want:
            chunk = self._buffered(want - done)
            if chunk:
                mv[done : done + len(chunk)] = chunk
                done += len(chunk)
                self._pos += len(chunk)
                continue
            left = want - done
            if left >= self._bufsize:  # large read: no copy through the buffer
                self._client._c.get_range_into(self._bucket, self._key, self._pos, mv[done:want])
                self._pos += left
                done = want
                break
            # read ahead one buffer's worth (clipped to the object's end)
            n = min(self._bufsize, self._size - self._pos)
            self._buf = self._client._c.get_range(self._bucket, self._key, self._pos, n)
            self._buf_start = self._pos
        return done

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)
        out = bytearray(min(size, max(self._size - self._pos, 0)))
        n = self.readinto(out)
        return bytes(out[:n])

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto1(self, b) -> int:
        return self.readinto(b)

    def close(self) -> None:
        self._buf = b""
        super().close()

    def __repr__(self) -> str:
        return f"<dutycycle.s3.S3Reader {self.name!r} size={self._size}>"


class S3Writer(io.BufferedIOBase):
    """A write-only file that is a multipart upload: close() completes it; leaving a ``with`` block
    on an exception (or dropping the object unclosed) aborts it, so no partial object appears."""

    def __init__(self, client: Client, url: str, part_size: int = 0, max_inflight: int = 0):
        super().__init__()
        self.name = url
        self._up = client.upload(url, part_size=part_size, max_inflight=max_inflight)
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, b) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed S3 file")
        n = self._up.write(b)
        self._written += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._up.finish()
        finally:
            super().close()

    def abort(self) -> None:
        """Drop the upload: nothing is left on the server."""
        if not self.closed:
            try:
                self._up.abort()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # an unclosed writer is abandoned, not completed: a half-written object must not appear
        try:
            if not self.closed:
                self._up.abort()
                io.BufferedIOBase.close(self)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<dutycycle.s3.S3Writer {self.name!r} written={self._written}>"


# --- module-level functions on a default client ---------------------------------------------

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client the module-level functions use, built from the environment on first use. The C
    client survives fork (the child builds its own engine); only the lock is renewed there."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def set_default_client(client: Client | None) -> None:
    """Use ``client`` for the module-level functions (None: rebuild from the environment next time)."""
    global _default
    with _default_lock:
        _default = client


def _after_fork_in_child():
    global _default_lock
    _default_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def get(url: str, *, offset: int = 0, length: int | None = None) -> bytes:
    return default_client().get(url, offset=offset, length=length)


def head(url: str) -> dict:
    return default_client().head(url)


def list(url: str, *, delimiter: str | None = None, recursive: bool = True) -> Iterator[ObjectInfo]:  # noqa: A001
    return default_client().list(url, delimiter=delimiter, recursive=recursive)


def put(url: str, data) -> None:
    default_client().put(url, data)


def delete(url: str) -> None:
    default_client().delete(url)


def open(url: str, mode: str = "rb", *, part_size: int | None = None):  # noqa: A001
    return default_client().open(url, mode, part_size=part_size)
