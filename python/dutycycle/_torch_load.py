"""Reading PyTorch's .pt/.pth files (torch.save output) without ever running their pickles.

torch.save writes a pickle. A pickle is a program: its GLOBAL opcodes import any callable and its
REDUCE opcodes call it, so a plain pickle.load of a downloaded file can run os.system. This
module follows torch's own weights_only=True unpickler (torch/_weights_only_unpickler.py): a
pickle.Unpickler whose find_class hands out only a short allowlist of harmless objects, most of
them our own stand-ins (torch itself is never imported). Everything else is refused before it is
imported, with an UnsafePickleError naming the global.

The two layouts torch writes (torch/serialization.py):
- zip (torch >= 1.6, the default): <prefix>/data.pkl is the pickle, <prefix>/data/<key> the raw
  bytes of each storage, <prefix>/byteorder "little" or "big". Storages are persistent ids
  ('storage', storage_type, key, location, numel) with numel counted in storage_type's elements.
- legacy (_use_new_zipfile_serialization=False, torch < 1.6): a run of pickles in one file:
  MAGIC_NUMBER, PROTOCOL_VERSION, sys_info, the object (persistent ids carry a 6th field,
  view_metadata), the list of storage keys, then for each key an int64 element count and the
  raw bytes.

Unpickling builds placeholders (_Tensor) because a legacy file's bytes come after its pickle and
because only the finished tree knows each tensor's key path, which every error names. _finish
then walks the tree and turns placeholders into dutycycle tensors: a contiguous view shares the
storage's buffer (tensors that shared a storage in torch, e.g. tied weights, share it here too);
a strided view, bfloat16 (built from its bits through float32, exact), big-endian data and bool
are copied.

weights_only=False is treated as weights_only=True with a warning: scripts often pass it since
torch 2.6 made True the default, and dutycycle has no way (and no wish) to run a pickle.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (legacy files)
PROTOCOL_VERSION = 1001


class TorchLoadError(ValueError):
    """A PyTorch file that cannot be loaded (corrupt, truncated, or holding what dutycycle cannot
    represent). A ValueError, like every checkpoint reader's error; the message names the file."""


class UnsafePickleError(TorchLoadError, pickle.UnpicklingError):
    """The pickle asks for a global outside the allowlist (os.system, a pickled nn.Module, ...)."""


# torch dtype name -> (dutycycle dtype name, numpy dtype of the bytes on disk, little-endian).
# bfloat16 is read as its uint16 bits; bool as bytes (normalized to 0/1).
_DTYPES = {
    "float32": ("float32", "<f4"), "float64": ("float64", "<f8"), "float16": ("float16", "<f2"),
    "bfloat16": ("bfloat16", "<u2"), "int64": ("int64", "<i8"), "int32": ("int32", "<i4"),
    "int16": ("int16", "<i2"), "int8": ("int8", "i1"), "uint8": ("uint8", "u1"),
    "bool": ("bool", "u1"), "complex64": ("complex64", "<c8"), "complex128": ("complex128", "<c16"),
    "uint16": ("uint16", "<u2"), "uint32": ("uint32", "<u4"), "uint64": ("uint64", "<u8"),
}
# Dtypes torch has that dutycycle cannot hold: named in errors, never loaded.
_OTHER_DTYPES = (
    "complex32", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16",
    "bits1x8", "bits2x4", "bits4x2", *(f"int{i}" for i in range(1, 8)), *(f"uint{i}" for i in range(1, 8)),
)
_ITEMSIZE = {"complex32": 4, "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1, "bits16": 2}
# legacy storage class -> torch dtype name
_STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}


def _itemsize(dtype_name):
    if dtype_name in _DTYPES:
        return np.dtype(_DTYPES[dtype_name][1]).itemsize
    return _ITEMSIZE.get(dtype_name, 1)


# ---- stand-ins the allowlist hands out ------------------------------------------------------------
# Each has __slots__ and a __setstate__ that refuses, so a crafted BUILD opcode cannot rewrite one.

class _Refuses:
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on a {type(self).__name__[1:]} is not allowed")

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} is internal to dutycycle.load")


