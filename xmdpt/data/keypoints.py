"""COCO-18 keypoints: coordinate conventions of the public annotation files, flips, skeleton images.

Keypoints are ``float32 (18, 2)`` arrays of ``(x, y)`` pixels in the frame of one image, in the
COCO-18/OpenPose order of :data:`xmdpt.data.schema.KEYPOINT_NAMES`; a missing point is ``(-1, -1)``
(any negative coordinate counts as missing on input; outputs always write exactly ``-1``).

Three frames occur in the wild (PAPER.md §2):

- the image frame (our canonical one; DeepFashion low-res images are 256x176, H x W);
- PATN/GFLA csv (``fasion-resize-annotation-*.csv``): separate ``y`` and ``x`` lists, integer
  pixels in the 256x176 image frame — :func:`gfla_lists_to_kps` / :func:`kps_to_gfla_lists`;
- PIDM/X-MDPT ``pose/*.txt``: ``(x, y)`` rows in a 256x256 frame made of the 176-wide image with a
  40-px white border on each side, i.e. ``x_img = x_txt - 40`` for 256x176 images —
  :func:`pidm_txt_to_image_frame` / :func:`image_frame_to_pidm_txt`.

:func:`render_skeleton` draws the target-pose image the pose encoder sees, as the authors'
``get_label_tensor`` (PAPER.md §2.3): 18 filled circles, then 17 filled ellipse limbs, each limb
alpha-blended ``canvas = 0.4 * canvas + 0.6 * (canvas with the limb drawn)``. The authors draw with
OpenCV into a BGR canvas using the colour list below and then convert BGR -> RGB, so the list's
``[255, 0, 0]`` ends up **blue** in their RGB tensor (PAPER.md §1.10 item 12). :data:`COLORS` keeps
the list exactly as published; :data:`RGB_COLORS` is what actually appears in the RGB image
(each triple reversed), and that is what we draw.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Sequence, Union

import cv2
import numpy as np

from xmdpt.data.schema import FLIP_PERMUTATION, KEYPOINT_NAMES, NUM_KEYPOINTS

logger = logging.getLogger(__name__)

__all__ = [
    "LIMBS", "COLORS", "RGB_COLORS", "MISSING", "PIDM_FRAME_HW", "PIDM_BORDER", "GFLA_FRAME_HW",
    "is_missing", "validate_keypoints", "render_skeleton", "flip_keypoints", "scale_keypoints",
    "pidm_txt_to_image_frame", "image_frame_to_pidm_txt", "gfla_lists_to_kps", "kps_to_gfla_lists",
]

MISSING = -1.0

# limbSeq of the authors (1-indexed in PAPER.md §2.3), 0-indexed; only the first 17 are drawn.
_LIMB_SEQ_1 = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
               (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
LIMBS: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in _LIMB_SEQ_1[:17])

# The published colour list, verbatim; OpenCV interprets these triples as BGR.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# The colour keypoint i / limb i has in the authors' final RGB skeleton image.
RGB_COLORS: tuple[tuple[int, int, int], ...] = tuple((c[2], c[1], c[0]) for c in COLORS)

_REF_SIDE = 256  # radius 4 and stick half-width 4 are the authors' sizes on a 256x256 canvas
_RADIUS = 4
_STICKWIDTH = 4
_LIMB_ALPHA = 0.6  # canvas = 0.4 * canvas + 0.6 * limb_canvas

PIDM_FRAME_HW = (256, 256)  # the PIDM txt frame: 176-wide content + 40-px border each side
PIDM_BORDER = 40
GFLA_FRAME_HW = (256, 176)  # the PATN/GFLA csv frame (= DeepFashion low-res images)

assert len(KEYPOINT_NAMES) == NUM_KEYPOINTS == len(COLORS)

ListLike = Union[str, Sequence[float]]


def is_missing(kps: np.ndarray) -> np.ndarray:
    """``(18, 2)`` -> bool ``(18,)``: a point is missing if either coordinate is negative (or NaN)."""
    return ~np.all(np.asarray(kps) >= 0, axis=-1)


def validate_keypoints(kps: np.ndarray, what: str = "keypoints") -> np.ndarray:
    """Check the ``(18, 2)`` shape and return a float32 copy with missing points set to exactly -1."""
    arr = np.array(kps, dtype=np.float32)
    if arr.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"{what}: expected shape ({NUM_KEYPOINTS}, 2) (x, y), got {arr.shape}")
    arr[is_missing(arr)] = MISSING
    return arr


def scale_keypoints(kps: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Map keypoints from an ``src_hw`` image to the same image resized to ``dst_hw`` (``x * W'/W``, ``y * H'/H``).

    This is the authors' convention (``trans_keypoins``: coordinates scale with the side ratio).

    Args:
        kps: ``(18, 2)`` (x, y), -1 missing.
        src_hw, dst_hw: ``(H, W)`` of the source and destination frames.

    Returns:
        ``float32 (18, 2)``, missing points stay -1.
    """
    out = validate_keypoints(kps)
    miss = is_missing(out)
    out[:, 0] *= dst_hw[1] / src_hw[1]
    out[:, 1] *= dst_hw[0] / src_hw[0]
    out[miss] = MISSING
    return out


def flip_keypoints(kps: np.ndarray, width: int) -> np.ndarray:
    """Keypoints of the horizontally flipped image: ``x -> width - 1 - x`` and left/right swapped.

    After a mirror the person's left arm is where the right one was, so point i takes the
    coordinates of ``FLIP_PERMUTATION[i]`` (r_shoulder <-> l_shoulder, ...). Missing stays -1.

    Args:
        kps: ``(18, 2)`` (x, y) in an image of the given ``width``.
        width: image width W in pixels.

    Returns:
        ``float32 (18, 2)``.
    """
    src = validate_keypoints(kps)
    miss = is_missing(src)
    mirrored = src.copy()
    mirrored[:, 0] = (width - 1) - src[:, 0]
    mirrored[miss] = MISSING
    return mirrored[list(FLIP_PERMUTATION)]


