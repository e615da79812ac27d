"""COCO-18 keypoint conventions and the skeleton image (PAPER.md §2.3)."""

from __future__ import annotations

import numpy as np
import pytest

from xmdpt.data.keypoints import (
    COLORS,
    LIMBS,
    RGB_COLORS,
    flip_keypoints,
    gfla_lists_to_kps,
    image_frame_to_pidm_txt,
    is_missing,
    kps_to_gfla_lists,
    pidm_txt_to_image_frame,
    render_skeleton,
    scale_keypoints,
)
from xmdpt.data.schema import KEYPOINT_NAMES

NECK, R_SHO, L_SHO, R_HIP, L_HIP, R_ELB = 1, 2, 5, 8, 11, 3


def _person() -> np.ndarray:
    """A plausible upright person in a 256x176 (H x W) frame, facing the camera, all points present."""
    return np.array([
        [88, 40], [88, 62], [66, 64], [58, 100], [54, 132], [110, 64], [118, 100], [122, 132],
        [74, 128], [72, 180], [70, 232], [102, 128], [104, 180], [106, 232],
        [83, 35], [93, 35], [78, 38], [98, 38],
    ], dtype=np.float32)


def test_limbs_and_colours_follow_the_authors():
    assert len(LIMBS) == 17 and len(COLORS) == 18 == len(KEYPOINT_NAMES)
    assert LIMBS[0] == (NECK, R_SHO) and LIMBS[1] == (NECK, L_SHO) and LIMBS[12] == (NECK, 0)
    assert LIMBS[-1] == (15, 17)  # l_eye -> l_ear; the two ear->shoulder limbs are not drawn
    assert COLORS[0] == (255, 0, 0) and COLORS[5] == (85, 255, 0)
    # drawn by OpenCV as BGR then converted: the published (255, 0, 0) is blue in the RGB image
    assert RGB_COLORS[0] == (0, 0, 255) and RGB_COLORS[1] == (0, 85, 255) and RGB_COLORS[12] == (255, 0, 0)


def _mid(kps: np.ndarray, a: int, b: int, src_hw, out_hw) -> tuple[int, int]:
    p = scale_keypoints(kps, src_hw, out_hw)
    m = (p[a] + p[b]) / 2
    return int(round(m[1])), int(round(m[0]))


@pytest.mark.parametrize("out_hw", [(256, 256), (64, 64), (512, 352), (96, 48)])
def test_limb_colours_at_midpoints_any_size(out_hw):
    kps, src = _person(), (256, 176)
    img = render_skeleton(kps, src, out_hw)
    assert img.shape == (*out_hw, 3) and img.dtype == np.uint8
    # limbs 0 (neck-r_shoulder), 2 (r_shoulder-r_elbow), 7 (r_hip-r_knee), 10 (l_knee-l_ankle): drawn on
    # black, nothing else over their midpoints -> 0.6 * RGB colour
    for i in (0, 2, 7, 10):
        a, b = LIMBS[i]
        y, x = _mid(kps, a, b, src, out_hw)
        expected = np.round(0.6 * np.array(RGB_COLORS[i]))
        np.testing.assert_allclose(img[y, x], expected, atol=2,
                                   err_msg=f"limb {i} {KEYPOINT_NAMES[a]}-{KEYPOINT_NAMES[b]}")
    # background stays black, and the figure scales with the canvas
    assert img[0, 0].sum() == 0 and img[-1, -1].sum() == 0
    lit = (img.sum(-1) > 0).mean()
    assert 0.01 < lit < 0.4


def test_circle_and_stick_size_scale_with_the_output():
    kps = _person()
    small = render_skeleton(kps, (256, 176), (256, 256))
    big = render_skeleton(kps, (256, 176), (512, 512))
    frac_small, frac_big = (small.sum(-1) > 0).mean(), (big.sum(-1) > 0).mean()
    assert abs(frac_small - frac_big) / frac_small < 0.15  # same share of the canvas at 2x size


