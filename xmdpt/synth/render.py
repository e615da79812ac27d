"""Drawing a synthetic person: one view of a posed figure as a 256x176 (H x W) image + its keypoints.

The 3-D joints are rotated by the view azimuth and projected orthographically; body parts (torso
box, capsule limbs, head with hair, shoes) are drawn far-to-near (painter's algorithm on depth)
with anti-aliased edges, outlines and pattern textures. The 18 COCO keypoints are the projected
joints; occluded points are missing (-1): face points facing away from the camera, far-side joints
hidden behind the torso, and a few dropped at random (as a real detector misses some).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np

from xmdpt.data.schema import NUM_KEYPOINTS
from xmdpt.synth.figure import (
    DROP_PROB,
    IMAGE_HW,
    L_ANK,
    L_EAR,
    L_ELB,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHO,
    L_WRI,
    NECK,
    NOSE,
    R_ANK,
    R_EAR,
    R_ELB,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHO,
    R_WRI,
    VIEWS,
    Appearance,
    Pose3D,
    sample_appearance,
    sample_pose,
    unit,
    view_azimuth,
)

# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_SHIFT = 2  # cv2 sub-pixel bits
_SUB = 1 << _SHIFT


def _texture(kind: str, base: tuple[int, int, int], second: tuple[int, int, int], period: int,
             anchor: tuple[float, float], grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A garment print in image space, anchored to a body point so it moves with the person. (H, W, 3) float32."""
    yy, xx = grid
    u, v = xx - anchor[0], yy - anchor[1]
    if kind == "stripes":
        sel = (np.floor(v / period) % 2) == 1
    elif kind == "checks":
        sel = ((np.floor(u / period) + np.floor(v / period)) % 2) == 1
    elif kind == "dots":
        cu = (u % period) - period / 2
        cv = (v % period) - period / 2
        sel = (cu * cu + cv * cv) < (period * 0.28) ** 2
    else:
        sel = np.zeros_like(u, dtype=bool)
    tex = np.empty(u.shape + (3,), dtype=np.float32)
    tex[:] = np.asarray(base, dtype=np.float32)
    tex[sel] = np.asarray(second, dtype=np.float32)
    return tex


@dataclass
class _Part:
    depth: float
    draw: Callable[[np.ndarray, int], None]  # draws the shape into a uint8 mask with value 255, extra width
    fill: object  # (3,) colour or (H, W, 3) texture
    shade: float  # multiplicative darkening for far-side parts


def _composite(canvas: np.ndarray, mask: np.ndarray, fill: object, shade: float,
               coverage: Optional[np.ndarray] = None) -> None:
    """Alpha-blend ``fill`` (colour or texture) through ``mask`` (uint8 alpha); track the figure's coverage."""
    x0, y0, bw, bh = cv2.boundingRect(mask)  # non-zero pixels
    if bw == 0 or bh == 0:
        return
    y1, x1 = y0 + bh, x0 + bw
    a = mask[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    f = fill[y0:y1, x0:x1] if isinstance(fill, np.ndarray) and fill.ndim == 3 else np.asarray(fill, np.float32)
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + (f * shade) * a
    if coverage is not None:
        np.maximum(coverage[y0:y1, x0:x1], a[..., 0], out=coverage[y0:y1, x0:x1])


def depth_of(*pts: np.ndarray) -> float:
    """Mean depth (z, toward the camera) of 3-D points."""
    return float(np.mean([p[2] for p in pts]))


def _p(pt: np.ndarray) -> tuple[int, int]:
    return int(round(pt[0] * _SUB)), int(round(pt[1] * _SUB))


def _capsule(a: np.ndarray, b: np.ndarray, width: float) -> Callable[[np.ndarray, int], None]:
    def draw(mask: np.ndarray, extra: int) -> None:
        t = max(1, int(round(width + 2 * extra)))
        cv2.line(mask, _p(a), _p(b), 255, thickness=t, lineType=cv2.LINE_AA, shift=_SHIFT)
    return draw


def _polygon(pts: np.ndarray) -> Callable[[np.ndarray, int], None]:
    hull = cv2.convexHull(np.round(pts * _SUB).astype(np.int32))

    def draw(mask: np.ndarray, extra: int) -> None:
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=_SHIFT)
        if extra:
            cv2.polylines(mask, [hull], True, 255, thickness=2 * extra, lineType=cv2.LINE_AA, shift=_SHIFT)
    return draw


def _ellipse(c: np.ndarray, axes: tuple[float, float], angle: float) -> Callable[[np.ndarray, int], None]:
    def draw(mask: np.ndarray, extra: int) -> None:
        ax = (max(1, int(round((axes[0] + extra) * _SUB))), max(1, int(round((axes[1] + extra) * _SUB))))
        cv2.ellipse(mask, _p(c), ax, angle, 0, 360, 255, thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)
    return draw


