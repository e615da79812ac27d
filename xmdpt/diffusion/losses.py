"""Training objective: eps-MSE + the learned-range variational bound, on an unmasked and a masked pass.

Per pass and sample: ``w(t) * mean((eps - eps_hat)^2) + vb`` (with ``diffusion.prediction == "v"`` the
MSE is that of v), where ``vb`` (bits/dim) is
KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the discretised-Gaussian decoder NLL at t = 0,
computed with eps_hat detached so that only the variance channels learn from it (IDDPM's hybrid loss).
``w(t) = 1`` is the paper's objective; ``min_snr_gamma`` gives Min-SNR-gamma weighting
(Hang et al., 2023) for eps prediction, ``w(t) = min(SNR(t), gamma) / SNR(t)``, which stops the
many nearly-clean timesteps from dominating the gradient of a short run. ``mse_space="x0"`` (v
prediction) weighs each sample's MSE by ``1 - abar_t``, which makes it the MSE of the x_0 the
prediction implies, the same at every noise level: an eps-MSE weighs that x_0 error by SNR(t), so at
t = 600 (SNR 0.026) the conditions, which decide there what x_0 looks like, hardly reach the loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from xmdpt.core.config_stages import MSE_SPACES
from xmdpt.diffusion.gaussian import GaussianDiffusion

__all__ = ["training_losses", "min_snr_weight", "vb_terms", "normal_kl", "discretized_gaussian_log_likelihood"]


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-likelihood (nats) of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)),
    with the edge bins extended to +-inf (IDDPM's decoder term; uses the tanh approximation of the normal CDF)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms(diffusion: GaussianDiffusion, model_output: torch.Tensor, x_0: torch.Tensor, x_t: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
    """Variational-bound term per sample, in bits/dim.

    Args:
        model_output: (N, 2C, H, W) [eps, v] (detach eps before calling to train only v).
        x_0, x_t: (N, C, H, W); t: (N,).
    Returns:
        (N,): KL for t > 0, decoder NLL for t == 0.
    """
    true_mean, true_log_var = diffusion.q_posterior(x_0, x_t, t)
    mean, log_var, _ = diffusion.p_mean_variance(model_output, x_t, t)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x_0, mean, 0.5 * log_var)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def min_snr_weight(diffusion: GaussianDiffusion, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """(N,) Min-SNR-gamma weight of the eps-MSE at timesteps ``t``: ``min(SNR, gamma) / SNR``."""
    ab = diffusion.alphas_cumprod.to(t.device)[t]  # (N,) float64
    snr = ab / (1.0 - ab)
    return (snr.clamp(max=gamma) / snr).float()


def sample_timesteps(n: int, num_timesteps: int, *, device: torch.device | str = "cpu",
                     generator: Optional[torch.Generator] = None,
                     logit_normal: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """(n,) int64 training timesteps in [0, T).

    Uniform (the paper), or logit-normal (Esser et al. 2024): ``t = floor(T * sigmoid(m + s * n))``
    with ``n ~ N(0, 1)``; ``m > 0`` moves the draws toward high noise, where the layout of the image
    (and so the pose) is decided.
    """
    if logit_normal is None:
        return torch.randint(0, num_timesteps, (n,), device=device, generator=generator)
    m, s = logit_normal
    u = torch.sigmoid(m + s * torch.randn(n, device=device, generator=generator))  # (n,) in (0, 1)
    return (u * num_timesteps).long().clamp_(0, num_timesteps - 1)


def _pass_losses(model, diffusion: GaussianDiffusion, x_0: torch.Tensor, t: torch.Tensor, cond: dict,
                 cond_drop_prob: float, mask_ratio: float, generator: Optional[torch.Generator],
                 mse_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    N = x_0.shape[0]
    noise = torch.randn(x_0.shape, device=x_0.device, dtype=x_0.dtype, generator=generator)
    drop_cond = torch.rand(N, device=x_0.device, generator=generator) < cond_drop_prob  # (N,)
    x_t = diffusion.q_sample(x_0, t, noise)
    out = model(x_t, t, cond["pose_tokens"], cond["ref_tokens"], cond["ref_latent"],
                mask_ratio=mask_ratio, drop_cond=drop_cond, generator=generator)  # (N, 2C, H, W)
    pred, var = out.float().chunk(2, dim=1)  # eps or v; the variance interpolation
    target = diffusion.prediction_target(x_0.float(), noise.float(), t)
    mse = _mean_flat((target - pred) ** 2)  # (N,)
    if mse_weight is not None:
        mse = mse * mse_weight
    eps = diffusion.eps_from_prediction(pred, x_t.float(), t)
    vb = vb_terms(diffusion, torch.cat([eps.detach(), var], dim=1), x_0.float(), x_t.float(), t)  # (N,)
    return mse.mean(), vb.mean()


def training_losses(model, diffusion: GaussianDiffusion, x_0: torch.Tensor, cond: dict, *, cond_drop_prob: float,
                    mask_ratio: float, generator: Optional[torch.Generator] = None,
                    min_snr_gamma: Optional[float] = None,
                    timestep_logit_normal: Optional[tuple[float, float]] = None,
                    mse_space: str = "prediction") -> dict[str, torch.Tensor]:
    """Losses of one training step: the same t for both passes, independent noise and drop masks.

    Args:
        model: ``XMDPT``-like callable ``model(x_t, t, pose_tokens, ref_tokens, ref_latent, *, mask_ratio,
            drop_cond, generator)``.
        x_0: (N, C, H, W) clean target latents.
        cond: ``pose_tokens`` (N, Sp, Dp), ``ref_tokens`` (N, Sr, Dr), ``ref_latent`` (N, C, H, W).
        cond_drop_prob: share of samples given the null condition (CFG dropout), per pass.
        mask_ratio: masked pass ratio; 0 skips the masked pass (``loss_masked`` = 0).
        generator: drives t, noise, drop masks and token masks.
        min_snr_gamma: None (the paper: unweighted eps-MSE) or gamma of the Min-SNR weighting.
        timestep_logit_normal: None (the paper: t uniform) or (m, s) of :func:`sample_timesteps`.
        mse_space: ``prediction`` (the paper) or ``x0``: the MSE of the implied x_0, unweighted
            (``diffusion.prediction == "v"``, ``min_snr_gamma`` None).
    Returns:
        scalars ``loss`` (= loss_unmasked + loss_masked = mse + vb), ``loss_unmasked``, ``loss_masked``,
        ``mse`` and ``vb`` (each summed over the passes).
    """
    missing = sorted({"pose_tokens", "ref_tokens", "ref_latent"} - set(cond))
    if missing:
        raise ValueError(f"cond: missing keys {missing}")
    N = x_0.shape[0]
    t = sample_timesteps(N, diffusion.num_timesteps, device=x_0.device, generator=generator,
                         logit_normal=timestep_logit_normal)  # (N,)
    if mse_space == "x0":
        if diffusion.prediction != "v" or min_snr_gamma is not None:
            raise ValueError("mse_space 'x0' needs a v-prediction diffusion and no Min-SNR weighting, got "
                             f"prediction {diffusion.prediction!r}, min_snr_gamma {min_snr_gamma}")
        w = diffusion.x0_weight(t)  # (N,)
    elif mse_space == "prediction":
        w = None if min_snr_gamma is None else min_snr_weight(diffusion, t, min_snr_gamma)  # (N,)
    else:
        raise ValueError(f"unknown mse_space {mse_space!r}; expected one of {list(MSE_SPACES)}")
    mse_u, vb_u = _pass_losses(model, diffusion, x_0, t, cond, cond_drop_prob, 0.0, generator, w)
    if mask_ratio > 0:
        mse_m, vb_m = _pass_losses(model, diffusion, x_0, t, cond, cond_drop_prob, mask_ratio, generator, w)
    else:
        mse_m = vb_m = torch.zeros((), device=x_0.device)
    loss_u, loss_m = mse_u + vb_u, mse_m + vb_m
    return {"loss": loss_u + loss_m, "loss_unmasked": loss_u, "loss_masked": loss_m,
            "mse": mse_u + mse_m, "vb": vb_u + vb_m}
