"""Diffusion schedule, timestep respacing, guidance schedule, DDIM step and the VB term."""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler

from xmdpt.core.config import DiffusionConfig
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.losses import vb_terms
from xmdpt.diffusion.sampling import ddim_step, timesteps_for
from xmdpt.model import guidance_scale


def _diffusion() -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig())


def test_linear_betas_match_diffusers():
    d = _diffusion()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    assert d.betas.dtype == torch.float64 and d.num_timesteps == 1000
    torch.testing.assert_close(d.betas, ref.betas.double(), rtol=0, atol=1e-8)
    torch.testing.assert_close(d.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-5, atol=0)


def test_authors_respacing():
    steps = timesteps_for(50, "authors", 1000)
    frac, cur, expected = 999 / 49, 0.0, []
    for _ in range(50):  # the authors' space_timesteps(1000, "50")
        expected.append(round(cur))
        cur += frac
    assert sorted(steps) == expected and steps == sorted(steps, reverse=True)
    assert expected[:5] == [0, 20, 41, 61, 82] and expected[-3:] == [958, 979, 999]
    assert timesteps_for(50, "ddim", 1000) == list(range(980, -1, -20))


def test_guidance_scale_power_cosine():
    for t in (750, 800, 999):
        assert abs(guidance_scale(t, 2.0, 4.0) - 1.0) < 1e-4
    assert abs(guidance_scale(250, 2.0, 4.0) - 1.23) < 5e-3
    assert guidance_scale(0, 2.0, 4.0) == 2.0
    assert abs(guidance_scale(999, 2.0, 0.01) - 1.989) < 1e-3
    t = torch.tensor([0, 250, 999])
    torch.testing.assert_close(guidance_scale(t, 2.0, 4.0).float(),
                               torch.tensor([guidance_scale(int(x), 2.0, 4.0) for x in t]).float())


def test_q_sample_and_ddim_last_step_recover_x0():
    d = _diffusion()
    g = torch.Generator().manual_seed(0)
    x_0, noise = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([500, 500])
    x_t = d.q_sample(x_0, t, noise)
    torch.testing.assert_close(ddim_step(d, x_t, noise, 500, -1), x_0)
    # to an intermediate kept step with the true noise: exactly q_sample at t_prev
    torch.testing.assert_close(ddim_step(d, x_t, noise, 500, 480), d.q_sample(x_0, torch.tensor([480, 480]), noise))


def _direct_vb(d: GaussianDiffusion, eps, v, x_0, x_t, t: int) -> float:
    """Scalar float64 computation straight from the IDDPM formulas, one element at a time."""
    betas = d.betas.tolist()
    abar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(t + 1)]
    abar_t, abar_prev, beta = abar[t], (abar[t - 1] if t > 0 else 1.0), betas[t]
    post_var = lambda s: betas[s] * (1 - (abar[s - 1] if s > 0 else 1.0)) / (1 - abar[s])  # noqa: E731
    log_post = math.log(post_var(t) if t > 0 else betas[1] * betas[0] / (1 - (1 - betas[0]) * (1 - betas[1])))
    total = 0.0
    for e, vv, a, xt in zip(eps.tolist(), v.tolist(), x_0.tolist(), x_t.tolist()):
        coef1 = beta * math.sqrt(abar_prev) / (1 - abar_t)
        coef2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar_t)
        x0_hat = (xt - math.sqrt(1 - abar_t) * e) / math.sqrt(abar_t)
        mean_q, mean_p = coef1 * a + coef2 * xt, coef1 * x0_hat + coef2 * xt
        frac = (vv + 1) / 2
        logvar_p = frac * math.log(beta) + (1 - frac) * log_post
        if t > 0:
            p = torch.distributions.Normal(torch.tensor(mean_q, dtype=torch.float64), math.exp(0.5 * log_post))
            q = torch.distributions.Normal(torch.tensor(mean_p, dtype=torch.float64), math.exp(0.5 * logvar_p))
            total += float(torch.distributions.kl_divergence(p, q)) / math.log(2)
        else:
            cdf = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
            s = math.exp(-0.5 * logvar_p)
            hi = 1.0 if a > 0.999 else cdf(s * (a - mean_p + 1 / 255))
            lo = 0.0 if a < -0.999 else cdf(s * (a - mean_p - 1 / 255))
            total += -math.log(max(hi - lo, 1e-12)) / math.log(2)
    return total / eps.numel()


def test_vb_term_matches_direct_computation():
    d = _diffusion()
    g = torch.Generator().manual_seed(0)
    for t in (0, 1, 10, 500):
        x_0 = torch.rand(1, 2, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
        x_0[0, 0, 0, 0] = 1.0  # an edge bin at t = 0
        eps = torch.randn(1, 2, 2, 2, generator=g, dtype=torch.float64) * 0.1
        v = torch.rand(1, 2, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
        x_t = d.q_sample(x_0, torch.tensor([t]), torch.randn(1, 2, 2, 2, generator=g, dtype=torch.float64))
        got = vb_terms(d, torch.cat([eps, v], 1), x_0, x_t, torch.tensor([t]))
        want = _direct_vb(d, eps.flatten(), v.flatten(), x_0.flatten(), x_t.flatten(), t)
        assert math.isclose(float(got), want, rel_tol=1e-6), (t, float(got), want)
