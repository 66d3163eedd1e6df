"""Checkpoints to and from s3:// (Checkpointer.save / load with an s3:// path).

A save is first written by the C writer, exactly as a local one (snapshot into the staging ring,
CRC32C per tensor, manifest last, atomic commit), into a spool directory on local disk
($DUTYCYCLE_CKPT_SPOOL, default <tmp>/dutycycle-ckpt-spool). Once that committed, a background
thread uploads it: every shard file as a multipart upload (parts in parallel, aborted on any
failure), and the manifest object last — so an S3 checkpoint without its manifest.json is one that
never committed, the same rule as on disk, and a reader never sees half of one. The spool copy is
deleted after the upload. A "last" link is an S3 object holding the target's key (S3 has no
symlinks). Deleting a checkpoint deletes its manifest first.

Loading downloads the manifest and the files it lists into a temporary directory and reads them
with the local loader (CRC32C verified)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

from ._format import MANIFEST

POINTER_MAGIC = "dutycycle checkpoint pointer\n"
PART = 16 << 20


def is_s3(path) -> bool:
    return isinstance(path, str) and path.startswith("s3://")


def client_for(client=None):
    from .. import s3

    return client if client is not None else s3.default_client()


def spool_dir(url: str) -> str:
    """Where a save to `url` is written before its upload (one directory per destination)."""
    root = os.environ.get("DUTYCYCLE_CKPT_SPOOL") or os.path.join(tempfile.gettempdir(), "dutycycle-ckpt-spool")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    return os.path.join(root, hashlib.sha256(url.encode()).hexdigest()[:16], name)


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def _upload_file(client, path: str, url: str):
    size = os.path.getsize(path)
    if size <= PART:
        with open(path, "rb") as f:
            client.put(url, f.read())
        return
    with open(path, "rb") as f, client.open(url, "wb", part_size=PART) as out:
        while True:
            b = f.read(PART)
            if not b:
                break
            out.write(b)


def upload(local_dir: str, url: str, client) -> None:
    """Upload a committed checkpoint directory: its files in parallel, the manifest last."""
    names = sorted(n for n in os.listdir(local_dir) if n != MANIFEST and not n.endswith(".tmp"))
    if not os.path.exists(os.path.join(local_dir, MANIFEST)):
        raise FileNotFoundError(f"'{local_dir}' has no {MANIFEST}: it never committed")
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as ex:
        list(ex.map(lambda n: _upload_file(client, os.path.join(local_dir, n), _join(url, n)), names))
    _upload_file(client, os.path.join(local_dir, MANIFEST), _join(url, MANIFEST))  # the commit


def write_pointer(link_url: str, target_url: str, client) -> None:
    client.put(link_url, (POINTER_MAGIC + target_url).encode())


def resolve(url: str, client) -> str:
    """The checkpoint `url` names: itself (it has a manifest) or the target of a pointer object."""
    from .. import s3

    if client.exists(_join(url, MANIFEST)):
        return url.rstrip("/")
    try:
        data = client.get(url)
    except s3.S3Error as e:
        if e.status == 404 or e.code in ("NoSuchKey", "NotFound"):
            raise FileNotFoundError(f"no committed checkpoint at '{url}' (no {_join(url, MANIFEST)})") from None
        raise
    text = data.decode("utf-8", "replace")
    if not text.startswith(POINTER_MAGIC):
        raise FileNotFoundError(f"'{url}' is neither a checkpoint nor a checkpoint pointer")
    return resolve(text[len(POINTER_MAGIC):].strip(), client)


def download(url: str, client) -> tuple[str, str]:
    """(temporary directory holding the checkpoint's manifest and files, the resolved URL)."""
    url = resolve(url, client)
    tmp = tempfile.mkdtemp(prefix="dutycycle-ckpt-")
    try:
        manifest = client.get(_join(url, MANIFEST))
        files = list(json.loads(manifest).get("files", {}))
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as ex:
            datas = list(ex.map(lambda n: client.get(_join(url, n)), files))
        for n, d in zip(files, datas):
            if "/" in n or n.startswith("."):
                raise ValueError(f"checkpoint manifest {_join(url, MANIFEST)} names a bad file {n!r}")
            with open(os.path.join(tmp, n), "wb") as f:
                f.write(d)
        with open(os.path.join(tmp, MANIFEST), "wb") as f:
            f.write(manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, url


def remove(url: str, client) -> None:
    """Delete an S3 checkpoint: the manifest first (it is no longer committed), then the rest."""
    bucket_prefix = url.rstrip("/") + "/"
    from .. import s3

    try:
        client.delete(_join(url, MANIFEST))
    except s3.S3Error as e:
        if e.status != 404:
            raise
    for obj in list(client.list(bucket_prefix)):
        client.delete(obj.url)
