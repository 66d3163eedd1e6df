"""WebDataset shards: ShardedDataset streams them (local files or s3://) through the C pipeline.

A shard is a tar file whose members are grouped into samples by basename (``000123.x.npy``,
``000123.txt`` and ``000123.jpg`` are the fields of sample ``000123``), as the ``webdataset``
package writes and reads them. ShardedDataset fetches, parses, shuffles, decodes and batches in C
threads (csrc/loader/pipeline.c) with the GIL released, ahead of the training step.

The epoch's order, and why resume is exact and elastic
------------------------------------------------------
Everything below is a function of (seed, epoch, the shard list and its sample counts), never of
thread timing:

1. the shards are permuted (seeded by seed and epoch; identity when shuffle=False), which lays
   every sample of the epoch out in one global order;
2. the global order is cut into world_size equal contiguous slices, one per rank — every rank gets
   the same number of samples, so the same number of batches (uneven="drop" drops the last
   N mod world_size samples of the epoch; "pad" repeats samples from the start instead);
3. each rank's slice goes through a shuffle buffer whose choices depend only on (key, emission
   number), so the buffer's contents after k samples can be computed without reading any data.

The resume state is therefore tiny and the same on every rank: the epoch, and how many samples
each rank has consumed. Loaded at the same world size it continues exactly where the epoch was
(same order as an uninterrupted run, nothing lost or repeated). Loaded at another world size, it
replays the saved ranks' shuffles to find which samples they had not delivered yet and splits
exactly those between the new ranks; the state keeps each such change ("generations"), so it can
be resumed again, elastically or not.

Sample counts come from an index (webdataset's ``wids`` JSON format, written by ShardWriter and
by ``dutycycle shard index``); without one the shards are counted once by reading them (with a
warning) and the counts are cached under ~/.cache/dutycycle/shard-index.
"""

import hashlib
import json
import os
import threading
import warnings
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor

from .. import _C
from .dataset import IterableDataset

