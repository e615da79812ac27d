"""Registry: LoggedModel + versions + aliases; @champion moves only on improvement (SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmdpt.core.model_resolver import ModelNotFoundError, resolve_model_dir
from xmdpt.registry.register import is_better, log_and_register
from xmdpt.core.pipeline_folder import PIPELINE_FILE, PIPELINE_FORMAT


def _stub_pipeline_folder(path: Path, tag: str) -> Path:
    """A folder with the pipeline layout (contents are not loaded by the registry)."""
    (path / "autoencoder" / "vae").mkdir(parents=True)
    (path / "autoencoder" / "codec.json").write_text(json.dumps({"latent_scale": 1.0, "source": "fitted"}))
    (path / "config.json").write_text(json.dumps({"model": {}, "tag": tag}))
    (path / "model.safetensors").write_bytes(b"stub-" + tag.encode())
    (path / PIPELINE_FILE).write_text(json.dumps({"format": PIPELINE_FORMAT, "version": 1, "latent_scale": 1.0,
                                                  "encoder_weights": {}}))
    return path


def test_is_better():
    assert is_better(0.5, None, True) and is_better(0.5, None, False)
    assert is_better(0.6, 0.5, True) and not is_better(0.5, 0.5, True) and not is_better(0.4, 0.5, True)
    assert is_better(0.4, 0.5, False) and not is_better(0.6, 0.5, False)


def test_champion_moves_only_on_improvement(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kw = dict(model_name="xmdpt", metric="synthetic_pose_iou", higher_is_better=True, tracking_uri=uri,
              lineage={"git_commit": "abc123", "train_run_id": "none"})

    r1 = log_and_register(_stub_pipeline_folder(tmp_path / "m1", "one"), metrics={"synthetic_pose_iou": 0.50,
                                                                                  "fid": None}, **kw)
    assert r1["version"] == 1 and r1["metric"]["promoted"]
    assert r1["aliases"] == ["candidate", "champion"]
    assert r1["logged_model_uri"].startswith("models:/m-")

    r2 = log_and_register(_stub_pipeline_folder(tmp_path / "m2", "two"), metrics={"synthetic_pose_iou": 0.40}, **kw)
    assert r2["version"] == 2 and not r2["metric"]["promoted"]
    assert r2["aliases"] == ["candidate"]
    assert r2["metric"]["champion_before"] == {"version": 1, "value": 0.5}

    r3 = log_and_register(_stub_pipeline_folder(tmp_path / "m3", "three"), metrics={"synthetic_pose_iou": 0.70}, **kw)
    assert r3["version"] == 3 and r3["metric"]["promoted"]
    assert r3["aliases"] == ["candidate", "champion"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("xmdpt", "champion").version) == "3"
    v2 = client.get_model_version("xmdpt", "2")
    assert v2.aliases == [] and v2.tags["git_commit"] == "abc123" and v2.tags["metric.synthetic_pose_iou"] == "0.4"
    lm = client.get_logged_model(r3["model_id"])
    assert lm.tags["git_commit"] == "abc123"

    # consumers resolve aliases and versions to the right folder (downloaded into a cache)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cache = tmp_path / "cache"
    champ = resolve_model_dir("models:/xmdpt@champion", cache_dir=cache)
    assert json.loads((champ / "config.json").read_text())["tag"] == "three"
    v1 = resolve_model_dir("models:/xmdpt/1", cache_dir=cache)
    assert (v1 / "model.safetensors").read_bytes() == b"stub-one"
    by_run = resolve_model_dir(f"runs:/{r2['run_id']}/xmdpt", cache_dir=cache)
    assert json.loads((by_run / "config.json").read_text())["tag"] == "two"
    by_id = resolve_model_dir(r1["logged_model_uri"], cache_dir=cache)
    assert json.loads((by_id / "config.json").read_text())["tag"] == "one"
    with pytest.raises(ModelNotFoundError, match="unknown model URI 'models:/xmdpt@nope'"):
        resolve_model_dir("models:/xmdpt@nope", cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="unknown model URI 'models:/other/1'"):
        resolve_model_dir("models:/other/1", cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model_dir(tmp_path / "does-not-exist")


def test_register_rejects_missing_metric(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(KeyError, match="register.metric: 'synthetic_pose_iou' not in"):
        log_and_register(_stub_pipeline_folder(tmp_path / "m", "x"), model_name="xmdpt", metric="synthetic_pose_iou",
                         higher_is_better=True, metrics={"ssim": 0.3}, tracking_uri=uri)
    with pytest.raises(ValueError, match="not a finite number"):
        log_and_register(_stub_pipeline_folder(tmp_path / "n", "x"), model_name="xmdpt", metric="fid",
                         higher_is_better=False, metrics={"fid": None}, tracking_uri=uri)
