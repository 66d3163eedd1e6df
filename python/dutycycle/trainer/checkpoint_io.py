"""Single-file checkpoints (dutycycle.save, and the Trainer's format before checkpoint
directories; still read), the single-file safetensors reader, and what a Trainer checkpoint
holds (dump_checkpoint / restore_*). Trainer checkpoints themselves are directories written by
dutycycle.checkpoint; load_checkpoint reads both.

The single-file format: one safetensors file holding a nested dict, never a pickle.

Layout (huggingface safetensors, see shared/REFERENCE.md): 8-byte little-endian header length N,
N bytes of JSON header ({key: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}),
padded with spaces to a multiple of 8, then the tensor bytes, contiguous from offset 0.

Every tensor (dc.Tensor or numpy array) found in the dict becomes one safetensors entry, named by
its dotted key path ("state_dict.layer.weight", "optimizer_states.0.state.0.exp_avg"); a path
that would collide gets a "#n" suffix. Everything else (ints, floats, strings, the dict/list/tuple
structure) is ONE JSON document in __metadata__["dutycycle"], where each tensor is a reference
{"__tensor__": key} (or {"__ndarray__": key} for numpy arrays, which come back as numpy arrays).
Other tools (safetensors.numpy.load_file, ...) can read the tensors of our files.

Writes are durable: write path + ".tmp", fsync it, rename over path, fsync the directory.
Tensors are laid out largest itemsize first, so every tensor starts aligned to its itemsize and
loads without a copy.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

import dutycycle as dc

FORMAT_KEY = "dutycycle"
FORMAT_VERSION = 1
MAX_HEADER = 100_000_000  # safetensors readers refuse larger headers

# dc dtype name -> (safetensors name, numpy dtype used on disk)
_DC_TO_ST = {
    "float64": ("F64", np.float64),
    "float32": ("F32", np.float32),
    "float16": ("F16", np.float16),
    "bfloat16": ("BF16", np.uint16),
    "int64": ("I64", np.int64),
    "int32": ("I32", np.int32),
    "int16": ("I16", np.int16),
    "int8": ("I8", np.int8),
    "uint8": ("U8", np.uint8),
    "bool": ("BOOL", np.bool_),
}
_ST_TO_NP = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(v).str: k for k, v in _ST_TO_NP.items() if k != "BF16"}
# every tag the shared decoder (checkpoint/_format.decode) knows: a user dict with such a key is stored as __dict__
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__torch__", "__inline__")


# ---- encode ------------------------------------------------------------------------------------
class _Writer:
    def __init__(self):
        self.entries = {}  # key -> (st dtype, shape, little-endian bytes)

    def add(self, path, st_dtype, shape, data):
        key, n = path or "tensor", 1
        while key in self.entries:
            key, n = f"{path}#{n}", n + 1
        self.entries[key] = (st_dtype, list(shape), data)
        return key


def _tensor_bytes(t):
    """(safetensors dtype, shape, bytes) of a dc.Tensor; a device tensor is copied to the host."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()  # note: device -> host copy (a sync point)
    name = t.dtype.name
    st, npd = _DC_TO_ST[name]
    if name == "bfloat16":
        # bf16 -> f32 is exact, and a bf16 is the upper half of that f32's bits.
        arr = (t.float().contiguous().numpy().view(np.uint32) >> 16).astype(np.uint16)
    else:
        arr = t.contiguous().numpy()
    return st, t.shape, np.ascontiguousarray(arr, dtype=np.dtype(npd).newbyteorder("<")).tobytes()