__all__ = ["ShardedDataset", "expand_urls", "jpeg", "read_index", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEC = {"auto": 0, "bytes": 1, "txt": 2, "text": 2, "int": 3, "npy": 4, "jpg": 5, "jpeg": 5, "image": 5,
        "json": 6, "skip": 7}
_CROP = {"none": 0, "center": 1, "random": 2, "random_resized": 3}
_KIND_TENSOR, _KIND_BYTES, _KIND_TEXT, _KIND_JSON = 0, 1, 2, 3
_MASK = (1 << 64) - 1
_STATE_VERSION = 1


def jpeg(resize=0, crop=None, *, mode="center", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=False,
         dtype="uint8", mean=None, std=None):
    """A JPEG decoder spec for ShardedDataset's ``decode=``: decode to RGB, resize the shorter
    side to ``resize`` (0: keep), crop ``crop`` (int or (h, w); None: no crop) at the center, at a
    random position (mode="random") or as torchvision's RandomResizedCrop (mode="random_resized",
    with scale/ratio), flip horizontally with probability 0.5 when flip=True (or a float p), and
    give uint8 HWC, or float32/bfloat16 CHW as (x/255 - mean) / std. Random choices are seeded
    per sample (seed, epoch, sample), so a resumed epoch crops exactly as the original."""
    if mode not in _CROP or mode == "none":
        raise ValueError(f"jpeg: mode must be 'center', 'random' or 'random_resized', not {mode!r}")
    if dtype not in ("uint8", "float32", "bfloat16"):
        dtype = getattr(dtype, "name", str(dtype)).replace("torch.", "").replace("dutycycle.", "")
        if dtype not in ("uint8", "float32", "bfloat16"):
            raise ValueError(f"jpeg: dtype must be uint8, float32 or bfloat16, not {dtype!r}")
    if crop is None:
        ch = cw = 0
        cmode = 0
    else:
        ch, cw = (crop, crop) if isinstance(crop, int) else tuple(crop)
        cmode = _CROP[mode]
    if mean is not None and dtype == "uint8":
        raise ValueError("jpeg: mean/std normalise float output: give dtype='float32' or 'bfloat16'")
    return {"__decoder__": "jpeg", "resize": int(resize), "crop": cmode, "crop_h": int(ch), "crop_w": int(cw),
            "scale": tuple(map(float, scale)), "ratio": tuple(map(float, ratio)),
            "flip_p": float(0.5 if flip is True else (flip or 0.0)), "dtype": dtype,
            "mean": tuple(mean or (0.0, 0.0, 0.0)), "std": tuple(std or (1.0, 1.0, 1.0))}


# ---- URLs ------------------------------------------------------------------------------------------

def expand_urls(urls):
    """A brace pattern ("s3://b/train-{000000..000127}.tar"), a list of them, or a "::"-separated
    string (webdataset's) -> the list of shard URLs. A pattern that expands to nothing, or a
    local path that does not exist, raises naming it."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [os.fspath(urls)]
    out = []
    for u in urls:
        u = os.fspath(u)
        for part in u.split("::"):
            if not part:
                continue
            out.extend(_C.expand_braces(part) if "{" in part else [part])
    if not out:
        raise ValueError(f"shard URLs {urls!r} expand to no shard")
    return out


def _split(url):
    """url -> ("file", path) or ("s3", bucket, key)."""
    if url.startswith("s3://"):
        rest = url[5:]
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise ValueError(f"shard URL {url!r}: expected s3://bucket/key")
        return ("s3", bucket, key)
    if url.startswith("file://"):
        return ("file", url[7:])
    if "://" in url.split("/")[0] + "/" and not url.startswith("/"):
        raise ValueError(f"shard URL {url!r}: only local paths, file:// and s3:// are supported")
    return ("file", url)


def _join(base, rel):
    """rel relative to the directory of index URL base (absolute rel URLs pass through)."""
    if "://" in rel or rel.startswith("/"):
        return rel
    d = base.rsplit("/", 1)[0] if "/" in base else "."
    return rel if d == "." else f"{d}/{rel}"


def _s3_client(client):
    from .. import s3 as _s3

    c = client if client is not None else _s3.default_client()
    return c


def _c_s3(client):
    """The _C.S3Client inside a dutycycle.s3.Client."""
    return client._c


def _read_bytes(url, client):
    kind = _split(url)
    if kind[0] == "file":
        with open(kind[1], "rb") as f:
            return f.read()
    return _s3_client(client).get(url)


def _exists(url, client):
    kind = _split(url)
    if kind[0] == "file":
        return os.path.exists(kind[1])
    from .. import s3 as _s3

    try:
        _s3_client(client).head(url)
        return True
    except _s3.S3Error as e:
        if e.status in (403, 404) or e.code in ("NoSuchKey", "NotFound", "404"):
            return False
        raise


def read_index(url, client=None):
    """{shard URL: (nsamples, filesize)} from a wids-style JSON index (URLs resolved against it)."""
    raw = _read_bytes(url, client)  # an OSError / S3Error names the URL itself
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"shard index {url!r} is not valid JSON: {e}") from None
    shards = doc.get("shardlist") if isinstance(doc, dict) else None
    if not isinstance(shards, list):
        raise ValueError(f"shard index {url!r}: no 'shardlist' list (expected webdataset's wids index format)")
    out = {}
    for i, e in enumerate(shards):
        try:
            out[_join(url, e["url"])] = (int(e["nsamples"]), int(e["filesize"]) if e.get("filesize") is not None
                                         else None)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"shard index {url!r}: entry {i} needs 'url' and 'nsamples'") from None
    return out


def index_stem(name):
    """'train-000012.tar' -> 'train': the shard name without extension, trailing digits, '-_.'."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith(".tar"):
        base = base[:-4]
    stem = base.rstrip("0123456789").rstrip("-_.")
    return stem or "shards"


def default_index_url(first_url):
    d = first_url.rsplit("/", 1)[0] if "/" in first_url else "."
    name = index_stem(first_url) + ".index.json"
    return name if d == "." else f"{d}/{name}"


# ---- the dataset ---------------------------------------------------------------------------------

class _Shard:
    __slots__ = ("url", "kind", "path", "bucket", "key", "size", "nsamples")

    def __init__(self, url):
        self.url = url
        k = _split(url)
        self.kind = k[0]
        self.path = k[1] if k[0] == "file" else None
        self.bucket, self.key = (k[1], k[2]) if k[0] == "s3" else (None, None)
        self.size = None
        self.nsamples = None

    def c_tuple(self):
        return (self.url, self.path, self.bucket, self.key, int(self.size), int(self.nsamples))


def _rank_info(rank, world_size):
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    from .. import distributed as dist

    if dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        from ..distributed._env import launcher_env

        info = launcher_env()
        r, w = info["rank"], info["world_size"]
    return (int(rank) if rank is not None else r), (int(world_size) if world_size is not None else w)


class ShardedDataset(IterableDataset):
    """Samples (or batches) from WebDataset tar shards, read, decoded and batched in C threads.

    urls: a brace pattern ("s3://bucket/train-{000000..000127}.tar", "data/train-{0000..0009}.tar"),
        a list of URLs/paths, or "::"-joined patterns. Local paths, file:// and s3://.
    shuffle, shuffle_buffer, seed: shard order and a shuffle buffer of that many samples, seeded
        by (seed, epoch): the same seed gives the same order on any machine and thread count.
    rank, world_size: this process's share (default: the initialised process group, else the
        launcher's environment). Every rank yields the same number of batches; uneven="drop"
        (default) drops the N mod world_size samples of an epoch that do not divide evenly,
        "pad" repeats samples from the epoch's start instead.
    decode: "auto" (fields decoded by extension: .npy arrays, .jpg RGB uint8 HWC, .txt/.text str,
        .json objects, .cls/.index/.id/.label ints, everything else bytes), or a dict
        field -> "npy" | "jpg" | jpeg(...) | "txt" | "int" | "json" | "bytes" | "skip" | a Python
        callable (given the raw bytes; runs in the consuming thread); other fields keep "auto".
    fields: keep only these fields (others are dropped before decoding).
    batch_size: None yields one dict per sample; an int yields dicts of stacked tensors (arrays
        and ints) and lists (str, bytes, objects), with drop_last as DataLoader's.
    transform: a callable applied to every yielded dict (in the consuming thread).
    index: the wids-style index (sample counts) URL; default: "<stem>.index.json" next to the
        first shard ("train-000000.tar" -> "train.index.json"), then "index.json"; without one the
        shards are counted once by reading them (warned; cached).
    prefetch_bytes: the fetch budget (bytes fetched ahead and not yet parsed); chunk_bytes: one
        read / range GET; prefetch_batches: decoded batches kept ready; num_threads: decode
        threads (default: the cores, at most 8); fetch_threads: concurrent reads (default 8 for
        S3, 2 for local files). Memory: prefetch_bytes + the shuffle buffer's samples +
        prefetch_batches batches.
    s3: a dutycycle.s3.Client (default: one configured from the environment like the AWS CLI).

    Iterating continues where the last iteration stopped; once an epoch is exhausted the next
    iteration starts the next epoch. set_epoch(e) jumps to the start of epoch e (the Trainer and
    DistributedSampler users call it every epoch). state_dict()/load_state_dict() resume
    mid-epoch exactly, or elastically at another world size (see the module docstring)."""

    def __init__(self, urls, *, shuffle=False, shuffle_buffer=1000, seed=0, rank=None, world_size=None,
                 decode="auto", fields=None, batch_size=None, drop_last=False, uneven="drop", transform=None,
                 index=None, prefetch_bytes=256 << 20, chunk_bytes=8 << 20, prefetch_batches=4, num_threads=None,
                 fetch_threads=None, s3=None, max_member_bytes=1 << 30):
        if uneven not in ("drop", "pad"):
            raise ValueError(f"uneven must be 'drop' or 'pad', not {uneven!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, not {batch_size!r}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, not {shuffle_buffer}")
        for name, v in (("prefetch_bytes", prefetch_bytes), ("chunk_bytes", chunk_bytes),
                        ("prefetch_batches", prefetch_batches)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        self._given = urls if isinstance(urls, str) else None  # the pattern, for messages
        self.urls = expand_urls(urls)
        self.shuffle = bool(shuffle)
        self.shuffle_buffer = int(shuffle_buffer) if shuffle else 1
        self.seed = int(seed) & _MASK
        self.rank, self.world_size = _rank_info(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.uneven = uneven
        self.transform = transform
        self.prefetch_bytes, self.chunk_bytes, self.prefetch_batches = prefetch_bytes, chunk_bytes, prefetch_batches
        self.max_member_bytes = int(max_member_bytes)
        self._s3 = s3
        self._any_s3 = any(u.startswith("s3://") for u in self.urls)
        self.num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
        self.fetch_threads = fetch_threads or (8 if self._any_s3 else 2)
        self._fields, self._py_decoders, self._keep_unknown = self._decode_specs(decode, fields)
        self._shards = [_Shard(u) for u in self.urls]
        self._index_url = index
        self._counted = False
        self._lock = threading.Lock()
        self._epoch = 0
        self._gens = None  # [{"world_size", "consumed"}] of the running epoch (None: at its start)
        self._iter = None

    # ---- decoders ----
    def _decode_specs(self, decode, fields):
        specs, py = {}, {}
        if decode is None or decode == "auto":
            decode = {}
        if not isinstance(decode, dict):
            raise TypeError(f"decode must be 'auto' or a dict field -> decoder, not {type(decode).__name__}")
        for f, d in decode.items():
            f = f.lower()
            if callable(d):
                py[f] = d
                specs[f] = (f, _DEC["bytes"], None)
            elif isinstance(d, dict):
                opts = {k: v for k, v in d.items() if k != "__decoder__"}
                specs[f] = (f, _DEC["jpg"], opts)
            elif isinstance(d, str) and d in _DEC:
                specs[f] = (f, _DEC[d], jpeg() if _DEC[d] == 5 else None)
                if specs[f][2] is not None:
                    specs[f] = (f, 5, {k: v for k, v in specs[f][2].items() if k != "__decoder__"})
            else:
                raise ValueError(f"decode[{f!r}]: {d!r} is not a decoder ({', '.join(sorted(_DEC))}, jpeg(...) "
                                 "or a callable)")
        keep_unknown = True
        if fields is not None:
            keep_unknown = False
            for f in fields:
                f = f.lower()
                specs.setdefault(f, (f, _DEC["auto"], None))
        return list(specs.values()), py, keep_unknown

    # ---- shard sizes and counts ----
    def _client(self):
        if self._s3 is None and self._any_s3:
            self._s3 = _s3_client(None)
        return self._s3

    def _prepare(self):
        """Sizes and sample counts of every shard (index, stat/HEAD, or a counting pass)."""
        if self._counted:
            return
        with self._lock:
            if self._counted:
                return
            client = self._client()
            counts = {}
            cands = [self._index_url] if self._index_url else [default_index_url(self.urls[0]),
                                                               _join(self.urls[0], "index.json")]
            for c in cands:
                if self._index_url or _exists(c, client):
                    counts = read_index(c, client)
                    break
            missing = []
            for s in self._shards:
                hit = counts.get(s.url) or counts.get(os.path.abspath(s.path) if s.path else s.url)
                if hit is None and s.path:
                    for k, v in counts.items():
                        if k.startswith(("/", ".")) or "://" not in k:
                            if os.path.abspath(k) == os.path.abspath(s.path):
                                hit = v
                                break
                if hit is not None:
                    s.nsamples, s.size = hit[0], hit[1]
                if s.path:  # a local file's size is a stat away: never trust the index for it
                    s.size = None
                if s.size is None:
                    if s.path:
                        try:
                            s.size = os.stat(s.path).st_size
                        except OSError as e:
                            raise FileNotFoundError(f"shard {s.url!r}: {e.strerror}") from None
                    else:
                        s.size = client.head(s.url)["size"]
                if s.nsamples is None:
                    missing.append(s)
            if missing:
                self._count(missing, client)
            self._counted = True

    def _count(self, shards, client):
        cache_dir = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "dutycycle",
                                 "shard-index")

        def ident(s):
            if s.path:
                st = os.stat(s.path)
                return f"{os.path.abspath(s.path)} {st.st_size} {st.st_mtime_ns}"
            return f"{s.url} {s.size}"

        idents = [ident(s) for s in shards]
        cache = os.path.join(cache_dir, hashlib.sha256("\n".join(idents).encode()).hexdigest()[:32] + ".json")
        try:
            with open(cache) as f:
                got = json.load(f)
            if isinstance(got, list) and len(got) == len(shards):
                for s, n in zip(shards, got):
                    s.nsamples = int(n)
                return
        except (OSError, ValueError):
            pass
        if len(shards) > 1 or shards[0].url.startswith("s3://"):
            where = default_index_url(self.urls[0])
            what = f"'{self._given}'" if self._given else " ".join(self.urls[:3]) + (" ..." if len(self.urls) > 3
                                                                                   else "")
            warnings.warn(f"no sample-count index for {len(shards)} shard(s): counting them by reading them once "
                          f"(write one with `dutycycle shard index {what}` (it goes to {where}) to skip this)",
                          stacklevel=4)
        cs3 = _c_s3(client) if client is not None else None

        def one(s):
            return _C.shard_count(s.url, s.path, s.bucket, s.key, int(s.size), cs3, self.chunk_bytes)

        with ThreadPoolExecutor(max_workers=min(8, len(shards))) as ex:
            for s, n in zip(shards, ex.map(one, shards)):
                s.nsamples = n
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump([s.nsamples for s in shards], f)
            os.replace(tmp, cache)
        except OSError:
            pass

    # ---- the epoch's plan ----
    def _epoch_key(self, epoch):
        return _C.shard_hash(self.seed, epoch & _MASK)

    def _global_runs(self, epoch):
        n = len(self._shards)
        order = _C.shard_permutation(n, self._epoch_key(epoch)) if self.shuffle else range(n)
        return [(i, 0, self._shards[i].nsamples) for i in order if self._shards[i].nsamples > 0]

    def _rank_key(self, epoch, gen, rank):
        return _C.shard_hash(self._epoch_key(epoch), (gen << 32) | rank)

    @staticmethod
    def _total(runs):
        return sum(e - s for _, s, e in runs)

    def _slice_runs(self, runs, start, stop):
        """Positions [start, stop) of the sample sequence runs describe (wrapping past its end)."""
        total = self._total(runs)
        out = []
        if total == 0 or stop <= start:
            return out
        cum = [0]
        for _, s, e in runs:
            cum.append(cum[-1] + e - s)
        pos = start
        while pos < stop:
            p = pos % total
            i = bisect_right(cum, p) - 1
            sh, s, e = runs[i]
            take = min(stop - pos, (e - s) - (p - cum[i]))
            a = s + p - cum[i]
            if out and out[-1][0] == sh and out[-1][2] == a:
                out[-1] = (sh, out[-1][1], a + take)
            else:
                out.append((sh, a, a + take))
            pos += take
        return out

    def _split_ranks(self, runs, world):
        total = self._total(runs)
        q = total // world if self.uneven == "drop" else -(-total // world)
        return [self._slice_runs(runs, r * q, (r + 1) * q) for r in range(world)], q

    @staticmethod
    def _positions(runs, positions):
        """Stream positions -> (shard, ordinal)."""
        cum = [0]
        for _, s, e in runs:
            cum.append(cum[-1] + e - s)
        out = []
        for p in positions:
            i = bisect_right(cum, p) - 1
            out.append((runs[i][0], runs[i][1] + p - cum[i]))
        return out

    def _plan(self, epoch, gens):
        """(runs, prefill, first_emission, key, per-rank count) for this rank in the last generation."""
        items = self._global_runs(epoch)
        cap = self.shuffle_buffer
        for g, gen in enumerate(gens):
            world, k = gen["world_size"], gen["consumed"]
            per_rank, q = self._split_ranks(items, world)
            if g == len(gens) - 1:
                if self.rank >= world:
                    raise ValueError(f"rank {self.rank} is outside the state's world size {world}")
                mine = per_rank[self.rank]
                key = self._rank_key(epoch, g, self.rank)
                if k > q:
                    raise ValueError(f"the loader state says {k} samples were consumed of {q} per rank")
                slots, nxt, _ = _C.shuffle_simulate(q, cap, key, k)
                return (self._slice_runs(mine, nxt, q) if nxt < q else [], self._positions(mine, slots), k, key, q)
            # a world-size change: what the saved ranks had not delivered, in the epoch's order
            left = []
            for r in range(world):
                key = self._rank_key(epoch, g, r)
                slots, nxt, _ = _C.shuffle_simulate(q, cap, key, k)
                left.extend(self._positions(per_rank[r], slots))
                for sh, s, e in (self._slice_runs(per_rank[r], nxt, q) if nxt < q else []):
                    left.extend((sh, o) for o in range(s, e))
            rank_of = {sh: i for i, (sh, _, _) in enumerate(items)}  # the epoch's shard order
            left.sort(key=lambda x: (rank_of[x[0]], x[1]))
            items = []
            for sh, o in left:
                if items and items[-1][0] == sh and items[-1][2] == o:
                    items[-1] = (sh, items[-1][1], o + 1)
                else:
                    items.append((sh, o, o + 1))
        raise AssertionError("unreachable")

    def _batches_for(self, n):
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self):
        """Batches (or samples, with batch_size=None) this rank yields in a whole epoch."""
        self._prepare()
        total = sum(s.nsamples for s in self._shards)
        q = total // self.world_size if self.uneven == "drop" else -(-total // self.world_size)
        return self._batches_for(q)

    @property
    def num_samples(self):
        """Samples in all shards."""
        self._prepare()
        return sum(s.nsamples for s in self._shards)

    # ---- epochs and state ----
    def set_epoch(self, epoch):
        """Start epoch `epoch` from its beginning (a no-op when it is the running epoch)."""
        epoch = int(epoch)
        if epoch != self._epoch:
            self._close_iter()
            self._epoch, self._gens = epoch, None

    @property
    def epoch(self):
        return self._epoch

    def state_dict(self):
        """A small JSON-able dict: where this epoch is (the same on every rank when all ranks
        consume the same number of batches, as the Trainer's and DDP's loops do)."""
        self._prepare()
        gens = self._gens or [{"world_size": self.world_size, "consumed": 0}]
        return {"version": _STATE_VERSION, "epoch": self._epoch, "seed": self.seed, "shuffle": self.shuffle,
                "shuffle_buffer": self.shuffle_buffer, "uneven": self.uneven,
                "num_samples": sum(s.nsamples for s in self._shards), "num_shards": len(self._shards),
                "generations": [dict(g) for g in gens]}

    def load_state_dict(self, state):
        """Continue from state_dict(): exactly at the same world size, elastically at another."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a ShardedDataset state (version {_STATE_VERSION}): {state!r:.200}")
        self._prepare()
        mine = {"seed": self.seed, "shuffle": self.shuffle, "shuffle_buffer": self.shuffle_buffer,
                "uneven": self.uneven, "num_samples": sum(s.nsamples for s in self._shards),
                "num_shards": len(self._shards)}
        for k, v in mine.items():
            if state.get(k) != v:
                raise ValueError(f"ShardedDataset.load_state_dict: the state's {k} is {state.get(k)!r}, this "
                                 f"dataset's is {v!r} (a state resumes the same shards with the same settings)")
        gens = [dict(world_size=int(g["world_size"]), consumed=int(g["consumed"])) for g in state["generations"]]
        if gens[-1]["world_size"] != self.world_size:
            gens.append({"world_size": self.world_size, "consumed": 0})
        self._close_iter()
        self._epoch = int(state["epoch"])
        self._gens = gens

    # ---- iteration ----
    def _close_iter(self):
        it, self._iter = self._iter, None
        if it is not None:
            it.close()

    def __iter__(self):
        self._prepare()
        self._close_iter()
        if self._gens is None:
            self._gens = [{"world_size": self.world_size, "consumed": 0}]
        self._iter = _ShardIterator(self)
        return self._iter

    def _epoch_done(self):
        self._epoch, self._gens = self._epoch + 1, None

    def _pipeline(self):
        runs, prefill, first, key, _ = self._plan(self._epoch, self._gens)
        client = self._client() if self._any_s3 else None
        return _C.ShardPipeline(
            [s.c_tuple() for s in self._shards], runs, prefill, self._fields,
            shuffle_capacity=self.shuffle_buffer, shuffle_key=key, first_emission=first,
            batch_size=self.batch_size or 1, drop_last=bool(self.batch_size and self.drop_last),
            prefetch_batches=self.prefetch_batches, prefetch_bytes=self.prefetch_bytes, chunk_bytes=self.chunk_bytes,
            fetch_threads=self.fetch_threads, decode_threads=self.num_threads, keep_unknown=self._keep_unknown,
            image_seed=_C.shard_hash(self._epoch_key(self._epoch), 0x1A6E), s3=_c_s3(client) if client else None,
            max_member_bytes=self.max_member_bytes)


class _ShardIterator:
    """One pass over the rest of the dataset's running epoch."""

    def __init__(self, ds):
        self.ds = ds
        self.pid = os.getpid()
        self.pipe = ds._pipeline()
        self.done = False

    def __iter__(self):
        return self

    def close(self):
        p, self.pipe = self.pipe, None
        if p is not None:
            p.close()

    def stats(self):
        return self.pipe.stats() if self.pipe is not None else None

    def __next__(self):
        ds = self.ds
        if self.done or ds._iter is not self:
            raise StopIteration
        if os.getpid() != self.pid:  # forked: the parent's threads do not exist here; rebuild from the state
            self.pipe = None
            self.pid = os.getpid()
            self.pipe = ds._pipeline()
        b = self.pipe.next()
        if b is None:
            self.done = True
            self.close()
            ds._iter = None
            ds._epoch_done()
            raise StopIteration
        ds._gens[-1]["consumed"] += b["n"]
        out = _to_user(ds, b)
        return ds.transform(out) if ds.transform is not None else out

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _to_user(ds, b):
    urls = [ds._shards[i].url for i in b["shards"]]
    py = ds._py_decoders
    if ds.batch_size is None:
        out = {"__key__": b["keys"][0], "__url__": urls[0]}
        for name, kind, val in b["columns"]:
            if kind == _KIND_TENSOR:
                v = val[0]
                out[name] = v.item() if v.ndim == 0 and str(v.dtype).endswith("int64") else v
            elif kind == _KIND_JSON:
                out[name] = _json(val[0], b["keys"][0], name, urls[0])
            else:
                v = val[0]
                out[name] = _py_decode(py[name], v, b["keys"][0], name, urls[0]) if name in py else v
        return out
    out = {"__key__": b["keys"], "__url__": urls}
    for name, kind, val in b["columns"]:
        if kind == _KIND_JSON:
            val = [_json(v, k, name, u) for v, k, u in zip(val, b["keys"], urls)]
        elif name in py:
            val = [_py_decode(py[name], v, k, name, u) for v, k, u in zip(val, b["keys"], urls)]
        out[name] = val
    return out


def _json(s, key, field, url):
    try:
        return json.loads(s)
    except ValueError as e:
        from .. import DataFormatError

        raise DataFormatError(f"shard '{url}', sample '{key}', field '{field}': invalid JSON: {e}") from None


def _py_decode(fn, data, key, field, url):
    try:
        return fn(data)
    except Exception as e:
        e.add_note(f"while decoding field '{field}' of sample '{key}' in shard '{url}'")
        raise
