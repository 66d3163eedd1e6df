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


# How long an idle OpenMP thread spins before it sleeps, in libgomp's spin iterations.
GOMP_SPINS = 30000


def omp_spincount():
    """The GOMP_SPINCOUNT to give our OpenMP runtime (libgomp) while it initialises, or None.

    libgomp's default lets a thread that finished its share spin 300,000 iterations (a `pause`
    each: ~10 ms on current Xeons) before it sleeps. On a machine with more runnable threads than
    cores (other processes, NumPy's own BLAS threads) the spinning thread takes the core from the
    one the whole team is waiting for: softmax over (8, 6, 256, 256) took 10 ms instead of 4 on two
    loaded cores, and NumPy's next GEMM waits the same way for cores our team holds. 30,000 spins
    (~1 ms) still keeps the team awake across the gaps between the kernels of one training step.
    The user's GOMP_SPINCOUNT or OMP_WAIT_POLICY always wins; DUTYCYCLE_GOMP_SPINCOUNT=default
    keeps libgomp's own."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return None
    want = os.environ.get("DUTYCYCLE_GOMP_SPINCOUNT")
    if want:
        return None if want.lower() == "default" else want
    return str(GOMP_SPINS)


# Open MPI opens its components (transports, launchers) with dlopen; some of them resolve symbols of
# libmpi itself, which they find only if libmpi was loaded RTLD_GLOBAL. Python loads _C (and so the
# libmpi it links) RTLD_LOCAL, so we load libmpi globally first, as mpi4py does.
MPI_LIBS = ("libmpi.so.40", "libmpi.so.12", "libmpi.so")


def preload_mpi():
    """Load libmpi with RTLD_GLOBAL before the core links it; the loaded name, or None (no MPI, or
    DUTYCYCLE_MPI_PRELOAD=0)."""
    if os.environ.get("DUTYCYCLE_MPI_PRELOAD", "1") == "0":
        return None
    import ctypes

    for name in MPI_LIBS:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return name
        except OSError:
            continue
    return None


def load_core():
    """Import dutycycle._C with the BLAS kernel choice and the OpenMP spin count applied only while
    its BLAS and OpenMP runtime initialise (both read them once, at load; libgomp is loaded with the
    core unless another library loaded it first, in which case its settings stand)."""
    env = {}
    core = blas_coretype()
    if core:
        env["OPENBLAS_CORETYPE"] = core
    spins = omp_spincount()
    if spins:
        env["GOMP_SPINCOUNT"] = spins
    os.environ.update(env)
    preload_mpi()
    try:
        from . import _C
    finally:
        for k in env:
            os.environ.pop(k, None)
    return _C
