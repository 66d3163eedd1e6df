"""Loader benchmark: dutycycle's shard pipeline vs boto3 + a thread pool, webdataset, PyTorch's
DataLoader (when a torch interpreter is given), Pillow for JPEG preprocessing; a simulated
training loop's data wait; listing a large prefix page by page.

One run, the same shards served on loopback by nginx (a fast plain origin: Debian's, started
here) and by moto's S3 server. Every loader runs in its own child process, so its peak RSS is its
own. Ratios are against baselines measured in the same run.

    python benchmarks/loader.py [--shards 48] [--per-shard 64] [--sample-kb 96] [--list-keys 100000]
        [--torch-python /work/venv-torch/bin/python] [--json out.json]
"""

import argparse
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "bench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- servers --------------------------------------------------------------------------------------

def start_nginx(root):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""
            worker_processes 1;
            daemon off;
            pid {root}/nginx.pid;
            error_log {root}/nginx-error.log warn;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 100000;
                client_body_temp_path {root}/tmp-body;
                proxy_temp_path {root}/tmp-proxy;
                fastcgi_temp_path {root}/tmp-fcgi;
                uwsgi_temp_path {root}/tmp-uwsgi;
                scgi_temp_path {root}/tmp-scgi;
                server {{
                    listen 127.0.0.1:{port};
                    root {root}/www;
                }}
            }}
        """))
    proc = subprocess.Popen([nginx, "-c", conf, "-p", root], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")


def start_moto():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto server did not start")


def boto3_client(endpoint, unsigned=False):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = Config(max_pool_connections=32, s3={"addressing_style": "path"},
                 signature_version=UNSIGNED if unsigned else None, retries={"mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench-secret", config=cfg)


# ---- data -----------------------------------------------------------------------------------------

def make_shards(www, nshards, per_shard, sample_kb):
    from dutycycle.data import ShardWriter

    rng = np.random.default_rng(0)
    blob = rng.integers(0, 255, sample_kb * 1024 + 4096, dtype=np.uint8).tobytes()
    os.makedirs(os.path.join(www, BUCKET), exist_ok=True)
    with ShardWriter(os.path.join(www, BUCKET, "train-%06d.tar"), maxcount=per_shard) as w:
        for i in range(nshards * per_shard):
            off = (i * 37) % 4096
            w.write({"__key__": f"{i:08d}", "bin": blob[off:off + sample_kb * 1024], "cls": i % 1000})
    return [os.path.join(www, BUCKET, f"train-{i:06d}.tar") for i in range(nshards)]


def make_jpeg_shard(www, n):
    from PIL import Image

    from dutycycle.data import ShardWriter

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (375 // 8 + 1, 500 // 8 + 1, 3), dtype=np.uint8)
    jpgs = []
    with ShardWriter(os.path.join(www, BUCKET, "img-%06d.tar"), maxcount=10**9) as w:
        for i in range(n):
            arr = np.kron(base, np.ones((8, 8, 1), np.uint8))[:375, :500]
            arr = np.roll(arr, i * 5, axis=1) ^ np.uint8(i % 255)
            b = io.BytesIO()
            Image.fromarray(arr).save(b, format="JPEG", quality=90)
            jpgs.append(b.getvalue())
            w.write({"__key__": f"{i:06d}", "jpg": b.getvalue()})
    return os.path.join(www, BUCKET, "img-000000.tar"), jpgs


# ---- loaders (each in a child process) -----------------------------------------------------------

def child_ours(spec):
    import dutycycle as dc
    from dutycycle import s3 as dcs3

    client = None
    if spec["endpoint"]:
        client = dcs3.Client(endpoint=spec["endpoint"], region="us-east-1", path_style=True,
                             anonymous=spec.get("anonymous", False), access_key=None if spec.get("anonymous") else
                             "bench", secret_key=None if spec.get("anonymous") else "bench-secret")
    ds = dc.data.ShardedDataset(spec["urls"], batch_size=64, s3=client, prefetch_bytes=spec["budget"],
                                chunk_bytes=spec.get("chunk", 8 << 20), fetch_threads=spec.get("fetch", 16),
                                num_threads=2, index=spec.get("index"))
    len(ds)
    r0 = rss_mb()
    t0 = time.perf_counter()
    n = nbytes = 0
    for b in ds:
        n += len(b["__key__"])
        nbytes += sum(len(x) for x in b["bin"])
    dt = time.perf_counter() - t0
    return {"samples": n, "bytes": nbytes, "seconds": dt, "rss_start_mb": r0, "rss_peak_mb": rss_mb()}


def child_boto3(spec):
    c = boto3_client(spec["endpoint"], unsigned=spec.get("anonymous", False))
    keys = spec["keys"]
    r0 = rss_mb()
    t0 = time.perf_counter()
    n = nbytes = 0

    def fetch(k):
        return c.get_object(Bucket=BUCKET, Key=k)["Body"].read()

    with ThreadPoolExecutor(16) as ex:
        for data in ex.map(fetch, keys):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as t:
                for m in t:
                    f = t.extractfile(m)
                    if f is None:
                        continue
                    b = f.read()
                    if m.name.endswith(".bin"):
                        n += 1
                        nbytes += len(b)
    dt = time.perf_counter() - t0
    return {"samples": n, "bytes": nbytes, "seconds": dt, "rss_start_mb": r0, "rss_peak_mb": rss_mb()}


def child_webdataset(spec):
    import webdataset as wds

    r0 = rss_mb()
    t0 = time.perf_counter()
    n = nbytes = 0
    for s in wds.WebDataset(spec["files"], shardshuffle=False, empty_check=False):
        n += 1
        nbytes += len(s["bin"])
    dt = time.perf_counter() - t0
    return {"samples": n, "bytes": nbytes, "seconds": dt, "rss_start_mb": r0, "rss_peak_mb": rss_mb()}


TORCH_CHILD = r"""
import json, sys, tarfile, time, resource
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
files = json.loads(sys.argv[1])
class Tars(IterableDataset):
    def __iter__(self):
        w = get_worker_info()
        mine = files[w.id::w.num_workers] if w else files
        for fn in mine:
            with tarfile.open(fn, mode="r|") as t:
                for m in t:
                    f = t.extractfile(m)
                    if f is not None and m.name.endswith(".bin"):
                        yield torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
