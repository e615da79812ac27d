"""Typed stage contracts (xmdpt/core/contracts.py, the manifests in xmdpt/core/manifests.py): every stage manifest round-trips through its
dataclass unchanged; a missing, mistyped or unknown field and a manifest of another format version
fail with a message naming the file, the stage and the field or version.

The manifests the real stages write are round-tripped by their own tests (test_pairs, test_validate,
test_autoencoder, test_features, test_evaluate, test_train_resume); these are hand-built, in the
same shapes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from xmdpt.core import storage
from xmdpt.core.contracts import ManifestError, ManifestVersionError
from xmdpt.core.manifests import (
    MANIFESTS, AutoencoderManifest, EvaluateLineage, EvaluateManifest, FeatureImages, FeaturesManifest,
    FeatureTables, PairsCounts, PairsManifest, PairsTables, PosesCounts, PosesManifest, PosesTables, TableEntry,
    TensorSpec, TrainManifest, ValidateManifest, ValidateTables, WorkerStart,
)


def _table(name: str, rows: int = 3, columns: bool = True) -> TableEntry:
    return TableEntry(uri=f"/store/x/{name}", rows=rows, columns=("a", "b") if columns else None)


SAMPLES = {
    "pairs": PairsManifest(
        uri="/store/pairs/1", params={"layout": "pidm", "split_test_fraction": 0.2}, layout="pidm",
        dataset_root="data/synth", inputs={"dataset": "ab12"},
        tables=PairsTables(pairs=_table("pairs"), images=_table("images"), quarantine=_table("quarantine", 0)),
        counts=PairsCounts(input_rows=3, valid=3, quarantined=0, images=2, images_unusable=0,
                           by_split={"train": 2, "test": 1}),
        quarantine_reasons={}),
    "poses": PosesManifest(
        uri="/store/poses/1", params={"pose_model": ""}, layout="gfla", dataset_root="s3://b/d", num_keypoints=18,
        inputs={"pairs": "cd34"}, tables=PosesTables(poses=_table("poses"), quarantine=_table("quarantine", 1)),
        counts=PosesCounts(input_rows=4, valid=3, quarantined=1, by_source={"annotation": 3, "estimator": 0}),
        quarantine_reasons={"unreadable image": 1}),
    "validate": ValidateManifest(
        uri="/store/validate/1", params={"data_specs": "ef56"}, dataset_root="data/synth", layout=None,
        inputs={"pairs": "1", "poses": "2"},
        tables=ValidateTables(pairs=_table("pairs"), poses=_table("poses"), quarantine=_table("quarantine", 0)),
        counts={"input_rows": 6, "valid": 6, "quarantined": 0, "pairs_valid": 3}),
    "autoencoder": AutoencoderManifest(
        uri="/store/autoencoder/1", vae_uri="/store/autoencoder/1/vae", recon_uri="/store/autoencoder/1/recon.png",
        source="fitted", latent_scale=1.25, latent_shape=(4, 16, 16), image_size=64,
        config={"block_out_channels": [8, 16]}, metrics={"psnr": 21.5}),
    "features": FeaturesManifest(
        uri="/store/features/1",
        tables=FeatureTables(features=TableEntry(uri="/store/features/1/data", rows=8, shards=2),
                             quarantine=TableEntry(uri="/store/features/1/quarantine", rows=0)),
        images=FeatureImages(total=4, cached=4, quarantined=0), augmentations=("identity", "hflip"),
        tensors={"latent_mean": TensorSpec(shape=(4, 8, 8), dtype="float16")}, keypoints_frame=(64, 64),
        latent_scale=1.25, image_size=64, encoders={"vae": {"uri": "/store/autoencoder/1"}, "image": {"dim": 384}},
        standin=True, encoder_weights={"image": "/w/image.safetensors"}, vae_uri="/store/autoencoder/1",
        bytes=1000, bytes_per_image=250, encode_seconds=1.5, shards_encoded=2, rows_by_node={"node-a": 8},
        validation={"success": True, "evaluated": 17, "failures": []}),
    "train": TrainManifest(
        model_uri="/store/train/runs/r/final", uri="/store/train/runs/r", steps=6, run_name="r", run_id="abc",
        tracking_uri="sqlite:///m.db", data_hash="d", train_table="/store/train/data/d", train_rows=12,
        dropped_examples=0, world_size=None, start_step=3,
        worker_starts=(WorkerStart(rank=0, node_id="n0", time=1.5), WorkerStart(rank=1, node_id="n1", time=2.0))),
    "evaluate": EvaluateManifest(
        uri="/store/evaluate/1", pipeline_uri="/store/evaluate/1/pipeline", pipeline_local="/store/evaluate/1/pipeline",
        standin_encoders=True, metrics_path="artifacts/evaluate/metrics.json", grid_path="artifacts/evaluate/grid.png",
        num_pairs=12, tracking_uri=None,
        lineage=EvaluateLineage(train_run_id="abc", train_manifest="artifacts/train/manifest.json",
                                features_manifest="artifacts/features/manifest.json",
                                model_folder="/store/train/runs/r/final", evaluate_prefix="/store/evaluate/1")),
}


def test_every_stage_manifest_has_a_sample():
    assert set(SAMPLES) == set(MANIFESTS) == {"pairs", "poses", "validate", "autoencoder", "features", "train",
                                               "evaluate"}


@pytest.mark.parametrize("stage", sorted(SAMPLES))
def test_round_trip_through_json_is_unchanged(tmp_path: Path, stage: str):
    manifest = SAMPLES[stage]
    path = tmp_path / stage / "manifest.json"
    written = manifest.write(path)
    on_disk = json.loads(path.read_text())
    assert written == on_disk == manifest.to_dict()
    assert on_disk["stage"] == stage and on_disk["format_version"] == type(manifest).FORMAT_VERSION
    assert on_disk["manifest_version"] == storage.MANIFEST_VERSION
    parsed = type(manifest).read(path)
    assert parsed == manifest and parsed.to_dict() == on_disk
    # load (what stages call) also wants the output folder on this machine: the samples' /store/... is not
    with pytest.raises(ManifestError, match=r"names /store/.* not on this machine.*dvc pull.*dvc repro --force"):
        type(manifest).load(tmp_path)
    assert parsed.key() == storage.manifest_key(parsed) == storage.manifest_key(parsed.identity())


@pytest.mark.parametrize("stage, records", [
    ("autoencoder", {"metrics": {"fit_seconds": 99.0, "heldout_ssim": 0.1}}),
    ("features", {"encode_seconds": 1234.5, "shards_encoded": 0, "rows_by_node": {"other-node": 1}}),
    ("train", {"run_id": "another-run", "tracking_uri": "http://127.0.0.1:5000", "start_step": 3,
               "worker_starts": (WorkerStart(rank=0, node_id="n2", time=2e9),)}),
])
def test_a_run_record_does_not_change_the_content_address(stage, records):
    """Wall time, placement, MLflow ids and the resume step are written but are not what the stage
    produced: two runs that differ only there give the same key downstream; any other field changes it."""
    manifest = SAMPLES[stage]
    again = dataclasses.replace(manifest, **records)
    assert again.to_dict() != manifest.to_dict()
    assert again.key() == manifest.key()
    assert all(k not in manifest.identity() for k in records) and "uri" in manifest.identity()
    assert dataclasses.replace(manifest, uri=manifest.uri + "-other").key() != manifest.key()


def test_optional_keys_are_left_out_not_written_as_null():
    d = SAMPLES["features"].to_dict()
    assert d["tables"]["quarantine"] == {"uri": "/store/features/1/quarantine", "rows": 0}  # no columns/shards
    d.pop("validation")
    m = FeaturesManifest.from_dict(d)
    assert m.validation is None and "validation" not in m.to_dict()
    assert SAMPLES["train"].to_dict()["world_size"] is None  # an Optional field is always written


def test_json_lists_become_tuples():
    d = SAMPLES["autoencoder"].to_dict()
    assert d["latent_shape"] == [4, 16, 16]
    assert AutoencoderManifest.from_dict(d).latent_shape == (4, 16, 16)
    assert TableEntry(uri="u", rows=1, columns=["a"]).columns == ("a",)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / data.get("stage", "x") / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_missing_field_names_the_file_stage_and_field(tmp_path: Path):
    d = SAMPLES["features"].to_dict()
    del d["tables"]["features"]["uri"]
    path = _write(tmp_path, d)
    with pytest.raises(ManifestError, match="features manifest field 'tables.features.uri': missing") as e:
        FeaturesManifest.read(path)
    assert str(path) in str(e.value) and "dvc repro features" in str(e.value)


def test_wrong_type_and_unknown_field_are_refused(tmp_path: Path):
    d = SAMPLES["train"].to_dict()
    path = _write(tmp_path, {**d, "steps": "6"})
    with pytest.raises(ManifestError, match=r"train manifest field 'steps': expected int, got str") as e:
        TrainManifest.read(path)
    assert str(path) in str(e.value)
    with pytest.raises(ManifestError, match=r"'worker_starts\[1\].rank': expected int, got bool"):
        starts = [d["worker_starts"][0], {**d["worker_starts"][1], "rank": True}]
        TrainManifest.from_dict({**d, "worker_starts": starts})
    with pytest.raises(ManifestError, match=r"train manifest field 'seed': unknown key; expected one of \[.*'worker_starts'.*\]"):
        TrainManifest.from_dict({**d, "seed": 0})
    with pytest.raises(ManifestError, match=r"'counts.valid': expected int, got float"):
        ValidateManifest.from_dict({**(v := SAMPLES["validate"].to_dict()), "counts": {**v["counts"], "valid": 1.5}})


def test_writer_output_is_checked_before_it_is_written(tmp_path: Path):
    bad = dataclasses.replace(SAMPLES["train"], steps=6.0)
    with pytest.raises(ManifestError, match="'steps': expected int, got float"):
        bad.write(tmp_path / "train" / "manifest.json")
    assert not (tmp_path / "train" / "manifest.json").exists()


@pytest.mark.parametrize("stage", sorted(SAMPLES))
def test_manifest_without_a_format_version_is_an_older_version(tmp_path: Path, stage: str):
    """Manifests written before format versions existed (every one on disk then) fail: rerun the stage."""
    d = SAMPLES[stage].to_dict()
    del d["format_version"]
    path = _write(tmp_path, d)
    with pytest.raises(ManifestVersionError) as e:
        MANIFESTS[stage].read(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {stage} manifest has format version none, this code reads version 1"), msg
    assert "older" in msg and f"dvc repro {stage}" in msg and f"dvc repro -f {stage}" in msg


def test_lower_and_higher_format_versions_fail_naming_stage_and_version(monkeypatch):
    d = SAMPLES["validate"].to_dict()
    monkeypatch.setattr(ValidateManifest, "FORMAT_VERSION", 3)
    with pytest.raises(ManifestVersionError, match=r"validate manifest has format version 1, this code reads "
                                                   r"version 3 \(written by an older xmdpt\).*dvc repro validate"):
        ValidateManifest.from_dict(d, "artifacts/validate/manifest.json")
    with pytest.raises(ManifestVersionError, match=r"format version 4, .*written by a newer xmdpt"):
        ValidateManifest.from_dict({**d, "format_version": 4})


def test_another_stages_manifest_is_refused(tmp_path: Path):
    path = _write(tmp_path, SAMPLES["pairs"].to_dict())
    with pytest.raises(ManifestError, match=r"not a poses manifest \(stage='pairs'\)"):
        PosesManifest.read(path)
    with pytest.raises(FileNotFoundError, match="run the upstream stage first"):
        PosesManifest.load(tmp_path)


def test_coerce_parses_dicts_and_keeps_typed_manifests():
    m = SAMPLES["validate"]
    assert ValidateManifest.coerce(m) is m
    assert ValidateManifest.coerce(m.to_dict()) == m
    with pytest.raises(ManifestVersionError, match="validate manifest argument: validate manifest has format "
                                                   "version none"):
        ValidateManifest.coerce({"stage": "validate", "tables": {}})


def test_paths_under_the_project_are_written_relative_and_read_back_where_the_project_is(tmp_path, monkeypatch):
    """A manifest names no folder of the machine that wrote it: after a clone in another folder it
    reads as that folder's paths, and downstream content addresses (manifest_key) do not change."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = {}
    for project in (a, b):
        project.mkdir()
        monkeypatch.chdir(project)
        uri = str(project / "data" / "store" / "pairs" / "h")
        m = {"stage": "pairs", "uri": uri, "tables": {"pairs": {"uri": f"{uri}/pairs"}}, "other": "/elsewhere/x",
             "bucket": "s3://b/store/pairs/h", "tracking": f"sqlite:///{project / 'mlflow.db'}"}
        storage.write_manifest(project / "m.json", m)
        raw = json.loads((project / "m.json").read_text())
        assert raw["uri"] == "./data/store/pairs/h" and raw["tables"]["pairs"]["uri"] == "./data/store/pairs/h/pairs"
        assert raw["other"] == "/elsewhere/x" and raw["bucket"] == "s3://b/store/pairs/h"
        assert raw["tracking"] == "sqlite:///./mlflow.db"
        back = storage.read_manifest(project / "m.json")
        assert back["uri"] == uri and back["tables"]["pairs"]["uri"] == f"{uri}/pairs"
        assert back["tracking"] == f"sqlite:///{project / 'mlflow.db'}"
        keys[project] = storage.manifest_key(back)
    assert (a / "m.json").read_text() == (b / "m.json").read_text() and keys[a] == keys[b]