class _DType(_Refuses):
    """torch.<dtype>; becomes the dutycycle dtype in the result."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _StorageType(_Refuses):
    """torch.FloatStorage & co. (dtype fixed) or torch.storage.UntypedStorage (bytes)."""
    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _Marker(_Refuses):
    """torch.Tensor / torch.nn.Parameter: only meaningful as _rebuild_from_type_v2's new_type."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Root(_Refuses):
    """The bytes of one saved storage (the zip member or the legacy record)."""
    __slots__ = ("key", "nbytes", "itemsize", "raw", "problem")

    def __init__(self, key, nbytes, itemsize=1):
        self.key, self.nbytes, self.itemsize, self.raw, self.problem = key, nbytes, itemsize, None, None


class _Storage(_Refuses):
    """A typed window on a _Root: numel elements of dtype starting at element offset."""
    __slots__ = ("root", "dtype", "offset", "numel")

    def __init__(self, root, dtype, offset, numel):
        self.root, self.dtype, self.offset, self.numel = root, dtype, offset, numel


class _Tensor(_Refuses):
    """What a _rebuild_* call returned; _finish turns it into a dutycycle tensor."""
    __slots__ = ("storage", "dtype", "offset", "size", "stride", "requires_grad", "param")

    def __init__(self, storage, dtype, offset, size, stride, requires_grad, param=False):
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.size, self.stride, self.requires_grad, self.param = size, stride, requires_grad, param


def _check_storage(storage, fn):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"{fn}: the storage argument is a {type(storage).__name__}, not a storage")


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage, "_rebuild_tensor")
    return _Tensor(storage, storage.dtype, storage_offset, size, stride, False)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_storage(storage, "_rebuild_tensor_v2")
    return _Tensor(storage, storage.dtype, storage_offset, size, stride, bool(requires_grad))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    """torch >= 2.x for dtypes without a legacy storage class (float8, uint16, ...): an untyped
    (byte) storage and the element dtype."""
    _check_storage(storage, "_rebuild_tensor_v3")
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3: dtype is a {type(dtype).__name__}, not a torch dtype")
    return _Tensor(storage, dtype.name, storage_offset, size, stride, bool(requires_grad))


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError(f"_rebuild_parameter: data is a {type(data).__name__}, not a tensor")
    data.requires_grad, data.param = bool(requires_grad), True
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor with Python attributes or of a subclass: only Tensor/Parameter, and the state
    (the attributes) is dropped."""
    if func not in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter) or \
            not isinstance(new_type, _Marker) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2: only torch.Tensor and torch.nn.Parameter rebuild")
    t = func(*args)
    if new_type.name == "Parameter":
        t.param = True
    return t


def _size(dims=()):
    return tuple(dims)


def _device(*args):
    import dutycycle as dc

    try:
        return dc.device(*args)
    except Exception:  # a device dutycycle does not know (xla, mps): keep its name
        return ":".join(str(a) for a in args)


def _codecs_encode(obj, encoding="utf-8"):
    """Protocol-2 pickles write bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1') (pickled bytes)")
    return obj.encode("latin1")


def _allowed():
    import collections

    rc = {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "builtins.set": set, "builtins.frozenset": frozenset, "builtins.bytearray": bytearray,
        "builtins.complex": complex, "builtins.slice": slice,
        "_codecs.encode": _codecs_encode,
        "torch.Size": _size,
        "torch.device": _device,
        "torch.Tensor": _Marker("Tensor"),
        "torch.nn.parameter.Parameter": _Marker("Parameter"),
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.storage.UntypedStorage": _StorageType("uint8"),
        "torch.UntypedStorage": _StorageType("uint8"),
    }
    for cls, dtype in _STORAGE_TYPES.items():
        rc[f"torch.{cls}"] = _StorageType(dtype)
    for name in (*_DTYPES, *_OTHER_DTYPES):
        rc[f"torch.{name}"] = _DType(name)
    return rc


_ALLOWED = _allowed()


def _refusal(path, full):
    module = full.rsplit(".", 1)[0]
    if module.split(".")[0] in ("torch", "__main__", "__torch__", "lightning", "pytorch_lightning"):
        hint = ("it looks like a whole pickled model or optimizer (torch.save(model)); in PyTorch, re-save its "
                "weights with torch.save(model.state_dict(), path) and load them with model.load_state_dict(...)")
    elif module.startswith("numpy"):
        hint = "NumPy objects are refused too (as by torch's weights_only=True); store tensors or Python numbers"
    else:
        hint = ("if it is part of a checkpoint dict (e.g. argparse args, a config object), store it as plain "
                "dicts/lists/numbers/strings, or keep only model.state_dict()")
    return UnsafePickleError(
        f"'{path}': refusing to load: the pickle asks for the global '{full}', which dutycycle.load never imports "
        "or calls (a pickle can run any code it names). Only tensors, state dicts and plain containers (dict, "
        f"OrderedDict, list, tuple, set, numbers, strings, bytes) load from PyTorch files; {hint}.")


