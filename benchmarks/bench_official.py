"""Seconds per image of the released X-MDPT-S/B/L, as ``xmdpt generate`` runs them (DDIM-50 + CFG 2.0).

Each preset runs at the release's real sizes with random-init weights (speed does not depend on the
values): the SD-VAE architecture (``stabilityai/sd-vae-ft-mse``: encoder for the source, decoder for
the output, 256 px), DINOv2 ViT-g/14 on the source and ViT-B/14 on the skeleton at 224 px with the
hub's per-forward position interpolation, and the denoiser through ``xmdpt.diffusion.sampling.sample``
(cond and null condition batched in one forward per step, guidance at every step, as imported
folders are configured). The DDIM loop is timed over ``--timed-steps`` steps after a warm-up step and
scaled to 50 (every step costs the same); the encoders and the decoder are timed once per batch.

The authors' figures (one A100, what they include is not stated) are printed beside ours as the
reference: 1.1 / 1.3 / 3.1 s per image for S / B / L.

    python benchmarks/bench_official.py [--presets s b l] [--batches 1 8] [--timed-steps 2] [--precision fp32]
    python benchmarks/bench_official.py --smoke      # tiny sizes, seconds: keeps the script working
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from xmdpt.core.config import DiffusionConfig, ModelConfig, SampleConfig
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.sampling import sample
from xmdpt.encoders.dino_backbone import build_backbone
from xmdpt.encoders.dino import prepare_image, prepare_pose
from xmdpt.model import XMDPT
from xmdpt.core.precision import autocast_context

AUTHORS_A100_S_PER_IMAGE = {"xmdpt-s/2": 1.1, "xmdpt-b/2": 1.3, "xmdpt-l/2": 3.1}
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
SMOKE_VAE = dict(SD_VAE, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bench_preset(preset: str, batches: list[int], timed_steps: int, precision: str, device: torch.device,
                 smoke: bool, encoders: dict, vae) -> list[dict]:
    overrides = dict(depth=3, hidden_size=64, num_heads=2, pose_token_dim=384, ref_token_dim=384) if smoke else {}
    cfg = ModelConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    model = XMDPT(cfg).to(device).eval()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    rows = []
    for b in batches:
        images = torch.rand(b, 3, 256, 256, device=device) * 2 - 1
        skeletons = torch.rand(b, 3, 256, 256, device=device)
        with torch.no_grad(), autocast_context(device, precision):
            t_enc, (ref_tokens, pose_tokens, ref_latent) = _timed(lambda: (
                encoders["image"].forward_features(prepare_image(images, 224)).float(),
                encoders["pose"].forward_features(prepare_pose(skeletons, 224)).float(),
                vae.encode(images).latent_dist.sample() * 0.18215), device)
        cond = {"pose_tokens": pose_tokens, "ref_tokens": ref_tokens, "ref_latent": ref_latent.float()}
        run = lambda n: sample(model, diffusion, cond, SampleConfig(num_steps=n, cfg_scale=2.0, cfg_power=0.01,  # noqa: E731
                                                                     precision=precision),
                               generator=torch.Generator(device=device).manual_seed(0))
        run(1)  # warm-up
        t_loop, latents = _timed(lambda: run(timed_steps), device)
        with torch.no_grad(), autocast_context(device, precision):
            t_dec, _ = _timed(lambda: vae.decode(latents / 0.18215).sample, device)
        per_step = t_loop / timed_steps
        total = t_enc + 50 * per_step + t_dec
        rows.append({"preset": preset, "batch": b, "precision": precision, "encode_s": t_enc,
                     "ddim_step_s": per_step, "ddim50_cfg_s": 50 * per_step, "decode_s": t_dec,
                     "s_per_image": total / b, "authors_a100_s_per_image": AUTHORS_A100_S_PER_IMAGE.get(preset)})
        print(f"{preset:10s} batch {b:2d} {precision}: encode {t_enc:6.2f} s, DDIM-50+CFG {50 * per_step:7.1f} s "
              f"({per_step:.2f} s/step over {timed_steps}), decode {t_dec:5.2f} s -> {total / b:6.1f} s/image "
              f"(authors, A100: {AUTHORS_A100_S_PER_IMAGE.get(preset)} s)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["s", "b", "l"], choices=["s", "b", "l"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--timed-steps", type=int, default=2, help="DDIM steps timed (scaled to 50)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (seconds)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**(SMOKE_VAE if args.smoke else SD_VAE)).to(device).eval()
    depth = 1 if args.smoke else None
    encoders = {
        "image": build_backbone("vit_small_patch14_dinov2.lvd142m" if args.smoke else "vit_giant_patch14_dinov2.lvd142m",
                                pretrained=False, img_size=224, seed=0, depth=depth, hub_pos_embed=True),
        "pose": build_backbone("vit_small_patch14_dinov2.lvd142m" if args.smoke else "vit_base_patch14_dinov2.lvd142m",
                               pretrained=False, img_size=224, seed=1, depth=depth, hub_pos_embed=True),
    }
    encoders = {k: v.to(device).eval().requires_grad_(False) for k, v in encoders.items()}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision {args.precision}{', SMOKE sizes' if args.smoke else ''}")
    rows = []
    for name in args.presets:
        rows += bench_preset(f"xmdpt-{name}/2", args.batches, args.timed_steps, args.precision, device, args.smoke,
                             encoders, vae)
    print("\n| preset | batch | encode (s) | DDIM-50 + CFG (s) | decode (s) | s / image | authors, A100 (s / image) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['batch']} | {r['encode_s']:.2f} | {r['ddim50_cfg_s']:.1f} | {r['decode_s']:.2f} "
              f"| {r['s_per_image']:.1f} | {r['authors_a100_s_per_image']} |")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "device_name": dev_name, "smoke": args.smoke,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
