"""dutycycle.Tensor: the Python half of the tensor (operators, methods, indexing). Storage, shapes,
autograd and every kernel live in the C core (`_C`); this file only parses arguments and calls it."""

from __future__ import annotations

import builtins
import collections
import math
import operator
import threading

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
    int8,
    int16,
    int32,
    int64,
    uint8,
)

_ops = _C.ops  # one function per op of csrc/core/ops.def: _ops.exp(x), _ops.add(a, b), _ops.add_(t, b)

_MaxMin = collections.namedtuple("max_min", ["values", "indices"])
_Sort = collections.namedtuple("sort", ["values", "indices"])


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


# End-of-backward callbacks (torch's Variable._execution_engine.queue_callback): a hook that runs
# during backward (e.g. DDP's reducer marking a gradient ready) queues fn(ok) to run once the
# outermost backward() of this thread has returned; ok is False when that backward raised.
_backward_state = threading.local()


def _queue_backward_callback(fn):
    """Run fn(ok) when the backward() now running on this thread returns (ok: it did not raise).
    Outside a backward it runs at the end of the next one on this thread."""
    cbs = getattr(_backward_state, "callbacks", None)
    if cbs is None:
        cbs = _backward_state.callbacks = []
    cbs.append(fn)


def _run_backward(fn):
    """fn() (one engine pass), then the queued end-of-backward callbacks if this is the outermost pass."""
    depth = getattr(_backward_state, "depth", 0)
    _backward_state.depth = depth + 1
    ok = False
    try:
        fn()
        ok = True
    finally:
        _backward_state.depth = depth
        if depth == 0:
            cbs = getattr(_backward_state, "callbacks", None)
            _backward_state.callbacks = []
            for cb in cbs or ():
                if ok:
                    cb(True)
                else:
                    try:
                        cb(False)
                    except Exception:  # the backward's own exception is the one to see
                        pass


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

    def __new__(cls, *args, device=None):
        """The legacy constructor, as torch.Tensor: Tensor(2, 3) is uninitialised float32 (the
        default dtype) of that size, Tensor([1, 2]) / Tensor(ndarray) a copy of the data in the
        default dtype, Tensor() empty. New code uses dutycycle.tensor / empty."""
        from ._functions import get_default_dtype

        return _legacy_new(get_default_dtype(), args, device, "Tensor")

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

    def __format__(self, spec):
        """f"{loss:.4f}" of a 0-d tensor formats its value, as in torch. # note: sync point (.item())"""
        if self.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec)

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
        a = arr.cpu().numpy()
        opts = {}
        if a.dtype.kind == "f" and a.size:
            fin = a[np.isfinite(a)]
            if fin.size and not np.all(fin == np.round(fin)):
                opts = dict(precision=4, floatmode="fixed")  # torch's default print precision
        body = np.array2string(a, separator=", ", prefix="tensor(", threshold=200, **opts)
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
        if (kwargs.get("non_blocking") and dev.type == "cuda" and self.device.type == "cpu" and dt == self.dtype
                and self.is_pinned() and self.is_contiguous() and not self.requires_grad):
            # from page-locked memory: queued on the current stream, no host wait (the pinned block is
            # kept from reuse until the copy has read it)
            i = dev.index if dev.index is not None else _cuda_current()
            return _C.cuda_to_device_async(self, i, _C.cuda_current_stream(i))
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

    def short(self):
        return self.to(int16)

    def char(self):
        return self.to(int8)

    def byte(self):
        return self.to(uint8)

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
        _run_backward(lambda: _C.backward(self, gradient, bool(retain_graph)))

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(param)`` the moment this leaf's .grad is final in each backward pass."""
        return RemovableHandle(self, self._add_post_accumulate_grad_hook(hook))

    def register_hook(self, hook):
        raise NotImplementedError(
            "Tensor.register_hook (gradient hooks on any tensor) is not supported: the autograd engine runs in C. "
            "On leaves (parameters) use tensor.register_post_accumulate_grad_hook(fn), which calls fn(tensor) once "
            "tensor.grad is final; to change a gradient, edit tensor.grad there")

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

    # --- indexing (_indexing.py) --------------------------------------------------------------------
    def __getitem__(self, idx):
        return _indexing.getitem(self, idx)

    def __setitem__(self, idx, value):
        _indexing.setitem(self, idx, value)

    # --- in place -----------------------------------------------------------------------------------
    def masked_fill_(self, mask, value):
        return self.copy_(self.masked_fill(mask, value))

    def copy_(self, src, non_blocking=False):
        if not isinstance(src, Tensor):
            src = _tensor_from(src, dtype=self.dtype, device=self.device)
        _C.copy_(self, src)
        return self

    def fill_(self, value):
        _C.fill_(self, _py_number(value))
        return self

    def zero_(self):
        _C.fill_(self, 0.0)
        return self

    def add_(self, other, alpha=1):
        other = _scalar_or_tensor(other, self)
        if alpha != 1:
            other = other * alpha
        _ops.add_(self, other)
        return self

    def sub_(self, other, alpha=1):
        other = _scalar_or_tensor(other, self)
        if alpha != 1:
            other = other * alpha
        _ops.sub_(self, other)
        return self

    def mul_(self, other):
        _ops.mul_(self, _scalar_or_tensor(other, self))
        return self

    def div_(self, other):
        _ops.div_(self, _scalar_or_tensor(other, self))
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

    def _unary_(self, name, out):
        """The in-place unary ops: compute out of place on a detached alias, write back with copy_
        (which enforces the in-place rules and bumps the version counter)."""
        try:
            return self.copy_(out)
        except _C.AutogradError as e:
            raise _C.AutogradError(str(e).replace("copy_:", f"{name}:", 1)) from None

    def exp_(self):
        return self._unary_("exp_", self.detach().exp())

    def log_(self):
        return self._unary_("log_", self.detach().log())

    def sqrt_(self):
        return self._unary_("sqrt_", self.detach().sqrt())

    def rsqrt_(self):
        return self._unary_("rsqrt_", self.detach().rsqrt())

    def relu_(self):
        return self._unary_("relu_", self.detach().relu())

    def sigmoid_(self):
        return self._unary_("sigmoid_", self.detach().sigmoid())

    def tanh_(self):
        return self._unary_("tanh_", self.detach().tanh())

    def neg_(self):
        return self._unary_("neg_", -self.detach())

    def abs_(self):
        return self._unary_("abs_", self.detach().abs())

    def pow_(self, exponent):
        return self._unary_("pow_", self.detach() ** (exponent.detach() if isinstance(exponent, Tensor) else exponent))

    def clamp_min_(self, min):
        return self.clamp_(min, None)

    def clamp_max_(self, max):
        return self.clamp_(None, max)

    clip_ = clamp_

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_

    # --- arithmetic ---------------------------------------------------------------------------------
    def _bin(self, op, other):
        a, b = _coerce(self, other)
        return op(a, b)

    def __add__(self, other):
        return self._bin(_ops.add, other)

    def __radd__(self, other):
        return self._bin(_ops.add, other)

    def __sub__(self, other):
        return self._bin(_ops.sub, other)

    def __rsub__(self, other):
        a, b = _coerce(self, other)
        return _ops.sub(b, a)

    def __mul__(self, other):
        return self._bin(_ops.mul, other)

    def __rmul__(self, other):
        return self._bin(_ops.mul, other)

    def __truediv__(self, other):
        a, b = _coerce(self, other, need_float=True)
        return _ops.div(a, b)

    def __rtruediv__(self, other):
        a, b = _coerce(self, other, need_float=True)
        return _ops.div(b, a)

    def __pow__(self, other):
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            a = self if self.dtype.is_floating_point else self.float()
            return _C.pow_scalar(a, float(other))
        a, b = _coerce(self, other, need_float=True)
        return _ops.pow(a, b)

    def __rpow__(self, other):
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            a = self if self.dtype.is_floating_point else self.float()
            return _C.pow_scalar(a, float(other), True)
        a, b = _coerce(self, other, need_float=True)
        return _ops.pow(b, a)

    def __matmul__(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"matmul: expected a tensor, got {type(other).__name__}")
        if _autocast_local.__dict__.get("active"):
            return _C.matmul(*_autocast.lower(self, other))
        return _C.matmul(self, other)

    def __rmatmul__(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"matmul: expected a tensor, got {type(other).__name__}")
        if _autocast_local.__dict__.get("active"):
            return _C.matmul(*_autocast.lower(other, self))
        return _C.matmul(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def __eq__(self, other):
        return self._bin(_ops.eq, other)

    def __ne__(self, other):
        return self._bin(_ops.ne, other)

    def __lt__(self, other):
        return self._bin(_ops.lt, other)

    def __le__(self, other):
        return self._bin(_ops.le, other)

    def __gt__(self, other):
        return self._bin(_ops.gt, other)

    def __ge__(self, other):
        return self._bin(_ops.ge, other)

    def __invert__(self):
        if self.dtype != bool_:
            raise TypeError("~ is only supported on bool tensors")
        return self._bin(_ops.eq, False)

    def __and__(self, other):
        return self._bitwise(_ops.bitwise_and, other, "&")

    def __or__(self, other):
        return self._bitwise(_ops.bitwise_or, other, "|")

    def __xor__(self, other):
        return self._bitwise(_ops.bitwise_xor, other, "^")

    __rand__ = __and__
    __ror__ = __or__
    __rxor__ = __xor__

    def _bitwise(self, op, other, sym):
        if self.dtype.is_floating_point or (isinstance(other, Tensor) and other.dtype.is_floating_point) or \
                isinstance(other, float):
            raise TypeError(f"{sym} is only supported on integer and bool tensors, got {self.dtype.name}")
        if self.dtype == bool_ and isinstance(other, bool):
            return op(self, _C.full((), other, bool_.id, *self._device_tuple))
        a, b = _coerce(self, other)
        return op(a, b)

    bitwise_and = __and__
    bitwise_or = __or__
    bitwise_xor = __xor__

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
        return self._bin(_ops.maximum, other)

    def minimum(self, other):
        return self._bin(_ops.minimum, other)

    def exp(self):
        return _ops.exp(self)

    def log(self):
        return _ops.log(self)

    def sqrt(self):
        return _ops.sqrt(self)

    def rsqrt(self):
        return _ops.rsqrt(self)

    def sin(self):
        return _ops.sin(self)

    def cos(self):
        return _ops.cos(self)

    def tanh(self):
        return _ops.tanh(self)

    def sigmoid(self):
        return _ops.sigmoid(self)

    def relu(self):
        return _ops.relu(self)

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

    def equal(self, other):
        """True when other has the same shape and the same values (a Python bool, as torch.equal)."""
        return isinstance(other, Tensor) and self.shape == other.shape and bool((self == other).all())

    def isclose(self, other, rtol=1e-5, atol=1e-8):
        other = _scalar_or_tensor(other, self)
        return (self - other).abs() <= (other.abs() * rtol + atol)

    def broadcast_to(self, *size):
        return self.expand(*size)

    def pin_memory(self, device=None):
        """A copy in page-locked host memory, from which .to("cuda", non_blocking=True) copies without a
        host wait. Without a usable GPU there is nothing to pin for: the tensor itself comes back, so
        ported loaders (pin_memory=True) run on the CPU."""
        from . import cuda

        if self.device.type != "cpu":
            raise RuntimeError(f"cannot pin a tensor on {self.device}: only CPU tensors can be pinned")
        if not cuda.is_available() or self.is_pinned():
            return self
        return _C.cuda_pin_memory(self.detach().contiguous())

    def is_pinned(self, device=None):
        from . import cuda

        return self.device.type == "cpu" and cuda.is_available() and _C.cuda_is_pinned(self)

    def record_stream(self, stream):
        """Mark this CUDA tensor as used by `stream`: its memory is not reused before the work queued on
        `stream` by the time it is freed has finished (torch.Tensor.record_stream)."""
        if self.device.type != "cuda":
            raise RuntimeError(f"record_stream: expected a CUDA tensor, got one on {self.device}")
        _C.cuda_record_stream(self, stream._handle)

    def reciprocal(self):
        return 1.0 / self

    def log1p(self):
        return _ops.log1p(self)

    def expm1(self):
        return _ops.expm1(self)

    def erf(self):
        return _ops.erf(self)

    def __floordiv__(self, other):
        a, b = _coerce(self, other)
        return _ops.floor_divide(a, b)

    def __rfloordiv__(self, other):
        b, a = _coerce(self, other)
        return _ops.floor_divide(a, b)

    def __mod__(self, other):
        a, b = _coerce(self, other)
        return _ops.remainder(a, b)

    def __rmod__(self, other):
        b, a = _coerce(self, other)
        return _ops.remainder(a, b)

    floor_divide = __floordiv__
    remainder = __mod__

    def nonzero(self, as_tuple=False):
        nz = _C.nonzero(self)  # (count, ndim); counting the elements is a sync point on a GPU, as in torch
        if as_tuple:
            if not self.ndim:  # a 0-d tensor counts as 1-d, as in torch: index 0 once if it is non-zero
                return (_C.full((nz.shape[0],), 0, int64.id, *self._device_tuple),)
            return tuple(nz[:, d] for d in range(self.ndim))
        return nz

    argwhere = nonzero

    def type_as(self, other):
        return self.to(other.dtype)

    def ndimension(self):
        return self.ndim

    def select(self, dim, index):
        return _C.select(self, dim, index)

    def mm(self, other):
        from . import _functions as F

        return F.mm(self, other)

    def bmm(self, other):
        from . import _functions as F

        return F.bmm(self, other)

    def clamp_min(self, min):
        return _C.clamp(self, min, None)

    def clamp_max(self, max):
        return _C.clamp(self, None, max)

    def isnan(self):
        return self != self

    def isinf(self):
        if not self.dtype.is_floating_point:
            return _C.full(self.shape, 0.0, bool_.id, *self._device_tuple)
        return self.abs() == math.inf

    def isfinite(self):
        if not self.dtype.is_floating_point:
            return _C.full(self.shape, 1.0, bool_.id, *self._device_tuple)
        return self.abs() < math.inf

    def logical_not(self):
        return ~self.bool()

    def logical_and(self, other):
        return self.bool() & other.bool()

    def logical_or(self, other):
        return self.bool() | other.bool()

    def repeat(self, *sizes):
        """Tile the tensor: x.repeat(2, 1) stacks two copies along dim 0 (torch.Tensor.repeat)."""
        reps = _norm_size(sizes, "repeat() sizes")
        if len(reps) < self.ndim:
            raise ValueError(f"repeat: number of repeat dims ({len(reps)}) can not be smaller than the number of "
                             f"tensor dims ({self.ndim})")
        shape = (1,) * (len(reps) - self.ndim) + tuple(self.shape)
        inter = builtins.sum(((1, n) for n in shape), ())  # (1, s0, 1, s1, ...)
        big = builtins.sum(((r, n) for r, n in zip(reps, shape)), ())  # (r0, s0, r1, s1, ...)
        return self.reshape(inter).expand(big).reshape(tuple(r * n for r, n in zip(reps, shape)))

    def flip(self, *dims):
        dims = _norm_size(dims, "flip() dims")
        out = self
        for d in dims:
            n = self.shape[d]
            out = _C.gather(out, d, _C.arange(float(n - 1), -1.0, -1.0, int64.id, *self._device_tuple), True)
        return out

    def roll(self, shifts, dims=None):
        """Shift entries along dims, wrapping around (torch.roll); without dims, over the flattened tensor."""
        if dims is None:
            if not isinstance(shifts, int):
                if len(shifts) != 1:
                    raise ValueError("roll(): without dims, shifts must be a single int")
                shifts = shifts[0]
            return self.reshape(-1).roll(shifts, 0).reshape(self.shape)
        shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if len(shifts) != len(dims):
            raise ValueError(f"roll(): shifts {shifts} and dims {dims} must have the same length")
        out = self
        for s, d in zip(shifts, dims):
            n = out.shape[d]
            s = s % n if n else 0
            if s:
                out = _C.cat([_C.slice(out, d, n - s, n, 1), _C.slice(out, d, 0, n - s, 1)], d % out.ndim)
        return out

    def repeat_interleave(self, repeats, dim=None, output_size=None):
        """Repeat each entry `repeats` times along dim (torch.repeat_interleave); without dim, over the
        flattened tensor. repeats: an int, or a 1-D int tensor with one count per entry."""
        x = self.reshape(-1) if dim is None else self
        d = 0 if dim is None else dim % x.ndim
        if isinstance(repeats, Tensor) and repeats.numel() == 1 and repeats.ndim <= 1:
            repeats = int(repeats.reshape(()).item())
        if isinstance(repeats, Tensor):  # an explicit host round-trip: the output size depends on the counts
            import numpy as np

            r = repeats.detach().cpu().numpy()
            if r.ndim != 1 or r.shape[0] != x.shape[d]:
                raise ValueError(f"repeat_interleave: repeats must have shape ({x.shape[d]},), got {repeats.shape}")
            if (r < 0).any():
                raise ValueError("repeat_interleave: repeats can not be negative")
            idx = np.repeat(np.arange(x.shape[d]), r).astype("int64")
            return _C.gather(x, d, _tensor_from(idx, dtype=int64, device=x.device), True)
        if isinstance(repeats, bool) or not isinstance(repeats, int):
            raise TypeError(f"repeat_interleave: repeats must be an int or a tensor, got {type(repeats).__name__}")
        if repeats < 0:
            raise ValueError("repeat_interleave: repeats can not be negative")
        shape = x.shape
        big = shape[:d + 1] + (repeats,) + shape[d + 1:]
        return x.unsqueeze(d + 1).expand(big).reshape(shape[:d] + (shape[d] * repeats,) + shape[d + 1:])

    def unique(self, sorted=True, return_inverse=False, return_counts=False, dim=None):
        """The distinct values, sorted (torch.unique); optionally the index of each input entry in them
        (shaped like the input) and how often each value occurs. No gradient. Built from C ops: a
        stable sort, a comparison of neighbours, a running count and nonzero (whose count is the one
        sync point on a GPU)."""
        if dim is not None:
            raise NotImplementedError("unique(dim=...) is not supported; use unique() on the flattened values")
        flat = self.detach().reshape(-1)
        n = flat.shape[0]
        order = _C.argsort(flat, 0)
        vals = _C.gather(flat, 0, order)
        if n:
            first = _C.cat([_C.full((1,), True, bool_.id, *self._device_tuple), vals[1:] != vals[:-1]], 0)
        else:
            first = _C.full((0,), False, bool_.id, *self._device_tuple)
        starts = _C.nonzero(first).reshape(-1)  # position of each distinct value in the sorted order
        out = _C.gather(vals, 0, starts)
        extra = []
        if return_inverse:  # group number of each sorted entry, scattered back to the input's order
            group = _C.cumsum(first, 0) - 1
            back = _C.argsort(order, 0)  # the inverse permutation of the sort order
            extra.append(_C.gather(group, 0, back).reshape(self.shape))
        if return_counts:
            ends = _C.cat([starts[1:], _C.full((1,), n, int64.id, *self._device_tuple)], 0)
            extra.append(ends - starts)
        return (out, *extra) if extra else out

    def cumsum(self, dim=None, dtype=None, *, axis=None):
        x = self if dtype is None else self.to(dtype)
        return _C.cumsum(x, _scan_dim(dim, axis, "cumsum"))  # O(n) per row; integers and bool sum into int64

    def cumprod(self, dim=None, dtype=None, *, axis=None):
        """Running product along dim (torch.cumprod; axis= as NumPy's alias); integers and bool
        multiply into int64. The gradient is exact when the row holds zeros."""
        x = self if dtype is None else self.to(dtype)
        return _C.cumprod(x, _scan_dim(dim, axis, "cumprod"))

    def logsumexp(self, dim, keepdim=False):
        m = _C.amax(self.detach(), dim, True, False)
        m = _C.where(m.abs() == math.inf, _C.full((), 0.0, m._dtype_id, *m._device_tuple), m)
        out = (self - m).exp().sum(dim, keepdim=True).log() + m
        return out if keepdim else out.squeeze(dim) if isinstance(dim, int) else \
            out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in {d % self.ndim for d in dim}))

    def norm(self, p="fro", dim=None, keepdim=False):
        if p in ("fro", 2, 2.0):
            return (self * self).sum(dim, keepdim=keepdim).sqrt()
        if p in (1, 1.0):
            return self.abs().sum(dim, keepdim=keepdim)
        if p in (math.inf, "inf"):
            return self.abs().amax(dim, keepdim=keepdim)
        if isinstance(p, (int, float)) and p > 0:
            return (self.abs() ** p).sum(dim, keepdim=keepdim) ** (1.0 / p)
        raise ValueError(f"norm: unsupported p={p!r}")

    def sort(self, dim=-1, descending=False, stable=False):
        """(values, indices) along dim; values carry the gradient (a gather). Always stable."""
        idx = _C.argsort(self, dim, descending)
        return _Sort(_C.gather(self, dim, idx), idx)

    def argsort(self, dim=-1, descending=False, stable=False):
        return _C.argsort(self, dim, descending)

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """(values, indices) of the k largest (or smallest) entries along dim; values carry the gradient."""
        n = self.shape[dim] if self.ndim else 1
        if not 0 <= k <= n:
            raise IndexError(f"topk: k={k} is out of range for dimension {dim} of size {n}")
        idx = _C.argsort(self, dim, largest)
        if self.ndim:
            idx = idx.narrow(dim, 0, k).contiguous()
        return _Sort(_C.gather(self, dim, idx), idx)

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

    def prod(self, dim=None, keepdim=False, dtype=None):
        """Product over dim (all elements when None). A tree of pairwise multiplies (log2(n) steps), so
        the gradient is exact with zeros in the input (no division by x, no log|x|)."""
        x = self if dtype is None else self.to(dtype)
        if x.dtype == bool_ or x.dtype == int32:
            x = x.long()
        if dim is None:
            out = x.reshape(-1).prod(0)
            return out.reshape((1,) * self.ndim) if keepdim else out
        if not isinstance(dim, int):
            raise TypeError(f"prod(): dim must be an int, got {type(dim).__name__}")
        if x.ndim == 0:
            return x
        d = dim % x.ndim if -x.ndim <= dim < x.ndim else None
        if d is None:
            raise IndexError(f"prod(): dim {dim} is out of range for a tensor of shape {x.shape}")
        n = x.shape[d]
        if n == 0:
            shape = x.shape[:d] + (1,) + x.shape[d + 1:]
            out = _C.full(shape, 1.0, x._dtype_id, *x._device_tuple)
        else:
            out = x
            while n > 1:
                if n % 2:  # pair off all but the last entry, which carries over
                    out = _C.cat([_C.slice(out, d, 0, n - 1, 2) * _C.slice(out, d, 1, n - 1, 2),
                                  _C.slice(out, d, n - 1, n, 1)], d)
                else:
                    out = _C.slice(out, d, 0, n, 2) * _C.slice(out, d, 1, n, 2)
                n = out.shape[d]
        return out if keepdim else _C.squeeze(out, d)

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
        x = _autocast.fp32(self) if _autocast_local.__dict__.get("active") else self
        return _C.softmax(x, dim)

    def log_softmax(self, dim):
        x = _autocast.fp32(self) if _autocast_local.__dict__.get("active") else self
        return _C.softmax(x, dim, True)

    def all(self, dim=None, keepdim=False):
        """A bool tensor (0-d without dim), as torch: True where every element is nonzero."""
        n = self.numel() if dim is None else self.shape[dim]
        return self.bool().long().sum(dim, keepdim) == n

    def any(self, dim=None, keepdim=False):
        return self.bool().long().sum(dim, keepdim) > 0

    def allclose(self, other, rtol=1e-5, atol=1e-8, equal_nan=False):
        a, b = self.detach().double(), _scalar_or_tensor(other, self).detach().double()
        close = ((a - b).abs() <= b.abs() * rtol + atol) | (a == b)  # a == b: infinities of one sign
        if equal_nan:
            close = close | (a.isnan() & b.isnan())
        return bool(close.all())  # the one sync point: the answer is a Python bool


