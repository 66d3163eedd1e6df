"""`dutycycle shard`: make WebDataset shards from a folder, and index existing shards.

    dutycycle shard write SRC_DIR OUT_PATTERN [--maxcount N] [--maxsize BYTES]
        Group SRC_DIR's files into samples by key (the relative path up to the first '.' of the
        file name: a/001.jpg and a/001.cls are sample "a/001" with fields "jpg" and "cls"), in
        sorted order, and write them as shards OUT_PATTERN ("out/train-%06d.tar" or
        "s3://bucket/train-%06d.tar") with a sample-count index.
    dutycycle shard index URLS... [-o INDEX]
        Count the samples of existing shards (brace patterns welcome) and write the index
        ShardedDataset reads (default: "<stem>.index.json" next to the first shard)."""

import argparse
import os
import sys


def _write(args):
    from .shard_writer import ShardWriter

    src = os.path.abspath(args.src)
    if not os.path.isdir(src):
        print(f"dutycycle shard write: {args.src!r} is not a directory", file=sys.stderr)
        return 2
    samples = {}
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), src).replace(os.sep, "/")
            d, _, base = rel.rpartition("/")
            if "." not in base or base.startswith("."):
                continue
            stem, _, field = base.partition(".")
            key = f"{d}/{stem}" if d else stem
            samples.setdefault(key, []).append((field.lower(), os.path.join(root, f)))
    if not samples:
        print(f"dutycycle shard write: no files with an extension under {args.src!r}", file=sys.stderr)
        return 2
    with ShardWriter(args.pattern, maxcount=args.maxcount, maxsize=args.maxsize) as w:
        for key in sorted(samples):
            s = {"__key__": key}
            for field, path in sorted(samples[key]):
                with open(path, "rb") as f:
                    s[field] = f.read()
            w.write(s)
    print(f"wrote {w.total} samples in {len(w.written)} shards; index {w.index_url}")
    return 0


def _index(args):
    from .. import _C
    from .shard_writer import write_index
    from .shards import ShardedDataset, default_index_url

    ds = ShardedDataset(args.urls, index=None, rank=0, world_size=1)
    # count every shard (ignore an existing index: this command is how one is rebuilt)
    client = ds._client()
    for s in ds._shards:
        if s.path:
            s.size = os.stat(s.path).st_size
        else:
            s.size = client.head(s.url)["size"]
    from concurrent.futures import ThreadPoolExecutor

    from .shards import _c_s3

    cs3 = _c_s3(client) if client is not None else None
    with ThreadPoolExecutor(max_workers=min(8, len(ds._shards))) as ex:
        counts = list(ex.map(lambda s: _C.shard_count(s.url, s.path, s.bucket, s.key, int(s.size), cs3),
                             ds._shards))
    out = args.output or default_index_url(ds.urls[0])
    base = out.rsplit("/", 1)[0] + "/" if "/" in out else ""

    def rel(u):
        return u[len(base):] if base and u.startswith(base) else (os.path.abspath(u) if "://" not in u else u)

    write_index(out, [(rel(s.url), n, s.size) for s, n in zip(ds._shards, counts)], client=client)
    print(f"indexed {len(counts)} shards, {sum(counts)} samples: {out}")
    return 0


def main(argv):
    ap = argparse.ArgumentParser(prog="dutycycle shard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="shards from a folder of files")
    w.add_argument("src")
    w.add_argument("pattern")
    w.add_argument("--maxcount", type=int, default=100000)
    w.add_argument("--maxsize", type=float, default=3e9)
    i = sub.add_parser("index", help="count existing shards' samples into an index")
    i.add_argument("urls", nargs="+")
    i.add_argument("-o", "--output")
    args = ap.parse_args(argv)
    try:
        return _write(args) if args.cmd == "write" else _index(args)
    except (OSError, ValueError) as e:
        print(f"dutycycle shard {args.cmd}: {e}", file=sys.stderr)
        return 1
