"""Building blocks of the X-MDPT transformer: embeddings, attention with a relative-position bias,
adaLN-Zero blocks and the final layer.

Shapes use DiT's letters: N batch, T tokens (grid G x G), K kept tokens, D hidden, H heads.
Attention runs through ``F.scaled_dot_product_attention`` with the learnable BEiT-style relative
position bias passed as a float ``attn_mask`` (on CPU in fp32 through :func:`math_attention`, the same
values); no precision is chosen here (the caller may autocast).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xmdpt.core.batch_invariance import VECTOR_MIN_ROWS, conv_batches, pad_rows

__all__ = [
    "modulate",
    "sincos_pos_embed_2d",
    "relative_position_index",
    "num_relative_positions",
    "math_attention",
    "VectorLinear",
    "TokenPool",
    "TimestepEmbedder",
    "Attention",
    "Mlp",
    "TransformerBlock",
    "FinalLayer",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` of tokens (N, T, D) by vectors (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos embedding of a row-major ``grid_size`` x ``grid_size`` grid.

    The first half of the channels encodes the column (x), the second half the row (y); each half
    is ``[sin(pos * w), cos(pos * w)]`` with ``w_k = 10000^(-k / (dim / 4))``.

    Returns:
        (grid_size**2, dim) float32.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (T, D/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (T, D/2)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()  # (T, D)


def num_relative_positions(grid_size: int) -> int:
    """Rows of a BEiT relative-position table: (2G-1)^2 offsets + 3 (cls entries, unused here)."""
    return (2 * grid_size - 1) ** 2 + 3


def relative_position_index(grid_size: int) -> torch.Tensor:
    """``index[i, j] = (dy + G-1) * (2G-1) + (dx + G-1)`` for row-major tokens i, j of a G x G grid,
    with ``dy = y_i - y_j`` and ``dx = x_i - x_j``.

    Returns:
        (T, T) int64, T = G^2.
    """
    coords = torch.arange(grid_size)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (T,)
    dy = ys[:, None] - ys[None, :] + grid_size - 1  # (T, T)
    dx = xs[:, None] - xs[None, :] + grid_size - 1  # (T, T)
    return dy * (2 * grid_size - 1) + dx


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=bias)`` computed as its math backend does (the
    backend it picks on CPU for a 3-D float mask: the same values), without that backend's check for
    rows masked to -inf everywhere, which a finite bias never has (half the time at 64 tokens).

    Args:
        q: (N, H, Tq, Dh); k, v: (N, H, Tk, Dh); bias: (H, Tq, Tk) finite.
    Returns:
        (N, H, Tq, Dh).
    """
    scale = math.sqrt(1.0 / math.sqrt(q.shape[-1]))  # the softmax scale 1/sqrt(Dh), split between q and k
    attn = torch.matmul(q * scale, k.transpose(-2, -1) * scale)  # (N, H, Tq, Tk)
    attn.add_(bias)
    return torch.matmul(attn.softmax(-1), v)


