"""Import (and, for the parity test, export) the authors' released X-MDPT checkpoints.

The authors' state dict (``tests/assets/authors_state_dict_xmdpt_s2.txt``) has the same tensors
as ours under other names, plus one ``relative_position_index`` buffer per attention layer (ours is
one non-persistent buffer of the TDNet). Conversion renames keys, checks every key and shape, and
checks that each index buffer equals ours, refusing anything else with a message naming the keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle  # only for its error type: nothing is unpickled beyond tensors
from pathlib import Path
from typing import Mapping

import torch

from xmdpt.config import DiffusionConfig, ModelConfig, SampleConfig
from xmdpt.model.folder import check_state_dict, write_model_folder
from xmdpt.model.layers import relative_position_index
from xmdpt.model.xmdpt import XMDPT

logger = logging.getLogger(__name__)

__all__ = ["convert_official_state_dict", "export_official_state_dict", "import_official", "official_key",
           "OFFICIAL_ENCODERS"]

# Authors' key prefix -> ours (first match wins), then renames inside a block.
_PREFIXES: list[tuple[str, str]] = [
    ("x_embedder.proj.", "tdnet.patch_embed."),
    ("pos_embed", "tdnet.pos_embed"),
    ("decoder_pos_embed", "tdnet.decoder_pos_embed"),
    ("t_embedder.", "tdnet.t_embed."),
    ("blocks.", "tdnet.blocks."),
    ("final_layer.", "tdnet.final_layer."),
    ("mask_token", "mipnet.mask_token"),
    ("sideblocks.0.", "mipnet.self_block."),
    ("sideblocks_cross.0.", "mipnet.cross_block."),
    ("mlp_dino_pose.", "canet.pose_proj."),
    ("mlp_dino_img.", "canet.ref_proj."),
    ("conv1d_pose.", "canet.pose_pool."),
    ("conv1d_global.", "canet.ref_pool."),
    ("conv1d_local.", "canet.latent_pool."),
    ("mlp_final.", "canet.out_mlp."),
]
_INNER: list[tuple[str, str]] = [
    ("adaLN_modulation.", "modulation."),
    ("attn.rel_pos_bias.relative_position_bias_table", "attn.rel_pos_table"),
    ("attn.to_q.", "attn.q."),
    ("attn.to_kv.", "attn.kv."),
]
_TABLE = "attn.rel_pos_bias.relative_position_bias_table"
_INDEX = "attn.rel_pos_bias.relative_position_index"

# What the released checkpoints were trained with (PAPER.md §1.7): SD VAE latents x 0.18215,
# DINOv2 ViT-B/14 pose tokens and ViT-g/14 image tokens at 224 px.
OFFICIAL_ENCODERS = {"vae": "pretrained", "vae_pretrained_id": "stabilityai/sd-vae-ft-mse", "latent_scale": 0.18215,
                     "pretrained": True, "image_encoder": "vit_giant_patch14_dinov2.lvd142m",
                     "pose_encoder": "vit_base_patch14_dinov2.lvd142m", "token_input_size": 224}


def official_key(key: str) -> str:
    """Our key -> the authors' name for the same tensor."""
    for theirs, ours in _PREFIXES:
        if key == ours or (ours.endswith(".") and key.startswith(ours)):
            rest = key[len(ours):]
            for old, new in _INNER:
                rest = rest.replace(new, old)
            return theirs + rest
    raise ValueError(f"no authors' name for {key!r}")


def _official_layout(model: XMDPT) -> dict[str, str]:
    """Authors' key -> our key ("" for the per-layer index buffers, which we do not store)."""
    layout = {}
    for key in model.state_dict():
        theirs = official_key(key)
        layout[theirs] = key
        if theirs.endswith(_TABLE):
            layout[theirs[: -len(_TABLE)] + _INDEX] = ""
    return layout


def convert_official_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Authors' key layout -> ours, for the architecture ``cfg``.

    Raises:
        ValueError: naming (in the authors' terms) missing keys, unexpected keys, shape mismatches, or
            index buffers that differ from the relative-position index of the model's grid.
    """
    with torch.device("meta"):
        model = XMDPT(cfg)
    layout = _official_layout(model)
    ours = model.state_dict()
    grid = cfg.input_size // cfg.patch_size
    expected = {k: tuple(ours[v].shape) if v else (grid * grid, grid * grid) for k, v in layout.items()}
    bad = [f"{k} (not a tensor)" for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"authors' checkpoint ({cfg.preset or 'custom'}): {bad}")
    check_state_dict(expected, sd, f"authors' checkpoint ({cfg.preset or 'custom'})")
    index = relative_position_index(grid)
    bad_index = sorted(k for k, v in layout.items() if not v and not torch.equal(sd[k].cpu().long(), index))
    if bad_index:
        raise ValueError(f"authors' checkpoint: relative_position_index differs from the {grid}x{grid} grid's in {bad_index}")
    return {ours_key: sd[theirs] for theirs, ours_key in layout.items() if ours_key}


def export_official_state_dict(model: XMDPT) -> dict[str, torch.Tensor]:
    """Our model -> the authors' key layout, per-layer index buffers included (for parity tests)."""
    state = model.state_dict()
    index = model.tdnet.rel_index.detach().cpu()
    return {theirs: (state[ours].detach().clone() if ours else index.clone())
            for theirs, ours in _official_layout(model).items()}


def import_official(ckpt_path: str | Path, preset: str, out_dir: str | Path) -> Path:
    """Load an authors' ``.pt`` (``torch.load(weights_only=True)``), convert it and write a model folder.

    Args:
        ckpt_path: e.g. the released ``ema_0.9999_300000.pt`` (a plain state dict).
        preset: ``xmdpt-s/2``, ``xmdpt-b/2``, ``xmdpt-l/2`` (or ``xmdpt-xl/2``).
        out_dir: the model folder to write.
    Returns:
        ``out_dir`` as a Path.
    """
    ckpt_path = Path(ckpt_path)
    cfg = ModelConfig.from_preset(preset)
    try:
        sd = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled object other than tensors: never executed
        why = [line.strip() for line in str(e).splitlines()
               if "Unsupported global" in line or "Unpickler error" in line]
        raise ValueError(f"{ckpt_path}: not a plain tensor state dict; refusing to unpickle other objects"
                         f"{' (' + why[0] + ')' if why else ''}") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{ckpt_path}: expected a state dict, got {type(sd).__name__}")
    converted = convert_official_state_dict(sd, cfg)
    sha = hashlib.sha256()
    with ckpt_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    config = {
        "model": dataclasses.asdict(cfg),
        "diffusion": dataclasses.asdict(DiffusionConfig()),
        "sample": dataclasses.asdict(SampleConfig()),  # the authors' inference: 50 respaced DDIM steps, CFG 2.0, p=0.01
        "encoders": dict(OFFICIAL_ENCODERS),
        "source": {"official_checkpoint": ckpt_path.name, "sha256": sha.hexdigest()},
    }
    logger.info("converted %s (%d tensors) for %s", ckpt_path, len(converted), preset)
    return write_model_folder(out_dir, converted, config)
