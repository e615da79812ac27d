"""What the batch-invariance chunks cost: the autoencoder's encode + decode with convolutions in
chunks of ``CONV_MAX_BATCH`` (what the code does on CPU) against one call on the whole batch.

The embedded default's autoencoder shape (a [16, 32] fitted VAE at 64 px, random weights: the cost
does not depend on them). Both variants alternate in one process; the median of ``--reps`` is printed
per thread count and batch size.

    python benchmarks/bench_conv_chunks.py [--threads 1 2] [--batches 16 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import xmdpt.core.batch_invariance as bi
from xmdpt.core.config import AutoencoderConfig
from xmdpt.encoders.vae import LatentCodec, build_fitted_vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batches", nargs="+", type=int, default=[16, 32])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    codec = LatentCodec(build_fitted_vae(AutoencoderConfig(block_channels=[16, 32]), 64), 1.0, source="fitted")
    n_max = max(args.batches)
    images = torch.rand(n_max, 3, 64, 64) * 2 - 1
    latents = torch.randn(n_max, codec.latent_channels, 32, 32)
    chunk = bi.CONV_MAX_BATCH
    variants = {f"chunks of {chunk}": chunk, "whole batch": 1 << 30}
    print(f"encode + decode, median of {args.reps} (ms)")
    print("| threads | images | " + " | ".join(variants) + " |\n|---|---|" + "---|" * len(variants))
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[tuple[str, int], list[float]] = {}
            for rep in range(args.reps + 1):  # round 0 warms up
                for name, max_batch in variants.items():
                    bi.CONV_MAX_BATCH = max_batch
                    for n in args.batches:
                        t = time.perf_counter()
                        codec.encode(images[:n])
                        codec.decode(latents[:n])
                        if rep:
                            times.setdefault((name, n), []).append(time.perf_counter() - t)
            for n in args.batches:
                cells = " | ".join(f"{statistics.median(times[name, n]) * 1e3:.0f}" for name in variants)
                print(f"| {threads} | {n} | {cells} |")
    finally:
        bi.CONV_MAX_BATCH = chunk


if __name__ == "__main__":
    main()
