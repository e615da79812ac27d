"""Every bad input of the data fixture through pairs -> poses -> validate -> autoencoder -> features:
at each stage the counts add up, and the feature cache holds exactly the valid images (x2 flips).

The fixture is the pipelines tests' bad-input tree (``tests/stage_fixtures.py``: truncated and
corrupt images, a missing file, ``..``/absolute/symlinked paths, duplicates, a malformed pair line,
grey/RGBA/CMYK images, out-of-range and malformed annotations, images that need the estimator).
"""

from __future__ import annotations

import pyarrow.dataset as pads
import pytest

from xmdpt.data import schema
from xmdpt.data.quarantine import read_table

pytestmark = pytest.mark.ray


def _table(entry) -> list[dict]:
    return read_table(entry["uri"], rows=entry["rows"]).to_pylist()


def _adds_up(manifest) -> None:
    c = manifest["counts"]
    assert c["input_rows"] == c["valid"] + c["quarantined"], c


def test_every_bad_input_through_the_dag_to_the_feature_cache(ray_local, tmp_path, dfx, pose_task_path):
    from xmdpt.features.stage import build_feature_cache
    from xmdpt.training.autoencoder import fit_autoencoder

    info = dfx.write_deepfashion(tmp_path / "ds", layouts=("pidm",), unannotated=dfx.UNANNOTATED)
    info.update(dfx.add_bad_inputs(tmp_path / "ds", tmp_path / "outside"))
    cfg = dfx.stage_config(tmp_path, tmp_path / "ds", pose_task_path).replace(
        data={"image_size": 32},
        autoencoder={"block_channels": [8, 16], "train_steps": 2, "batch_size": 4},
        encoders={"standin_depth": 1, "token_input_size": 28},
        features={"batch_size": 8, "shard_images": 8, "num_actors": 1, "num_cpus_per_actor": 1.0})
    out = dfx.run_chain(cfg)
    pairs, poses, validate = out["pairs"], out["poses"], out["validate"]

    # pairs: every candidate row is kept or quarantined; every bad pair line is among the quarantined
    _adds_up(pairs)
    assert len(_table(pairs["tables"]["pairs"])) == pairs["counts"]["valid"]
    pair_q = _table(pairs["tables"]["quarantine"])
    assert len(pair_q) == pairs["counts"]["quarantined"] >= len(info["line_of"]) - 1  # 'converted' pairs are fine
    bad_names = ("01_5_missing", "01_6_trunc", "01_7_corrupt", "outside.jpg", "01_8_link")
    pair_images = {r[schema.IMAGE_PATH] for r in _table(pairs["tables"]["images"])}
    assert not [p for p in pair_images if any(b in p for b in bad_names)]
    assert set(dfx.CONVERTED) <= pair_images  # grey / RGBA / CMYK are converted, not rejected

    # poses: one input row per image of the pairs table; the malformed / out-of-range annotations quarantined
    _adds_up(poses)
    assert poses["counts"]["input_rows"] >= len(pair_images)
    pose_rows = _table(poses["tables"]["poses"])
    pose_q = {r[schema.ROW_KEY] for r in _table(poses["tables"]["quarantine"])}
    assert {r[schema.IMAGE_PATH] for r in pose_rows} | {k for k in pose_q if k in pair_images} == pair_images
    assert poses["counts"]["by_source"]["estimator"] >= 1

    # validate: counts add up; the validated images are a subset of the posed ones
    _adds_up(validate)
    valid_images = {r[schema.IMAGE_PATH] for r in _table(validate["tables"]["poses"])}
    assert valid_images and valid_images <= {r[schema.IMAGE_PATH] for r in pose_rows}
    assert not valid_images & pose_q

    # autoencoder + features on the validated tree: exactly the valid images, each with both flips
    ae = fit_autoencoder(cfg, validate)
    m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate)
    rows = pads.dataset(m["tables"]["features"]["uri"], format="parquet").to_table(
        columns=[schema.IMAGE_PATH, schema.FLIP]).to_pylist()
    keys = [(r[schema.IMAGE_PATH], r[schema.FLIP]) for r in rows]
    assert len(keys) == len(set(keys)) == m["tables"]["features"]["rows"]
    assert set(keys) == {(p, f) for p in valid_images for f in (False, True)}
    assert m["images"] == {"total": len(valid_images), "cached": len(valid_images), "quarantined": 0}
    assert m["validation"]["success"]
