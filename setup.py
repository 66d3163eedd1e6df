"""Build dutycycle._C from csrc/ (C11, OpenMP, OpenBLAS) and, when nvcc is found or
DUTYCYCLE_CUDA=1, the CUDA kernels in cuda/ (linked with cudart, cuBLASLt, cuDNN and NCCL).

Environment:
  DUTYCYCLE_CUDA=0/1     force the CPU-only or the CUDA build (default: CUDA when nvcc is found)
  CUDA_HOME              CUDA toolkit root (default /usr/local/cuda)
  DUTYCYCLE_CUDA_ARCH    e.g. "80;90" (default); compute capabilities to compile for
  DUTYCYCLE_SANITIZE=1   build with -fsanitize=address,undefined (make sanitize)
  DUTYCYCLE_MPI=0/1      build without / insist on MPI (default: with it when mpicc is found); the
                         flags come from `mpicc --showme:compile` / `--showme:link` (Open MPI), or
                         `mpicc -show` (MPICH); MPICC names another wrapper
"""
import glob
import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return "/usr/local/cuda"


def want_cuda():
    flag = os.environ.get("DUTYCYCLE_CUDA")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(cuda_home(), "bin", "nvcc"))


def mpi_flags():
    """(compile flags, link flags) of the MPI the mpicc wrapper names, or None to build without MPI."""
    flag = os.environ.get("DUTYCYCLE_MPI")
    if flag is not None and flag in ("0", "", "false", "no"):
        return None
    mpicc = os.environ.get("MPICC") or shutil.which("mpicc")
    try:
        if not mpicc:
            raise OSError("no mpicc on PATH")
        try:  # Open MPI
            comp = subprocess.check_output([mpicc, "--showme:compile"], text=True, stderr=subprocess.DEVNULL)
            link = subprocess.check_output([mpicc, "--showme:link"], text=True, stderr=subprocess.DEVNULL)
        except subprocess.CalledProcessError:  # MPICH: one line with the compiler first
            words = subprocess.check_output([mpicc, "-show"], text=True).split()[1:]
            comp = " ".join(w for w in words if w.startswith(("-I", "-D")))
            link = " ".join(w for w in words if w.startswith(("-L", "-l", "-Wl")))
        return comp.split(), link.split()
    except (OSError, subprocess.CalledProcessError) as e:
        if flag == "1":
            raise SystemExit(f"DUTYCYCLE_MPI=1 but MPI's flags are unavailable ({e}); install libopenmpi-dev") from e
        print(f"dutycycle: building without MPI ({e}): _C.Comm will raise DistributedError", flush=True)
        return None


SANITIZE = os.environ.get("DUTYCYCLE_SANITIZE") == "1"
WITH_CUDA = want_cuda()
MPI = mpi_flags()

sources = sorted(
    glob.glob("csrc/core/*.c") + glob.glob("csrc/autograd/*.c") + glob.glob("csrc/cpu/*.c")
    + glob.glob("csrc/python/*.c") + glob.glob("csrc/loader/*.c") + glob.glob("csrc/comm/*.c")
    + glob.glob("csrc/ckpt/*.c") + glob.glob("csrc/s3/*.c") + glob.glob("csrc/alloc/*.c") + glob.glob("csrc/plan/*.c")
)
cflags = ["-std=c11", "-O3", "-fopenmp", "-fno-math-errno", "-fno-strict-aliasing", "-Wall", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-unknown-pragmas"]
ldflags = ["-fopenmp"]
libraries = ["openblas", "curl", "crypto", "jpeg", "m"]  # curl + libcrypto: csrc/s3; jpeg: decoders
if SANITIZE:
    cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]
define_macros = []
library_dirs, runtime_dirs, extra_objects = [], [], []
include_dirs = ["csrc"]

# Prefer Debian's OpenMP build of OpenBLAS: GEMM then shares libgomp's thread pool with our own
# kernels instead of a second pool of spinning pthreads fighting it for the cores.
OPENBLAS_OMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
if os.path.exists(os.path.join(OPENBLAS_OMP, "libopenblas.so")):
    library_dirs.append(OPENBLAS_OMP)
    runtime_dirs.append(OPENBLAS_OMP)
    include_dirs.insert(0, "/usr/include/x86_64-linux-gnu/openblas-openmp")

