"""libFuzzer (through atheris) on the checkpoint parsers: the safetensors header reader and the
manifest checker must turn any input into a ValueError (or, for a newer format version, a
CheckpointError) naming the file, never another exception or a crash.

    python tests/fuzz/fuzz_checkpoint.py safetensors -max_total_time=30
    python tests/fuzz/fuzz_checkpoint.py manifest -max_total_time=30

Seeds: a real shard and a real manifest, written at start, so the fuzzer starts from valid input."""

import json
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import dutycycle as dc
    import dutycycle.checkpoint as ckpt
    from dutycycle.checkpoint import _format
    from dutycycle.trainer.checkpoint_io import parse_safetensors


def seeds(target, folder):
    d = tempfile.mkdtemp()
    ckpt.save({"model": {"w": dc.randn(3, 4), "b": dc.zeros(4).bfloat16()}, "step": 1, "t": (1, "x")},
              os.path.join(d, "s.ckpt"), block=True)  # fmt: skip
    src = os.path.join(d, "s.ckpt", "manifest.json" if target == "manifest" else _format.shard_name(0, 1))
    os.makedirs(folder, exist_ok=True)
    with open(src, "rb") as f, open(os.path.join(folder, "seed"), "wb") as g:
        g.write(f.read())


def test_safetensors(data):
    try:
        parse_safetensors(bytearray(data), "fuzz.safetensors")
    except ValueError as e:
        assert "fuzz.safetensors" in str(e), e


def test_manifest(data):
    try:
        try:
            m = json.loads(data)
        except (ValueError, RecursionError):
            return  # read_manifest turns these into CheckpointCorruptError itself
        _format.check_manifest(m, "fuzz/manifest.json")
        _format.decode_state(m, {}, "fuzz/manifest.json")
    except (ValueError, ckpt.CheckpointError) as e:  # corrupt, or a newer format version
        assert "fuzz/manifest.json" in str(e), e


def main():
    target = sys.argv[1]
    fn = {"safetensors": test_safetensors, "manifest": test_manifest}[target]
    corpus = os.path.join(tempfile.mkdtemp(), "corpus")
    seeds(target, corpus)
    atheris.Setup([sys.argv[0], *sys.argv[2:], corpus], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
