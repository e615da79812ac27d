"""DINOv2 backbones (timm) built the way the authors' torch-hub models behave, and where their
weights come from.

:func:`build_backbone` makes a timm DINOv2 ViT: pretrained at its native 518 px with the hub's
per-forward position interpolation (:func:`use_hub_pos_embed`, :func:`hub_interpolate_pos_embed`;
see :mod:`xmdpt.encoders.dino` for why), or a shallow random-init stand-in. Weights come from timm's
hub id or a local file (:func:`load_backbone_weights`: timm safetensors or the torch-hub ``.pth``
layout, read with ``weights_only=True``). Offline, :func:`check_hub_reachable` fails at once with
the model id, the cache folder looked in and the setting that points at a local copy.
"""

from __future__ import annotations

import logging
import math
import os
import types
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["build_backbone", "standin_sincos_positions", "load_backbone_weights", "read_weights_file", "use_hub_pos_embed",
           "hub_interpolate_pos_embed", "check_hub_reachable", "hub_offline", "hf_cache_dir", "PATCH_SIZE",
           "HUB_IMG_SIZE", "HUB_INTERPOLATE_OFFSET", "HUB_NAMES"]

PATCH_SIZE = 14
HUB_IMG_SIZE = 518  # the torch-hub DINOv2 models' native size: a 37x37 position grid
HUB_INTERPOLATE_OFFSET = 0.1  # dinov2 `interpolate_offset`
# torch.hub entry points the authors load, per timm id (for messages and the hub-layout import)
HUB_NAMES = {"vit_giant_patch14_dinov2.lvd142m": "dinov2_vitg14", "vit_base_patch14_dinov2.lvd142m": "dinov2_vitb14",
             "vit_large_patch14_dinov2.lvd142m": "dinov2_vitl14", "vit_small_patch14_dinov2.lvd142m": "dinov2_vits14"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder that ``from_pretrained`` looks in."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _weights_setting(role: Optional[str]) -> str:
    return f"encoders.{role}_encoder_weights" if role else "encoders.<role>_encoder_weights"


def check_hub_reachable(model_id: str, role: Optional[str] = None) -> None:
    """Offline and not cached: fail now with the model id, the cache folder and the setting to use."""
    if not hub_offline():
        return
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_id)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, fname), str):
                return
    raise RuntimeError(
        f"cannot load pretrained weights for {model_id!r}: HF_HUB_OFFLINE is set and hub id {repo or '(none)'} "
        f"is not in the Hugging Face cache {hf_cache_dir()}. Point {_weights_setting(role)} (or "
        "`xmdpt import-official --image-encoder/--pose-encoder`) at a local copy: timm's model.safetensors or "
        f"the torch-hub {HUB_NAMES.get(model_id, 'dinov2')}_pretrain.pth; or run once with network access; "
        "or set encoders.pretrained=false for the seeded random-feature stand-ins."
    )