def pidm_txt_to_image_frame(kps: np.ndarray, image_hw: tuple[int, int] = GFLA_FRAME_HW) -> np.ndarray:
    """PIDM ``pose/*.txt`` rows (256x256 frame, 40-px border) -> the image frame of an ``image_hw`` image.

    ``x_img = (x_txt - 40) * W / 176``, ``y_img = y_txt * H / 256``; for 256x176 images this is
    just ``x_txt - 40``. Missing points stay -1.
    """
    out = validate_keypoints(kps, "PIDM pose txt")
    miss = is_missing(out)
    content_w = PIDM_FRAME_HW[1] - 2 * PIDM_BORDER
    out[:, 0] = (out[:, 0] - PIDM_BORDER) * (image_hw[1] / content_w)
    out[:, 1] = out[:, 1] * (image_hw[0] / PIDM_FRAME_HW[0])
    out[miss] = MISSING
    return out


def image_frame_to_pidm_txt(kps: np.ndarray, image_hw: tuple[int, int] = GFLA_FRAME_HW) -> np.ndarray:
    """Inverse of :func:`pidm_txt_to_image_frame`: image-frame keypoints -> PIDM txt rows."""
    out = validate_keypoints(kps)
    miss = is_missing(out)
    content_w = PIDM_FRAME_HW[1] - 2 * PIDM_BORDER
    out[:, 0] = out[:, 0] * (content_w / image_hw[1]) + PIDM_BORDER
    out[:, 1] = out[:, 1] * (PIDM_FRAME_HW[0] / image_hw[0])
    out[miss] = MISSING
    return out


def _parse_list(values: ListLike, what: str) -> list[float]:
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not a JSON list of numbers ({e}): {values[:60]!r}") from None
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != NUM_KEYPOINTS:
        n = len(values) if hasattr(values, "__len__") else "?"
        raise ValueError(f"{what}: expected a list of {NUM_KEYPOINTS} numbers, got {type(values).__name__} of {n}")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: non-numeric entry ({e})") from None


def gfla_lists_to_kps(ys: ListLike, xs: ListLike) -> np.ndarray:
    """PATN/GFLA csv (``name:keypoints_y:keypoints_x``) -> ``float32 (18, 2)`` (x, y) in the 256x176 frame.

    Args:
        ys, xs: the two 18-long lists, as lists or as the csv strings ``"[12, 34, -1, ...]"``.
    """
    y = _parse_list(ys, "keypoints_y")
    x = _parse_list(xs, "keypoints_x")
    return validate_keypoints(np.stack([x, y], axis=1))


def kps_to_gfla_lists(kps: np.ndarray) -> tuple[list[int], list[int]]:
    """``(18, 2)`` (x, y) -> ``(ys, xs)`` integer lists of the PATN/GFLA csv (-1 missing).

    ``str(ys)`` is the csv cell (``"[12, 34, -1, ...]"``). Coordinates are rounded to the nearest pixel.
    """
    arr = validate_keypoints(kps)
    miss = is_missing(arr)
    xs = [-1 if m else int(round(float(v))) for v, m in zip(arr[:, 0], miss)]
    ys = [-1 if m else int(round(float(v))) for v, m in zip(arr[:, 1], miss)]
    return ys, xs


def render_skeleton(keypoints: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Draw the COCO-18 skeleton image the pose encoder sees (the authors' ``get_label_tensor``).

    Keypoints are scaled from ``src_hw`` to ``out_hw`` (for the authors: 256x176 -> 256x256), then
    18 filled circles of radius 4 and 17 filled ellipses of half-width 4 (sizes of a 256-px canvas,
    scaled with the output size) are drawn on black, each limb alpha-blended 0.4/0.6. Points or
    limbs with a missing end are skipped.

    Args:
        keypoints: ``(18, 2)`` (x, y) in the ``src_hw`` frame, -1 missing.
        src_hw: ``(H, W)`` of the frame the keypoints are in.
        out_hw: ``(h, w)`` of the output image.

    Returns:
        ``uint8 (h, w, 3)`` RGB (the authors then divide by the max to get [0, 1]).
    """
    h, w = int(out_hw[0]), int(out_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"render_skeleton: out_hw must be positive, got {out_hw}")
    pts = scale_keypoints(keypoints, src_hw, (h, w))
    miss = is_missing(pts)
    scale = max(h, w) / _REF_SIDE
    radius = max(1, int(round(_RADIUS * scale)))
    stick = max(1, int(round(_STICKWIDTH * scale)))

    canvas = np.zeros((h, w, 3), dtype=np.uint8)  # drawn directly in RGB with the RGB colours
    for i in range(NUM_KEYPOINTS):
        if not miss[i]:
            x, y = pts[i]
            cv2.circle(canvas, (int(x), int(y)), radius, RGB_COLORS[i], thickness=-1)
    for i, (a, b) in enumerate(LIMBS):
        if miss[a] or miss[b]:
            continue
        (xa, ya), (xb, yb) = pts[a], pts[b]
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), stick), int(angle), 0, 360, 1)
        limb = canvas.copy()
        cv2.fillConvexPoly(limb, polygon, RGB_COLORS[i])
        canvas = cv2.addWeighted(canvas, 1.0 - _LIMB_ALPHA, limb, _LIMB_ALPHA, 0)
    return canvas
