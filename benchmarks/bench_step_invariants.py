"""Sampling with the step-invariant attention biases computed once per call vs at every step.

``sample`` passes ``model.rel_pos_biases()`` (each block's relative-position bias on the full grid;
it depends on neither the step nor the batch) to every step. The "per step" variant is the same
model behind a wrapper without ``rel_pos_biases``, so each attention gathers its bias at every step,
as before. Both run in one process, alternating (the order flips every round), on the same inputs;
printed: the median seconds per ``generate_arrays`` call for each batch size and whether the images
are the same bit for bit.

    python benchmarks/bench_step_invariants.py [--model models:/xmdpt@champion] [--threads 2] [--reps 6]
    python benchmarks/bench_step_invariants.py --smoke   # a tiny random pipeline folder: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmdpt.sampling.inputs import EXAMPLE_POSE, prepare_source
from xmdpt.sampling.pipeline import XMDPTPipeline


class PerStep(torch.nn.Module):
    """``model`` without ``rel_pos_biases``: the sampler cannot hoist the biases out of the loop."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def summarize_conditions(self, *args):
        return self.m.summarize_conditions(*args)

    def forward(self, *args, **kw):
        return self.m(*args, **kw)

    def forward_with_cfg(self, *args, **kw):
        return self.m.forward_with_cfg(*args, **kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/xmdpt@champion")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    model = args.model
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny folder builder
        from tiny_pipeline_folder import build_tiny_pipeline_folder

        model = str(build_tiny_pipeline_folder(Path(tempfile.mkdtemp(prefix="bench-static-"))))
        args.reps, args.batches, args.steps = 2, [1, 2], 2
    torch.set_num_threads(args.threads)
    pipe = XMDPTPipeline.from_pretrained(model, device="cpu")
    pose = pipe.load_pose(EXAMPLE_POSE)
    rng = np.random.default_rng(0)
    n_max = max(args.batches)
    sources = np.stack([prepare_source(rng.integers(0, 255, (256, 176, 3), dtype=np.uint8), pipe.image_size)
                        for _ in range(n_max)])
    variants = {"per step": PerStep(pipe.model), "once per call": pipe.model}
    times: dict[tuple[str, int], list[float]] = {}
    images: dict[tuple[str, int], np.ndarray] = {}
    for rep in range(args.reps + 1):  # round 0 warms up
        order = list(variants.items())
        for name, m in (order if rep % 2 == 0 else order[::-1]):
            pipe.model = m
            for n in args.batches:
                t = time.perf_counter()
                out = pipe.generate_arrays(sources[:n], [pose] * n, seeds=list(range(n)), num_steps=args.steps)
                if rep:
                    times.setdefault((name, n), []).append(time.perf_counter() - t)
                images.setdefault((name, n), out)
    print(f"{model}: {args.threads} torch threads, median of {args.reps} alternating rounds, "
          f"seconds per generate_arrays call")
    print("| batch | biases per step | biases once per call | once / per step |\n|---|---|---|---|")
    for n in args.batches:
        a, b = statistics.median(times["per step", n]), statistics.median(times["once per call", n])
        print(f"| {n} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    same = all(np.array_equal(images["per step", n], images["once per call", n]) for n in args.batches)
    print(f"same images bit for bit: {same}")
    if not same:
        raise SystemExit("the images differ")


if __name__ == "__main__":
    main()
