"""Per-rank entry point of `dutycycle run` and self_launch:

    python -m dutycycle.distributed._shim script.py args...    (or: -m module args...)

Sets torchrun's RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from Open MPI's (or SLURM's)
variables, so scripts written for torchrun read them unchanged, installs the failure hooks (an
exception before the process group exists still names the rank), then runs the script as
__main__ with sys.argv and sys.path[0] as `python script.py args` would give it."""

from __future__ import annotations

import os
import runpy
import sys

from . import _failure
from ._env import launcher_env
from .rank_zero import rank_zero_only


def _trim(tb):
    """Drop the shim's and runpy's own frames from the front of a traceback."""
    skip = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (name.startswith("<frozen runpy") or os.path.abspath(name) in skip):
            break
        tb = tb.tb_next
    return tb


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        print("usage: python -m dutycycle.distributed._shim script.py [args] | -m module [args]", file=sys.stderr)
        return 2
    info = launcher_env()
    os.environ.update(RANK=str(info["rank"]), WORLD_SIZE=str(info["world_size"]),
                      LOCAL_RANK=str(info["local_rank"]), LOCAL_WORLD_SIZE=str(info["local_world_size"]))
    rank_zero_only.rank = info["rank"]
    for f in (sys.stdout, sys.stderr):  # whole lines reach mpirun as they are printed (one write each)
        try:
            f.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    _failure.set_job(info["rank"], info["world_size"])
    _failure.install()
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1]] + argv[2:]  # runpy puts the module's path in argv[0]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B036 — the traceback must name the rank whatever was raised
        if info["world_size"] <= 1:
            raise
        _failure.report(type(e), e, _trim(e.__traceback__))  # aborts the job when a comm exists
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
