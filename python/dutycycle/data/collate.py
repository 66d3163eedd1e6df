"""default_collate / default_convert: turn a list of dataset items into one batch, as
torch.utils.data does.

What becomes what (item type -> batch):
  dutycycle.Tensor         -> the tensors stacked along a new first dim (dc.stack)
  numpy array / scalar     -> a stacked dutycycle tensor of the array's dtype. NumPy dtypes that
                              dutycycle lacks are widened: int8/int16/uint8/uint16 -> int32,
                              uint32 -> int64 (torch keeps uint8; we have no uint8 dtype)
  float                    -> float32 tensor (torch gives float64; float32 is dutycycle's default
                              dtype, and what a training step wants)
  bool                     -> bool tensor;   int -> int64 tensor
  str / bytes              -> the list as is
  dict (Mapping)           -> same keys, each collated
  namedtuple               -> same namedtuple, each field collated
  tuple / list (Sequence)  -> a list of the collated positions (tuples become lists, as in torch)

Mismatched shapes raise a RuntimeError naming both shapes, the batch positions and where in the
item the leaf sits. The collation logic is written once (`_collate`) with a pluggable stacker, so
the DataLoader's C stacking path (the leaves are copied by C threads) produces exactly what
default_collate produces."""

from __future__ import annotations

import collections.abc
import numbers

import numpy as np

from .. import _C
from .._tensor import Tensor

_ERR = "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}"

# NumPy dtypes dutycycle has, and the widening for the ones it lacks
_NP_OK = {"float32", "float64", "float16", "int32", "int64", "bool"}
_NP_WIDEN = {"int8": np.int32, "int16": np.int32, "uint8": np.int32, "uint16": np.int32, "uint32": np.int64}


def _np_supported(a):
    """`a` as an array of a dtype dutycycle has (widened copy when needed); TypeError otherwise."""
    name = a.dtype.name
    if name in _NP_OK:
        return a
    if name in _NP_WIDEN:
        return a.astype(_NP_WIDEN[name])
    raise TypeError(f"default_collate: NumPy dtype {a.dtype} has no dutycycle equivalent "
                    "(supported: float16/32/64, int8..int64, uint8..uint32, bool)")


def _c_order(a):
    """A C-contiguous array with a's shape. (np.ascontiguousarray turns a 0-d array into a 1-d one,
    which would give numpy scalars a stray dim of 1.)"""
    return np.require(a, requirements="C")


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _where(path):
    return "".join(path) if path else ""


def _stack_leaves(leaves, kind):
    """The plain stacker: one dutycycle tensor from same-shaped tensors or arrays."""
    if kind == "tensor":
        from .._functions import stack

        return stack(leaves)
    arr = np.stack([_np_supported(np.asarray(a)) for a in leaves])
    return _C.from_buffer(_c_order(arr))


def _check_same(batch, path, what):
    """Same shape (and dtype) across the batch, else an error naming both batch positions."""
    s0, d0 = tuple(batch[0].shape), batch[0].dtype
    for i, x in enumerate(batch):
        if tuple(x.shape) != s0:
            raise RuntimeError(f"default_collate: {what} in a batch must have the same shape, but batch item 0 has "
                               f"shape {s0} and batch item {i} has shape {tuple(x.shape)}"
                               + (f" (at item{_where(path)})" if path else ""))
        if x.dtype != d0:
            raise TypeError(f"default_collate: {what} in a batch must have the same dtype, but batch item 0 is "
                            f"{d0} and batch item {i} is {x.dtype}" + (f" (at item{_where(path)})" if path else ""))


