"""The typed config tree: defaults, presets, rejection of unknown keys / wrong types, dvc.yaml consistency."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from xmdpt.config import MODEL_PRESETS, ConfigError, ModelConfig, XMDPTConfig, load_config, section_hash

REPO = Path(__file__).resolve().parents[2]


def test_defaults_round_trip():
    cfg = XMDPTConfig()
    again = XMDPTConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.flat()["model.hidden_size"] == cfg.model.hidden_size


def test_params_yaml_loads_and_matches_defaults_where_given():
    cfg = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in raw.items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            if isinstance(got, tuple):
                got = list(got)
            assert got == value, f"{section}.{key}"


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"model": {"hiden_size": 3}}, "model.hiden_size: unknown key"),
        ({"modle": {}}, "modle: unknown key"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float"),
        ({"train": {"max_steps": 1.5}}, "train.max_steps: expected int"),
        ({"train": {"use_gpu": 1}}, "train.use_gpu: expected bool"),
        ({"encoders": {"vae_block_channels": [32, "x"]}}, "encoders.vae_block_channels[1]: expected int"),
        ({"evaluate": {"eval_size": [256]}}, "evaluate.eval_size: expected 2 values"),
        ({"model": {"preset": "xmdpt-q/2"}}, "unknown preset 'xmdpt-q/2'"),
        ({"model": {"hidden_size": 130, "num_heads": 4}}, "model.hidden_size: must be divisible"),
        ({"model": {"decode_layer": 9}}, "model.decode_layer"),
        ({"model": {"mask_ratio": 1.0}}, "model.mask_ratio"),
        ({"sample": {"respacing": "linear"}}, "unknown respacing 'linear'"),
        ({"train": {"precision": "fp8"}}, "unknown precision 'fp8'"),
        ({"data": {"image_size": 60}}, "data.image_size"),
    ],
)
def test_rejects_bad_config_naming_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        XMDPTConfig.from_dict(raw)
    assert needle in str(e.value)


def test_load_config_names_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: train.lrr: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")


def test_preset_fills_architecture_and_explicit_keys_override():
    cfg = XMDPTConfig.from_dict({"model": {"preset": "xmdpt-s/2", "depth": 6}})
    assert cfg.model.hidden_size == 384 and cfg.model.num_heads == 6
    assert cfg.model.depth == 6
    assert cfg.model.ref_token_dim == 1536 and cfg.model.pose_token_dim == 768
    for name in MODEL_PRESETS:
        m = ModelConfig.from_preset(name)
        assert m.hidden_size % m.num_heads == 0


def test_replace_and_hash_are_stable():
    cfg = XMDPTConfig()
    c2 = cfg.replace(train={"max_steps": 5})
    assert c2.train.max_steps == 5 and cfg.train.max_steps != 5
    assert section_hash(cfg.model) == section_hash(XMDPTConfig().model)
    assert section_hash(cfg.train) != section_hash(c2.train)


def _dvc_params():
    """Every `params:` key declared by a dvc.yaml stage, and every ${...} template."""
    text = (REPO / "dvc.yaml").read_text()
    dvc = yaml.safe_load(text)
    keys = set()
    for stage in dvc["stages"].values():
        for entry in stage.get("params", []):
            if isinstance(entry, str):
                keys.add(entry)
            else:  # {file: [keys]}
                for v in entry.values():
                    keys.update(v)
    keys.update(re.findall(r"\$\{([a-z_.]+)\}", text))
    return sorted(keys)


@pytest.mark.parametrize("key", _dvc_params())
def test_every_dvc_param_exists_in_config(key):
    cfg = XMDPTConfig()
    section, _, name = key.partition(".")
    assert hasattr(cfg, section), key
    assert name == "" or hasattr(getattr(cfg, section), name), key


@pytest.mark.parametrize("key", [k for k in _dvc_params() if "." in k])
def test_every_dvc_param_is_in_params_yaml(key):
    """DVC refuses to run a stage whose declared params are missing from params.yaml."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    section, _, name = key.partition(".")
    assert name in raw.get(section, {}), f"{key} is declared in dvc.yaml but missing from params.yaml"
