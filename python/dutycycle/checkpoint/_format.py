"""The on-disk format of a dutycycle checkpoint directory, and its verified reader.

A checkpoint is a directory (named as Lightning names its files: ``epoch=1-step=300.ckpt``):

    rank-00000-of-00001.safetensors   one valid safetensors file per rank shard
    manifest.json                     written last: its presence means the checkpoint is complete

manifest.json::

    {"format": "dutycycle-checkpoint", "format_version": 1,
     "dutycycle_version": "...", "created_unix": 1764763200.5,
     "step": 300, "epoch": 1, "world_size": 4, "strategy": "ddp",
     "files": {"rank-00000-of-00004.safetensors": {"rank": 0, "bytes": 123}, ...},
     "tensors": {"model/transformer.h.0.attn.c_attn.weight":
                     {"dtype": "F32", "shape": [768, 2304],
                      "slices": [{"file": "rank-00000-of-00004.safetensors",
                                  "key": "model/transformer.h.0.attn.c_attn.weight",
                                  "start": 0, "stop": 1769472}]}, ...},
     "state": <the nested state as JSON; each tensor a reference {"__tensor__": name}>,
     "crc32c": {"rank-00000-of-00004.safetensors:model/...": "8 hex digits", ...}}

A tensor is stored as one or more slices of its flattened (row-major) elements, each a 1-D or
full-shape entry of one shard file; an unsharded tensor has one slice with its own shape. Tensor
names are the state's own dict paths joined by "/" (the Trainer's "state_dict" and
"optimizer_states" appear as "model" and "optimizer"); everything that is not a tensor — loop
counters, callbacks' state, hyper-parameters — is JSON in "state", never part of a name.
References to tensors: {"__tensor__": n} (a dutycycle tensor), {"__ndarray__": n} (a NumPy array),
{"__torch__": n} (a PyTorch tensor, given back as one when torch is importable); {"__tuple__": [...]},
{"__dict__": [[k, v], ...]} (non-str keys) and {"__float__": "nan"} keep what JSON cannot;
{"__inline__": {"kind", "dtype", "shape", "data"}} is a tensor of callbacks', loops' or RNG state kept
in the JSON itself (INLINE below).
No pickle anywhere.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import time

import numpy as np

import dutycycle as dc

from .. import _C
from ..trainer.checkpoint_io import _ST_TO_NP, read_safetensors

FORMAT = "dutycycle-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ALIASES = {"state_dict": "model", "optimizer_states": "optimizer"}  # top-level keys -> name prefix
# Top-level keys of a Trainer checkpoint whose tensors stay inline in the manifest's JSON: callbacks'
# and loops' state (their keys embed settings and paths, which must never become tensor names).
INLINE = frozenset(("callbacks", "loops", "rng_states", "lr_schedulers"))
_TAGS = ("__tensor__", "__ndarray__", "__torch__", "__tuple__", "__dict__", "__float__", "__inline__")

_DC_ST = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_ST_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in _ST_TO_NP.items()}
_NP_ST = {np.dtype(v).str: k for k, v in _ST_TO_NP.items() if k != "BF16"}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a checkpoint on disk fails verification."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint on disk is incomplete, truncated or fails its CRC32C check (names file and tensor)."""


def shard_name(rank, world_size):
    return f"rank-{rank:05d}-of-{world_size:05d}.safetensors"


# ---- encode -------------------------------------------------------------------------------------
class Sharded:
    """This rank's part of a tensor that ranks hold in pieces (ZeRO's optimizer state): `shape` is
    the whole tensor's, `start`/`stop` the range of its flattened elements held here, `local` a
    1-D tensor/array of those stop - start elements (start == stop: this rank holds none)."""

    __slots__ = ("local", "shape", "start", "stop")

    def __init__(self, local, shape, start, stop):
        self.local, self.shape, self.start, self.stop = local, [int(d) for d in shape], int(start), int(stop)
        n = self.local.numel() if isinstance(self.local, dc.Tensor) else int(np.asarray(self.local).size)
        if n != self.stop - self.start:
            raise ValueError(f"Sharded: local part has {n} elements, range [{start}, {stop}) needs {stop - start}")


