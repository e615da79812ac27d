"""v prediction and the x_0-space MSE: the conversions, the loss they give, and that a sampler reads a
v model as the eps model it is equivalent to."""

from __future__ import annotations

import pytest
import torch

from xmdpt.core.config import DiffusionConfig, SampleConfig, XMDPTConfig
from xmdpt.core.typed_config import ConfigError
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.losses import training_losses
from xmdpt.diffusion.sampling import sample


def _diffusion(prediction: str) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig(prediction=prediction))


def test_v_target_turns_back_into_the_noise_and_the_clean_latent():
    d = _diffusion("v")
    g = torch.Generator().manual_seed(0)
    x_0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 250, 600, 999])
    x_t = d.q_sample(x_0, t, noise)
    v = d.prediction_target(x_0, noise, t)
    torch.testing.assert_close(d.eps_from_prediction(v, x_t, t), noise, rtol=0, atol=1e-5)
    torch.testing.assert_close(d.predict_x0(x_t, t, d.eps_from_prediction(v, x_t, t))[:3], x_0[:3], rtol=0, atol=1e-3)
    eps = _diffusion("eps")
    assert eps.prediction_target(x_0, noise, t) is noise and eps.eps_from_prediction(noise, x_t, t) is noise


def test_x0_space_mse_is_the_mse_of_the_implied_clean_latent():
    d = _diffusion("v")
    g = torch.Generator().manual_seed(1)
    x_0 = torch.randn(6, 4, 8, 8, generator=g)
    seen = {}

    def model(x_t, t, pose_tokens, ref_tokens, ref_latent, *, mask_ratio, drop_cond, generator):
        out = torch.randn(x_t.shape[0], 8, 8, 8, generator=torch.Generator().manual_seed(2))
        seen.update(x_t=x_t, t=t, v=out[:, :4])
        return out

    cond = {"pose_tokens": torch.zeros(6, 2, 3), "ref_tokens": torch.zeros(6, 2, 3), "ref_latent": torch.zeros(6, 4, 8, 8)}
    losses = training_losses(model, d, x_0, cond, cond_drop_prob=0.0, mask_ratio=0.0,
                             generator=torch.Generator().manual_seed(3), mse_space="x0")
    ab = d.alphas_cumprod[seen["t"]].float().view(-1, 1, 1, 1)
    x0_hat = ab.sqrt() * seen["x_t"] - (1 - ab).sqrt() * seen["v"]
    torch.testing.assert_close(losses["mse"], ((x0_hat - x_0) ** 2).mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="v-prediction"):
        training_losses(model, _diffusion("eps"), x_0, cond, cond_drop_prob=0.0, mask_ratio=0.0, mse_space="x0")


def test_a_sampler_reads_a_v_model_as_its_eps_twin():
    """The same denoiser expressed as eps and as v gives the same latents, for DDIM and a solver."""
    eps_d, v_d = _diffusion("eps"), _diffusion("v")

    class Eps(torch.nn.Module):
        def forward(self, x_t, t, pose_tokens, ref_tokens, ref_latent, **kw):
            return torch.cat([0.5 * x_t + 0.1 * ref_latent, torch.zeros_like(x_t)], 1)

    class V(Eps):
        def forward(self, x_t, t, *a, **kw):
            out = super().forward(x_t, t, *a, **kw)
            ab = eps_d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            # eps = sqrt(ab) v + sqrt(1 - ab) x_t  =>  v = (eps - sqrt(1 - ab) x_t) / sqrt(ab)
            return torch.cat([(out[:, :4] - (1 - ab).sqrt() * x_t) / ab.sqrt(), out[:, 4:]], 1)

    cond = {"pose_tokens": torch.zeros(2, 2, 3), "ref_tokens": torch.zeros(2, 2, 3),
            "ref_latent": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))}
    for scheduler in ("ddim", "dpmsolver++"):
        sc = SampleConfig(scheduler=scheduler, num_steps=10, cfg_scale=1.0)
        a = sample(Eps(), eps_d, cond, sc, generator=torch.Generator().manual_seed(5))
        b = sample(V(), v_d, cond, sc, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_x0_space_needs_v_prediction_and_no_min_snr():
    with pytest.raises(ConfigError, match="train.mse_space"):
        XMDPTConfig.from_dict({"train": {"mse_space": "x0"}})
    with pytest.raises(ConfigError, match="train.min_snr_gamma"):
        XMDPTConfig.from_dict({"diffusion": {"prediction": "v"}, "train": {"mse_space": "x0", "min_snr_gamma": 1.0}})
    with pytest.raises(ConfigError, match="diffusion.prediction"):
        DiffusionConfig(prediction="x0")
    cfg = XMDPTConfig.from_dict({"diffusion": {"prediction": "v"}, "train": {"mse_space": "x0"}})
    assert XMDPTConfig.from_dict(cfg.to_dict()) == cfg
