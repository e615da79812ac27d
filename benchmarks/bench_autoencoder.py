"""Fitted-autoencoder quality vs cost: held-out PSNR/SSIM, clothes colour and fit time of autoencoder variants.

Writes the embedded default's synthetic dataset (40 identities, 64 px; 160 train / 40 held-out
images), then fits each variant with the `autoencoder` stage's own code (``build_fitted_vae`` +
``_train_steps``, the same seed) and measures the decoded posterior mean on the held-out identities,
as the stage does. The torso / legs colour error is the evaluation's (``part_colour_error``: mean
RGB of each part from the image's keypoints, the reconstruction resized as a generation is) between
a held-out image and its reconstruction: what a model that predicted the perfect latent would score
(0.003 / 0.004 for the 64-px image itself). PSNR and SSIM can be high while the hue is lost.

A variant is ``name:key=value,key=value`` over ``autoencoder.*`` fields, on top of ``FITTED_BASE``
(the fitted autoencoder's earlier embedded settings; the config's defaults are the paper's pretrained
SD VAE).

    python benchmarks/bench_autoencoder.py [--identities 40] [--variants "name:key=value,..." ...]

Without ``--variants``: the earlier 4x default, 4x / 2x autoencoders fitted with MSE on 32 px crops,
the earlier 2x default ((16, 32) at 2000 steps) and the embedded default ((24, 48) at 1500 steps).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch

from xmdpt.core.config import AutoencoderConfig

# what a variant does not set: the small fitted autoencoder as first embedded (4x (32,64,64), L1+MSE,
# whole images, 8 x lr 2e-3, no EMA)
FITTED_BASE = dict(vae="fitted", latent_scale=None, block_channels=(32, 64, 64), lr=2e-3, batch_size=8,
                   l1_weight=1.0, kl_weight=1e-6, ema_decay=0.0, crop_size=None)

DEFAULT_VARIANTS = (
    "4x (32,64,64), L1+MSE, whole images, 400 x 8 (the earlier embedded default):train_steps=400",
    "4x (16,32,64), MSE, 32 px crops, 1200 x 16:block_channels=16+32+64,l1_weight=0,crop_size=32,"
    "batch_size=16,train_steps=1200",
    "2x (16,32), MSE, 32 px crops, 1200 x 16:block_channels=16+32,l1_weight=0,crop_size=32,"
    "batch_size=16,train_steps=1200",
    "2x (16,32), MSE, 32 px crops, 2000 x 16 (the earlier embedded default):block_channels=16+32,l1_weight=0,"
    "crop_size=32,batch_size=16,train_steps=2000",
    "2x (24,48), MSE, 32 px crops, 1500 x 16 (embedded default):block_channels=24+48,l1_weight=0,"
    "crop_size=32,batch_size=16,train_steps=1500",
)


def parse_variant(spec: str, steps: int) -> tuple[str, AutoencoderConfig]:
    """``"name:key=v,key=v"`` -> (name, AutoencoderConfig over ``FITTED_BASE``); tuple values are
    ``+``-joined ints."""
    name, _, body = spec.partition(":")
    fields: dict = {**FITTED_BASE, "train_steps": steps}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if "+" in value:
            fields[key] = tuple(int(v) for v in value.split("+"))
        else:
            try:
                fields[key] = int(value)
            except ValueError:
                fields[key] = float(value)
    return name, AutoencoderConfig(**fields)


def load_split(root: str, size: int):
    from xmdpt.data.deepfashion import fashion_name_to_path
    from xmdpt.encoders.inputs import load_square_images

    out = {}
    for split in ("train", "test"):
        with open(f"{root}/{split}.lst") as f:
            paths = [fashion_name_to_path(line.strip()) for line in f if line.strip()]
        out[split], skipped = load_square_images(root, paths, size)
        if skipped:
            raise RuntimeError(f"undecodable synthetic images: {list(skipped)[:3]}")
    return out["train"], out["test"]


def load_test_parts(root: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out images at full size with their annotated keypoints: (image (H, W, 3) uint8, (18, 2))."""
    from xmdpt.data.deepfashion import fashion_name_to_path
    from xmdpt.data.images import load_rgb
    from xmdpt.sampling.inputs import parse_annotation_row

    out = []
    with open(f"{root}/fasion-resize-annotation-test.csv") as f:
        for row in list(f)[1:]:
            name = row.split(":", 1)[0].strip()
            path = f"{root}/{fashion_name_to_path(name)}"
            with open(path, "rb") as img:
                out.append((load_rgb(img.read(), name=path), parse_annotation_row(row, name=name).keypoints))
    return out


def part_colour_errors(codec, parts: list[tuple[np.ndarray, np.ndarray]], size: int) -> tuple[float, float]:
    """Mean torso / legs colour error of ``codec``'s reconstructions of ``parts`` (the evaluation's measure)."""
    from xmdpt.data.images import resize_square
    from xmdpt.evaluation.scores import generated_for_eval
    from xmdpt.metrics.synthetic import part_colour_error
    from xmdpt.training.autoencoder import reconstruct

    recons = reconstruct(codec, np.stack([resize_square(img, size) for img, _ in parts]))
    errs: dict[str, list[float]] = {"torso": [], "legs": []}
    for (img, kps), rec in zip(parts, recons):
        e = part_colour_error(generated_for_eval(rec, img.shape[:2], "cfld"), kps, img, kps)
        for part in errs:
            if e[part] is not None:
                errs[part].append(e[part])
    return float(np.mean(errs["torso"])), float(np.mean(errs["legs"]))


def main() -> None:
    from xmdpt.synth import write_synthetic_dataset
    from xmdpt.training.autoencoder import _train_steps, reconstruct, reconstruction_metrics
    from xmdpt.encoders.vae import LatentCodec, build_fitted_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="fitting steps where a variant does not set them")
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, identities=args.identities, seed=0, test_fraction=0.2)
        train_u8, test_u8 = load_split(tmp, args.image_size)
        parts = load_test_parts(tmp)
    print(f"# fitted autoencoder, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.identities} synthetic identities "
          f"({len(train_u8)} train / {len(test_u8)} held-out images at {args.image_size} px)")
    print("| variant | latents | parameters | steps x batch | fit time | held-out PSNR | held-out SSIM "
          "| torso colour | legs colour |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.variants:
        name, ae = parse_variant(spec, args.steps)
        torch.manual_seed(ae.seed)
        vae = build_fitted_vae(ae, args.image_size)
        start = time.perf_counter()
        _train_steps(vae, list(vae.parameters()), train_u8, ae, encoder_frozen=False, seed=ae.seed)
        seconds = time.perf_counter() - start
        codec = LatentCodec(vae, 1.0, source="fitted")
        m = reconstruction_metrics(test_u8, reconstruct(codec, test_u8))
        torso, legs = part_colour_errors(codec, parts, args.image_size)
        side = args.image_size // codec.downsample_factor
        params = sum(p.numel() for p in vae.parameters()) / 1e6
        print(f"| {name} | {codec.latent_channels}x{side}x{side} | {params:.2f} M | "
              f"{ae.train_steps} x {ae.batch_size} | {seconds:.0f} s | "
              f"{m['psnr']:.2f} dB | {m['ssim']:.3f} | {torso:.3f} | {legs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
