"""Module-level tensor functions: constructors (tensor, zeros, randn, ...) and the function forms
of tensor methods (dutycycle.cat, dutycycle.softmax, ...)."""

from __future__ import annotations

import builtins
import collections
import math

from . import _C
from ._dtype import as_device, as_dtype, bfloat16, bool_, float32, float64, int64
from ._tensor import Tensor, _norm_size, _py_number, where  # noqa: F401

_default_dtype = float32


def set_default_dtype(d):
    global _default_dtype
    d = as_dtype(d)
    if not d.is_floating_point:
        raise TypeError(f"default dtype must be floating point, got {d!r}")
    _default_dtype = d


def get_default_dtype():
    return _default_dtype


def _finish(t, requires_grad):
    if requires_grad:
        t.requires_grad = True
    return t


def _dd(dtype, default=None):
    return as_dtype(dtype) if dtype is not None else (default or _default_dtype)


# --- constructors ----------------------------------------------------------------------------------

def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor (always a copy) from a nested list, a number, a NumPy array or a tensor."""
    import numpy as np

    if isinstance(data, Tensor):
        t = data.detach().to(dtype=_dd(dtype, data.dtype), device=as_device(device) if device else data.device,
                             copy=True)
        return _finish(t, requires_grad)
    if isinstance(data, (list, tuple)) and builtins.any(isinstance(x, Tensor) for x in data):
        data = [x.detach().cpu().numpy() if isinstance(x, Tensor) else x for x in data]
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise TypeError(f"tensor(): can't build a tensor from {type(data).__name__}: {e}") from None
    if dtype is None:
        if arr.dtype.kind == "f":
            dt = float64 if (isinstance(data, np.ndarray) and arr.dtype == np.float64) else (
                as_dtype(arr.dtype.name) if arr.dtype in (np.float32, np.float16) else _default_dtype)
        elif arr.dtype.kind in "iu":
            dt = as_dtype(arr.dtype.name) if (isinstance(data, np.ndarray) and arr.dtype.name in (
                "int64", "int32", "int16", "int8", "uint8")) else int64
        elif arr.dtype.kind == "b":
            dt = bool_
        else:
            raise TypeError(f"tensor(): unsupported data of NumPy dtype {arr.dtype} ({type(data).__name__})")
    else:
        dt = as_dtype(dtype)
    host_dt = float32 if dt == bfloat16 else dt
    arr = np.array(arr, dtype=host_dt._np, order="C")  # keeps 0-d arrays 0-d
    t = _C.clone(_C.from_buffer(arr))
    if dt != host_dt or device is not None:
        t = t.to(dt, as_device(device) if device is not None else "cpu")
    return _finish(t, requires_grad)


as_tensor = tensor


def from_numpy(arr):
    """A tensor sharing memory with a NumPy array (writes show up on both sides)."""
    import numpy as np

    if not isinstance(arr, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(arr).__name__}")
    if not arr.flags.writeable:
        # tensors are always writable: a write into e.g. a read-only memory map would crash
        raise ValueError("from_numpy: the array is read-only (e.g. np.load(..., mmap_mode='r') or "
                         "np.broadcast_to), and tensors sharing its memory could write to it; copy it with "
                         "dutycycle.tensor(arr) instead")
    if arr.dtype.name not in _NUMPY_OK:
        raise TypeError(f"from_numpy: unsupported array dtype {arr.dtype.name} (supported: "
                        f"{', '.join(sorted(_NUMPY_OK))}); convert it with arr.astype(...) first")
    return _C.from_buffer(arr)


_NUMPY_OK = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"}


def from_dlpack(obj):
    """A tensor sharing memory with any DLPack producer (NumPy, PyTorch, CuPy, ...)."""
    if hasattr(obj, "__dlpack__"):
        try:
            cap = obj.__dlpack__()
        except TypeError:
            cap = obj.__dlpack__(stream=None)
    else:
        cap = obj
    return _C.from_dlpack_capsule(cap)


def empty(*size, dtype=None, device=None, requires_grad=False):
    return _finish(_C.empty(_norm_size(size), _dd(dtype).id, *as_device(device)._tuple), requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    if isinstance(size, int):
        size = (size,)
    if dtype is None:
        dtype = bool_ if isinstance(fill_value, bool) else int64 if isinstance(fill_value, int) else _default_dtype
    return _finish(_C.full(_norm_size((size,)), _py_number(fill_value), as_dtype(dtype).id,
                           *as_device(device)._tuple), requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _finish(_C.full(_norm_size(size), 0.0, _dd(dtype).id, *as_device(device)._tuple), requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _finish(_C.full(_norm_size(size), 1.0, _dd(dtype).id, *as_device(device)._tuple), requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    vals = (start, end, step)
    if dtype is None:
        dtype = int64 if builtins.all(isinstance(v, int) for v in vals) else _default_dtype
    return _finish(_C.arange(float(start), float(end), float(step), as_dtype(dtype).id, *as_device(device)._tuple),
                   requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    if steps == 1:
        return full((1,), start, dtype=_dd(dtype), device=device, requires_grad=requires_grad)
    step = (end - start) / (steps - 1)
    t = _C.arange(0.0, float(steps), 1.0, float64.id, 0, 0)
    t = (t * step + float(start)).to(_dd(dtype), as_device(device))
    return _finish(t, requires_grad)


def _random(kind, size, dtype, device, requires_grad, low=0, high=0, generator=None):
    def draw():
        return _C.random(kind, _norm_size(size), low, high, dtype.id, *as_device(device)._tuple)

    if generator is None:
        t = draw()
    elif isinstance(generator, Generator):
        t = generator._draw(draw)
    else:
        raise TypeError(f"generator must be a dutycycle.Generator, got {type(generator).__name__}")
    return _finish(t, requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _random("rand", size, _dd(dtype), device, requires_grad, generator=generator)


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _random("randn", size, _dd(dtype), device, requires_grad, generator=generator)


def randint(low, high=None, size=None, dtype=None, device=None, requires_grad=False, generator=None):
    if size is None and isinstance(high, (tuple, list)):
        low, high, size = 0, low, high  # randint(high, size), as in torch
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing the size argument")
    return _random("randint", (size,) if not isinstance(size, int) else ((size,),), _dd(dtype, int64), device,
                   requires_grad, int(low), int(high), generator=generator)


def randperm(n, dtype=None, device=None, generator=None):
    """A random permutation of 0..n-1 drawn from dutycycle's generator (or `generator`)."""
    keys = rand(n, dtype=float64, generator=generator)
    return _C.argsort(keys, 0).to(dtype=_dd(dtype, int64), device=device)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return zeros(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return ones(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return empty(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return rand(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return randn(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def randint_like(t, low, high=None, dtype=None, device=None):
    return randint(low, high, t.shape, dtype=dtype or t.dtype, device=device or t.device)


# --- RNG -----------------------------------------------------------------------------------------

def manual_seed(seed):
    """Seed the generator every random op draws from (results don't depend on the thread count)."""
    if not isinstance(seed, int):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    _C.manual_seed(seed & 0xFFFFFFFFFFFFFFFF)


def initial_seed():
    return _C.rng_state()[0]


def get_rng_state():
    """(seed, offset): restoring it with set_rng_state replays the same random numbers."""
    return tuple(_C.rng_state())


def set_rng_state(state):
    seed, offset = state
    _C.set_rng_state(int(seed), int(offset))


# --- function forms -------------------------------------------------------------------------------

def _check_tensor(x, fn):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): expected a dutycycle.Tensor, got {type(x).__name__}")
    return x


def promote_types(type1, type2):
    """The smallest dtype both promote to (torch.promote_types): bool < integers < floats;
    uint8 with int8 gives int16, float16 with bfloat16 float32."""
    from ._dtype import dtype_from_id

    return dtype_from_id(_C.promote_types(as_dtype(type1).id, as_dtype(type2).id))


def can_cast(from_, to):
    """torch.can_cast: whether a result of dtype from_ may be written into a tensor of dtype to
    (in-place ops and out= follow it: no float into an integer tensor, nothing but bool into bool)."""
    return _C.can_cast(as_dtype(from_).id, as_dtype(to).id)


def result_type(tensor, other):
    """The dtype an op of tensor and other (a tensor or a Python number) computes in, by torch's
    rules: tensors with dims outrank 0-d tensors, which outrank Python numbers, unless the
    lower-ranked operand is of a higher category (bool < integer < floating point)."""
    from ._dtype import dtype_from_id
    from ._tensor import _coerce

    if not isinstance(tensor, Tensor):
        if not isinstance(other, Tensor):
            raise TypeError("result_type(): at least one argument must be a tensor")
        tensor, other = other, tensor
    a, b = _coerce(tensor, other)
    return dtype_from_id(_C.result_type(a, b))


def cat(tensors, dim=0):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError("cat(): expected a list or tuple of tensors")
    return _C.cat(list(tensors), dim)


concat = cat


def stack(tensors, dim=0):
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError("stack(): expected a non-empty list or tuple of tensors")
    shape0 = tensors[0].shape
    for i, t in enumerate(tensors):
        _check_tensor(t, "stack")
        if t.shape != shape0:
            raise ValueError(f"stack expects each tensor to be equal size, but got {shape0} at entry 0 and "
                             f"{t.shape} at entry {i}")
    nd = len(shape0) + 1
    d = dim % nd if -nd <= dim < nd else None
    if d is None:
        raise IndexError(f"stack: dim {dim} is out of range for {nd} dims")
    return _C.cat([t.unsqueeze(d) for t in tensors], d)


def matmul(a, b):
    return _check_tensor(a, "matmul").__matmul__(b)


def mm(a, b):
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"mm expects 2-D tensors, got shapes {a.shape} and {b.shape}")
    return a @ b  # through Tensor.__matmul__: autocast applies


def bmm(a, b):
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"bmm expects 3-D tensors, got shapes {a.shape} and {b.shape}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: batch sizes differ: {a.shape} and {b.shape}")
    return a @ b  # through Tensor.__matmul__: autocast applies


# Function forms of Tensor methods (torch.exp(x) is x.exp()), each written out so grep and IDEs
# find them. Each checks that its first argument is a tensor and forwards the rest.

def exp(input, *args, **kwargs):
    """Function form of Tensor.exp."""
    return _check_tensor(input, "exp").exp(*args, **kwargs)


def log(input, *args, **kwargs):
    """Function form of Tensor.log."""
    return _check_tensor(input, "log").log(*args, **kwargs)


def sqrt(input, *args, **kwargs):
    """Function form of Tensor.sqrt."""
    return _check_tensor(input, "sqrt").sqrt(*args, **kwargs)


def rsqrt(input, *args, **kwargs):
    """Function form of Tensor.rsqrt."""
    return _check_tensor(input, "rsqrt").rsqrt(*args, **kwargs)


def sin(input, *args, **kwargs):
    """Function form of Tensor.sin."""
    return _check_tensor(input, "sin").sin(*args, **kwargs)


def cos(input, *args, **kwargs):
    """Function form of Tensor.cos."""
    return _check_tensor(input, "cos").cos(*args, **kwargs)


def tanh(input, *args, **kwargs):
    """Function form of Tensor.tanh."""
    return _check_tensor(input, "tanh").tanh(*args, **kwargs)


def sigmoid(input, *args, **kwargs):
    """Function form of Tensor.sigmoid."""
    return _check_tensor(input, "sigmoid").sigmoid(*args, **kwargs)


def relu(input, *args, **kwargs):
    """Function form of Tensor.relu."""
    return _check_tensor(input, "relu").relu(*args, **kwargs)


def abs(input, *args, **kwargs):
    """Function form of Tensor.abs."""
    return _check_tensor(input, "abs").abs(*args, **kwargs)


def neg(input, *args, **kwargs):
    """Function form of Tensor.neg."""
    return _check_tensor(input, "neg").neg(*args, **kwargs)


def sum(input, *args, **kwargs):
    """Function form of Tensor.sum."""
    return _check_tensor(input, "sum").sum(*args, **kwargs)


def mean(input, *args, **kwargs):
    """Function form of Tensor.mean."""
    return _check_tensor(input, "mean").mean(*args, **kwargs)


def var(input, *args, **kwargs):
    """Function form of Tensor.var."""
    return _check_tensor(input, "var").var(*args, **kwargs)


def std(input, *args, **kwargs):
    """Function form of Tensor.std."""
    return _check_tensor(input, "std").std(*args, **kwargs)


def max(input, *args, **kwargs):
    """Function form of Tensor.max."""
    return _check_tensor(input, "max").max(*args, **kwargs)


def min(input, *args, **kwargs):
    """Function form of Tensor.min."""
    return _check_tensor(input, "min").min(*args, **kwargs)


def amax(input, *args, **kwargs):
    """Function form of Tensor.amax."""
    return _check_tensor(input, "amax").amax(*args, **kwargs)


def amin(input, *args, **kwargs):
    """Function form of Tensor.amin."""
    return _check_tensor(input, "amin").amin(*args, **kwargs)


def argmax(input, *args, **kwargs):
    """Function form of Tensor.argmax."""
    return _check_tensor(input, "argmax").argmax(*args, **kwargs)


def argmin(input, *args, **kwargs):
    """Function form of Tensor.argmin."""
    return _check_tensor(input, "argmin").argmin(*args, **kwargs)


def softmax(input, *args, **kwargs):
    """Function form of Tensor.softmax."""
    return _check_tensor(input, "softmax").softmax(*args, **kwargs)


def log_softmax(input, *args, **kwargs):
    """Function form of Tensor.log_softmax."""
    return _check_tensor(input, "log_softmax").log_softmax(*args, **kwargs)


def clamp(input, *args, **kwargs):
    """Function form of Tensor.clamp."""
    return _check_tensor(input, "clamp").clamp(*args, **kwargs)


def gather(input, *args, **kwargs):
    """Function form of Tensor.gather."""
    return _check_tensor(input, "gather").gather(*args, **kwargs)


def index_select(input, *args, **kwargs):
    """Function form of Tensor.index_select."""
    return _check_tensor(input, "index_select").index_select(*args, **kwargs)


def masked_fill(input, *args, **kwargs):
    """Function form of Tensor.masked_fill."""
    return _check_tensor(input, "masked_fill").masked_fill(*args, **kwargs)


def tril(input, *args, **kwargs):
    """Function form of Tensor.tril."""
    return _check_tensor(input, "tril").tril(*args, **kwargs)


def triu(input, *args, **kwargs):
    """Function form of Tensor.triu."""
    return _check_tensor(input, "triu").triu(*args, **kwargs)


def split(input, *args, **kwargs):
    """Function form of Tensor.split."""
    return _check_tensor(input, "split").split(*args, **kwargs)


def chunk(input, *args, **kwargs):
    """Function form of Tensor.chunk."""
    return _check_tensor(input, "chunk").chunk(*args, **kwargs)


def reshape(input, *args, **kwargs):
    """Function form of Tensor.reshape."""
    return _check_tensor(input, "reshape").reshape(*args, **kwargs)


def flatten(input, *args, **kwargs):
    """Function form of Tensor.flatten."""
    return _check_tensor(input, "flatten").flatten(*args, **kwargs)


def squeeze(input, *args, **kwargs):
    """Function form of Tensor.squeeze."""
    return _check_tensor(input, "squeeze").squeeze(*args, **kwargs)


def unsqueeze(input, *args, **kwargs):
    """Function form of Tensor.unsqueeze."""
    return _check_tensor(input, "unsqueeze").unsqueeze(*args, **kwargs)


def transpose(input, *args, **kwargs):
    """Function form of Tensor.transpose."""
    return _check_tensor(input, "transpose").transpose(*args, **kwargs)


def permute(input, *args, **kwargs):
    """Function form of Tensor.permute."""
    return _check_tensor(input, "permute").permute(*args, **kwargs)


def maximum(input, *args, **kwargs):
    """Function form of Tensor.maximum."""
    return _check_tensor(input, "maximum").maximum(*args, **kwargs)


def minimum(input, *args, **kwargs):
    """Function form of Tensor.minimum."""
    return _check_tensor(input, "minimum").minimum(*args, **kwargs)


def square(input, *args, **kwargs):
    """Function form of Tensor.square."""
    return _check_tensor(input, "square").square(*args, **kwargs)


def unbind(input, *args, **kwargs):
    """Function form of Tensor.unbind."""
    return _check_tensor(input, "unbind").unbind(*args, **kwargs)


def narrow(input, *args, **kwargs):
    """Function form of Tensor.narrow."""
    return _check_tensor(input, "narrow").narrow(*args, **kwargs)


def clone(input, *args, **kwargs):
    """Function form of Tensor.clone."""
    return _check_tensor(input, "clone").clone(*args, **kwargs)


def allclose(input, *args, **kwargs):
    """Function form of Tensor.allclose."""
    return _check_tensor(input, "allclose").allclose(*args, **kwargs)


def numel(input, *args, **kwargs):
    """Function form of Tensor.numel."""
    return _check_tensor(input, "numel").numel(*args, **kwargs)


def topk(input, *args, **kwargs):
    """Function form of Tensor.topk."""
    return _check_tensor(input, "topk").topk(*args, **kwargs)


def sort(input, *args, **kwargs):
    """Function form of Tensor.sort."""
    return _check_tensor(input, "sort").sort(*args, **kwargs)


def argsort(input, *args, **kwargs):
    """Function form of Tensor.argsort."""
    return _check_tensor(input, "argsort").argsort(*args, **kwargs)


def flip(input, *args, **kwargs):
    """Function form of Tensor.flip."""
    return _check_tensor(input, "flip").flip(*args, **kwargs)


def cumsum(input, *args, **kwargs):
    """Function form of Tensor.cumsum."""
    return _check_tensor(input, "cumsum").cumsum(*args, **kwargs)


def cumprod(input, *args, **kwargs):
    """Function form of Tensor.cumprod."""
    return _check_tensor(input, "cumprod").cumprod(*args, **kwargs)


def logsumexp(input, *args, **kwargs):
    """Function form of Tensor.logsumexp."""
    return _check_tensor(input, "logsumexp").logsumexp(*args, **kwargs)


def norm(input, *args, **kwargs):
    """Function form of Tensor.norm."""
    return _check_tensor(input, "norm").norm(*args, **kwargs)


def isnan(input, *args, **kwargs):
    """Function form of Tensor.isnan."""
    return _check_tensor(input, "isnan").isnan(*args, **kwargs)


def isinf(input, *args, **kwargs):
    """Function form of Tensor.isinf."""
    return _check_tensor(input, "isinf").isinf(*args, **kwargs)


def isfinite(input, *args, **kwargs):
    """Function form of Tensor.isfinite."""
    return _check_tensor(input, "isfinite").isfinite(*args, **kwargs)


def all(input, *args, **kwargs):
    """Function form of Tensor.all."""
    return _check_tensor(input, "all").all(*args, **kwargs)


def any(input, *args, **kwargs):
    """Function form of Tensor.any."""
    return _check_tensor(input, "any").any(*args, **kwargs)


def logical_not(input, *args, **kwargs):
    """Function form of Tensor.logical_not."""
    return _check_tensor(input, "logical_not").logical_not(*args, **kwargs)


def logical_and(input, *args, **kwargs):
    """Function form of Tensor.logical_and."""
    return _check_tensor(input, "logical_and").logical_and(*args, **kwargs)


def logical_or(input, *args, **kwargs):
    """Function form of Tensor.logical_or."""
    return _check_tensor(input, "logical_or").logical_or(*args, **kwargs)


def repeat(input, *args, **kwargs):
    """Function form of Tensor.repeat."""
    return _check_tensor(input, "repeat").repeat(*args, **kwargs)


def type_as(input, *args, **kwargs):
    """Function form of Tensor.type_as."""
    return _check_tensor(input, "type_as").type_as(*args, **kwargs)


def select(input, *args, **kwargs):
    """Function form of Tensor.select."""
    return _check_tensor(input, "select").select(*args, **kwargs)


def clamp_min(input, *args, **kwargs):
    """Function form of Tensor.clamp_min."""
    return _check_tensor(input, "clamp_min").clamp_min(*args, **kwargs)


def clamp_max(input, *args, **kwargs):
    """Function form of Tensor.clamp_max."""
    return _check_tensor(input, "clamp_max").clamp_max(*args, **kwargs)


def equal(input, *args, **kwargs):
    """Function form of Tensor.equal."""
    return _check_tensor(input, "equal").equal(*args, **kwargs)


def isclose(input, *args, **kwargs):
    """Function form of Tensor.isclose."""
    return _check_tensor(input, "isclose").isclose(*args, **kwargs)


def broadcast_to(input, *args, **kwargs):
    """Function form of Tensor.broadcast_to."""
    return _check_tensor(input, "broadcast_to").broadcast_to(*args, **kwargs)


def reciprocal(input, *args, **kwargs):
    """Function form of Tensor.reciprocal."""
    return _check_tensor(input, "reciprocal").reciprocal(*args, **kwargs)


def log1p(input, *args, **kwargs):
    """Function form of Tensor.log1p."""
    return _check_tensor(input, "log1p").log1p(*args, **kwargs)


def expm1(input, *args, **kwargs):
    """Function form of Tensor.expm1."""
    return _check_tensor(input, "expm1").expm1(*args, **kwargs)


def erf(input, *args, **kwargs):
    """Function form of Tensor.erf."""
    return _check_tensor(input, "erf").erf(*args, **kwargs)


def floor_divide(input, *args, **kwargs):
    """Function form of Tensor.floor_divide."""
    return _check_tensor(input, "floor_divide").floor_divide(*args, **kwargs)


def remainder(input, *args, **kwargs):
    """Function form of Tensor.remainder."""
    return _check_tensor(input, "remainder").remainder(*args, **kwargs)


def nonzero(input, *args, **kwargs):
    """Function form of Tensor.nonzero."""
    return _check_tensor(input, "nonzero").nonzero(*args, **kwargs)


def argwhere(input, *args, **kwargs):
    """Function form of Tensor.argwhere."""
    return _check_tensor(input, "argwhere").argwhere(*args, **kwargs)


def prod(input, *args, **kwargs):
    """Function form of Tensor.prod."""
    return _check_tensor(input, "prod").prod(*args, **kwargs)


def roll(input, *args, **kwargs):
    """Function form of Tensor.roll."""
    return _check_tensor(input, "roll").roll(*args, **kwargs)


def repeat_interleave(input, *args, **kwargs):
    """Function form of Tensor.repeat_interleave."""
    return _check_tensor(input, "repeat_interleave").repeat_interleave(*args, **kwargs)


def unique(input, *args, **kwargs):
    """Function form of Tensor.unique."""
    return _check_tensor(input, "unique").unique(*args, **kwargs)


clip = clamp


def meshgrid(*tensors, indexing="ij"):
    """Coordinate grids from 1-D tensors (torch.meshgrid): with 'ij' output k varies along dim k; 'xy'
    swaps the first two dims (Cartesian, as NumPy's default). Outputs are expanded views."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    if not tensors:
        raise ValueError("meshgrid: expects at least one tensor")
    for t in tensors:
        _check_tensor(t, "meshgrid")
        if t.ndim > 1:
            raise ValueError(f"meshgrid: expects 0-D or 1-D tensors, got shape {t.shape}")
    sizes = [t.numel() for t in tensors]
    pos = list(range(len(tensors)))
    if indexing == "xy" and len(tensors) >= 2:
        pos[0], pos[1] = 1, 0
    shape = [0] * len(tensors)
    for p, n in zip(pos, sizes):
        shape[p] = n
    out = []
    for t, p, n in zip(tensors, pos, sizes):
        view = [1] * len(tensors)
        view[p] = n
        out.append(t.reshape(view).expand(shape))
    return tuple(out)


def add(a, b, alpha=1):
    return a + (b * alpha if alpha != 1 else b)


def sub(a, b, alpha=1):
    return a - (b * alpha if alpha != 1 else b)


def mul(a, b):
    return a * b if isinstance(a, Tensor) else b * a


def div(a, b):
    return a / b


def pow(a, b):
    return a ** b


def is_tensor(x):
    return isinstance(x, Tensor)


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    m = n if m is None else m
    t = _C.tril(_C.tril(_C.full((n, m), 1.0, _dd(dtype).id, *as_device(device)._tuple), 0), 0, True)
    return _finish(t, requires_grad)


def multinomial(input, num_samples, replacement=False, generator=None):
    """Draw num_samples category indices per row of input (probabilities or weights, (C,) or (N, C)),
    from dutycycle's generator (so manual_seed makes it reproducible)."""
    _check_tensor(input, "multinomial")
    if input.ndim not in (1, 2):
        raise ValueError(f"multinomial: input must be 1-D or 2-D, got shape {input.shape}")
    w = input.detach().to(float64).reshape(-1, input.shape[-1])  # (N, C)
    if bool(((w < 0) | w.isnan() | w.isinf()).any()):  # one sync for the check, as torch's CPU kernel
        raise RuntimeError("multinomial: probability tensor contains either inf, nan or element < 0")
    total = w.sum(1, keepdim=True)  # (N, 1)
    if bool((total <= 0).any()):
        raise RuntimeError("multinomial: invalid multinomial distribution (sum of probabilities <= 0)")
    n_rows, n_cat = w.shape
    if num_samples <= 0:
        raise RuntimeError(f"multinomial: cannot sample n_sample <= 0 samples (got {num_samples})")
    if not replacement and num_samples > n_cat:
        raise RuntimeError(f"multinomial: cannot sample n_sample={num_samples} > prob_dist.size(-1)={n_cat} samples "
                           "without replacement")
    u = rand(n_rows, num_samples if replacement else n_cat, dtype=float64, generator=generator).to(device=w.device)
    if replacement:  # inverse CDF: the index is how many CDF entries are <= u (searchsorted, side="right")
        run = w.cumsum(1)  # (N, C)
        cdf = run / run[:, n_cat - 1:]  # normalised by the running sum's last entry, as before
        step = builtins.max(1, (1 << 24) // builtins.max(1, n_rows * n_cat))  # chunk: bounded (N, S, C) temporaries
        parts = [(cdf.unsqueeze(1) <= u[:, s:s + step].unsqueeze(2)).long().sum(2)
                 for s in range(0, num_samples, step)]
        out = (cat(parts, 1) if len(parts) > 1 else parts[0]).clamp(max=n_cat - 1)
    else:  # Gumbel top-k: without replacement, in order of drawing
        keys = w.log() - (-u.clamp(min=1e-300).log()).log()
        out = _C.argsort(keys, 1, True)[:, :num_samples].contiguous()
    return out.reshape(*input.shape[:-1], num_samples)


class Generator:
    """A random generator of its own (torch.Generator): pass it as generator= to rand/randn/randint,
    multinomial, random_split, samplers and DataLoader. Its stream is dutycycle's counter-based
    generator at (seed, offset), kept apart from the global one."""

    def __init__(self, device="cpu"):
        self.device = as_device(device)
        self._state = (67280421310721, 0)

    def manual_seed(self, seed):
        if not isinstance(seed, int):
            raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
        self._state = (seed & 0xFFFFFFFFFFFFFFFF, 0)
        return self

    def seed(self):
        import secrets

        s = secrets.randbits(63)
        self._state = (s, 0)
        return s

    def initial_seed(self):
        return self._state[0]

    def get_state(self):
        return self._state

    def set_state(self, state):
        self._state = (int(state[0]), int(state[1]))
        return self

    def _draw(self, fn):
        """Run fn() with this generator as the global one, then give the global one back."""
        saved = _C.rng_state()
        _C.set_rng_state(*self._state)
        try:
            return fn()
        finally:
            self._state = tuple(_C.rng_state())
            _C.set_rng_state(*saved)


# --- save / load ----------------------------------------------------------------------------------

_ROOT = "__dutycycle_root__"


def save(obj, f):
    """torch.save for what people save: a state_dict (or any nested dict/list/tuple of tensors, numbers,
    strings). Written as one safetensors file with the structure in its metadata; never a pickle, so
    arbitrary Python objects (modules, lambdas) raise a TypeError naming where they sit."""
    import os

    from .trainer.checkpoint_io import save_checkpoint

    if not isinstance(f, (str, bytes, os.PathLike)):
        raise TypeError(f"save: f must be a file path, got {type(f).__name__} (file objects are not supported)")
    save_checkpoint(f, obj if isinstance(obj, dict) and _ROOT not in obj else {_ROOT: obj})


def load(f, map_location=None, weights_only=None, **kwargs):
    """Read a file written by dutycycle.save (or by Trainer.save_checkpoint, or any safetensors file),
    or a PyTorch torch.save file (.pt/.pth) without running its pickle (see _torch_load.py).
    map_location: None/'cpu' or a device to move the tensors to."""
    import os

    from ._torch_load import load_torch_file, sniff
    from .trainer.checkpoint_io import load_checkpoint

    if not isinstance(f, (str, bytes, os.PathLike)):
        raise TypeError(f"load: f must be a file path, got {type(f).__name__} (file objects are not supported)")
    kind = sniff(f)
    if kind is not None:
        obj = load_torch_file(f, kind, weights_only)
    else:
        obj = load_checkpoint(f)
        if isinstance(obj, dict) and len(obj) == 1 and _ROOT in obj:
            obj = obj[_ROOT]
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        dev = as_device(map_location)
        if dev.type != "cpu":
            obj = _map_tensors(obj, lambda t: t.to(dev))
    return obj


def map_leaves(obj, fn):
    """obj with fn applied to every leaf of its dicts, lists and tuples (same container types)."""
    if isinstance(obj, dict):
        return type(obj)((k, map_leaves(v, fn)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(map_leaves(v, fn) for v in obj)
    return fn(obj)


def _map_tensors(obj, fn):
    return map_leaves(obj, lambda v: fn(v) if isinstance(v, Tensor) else v)


# --- einsum ----------------------------------------------------------------------------------------

def _einsum_parse(equation, operands):
    """Labels per operand and for the output. A letter is its own label; the dims '...' covers are
    labelled 0, 1, ... counted so that the LAST ellipsis dim of every operand gets the same label
    (ellipsis dims broadcast right-aligned, as in torch)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum(): the equation {equation!r} names {len(terms)} operands but {len(operands)} "
                         "were given")

    def letters(term, part):
        if term.count("...") > 1:
            raise ValueError(f"einsum(): more than one ellipsis in {part} {term!r}")
        bad = [c for c in term.replace("...", "") if not c.isalpha()]
        if bad:
            raise ValueError(f"einsum(): invalid subscript {bad[0]!r} in {part} {term!r} (use letters a-z, A-Z)")
        return term

    n_ell = 0
    for term, op in zip(terms, operands):
        letters(term, "operand")
        n_letters = len(term.replace("...", ""))
        if "..." in term:
            if op.ndim < n_letters:
                raise ValueError(f"einsum(): operand subscripts {term!r} name {n_letters} dims but the operand has "
                                 f"{op.ndim} (shape {op.shape})")
            n_ell = builtins.max(n_ell, op.ndim - n_letters)
        elif op.ndim != n_letters:
            raise ValueError(f"einsum(): operand subscripts {term!r} name {n_letters} dims but the operand has "
                             f"{op.ndim} (shape {op.shape})")

    def expand(term, k):  # k: how many dims the ellipsis covers in this term
        head, ell, tail = term.partition("...")
        return list(head) + (list(range(n_ell - k, n_ell)) if ell else []) + list(tail)

    in_labels = [expand(t, op.ndim - len(t.replace("...", ""))) for t, op in zip(terms, operands)]
    if arrow:
        letters(rhs, "output")
        out = expand(rhs, n_ell)
        seen = {label for ls in in_labels for label in ls}
        for c in out:
            if c not in seen:
                raise ValueError(f"einsum(): output subscript {c!r} does not appear in any operand of {equation!r}")
        if len(set(out)) != len(out):
            raise ValueError(f"einsum(): output subscript repeated in {equation!r}")
    else:  # implicit: the ellipsis dims, then the letters seen exactly once, in alphabetical order
        counts = collections.Counter(c for ls in in_labels for c in ls if isinstance(c, str))
        out = list(range(n_ell)) + sorted(c for c, n in counts.items() if n == 1)
    return in_labels, out


def _einsum_diagonal(x, labels):
    """Take the diagonal over a label repeated within one operand ('ii->i'), as a gather."""
    while True:
        dup = next((c for c in labels if labels.count(c) > 1), None)
        if dup is None:
            return x, labels
        i, j = [k for k, c in enumerate(labels) if c == dup][:2]
        n = x.shape[i]
        if x.shape[j] != n:
            raise ValueError(f"einsum(): subscript {dup!r} is repeated in one operand with different sizes "
                             f"{n} and {x.shape[j]}")
        rest = [k for k in range(x.ndim) if k not in (i, j)]
        x = x.permute(*rest, i, j).reshape(*[x.shape[k] for k in rest], n * n)
        idx = _C.arange(0.0, float(n * n), float(n + 1), int64.id, *x._device_tuple)  # i*n + i
        x = _C.gather(x, x.ndim - 1, idx, True)
        labels = [labels[k] for k in rest] + [dup]


def _einsum_sum_out(x, labels, keep):
    drop = [k for k, c in enumerate(labels) if c not in keep]
    if drop:
        x = x.sum(tuple(drop))
        labels = [c for c in labels if c in keep]
    return x, labels


def _einsum_pair(a, la, b, lb, keep, size):
    """Contract two operands with one (batched) matmul: a -> (batch, left, contracted),
    b -> (batch, contracted, right)."""
    batch = [c for c in la if c in lb and c in keep]
    con = [c for c in la if c in lb and c not in keep]
    left = [c for c in la if c not in lb]
    right = [c for c in lb if c not in la]

    def arrange(x, lx, groups):
        order = [lx.index(c) for g in groups for c in g]
        x = x.permute(*order)
        full = tuple(size[c] for g in groups for c in g)
        if x.shape != full:  # size-1 dims broadcast against the other operand's
            x = x.expand(*full)
        return x.reshape(*[math.prod(size[c] for c in g) for g in groups])

    a3 = arrange(a, la, (batch, left, con))
    b3 = arrange(b, lb, (batch, con, right))
    if not batch:
        a3, b3 = a3[0], b3[0]
    out = _C.matmul(a3, b3)
    return out.reshape(*[size[c] for c in batch + left + right]), batch + left + right


def einsum(equation, *operands):
    """torch.einsum: sums of products over the labelled dims of operands, e.g. 'bhqd,bhkd->bhqk'.
    Implicit ('ij,jk') and explicit output, '...' and repeated labels (diagonals) are supported.
    Operands are contracted left to right, each pair with one batched matmul."""
    if not isinstance(equation, str):
        raise TypeError(f"einsum(): the equation must be a string, got {type(equation).__name__}")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum(): at least one operand is required")
    for op in operands:
        _check_tensor(op, "einsum")
    in_labels, out = _einsum_parse(equation, operands)
    size = {}
    for ls, op in zip(in_labels, operands):
        for c, n in zip(ls, op.shape):
            if size.get(c, 1) not in (1, n) and n != 1:
                name = f"'{c}'" if isinstance(c, str) else "'...'"
                raise ValueError(f"einsum(): subscript {name} has size {n} for one operand and {size[c]} for another "
                                 f"in {equation!r}")
            size[c] = builtins.max(size.get(c, 1), n)
    xs = []
    for ls, op in zip(in_labels, operands):
        xs.append(_einsum_diagonal(op, list(ls)))
    x, lx = xs[0]
    for i in range(1, len(xs)):
        later = {c for _, ls in xs[i + 1:] for c in ls}
        keep = set(out) | later
        y, ly = xs[i]
        x, lx = _einsum_sum_out(x, lx, keep | set(ly))
        y, ly = _einsum_sum_out(y, ly, keep | set(lx))
        x, lx = _einsum_pair(x, lx, y, ly, keep, size)
    x, lx = _einsum_sum_out(x, lx, set(out))
    if len(lx) != len(out) or set(lx) != set(out):  # can't happen after the checks above
        raise RuntimeError(f"einsum(): internal error: labels {lx} vs output {out}")
    x = x.permute(*[lx.index(c) for c in out]) if lx != out else x
    shape = tuple(size[c] for c in out)
    return x.expand(*shape) if x.shape != shape else x
