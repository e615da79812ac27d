"""X-MDPT-S/2 speed on CPU, fp32: training step and sampling, fast path vs the authors' slow path.

Paper setting: 256 px images -> 32x32x4 latents (256 tokens), pose tokens 257x768, image tokens
257x1536, batch 2. "Slow" carries the source-latent tokens through every block of every pass (the
authors' loop, ``tests/model/authors_loop.py``); "fast" only where MIPNet reads them. Both measured here, side by
side (interleaved) after a warm-up; the median of ``--reps`` runs is printed.

    python benchmarks/bench_model.py [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from xmdpt.core.config import DiffusionConfig, ModelConfig
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.losses import training_losses
from xmdpt.model import XMDPT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))  # the reference loop
from authors_loop import authors_forward, authors_forward_with_cfg  # noqa: E402


def _median_seconds_side_by_side(fast, slow, reps: int) -> tuple[float, float]:
    """Warm both up, then alternate fast/slow (order flipped every rep) so both see the same load."""
    fast(), slow()
    times: dict = {fast: [], slow: []}
    for rep in range(reps):
        for fn in ((fast, slow) if rep % 2 == 0 else (slow, fast)):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[fast]), statistics.median(times[slow])


def s2_model_and_inputs(batch: int) -> tuple[ModelConfig, XMDPT, GaussianDiffusion, dict[str, torch.Tensor]]:
    """X-MDPT-S/2 (seed 0) with non-zero adaLN gates, so that every block does its full work, its
    diffusion, and random conditions of ``batch`` images at the paper's shapes."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("xmdpt-s/2")
    model = XMDPT(cfg)
    with torch.no_grad():
        for block in [*model.tdnet.blocks, model.mipnet.self_block, model.mipnet.cross_block]:
            block.modulation[-1].weight.normal_(std=0.02)
    H = cfg.input_size
    cond = {"pose_tokens": torch.randn(batch, cfg.pose_num_tokens, cfg.pose_token_dim),
            "ref_tokens": torch.randn(batch, cfg.ref_num_tokens, cfg.ref_token_dim),
            "ref_latent": torch.randn(batch, cfg.in_channels, H, H)}
    return cfg, model, GaussianDiffusion.from_config(DiffusionConfig()), cond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per image")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg, model, diffusion, cond = s2_model_and_inputs(args.batch)
    N, H = args.batch, cfg.input_size
    x_0 = torch.randn(N, cfg.in_channels, H, H)
    t = torch.full((N,), 500, dtype=torch.long)

    def train_step(authors: bool):
        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            fwd = (lambda *a, **kw: authors_forward(model, *a, **kw)) if authors else model  # noqa: E731
            out = training_losses(fwd, diffusion, x_0, cond, cond_drop_prob=0.1, mask_ratio=cfg.mask_ratio,
                                  generator=torch.Generator().manual_seed(0))
            out["loss"].backward()
        return run

    def cfg_step(authors: bool):
        def run():
            model.eval()
            cfg = (lambda *a: authors_forward_with_cfg(model, *a)) if authors else model.forward_with_cfg
            cfg(x_0, t, cond["pose_tokens"], cond["ref_tokens"], cond["ref_latent"], 2.0, 0.01)
        return run

    print(f"X-MDPT-S/2, CPU fp32, batch {N}, {H}x{H} latents, pose {cfg.pose_num_tokens}x{cfg.pose_token_dim}, "
          f"image {cfg.ref_num_tokens}x{cfg.ref_token_dim} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; median of {args.reps}")
    rows = {}
    for name, make in (("training step (unmasked + masked pass, fwd+bwd)", train_step),
                       ("sampling: one DDIM step, CFG batched (2N forward)", cfg_step)):
        fast, slow = _median_seconds_side_by_side(make(False), make(True), args.reps)
        rows[name] = (fast, slow)
        print(f"{name}: fast {fast:.3f} s, slow (authors' loop) {slow:.3f} s, fast/slow {fast / slow:.2f}")
    fast, slow = rows["sampling: one DDIM step, CFG batched (2N forward)"]
    print(f"sampling per image ({args.steps} DDIM steps, CFG): fast {fast * args.steps / N:.1f} s, "
          f"slow {slow * args.steps / N:.1f} s")
    fast, slow = rows["training step (unmasked + masked pass, fwd+bwd)"]
    print(f"training step per sample: fast {fast / N:.2f} s, slow {slow / N:.2f} s")


if __name__ == "__main__":
    main()
