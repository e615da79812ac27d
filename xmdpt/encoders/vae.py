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

The `autoencoder` stage (:mod:`xmdpt.training.autoencoder`) fits it and saves the weights as
safetensors (``save_pretrained(safe_serialization=True)``) under a content-addressed prefix, next to
a ``codec.json`` with the latent scale, so :meth:`LatentCodec.from_folder` rebuilds it without pickle.

Latents: ``encode`` returns the *unscaled* posterior ``(mean, std)``; the diffusion model works on
``latent_scale * z`` with ``z ~ N(mean, std^2)``; ``decode`` takes unscaled latents. The scale is
one config value (``autoencoder.latent_scale``); when null it is ``1 / std`` of posterior samples of
the train images (fitted) or the VAE's own ``scaling_factor`` (0.18215 for the SD VAE).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from xmdpt.core.batch_invariance import conv_batches
from xmdpt.core.config import AutoencoderConfig
from xmdpt.encoders.dino_backbone import hf_cache_dir
from xmdpt.core.manifests import AutoencoderManifest
from xmdpt.core.storage import filesystem

logger = logging.getLogger(__name__)

VAE_FOLDER = "vae"  # diffusers save_pretrained folder under the stage prefix
CODEC_FILE = "codec.json"  # latent scale, source, metrics — next to the vae folder
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

        def mean_std(x: torch.Tensor) -> torch.Tensor:
            posterior = self.vae.encode(x).latent_dist
            return torch.cat([posterior.mean, posterior.std], dim=1)  # (n, 2C, h, w)

        # in batches of 2-8 on CPU: the same latents as in any batch (xmdpt.core.batch_invariance)
        return conv_batches(mean_std, images.to(self.device, torch.float32)).chunk(2, dim=1)  # (N, C, h, w) each

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
        return conv_batches(lambda z: self.vae.decode(z).sample,
                            latents.to(self.device, torch.float32)).clamp(-1, 1)  # (N, 3, H, W)

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