def _encode(obj, path, w):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, dc.Tensor):
        st, shape, data = _tensor_bytes(obj)
        return {"__tensor__": w.add(path, st, shape, data)}
    if isinstance(obj, np.ndarray):
        st = _NP_TO_ST.get(obj.dtype.newbyteorder("<").str if obj.dtype.byteorder == ">" else obj.dtype.str)
        if st is None:
            raise TypeError(f"checkpoint: numpy dtype {obj.dtype} at '{path}' is not supported")
        data = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<")).tobytes()
        return {"__ndarray__": w.add(path, st, obj.shape, data)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), path, w)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", w) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", w) for i, v in enumerate(obj)]
    if isinstance(obj, dict):

        def sub(k):
            return f"{path}.{k}" if path else str(k)

        if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
            return {k: _encode(v, sub(k), w) for k, v in obj.items()}
        for k in obj:
            if not (k is None or isinstance(k, (str, int, float, bool, tuple))):
                raise TypeError(f"checkpoint: dict key {k!r} at '{path}' is not a str/int/float/bool/tuple")
        return {"__dict__": [[_encode(k, "", w), _encode(v, sub(k), w)] for k, v in obj.items()]}
    if isinstance(obj, (dc.dtype, dc.device)):
        return str(obj)
    raise TypeError(
        f"checkpoint: cannot store a {type(obj).__name__} at '{path or '<root>'}' (only tensors, numpy arrays, "
        "numbers, strings, None and dicts/lists/tuples of them; dutycycle never pickles)"
    )


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write checkpoint (a nested dict) to path as one safetensors file, durably."""
    path = os.fspath(path)
    w = _Writer()
    doc = _encode(checkpoint, "", w)
    meta = {
        FORMAT_KEY: json.dumps(doc, separators=(",", ":"), allow_nan=False),
        "format": "dutycycle",
        "dutycycle_format_version": str(FORMAT_VERSION),
    }
    # Largest itemsize first: every tensor starts aligned to its own itemsize.
    order = sorted(w.entries, key=lambda k: -np.dtype(_ST_TO_NP[w.entries[k][0]]).itemsize)
    header, offset = {}, 0
    for k in order:
        st, shape, data = w.entries[k]
        header[k] = {"dtype": st, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = meta
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for k in order:
                f.write(w.entries[k][2])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- decode ------------------------------------------------------------------------------------
class _CorruptCheckpoint(ValueError):
    """A ValueError that already names the file (so the wrappers below do not wrap it twice)."""


def _corrupt(path, why):
    return _CorruptCheckpoint(f"checkpoint '{path}' is corrupt or not a dutycycle checkpoint: {why}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)  # JSON ints only: no bools, no floats


def _json(path, text, what):
    """json.loads that names the file on every failure: bad JSON or UTF-8, digits past Python's
    int limit (ValueError) and nesting deeper than the interpreter's stack (RecursionError)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _corrupt(path, f"{what} is not valid JSON ({type(e).__name__}: {e})") from None


