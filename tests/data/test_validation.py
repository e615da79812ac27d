"""The Great Expectations suites of data_specs/ on fixture Parquet tables: row quarantine,
table-level failures (leakage, empty split, schema, counts) with a readable report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from xmdpt.data.schema import (
    IMAGE_PATH,
    KEYPOINTS,
    PAIRS_SCHEMA,
    POSES_SCHEMA,
    REASON,
    ROW_KEY,
    SPLIT,
    STAGE,
    TARGET_PATH,
)
from xmdpt.data.validation import DataValidationError, validate_dataset


def _read(entry):
    import pyarrow.dataset as pads

    from xmdpt.core.storage import filesystem

    fs, path = filesystem(entry["uri"])
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


def test_clean_tables_pass(make_upstream, rows):
    pairs, poses = rows
    cfg = make_upstream(pairs, poses)
    manifest, report = validate_dataset(cfg)
    assert report["success"] and report["expectations_failed"] == 0 and report["expectations_evaluated"] > 20
    assert manifest["tables"]["pairs"]["rows"] == len(pairs) and manifest["tables"]["poses"]["rows"] == len(poses)
    assert manifest["counts"] == {**manifest["counts"], "input_rows": 12, "valid": 12, "quarantined": 0}
    metrics = json.loads((Path(cfg.paths.artifacts_dir) / "validate" / "report.json").read_text())
    assert metrics["success"] is True and metrics["tables"]["pairs"]["adds_up"] is True


def test_bad_keypoints_are_quarantined_and_the_rest_goes_on(make_upstream, rows):
    pairs, poses = rows
    poses[0][KEYPOINTS] = [500.0] + poses[0][KEYPOINTS][1:]  # x = 500 in a 176-wide image
    poses[1][KEYPOINTS] = [-1.0] + poses[1][KEYPOINTS][1:]  # x missing, y present
    bad = {poses[0][IMAGE_PATH], poses[1][IMAGE_PATH]}  # both views of the first train identity
    cfg = make_upstream(pairs, poses)
    manifest, report = validate_dataset(cfg)
    q = _read(manifest["tables"]["quarantine"])
    reasons = dict(zip(q[ROW_KEY], q[REASON]))
    assert "keypoints outside the image (x > width or y > height) (keypoints_outside_image=1)" in \
        reasons[f"{poses[0][IMAGE_PATH]} train"]
    assert "one coordinate missing" in reasons[f"{poses[1][IMAGE_PATH]} train"]
    clean_pairs = _read(manifest["tables"]["pairs"])
    assert not bad & set(clean_pairs[TARGET_PATH]) and len(clean_pairs) == len(pairs) - 2
    assert set(_read(manifest["tables"]["poses"])[IMAGE_PATH]) == {p[IMAGE_PATH] for p in poses} - bad
    assert set(q[STAGE]) == {"validate"} and len(q) == 4
    assert manifest["counts"]["input_rows"] == manifest["counts"]["valid"] + manifest["counts"]["quarantined"]


def test_split_leakage_fails_with_a_readable_report(make_upstream, rows):
    pairs, poses = rows
    cfg = make_upstream(pairs, poses)
    validate_dataset(cfg)  # a manifest from a passing run ...
    leaked = [dict(p) for p in pairs if p[SPLIT] == "train"][:2]
    for p in leaked:
        p[SPLIT] = "test"
        p["pair_id"] = "test:" + p["pair_id"].split(":", 1)[1]
    leaked_poses = [{**p, SPLIT: "test"} for p in poses if p[IMAGE_PATH] in {leaked[0][TARGET_PATH], leaked[1][TARGET_PATH]}]
    cfg = make_upstream(pairs + leaked, poses + leaked_poses)
    with pytest.raises(DataValidationError, match="split leakage") as e:
        validate_dataset(cfg)
    assert "MEN/Denim/id_00000001" in str(e.value) or "id_00000001" in str(e.value)
    art = Path(cfg.paths.artifacts_dir) / "validate"
    assert "FAILED" in (art / "report.md").read_text() and "split leakage" in (art / "report.md").read_text()
    assert json.loads((art / "report.json").read_text())["success"] is False
    assert not (art / "manifest.json").exists()  # ... is removed: nothing downstream reads unvalidated data


def test_empty_split_fails(make_upstream, rows):
    pairs, poses = rows
    cfg = make_upstream([p for p in pairs if p[SPLIT] == "train"], [p for p in poses if p[SPLIT] == "train"])
    with pytest.raises(DataValidationError, match="empty split"):
        validate_dataset(cfg)


def test_wrong_schema_and_bad_counts_fail(make_upstream, rows):
    pairs, poses = rows
    schema = pa.schema([f if f.name != KEYPOINTS else pa.field(KEYPOINTS, pa.list_(pa.float64())) for f in POSES_SCHEMA])
    cfg = make_upstream(pairs, poses, poses_schema=schema)
    with pytest.raises(DataValidationError, match="column 'keypoints' has type list<.*double>, expected fixed_size_list"):
        validate_dataset(cfg)
    cfg = make_upstream(pairs, poses, pairs_counts={"input_rows": 20, "valid": 12, "quarantined": 0})
    with pytest.raises(DataValidationError, match="input_rows 20 != valid 12 \\+ quarantined 0"):
        validate_dataset(cfg)
    reordered = pa.schema(list(reversed(list(PAIRS_SCHEMA))))
    cfg = make_upstream(pairs, poses, pairs_schema=reordered)
    with pytest.raises(DataValidationError, match="columns differ from schema.PAIRS_SCHEMA"):
        validate_dataset(cfg)


def test_stage_entry_point_exits_nonzero_on_failure(make_upstream, rows, tmp_path):
    import yaml
    from tiny_config import tiny_dict

    from pipelines.validate import main

    pairs, poses = rows
    cfg = make_upstream([p for p in pairs if p[SPLIT] == "train"], poses)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_dict({"paths": cfg.to_dict()["paths"]})))
    with pytest.raises(SystemExit) as e:
        main(["--params", str(params)])
    assert e.value.code == 1


def test_great_expectations_is_not_imported_with_the_data_package():
    code = ("import sys, xmdpt.data.deepfashion, xmdpt.data.pairs, xmdpt.data.poses, xmdpt.data.validation; "
            "sys.exit('great_expectations' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0
