"""Shape contracts of the X-MDPT modules at tiny size (every preset's patch size), and pure helpers."""

from __future__ import annotations

import pytest
import torch

from xmdpt.core.config import MODEL_PRESETS, ModelConfig
from xmdpt.model import XMDPT
from xmdpt.model.layers import num_relative_positions, relative_position_index, sincos_pos_embed_2d
from xmdpt.model.masking import gather_tokens, num_kept, random_masking


def _tiny(preset: str, **kw) -> ModelConfig:
    return ModelConfig.from_preset(preset, **{**dict(hidden_size=16, depth=3, num_heads=2, input_size=16,
                                                     pose_num_tokens=3, pose_token_dim=12, ref_num_tokens=4,
                                                     ref_token_dim=8), **kw})


def _inputs(cfg: ModelConfig, n: int):
    H = cfg.input_size
    return (torch.randn(n, cfg.in_channels, H, H), torch.randint(0, 1000, (n,)),
            torch.randn(n, cfg.pose_num_tokens, cfg.pose_token_dim), torch.randn(n, cfg.ref_num_tokens, cfg.ref_token_dim),
            torch.randn(n, cfg.in_channels, H, H))


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
@pytest.mark.parametrize("n", [1, 2])
def test_output_shapes_every_preset(preset, n):
    cfg = _tiny(preset)
    assert cfg.patch_size == MODEL_PRESETS[preset]["patch_size"]
    model = XMDPT(cfg)
    args = _inputs(cfg, n)
    expected = (n, 2 * cfg.in_channels, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        assert model(*args).shape == expected
        assert model(*args, mask_ratio=0.3).shape == expected
        assert model(*args, drop_cond=torch.ones(n, dtype=torch.bool)).shape == expected
        assert model.forward_with_cfg(*args, cfg_scale=2.0, cfg_power=4.0).shape == expected


def test_without_learn_sigma_predicts_c_channels():
    cfg = _tiny("xmdpt-tiny/2", learn_sigma=False)
    with torch.no_grad():
        assert XMDPT(cfg)(*_inputs(cfg, 2)).shape == (2, cfg.in_channels, 16, 16)


def test_token_counts_and_widths_come_from_config():
    cfg = _tiny("xmdpt-tiny/2", pose_num_tokens=7, ref_token_dim=11)
    model = XMDPT(cfg)
    assert model.canet.pose_pool[0].in_channels == 7
    assert model.canet.ref_proj[0].in_features == 11
    assert model.canet.latent_pool[0].in_channels == (16 // 2) ** 2


@pytest.mark.parametrize("name,index", [("x_t", 0), ("pose_tokens", 2), ("ref_tokens", 3), ("ref_latent", 4)])
def test_wrong_input_shapes_are_refused_by_name(name, index):
    cfg = _tiny("xmdpt-tiny/2")
    args = list(_inputs(cfg, 2))
    args[index] = args[index][..., :-1]
    with pytest.raises(ValueError, match=name):
        XMDPT(cfg)(*args)


def test_relative_position_index_formula():
    G = 16
    index = relative_position_index(G)  # (256, 256)
    assert index.shape == (256, 256) and num_relative_positions(G) == 964
    for i, j in [(0, 0), (0, 255), (255, 0), (17, 34), (100, 3)]:
        dy, dx = i // G - j // G, i % G - j % G
        assert index[i, j] == (dy + 15) * 31 + (dx + 15)
    assert int(index.max()) == 31 * 31 - 1 and int(index.min()) == 0


def test_sincos_pos_embed_halves():
    pe = sincos_pos_embed_2d(8, 4)  # (16, 8): [sin, cos](x) | [sin, cos](y)
    assert pe.shape == (16, 8)
    torch.testing.assert_close(pe[1, :4], torch.tensor([0.8414710, 0.0099998, 0.5403023, 0.99995]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[1, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # row 0
    torch.testing.assert_close(pe[4, :4], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # column 0


def test_random_masking_round_trip():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 256, 5, generator=g)
    keep_idx, restore_idx, mask = random_masking(3, 256, 0.3, generator=g)
    assert keep_idx.shape == (3, num_kept(256, 0.3)) == (3, 179)
    assert mask.sum(1).tolist() == [77.0] * 3
    kept = gather_tokens(tokens, keep_idx)
    filled = torch.cat([kept, torch.zeros(3, 256 - 179, 5)], 1).gather(1, restore_idx[..., None].expand(-1, -1, 5))
    visible = mask == 0
    torch.testing.assert_close(filled[visible], tokens[visible])
    assert (filled[~visible] == 0).all()
