"""Test helpers for anything that talks to S3: a local moto server, a fault-injecting reverse proxy
in front of it, and pytest fixtures. Everything listens on 127.0.0.1 only.

Use from a test file (tests/ is on sys.path: pytest puts the rootdir-conftest's directory there)::

    from s3_helpers import FaultProxy, s3_bucket, s3_server  # noqa: F401  (fixtures by import)

    def test_something(s3_server, s3_bucket):
        c = dutycycle.s3.Client(**s3_server.client_kwargs)
        c.put(f"s3://{s3_bucket}/k", b"x")

    def test_faults(s3_server, s3_bucket):
        with FaultProxy(s3_server.endpoint, rate=0.2, seed=1, stall_s=3) as proxy:
            c = dutycycle.s3.Client(**s3_server.client_kwargs, endpoint=proxy.endpoint, stall_timeout=1)
            ...
            assert proxy.faults["503"] > 0

* ``moto_server()``: context manager, an in-process ``ThreadedMotoServer`` on a free port; yields its
  endpoint URL.
* ``s3_server`` (session fixture): an ``S3Server`` with ``.endpoint``, ``.boto3`` (a boto3 S3
  client), ``.env`` (AWS_* variables pointing at it) and ``.client_kwargs`` (for
  ``dutycycle.s3.Client``). Its state is shared by the session: use a fresh bucket per test.
* ``s3_bucket`` (per-test fixture): the name of a new empty bucket.
* ``FaultProxy(upstream, rate=0.0, seed=0, kinds=FAULT_KINDS, stall_s=5.0, methods=None)``: an HTTP/1.1
  keep-alive reverse proxy. On a fraction ``rate`` of requests (seeded RNG) it injects one of:
  "503" (SlowDown XML), "500" (InternalError XML), "reset" (connection reset mid-body), "truncate"
  (Content-Length promises more than is sent, then close), "stall" (send part, then go silent for
  ``stall_s``). ``proxy.force(kind, n=1)`` queues faults for the next n requests regardless of the
  rate. Counters: ``proxy.requests``, ``proxy.faults[kind]``, ``proxy.connections`` (accepted from
  clients), ``proxy.max_concurrent`` (requests in flight at once). ``strip_range=True`` drops the
  Range header (the server answers 200 with the whole object, as some servers do);
  ``gather=("PUT", n)`` holds such requests until n are in flight together (proves parallelism
  without timing). ``ssl_context`` (an ``ssl.SSLContext`` with a server certificate) makes it an
  HTTPS endpoint; see ``self_signed_cert()``. For requests
  other than GET the body-level faults happen before forwarding (nothing reaches the server), so a
  retried PUT/POST is never applied twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import uuid

import pytest

FAULT_KINDS = ("503", "500", "reset", "truncate", "stall")
_CREDS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    """An in-process moto server on 127.0.0.1; yields "http://127.0.0.1:PORT"."""
    from moto.server import ThreadedMotoServer

    last = None
    for _ in range(5):
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        try:
            server.start()
        except OSError as e:  # the port was taken in between
            last = e
            continue
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
        return
    raise RuntimeError(f"could not start moto: {last}")


class S3Server:
    def __init__(self, endpoint: str):
        import boto3

        self.endpoint = endpoint
        self.env = dict(_CREDS, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1")
        self.client_kwargs = dict(
            endpoint=endpoint,
            region="us-east-1",
            access_key=_CREDS["AWS_ACCESS_KEY_ID"],
            secret_key=_CREDS["AWS_SECRET_ACCESS_KEY"],
            path_style=True,
        )
        self.boto3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=_CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDS["AWS_SECRET_ACCESS_KEY"],
        )

    def put_many(self, bucket: str, keys, body: bytes = b"v"):
        """Create many small objects fast: straight into the in-process moto backend when there is
        one (ThreadedMotoServer shares this process), else through boto3."""
        try:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.s3.models import s3_backends

            backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
            for k in keys:
                backend.put_object(bucket, k, body)
        except Exception:
            for k in keys:
                self.boto3.put_object(Bucket=bucket, Key=k, Body=body)

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.boto3.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    with moto_server() as endpoint:
        yield S3Server(endpoint)


@pytest.fixture
def s3_bucket(s3_server):
    return s3_server.new_bucket()


# --- the fault proxy -------------------------------------------------------------------------


def _error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


def _read_head(sock: socket.socket, buf: bytearray) -> bytes | None:
    """Bytes up to and including the blank line ending an HTTP head, or None at EOF."""
    while True:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            head = bytes(buf[: i + 4])
            del buf[: i + 4]
            return head
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(max(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError("peer closed mid-body")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    hs = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hs.append((k.strip(), v.strip()))
    return lines[0], hs


def _get(hs, name, default=None):
    for k, v in hs:
        if k.lower() == name:
            return v
    return default


def _rst_close(sock: socket.socket):
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """A keep-alive HTTP reverse proxy that injects faults (see the module docstring)."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        seed: int = 0,
        kinds=FAULT_KINDS,
        stall_s: float = 5.0,
        methods=None,
        strip_range: bool = False,
        gather=None,
        ssl_context=None,
    ):
        assert upstream.startswith("http://")
        host, _, port = upstream[7:].rstrip("/").partition(":")
        self.upstream = (host, int(port or 80))
        self.rate = rate
        self.kinds = tuple(kinds)
        self.stall_s = stall_s
        self.methods = None if methods is None else {m.upper() for m in methods}
        self.strip_range = strip_range
        self.ssl_context = ssl_context  # serve HTTPS to the client (the upstream stays plain HTTP)
        self.gather = gather  # (METHOD, n): such requests wait (up to 10 s) until n are in flight together
        self._gathered = threading.Condition()
        self._gather_count = 0
        self.inflight = 0
        self.max_concurrent = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._forced: list[str] = []
        self._stop = threading.Event()
        self.requests = 0
        self.connections = 0
        self.faults = {k: 0 for k in FAULT_KINDS}
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)  # accept() wakes to see close()
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # configuration while running
    def force(self, kind: str, n: int = 1):
        """The next n requests (that pass the methods filter) get this fault."""
        assert kind in FAULT_KINDS, kind
        with self._lock:
            self._forced += [kind] * n

    def set_rate(self, rate: float):
        with self._lock:
            self.rate = rate

    @property
    def total_faults(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    def close(self):
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # the proxy itself
    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            with self._lock:
                self.connections += 1
                self._clients.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _pick(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.methods is not None and method not in self.methods:
                return None
            if self._forced:
                kind = self._forced.pop(0)
            elif self.rate > 0 and self._rng.random() < self.rate:
                kind = self._rng.choice(self.kinds)
            else:
                return None
            self.faults[kind] += 1
            return kind

    def _serve(self, c: socket.socket):
        buf = bytearray()
        try:
            if self.ssl_context is not None:
                c = self.ssl_context.wrap_socket(c, server_side=True)
            while not self._stop.is_set():
                head = _read_head(c, buf)
                if head is None:
                    return
                line, hs = _headers(head)
                method = line.split(" ", 1)[0].upper()
                if (_get(hs, "expect") or "").lower() == "100-continue":
                    c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if (_get(hs, "transfer-encoding") or "").lower() == "chunked":
                    raise ValueError("FaultProxy does not take chunked request bodies")
                body = _read_exact(c, buf, int(_get(hs, "content-length", "0")))
                kind = self._pick(method)
                if kind in ("503", "500"):
                    code, msg, status = (
                        ("SlowDown", "Please reduce your request rate.", "503 Slow Down")
                        if kind == "503"
                        else (
                            "InternalError",
                            "We encountered an internal error. Please try again.",
                            "500 Internal Server Error",
                        )
                    )
                    x = _error_xml(code, msg)
                    head_out = f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(x)}\r\n\r\n"
                    c.sendall(head_out.encode() + x)
                    continue
                if kind is not None and method != "GET":
                    # nothing reaches the server: a retried PUT/POST is never applied twice
                    if kind == "stall":
                        self._stop.wait(self.stall_s)
                        c.close()
                    elif kind == "reset":
                        _rst_close(c)
                    else:
                        c.close()
                    return
                with self._lock:
                    self.inflight += 1
                    self.max_concurrent = max(self.max_concurrent, self.inflight)
                try:
                    self._maybe_gather(method)
                    status_line, rhs, rbody = self._forward(head, body, method)
                finally:
                    with self._lock:
                        self.inflight -= 1
                out_h = [
                    (k, v)
                    for k, v in rhs
                    if k.lower() not in ("connection", "content-length", "transfer-encoding", "keep-alive")
                ]
                resp_head = status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_h)
                resp_head += (
                    f"Content-Length: {len(rbody)}\r\n"
                    if method != "HEAD"
                    else f"Content-Length: {_get(rhs, 'content-length', '0')}\r\n"
                )
                resp_head += "Connection: keep-alive\r\n\r\n"
                if kind is None or method == "HEAD" or len(rbody) < 2:
                    if kind is not None:  # nothing to cut: fail the connection instead
                        c.sendall(resp_head.encode("latin-1"))
                        _rst_close(c)
                        return
                    c.sendall(resp_head.encode("latin-1") + (b"" if method == "HEAD" else rbody))
                    continue
                half = rbody[: len(rbody) // 2]
                c.sendall(resp_head.encode("latin-1") + half)
                if kind == "reset":
                    _rst_close(c)
                elif kind == "truncate":
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
                else:  # stall: go silent (longer than the client's stall timeout), then close
                    self._stop.wait(self.stall_s)
                    c.close()
                return
        except (OSError, ValueError, ConnectionError):  # ssl.SSLError is an OSError
            return
        finally:
            with self._lock:
                self._clients.discard(c)
            with contextlib.suppress(OSError):
                c.close()

    def _maybe_gather(self, method: str):
        if not self.gather or method != self.gather[0].upper():
            return
        with self._gathered:
            self._gather_count += 1
            self._gathered.notify_all()
            self._gathered.wait_for(lambda: self._gather_count >= self.gather[1] or self._stop.is_set(), timeout=10)

    def _forward(self, head: bytes, body: bytes, method: str):
        line, hs = _headers(head)
        drop = {"connection", "keep-alive", "expect"} | ({"range"} if self.strip_range else set())
        hs = [(k, v) for k, v in hs if k.lower() not in drop]
        req = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "Connection: close\r\n\r\n"
        with socket.create_connection(self.upstream, timeout=30) as u:
            u.sendall(req.encode("latin-1") + body)
            ubuf = bytearray()
            rhead = _read_head(u, ubuf)
            if rhead is None:
                raise ConnectionError("upstream closed")
            status_line, rhs = _headers(rhead)
            status_line = "HTTP/1.1" + status_line[8:]  # moto speaks 1.0; the client side keeps alive
            if method == "HEAD":
                return status_line, rhs, b""
            n = _get(rhs, "content-length")
            if n is not None:
                rbody = _read_exact(u, ubuf, int(n))
            else:
                while True:
                    chunk = u.recv(65536)
                    if not chunk:
                        break
                    ubuf += chunk
                rbody = bytes(ubuf)
            return status_line, rhs, rbody


def self_signed_cert(directory) -> tuple[str, str]:
    """(cert.pem, key.pem) of a self-signed certificate for 127.0.0.1 made with the openssl CLI."""
    import subprocess

    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def env_without_aws(extra=None) -> dict:
    """os.environ without any AWS_* variable (plus extra): for config-resolution tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra or {})
    return env
