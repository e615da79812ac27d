"""Metrics valid only on the synthetic benchmark (reported with the ``synthetic_`` prefix).

The synthetic dataset draws people on a light, near-uniform background, so a foreground mask is a
colour threshold against the border colour. On real photos these numbers mean nothing.

- **pose**: silhouette IoU of the generated image with the ground truth, next to the
  *source-image baseline* (IoU of the unchanged source image with the ground truth) — a model that
  ignores the target pose scores no better than the baseline.
- **appearance**: per-part colour error — distance between the mean RGB colour of a body region
  (torso, legs; located from the target keypoints) in the generated image and in the ground truth,
  next to the *other-identity baseline* (the same error for another identity's ground truth image
  in the same kind of region).
- **consistency**: the same target generated from different source views of one identity should
  agree — mean pairwise pixel distance and silhouette IoU between those generations.

Images are ``(H, W, 3)`` uint8 or float in [0, 1]; keypoints ``(18, 2)`` ``(x, y)`` in the image's
pixel frame, ``-1`` missing (COCO-18 order, see ``xmdpt.data.schema.KEYPOINT_NAMES``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Optional, Sequence

import numpy as np
from skimage.draw import polygon as draw_polygon

from xmdpt.metrics.image import as_float01

logger = logging.getLogger(__name__)

# COCO-18 indices
R_SHOULDER, L_SHOULDER, R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE = 2, 5, 8, 9, 10, 11, 12, 13
PARTS = ("torso", "legs")


def foreground_mask(img: np.ndarray, threshold: float = 0.15, border: int = 2) -> np.ndarray:
    """Boolean ``(H, W)`` mask of pixels that differ from the background colour.

    The background colour is the per-channel median of a ``border``-pixel frame; a pixel is
    foreground when any channel differs from it by more than ``threshold`` (in [0, 1] units).
    """
    a = as_float01(img)
    frame = np.concatenate([a[:border].reshape(-1, 3), a[-border:].reshape(-1, 3),
                            a[:, :border].reshape(-1, 3), a[:, -border:].reshape(-1, 3)])
    bg = np.median(frame, axis=0)  # (3,)
    return np.abs(a - bg).max(axis=2) > threshold  # (H, W)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def silhouette_iou(img_a: np.ndarray, img_b: np.ndarray) -> float:
    """IoU of the foreground masks of two images."""
    return mask_iou(foreground_mask(img_a), foreground_mask(img_b))


def pose_match(mask: np.ndarray, target: np.ndarray, others: Sequence[np.ndarray]) -> Optional[float]:
    """How well a silhouette picks out its target pose among other poses of the same person.

    The share of ``others`` (foreground masks of the same person in other poses) that overlap
    ``mask`` less than the ``target`` mask does (ties count half): 1.0 for the target's pose, 0.5
    for a silhouette that ignores the pose (an average body scores high silhouette IoU with every
    pose, but no higher with the target than with the rest). None without ``others``. Masks come
    from :func:`foreground_mask`.
    """
    if not others:
        return None
    own = mask_iou(mask, target)
    ious = np.array([mask_iou(mask, o) for o in others])
    return float(np.mean((ious < own) + 0.5 * (ious == own)))


def _valid(kps: np.ndarray, idx: tuple[int, ...]) -> bool:
    return bool(np.all(kps[list(idx)] >= 0))


def _capsule(hw: tuple[int, int], p: np.ndarray, q: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the segment ``p``-``q`` (``(x, y)`` points). Returns bool ``(H, W)``.

    Distances are computed only inside the segment's bounding box grown by ``radius`` (no pixel
    centre outside it can be that close), which is where the evaluation spends its time otherwise.
    """
    h, w = hw
    out = np.zeros((h, w), dtype=bool)
    x0 = max(int(np.floor(min(p[0], q[0]) - radius)) - 1, 0)
    x1 = min(int(np.ceil(max(p[0], q[0]) + radius)) + 1, w)
    y0 = max(int(np.floor(min(p[1], q[1]) - radius)) - 1, 0)
    y1 = min(int(np.ceil(max(p[1], q[1]) + radius)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([xx + 0.5, yy + 0.5], axis=-1)  # (h', w', 2) pixel centres
    d = q - p
    t = np.clip(((pts - p) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)  # (h', w')
    closest = p + t[..., None] * d
    out[y0:y1, x0:x1] = np.linalg.norm(pts - closest, axis=-1) <= radius
    return out


def part_masks(keypoints: np.ndarray, hw: tuple[int, int]) -> dict[str, Optional[np.ndarray]]:
    """Body-part regions from COCO-18 keypoints: ``{"torso": mask | None, "legs": mask | None}``.

    torso = the shoulder/hip quadrilateral; legs = capsules along hip-knee-ankle of both legs with
    a radius of 1/4 of the hip width (at least 2 px). A part is ``None`` when its keypoints are missing.
    """
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if kps.shape[0] != 18:
        raise ValueError(f"expected 18 keypoints, got {kps.shape[0]}")
    out: dict[str, Optional[np.ndarray]] = {"torso": None, "legs": None}
    if _valid(kps, (R_SHOULDER, L_SHOULDER, L_HIP, R_HIP)):
        quad = kps[[R_SHOULDER, L_SHOULDER, L_HIP, R_HIP]]
        m = np.zeros(hw, dtype=bool)
        rr, cc = draw_polygon(quad[:, 1], quad[:, 0], shape=hw)
        m[rr, cc] = True
        out["torso"] = m if m.any() else None
    legs = np.zeros(hw, dtype=bool)
    hip_w = np.linalg.norm(kps[R_HIP] - kps[L_HIP]) if _valid(kps, (R_HIP, L_HIP)) else 0.08 * hw[1]
    radius = max(hip_w / 4.0, 2.0)
    for a, b in ((R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE)):
        if _valid(kps, (a, b)):
            legs |= _capsule(hw, kps[a], kps[b], radius)
    out["legs"] = legs if legs.any() else None
    return out


def mean_colour(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB ``(3,)`` in [0, 1] of ``img`` over ``mask`` (must be non-empty)."""
    a = as_float01(img)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {a.shape[:2]}")
    if not mask.any():
        raise ValueError("empty region")
    return a[mask].mean(axis=0)


def part_colour_error(img: np.ndarray, img_keypoints: np.ndarray, ref: np.ndarray,
                      ref_keypoints: np.ndarray) -> dict[str, Optional[float]]:
    """Per-part colour error: ``|mean colour of part in img - mean colour of part in ref|_2`` (RGB, [0, 1] units).

    Each image's region comes from its own keypoints (for a generation: the target keypoints it was
    asked to follow). ``None`` for a part missing in either.
    """
    a, b = as_float01(img), as_float01(ref)
    pa = part_masks(img_keypoints, a.shape[:2])
    same = a.shape[:2] == b.shape[:2] and np.array_equal(np.asarray(img_keypoints), np.asarray(ref_keypoints))
    pb = pa if same else part_masks(ref_keypoints, b.shape[:2])  # a generation and its ground truth share keypoints
    out: dict[str, Optional[float]] = {}
    for part in PARTS:
        if pa[part] is None or pb[part] is None:
            out[part] = None
        else:
            out[part] = float(np.linalg.norm(mean_colour(a, pa[part]) - mean_colour(b, pb[part])))
    return out


def view_consistency(images: list[np.ndarray]) -> dict[str, float]:
    """Agreement of generations of one target from different source views (>= 2 images).

    Returns ``{"pixel_l1": mean pairwise mean-absolute difference in [0, 1], "iou": mean pairwise
    silhouette IoU}``.
    """
    if len(images) < 2:
        raise ValueError(f"need at least 2 generations to compare, got {len(images)}")
    arrs = [as_float01(x) for x in images]
    masks = [foreground_mask(x) for x in arrs]
    l1, iou = [], []
    for i, j in itertools.combinations(range(len(arrs)), 2):
        l1.append(float(np.abs(arrs[i] - arrs[j]).mean()))
        iou.append(mask_iou(masks[i], masks[j]))
    return {"pixel_l1": float(np.mean(l1)), "iou": float(np.mean(iou))}
