"""`validate` stage over real stage outputs: bad rows quarantined with reasons, counts add up,
the manifest points at the clean tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmdpt.data.schema import (
    IMAGE_PATH,
    PAIRS_SCHEMA,
    POSES_SCHEMA,
    QUARANTINE_SCHEMA,
    REASON,
    ROW_KEY,
    SOURCE_PATH,
    STAGE,
    TARGET_PATH,
)
from xmdpt.core.manifests import PairsManifest, PosesManifest, ValidateManifest

pytestmark = pytest.mark.ray


def test_validate_quarantines_bad_rows_and_keeps_the_rest(pidm_bad_chain, dfx):
    m = pidm_bad_chain["validate"]
    assert set(m["tables"]) == {"pairs", "poses", "quarantine"}
    pairs = dfx.load(m["tables"]["pairs"])
    poses = dfx.load(m["tables"]["poses"])
    q = dfx.load(m["tables"]["quarantine"])
    assert list(pairs.columns) == PAIRS_SCHEMA.names and list(poses.columns) == POSES_SCHEMA.names
    assert list(q.columns) == QUARANTINE_SCHEMA.names

    bad_images = {dfx.OUT_OF_RANGE, dfx.MALFORMED_POSE}
    assert not bad_images & set(poses[IMAGE_PATH])
    assert not bad_images & (set(pairs[TARGET_PATH]) | set(pairs[SOURCE_PATH]))
    assert (len(pairs), len(poses)) == (31, 19)  # 39 - 8 pairs touching the two images; 20 - 1 poses

    here = q[q[STAGE] == "validate"]
    reasons = dict(zip(here[ROW_KEY], here[REASON]))
    oor = reasons[f"{dfx.OUT_OF_RANGE} train"]
    assert "keypoints outside the image" in oor and "keypoints_outside_image=1" in oor
    pair_reasons = [r for k, r in reasons.items() if k.startswith("train:")]
    assert len(pair_reasons) == 8 and all("has no valid pose row" in r for r in pair_reasons)
    # all stages' quarantine rows are carried into one table
    assert q[STAGE].value_counts().to_dict() == {"pairs": 9, "validate": 9, "poses": 1}

    c = m["counts"]
    assert (c["input_rows"], c["valid"], c["quarantined"]) == (59, 50, 9)
    assert c["input_rows"] == c["valid"] + c["quarantined"]
    assert c["pairs_input_rows"] == pidm_bad_chain["pairs"]["counts"]["valid"]

    art = Path(pidm_bad_chain["cfg"].paths.artifacts_dir) / "validate"
    report = json.loads((art / "report.json").read_text())
    assert report["success"] and report["num_table_failures"] == 0
    assert all(t["adds_up"] for t in report["tables"].values())
    assert "PASSED" in (art / "report.md").read_text()
    on_disk = json.loads((art / "manifest.json").read_text())
    assert on_disk["tables"] == m["tables"]
    # the typed contracts round-trip what the real pairs, poses and validate stages wrote
    for cls in (PairsManifest, PosesManifest, ValidateManifest):
        path = cls.path(pidm_bad_chain["cfg"].paths.artifacts_dir)
        assert cls.read(path).to_dict() == json.loads(path.read_text())


def test_validate_on_gfla_layout(gfla_chain, dfx):
    m = gfla_chain["validate"]
    assert m["counts"]["quarantined"] == 0
    assert m["tables"]["pairs"]["rows"] == 36 and m["tables"]["poses"]["rows"] == 18
    q = dfx.load(m["tables"]["quarantine"])
    assert set(q[STAGE]) == {"pairs"} and len(q) == 2  # the duplicate and the malformed csv rows