def hub_interpolate_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int],
                              offset: float = HUB_INTERPOLATE_OFFSET) -> torch.Tensor:
    """The torch-hub DINOv2 resampling of ``[cls; M x M]`` position embeddings to an ``h x w`` patch grid.

    The patch part is resampled in float32 with ``F.interpolate(mode="bicubic", antialias=False,
    scale_factor=((h + offset) / M, (w + offset) / M))`` — the scale factor, not the output size,
    sets the sampling positions — and the CLS entry is kept.

    Args:
        pos_embed: (1, 1 + M*M, D).
        grid_hw: (h, w) patches of the input.

    Returns:
        (1, 1 + h*w, D) float32 (``pos_embed`` itself, as float32, when the grid already matches).
    """
    n = pos_embed.shape[1] - 1
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"position embedding of {n} patch entries is not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    pos = pos_embed.float()
    if (h, w) == (m, m):
        return pos
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    out = F.interpolate(grid, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise RuntimeError(f"hub interpolation gave a {tuple(out.shape[-2:])} grid, expected {(h, w)}")
    return torch.cat([pos[:, :1], out.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


def _hub_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` replaced by the hub's per-forward interpolation (NHWC input)."""
    b, h, w, c = x.shape
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)  # concat, then add
    return self.pos_drop(x + hub_interpolate_pos_embed(self.pos_embed, (h, w)).to(x.dtype))


def use_hub_pos_embed(model: torch.nn.Module) -> torch.nn.Module:
    """Make a timm DINOv2 built with ``dynamic_img_size=True`` add position embeddings as the hub model does."""
    if not getattr(model, "dynamic_img_size", False):
        raise ValueError("use_hub_pos_embed needs a timm ViT built with dynamic_img_size=True")
    if getattr(model, "reg_token", None) is not None or getattr(model, "no_embed_class", False):
        raise ValueError("use_hub_pos_embed: register-token DINOv2 variants are not supported")
    model._pos_embed = types.MethodType(_hub_pos_embed, model)
    model.hub_pos_embed = True
    return model


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` tensor file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a plain state dict of tensors")
    return sd


def load_backbone_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load DINOv2 weights in timm's layout or the torch-hub layout (``mask_token``, ``mlp.w12``/``w3``).

    Raises ``ValueError`` naming the file and the missing / unexpected keys and shape mismatches.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = read_weights_file(path)
    sd = checkpoint_filter_fn(dict(sd), model)  # hub layout -> timm's; the 518 grid needs no resampling here
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    wrong = sorted(f"{k}: expected {tuple(ours[k].shape)}, got {tuple(sd[k].shape)}"
                   for k in set(ours) & set(sd) if tuple(ours[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not DINOv2 weights of this architecture: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}, shape mismatches {wrong[:8]}")
    model.load_state_dict(sd, strict=True)


def standin_sincos_positions(model: torch.nn.Module) -> torch.nn.Module:
    """Give a random-init stand-in's patch tokens a fixed 2-D sin-cos position embedding (in place).

    The embedding is scaled so that its standard deviation equals that of the patch embedding's output
    for unit-variance pixels (``sqrt(fan_in) * weight.std()``), so position and content weigh alike in a
    token, as in a trained ViT; timm's random init (std 0.02) leaves the tokens almost position-free.
    The CLS entry is left as it is. Deterministic given the weights.
    """
    from timm.layers import build_sincos2d_pos_embed

    pe = model.pos_embed  # (1, 1 + G*G, D)
    grid = math.isqrt(pe.shape[1] - 1)
    if grid * grid != pe.shape[1] - 1:
        raise ValueError(f"position embedding of {pe.shape[1] - 1} patch entries is not a square grid")
    w = model.patch_embed.proj.weight  # (D, 3, P, P)
    scale = math.sqrt(w[0].numel()) * float(w.detach().float().std())
    table = build_sincos2d_pos_embed([grid, grid], dim=pe.shape[-1], temperature=10000.0)  # (G*G, D)
    with torch.no_grad():
        pe[0, 1:] = (table / table.std() * scale).to(pe.dtype)
    return model


def build_backbone(model_id: str, *, pretrained: bool, img_size: int, depth: Optional[int] = None,
                   seed: Optional[int] = None, weights: Optional[str] = None, hub_pos_embed: bool = False,
                   role: Optional[str] = None, **overrides: Any) -> torch.nn.Module:
    """A timm DINOv2 ViT without head (``num_classes=0``).

    ``hub_pos_embed=True`` (the pretrained path) builds the model at the hub's native 518 px and
    interpolates the position grid at every forward as the torch-hub model does; the input may then
    be any multiple of 14 (224 for the paper). Otherwise the model is built at ``img_size``.

    ``pretrained=True`` loads weights: from ``weights`` (a local file, timm or hub layout) when given,
    else from the model hub (or its cache) — the only place the hub is touched. Otherwise the model is
    randomly initialised under ``torch.manual_seed(seed)`` in a forked RNG, so the same seed gives the
    same weights in any process.
    """
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **overrides}
    if hub_pos_embed:
        kwargs.update(img_size=HUB_IMG_SIZE, dynamic_img_size=True)
    else:
        kwargs["img_size"] = img_size
    if depth is not None:
        kwargs["depth"] = depth
    if pretrained and weights:
        model = timm.create_model(model_id, pretrained=False, **kwargs)
        load_backbone_weights(model, weights)
        logger.info("loaded %s weights from %s", model_id, weights)
    elif pretrained:
        check_hub_reachable(model_id, role)
        logger.info("loading pretrained %s from the model hub", model_id)
        try:
            model = timm.create_model(model_id, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            raise RuntimeError(f"cannot load pretrained weights for {model_id!r} (hub cache {hf_cache_dir()}; "
                               f"a local copy goes in {_weights_setting(role)}): {e}") from e
    else:
        if seed is None:
            raise ValueError(f"{model_id}: a random-init stand-in needs a seed")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(model_id, pretrained=False, **kwargs)
    return use_hub_pos_embed(model) if hub_pos_embed else model
