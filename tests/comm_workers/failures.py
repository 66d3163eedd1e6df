"""Failure scenarios, one per run: python failures.py MODE (under mpirun). Each rank prints one line
"<TAG> <rank> <message>" for the test to check, flushed at once (the job may end right after).

  desync-size   rank 1 all-reduces 5 elements, the others 4     -> DesyncError on every rank
  desync-op     rank 0 broadcasts, the others all-reduce         -> DesyncError on every rank
  desync-dtype  rank 1 all-reduces float64, the others float32   -> DesyncError
  desync-skip   rank 1 skips a collective (then issues the next) -> DesyncError (its #1 is the others' #2)
  p2p-size      rank 0 sends 8 floats, rank 1 receives 4          -> DesyncError on rank 1
  hang          rank 1 busy in Python for 20 s before its collective; timeout 3 s
                -> CollectiveTimeoutError on the others naming rank 1; then rank 0 aborts the job
  kill          rank 1 SIGKILLs itself before its second collective -> the others end (DistributedError
                naming rank 1, or mpirun ends them) within 60 s
"""

import os
import signal
import sys
import time

import numpy as np
from _say import say as _say

import dutycycle as dc
from dutycycle import _C

mode = sys.argv[1]
c = _C.Comm(timeout=float(os.environ.get("WORKER_TIMEOUT", "30")))
r, n = c.rank, c.size


def say(tag, msg):
    _say(tag, r, msg)


a = np.ones(4, np.float32)
c.all_reduce(a)  # #0: everyone is up

try:
    if mode == "desync-size":
        c.all_reduce(np.ones(5 if r == 1 else 4, np.float32))
    elif mode == "desync-op":
        if r == 0:
            c.broadcast(np.ones(4, np.float32), root=0)
        else:
            c.all_reduce(np.ones(4, np.float32))
    elif mode == "desync-dtype":
        c.all_reduce(np.ones(4, np.float64 if r == 1 else np.float32))
    elif mode == "desync-skip":
        if r != 1:
            c.all_reduce(np.ones(4, np.float32))  # #1 (rank 1 skips it)
        c.all_gather(np.ones(2, np.float32), np.ones(2 * n, np.float32))
    elif mode == "p2p-size":
        if r == 0:
            c.send(np.ones(8, np.float32), 1)
        elif r == 1:
            c.recv(np.ones(4, np.float32), 0)
        else:
            raise dc.DesyncError("not involved")
    elif mode == "hang":
        if r == 1:
            t_end = time.monotonic() + 20
            x = 0
            while time.monotonic() < t_end:  # busy in Python, holding the GIL
                x += 1
        c.all_reduce(np.ones(4, np.float32))
    elif mode == "kill":
        if r == 1:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        c.all_reduce(np.ones(1 << 16, np.float32))
    else:
        raise SystemExit(f"unknown mode {mode}")
    say("NOERROR", "the collective returned")
except dc.DesyncError as e:
    say("DESYNC", e)
    # the comm stays broken: the next collective fails at once with the same error
    try:
        c.barrier()
    except dc.DesyncError as e2:
        say("STILL", e2)
except dc.CollectiveTimeoutError as e:
    say("TIMEOUT", e)
    if mode == "hang" and r == 0:
        c.abort(f"rank 0 gives up: {e}")
except dc.DistributedError as e:
    say("DISTERR", e)
    if mode == "kill":
        c.abort(str(e))
c.close()
say("CLOSED", "")
