"""Inputs from arbitrary photos and pose files: pose JSON parsing, padding to the dataset aspect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmdpt.sampling.inputs import (
    Pose,
    PoseError,
    border_colour,
    load_pose_json,
    pad_offsets,
    pad_pose,
    pad_to_aspect,
    parse_pose,
    prepare_source,
)


def _pose_obj(n=18, size=(256, 176)):
    kps = [[10.0 + i, 20.0 + 2 * i] for i in range(n)]
    if n > 3:
        kps[3] = [-1, -1]
    return {"format": "coco18", "image_size": list(size), "keypoints": kps}


def test_parse_pose_json(tmp_path):
    p = tmp_path / "pose.json"
    p.write_text(json.dumps(_pose_obj()))
    pose = load_pose_json(p)
    assert pose.hw == (256, 176) and pose.keypoints.shape == (18, 2) and pose.keypoints.dtype == np.float32
    assert pose.keypoints[0].tolist() == [10.0, 20.0] and pose.keypoints[3].tolist() == [-1.0, -1.0]
    assert parse_pose(pose.to_json()).keypoints.tolist() == pose.keypoints.tolist()


@pytest.mark.parametrize("obj, match", [
    (_pose_obj(n=17), "expected 18 keypoints .* got 17"),
    (_pose_obj(n=25), "expected 18 keypoints .* got 25"),
    ({**_pose_obj(), "format": "body25"}, "unknown pose format 'body25'"),
    ({**_pose_obj(), "image_size": [256]}, "image_size must be"),
    ({**_pose_obj(), "keypoints": [[1, 2, 3]] * 18}, r"keypoint 0 \(nose\) must be \[x, y\]"),
    ({**_pose_obj(), "keypoints": [[500, 2]] + [[1, 1]] * 17}, "outside the image_size"),
    ({**_pose_obj(), "keypoints": [[-1, -1]] * 18}, "all 18 keypoints are missing"),
    ([1, 2], "expected a JSON object"),
])
def test_parse_pose_errors(obj, match):
    with pytest.raises(PoseError, match=match):
        parse_pose(obj, name="p.json")


def test_pose_file_errors(tmp_path):
    with pytest.raises(PoseError, match="pose file not found"):
        load_pose_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PoseError, match="bad.json: not valid JSON"):
        load_pose_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_pose_obj(n=17)))
    with pytest.raises(PoseError, match="wrong.json: expected 18 keypoints"):
        load_pose_json(wrong)


def test_padding_to_dataset_aspect():
    assert pad_offsets((256, 176)) == (0, 0, 0, 0)
    assert pad_offsets((256, 256)) == (58, 58, 0, 0)  # wide: pad top/bottom to 372 x 256
    assert pad_offsets((512, 176)) == (0, 0, 88, 88)  # tall: pad left/right to 512 x 352
    img = np.zeros((100, 200, 3), np.uint8)
    img[:] = (200, 210, 220)
    img[40:60, 90:110] = (10, 20, 30)
    padded, (top, left) = pad_to_aspect(img)
    assert padded.shape[1] == 200 and abs(padded.shape[0] * 176 - 200 * 256) <= 176
    assert left == 0 and top > 0
    assert tuple(padded[0, 0]) == (200, 210, 220)  # filled with the border colour
    assert np.array_equal(padded[top:top + 100], img)
    assert border_colour(img) == (200, 210, 220)
    sq = prepare_source(img, 64)
    assert sq.shape == (64, 64, 3) and sq.dtype == np.uint8


def test_pad_pose_follows_image_padding():
    kps = -np.ones((18, 2), np.float32)
    kps[0] = (100, 50)
    pose = pad_pose(Pose(kps, (100, 200)))
    top, bottom, left, right = pad_offsets((100, 200))
    assert pose.hw == (100 + top + bottom, 200)
    assert pose.keypoints[0].tolist() == [100.0, 50.0 + top]
    assert pose.keypoints[1].tolist() == [-1.0, -1.0]


def test_pose_from_photo_without_person(pose_task_path):
    from xmdpt.sampling.inputs import pose_from_photo

    blank = np.full((256, 176, 3), 235, np.uint8)
    with pytest.raises(PoseError, match="empty.png: no person found"):
        pose_from_photo(blank, pose_task_path, name="empty.png")
    with pytest.raises(PoseError, match="pose estimator model .* not found"):
        pose_from_photo(blank, "/nonexistent/model.task", name="x.png")
