"""How long each stage of the DeepFashion profile takes (params/deepfashion.yaml, docs/deepfashion.md).

    python benchmarks/bench_deepfashion.py [--identities 200] [--gpu-tflops 100] [--gpus 4]

Two kinds of figures, printed as one markdown table:

- CPU stages (``pairs``, ``poses``, ``validate``): the real stage functions (``build_pairs``,
  ``extract_poses``, ``validate_dataset``) run on a synthetic DeepFashion-layout dataset
  (``xmdpt.synth``, ``--identities`` people x 5 views) on local disk, after a small warm-up run
  of the same chain (Ray workers, Great Expectations import). The rows/s measured here are
  extrapolated linearly to DeepFashion (110,536 pairs, 52,712 images).
- GPU stages (``autoencoder``, ``features``, ``train``, ``evaluate``): FLOPs counted per sample with
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, the denoiser at batch 8 (no memory, no weights,
  random-init architectures, nothing downloaded), converted to hours at a sustained ``--gpu-tflops``
  per GPU on ``--gpus`` GPUs. A projection, not a measurement: nothing runs on a GPU.

Attention is counted through SDPA's math backend: FlopCounterMode has no formula for the CPU flash
kernel, so CPU counts with the default backend leave the attention matmuls out. The meta-device
counts are checked against CPU counts (math backend) on small models first (``count check`` lines).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# DeepFashion In-shop, PIDM/X-MDPT splits (docs/deepfashion.md)
DF_TRAIN_PAIRS, DF_TEST_PAIRS = 101_966, 8_570
DF_PAIRS = DF_TRAIN_PAIRS + DF_TEST_PAIRS  # 110,536
DF_IMAGES = 52_712
DF_TRAIN_REAL = 48_674  # FID reference images (train.lst)

PRESETS = ("xmdpt-s/2", "xmdpt-b/2", "xmdpt-l/2")
# the sd-vae-ft-mse architecture in the fitted-autoencoder config fields (8x, mid-block attention)
SD_VAE = dict(vae="fitted", block_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              mid_attention=True)


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 x MACs) of ``fn()``, attention through SDPA's math backend so that it is counted."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def per_batch(count_at: Callable[[int], int], batch: int) -> int:
    """The model's FLOPs for ``batch`` samples: counted at ``batch``, or below ``VECTOR_MIN_ROWS`` counted
    there and scaled (smaller batches run their per-sample vector layers on padded rows, see
    :mod:`xmdpt.core.batch_invariance`: work the model itself does not need)."""
    from xmdpt.core.batch_invariance import VECTOR_MIN_ROWS

    if batch >= VECTOR_MIN_ROWS:
        return count_at(batch)
    return count_at(VECTOR_MIN_ROWS) * batch // VECTOR_MIN_ROWS


def build_xmdpt(preset: str, device: str):
    from xmdpt.core.config import ModelConfig
    from xmdpt.model import XMDPT

    cfg = ModelConfig.from_preset(preset)
    with torch.device(device):
        return XMDPT(cfg), cfg


def xmdpt_inputs(cfg, n: int, device: str):
    H = cfg.input_size
    x_0 = torch.randn(n, cfg.in_channels, H, H, device=device)
    cond = {"pose_tokens": torch.randn(n, cfg.pose_num_tokens, cfg.pose_token_dim, device=device),
            "ref_tokens": torch.randn(n, cfg.ref_num_tokens, cfg.ref_token_dim, device=device),
            "ref_latent": torch.randn(n, cfg.in_channels, H, H, device=device)}
    return x_0, cond


def xmdpt_train_flops(preset: str, batch: int = 1, device: str = "meta") -> int:
    """One training step (unmasked + masked pass, forward + backward), as ``training_losses`` runs it."""
    from xmdpt.core.config import DiffusionConfig
    from xmdpt.diffusion import GaussianDiffusion
    from xmdpt.diffusion.losses import training_losses

    model, cfg = build_xmdpt(preset, device)
    model.train()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())

    def count_at(n: int) -> int:
        x_0, cond = xmdpt_inputs(cfg, n, device)

        def step():
            out = training_losses(model, diffusion, x_0, cond, cond_drop_prob=0.1, mask_ratio=cfg.mask_ratio)
            out["loss"].backward()

        return count_flops(step)

    return per_batch(count_at, batch)


def xmdpt_cfg_step_flops(preset: str, batch: int = 1, device: str = "meta") -> int:
    """One DDIM step with classifier-free guidance: ``forward_with_cfg`` (one batched 2N forward)."""
    model, cfg = build_xmdpt(preset, device)
    model.eval()

    def count_at(n: int) -> int:
        x_t, cond = xmdpt_inputs(cfg, n, device)
        t = torch.full((n,), 500, dtype=torch.long, device=device)
        return count_flops(lambda: model.forward_with_cfg(x_t, t, cond["pose_tokens"], cond["ref_tokens"],
                                                          cond["ref_latent"], 2.0, 0.01))

    return per_batch(count_at, batch)


def build_sd_vae(device: str):
    """The sd-vae-ft-mse architecture, random init, built by the autoencoder stage's own builder."""
    from xmdpt.core.config import AutoencoderConfig
    from xmdpt.encoders.vae import build_fitted_vae

    with torch.device(device):
        return build_fitted_vae(AutoencoderConfig(**SD_VAE), 256)


