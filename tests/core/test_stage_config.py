"""The `config` stage: every stage's resolved config (all defaults filled in) is a DVC dep of that
stage, holds the sections the stage reads and never ``cluster``; the fingerprint of
``xmdpt/core/config.py`` ignores its values and sees its code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from pipelines.config import main as config_main
from xmdpt.core.config import XMDPTConfig, load_config
from xmdpt.orchestration.preflight import STAGES
from xmdpt.core.stage_config import CONFIG_SOURCES, STAGE_SECTIONS, config_code_fingerprint, resolved_stage_configs

REPO = Path(__file__).resolve().parents[2]


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_has_a_resolved_config_it_depends_on():
    stages = _dvc_stages()
    assert set(STAGE_SECTIONS) == set(stages) - {"config"} == set(STAGES)
    config = stages["config"]
    files = [f"${{paths.artifacts_dir}}/config/{s}.yaml" for s in STAGE_SECTIONS]
    assert config["outs"] == files  # cached (the default): dvc push / pull carry them
    assert {"xmdpt/core/config.py", "xmdpt/core/stage_config.py"} <= set(config["deps"])
    assert config["params"] == [{"params.yaml": None}]  # every value params.yaml writes, whatever the profile
    for stage in STAGE_SECTIONS:
        assert f"${{paths.artifacts_dir}}/config/{stage}.yaml" in stages[stage]["deps"], stage
        assert not {"xmdpt/core/config.py", "xmdpt/core/config_stages.py"} & set(stages[stage]["deps"]), stage  # a default reruns only its readers
        assert "params" not in stages[stage], stage  # values reach a stage through its resolved config only


def test_sections_are_real_and_cluster_is_in_none():
    names = {f.name for f in dataclasses.fields(XMDPTConfig)}
    for stage, sections in STAGE_SECTIONS.items():
        assert set(sections) <= names - {"cluster"}, stage


def test_resolved_configs_hold_the_defaults_params_yaml_leaves_out():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = load_config(REPO / "params.yaml")
    resolved = resolved_stage_configs(cfg)
    assert "data_specs_dir" not in raw["paths"] and "cond_drop_prob" not in raw["train"]
    assert resolved["validate"]["paths"]["data_specs_dir"] == cfg.paths.data_specs_dir
    assert resolved["train"]["train"]["cond_drop_prob"] == cfg.train.cond_drop_prob
    assert resolved["train"]["model"]["depth"] == 4  # filled in from the preset
    for stage, sections in STAGE_SECTIONS.items():
        assert list(resolved[stage]) == ["config_code", *sections]


def test_where_a_stage_runs_changes_no_resolved_config():
    cfg = load_config(REPO / "params.yaml")
    on_cluster = cfg.replace(cluster={"submit": True, "address": "http://head:8265", "timeout_s": 60.0})
    assert resolved_stage_configs(cfg) == resolved_stage_configs(on_cluster)
    changed = cfg.replace(evaluate={"grid_rows": cfg.evaluate.grid_rows + 1})
    diff = {s for s, r in resolved_stage_configs(changed).items() if r != resolved_stage_configs(cfg)[s]}
    assert diff == {"evaluate"}


def test_the_fingerprint_ignores_values_and_sees_code():
    texts = {p.name: p.read_text() for p in CONFIG_SOURCES}
    base = config_code_fingerprint(texts)
    assert base == config_code_fingerprint()

    def edited(old: str, new: str) -> dict[str, str]:
        """Both files, ``old`` replaced in the one that holds it."""
        holders = [name for name, text in texts.items() if text.count(old) == 1]
        assert len(holders) == 1, old
        return {**texts, holders[0]: texts[holders[0]].replace(old, new)}

    same = [
        edited("    grid_rows: int = 8\n", "    grid_rows: int = 4\n"),  # a default
        edited("    grid_rows: int = 8\n", "    grid_rows: int = 8\n    grid_cols: int = 4\n"),  # a new field
        edited('"xmdpt-tiny/4": dict(depth=4,', '"xmdpt-tiny/4": dict(depth=6,'),  # a preset
        edited('    """A config dict written before', '    """A config written before'),  # a docstring
        edited("class SynthConfig:\n", "class SynthConfig:  # note\n"),  # a comment
        edited("from xmdpt.core.typed_config import ConfigError,", "from xmdpt.base.typed_config import ConfigError,"),  # a moved module
    ]
    for text in same:
        assert config_code_fingerprint(text) == base
    different = [
        edited('for k in ("features", "autoencoder") if k in out}', 'for k in ("features",) if k in out}'),
        edited('"must be a positive multiple of 8")', '"must be a positive multiple of 16")'),
    ]
    for text in different:
        assert config_code_fingerprint(text) != base


def test_the_config_stage_writes_one_file_per_stage(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"artifacts_dir": "out"}, "train": {"max_steps": 7}}))
    monkeypatch.chdir(tmp_path)
    written = config_main(["--params", str(params)])
    assert sorted(written) == sorted(STAGE_SECTIONS)
    assert {p.name for p in (tmp_path / "out" / "config").iterdir()} == {f"{s}.yaml" for s in STAGE_SECTIONS}
    train = yaml.safe_load((tmp_path / "out" / "config" / "train.yaml").read_text())
    assert train["train"]["max_steps"] == 7 and train["train"]["lr"] == XMDPTConfig().train.lr
    assert train["config_code"] == config_code_fingerprint()


def test_the_training_code_fingerprint_ignores_docs_and_imports_and_sees_statements():
    from xmdpt.core.stage_config import source_fingerprint_text

    src = ('"""Doc."""\nimport math\nfrom xmdpt.a import f\n\n\ndef g(x):\n    """Doc."""\n'
           '    from xmdpt.b import h\n    return f(x) * 2  # twice\n')
    base = source_fingerprint_text(src)
    for same in (src.replace("xmdpt.a", "xmdpt.core.a").replace("xmdpt.b", "xmdpt.c.b"),
                 src.replace('"""Doc."""', '"""Other words."""'), src.replace("# twice", "# double")):
        assert source_fingerprint_text(same) == base
    for different in (src.replace("* 2", "* 3"), src.replace("return f(x)", "return h(x)")):
        assert source_fingerprint_text(different) != base
    # a function whose body was only imports still parses to a statement
    assert "Pass" in source_fingerprint_text("def k():\n    import os\n")
