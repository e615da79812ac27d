"""The authors' block loop, kept for parity checks only (the test and ``benchmarks/bench_model.py``).

Their loop pushes the source-latent tokens through every block of every pass (without gradient),
although only MIPNet's cross-attention in the masked pass reads them. ``XMDPT`` carries them only
there; these functions run the authors' loop on the same modules, so the two can be compared.
"""

from __future__ import annotations

from typing import Optional

import torch

from xmdpt.model import XMDPT, guidance_scale
from xmdpt.model.masking import gather_tokens, random_masking


def authors_denoise(model: XMDPT, x: torch.Tensor, c: torch.Tensor, ref: torch.Tensor, *, mask_ratio: float,
                    generator: Optional[torch.Generator]) -> torch.Tensor:
    """x (N, T, D) embedded tokens, c (N, D), ref (N, T, D) -> (N, C_out, H, W), source tokens in every block."""
    tdnet = model.tdnet
    N, T, _ = x.shape
    full_index = tdnet.rel_index  # (T, T)
    masked = mask_ratio > 0
    index = full_index
    if masked:
        keep_idx, restore_idx, mask = random_masking(N, T, mask_ratio, device=x.device, generator=generator)
        x = gather_tokens(x, keep_idx)  # (N, K, D)
        index = full_index[keep_idx.unsqueeze(2), keep_idx.unsqueeze(1)]  # (N, K, K)
    context = ref.detach()  # (N, T, D)
    split = len(tdnet.blocks) - model.cfg.decode_layer
    for i, block in enumerate(tdnet.blocks):
        if i == split:
            if masked:
                x = model.mipnet(x, c, context, restore_idx, mask, tdnet.decoder_pos_embed, full_index)  # (N, T, D)
            else:
                x = x + tdnet.decoder_pos_embed  # (N, T, D)
            index = full_index
        with torch.no_grad():
            context = block(context, c, full_index)  # (N, T, D): computed and, after the split, unused
        x = block(x, c, index)  # (N, K or T, D)
    return tdnet.unpatchify(tdnet.final_layer(x, c))  # (N, C_out, H, W)


def authors_forward(model: XMDPT, x_t, t, pose_tokens, ref_tokens, ref_latent, *, mask_ratio: float = 0.0,
                    drop_cond=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """:meth:`XMDPT.forward` with the authors' loop."""
    c, ref = model.condition(t, pose_tokens, ref_tokens, ref_latent, drop_cond)  # (N, D), (N, T, D)
    return authors_denoise(model, model.tdnet.embed(x_t), c, ref, mask_ratio=mask_ratio, generator=generator)


@torch.no_grad()
def authors_forward_with_cfg(model: XMDPT, x_t, t, pose_tokens, ref_tokens, ref_latent, cfg_scale: float,
                             cfg_power: float, *, num_timesteps: int = 1000) -> torch.Tensor:
    """:meth:`XMDPT.forward_with_cfg` with the authors' loop."""
    N = x_t.shape[0]
    c_cond, ref = model.condition(t, pose_tokens, ref_tokens, ref_latent)  # (N, D), (N, T, D)
    c_null = model.tdnet.t_embed(t)  # (N, D)
    x = model.tdnet.embed(x_t)  # (N, T, D)
    out = authors_denoise(model, torch.cat([x, x]), torch.cat([c_cond, c_null]), torch.cat([ref, ref]),
                          mask_ratio=0.0, generator=None)  # (2N, C_out, H, W)
    out_c, out_u = out[:N], out[N:]
    scale = guidance_scale(t, cfg_scale, cfg_power, num_timesteps).to(out.dtype).view(N, 1, 1, 1)
    return out_u + scale * (out_c - out_u)