def read_safetensors(path):
    """(header dict, {key: numpy array (on-disk dtype)}) of a safetensors file; raises
    FileNotFoundError / ValueError naming the path."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    with open(path, "rb") as f:
        blob = bytearray(f.read())  # writable: the tensors share this buffer
    return parse_safetensors(blob, path)


def parse_safetensors(blob, path="<bytes>"):
    """read_safetensors on bytes already in memory (a bytearray: the arrays are views of it).
    Every malformed input raises ValueError naming `path` (the fuzz target)."""
    if len(blob) < 8:
        raise _corrupt(path, f"file is {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if n > MAX_HEADER or 8 + n > len(blob):
        raise _corrupt(path, f"header length {n} does not fit the file ({len(blob)} bytes)")
    header = _json(path, bytes(blob[8 : 8 + n]), "header")  # bytes: json checks the UTF-8 itself
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data = memoryview(blob)[8 + n :]
    arrays, spans = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        # every field checked for its JSON type first: a crafted header must fail here, naming the file
        if not isinstance(info, dict):
            raise _corrupt(path, f"header entry for tensor '{key}' is a {type(info).__name__}, not an object")
        st, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(st, str) or st not in _ST_TO_NP:
            raise _corrupt(path, f"tensor '{key}' has dtype {st!r}; expected one of {sorted(_ST_TO_NP)}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise _corrupt(path, f"tensor '{key}' has shape {shape!r}; expected a list of ints >= 0")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise _corrupt(path, f"tensor '{key}' has data_offsets {offsets!r}; expected [begin, end] as ints")
        b, e = offsets
        npd = np.dtype(_ST_TO_NP[st])
        count = math.prod(shape)  # Python ints: a crafted huge shape cannot overflow
        if not (0 <= b <= e <= len(data)) or e - b != count * npd.itemsize:
            raise _corrupt(
                path,
                f"tensor '{key}' has data_offsets {[b, e]} that do not match its shape/dtype "
                f"or the file size (truncated?)",
            )
        spans.append((b, e))
        arr = np.frombuffer(data[b:e], dtype=npd.newbyteorder("<"), count=count).reshape(shape)
        if arr.ctypes.data % npd.itemsize:
            arr = arr.copy()
        arrays[key] = arr
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            raise _corrupt(path, "tensor data is not contiguous (overlap or gap)")
        pos = e
    if pos != len(data):
        raise _corrupt(path, f"{len(data) - pos} trailing bytes after the tensor data")
    return header, arrays


def _to_tensor(arr, st):
    if st == "BF16":
        f32 = (arr.astype(np.uint32) << 16).view(np.float32)
        return dc.from_numpy(np.ascontiguousarray(f32)).bfloat16()
    if st in ("F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"):
        return dc.from_numpy(arr)
    return dc.from_numpy(arr.astype(np.int64))  # unsigned 16-64 bit ints from other tools: widen


def _is_pointer(path):
    if not os.path.isfile(path) or os.path.getsize(path) > 4096:
        return False
    from ..checkpoint import POINTER_MAGIC

    with open(path, "rb") as f:
        return f.read(len(POINTER_MAGIC)) == POINTER_MAGIC.encode()


def load_checkpoint(path) -> dict:
    """Read a checkpoint back into the nested dict (tensors on the CPU): a file written by
    save_checkpoint, or a checkpoint directory / last.ckpt (read and verified by dutycycle.checkpoint).

    A plain safetensors file without our metadata loads as a flat {key: tensor} dict.
    Missing file -> FileNotFoundError; corrupt or truncated file -> ValueError, both naming path.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or _is_pointer(path):  # a checkpoint directory (or last.ckpt naming one)
        from ..checkpoint import load

        return load(path)
    header, arrays = read_safetensors(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise _corrupt(path, "__metadata__ is not an object")
    if FORMAT_KEY in meta and not isinstance(meta[FORMAT_KEY], str):
        raise _corrupt(path, f"metadata document is a {type(meta[FORMAT_KEY]).__name__}, not a string")
    doc = _json(path, meta[FORMAT_KEY], "metadata document") if FORMAT_KEY in meta else None
    try:
        if doc is None:  # a plain safetensors file
            return {k: _to_tensor(a, header[k]["dtype"]) for k, a in arrays.items()}
        from ..checkpoint._format import decode  # the directory format's decoder: one set of tags

        def resolve(tag, key):
            if key not in arrays:
                raise _corrupt(path, f"metadata points at a tensor '{key}' the file does not hold")
            return arrays[key] if tag == "__ndarray__" else _to_tensor(arrays[key], header[key]["dtype"])

        return decode(doc, resolve, path)
    except _CorruptCheckpoint:
        raise
    except Exception as e:  # includes RecursionError: a document nested deeper than the stack
        raise _corrupt(path, f"metadata document is malformed ({type(e).__name__}: {e})") from None


# ---- the Trainer's checkpoint: what goes in, how it comes back ------------------------------------
# The Trainer calls these from save_checkpoint / fit / validate / test / predict; the hooks
# (on_save_checkpoint, on_load_checkpoint) stay in the Trainer, around these calls.
def dump_checkpoint(trainer, weights_only=False):
    """The checkpoint dict of trainer's current state (before the on_save_checkpoint hooks)."""
    from .resume import get_rng_states

    m, strategy = trainer.lightning_module, trainer.strategy
    ckpt = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "dutycycle_version": dc.__version__,
        "state_dict": strategy.lightning_module_state_dict(),
        "loops": trainer.position.state_dict(trainer),
    }
    if not weights_only:
        ckpt["callbacks"] = {}
        for cb in trainer.callbacks:
            sd = cb.state_dict() if hasattr(cb, "state_dict") else {}
            if sd:
                ckpt["callbacks"][callback_state_key(cb)] = sd
        ckpt["optimizer_states"] = [strategy.optimizer_state(o) for o in trainer.optimizers]
        ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        ckpt["rng_states"] = get_rng_states()
        prec = trainer.precision_plugin.state_dict()
        if prec:  # 16-mixed: the loss scaler (Lightning's key)
            ckpt["MixedPrecision"] = prec
    hp = m.__dict__.get("_hparams")
    if hp:
        ckpt["hyper_parameters"] = _jsonable(dict(hp))
    if trainer.datamodule is not None:
        dsd = trainer.datamodule.state_dict()
        if dsd:
            ckpt["datamodule"] = {type(trainer.datamodule).__qualname__: dsd}
    return ckpt


