"""Gaussian diffusion (IDDPM): linear beta schedule, eps (or v) prediction, learned-range variance.

The model's first C output channels predict eps (the paper) or ``v = sqrt(abar) eps - sqrt(1 - abar) x_0``
(``prediction="v"``); every consumer turns them into eps with :meth:`GaussianDiffusion.eps_from_prediction`,
so the samplers and the variational bound are the same for both.

All schedule arrays are float64 (as the authors' numpy code) and are cast to the sample's dtype
when extracted. Betas are ``linspace(beta_start, beta_end, T)`` in float64; diffusers' DDPMScheduler
computes the same schedule in float32 (checked in the tests), so it is not used for the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xmdpt.core.config import PREDICTIONS, DiffusionConfig

__all__ = ["GaussianDiffusion"]


def _extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr (T,) float64, t (N,) -> (N, 1, ..., 1) in ``like``'s dtype/device."""
    out = arr.to(t.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


@dataclass
class GaussianDiffusion:
    betas: torch.Tensor  # (T,) float64
    prediction: str = "eps"  # eps | v: what the model's first C output channels are

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {list(PREDICTIONS)}")
        b = self.betas.double()
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor in (0, 1]")
        self.betas = b
        self.num_timesteps = len(b)
        alphas = 1.0 - b
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log of the variance, clipped because it is 0 at t = 0
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = b * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "GaussianDiffusion":
        return cls(torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_timesteps, dtype=torch.float64),
                   prediction=cfg.prediction)

    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise; x_0, noise (N, ...), t (N,)."""
        return _extract(self.sqrt_alphas_cumprod, t, x_0) * x_0 + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_0) * noise

    def q_posterior(self, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x_0 + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def prediction_target(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model learns to predict for ``x_t = q_sample(x_0, t, noise)``: ``noise`` (eps) or
        ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0``."""
        if self.prediction == "eps":
            return noise
        return _extract(self.sqrt_alphas_cumprod, t, x_0) * noise - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_0) * x_0

    def eps_from_prediction(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The eps estimate of a model prediction (N, C, ...) at ``x_t``, ``t`` (N,): itself, or for v
        ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``. Linear in ``pred``, so guidance may combine
        predictions before or after it."""
        if self.prediction == "eps":
            return pred
        return _extract(self.sqrt_alphas_cumprod, t, x_t) * pred + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

    def x0_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) factor turning the MSE of a prediction at ``t`` into the MSE of the x_0 it implies:
        ``1 / SNR`` for eps, ``1 - abar = 1 / (1 + SNR)`` for v."""
        ab = self.alphas_cumprod.to(t.device)[t]
        return ((1.0 - ab) / ab if self.prediction == "eps" else 1.0 - ab).float()

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(x_{t-1} | x_t) from a learned-range output.

        Args:
            model_output: (N, 2C, H, W) = [eps, v], v in [-1, 1] interpolates the log-variance between
                the clipped posterior variance (v = -1) and beta_t (v = 1).
        Returns:
            mean, log_variance, pred_x0, each (N, C, H, W).
        """
        eps, v = model_output.chunk(2, dim=1)
        min_log = _extract(self.posterior_log_variance_clipped, t, x_t)
        max_log = _extract(torch.log(self.betas), t, x_t)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0 = self.predict_x0(x_t, t, eps)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return mean, log_variance, pred_x0
