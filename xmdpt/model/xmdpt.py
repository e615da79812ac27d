"""X-MDPT = TDNet (denoiser) + CANet (condition aggregation) + MIPNet (masked side-interpolator).

The denoiser is conditioned only through adaLN on ``c = t_emb + y``, where ``y`` is CANet's summary
of the target pose tokens, the source-image tokens and the source-latent tokens (which share the
denoiser's patch embedding). In the masked training pass, MIPNet at block ``depth - decode_layer``
fills the dropped tokens in, attending to the source-latent tokens carried through the encoder blocks.

The source-latent tokens are carried through blocks only where something reads them: the encoder
blocks of a masked pass. The authors' loop carries them through every block of every pass (no
gradient) with the same output; it lives in ``tests/model/authors_loop.py`` for the parity test and
``benchmarks/bench_model.py``.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
from torch import nn

from xmdpt.core.config import ModelConfig
from xmdpt.model.canet import CANet
from xmdpt.model.masking import gather_tokens, random_masking
from xmdpt.model.mipnet import MIPNet
from xmdpt.model.tdnet import TDNet

logger = logging.getLogger(__name__)

__all__ = ["XMDPT", "guidance_scale"]


def guidance_scale(t: torch.Tensor | float, cfg_scale: float, cfg_power: float,
                   num_timesteps: int = 1000) -> torch.Tensor | float:
    """MDT's power-cosine guidance schedule.

    ``s_t = (cfg_scale - 1) * (1 - cos(pi * (1 - t / T) ** p)) / 2 + 1``: 1 at t = T, ``cfg_scale``
    at t = 0; a large power p keeps the scale near 1 for longer, p -> 0 makes it constant.

    Args:
        t: original (not respaced) timesteps, a float or a tensor of any shape.
    """
    if isinstance(t, torch.Tensor):
        frac = (1 - t.double() / num_timesteps) ** cfg_power
        step = (1 - torch.cos(math.pi * frac)) / 2
    else:
        step = (1 - math.cos(math.pi * (1 - t / num_timesteps) ** cfg_power)) / 2
    return (cfg_scale - 1) * step + 1


class XMDPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tdnet = TDNet(cfg)
        self.canet = CANet(cfg)
        self.mipnet = MIPNet(cfg)
        self.reset_parameters()

    # ---------------------------------------------------------------- init
    def reset_parameters(self) -> None:
        """DiT/MDT init: xavier-uniform Linears (bias 0), then the per-part rules (adaLN-Zero,
        sin-cos position embeddings, CANet normal(0.02), mask token and relative-position tables
        normal/trunc-normal(0.02))."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.tdnet.reset_parameters()
        self.canet.reset_parameters()
        for block in (self.mipnet.self_block, self.mipnet.cross_block):
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.normal_(self.mipnet.mask_token, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("rel_pos_table"):
                nn.init.trunc_normal_(p, std=0.02)

    # ---------------------------------------------------------------- inputs
    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, pose_tokens: torch.Tensor,
                      ref_tokens: torch.Tensor, ref_latent: torch.Tensor, drop_cond: Optional[torch.Tensor]) -> None:
        cfg = self.cfg
        N = x_t.shape[0]
        expected = {
            "x_t": (x_t, (N, cfg.in_channels, cfg.input_size, cfg.input_size)),
            "t": (t, (N,)),
            "pose_tokens": (pose_tokens, (N, cfg.pose_num_tokens, cfg.pose_token_dim)),
            "ref_tokens": (ref_tokens, (N, cfg.ref_num_tokens, cfg.ref_token_dim)),
            "ref_latent": (ref_latent, (N, cfg.in_channels, cfg.input_size, cfg.input_size)),
        }
        if drop_cond is not None:
            expected["drop_cond"] = (drop_cond, (N,))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
        if drop_cond is not None and drop_cond.dtype != torch.bool:
            raise ValueError(f"drop_cond: expected a bool tensor, got {drop_cond.dtype}")

    def summarize_conditions(self, pose_tokens: torch.Tensor, ref_tokens: torch.Tensor,
                             ref_latent: torch.Tensor) -> torch.Tensor:
        """CANet's summary ``y`` (N, D) of the conditions. It does not depend on t: a sampler computes
        it once and passes it to every step (``forward(..., y=y)``, ``forward_with_cfg(..., y=y)``)."""
        return self.canet(pose_tokens, ref_tokens, self.tdnet.embed(ref_latent))  # (N, D)

    def rel_pos_biases(self) -> tuple[torch.Tensor, ...]:
        """Each TDNet block's relative-position bias on the full token grid, (H, T, T) per block. It
        does not depend on t or the batch: a sampler computes it once and passes it to every step
        (``forward(..., biases=b)``, ``forward_with_cfg(..., biases=b)``); the same values as
        computing it in each attention."""
        index = self.tdnet.rel_index  # (T, T)
        return tuple(block.attn.rel_pos_bias(index) for block in self.tdnet.blocks)

    def condition(self, t: torch.Tensor, pose_tokens: torch.Tensor, ref_tokens: torch.Tensor,
                  ref_latent: torch.Tensor, drop_cond: Optional[torch.Tensor] = None,
                  y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The conditioning vector and the source-latent tokens.

        Args:
            drop_cond: (N,) bool, True -> the null condition ``y = 0`` for that sample.
            y: (N, D) :meth:`summarize_conditions` of these conditions, when already computed.
        Returns:
            c: (N, D) = t_emb + y; ref: (N, T, D) source-latent tokens (shared patch embedding), None
            when ``y`` was given.
        """
        ref = None
        if y is None:
            ref = self.tdnet.embed(ref_latent)  # (N, T, D)
            y = self.canet(pose_tokens, ref_tokens, ref)  # (N, D)
        if drop_cond is not None:
            y = torch.where(drop_cond.unsqueeze(1), torch.zeros_like(y), y)  # (N, D)
        return self.tdnet.t_embed(t) + y, ref

    # ---------------------------------------------------------------- forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, pose_tokens: torch.Tensor, ref_tokens: torch.Tensor,
                ref_latent: torch.Tensor, *, mask_ratio: float = 0.0, drop_cond: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, y: Optional[torch.Tensor] = None,
                biases: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Predict eps (and the variance interpolation v) for noisy latents.

        Args:
            x_t: (N, C, H, W) noisy target latents.
            t: (N,) int64 timesteps in [0, T).
            pose_tokens: (N, Sp, Dp) target-pose tokens; ref_tokens: (N, Sr, Dr) source-image tokens.
            ref_latent: (N, C, H, W) source latent.
            mask_ratio: > 0 runs the masked (MIPNet) pass, dropping ``T - int(T * (1 - mask_ratio))`` tokens.
            drop_cond: (N,) bool, True -> null condition (CFG dropout; the training step passes it).
            generator: for the mask draw.
            y: (N, D) :meth:`summarize_conditions` of these conditions, when already computed.
            biases: :meth:`rel_pos_biases`, when already computed (not read by the masked pass).
        Returns:
            (N, C_out, H, W), C_out = 2C with ``learn_sigma``.
        """
        self._check_inputs(x_t, t, pose_tokens, ref_tokens, ref_latent, drop_cond)
        c, ref = self.condition(t, pose_tokens, ref_tokens, ref_latent, drop_cond, y)  # (N, D), (N, T, D) or None
        if ref is None and mask_ratio > 0:
            ref = self.tdnet.embed(ref_latent)  # (N, T, D)
        x = self.tdnet.embed(x_t)  # (N, T, D)
        return self._denoise(x, c, ref, mask_ratio=mask_ratio, generator=generator, biases=biases)

    def _denoise(self, x: torch.Tensor, c: torch.Tensor, ref: Optional[torch.Tensor], *, mask_ratio: float,
                 generator: Optional[torch.Generator],
                 biases: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Block loop: x (N, T, D), c (N, D), ref (N, T, D; read by the masked pass only), biases
        (:meth:`rel_pos_biases`; the unmasked pass only) -> (N, C_out, H, W)."""
        tdnet = self.tdnet
        N, T, _ = x.shape
        full_index = tdnet.rel_index  # (T, T)
        masked = mask_ratio > 0
        if masked or biases is None:
            biases = [None] * len(tdnet.blocks)
        index = full_index
        if masked:
            keep_idx, restore_idx, mask = random_masking(N, T, mask_ratio, device=x.device, generator=generator)
            x = gather_tokens(x, keep_idx)  # (N, K, D)
            index = full_index[keep_idx.unsqueeze(2), keep_idx.unsqueeze(1)]  # (N, K, K)
        # Source tokens are read only by MIPNet's cross-attention (masked pass, encoder blocks).
        context = ref.detach() if masked else None  # (N, T, D)
        split = len(tdnet.blocks) - self.cfg.decode_layer
        for i, block in enumerate(tdnet.blocks):
            if i == split:
                if masked:
                    x = self.mipnet(x, c, context, restore_idx, mask, tdnet.decoder_pos_embed, full_index)  # (N, T, D)
                else:
                    x = x + tdnet.decoder_pos_embed  # (N, T, D)
                index = full_index
                context = None
            if context is not None:
                with torch.no_grad():
                    context = block(context, c, full_index)  # (N, T, D)
            x = block(x, c, index, bias=biases[i])  # (N, K or T, D)
        return tdnet.unpatchify(tdnet.final_layer(x, c))  # (N, C_out, H, W)

    @torch.no_grad()
    def forward_with_cfg(self, x_t: torch.Tensor, t: torch.Tensor, pose_tokens: torch.Tensor,
                         ref_tokens: torch.Tensor, ref_latent: torch.Tensor, cfg_scale: float, cfg_power: float,
                         *, num_timesteps: int = 1000, y: Optional[torch.Tensor] = None,
                         biases: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Classifier-free guidance in one batched forward of 2N (conditional | null condition).

        ``out = out_u + s_t * (out_c - out_u)`` on all output channels, ``s_t = guidance_scale(t, ...)``.
        CANet runs once on the N conditions (the null half only needs ``y = 0``).

        Args:
            x_t: (N, C, H, W); t: (N,) original timesteps; conditions, ``y`` and ``biases`` as in :meth:`forward`.
        Returns:
            (N, C_out, H, W).
        """
        self._check_inputs(x_t, t, pose_tokens, ref_tokens, ref_latent, None)
        N = x_t.shape[0]
        if y is None:
            y = self.summarize_conditions(pose_tokens, ref_tokens, ref_latent)  # (N, D)
        t_emb = self.tdnet.t_embed(t)  # (N, D)
        c_cond, c_null = t_emb + y, t_emb  # the null condition: y = 0
        x = self.tdnet.embed(x_t)  # (N, T, D)
        out = self._denoise(torch.cat([x, x]), torch.cat([c_cond, c_null]), None,
                            mask_ratio=0.0, generator=None, biases=biases)  # (2N, C_out, H, W)
        out_c, out_u = out[:N], out[N:]
        scale = guidance_scale(t, cfg_scale, cfg_power, num_timesteps).to(out.dtype).view(N, 1, 1, 1)  # (N, 1, 1, 1)
        return out_u + scale * (out_c - out_u)

    # ---------------------------------------------------------------- counting
    def num_parameters(self, inference_only: bool = False) -> int:
        """All parameters, or the inference path (without MIPNet's two blocks and the mask token)."""
        total = sum(p.numel() for p in self.parameters())
        if inference_only:
            total -= sum(p.numel() for p in self.mipnet.parameters())
        return total