class _Unpickler(pickle.Unpickler):
    """torch's weights_only=True unpickler, reduced: globals only from _ALLOWED; persistent ids
    (storages) through storage_fn."""

    def __init__(self, file, path, storage_fn=None):
        super().__init__(file, encoding="utf-8")
        self._path, self._storage_fn = path, storage_fn

    def find_class(self, module, name):
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        full = f"{module}.{name}"
        obj = _ALLOWED.get(full)
        if obj is None:
            raise _refusal(self._path, full)
        return obj

    def persistent_load(self, pid):
        if self._storage_fn is None:
            raise pickle.UnpicklingError("a persistent id where none belongs")
        return self._storage_fn(pid)


def _unpickle(path, f, storage_fn=None):
    return _Unpickler(f, path, storage_fn).load()


def _storage_pid(pid, legacy):
    """(storage_type dtype, key, numel, view_metadata) of a persistent id, checked."""
    n = 6 if legacy else 5
    if not isinstance(pid, tuple) or len(pid) != n:
        raise pickle.UnpicklingError(f"persistent id {pid!r:.80} is not a {n}-tuple ('storage', ...)")
    tag = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    stype, key, _location, numel = pid[1:5]
    if tag != "storage" or not isinstance(stype, _StorageType) or not isinstance(key, str) or \
            type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r:.120}")
    return stype.dtype, key, numel, (pid[5] if legacy else None)


# ---- the two layouts ------------------------------------------------------------------------------

def sniff(path):
    """'zip', 'legacy', 'tar' for a file torch.save could have written, else None (never raises
    for a missing or unreadable file: the caller's own reader reports those)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                return "zip" if _record_prefix(zf.namelist()) is not None else None
        except Exception:  # not a zip after all (or a broken one): not ours to judge
            return None
    if len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        try:
            return "legacy" if _Unpickler(io.BytesIO(head), path).load() == MAGIC_NUMBER else None
        except Exception:
            return None
    if head[257:262] == b"ustar" and b"sys_info" in head[:100]:
        return "tar"
    return None


def _record_prefix(names):
    for n in names:
        parts = n.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            return parts[0] + "/"
    return None


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = _record_prefix(names)
        if any(n == prefix + "constants.pkl" or n.startswith(prefix + "code/") for n in names):
            raise TorchLoadError(f"'{path}' is a TorchScript archive (torch.jit.save), which holds code; "
                                 "dutycycle.load reads torch.save files only (save the scripted model's "
                                 "state_dict() instead)")
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise TorchLoadError(f"'{path}': unknown byte order {byteorder!r:.40} in {prefix}byteorder")
        roots = {}

        def storage(pid):
            dtype, key, numel, _ = _storage_pid(pid, legacy=False)
            root = roots.get(key)
            nbytes = numel * _itemsize(dtype)
            if root is None:
                root = roots[key] = _Root(f"{prefix}data/{key}", nbytes)
                _read_member(zf, root)
            return _Storage(root, dtype, 0, numel)

        obj = _unpickle(path, io.BytesIO(zf.read(prefix + "data.pkl")), storage)
    return obj, byteorder


def _read_member(zf, root):
    """root.raw = the first root.nbytes bytes of the member (a writable bytearray, so tensors can
    share it); a missing or short member is recorded, and raised with the tensor's path."""
    try:
        info = zf.getinfo(root.key)
    except KeyError:
        root.problem = "its storage record is missing from the archive"
        return
    stored_short = info.compress_type == zipfile.ZIP_STORED and info.compress_size < root.nbytes
    if info.file_size < root.nbytes or stored_short:  # checked before allocating what the pickle claims
        root.problem = (f"its storage record is truncated ({info.file_size} bytes; the pickle says "
                        f"{root.nbytes})")
        return
    buf = bytearray(root.nbytes)
    with zf.open(info) as m:
        got = m.readinto(buf) if root.nbytes else 0
        while got < root.nbytes:
            n = m.readinto(memoryview(buf)[got:])
            if not n:
                root.problem = f"its storage record is truncated ({got} bytes; the pickle says {root.nbytes})"
                return
            got += n
    root.raw = buf