def _unsupported(op):
    raise TypeError(f"operator {op} is only supported on bool tensors")


def _scalar(value, like):
    """A 0-d tensor holding a Python scalar, with like's dtype and device."""
    if isinstance(value, Tensor):
        return value
    if not isinstance(value, (int, float, bool)):
        raise TypeError(f"expected a tensor or a Python number, got {type(value).__name__}")
    return _C.full((), _py_number(value), like._dtype_id, *like._device_tuple)


def _legacy_new(dt, args, device, name):
    from . import _functions as F

    if not args:
        return F.empty(0, dtype=dt, device=device)
    if builtins.all(isinstance(a, int) and not isinstance(a, builtins.bool) for a in args):
        return F.empty(*args, dtype=dt, device=device)
    if len(args) == 1:
        data = args[0]
        if isinstance(data, Tensor):
            if data.dtype != dt:
                raise TypeError(f"{name}(): expected a {dt.name} tensor, got {data.dtype.name} (use .to())")
            return data if device is None or data.device == as_device(device) else data.to(device)
        return F.tensor(data, dtype=dt, device=device)
    raise TypeError(f"{name}(): expected sizes (ints) or one sequence of data, got {args!r}")


class _LegacyTensorType(type):
    """torch.FloatTensor & co.: call one to build a tensor of its dtype (as Tensor(...) above);
    isinstance(t, FloatTensor) is true for float32 CPU tensors."""

    def __call__(cls, *args, device=None):
        return _legacy_new(cls._dtype, args, device, cls.__name__)

    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and obj.dtype is cls._dtype and not obj.is_cuda


