"""MIPNet — the Mask Inter-Prediction Network of X-MDPT (training only).

In the masked training pass the encoder sees only the kept target tokens. At the encoder/decoder
boundary the side-interpolator fills the grid back in:

1. append the learnable ``mask_token`` for every dropped position, restore grid order, add the
   decoder position embedding -> ``x_before`` (N, T, D);
2. one self-attention block over all T tokens;
3. one cross-attention block whose keys/values are the source-latent tokens carried (without
   gradient) through the same encoder blocks;
4. masked shortcut: masked positions take the interpolator output, visible ones keep ``x_before``.

It is not used at inference, so its parameters are not part of the "inference path".
"""

from __future__ import annotations

import torch
from torch import nn

from xmdpt.core.config import ModelConfig
from xmdpt.model.layers import TransformerBlock, num_relative_positions

__all__ = ["MIPNet"]


class MIPNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        num_rel = num_relative_positions(cfg.input_size // cfg.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.self_block = TransformerBlock(D, cfg.num_heads, cfg.mlp_ratio, num_rel)
        self.cross_block = TransformerBlock(D, cfg.num_heads, cfg.mlp_ratio, num_rel, cross=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, restore_idx: torch.Tensor,
                mask: torch.Tensor, decoder_pos_embed: torch.Tensor, rel_index: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, K, D) kept tokens after the encoder blocks.
            c: (N, D) conditioning vector.
            context: (N, T, D) source-latent tokens after the encoder blocks (no gradient).
            restore_idx: (N, T) from ``random_masking``; mask: (N, T), 1 = masked.
            decoder_pos_embed: (1, T, D); rel_index: (T, T) relative-position index of the full grid.
        Returns:
            (N, T, D) tokens in grid order.
        """
        N, K, D = x.shape
        T = restore_idx.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(N, T - K, D)], dim=1)  # (N, T, D), shuffled order
        x = x.gather(1, restore_idx.unsqueeze(-1).expand(-1, -1, D))  # (N, T, D), grid order
        x_before = x + decoder_pos_embed  # (N, T, D)
        x = self.self_block(x_before, c, rel_index)  # (N, T, D)
        x = self.cross_block(x, c, rel_index, context=context)  # (N, T, D)
        m = mask.unsqueeze(-1).to(x.dtype)  # (N, T, 1)
        return m * x + (1 - m) * x_before
