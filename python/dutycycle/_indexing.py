"""Tensor indexing: x[...] reads (views for ints, slices, None and Ellipsis; gathers for index
lists, tensors and masks) and x[...] = v writes, with NumPy's and PyTorch's rules for several
advanced indices (they pair up and broadcast). Tensor.__getitem__/__setitem__ call these; `self`
is the indexed tensor."""

from __future__ import annotations

import builtins
import math
import operator

from . import _C
from ._dtype import bfloat16, bool_, int64
from ._tensor import Tensor, _scalar, _tensor_from


def getitem(self, idx):
    if not isinstance(idx, tuple):
        idx = (idx,)
    if _needs_joint_indexing(idx):
        return _getitem_joint(self, idx)
    n_real = builtins.sum(1 for i in idx if i is not None and i is not Ellipsis)
    if n_real > self.ndim:
        raise IndexError(f"too many indices for a tensor of shape {self.shape}: got {n_real}")
    out, dim = self, 0
    src_dim = 0  # the dim of self that `item` indexes, for messages
    for item in idx:
        if type(item).__module__ == "numpy":  # NumPy integer scalars and index arrays
            import numpy as np

            item = operator.index(item) if isinstance(item, np.integer) else \
                _tensor_from(item, device=self.device) if isinstance(item, np.ndarray) else item
        if item is None:
            out = _C.unsqueeze(out, dim)
            dim += 1
        elif item is Ellipsis:
            dim += self.ndim - n_real
            src_dim += self.ndim - n_real
        elif isinstance(item, bool):
            raise TypeError("indexing with a Python bool is not supported")
        elif isinstance(item, int):
            size = out.shape[dim]
            if not -size <= item < size:
                raise IndexError(f"index {item} is out of bounds for dimension {src_dim} with size {size}")
            out = _C.select(out, dim, item)
            src_dim += 1
        elif isinstance(item, slice):
            start, stop, step = item.indices(out.shape[dim])
            if step <= 0:
                raise ValueError("slices with a non-positive step are not supported")
            out = _C.slice(out, dim, start, stop, step)
            dim += 1
            src_dim += 1
        elif isinstance(item, (Tensor, list)):
            index = item if isinstance(item, Tensor) else _tensor_from(item, dtype=int64, device=self.device)
            if index.dtype.is_floating_point:
                raise IndexError(f"tensors used as indices must be integer or bool tensors, got {index.dtype.name}")
            src_dim += builtins.max(index.ndim, 1) if index.dtype == bool_ else 1
            if index.dtype == bool_:
                if index.shape != out.shape[dim:dim + index.ndim]:
                    raise IndexError(f"boolean mask of shape {index.shape} does not match the indexed "
                                     f"shape {out.shape[dim:dim + index.ndim]}")
                flat = out.flatten(dim, dim + index.ndim - 1) if index.ndim else out.unsqueeze(dim)
                sel = _C.nonzero(index.reshape(-1)).reshape(-1)  # positions of the True entries (a C op)
                out = _C.gather(flat, dim, sel, True)
                dim += 1
                continue
            if index.dtype != int64:
                index = index.long()
            if isinstance(item, list) and index.numel():  # host data: name the index as written
                import numpy as np

                a, size = np.asarray(item), out.shape[dim]
                bad = (a < -size) | (a >= size)
                if bad.any():
                    raise IndexError(f"index {a[bad].flat[0]} is out of bounds for dimension {src_dim - 1} with "
                                     f"size {size}")
            given, size = index, out.shape[dim]
            if index.numel():  # negative entries count from the end, as in torch
                index = _C.where(index < 0, index + size, index)
            flat = index.reshape(-1)
            try:
                out = _C.gather(out, dim, flat, True)
            except IndexError:  # name the index as the caller wrote it, not the wrapped one
                g = given.detach().cpu().numpy().reshape(-1)
                bad = g[(g < -size) | (g >= size)]
                if not bad.size:
                    raise
                raise _C.IndexError_(f"index {bad[0]} is out of bounds for dimension {src_dim - 1} with size "
                                     f"{size}") from None
            if index.ndim != 1:
                out = out.reshape(out.shape[:dim] + index.shape + out.shape[dim + 1:])
            dim += index.ndim
        else:
            raise TypeError(f"tensor indices must be ints, slices, None, Ellipsis or int64 tensors, "
                            f"got {type(item).__name__}")
    return out


