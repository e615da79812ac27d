"""Tiny X-MDPT configs, inputs and random weights shared by the model/diffusion behaviour tests."""

from __future__ import annotations

import torch

from xmdpt.core.config import ModelConfig
from xmdpt.model import XMDPT


def tiny_config(preset: str = "xmdpt-tiny/2", **overrides) -> ModelConfig:
    small = dict(hidden_size=32, depth=3, num_heads=2, input_size=8, pose_num_tokens=5, pose_token_dim=24,
                 ref_num_tokens=6, ref_token_dim=20)
    return ModelConfig.from_preset(preset, **{**small, **overrides})


def make_inputs(cfg: ModelConfig, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H = cfg.input_size
    return {
        "x_t": torch.randn(n, cfg.in_channels, H, H, generator=g),
        "t": torch.randint(0, 1000, (n,), generator=g),
        "pose_tokens": torch.randn(n, cfg.pose_num_tokens, cfg.pose_token_dim, generator=g),
        "ref_tokens": torch.randn(n, cfg.ref_num_tokens, cfg.ref_token_dim, generator=g),
        "ref_latent": torch.randn(n, cfg.in_channels, H, H, generator=g),
    }


def randomize(model: XMDPT, seed: int = 0, std: float = 0.2) -> XMDPT:
    """Non-zero weights everywhere (adaLN-Zero init would make every block the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()
