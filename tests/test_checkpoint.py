"""dutycycle.checkpoint: asynchronous, verified checkpoint directories (csrc/ckpt + checkpoint/)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import dutycycle as dc
import dutycycle.checkpoint as ckpt
from dutycycle import _C
from dutycycle.checkpoint import CheckpointCorruptError, Checkpointer, CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
SHARD = "rank-00000-of-00001.safetensors"


def _state(seed=0, n=64):
    g = np.random.default_rng(seed)
    return {
        "model": {"w": dc.from_numpy(g.standard_normal((n, n)).astype(np.float32)), "b": dc.zeros(n)},
        "optimizer": {"state": {0: {"exp_avg": dc.ones(n, n) * seed, "step": 3}}, "param_groups": [{"lr": 0.1}]},
        "step": seed,
        "arr": np.arange(5, dtype=np.int16),
        "meta": ("a", 1.5, None, float("inf")),
    }


# ---- CRC32C ---------------------------------------------------------------------------------------
def test_crc32c_known_values_and_chaining():
    assert _C.crc32c(b"123456789") == 0xE3069283  # the CRC32C check value (RFC 3720)
    assert _C.crc32c(b"") == 0
    assert _C.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    data = os.urandom(300_001)
    for lo, hi in [(0, 0), (1, 2), (3, 11), (5, 4099), (7, 300_001)]:
        part = data[lo:hi]
        assert _C.crc32c(part) == _C.crc32c(part, software=True)
        cut = (lo + hi) // 2
        assert _C.crc32c(data[cut:hi], _C.crc32c(data[lo:cut])) == _C.crc32c(part)


# ---- round trip and layout -------------------------------------------------------------------------
def test_save_load_round_trip_types(tmp_path):
    st = _state(3)
    st["bf"] = dc.randn(4).bfloat16()
    st["u8"] = dc.arange(6).byte()
    st["keys"] = {1: "int key", (2, 3): "tuple key"}
    ckpt.save(st, tmp_path / "a.ckpt", block=True)
    back = ckpt.load(tmp_path / "a.ckpt")
    assert back["model"]["w"].equal(st["model"]["w"]) and back["model"]["b"].equal(st["model"]["b"])
    assert back["optimizer"]["state"][0]["exp_avg"].equal(st["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["state"][0]["step"] == 3 and back["optimizer"]["param_groups"] == [{"lr": 0.1}]
    assert isinstance(back["arr"], np.ndarray) and back["arr"].dtype == np.int16
    assert back["arr"].tolist() == list(range(5))
    assert back["meta"] == ("a", 1.5, None, float("inf"))
    assert back["bf"].dtype == dc.bfloat16 and back["bf"].float().equal(st["bf"].float())
    assert back["u8"].dtype == dc.uint8 and back["u8"].tolist() == list(range(6))
    assert back["keys"] == {1: "int key", (2, 3): "tuple key"}


def test_layout_is_safetensors_plus_manifest(tmp_path):
    path = tmp_path / "epoch=1-step=300.ckpt"
    ckpt.save(_state(1), path, block=True, step=300, epoch=1)
    assert sorted(os.listdir(path)) == sorted([SHARD, "manifest.json", "rank-00000.crc"])
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "dutycycle-checkpoint" and m["format_version"] == 1
    assert (m["step"], m["epoch"], m["world_size"]) == (300, 1, 1)
    assert set(m["tensors"]) == {"model/w", "model/b", "optimizer/state/0/exp_avg", "arr"}
    for name, t in m["tensors"].items():
        (sl,) = t["slices"]
        assert sl["file"] == SHARD and sl["key"] == name
        assert len(m["crc32c"][f"{SHARD}:{name}"]) == 8
    raw = (path / SHARD).read_bytes()
    assert b"pickle" not in raw and not raw.startswith(b"\x80")  # safetensors: 8-byte length + JSON header
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(m["tensors"])


def test_trainer_checkpoint_names_keep_callback_state_in_json(tmp_path):
    import dutycycle as L

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = dc.nn.Linear(4, 2)

        def training_step(self, batch, i):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return dc.optim.AdamW(self.parameters())

    x = dc.randn(16, 4)
    dl = dc.utils.data.DataLoader(dc.utils.data.TensorDataset(x), batch_size=4)
    mc = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", monitor="loss", save_top_k=2, save_last=True)
    L.Trainer(max_epochs=2, callbacks=[mc], logger=False, enable_progress_bar=False, enable_model_summary=False).fit(
        M(), dl
    )
    m = json.loads(open(os.path.join(mc.best_model_path, "manifest.json")).read())
    assert set(m["tensors"]) == {
        "model/lin.weight", "model/lin.bias",
        "optimizer/0/state/0/exp_avg", "optimizer/0/state/0/exp_avg_sq",
        "optimizer/0/state/1/exp_avg", "optimizer/0/state/1/exp_avg_sq",
    }  # fmt: skip
    assert m["strategy"] == "single_device" and m["step"] == 8
    cb = m["state"]["callbacks"]
    (key,) = cb
    assert "ModelCheckpoint" in key and "__inline__" in json.dumps(cb[key]["best_model_score"])
    assert os.path.islink(tmp_path / "ck" / "last.ckpt")  # the newest committed checkpoint, switched atomically
    assert os.path.realpath(tmp_path / "ck" / "last.ckpt") in {os.path.realpath(p) for p in mc.best_k_models}


# ---- verification --------------------------------------------------------------------------------
def _saved(tmp_path, name="a.ckpt", seed=0):
    path = tmp_path / name
    ckpt.save(_state(seed), path, block=True, step=seed)
    return path


def test_flipped_byte_in_any_tensor_names_file_and_tensor(tmp_path):
    path = _saved(tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    raw = bytearray((path / SHARD).read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    for name in m["tensors"]:
        b, e = header[name]["data_offsets"]
        bad = bytearray(raw)
        bad[8 + n + random.randrange(b, e)] ^= 0x10
        (path / SHARD).write_bytes(bytes(bad))
        with pytest.raises(CheckpointCorruptError, match=rf"tensor '{name}' in file '{SHARD}' fails its CRC32C"):
            ckpt.load(path)
    (path / SHARD).write_bytes(bytes(raw))
    ckpt.load(path)  # intact again


def test_truncated_missing_and_uncommitted(tmp_path):
    path = _saved(tmp_path)
    raw = (path / SHARD).read_bytes()
    (path / SHARD).write_bytes(raw[:-7])
    with pytest.raises(CheckpointCorruptError, match=rf"a\.ckpt.*{SHARD}.*tensor '[^']+'"):
        ckpt.load(path)
    os.unlink(path / SHARD)
    with pytest.raises(CheckpointCorruptError, match=f"shard file '{SHARD}' is missing"):
        ckpt.load(path)
    (path / SHARD).write_bytes(raw)
    (path / "manifest.json").rename(path / "x")
    with pytest.raises(CheckpointCorruptError, match="never committed"):
        ckpt.load(path)
    (path / "x").write_text("{not json")
    (path / "x").rename(path / "manifest.json")
    with pytest.raises(CheckpointCorruptError, match="manifest.json.*not valid JSON"):
        ckpt.load(path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(format_version="1"),
        lambda m: m["tensors"]["model/w"]["slices"][0].update(stop=5),
        lambda m: m["tensors"]["model/w"].update(dtype="F99"),
        lambda m: m["files"].update({"../evil": {"rank": 0, "bytes": 1}}),
        lambda m: m["crc32c"].clear(),
        lambda m: m.update(tensors=[]),
    ],
)
def test_crafted_manifest_fields_are_refused(tmp_path, edit):
    path = _saved(tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointCorruptError, match="manifest.json"):
        ckpt.load(path)


def test_fallback_loads_the_previous_committed_checkpoint(tmp_path):
    _saved(tmp_path, "step=1.ckpt", seed=1)
    newest = _saved(tmp_path, "step=2.ckpt", seed=2)
    assert ckpt.load(tmp_path)["step"] == 2  # a folder: the newest committed one
    raw = bytearray((newest / SHARD).read_bytes())
    raw[-3] ^= 1
    (newest / SHARD).write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="step=2.ckpt"):
        ckpt.load(tmp_path)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert ckpt.load(tmp_path, fallback=True)["step"] == 1
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert ckpt.load(newest, fallback=True)["step"] == 1


def test_single_file_checkpoints_of_earlier_versions_still_load(tmp_path):
    from dutycycle.trainer.checkpoint_io import save_checkpoint

    save_checkpoint(tmp_path / "old.ckpt", {"state_dict": {"w": dc.ones(2)}, "epoch": 4})
    back = ckpt.load(tmp_path / "old.ckpt")
    assert back["epoch"] == 4 and back["state_dict"]["w"].tolist() == [1.0, 1.0]
    assert ckpt.inspect(tmp_path / "old.ckpt")["kind"].startswith("single-file")


def test_safetensors_library_reads_the_shards(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = _saved(tmp_path, seed=5)
    st = _state(5)
    flat = safetensors_numpy.load_file(str(path / SHARD))
    assert np.array_equal(flat["model/w"], st["model"]["w"].numpy())
    assert np.array_equal(flat["arr"], st["arr"])
    out = tmp_path / "one.safetensors"
    ckpt.consolidate(path, out)
    one = safetensors_numpy.load_file(str(out))
    assert np.array_equal(one["model.w"], st["model"]["w"].numpy())
    assert dc.load(out)["model"]["w"].equal(st["model"]["w"])  # the structure comes back too


# ---- the writer: ring, busy policy, errors -------------------------------------------------------
def test_state_larger_than_a_bounded_pool_still_saves_and_the_pool_is_reused(tmp_path):
    c = Checkpointer(pool_bytes=1 << 16)
    big = {"w": dc.randn(300, 300)}  # 360 KB through a 64 KB ring
    for i in range(3):
        c.save(big, tmp_path / f"b{i}.ckpt", block=True)
        assert c._w.capacity == 1 << 16
    assert ckpt.load(tmp_path / "b2.ckpt")["w"].equal(big["w"])
    d = Checkpointer()
    d.save(big, tmp_path / "c.ckpt", block=True)
    cap = d._w.capacity
    assert cap >= 300 * 300 * 4
    d.save({"w": dc.randn(10)}, tmp_path / "d.ckpt", block=True)
    assert d._w.capacity == cap  # reused, not reallocated per save
    c.close()
    d.close()


def test_snapshot_is_taken_at_save_time(tmp_path):
    c = Checkpointer()
    w = dc.zeros(1000)
    c.save({"w": w}, tmp_path / "s.ckpt")
    w.add_(1)  # changed right after save() returned: the checkpoint has the old values
    c.wait()
    assert ckpt.load(tmp_path / "s.ckpt")["w"].sum().item() == 0
    c.close()


def _hold_writer(c, tmp_path, seconds):
    """Make c's writer busy for `seconds`: a job whose commit waits for a fragment that never comes."""
    c._ensure_writer(1)
    c._w.submit(
        str(tmp_path / "hold.tmp"), [], [], manifest=("m.json", "", "", ["never"], seconds), fsync=False
    )
    c._job = {"path": str(tmp_path / "hold"), "tmp": str(tmp_path / "hold.tmp"), "nseg": 0,
              "stats": ckpt.SaveStats("hold"), "link": None}  # fmt: skip


