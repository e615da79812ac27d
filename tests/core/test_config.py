"""The typed config tree: the paper's defaults, presets, rejection of unknown keys / wrong types,
the legacy layout, dvc.yaml consistency."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tiny_config import tiny_config
from xmdpt.core.config import (MODEL_PRESETS, ConfigError, ModelConfig, XMDPTConfig, load_config, section_hash,
                          upgrade_legacy_config)

REPO = Path(__file__).resolve().parents[2]
PAPER_TABLE = REPO / "docs" / "paper.md"
PAPER_MD = REPO.parent / "shared" / "docs" / "PAPER.md"  # the reading of the paper the table cites, where present
# what params/deepfashion.yaml may set: where things are, names, and how the cluster runs; never a
# setting of the method
LOCATION_KEYS = {"paths", "cluster", "data.layout", "poses.model_path", "train.mlflow_experiment",
                 "evaluate.inception_weights", "evaluate.alexnet_weights", "evaluate.lpips_weights",
                 "register.model_name"}


def _paper_rows() -> list[tuple[str, object, str, str]]:
    rows = []
    for line in PAPER_TABLE.read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and "." in cells[0] and not cells[0].startswith("-") and cells[0] != "key":
            rows.append((cells[0], yaml.safe_load(cells[1]), cells[2], cells[3]))
    return rows


def _value(cfg: XMDPTConfig, key: str):
    if key == "train.global_batch":
        t = cfg.train
        return t.num_workers * t.batch_size_per_worker * t.grad_accum_steps
    section, _, name = key.partition(".")
    got = getattr(getattr(cfg, section), name)
    return list(got) if isinstance(got, tuple) else got


def test_the_deepfashion_profile_is_the_papers_setting_row_by_row():
    rows = _paper_rows()
    assert len(rows) >= 50
    profile = load_config(REPO / "params" / "deepfashion.yaml")
    wrong = [(key, want, _value(profile, key)) for key, want, _, _ in rows if _value(profile, key) != want]
    assert not wrong, f"params/deepfashion.yaml differs from docs/paper.md: {wrong}"


def test_the_defaults_are_the_paper_and_the_profile_only_says_where():
    """One source of defaults: the profile writes locations only; every method setting is a default."""
    raw = yaml.safe_load((REPO / "params" / "deepfashion.yaml").read_text())
    written = {f"{sec}.{k}" for sec, vals in raw.items() for k in vals}
    assert {k for k in written if k not in LOCATION_KEYS and k.split(".")[0] not in LOCATION_KEYS} == set()
    defaults = XMDPTConfig()
    for key, want, _, _ in _paper_rows():
        assert _value(defaults, key) == want, key


@pytest.mark.skipif(not PAPER_MD.is_file(), reason=f"{PAPER_MD} is not in this checkout")
def test_each_row_quotes_paper_md_in_its_section():
    text = PAPER_MD.read_text()
    sections = {m.group(1): m.start() for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)[ .]", text, re.M)}
    bounds = sorted(sections.values()) + [len(text)]
    for key, _, sec, quote in _paper_rows():
        start = sections[sec]
        body = text[start:bounds[bounds.index(start) + 1]]
        if sec.count(".") == 0:  # a whole chapter: up to the next chapter
            body = text[start:min([b for s, b in sections.items() if "." not in s and b > start] or [len(text)])]
        assert quote in body, f"{key}: {quote!r} is not in PAPER.md §{sec}"


def test_legacy_layout_is_upgraded():
    """Model folders saved before the sections were split keep loading, with every value in its place."""
    old = {"data": {"image_size": 64, "synth_seed": 3, "pose_model_path": "m.task"},
           "encoders": {"vae": "fitted", "vae_block_channels": [16, 32], "latent_scale": None, "pretrained": False,
                        "token_input_size": 112, "shard_images": 8},
           "features": {"manifest": "artifacts/features/manifest.json"}, "autoencoder": {"uri": "/store/ae"}}
    new = upgrade_legacy_config(old)
    cfg = XMDPTConfig.from_dict({k: v for k, v in new.items() if k != "lineage"})
    assert (cfg.synth.seed, cfg.poses.model_path, cfg.data.image_size) == (3, "m.task", 64)
    assert (cfg.autoencoder.vae, cfg.autoencoder.block_channels, cfg.autoencoder.latent_scale) == ("fitted", (16, 32), None)
    assert (cfg.encoders.pretrained, cfg.encoders.token_input_size, cfg.features.shard_images) == (False, 112, 8)
    assert new["lineage"] == {"features": {"manifest": "artifacts/features/manifest.json"}, "autoencoder": {"uri": "/store/ae"}}
    current = tiny_config().to_dict()
    assert upgrade_legacy_config(current) == current


def test_defaults_round_trip():
    cfg = tiny_config()
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
        ({"autoencoder": {"block_channels": [32, "x"]}}, "autoencoder.block_channels[1]: expected int"),
        ({"encoders": {"vae_lr": 0.1}}, "encoders.vae_lr: unknown key"),
        ({"evaluate": {"eval_size": [256]}}, "evaluate.eval_size: expected 2 values"),
        ({"model": {"preset": "xmdpt-q/2"}}, "unknown preset 'xmdpt-q/2'"),
        ({"model": {"hidden_size": 130, "num_heads": 4}}, "model.hidden_size: must be divisible"),
        ({"model": {"decode_layer": 12}}, "model.decode_layer"),
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
    cfg = tiny_config()
    c2 = cfg.replace(train={"max_steps": 5})
    assert c2.train.max_steps == 5 and cfg.train.max_steps != 5
    assert section_hash(cfg.model) == section_hash(tiny_config().model)
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
            else:  # {file: [keys]}, or {file: None}: every key the file writes
                for v in entry.values():
                    keys.update(v or [])
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
