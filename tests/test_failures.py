"""Failures end the job, in bounded time, with a message that names the culprit (end to end, each
job in a subprocess with a hard timeout): a rank raising, a rank SIGKILLed, a rank that hangs
(DUTYCYCLE_COMM_TIMEOUT=5: the watchdog names the lagging rank, the collective and its sequence
number), and a desync (a different-size all_reduce: DesyncError with both sides)."""

import re

import pytest
from dist_scripts import harness

pytestmark = pytest.mark.skipif(not (harness.have_mpirun() and harness.have_comm()),
                                reason="needs Open MPI's mpirun and a core built with the comm layer")

BOUND = 60  # seconds: every rank must have exited by then
SCRIPT = harness.script("failures.py")


def job(mode, bad, n=2, launcher="mpirun", **env):
    argv = (SCRIPT, mode, str(bad))
    cmd = harness.mpirun_cmd(n, *argv) if launcher == "mpirun" else harness.run_cmd(n, *argv)
    r = harness.run(cmd, timeout=BOUND + 30, env=harness.job_env(**env))
    assert not r.timed_out, r
    assert r.seconds < BOUND, r
    assert r.rc != 0, r
    rows = r.json_lines()
    assert not [x for x in rows if "survived" in x], r
    host = {x["rank"]: x["host"] for x in rows if "host" in x}
    return r, host


@pytest.mark.parametrize("launcher", ["mpirun", "dutycycle run"])
def test_a_rank_raising_ends_the_job(launcher):
    r, host = job("raise", 1, n=3, launcher=launcher)
    assert "[rank 1] RuntimeError: rank 1 fails on purpose" in r.err, r
    assert f"rank 1 (host {host[1]}) failed: RuntimeError: rank 1 fails on purpose" in r.err, r
    if launcher == "dutycycle run":
        assert r.err.strip().splitlines()[-1].startswith(
            f"dutycycle run: job failed (exit code {r.rc}): rank 1 (host {host[1]}) failed"), r


def test_an_exception_in_a_thread_ends_the_job():
    r, host = job("thread", 0)
    assert "[rank 0] OSError: the loader thread fails on purpose" in r.err, r
    assert f"rank 0 (host {host[0]}) failed in thread 'loader'" in r.err, r


@pytest.mark.parametrize("launcher", ["mpirun", "dutycycle run"])
def test_a_killed_rank_ends_the_job(launcher):
    r, host = job("kill", 1, launcher=launcher)
    # mpirun's report, and (when the comm noticed first) the surviving rank's "peer rank 1 (host H) died"
    assert re.search(rf"process rank 1 with PID \d+ on node {re.escape(host[1])} exited on signal 9", r.err) or \
        f"peer rank 1 (host {host[1]}" in r.err, r
    if launcher == "dutycycle run":
        last = r.err.strip().splitlines()[-1]
        want = f"rank 1 on host {host[1]} was killed by signal 9 (Killed)"
        assert last == f"dutycycle run: job failed (exit code {r.rc}): {want}", r


def test_a_hanging_rank_is_named_by_the_watchdog():
    r, host = job("hang", 1, n=3, DUTYCYCLE_COMM_TIMEOUT=5)
    line = next((ln for ln in r.err.splitlines() if "CollectiveTimeoutError:" in ln), None)
    assert line, r
    # the collective and its sequence number (the 4th: #3), the lagging rank and its host, what the others wait in
    assert "all_reduce #3" in line and f"lagging: rank 1 (host {host[1]}" in line, line
    assert "ranks 0,2 are waiting in all_reduce #3" in line, line
    assert r.seconds < 5 + 30, r


def test_a_desync_is_reported_with_both_sides():
    r, host = job("desync", 1)
    assert "DesyncError" in r.err, r
    line = next(ln for ln in r.err.splitlines() if "DesyncError:" in ln)
    assert "rank 0 issued all_reduce #3 (float32 x 1000, sum)" in line, line
    assert "rank 1 issued all_reduce #3 (float32 x 1001, sum)" in line, line