def _collate(batch, stack, path=()):
    elem = batch[0]
    if isinstance(elem, Tensor):
        for i, x in enumerate(batch):
            if not isinstance(x, Tensor):
                raise TypeError(f"default_collate: batch item 0 is a Tensor but batch item {i} is "
                                f"{type(x).__name__}" + (f" (at item{_where(path)})" if path else ""))
        _check_same(batch, path, "tensors")
        return stack(batch, "tensor")
    if type(elem).__module__ == "numpy" and not isinstance(elem, (np.str_, np.bytes_)):
        if isinstance(elem, np.ndarray) or isinstance(elem, np.generic):
            if elem.dtype.kind in "USOV":
                raise TypeError(_ERR.format(elem.dtype))
            arrs = [np.asarray(x) for x in batch]
            _check_same(arrs, path, "arrays")
            return stack(arrs, "numpy")
    if isinstance(elem, bool):
        return _C.from_buffer(np.array(batch, dtype=np.bool_))
    if isinstance(elem, numbers.Integral) and not isinstance(elem, bool):
        return _C.from_buffer(np.array(batch, dtype=np.int64))
    if isinstance(elem, numbers.Real):
        return _C.from_buffer(np.array(batch, dtype=np.float32))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        out = {k: _collate([d[k] for d in batch], stack, path + (f"[{k!r}]",)) for k in elem}
        if type(elem) is dict:
            return out
        try:
            return type(elem)(out)
        except TypeError:
            return out
    if _is_namedtuple(elem):
        return type(elem)(*(_collate(list(s), stack, path + (f".{f}",)) for f, s in zip(elem._fields, zip(*batch))))
    if isinstance(elem, collections.abc.Sequence):
        n = len(elem)
        for i, x in enumerate(batch):
            if len(x) != n:
                raise RuntimeError(f"each element in list of batch should be of equal size: batch item 0 has {n} "
                                   f"entries and batch item {i} has {len(x)}"
                                   + (f" (at item{_where(path)})" if path else ""))
        return [_collate(list(s), stack, path + (f"[{k}]",)) for k, s in enumerate(zip(*batch))]
    raise TypeError(_ERR.format(type(elem)))


def default_collate(batch):
    """Collate a list of samples into a batch (see the module docstring for the rules)."""
    if not isinstance(batch, (list, tuple)) or len(batch) == 0:
        raise TypeError("default_collate expects a non-empty list of samples")
    return _collate(list(batch), _stack_leaves)


def default_convert(data):
    """No batching (batch_size=None): NumPy arrays become tensors, containers are walked, the rest
    is returned unchanged."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype.kind in "USOV":
            return data
        return _C.from_buffer(_c_order(_np_supported(data)))
    if isinstance(data, np.generic) and data.dtype.kind not in "USOV":
        return _C.from_buffer(_c_order(_np_supported(np.asarray(data))))
    if isinstance(data, collections.abc.Mapping):
        out = {k: default_convert(v) for k, v in data.items()}
        try:
            return out if type(data) is dict else type(data)(out)
        except TypeError:
            return out
    if _is_namedtuple(data):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        try:
            return type(data)([default_convert(d) for d in data])
        except TypeError:
            return [default_convert(d) for d in data]
    return data


# --- the C stacking path ---------------------------------------------------------------------

class _Slot:
    """Stands for a leaf the C threads stack: column k of the submitted batch."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k


class _CStacker:
    """A stacker for `_collate` that records each stackable leaf as a column of C work instead of
    stacking it. Leaves that C cannot take (requires_grad, not on the CPU) are stacked at once."""

    def __init__(self):
        self.columns = []  # [(parts, None, True)] as _C.Loader.submit wants them

    def __call__(self, leaves, kind):
        if kind == "tensor":
            if any(t.requires_grad or t.device.type != "cpu" for t in leaves):
                return _stack_leaves(leaves, kind)
            parts = [t if t.is_contiguous() else t.contiguous() for t in leaves]
        else:
            parts = [_C.from_buffer(_c_order(_np_supported(np.asarray(a)))) for a in leaves]
        self.columns.append((parts, None, True))
        return _Slot(len(self.columns) - 1)


def _fill(obj, tensors):
    """Replace every _Slot in a collated batch by its stacked tensor (the containers are the ones
    `_collate` built: list, dict or Mapping type, namedtuple)."""
    if isinstance(obj, _Slot):
        return tensors[obj.k]
    if isinstance(obj, list):
        return [_fill(x, tensors) for x in obj]
    if _is_namedtuple(obj):
        return type(obj)(*(_fill(x, tensors) for x in obj))
    if isinstance(obj, dict) and type(obj) is dict:
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, collections.abc.MutableMapping):
        for k in list(obj.keys()):
            obj[k] = _fill(obj[k], tensors)
        return obj
    return obj
