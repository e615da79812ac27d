"""The latent codec: a diffusers ``AutoencoderKL`` between images and diffusion latents.

Two sources (``autoencoder.vae``):

- ``pretrained`` — the paper's ``stabilityai/sd-vae-ft-mse`` (8x downsampling, 4 channels, latent
  scale 0.18215) with its decoder fine-tuned on the dataset images, as the authors did; the
  encoder stays frozen, so cached latents stay valid. Needs the model hub.
- ``fitted`` — the offline embedded default: a small ``AutoencoderKL`` built from
  ``autoencoder.block_channels`` / ``latent_channels`` (downsampling ``2**(len(blocks) - 1)``:
  64 px -> 16x16x4 by default) and fitted from scratch on the train split and its flips (optionally
  on random ``autoencoder.crop_size`` crops: the network is fully convolutional, and 32 px crops
  make a step 4x cheaper at 64 px), with loss ``MSE + l1_weight * L1 + kl_weight * KL``
  (``l1_weight=0`` fits PSNR best; see ``benchmarks/bench_autoencoder.py``).

Either way the stage measures reconstruction quality on held-out (test split) images — PSNR and
SSIM of the decoded posterior mean — and saves the weights as safetensors
(``save_pretrained(safe_serialization=True)``) under a content-addressed prefix, next to a
``codec.json`` with the latent scale, so :meth:`LatentCodec.from_folder` rebuilds it without pickle.

Latents: ``encode`` returns the *unscaled* posterior ``(mean, std)``; the diffusion model works on
``latent_scale * z`` with ``z ~ N(mean, std^2)``; ``decode`` takes unscaled latents. The scale is
one config value (``autoencoder.latent_scale``); when null it is ``1 / std`` of posterior samples of
the train images (fitted) or the VAE's own ``scaling_factor`` (0.18215 for the SD VAE).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from xmdpt.config import AutoencoderConfig, XMDPTConfig
from xmdpt.data import schema
from xmdpt.ops.manifests import AutoencoderManifest, ValidateManifest
from xmdpt.ops.storage import filesystem, join, stage_prefix
from xmdpt.encoders.dino import hf_cache_dir
from xmdpt.encoders.inputs import load_square_images, read_image_table
from xmdpt.training.ema import EMA
from xmdpt.training.loop import TrainLoop, lr_schedule

logger = logging.getLogger(__name__)

STAGE = "autoencoder"
VAE_FOLDER = "vae"  # diffusers save_pretrained folder under the stage prefix
CODEC_FILE = "codec.json"  # latent scale, source, metrics — next to the vae folder
RECON_FILE = "recon.png"
SOURCES = ("fitted", "pretrained")


# --------------------------------------------------------------------------------------------
# Building / loading the autoencoder
# --------------------------------------------------------------------------------------------


def build_fitted_vae(ae: AutoencoderConfig, image_size: int):
    """A small ``AutoencoderKL`` from the config (random init; fitted by :func:`fit_autoencoder`).

    Args:
        ae: autoencoder config (``block_channels``, ``latent_channels``, ``layers_per_block``).
        image_size: square input side; must be divisible by the downsampling factor.
    """
    from diffusers import AutoencoderKL

    blocks = tuple(int(c) for c in ae.block_channels)
    factor = 2 ** (len(blocks) - 1)
    if image_size % factor:
        raise ValueError(f"data.image_size={image_size} is not divisible by the autoencoder's downsampling "
                         f"factor {factor} (autoencoder.block_channels={list(blocks)})")
    groups = math.gcd(*blocks, 32)  # GroupNorm groups must divide every width
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=ae.layers_per_block,
        latent_channels=ae.latent_channels,
        norm_num_groups=groups,
        sample_size=image_size,
        mid_block_add_attention=ae.mid_attention,
    )


def load_pretrained_vae(model_id: str):
    """``AutoencoderKL.from_pretrained(model_id)``: a hub id (or its local cache), or a local diffusers folder.

    Offline (``HF_HUB_OFFLINE=1``) without a cached copy this fails at once with an error naming
    ``model_id``, the cache folder looked in and the setting that points at a local copy.
    """
    from diffusers import AutoencoderKL

    if Path(model_id).is_dir():
        check_diffusers_vae_folder(model_id)
    try:
        return AutoencoderKL.from_pretrained(model_id, use_safetensors=_has_safetensors(model_id))
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"cannot load the pretrained autoencoder {model_id!r} (autoencoder.pretrained_id): {e}. It needs the "
            f"Hugging Face hub or a copy in the cache {hf_cache_dir()}; or point autoencoder.pretrained_id "
            "(`xmdpt import-official --vae DIR`) at a local diffusers AutoencoderKL folder; offline, "
            "autoencoder.vae=fitted trains a small one."
        ) from e


_VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _has_safetensors(model_id: str) -> Optional[bool]:
    """True/False for a local folder (which weights file it has); None (diffusers decides) for a hub id."""
    p = Path(model_id)
    if not p.is_dir():
        return True
    return (p / _VAE_WEIGHT_FILES[0]).is_file()


def check_diffusers_vae_folder(folder: str | Path) -> Path:
    """Raise ``FileNotFoundError`` naming the missing file unless ``folder`` has a diffusers
    ``AutoencoderKL`` layout (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``)."""
    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: autoencoder folder not found")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a diffusers AutoencoderKL folder: missing config.json")
    if not any((p / f).is_file() for f in _VAE_WEIGHT_FILES):
        raise FileNotFoundError(f"{p}: not a diffusers AutoencoderKL folder: missing {_VAE_WEIGHT_FILES[0]} "
                                f"(or {_VAE_WEIGHT_FILES[1]})")
    return p


def read_vae_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a diffusers ``AutoencoderKL`` folder, without pickle (safetensors, else
    ``torch.load(weights_only=True)`` of the ``.bin``)."""
    p = check_diffusers_vae_folder(folder)
    if (p / _VAE_WEIGHT_FILES[0]).is_file():
        from safetensors.torch import load_file

        return load_file(str(p / _VAE_WEIGHT_FILES[0]))
    sd = torch.load(p / _VAE_WEIGHT_FILES[1], map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{p / _VAE_WEIGHT_FILES[1]}: expected a state dict, got {type(sd).__name__}")
    return sd


DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def replace_decoder(vae, folder: str | Path) -> dict[str, Any]:
    """Load the decoder (``decoder.*``, ``post_quant_conv.*``) of another ``AutoencoderKL`` folder into ``vae``.

    This is how the authors' fine-tuned decoder (their ``diffuser_finetune_vae`` folder) replaces the
    decoder of ``stabilityai/sd-vae-ft-mse`` while the encoder stays the one the checkpoints were
    trained with.

    Returns:
        ``{"decoder": folder, "decoder_sha256": ..., "tensors": n}`` for ``pipeline.json``.
    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or the weights file (named).
        ValueError: decoder tensors missing or of other shapes than ``vae``'s (named).
    """
    sd = read_vae_state_dict(folder)
    ours = {k: v for k, v in vae.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    theirs = {k: v for k, v in sd.items() if k.startswith(DECODER_PREFIXES)}
    missing = sorted(set(ours) - set(theirs))
    wrong = sorted(f"{k}: expected {tuple(ours[k].shape)}, got {tuple(theirs[k].shape)}"
                   for k in set(ours) & set(theirs) if theirs[k].shape != ours[k].shape)
    if missing or wrong:
        raise ValueError(f"{folder}: decoder weights do not fit the autoencoder: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, shape mismatches {wrong[:8]}")
    vae.load_state_dict({k: theirs[k] for k in ours}, strict=False)
    h = hashlib.sha256()
    for k in sorted(ours):
        h.update(k.encode())
        h.update(theirs[k].detach().cpu().contiguous().float().numpy().tobytes())
    return {"decoder": str(folder), "decoder_sha256": h.hexdigest(), "tensors": len(ours)}


class LatentCodec:
    """Images <-> unscaled VAE latents, with the latent scale the diffusion model uses.

    Attributes:
        vae: the diffusers ``AutoencoderKL`` (eval mode, no grad).
        latent_scale: multiply unscaled latents by this before diffusion (SD VAE: 0.18215).
        source: "fitted" | "pretrained".
    """

    def __init__(self, vae, latent_scale: float, *, source: str, uri: Optional[str] = None,
                 device: str | torch.device = "cpu") -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown autoencoder source {source!r}; expected one of {list(SOURCES)}")
        if not (latent_scale > 0 and math.isfinite(latent_scale)):
            raise ValueError(f"latent_scale must be a positive finite number, got {latent_scale!r}")
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.latent_scale = float(latent_scale)
        self.source = source
        self.uri = uri
        self.device = torch.device(device)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of ``images``.

        Args:
            images: (N, 3, H, W) float in [-1, 1], H and W divisible by :attr:`downsample_factor`.

        Returns:
            ``(mean, std)``, each (N, C, H/f, W/f), unscaled.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images (N, 3, H, W), got {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(f"image side {tuple(images.shape[-2:])} not divisible by the downsampling factor {f}")
        posterior = self.vae.encode(images.to(self.device, torch.float32)).latent_dist
        return posterior.mean, posterior.std  # (N, C, h, w) each

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images from unscaled latents.

        Args:
            latents: (N, C, h, w) unscaled (divide diffusion latents by :attr:`latent_scale` first).

        Returns:
            (N, 3, h*f, w*f) float in [-1, 1].
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents (N, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        return self.vae.decode(latents.to(self.device, torch.float32)).sample.clamp(-1, 1)  # (N, 3, H, W)

    # ---- persistence ----
    def save(self, uri: str, extra: Optional[dict[str, Any]] = None) -> str:
        """Write ``{uri}/vae/`` (safetensors + config.json) and ``{uri}/codec.json``; returns ``uri``."""
        info = {"latent_scale": self.latent_scale, "source": self.source, **(extra or {})}
        fs, path = filesystem(uri)
        with tempfile.TemporaryDirectory() as tmp:
            self.vae.save_pretrained(os.path.join(tmp, VAE_FOLDER), safe_serialization=True)
            Path(tmp, CODEC_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            fs.makedirs(path, exist_ok=True)
            fs.put(os.path.join(tmp, VAE_FOLDER), path.rstrip("/") + "/", recursive=True)
            fs.put_file(os.path.join(tmp, CODEC_FILE), f"{path.rstrip('/')}/{CODEC_FILE}")
        self.uri = uri
        return uri

    @classmethod
    def from_folder(cls, uri: str, device: str | torch.device = "cpu") -> "LatentCodec":
        """Load a codec written by :meth:`save` (local folder or fsspec URL); no pickle involved."""
        from diffusers import AutoencoderKL

        fs, path = filesystem(uri)
        codec_path = f"{path.rstrip('/')}/{CODEC_FILE}"
        if not fs.exists(codec_path):
            raise FileNotFoundError(f"{uri}: no {CODEC_FILE}; not an autoencoder folder written by LatentCodec.save")
        info = json.loads(fs.cat_file(codec_path))
        if isinstance(fs, LocalFileSystem):
            vae = AutoencoderKL.from_pretrained(os.path.join(path, VAE_FOLDER), use_safetensors=True)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                fs.get(f"{path.rstrip('/')}/{VAE_FOLDER}", os.path.join(tmp, VAE_FOLDER), recursive=True)
                vae = AutoencoderKL.from_pretrained(os.path.join(tmp, VAE_FOLDER), use_safetensors=True)
        return cls(vae, info["latent_scale"], source=info["source"], uri=uri, device=device)

    @classmethod
    def from_manifest(cls, manifest: AutoencoderManifest | dict[str, Any] | str | Path,
                      device: str | torch.device = "cpu") -> "LatentCodec":
        """Load from an `autoencoder` stage manifest (typed, its dict, or the path to ``manifest.json``)."""
        if isinstance(manifest, (str, Path)):
            manifest = AutoencoderManifest.read(manifest)
        manifest = AutoencoderManifest.coerce(manifest)
        codec = cls.from_folder(manifest.uri, device=device)
        if not math.isclose(codec.latent_scale, manifest.latent_scale, rel_tol=1e-6):
            raise ValueError(f"{manifest.uri}: latent_scale {codec.latent_scale} differs from the manifest's "
                             f"{manifest.latent_scale}")
        return codec


# --------------------------------------------------------------------------------------------
# Metrics and grids
# --------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


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


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def vae_params(ae: AutoencoderConfig) -> dict[str, Any]:
    """The autoencoder section, hashed into the stage's prefix."""
    return asdict(ae)


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
    H, W = train_u8.shape[1:3]
    crop = ae.crop_size if ae.crop_size and ae.crop_size < min(H, W) else None
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if crop and crop % factor:
        raise ValueError(f"autoencoder.crop_size={crop} is not a multiple of the autoencoder's downsampling factor {factor}")

    def batches():
        while True:
            idx = torch.randint(len(train_u8), (ae.batch_size,), generator=gen)
            x = from_uint8(train_u8[idx.numpy()])  # (B, 3, H, W)
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if crop:  # one random window per step, on the latent grid (the codec is fully convolutional)
                top = int(torch.randint((H - crop) // factor + 1, (1,), generator=gen)) * factor
                left = int(torch.randint((W - crop) // factor + 1, (1,), generator=gen)) * factor
                x = x[:, :, top:top + crop, left:left + crop]  # (B, 3, crop, crop)
            yield x.to(device)

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
    loop.run(batches(), loss_fn, step=0, max_steps=ae.train_steps, after_step=after_step)
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


def fit_autoencoder(cfg: XMDPTConfig,
                    validate_manifest: Optional[ValidateManifest | dict[str, Any]] = None) -> dict[str, Any]:
    """The `autoencoder` stage: fit (or fine-tune the decoder of) the VAE and measure it.

    Reads the validated image list (``{artifacts_dir}/validate/manifest.json`` unless given), trains
    on the train split (plus flips), evaluates on the test split, saves weights + ``codec.json`` +
    a reconstruction grid under ``{storage_root}/autoencoder/{hash}/``. A prefix that already holds
    a finished codec is reused (content-addressed: same params and data give the same weights).

    Returns:
        The stage manifest (:class:`~xmdpt.ops.manifests.AutoencoderManifest`) as its JSON dict: ``stage,
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
        codec = LatentCodec.from_folder(prefix)
        info = json.loads(fs.cat_file(codec_path))
        return _manifest(codec, prefix, size, info["metrics"])

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

    torch.manual_seed(ae.seed)
    if ae.vae == "fitted":
        vae = build_fitted_vae(ae, size)
        trainable = list(vae.parameters())
        frozen_encoder = False
    else:
        vae = load_pretrained_vae(ae.pretrained_id)
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
        trainable = [p for p in vae.parameters() if p.requires_grad] if ae.finetune_decoder else []
        frozen_encoder = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae.to(device)
    logger.info("autoencoder (%s): %.2fM parameters, %d trainable steps on %s", ae.vae,
                sum(p.numel() for p in vae.parameters()) / 1e6, ae.train_steps if trainable else 0, device)
    t0 = time.perf_counter()
    last = {}
    if trainable and ae.train_steps > 0:
        last = _train_steps(vae, trainable, train_u8, ae, encoder_frozen=frozen_encoder, seed=ae.seed)
    fit_seconds = time.perf_counter() - t0
    standardized = None
    if ae.vae == "fitted" and ae.standardize_latents:
        vae.eval()
        standardized = standardize_latent_channels(vae, train_u8, seed=ae.seed)
        logger.info("latent channels standardised (unscaled mean %s, std %s folded into the 1x1 convs)",
                    standardized["mean"], standardized["std"])

    if ae.latent_scale is not None:
        scale = ae.latent_scale
    elif ae.vae == "pretrained":
        scale = float(vae.config.scaling_factor)
    else:
        scale = estimate_latent_scale(LatentCodec(vae, 1.0, source=ae.vae, device=device), train_u8, seed=ae.seed)
    codec = LatentCodec(vae, scale, source=ae.vae, device=device)

    recons = reconstruct(codec, test_u8)
    metrics = {
        **{f"heldout_{k}" if heldout else f"train_{k}": v for k, v in reconstruction_metrics(test_u8, recons).items()},
        "num_eval_images": len(test_u8),
        "num_train_images": len(train_u8),
        "num_skipped_images": len(skipped),
        "train_steps": ae.train_steps if trainable else 0,
        "fit_seconds": round(fit_seconds, 1),
        **{f"final_{k}": round(v, 6) for k, v in last.items()},
    }
    logger.info("autoencoder reconstruction: %s", {k: round(v, 4) if isinstance(v, float) else v
                                                   for k, v in metrics.items()})
    extra = {"metrics": metrics, "image_size": size}
    if standardized is not None:
        extra["standardized_channels"] = standardized
    codec.save(prefix, extra=extra)
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
