"""dutycycle.simulate: the alpha-beta model's invariants, its CLI, and calibration recovering known
link terms from synthetic measurements."""

import json
import math

import pytest

from dutycycle import simulate as sim

WL = sim.default_workload()
CL = sim.Cluster()


def test_ring_terms_match_the_formula():
    S, B, a = 3e8, 5e10, 4e-6
    for n in (2, 3, 8, 64, 4096):
        assert sim.ring_all_reduce(S, n, B, 0.0) == pytest.approx(2 * (n - 1) / n * S / B)
        assert sim.ring_all_reduce(0.0, n, B, a) == pytest.approx(2 * (n - 1) * a)
        assert sim.ring_reduce_scatter(S, n, B, 0.0) == pytest.approx((n - 1) / n * S / B)
        assert sim.tree_all_reduce(0.0, n, B, a) == pytest.approx(2 * math.ceil(math.log2(n)) * a)
    assert sim.ring_all_reduce(S, 1, B, a) == 0.0


def test_zero_moves_the_same_bytes_as_a_ring_all_reduce():
    # reduce-scatter + all-gather = all-reduce in bytes (ZeRO-1/2 have DP's volume); 1 node and many
    S = WL.grad_size
    for n in (8, 64, 1024):
        for alg in ("ring", "hier_ring"):
            no_lat = sim.Cluster(nvlink_alpha=0.0, nic_alpha=0.0)
            rs = sim.reduce_scatter_time(S, n, no_lat, alg)
            assert 2 * rs == pytest.approx(sim.all_reduce_time(S, n, no_lat, alg))
    assert sim.comm_bytes_per_rank("zero", S, 16) == sim.comm_bytes_per_rank("ddp", S, 16)
    assert sim.comm_bytes_per_rank("parameter_server", S, 16) == 15 * S


def test_parameter_server_collapses_beyond_16_gpus():
    ps = sim.Plan("parameter_server", "naive", False, 0)
    duties = [sim.step_time(n, WL, CL, ps).duty for n in sim.gpu_counts(16, 4096)]
    assert all(b < a for a, b in zip(duties, duties[1:]))
    assert 1 - duties[0] >= 0.6  # >= 60% idle at 16 GPUs, from the defaults alone
    assert sim.step_time(8, WL, CL, ps).duty > duties[0]  # one node (NVLink) is still tolerable


def test_hierarchical_keeps_duty_at_4096_with_defaults():
    r = sim.step_time(4096, WL, CL, sim.Plan("ddp", "hier_tree", True, 25))
    assert r.duty >= 0.9 and r.efficiency >= 0.9
    # and the flat ring does not, with 25 MB buckets: 2(N-1) latency terms per bucket
    assert sim.step_time(4096, WL, CL, sim.Plan("ddp", "ring", True, 25)).duty < 0.5


def test_overlap_never_increases_step_time():
    for strategy, algs in (("ddp", ("ring", "tree", "hier_ring", "hier_tree")), ("zero", ("ring", "hier_ring"))):
        for alg in algs:
            for b in (1, 25, 500, 0):
                for n in (8, 64, 4096):
                    on = sim.step_time(n, WL, CL, sim.Plan(strategy, alg, True, b))
                    off = sim.step_time(n, WL, CL, sim.Plan(strategy, alg, False, b))
                    assert on.step <= off.step + 1e-12
                    assert off.exposed == pytest.approx(off.comm)  # nothing hidden without overlap


def test_last_bucket_is_always_exposed():
    sizes = sim.bucket_sizes(WL.grad_size, 25, 1)
    assert sizes[0] == 1e6 and max(sizes) == 25e6 and sum(sizes) == pytest.approx(WL.grad_size)
    for n in (16, 512):

        def cost(s, n=n):
            return sim.all_reduce_time(s, n, CL, "hier_tree")

        exposed, busy = sim.overlap_schedule(sizes, WL.backward, cost, overlap=True)
        assert exposed >= cost(sizes[-1]) - 1e-12
        assert busy == pytest.approx(sum(cost(s) for s in sizes))


def test_zero_divides_the_optimizer():
    z = sim.step_time(64, WL, CL, sim.Plan("zero", "hier_ring", True, 25))
    assert z.compute == pytest.approx(WL.forward + WL.backward + WL.optimizer / 64)
    assert sim.memory_per_gpu(WL, "zero2", 64) < sim.memory_per_gpu(WL, "zero1", 64) < sim.memory_per_gpu(WL, "ddp", 64)


def test_cli_prints_the_table_and_writes_a_png(tmp_path, capsys):
    png, js = tmp_path / "scaling.png", tmp_path / "scaling.json"
    assert sim.main(["--max-gpus", "64", "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "duty cycle (%)" in out and "parameter_server" in out and "duty >= 90%" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["counts"] == [8, 16, 32, 64]


def _synthetic(theta):
    """Rows like benchmarks/scaling.py writes, with comm waits from the model at known terms."""
    rows = []
    for S in (2e6, 9e6):
        for strategy in ("ddp", "zero1", "parameter_server"):
            for n, net in ((2, "shm"), (4, "shm"), (4, "tcp"), (8, "tcp")):
                r = {
                    "strategy": strategy,
                    "n": n,
                    "network": net,
                    "grad_bytes": S,
                    "param_bytes": S,
                    "bucket_mb": 25,
                    "first_bucket_mb": 1,
                    "overlap": True,
                    "backward_s": 0.02,
                    "optimizer_single_s": 0.004,
                }
                exposed = sim.predict_exposed(r, theta)
                r["comm_wait_s"] = exposed
                r["step_s"] = 0.05 + exposed
                rows.append(r)
    return {"machine": "synthetic", "rows": rows}


def test_calibrate_recovers_known_terms(tmp_path, capsys):
    truth = {"alpha_shm": 3e-5, "beta_shm": 1 / 1.5e9, "alpha_tcp": 2e-4, "beta_tcp": 1 / 1.1e8, "overhead": 2e-3}
    data = _synthetic(truth)
    theta, rms, out = sim.calibrate(data, loo=False)
    assert rms < 0.01
    for k in ("beta_shm", "beta_tcp", "overhead"):
        assert theta[k] == pytest.approx(truth[k], rel=0.05), k
    for k in ("alpha_shm", "alpha_tcp"):
        assert theta[k] == pytest.approx(truth[k], rel=0.25), k
    assert all(abs(r["pred_step_s"] - r["step_s"]) / r["step_s"] < 0.01 for r in out)
    # the CLI reads the same JSON and prints per-row prediction vs measurement
    path = tmp_path / "scaling-cpu.json"
    path.write_text(json.dumps(data))
    assert sim.main(["calibrate", str(path), "--no-loo"]) == 0
    text = capsys.readouterr().out
    assert "within 15%" in text and "parameter_server" in text
