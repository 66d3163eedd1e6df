"""The C sources keep their layers pointing one way: python binding -> subsystems (autograd,
loader) -> core. A grep over the includes, so a new upward include fails here, not in review."""
import pathlib
import re

import pytest

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _includes(folder):
    for f in sorted((CSRC / folder).glob("*.[ch]")):
        for inc in INCLUDE.findall(f.read_text()):
            yield f.relative_to(CSRC), inc


@pytest.mark.parametrize("folder, banned", [
    ("core", ("autograd/", "python/", "loader/", "comm/", "cpu/", "cuda/")),
    ("cpu", ("autograd/", "python/", "loader/")),
    ("autograd", ("python/", "loader/")),
    ("loader", ("python/", "autograd/")),
    ("comm", ("python/", "autograd/", "loader/", "cpu/")),  # plain buffers: knows nothing above the core
])
def test_no_upward_includes(folder, banned):
    bad = [f"{f}: #include \"{inc}\"" for f, inc in _includes(folder) if any(b in inc for b in banned)]
    assert not bad, "layering violation (binding -> subsystems -> core):\n" + "\n".join(bad)


def test_core_does_not_mention_autograd_outside_comments():
    """`grep -rn autograd csrc/core` finds only comments: the core records the graph (graph.h) and
    never calls the engine."""
    for f in sorted((CSRC / "core").glob("*.[ch]")):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", f.read_text(), flags=re.S)
        assert "autograd" not in code.replace("DC_ERR_AUTOGRAD", ""), f"{f.name} refers to autograd in code"


def test_binding_keeps_its_types_and_errors_in_module_state():
    """_C uses multi-phase init with module state: a second instance of the extension (loaded
    from the same file) gets its own types and exception classes instead of overwriting C globals
    that the first one uses."""
    import importlib.machinery
    import importlib.util

    import dutycycle as dc
    from dutycycle import _C

    spec = importlib.util.spec_from_file_location(
        "dutycycle._C", _C.__file__, loader=importlib.machinery.ExtensionFileLoader("dutycycle._C", _C.__file__))
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    assert other is not _C
    assert other.TensorBase is not _C.TensorBase and other.DutycycleError is not _C.DutycycleError
    t = other.full([2, 3], 1.0, 0, 0, 0)
    assert type(t) is other.TensorBase  # the second module wraps with its own type
    with pytest.raises(other.ShapeError):
        other.view(t, [7], False)
    with pytest.raises(dc.ShapeError):  # and the first module still raises its own classes
        dc.zeros(2, 3).view(7)
    assert type(dc.zeros(1)) is dc.Tensor


def test_core_names_no_backend():
    """Backends register with the core (dc_backend_register); the core never calls into csrc/cpu or
    cuda/ by name, so a new device is added without touching the core."""
    for f in sorted((CSRC / "core").glob("*.[ch]")):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", f.read_text(), flags=re.S)
        assert not re.search(r"\bdc_(cpu|cuda)_\w+", code), f"{f.name} calls a backend by name"
