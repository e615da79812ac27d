"""Import (and, for the parity test, export) the authors' released X-MDPT checkpoints.

The authors' state dict (``tests/assets/authors_state_dict_xmdpt_s2.txt``) has the same tensors
as ours under other names, plus one ``relative_position_index`` buffer per attention layer (ours is
one non-persistent buffer of the TDNet). Conversion renames keys, checks every key and shape, and
checks that each index buffer equals ours, refusing anything else with a message naming the keys.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle  # only for its error type: nothing is unpickled beyond tensors
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from xmdpt.core.config import MODEL_PRESETS, AutoencoderConfig, ConfigError, EncodersConfig, ModelConfig, XMDPTConfig
from xmdpt.model.folder import check_state_dict, write_model_folder
from xmdpt.model.layers import relative_position_index
from xmdpt.model.xmdpt import XMDPT
from xmdpt.core.storage import file_sha256
from xmdpt.encoders.dino_backbone import check_hub_reachable
from xmdpt.encoders.dino import TokenEncoder, token_spec
from xmdpt.encoders.vae import LatentCodec, check_diffusers_vae_folder, load_pretrained_vae, replace_decoder
from xmdpt.core.pipeline_folder import write_pipeline_folder

logger = logging.getLogger(__name__)

__all__ = ["convert_official_state_dict", "export_official_state_dict", "import_official", "official_key",
           "official_config", "check_preset_fits", "describe_official_checkpoint",
           "load_official_checkpoint"]

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


def describe_official_checkpoint(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture an authors' state dict was trained with, read from its tensor shapes."""
    info: dict[str, Any] = {}
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    info["depth"] = max(blocks) + 1 if blocks else None
    pe = sd.get("x_embedder.proj.weight")
    if isinstance(pe, torch.Tensor) and pe.ndim == 4:
        info["hidden_size"], info["in_channels"], info["patch_size"] = int(pe.shape[0]), int(pe.shape[1]), int(pe.shape[-1])
    pos = sd.get("pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and info.get("patch_size"):
        info["input_size"] = int(round(math.sqrt(pos.shape[1]))) * info["patch_size"]
    table = sd.get("blocks.0." + _TABLE)
    if isinstance(table, torch.Tensor) and table.ndim == 2:
        info["num_heads"] = int(table.shape[1])
    for key, name in (("mlp_dino_pose.0.weight", "pose_token_dim"), ("mlp_dino_img.0.weight", "ref_token_dim")):
        w = sd.get(key)
        if isinstance(w, torch.Tensor) and w.ndim == 2:
            info[name] = int(w.shape[1])
    return info


_ARCH_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size", "in_channels", "input_size", "pose_token_dim",
                "ref_token_dim")


def _arch_text(d: Mapping[str, Any]) -> str:
    return (f"depth {d.get('depth')}, hidden size {d.get('hidden_size')}, {d.get('num_heads')} heads, patch "
            f"{d.get('patch_size')}, latent {d.get('in_channels')}x{d.get('input_size')}x{d.get('input_size')}, "
            f"pose tokens x{d.get('pose_token_dim')}, image tokens x{d.get('ref_token_dim')}")


def check_preset_fits(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, what: str) -> None:
    """Refuse a checkpoint of another architecture, in the presets' terms (before any key-level check).

    Raises:
        ValueError: "CKPT is not an xmdpt-s/2 checkpoint: the preset has depth 12, hidden size 384, … ;
            the checkpoint has … — that is xmdpt-b/2 (--preset xmdpt-b/2)".
    """
    found = describe_official_checkpoint(sd)
    want = {k: getattr(cfg, k) for k in _ARCH_FIELDS}
    if all(found.get(k) in (None, want[k]) for k in _ARCH_FIELDS):
        return
    match = [name for name, p in MODEL_PRESETS.items()
             if all(found.get(k) is None or found.get(k) == ModelConfig.from_preset(name).__dict__[k] for k in _ARCH_FIELDS)]
    hint = (f" — that is {match[0]} (pass --preset {match[0]})" if match
            else " — no preset has this architecture")
    raise ValueError(f"{what} is not an {cfg.preset or 'custom'} checkpoint: the preset expects {_arch_text(want)}; "
                     f"the checkpoint has {_arch_text(found)}{hint}")


