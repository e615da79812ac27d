"""Model folder round-trip, EMA, and the authors'-layout import (parity with a reference state dict)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from xmdpt_test_helpers import make_inputs, randomize, tiny_config
from safetensors.torch import load_file, save_file

from xmdpt.core.config import ModelConfig
from xmdpt.model import XMDPT
from xmdpt.model.folder import load_model_folder, save_model_folder
from xmdpt.release.official import convert_official_state_dict, export_official_state_dict
from xmdpt.training.ema import EMA

AUTHORS_TXT = Path(__file__).resolve().parents[1] / "assets" / "authors_state_dict_xmdpt_s2.txt"


def _out(model, inputs, **kw):
    with torch.no_grad():
        return model(inputs["x_t"], inputs["t"], inputs["pose_tokens"], inputs["ref_tokens"], inputs["ref_latent"], **kw)


def test_model_folder_round_trip(tmp_path, model, cfg, inputs):
    config = {"model": dataclasses.asdict(cfg), "sample": {"cfg_scale": 2.0}}
    save_model_folder(tmp_path / "m", model, config, extra_files={"README.txt": b"hello"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.txt", "config.json", "model.safetensors"]
    loaded, loaded_config = load_model_folder(tmp_path / "m")
    assert loaded_config == json.loads(json.dumps(config))
    assert loaded.cfg == cfg
    torch.testing.assert_close(_out(loaded, inputs), _out(model, inputs), rtol=0, atol=0)


def test_model_folder_refuses_mismatched_weights(tmp_path, model, cfg):
    save_model_folder(tmp_path / "m", model, {"model": dataclasses.asdict(cfg)})
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["tdnet.bogus"] = weights.pop("tdnet.pos_embed")
    weights["canet.out_mlp.0.weight"] = torch.zeros(3, 3)
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_model_folder(tmp_path / "m")
    msg = str(err.value)
    assert "tdnet.pos_embed" in msg and "tdnet.bogus" in msg and "canet.out_mlp.0.weight" in msg


def test_model_folder_needs_the_model_section(tmp_path, model):
    with pytest.raises(ValueError, match="model"):
        save_model_folder(tmp_path / "m", model, {"sample": {}})


def test_ema_update_copy_and_state_dict():
    torch.manual_seed(0)
    model = XMDPT(tiny_config())
    ema = EMA(model, decay=0.9, warmup=False)  # the plain rule: shadow <- 0.9 shadow + 0.1 param
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, p in model.named_parameters():
        torch.testing.assert_close(ema.state_dict()[k], start[k] + 0.1)
    other = XMDPT(tiny_config())
    ema2 = EMA(other, decay=0.9)
    ema2.load_state_dict(ema.state_dict())
    ema2.copy_to(other)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, ema.state_dict()[k])
    with pytest.raises(ValueError, match="tdnet.pos_embed"):
        ema2.load_state_dict({k: v for k, v in ema.state_dict().items() if k != "tdnet.pos_embed"})


def _authors_layout() -> dict[str, tuple[tuple[int, ...], str]]:
    rows = [line.rstrip("\n").split("\t") for line in AUTHORS_TXT.read_text().splitlines(keepends=True)
            if line.strip() and not line.startswith("#")]
    return {k: (tuple(int(x) for x in shape.strip("()").split(",") if x.strip()), dtype) for k, shape, dtype in rows}


@pytest.mark.skipif(not AUTHORS_TXT.is_file(), reason=f"{AUTHORS_TXT} not found")
def test_export_matches_the_authors_key_list_exactly():
    torch.manual_seed(0)
    sd = export_official_state_dict(XMDPT(ModelConfig.from_preset("xmdpt-s/2")))
    expected = _authors_layout()
    assert sorted(sd) == sorted(expected)
    for k, (shape, dtype) in expected.items():
        assert tuple(sd[k].shape) == shape, k
        assert str(sd[k].dtype) == f"torch.{dtype}", k


def test_authors_layout_imports_with_identical_outputs(tmp_path):
    cfg = ModelConfig.from_preset("xmdpt-tiny/2")
    torch.manual_seed(0)
    reference = randomize(XMDPT(cfg), std=0.05)
    inputs = make_inputs(cfg)
    authors_sd = export_official_state_dict(reference)
    assert "sideblocks_cross.0.attn.to_kv.weight" in authors_sd
    assert "blocks.0.attn.rel_pos_bias.relative_position_index" in authors_sd

    ours = XMDPT(cfg).eval()
    ours.load_state_dict(convert_official_state_dict(authors_sd, cfg))
    for mask_ratio in (0.0, 0.3):
        got = _out(ours, inputs, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0))
        want = _out(reference, inputs, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the whole import (checkpoint file -> pipeline folder -> registry -> generate): tests/release/test_official_release.py


def test_import_refuses_mismatched_checkpoints():
    cfg = ModelConfig.from_preset("xmdpt-tiny/2")
    sd = export_official_state_dict(XMDPT(cfg))
    bad = dict(sd)
    del bad["mask_token"]
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        convert_official_state_dict(bad, cfg)
    msg = str(err.value)
    assert "mask_token" in msg and "blocks.0.attn.qkv.weight" in msg and "extra.weight" in msg
    with pytest.raises(ValueError, match="pos_embed"):  # a B/2 checkpoint is not an S/2 one
        convert_official_state_dict(sd, dataclasses.replace(cfg, hidden_size=64))
    shuffled = dict(sd)
    shuffled["blocks.1.attn.rel_pos_bias.relative_position_index"] = sd["blocks.1.attn.rel_pos_bias.relative_position_index"].T.contiguous()
    with pytest.raises(ValueError, match="blocks.1.attn.rel_pos_bias.relative_position_index"):
        convert_official_state_dict(shuffled, cfg)
