"""Seconds per image for each sampler setting on X-MDPT-S/2 (CPU fp32), against the authors' DDIM-50 loop.

The authors' loop: DDIM, 50 steps, classifier-free guidance at every step as one doubled batch, the
source-latent tokens carried through every block (``tests/model/authors_loop.py``). Ours: ``sample()``
(CANet's summary and the attention biases computed once per image, source tokens only where MIPNet
reads them) with each scheduler and step count, guidance at every step as well (the paper's setting;
the embedded default's guidance interval would make ours cheaper still). Paper shapes: 32x32x4
latents, pose tokens 257x768, image tokens 257x1536, one image. Encoders and the VAE decoder are the
same for every setting and are not timed. All settings run in one process, interleaved over
``--reps`` rounds (order reversed every round); the median is printed.

    python benchmarks/bench_schedulers.py [--reps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from xmdpt.core.config import SampleConfig
from xmdpt.diffusion.sampling import ddim_step, sample, timesteps_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))  # the reference loop
from authors_loop import authors_forward_with_cfg  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import s2_model_and_inputs  # noqa: E402  (the same model and inputs as bench_model.py)

SETTINGS = [("ddim", 50)] + [(s, n) for s in ("dpmsolver++", "unipc") for n in (10, 15, 20, 25)] + [("ddim", 20)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg, model, diffusion, cond = s2_model_and_inputs(1)
    model.eval()
    H = cfg.input_size
    x_T = torch.randn(1, cfg.in_channels, H, H, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def authors(steps: int = 50):
        x = x_T.clone()
        ts = timesteps_for(steps, "authors", diffusion.num_timesteps)
        for i, t in enumerate(ts):
            out = authors_forward_with_cfg(model, x, torch.full((1,), t), cond["pose_tokens"], cond["ref_tokens"],
                                           cond["ref_latent"], 2.0, 0.01)
            x = ddim_step(diffusion, x, out[:, :cfg.in_channels], t, ts[i + 1] if i + 1 < len(ts) else -1)
        return x

    def ours(scheduler: str, steps: int):
        sc = SampleConfig(scheduler=scheduler, num_steps=steps, cfg_scale=2.0, guidance_interval=None,
                          source_latent="mean", precision="fp32")
        return sample(model, diffusion, cond, sc, x_T=x_T)

    runs = {"authors' loop, ddim-50": authors, **{f"ours, {s}-{n}": (lambda s=s, n=n: ours(s, n)) for s, n in SETTINGS}}
    authors(2), ours("unipc", 2)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.reps):
        for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            print(f"  round {rep + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)

    print(f"X-MDPT-S/2, CPU fp32, one image, {H}x{H} latents, CFG 2.0 at every step; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; median of {args.reps}")
    base = statistics.median(times["authors' loop, ddim-50"])
    print("| setting | denoiser passes | s / image | speed-up vs the authors' DDIM-50 loop |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        steps = 50 if "authors" in name else int(name.rsplit("-", 1)[1])
        print(f"| {name} | {steps} x 2N | {med:.1f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
