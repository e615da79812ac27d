"""Sampling with classifier-free guidance on the power-cosine schedule: DDIM or a multistep solver.

Timesteps come from diffusers' ``DDIMScheduler`` bookkeeping: ``respacing="authors"`` is its
``linspace`` spacing (evenly rounded over [0, T-1], incl. T-1 — the authors' ``space_timesteps(T, "50")``),
``"ddim"`` its ``leading`` spacing (stride T/steps from 0). The update itself is written here because
diffusers steps to ``t - T // steps`` rather than to the previous *kept* timestep, which differs from
the authors' respaced chain when the gaps are uneven (20 or 21 for 50 steps).

``sample.scheduler: dpmsolver++ | unipc`` are diffusers' ``DPMSolverMultistepScheduler`` (2nd order,
``dpmsolver++``) and ``UniPCMultistepScheduler`` (bh2, predictor-corrector), built from our betas
(``trained_betas``), eps prediction and the spacing named by ``sample.respacing`` (``linspace`` /
``leading``). They visit ``num_steps`` timesteps from 999 down and end at sigma = 0, so a step costs
one (guided: one doubled-batch) denoiser pass as in DDIM. Guidance and its interval are applied to the
eps handed to the solver exactly as for DDIM.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from tqdm.auto import tqdm

from xmdpt.core.config import SCHEDULERS, SampleConfig
from xmdpt.diffusion.gaussian import GaussianDiffusion
from xmdpt.core.precision import autocast_context

logger = logging.getLogger(__name__)

__all__ = ["timesteps_for", "ddim_step", "guided_at", "sample", "make_solver", "RESPACINGS", "SCHEDULERS"]

RESPACINGS = {"authors": "linspace", "ddim": "leading"}


def _check(num_steps: int, respacing: str, num_timesteps: int, scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {list(SCHEDULERS)}")
    if respacing not in RESPACINGS:
        raise ValueError(f"unknown respacing {respacing!r}; expected one of {sorted(RESPACINGS)}")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")


def make_solver(scheduler: str, diffusion: GaussianDiffusion, num_steps: int, respacing: str = "authors"):
    """A fresh diffusers multistep solver (``dpmsolver++`` / ``unipc``) on our schedule, timesteps set.

    A solver keeps the model outputs of its last steps: make one per sampling call.
    """
    _check(num_steps, respacing, diffusion.num_timesteps, scheduler)
    common = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas.numpy(),
                  prediction_type="epsilon", timestep_spacing=RESPACINGS[respacing], steps_offset=0,
                  solver_order=2, lower_order_final=True, final_sigmas_type="zero")
    if scheduler == "dpmsolver++":
        solver = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint", **common)
    elif scheduler == "unipc":
        solver = UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, **common)
    else:
        raise ValueError(f"{scheduler!r} is not a multistep solver; expected 'dpmsolver++' or 'unipc'")
    solver.set_timesteps(num_steps)
    return solver


def timesteps_for(num_steps: int, respacing: str, num_timesteps: int, scheduler: str = "ddim") -> list[int]:
    """Original timesteps visited by the sampler, descending (e.g. 50 authors' DDIM steps: 999, 979, ..., 20, 0;
    a solver's 10 linspace steps: 999, 899, ..., 100, then sigma = 0)."""
    _check(num_steps, respacing, num_timesteps, scheduler)
    if scheduler != "ddim":
        betas = torch.linspace(1e-4, 0.02, num_timesteps, dtype=torch.float64)  # the spacing ignores the betas
        return [int(t) for t in make_solver(scheduler, GaussianDiffusion(betas), num_steps, respacing).timesteps]
    ddim = DDIMScheduler(num_train_timesteps=num_timesteps, timestep_spacing=RESPACINGS[respacing], steps_offset=0)
    ddim.set_timesteps(num_steps)
    return [int(t) for t in ddim.timesteps]


def ddim_step(diffusion: GaussianDiffusion, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int,
              eta: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One DDIM update from timestep ``t`` to ``t_prev`` (-1 = the end, abar = 1); no clipping of x_0.

    Args:
        x_t, eps: (N, C, H, W).
    """
    abar = diffusion.alphas_cumprod[t].item()
    abar_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    x_0 = (x_t - (1 - abar) ** 0.5 * eps) / abar ** 0.5
    sigma = eta * ((1 - abar_prev) / (1 - abar)) ** 0.5 * (1 - abar / abar_prev) ** 0.5
    x_prev = abar_prev ** 0.5 * x_0 + (1 - abar_prev - sigma ** 2) ** 0.5 * eps
    if sigma > 0 and t > 0:
        x_prev = x_prev + sigma * torch.randn(x_t.shape, device=x_t.device, dtype=x_t.dtype, generator=generator)
    return x_prev


def guided_at(t: int, interval: Optional[tuple[int, int]]) -> bool:
    """Whether guidance applies at original timestep ``t`` (``interval`` None: always)."""
    return interval is None or interval[0] <= t <= interval[1]


@torch.no_grad()
def sample(model, diffusion: GaussianDiffusion, cond: dict, sample_cfg: SampleConfig, *,
           generator: Optional[torch.Generator] = None, progress: bool = False,
           x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generate x_0 latents.

    ``cfg_scale == 1``: one conditional pass per step; ``cfg_scale == 0``: one unconditional pass;
    otherwise ``model.forward_with_cfg`` (conditional and null condition batched in one forward) at
    the steps inside ``sample_cfg.guidance_interval`` (every step when it is None) and one conditional
    pass at the others. CANet's summary of the conditions (``model.summarize_conditions``, where the
    model has it) and the attention's relative-position biases (``model.rel_pos_biases``) do not
    depend on t and are computed once, not at every step.

    Args:
        model: ``XMDPT``; cond: ``pose_tokens`` (N, Sp, Dp), ``ref_tokens`` (N, Sr, Dr), ``ref_latent`` (N, C, H, W).
        generator: draws the initial noise (and the DDIM noise when eta > 0).
        x_T: the initial noise (N, C, H, W) instead of drawing it from ``generator``.
    Returns:
        (N, C, H, W) latents.
    """
    ref_latent = cond["ref_latent"]
    N, C = ref_latent.shape[:2]
    if x_T is not None:
        if tuple(x_T.shape) != tuple(ref_latent.shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} != latent shape {tuple(ref_latent.shape)}")
        x = x_T.to(ref_latent.device, ref_latent.dtype)
    else:
        x = torch.randn(ref_latent.shape, device=ref_latent.device, dtype=ref_latent.dtype, generator=generator)
    solver = None
    if sample_cfg.scheduler == "ddim":
        steps = timesteps_for(sample_cfg.num_steps, sample_cfg.respacing, diffusion.num_timesteps)
    else:
        solver = make_solver(sample_cfg.scheduler, diffusion, sample_cfg.num_steps, sample_cfg.respacing)
        steps = [int(t) for t in solver.timesteps]
    drop_all = torch.ones(N, dtype=torch.bool, device=x.device)
    summarize = getattr(model, "summarize_conditions", None)
    static = {}  # CANet's summary of the conditions and the attention biases: the same at every step
    if summarize is not None:
        with autocast_context(x.device, sample_cfg.precision):
            static["y"] = summarize(cond["pose_tokens"], cond["ref_tokens"], ref_latent)  # (N, D)
    if hasattr(model, "rel_pos_biases"):
        static["biases"] = model.rel_pos_biases()  # (H, T, T) per block
    for i, t in enumerate(tqdm(steps, disable=not progress, desc=sample_cfg.scheduler)):
        t_batch = torch.full((N,), t, dtype=torch.long, device=x.device)
        args = (x, t_batch, cond["pose_tokens"], cond["ref_tokens"], ref_latent)
        with autocast_context(x.device, sample_cfg.precision):  # bf16 as the authors on CUDA (auto)
            if sample_cfg.cfg_scale == 0:
                out = model(*args, drop_cond=drop_all, **static)
            elif sample_cfg.cfg_scale == 1 or not guided_at(t, sample_cfg.guidance_interval):
                out = model(*args, **static)
            else:
                out = model.forward_with_cfg(*args, sample_cfg.cfg_scale, sample_cfg.cfg_power,
                                             num_timesteps=diffusion.num_timesteps, **static)
        eps = diffusion.eps_from_prediction(out[:, :C].float(), x, t_batch)  # (N, C, H, W)
        if solver is not None:
            x = solver.step(eps, t, x).prev_sample
            continue
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        x = ddim_step(diffusion, x, eps, t, t_prev, sample_cfg.eta, generator)
    return x
