"""MAE/MDT-style random token masking (per-sample shuffle, keep the first K)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["random_masking", "gather_tokens", "num_kept"]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept by :func:`random_masking`: ``int(T * (1 - mask_ratio))`` (256, 0.3 -> 179)."""
    return int(num_tokens * (1 - mask_ratio))


def random_masking(batch: int, num_tokens: int, mask_ratio: float, *, device: torch.device | str = "cpu",
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a random subset of tokens to keep for every sample.

    Returns:
        keep_idx: (N, K) int64, the kept token positions (in shuffled order).
        restore_idx: (N, T) int64, ``gather(cat(kept, masked), restore_idx)`` restores grid order.
        mask: (N, T) float, 1 where the token is masked.
    """
    keep = num_kept(num_tokens, mask_ratio)
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)  # (N, T)
    shuffle_idx = noise.argsort(dim=1)  # (N, T)
    restore_idx = shuffle_idx.argsort(dim=1)  # (N, T)
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :keep] = 0
    return shuffle_idx[:, :keep], restore_idx, mask.gather(1, restore_idx)


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (N, T, D), idx (N, K) -> (N, K, D)."""
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