def callback_state_key(cb):
    return getattr(cb, "state_key", type(cb).__qualname__)


def restore_module(trainer, ckpt):
    """The weights and the datamodule's state (after the module's on_load_checkpoint)."""
    trainer.lightning_module.load_state_dict(ckpt["state_dict"])
    dm = ckpt.get("datamodule") or {}
    if trainer.datamodule is not None and type(trainer.datamodule).__qualname__ in dm:
        trainer.datamodule.load_state_dict(dm[type(trainer.datamodule).__qualname__])


def check_trainer_checkpoint(ckpt, path):
    if "state_dict" not in ckpt:
        raise KeyError(f"checkpoint '{path}' has no 'state_dict' (is it a dutycycle Trainer checkpoint?)")


def restore_training_state(trainer, ckpt):
    """Optimizers, lr schedulers and the loop position (fit's resume, after configure_optimizers)."""
    path = trainer.ckpt_path
    opt_states = ckpt.get("optimizer_states")
    if opt_states is None:
        raise KeyError(
            f"checkpoint '{path}' was saved with weights_only=True: it has no optimizer "
            "states, so training cannot resume from it"
        )
    if len(opt_states) != len(trainer.optimizers):
        raise ValueError(
            f"checkpoint '{path}' has {len(opt_states)} optimizer state(s), the model "
            f"configures {len(trainer.optimizers)}"
        )
    for o, s in zip(trainer.optimizers, opt_states):
        trainer.strategy.load_optimizer_state(o, s)
    sched_states = ckpt.get("lr_schedulers") or []
    for cfg, s in zip(trainer.lr_scheduler_configs, sched_states):
        cfg.scheduler.load_state_dict(s)
    if ckpt.get("MixedPrecision"):
        trainer.precision_plugin.load_state_dict(ckpt["MixedPrecision"])
    trainer.position.load_state_dict(trainer, ckpt)


def resolve_ckpt_path(trainer, ckpt_path, fn):
    """ckpt_path of fit/validate/test/predict -> a file path ("last", "best" looked up), or None."""
    import glob
    import warnings

    if ckpt_path in ("last", "best"):
        if ckpt_path == "best":
            cb = trainer.checkpoint_callback
            best = getattr(cb, "best_model_path", None) if cb is not None else None
            if not best:
                raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` has no best checkpoint')
            return best
        path = _find_last_checkpoint(trainer, glob)
        if path is None:
            warnings.warn(
                f'.{fn}(ckpt_path="last") is set, but there is no last checkpoint available. '
                "No checkpoint will be loaded.",
                UserWarning,
                stacklevel=4,
            )
        return path
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: ckpt_path='{path}'")
    return path


def _find_last_checkpoint(trainer, glob):
    dirs = []
    for cb in trainer.checkpoint_callbacks:
        last = getattr(cb, "last_model_path", None)
        if last and os.path.exists(last):
            return last
        d = getattr(cb, "dirpath", None)
        if d:
            dirs.append(os.fspath(d))
    dirs.append(os.path.join(trainer.log_dir, "checkpoints"))
    dirs += sorted(glob.glob(os.path.join(trainer.default_root_dir, "*", "version_*", "checkpoints")))
    dirs.append(os.path.join(trainer.default_root_dir, "checkpoints"))
    for d in dirs:
        cands = [
            p for p in glob.glob(os.path.join(d, "last*")) if os.path.exists(p) and not p.endswith((".tmp", ".old"))
        ]
        if cands:
            return max(cands, key=lambda p: os.lstat(p).st_mtime)
    return None


def _jsonable(obj):
    """hparams as checkpoint-storable values (others become their repr, as Lightning's yaml does)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_jsonable(v) for v in obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (dc.Tensor, np.ndarray)):
        return obj
    return repr(obj)