class Entry:
    """One tensor of the state: its name, safetensors dtype, shape and a zero-copy byte view. A
    sharded one also has the whole tensor's shape and the range of it this entry holds."""

    __slots__ = ("name", "dtype", "shape", "data", "keep", "whole", "start", "stop")

    def __init__(self, name, dtype, shape, data, keep, whole=None, start=0, stop=None):
        self.name, self.dtype, self.shape, self.data, self.keep = name, dtype, list(shape), data, keep
        self.whole, self.start = whole, start
        self.stop = stop if stop is not None else _prod(self.shape)

    @property
    def key(self):
        """The entry's name inside its shard file (unique there)."""
        return self.name if self.whole is None else f"{self.name}@{self.start}"

    @property
    def nbytes(self):
        return self.data.nbytes


def _raw_view(t):
    """The bytes of a contiguous CPU dc.Tensor as a uint8 NumPy view (no copy; keep t alive)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return np.empty(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(t.data_ptr()))


def _dc_entry(t):
    t = t.detach()
    if t.device.type == "cuda":  # into pinned memory on the copy stream; Encoder.wait() syncs once
        t = dc.cuda._snapshot_to_host(t)
    elif t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    return _DC_ST[t.dtype.name], t.shape, _raw_view(t), t


def _np_entry(a, path):
    key = a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str
    st = _NP_ST.get(key)
    if st is None:
        raise TypeError(f"checkpoint: NumPy dtype {a.dtype} at '{path}' has no safetensors dtype")
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return st, a.shape, a.reshape(-1).view(np.uint8), a


def _is_torch(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "__dlpack__") and hasattr(obj, "dtype")


def _torch_entry(t, path):
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return "BF16", tuple(t.shape), t.view(torch.int16).numpy().reshape(-1).view(np.uint8), t
    st, shape, data, _ = _np_entry(t.numpy(), path)
    return st, tuple(t.shape), data, t


class Encoder:
    """Walks a state, collecting tensors (as Entries) and returning the JSON document."""

    def __init__(self):
        self.entries = {}

    def wait(self):
        """Wait for the device -> pinned host copies of CUDA tensors (one sync per device); before
        the entries' bytes are read."""
        if dc.cuda.is_available():
            dc.cuda._snapshot_wait()

    def _add(self, path, st, shape, data, keep, sharded=None):
        name, n = path or "tensor", 1
        while name in self.entries:
            name, n = f"{path}#{n}", n + 1
        if sharded is None:
            self.entries[name] = Entry(name, st, shape, data, keep)
        else:
            self.entries[name] = Entry(name, st, [sharded.stop - sharded.start], data, keep, sharded.shape,
                                       sharded.start, sharded.stop)  # fmt: skip
        return name

    def encode(self, obj, path="", inline=False):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, Sharded):
            loc = obj.local
            if isinstance(loc, dc.Tensor):
                return {"__tensor__": self._add(path, *_dc_entry(loc.reshape(-1)), sharded=obj)}
            return {"__ndarray__": self._add(path, *_np_entry(np.asarray(loc).reshape(-1), path), sharded=obj)}
        if isinstance(obj, dc.Tensor):
            if inline:
                return _inline("tensor", *_dc_entry(obj))
            return {"__tensor__": self._add(path, *_dc_entry(obj))}
        if isinstance(obj, np.ndarray):
            if inline:
                return _inline("ndarray", *_np_entry(obj, path))
            return {"__ndarray__": self._add(path, *_np_entry(obj, path))}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), path, inline)
        if _is_torch(obj):
            if inline:
                return _inline("torch", *_torch_entry(obj, path))
            return {"__torch__": self._add(path, *_torch_entry(obj, path))}
        if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
            return self.encode(np.from_dlpack(obj), path, inline)
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}/{i}", inline) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}/{i}", inline) for i, v in enumerate(obj)]
        if isinstance(obj, dict):

            def sub(k):
                k = ALIASES.get(k, k) if not path and isinstance(k, str) else k
                return f"{path}/{k}" if path else str(k)

            def inl(k):
                return inline or (not path and k in INLINE)

            if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
                return {k: self.encode(v, sub(k), inl(k)) for k, v in obj.items()}
            for k in obj:
                if not (k is None or isinstance(k, (str, int, float, bool, tuple))):
                    raise TypeError(
                        f"checkpoint: dict key {k!r} at '{path or '<root>'}' is not a str/int/float/bool/tuple"
                    )
            return {"__dict__": [[self.encode(k, "", True), self.encode(v, sub(k), inl(k))] for k, v in obj.items()]}
        if isinstance(obj, (dc.dtype, dc.device)):
            return str(obj)
        hint = "; save its .state_dict()" if hasattr(obj, "state_dict") else ""
        raise TypeError(
            f"checkpoint: cannot store a {type(obj).__name__} at '{path or '<root>'}' (only tensors, NumPy arrays, "
            f"DLPack tensors, numbers, strings, None and dicts/lists/tuples of them; dutycycle never pickles){hint}"
        )


