"""`xmdpt serve` under load: concurrent clients against the HTTP service, --max-batch 1 vs 8 side by side.

For each max-batch setting the service is started (one replica on 127.0.0.1), warmed up, timed alone
(one client, sequential requests: the lone-request latency), then driven by 1, 4 and 16 concurrent
clients, each sending ``--requests`` requests with distinct seeds. Printed per setting and client
count: p50 / p95 / p99 latency, images/s, the batch sizes the replica sampled, errors; then the
targets: images/s at max-batch 8 with 16 clients >= 2x max-batch 1, p95 at 4 clients within 2x
of the lone latency (max-batch 8), zero errors.

    python benchmarks/bench_serve.py [--model models:/xmdpt@champion] [--clients 1 4 16] [--requests 4]
    python benchmarks/bench_serve.py --smoke      # a tiny random pipeline folder, 2 steps: checks the script runs
"""

import argparse
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from xmdpt.sampling.inputs import EXAMPLE_POSE

POSE = EXAMPLE_POSE


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 176, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


TIMINGS: list[dict[str, float]] = []


def _request(url: str, src: bytes, seed: int, steps) -> tuple[float, int, int]:
    data = {"pose": json.dumps(POSE), "seed": str(seed)}
    if steps:
        data["steps"] = str(steps)
    t = time.perf_counter()
    try:
        r = requests.post(f"{url}/v1/generate", files={"source": ("s.png", src, "image/png")}, data=data, timeout=600)
        if "X-Timing" in r.headers:
            TIMINGS.append({k: float(v) for k, v in (p.split("=") for p in r.headers["X-Timing"].split(";"))})
        return time.perf_counter() - t, r.status_code, int(r.headers.get("X-Batch-Size", 0))
    except requests.RequestException:
        return time.perf_counter() - t, 0, 0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


def run_setting(model: str, max_batch: int, clients: list[int], n_req: int, steps, cpus: float, wait_ms: float,
                tracking_uri) -> dict:
    from ray import serve

    from xmdpt.ops.serving import ServeOptions, run_server

    opts = ServeOptions(model=model, max_batch=max_batch, batch_wait_ms=wait_ms, num_cpus_per_replica=cpus,
                        tracking_uri=tracking_uri)
    url = run_server(opts, host="127.0.0.1", port=_port(), blocking=False, app_name=f"bench-{max_batch}")
    src = _source()
    for _ in range(60):
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(1)
    _request(url, src, 0, steps)  # warm-up
    lone = [_request(url, src, 1000 + i, steps)[0] for i in range(8)]  # the median of 8: one slow request moves it little
    out = {"max_batch": max_batch, "lone_s": statistics.median(lone), "clients": {}}
    for c in clients:
        TIMINGS.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            res = list(pool.map(lambda k: _request(url, src, k, steps), range(c * n_req)))
        wall = time.perf_counter() - t0
        lat = [r[0] for r in res if r[1] == 200]
        sizes = [r[2] for r in res if r[1] == 200]
        row = {"requests": len(res), "errors": sum(1 for r in res if r[1] != 200), "images_per_s": len(lat) / wall,
               "p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95), "p99_s": _pct(lat, 99),
               "batch_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes))},
               "replica_median_s": {k: statistics.median(t[k] for t in TIMINGS) for k in (TIMINGS[0] if TIMINGS else {})}}
        out["clients"][str(c)] = row
        print(f"max-batch {max_batch:2d} | {c:2d} clients | p50 {row['p50_s']:6.2f} s  p95 {row['p95_s']:6.2f} s  "
              f"p99 {row['p99_s']:6.2f} s | {row['images_per_s']:5.2f} images/s | batch sizes {row['batch_sizes']} | "
              f"errors {row['errors']} | in the replica (median s): {row['replica_median_s']}", flush=True)
    serve.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/xmdpt@champion")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--max-batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--cpus", type=float, default=2.0, help="logical CPUs (and torch threads) of the replica")
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from xmdpt.ops.ray_utils import init_ray

    init_ray(num_cpus=8)
    model = args.model
    if args.smoke:
        tests = Path(__file__).resolve().parents[1] / "tests"
        sys.path[:0] = [str(tests / "sampling"), str(tests)]  # the folder builder imports tests/tiny_config.py
        from tiny_pipeline_folder import build_tiny_pipeline_folder

        model = str(build_tiny_pipeline_folder(Path(tempfile.mkdtemp(prefix="bench-serve-"))))
        args.clients, args.requests, args.steps, args.cpus = [1, 4], 2, 2, 0.5
    print(f"model {model}, {os.cpu_count()} cores, replica CPUs {args.cpus}, clients {args.clients}, "
          f"{args.requests} requests each, steps {args.steps or 'model default'}")
    results = [run_setting(model, mb, args.clients, args.requests, args.steps, args.cpus, args.batch_wait_ms,
                           args.tracking_uri) for mb in args.max_batches]
    by = {r["max_batch"]: r for r in results}
    print("\n| max-batch | clients | p50 (s) | p95 (s) | p99 (s) | images/s | batch sizes | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for c, row in r["clients"].items():
            print(f"| {r['max_batch']} | {c} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | {row['p99_s']:.2f} | "
                  f"{row['images_per_s']:.2f} | {row['batch_sizes']} | {row['errors']} |")
    print("lone-request latency: " + ", ".join(f"max-batch {r['max_batch']}: {r['lone_s']:.2f} s" for r in results))
    if 1 in by and 8 in by and "16" in by[8]["clients"] and "4" in by[8]["clients"]:
        ratio = by[8]["clients"]["16"]["images_per_s"] / by[1]["clients"]["16"]["images_per_s"]
        p95 = by[8]["clients"]["4"]["p95_s"] / by[8]["lone_s"]
        errors = sum(row["errors"] for r in results for row in r["clients"].values())
        print(f"target images/s (max-batch 8 / 1, 16 clients) >= 2: {ratio:.2f} -> {'PASS' if ratio >= 2 else 'FAIL'}")
        print(f"target p95 at 4 clients / lone latency <= 2: {p95:.2f} -> {'PASS' if p95 <= 2 else 'FAIL'}")
        print(f"target zero errors: {errors} -> {'PASS' if errors == 0 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
