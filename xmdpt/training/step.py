"""One optimisation step of X-MDPT, in plain PyTorch (no Ray here).

A step consumes one batch of training-table rows (see :class:`xmdpt.training.data.Collate`):

1. x_0 and the source latent are *sampled* from the cached VAE posteriors and scaled, as the
   authors encode with ``.sample()``: ``x_0 = (mean + std * eps) * latent_scale``;
2. both loss passes (unmasked + masked MIPNet pass) with CFG dropout, via
   :func:`xmdpt.diffusion.losses.training_losses`;
3. the optimizer step of :mod:`xmdpt.training.loop` (shared with the autoencoder): gradient
   accumulation over ``accum_steps`` micro-batches (DDP gradient sync only on the last), optional
   gradient clipping, AdamW step, EMA update.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from xmdpt.diffusion.losses import training_losses
from xmdpt.core.precision import cpu_has_native_bf16
from xmdpt.training.loop import lr_schedule, optimizer_step

__all__ = ["make_optimizer", "sample_posterior", "lr_at", "cpu_has_native_bf16", "autocast_dtype", "train_step",
           "split_batch", "denoiser_loss", "LOSS_KEYS"]

LOSS_KEYS = ("loss", "loss_unmasked", "loss_masked", "mse", "vb")


def make_optimizer(model: nn.Module, tc: Any, lr: Optional[float] = None) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters: ``train.weight_decay`` everywhere, except CANet's parameters
    (``model.canet``), which take ``train.canet_weight_decay`` when it is set.

    Args:
        model: an :class:`xmdpt.model.XMDPT` (or any module; without ``canet`` there is one group).
        tc: the :class:`TrainConfig`.
        lr: the peak learning rate (default ``tc.lr``).
    """
    lr = tc.lr if lr is None else lr
    canet = getattr(model, "canet", None)
    if tc.canet_weight_decay is None or canet is None:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    canet_ids = {id(p) for p in canet.parameters()}
    rest = [p for p in model.parameters() if id(p) not in canet_ids]
    return torch.optim.AdamW([{"params": rest, "weight_decay": tc.weight_decay},
                              {"params": list(canet.parameters()), "weight_decay": tc.canet_weight_decay}], lr=lr)


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, latent_scale: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scaled sample of a diagonal-Gaussian VAE posterior.

    Args:
        mean, std: (N, C, H, W) unscaled posterior parameters.
        latent_scale: the diffusion latent scale.
    Returns:
        (N, C, H, W) ``(mean + std * eps) * latent_scale``.
    """
    eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
    return (mean + std * eps) * latent_scale


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant."""
    return lr_schedule(base_lr, warmup_steps)(step)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """``train.precision`` -> the autocast dtype (None: fp32).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 (:func:`cpu_has_native_bf16`), fp32 on
    other CPUs; ``bf16`` and ``fp32`` force one.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return None
    raise ValueError(f"unknown precision {precision!r}; expected one of ['auto', 'bf16', 'fp32']")


def train_step(model: nn.Module, ema: Any, opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor], *,
               diffusion: Any, latent_scale: float, cond_drop_prob: float, mask_ratio: float,
               accum_steps: int = 1, grad_clip_norm: Optional[float] = None, lr: Optional[float] = None,
               amp_dtype: Optional[torch.dtype] = None, generator: Optional[torch.Generator] = None,
               min_snr_gamma: Optional[float] = None,
               timestep_logit_normal: Optional[tuple[float, float]] = None,
               mse_space: str = "prediction") -> dict[str, float]:
    """One optimizer step over ``batch`` (split into ``accum_steps`` micro-batches).

    Args:
        model: ``XMDPT`` or a DDP wrapper of it (in train mode).
        ema: :class:`xmdpt.training.ema.EMA` of the unwrapped model, updated after the step.
        opt: the optimizer (AdamW); ``lr`` (if given) is written into every param group first.
        batch: ``x0_mean``/``x0_std``/``ref_mean``/``ref_std`` (N, C, H, W) unscaled posteriors,
            ``pose_tokens`` (N, Sp, Dp), ``ref_tokens`` (N, Sr, Dr), on the model's device.
        diffusion: :class:`xmdpt.diffusion.GaussianDiffusion`.
        latent_scale: x_0 = z * latent_scale.
        cond_drop_prob: CFG dropout probability (per pass and sample).
        mask_ratio: MIPNet mask ratio of the masked pass (0 skips it).
        accum_steps: micro-batches per optimizer step (N must be >= accum_steps).
        grad_clip_norm: clip the global gradient norm to this (None: no clipping).
        amp_dtype: autocast dtype (``torch.bfloat16``) or None for fp32.
        generator: drives posterior samples, t, noise, condition drops and token masks.
        min_snr_gamma: Min-SNR-gamma weighting of the eps-MSE (None: unweighted, as the paper).
        timestep_logit_normal: (m, s) of logit-normal timestep draws (None: uniform, as the paper).
        mse_space: ``prediction`` (the paper) or ``x0`` (see :func:`xmdpt.diffusion.losses.training_losses`).

    Returns:
        Floats: the loss terms averaged over micro-batches (``loss``, ``loss_unmasked``,
        ``loss_masked``, ``mse``, ``vb``), ``grad_norm`` (before clipping) and ``lr``.
    """
    return optimizer_step(model, opt, split_batch(batch, accum_steps),
                          denoiser_loss(model, diffusion, latent_scale=latent_scale, cond_drop_prob=cond_drop_prob,
                                        mask_ratio=mask_ratio, generator=generator, min_snr_gamma=min_snr_gamma,
                                        timestep_logit_normal=timestep_logit_normal, mse_space=mse_space),
                          lr=lr, ema=ema, grad_clip_norm=grad_clip_norm, amp_dtype=amp_dtype,
                          device_type=batch["x0_mean"].device.type)


def split_batch(batch: Mapping[str, torch.Tensor], accum_steps: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` split along the rows into ``accum_steps`` micro-batches."""
    n = batch["x0_mean"].shape[0]
    if n < accum_steps:
        raise ValueError(f"batch of {n} rows cannot be split into accum_steps={accum_steps} micro-batches")
    return [dict(zip(batch, parts)) for parts in zip(*(torch.tensor_split(v, accum_steps) for v in batch.values()))]


def denoiser_loss(model: nn.Module, diffusion: Any, *, latent_scale: float, cond_drop_prob: float, mask_ratio: float,
                  generator: Optional[torch.Generator] = None, min_snr_gamma: Optional[float] = None,
                  timestep_logit_normal: Optional[tuple[float, float]] = None, mse_space: str = "prediction"):
    """The loss of one micro-batch of training-table rows (arguments as :func:`train_step`): x_0 and
    the source latent sampled from their posteriors, then both passes of ``training_losses``."""

    def loss_fn(mb: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_0 = sample_posterior(mb["x0_mean"], mb["x0_std"], latent_scale, generator)  # (n, C, H, W)
        ref_latent = sample_posterior(mb["ref_mean"], mb["ref_std"], latent_scale, generator)  # (n, C, H, W)
        cond = {"pose_tokens": mb["pose_tokens"], "ref_tokens": mb["ref_tokens"], "ref_latent": ref_latent}
        losses = training_losses(model, diffusion, x_0, cond, cond_drop_prob=cond_drop_prob, mask_ratio=mask_ratio,
                                 generator=generator, min_snr_gamma=min_snr_gamma,
                                 timestep_logit_normal=timestep_logit_normal, mse_space=mse_space)
        return {k: losses[k] for k in LOSS_KEYS}

    return loss_fn
