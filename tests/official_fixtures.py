"""Random-init stand-ins for everything the authors' release needs, written in the real layouts:

- the authors' EMA checkpoint (their key names and per-layer index buffers, ``torch.save`` of a dict);
- ``stabilityai/sd-vae-ft-mse`` as a diffusers ``AutoencoderKL`` folder (safetensors), small but 8x
  downsampling like the real one (256 px -> 4x32x32 latents);
- the authors' ``diffuser_finetune_vae`` folder (same architecture, other weights, ``.bin`` file);
- DINOv2 weights in timm's ``model.safetensors`` layout (image role) and in the torch-hub
  ``dinov2_vit*14_pretrain.pth`` layout with ``mask_token`` (pose role); ViT-S/14 stands in for
  ViT-g/14 and ViT-B/14, so the model's token widths are 384.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCH = "vit_small_patch14_dinov2.lvd142m"
MODEL_OVERRIDES = {"hidden_size": 32, "depth": 3, "num_heads": 2, "patch_size": 4, "input_size": 32,
                   "pose_num_tokens": 257, "pose_token_dim": 384, "ref_num_tokens": 257, "ref_token_dim": 384}
ENCODERS = {"image_encoder": ARCH, "pose_encoder": ARCH}
PRESET = "xmdpt-tiny/4"


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=256,
                         scaling_factor=0.18215)


def _dino(seed: int):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, img_size=518, num_classes=0)
    with torch.no_grad():
        model.pos_embed.normal_()
    return model


def write_release(root: Path) -> dict[str, Path]:
    """Write every stand-in under ``root``; returns their paths."""
    from xmdpt.core.config import ModelConfig
    from xmdpt.model import XMDPT
    from xmdpt.release.official import export_official_state_dict

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = XMDPT(ModelConfig.from_preset(PRESET, **MODEL_OVERRIDES))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero everywhere (adaLN-Zero init would make the blocks the identity)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt = root / "ema_0.9999_300000.pt"
    torch.save(export_official_state_dict(model), ckpt)

    vae = root / "sd-vae-ft-mse"
    _vae(1).save_pretrained(vae, safe_serialization=True)
    decoder = root / "diffuser_finetune_vae"
    _vae(2).save_pretrained(decoder, safe_serialization=False)  # diffusion_pytorch_model.bin

    image = root / "dinov2_image_timm.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _dino(3).state_dict().items()}, str(image))
    pose = root / "dinov2_vits14_pretrain.pth"
    hub_sd = {k: v.clone() for k, v in _dino(4).state_dict().items()}
    hub_sd["mask_token"] = torch.zeros(1, hub_sd["cls_token"].shape[-1])  # the hub layout's extra tensor
    torch.save(hub_sd, pose)
    return {"ckpt": ckpt, "vae": vae, "decoder": decoder, "image": image, "pose": pose, "model": model}


def overrides_file(root: Path) -> Path:
    import json

    p = Path(root) / "overrides.json"
    p.write_text(json.dumps({"model": MODEL_OVERRIDES, "encoders": ENCODERS}))
    return p
