"""torch.backends.cpu: which vector instruction set the CPU kernels use."""

from .._missing import missing_names


def get_cpu_capability():
    """'AVX512', 'AVX2' or 'DEFAULT', as torch names them, from the CPU's flags (our kernels are
    compiled for x86-64-v4 / v3 / baseline and the loader picks the matching clone)."""
    from .._platform import _cpu_flags

    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "DEFAULT"


__getattr__ = missing_names(__name__, "torch.backends.cpu")
