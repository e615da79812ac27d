"""`poses` stage: annotations converted into each image's frame; the real estimator for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from xmdpt.data.schema import (
    CONFIDENCE,
    HEIGHT,
    IMAGE_PATH,
    KEYPOINTS,
    POSE_SOURCE,
    POSES_SCHEMA,
    REASON,
    ROW_KEY,
    WIDTH,
)

pytestmark = pytest.mark.ray


def _by_path(df):
    return {p: r for p, r in zip(df[IMAGE_PATH], df.to_dict("records"))}


def test_pidm_annotations_and_estimator(pidm_bad_chain, dfx):
    m = pidm_bad_chain["poses"]
    info = pidm_bad_chain["info"]
    assert m["tables"]["poses"]["columns"] == POSES_SCHEMA.names
    poses = _by_path(dfx.load(m["tables"]["poses"]))
    estimated = set(dfx.UNANNOTATED) | set(dfx.CONVERTED)
    assert {p for p, r in poses.items() if r[POSE_SOURCE] == "estimator"} == estimated
    assert m["counts"]["by_source"] == {"annotation": 15, "estimator": 5}
    for path, kps in info["poses"].items():
        if path in estimated or path in (dfx.MALFORMED_POSE, dfx.OUT_OF_RANGE):
            continue
        row = poses[path]
        got = np.asarray(row[KEYPOINTS]).reshape(18, 2)
        np.testing.assert_allclose(got, kps, atol=1e-4, err_msg=path)  # 40-px border removed, same frame
        np.testing.assert_array_equal(np.asarray(row[CONFIDENCE]), (kps[:, 0] >= 0).astype(np.float32))
        assert (row[HEIGHT], row[WIDTH]) == dfx.IMAGE_HW
    for path in estimated:  # MediaPipe on a real photo (incl. gray / RGBA / CMYK converted to RGB) finds a person
        conf = np.asarray(poses[path][CONFIDENCE])
        kps = np.asarray(poses[path][KEYPOINTS]).reshape(18, 2)
        assert (conf > 0).sum() >= 4, path
        seen = conf > 0
        assert (kps[seen] >= 0).all() and (kps[seen, 0] <= 176).all() and (kps[seen, 1] <= 256).all()


def test_malformed_annotation_is_quarantined(pidm_bad_chain, dfx):
    m = pidm_bad_chain["poses"]
    q = dfx.load(m["tables"]["quarantine"])
    assert list(q[ROW_KEY]) == [dfx.MALFORMED_POSE]
    pose_txt = "pose" + dfx.MALFORMED_POSE[3:-4] + ".txt"
    assert pose_txt in q[REASON][0] and "expected 18 rows" in q[REASON][0]
    c = m["counts"]
    assert (c["input_rows"], c["valid"], c["quarantined"]) == (21, 20, 1)


def test_gfla_annotations_scale_to_the_image_frame(gfla_chain, dfx):
    m = gfla_chain["poses"]
    info = gfla_chain["info"]
    poses = _by_path(dfx.load(m["tables"]["poses"]))
    assert len(poses) == 18 and m["counts"]["quarantined"] == 0
    for path, kps in info["poses"].items():
        row = poses[path]
        if path in dfx.UNANNOTATED:
            assert row[POSE_SOURCE] == "estimator"
            continue
        assert row[POSE_SOURCE] == "annotation"
        got = np.asarray(row[KEYPOINTS]).reshape(18, 2)
        scale = 2.0 if path == dfx.LARGE else 1.0
        expected = np.where(kps >= 0, kps * scale, -1.0)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=path)
        assert (row[HEIGHT], row[WIDTH]) == (int(256 * scale), int(176 * scale))