def test_busy_writer_skip_and_wait(tmp_path):
    c = Checkpointer(if_busy="skip", on_error="warn")
    _hold_writer(c, tmp_path, 1.0)
    s = c.save({"w": dc.ones(3)}, tmp_path / "x.ckpt")
    assert s.skipped and c.skips == 1 and not (tmp_path / "x.ckpt").exists()
    c.if_busy = "wait"
    with pytest.warns(RuntimeWarning, match="timed out"):
        s = c.save({"w": dc.ones(3)}, tmp_path / "x.ckpt", block=True)
    assert not s.skipped and s.wait_s > 0.5  # waited for the busy writer: counted as stall
    assert ckpt.load(tmp_path / "x.ckpt")["w"].tolist() == [1.0, 1.0, 1.0]
    c.close()


def test_unwritable_destination_keeps_the_previous(tmp_path):
    c = Checkpointer()
    c.save({"v": dc.ones(2)}, tmp_path / "ok.ckpt", link=tmp_path / "last.ckpt", block=True)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(OSError, match="blocker"):
        c.save({"v": dc.zeros(2)}, tmp_path / "blocker" / "x.ckpt", block=True)
    assert ckpt.load(tmp_path / "last.ckpt")["v"].tolist() == [1.0, 1.0]
    c.close()


