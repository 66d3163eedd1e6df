"""Errors for PyTorch and Lightning names dutycycle does not have yet.

A ported script that reaches for a name we lack should learn that the name is missing from
dutycycle, not that it made a typo: each public namespace ends with
``__getattr__ = missing_names(__name__, "torch.nn")``, which raises ``NotInDutycycleError`` — an
``AttributeError`` subclass, so ``hasattr()`` and ``getattr(obj, name, default)`` keep working — with
the PyTorch/Lightning spelling of the name and a pointer to the README's coverage table.
"""

COVERAGE = "README.md, section 'PyTorch and Lightning coverage'"


class NotInDutycycleError(AttributeError):
    """A PyTorch or Lightning name that dutycycle does not provide (yet)."""


def not_in_dutycycle(name, upstream, hint=""):
    """The error for `upstream`.`name` (e.g. "torch.nn", "Conv3d"); `hint` says what to use instead."""
    msg = f"{upstream}.{name} is not in dutycycle yet"
    if hint:
        msg += f"; {hint}"
    msg += f" (what exists: {COVERAGE})"
    return NotInDutycycleError(msg, name=name)


def missing_names(module_name, upstream, hints=None):
    """A module-level __getattr__ for `module_name`, which mirrors PyTorch/Lightning's `upstream`.

    Dunder and private names keep Python's plain AttributeError (import machinery, pickle and
    copy probe them); every other missing name gets NotInDutycycleError."""
    hints = dict(hints or {})

    def __getattr__(name):
        if name.startswith("_"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}", name=name)
        raise not_in_dutycycle(name, upstream, hints.get(name, ""))

    return __getattr__
