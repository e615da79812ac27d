"""``params/deepfashion.yaml``: loads, is complete, says what PAPER.md says; and selecting it for DVC
by copying it over ``params.yaml`` really re-runs the stages with its values."""

from __future__ import annotations

import pytest

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from xmdpt.core.config import MODEL_PRESETS, XMDPTConfig, load_config

pytestmark = pytest.mark.slow  # the DVC CLI

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE = REPO_ROOT / "params" / "deepfashion.yaml"
VENV_BIN = Path(sys.executable).parent


def test_profile_loads_and_keeps_the_papers_defaults():
    """The profile says where things are; every setting the paper fixes is the config's default."""
    cfg = load_config(PROFILE)
    raw = yaml.safe_load(PROFILE.read_text())
    assert set(raw) <= {f.name for f in dataclasses.fields(XMDPTConfig)}
    paper = XMDPTConfig()
    for section in ("synth", "autoencoder", "encoders", "features", "model", "diffusion", "sample"):
        assert getattr(cfg, section) == getattr(paper, section), section
    assert cfg.data.image_size == paper.data.image_size
    assert cfg.cluster.submit is False  # switched on per run: dvc exp run -S cluster.submit=true


def test_profile_is_the_papers_setting():
    cfg = load_config(PROFILE)
    ae, e, m, t, s = cfg.autoencoder, cfg.encoders, cfg.model, cfg.train, cfg.sample
    # 256x256 images -> SD VAE (ft-MSE, decoder fine-tuned) latents 4x32x32 scaled by 0.18215
    assert cfg.data.image_size == 256
    assert (ae.vae, ae.pretrained_id, ae.latent_scale, ae.latent_channels) == (
        "pretrained", "stabilityai/sd-vae-ft-mse", 0.18215, 4)
    assert ae.finetune_decoder is True
    assert m.input_size == cfg.data.image_size // 8 == 32 and m.in_channels == 4
    # DINOv2 g/14 (source image) and B/14 (target skeleton), pretrained, at 224 px -> 257 tokens
    assert e.pretrained is True
    assert (e.image_encoder, e.pose_encoder) == ("vit_giant_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2.lvd142m")
    assert (e.token_input_size // 14) ** 2 + 1 == 257 == m.pose_num_tokens == m.ref_num_tokens
    assert (m.pose_token_dim, m.ref_token_dim) == (768, 1536)
    # X-MDPT-S/2: depth 12, D 384, 6 heads, patch 2; MIPNet mask 0.3; 2 decoder blocks; learned sigma
    assert m.preset == "xmdpt-s/2"
    assert {k: getattr(m, k) for k in MODEL_PRESETS["xmdpt-s/2"]} == MODEL_PRESETS["xmdpt-s/2"]
    assert (m.depth, m.hidden_size, m.num_heads, m.patch_size) == (12, 384, 6, 2)
    assert (m.mask_ratio, m.decode_layer, m.learn_sigma) == (0.3, 2, True)
    # linear schedule, 1000 steps
    assert (cfg.diffusion.num_timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1000, 1e-4, 0.02)
    # batch 32, AdamW lr 1e-4 constant, no decay / clipping / warm-up, EMA 0.9999, 300k steps, on GPUs
    assert t.num_workers * t.batch_size_per_worker * t.grad_accum_steps == 32
    assert t.use_gpu is True and t.num_workers > 1
    assert (t.lr, t.weight_decay, t.grad_clip_norm, t.warmup_steps) == (1e-4, 0.0, None, 0)
    assert (t.ema_decay, t.max_steps, t.cond_drop_prob, t.swap_prob) == (0.9999, 300_000, 0.1, 0.5)
    assert t.precision == "bf16" and t.checkpoint_every == 10_000
    # DDIM 50 over the authors' respacing, eta 0, CFG 2.0 with power-cosine p = 0.01
    assert (s.scheduler, s.num_steps, s.respacing, s.eta, s.cfg_scale, s.cfg_power) == (
        "ddim", 50, "authors", 0.0, 2.0, 0.01)
    # PIDM protocol: every test pair, 256x176, FID against all train images, real backbones
    ev = cfg.evaluate
    assert ev.eval_size == (256, 176) and ev.max_pairs is None and ev.max_real_images is None
    assert ev.inception_weights and ev.alexnet_weights and ev.lpips_weights
    assert (cfg.register.metric, cfg.register.higher_is_better) == ("fid", False)
    # GPU actor pools for features and evaluation
    assert cfg.features.num_gpus_per_actor >= 1 and (ev.num_gpus_per_actor or 0) >= 1


# The project's mechanism in miniature: the `config` stage resolves params.yaml with every default
# filled in (xmdpt/core/stage_config.py) and the stage depends on its resolved file, so a value reruns
# it whether params.yaml writes it or the profile leaves it to the paper's default.
STAGE = """\
vars:
  - params.yaml
stages:
  config:
    cmd: python -m pipelines.config
    deps:
      - params.yaml
    outs:
      - ${paths.artifacts_dir}/config/train.yaml:
          cache: false
  show:
    cmd: >-
      python -c "from xmdpt.core.config import load_config; c = load_config();
      open('${paths.artifacts_dir}/show.txt', 'w').write(f'{c.model.preset} {c.train.max_steps} {c.sample.cfg_scale}')"
    deps:
      - ${paths.artifacts_dir}/config/train.yaml
    outs:
      - ${paths.artifacts_dir}/show.txt:
          cache: false
"""


def _dvc_yaml_params() -> list[str]:
    """Every `params:` key the project's dvc.yaml declares and every ``${…}`` template it uses (DVC
    reads each from params.yaml; ``params.yaml:`` alone tracks whatever the file writes)."""
    text = (REPO_ROOT / "dvc.yaml").read_text()
    keys = set(re.findall(r"\$\{([a-z_.]+)\}", text))
    for stage in yaml.safe_load(text)["stages"].values():
        for entry in stage.get("params", []):
            keys.update([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v or []])
    return sorted(keys)


def test_the_profile_writes_every_param_dvc_yaml_declares():
    """DVC refuses to run a stage whose declared params are missing from params.yaml: copied there,
    the profile must write each of them."""
    raw = yaml.safe_load(PROFILE.read_text())

    def written(key: str) -> bool:
        section, _, name = key.partition(".")
        return section in raw and (not name or name in raw[section])

    missing = [k for k in _dvc_yaml_params() if not written(k)]
    assert not missing, f"params/deepfashion.yaml lacks params dvc.yaml declares: {missing}"


def test_copying_the_profile_over_params_yaml_reruns_dvc_stages_with_it(tmp_path):
    """DVC 3 templates dvc.yaml and tracks params from params.yaml only: the profile is selected
    by copying it there (what docs/deepfashion.md tells users to do)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO_ROOT),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = str(VENV_BIN / "dvc")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return r

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / "artifacts").mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    run(dvc, "repro", "-q")
    default = load_config(REPO_ROOT / "params.yaml")
    assert (tmp_path / "artifacts/show.txt").read_text() == (
        f"{default.model.preset} {default.train.max_steps} {default.sample.cfg_scale}")

    shutil.copy(PROFILE, tmp_path / "params.yaml")
    status = run(dvc, "status").stdout
    assert "modified:" in status and "params.yaml" in status
    run(dvc, "repro", "-q")
    assert (tmp_path / "artifacts/show.txt").read_text() == "xmdpt-s/2 300000 2.0"
    resolved = yaml.safe_load((tmp_path / "artifacts/config/train.yaml").read_text())
    assert (resolved["model"]["preset"], resolved["train"]["max_steps"], resolved["sample"]["cfg_scale"]) == (
        "xmdpt-s/2", 300_000, 2.0)