def _prod(shape):
    return math.prod(int(d) for d in shape)


def _json_number(x):
    return x if not isinstance(x, float) or math.isfinite(x) else repr(x)


def _inline(kind, st, shape, data, keep):
    """A (small) tensor kept in the JSON itself: dtype, shape and its values as a flat list."""
    npd = np.dtype(_ST_TO_NP[st]).newbyteorder("<")
    vals = data.view(npd) if data.size else np.empty(0, npd)
    if st == "BF16":
        vals = (vals.astype(np.uint32) << 16).view(np.float32)
    flat = [_json_number(v) for v in vals.tolist()]
    return {"__inline__": {"kind": kind, "dtype": st, "shape": list(shape), "data": flat}}


def _from_inline(spec, where):
    try:
        st, shape, data, kind = spec["dtype"], spec["shape"], spec["data"], spec["kind"]
        npd = np.float32 if st == "BF16" else _ST_TO_NP[st]
        arr = np.array([float(v) if isinstance(v, str) else v for v in data], dtype=npd).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise _corrupt(where, f"an inline tensor in the state is malformed ({type(e).__name__}: {e})") from None
    if st == "BF16":
        arr = (arr.view(np.uint32) >> 16).astype(np.uint16)
    return to_value({"tensor": "__tensor__", "ndarray": "__ndarray__", "torch": "__torch__"}.get(kind), arr, st)


def safetensors_header(entries, metadata):
    """(header bytes incl. the 8-byte length, [entry in data order]) of one shard file. Largest
    itemsize first, so every tensor starts aligned to its own itemsize."""
    order = sorted(entries, key=lambda e: -_ST_ITEMSIZE[e.dtype])
    header, off = {}, 0
    for e in order:
        header[e.key] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.nbytes]}
        off += e.nbytes
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h, order


def manifest_parts(doc, files, tensors, info):
    """(prefix, suffix) of manifest.json: the C writer puts the ranks' CRC fragments between."""
    m = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dutycycle_version": dc.__version__,
        "created_unix": time.time(),
        **info,
        "files": files,
        "tensors": tensors,
        "state": doc,
    }
    text = json.dumps(m, separators=(",", ":"), allow_nan=False)
    return text[:-1] + ',"crc32c":{', "}}"


def crc_key(file, key):
    return f"{file}:{key}"


# ---- decode -------------------------------------------------------------------------------------
def _corrupt(where, why):
    return CheckpointCorruptError(f"checkpoint '{where}' is corrupt or incomplete: {why}")


