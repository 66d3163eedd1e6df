"""The float32 matmul precision shared by torch.backends.cuda.matmul.allow_tf32 and
torch.set_float32_matmul_precision / get_float32_matmul_precision."""

_PRECISIONS = ("highest", "high", "medium")
_state = {"float32_matmul_precision": "highest"}


def set_float32_matmul_precision(precision):
    """'highest' (full float32), 'high' (TF32 allowed) or 'medium' (bf16 allowed) for float32
    matmuls. Stored; on the CPU backend matmuls are always 'highest'; the CUDA backend reads it."""
    if precision not in _PRECISIONS:
        raise ValueError(f"set_float32_matmul_precision: precision must be one of {_PRECISIONS}, got {precision!r}")
    _state["float32_matmul_precision"] = precision
    from .. import _C

    if hasattr(_C, "cuda_allow_tf32"):  # the CUDA build: cuBLASLt/cuDNN read it from C
        _C.cuda_allow_tf32(1 if precision != "highest" else 0)


def get_float32_matmul_precision():
    return _state["float32_matmul_precision"]


def check_bool(owner, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be a bool, got {type(value).__name__}")
    return value


class FlagsObject:
    """A namespace of typed switches: assigning an unknown name or a wrong type raises."""

    _owner = ""
    _kinds = {}  # name -> type of value

    def __init__(self, **values):
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        if name not in self._kinds:
            raise AttributeError(f"{self._owner} has no setting {name!r} (known: {', '.join(sorted(self._kinds))})")
        kind = self._kinds[name]
        if kind is bool:
            check_bool(self._owner, name, value)
        elif not isinstance(value, kind):
            raise TypeError(f"{self._owner}.{name} must be a {kind.__name__}, got {type(value).__name__}")
        object.__setattr__(self, name, value)

    def __repr__(self):
        return f"<{self._owner}: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in sorted(self._kinds)) + ">"
