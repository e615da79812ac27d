"""The synthetic person renderer: shapes, keypoints on the figure, occlusion, identity consistency."""

from __future__ import annotations

import numpy as np
import pytest

from xmdpt.synth import IMAGE_HW, VIEWS, SynthView, render_identity_views

NOSE, R_EYE, L_EYE, R_EAR, L_EAR = 0, 14, 15, 16, 17
FACE = [NOSE, R_EYE, L_EYE]


@pytest.fixture(scope="module")
def people() -> list[list[SynthView]]:
    return [render_identity_views(seed, gender, cat)
            for seed, (gender, cat) in enumerate([("WOMEN", "Dresses"), ("MEN", "Tees_Tanks"), ("WOMEN", "Pants"),
                                                  ("MEN", "Shorts"), ("WOMEN", "Skirts"), ("MEN", "Denim")])]


def test_views_shapes_and_light_background(people):
    for views in people:
        assert [v.view for v in views] == list(VIEWS)
        for _, img, kps, _ in views:
            assert img.shape == (*IMAGE_HW, 3) and img.dtype == np.uint8
            assert kps.shape == (18, 2) and kps.dtype == np.float32
            assert img[2, 2].min() > 190 and img[2, -3].min() > 190  # light studio background
            # the figure covers a sizeable part of the frame
            fg = np.abs(img.astype(int) - img[:, :1].astype(int)).sum(-1) > 40
            assert 0.12 < fg.mean() < 0.6


def test_visible_keypoints_land_on_the_drawn_figure(people):
    checked = 0
    for views in people:
        for view, img, kps, mask in views:
            assert mask.shape == IMAGE_HW and 0.0 <= mask.min() and mask.max() <= 1.0
            assert mask[2, 2] == 0 and mask[2, -3] == 0
            for k, (x, y) in enumerate(kps):
                if x < 0:
                    continue
                assert mask[int(y), int(x)] > 0.5, f"{view} keypoint {k} at {(x, y)} is off the figure"
                checked += 1
            # the silhouette is what was drawn: inside it the image departs from the wall, outside it does not
            wall = img[:, :1].astype(int)
            diff = np.abs(img.astype(int) - wall).sum(-1)
            assert np.median(diff[mask == 0]) < 10 and np.median(diff[mask > 0.99]) > 60
    assert checked > 300


def test_face_points_hidden_from_the_back_and_some_missing(people):
    n_missing = n_total = 0
    for views in people:
        by_view = {v.view: v.keypoints for v in views}
        assert np.all(by_view["3_back"][FACE] == -1), "face points must be hidden in the back view"
        front_face = (by_view["1_front"][FACE] >= 0).all(1)
        assert front_face.sum() >= 2  # the face is seen from the front (minus a random miss)
        side = by_view["2_side"]
        assert (side[[R_EYE, L_EYE]] < 0).any() or (side[[R_EAR, L_EAR]] < 0).any()  # far side hidden
        for k in (v.keypoints for v in views):
            n_missing += int((k[:, 0] < 0).sum())
            n_total += 18
            assert np.all((k[:, 0] < 0) == (k[:, 1] < 0))  # missing is (-1, -1)
            assert np.all(k[k[:, 0] < 0] == -1)
            assert np.all(k == np.round(k))  # integer pixels, exact in every annotation format
    assert 0.05 < n_missing / n_total < 0.35


def test_appearance_is_consistent_within_and_different_between_identities(people):
    def signature(views):  # median colour of the upper body over the figure, per view
        sig = []
        for _, img, kps, _ in views:
            neck, hips = kps[1], kps[[8, 11]]
            if neck[0] < 0 or (hips[:, 0] < 0).any():
                continue
            y = int((neck[1] + hips[:, 1].mean()) / 2)
            x = int((neck[0] + hips[:, 0].mean()) / 2)
            sig.append(np.median(img[y - 3:y + 4, x - 3:x + 4].reshape(-1, 3), axis=0))
        return np.array(sig)

    sigs = [signature(v) for v in people]
    within = np.mean([np.abs(s - s.mean(0)).sum(-1).mean() for s in sigs if len(s) > 1])
    centres = np.array([s.mean(0) for s in sigs])
    between = np.mean([np.abs(a - b).sum() for i, a in enumerate(centres) for b in centres[i + 1:]])
    assert between > 3 * within, (within, between)


def test_poses_differ_between_views(people):
    for views in people:
        kps = [v.keypoints for v in views]
        for i in range(len(kps)):
            for j in range(i + 1, len(kps)):
                both = (kps[i] >= 0).all(1) & (kps[j] >= 0).all(1)
                assert np.abs(kps[i][both] - kps[j][both]).max() > 5


def test_same_seed_same_pixels_different_seed_differs():
    a = render_identity_views(7, "MEN", "Suiting", views=("1_front",))[0]
    b = render_identity_views(7, "MEN", "Suiting", views=("1_front",))[0]
    c = render_identity_views(8, "MEN", "Suiting", views=("1_front",))[0]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert np.abs(a.image.astype(int) - c.image).mean() > 5
