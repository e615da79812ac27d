"""The pretrained DINOv2 path reproduces the torch-hub model's tokens (PAPER.md §1.7).

The hub model keeps a 37x37 position grid (518 px) and resamples it at every forward of a 224-px
input with ``F.interpolate(bicubic, scale_factor=(16.1/37, 16.1/37), antialias=False)``. The
reference below is written out step by step from that description on a random-init ViT at 518 px;
ours is :class:`TokenEncoder` loading the same weights. timm's own resample-at-load is shown to
give different tokens, so the comparison can fail.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from xmdpt.core.config import EncodersConfig
from xmdpt.encoders.dino_backbone import hub_interpolate_pos_embed
from xmdpt.encoders.dino import TokenEncoder, prepare_image

ARCH = "vit_small_patch14_dinov2.lvd142m"


def _reference_vit518() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, img_size=518, num_classes=0).eval()
    with torch.no_grad():  # a position grid with structure at every scale (random init is ~flat)
        model.pos_embed.copy_(torch.randn_like(model.pos_embed))
    return model


@torch.no_grad()
def _hub_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the torch-hub DINOv2 computes for a 224-px input: patchify, prepend CLS, add the
    per-forward-interpolated 37x37 grid, blocks, final norm -> [CLS; patches]."""
    b = x.shape[0]
    patches = model.patch_embed.proj(x)  # (B, D, 16, 16)
    h, w = patches.shape[-2:]
    tokens = torch.cat([model.cls_token.expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    pos = model.pos_embed.float()
    m, dim = 37, pos.shape[-1]
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((w + 0.1) / m, (h + 0.1) / m), mode="bicubic", antialias=False)
    pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    tokens = tokens + pos
    for blk in model.blocks:
        tokens = blk(tokens)
    return model.norm(tokens)


def test_pretrained_path_gives_the_hub_tokens(tmp_path):
    ref = _reference_vit518()
    weights = tmp_path / "dinov2_vits14.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    enc = EncodersConfig(pretrained=True, image_encoder=ARCH, image_encoder_weights=str(weights), token_input_size=224)
    ours = TokenEncoder.from_config(enc, "image")

    torch.manual_seed(1)
    x = prepare_image(torch.rand(2, 3, 256, 256) * 2 - 1, 224)
    expected = _hub_tokens(ref, x)  # (2, 257, 384)
    got = ours(x)
    assert got.shape == expected.shape == (2, 257, 384)
    err = (got - expected).abs().max().item()
    print(f"max |ours - hub| = {err:.3g}")
    assert err < 1e-5, f"max |ours - hub| = {err}"

    # timm's pretrained route (img_size=224: the grid resampled once at load, antialiased) differs
    timm224 = timm.create_model(ARCH, pretrained=False, img_size=224, num_classes=0).eval()
    from timm.models.vision_transformer import checkpoint_filter_fn

    timm224.load_state_dict(checkpoint_filter_fn(ref.state_dict(), timm224))
    with torch.no_grad():
        other = timm224.forward_features(x)
    timm_err = (other - expected).abs().max().item()
    print(f"max |timm resample-at-load - hub| = {timm_err:.3g}")
    assert timm_err > 1e-2


def test_hub_interpolation_uses_the_scale_factor_not_the_size():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 8)
    hub = hub_interpolate_pos_embed(pos, (16, 16))
    by_size = F.interpolate(pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
                            antialias=False).permute(0, 2, 3, 1).reshape(1, 256, 8)
    assert hub.shape == (1, 257, 8)
    assert torch.equal(hub[:, :1], pos[:, :1])
    assert (hub[:, 1:] - by_size).abs().max() > 1e-3  # the 0.1 offset moves the sampling positions
    assert torch.equal(hub_interpolate_pos_embed(pos, (37, 37)), pos)  # native grid: untouched


def test_hub_layout_vitg_weights_load_into_timms_swiglu(tmp_path):
    """The torch-hub ViT-g/14 checkpoint layout (``mlp.w12``/``mlp.w3``, ``mask_token``) converts to timm's."""
    from xmdpt.encoders.dino_backbone import build_backbone

    arch = "vit_giant_patch14_dinov2.lvd142m"
    torch.manual_seed(0)
    src = timm.create_model(arch, pretrained=False, img_size=518, num_classes=0, depth=1)
    hub = {}
    for k, v in src.state_dict().items():
        hub[k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")] = v.clone()
    hub["mask_token"] = torch.zeros(1, src.embed_dim)
    assert any("mlp.w12" in k for k in hub)
    path = tmp_path / "dinov2_vitg14_pretrain.pth"
    torch.save(hub, path)
    model = build_backbone(arch, pretrained=True, img_size=224, weights=str(path), hub_pos_embed=True, depth=1)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, 257, 1536)
    # a file of another architecture is refused, naming the file
    bad = tmp_path / "other.pth"
    torch.save({k: v for k, v in hub.items() if not k.startswith("blocks.0.attn")}, bad)
    import pytest

    with pytest.raises(ValueError, match="other.pth: not DINOv2 weights of this architecture: missing"):
        build_backbone(arch, pretrained=True, img_size=224, weights=str(bad), hub_pos_embed=True, depth=1)
