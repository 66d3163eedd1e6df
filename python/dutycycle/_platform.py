"""Start-up fixes that must run before the C core (and its BLAS) is loaded."""

from __future__ import annotations

import os


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas_coretype():
    """The OpenBLAS kernel family to force, or None to let OpenBLAS decide.

    Debian 12's OpenBLAS (0.3.21) picks its kernels from the CPU model number, and on CPUs it does
    not know (new parts, or the generic model a VM reports) it falls back to 'Prescott' (SSE3):
    GEMM then runs at a fifth of the speed the vector units allow. When the CPU flags show AVX-512
    or AVX2+FMA we name the matching kernels instead. A user's OPENBLAS_CORETYPE always wins, and
    DUTYCYCLE_BLAS_CORETYPE=auto leaves the choice to OpenBLAS."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return None
    want = os.environ.get("DUTYCYCLE_BLAS_CORETYPE")
    if want:
        return None if want.lower() == "auto" else want
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def load_core():
    """Import dutycycle._C with the BLAS kernel choice applied only while its BLAS initialises."""
    core = blas_coretype()
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        from . import _C
    finally:
        if core:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    return _C
