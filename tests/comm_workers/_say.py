"""say(tag, rank, msg): a worker's result line, to stdout and to $COMM_OUT/rank<r>.txt (mpirun
interleaves the ranks' stdout, so the tests read the files)."""

import os


def say(tag, rank, msg):
    line = f"{tag} {rank} {msg}".replace("\n", " ")
    print(line, flush=True)
    if os.environ.get("COMM_OUT"):
        with open(os.path.join(os.environ["COMM_OUT"], f"rank{rank}.txt"), "a") as f:
            f.write(line + "\n")
