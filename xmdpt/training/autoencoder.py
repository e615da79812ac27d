"""The `autoencoder` stage: fit the small VAE, or fine-tune the decoder of the pretrained one, and
measure its reconstructions (see :mod:`xmdpt.encoders.vae` for the two sources and the codec).

The fit runs the training loop the denoiser uses (:class:`xmdpt.training.loop.TrainLoop`) on random
flipped crops of the train split; the stage measures PSNR and SSIM of the decoded posterior mean on
held-out (test split) images and saves the weights, ``codec.json`` and a reconstruction grid under
a content-addressed prefix. A fitted VAE's latent channels are then standardised exactly
(:func:`standardize_latent_channels`) and its latent scale measured (:func:`estimate_latent_scale`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import torch

from xmdpt.core.config import AutoencoderConfig, XMDPTConfig
from xmdpt.data import schema
from xmdpt.encoders.inputs import load_square_images, read_image_table
from xmdpt.encoders.vae import (CODEC_FILE, VAE_FOLDER, LatentCodec, build_fitted_vae, from_uint8,
                                load_pretrained_vae, to_uint8)
from xmdpt.core.manifests import AutoencoderManifest, ValidateManifest
from xmdpt.core.storage import filesystem, join, stage_prefix
from xmdpt.training.ema import EMA
from xmdpt.training.loop import TrainLoop, lr_schedule

logger = logging.getLogger(__name__)

__all__ = ["fit_autoencoder", "reconstruction_metrics", "reconstruct", "reconstruction_grid", "posterior_samples",
           "estimate_latent_scale", "standardize_latent_channels", "STAGE", "RECON_FILE"]

STAGE = "autoencoder"
RECON_FILE = "recon.png"


def reconstruction_metrics(originals: np.ndarray, recons: np.ndarray) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM (skimage, 7x7 window, over RGB) of uint8 (N, H, W, 3) images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if originals.shape != recons.shape or originals.ndim != 4:
        raise ValueError(f"shape mismatch: {originals.shape} vs {recons.shape}")
    with np.errstate(divide="ignore"):  # identical images: inf, capped below
        psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(originals, recons)]
    ssim = [structural_similarity(a, b, data_range=255, channel_axis=-1) for a, b in zip(originals, recons)]
    psnr = [min(p, 100.0) for p in psnr]  # identical images give inf
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def reconstruct(codec: LatentCodec, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Decode the posterior mean of uint8 (N, H, W, 3) images; returns uint8 (N, H, W, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        mean, _ = codec.encode(from_uint8(images[i:i + batch_size]))  # (n, C, h, w)
        out.append(to_uint8(codec.decode(mean)))
    return np.concatenate(out) if out else images[:0]


def reconstruction_grid(originals: np.ndarray, recons: np.ndarray, max_images: int = 8) -> np.ndarray:
    """Two rows: originals on top, reconstructions below. uint8 (2H, n*W, 3)."""
    n = min(max_images, len(originals))
    top = np.concatenate(list(originals[:n]), axis=1)  # (H, n*W, 3)
    bottom = np.concatenate(list(recons[:n]), axis=1)
    return np.concatenate([top, bottom], axis=0)  # (2H, n*W, 3)


def vae_params(ae: AutoencoderConfig) -> dict[str, Any]:
    """The autoencoder section, hashed into the stage's prefix."""
    return asdict(ae)


