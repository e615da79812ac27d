"""Training throughput: cached features vs encoding on the fly, and Ray Train worker layouts.

Part 1 (plain PyTorch, one process): the same model, batch and step, fed either from the feature
cache (posterior mean/std + tokens, as ``xmdpt.training``) or the authors' way, encoding every
step: VAE encode of target and source images and four token-encoder passes (pose encoder on both
skeletons, image encoder on both images; two of the four are unused, as in the authors' loop).
Encoders are the embedded default's (fitted-VAE architecture, random-feature DINOv2 stand-ins):
their cost, not their weights, matters here.

Part 2 (Ray Train V2): ``xmdpt.training.trainer.train`` on a synthetic feature cache in the
embedded default's shapes, one layout after the other at the same 32 rows per optimizer step:
2 one-thread fp32 DDP workers of 16 rows (the layout before), 1 two-thread worker of 32 rows in fp32,
and the same in bf16 autocast (the embedded default). samples/s is the steady-state throughput
reported by the workers (the first logging window, with start-up, is left out).

Run: ``.venv/bin/python benchmarks/bench_training.py [--steps 20] [--ray-steps 100] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from xmdpt.core.config import XMDPTConfig, load_config  # noqa: E402


def _timed_steps(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cache_vs_online(cfg: XMDPTConfig, batch: int, steps: int) -> dict[str, float]:
    from xmdpt.diffusion import GaussianDiffusion
    from xmdpt.encoders.dino import TokenEncoder
    from xmdpt.encoders.vae import LatentCodec, build_fitted_vae
    from xmdpt.model import XMDPT
    from xmdpt.training.ema import EMA
    from xmdpt.training.step import train_step

    torch.manual_seed(0)
    model = XMDPT(cfg.model)
    ema = EMA(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    codec = LatentCodec(build_fitted_vae(cfg.autoencoder, cfg.data.image_size), 1.0, source="fitted")
    image_enc = TokenEncoder.from_config(cfg.encoders, "image")
    pose_enc = TokenEncoder.from_config(cfg.encoders, "pose")
    C, H = cfg.model.in_channels, cfg.model.input_size
    S, size = cfg.data.image_size, cfg.encoders.token_input_size
    g = torch.Generator().manual_seed(0)
    cached = {"x0_mean": torch.randn(batch, C, H, H, generator=g), "x0_std": 0.1 * torch.rand(batch, C, H, H, generator=g),
              "ref_mean": torch.randn(batch, C, H, H, generator=g), "ref_std": 0.1 * torch.rand(batch, C, H, H, generator=g),
              "pose_tokens": torch.randn(batch, cfg.model.pose_num_tokens, cfg.model.pose_token_dim, generator=g),
              "ref_tokens": torch.randn(batch, cfg.model.ref_num_tokens, cfg.model.ref_token_dim, generator=g)}
    images = torch.rand(2, batch, 3, S, S, generator=g) * 2 - 1  # target, source in [-1, 1]
    skeletons = torch.rand(2, batch, 3, size, size, generator=g)
    kw = dict(diffusion=diffusion, latent_scale=1.0, cond_drop_prob=0.1, mask_ratio=cfg.model.mask_ratio)

    def step_cached():
        train_step(model, ema, opt, cached, **kw)

    def step_online():
        t_mean, t_std = codec.encode(images[0])  # (N, C, H, W)
        s_mean, s_std = codec.encode(images[1])
        img_in = torch.nn.functional.interpolate(images.flatten(0, 1), size=size, mode="bicubic")  # (2N, 3, s, s)
        pose_tokens = pose_enc(skeletons[0])
        pose_enc(skeletons[1])  # unused, as in the authors' loop
        ref_tokens = image_enc(img_in[batch:])
        image_enc(img_in[:batch])  # unused, as in the authors' loop
        train_step(model, ema, opt, {"x0_mean": t_mean, "x0_std": t_std, "ref_mean": s_mean, "ref_std": s_std,
                                     "pose_tokens": pose_tokens, "ref_tokens": ref_tokens}, **kw)

    t_cache = _timed_steps(step_cached, steps)
    t_online = _timed_steps(step_online, steps)
    return {"cache_samples_per_s": batch / t_cache, "online_samples_per_s": batch / t_online,
            "cache_step_s": t_cache, "online_step_s": t_online}


# (label, train.* overrides): the same 32 rows per optimizer step in each layout
LAYOUTS = (
    ("2 workers x 1 thread, fp32, 16 rows each", dict(num_workers=2, cpus_per_worker=0.5, threads_per_worker=1,
                                                       batch_size_per_worker=16, precision="fp32")),
    ("1 worker x 2 threads, fp32, 32 rows", dict(num_workers=1, cpus_per_worker=1.0, threads_per_worker=2,
                                                  batch_size_per_worker=32, precision="fp32")),
    ("1 worker x 2 threads, bf16, 32 rows", dict(num_workers=1, cpus_per_worker=1.0, threads_per_worker=2,
                                                  batch_size_per_worker=32, precision="bf16")),
)


def bench_layouts(cfg: XMDPTConfig, steps: int) -> dict[str, tuple[float, int]]:
    """label -> (median samples/s, rows per optimizer step) of each of :data:`LAYOUTS`."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(tests / "training"), str(tests)]  # the fixture's conftest imports tests/tiny_config.py
    from conftest import _write_fixture_cache  # the test fixture writer: real schemas, random tensors

    from xmdpt.training.trainer import train

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        C, H = cfg.model.in_channels, cfg.model.input_size
        _write_fixture_cache(root, persons=9, views=5, latent=(C, H, H),
                             tokens=(cfg.model.pose_num_tokens, cfg.model.pose_token_dim))
        for i, (label, layout) in enumerate(LAYOUTS):
            run_cfg = cfg.replace(
                paths={"storage_root": str(root / "store"), "artifacts_dir": str(root / "artifacts"),
                       "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
                train={**layout, "max_steps": steps, "log_every": 10, "sample_every": 0,
                       "checkpoint_every": steps, "seed": i})
            summary = train(run_cfg)
            windows = [h["samples_per_s"] for h in summary["history"][1:]]
            out[label] = (statistics.median(windows), layout["num_workers"] * layout["batch_size_per_worker"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (part 1)")
    ap.add_argument("--ray-steps", type=int, default=100, help="training steps per layout (part 2)")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    # the embedded default as params.yaml sets it (xmdpt-tiny/4 on 32x32x4 latents, 64 tokens, 65 condition tokens)
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    batch = cfg.train.batch_size_per_worker
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; model {cfg.model.preset}, batch {batch}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    r = bench_cache_vs_online(cfg, batch, args.steps)
    print(f"one process, 1 thread, batch {batch}: cache {r['cache_samples_per_s']:.1f} samples/s "
          f"({r['cache_step_s'] * 1000:.0f} ms/step); on the fly {r['online_samples_per_s']:.1f} samples/s "
          f"({r['online_step_s'] * 1000:.0f} ms/step); speed-up x{r['cache_samples_per_s'] / r['online_samples_per_s']:.2f}")
    if not args.skip_ray:
        w = bench_layouts(cfg, args.ray_steps)
        base = next(iter(w.values()))[0]
        for label, (sps, rows) in w.items():
            print(f"Ray Train, cache, {label}: {sps:.1f} samples/s (x{sps / base:.2f}), {rows / sps * 1000:.0f} ms/step")


if __name__ == "__main__":
    main()
