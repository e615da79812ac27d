"""The same stages on ``s3://`` URLs (dataset and storage), against a real S3 API on 127.0.0.1 (moto)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xmdpt.data.schema import IMAGE_PATH, KEYPOINTS, POSE_SOURCE, SOURCE_PATH, SPLIT, TARGET_PATH

pytestmark = pytest.mark.ray

BUCKET = "xmdpt-test"


def test_stages_run_unchanged_on_s3(ray_local, tmp_path, pose_task_path, s3_endpoint, dfx):
    import s3fs

    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint and s3_endpoint.startswith("http://127.0.0.1:")
    local = tmp_path / "ds"
    info = dfx.write_deepfashion(local, layouts=("pidm", "gfla"), unannotated=dfx.UNANNOTATED)
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    fs.put(str(local) + "/", f"{BUCKET}/ds/", recursive=True)
    assert fs.isfile(f"{BUCKET}/ds/train_pairs.txt")

    cfg = dfx.stage_config(tmp_path, f"s3://{BUCKET}/ds", pose_task_path, storage_root=f"s3://{BUCKET}/store")
    out = dfx.run_chain(cfg)
    for stage in ("pairs", "poses", "validate"):
        m = out[stage]
        assert m["uri"].startswith(f"s3://{BUCKET}/store/{stage}/"), m["uri"]
        assert all(t["uri"].startswith("s3://") for t in m["tables"].values())
        assert m["counts"]["input_rows"] == m["counts"]["valid"] + m["counts"]["quarantined"]
    assert out["pairs"]["layout"] == "pidm"  # auto: PIDM files win when both layouts are present

    pairs = dfx.load(out["validate"]["tables"]["pairs"])
    assert set(zip(pairs[SPLIT], pairs[TARGET_PATH], pairs[SOURCE_PATH])) == info["pairs"]
    poses = dfx.load(out["validate"]["tables"]["poses"])
    assert len(poses) == 18 and out["validate"]["counts"]["quarantined"] == 0
    by_path = dict(zip(poses[IMAGE_PATH], zip(poses[POSE_SOURCE], poses[KEYPOINTS])))
    assert {p for p, (s, _) in by_path.items() if s == "estimator"} == set(dfx.UNANNOTATED)
    annotated = next(p for p in info["images"] if p not in dfx.UNANNOTATED)
    np.testing.assert_allclose(np.asarray(by_path[annotated][1]).reshape(18, 2), info["poses"][annotated], atol=1e-4)
    # the bulk outputs really are in the bucket
    assert fs.find(f"{BUCKET}/store/validate")