def _random_crops(train_u8: np.ndarray, batch_size: int, crop: Optional[int], factor: int,
                  gen: torch.Generator, device: torch.device):
    """Endless batches (B, 3, H, W) in [-1, 1] of random train images, each flipped with p = 0.5, cut
    to one random ``crop`` window per batch aligned to the latent grid (``factor``); None: whole images."""
    H, W = train_u8.shape[1:3]
    while True:
        idx = torch.randint(len(train_u8), (batch_size,), generator=gen)
        x = from_uint8(train_u8[idx.numpy()])  # (B, 3, H, W)
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if crop:  # the codec is fully convolutional
            top = int(torch.randint((H - crop) // factor + 1, (1,), generator=gen)) * factor
            left = int(torch.randint((W - crop) // factor + 1, (1,), generator=gen)) * factor
            x = x[:, :, top:top + crop, left:left + crop]  # (B, 3, crop, crop)
        yield x.to(device)


def _train_steps(vae, trainable, train_u8: np.ndarray, ae: AutoencoderConfig, *, encoder_frozen: bool,
                 seed: int) -> dict[str, float]:
    """Minimise ``MSE + l1_weight * L1 + kl_weight * KL`` on random flipped crops of the train images,
    with the training loop the denoiser uses (:class:`xmdpt.training.loop.TrainLoop`): AdamW, 5 %
    linear warm-up then cosine decay, the EMA of ``autoencoder.ema_decay``.

    Runs on the device ``vae`` is on; ``train_u8`` stays uint8 on the host and only each batch is
    converted. With ``autoencoder.ema_decay > 0`` the weights left in ``vae`` at the end are the
    exponential moving average (with the warm-up of :class:`xmdpt.training.ema.EMA`).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    crop = ae.crop_size if ae.crop_size and ae.crop_size < min(train_u8.shape[1:3]) else None
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if crop and crop % factor:
        raise ValueError(f"autoencoder.crop_size={crop} is not a multiple of the autoencoder's downsampling factor {factor}")

    def loss_fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad() if encoder_frozen else contextlib.nullcontext():
            posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)  # (B, C, h, w)
        rec = vae.decode(z).sample  # (B, 3, H, W)
        l1 = (rec - x).abs().mean()
        mse = ((rec - x) ** 2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        return {"loss": mse + ae.l1_weight * l1 + (0.0 if encoder_frozen else ae.kl_weight) * kl,
                "l1": l1, "mse": mse, "kl": kl}

    ema = EMA(vae, ae.ema_decay) if ae.ema_decay > 0 else None
    loop = TrainLoop(vae, torch.optim.AdamW(trainable, lr=ae.lr, weight_decay=0.0), ema=ema,
                     lr=lr_schedule(ae.lr, ae.train_steps // 20, total_steps=ae.train_steps, decay="cosine"))
    last: dict[str, float] = {}
    bar = tqdm(total=ae.train_steps, desc=f"autoencoder ({'decoder' if encoder_frozen else 'fit'})", mininterval=2.0)

    def after_step(step: int, metrics: dict[str, float]) -> None:
        last.update(metrics)
        bar.update(1)
        if step % 25 == 1:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")

    vae.train()
    loop.run(_random_crops(train_u8, ae.batch_size, crop, factor, gen, device), loss_fn, step=0, max_steps=ae.train_steps, after_step=after_step)
    bar.close()
    if ema is not None:
        ema.copy_to(vae)
    vae.eval()
    return {k: last[k] for k in ("loss", "l1", "mse", "kl") if k in last}


@torch.no_grad()
def posterior_samples(codec: LatentCodec, images_u8: np.ndarray, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """(N, C, h, w) float32 CPU samples ``z ~ N(mean, std^2)`` of the unscaled posteriors of the images."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(0, len(images_u8), batch_size):
        mean, std = codec.encode(from_uint8(images_u8[i:i + batch_size]))
        samples.append((mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)).float().cpu())
    return torch.cat(samples)


def estimate_latent_scale(codec: LatentCodec, images_u8: np.ndarray, seed: int = 0, batch_size: int = 64) -> float:
    """``1 / std`` of posterior samples ``z ~ N(mean, std^2)`` over the given images."""
    return float(1.0 / posterior_samples(codec, images_u8, seed, batch_size).flatten().std())


@torch.no_grad()
def standardize_latent_channels(vae, images_u8: np.ndarray, seed: int = 0, batch_size: int = 64) -> dict[str, list[float]]:
    """Re-parametrise a fitted VAE so that each latent channel's posterior samples have mean 0, std 1.

    An exact change of coordinates ``z' = (z - mu_c) / sd_c`` folded into the 1x1 ``quant_conv``
    (encoder side: the mean rows shift and scale, the log-variance rows shift by ``-2 log sd_c``) and
    ``post_quant_conv`` (decoder side: ``z = sd_c z' + mu_c``), so reconstructions are unchanged
    while the diffusion model sees zero-mean, unit-variance channels. Without it, the embedded 2x
    codec's channels, after the single scalar latent scale, have means of -0.97 to +0.79 and stds
    of 0.43 to 0.94, which no scalar can fix.

    Args:
        vae: an ``AutoencoderKL`` with ``quant_conv`` and ``post_quant_conv`` (modified in place).
        images_u8: (N, H, W, 3) uint8 images the statistics are taken over (the train split).
    Returns:
        ``{"mean": [mu_c], "std": [sd_c]}``, the statistics that were folded in (unscaled latents).
    """
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("standardize_latent_channels needs an AutoencoderKL with quant_conv and post_quant_conv")
    codec = LatentCodec(vae, 1.0, source="fitted", device=next(vae.parameters()).device)
    z = posterior_samples(codec, images_u8, seed, batch_size)  # (N, C, h, w)
    mu = z.mean(dim=(0, 2, 3)).double()  # (C,)
    sd = z.std(dim=(0, 2, 3)).double().clamp_min(1e-6)  # (C,)
    C = len(mu)
    q, pq_ = vae.quant_conv, vae.post_quant_conv  # 1x1 convs: (2C, 2C_in) and (C_out, C)
    w, b = q.weight.double(), q.bias.double()  # (2C, k, 1, 1), (2C,)
    w[:C] /= sd.view(C, 1, 1, 1)
    b[:C] = (b[:C] - mu) / sd
    b[C:] -= 2.0 * torch.log(sd)  # log-variance rows: var' = var / sd^2
    q.weight.copy_(w.to(q.weight.dtype))
    q.bias.copy_(b.to(q.bias.dtype))
    w2, b2 = pq_.weight.double(), pq_.bias.double()  # (C_out, C, 1, 1), (C_out,)
    b2 += (w2[:, :, 0, 0] * mu.view(1, C)).sum(dim=1)
    w2 *= sd.view(1, C, 1, 1)
    pq_.weight.copy_(w2.to(pq_.weight.dtype))
    pq_.bias.copy_(b2.to(pq_.bias.dtype))
    return {"mean": [round(float(v), 6) for v in mu], "std": [round(float(v), 6) for v in sd]}


def _split_images(cfg: XMDPTConfig, validate_manifest: ValidateManifest) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """``(train_u8, eval_u8, heldout, skipped)``: the train split's images and the test split's (the
    first 64 train images when there is no test split, ``heldout`` False), uint8 (N, S, S, 3)."""
    size = cfg.data.image_size
    table = read_image_table(validate_manifest)
    paths = table.column(schema.IMAGE_PATH).to_pylist()
    splits = table.column(schema.SPLIT).to_pylist()
    train_paths = [p for p, s in zip(paths, splits) if s == "train"]
    test_paths = [p for p, s in zip(paths, splits) if s == "test"]
    if not train_paths:
        raise ValueError(f"{validate_manifest.uri}: no train-split images to fit the autoencoder on")
    heldout = bool(test_paths)
    if not heldout:
        logger.warning("no test-split images: reconstruction metrics are measured on train images")
        test_paths = train_paths[: min(64, len(train_paths))]
    t0 = time.perf_counter()
    train_u8, skipped = load_square_images(cfg.paths.dataset_root, train_paths, size)  # (N, size, size, 3)
    test_u8, skipped_test = load_square_images(cfg.paths.dataset_root, test_paths, size)
    skipped.update(skipped_test)
    if len(train_u8) == 0 or len(test_u8) == 0:
        raise ValueError(f"no decodable {'train' if len(train_u8) == 0 else 'evaluation'} images "
                         f"(skipped: {list(skipped.values())[:3]})")
    logger.info("loaded %d train / %d test images at %d px in %.1fs", len(train_u8), len(test_u8), size,
                time.perf_counter() - t0)
    return train_u8, test_u8, heldout, len(skipped)


def _initial_vae(ae: AutoencoderConfig, size: int) -> tuple[Any, list[torch.nn.Parameter], bool]:
    """``(vae, trainable parameters, encoder frozen)``: a new fitted VAE (all of it trains) or the
    pretrained one (its decoder trains when ``finetune_decoder``, the encoder never)."""
    torch.manual_seed(ae.seed)
    if ae.vae == "fitted":
        vae = build_fitted_vae(ae, size)
        return vae, list(vae.parameters()), False
    vae = load_pretrained_vae(ae.pretrained_id)
    vae.encoder.requires_grad_(False)
    if vae.quant_conv is not None:
        vae.quant_conv.requires_grad_(False)
    return vae, [p for p in vae.parameters() if p.requires_grad] if ae.finetune_decoder else [], True


def _latent_scale(ae: AutoencoderConfig, vae, train_u8: np.ndarray, device: torch.device) -> float:
    """``autoencoder.latent_scale`` if set, else the pretrained VAE's ``scaling_factor``, else
    ``1 / std`` of the fitted VAE's posterior samples of the train images."""
    if ae.latent_scale is not None:
        return ae.latent_scale
    if ae.vae == "pretrained":
        return float(vae.config.scaling_factor)
    return estimate_latent_scale(LatentCodec(vae, 1.0, source=ae.vae, device=device), train_u8, seed=ae.seed)


def fit_autoencoder(cfg: XMDPTConfig,
                    validate_manifest: Optional[ValidateManifest | dict[str, Any]] = None) -> dict[str, Any]:
    """The `autoencoder` stage: fit (or fine-tune the decoder of) the VAE and measure it.

    Reads the validated image list (``{artifacts_dir}/validate/manifest.json`` unless given), trains
    on the train split (plus flips), evaluates on the test split, saves weights + ``codec.json`` +
    a reconstruction grid under ``{storage_root}/autoencoder/{hash}/``. A prefix that already holds
    a finished codec is reused (content-addressed: same params and data give the same weights).

    Returns:
        The stage manifest (:class:`~xmdpt.core.manifests.AutoencoderManifest`) as its JSON dict: ``stage,
        uri, latent_scale, latent_shape, image_size, config (the AutoencoderKL config), source,
        metrics, recon_uri``.
    """
    ae, size = cfg.autoencoder, cfg.data.image_size
    if validate_manifest is None:
        validate_manifest = ValidateManifest.load(cfg.paths.artifacts_dir)
    validate_manifest = ValidateManifest.coerce(validate_manifest)
    prefix = stage_prefix(cfg.paths.storage_root, STAGE, vae_params(ae), size, validate_manifest.key())
    fs, path = filesystem(prefix)
    codec_path = f"{path.rstrip('/')}/{CODEC_FILE}"
    if fs.exists(codec_path) and fs.exists(f"{path.rstrip('/')}/{VAE_FOLDER}/config.json"):
        logger.info("autoencoder already fitted at %s; reusing it", prefix)
        return _manifest(LatentCodec.from_folder(prefix), prefix, size, json.loads(fs.cat_file(codec_path))["metrics"])

    train_u8, test_u8, heldout, skipped = _split_images(cfg, validate_manifest)
    vae, trainable, frozen_encoder = _initial_vae(ae, size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae.to(device)
    logger.info("autoencoder (%s): %.2fM parameters, %d trainable steps on %s", ae.vae,
                sum(p.numel() for p in vae.parameters()) / 1e6, ae.train_steps if trainable else 0, device)
    t0 = time.perf_counter()
    last = _train_steps(vae, trainable, train_u8, ae, encoder_frozen=frozen_encoder, seed=ae.seed) \
        if trainable and ae.train_steps > 0 else {}
    fit_seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {"image_size": size}
    if ae.vae == "fitted" and ae.standardize_latents:
        vae.eval()
        extra["standardized_channels"] = standardize_latent_channels(vae, train_u8, seed=ae.seed)
        logger.info("latent channels standardised (unscaled mean %s, std %s folded into the 1x1 convs)",
                    extra["standardized_channels"]["mean"], extra["standardized_channels"]["std"])
    codec = LatentCodec(vae, _latent_scale(ae, vae, train_u8, device), source=ae.vae, device=device)

    recons = reconstruct(codec, test_u8)
    metrics = {
        **{f"heldout_{k}" if heldout else f"train_{k}": v for k, v in reconstruction_metrics(test_u8, recons).items()},
        "num_eval_images": len(test_u8), "num_train_images": len(train_u8), "num_skipped_images": skipped,
        "train_steps": ae.train_steps if trainable else 0, "fit_seconds": round(fit_seconds, 1),
        **{f"final_{k}": round(v, 6) for k, v in last.items()},
    }
    logger.info("autoencoder reconstruction: %s", {k: round(v, 4) if isinstance(v, float) else v
                                                   for k, v in metrics.items()})
    codec.save(prefix, extra={"metrics": metrics, **extra})
    _write_png(reconstruction_grid(test_u8, recons), join(prefix, RECON_FILE))
    return _manifest(codec, prefix, size, metrics)


def _write_png(img: np.ndarray, uri: str) -> None:
    from PIL import Image

    fs, path = filesystem(uri)
    with fs.open(path, "wb") as f:
        Image.fromarray(img).save(f, format="PNG")


def _manifest(codec: LatentCodec, prefix: str, size: int, metrics: dict[str, Any]) -> dict[str, Any]:
    f = codec.downsample_factor
    return AutoencoderManifest(
        uri=prefix,
        vae_uri=join(prefix, VAE_FOLDER),
        recon_uri=join(prefix, RECON_FILE),
        source=codec.source,
        latent_scale=codec.latent_scale,
        latent_shape=(codec.latent_channels, size // f, size // f),
        image_size=size,
        config={k: v for k, v in dict(codec.vae.config).items() if not k.startswith("_")},
        metrics=metrics,
    ).to_dict()