def load_official_checkpoint(ckpt_path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of an authors' ``.pt``; refuses anything but a plain tensor dict."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
    try:
        sd = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled object other than tensors: never executed
        why = [line.strip() for line in str(e).splitlines()
               if "Unsupported global" in line or "Unpickler error" in line]
        raise ValueError(f"{ckpt_path}: not a plain tensor state dict; refusing to unpickle other objects"
                         f"{' (' + why[0] + ')' if why else ''}") from e
    except RuntimeError as e:
        raise ValueError(f"{ckpt_path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{ckpt_path}: expected a state dict, got {type(sd).__name__}")
    return sd


def official_config(cfg: ModelConfig, *, encoders: Optional[Mapping[str, Any]] = None,
                    autoencoder: Optional[Mapping[str, Any]] = None,
                    data: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The config an imported checkpoint runs with: the authors' inference (PAPER.md §1.7-1.8), which
    is the config's defaults.

    256-px squashed frame; SD-VAE latents x 0.18215; DINOv2 ViT-g/14 source tokens and ViT-B/14 pose
    tokens at 224 px (hub position interpolation); 50 respaced DDIM steps incl. t=999, CFG 2.0 with
    power 0.01 at every step; the source latent a seeded posterior sample; bf16 on CUDA (auto).
    """
    try:
        sections = XMDPTConfig.from_dict({"encoders": dict(encoders or {}), "autoencoder": dict(autoencoder or {}),
                                          "data": dict(data or {})})
    except ConfigError as e:
        raise ConfigError(f"overrides: {e}") from None
    if sections.autoencoder.vae != "pretrained" or not sections.encoders.pretrained:
        raise ConfigError("overrides: the released checkpoints need the pretrained autoencoder and token encoders")
    return {"model": dataclasses.asdict(cfg), "diffusion": dataclasses.asdict(sections.diffusion),
            "sample": dataclasses.asdict(sections.sample), "encoders": dataclasses.asdict(sections.encoders),
            "autoencoder": dataclasses.asdict(sections.autoencoder), "data": dataclasses.asdict(sections.data)}


def _import_config(preset: str, model_overrides: Optional[Mapping[str, Any]], encoders: Optional[Mapping[str, Any]],
                   autoencoder: Mapping[str, Any], data: Optional[Mapping[str, Any]],
                   weights: Mapping[str, Optional[str | Path]]) -> tuple[ModelConfig, dict[str, Any]]:
    """The preset's model config and the folder's :func:`official_config`, with the local encoder
    weight files (which must exist) in place of the hub ids."""
    try:
        cfg = ModelConfig.from_preset(preset, **dict(model_overrides or {}))
    except TypeError as e:
        raise ConfigError(f"model overrides: {e}") from None
    enc_fields = dict(encoders or {})
    for role, w in weights.items():
        if w is not None:
            if not Path(w).is_file():
                raise FileNotFoundError(f"--{role}-encoder {w}: DINOv2 weights file not found")
            enc_fields[f"{role}_encoder_weights"] = str(w)
    return cfg, official_config(cfg, encoders=enc_fields, autoencoder=autoencoder, data=data)


def _official_codec(vae_model, vae_decoder: Optional[str | Path], ae_cfg: AutoencoderConfig, cfg: ModelConfig,
                    image_size: int) -> tuple[LatentCodec, dict[str, Any]]:
    """The SD VAE as the released checkpoints' codec, with the authors' fine-tuned decoder when given,
    checked against the preset's latent shape; and the ``decoder`` record for ``pipeline.json``."""
    decoder = {"decoder": f"{ae_cfg.pretrained_id} (the VAE's own decoder)", "decoder_finetuned": False}
    if vae_decoder is not None:
        info = replace_decoder(vae_model, vae_decoder)
        decoder = {"decoder": f"authors' fine-tuned decoder ({Path(vae_decoder).name})", "decoder_finetuned": True,
                   "decoder_sha256": info["decoder_sha256"]}
    codec = LatentCodec(vae_model, ae_cfg.latent_scale or AutoencoderConfig().latent_scale, source="pretrained")
    vae_factor = 2 ** (len(vae_model.config.block_out_channels) - 1)
    if image_size // vae_factor != cfg.input_size or codec.latent_channels != cfg.in_channels:
        raise ValueError(f"{ae_cfg.pretrained_id}: the autoencoder gives {codec.latent_channels}x"
                         f"{image_size // vae_factor}^2 latents at {image_size} px; "
                         f"{cfg.preset} needs {cfg.in_channels}x{cfg.input_size}^2")
    return codec, decoder


def _copy_token_encoders(enc_cfg: EncodersConfig, weights: Mapping[str, Optional[str | Path]], cfg: ModelConfig,
                         folder: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``(files, specs)``: the local DINOv2 weights given, loaded, checked against the preset's token
    shapes and saved as safetensors under ``folder``; the hub ids for the others."""
    files, specs = {}, {}
    for role in ("image", "pose"):
        if not weights[role]:
            specs[role] = {**token_spec(enc_cfg, role), "hub": True}
            continue
        te = TokenEncoder.from_config(enc_cfg, role)  # loads (and converts a hub layout), checks shapes
        want = (cfg.ref_num_tokens, cfg.ref_token_dim) if role == "image" else (cfg.pose_num_tokens, cfg.pose_token_dim)
        if (te.num_tokens, te.dim) != want:
            raise ValueError(f"{weights[role]}: the {role} encoder gives {te.num_tokens}x{te.dim} tokens; "
                             f"{cfg.preset} needs {want[0]}x{want[1]}")
        files[role] = te.save(str(folder / f"{role}.safetensors"))
        specs[role] = {**te.spec, "source_file": Path(weights[role]).name}
        del te
    return files, specs


def import_official(ckpt_path: str | Path, preset: str, out_dir: str | Path, *,
                    vae: Optional[str] = None, vae_decoder: Optional[str | Path] = None,
                    image_encoder_weights: Optional[str | Path] = None,
                    pose_encoder_weights: Optional[str | Path] = None,
                    model_overrides: Optional[Mapping[str, Any]] = None,
                    encoders: Optional[Mapping[str, Any]] = None,
                    autoencoder: Optional[Mapping[str, Any]] = None,
                    data: Optional[Mapping[str, Any]] = None,
                    pose_model: Optional[str | Path] = None) -> Path:
    """The authors' released checkpoint -> a complete pipeline folder (what ``generate``, ``serve`` and
    the registry read), conditioned as the authors' inference conditions it.

    Every input is checked before the checkpoint is converted or a weight is copied: the checkpoint's
    architecture against the preset (in the presets' terms), the decoder folder's layout, the encoder
    weight files, and the reachability of hub weights offline.

    Args:
        ckpt_path: e.g. the released ``ema_0.9999_300000.pt`` (a plain state dict; ``weights_only`` load).
        preset: ``xmdpt-s/2``, ``xmdpt-b/2``, ``xmdpt-l/2`` (or ``xmdpt-xl/2``).
        out_dir: the pipeline folder to write (replaced).
        vae: the SD VAE the checkpoints were trained with: a local diffusers folder, or a hub id
            (default ``stabilityai/sd-vae-ft-mse``); its encoder encodes the source.
        vae_decoder: the authors' fine-tuned decoder (their ``diffuser_finetune_vae`` folder); replaces
            the VAE's decoder. Without it the VAE's own decoder decodes; ``pipeline.json`` says which.
        image_encoder_weights / pose_encoder_weights: local DINOv2 ViT-g/14 / ViT-B/14 weights (timm
            ``model.safetensors`` or the torch-hub ``dinov2_vit*14_pretrain.pth``), copied into
            ``encoders/``; without them the folder references timm's hub ids, resolved when loading.
        model_overrides, encoders, autoencoder, data: config fields replaced (small stand-ins in tests).

    Returns:
        ``out_dir`` as a Path.
    """
    import tempfile

    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    weights = {"image": image_encoder_weights, "pose": pose_encoder_weights}
    cfg, config = _import_config(preset, model_overrides, encoders, dict(autoencoder or {}, **(
        {"pretrained_id": str(vae)} if vae else {})), data, weights)
    if vae_decoder is not None:
        check_diffusers_vae_folder(vae_decoder)
    enc_cfg = EncodersConfig(**config["encoders"])
    ae_cfg = AutoencoderConfig(**config["autoencoder"])
    for role in ("image", "pose"):  # copied into encoders/: the folder must not point at this machine's files
        config["encoders"][f"{role}_encoder_weights"] = ""
    sd = load_official_checkpoint(ckpt_path)
    check_preset_fits(sd, cfg, str(ckpt_path))
    for role in ("image", "pose"):  # fail now, not after the copies, when a hub encoder is unreachable
        if not weights[role]:
            check_hub_reachable(enc_cfg.image_encoder if role == "image" else enc_cfg.pose_encoder, role)
    vae_model = load_pretrained_vae(ae_cfg.pretrained_id)  # fails fast offline, before the conversion
    converted = convert_official_state_dict(sd, cfg)
    sha = file_sha256(ckpt_path)
    logger.info("converted %s (%d tensors) for %s", ckpt_path, len(converted), cfg.preset)

    codec, decoder = _official_codec(vae_model, vae_decoder, ae_cfg, cfg, config["data"]["image_size"])

    source = {"source": "official", "official_checkpoint": ckpt_path.name, "sha256": sha, "preset": cfg.preset,
              **decoder}
    config["source"] = source
    with tempfile.TemporaryDirectory(prefix="xmdpt-import-") as tmp:
        tmp = Path(tmp)
        model_dir = write_model_folder(tmp / "model", converted, config)
        codec.save(str(tmp / "autoencoder"), extra={k: v for k, v in decoder.items()})
        encoder_files, specs = _copy_token_encoders(enc_cfg, weights, cfg, tmp / "encoders")
        out = write_pipeline_folder(
            out_dir, model_folder=model_dir, codec_uri=str(tmp / "autoencoder"), encoder_weights=encoder_files,
            encoders=specs, standin=False, latent_scale=codec.latent_scale, lineage=source,
            extra={"source": "official", "preset": cfg.preset, "features_dtype": "float32", **decoder},
            pose_model=str(pose_model) if pose_model else None)
    logger.info("wrote pipeline folder %s from %s (%s)", out, ckpt_path, decoder["decoder"])
    return out
