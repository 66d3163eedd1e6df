"""Asynchronous, verified checkpoints: ``dutycycle.checkpoint``.

    import dutycycle.checkpoint as ckpt
    ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
              f"run/step={step}.ckpt", keep_last=3)      # returns after a memcpy; written in the background
    ...
    state = ckpt.load("run")                             # the newest committed checkpoint in run/, verified
    ckpt.wait()                                          # before exiting (also done at interpreter exit)

``save`` copies every tensor of the state into a reusable staging ring (the only part that blocks)
and a C thread writes the files, computing a CRC32C per tensor, then commits: files fsynced and
renamed, the manifest written last, the directory renamed into place (atomically exchanged when
it exists), the ``last.ckpt`` link switched by a rename. A crash at any instant leaves the previous
checkpoint loadable. ``load`` verifies the manifest and every tensor's CRC32C and, with
``fallback=True``, falls back to the previous committed checkpoint. The format is in _format.py.

``state``: a nested dict/list/tuple of dutycycle tensors, NumPy arrays, PyTorch (or other DLPack)
tensors and JSON-able values. PyTorch tensors come back as PyTorch tensors, NumPy arrays as NumPy
arrays, dutycycle tensors as dutycycle tensors (on the CPU; ``map_location`` moves them).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import warnings
import weakref
from time import perf_counter

from .. import _C
from . import _format, _s3
from ._format import (
    MANIFEST,
    CheckpointCorruptError,
    CheckpointError,
    LazyTensor,
    Sharded,
    is_committed,
    materialize,
    read_manifest,
)

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "Checkpointer",
    "LazyTensor",
    "Sharded",
    "materialize",
    "consolidate",
    "find_checkpoints",
    "inspect",
    "load",
    "resolve",
    "save",
    "wait",
]

POINTER_MAGIC = "dutycycle checkpoint pointer\n"
_live = weakref.WeakSet()


class SaveStats:
    """What one save cost: `stall_s` blocked the caller (snapshot copy, plus waiting for a busy
    writer), `write_s` the background write, `bytes` written."""

    __slots__ = ("path", "stall_s", "wait_s", "write_s", "bytes", "skipped")

    def __init__(self, path):
        self.path, self.stall_s, self.wait_s, self.write_s, self.bytes, self.skipped = path, 0.0, 0.0, None, 0, False

    def __repr__(self):
        return (
            f"SaveStats(path={self.path!r}, stall_s={self.stall_s:.4f}, wait_s={self.wait_s:.4f}, "
            f"write_s={self.write_s}, bytes={self.bytes}, skipped={self.skipped})"
        )


class Checkpointer:
    """One background writer and its staging ring.

    pool_bytes: the ring's size. None: one state's size (grown when a larger state comes, reused
      otherwise). A state larger than an explicit pool_bytes still saves; the save then blocks
      until the writer has written all but pool_bytes of it.
    if_busy: a save due while the previous one still writes: "wait" (the wait is stall) or "skip".
    keep_last: after each commit, delete all but the newest k committed checkpoints written by this
      Checkpointer into the same folder (None: keep all). Deletion happens only after a newer
      checkpoint committed.
    on_error: "raise" — a failed background save raises CheckpointError at the next save(),
      wait() or poll(); "warn" — it warns and is kept in `errors`. Either way the previous
      checkpoint is untouched.
    writer_nice: how many nice levels below training the writer thread runs (Linux; default 10),
      so that where every core computes the write takes the CPU they leave.
    fsync: False skips every fsync (benchmarks of the page cache only).
    """

    def __init__(self, pool_bytes=None, if_busy="wait", keep_last=None, on_error="raise", fsync=True, writer_nice=10,
                 s3=None):
        if if_busy not in ("wait", "skip"):
            raise ValueError(f"Checkpointer: if_busy must be 'wait' or 'skip', got {if_busy!r}")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"Checkpointer: on_error must be 'raise' or 'warn', got {on_error!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"Checkpointer: keep_last must be an int >= 1 or None, got {keep_last!r}")
        if pool_bytes is not None and (not isinstance(pool_bytes, int) or pool_bytes <= 0):
            raise ValueError(f"Checkpointer: pool_bytes must be an int > 0 or None, got {pool_bytes!r}")
        self.pool_bytes, self.if_busy, self.keep_last, self.on_error, self.fsync = (
            pool_bytes,
            if_busy,
            keep_last,
            on_error,
            fsync,
        )
        self.writer_nice = int(writer_nice)
        self.s3 = s3  # the dutycycle.s3.Client for s3:// paths (None: the default one)
        self.commit_timeout_s = 600.0  # several ranks: how long rank 0 waits for the others' files
        self._w = None
        self._lock = threading.RLock()
        self._job = None  # the save in flight: dict(path, tmp, nseg, stats, after)
        self._deferred = []  # paths to delete once the in-flight save committed
        self._deferred_links = []  # (link, target) to switch once it committed
        self._committed = []  # this Checkpointer's committed checkpoints, oldest first
        self.errors = []  # CheckpointErrors of background saves (on_error="warn", or already raised)
        self._pending_error = None
        self.last = None  # SaveStats of the newest save
        self.saves = self.skips = 0
        _live.add(self)

    # ---- state ----------------------------------------------------------------------------------
    @property
    def busy(self):
        """True while a save is being written."""
        with self._lock:
            return self._job is not None and (self._w.poll() == "running" or self._uploading())

    def _uploading(self):
        t = self._job.get("upload") if self._job is not None else None
        return t is not None and t.is_alive()

    def poll(self):
        """Finish the bookkeeping of a save that completed (commit actions, retention). Returns
        True when nothing is in flight. Raises a failed save's error (on_error="raise")."""
        with self._lock:
            if self._job is not None and self._w.poll() != "running" and not self._uploading():
                self._finish()
            self._raise_pending()
            return self._job is None

    def wait(self, timeout=None):
        """Wait for the save in flight; raises its error (on_error="raise"). Returns True when
        nothing is in flight (False only when timeout ran out)."""
        with self._lock:
            if self._job is not None:
                t0 = perf_counter()
                if not self._w.wait(-1 if timeout is None else float(timeout)):
                    return False
                up = self._job.get("upload")
                if up is not None:
                    up.join(None if timeout is None else max(0.0, float(timeout) - (perf_counter() - t0)))
                    if up.is_alive():
                        return False
                self._finish()
            self._raise_pending()
            return True

    def close(self):
        """Finish the save in flight (never dropped) and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._w is not None:
                self._w.close()
                self._w = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def link_after_commit(self, link, target):
        """Switch `link` to `target` atomically once the save in flight committed (now when none is)."""
        with self._lock:
            if self._job is not None:
                self._deferred_links.append((os.path.abspath(os.fspath(link)), os.path.abspath(os.fspath(target))))
            else:
                switch_link(link, target)

    def remove_after_commit(self, path):
        """Delete checkpoint `path` once the save in flight has committed (now when none is)."""
        with self._lock:
            if self._job is not None:
                self._deferred.append(os.path.abspath(os.fspath(path)))
            else:
                remove(path)

    # ---- save -----------------------------------------------------------------------------------
    def save(self, state, path, *, link=None, info=None, block=False, rank=0, world_size=1, gather=None):
        """Snapshot `state` and write it to checkpoint directory `path` in the background.

        link: a path (e.g. ".../last.ckpt") switched atomically to this checkpoint once committed.
        info: extra manifest fields (step, epoch, world_size, strategy).
        block: wait for the write to commit before returning (a synchronous save).
        Several ranks (world_size > 1): every rank calls save at the same point with its own
          state, in which ranks' pieces of a tensor are `Sharded` values; rank r writes
          rank-r-of-N.safetensors with its pieces (rank 0 also everything not sharded), and rank 0
          commits once every rank's file is durable. gather(obj) -> [obj of every rank] on rank 0
          (None elsewhere) is the collective that tells rank 0 what the others write.
        Returns SaveStats (skipped=True when if_busy="skip" found the writer busy)."""
        t0 = perf_counter()
        multi = world_size > 1
        s3_url = s3_link = None
        if _s3.is_s3(path):  # written to a local spool as usual, then uploaded (see _s3.py)
            if multi:
                raise ValueError("Checkpointer.save: s3:// destinations take one process's saves for now; save "
                                 "several ranks to a shared file system")
            s3_url = path.rstrip("/")
            path = _s3.spool_dir(s3_url)
            if link is not None and _s3.is_s3(link):
                s3_link, link = link, None
        path = os.path.abspath(os.fspath(path))
        stats = SaveStats(s3_url or path)
        if multi and gather is None:
            raise ValueError("Checkpointer.save(world_size > 1) needs gather, the collective to rank 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"Checkpointer.save: rank {rank} is not in [0, {world_size})")
        with self._lock:
            if self._job is not None:
                if self.if_busy == "skip" and not block and not multi and self._w.poll() == "running":
                    stats.skipped = True
                    self.skips += 1
                    self.last = stats
                    return stats
                tw = perf_counter()
                self.wait()
                stats.wait_s = perf_counter() - tw
            self._raise_pending()
            info = dict(info or {})
            if "step" not in info and isinstance(state, dict):  # the state's own step counter, if it has one
                step = state.get("step", state.get("global_step"))
                info["step"] = step if isinstance(step, int) and not isinstance(step, bool) else None
            info.setdefault("step", None)
            info.setdefault("epoch", None)
            info["world_size"] = world_size if multi else info.get("world_size", 1)
            info.setdefault("strategy", "single")
            tmp = path + ".tmp"
            if rank == 0:
                _clear(tmp)  # before the gather: no rank writes into tmp until every rank passed it
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if os.path.isdir(path) and not os.path.islink(path) and not is_committed(path) and os.listdir(path):
                    raise CheckpointError(
                        f"checkpoint: '{path}' is a directory that is not a dutycycle checkpoint; "
                        "refusing to replace it"
                    )
            enc = _format.Encoder()
            doc = enc.encode(state)
            enc.wait()  # CUDA tensors: their snapshot copies are done (note: one sync point per device)
            mine = [
                e
                for e in enc.entries.values()
                if (e.whole is None and rank == 0)
                or (e.whole is not None and (e.stop > e.start or (rank == 0 and _numel(e.whole) == 0)))
            ]
            fname = _format.shard_name(rank, world_size)
            head, order = _format.safetensors_header(mine, {"format": "dutycycle", "rank": rank,
                                                            "world_size": world_size})  # fmt: skip
            nbytes = len(head) + sum(e.nbytes for e in mine)
            meta = {
                "file": fname,
                "rank": rank,
                "bytes": nbytes,
                "tensors": [
                    [e.name, e.dtype, e.whole if e.whole is not None else e.shape, e.start, e.stop, e.key] for e in mine
                ],
            }
            metas = gather(meta) if multi else [meta]
            segments = [(e.data, json.dumps(_format.crc_key(fname, e.key))) for e in order]
            self._ensure_writer(sum(e.nbytes for e in mine))
            kw = {}
            if rank == 0:
                files, tensors = {}, {}
                for mt in metas:
                    files[mt["file"]] = {"rank": mt["rank"], "bytes": mt["bytes"]}
                    for name, st, shape, a, b, key in mt["tensors"]:
                        t = tensors.setdefault(name, {"dtype": st, "shape": list(shape), "slices": []})
                        t["slices"].append({"file": mt["file"], "key": key, "start": a, "stop": b})
                for t in tensors.values():
                    t["slices"].sort(key=lambda sl: sl["start"])
                prefix, suffix = _format.manifest_parts(doc, files, tensors, {k: info[k] for k in sorted(info)})
                frags = [f"rank-{r:05d}.crc" for r in range(world_size)]
                link_arg = None
                if link is not None:
                    link = os.path.abspath(os.fspath(link))
                    link_arg = (link, os.path.relpath(path, os.path.dirname(link)))
                timeout = -1.0 if not multi else float(self.commit_timeout_s)
                kw = {"manifest": (MANIFEST, prefix, suffix, frags, timeout), "commit_to": path, "link": link_arg}
            self._w.submit(
                tmp,
                segments,
                [(fname, head, list(range(len(order))))],
                fragment=f"rank-{rank:05d}.crc",
                fsync=self.fsync,
                **kw,
            )
            del mine, order, segments, enc  # the ring has the bytes: the state may change now
            stats.stall_s = perf_counter() - t0
            stats.bytes = nbytes
            self._job = {"path": path, "tmp": tmp, "nseg": len(meta["tensors"]), "stats": stats,
                         "link": link if rank == 0 else None, "rank": rank}  # fmt: skip
            if s3_url is not None:
                self._job.update(s3_url=s3_url, s3_link=s3_link, upload=self._start_upload(path, s3_url))
            self.saves += 1
            self.last = stats
            if block:
                self.wait()
            return stats

    def _start_upload(self, local, url):
        """A thread that waits for the local commit, then uploads it (manifest last)."""
        client = _s3.client_for(self.s3)
        w = self._w
        box = {}

        def run():
            while w.poll() == "running":
                threading.Event().wait(0.005)
            if os.path.exists(os.path.join(local, MANIFEST)):  # committed (else _finish reports why not)
                try:
                    _s3.upload(local, url, client)
                except BaseException as e:  # reported by _finish in the caller's thread
                    box["error"] = e

        t = threading.Thread(target=run, name="dutycycle-ckpt-upload", daemon=True)
        t.box = box
        t.client = client
        t.start()
        return t

    def _ensure_writer(self, state_bytes):
        want = self.pool_bytes or max(state_bytes, 1)
        if self._w is None:
            self._w = _C.CheckpointWriter(want, self.writer_nice)
        elif self.pool_bytes is None and want > self._w.capacity:
            self._w.resize(want)

    def _finish(self):
        job, self._job = self._job, None
        stats = job["stats"]
        try:
            _, stats.write_s, stats.bytes = self._w.result(job["nseg"])
        except Exception as e:  # the write failed: nothing was committed, the previous checkpoint stands
            if job.get("rank", 0) == 0:
                _clear(job["tmp"])
            if job.get("link"):
                _clear(job["link"] + ".tmp")
            err = CheckpointError(f"background checkpoint save to '{job['path']}' failed: {e}")
            err.path = job["path"]
            self.errors.append(err)
            self._deferred.clear()  # nothing newer committed: keep what would have been replaced
            self._deferred_links.clear()
            if self.on_error == "raise":
                self._pending_error = err
            else:
                warnings.warn(str(err), RuntimeWarning, stacklevel=3)
            return
        if job.get("upload") is not None:  # an s3:// save: the local commit was only the spool
            up = job["upload"]
            up.join()
            _clear(job["path"])
            _clear(job["tmp"])
            err = up.box.get("error")
            if err is not None:
                e2 = CheckpointError(f"background checkpoint upload to '{job['s3_url']}' failed: {err}")
                e2.path = job["s3_url"]
                self.errors.append(e2)
                if self.on_error == "raise":
                    self._pending_error = e2
                else:
                    warnings.warn(str(e2), RuntimeWarning, stacklevel=3)
                return
            self._committed = [p for p in self._committed if p != job["s3_url"]] + [job["s3_url"]]
            if job.get("s3_link"):
                _s3.write_pointer(job["s3_link"], job["s3_url"], up.client)
            if self.keep_last is not None:
                while len(self._committed) > self.keep_last:
                    old = self._committed.pop(0)
                    _s3.remove(old, up.client) if _s3.is_s3(old) else remove(old)
            return
        if job.get("rank", 0) != 0:
            return  # rank 0 commits, links and deletes
        _clear(job["tmp"])  # an exchanged-out older checkpoint of the same name
        _clear(job["path"] + ".tmp.old")
        self._committed = [p for p in self._committed if p != job["path"]] + [job["path"]]
        if job.get("link"):
            _clear(job["link"] + ".tmp")  # a directory the link replaced (exchanged out)
        for link, target in self._deferred_links:
            switch_link(link, target)
        self._deferred_links.clear()
        for p in self._deferred:
            if p != job["path"]:
                remove(p)
        self._deferred.clear()
        if self.keep_last is not None:
            while len(self._committed) > self.keep_last:
                remove(self._committed.pop(0))

    def _raise_pending(self):
        err, self._pending_error = self._pending_error, None
        if err is not None:
            raise err


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _clear(path):
    """Remove a file, link or directory tree if it exists (leftovers of a save)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def switch_link(link, target):
    """Point `link` at checkpoint `target` atomically: a relative symlink made at link.tmp and
    renamed over link (a pointer file where the file system has no symlinks)."""
    link, target = os.path.abspath(os.fspath(link)), os.path.abspath(os.fspath(target))
    parent = os.path.dirname(link)
    tmp = link + ".tmp"
    _clear(tmp)
    try:
        os.symlink(os.path.relpath(target, parent), tmp)
    except OSError:
        with open(tmp, "w") as f:
            f.write(POINTER_MAGIC + os.path.relpath(target, parent))
            f.flush()
            os.fsync(f.fileno())
    if os.path.isdir(link) and not os.path.islink(link):
        aside = link + ".tmp.old"  # a checkpoint saved under the link's name: moved aside, then removed
        _clear(aside)
        os.rename(link, aside)
        os.replace(tmp, link)
        remove(aside)
    else:
        os.replace(tmp, link)
    _fsync_dir(parent)


