"""A small, safe YAML emitter for hparams.yaml, so logging hyper-parameters needs no PyYAML.

It writes block-style YAML that PyYAML's ``safe_load`` (YAML 1.1) and any YAML 1.2 reader parse back
to the same values: nested dicts and lists (tuples and sets become lists), str, int, float (with
.inf/.nan), bool and None. Strings are written plain only when no reader could take them for
something else; otherwise double-quoted with escapes. Anything else raises TypeError; callers
decide whether to skip it (``save_hparams_to_yaml`` does, with a warning, as Lightning does).
"""

import math
import os
import re
import warnings
from argparse import Namespace
from enum import Enum

# A plain scalar: starts with a letter or '_', then letters, digits and _ . / - (no ': ', '#', ...).
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
# Words YAML 1.1 resolves to bool/null (PyYAML); 1.2 readers only know a subset.
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"}


def _is_printable(ch):
    c = ord(ch)
    return (
        0x20 <= c <= 0x7E or 0xA0 <= c <= 0xD7FF or (0xE000 <= c <= 0xFFFD and c != 0xFEFF) or 0x10000 <= c <= 0x10FFFF
    )


def _quote(s):
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif _is_printable(ch):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        r = repr(float(v))
        # YAML 1.1 (PyYAML) needs a '.' in a float: 1e-05 would read back as a string.
        if "e" in r and "." not in r:
            m, e = r.split("e")
            r = f"{m}.0e{e}"
        return r
    if isinstance(v, str):
        if _PLAIN.match(v) and v.lower() not in _RESERVED:
            return v
        return _quote(v)
    raise TypeError(f"cannot write a {type(v).__name__} to YAML")


def _normalise(v):
    """Map supported containers and number-likes onto the plain types the emitter knows."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Enum):
        return v.name
    if isinstance(v, Namespace):
        v = vars(v)
    if isinstance(v, dict):
        return {_normalise_key(k): _normalise(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return [_normalise(x) for x in sorted(v, key=repr)]
    if hasattr(v, "dtype") and hasattr(v, "tolist"):  # numpy arrays/scalars, dc.Tensor (device: a copy)
        return _normalise(v.tolist())
    if hasattr(v, "item") and callable(v.item):
        return _normalise(v.item())
    raise TypeError(f"cannot write a {type(v).__name__} to YAML")


def _normalise_key(k):
    k = _normalise(k)
    if isinstance(k, (dict, list)):
        raise TypeError("YAML mapping keys must be scalars")
    return k


def _emit(v, indent, lines, prefix):
    """Append lines for value v; ``prefix`` is the text before it on its first line ('key:' or '-')."""
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            lines.append(f"{pad}{prefix} {{}}" if prefix else f"{pad}{{}}")
            return
        if prefix:
            lines.append(f"{pad}{prefix}")
        for k, x in v.items():
            _emit(x, indent + (2 if prefix else 0), lines, f"{_scalar(k)}:")
    elif isinstance(v, list):
        if not v:
            lines.append(f"{pad}{prefix} []" if prefix else f"{pad}[]")
            return
        # Block sequences under a mapping key sit at the key's own indent, as PyYAML writes them.
        inner = indent if prefix.endswith(":") else indent + (2 if prefix else 0)
        if prefix:
            lines.append(f"{pad}{prefix}")
        for x in v:
            if isinstance(x, (dict, list)) and x:
                sub = []
                _emit(x, inner + 2, sub, "")
                first = sub[0][inner + 2 :]
                lines.append(" " * inner + "- " + first)
                lines.extend(sub[1:])
            else:
                lines.append(" " * inner + "- " + _inline(x))
    else:
        lines.append(f"{pad}{prefix} {_scalar(v)}" if prefix else f"{pad}{_scalar(v)}")


def _inline(x):
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return _scalar(x)


def dump(data):
    """The YAML text for ``data`` (a dict, list or scalar). Raises TypeError on unsupported values."""
    data = _normalise(data)
    lines = []
    _emit(data, 0, lines, "")
    return "\n".join(lines) + "\n"


def save_hparams_to_yaml(config_yaml, hparams):
    """Write ``hparams`` (dict or Namespace) to ``config_yaml``, as Lightning's function of that name:
    a key whose value cannot be written safely is skipped with a warning."""
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    if hparams is None:
        hparams = {}
    allowed = {}
    for k, v in dict(hparams).items():
        try:
            v = _normalise(v)
            _emit(v, 0, [], "x:")
        except (TypeError, RecursionError):
            warnings.warn(f"Skipping {k!r} parameter because it is not possible to safely dump to YAML.")
            continue
        allowed[k] = v
    text = dump(allowed) if allowed else "{}\n"
    d = os.path.dirname(config_yaml)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(config_yaml, "w", encoding="utf-8") as f:
        f.write(text)
