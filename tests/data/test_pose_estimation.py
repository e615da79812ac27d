"""The MediaPipe pose estimator on real photos (scikit-image's astronaut and cat) and on synthetic people."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from xmdpt.data.pose_estimation import BLAZEPOSE_TO_COCO18, NoPersonFound, PoseEstimator
from xmdpt.data.schema import KEYPOINT_NAMES

NOSE, NECK, R_SHO, L_SHO, R_EYE, L_EYE, R_EAR, L_EAR = 0, 1, 2, 5, 14, 15, 16, 17
# astronaut() is 512x512; hand-specified regions (x0, y0, x1, y1) of her head and her shoulders
HEAD_BOX = (160, 50, 300, 180)
SHOULDER_BOX = (70, 190, 350, 310)


@pytest.fixture(scope="module")
def estimator(pose_task_path):
    with PoseEstimator(str(pose_task_path)) as est:
        yield est


def _inside(p, box) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def test_mapping_table():
    assert len(BLAZEPOSE_TO_COCO18) == len(KEYPOINT_NAMES) == 18
    assert BLAZEPOSE_TO_COCO18[NECK] is None and BLAZEPOSE_TO_COCO18[R_SHO] == 12 and BLAZEPOSE_TO_COCO18[L_EAR] == 7


def test_astronaut_keypoints_land_on_her_head_and_shoulders(estimator):
    img = skdata.astronaut()  # (512, 512, 3) uint8 RGB
    kps, conf = estimator.estimate(img)
    assert kps.shape == (18, 2) and kps.dtype == np.float32 and conf.shape == (18,) and conf.dtype == np.float32
    for k in (NOSE, R_EYE, L_EYE, R_EAR, L_EAR):
        assert _inside(kps[k], HEAD_BOX), f"{KEYPOINT_NAMES[k]} at {kps[k]} not on her head"
        assert conf[k] >= 0.5
    for k in (NECK, R_SHO, L_SHO):
        assert _inside(kps[k], SHOULDER_BOX), f"{KEYPOINT_NAMES[k]} at {kps[k]} not on her shoulders"
    # she faces the camera: her right side is on the image left; the neck is between the shoulders
    assert kps[R_SHO, 0] < kps[NECK, 0] < kps[L_SHO, 0]
    assert kps[R_EYE, 0] < kps[L_EYE, 0]
    np.testing.assert_allclose(kps[NECK], (kps[R_SHO] + kps[L_SHO]) / 2, atol=0.5)
    assert conf[NECK] == pytest.approx(min(conf[R_SHO], conf[L_SHO]))
    # missing points are exactly -1 with confidence 0
    miss = (kps < 0).any(1)
    assert np.all(kps[miss] == -1) and np.all(conf[miss] == 0)
    assert estimator.found(kps)


def test_no_person_in_a_cat_or_a_blank_image(estimator):
    for img in (skdata.chelsea(), np.full((256, 176, 3), 255, np.uint8)):
        kps, conf = estimator.estimate(img)
        assert (kps[:, 0] >= 0).sum() <= 3  # nothing (or a stray point) — never a person
        with pytest.raises(NoPersonFound, match="cat.png: no person found"):
            estimator.estimate_or_raise(img, name="cat.png")
    kps, conf = estimator.estimate(np.full((256, 176, 3), 255, np.uint8))
    assert np.all(kps == -1) and np.all(conf == 0) and not PoseEstimator.found(kps)


def test_higher_visibility_threshold_drops_points(pose_task_path, estimator):
    img = skdata.astronaut()
    kps, _ = estimator.estimate(img)
    with PoseEstimator(str(pose_task_path), min_visibility=0.999) as strict:
        strict_kps, strict_conf = strict.estimate(img)
    assert (strict_kps[:, 0] >= 0).sum() < (kps[:, 0] >= 0).sum()
    assert np.all(strict_conf[strict_conf > 0] >= 0.999)


def test_finds_the_synthetic_people(estimator):
    """Informational in spirit: the estimator sees a person in the synthetic front views, near the annotations."""
    from xmdpt.synth import render_identity_views

    found, errors = 0, []
    for seed in range(4):
        view = render_identity_views(seed, "WOMEN" if seed % 2 else "MEN", "Pants", views=("1_front",))[0]
        kps, _ = estimator.estimate(view.image)
        both = (kps[:, 0] >= 0) & (view.keypoints[:, 0] >= 0)
        found += int(both.sum() >= 8)
        errors.extend(np.linalg.norm(kps[both] - view.keypoints[both], axis=1).tolist())
    assert found >= 2 and np.median(errors) < 12


def test_errors(pose_task_path, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/pose\.task.*pose_landmarker_full\.task"):
        PoseEstimator(str(tmp_path / "nowhere/pose.task"))
    est = PoseEstimator(str(pose_task_path))
    with pytest.raises(ValueError, match="uint8"):
        est.estimate(np.zeros((64, 64, 3), np.float32))
    est.close()
    est.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        est.estimate(np.zeros((64, 64, 3), np.uint8))