def _load_legacy(path):
    with open(path, "rb") as f:
        if _unpickle(path, f) != MAGIC_NUMBER:
            raise TorchLoadError(f"'{path}': invalid magic number")
        version = _unpickle(path, f)
        if version != PROTOCOL_VERSION:
            raise TorchLoadError(f"'{path}': legacy torch format version {version!r:.20} (expected {PROTOCOL_VERSION})")
        sys_info = _unpickle(path, f)
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        roots, views = {}, {}

        def storage(pid):
            dtype, key, numel, view = _storage_pid(pid, legacy=True)
            root = roots.get(key)
            if root is None:
                root = roots[key] = _Root(key, numel * _itemsize(dtype), _itemsize(dtype))
                root.problem = "its storage record is missing from the file"  # until read below
            if view is None:
                return _Storage(root, dtype, 0, numel)
            if not isinstance(view, tuple) or len(view) != 3 or not all(type(v) is int for v in view[1:]):
                raise pickle.UnpicklingError(f"malformed storage view {view!r:.80}")
            vkey, voff, vsize = view
            if vkey not in views:
                views[vkey] = _Storage(root, dtype, voff, vsize)
            return views[vkey]

        obj = _unpickle(path, f, storage)
        keys = _unpickle(path, f)
        if not isinstance(keys, list):
            raise TorchLoadError(f"'{path}': the storage key list is a {type(keys).__name__}")
        for key in keys:
            root = roots.get(key)
            if root is None:
                raise TorchLoadError(f"'{path}': storage {key!r:.40} has data but no tensor uses it")
            head = f.read(8)
            if len(head) < 8:
                root.problem = "the file ends before its storage record"
                break
            (count,) = struct.unpack("<q" if little else ">q", head)
            if count * root.itemsize != root.nbytes:
                raise TorchLoadError(f"'{path}': storage {key!r:.40} holds {count} elements, the pickle says "
                                     f"{root.nbytes} bytes")
            if root.nbytes > os.fstat(f.fileno()).st_size - f.tell():  # before allocating what the pickle claims
                root.problem = "its storage record is truncated (the file ends first)"
                break
            buf = bytearray(root.nbytes)
            got = f.readinto(buf)
            if got < root.nbytes:
                root.problem = f"its storage record is truncated ({got} bytes; the pickle says {root.nbytes})"
                break
            root.raw, root.problem = buf, None
    return obj, "little" if little else "big"


# ---- placeholders -> dutycycle tensors ------------------------------------------------------------

def _fmt(path):
    return "".join(f"[{k!r}]" for k in path) or "(the file's only object)"


def _materialize(p, path, byteorder, file):
    import dutycycle as dc

    st, dtype = p.storage, p.dtype
    where = f"'{file}': tensor {_fmt(path)} (torch.{dtype}, storage '{st.root.key}')"
    if st.root.problem:
        raise TorchLoadError(f"{where}: {st.root.problem}")
    target = getattr(dc, _DTYPES[dtype][0], None) if dtype in _DTYPES else None
    if target is None:
        raise TorchLoadError(f"{where}: dutycycle has no {dtype} dtype yet; convert it in PyTorch first "
                             "(e.g. state_dict[key] = state_dict[key].float()) and save again")
    size, stride, offset = p.size, p.stride, p.offset
    ints = (isinstance(size, tuple) and isinstance(stride, tuple) and type(offset) is int and
            all(type(v) is int for v in size + stride))
    if not ints or len(size) != len(stride) or offset < 0 or any(v < 0 for v in size + stride):
        raise TorchLoadError(f"{where}: malformed geometry (offset {offset!r:.40}, size {size!r:.80}, "
                             f"stride {stride!r:.80})")
    # the storage window in bytes, then in elements of the tensor's dtype
    byte_lo = st.offset * _itemsize(st.dtype)
    byte_hi = byte_lo + st.numel * _itemsize(st.dtype)
    if st.offset < 0 or st.numel < 0 or byte_hi > st.root.nbytes:
        raise TorchLoadError(f"{where}: storage view outside its storage")
    disk = np.dtype(_DTYPES[dtype][1])
    if byteorder == "big":
        disk = disk.newbyteorder(">")
    n_avail = (byte_hi - byte_lo) // disk.itemsize
    numel = 1
    for s in size:
        numel *= s
    if numel and offset + sum((s - 1) * t for s, t in zip(size, stride)) >= n_avail:
        raise TorchLoadError(f"{where}: size {size} with stride {stride} at offset {offset} reaches past the "
                             f"storage's {n_avail} elements")
    flat = np.frombuffer(st.root.raw, dtype=disk, count=n_avail, offset=byte_lo) if n_avail else \
        np.zeros(0, disk)
    contiguous, expect = True, 1
    for s, t in zip(reversed(size), reversed(stride)):
        if s != 1 and t != expect:
            contiguous = False
        expect *= s
    if contiguous:  # shares the storage's buffer: no copy
        arr = flat[offset:offset + numel].reshape(size)
    else:  # a strided view (e.g. a saved x.t()): copied to a contiguous array
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=tuple(t * disk.itemsize for t in stride), writeable=False)
        arr = np.array(view)
    if byteorder == "big" and disk.itemsize > 1:
        arr = arr.astype(disk.newbyteorder("="))  # copy
    if dtype == "bfloat16":  # the bits, widened to float32 (exact), then narrowed: one copy each
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif dtype == "bool":
        arr = arr != 0  # copy; a crafted byte 2 must not reach bool kernels
    try:
        t = dc.from_numpy(arr)  # C-contiguous and writable by now (0-d stays 0-d)
    except (TypeError, ValueError) as e:
        raise TorchLoadError(f"{where}: dutycycle cannot hold this dtype yet ({e})") from None
    if dtype == "bfloat16":
        t = t.to(dc.bfloat16)
    if p.param:
        return dc.nn.Parameter(t, requires_grad=p.requires_grad and t.is_floating_point())
    if p.requires_grad and t.is_floating_point():
        t.requires_grad_(True)
    return t


