"""`xmdpt serve` under load: concurrent clients against the HTTP service, --max-batch 1 vs 8 side by side.

Both settings are deployed side by side (one replica each, on one Serve proxy on 127.0.0.1) and
warmed up. Then, in ``--rounds`` rounds that alternate the order of the settings, each setting in
turn is driven by 1, 4 and 16 concurrent clients, each sending ``--requests`` requests with distinct
seeds; 4 sequential lone requests before the first load and after each give the lone-request
latency (their median), taken in the same minutes as the loads. Printed per
round, setting and client count: p95, images/s, errors, where the time went in the replica; then
over all rounds: p50 / p95 / p99 latency, images/s, the batch sizes the replica sampled, errors;
and the targets as the median of the per-round ratios: images/s at max-batch 8 with 16 clients
>= 2x max-batch 1, p95 at 4 clients within 2x of the lone latency (max-batch 8), zero errors.

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
    data.update(steps or {})  # extra form fields: steps, scheduler
    t = time.perf_counter()
    try:
        r = requests.post(f"{url}/v1/generate", files={"source": ("s.png", src, "image/png")}, data=data, timeout=600)
        if "X-Timing" in r.headers:
            parts = dict(p.split("=", 1) for p in r.headers["X-Timing"].split(";"))
            TIMINGS.append({k: float(v) for k, v in parts.items() if k not in ("scheduler", "steps")})
        return time.perf_counter() - t, r.status_code, int(r.headers.get("X-Batch-Size", 0))
    except requests.RequestException:
        return time.perf_counter() - t, 0, 0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


def start_setting(model: str, max_batch: int, port: int, cpus: float, wait_ms: float, tracking_uri) -> str:
    """One replica with this max-batch under ``/mb<max_batch>`` on the shared proxy, up and warmed up."""
    from xmdpt.serving.server import ServeOptions, run_server

    opts = ServeOptions(model=model, max_batch=max_batch, batch_wait_ms=wait_ms, num_cpus_per_replica=cpus,
                        tracking_uri=tracking_uri)
    url = run_server(opts, host="127.0.0.1", port=port, blocking=False, app_name=f"bench-{max_batch}",
                     route_prefix=f"/mb{max_batch}")
    for _ in range(60):
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(1)
    _request(url, _source(), 0, None)  # warm-up
    return url


def measure(url: str, clients: list[int], n_req: int, steps) -> dict:
    """Each client count in turn, with 4 sequential lone requests before the first and after each:
    the lone latency is the median of them all, so that it samples the same minutes as the loads."""
    src = _source()
    seeds = iter(range(1000, 2000))
    lone = [_request(url, src, next(seeds), steps)[0] for _ in range(4)]
    out = {"clients": {}}
    for c in clients:
        TIMINGS.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            res = list(pool.map(lambda k: _request(url, src, k, steps), range(c * n_req)))
        wall = time.perf_counter() - t0
        lat = [r[0] for r in res if r[1] == 200]
        sizes = [r[2] for r in res if r[1] == 200]
        out["clients"][str(c)] = {
            "requests": len(res), "errors": sum(1 for r in res if r[1] != 200), "images_per_s": len(lat) / wall,
            "latencies_s": lat, "p95_s": _pct(lat, 95), "batch_sizes": sizes,
            "replica_median_s": {k: statistics.median(t[k] for t in TIMINGS) for k in (TIMINGS[0] if TIMINGS else {})}}
        lone += [_request(url, src, next(seeds), steps)[0] for _ in range(4)]
    out["lone_s"] = statistics.median(lone)
    out["lone_all_s"] = lone
    return out


def summarize(rounds: dict[int, list[dict]], clients: list[int]) -> dict:
    """Per setting and client count over the rounds: latency percentiles of all requests, the median
    images/s, batch sizes, errors; the targets as the median of the per-round ratios."""
    table = []
    for mb, rs in rounds.items():
        for c in map(str, clients):
            lat = [x for r in rs for x in r["clients"][c]["latencies_s"]]
            sizes = [x for r in rs for x in r["clients"][c]["batch_sizes"]]
            table.append({"max_batch": mb, "clients": int(c),
                          "p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95), "p99_s": _pct(lat, 99),
                          "images_per_s": statistics.median(r["clients"][c]["images_per_s"] for r in rs),
                          "batch_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes))},
                          "errors": sum(r["clients"][c]["errors"] for r in rs),
                          "requests": sum(r["clients"][c]["requests"] for r in rs)})
    out = {"table": table, "lone_s": {mb: statistics.median(r["lone_s"] for r in rs) for mb, rs in rounds.items()}}
    if 1 in rounds and 8 in rounds and {"4", "16"} <= set(map(str, clients)):
        out["throughput_ratios"] = [r8["clients"]["16"]["images_per_s"] / r1["clients"]["16"]["images_per_s"]
                                    for r1, r8 in zip(rounds[1], rounds[8])]
        out["p95_ratios"] = [r8["clients"]["4"]["p95_s"] / r8["lone_s"] for r8 in rounds[8]]
        out["errors"] = sum(row["errors"] for row in table)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/xmdpt@champion")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--max-batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the settings, alternating their order")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scheduler", default=None, help="ddim | dpmsolver++ | unipc (default: the model's)")
    p.add_argument("--cpus", type=float, default=2.0, help="logical CPUs (and torch threads) of the replica")
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray import serve

    from xmdpt.core.ray_utils import init_ray

    init_ray(num_cpus=8)
    model = args.model
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny folder builder
        from tiny_pipeline_folder import build_tiny_pipeline_folder

        model = str(build_tiny_pipeline_folder(Path(tempfile.mkdtemp(prefix="bench-serve-"))))
        args.clients, args.requests, args.steps, args.cpus, args.rounds = [1, 4], 2, 2, 0.5, 2
    print(f"model {model}, {os.cpu_count()} cores, replica CPUs {args.cpus}, clients {args.clients}, "
          f"{args.requests} requests each, steps {args.steps or 'model default'}, scheduler "
          f"{args.scheduler or 'model default'}, {args.rounds} rounds")
    fields = {k: str(v) for k, v in {"steps": args.steps, "scheduler": args.scheduler}.items() if v}
    port = _port()
    urls = {mb: start_setting(model, mb, port, args.cpus, args.batch_wait_ms, args.tracking_uri)
            for mb in args.max_batches}
    # Both replicas stay up and idle between turns; the settings take turns, in alternating order, so
    # that a slow spell of a shared machine falls on both and the ratios compare like with like.
    rounds: dict[int, list[dict]] = {mb: [] for mb in args.max_batches}
    for r in range(args.rounds):
        for mb in (args.max_batches if r % 2 == 0 else args.max_batches[::-1]):
            res = measure(urls[mb], args.clients, args.requests, fields)
            rounds[mb].append(res)
            for c, row in res["clients"].items():
                print(f"round {r + 1} | max-batch {mb:2d} | {int(c):2d} clients | p95 {row['p95_s']:6.2f} s | "
                      f"{row['images_per_s']:5.2f} images/s | errors {row['errors']} | lone {res['lone_s']:.2f} s | "
                      f"in the replica (median s): {row['replica_median_s']}", flush=True)
    serve.shutdown()
    summary = summarize(rounds, args.clients)
    print(f"\nAll {args.rounds} rounds: latencies over every request, images/s the median of the rounds.")
    print("| max-batch | clients | p50 (s) | p95 (s) | p99 (s) | images/s | batch sizes | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summary["table"]:
        print(f"| {row['max_batch']} | {row['clients']} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | "
              f"{row['p99_s']:.2f} | {row['images_per_s']:.2f} | {row['batch_sizes']} | {row['errors']} |")
    print("lone-request latency (median of the rounds): "
          + ", ".join(f"max-batch {mb}: {v:.2f} s" for mb, v in summary["lone_s"].items()))
    if "throughput_ratios" in summary:
        tr, pr = summary["throughput_ratios"], summary["p95_ratios"]
        ratio, p95 = statistics.median(tr), statistics.median(pr)
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(f"target images/s (max-batch 8 / 1, 16 clients) >= 2: median {ratio:.2f} (rounds: {fmt(tr)}) -> "
              f"{'PASS' if ratio >= 2 else 'FAIL'}")
        print(f"target p95 at 4 clients / lone latency (max-batch 8) <= 2: median {p95:.2f} (rounds: {fmt(pr)}) -> "
              f"{'PASS' if p95 <= 2 else 'FAIL'}")
        print(f"target zero errors: {summary['errors']} -> {'PASS' if summary['errors'] == 0 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": {str(k): v for k, v in rounds.items()}, "summary": summary},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