def _box_points(centre_a: np.ndarray, centre_b: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
                depth_dir: np.ndarray, thick_a: float, thick_b: float) -> np.ndarray:
    """8 corners of a 3-D slab between two cross-sections (for torso, pelvis, skirt). (8, 3)"""
    pts = []
    for c, half, th in ((centre_a, half_a, thick_a), (centre_b, half_b, thick_b)):
        for sx in (-1, 1):
            for sz in (-1, 1):
                pts.append(c + sx * half + sz * depth_dir * th)
    return np.array(pts)


def _render_view(app: Appearance, pose: Pose3D, rng: np.random.Generator,
                 grid: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one view. Returns image uint8 (H, W, 3), keypoints float32 (18, 2) (-1 missing), figure mask (H, W)."""
    h, w = IMAGE_HW
    px = rng.uniform(205, 228)  # pixels per body unit
    cx = w / 2 + rng.uniform(-8, 8)
    ground = h - rng.uniform(6, 14)

    def proj(p: np.ndarray) -> np.ndarray:  # (..., 3) -> (..., 2) image (x, y)
        p = np.asarray(p, dtype=np.float64)
        return np.stack([cx + px * p[..., 0], ground - px * p[..., 1]], axis=-1)

    j3 = pose.joints
    j2 = proj(j3)  # (18, 2)
    lw = px * app.limb  # limb widths in pixels per body unit

    # background: light studio wall with a soft gradient and a floor shadow
    tone = rng.uniform(228, 250)
    tint = rng.uniform(-6, 6, size=3)
    yy = grid[0][:, :1]
    canvas = np.empty((h, w, 3), dtype=np.float32)
    canvas[:] = (tone + tint)[None, None, :] - (12 * yy / h)[:, :, None]
    shadow = np.zeros((h, w), dtype=np.uint8)
    feet_x = float(np.mean(j2[[L_ANK, R_ANK], 0]))
    cv2.ellipse(shadow, (int(feet_x), int(ground - 2)), (int(0.16 * px), 6), 0, 0, 360, 90, -1, cv2.LINE_AA)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 3)
    canvas *= (1 - shadow[:, :, None].astype(np.float32) / 400.0)

    top_tex = _texture(app.top_pattern, app.top, app.top2, app.top_period, tuple(j2[NECK]), grid)
    hip_mid = proj(pose.hip_centre)
    bottom_tex = _texture(app.bottom_pattern, app.bottom, app.bottom2, app.bottom_period, tuple(hip_mid), grid)
    skin = np.array(app.skin, np.float32)
    one_piece = app.bottom_kind in ("dress", "romper")
    leg_tex = top_tex if one_piece else bottom_tex

    parts: list[_Part] = []
    torso_depth = float(np.mean(j3[[NECK, L_HIP, R_HIP], 2]))

    def shade_for(depth: float) -> float:
        return 0.82 if depth < torso_depth - 0.03 else 1.0

    # torso (a 3-D slab from shoulders to hips, projected, convex hull)
    left = unit(j3[L_SHO] - j3[R_SHO])
    waist = pose.hip_centre + pose.up * 0.11
    chest3 = _box_points(j3[NECK] + pose.up * 0.005, waist, left * (app.shoulder + 0.005),
                         left * (app.hip + 0.005), pose.fwd, 0.065, 0.06)
    belly3 = _box_points(waist + pose.up * 0.01, pose.hip_centre, left * (app.hip + 0.005),
                         left * (app.hip + 0.02), pose.fwd, 0.06, 0.07)
    torso_poly = proj(np.concatenate([chest3, belly3]))
    parts.append(_Part(torso_depth, _polygon(proj(chest3)), top_tex, 1.0))
    parts.append(_Part(torso_depth, _polygon(proj(belly3)), top_tex, 1.0))
    # pelvis / crotch (bottom garment), skirt or dress flare
    knee_mid = (j3[L_KNEE] + j3[R_KNEE]) / 2
    if app.bottom_kind in ("skirt", "dress"):
        hem = pose.hip_centre + (knee_mid - pose.hip_centre) * (1.05 if app.bottom_kind == "dress" else 0.9)
        skirt3 = _box_points(pose.hip_centre + pose.up * 0.02, hem, left * (app.hip + 0.025),
                             left * (app.hip + 0.07), pose.fwd, 0.08, 0.1)
        skirt_fill = top_tex if app.bottom_kind == "dress" else bottom_tex
        # the skirt hangs in front of the thighs it covers (they are drawn first)
        skirt_depth = max(torso_depth, float(j3[[L_HIP, R_HIP, L_KNEE, R_KNEE], 2].max())) + 0.01
        parts.append(_Part(skirt_depth, _polygon(proj(skirt3)), skirt_fill, 1.0))
    else:
        crotch = pose.hip_centre - pose.up * 0.09
        pelvis3 = _box_points(pose.hip_centre + pose.up * 0.03, crotch, left * (app.hip + 0.02),
                              left * (app.hip * 0.6), pose.fwd, 0.075, 0.06)
        parts.append(_Part(torso_depth - 0.001, _polygon(proj(pelvis3)), leg_tex, 1.0))

    # neck and head
    head2 = proj(pose.head)
    hr = 0.062 * px * app.height
    neck_top = pose.head - pose.up * 0.03
    parts.append(_Part(float(pose.head[2]) - 0.02, _capsule(proj(j3[NECK]), proj(neck_top), 0.06 * lw), skin, 1.0))
    # head: an ellipse slightly taller than wide
    parts.append(_Part(float(pose.head[2]), _ellipse(head2, (hr * 0.92, hr * 1.1), 0), skin, 1.0))
    # hair: a cap offset up and backwards from the head centre -> rim on top from the front, full from the back
    hair_c = pose.head + pose.up * 0.016 - pose.head_fwd * 0.016
    parts.append(_Part(float(hair_c[2]), _ellipse(proj(hair_c), (hr * 0.98, hr * 1.1), 0), app.hair, 1.0))
    if app.long_hair:
        long_c = pose.head - pose.head_fwd * 0.03 - pose.up * 0.075
        parts.append(_Part(float(long_c[2]), _ellipse(proj(long_c), (hr * 1.05, hr * 1.75), 0), app.hair, 1.0))

    # arms
    for sho, elb, wri in ((L_SHO, L_ELB, L_WRI), (R_SHO, R_ELB, R_WRI)):
        d = depth_of(j3[sho], j3[elb]) + 0.001
        sh = shade_for(d)
        a, b, c = j2[sho], j2[elb], j2[wri]
        upper_fill = skin if app.sleeves == "none" else top_tex
        if app.sleeves == "short":
            mid = a + (b - a) * 0.55
            parts.append(_Part(d - 0.0005, _capsule(a, b, 0.052 * lw), skin, sh))
            parts.append(_Part(d, _capsule(a, mid, 0.07 * lw), top_tex, sh))
        else:
            parts.append(_Part(d, _capsule(a, b, 0.062 * lw), upper_fill, sh))
        d2 = depth_of(j3[elb], j3[wri]) + 0.002
        fore_fill = top_tex if app.sleeves == "long" else skin
        parts.append(_Part(d2, _capsule(b, c, 0.054 * lw if app.sleeves == "long" else 0.046 * lw), fore_fill,
                           shade_for(d2)))
        hand = j3[wri] + unit(j3[wri] - j3[elb]) * 0.03
        parts.append(_Part(d2 + 0.001, _capsule(c, proj(hand), 0.045 * lw), skin, shade_for(d2)))

    # legs
    for hip, knee, ank in ((L_HIP, L_KNEE, L_ANK), (R_HIP, R_KNEE, R_ANK)):
        d = depth_of(j3[hip], j3[knee]) - 0.001
        a, b, c = j2[hip], j2[knee], j2[ank]
        sh = shade_for(d)
        if app.bottom_kind == "pants":
            parts.append(_Part(d, _capsule(a, b, 0.09 * lw), leg_tex, sh))
            parts.append(_Part(d, _capsule(b, c, 0.072 * lw), leg_tex, sh))
        elif app.bottom_kind in ("shorts", "romper"):
            parts.append(_Part(d - 0.0005, _capsule(a, b, 0.075 * lw), skin, sh))
            parts.append(_Part(d, _capsule(a, a + (b - a) * 0.6, 0.095 * lw), leg_tex, sh))
            parts.append(_Part(d, _capsule(b, c, 0.06 * lw), skin, sh))
        else:  # skirt/dress: bare legs (the skirt slab is drawn on top by depth)
            parts.append(_Part(d, _capsule(a, b, 0.075 * lw), skin, sh))
            parts.append(_Part(d, _capsule(b, c, 0.06 * lw), skin, sh))
        toe = j3[ank] + unit(pose.fwd * [1, 0, 1]) * 0.075 - pose.up * 0.012
        parts.append(_Part(depth_of(j3[ank], toe) + 0.002, _capsule(c, proj(toe), 0.055 * lw), app.shoes, sh))

    # painter's algorithm: far (small z) first; outline (darker, wider) under each fill
    mask = np.zeros((h, w), dtype=np.uint8)
    coverage = np.zeros((h, w), dtype=np.float32)  # where the figure is (alpha of the union of parts)
    for part in sorted(parts, key=lambda p: p.depth):
        mask[:] = 0
        part.draw(mask, 1)
        fill = part.fill
        outline = (np.asarray(fill, np.float32) if not (isinstance(fill, np.ndarray) and fill.ndim == 3)
                   else fill[int(np.clip(j2[NECK, 1], 0, h - 1)), int(np.clip(j2[NECK, 0], 0, w - 1))]) * 0.55
        _composite(canvas, mask, outline, 1.0, coverage)
        mask[:] = 0
        part.draw(mask, 0)
        _composite(canvas, mask, fill, part.shade, coverage)

    # face details where the face is toward the camera
    if pose.head_fwd[2] > 0.25:
        for eye in (L_EYE, R_EYE):
            cv2.circle(canvas, _p(j2[eye]), max(1, int(0.12 * hr * _SUB)), (40, 30, 30), -1, cv2.LINE_AA, _SHIFT)
        mouth = pose.head + pose.head_fwd * 0.8 * 0.062 * app.height - pose.up * 0.45 * 0.062 * app.height
        m2 = proj(mouth)
        cv2.line(canvas, _p(m2 - [hr * 0.22, 0]), _p(m2 + [hr * 0.22, 0]), (150, 60, 60), 1, cv2.LINE_AA, _SHIFT)

    # soft rim shading: the figure darkens toward its silhouette, which reads as volume
    rim = cv2.GaussianBlur(coverage, (0, 0), 3.0)
    canvas *= (1.0 - 0.28 * coverage * (1.0 - np.clip(rim, 0.0, 1.0)) * 2.0)[:, :, None]
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    keypoints = _visible_keypoints(pose, j2, torso_poly, torso_depth, rng)
    return image, keypoints, coverage


def _visible_keypoints(pose: Pose3D, j2: np.ndarray, torso_poly: np.ndarray, torso_depth: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Integer (x, y) keypoints in the image frame, -1 where occluded, outside, or randomly missed."""
    h, w = IMAGE_HW
    kps = np.round(j2).astype(np.float32)  # (18, 2)
    visible = np.ones(NUM_KEYPOINTS, dtype=bool)
    f, sd = pose.head_fwd, pose.head_side
    visible[NOSE] = f[2] > -0.2
    for side, eye, ear in ((1, L_EYE, L_EAR), (-1, R_EYE, R_EAR)):
        visible[eye] = unit(0.8 * f + 0.6 * side * sd)[2] > 0.1
        visible[ear] = (side * sd)[2] > -0.3 and f[2] > -0.6
    hull = cv2.convexHull(torso_poly.astype(np.float32))
    for k in (R_ELB, R_WRI, L_ELB, L_WRI, R_HIP, L_HIP, R_KNEE, L_KNEE):
        if pose.joints[k, 2] < torso_depth - 0.08 and cv2.pointPolygonTest(hull, tuple(map(float, j2[k])), False) > 0:
            visible[k] = False  # hidden behind the body
    visible &= rng.random(NUM_KEYPOINTS) >= DROP_PROB
    visible &= (kps[:, 0] >= 0) & (kps[:, 0] <= w - 1) & (kps[:, 1] >= 0) & (kps[:, 1] <= h - 1)
    kps[~visible] = -1.0
    return kps


class SynthView(NamedTuple):
    """One rendered view of a synthetic identity."""

    view: str  # "1_front", ...
    image: np.ndarray  # uint8 (256, 176, 3) RGB
    keypoints: np.ndarray  # float32 (18, 2) (x, y) integer pixels, -1 missing
    mask: np.ndarray  # float32 (256, 176) in [0, 1]: the figure's silhouette (anti-aliased)


def render_identity_views(seed: int, gender: str, category: str, views: tuple[str, ...] = VIEWS) -> list[SynthView]:
    """Render all views of one identity.

    Args:
        seed: the identity's seed (appearance and poses follow from it).
        gender, category: DeepFashion folder names.
        views: view suffixes (``"1_front"``, ...).

    Returns:
        one :class:`SynthView` per view, in order.
    """
    rng = np.random.default_rng(seed)
    app = sample_appearance(rng, gender, category)
    h, w = IMAGE_HW
    grid = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    out = []
    for view in views:
        pose = sample_pose(rng, app, view_azimuth(rng, view))
        image, kps, mask = _render_view(app, pose, rng, (grid[0], grid[1]))
        out.append(SynthView(view, image, kps, mask))
    return out