def _legacy_type(name, dt):
    return _LegacyTensorType(name, (), {"_dtype": dt, "__doc__": f"Legacy constructor of {dt.name} tensors."})


FloatTensor = _legacy_type("FloatTensor", float32)
DoubleTensor = _legacy_type("DoubleTensor", float64)
HalfTensor = _legacy_type("HalfTensor", float16)
BFloat16Tensor = _legacy_type("BFloat16Tensor", bfloat16)
LongTensor = _legacy_type("LongTensor", int64)
IntTensor = _legacy_type("IntTensor", int32)
ShortTensor = _legacy_type("ShortTensor", int16)
CharTensor = _legacy_type("CharTensor", int8)
ByteTensor = _legacy_type("ByteTensor", uint8)
BoolTensor = _legacy_type("BoolTensor", bool_)


def _scan_dim(dim, axis, fn):
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{fn}(): dim and axis are the same argument; give one")
        dim = axis
    if dim is None:
        raise TypeError(f"{fn}(): missing the dim argument")
    return dim


def _py_number(v):
    """A Python int (exact, for integer dtypes: 2**53 + 1 must not pass through a double) or float."""
    if isinstance(v, Tensor):
        v = v.item()
    if hasattr(v, "__index__"):  # int, bool, NumPy integers
        return int(v.__index__())
    return float(v)


