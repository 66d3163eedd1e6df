"""`failures.py MODE RANK`: a job in which rank RANK misbehaves after a few good steps, while the
others keep issuing all_reduce. MODE: raise (an exception), kill (SIGKILL itself), hang (sleep
before the next collective; run with DUTYCYCLE_COMM_TIMEOUT), desync (an all_reduce of a
different size), thread (an exception in a background thread). Every rank prints
{"rank", "host", "good"} after the good steps; a rank that gets past the failure prints
{"survived": rank} (the test asserts that never happens)."""

import json
import os
import signal
import socket
import sys
import threading
import time

import numpy as np

import dutycycle.distributed as dist

GOOD = 3  # collectives every rank completes first

if __name__ == "__main__":
    mode, bad = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("mpi")
    rank = dist.get_rank()
    for _ in range(GOOD):
        a = np.ones(1000, dtype=np.float32)
        dist.all_reduce(a)
    print(json.dumps({"rank": rank, "host": socket.gethostname(), "good": GOOD}), flush=True)
    if rank == bad:
        if mode == "raise":
            raise RuntimeError(f"rank {rank} fails on purpose")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            time.sleep(300)
        if mode == "thread":
            def work():
                raise OSError("the loader thread fails on purpose")

            threading.Thread(target=work, name="loader").start()
            time.sleep(300)
        size = 1001 if mode == "desync" else 1000
    else:
        size = 1000
    for _ in range(1000):  # the others keep going; the job must end anyway
        a = np.ones(size, dtype=np.float32)
        dist.all_reduce(a)
        time.sleep(0.01)
    print(json.dumps({"survived": rank}), flush=True)
