"""`dutycycle ckpt inspect PATH` and `dutycycle ckpt consolidate PATH OUT.safetensors`."""

import argparse
import sys
import time

from . import CheckpointError, consolidate, inspect


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv=None):
    p = argparse.ArgumentParser(prog="dutycycle ckpt", description="inspect or consolidate dutycycle checkpoints")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="steps, sizes, tensors and CRC32C verification of a checkpoint")
    i.add_argument("path", help="a checkpoint directory, a last.ckpt link, or a folder of checkpoints (the newest)")
    i.add_argument("--no-verify", action="store_true", help="skip reading the tensor data")
    i.add_argument("--tensors", type=int, default=50, help="list at most this many tensors (default 50; 0: all)")
    c = sub.add_parser("consolidate", help="write one .safetensors file that safetensors and PyTorch load")
    c.add_argument("path")
    c.add_argument("out")
    a = p.parse_args(argv)
    try:
        if a.cmd == "consolidate":
            consolidate(a.path, a.out)
            print(f"wrote {a.out}")
            return 0
        info = inspect(a.path, verify=not a.no_verify)
    except (CheckpointError, OSError, ValueError) as e:
        print(f"dutycycle ckpt: {e}", file=sys.stderr)
        return 1
    print(f"checkpoint: {info['path']}")
    print(f"kind: {info['kind']}")
    for k in ("step", "epoch", "world_size", "strategy"):
        if k in info:
            print(f"{k}: {info[k]}")
    if info.get("created_unix"):
        print("created:", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["created_unix"])))
    if "files" in info:
        print(f"files: {len(info['files'])}, {_size(info['bytes'])}")
        for name, f in sorted(info["files"].items()):
            print(f"  {name}  {_size(f['bytes'])}")
    tensors = info["tensors"]
    print(f"tensors: {len(tensors)}")
    shown = list(tensors.items()) if a.tensors == 0 else list(tensors.items())[: a.tensors]
    for name, t in shown:
        print(f"  {name}  {t['dtype']}  {list(t['shape'])}")
    if len(shown) < len(tensors):
        print(f"  ... {len(tensors) - len(shown)} more (--tensors 0 lists all)")
    if info["verified"] is None:
        print("verified: not checked" if info["kind"] == "directory" else "verified: no CRCs in this format")
        return 0
    if info["verified"]:
        print("verified: ok (manifest and every tensor's CRC32C)")
        return 0
    print(f"verified: FAILED: {info['error']}")
    return 1