def _coerce(t, other, need_float=False):
    """Pair a tensor with a tensor or Python number, by torch's rule for Python numbers (wrapped
    numbers): a number takes the tensor's dtype unless it is of a higher category, so an integer
    tensor meeting a float number (or a true division) becomes the default dtype, and a bool
    tensor meeting an int becomes int64. Two tensors go to the core as they are: it promotes
    (csrc/core/ops.h, dc_result_type)."""
    if isinstance(other, Tensor):
        if need_float and not t.dtype.is_floating_point and not other.dtype.is_floating_point:
            from ._functions import get_default_dtype

            return t.to(get_default_dtype()), other.to(get_default_dtype())
        return t, other
    if isinstance(other, bool):
        if t.dtype == bool_:
            return t, _C.full((), float(other), bool_.id, *t._device_tuple)
        other = int(other)
    if isinstance(other, float) or need_float:
        if not t.dtype.is_floating_point:  # torch: the default dtype (float32 unless set)
            from ._functions import get_default_dtype

            t = t.to(get_default_dtype())
    elif isinstance(other, int) and t.dtype == bool_:
        t = t.long()
    elif not isinstance(other, (int, float)):
        import numpy as np

        if isinstance(other, (np.generic, np.ndarray)) and np.ndim(other) == 0:
            return _coerce(t, other.item(), need_float)
        raise TypeError(f"unsupported operand type: {type(other).__name__} (expected a tensor or a number)")
    return t, _C.full((), _py_number(other), t._dtype_id, *t._device_tuple)


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


from . import _indexing  # noqa: E402  (it builds on Tensor and the helpers above)
from .amp import autocast_mode as _autocast  # noqa: E402  (matmuls and softmax read its per-thread state)

_autocast_local = _autocast._local


def _cuda_current():
    from . import cuda

    return cuda.current_device()
