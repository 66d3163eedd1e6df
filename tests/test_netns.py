"""scripts/netns-cluster: namespaces come up with shaped links, an MPI job spans them, and
everything is torn down (the fixture's finalizer runs whatever the test did).

Needs root, iproute2 and (for the MPI part) Open MPI's mpicc/mpirun; skipped with the reason
otherwise. A prefix of its own keeps it apart from any cluster another test or user has up."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "netns-cluster")
PREFIX = f"dct{os.getpid() % 10000}"
SUBNET = "10.213.9"

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="netns cluster needs root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None, reason="needs iproute2 (ip, tc)"),
]


def sh(*args, check=True, timeout=30, **kw):
    env = {**os.environ, "DC_NETNS_PREFIX": PREFIX, "DC_NETNS_SUBNET": SUBNET, **kw.pop("env", {})}
    return subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def _leftovers():
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [w for w in (ns + links).split() if w.startswith(PREFIX)]


@pytest.fixture(scope="module")
def cluster():
    try:
        r = sh("up", "3", "--rate", "200mbit", "--delay", "100us")
    except subprocess.CalledProcessError as e:
        sh("down", check=False)
        pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")
    try:
        yield r
    finally:
        sh("down", check=False)
        assert _leftovers() == [], "netns-cluster down left namespaces or links behind"


def test_up_status_and_delay_note(cluster):
    st = sh("status").stdout
    assert f"{PREFIX}0" in st and f"{SUBNET}.3/24" in st and "tbf" in st
    # either netem is there and the delay applied, or `up` says honestly that it is not
    assert "netem" in st or "NOT applied" in cluster.stderr


def test_shaped_bandwidth(cluster):
    """A timed TCP transfer between namespaces 1 and 0 runs at roughly the tbf rate (200 Mbit/s)."""
    nbytes = 4_000_000
    server = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{SUBNET}.2", 5599)); s.listen(1); print("ready", flush=True)
        c, _ = s.accept(); got = 0; t0 = None
        while got < {nbytes}:
            b = c.recv(1 << 20)
            if not b: break
            if t0 is None: t0 = time.perf_counter()
            got += len(b)
        print(got, time.perf_counter() - t0, flush=True)
    """)
    client = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("{SUBNET}.2", 5599)); s.sendall(b"x" * {nbytes}); s.close()
    """)
    env = {**os.environ, "DC_NETNS_PREFIX": PREFIX, "DC_NETNS_SUBNET": SUBNET}
    srv = subprocess.Popen(
        [SCRIPT, "exec", "1", sys.executable, "-c", server], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        sh("exec", "0", sys.executable, "-c", client)
        out, _ = srv.communicate(timeout=20)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    got, secs = out.split()
    mbit = int(got) * 8 / float(secs) / 1e6
    assert int(got) == nbytes
    assert 100 < mbit < 260, f"transfer ran at {mbit:.0f} Mbit/s over a 200 Mbit/s link"


def test_mpi_hello_across_namespaces(cluster, tmp_path):
    if shutil.which("mpicc") is None or shutil.which("mpirun") is None:
        pytest.skip("needs Open MPI (mpicc, mpirun)")
    src = tmp_path / "hello.c"
    src.write_text(
        textwrap.dedent("""
        #include <mpi.h>
        #include <stdio.h>
        int main(int argc, char **argv) {
            MPI_Init(&argc, &argv);
            int r, n, v, s = 0;
            MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &n);
            v = r + 1;
            MPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
            printf("rank %d of %d sum %d\\n", r, n, s);
            MPI_Finalize();
            return 0;
        }
    """)
    )
    exe = tmp_path / "hello"
    subprocess.run(["mpicc", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
    r = sh("mpirun", "-n", "2", str(exe), timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    lines = sorted(x for x in r.stdout.splitlines() if x.startswith("rank"))
    assert lines == ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"], r.stdout + r.stderr


def test_exec_rejects_bad_rank(cluster):
    r = sh("exec", "7", "true", check=False)
    assert r.returncode != 0 and "RANK" in r.stderr
