"""Launching: the launcher environments (Open MPI, SLURM, torchrun) parsed from fake env dicts, the
mpirun command `dutycycle run` builds (checked without running it), its failure summary, the shim,
self_launch's guards, and end to end: the same small job under mpirun, `dutycycle run`, SLURM-style
variables and self-launch gives the same numbers."""

import os
import subprocess
import sys

import pytest
from dist_scripts import harness

import dutycycle.distributed as dist
from dutycycle import __main__ as cli
from dutycycle.distributed import launch
from dutycycle.distributed._env import launcher_env, slurm_tasks_on_node

OMPI = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "7", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_STEP_ID": "0", "SLURM_TASKS_PER_NODE": "4,3"}
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "x"}

needs_mpirun = pytest.mark.skipif(not harness.have_mpirun(), reason="Open MPI's mpirun is not installed")
needs_comm = pytest.mark.skipif(not harness.have_comm(), reason="dutycycle was built without the comm layer (MPI)")


# ---- launcher_env ------------------------------------------------------------------------------------
def test_no_launcher_is_rank_zero_of_one():
    assert launcher_env({}) == dict(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher=None)


def test_torchrun_variables_set_under_open_mpi_at_import():
    """A script that tests RANK (nanoGPT) sees the job under a plain mpirun too: importing dutycycle
    under Open MPI's variables sets torchrun's (unless they are set already)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="1",
               OMPI_COMM_WORLD_LOCAL_SIZE="2")
    code = ("import os, dutycycle; "
            "print([os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE')])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['1', '2', '1', '2']"
    env["RANK"] = "7"  # a value the user set is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().startswith("['7', '2'")


def test_open_mpi_variables():
    assert launcher_env(OMPI) == dict(rank=3, world_size=4, local_rank=1, local_world_size=2, launcher="mpirun")


def test_slurm_variables_and_tasks_per_node():
    assert launcher_env(SLURM) == dict(rank=5, world_size=7, local_rank=1, local_world_size=3, launcher="srun")
    step = dict(SLURM, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_PROCID="1",
                SLURM_LOCALID="0")
    assert launcher_env(step) == dict(rank=1, world_size=2, local_rank=0, local_world_size=1, launcher="srun")
    assert slurm_tasks_on_node("4(x2),3", 0) == 4
    assert slurm_tasks_on_node("4(x2),3", 1) == 4
    assert slurm_tasks_on_node("4(x2),3", 2) == 3
    with pytest.raises(ValueError, match="SLURM_NODEID=3"):
        slurm_tasks_on_node("4(x2),3", 3)
    with pytest.raises(ValueError, match="cannot parse"):
        slurm_tasks_on_node("4x2", 0)


def test_sbatch_script_outside_a_step_is_not_a_rank():
    env = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_ID"}
    assert launcher_env(env)["launcher"] is None


def test_torchrun_variables():
    assert launcher_env(TORCHRUN) == dict(rank=1, world_size=2, local_rank=1, local_world_size=2,
                                          launcher="torchrun-env")
    assert launcher_env({"RANK": "0", "WORLD_SIZE": "3"}) == dict(rank=0, world_size=3, local_rank=0,
                                                                  local_world_size=3, launcher="torchrun-env")


def test_open_mpi_wins_over_slurm_and_torchrun():
    # Open MPI under srun sets both; `dutycycle run`'s shim sets RANK etc. from Open MPI's.
    assert launcher_env({**SLURM, **TORCHRUN, **OMPI})["launcher"] == "mpirun"
    assert launcher_env({**SLURM, **TORCHRUN})["launcher"] == "srun"


@pytest.mark.parametrize("env, match", [
    ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_RANK='x' is not an integer"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"}, "rank 2 outside world size 2"),
    ({"RANK": "0"}, "not the world size"),
    ({"WORLD_SIZE": "2"}, "not the rank"),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, "local rank 3"),
])
def test_inconsistent_variables_raise(env, match):
    with pytest.raises(ValueError, match=match):
        launcher_env(env)


# ---- the command `dutycycle run` builds ---------------------------------------------------------------
def build(n, target, **kw):
    kw.setdefault("env", {"PATH": "/usr/bin"})
    kw.setdefault("cores", 8)
    kw.setdefault("python", "/py")
    kw.setdefault("is_root", False)
    return launch.build_command(n, target, **kw)


def test_command_and_threads_per_rank():
    cmd, env = build(4, ["train.py", "--lr", "3"])
    assert cmd[:7] == ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", "4", "-x"]
    assert cmd[-6:] == ["/py", "-m", "dutycycle.distributed._shim", "train.py", "--lr", "3"]
    assert env["OMP_NUM_THREADS"] == "2" and env["OPENBLAS_NUM_THREADS"] == "2"  # 8 cores / 4 ranks
    assert "OMP_NUM_THREADS" in cmd and "DUTYCYCLE_COMM_TIMEOUT" not in env
    assert env["PATH"] == "/usr/bin" and "PYTHONUNBUFFERED" not in env
    assert build(16, ["t.py"])[1]["OMP_NUM_THREADS"] == "1"  # at least one
    assert build(3, ["t.py"], cores=8)[1]["OMP_NUM_THREADS"] == "2"  # floor


def test_command_root_hosts_timeout_and_module():
    cmd, env = build(4, ["-m", "pkg.train", "x"], is_root=True, hosts="a,b", timeout=5)
    assert cmd[1] == "--allow-run-as-root"
    assert cmd[cmd.index("--host") + 1] == "a:2,b:2"
    assert env["OMP_NUM_THREADS"] == "4"  # 2 ranks per host
    assert env["DUTYCYCLE_COMM_TIMEOUT"] == "5" and "DUTYCYCLE_COMM_TIMEOUT" in cmd
    assert cmd[-5:] == ["-m", "dutycycle.distributed._shim", "-m", "pkg.train", "x"]
    cmd, _ = build(3, ["t.py"], hosts="a:1, b:4")
    assert cmd[cmd.index("--host") + 1] == "a:1,b:4"


def test_command_keeps_the_users_threads_unless_told():
    assert build(4, ["t.py"], env={"OMP_NUM_THREADS": "3"})[1]["OMP_NUM_THREADS"] == "3"
    assert build(4, ["t.py"], env={"OMP_NUM_THREADS": "3"}, threads=1)[1]["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("kw, match", [(dict(n=0), "positive"), (dict(hosts=","), "no host"),
                                       (dict(hosts="a:x"), "slot"), (dict(timeout=0), "positive")])
def test_command_errors(kw, match):
    n = kw.pop("n", 2)
    with pytest.raises(ValueError, match=match):
        build(n, ["t.py"], **kw)


def test_arguments_after_the_script_are_the_scripts():
    a = launch.parse_args(["-n", "2", "--timeout", "7", "train.py", "-n", "5", "--hosts", "z"])
    assert (a.nprocs, a.timeout, a.hosts, a.target) == (2, 7.0, None, ["train.py", "-n", "5", "--hosts", "z"])
    a = launch.parse_args(["--nproc-per-node", "3", "-m", "pkg.mod", "--x", "1"])
    assert (a.nprocs, a.target) == (3, ["-m", "pkg.mod", "--x", "1"])
    a = launch.parse_args(["-n", "2", "--mpirun-arg", "--tag-output", "--", "t.py"])
    assert a.mpirun_arg == ["--tag-output"] and a.target == ["t.py"]


@pytest.mark.parametrize("argv", [["-n", "2"], ["t.py"], ["-n", "0", "t.py"], ["-n", "2", "-m"]])
def test_bad_run_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(argv)
    assert e.value.code == 2


def test_dry_run_prints_the_command(capsys):
    assert cli.main(["run", "--dry-run", "-n", "2", "--timeout", "9", "t.py", "a"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("mpirun ") and "--bind-to none -n 2" in out
    assert out.endswith("-m dutycycle.distributed._shim t.py a") and "-x DUTYCYCLE_COMM_TIMEOUT" in out


def test_cli_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "dutycycle run -n N" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2


def test_simulate_dispatch(capsys):
    """`dutycycle simulate` runs dutycycle.simulate.main (its own tests cover the model and options)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["simulate", "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


# ---- the failure summary, from mpirun's report ----------------------------------------------------------
def summary(text):
    s = launch.FailureSummary()
    for line in text.splitlines():
        s.feed(line)
    return s.text(1)


def test_failure_summary_names_the_rank():
    assert summary("mpirun detected that one or more processes exited with non-zero status\n"
                   "  Process name: [[18754,1],1]\n  Exit code:    3\n") == \
        "dutycycle run: job failed (exit code 1): rank 1 exited with code 3"
    assert summary("mpirun noticed that process rank 2 with PID 4242 on node vm exited on signal 9 (Killed).") == \
        "dutycycle run: job failed (exit code 1): rank 2 on host vm was killed by signal 9 (Killed)"
    assert summary("MPI_ABORT was invoked on rank 3 in communicator MPI_COMM_WORLD\nwith errorcode 1.") == \
        "dutycycle run: job failed (exit code 1): rank 3 called MPI_Abort"
    ours = "[rank 1] ValueError: x\ndutycycle: rank 1 (host vm) failed: ValueError: x\nMPI_ABORT was invoked on rank 1"
    assert summary(ours) == "dutycycle run: job failed (exit code 1): rank 1 (host vm) failed: ValueError: x"
    assert summary("") == "dutycycle run: job failed (exit code 1)"
    killed = ("dutycycle: rank 0 (host vm) failed: DistributedError: peer rank 1 (host vm) died\n"
              "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).")
    assert summary(killed) == \
        "dutycycle run: job failed (exit code 1): rank 1 on host vm was killed by signal 9 (Killed)"


# ---- self_launch's guards -------------------------------------------------------------------------------
def test_self_launch_guards(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "SLURM_")) or k in ("RANK", "WORLD_SIZE", "DUTYCYCLE_SELF_LAUNCHED"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(os, "execvpe", lambda *a: pytest.fail(f"would exec {a}"))
    for k, v in OMPI.items():
        monkeypatch.setenv(k, v)
    assert launch.self_launch(4) is False  # already a rank: nothing to do
    for k in OMPI:
        monkeypatch.delenv(k)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="dutycycle run -n N"):
        launch.self_launch(2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("DUTYCYCLE_SELF_LAUNCHED", "1")
    with pytest.raises(RuntimeError, match="refusing to launch again"):
        launch.self_launch(2)
    monkeypatch.delenv("DUTYCYCLE_SELF_LAUNCHED")
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    with pytest.raises(RuntimeError, match="interactive session"):
        launch.self_launch(2)


def test_self_launch_execs_mpirun_with_the_same_argv(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "SLURM_")) or k in ("RANK", "WORLD_SIZE", "DUTYCYCLE_SELF_LAUNCHED"):
            monkeypatch.delenv(k)
    script = tmp_path / "train.py"
    script.write_text("")
    monkeypatch.setattr(sys, "argv", [str(script), "--max-steps", "3"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)
    seen = {}

    def fake_exec(file, args, env):
        seen.update(file=file, args=args, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvpe", fake_exec)
    with pytest.raises(SystemExit):
        launch.self_launch(3, timeout=11)
    assert seen["file"] == "mpirun" and seen["args"][seen["args"].index("-n") + 1] == "3"
    assert seen["args"][-5:] == ["-m", "dutycycle.distributed._shim", str(script), "--max-steps", "3"]
    assert seen["env"]["DUTYCYCLE_SELF_LAUNCHED"] == "1" and seen["env"]["DUTYCYCLE_COMM_TIMEOUT"] == "11"


# ---- end to end -------------------------------------------------------------------------------------------
@needs_mpirun
def test_dutycycle_run_sets_the_ranks_and_summarises_a_failure():
    r = harness.run(harness.run_cmd(2, "--timeout", "30", harness.script("ranks.py"), "-n", "9"), timeout=60)
    assert r.rc == 0, r
    rows = sorted(r.json_lines(), key=lambda x: x["rank"])
    assert [(x["rank"], x["world_size"], x["launcher"]) for x in rows] == [(0, 2, "mpirun"), (1, 2, "mpirun")]
    assert [(x["env_rank"], x["env_world"], x["env_local"]) for x in rows] == [("0", "2", "0"), ("1", "2", "1")]
    assert all(x["argv"] == ["-n", "9"] and x["name"] == "__main__" and x["timeout"] == "30" for x in rows), rows
    assert [x["rank_zero"] for x in rows] == [0, 1]

    r = harness.run(harness.run_cmd(2, harness.script("ranks.py"), "--raise-on", "1"), timeout=60)
    assert r.rc != 0, r
    assert "[rank 1] ValueError: rank 1 was told to fail" in r.err, r
    assert "[rank 1]   File" in r.err and "runpy" not in r.err, r  # the shim's frames are trimmed
    assert r.err.strip().splitlines()[-1].startswith("dutycycle run: job failed (exit code 1): rank 1 (host "), r


def same_numbers(rows, n):
    rows = sorted(rows, key=lambda x: x["rank"])
    assert [x["rank"] for x in rows] == list(range(n)), rows
    tri = n * (n + 1) / 2
    for x in rows:
        assert x["world"] == n and x["rank_zero"] == x["rank"]
        assert x["sum"] == [i * tri for i in range(6)]
        assert x["max"] == [n - 1.0] * 3
        assert x["bcast"] == [n - 1.0] * 4
        assert x["gathered"] == [[float(r), 10.0 * r] for r in range(n)]
    return [{k: v for k, v in x.items() if k != "launcher"} for x in rows]


@needs_mpirun
@needs_comm
def test_the_same_job_under_every_launcher():
    s = harness.script("allreduce.py")
    under = {
        "mpirun": harness.run(harness.mpirun_cmd(2, s), timeout=90),
        "dutycycle run": harness.run(harness.run_cmd(2, s), timeout=90),
        "slurm env": harness.run(harness.mpirun_cmd(2, s, "--slurm"), timeout=90),
        "self-launch": harness.run([sys.executable, harness.script("self_launch.py"), "2", "--collect"], timeout=90),
    }
    for name, r in under.items():
        assert r.rc == 0, (name, r)
    seen = {name: r.json_lines() for name, r in under.items()}
    assert {x["launcher"] for x in seen["mpirun"]} == {"mpirun"}
    assert {x["launcher"] for x in seen["dutycycle run"]} == {"mpirun"}
    assert {x["launcher"] for x in seen["slurm env"]} == {"srun"}
    ref = same_numbers(seen["mpirun"], 2)
    assert same_numbers(seen["dutycycle run"], 2) == ref
    assert same_numbers(seen["slurm env"], 2) == ref
    rows = sorted(seen["self-launch"], key=lambda x: x["rank"])
    assert [(x["rank"], x["world"], x["sum"], x["marker"]) for x in rows] == [(0, 2, 3.0, "1"), (1, 2, 3.0, "1")]


@needs_mpirun
def test_self_launch_reruns_the_script_as_ranks():
    r = harness.run([sys.executable, harness.script("self_launch.py"), "2", "--flag"], timeout=60)
    assert r.rc == 0, r
    rows = sorted(r.json_lines(), key=lambda x: x["rank"])
    assert [(x["rank"], x["world"], x["launcher"], x["env_rank"]) for x in rows] == \
        [(0, 2, "mpirun", "0"), (1, 2, "mpirun", "1")]
    assert all(x["argv"] == ["2", "--flag"] and x["marker"] == "1" for x in rows)


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "dutycycle", "run", "--dry-run", "-n", "2", "x.py"],
                       env=harness.job_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "dutycycle.distributed._shim x.py" in r.stdout, r.stderr
    assert dist.launch is launch
