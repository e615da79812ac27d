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


# ---- poses from the public annotation layouts, and the output aspect --------------------------

def test_pose_from_a_pidm_txt_and_a_gfla_row(tmp_path):
    from xmdpt.data.keypoints import image_frame_to_pidm_txt, kps_to_gfla_lists
    from xmdpt.sampling.inputs import PoseError, is_pose_annotation, load_pose_annotation

    kps = np.array([[88, 40], [88, 62], [68, 64], [60, 96], [58, 126], [108, 64], [116, 96], [118, 126],
                    [76, 132], [74, 182], [74, 228], [100, 132], [102, 182], [102, 228], [84, 36], [92, 36],
                    [-1, -1], [96, 38]], np.float32)  # 256x176 image frame
    txt = tmp_path / "pose" / "MEN" / "01_1_front.txt"
    txt.parent.mkdir(parents=True)
    np.savetxt(txt, image_frame_to_pidm_txt(kps))  # the PIDM 256x256 frame with the 40-px border
    ys, xs = kps_to_gfla_lists(kps)
    name = "fashionMENTees_Tanksid0000001101_1front.jpg"
    csv = tmp_path / "fasion-resize-annotation-test.csv"
    csv.write_text(f"name:keypoints_y:keypoints_x\n{name}: {ys}: {xs}\nother.jpg: {ys}: {xs}\n")
    for src in (txt, f"{csv}::{name}", f"{name}: {ys}: {xs}"):
        assert is_pose_annotation(src)
        pose = load_pose_annotation(src)
        assert pose.hw == (256, 176)
        assert np.allclose(pose.keypoints, kps, atol=1e-4), src
    with pytest.raises(PoseError, match="2 annotation rows"):
        load_pose_annotation(csv)
    with pytest.raises(PoseError, match="no annotation row for 'missing.jpg'"):
        load_pose_annotation(f"{csv}::missing.jpg")
    bad = tmp_path / "bad.txt"
    np.savetxt(bad, np.zeros((17, 2)))
    with pytest.raises(PoseError, match="expected 18 rows"):
        load_pose_annotation(bad)


def test_restore_aspect_undoes_the_square_squash():
    from xmdpt.sampling.inputs import prepare_source, restore_aspect

    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 255, (256, 176, 3), dtype=np.uint8)  # a DeepFashion image
    sq = prepare_source(portrait, 256)
    back = restore_aspect(sq, portrait.shape[:2])
    assert back.shape == (256, 176, 3)
    assert np.abs(back.astype(int) - portrait.astype(int)).mean() < 40  # squash + unsquash of noise: blurred, aligned
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :150] = 255  # left half white
    out = restore_aspect(prepare_source(wide, 256), wide.shape[:2])
    assert abs(out.shape[1] / out.shape[0] - 3.0) < 0.1  # the source's 3:1 aspect, padding cropped away
    assert out[:, : out.shape[1] // 2 - 4].mean() > 200 and out[:, out.shape[1] // 2 + 4:].mean() < 60