def _finish(obj, byteorder, file):
    """The unpickled tree with placeholders replaced (dicts and lists in place, so shared or
    cyclic references stay so; tuples and sets rebuilt once each)."""
    import dutycycle as dc

    done = {}

    def walk(o, path):
        if isinstance(o, (str, bytes, int, float, complex, type(None))):
            return o
        key = id(o)
        if key in done:
            return done[key]
        if isinstance(o, _Tensor):
            done[key] = r = _materialize(o, path, byteorder, file)
            return r
        if isinstance(o, _DType):
            r = getattr(dc, _DTYPES[o.name][0], None) if o.name in _DTYPES else None
            if r is None:
                raise TorchLoadError(f"'{file}': {_fmt(path)} is torch.{o.name}, a dtype dutycycle does not have yet")
            return r
        if isinstance(o, _Refuses):
            raise TorchLoadError(f"'{file}': {_fmt(path)} is a bare {type(o).__name__[1:]} object, not data")
        if isinstance(o, dict):
            done[key] = o
            items = list(o.items())
            if any(isinstance(k, _Refuses) for k, _ in items):
                raise TorchLoadError(f"'{file}': {_fmt(path)} has a tensor as a dict key")
            for k, v in items:
                o[k] = walk(v, path + (k,))
            return o
        if isinstance(o, list):
            done[key] = o
            for i, v in enumerate(o):
                o[i] = walk(v, path + (i,))
            return o
        if isinstance(o, tuple):
            r = done[key] = tuple(walk(v, path + (i,)) for i, v in enumerate(o))
            return r
        if isinstance(o, (set, frozenset)):
            r = done[key] = type(o)(walk(v, path) for v in o)
            return r
        return o  # bytearray, slice, device

    return walk(obj, ())


def load_torch_file(path, kind, weights_only=None):
    """The object a torch.save file holds, tensors as dutycycle CPU tensors. kind: sniff(path).
    Raises TorchLoadError (a ValueError; UnsafePickleError for a refused global) naming path."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if weights_only is False:
        warnings.warn("dutycycle.load: weights_only=False is treated as weights_only=True: dutycycle never runs "
                      "arbitrary pickles; tensors, state dicts and plain containers load, anything else is refused",
                      UserWarning, stacklevel=3)
    if kind == "tar":
        raise TorchLoadError(f"'{path}' is a tar-format torch file (torch < 0.4); re-save it with a recent torch "
                             "(torch.save(torch.load(old), new)) and load the new file")
    try:
        obj, byteorder = _load_zip(path) if kind == "zip" else _load_legacy(path)
        return _finish(obj, byteorder, path)
    except TorchLoadError:
        raise
    except OSError:
        raise
    except RecursionError:
        raise TorchLoadError(f"'{path}': the pickle nests deeper than Python's recursion limit") from None
    except Exception as e:  # pickle, zip, struct, and the stand-ins' own checks
        raise TorchLoadError(f"'{path}' is corrupt or not a loadable PyTorch file "
                             f"({type(e).__name__}: {e})") from None

