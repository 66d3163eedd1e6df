"""What happens when one rank fails: its traceback, prefixed with "[rank R]", and the whole job
ends at once (comm.abort -> MPI_Abort) instead of the other ranks hanging in their next collective.

Installed as sys.excepthook and threading.excepthook by init_process_group (and by the shim that
`dutycycle run` starts each rank with, before the script runs). A process that is not part of a
multi-rank job keeps Python's normal hooks' behaviour."""

from __future__ import annotations

import socket
import sys
import threading
import traceback

_state = {"installed": False, "prev_sys": None, "prev_thread": None, "comm": None, "rank": None, "size": 1}


def set_job(rank, size, comm=None):
    """Record who we are (and the comm to abort through, once there is one)."""
    _state.update(rank=rank, size=size, comm=comm)


def describe_self():
    host = getattr(_state["comm"], "hostname", None) or socket.gethostname()
    return f"rank {_state['rank']} (host {host})"


def report(exc_type, exc, tb, where=""):
    """Print the traceback with every line prefixed by "[rank R] ", then end the job through the
    comm if there is one (never returns then). Returns normally only without a comm."""
    prefix = f"[rank {_state['rank']}] "
    lines = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n").split("\n")
    if where:
        lines.insert(0, where)
    first = f"{exc_type.__name__}: {exc}".split("\n")[0]
    reason = f"{describe_self()} failed{' ' + where if where else ''}: {first}"
    try:
        sys.stderr.write("".join(prefix + line + "\n" for line in lines) + f"dutycycle: {reason}\n")
        sys.stderr.flush()
    except Exception:  # a closed stderr must not stop the abort
        pass
    comm = _state["comm"]
    if comm is not None and _state["size"] > 1:
        # The comm prints "dutycycle: rank R (host H): aborting the job: <this>" and ends every rank.
        comm.abort(f"uncaught {exc_type.__name__}{' ' + where if where else ''} (traceback above)")


def _excepthook(exc_type, exc, tb):
    if _state["size"] <= 1:
        return _state["prev_sys"](exc_type, exc, tb)
    report(exc_type, exc, tb)


def _threading_excepthook(args):
    if _state["size"] <= 1 or args.exc_type is SystemExit:
        return _state["prev_thread"](args)
    name = args.thread.name if args.thread is not None else "?"
    report(args.exc_type, args.exc_value, args.exc_traceback, where=f"in thread {name!r}")


def install():
    """Install both hooks once (idempotent); the previous hooks are kept for the one-rank case."""
    if _state["installed"]:
        return
    _state.update(installed=True, prev_sys=sys.excepthook, prev_thread=threading.excepthook)
    sys.excepthook = _excepthook
    threading.excepthook = _threading_excepthook


def uninstall():
    if not _state["installed"]:
        return
    if sys.excepthook is _excepthook:
        sys.excepthook = _state["prev_sys"]
    if threading.excepthook is _threading_excepthook:
        threading.excepthook = _state["prev_thread"]
    _state.update(installed=False, comm=None)