def remove(path):
    """Delete a checkpoint (directory, single file or link). The manifest goes first, so a crash
    midway leaves an uncommitted directory (cleaned up later), never a committed-looking half."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        m = os.path.join(path, MANIFEST)
        if os.path.exists(m):
            os.unlink(m)
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


# ---- the module-level API (one default Checkpointer) -------------------------------------------
_default = None
_default_lock = threading.Lock()


def _get_default():
    global _default
    with _default_lock:
        if _default is None:
            _default = Checkpointer()
        return _default


def save(state, path, *, keep_last=None, link=None, block=False, **info):
    """Save `state` to checkpoint directory `path` in the background (see Checkpointer.save).
    keep_last: keep only the newest k checkpoints this process saved into that folder."""
    c = _get_default()
    if keep_last is not None:
        c.keep_last = keep_last
    return c.save(state, path, link=link, info=info or None, block=block)


def wait(timeout=None):
    """Wait for the background save of the module-level save(); raises its error."""
    return _get_default().wait(timeout) if _default is not None else True


def _wait_all():
    for c in list(_live):
        try:
            if c._job is not None:
                c.wait()
        except Exception as e:  # at exit: report, never lose the message
            warnings.warn(f"checkpoint: {e}", RuntimeWarning)


atexit.register(_wait_all)


# ---- finding and loading -------------------------------------------------------------------------
def _read_pointer(path):
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(POINTER_MAGIC.encode()):
        target = head[len(POINTER_MAGIC) :].decode("utf-8", "replace").strip()
        return os.path.join(os.path.dirname(path), target)
    return None


def _order_key(path):
    try:
        m = read_manifest(path)
    except (CheckpointError, OSError):
        return (-1, 0.0)
    step = m.get("step")
    return (step if step is not None else -1, float(m.get("created_unix") or 0.0))


def find_checkpoints(folder):
    """The committed checkpoints directly in `folder`, newest first (by step, then time)."""
    folder = os.fspath(folder)
    out = []
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        if name.endswith((".tmp", ".tmp.old")) or os.path.islink(p):
            continue
        if is_committed(p):
            out.append(p)
    return sorted(out, key=_order_key, reverse=True)


def resolve(path):
    """(kind, path) of what `path` names: ("dir", a committed checkpoint directory) — from the
    directory itself, a last.ckpt link or pointer file, or a folder of checkpoints (the newest) —
    or ("file", a single-file checkpoint of earlier dutycycle versions)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not os.path.exists(target):
            raise FileNotFoundError(f"checkpoint link '{path}' points at '{target}', which does not exist")
        path = target
    if os.path.isfile(path):
        target = _read_pointer(path)
        return ("dir", target) if target is not None else ("file", path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    if os.path.exists(os.path.join(path, MANIFEST)):
        return "dir", path
    found = find_checkpoints(path)
    if found:
        return "dir", found[0]
    if any(n.endswith(".safetensors") for n in os.listdir(path)):
        return "dir", path  # shards without a manifest: read_manifest says it never committed
    raise FileNotFoundError(f"no committed checkpoint in '{path}'")


def _candidates(path):
    kind, p = resolve(path)
    yield kind, p
    if kind == "dir":
        for q in find_checkpoints(os.path.dirname(p)):
            if q != p and _order_key(q) <= _order_key(p):
                yield "dir", q


def load_dir(ckpt_dir, verify=True, lazy=None):
    m = read_manifest(ckpt_dir)
    if lazy is None:
        arrays = _format.assemble(ckpt_dir, m, verify=verify)
    else:  # entry by entry: the lazy tensors are read later, and only the parts asked for
        reader, tags = _format.ShardReader(ckpt_dir, m), _format.tags_of(m["state"])
        arrays = {}
        for n, t in m["tensors"].items():
            lt = _format.LazyTensor(reader, n, tags.get(n, "__tensor__"))
            arrays[n] = lt if lazy(n) else lt._flat(0, lt.numel()).reshape(t["shape"])
    return _format.decode_state(m, arrays, os.path.join(ckpt_dir, MANIFEST)), m


def load(path, *, fallback=False, verify=True, map_location=None, return_path=False, lazy=None, s3=None):
    """Load a checkpoint: a checkpoint directory, a `last.ckpt` link, or a folder of checkpoints
    (the newest committed one), verifying the manifest and every tensor's CRC32C. A corrupt or
    incomplete checkpoint raises CheckpointCorruptError naming the file and tensor; with
    fallback=True the previous committed checkpoint in the same folder is loaded instead (with a
    warning saying why). Single-file checkpoints of earlier dutycycle versions load too. lazy: a
    predicate on tensor names; those come back as LazyTensor (read(start, stop) reads only the
    slices needed: a ZeRO rank loading at another world size reads its own part, never the whole).
    An s3:// path (a checkpoint or a last.ckpt pointer object) is downloaded and verified the same
    way, through `s3` (a dutycycle.s3.Client; default: the environment's)."""
    for c in list(_live):  # a save of this process may still be writing what is asked for
        if c._job is not None:
            c.wait()
    if _s3.is_s3(path):
        if lazy is not None or fallback:
            raise ValueError("checkpoint.load: lazy= and fallback= are for local checkpoints, not s3:// ones")
        tmp, url = _s3.download(path, _s3.client_for(s3))
        try:
            loaded = load_dir(tmp, verify, None)[0]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
            from .._functions import _map_tensors

            loaded = _map_tensors(loaded, lambda t: t.to(map_location))
        return (loaded, url) if return_path else loaded
    first_err, loaded = None, None
    for kind, p in _candidates(path):
        try:
            if kind == "file":
                from ..trainer.checkpoint_io import load_checkpoint

                loaded = load_checkpoint(p)
            else:
                loaded = load_dir(p, verify, lazy)[0]
        except CheckpointCorruptError as e:
            if not fallback:
                raise
            first_err = first_err or e
            warnings.warn(f"{e}; falling back to an older checkpoint", RuntimeWarning, stacklevel=2)
            continue
        if first_err is not None:
            warnings.warn(f"loaded the previous committed checkpoint '{p}'", RuntimeWarning, stacklevel=2)
        break
    else:
        raise first_err
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        from .._functions import _map_tensors

        loaded = _map_tensors(loaded, lambda t: t.to(map_location))
    return (loaded, p) if return_path else loaded


def inspect(path, verify=True):
    """A summary of a checkpoint: its manifest fields, files, tensors and (verify) the CRC check."""
    kind, p = resolve(path)
    if kind == "file":
        from ..trainer.checkpoint_io import read_safetensors

        header, arrays = read_safetensors(p)
        return {
            "path": p,
            "kind": "single-file (earlier format, no CRCs)",
            "tensors": {k: {"dtype": header[k]["dtype"], "shape": list(a.shape)} for k, a in arrays.items()},
            "verified": None,
        }
    m = read_manifest(p)
    out = {
        "path": p,
        "kind": "directory",
        "format_version": m["format_version"],
        "step": m.get("step"),
        "epoch": m.get("epoch"),
        "world_size": m.get("world_size"),
        "strategy": m.get("strategy"),
        "created_unix": m.get("created_unix"),
        "files": m["files"],
        "tensors": {
            n: {"dtype": t["dtype"], "shape": t["shape"], "slices": len(t["slices"])} for n, t in m["tensors"].items()
        },
        "bytes": sum(f["bytes"] for f in m["files"].values()),
        "verified": None,
    }
    if verify:
        try:
            for f in m["files"]:
                _format.verify_file(p, f, m)
            out["verified"] = True
        except CheckpointCorruptError as e:
            out["verified"] = False
            out["error"] = str(e)
    return out


def consolidate(path, out):
    """Write checkpoint `path` as ONE safetensors file `out` that the safetensors library and
    PyTorch users load (tensor names as in the manifest; the state's structure is in the file's
    metadata, so dutycycle.load(out) gives the nested state back). Verifies as it reads."""
    from ..trainer.checkpoint_io import save_checkpoint

    kind, p = resolve(path)
    if kind == "file":
        shutil.copyfile(p, out)
        return out
    state, _ = load_dir(p, verify=True)
    save_checkpoint(os.fspath(out), _as_plain(state))
    return out


def _as_plain(obj):
    """The state with PyTorch tensors as NumPy arrays (the single-file writer knows dc and NumPy)."""
    from .._functions import map_leaves

    return map_leaves(obj, lambda v: v.detach().cpu().numpy() if _format._is_torch(v) else v)


def cleanup_leftovers(folder, older_than=None):
    """Remove what interrupted saves left in `folder`: `*.ckpt.tmp` / `*.tmp.old` directories and
    link temporaries, and checkpoint directories that never committed (no manifest). Only entries
    older than `older_than` (a time.time()) when given. Returns the removed paths."""
    folder = os.fspath(folder)
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        try:
            if older_than is not None and os.lstat(p).st_mtime >= older_than:
                continue
        except OSError:
            continue
        uncommitted = (
            name.endswith(".ckpt")
            and os.path.isdir(p)
            and not os.path.islink(p)
            and not os.path.exists(os.path.join(p, MANIFEST))
            and any(n.endswith((".safetensors", ".safetensors.tmp", ".crc")) for n in os.listdir(p))
        )
        if name.endswith((".ckpt.tmp", ".tmp.old")) or uncommitted:
            _clear(p)
            removed.append(p)
    return removed