FILL_DISK = r"""
import resource, signal, sys, warnings
import dutycycle as dc, dutycycle.checkpoint as ckpt
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, as on a full disk
folder = sys.argv[1]
c = ckpt.Checkpointer(on_error=sys.argv[2])
c.save({"w": dc.ones(1000)}, folder + "/small.ckpt", link=folder + "/last.ckpt", block=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    c.save({"w": dc.zeros(100_000)}, folder + "/big.ckpt", link=folder + "/last.ckpt")
    try:
        c.wait()
        print("no error raised;", "warned:", [str(x.message) for x in w])
    except ckpt.CheckpointError as e:
        print("raised:", e)
print("errors:", len(c.errors))
"""


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_disk_full_during_background_save(tmp_path, mode):
    r = subprocess.run([sys.executable, "-c", FILL_DISK, str(tmp_path), mode], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "File too large" in r.stdout and "big.ckpt" in r.stdout
    assert ("raised:" in r.stdout) == (mode == "raise") and "errors: 1" in r.stdout
    assert not (tmp_path / "big.ckpt").exists() and not (tmp_path / "big.ckpt.tmp").exists()
    assert ckpt.load(tmp_path / "last.ckpt")["w"].sum().item() == 1000  # the previous one, intact


def test_trainer_reports_a_failed_background_save(tmp_path):
    script = r"""
import resource, signal, sys, warnings
import dutycycle as dc, dutycycle as L
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = dc.nn.Linear(64, 64)
    def training_step(self, b, i):
        if self.global_step == 3:
            self.trainer.strategy.checkpointer.wait()   # step 2's checkpoint is committed
            resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))   # then the disk fills up
        return self.lin(b[0]).pow(2).mean()
    def configure_optimizers(self): return dc.optim.SGD(self.parameters(), lr=0.01)
dl = dc.utils.data.DataLoader(dc.utils.data.TensorDataset(dc.randn(32, 64)), batch_size=4)
mc = L.callbacks.ModelCheckpoint(dirpath=sys.argv[1], every_n_train_steps=2, save_top_k=-1, save_last=True,
                                 on_save_error=sys.argv[2])
t = L.Trainer(max_epochs=1, callbacks=[mc], logger=False, enable_progress_bar=False, enable_model_summary=False)
try:
    t.fit(M(), dl)
    print("fit finished at step", t.global_step, "errors", len(t.strategy.checkpointer.errors))
except Exception as e:
    print("fit stopped:", type(e).__name__, e)
"""
    for mode in ("stop", "continue"):
        d = tmp_path / mode
        r = subprocess.run([sys.executable, "-c", script, str(d), mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        if mode == "stop":
            assert "fit stopped: CheckpointError" in r.stdout and "File too large" in r.stdout
        else:
            assert "fit finished at step 8" in r.stdout and "File too large" in r.stderr
        assert ckpt.load(d / "last.ckpt")["global_step"] == 2  # the checkpoint before the disk filled up


# ---- retention and leftovers -------------------------------------------------------------------------
def test_keep_last_deletes_only_after_a_newer_commit(tmp_path):
    c = Checkpointer(keep_last=2)
    for i in range(5):
        c.save({"i": i}, tmp_path / f"s{i}.ckpt", link=tmp_path / "last.ckpt")
        c.wait()
        present = sorted(p for p in os.listdir(tmp_path) if p.startswith("s"))
        assert present == [f"s{j}.ckpt" for j in range(max(0, i - 1), i + 1)]
    assert ckpt.load(tmp_path / "last.ckpt")["i"] == 4
    c.close()


def test_leftovers_of_interrupted_saves_are_cleaned(tmp_path):
    good = _saved(tmp_path, "epoch=0-step=1.ckpt")
    (tmp_path / "epoch=0-step=2.ckpt.tmp").mkdir()
    half = tmp_path / "epoch=0-step=3.ckpt"
    half.mkdir()
    (half / SHARD).write_bytes(b"partial")
    user = tmp_path / "notes"
    user.mkdir()
    removed = ckpt.cleanup_leftovers(tmp_path)
    assert sorted(os.path.basename(p) for p in removed) == ["epoch=0-step=2.ckpt.tmp", "epoch=0-step=3.ckpt"]
    assert good.exists() and user.exists()


# ---- crash consistency -----------------------------------------------------------------------------
def _child(folder, out, steps=600, every=3):
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "ckpt_scripts", "train_and_checkpoint.py"), str(folder), str(steps),
         str(every), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigkill_at_random_moments_never_loses_a_committed_checkpoint(tmp_path):
    base = _child(tmp_path / "base", tmp_path / "base.npy")
    assert base.wait(timeout=300) == 0, base.stderr.read()
    folder, rng, kills, last_step, mid_write = tmp_path / "run", random.Random(1234), 0, 0, 0
    while kills < 20:
        p = _child(folder, tmp_path / "run.npy")
        first = p.stdout.readline()
        assert first.startswith("start"), p.stderr.read()
        assert int(first.split()[1]) >= last_step  # resumed from the newest committed, never an older one
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        kills += 1
        if os.path.isdir(folder) and any(n.endswith(".tmp") for n in os.listdir(folder)):
            mid_write += 1  # killed while a save was being written
        if os.path.isdir(folder) and ckpt.find_checkpoints(folder):
            state, path = ckpt.load(folder, return_path=True)  # verifies every CRC; must never fail
            assert state["step"] >= last_step
            last_step = state["step"]
            assert ckpt.load(folder / "last.ckpt")["step"] in (last_step, last_step - 3)
    assert last_step > 0, "no checkpoint committed before the kills: the child is too fast or too slow"
    print(f"{kills} kills, {mid_write} of them during a write, resumed up to step {last_step}")
    assert mid_write >= 1
    p = _child(folder, tmp_path / "run.npy")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    a, b = np.load(tmp_path / "base.npy"), np.load(tmp_path / "run.npy")
    assert a.tobytes() == b.tobytes()  # 20 kills and resumes end bit for bit where the uninterrupted run does


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_inspect_and_consolidate(tmp_path):
    path = _saved(tmp_path, seed=2)
    r = subprocess.run([sys.executable, "-m", "dutycycle", "ckpt", "inspect", str(path)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "model/w" in r.stdout and "verified: ok" in r.stdout and "step: 2" in r.stdout
    out = tmp_path / "one.safetensors"
    r = subprocess.run([sys.executable, "-m", "dutycycle", "ckpt", "consolidate", str(path), str(out)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert dc.load(out)["model"]["w"].equal(_state(2)["model"]["w"])
    raw = bytearray((path / SHARD).read_bytes())
    raw[-1] ^= 1
    (path / SHARD).write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "dutycycle", "ckpt", "inspect", str(path)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "fails its CRC32C" in r.stdout


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="if_busy"):
        Checkpointer(if_busy="later")
    with pytest.raises(ValueError, match="pool_bytes"):
        Checkpointer(pool_bytes=0)
    with pytest.raises(TypeError, match="cannot store a builtin_function_or_method at .model/f."):
        ckpt.save({"model": {"f": print}}, tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match="nothing"):
        ckpt.load(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a dutycycle checkpoint"):
        ckpt.save({"a": 1}, tmp_path / "plain", block=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.wait()


# ---- fuzzing (libFuzzer through atheris, bounded) ----------------------------------------------------
@pytest.mark.parametrize("target", ["safetensors", "manifest"])
def test_fuzz_parsers(target, tmp_path):
    pytest.importorskip("atheris")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip(
            "this is the ASan build (make sanitize): atheris loads its own sanitizer runtime, which cannot "
            "share the process with ASan's; the same fuzz targets run in the plain build's `make test`"
        )
    seconds = os.environ.get("DUTYCYCLE_FUZZ_SECONDS", "20")
    r = subprocess.run(
        [sys.executable, os.path.join(HERE, "fuzz", "fuzz_checkpoint.py"), target, f"-max_total_time={seconds}",
         "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=int(seconds) + 120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    assert "Done" in r.stderr and "runs in" in r.stderr


TORCH_PYTHON = os.environ.get("DUTYCYCLE_TORCH_PYTHON")


@pytest.mark.skipif(not TORCH_PYTHON, reason="set DUTYCYCLE_TORCH_PYTHON to a Python with torch")
def test_plain_pytorch_loop_checkpoints_asynchronously(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(HERE), "python"))
    r = subprocess.run([TORCH_PYTHON, os.path.join(HERE, "torch_scripts", "checkpoint_torch.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-4000:]


# ---- several ranks: each writes its shard, rank 0 commits -------------------------------------------
def _gathers(n):
    import threading

    box, bar = {}, threading.Barrier(n)

    def make(rank):
        def gather(obj):
            box[rank] = obj
            bar.wait()
            out = [box[r] for r in range(n)] if rank == 0 else None
            bar.wait()
            return out

        return gather

    return make


def test_two_ranks_write_their_shards_and_lazy_reads_take_only_what_they_need(tmp_path):
    import threading

    path, full, make = tmp_path / "two.ckpt", np.arange(10, dtype=np.float32), _gathers(2)

    def run(rank):
        lo, hi = (0, 6) if rank == 0 else (6, 10)
        st = {"w": ckpt.Sharded(dc.from_numpy(full[lo:hi].copy()), [2, 5], lo, hi), "step": 7}
        if rank == 0:
            st["bias"] = dc.ones(3)
        with Checkpointer() as c:
            c.save(st, path, rank=rank, world_size=2, gather=make(rank), block=True, info={"step": 7})

    ts = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    m = json.loads((path / "manifest.json").read_text())
    assert m["world_size"] == 2 and [s["file"] for s in m["tensors"]["w"]["slices"]] == [
        "rank-00000-of-00002.safetensors", "rank-00001-of-00002.safetensors"]  # fmt: skip
    back = ckpt.load(path)
    assert back["w"].tolist() == full.reshape(2, 5).tolist() and back["bias"].tolist() == [1.0] * 3
    lazy = ckpt.load(path, lazy=lambda n: n == "w")
    assert isinstance(lazy["w"], ckpt.LazyTensor) and lazy["w"].read(4, 8).tolist() == [4.0, 5.0, 6.0, 7.0]
    f1 = path / "rank-00001-of-00002.safetensors"
    raw = bytearray(f1.read_bytes())
    raw[-1] ^= 1
    f1.write_bytes(bytes(raw))
    lazy = ckpt.load(path, lazy=lambda n: n == "w")
    assert lazy["w"].read(0, 5).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # rank 0's slice only: not touched
    with pytest.raises(CheckpointCorruptError, match="tensor 'w@6' in file 'rank-00001-of-00002.safetensors'"):
        lazy["w"].read(5, 10)


def test_a_rank_that_never_writes_times_out_the_commit_and_keeps_the_previous(tmp_path):
    c = Checkpointer(on_error="raise")
    c.save({"v": dc.ones(2)}, tmp_path / "ok.ckpt", link=tmp_path / "last.ckpt", block=True)
    c.commit_timeout_s = 0.5
    ghost = {"file": "rank-00001-of-00002.safetensors", "rank": 1, "bytes": 8,
             "tensors": [["w", "F32", [4], 2, 4, "w@2"]]}  # fmt: skip

    def gather(meta):
        return [meta, ghost]  # rank 1 says what it will write, then dies

    st = {"w": ckpt.Sharded(dc.zeros(2), [4], 0, 2)}
    with pytest.raises(CheckpointError, match="timed out .* waiting for .*rank-00001.crc"):
        c.save(st, tmp_path / "new.ckpt", link=tmp_path / "last.ckpt", rank=0, world_size=2, gather=gather,
               block=True)  # fmt: skip
    assert not (tmp_path / "new.ckpt").exists() and not (tmp_path / "new.ckpt.tmp").exists()
    assert ckpt.load(tmp_path / "last.ckpt")["v"].tolist() == [1.0, 1.0]
    c.close()
