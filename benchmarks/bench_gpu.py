"""GPU figures in one run: training steps/s and model FLOP utilisation, the SDPA backend, sampling
seconds/image, DINOv2 ViT-g/14 feature throughput.

For X-MDPT-S/2, B/2 and L/2 at 256 px (32x32x4 latents, conditions in the feature-cache format:
posteriors, 257x768 pose tokens, 257x1536 image tokens), with the paper's training step (bf16
autocast, MIPNet pass at mask ratio 0.3, AdamW, EMA):

- training steps/s and samples/s, and model FLOP utilisation = FLOPs of one step
  (``torch.utils.flop_counter``, forward + backward) x steps/s / the card's dense bf16 peak;
- which ``scaled_dot_product_attention`` backend runs the model's attention (a float relative-position
  bias as ``attn_mask``): the first of flash / efficient / cuDNN / math that accepts it;
- DDIM-50 + CFG seconds per image at batch 1 and 8 (``bench_official.py``'s measurement) beside the
  authors' A100 1.1 / 1.3 / 3.1 s;
- DINOv2 ViT-g/14 images/s at 224 px (the `features` stage's image encoder, hub position interpolation).

    python benchmarks/bench_gpu.py --json gpu.json            # on a GPU: under 8 minutes
    python benchmarks/bench_gpu.py --smoke --json smoke.json  # tiny sizes on CPU, seconds (tested)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_official import AUTHORS_A100_S_PER_IMAGE, SD_VAE, SMOKE_VAE, bench_preset  # noqa: E402

from xmdpt.core.config import DiffusionConfig, ModelConfig  # noqa: E402
from xmdpt.diffusion import GaussianDiffusion  # noqa: E402
from xmdpt.encoders.dino_backbone import build_backbone  # noqa: E402
from xmdpt.model import XMDPT  # noqa: E402
from xmdpt.training.ema import EMA  # noqa: E402
from xmdpt.training.step import train_step  # noqa: E402

# dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
SMOKE = dict(depth=3, hidden_size=64, num_heads=2, pose_token_dim=384, ref_token_dim=384)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sdpa_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The first SDPA backend that runs the model's attention shape with a float bias mask."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 6, 256, 64, device=device, dtype=dtype)
    bias = torch.randn(2, 6, 256, 256, device=device, dtype=dtype)
    order = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
             ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]
    for name, backend in order:
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias)
            return name
        except RuntimeError:
            continue
    return "none"


def _batch(n: int, cfg: ModelConfig, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    lat = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return {"x0_mean": r(*lat), "x0_std": r(*lat).abs() * 0.1, "ref_mean": r(*lat), "ref_std": r(*lat).abs() * 0.1,
            "pose_tokens": r(n, cfg.pose_num_tokens, cfg.pose_token_dim),
            "ref_tokens": r(n, cfg.ref_num_tokens, cfg.ref_token_dim)}


def bench_training(preset: str, batch: int, steps: int, device: torch.device, smoke: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig.from_preset(preset, **(SMOKE if smoke else {}))
    torch.manual_seed(0)
    model = XMDPT(cfg).to(device).train()
    ema = EMA(model, decay=0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    amp = torch.bfloat16 if device.type == "cuda" else None
    g = torch.Generator().manual_seed(0)
    data = _batch(batch, cfg, device, g)
    kw = dict(diffusion=diffusion, latent_scale=0.18215, cond_drop_prob=0.1, mask_ratio=0.3, amp_dtype=amp,
              grad_clip_norm=None)
    train_step(model, ema, opt, data, **kw)  # warm-up
    with FlopCounterMode(display=False) as counter:
        train_step(model, ema, opt, data, **kw)
    flops = counter.get_total_flops()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, ema, opt, data, **kw)
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    peak = peak_tflops(device)
    mfu = flops / dt / (peak * 1e12) if peak else None
    row = {"preset": preset, "batch": batch, "precision": "bf16" if amp else "fp32", "steps_per_s": 1 / dt,
           "samples_per_s": batch / dt, "tflops_per_step": flops / 1e12, "mfu": mfu,
           "memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    print(f"train {preset} batch {batch} {row['precision']}: {row['steps_per_s']:.2f} steps/s, "
          f"{row['samples_per_s']:.1f} samples/s, {row['tflops_per_step']:.2f} TFLOP/step, "
          f"MFU {'%.1f %%' % (100 * mfu) if mfu is not None else 'n/a (no known peak for this device)'}", flush=True)
    del model, ema, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_dino(device: torch.device, batch: int, smoke: bool) -> dict:
    arch = "vit_small_patch14_dinov2.lvd142m" if smoke else "vit_giant_patch14_dinov2.lvd142m"
    model = build_backbone(arch, pretrained=False, img_size=224, seed=0, depth=1 if smoke else None,
                           hub_pos_embed=True).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, device=device) * 2 - 1
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        model.forward_features(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(3):
            model.forward_features(x)
        _sync(device)
    ips = 3 * batch / (time.perf_counter() - t)
    print(f"DINOv2 {arch} at 224 px, batch {batch}: {ips:.1f} images/s", flush=True)
    return {"model": arch, "batch": batch, "images_per_s": ips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.smoke:
        print("bench_gpu: no CUDA device here; the full run needs a GPU (use --smoke to check the script on CPU)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}{', SMOKE sizes' if args.smoke else ''}", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out: dict = {"device": name, "smoke": args.smoke, "peak_bf16_tflops": peak_tflops(device),
                 "sdpa_backend": sdpa_backend(device, dtype)}
    print(f"SDPA backend for the model's attention (float bias mask): {out['sdpa_backend']}", flush=True)
    batches = {"xmdpt-s/2": 32, "xmdpt-b/2": 32, "xmdpt-l/2": 16}
    steps = 1 if args.smoke else args.train_steps
    out["training"] = [bench_training(pr, 2 if args.smoke else b, steps, device, args.smoke) for pr, b in batches.items()]

    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**(SMOKE_VAE if args.smoke else SD_VAE)).to(device).eval()
    encoders = {
        "image": build_backbone("vit_small_patch14_dinov2.lvd142m" if args.smoke else "vit_giant_patch14_dinov2.lvd142m",
                                pretrained=False, img_size=224, seed=0, depth=1 if args.smoke else None,
                                hub_pos_embed=True).to(device).eval(),
        "pose": build_backbone("vit_small_patch14_dinov2.lvd142m" if args.smoke else "vit_base_patch14_dinov2.lvd142m",
                               pretrained=False, img_size=224, seed=1, depth=1 if args.smoke else None,
                               hub_pos_embed=True).to(device).eval(),
    }
    precision = "bf16" if device.type == "cuda" else "fp32"
    out["sampling"] = []
    for pr in batches:
        out["sampling"] += bench_preset(pr, [1, 2] if args.smoke else [1, 8], 1 if args.smoke else 5, precision,
                                        device, args.smoke, encoders, vae)
    del encoders, vae
    out["dino"] = bench_dino(device, 2 if args.smoke else 32, args.smoke)
    out["authors_a100_s_per_image"] = AUTHORS_A100_S_PER_IMAGE
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
