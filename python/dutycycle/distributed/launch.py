"""Starting the ranks: `dutycycle run` (a thin wrapper over Open MPI's mpirun) and self_launch (a
plain `python train.py` with Trainer(devices=N) re-runs itself under mpirun, as Lightning's
launcher re-runs the script per rank).

Every rank runs `python -m dutycycle.distributed._shim script args`: the shim sets torchrun's
RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE from Open MPI's variables, installs the failure hooks
and runs the script as __main__. Threads per rank = cores / ranks on the host (OMP_NUM_THREADS:
the C kernels and OpenBLAS share one OpenMP pool), so N ranks on one machine do not fight over
cores. The ranks find each other through MPI; there is no rendezvous of our own."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys

from ._env import SELF_LAUNCH_MARKER, launcher_env

SHIM = "dutycycle.distributed._shim"


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _host_list(hosts, nprocs):
    """'h1,h2' -> 'h1:s,h2:s' with s = ceil(n / hosts) slots each (explicit 'h:slots' kept), and the
    most ranks any one host runs."""
    parts = [h.strip() for h in hosts.split(",") if h.strip()]
    if not parts:
        raise ValueError("--hosts: no host names given")
    per = -(-nprocs // len(parts))
    out, most = [], 0
    for h in parts:
        name, _, slots = h.partition(":")
        if slots and not slots.isdigit():
            raise ValueError(f"--hosts: bad slot count in {h!r} (expected host or host:slots)")
        s = int(slots) if slots else per
        out.append(f"{name}:{s}")
        most = max(most, min(s, nprocs))
    return ",".join(out), most


def build_command(nprocs, target, *, hosts=None, timeout=None, threads=None, mpirun_args=(), python=None,
                  env=None, is_root=None, cores=None, mpirun="mpirun"):
    """(argv, env) that start `target` (["script.py", args...] or ["-m", "module", args...]) on
    `nprocs` ranks under mpirun. env is a full environment: `env` (os.environ by default) plus
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (unless already set), DUTYCYCLE_COMM_TIMEOUT (with
    `timeout`) and PYTHONUNBUFFERED; each is exported to remote hosts with -x."""
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"number of ranks must be a positive integer, got {nprocs!r}")
    if not target:
        raise ValueError("no script given")
    env = dict(os.environ if env is None else env)
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    cores = _cores() if cores is None else cores
    cmd = [mpirun]
    if is_root:
        cmd.append("--allow-run-as-root")
    cmd += ["--oversubscribe", "--bind-to", "none", "-n", str(nprocs)]
    per_host = nprocs
    if hosts:
        host_arg, per_host = _host_list(hosts, nprocs)
        cmd += ["--host", host_arg]
    cmd += list(mpirun_args)

    exports = {}
    if threads is not None:
        exports["OMP_NUM_THREADS"] = str(int(threads))
    elif "OMP_NUM_THREADS" not in env:
        exports["OMP_NUM_THREADS"] = str(max(1, cores // per_host))
    if "OPENBLAS_NUM_THREADS" not in env or threads is not None:
        exports["OPENBLAS_NUM_THREADS"] = exports.get("OMP_NUM_THREADS", env.get("OMP_NUM_THREADS"))
    if timeout is not None:
        if float(timeout) <= 0:
            raise ValueError(f"--timeout must be positive seconds, got {timeout!r}")
        exports["DUTYCYCLE_COMM_TIMEOUT"] = f"{float(timeout):g}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(exports)
    for name in sorted(set(exports) | {"PYTHONUNBUFFERED", "PYTHONPATH", "OMP_NUM_THREADS", "DUTYCYCLE_COMM_TIMEOUT",
                                        SELF_LAUNCH_MARKER}):
        if name in env:
            cmd += ["-x", name]
    cmd += [python or sys.executable, "-m", SHIM, *target]
    return cmd, env


# ---- the one-line summary of a failed job, from mpirun's own report on stderr -------------------------
_ABORT = re.compile(r"MPI_ABORT was invoked on rank (\d+)")
_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?")
_PROCNAME = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]")
_EXITCODE = re.compile(r"Exit code:\s*(-?\d+)")
_OURS = re.compile(r"(rank \d+ \(host [^)]*\) failed.*)$")  # the last line of our failure hook's report


class FailureSummary:
    """Feed it mpirun's stderr line by line; .text() is one line naming the failed rank (or None)."""

    def __init__(self):
        self.reason = None  # our hook's "rank R (host H) failed: Exc: msg"
        self.rank = None
        self.what = None
        self._await_code = None
        self.killed = None  # (rank, what) of a rank that died of a signal

    def feed(self, line):
        m = _OURS.search(line)
        if m and self.reason is None:
            self.reason = m.group(1).strip()
        m = _ABORT.search(line)
        if m and self.rank is None:
            self.rank, self.what = int(m.group(1)), "called MPI_Abort"
        m = _SIGNAL.search(line)
        if m and self.killed is None:
            sig = m.group(3) + (f" ({m.group(4)})" if m.group(4) else "")
            self.killed = (int(m.group(1)), f"on host {m.group(2)} was killed by signal {sig}")
        m = _PROCNAME.search(line)
        if m and self.rank is None:
            self._await_code = int(m.group(1))
        m = _EXITCODE.search(line)
        if m and self._await_code is not None and self.rank is None:
            self.rank, self.what = self._await_code, f"exited with code {m.group(1)}"

    def text(self, returncode):
        # A rank killed by a signal is the root cause: the others then fail with "peer died" reports.
        if self.killed:
            return f"dutycycle run: job failed (exit code {returncode}): rank {self.killed[0]} {self.killed[1]}"
        if self.reason:
            return f"dutycycle run: job failed (exit code {returncode}): {self.reason}"
        if self.rank is not None:
            return f"dutycycle run: job failed (exit code {returncode}): rank {self.rank} {self.what}"
        return f"dutycycle run: job failed (exit code {returncode})"