def vae_flops(size: int = 256, device: str = "meta") -> dict[str, int]:
    """Per image at ``size`` px: encode, decode, and one decoder fine-tune sample (the autoencoder stage:
    frozen encoder without grad, decoder forward + backward on the reconstruction loss, as ``_train_steps``)."""
    vae = build_sd_vae(device)
    x = torch.randn(1, 3, size, size, device=device)
    z = torch.randn(1, vae.config.latent_channels, size // 8, size // 8, device=device)
    with torch.no_grad():
        encode = count_flops(lambda: vae.encode(x).latent_dist.mean)
        decode = count_flops(lambda: vae.decode(z).sample)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    vae.train()

    def finetune():
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.mean + posterior.std * torch.randn_like(posterior.mean)).sample
        ((rec - x).abs().mean() + ((rec - x) ** 2).mean()).backward()

    return {"encode": encode, "decode": decode, "finetune": count_flops(finetune)}


def dino_flops(model_id: str, size: int = 224, device: str = "meta") -> int:
    """``forward_features`` of a timm DINOv2 backbone at ``size`` px, random init (``pretrained=False``)."""
    from xmdpt.encoders.dino_backbone import build_backbone

    with torch.device(device):
        net = build_backbone(model_id, pretrained=False, img_size=size, seed=0).eval()
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        return count_flops(lambda: net.forward_features(x))


def metric_flops(device: str = "meta") -> dict[str, int]:
    """Inception-v3 at 299 px (FID features) and LPIPS-alex at 256x176, per image / pair."""
    from torchvision.models import inception_v3

    from xmdpt.metrics.lpips import LPIPS

    with torch.device(device):
        inc = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False).eval()
        lp = LPIPS().eval()
    x = torch.randn(1, 3, 299, 299, device=device)
    a, b = torch.randn(1, 3, 256, 176, device=device), torch.randn(1, 3, 256, 176, device=device)
    with torch.no_grad():
        return {"inception": count_flops(lambda: inc(x)), "lpips": count_flops(lambda: lp(a, b))}


def check_meta_counts() -> list[str]:
    """CPU and meta counts of the same small models must agree (and scale linearly with batch)."""
    lines = []
    pairs = [
        ("xmdpt-tiny/2 training step, batch 1", lambda d: xmdpt_train_flops("xmdpt-tiny/2", 1, d)),
        ("xmdpt-tiny/2 training step, batch 2", lambda d: xmdpt_train_flops("xmdpt-tiny/2", 2, d)),
        ("xmdpt-tiny/2 CFG step", lambda d: xmdpt_cfg_step_flops("xmdpt-tiny/2", 1, d)),
        ("DINOv2 ViT-S/14 forward at 224", lambda d: dino_flops("vit_small_patch14_dinov2.lvd142m", 224, d)),
        ("SD-VAE encode/decode/fine-tune at 32 px", lambda d: sum(vae_flops(32, d).values())),
    ]
    for name, fn in pairs:
        cpu, meta = fn("cpu"), fn("meta")
        if cpu != meta:
            raise RuntimeError(f"{name}: meta count {meta} != CPU count {cpu}")
        lines.append(f"count check: {name}: CPU {cpu / 1e9:.3f} GFLOP == meta {meta / 1e9:.3f} GFLOP")
    return lines