def test_missing_points_and_their_limbs_are_skipped():
    kps = _person()
    full = render_skeleton(kps, (256, 176), (256, 256))
    kps[R_ELB] = -1  # drops the r_shoulder-r_elbow and r_elbow-r_wrist limbs and the elbow circle
    img = render_skeleton(kps, (256, 176), (256, 256))
    y, x = _mid(_person(), R_SHO, R_ELB, (256, 176), (256, 256))
    assert full[y, x].sum() > 0 and img[y, x].sum() == 0
    empty = render_skeleton(np.full((18, 2), -1, np.float32), (256, 176), (64, 64))
    assert empty.sum() == 0


def test_render_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        render_skeleton(np.zeros((17, 2)), (256, 176), (64, 64))


def test_flip_mirrors_x_and_swaps_left_right():
    kps = _person()
    kps[16] = -1  # r_ear missing
    flipped = flip_keypoints(kps, width=176)
    # the new right shoulder is the mirrored old left shoulder
    np.testing.assert_allclose(flipped[R_SHO], [175 - kps[L_SHO, 0], kps[L_SHO, 1]])
    np.testing.assert_allclose(flipped[L_HIP], [175 - kps[R_HIP, 0], kps[R_HIP, 1]])
    np.testing.assert_allclose(flipped[NECK], [175 - kps[NECK, 0], kps[NECK, 1]])
    # missing stays missing (and moves to the other side: the left ear is now missing)
    assert is_missing(flipped)[17] and not is_missing(flipped)[16]
    np.testing.assert_array_equal(flipped[17], [-1, -1])
    # right is on the image left for a person facing the camera; after a flip still true
    assert flipped[R_SHO, 0] < flipped[L_SHO, 0]
    np.testing.assert_allclose(flip_keypoints(flipped, 176), kps)  # involution


def test_flipped_skeleton_is_the_mirrored_image_with_swapped_colours():
    kps = _person()
    img = render_skeleton(flip_keypoints(kps, 176), (256, 176), (256, 176))
    # the r_shoulder-r_elbow limb (colour 2) now lies where the mirrored left arm was
    y, x = _mid(kps, L_SHO, 6, (256, 176), (256, 176))
    np.testing.assert_allclose(img[y, 175 - x], np.round(0.6 * np.array(RGB_COLORS[2])), atol=2)


def test_scale_keypoints_keeps_missing():
    kps = _person()
    kps[4] = -1
    out = scale_keypoints(kps, (256, 176), (256, 256))
    np.testing.assert_allclose(out[0], [88 * 256 / 176, 40])
    np.testing.assert_array_equal(out[4], [-1, -1])


def test_pidm_txt_round_trip_and_border_convention():
    kps = _person()
    kps[[14, 15]] = -1
    txt = image_frame_to_pidm_txt(kps)  # 256x176 image -> 256x256 frame with a 40-px border
    np.testing.assert_allclose(txt[0], [88 + 40, 40])
    np.testing.assert_array_equal(txt[14], [-1, -1])
    np.testing.assert_allclose(pidm_txt_to_image_frame(txt), kps)
    # another image size: x scales with the 176-px content width, y with 256
    big = pidm_txt_to_image_frame(txt, (512, 352))
    np.testing.assert_allclose(big[0], [88 * 2, 80])
    np.testing.assert_allclose(image_frame_to_pidm_txt(big, (512, 352)), txt, atol=1e-4)


def test_gfla_lists_round_trip_from_csv_strings():
    kps = _person()
    kps[[9, 16]] = -1
    ys, xs = kps_to_gfla_lists(kps)
    assert ys[0] == 40 and xs[0] == 88 and ys[9] == -1 and xs[16] == -1
    assert all(isinstance(v, int) for v in ys + xs)
    np.testing.assert_array_equal(gfla_lists_to_kps(str(ys), str(xs)), kps)  # "[40, 62, ...]" cells
    np.testing.assert_array_equal(gfla_lists_to_kps(ys, xs), kps)
    with pytest.raises(ValueError, match="keypoints_y"):
        gfla_lists_to_kps("[1, 2, 3]", str(xs))
    with pytest.raises(ValueError, match="keypoints_x"):
        gfla_lists_to_kps(str(ys), "[1, 2,")
