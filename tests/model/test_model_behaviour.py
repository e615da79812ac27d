"""Behaviour of the X-MDPT network: MIPNet shortcut, null condition, CFG, fast vs slow path, sizes."""

from __future__ import annotations

import pytest
import torch
from xmdpt_test_helpers import make_inputs, tiny_config

from xmdpt.core.config import ModelConfig
from xmdpt.model import XMDPT
from xmdpt.model.masking import gather_tokens, random_masking


def _args(inputs):
    return inputs["x_t"], inputs["t"], inputs["pose_tokens"], inputs["ref_tokens"], inputs["ref_latent"]


def test_side_interpolator_leaves_visible_tokens_unchanged(model, cfg):
    N, T, D = 3, (cfg.input_size // cfg.patch_size) ** 2, cfg.hidden_size
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(N, T, D, generator=g)
    keep_idx, restore_idx, mask = random_masking(N, T, 0.3, generator=g)
    kept = gather_tokens(tokens, keep_idx)  # (N, K, D)
    c = torch.randn(N, D, generator=g)
    context = torch.randn(N, T, D, generator=g)
    dpe = model.tdnet.decoder_pos_embed
    out = model.mipnet(kept, c, context, restore_idx, mask, dpe, model.tdnet.rel_index)  # (N, T, D)
    visible = mask == 0
    assert int(visible.sum()) == N * int(T * 0.7)
    torch.testing.assert_close(out[visible], (tokens + dpe)[visible], rtol=0, atol=0)
    assert not torch.allclose(out[~visible], (model.mipnet.mask_token + dpe).expand(N, T, D)[~visible])


def test_all_conditions_dropped_ignores_condition_inputs(model, cfg):
    a, b = make_inputs(cfg, seed=0), make_inputs(cfg, seed=1)
    b["x_t"], b["t"] = a["x_t"], a["t"]
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        out_a = model(*_args(a), drop_cond=drop)
        out_b = model(*_args(b), drop_cond=drop)
        out_cond = model(*_args(a))
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert not torch.allclose(out_a, out_cond)


def test_drop_cond_is_per_sample(model, inputs):
    with torch.no_grad():
        mixed = model(*_args(inputs), drop_cond=torch.tensor([True, False]))
        cond = model(*_args(inputs))
        null = model(*_args(inputs), drop_cond=torch.tensor([True, True]))
    torch.testing.assert_close(mixed[1], cond[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[0], null[0], rtol=1e-5, atol=1e-5)


def test_guidance_scale_one_equals_conditional_pass(model, inputs):
    with torch.no_grad():
        cond = model(*_args(inputs))
        guided = model.forward_with_cfg(*_args(inputs), cfg_scale=1.0, cfg_power=4.0)
    torch.testing.assert_close(guided, cond, rtol=1e-5, atol=1e-5)


def test_batched_cfg_equals_two_separate_passes(model, inputs):
    from xmdpt.model import guidance_scale

    with torch.no_grad():
        cond = model(*_args(inputs))
        null = model(*_args(inputs), drop_cond=torch.ones(2, dtype=torch.bool))
        guided = model.forward_with_cfg(*_args(inputs), cfg_scale=3.0, cfg_power=1.0)
    s = guidance_scale(inputs["t"], 3.0, 1.0).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(guided, null + s * (cond - null), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.3])
def test_fast_path_equals_authors_slow_path(model, inputs, mask_ratio):
    from authors_loop import authors_forward, authors_forward_with_cfg

    with torch.no_grad():
        fast = model(*_args(inputs), mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(3))
        slow = authors_forward(model, *_args(inputs), mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(3))
        cfg_fast = model.forward_with_cfg(*_args(inputs), 2.0, 0.01)
        cfg_slow = authors_forward_with_cfg(model, *_args(inputs), 2.0, 0.01)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    torch.testing.assert_close(cfg_fast, cfg_slow, rtol=0, atol=1e-6)


def test_masked_pass_reads_the_source_latent_and_gets_gradients(model, inputs):
    """The cross-attention context comes from ref_latent; gradients reach MIPNet but not through the context."""
    model.train()
    out = model(*_args(inputs), mask_ratio=0.3, generator=torch.Generator().manual_seed(0))
    out.square().mean().backward()
    assert model.mipnet.cross_block.attn.kv.weight.grad.abs().sum() > 0
    assert model.mipnet.mask_token.grad.abs().sum() > 0
    other = dict(inputs, ref_latent=inputs["ref_latent"] + 1)
    with torch.no_grad():
        drop = torch.ones(2, dtype=torch.bool)
        a = model(*_args(inputs), mask_ratio=0.3, drop_cond=drop, generator=torch.Generator().manual_seed(0))
        b = model(*_args(other), mask_ratio=0.3, drop_cond=drop, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)


def test_mask_draw_follows_the_generator(model, inputs):
    with torch.no_grad():
        a = model(*_args(inputs), mask_ratio=0.3, generator=torch.Generator().manual_seed(5))
        b = model(*_args(inputs), mask_ratio=0.3, generator=torch.Generator().manual_seed(5))
        c = model(*_args(inputs), mask_ratio=0.3, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_fresh_model_predicts_zero_adaln_zero():
    model = XMDPT(tiny_config())
    with torch.no_grad():
        out = model(*_args(make_inputs(model.cfg)))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("preset,total,inference", [
    ("xmdpt-s/2", 39_117_301, 33_785_413),
    ("xmdpt-b/2", 153_731_269, 132_450_661),
    ("xmdpt-l/2", 498_945_445, 461_134_117),
    ("xmdpt-xl/2", 726_544_933, 678_702_629),
])
def test_parameter_counts_match_the_authors(preset, total, inference):
    with torch.device("meta"):
        model = XMDPT(ModelConfig.from_preset(preset))
    assert model.num_parameters() == total
    assert model.num_parameters(inference_only=True) == inference


def test_paper_inference_path_sizes():
    paper = {"xmdpt-s/2": 33.79e6, "xmdpt-b/2": 132.45e6, "xmdpt-l/2": 461.13e6}
    for preset, n in paper.items():
        with torch.device("meta"):
            got = XMDPT(ModelConfig.from_preset(preset)).num_parameters(inference_only=True)
        assert abs(got - n) / n < 1e-3, (preset, got)