if MPI:
    comp, link = MPI
    define_macros.append(("DC_WITH_MPI", "1"))
    include_dirs += [w[2:] for w in comp if w.startswith("-I")]
    cflags += [w for w in comp if not w.startswith("-I")]
    for w in link:
        if w.startswith("-L"):
            library_dirs.append(w[2:])
            runtime_dirs.append(w[2:])
        elif w.startswith("-l"):
            libraries.append(w[2:])
        else:
            ldflags.append(w)

if WITH_CUDA:
    home = cuda_home()
    define_macros.append(("DC_WITH_CUDA", "1"))
    lib64 = os.path.join(home, "lib64")
    include_dirs.append(os.path.join(home, "include"))  # cuda_runtime.h, nccl.h (csrc/comm/comm-nccl.c)
    library_dirs.append(lib64)
    runtime_dirs.append(lib64)
    libraries += ["cudart", "cublasLt", "cudnn", "nccl", "stdc++"]


NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_compile(cc):
    """Make the C compiler `cc` compile an extension's sources on every core (distutils compiles
    one extension's sources one after another)."""

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = cc._setup_compile(output_dir, macros, include_dirs, sources,
                                                                            depends, extra_postargs)
        cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            if obj in build:
                src, ext = build[obj]
                cc._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with ThreadPoolExecutor(NCPU) as pool:
            list(pool.map(one, objects))  # re-raises the first failure
        return objects

    cc.compile = compile


class BuildExt(build_ext):
    """Compile cuda/*.cu with nvcc into objects, then link them into the extension; the C sources
    compile in parallel."""

    def build_extension(self, ext):
        parallel_compile(self.compiler)
        if WITH_CUDA:
            home = cuda_home()
            nvcc = os.path.join(home, "bin", "nvcc")
            if not os.path.exists(nvcc):
                nvcc = shutil.which("nvcc") or nvcc
            archs = os.environ.get("DUTYCYCLE_CUDA_ARCH", "80;90").split(";")
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            # a fixed folder (not pip's throw-away build_temp): a rebuild recompiles only changed .cu files
            out_dir = os.path.join(ROOT, "build", "cuda-sm" + "-".join(archs))
            os.makedirs(out_dir, exist_ok=True)
            # Each object is keyed by the hash of its source, every header it may include, the flags
            # and nvcc's version (not by mtimes): objects compiled on another machine, or copied with
            # fresh mtimes, are reused exactly when they were built from the same text the same way.
            deps = sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cuh")) + glob.glob(os.path.join(ROOT, "cuda", "*.h"))
                          + glob.glob(os.path.join(ROOT, "csrc", "core", "*.h"))
                          + glob.glob(os.path.join(ROOT, "csrc", "core", "*.def"))
                          + glob.glob(os.path.join(ROOT, "csrc", "alloc", "*.h"))
                          + glob.glob(os.path.join(ROOT, "csrc", "plan", "*.h")))
            dep_hash = hashlib.sha256(subprocess.check_output([nvcc, "--version"]))
            for p in deps:
                dep_hash.update(os.path.relpath(p, ROOT).encode() + b"\0" + open(p, "rb").read() + b"\0")
            jobs, objs = [], []
            for src in sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu"))):
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                objs.append(obj)
                flags = ["-std=c++17", "-O3", "-lineinfo", "--threads", "0", "-Xcompiler", "-fPIC", "-DDC_WITH_CUDA",
                         *gencode]
                key = hashlib.sha256(dep_hash.digest() + open(src, "rb").read() + " ".join(flags).encode()).hexdigest()
                stamp = obj + ".key"
                if os.path.exists(obj) and os.path.exists(stamp) and open(stamp).read().strip() == key:
                    continue
                cmd = [nvcc, *flags, "-I" + os.path.join(ROOT, "csrc", "core"), "-c", src, "-o", obj]
                jobs.append((cmd, stamp, key))
            # one nvcc per two cores (each compiles its architectures on two threads: --threads 0)
            workers = max(1, min(len(jobs), NCPU // 2))

            def compile_one(job):
                cmd, stamp, key = job
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                with open(stamp, "w") as f:
                    f.write(key + "\n")

            if jobs:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(compile_one, jobs))  # re-raises the first failure
            ext.extra_objects = list(ext.extra_objects or []) + objs
        super().build_extension(ext)


ext = Extension(
    "dutycycle._C",
    sources=sources,
    include_dirs=include_dirs,
    define_macros=define_macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    libraries=libraries,
    library_dirs=library_dirs,
    runtime_library_dirs=runtime_dirs,
    extra_objects=extra_objects,
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
