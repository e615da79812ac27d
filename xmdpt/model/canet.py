"""CANet — the Conditions Aggregation Network of X-MDPT.

Three condition streams are each reduced to one D-vector, summed and passed through a final MLP:

- pose: DINOv2 tokens of the rendered target skeleton (N, Sp, Dp),
- global appearance: DINOv2 tokens of the source image (N, Sr, Dr),
- local appearance: source-latent tokens from the denoiser's shared patch embedding (N, T, D).

Each stream is a per-token MLP (Linear -> GELU -> LayerNorm; the latent stream is already D wide)
followed by a learned weighted sum over the token axis (a k=1 ``Conv1d`` whose channels are the
tokens) -> GELU -> LayerNorm. The output ``y`` (N, D) is added to the timestep embedding. The null
condition for classifier-free guidance is ``y = 0`` (applied by the caller, see ``XMDPT``).
"""

from __future__ import annotations

import torch
from torch import nn

from xmdpt.core.config import ModelConfig
from xmdpt.model.layers import TokenPool, VectorLinear

__all__ = ["CANet"]

_LN_EPS = 1e-12  # the authors' condition LayerNorms


def _token_mlp(in_dim: int, dim: int, linear: type[nn.Linear] = nn.Linear) -> nn.Sequential:
    return nn.Sequential(linear(in_dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=_LN_EPS))


def _token_pool(num_tokens: int, dim: int) -> nn.Sequential:
    """(N, S, D) -> (N, 1, D): learned weighted sum of the S tokens (+ bias), GELU, LayerNorm."""
    return nn.Sequential(TokenPool(num_tokens), nn.GELU(), nn.LayerNorm(dim, eps=_LN_EPS))


class CANet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        num_latent_tokens = (cfg.input_size // cfg.patch_size) ** 2
        self.pose_proj = _token_mlp(cfg.pose_token_dim, D)
        self.ref_proj = _token_mlp(cfg.ref_token_dim, D)
        self.pose_pool = _token_pool(cfg.pose_num_tokens, D)
        self.ref_pool = _token_pool(cfg.ref_num_tokens, D)
        self.latent_pool = _token_pool(num_latent_tokens, D)
        self.out_mlp = _token_mlp(D, D, VectorLinear)  # on (N, D) vectors

    def reset_parameters(self) -> None:
        """The authors' init on top of the model-wide xavier: normal(0.02) for the first Linears and
        the pooling weights (pooling biases keep PyTorch's default)."""
        for layer in (self.pose_proj[0], self.ref_proj[0], self.out_mlp[0],
                      self.pose_pool[0], self.ref_pool[0], self.latent_pool[0]):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, pose_tokens: torch.Tensor, ref_tokens: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pose_tokens: (N, Sp, Dp); ref_tokens: (N, Sr, Dr); latent_tokens: (N, T, D).
        Returns:
            y: (N, D).
        """
        y_pose = self.pose_pool(self.pose_proj(pose_tokens))  # (N, 1, D)
        y_ref = self.ref_pool(self.ref_proj(ref_tokens))  # (N, 1, D)
        y_latent = self.latent_pool(latent_tokens)  # (N, 1, D)
        return self.out_mlp((y_pose + y_ref + y_latent).squeeze(1))  # (N, D)
