"""TDNet — the Transformer Denoising Network of X-MDPT (a DiT/MDT-style denoiser on VAE latents).

Latent (N, C, H, W) -> patch embedding (P x P) + learnable absolute position embedding -> ``depth``
adaLN-Zero blocks with a learnable relative-position bias in every attention -> final layer ->
(N, C_out, H, W) with ``C_out = 2C`` when ``learn_sigma`` (eps and the variance interpolation v).
The last ``decode_layer`` blocks are the decoder; the learnable ``decoder_pos_embed`` is added at
the boundary. Both position embeddings start as 2-D sin-cos. The block loop itself (masking, MIPNet,
source-token carrying) lives in :class:`xmdpt.model.XMDPT`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from xmdpt.core.config import ModelConfig
from xmdpt.model.layers import (FinalLayer, TimestepEmbedder, TransformerBlock, num_relative_positions,
                                relative_position_index, sincos_pos_embed_2d)

__all__ = ["TDNet"]


class TDNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, P = cfg.hidden_size, cfg.patch_size
        self.patch_size = P
        self.grid_size = cfg.input_size // P
        self.out_channels = 2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels
        num_tokens = self.grid_size ** 2
        num_rel = num_relative_positions(self.grid_size)
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, kernel_size=P, stride=P)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, D))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, D))
        self.t_embed = TimestepEmbedder(D)
        self.blocks = nn.ModuleList(TransformerBlock(D, cfg.num_heads, cfg.mlp_ratio, num_rel) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, P, self.out_channels)
        # Shared by every attention (the authors store one identical copy per layer; see official.py).
        self.register_buffer("rel_index", relative_position_index(self.grid_size), persistent=False)  # (T, T)

    def reset_parameters(self) -> None:
        """Sin-cos position embeddings, patch embedding as a xavier Linear, timestep MLP normal(0.02),
        zero adaLN outputs and final Linear (adaLN-Zero). Expects the model-wide xavier already done."""
        D = self.pos_embed.shape[-1]
        with torch.no_grad():
            pe = sincos_pos_embed_2d(D, self.grid_size).to(self.pos_embed.device).unsqueeze(0)  # (1, T, D)
            self.pos_embed.copy_(pe)
            self.decoder_pos_embed.copy_(pe)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final_layer.modulation[-1].weight)
        nn.init.zeros_(self.final_layer.modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, T, D): patch embedding + absolute position embedding."""
        return rearrange(self.patch_embed(latent), "n d h w -> n (h w) d") + self.pos_embed  # (N, T, D)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, P*P*C_out) -> (N, C_out, H, W)."""
        P = self.patch_size
        return rearrange(tokens, "n (h w) (p q c) -> n c (h p) (w q)", h=self.grid_size, p=P, q=P)