class VectorLinear(nn.Linear):
    """``nn.Linear`` for per-sample vectors (N, in) -- the timestep MLP, the adaLN modulations, CANet's
    output MLP -- computed on at least ``VECTOR_MIN_ROWS`` rows (:func:`xmdpt.core.batch_invariance.pad_rows`),
    so that a sample's output does not depend on the size of its batch. Parameters and state-dict
    keys are ``nn.Linear``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return super().forward(x)
        return pad_rows(super().forward, x, VECTOR_MIN_ROWS)  # (N, out)


class TokenPool(nn.Conv1d):
    """A learned weighted sum over the token axis, (N, S, D) -> (N, 1, D): a k=1 ``Conv1d`` whose
    channels are the S tokens, run on batches of 2 to ``CONV_MAX_BATCH`` samples on CPU
    (:func:`xmdpt.core.batch_invariance.conv_batches`). Parameters and state-dict keys are ``nn.Conv1d``'s."""

    def __init__(self, num_tokens: int) -> None:
        super().__init__(num_tokens, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_batches(super().forward, x)  # (N, 1, D)


class TimestepEmbedder(nn.Module):
    """Integer timesteps -> (N, D): 256-d sinusoid ``[cos, sin]`` then Linear-SiLU-Linear (DiT)."""

    def __init__(self, hidden_size: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(VectorLinear(freq_dim, hidden_size), nn.SiLU(), VectorLinear(hidden_size, hidden_size))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (N, dim/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))  # (N, D)


class Attention(nn.Module):
    """Multi-head attention with a learnable relative-position bias; cross-attention when built with
    ``cross=True`` (queries from ``x``, keys/values from ``context`` on the same token grid).

    Self-attention projects ``[q | k | v]`` with one Linear (heads contiguous inside each part);
    cross-attention uses ``q`` (D -> D) on ``x`` and ``kv`` (D -> 2D, ``[k | v]``) on ``context``.
    """

    def __init__(self, dim: int, num_heads: int, num_rel: int, cross: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_table = nn.Parameter(torch.zeros(num_rel, num_heads))  # (R, H)

    def rel_pos_bias(self, index: torch.Tensor) -> torch.Tensor:
        """Bias for an index (Tq, Tk) -> (H, Tq, Tk), or a per-sample index (N, Tq, Tk) -> (N, H, Tq, Tk)."""
        return self.rel_pos_table[index].movedim(-1, -3)

    def forward(self, x: torch.Tensor, rel_index: torch.Tensor, context: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (N, Tq, D) query tokens.
            rel_index: (Tq, Tk) or (N, Tq, Tk) int64 rows of ``rel_pos_table``.
            context: (N, Tk, D) key/value tokens; required iff the layer is cross-attention.
            bias: ``rel_pos_bias(rel_index)`` when already computed (a sampler computes it once per
                call: it does not depend on the step); None computes it here.
        Returns:
            (N, Tq, D).
        """
        if self.cross != (context is not None):
            raise ValueError("cross-attention needs `context`; self-attention takes none")
        N, Tq, D = x.shape
        heads = self.num_heads
        if self.cross:
            q = self.q(x).unflatten(-1, (heads, D // heads)).transpose(1, 2)  # (N, H, Tq, Dh)
            k, v = self.kv(context).unflatten(-1, (2, heads, D // heads)).permute(2, 0, 3, 1, 4)  # (N, H, Tk, Dh) each
        else:
            q, k, v = self.qkv(x).unflatten(-1, (3, heads, D // heads)).permute(2, 0, 3, 1, 4)  # (N, H, T, Dh) each
        bias = (self.rel_pos_bias(rel_index) if bias is None else bias).to(q.dtype)  # (H, Tq, Tk) or (N, H, Tq, Tk)
        if bias.dim() == 3 and q.device.type == "cpu" and q.dtype == torch.float32:
            out = math_attention(q, k, v, bias)  # (N, H, Tq, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (N, H, Tq, Dh)
        return self.proj(out.transpose(1, 2).reshape(N, Tq, D))  # (N, Tq, D)


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (timm's ``Mlp`` as DiT uses it)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """adaLN-Zero block: ``x += g1 * Attn(mod(LN(x)))``, ``x += g2 * MLP(mod(LN(x)))``, where shift,
    scale and gate of both branches come from ``Linear(SiLU(c))`` (zero-initialised)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_rel: int, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, num_rel, cross=cross)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulation = nn.Sequential(nn.SiLU(), VectorLinear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rel_index: torch.Tensor,
                context: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (N, T, D), c (N, D), rel_index (T, T) or (N, T, T), context (N, T', D), bias: the
        attention's ``rel_pos_bias(rel_index)`` when already computed -> (N, T, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rel_index, context,
                                                  bias)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """LN (no affine) -> adaLN shift/scale -> Linear(D, P*P*C_out)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.modulation = nn.Sequential(nn.SiLU(), VectorLinear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, T, P*P*C_out)