# ---------------------------------------------------------------------------------------------
# CPU stages on a synthetic dataset
# ---------------------------------------------------------------------------------------------


def run_cpu_chain(root: Path, identities: int) -> dict:
    """Synthetic dataset of ``identities`` people, then pairs -> poses -> validate, each timed."""
    from xmdpt.core.config import XMDPTConfig
    from xmdpt.data.pairs import build_pairs
    from xmdpt.data.poses import extract_poses
    from xmdpt.synth import write_synthetic_dataset
    from xmdpt.data.validation import validate_dataset

    data = root / "data"
    t0 = time.perf_counter()
    summary = write_synthetic_dataset(str(data), identities=identities, seed=0, test_fraction=0.2)
    out = {"synth_s": time.perf_counter() - t0, "summary": summary}
    cfg = XMDPTConfig().replace(
        paths={"dataset_root": str(data), "storage_root": str(root / "store"),
               "artifacts_dir": str(root / "artifacts"), "data_specs_dir": str(REPO / "data_specs")},
        data={"layout": "pidm", "num_cpus_per_task": 1.0},
        # one light estimator actor (the synthetic images all have pose annotations): fits any CPU count
        poses={"model_path": str(REPO / "assets" / "models" / "pose_landmarker_full.task"), "num_actors": 1,
               "cpus_per_actor": 0.5},
    )
    for stage, fn in (("pairs", build_pairs), ("poses", extract_poses), ("validate", validate_dataset)):
        t0 = time.perf_counter()
        result = fn(cfg)
        out[stage] = {"seconds": time.perf_counter() - t0,
                      "manifest": result[0] if isinstance(result, tuple) else result}
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def fmt_flops(x: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days ({seconds / 3600:.0f} h)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200, help="synthetic people (5 images each)")
    parser.add_argument("--warmup-identities", type=int, default=10, help="warm-up run before the timed one")
    parser.add_argument("--gpu-tflops", type=float, default=100.0,
                        help="sustained TFLOP/s per GPU (default 100: ~1/3 of an A100's 312 bf16 peak)")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs for features / train / evaluate (profile: 4)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the FLOP projection")
    args = parser.parse_args()

    from xmdpt.core.config import load_config

    # the profile with every default filled in (it writes only where things are; the rest is the paper's)
    profile = load_config(REPO / "params" / "deepfashion.yaml").to_dict()
    enc, ae, tr = profile["encoders"], profile["autoencoder"], profile["train"]
    global_batch = tr["num_workers"] * tr["batch_size_per_worker"] * tr["grad_accum_steps"]
    steps, ddim, image_size = tr["max_steps"], profile["sample"]["num_steps"], profile["data"]["image_size"]

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# DeepFashion profile: time per stage ({now})")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"no GPU; python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"profile: params/deepfashion.yaml (model {profile['model']['preset']}, global batch {global_batch}, "
          f"{steps:,} steps, DDIM {ddim}, image {image_size} px, VAE fine-tune {ae['train_steps']:,} steps "
          f"x batch {ae['batch_size']})")
    print()

    rows: list[tuple[str, str, str, str]] = []
    total_t0 = time.perf_counter()

    # ---- CPU stages -------------------------------------------------------------------------
    if not args.skip_cpu:
        from xmdpt.core.ray_utils import init_ray

        os.environ.pop("RAY_ADDRESS", None)
        t0 = time.perf_counter()
        init_ray(num_cpus=os.cpu_count())
        ray_start = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            warm = run_cpu_chain(Path(tmp) / "warmup", args.warmup_identities)
            run = run_cpu_chain(Path(tmp) / "run", args.identities)
        import ray

        ray.shutdown()
        s = run["summary"]
        n_pairs = s["train_pairs"] + s["test_pairs"]
        n_images = s["images"]
        print(f"## CPU stages: measured on {args.identities} synthetic identities ({n_images:,} images, "
              f"{n_pairs:,} pairs) on this CPU, local disk, extrapolated linearly to DeepFashion")
        print(f"(Ray start {ray_start:.1f} s and a warm-up chain on {args.warmup_identities} identities "
              f"[pairs {warm['pairs']['seconds']:.1f} s, poses {warm['poses']['seconds']:.1f} s, "
              f"validate {warm['validate']['seconds']:.1f} s] not counted; writing the synthetic dataset "
              f"took {run['synth_s']:.1f} s)")
        for stage in ("pairs", "poses", "validate"):
            m, sec = run[stage]["manifest"], run[stage]["seconds"]
            print(f"- {stage}: {sec:.2f} s; counts {m['counts']}")
        print(f"(synthetic: {n_pairs / n_images:.1f} pairs per image, DeepFashion {DF_PAIRS / DF_IMAGES:.1f}; "
              f"the pairs stage is extrapolated both by images, which it decodes, and by pairs)")
        print()
        units = {  # what each stage's work grows with
            "pairs": ("images", n_images, DF_IMAGES,
                      f"{DF_IMAGES:,} images decoded (Ray Data), {DF_PAIRS:,} pair rows"),
            "poses": ("images", n_images, DF_IMAGES, f"{DF_IMAGES:,} keypoint rows from the annotation files"),
            "validate": ("rows", n_pairs + n_images, DF_PAIRS + DF_IMAGES,
                         f"Great Expectations suites over {DF_PAIRS:,} pair + {DF_IMAGES:,} pose rows"),
        }
        for stage, (unit, n_here, n_df, what) in units.items():
            sec = run[stage]["seconds"]
            rate_txt = f"{n_here / sec:,.0f} {unit}/s"
            wall = f"{fmt_time(sec * n_df / n_here)} by {unit}"
            if stage == "pairs":
                rate_txt += f" = {n_pairs / sec:,.0f} pairs/s"
                wall += f", {fmt_time(sec * DF_PAIRS / n_pairs)} by pairs"
            rows.append((stage, what, f"{rate_txt} (measured, {os.cpu_count()} cores)",
                         f"{wall} (measured on {args.identities} synthetic identities, extrapolated linearly)"))

    # ---- GPU stages: FLOPs ------------------------------------------------------------------
    t0 = time.perf_counter()
    checks = check_meta_counts()
    per_model = {p: {"train": xmdpt_train_flops(p), "cfg_step": xmdpt_cfg_step_flops(p)} for p in PRESETS}
    vae = vae_flops(image_size)
    dino_g = dino_flops(enc["image_encoder"].split(".")[0], enc["token_input_size"])
    dino_b = dino_flops(enc["pose_encoder"].split(".")[0], enc["token_input_size"])
    metrics = metric_flops()
    count_s = time.perf_counter() - t0

    rate = args.gpu_tflops * 1e12  # per GPU
    gpus = args.gpus

    def hours(flops: float, n_gpus: int) -> str:
        return fmt_time(flops / (rate * n_gpus))

    print("## GPU stages: projection, not a measurement")
    print(f"FLOPs counted per sample (FlopCounterMode, meta device, the denoiser at batch 8 per sample, fp32 graph; {count_s:.1f} s), "
          f"converted at an assumed sustained {args.gpu_tflops:g} TFLOP/s per GPU (~{args.gpu_tflops / 312:.0%} "
          f"of an A100's 312 TFLOP/s bf16 peak) on {gpus} GPUs (1 for the autoencoder stage). "
          f"Data loading, host-device copies, checkpoints, logging and Ray start-up are not included.")
    for line in checks:
        print(f"- {line}")
    print(f"- SD-VAE at {image_size} px: encode {fmt_flops(vae['encode'])}, decode {fmt_flops(vae['decode'])}, "
          f"decoder fine-tune sample (encode no-grad + decode fwd+bwd) {fmt_flops(vae['finetune'])}")
    print(f"- DINOv2 at {enc['token_input_size']} px: ViT-g/14 {fmt_flops(dino_g)}, ViT-B/14 {fmt_flops(dino_b)}")
    print(f"- metrics: Inception-v3 at 299 px {fmt_flops(metrics['inception'])} / image, "
          f"LPIPS-alex at 256x176 {fmt_flops(metrics['lpips'])} / pair")
    for p, f in per_model.items():
        print(f"- {p}: training sample (unmasked + masked pass, fwd+bwd) {fmt_flops(f['train'])}; "
              f"CFG sampling step (2 forwards, batched) {fmt_flops(f['cfg_step'])}")
    readme = {"xmdpt-s/2": 1.1, "xmdpt-b/2": 1.3, "xmdpt-l/2": 3.1}  # s / image on one A100 (PAPER.md 1.3)
    implied = ", ".join(f"{p.split('-')[1].upper()} {(ddim * per_model[p]['cfg_step'] + vae['decode']) / s / 1e12:.1f}"
                        for p, s in readme.items())
    print(f"- cross-check: the authors' README gives {'/'.join(f'{s:g}' for s in readme.values())} s per image "
          f"(S/B/L, one A100, batch and what is included unknown); with the FLOPs above that is {implied} TFLOP/s "
          f"sustained, far below --gpu-tflops: small models at small batches are bound by latency and memory, "
          f"not by FLOPs, so the FLOP projections below are lower bounds (most of all for S/2 at 8 per GPU)")
    print()

    ae_flops = ae["train_steps"] * ae["batch_size"] * vae["finetune"]
    rows.append(("autoencoder", f"{ae['train_steps']:,} steps x batch {ae['batch_size']} x "
                 f"{fmt_flops(vae['finetune'])}", fmt_flops(ae_flops), f"{hours(ae_flops, 1)} on 1 GPU (projection)"))
    per_image = 2 * (vae["encode"] + dino_g + dino_b)
    feat_flops = DF_IMAGES * per_image
    rows.append(("features", f"{DF_IMAGES:,} images x 2 (h-flip) x (VAE enc + ViT-g/14 + ViT-B/14) = "
                 f"{fmt_flops(per_image)} / image", fmt_flops(feat_flops), f"{hours(feat_flops, gpus)} (projection)"))
    for p, f in per_model.items():
        for n_steps, tag in ((steps, "profile"), (800_000, "paper")):
            fl = n_steps * global_batch * f["train"]
            rows.append((f"train {p}", f"{n_steps:,} steps ({tag}) x batch {global_batch} x {fmt_flops(f['train'])}",
                         fmt_flops(fl), f"{hours(fl, gpus)} (projection)"))
    for p, f in per_model.items():
        per_pair = ddim * f["cfg_step"] + vae["decode"]
        fl = DF_TEST_PAIRS * per_pair
        rows.append((f"evaluate {p}", f"{DF_TEST_PAIRS:,} pairs x ({ddim} CFG steps + VAE decode) = "
                     f"{fmt_flops(per_pair)} / pair", fmt_flops(fl), f"{hours(fl, gpus)} (projection)"))
    met = (DF_TRAIN_REAL + DF_TEST_PAIRS) * metrics["inception"] + DF_TEST_PAIRS * metrics["lpips"]
    rows.append(("evaluate metrics", f"Inception-v3 on {DF_TRAIN_REAL:,} real + {DF_TEST_PAIRS:,} generated, "
                 f"LPIPS on {DF_TEST_PAIRS:,} pairs (SSIM/PSNR on CPU not counted)", fmt_flops(met),
                 f"{hours(met, gpus)} (projection)"))
    rows.append(("register", "MLflow registry calls", "not measured", "seconds (network round trips)"))

    print("## Table")
    print("| stage | work | FLOPs or rows/s | projected wall time |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(f"total run time of this script: {time.perf_counter() - total_t0:.0f} s")


if __name__ == "__main__":
    main()
