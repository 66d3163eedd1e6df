"""dutycycle.Tensor: the Python half of the tensor (operators, methods, indexing). Storage, shapes,
autograd and every kernel live in the C core (`_C`); this file only parses arguments and calls it."""

from __future__ import annotations

import builtins
import collections
import math
import operator

from . import _C
from ._dtype import (
    as_device,
    as_dtype,
    bfloat16,
    bool_,
    device,
    device_from_tuple,
    dtype,
    dtype_from_id,
    float16,
    float32,
    float64,
    int32,
    int64,
)

K = _C.kernel_names()  # kernel ids by name, e.g. K["add"]

_MaxMin = collections.namedtuple("max_min", ["values", "indices"])


def _norm_size(size, what="size"):
    """Accept zeros(2, 3), zeros((2, 3)), zeros([2, 3])."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    if builtins.any(isinstance(s, Tensor) for s in size):
        size = tuple(int(s) for s in size)
    out = []
    for s in size:
        if isinstance(s, bool) or not hasattr(s, "__index__"):  # ints and NumPy integers, not floats
            raise TypeError(f"{what} must be ints, got {type(s).__name__} in {size!r}")
        out.append(operator.index(s))
    return tuple(out)


class GradFn:
    """What produced a non-leaf tensor (read-only: the graph lives in C)."""

    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name

    def __repr__(self):
        return f"<{self._name}>"


class RemovableHandle:
    def __init__(self, tensor, hid):
        self._tensor, self._id = tensor, hid

    def remove(self):
        if self._tensor is not None:
            self._tensor._remove_post_accumulate_grad_hook(self._id)
            self._tensor = None


class Tensor(_C.TensorBase):
    """An n-dimensional array on a device, with autograd. Create one with dutycycle.tensor(), zeros(),
    randn(), from_numpy() and friends."""

    __array_ufunc__ = None  # make NumPy defer to our reflected operators
    __hash__ = object.__hash__

    # --- basic properties ---------------------------------------------------------------------
    @property
    def dtype(self) -> dtype:
        return dtype_from_id(self._dtype_id)

    @property
    def device(self) -> device:
        return device_from_tuple(self._device_tuple)

    @property
    def is_cuda(self):
        return self._device_tuple[0] == 1

    @property
    def grad_fn(self):
        n = self._grad_fn_name
        return None if n is None else GradFn(n)

    @property
    def is_floating_point_(self):
        return self.dtype.is_floating_point

    def is_floating_point(self):
        return self.dtype.is_floating_point

    def size(self, dim=None):
        if dim is None:
            return self.shape
        return self.shape[dim]

    def dim(self):
        return self.ndim

    def nelement(self):
        return self.numel()

    def element_size(self):
        return self.dtype.itemsize

    @property
    def data(self):
        return _C.detach(self)

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be a tensor, got {type(value).__name__}")
        self._set_data(value)

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    @property
    def mT(self):
        return _C.transpose(self, -2, -1)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __bool__(self):
        if self.numel() != 1:
            raise RuntimeError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __repr__(self):
        suffix = []
        if self.dtype not in (float32, int64, bool_):
            suffix.append(f"dtype={self.dtype!r}")
        if self.device.type != "cpu":
            suffix.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            suffix.append(f"grad_fn={self.grad_fn!r}")
        elif self.requires_grad:
            suffix.append("requires_grad=True")
        import numpy as np

        arr = self.detach()
        if arr.dtype == bfloat16:
            arr = arr.float()
        body = np.array2string(arr.cpu().numpy(), separator=", ", prefix="tensor(", threshold=200)
        return "tensor(" + body + ("".join(", " + s for s in suffix)) + ")"

    def __reduce_ex__(self, proto):
        raise TypeError("dutycycle tensors are not pickled; save them with dutycycle's checkpoint functions "
                        "or convert with .numpy()")

    # --- conversion ---------------------------------------------------------------------------
    def numpy(self):
        import numpy as np

        if self.requires_grad:
            raise RuntimeError("can't call numpy() on a tensor that requires grad; use tensor.detach().numpy()")
        return np.asarray(self)

    def tolist(self):
        t = self.detach()
        if t.dtype == bfloat16:
            t = t.float()
        return t.cpu().numpy().tolist()

    def to(self, *args, **kwargs):
        dt, dev = None, None
        for a in list(args) + [kwargs.get("device"), kwargs.get("dtype")]:
            if a is None:
                continue
            if isinstance(a, dtype):
                dt = a
            elif isinstance(a, Tensor):
                dt, dev = a.dtype, a.device
            elif isinstance(a, (str, device, int)) and not isinstance(a, bool):
                dev = as_device(a)
            else:
                raise TypeError(f"to(): expected a device, dtype or tensor, got {a!r}")
        for k in kwargs:
            if k not in ("device", "dtype", "non_blocking", "copy", "memory_format"):
                raise TypeError(f"to() got an unexpected keyword argument {k!r}")
        dt = dt or self.dtype
        dev = dev or self.device
        out = _C.to(self, dt.id, *dev._tuple)
        if kwargs.get("copy") and out is self:
            out = _C.clone(self)
        return out

    def type(self, dt=None):
        if dt is None:
            return f"dutycycle.{self.dtype.name}"
        return self.to(as_dtype(dt))

    def float(self):
        return self.to(float32)

    def double(self):
        return self.to(float64)

    def half(self):
        return self.to(float16)

    def bfloat16(self):
        return self.to(bfloat16)

    def long(self):
        return self.to(int64)

    def int(self):
        return self.to(int32)

    def bool(self):
        return self.to(bool_)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to(as_device("cuda" if device is None else device if not isinstance(device, int)
                                 else f"cuda:{device}"))

    def contiguous(self):
        return _C.contiguous(self)

    def clone(self):
        return _C.clone(self)

    def detach(self):
        return _C.detach(self)

    def detach_(self):
        raise RuntimeError("detach_() is not supported; use detach()")

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False):
        from . import _functions as F

        return F.zeros(*size, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False):
        from . import _functions as F

        return F.ones(*size, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, device=None, requires_grad=False):
        from . import _functions as F

        return F.full(size, fill_value, dtype=dtype or self.dtype, device=device or self.device,
                      requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False):
        from . import _functions as F

        return F.empty(*size, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
        from . import _functions as F

        return F.tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    # --- autograd -------------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        if create_graph:
            raise NotImplementedError("create_graph=True (higher-order gradients) is not supported")
        if inputs is not None:
            raise NotImplementedError("backward(inputs=...) is not supported")
        if gradient is not None and not isinstance(gradient, Tensor):
            gradient = _scalar_or_tensor(gradient, self)
        _C.backward(self, gradient, bool(retain_graph))

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(param)`` the moment this leaf's .grad is final in each backward pass."""
        return RemovableHandle(self, self._add_post_accumulate_grad_hook(hook))

    def retain_grad(self):
        raise NotImplementedError("retain_grad() on non-leaf tensors is not supported")

    # --- views ------------------------------------------------------------------------------------
    def view(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], dtype):
            raise TypeError("view(dtype) is not supported; use .to(dtype)")
        return _C.view(self, _norm_size(shape, "view() sizes"))

    def reshape(self, *shape):
        return _C.view(self, _norm_size(shape, "reshape() sizes"), True)

    def view_as(self, other):
        return self.view(other.shape)

    def reshape_as(self, other):
        return self.reshape(other.shape)

    def expand(self, *sizes):
        return _C.expand(self, _norm_size(sizes, "expand() sizes"))

    def expand_as(self, other):
        return self.expand(other.shape)

    def permute(self, *dims):
        return _C.permute(self, _norm_size(dims, "permute() dims"))

    def transpose(self, dim0, dim1):
        return _C.transpose(self, dim0, dim1)

    def t(self):
        if self.ndim > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dims, got shape {self.shape}")
        return self if self.ndim < 2 else _C.transpose(self, 0, 1)

    def unsqueeze(self, dim):
        return _C.unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return _C.squeeze(self, dim)

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s = start_dim % self.ndim
        e = end_dim % self.ndim
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        shape = self.shape[:s] + (-1 if self.numel() else math.prod(self.shape[s:e + 1]),) + self.shape[e + 1:]
        return self.reshape(shape)

    def unflatten(self, dim, sizes):
        d = dim % self.ndim
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1:])

    def narrow(self, dim, start, length):
        size = self.shape[dim]
        if start < 0:
            start += size
        if not 0 <= start <= size or length < 0 or start + length > size:
            raise IndexError(f"narrow: start {start} + length {length} is out of range for dim {dim} of size {size} "
                             f"(shape {self.shape})")
        return _C.slice(self, dim, start, start + length, 1)

    def split(self, split_size_or_sections, dim=0):
        n = self.shape[dim]
        if isinstance(split_size_or_sections, int):
            if split_size_or_sections <= 0:
                raise ValueError(f"split_size must be positive, got {split_size_or_sections}")
            sizes = [min(split_size_or_sections, n - i) for i in range(0, n, split_size_or_sections)] or [0]
        else:
            sizes = list(split_size_or_sections)
            if sum(sizes) != n:
                raise ValueError(f"split sections {sizes} don't add up to the size {n} of dim {dim}")
        out, off = [], 0
        for s in sizes:
            out.append(_C.slice(self, dim, off, off + s, 1))
            off += s
        return tuple(out)

    def chunk(self, chunks, dim=0):
        if chunks <= 0:
            raise ValueError(f"chunk expects a positive number of chunks, got {chunks}")
        n = self.shape[dim]
        return self.split(max(1, -(-n // chunks)), dim)

    def unbind(self, dim=0):
        return tuple(_C.select(self, dim, i) for i in range(self.shape[dim]))

    def __getitem__(self, idx):
        if not isinstance(idx, tuple):
            idx = (idx,)
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
                    import numpy as np

                    flat = out.flatten(dim, dim + index.ndim - 1) if index.ndim else out.unsqueeze(dim)
                    nz = np.flatnonzero(index.cpu().numpy().reshape(-1))
                    sel = _tensor_from(nz.astype("int64"), dtype=int64, device=self.device)
                    out = _C.gather(flat, dim, sel, True)
                    dim += 1
                    continue
                if index.dtype != int64:
                    index = index.long()
                flat = index.reshape(-1)
                out = _C.gather(out, dim, flat, True)
                if index.ndim != 1:
                    out = out.reshape(out.shape[:dim] + index.shape + out.shape[dim + 1:])
                dim += index.ndim
            else:
                raise TypeError(f"tensor indices must be ints, slices, None, Ellipsis or int64 tensors, "
                                f"got {type(item).__name__}")
        return out

    def __setitem__(self, idx, value):
        items = idx if isinstance(idx, tuple) else (idx,)
        if builtins.any(isinstance(i, (Tensor, list)) for i in items):
            raise NotImplementedError("assignment through an index tensor is not supported; use index_add or "
                                      "masked_fill")
        target = self[idx]  # a view sharing storage with self
        target.copy_(value if isinstance(value, Tensor) else _scalar(value, target))

    # --- in place -----------------------------------------------------------------------------------
    def copy_(self, src, non_blocking=False):
        if not isinstance(src, Tensor):
            src = _tensor_from(src, dtype=self.dtype, device=self.device)
        _C.copy_(self, src)
        return self

    def fill_(self, value):
        _C.fill_(self, float(value))
        return self

    def zero_(self):
        _C.fill_(self, 0.0)
        return self

    def add_(self, other, alpha=1):
        other = _scalar_or_tensor(other, self)
        if alpha != 1:
            other = other * alpha
        _C.binary_(K["add"], self, other)
        return self

    def sub_(self, other, alpha=1):
        other = _scalar_or_tensor(other, self)
        if alpha != 1:
            other = other * alpha
        _C.binary_(K["sub"], self, other)
        return self

    def mul_(self, other):
        _C.binary_(K["mul"], self, _scalar_or_tensor(other, self))
        return self

    def div_(self, other):
        _C.binary_(K["div"], self, _scalar_or_tensor(other, self))
        return self

    def clamp_(self, min=None, max=None):
        return self.copy_(_C.clamp(self.detach(), min, max))

    def normal_(self, mean=0.0, std=1.0):
        from . import _functions as F

        r = F.randn(self.shape, dtype=self.dtype if self.dtype.is_floating_point else float32, device=self.device)
        return self.copy_(r * std + mean if (std != 1.0 or mean != 0.0) else r)

    def uniform_(self, a=0.0, b=1.0):
        from . import _functions as F

        r = F.rand(self.shape, dtype=self.dtype if self.dtype.is_floating_point else float32, device=self.device)
        return self.copy_(r * (b - a) + a)

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_

    # --- arithmetic ---------------------------------------------------------------------------------
    def _bin(self, op, other):
        a, b = _coerce(self, other)
        return _C.binary(K[op], a, b)

    def __add__(self, other):
        return self._bin("add", other)

    def __radd__(self, other):
        return self._bin("add", other)

    def __sub__(self, other):
        return self._bin("sub", other)

    def __rsub__(self, other):
        a, b = _coerce(self, other)
        return _C.binary(K["sub"], b, a)

    def __mul__(self, other):
        return self._bin("mul", other)

    def __rmul__(self, other):
        return self._bin("mul", other)

    def __truediv__(self, other):
        a, b = _coerce(self, other, need_float=True)
        return _C.binary(K["div"], a, b)

    def __rtruediv__(self, other):
        a, b = _coerce(self, other, need_float=True)
        return _C.binary(K["div"], b, a)

    def __pow__(self, other):
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            a = self if self.dtype.is_floating_point else self.float()
            return _C.pow_scalar(a, float(other))
        a, b = _coerce(self, other, need_float=True)
        return _C.binary(K["pow"], a, b)

    def __rpow__(self, other):
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            a = self if self.dtype.is_floating_point else self.float()
            return _C.pow_scalar(a, float(other), True)
        a, b = _coerce(self, other, need_float=True)
        return _C.binary(K["pow"], b, a)

    def __matmul__(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"matmul: expected a tensor, got {type(other).__name__}")
        return _C.matmul(self, other)

    def __rmatmul__(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"matmul: expected a tensor, got {type(other).__name__}")
        return _C.matmul(other, self)

    def __neg__(self):
        return _C.unary(K["neg"], self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _C.unary(K["abs"], self)

    def __eq__(self, other):
        return self._bin("eq", other)

    def __ne__(self, other):
        return self._bin("ne", other)

    def __lt__(self, other):
        return self._bin("lt", other)

    def __le__(self, other):
        return self._bin("le", other)

    def __gt__(self, other):
        return self._bin("gt", other)

    def __ge__(self, other):
        return self._bin("ge", other)

    def __invert__(self):
        if self.dtype != bool_:
            raise TypeError("~ is only supported on bool tensors")
        return self._bin("eq", False)

    def __and__(self, other):
        a, b = _coerce(self, other)
        return _C.binary(K["minimum"], a.long(), b.long()).bool() if a.dtype == bool_ else _unsupported("&")

    def __or__(self, other):
        a, b = _coerce(self, other)
        return _C.binary(K["maximum"], a.long(), b.long()).bool() if a.dtype == bool_ else _unsupported("|")

    add = __add__
    sub = __sub__
    mul = __mul__
    div = __truediv__
    true_divide = __truediv__
    pow = __pow__
    matmul = __matmul__
    neg = __neg__
    abs = __abs__
    eq = __eq__
    ne = __ne__
    lt = __lt__
    le = __le__
    gt = __gt__
    ge = __ge__

    def maximum(self, other):
        return self._bin("maximum", other)

    def minimum(self, other):
        return self._bin("minimum", other)

    def exp(self):
        return _C.unary(K["exp"], self)

    def log(self):
        return _C.unary(K["log"], self)

    def sqrt(self):
        return _C.unary(K["sqrt"], self)

    def rsqrt(self):
        return _C.unary(K["rsqrt"], self)

    def sin(self):
        return _C.unary(K["sin"], self)

    def cos(self):
        return _C.unary(K["cos"], self)

    def tanh(self):
        return _C.unary(K["tanh"], self)

    def sigmoid(self):
        return _C.unary(K["sigmoid"], self)

    def relu(self):
        return _C.unary(K["relu"], self)

    def square(self):
        return self * self

    def clamp(self, min=None, max=None):
        return _C.clamp(self, min, max)

    clip = clamp

    def masked_fill(self, mask, value):
        if not isinstance(mask, Tensor) or mask.dtype != bool_:
            raise TypeError("masked_fill: mask must be a bool tensor")
        v = value if isinstance(value, Tensor) else _scalar(value, self)
        return _C.where(mask, v, self)

    def where(self, condition, other):
        return where(condition, self, other)

    def gather(self, dim, index):
        return _C.gather(self, dim, index)

    def index_select(self, dim, index):
        return _C.gather(self, dim, index, True)

    def tril(self, diagonal=0):
        return _C.tril(self, diagonal)

    def triu(self, diagonal=0):
        return _C.tril(self, diagonal, True)

    # --- reductions ------------------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False, dtype=None):
        x = self if dtype is None else self.to(dtype)
        return _C.sum(x, dim, keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None):
        x = self if dtype is None else self.to(dtype)
        return _C.sum(x, dim, keepdim, True)

    def var(self, dim=None, keepdim=False, unbiased=True, correction=None):
        corr = (1 if unbiased else 0) if correction is None else correction
        mu = self.mean(dim, keepdim=True)
        d = self - mu
        n = self.numel() // max(1, mu.numel())
        return (d * d).sum(dim, keepdim=keepdim) / max(n - corr, 0)

    def std(self, dim=None, keepdim=False, unbiased=True, correction=None):
        return self.var(dim, keepdim, unbiased, correction).sqrt()

    def _maxmin(self, dim, keepdim, is_min, name):
        if isinstance(dim, Tensor):
            return self.minimum(dim) if is_min else self.maximum(dim)
        if dim is None:
            return _C.amax(self, None, False, is_min)
        if not isinstance(dim, int):
            raise TypeError(f"{name}(): dim must be an int")
        return _MaxMin(_C.amax(self, dim, keepdim, is_min), _C.argmax(self, dim, keepdim, is_min))

    def max(self, dim=None, keepdim=False):
        return self._maxmin(dim, keepdim, False, "max")

    def min(self, dim=None, keepdim=False):
        return self._maxmin(dim, keepdim, True, "min")

    def amax(self, dim=None, keepdim=False):
        return _C.amax(self, dim, keepdim, False)

    def amin(self, dim=None, keepdim=False):
        return _C.amax(self, dim, keepdim, True)

    def argmax(self, dim=None, keepdim=False):
        return _C.argmax(self, dim, keepdim, False)

    def argmin(self, dim=None, keepdim=False):
        return _C.argmax(self, dim, keepdim, True)

    def softmax(self, dim):
        return _C.softmax(self, dim)

    def log_softmax(self, dim):
        return _C.softmax(self, dim, True)

    def all(self):
        return bool((self.bool().long().sum() == self.numel()).item())

    def any(self):
        return bool((self.bool().long().sum() > 0).item())

    def allclose(self, other, rtol=1e-5, atol=1e-8):
        import numpy as np

        return bool(np.allclose(self.detach().cpu().double().numpy(), other.detach().cpu().double().numpy(),
                                rtol=rtol, atol=atol))


def _unsupported(op):
    raise TypeError(f"operator {op} is only supported on bool tensors")


def _scalar(value, like):
    """A 0-d tensor holding a Python scalar, with like's dtype and device."""
    if isinstance(value, Tensor):
        return value
    if not isinstance(value, (int, float, bool)):
        raise TypeError(f"expected a tensor or a Python number, got {type(value).__name__}")
    return _C.full((), float(value), like._dtype_id, *like._device_tuple)


def _coerce(t, other, need_float=False):
    """Pair a tensor with a tensor or Python number. Numbers take the tensor's dtype; an integer
    tensor meeting a float number (or a true division) becomes float32, as in PyTorch. Tensors of
    different dtypes are an error (the core reports it)."""
    if isinstance(other, Tensor):
        if need_float and not t.dtype.is_floating_point and not other.dtype.is_floating_point:
            return t.float(), other.float()
        return t, other
    if isinstance(other, bool):
        if t.dtype == bool_:
            return t, _C.full((), float(other), bool_.id, *t._device_tuple)
        other = int(other)
    if isinstance(other, float) or need_float:
        if not t.dtype.is_floating_point:
            t = t.float()
    elif isinstance(other, int) and t.dtype == bool_:
        t = t.long()
    elif not isinstance(other, (int, float)):
        import numpy as np

        if isinstance(other, (np.generic, np.ndarray)) and np.ndim(other) == 0:
            return _coerce(t, other.item(), need_float)
        raise TypeError(f"unsupported operand type: {type(other).__name__} (expected a tensor or a number)")
    return t, _C.full((), float(other), t._dtype_id, *t._device_tuple)


def _scalar_or_tensor(v, like):
    return v if isinstance(v, Tensor) else _scalar(v, like)


def _tensor_from(data, dtype=None, device=None):
    from . import _functions as F

    return F.tensor(data, dtype=dtype, device=device)


def where(condition, input, other):
    if isinstance(input, Tensor):
        other = _scalar_or_tensor(other, input)
    elif isinstance(other, Tensor):
        input = _scalar_or_tensor(input, other)
    else:
        raise TypeError("where: at least one of input and other must be a tensor")
    return _C.where(condition, input, other)


_C.set_tensor_class(Tensor)
