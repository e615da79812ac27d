"""Training objective and sampling with a tiny model: overfitting, seeding, the CFG branches."""

from __future__ import annotations

import torch
from xmdpt_test_helpers import make_inputs, randomize, tiny_config

from xmdpt.core.config import DiffusionConfig, SampleConfig
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.losses import training_losses
from xmdpt.diffusion.sampling import sample
from xmdpt.model import XMDPT


def _cond(inputs):
    return {k: inputs[k] for k in ("pose_tokens", "ref_tokens", "ref_latent")}


def test_overfitting_one_batch_drops_the_loss_tenfold():
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=64, num_heads=4)
    model = XMDPT(cfg).train()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    inputs = make_inputs(cfg, n=4)
    x_0 = inputs["x_t"].clamp(-1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(80):  # ~27x lower after 30 steps; a few seconds on 2 idle cores
        # Same t, noise, drop and token masks every step: one fixed batch to memorise.
        out = training_losses(model, diffusion, x_0, _cond(inputs), cond_drop_prob=0.1, mask_ratio=0.3,
                              generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] * 10 <= losses[0], (losses[0], losses[-1])


def test_training_losses_contract(model, cfg, inputs):
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    calls = []

    def spy(x_t, t, pose_tokens, ref_tokens, ref_latent, **kw):
        calls.append({"x_t": x_t, "t": t, **kw})
        return model(x_t, t, pose_tokens, ref_tokens, ref_latent, **kw)

    out = training_losses(spy, diffusion, inputs["x_t"], _cond(inputs), cond_drop_prob=0.5, mask_ratio=0.3,
                          generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_unmasked", "loss_masked", "mse", "vb"}
    assert all(v.ndim == 0 for v in out.values())
    torch.testing.assert_close(out["loss"], out["loss_unmasked"] + out["loss_masked"])
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    unmasked, masked = calls
    assert unmasked["mask_ratio"] == 0.0 and masked["mask_ratio"] == 0.3
    assert torch.equal(unmasked["t"], masked["t"])  # same timesteps
    assert not torch.equal(unmasked["x_t"], masked["x_t"])  # independent noise
    assert unmasked["drop_cond"].dtype == torch.bool and unmasked["drop_cond"].shape == (2,)

    calls.clear()
    single = training_losses(spy, diffusion, inputs["x_t"], _cond(inputs), cond_drop_prob=0.0, mask_ratio=0.0)
    assert len(calls) == 1 and not calls[0]["drop_cond"].any()
    assert single["loss_masked"] == 0


def test_vb_trains_only_the_variance_channels(cfg, inputs):
    torch.manual_seed(0)
    model = randomize(XMDPT(cfg)).train()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    out = training_losses(model, diffusion, inputs["x_t"], _cond(inputs), cond_drop_prob=0.0, mask_ratio=0.0,
                          generator=torch.Generator().manual_seed(0))
    out["vb"].backward()
    grad = model.tdnet.final_layer.linear.weight.grad.view(-1, 2 * cfg.in_channels, cfg.hidden_size)  # (P*P, 2C, D)
    assert grad[:, : cfg.in_channels].abs().sum() == 0
    assert grad[:, cfg.in_channels:].abs().sum() > 0


def test_seeded_sampling_is_reproducible(model, cfg, inputs):
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    sc = SampleConfig(num_steps=4, cfg_scale=2.0, cfg_power=4.0)
    a = sample(model, diffusion, _cond(inputs), sc, generator=torch.Generator().manual_seed(0))
    b = sample(model, diffusion, _cond(inputs), sc, generator=torch.Generator().manual_seed(0))
    c = sample(model, diffusion, _cond(inputs), sc, generator=torch.Generator().manual_seed(1))
    assert a.shape == inputs["ref_latent"].shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_sampling_passes_per_guidance_scale(model, inputs):
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, *args, **kw):
            seen.append(("forward", args[0].shape[0], kw.get("drop_cond")))
            return model(*args, **kw)

        def forward_with_cfg(self, *args, **kw):
            seen.append(("cfg", args[0].shape[0], None))
            return model.forward_with_cfg(*args, **kw)

    for scale in (1.0, 0.0, 2.0):
        seen.clear()
        sample(Spy(), diffusion, _cond(inputs), SampleConfig(num_steps=3, cfg_scale=scale),
               generator=torch.Generator().manual_seed(0))
        assert len(seen) == 3
        kind, n, drop = seen[0]
        if scale == 1.0:
            assert kind == "forward" and drop is None
        elif scale == 0.0:
            assert kind == "forward" and bool(drop.all())
        else:
            assert kind == "cfg"
    g = torch.Generator().manual_seed(0)
    cond_only = sample(model, diffusion, _cond(inputs), SampleConfig(num_steps=3, cfg_scale=1.0), generator=g)
    guided_one = sample(model, diffusion, _cond(inputs), SampleConfig(num_steps=3, cfg_scale=1.0 + 1e-12),
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cond_only, guided_one, rtol=1e-4, atol=1e-4)


def test_guidance_interval_guides_only_inside_it(model, inputs):
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    seen = []

    class Spy(torch.nn.Module):  # the real model; records which pass ran at which timestep
        def forward(self, *args, **kw):
            seen.append(("null" if kw.get("drop_cond") is not None else "cond", int(args[1][0])))
            return model(*args, **kw)

        def forward_with_cfg(self, *args, **kw):
            seen.append(("cfg", int(args[1][0])))
            return model.forward_with_cfg(*args, **kw)

    def run(m, **kw):
        return sample(m, diffusion, _cond(inputs), SampleConfig(num_steps=5, **kw),
                      generator=torch.Generator().manual_seed(0))

    run(Spy(), cfg_scale=2.0, guidance_interval=(0, 500))  # timesteps 999, 749, 500, 250, 0
    assert seen == [("cond", 999), ("cond", 749), ("cfg", 500), ("cfg", 250), ("cfg", 0)]
    seen.clear()
    run(Spy(), cfg_scale=0.0, guidance_interval=(0, 500))  # the null-condition variant stays null throughout
    assert [k for k, _ in seen] == ["null"] * 5
    full = run(model, cfg_scale=2.0)
    torch.testing.assert_close(run(model, cfg_scale=2.0, guidance_interval=(0, 999)), full, rtol=0, atol=0)
    cond_only = run(model, cfg_scale=1.0)
    torch.testing.assert_close(run(model, cfg_scale=2.0, guidance_interval=(1000, 1000)), cond_only, rtol=0, atol=0)
    part = run(model, cfg_scale=2.0, guidance_interval=(0, 500))
    assert not torch.allclose(part, full) and not torch.allclose(part, cond_only)


def test_guidance_interval_is_validated():
    import pytest

    from xmdpt.core.config import ConfigError, XMDPTConfig

    with pytest.raises(ConfigError, match="sample.guidance_interval"):
        SampleConfig(guidance_interval=(600, 200))
    with pytest.raises(ConfigError, match="sample.guidance_interval"):
        XMDPTConfig.from_dict({"sample": {"guidance_interval": [0, 200, 400]}})
    assert XMDPTConfig.from_dict({"sample": {"guidance_interval": [0, 500]}}).sample.guidance_interval == (0, 500)


def test_min_snr_weighting_scales_only_the_low_noise_eps_mse(model, cfg, inputs):
    from xmdpt.diffusion.losses import min_snr_weight

    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    t = torch.arange(0, 1000, 37)
    w = min_snr_weight(diffusion, t, 5.0)
    snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
    assert torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1)
    torch.testing.assert_close(w[snr > 5].double(), 5 / snr[snr > 5], rtol=1e-6, atol=0)

    def losses(gamma):
        return training_losses(model, diffusion, inputs["x_t"], _cond(inputs), cond_drop_prob=0.0, mask_ratio=0.0,
                               generator=torch.Generator().manual_seed(3), min_snr_gamma=gamma)

    plain, weighted = losses(None), losses(5.0)
    # same draws: the vb term is untouched, the eps-MSE is the plain one times w(t) per sample
    torch.testing.assert_close(weighted["vb"], plain["vb"])
    t_drawn = torch.randint(0, 1000, (2,), generator=torch.Generator().manual_seed(3))
    assert weighted["mse"] < plain["mse"] if bool((min_snr_weight(diffusion, t_drawn, 5.0) < 1).any()) \
        else torch.equal(weighted["mse"], plain["mse"])