def run_job(cmd, env, err=None):
    """Run mpirun, pass its stderr through (to `err`, sys.stderr by default) and return its exit
    code; on failure print the one-line summary last."""
    err = sys.stderr if err is None else err
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    prev_term = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    summary = FailureSummary()
    try:
        while True:
            try:
                line = proc.stderr.readline()
            except KeyboardInterrupt:  # the terminal sent SIGINT to mpirun too: let it end the job
                continue
            if not line:
                break
            err.write(line)
            err.flush()
            summary.feed(line)
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, prev_term)
    if rc < 0:
        rc = 128 - rc
    if rc != 0:
        err.write(summary.text(rc) + "\n")
        err.flush()
    return rc


_VALUED = {"-n", "--nprocs", "--nproc-per-node", "--nproc_per_node", "--hosts", "--timeout", "--threads",
           "--mpirun-arg"}


def _split(argv):
    """(our options, target): the target starts at the first word that is neither an option nor an
    option's value (the script), or at -m (a module); everything after it belongs to the script."""
    ours, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            return ours, argv[i:]
        if a == "--":
            return ours, argv[i + 1:]
        if not a.startswith("-"):
            return ours, argv[i:]
        if a in _VALUED and i + 1 < len(argv):
            ours.append(f"{a}={argv[i + 1]}")  # "=": a value that starts with "-" (--mpirun-arg --foo)
            i += 2
        else:
            ours.append(a)
            i += 1
    return ours, []


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="dutycycle run",
        usage="dutycycle run -n N [--hosts H1,H2] [--timeout S] [--threads T] [--mpirun-arg ARG] [--dry-run] "
        "(script.py | -m module) [args ...]",
        description="Run a training script on N ranks under Open MPI's mpirun (threads per rank = cores / ranks; "
        "each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE).",
    )
    p.add_argument("-n", "--nprocs", "--nproc-per-node", "--nproc_per_node", type=int, required=True,
                   help="number of ranks")
    p.add_argument("--hosts", help="comma-separated host names (host or host:slots); default: this machine")
    p.add_argument("--timeout", type=float, help="collective timeout in seconds (DUTYCYCLE_COMM_TIMEOUT)")
    p.add_argument("--threads", type=int, help="threads per rank (default: cores // ranks per host, at least 1)")
    p.add_argument("--mpirun-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for mpirun (repeat for several)")
    p.add_argument("--dry-run", action="store_true", help="print the mpirun command line and exit")
    ours, target = _split(list(argv))
    a = p.parse_args(ours)
    if not target or target == ["-m"]:
        p.error("give a script (or -m module)")
    if a.nprocs < 1:
        p.error(f"-n must be at least 1, got {a.nprocs}")
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be at least 1, got {a.threads}")
    a.target = target
    return a


def main(argv=None):
    """`dutycycle run`: returns the job's exit code."""
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cmd, env = build_command(a.nprocs, a.target, hosts=a.hosts, timeout=a.timeout, threads=a.threads,
                                 mpirun_args=a.mpirun_arg)
    except ValueError as e:
        print(f"dutycycle run: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        import shlex

        print(shlex.join(cmd))
        return 0
    if shutil.which(cmd[0]) is None:
        print("dutycycle run: mpirun not found; install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)",
              file=sys.stderr)
        return 127
    return run_job(cmd, env)


def _script_target():
    """How this process was started, as a target for build_command (Lightning's rule: `-m module`
    when __main__ was run as a module, else the script's absolute path), plus the arguments."""
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name] + sys.argv[1:]
    script = sys.argv[0] if sys.argv else ""
    if not script or script in ("-c", "-") or not os.path.isfile(script):
        raise RuntimeError(
            "cannot start the ranks from an interactive session or `python -c` (there is no script to re-run): "
            "put the code in a script and run `dutycycle run -n N script.py` (or mpirun -n N python script.py)"
        )
    return [os.path.abspath(script)] + sys.argv[1:]


def self_launch(nprocs, *, timeout=None, hosts=None):
    """Re-run this script as `nprocs` ranks under mpirun, replacing this process (os.execvpe; the
    job's exit code becomes this process's). Returns False without doing anything when this process
    already is a rank of an MPI/SLURM job. Raises RuntimeError under a torchrun-only environment
    (no MPI job to join), from an interactive session, or when a self-launched child finds no MPI
    job (the marker in its environment stops a second launch)."""
    info = launcher_env()
    if info["launcher"] in ("mpirun", "srun"):
        return False
    if info["launcher"] == "torchrun-env":
        raise RuntimeError(
            "RANK/WORLD_SIZE are set but this process is not part of an MPI job (torchrun?): dutycycle's ranks "
            "find each other through MPI; start the script with `dutycycle run -n N script.py` or mpirun instead"
        )
    if os.environ.get(SELF_LAUNCH_MARKER):
        raise RuntimeError(
            f"{SELF_LAUNCH_MARKER} is set but no Open MPI / SLURM variables are: this process was started by "
            "self_launch but not by mpirun, refusing to launch again"
        )
    env = dict(os.environ)
    env[SELF_LAUNCH_MARKER] = "1"
    cmd, env = build_command(nprocs, _script_target(), hosts=hosts, timeout=timeout, env=env)
    if shutil.which(cmd[0]) is None:
        raise RuntimeError("Trainer(devices=N) starts its ranks with Open MPI's mpirun, which was not found "
                           "(Debian: apt-get install openmpi-bin libopenmpi-dev)")
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os.execvpe(cmd[0], cmd, env)