def is_committed(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(ckpt_dir):
    """The manifest of a checkpoint directory, checked field by field (names the directory)."""
    mpath = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint not found: '{ckpt_dir}'")
    if not os.path.isfile(mpath):
        raise _corrupt(ckpt_dir, f"it has no {MANIFEST} (a save that never committed)")
    try:
        with open(mpath, "rb") as f:
            m = json.loads(f.read())
    except (ValueError, RecursionError) as e:
        raise _corrupt(mpath, f"not valid JSON ({type(e).__name__}: {e})") from None
    check_manifest(m, mpath)
    return m


def _need(cond, where, why):
    if not cond:
        raise _corrupt(where, why)


def _isint(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(m, where):
    """Every field a reader relies on, type-checked: a crafted manifest fails here, naming it."""
    _need(isinstance(m, dict), where, "the manifest is not a JSON object")
    _need(m.get("format") == FORMAT, where, f"format is {m.get('format')!r}, expected {FORMAT!r}")
    v = m.get("format_version")
    _need(_isint(v), where, f"format_version {v!r} is not an int")
    if v > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{where}' has format version {v}; this dutycycle reads up to {FORMAT_VERSION} (upgrade it)"
        )
    files, tensors, crcs = m.get("files"), m.get("tensors"), m.get("crc32c")
    _need(isinstance(files, dict) and files, where, "'files' must be a non-empty object")
    for name, info in files.items():
        _need(
            isinstance(name, str) and name and "/" not in name and name not in (".", ".."),
            where,
            f"file name {name!r} is not a plain name",
        )
        _need(isinstance(info, dict) and _isint(info.get("bytes")), where, f"file entry {name!r} is malformed")
    _need(isinstance(tensors, dict), where, "'tensors' must be an object")
    _need(isinstance(crcs, dict), where, "'crc32c' must be an object")
    for name, t in tensors.items():
        _need(isinstance(t, dict), where, f"tensor {name!r}: entry is not an object")
        st, shape, slices = t.get("dtype"), t.get("shape"), t.get("slices")
        _need(isinstance(st, str) and st in _ST_TO_NP, where, f"tensor {name!r}: dtype {st!r} unknown")
        _need(
            isinstance(shape, list) and all(_isint(s) and s >= 0 for s in shape),
            where,
            f"tensor {name!r}: shape {shape!r} is not a list of ints >= 0",
        )
        _need(isinstance(slices, list) and slices, where, f"tensor {name!r}: no slices")
        for s in slices:  # types first: only then can they be sorted and looked up
            _need(isinstance(s, dict), where, f"tensor {name!r}: a slice is not an object")
            f, k, a, b = s.get("file"), s.get("key"), s.get("start"), s.get("stop")
            _need(isinstance(f, str) and f in files, where, f"tensor {name!r}: slice names file {f!r}, not in 'files'")
            _need(isinstance(k, str), where, f"tensor {name!r}: slice key {k!r} is not a str")
            _need(_isint(a) and _isint(b), where, f"tensor {name!r}: slice start/stop are not ints")
            _need(isinstance(crcs.get(crc_key(f, k)), str), where, f"tensor {name!r}: no CRC32C for slice in {f!r}")
        numel, pos = math.prod(shape), 0
        for s in sorted(slices, key=lambda s: s["start"]):
            _need(s["start"] == pos and s["start"] <= s["stop"], where, f"tensor {name!r}: slices do not tile it")
            pos = s["stop"]
        _need(pos == numel, where, f"tensor {name!r}: slices cover {pos} of its {numel} elements")
    _need("state" in m, where, "no 'state'")
    for k in ("step", "epoch", "world_size"):
        _need(m.get(k) is None or _isint(m.get(k)), where, f"{k} {m.get(k)!r} is not an int")


def verify_file(ckpt_dir, fname, m, want=None):
    """{key: array} of one shard file after checking its header against the manifest and every
    tensor's CRC32C. want: the keys to return (all when None; all are verified regardless)."""
    path = os.path.join(ckpt_dir, fname)
    if not os.path.isfile(path):
        raise _corrupt(ckpt_dir, f"shard file '{fname}' is missing")
    try:
        header, arrays = read_safetensors(path)
    except ValueError as e:
        raise CheckpointCorruptError(f"checkpoint '{ckpt_dir}': {e}") from None
    size = os.path.getsize(path)
    if size != m["files"][fname]["bytes"]:
        want = m["files"][fname]["bytes"]
        raise _corrupt(ckpt_dir, f"shard file '{fname}' is {size} bytes, the manifest says {want} (truncated?)")
    crcs = m["crc32c"]
    for key, arr in arrays.items():
        stored = crcs.get(crc_key(fname, key))
        if stored is None:
            raise _corrupt(ckpt_dir, f"tensor '{key}' in '{fname}' is not in the manifest")
        got = _C.crc32c(arr.reshape(-1).view(np.uint8)) if arr.size else 0
        if f"{got:08x}" != stored.lower():
            raise _corrupt(
                ckpt_dir,
                f"tensor '{key}' in file '{fname}' fails its CRC32C check (manifest {stored}, file {got:08x}): "
                "the file was modified or damaged",
            )
    return arrays if want is None else {k: arrays[k] for k in want if k in arrays}


def assemble(ckpt_dir, m, names=None, verify=True):
    """{name: NumPy array (on-disk dtype, full shape)} of the manifest's tensors, read and verified."""
    names = list(m["tensors"]) if names is None else list(names)
    by_file = {}
    for n in names:
        for s in m["tensors"][n]["slices"]:
            by_file.setdefault(s["file"], set()).add(s["key"])
    got = {}
    for fname in sorted(by_file):
        got[fname] = verify_file(ckpt_dir, fname, m) if verify else read_safetensors(os.path.join(ckpt_dir, fname))[1]
    out = {}
    for n in names:
        t = m["tensors"][n]
        npd = np.dtype(_ST_TO_NP[t["dtype"]]).newbyteorder("<")
        slices = sorted(t["slices"], key=lambda s: s["start"])
        parts = []
        for s in slices:
            arr = got[s["file"]].get(s["key"])
            if arr is None:
                raise _corrupt(ckpt_dir, f"tensor '{n}': '{s['file']}' has no entry '{s['key']}'")
            if arr.dtype.newbyteorder("<") != npd or arr.size != s["stop"] - s["start"]:
                why = f"tensor '{n}': entry '{s['key']}' in '{s['file']}' has the wrong dtype or size"
                raise _corrupt(ckpt_dir, why)
            parts.append(arr.reshape(-1))
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out[n] = flat.reshape(t["shape"])
    return out


def _bf16(arr):
    return dc.from_numpy(np.ascontiguousarray((arr.astype(np.uint32) << 16).view(np.float32))).bfloat16()


def to_value(tag, arr, st):
    if tag == "__ndarray__":
        return arr
    if tag == "__torch__":
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            if st == "BF16":
                return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
            return torch.from_numpy(arr)
    if st == "BF16":
        return _bf16(arr)
    if st in ("U16", "U32", "U64"):
        return dc.from_numpy(arr.astype(np.int64))
    return dc.from_numpy(arr)


def decode_state(m, arrays, where):
    """The nested state of a checked manifest; any malformed structure is CheckpointCorruptError.
    arrays: {name: array or LazyTensor} (a LazyTensor is handed back as it is)."""

    def resolve(tag, name):
        if name not in arrays:
            raise _corrupt(where, f"the state points at a tensor '{name}' the manifest does not list")
        v = arrays[name]
        return v if isinstance(v, LazyTensor) else to_value(tag, v, m["tensors"][name]["dtype"])

    try:
        return decode(m["state"], resolve, where)
    except CheckpointCorruptError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError, RecursionError) as e:
        raise _corrupt(where, f"the state document is malformed ({type(e).__name__}: {e})") from None