def test_logit_normal_timesteps_follow_their_distribution_and_default_to_uniform():
    import math

    import pytest

    from xmdpt.core.config import ConfigError, XMDPTConfig
    from xmdpt.diffusion.losses import sample_timesteps

    # the default (None) is the paper's uniform draw, the same numbers as torch.randint
    uniform = sample_timesteps(1000, 1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(uniform, torch.randint(0, 1000, (1000,), generator=torch.Generator().manual_seed(0)))
    t = sample_timesteps(200_000, 1000, generator=torch.Generator().manual_seed(1), logit_normal=(0.5, 1.0))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    # quantiles of T * sigmoid(0.5 + n): median T * sigmoid(0.5) = 622, P(t < T/2) = Phi(-0.5) = 0.309
    assert abs(float(t.double().median()) - 1000 / (1 + math.exp(-0.5))) < 3
    assert abs(float((t < 500).double().mean()) - 0.5 * (1 + math.erf(-0.5 / math.sqrt(2)))) < 0.005
    with pytest.raises(ConfigError, match="train.timestep_logit_normal"):
        XMDPTConfig.from_dict({"train": {"timestep_logit_normal": [0.5, 0.0]}})
    assert XMDPTConfig.from_dict({"train": {"timestep_logit_normal": [0.5, 1]}}).train.timestep_logit_normal == (0.5, 1.0)


def test_attention_biases_are_computed_once_per_call_and_change_nothing(model, inputs):
    """``rel_pos_biases`` (step-invariant) passed to every step gives the same outputs, bit for bit,
    as each attention gathering its bias itself; ``sample`` computes them once per call."""
    model.eval()
    x_t, t, pose, ref, lat = (inputs[k] for k in ("x_t", "t", "pose_tokens", "ref_tokens", "ref_latent"))
    with torch.no_grad():
        biases = model.rel_pos_biases()
        heads, T = model.cfg.num_heads, x_t.shape[-1] * x_t.shape[-2] // model.cfg.patch_size ** 2
        assert len(biases) == model.cfg.depth and all(b.shape == (heads, T, T) for b in biases)
        assert torch.equal(model(x_t, t, pose, ref, lat, biases=biases), model(x_t, t, pose, ref, lat))
        assert torch.equal(model.forward_with_cfg(x_t, t, pose, ref, lat, 2.0, 0.01, biases=biases),
                           model.forward_with_cfg(x_t, t, pose, ref, lat, 2.0, 0.01))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    calls = []

    class Counting(torch.nn.Module):  # the real model, counting the bias computations
        def __getattr__(self, name):
            return getattr(model, name) if name != "rel_pos_biases" else (lambda: calls.append(1) or model.rel_pos_biases())

        def forward(self, *args, **kw):
            return model(*args, **kw)

    class PerLayer(torch.nn.Module):  # no rel_pos_biases: every attention gathers its own bias
        def forward(self, *args, **kw):
            return model(*args, **kw)

        def forward_with_cfg(self, *args, **kw):
            return model.forward_with_cfg(*args, **kw)

    cfg = SampleConfig(num_steps=4, cfg_scale=2.0, guidance_interval=(0, 500))
    once = sample(Counting(), diffusion, _cond(inputs), cfg, generator=torch.Generator().manual_seed(0))
    each = sample(PerLayer(), diffusion, _cond(inputs), cfg, generator=torch.Generator().manual_seed(0))
    assert calls == [1] and torch.equal(once, each)
