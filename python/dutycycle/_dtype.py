"""dtypes and devices. Each dtype carries the id the C core uses (csrc/core/dtype.h)."""

from __future__ import annotations


class dtype:
    __slots__ = ("id", "name", "itemsize", "is_floating_point", "_np")

    def __init__(self, id_, name, itemsize, is_float, np_name):
        self.id = id_
        self.name = name
        self.itemsize = itemsize
        self.is_floating_point = is_float
        self._np = np_name

    def __repr__(self):
        return f"dutycycle.{self.name}"

    def __reduce__(self):
        return (_dtype_by_name, (self.name,))


float32 = dtype(0, "float32", 4, True, "float32")
float64 = dtype(1, "float64", 8, True, "float64")
bfloat16 = dtype(2, "bfloat16", 2, True, None)
float16 = dtype(3, "float16", 2, True, "float16")
int32 = dtype(4, "int32", 4, False, "int32")
int64 = dtype(5, "int64", 8, False, "int64")
bool_ = dtype(6, "bool", 1, False, "bool")
uint8 = dtype(7, "uint8", 1, False, "uint8")
int8 = dtype(8, "int8", 1, False, "int8")
int16 = dtype(9, "int16", 2, False, "int16")

DTYPES = (float32, float64, bfloat16, float16, int32, int64, bool_, uint8, int8, int16)
_BY_NAME = {d.name: d for d in DTYPES}
_BY_NAME.update({"float": float32, "double": float64, "half": float16, "int": int32, "long": int64,
                 "short": int16})


def _dtype_by_name(name):
    return _BY_NAME[name]


def dtype_from_id(i):
    return DTYPES[i]


def as_dtype(d, what="dtype"):
    if isinstance(d, dtype):
        return d
    if isinstance(d, str) and d in _BY_NAME:
        return _BY_NAME[d]
    try:
        import numpy as np

        nd = np.dtype(d)
        for cand in DTYPES:
            if cand._np == nd.name:
                return cand
    except Exception:
        pass
    raise TypeError(f"{what} must be a dutycycle dtype (e.g. dutycycle.float32), got {d!r}")


class device:
    """A device: ``device("cpu")``, ``device("cuda")``, ``device("cuda:1")``, ``device("cuda", 1)``."""

    __slots__ = ("type", "index")
    _TYPES = {"cpu": 0, "cuda": 1}

    def __init__(self, spec, index=None):
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {spec!r}")
        s = spec.strip().lower()
        if s == "gpu":
            s = "cuda"
        if ":" in s:
            s, _, idx = s.partition(":")
            if index is not None:
                raise ValueError(f"device {spec!r}: index given twice")
            try:
                index = int(idx)
            except ValueError:
                raise ValueError(f"invalid device string {spec!r}: index must be an int") from None
        if s not in self._TYPES:
            raise ValueError(f"unknown device type {s!r} in {spec!r}; expected 'cpu' or 'cuda'")
        if index is not None and index < 0:
            raise ValueError(f"device index must be >= 0, got {index}")
        self.type = s
        self.index = index if s == "cuda" else None

    @property
    def _tuple(self):
        return (self._TYPES[self.type], self.index or 0)

    def __eq__(self, other):
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, device) and self._tuple == other._tuple

    def __hash__(self):
        return hash(self._tuple)

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"


def as_device(d):
    if d is None:
        return device("cpu")
    if isinstance(d, device):
        return d
    if isinstance(d, int):
        return device("cuda", d)
    return device(d)


def device_from_tuple(t):
    return device("cpu") if t[0] == 0 else device("cuda", t[1])