def _getitem_joint(self, idx):
    """Several advanced indices (index lists/tensors, and ints beside them) pair up element by
    element, broadcast together, as in NumPy and PyTorch: x[[0, 1], [0, 1]] is [x00, x11].
    The broadcast index dims replace the indexed dims where they were when the advanced
    indices are adjacent, and go first otherwise (NumPy's rule)."""
    import numpy as np

    # 1. basic indexing first (slices, None, Ellipsis), keeping each advanced dim whole
    n_real = builtins.sum(1 for i in idx if i is not None and i is not Ellipsis)
    items = []
    for item in idx:
        if type(item).__module__ == "numpy":
            item = operator.index(item) if isinstance(item, np.integer) else \
                _tensor_from(item, device=self.device) if isinstance(item, np.ndarray) else item
        if isinstance(item, list):
            item = _tensor_from(item, dtype=int64, device=self.device) if item else \
                _tensor_from(np.zeros(0, np.int64), dtype=int64, device=self.device)
        if isinstance(item, Tensor) and item.dtype == bool_:  # a mask is the indices of its True entries
            nz = item.nonzero(as_tuple=True)  # a mask is the indices of its True entries (C op)
            items.extend(nz)
            n_real += len(nz) - 1
            continue
        items.append(item)
    if n_real > self.ndim:
        raise IndexError(f"too many indices for a tensor of shape {self.shape}: got {n_real}")
    basic, adv, pos = [], [], []  # adv: (dim in the basic result, index); pos: item positions
    dim = 0
    for k, item in enumerate(items):
        if item is None:
            basic.append(None)
            dim += 1
        elif item is Ellipsis:
            basic.append(Ellipsis)
            dim += self.ndim - n_real
        elif isinstance(item, bool):
            raise TypeError("indexing with a Python bool is not supported")
        elif isinstance(item, (int, Tensor)):
            if isinstance(item, Tensor) and item.dtype.is_floating_point:
                raise IndexError(f"tensors used as indices must be integer or bool tensors, got {item.dtype.name}")
            basic.append(slice(None))
            adv.append((dim, item))
            pos.append(k)
            dim += 1
        elif isinstance(item, slice):
            basic.append(item)
            dim += 1
        else:
            raise TypeError(f"tensor indices must be ints, slices, None, Ellipsis or int64 tensors, "
                            f"got {type(item).__name__}")
    out = self[tuple(basic)]
    # 2. one flat index into the advanced dims, moved to the front
    sizes = [out.shape[d] for d, _ in adv]
    idxs = []
    for (d, item), size in zip(adv, sizes):
        t = item if isinstance(item, Tensor) else _tensor_from(item, dtype=int64, device=self.device)
        t = t.long() if t.dtype != int64 else t
        if t.numel():
            a = t.cpu().numpy()
            bad = (a < -size) | (a >= size)
            if bad.any():
                raise IndexError(f"index {a[bad].flat[0]} is out of bounds for dimension {d} with size {size}")
            t = _C.where(t < 0, t + size, t)
        idxs.append(t)
    try:
        bshape = np.broadcast_shapes(*[tuple(t.shape) for t in idxs])
    except ValueError:
        raise IndexError("shape mismatch: indexing tensors could not be broadcast together with shapes " +
                         " ".join(str(list(t.shape)) for t in idxs)) from None
    flat = None
    for t, size in zip(idxs, sizes):
        t = t.expand(*bshape) if tuple(t.shape) != bshape else t
        flat = t if flat is None else flat * size + t
    adims = [d for d, _ in adv]
    rest = [d for d in range(out.ndim) if d not in adims]
    moved = out.permute(*adims, *rest) if adims + rest != list(range(out.ndim)) else out
    rest_shape = tuple(out.shape[d] for d in rest)
    moved = moved.reshape((math.prod(sizes),) + rest_shape)
    res = _C.gather(moved, 0, flat.reshape(-1).contiguous(), True).reshape(tuple(bshape) + rest_shape)
    # 3. adjacent advanced indices: their result dims go where the first of them was
    if pos == list(range(pos[0], pos[0] + len(pos))) and adims[0] > 0:
        nb, first = len(bshape), adims[0]
        order = list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, res.ndim))
        res = res.permute(*order)
    return res


def setitem(self, idx, value):
    items = idx if isinstance(idx, tuple) else (idx,)
    if builtins.any(isinstance(i, (Tensor, list)) or (type(i).__module__ == "numpy" and getattr(i, "ndim", 0) > 0)
                    for i in items):  # an index array: NumPy's rules (a basic view would be a copy)
        _setitem_advanced(self, items, value)
        return
    target = self[idx]  # a view sharing storage with self
    target.copy_(value if isinstance(value, Tensor) else _scalar(value, target))


def _setitem_advanced(self, items, value):
    """x[mask] = v, x[idx] = v, x[:, [0, 2]] = v: the common cases of PyTorch's index_put_."""
    if len(items) == 1 and isinstance(items[0], Tensor) and items[0].dtype == bool_ and \
            items[0].shape == self.shape:  # the usual x[x < 0] = 0: a where(), keeps the device
        mask = items[0]
        v = value if isinstance(value, Tensor) else _scalar(value, self)
        if v.numel() == 1:
            self.copy_(_C.where(mask, v.reshape(()).to(self.dtype), self))
            return
    import numpy as np

    if self.requires_grad or self.device.type != "cpu" or self.dtype == bfloat16:
        raise NotImplementedError(
            "assignment through an index tensor is only supported on CPU tensors (not bfloat16) that don't "
            "require grad; use masked_fill / where / index_add instead")
    np_items = tuple(i.cpu().numpy() if isinstance(i, Tensor) else i for i in items)
    if isinstance(value, Tensor):
        value = value.detach().cpu().to(self.dtype).numpy()
    view = np.asarray(self)  # shares memory with self
    view[np_items] = value
    self._bump_version()  # a write NumPy made: autograd must see it as an in-place op


def _needs_joint_indexing(idx):
    """True when an index tuple has an index list/tensor and another advanced index (a second list
    or tensor, or an int) that must pair up with it instead of being applied one after the other."""
    n_arr = n_int = 0
    for i in idx:
        if isinstance(i, (list, Tensor)) or (type(i).__module__ == "numpy" and hasattr(i, "ndim") and i.ndim > 0):
            n_arr += 1 + (i.ndim - 1 if isinstance(i, Tensor) and i.dtype == bool_ and i.ndim > 1 else 0)
        elif isinstance(i, int) and not isinstance(i, bool) or type(i).__module__ == "numpy":
            n_int += 1
    return n_arr >= 2 or (n_arr == 1 and n_int >= 1)
