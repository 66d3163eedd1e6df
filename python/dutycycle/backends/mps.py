"""torch.backends.mps: Apple's Metal backend, which dutycycle does not have."""

from .._missing import missing_names


def is_available():
    return False


def is_built():
    return False


__getattr__ = missing_names(__name__, "torch.backends.mps")