dl = DataLoader(Tars(), batch_size=64, num_workers=2, collate_fn=lambda b: b, prefetch_factor=4)
t0 = time.perf_counter(); n = nb = 0
for b in dl:
    n += len(b); nb += sum(x.numel() for x in b)
dt = time.perf_counter() - t0
print(json.dumps({"samples": n, "bytes": nb, "seconds": dt,
                  "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child_jpeg_ours(spec):
    import dutycycle as dc

    d = dc.data.jpeg(resize=256, crop=224, dtype="float32", mean=dc.data.IMAGENET_MEAN, std=dc.data.IMAGENET_STD)
    ds = dc.data.ShardedDataset(spec["file"], decode={"jpg": d}, batch_size=32, num_threads=2)
    t0 = time.perf_counter()
    n = 0
    for b in ds:
        n += b["jpg"].shape[0]
    return {"samples": n, "seconds": time.perf_counter() - t0}


def _pil_one(b):
    from PIL import Image

    im = Image.open(io.BytesIO(b)).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    a = np.asarray(im, dtype=np.float32) / 255.0
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return a.transpose(2, 0, 1).copy()


def child_jpeg_pillow(spec):
    with open(spec["file"], "rb") as f:
        data = f.read()
    jpgs = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t:
            jpgs.append(t.extractfile(m).read())
    t0 = time.perf_counter()
    n = 0
    with ProcessPoolExecutor(2) as ex:
        for _ in ex.map(_pil_one, jpgs, chunksize=8):
            n += 1
    return {"samples": n, "seconds": time.perf_counter() - t0}


def child_train_loop(spec):
    import dutycycle as dc
    from dutycycle import s3 as dcs3

    client = dcs3.Client(endpoint=spec["endpoint"], region="us-east-1", path_style=True, anonymous=True)
    ds = dc.data.ShardedDataset(spec["urls"], batch_size=64, s3=client, prefetch_bytes=spec["budget"],
                                fetch_threads=8, num_threads=2, shuffle=True, shuffle_buffer=256)
    len(ds)
    compute = spec["compute_ms"] / 1000
    wait = 0.0
    first = None
    steps = 0
    t_start = time.perf_counter()
    it = iter(ds)
    while True:
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        if first is None:
            first = time.perf_counter() - t0  # start-up: the first shard's fetch, once per run
        else:
            wait += time.perf_counter() - t0
        time.sleep(compute)  # the simulated device step (releases the GIL as a GPU step does)
        steps += 1
    total = time.perf_counter() - t_start
    return {"steps": steps, "data_wait_s": wait, "first_batch_s": first, "total_s": total - first,
            "step_ms": spec["compute_ms"]}


def child_list(spec):
    from dutycycle import s3 as dcs3

    client = dcs3.Client(endpoint=spec["endpoint"], region="us-east-1", path_style=True, access_key="bench",
                         secret_key="bench-secret")
    t0 = time.perf_counter()
    it = iter(client.list(f"s3://{spec['bucket']}/"))
    next(it)
    first = time.perf_counter() - t0
    req_at_first = client.stats()["requests"]
    n = 1 + sum(1 for _ in it)
    return {"keys": n, "first_s": first, "total_s": time.perf_counter() - t0, "requests_at_first": req_at_first,
            "requests": client.stats()["requests"], "rss_peak_mb": rss_mb()}


CHILDREN = {"ours": child_ours, "boto3": child_boto3, "webdataset": child_webdataset, "jpeg_ours": child_jpeg_ours,
            "jpeg_pillow": child_jpeg_pillow, "train": child_train_loop, "list": child_list}


def run_child(kind, spec, timeout=900):
    r = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- main -----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=48)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--sample-kb", type=int, default=96)
    ap.add_argument("--budget-mb", type=int, default=128)
    ap.add_argument("--jpegs", type=int, default=400)
    ap.add_argument("--list-keys", type=int, default=100000)
    ap.add_argument("--compute-ms", type=float, default=50.0)
    ap.add_argument("--torch-python", default=os.environ.get("DUTYCYCLE_TORCH_PYTHON"))
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return 0

    root = tempfile.mkdtemp(prefix="dc-loader-bench-")
    os.chmod(root, 0o755)  # nginx's workers run as an unprivileged user
    www = os.path.join(root, "www")
    procs = []
    rows, extra = [], {}
    try:
        files = make_shards(www, args.shards, args.per_shard, args.sample_kb)
        jpeg_file, _ = make_jpeg_shard(www, args.jpegs)
        total_mb = sum(os.path.getsize(f) for f in files) / 2**20
        keys = [f"train-{i:06d}.tar" for i in range(args.shards)]
        pattern = f"s3://{BUCKET}/train-{{000000..{args.shards - 1:06d}}}.tar"
        nginx, ngx = start_nginx(root)
        procs.append(nginx)
        moto, mto = start_moto()
        procs.append(moto)
        b3 = boto3_client(mto)
        b3.create_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda k: b3.upload_file(os.path.join(www, BUCKET, k), BUCKET, k), keys +
                        ["train.index.json"]))
        budget = args.budget_mb << 20

        def row(name, r, base=None):
            mbps = r["bytes"] / 2**20 / r["seconds"]
            sps = r["samples"] / r["seconds"]
            rows.append({"case": name, "MB/s": mbps, "samples/s": sps, "peak_rss_mb": r.get("rss_peak_mb"),
                         "ratio": (mbps / base) if base else None})
            return mbps

        base_ngx = row("boto3 + 16 threads, nginx", run_child("boto3", {"endpoint": ngx, "keys": keys,
                                                                       "anonymous": True}))
        ours_ngx = run_child("ours", {"endpoint": ngx, "urls": pattern, "budget": budget, "anonymous": True})
        row("dutycycle ShardedDataset, nginx", ours_ngx, base_ngx)
        base_moto = row("boto3 + 16 threads, moto", run_child("boto3", {"endpoint": mto, "keys": keys}))
        ours_moto = run_child("ours", {"endpoint": mto, "urls": pattern, "budget": budget})
        row("dutycycle ShardedDataset, moto", ours_moto, base_moto)
        base_wds = row("webdataset, local files", run_child("webdataset", {"files": files}))
        row("dutycycle ShardedDataset, local files", run_child("ours", {"endpoint": None, "urls": files,
                                                                        "budget": budget, "fetch": 2}), base_wds)
        if args.torch_python and os.path.exists(args.torch_python):
            r = subprocess.run([args.torch_python, "-c", TORCH_CHILD, json.dumps(files)], capture_output=True,
                               text=True, timeout=900)
            if r.returncode == 0:
                res = json.loads(r.stdout.strip().splitlines()[-1])
                row("PyTorch DataLoader(num_workers=2) + tarfile, local", res, base_wds)
            else:
                extra["torch_error"] = r.stderr[-1000:]

        jo = run_child("jpeg_ours", {"file": jpeg_file})
        jp = run_child("jpeg_pillow", {"file": jpeg_file})
        extra["jpeg"] = {"ours_per_s": jo["samples"] / jo["seconds"],
                         "pillow_pool2_per_s": jp["samples"] / jp["seconds"]}

        tl = run_child("train", {"endpoint": ngx, "urls": pattern, "budget": budget, "compute_ms": args.compute_ms})
        extra["train_loop"] = tl

        if args.list_keys:
            bl = "listing"
            b3.create_bucket(Bucket=bl)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as ex:
                list(ex.map(lambda i: b3.put_object(Bucket=bl, Key=f"k/{i:07d}", Body=b""), range(args.list_keys)))
            extra["list_setup_s"] = time.perf_counter() - t0
            extra["list"] = run_child("list", {"endpoint": mto, "bucket": bl})
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)

    ncpu = os.cpu_count()
    print(f"dutycycle loader benchmark: {ncpu} CPUs, {args.shards} shards x {args.per_shard} samples x "
          f"{args.sample_kb} KiB ({total_mb:.0f} MiB), fetch budget {args.budget_mb} MiB, loopback")
    print(f"{'case':52s} {'MB/s':>9s} {'samples/s':>10s} {'peak RSS':>9s} {'ratio':>7s}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "   base"
        print(f"{r['case']:52s} {r['MB/s']:9.1f} {r['samples/s']:10.0f} {r['peak_rss_mb'] or 0:8.0f}M {ratio:>7s}")
    ratio_ngx = next(r["ratio"] for r in rows if r["case"] == "dutycycle ShardedDataset, nginx")
    print(f"target >= 3x boto3 against nginx: {ratio_ngx:.2f}x {'ok' if ratio_ngx >= 3 else 'MISSED'}")
    mem = ours_ngx["rss_peak_mb"] - ours_ngx["rss_start_mb"]
    bound = args.budget_mb + 64 * args.sample_kb / 1024 * (4 + 2) + 64
    print(f"peak memory of the nginx run above its start: {mem:.0f} MiB (budget {args.budget_mb} MiB + batches ahead "
          f"+ 64 MiB slack = {bound:.0f} MiB): {'ok' if mem <= bound else 'MISSED'}")
    j = extra["jpeg"]
    print(f"JPEG decode+resize 256+center crop 224+normalise (500x375): dutycycle {j['ours_per_s']:.0f}/s (2 threads) "
          f"vs Pillow {j['pillow_pool2_per_s']:.0f}/s (2 processes): {j['ours_per_s'] / j['pillow_pool2_per_s']:.2f}x")
    t = extra["train_loop"]
    frac = t["data_wait_s"] / t["total_s"]
    print(f"training loop, {t['step_ms']:.0f} ms simulated step, nginx: {t['steps']} steps, data wait after the "
          f"first batch {100 * frac:.2f}% of wall time (target < 1%: {'ok' if frac < 0.01 else 'MISSED'}); the first "
          f"batch took {1000 * t['first_batch_s']:.0f} ms")
    if "list" in extra:
        li = extra["list"]
        print(f"listing {li['keys']} keys (moto): first key after {li['first_s'] * 1000:.0f} ms with "
              f"{li['requests_at_first']} request(s) sent; all in {li['total_s']:.1f} s, {li['requests']} pages: "
              f"{'streams page by page' if li['requests_at_first'] == 1 else 'NOT streamed'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, **extra, "cpus": ncpu, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