def decode(obj, resolve, where):
    """The value a state document describes; resolve(tag, name) gives each tensor reference's value.
    Shared by the directory format and the single-file one (trainer/checkpoint_io.py)."""
    if isinstance(obj, list):
        return [decode(v, resolve, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, val),) = obj.items()
        if tag in ("__tensor__", "__ndarray__", "__torch__"):
            return resolve(tag, val)
        if tag == "__tuple__":
            return tuple(decode(v, resolve, where) for v in val)
        if tag == "__float__":
            return float(val)
        if tag == "__inline__":
            return _from_inline(val, where)
        if tag == "__dict__":
            return {_hashable(decode(k, resolve, where)): decode(v, resolve, where) for k, v in val}
    return {k: decode(v, resolve, where) for k, v in obj.items()}


def _hashable(k):
    return tuple(_hashable(x) for x in k) if isinstance(k, (list, tuple)) else k


# ---- lazy reads: what one rank needs of a sharded checkpoint ------------------------------------------
class ShardReader:
    """Reads single entries of a checkpoint's shard files on demand, each verified against its
    CRC32C when first read; never the whole file (a rank reading its ZeRO shard of a checkpoint
    written at another world size reads only the slices that overlap it)."""

    def __init__(self, ckpt_dir, m):
        self.dir, self.m = ckpt_dir, m
        self._headers, self._cache = {}, {}

    def _header(self, fname):
        h = self._headers.get(fname)
        if h is not None:
            return h
        path = os.path.join(self.dir, fname)
        if not os.path.isfile(path):
            raise _corrupt(self.dir, f"shard file '{fname}' is missing")
        size = os.path.getsize(path)
        if size != self.m["files"][fname]["bytes"]:
            raise _corrupt(self.dir, f"shard file '{fname}' is {size} bytes, the manifest says "
                                     f"{self.m['files'][fname]['bytes']} (truncated?)")  # fmt: skip
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise _corrupt(self.dir, f"'{fname}': header length {n} does not fit the file")
            try:
                h = json.loads(f.read(n))
            except (ValueError, RecursionError) as e:
                raise _corrupt(self.dir, f"'{fname}': header is not valid JSON ({e})") from None
        if not isinstance(h, dict):
            raise _corrupt(self.dir, f"'{fname}': header is not a JSON object")
        h["__base__"] = 8 + n
        h["__size__"] = size
        self._headers[fname] = h
        return h

    def entry(self, fname, key):
        """The 1-D array (on-disk dtype) of entry `key` of shard `fname`, verified."""
        got = self._cache.get((fname, key))
        if got is not None:
            return got
        h = self._header(fname)
        info = h.get(key)
        if not isinstance(info, dict) or info.get("dtype") not in _ST_TO_NP:
            raise _corrupt(self.dir, f"'{fname}' has no valid entry '{key}'")
        off = info.get("data_offsets")
        npd = np.dtype(_ST_TO_NP[info["dtype"]]).newbyteorder("<")
        if not (isinstance(off, list) and len(off) == 2 and all(_isint(o) for o in off)) or not (
            0 <= off[0] <= off[1] and h["__base__"] + off[1] <= h["__size__"] and (off[1] - off[0]) % npd.itemsize == 0
        ):
            raise _corrupt(self.dir, f"tensor '{key}' in '{fname}' has data_offsets {off!r} outside the file")
        with open(os.path.join(self.dir, fname), "rb") as f:
            f.seek(h["__base__"] + off[0])
            raw = bytearray(f.read(off[1] - off[0]))
        stored = self.m["crc32c"].get(crc_key(fname, key))
        got_crc = _C.crc32c(raw) if raw else 0
        if stored is None or f"{got_crc:08x}" != stored.lower():
            raise _corrupt(self.dir, f"tensor '{key}' in file '{fname}' fails its CRC32C check (manifest {stored}, "
                                     f"file {got_crc:08x}): the file was modified or damaged")  # fmt: skip
        arr = np.frombuffer(raw, dtype=npd)
        self._cache[(fname, key)] = arr
        return arr


class LazyTensor:
    """A checkpoint tensor not read yet: `read(start, stop)` gives elements [start, stop) of its
    flattened form as a 1-D dutycycle tensor, reading only the slices that overlap them;
    `materialize()` the whole value (as load() would have returned it)."""

    def __init__(self, reader, name, tag):
        t = reader.m["tensors"][name]
        self.reader, self.name, self.tag = reader, name, tag
        self.shape, self.st, self.slices = list(t["shape"]), t["dtype"], sorted(t["slices"], key=lambda s: s["start"])

    def numel(self):
        return _prod(self.shape)

    def _flat(self, start, stop):
        parts = []
        for s in self.slices:
            lo, hi = max(start, s["start"]), min(stop, s["stop"])
            if lo < hi:
                arr = self.reader.entry(s["file"], s["key"])
                if arr.size != s["stop"] - s["start"]:
                    raise _corrupt(self.reader.dir, f"tensor '{self.name}': entry '{s['key']}' has the wrong size")
                parts.append(arr[lo - s["start"] : hi - s["start"]])
        if not parts:
            return np.empty(0, np.dtype(_ST_TO_NP[self.st]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self, start, stop):
        if not 0 <= start <= stop <= self.numel():
            raise IndexError(f"LazyTensor '{self.name}': range [{start}, {stop}) outside its {self.numel()} elements")
        return to_value("__tensor__", np.ascontiguousarray(self._flat(start, stop)), self.st)

    def materialize(self):
        return to_value(self.tag, np.ascontiguousarray(self._flat(0, self.numel())).reshape(self.shape), self.st)

    def __repr__(self):
        return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.st}, slices={len(self.slices)})"


def materialize(obj):
    """obj with every LazyTensor read in full."""
    from .._functions import map_leaves

    return map_leaves(obj, lambda v: v.materialize() if isinstance(v, LazyTensor) else v)


def tags_of(doc, out=None):
    """{tensor name: reference tag ("__tensor__", "__ndarray__", "__torch__")} of a state document."""
    out = {} if out is None else out
    if isinstance(doc, list):
        for v in doc:
            tags_of(v, out)
    elif isinstance(doc, dict):
        if len(doc) == 1:
            ((k, v),) = doc.items()
            if k in ("__tensor__", "__ndarray__", "__torch__") and isinstance(v, str):
                out[v] = k
                return out
        for v in doc.values():
            tags_of(v, out)
    return out
