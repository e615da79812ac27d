"""Drawing a synthetic person: one view of a posed figure as a 256x176 (H x W) image + its keypoints.

The 3-D joints are rotated by the view azimuth and projected orthographically; body parts (torso
box, capsule limbs, head with hair, shoes) are drawn far-to-near (painter's algorithm on depth)
with anti-aliased edges, outlines and pattern textures. The 18 COCO keypoints are the projected
joints; occluded points are missing (-1): face points facing away from the camera, far-side joints
hidden behind the torso, and a few dropped at random (as a real detector misses some). The shapes
and the compositing are :mod:`xmdpt.synth.draw`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

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
from xmdpt.synth.draw import (
    SHIFT,
    SUB,
    Part,
    box_points,
    capsule,
    composite,
    depth_of,
    ellipse,
    fixed_point,
    polygon,
    texture,
)

# --------------------------------------------------------------------------------------------
# One view
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """Orthographic projection of body units into the image: scale, horizontal centre, ground line."""

    px: float  # pixels per body unit
    cx: float
    ground: float

    def project(self, p: np.ndarray) -> np.ndarray:
        """(..., 3) -> (..., 2) image (x, y)."""
        p = np.asarray(p, dtype=np.float64)
        return np.stack([self.cx + self.px * p[..., 0], self.ground - self.px * p[..., 1]], axis=-1)


@dataclass(frozen=True)
class _Figure:
    """What the body-part builders share: the posed figure, its projection, sizes and fills."""

    app: Appearance
    pose: Pose3D
    proj: Callable[[np.ndarray], np.ndarray]
    j2: np.ndarray  # (18, 2) projected joints
    lw: float  # limb widths in pixels per body unit
    hr: float  # head radius in pixels
    torso_depth: float
    skin: np.ndarray
    top_tex: np.ndarray
    bottom_tex: np.ndarray
    leg_tex: np.ndarray

    def shade_for(self, depth: float) -> float:
        """Far-side parts (behind the torso) are darkened."""
        return 0.82 if depth < self.torso_depth - 0.03 else 1.0


def _background(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], cam: _Camera,
                j2: np.ndarray) -> np.ndarray:
    """Light studio wall with a soft gradient and a floor shadow under the feet. (H, W, 3) float32."""
    h, w = IMAGE_HW
    tone = rng.uniform(228, 250)
    tint = rng.uniform(-6, 6, size=3)
    yy = grid[0][:, :1]
    canvas = np.empty((h, w, 3), dtype=np.float32)
    canvas[:] = (tone + tint)[None, None, :] - (12 * yy / h)[:, :, None]
    shadow = np.zeros((h, w), dtype=np.uint8)
    feet_x = float(np.mean(j2[[L_ANK, R_ANK], 0]))
    cv2.ellipse(shadow, (int(feet_x), int(cam.ground - 2)), (int(0.16 * cam.px), 6), 0, 0, 360, 90, -1,
                cv2.LINE_AA)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 3)
    canvas *= (1 - shadow[:, :, None].astype(np.float32) / 400.0)
    return canvas


def _figure(app: Appearance, pose: Pose3D, cam: _Camera, j2: np.ndarray,
            grid: tuple[np.ndarray, np.ndarray]) -> _Figure:
    """Sizes, depth of the torso and the garment textures of the figure in this view."""
    j3 = pose.joints
    top_tex = texture(app.top_pattern, app.top, app.top2, app.top_period, tuple(j2[NECK]), grid)
    hip_mid = cam.project(pose.hip_centre)
    bottom_tex = texture(app.bottom_pattern, app.bottom, app.bottom2, app.bottom_period, tuple(hip_mid), grid)
    one_piece = app.bottom_kind in ("dress", "romper")
    return _Figure(
        app=app, pose=pose, proj=cam.project, j2=j2, lw=cam.px * app.limb, hr=0.062 * cam.px * app.height,
        torso_depth=float(np.mean(j3[[NECK, L_HIP, R_HIP], 2])), skin=np.array(app.skin, np.float32),
        top_tex=top_tex, bottom_tex=bottom_tex, leg_tex=top_tex if one_piece else bottom_tex,
    )


def _torso_parts(fig: _Figure) -> tuple[list[Part], np.ndarray]:
    """Torso (chest and belly slabs) and the pelvis, skirt or dress flare; also the torso outline (16, 2)."""
    app, pose, proj, j3 = fig.app, fig.pose, fig.proj, fig.pose.joints
    parts: list[Part] = []
    # torso (a 3-D slab from shoulders to hips, projected, convex hull)
    left = unit(j3[L_SHO] - j3[R_SHO])
    waist = pose.hip_centre + pose.up * 0.11
    chest3 = box_points(j3[NECK] + pose.up * 0.005, waist, left * (app.shoulder + 0.005),
                        left * (app.hip + 0.005), pose.fwd, 0.065, 0.06)
    belly3 = box_points(waist + pose.up * 0.01, pose.hip_centre, left * (app.hip + 0.005),
                        left * (app.hip + 0.02), pose.fwd, 0.06, 0.07)
    torso_poly = proj(np.concatenate([chest3, belly3]))
    parts.append(Part(fig.torso_depth, polygon(proj(chest3)), fig.top_tex, 1.0))
    parts.append(Part(fig.torso_depth, polygon(proj(belly3)), fig.top_tex, 1.0))
    # pelvis / crotch (bottom garment), skirt or dress flare
    knee_mid = (j3[L_KNEE] + j3[R_KNEE]) / 2
    if app.bottom_kind in ("skirt", "dress"):
        hem = pose.hip_centre + (knee_mid - pose.hip_centre) * (1.05 if app.bottom_kind == "dress" else 0.9)
        skirt3 = box_points(pose.hip_centre + pose.up * 0.02, hem, left * (app.hip + 0.025),
                            left * (app.hip + 0.07), pose.fwd, 0.08, 0.1)
        skirt_fill = fig.top_tex if app.bottom_kind == "dress" else fig.bottom_tex
        # the skirt hangs in front of the thighs it covers (they are drawn first)
        skirt_depth = max(fig.torso_depth, float(j3[[L_HIP, R_HIP, L_KNEE, R_KNEE], 2].max())) + 0.01
        parts.append(Part(skirt_depth, polygon(proj(skirt3)), skirt_fill, 1.0))
    else:
        crotch = pose.hip_centre - pose.up * 0.09
        pelvis3 = box_points(pose.hip_centre + pose.up * 0.03, crotch, left * (app.hip + 0.02),
                             left * (app.hip * 0.6), pose.fwd, 0.075, 0.06)
        parts.append(Part(fig.torso_depth - 0.001, polygon(proj(pelvis3)), fig.leg_tex, 1.0))
    return parts, torso_poly


def _head_parts(fig: _Figure) -> list[Part]:
    """Neck, head and hair (a cap, plus a long fall behind the head for long hair)."""
    app, pose, proj, hr = fig.app, fig.pose, fig.proj, fig.hr
    head2 = proj(pose.head)
    neck_top = pose.head - pose.up * 0.03
    parts = [Part(float(pose.head[2]) - 0.02, capsule(proj(pose.joints[NECK]), proj(neck_top), 0.06 * fig.lw),
                  fig.skin, 1.0)]
    # head: an ellipse slightly taller than wide
    parts.append(Part(float(pose.head[2]), ellipse(head2, (hr * 0.92, hr * 1.1), 0), fig.skin, 1.0))
    # hair: a cap offset up and backwards from the head centre -> rim on top from the front, full from the back
    hair_c = pose.head + pose.up * 0.016 - pose.head_fwd * 0.016
    parts.append(Part(float(hair_c[2]), ellipse(proj(hair_c), (hr * 0.98, hr * 1.1), 0), app.hair, 1.0))
    if app.long_hair:
        long_c = pose.head - pose.head_fwd * 0.03 - pose.up * 0.075
        parts.append(Part(float(long_c[2]), ellipse(proj(long_c), (hr * 1.05, hr * 1.75), 0), app.hair, 1.0))
    return parts


def _arm_parts(fig: _Figure) -> list[Part]:
    """Upper arms, forearms and hands, sleeved as the top garment says."""
    app, j3, j2, lw, skin, top_tex = fig.app, fig.pose.joints, fig.j2, fig.lw, fig.skin, fig.top_tex
    parts: list[Part] = []
    for sho, elb, wri in ((L_SHO, L_ELB, L_WRI), (R_SHO, R_ELB, R_WRI)):
        d = depth_of(j3[sho], j3[elb]) + 0.001
        sh = fig.shade_for(d)
        a, b, c = j2[sho], j2[elb], j2[wri]
        upper_fill = skin if app.sleeves == "none" else top_tex
        if app.sleeves == "short":
            mid = a + (b - a) * 0.55
            parts.append(Part(d - 0.0005, capsule(a, b, 0.052 * lw), skin, sh))
            parts.append(Part(d, capsule(a, mid, 0.07 * lw), top_tex, sh))
        else:
            parts.append(Part(d, capsule(a, b, 0.062 * lw), upper_fill, sh))
        d2 = depth_of(j3[elb], j3[wri]) + 0.002
        fore_fill = top_tex if app.sleeves == "long" else skin
        parts.append(Part(d2, capsule(b, c, 0.054 * lw if app.sleeves == "long" else 0.046 * lw), fore_fill,
                          fig.shade_for(d2)))
        hand = j3[wri] + unit(j3[wri] - j3[elb]) * 0.03
        parts.append(Part(d2 + 0.001, capsule(c, fig.proj(hand), 0.045 * lw), skin, fig.shade_for(d2)))
    return parts


def _leg_parts(fig: _Figure) -> list[Part]:
    """Thighs, shins and shoes, covered as the bottom garment says."""
    app, pose, j3, j2, lw, skin, leg_tex = fig.app, fig.pose, fig.pose.joints, fig.j2, fig.lw, fig.skin, fig.leg_tex
    parts: list[Part] = []
    for hip, knee, ank in ((L_HIP, L_KNEE, L_ANK), (R_HIP, R_KNEE, R_ANK)):
        d = depth_of(j3[hip], j3[knee]) - 0.001
        a, b, c = j2[hip], j2[knee], j2[ank]
        sh = fig.shade_for(d)
        if app.bottom_kind == "pants":
            parts.append(Part(d, capsule(a, b, 0.09 * lw), leg_tex, sh))
            parts.append(Part(d, capsule(b, c, 0.072 * lw), leg_tex, sh))
        elif app.bottom_kind in ("shorts", "romper"):
            parts.append(Part(d - 0.0005, capsule(a, b, 0.075 * lw), skin, sh))
            parts.append(Part(d, capsule(a, a + (b - a) * 0.6, 0.095 * lw), leg_tex, sh))
            parts.append(Part(d, capsule(b, c, 0.06 * lw), skin, sh))
        else:  # skirt/dress: bare legs (the skirt slab is drawn on top by depth)
            parts.append(Part(d, capsule(a, b, 0.075 * lw), skin, sh))
            parts.append(Part(d, capsule(b, c, 0.06 * lw), skin, sh))
        toe = j3[ank] + unit(pose.fwd * [1, 0, 1]) * 0.075 - pose.up * 0.012
        parts.append(Part(depth_of(j3[ank], toe) + 0.002, capsule(c, fig.proj(toe), 0.055 * lw), app.shoes, sh))
    return parts


def _paint(canvas: np.ndarray, parts: list[Part], j2: np.ndarray) -> np.ndarray:
    """Painter's algorithm: far (small z) first; outline (darker, wider) under each fill.

    Returns the figure's coverage (alpha of the union of parts), float32 (H, W).
    """
    h, w = IMAGE_HW
    mask = np.zeros((h, w), dtype=np.uint8)
    coverage = np.zeros((h, w), dtype=np.float32)  # where the figure is (alpha of the union of parts)
    for part in sorted(parts, key=lambda p: p.depth):
        mask[:] = 0
        part.draw(mask, 1)
        fill = part.fill
        outline = (np.asarray(fill, np.float32) if not (isinstance(fill, np.ndarray) and fill.ndim == 3)
                   else fill[int(np.clip(j2[NECK, 1], 0, h - 1)), int(np.clip(j2[NECK, 0], 0, w - 1))]) * 0.55
        composite(canvas, mask, outline, 1.0, coverage)
        mask[:] = 0
        part.draw(mask, 0)
        composite(canvas, mask, fill, part.shade, coverage)
    return coverage


def _face_details(canvas: np.ndarray, fig: _Figure) -> None:
    """Eyes and mouth, where the face is toward the camera."""
    app, pose, hr = fig.app, fig.pose, fig.hr
    if pose.head_fwd[2] > 0.25:
        for eye in (L_EYE, R_EYE):
            cv2.circle(canvas, fixed_point(fig.j2[eye]), max(1, int(0.12 * hr * SUB)), (40, 30, 30), -1, cv2.LINE_AA,
                       SHIFT)
        mouth = pose.head + pose.head_fwd * 0.8 * 0.062 * app.height - pose.up * 0.45 * 0.062 * app.height
        m2 = fig.proj(mouth)
        cv2.line(canvas, fixed_point(m2 - [hr * 0.22, 0]), fixed_point(m2 + [hr * 0.22, 0]), (150, 60, 60), 1,
                 cv2.LINE_AA, SHIFT)


def _rim_shade(canvas: np.ndarray, coverage: np.ndarray) -> None:
    """Soft rim shading: the figure darkens toward its silhouette, which reads as volume."""
    rim = cv2.GaussianBlur(coverage, (0, 0), 3.0)
    canvas *= (1.0 - 0.28 * coverage * (1.0 - np.clip(rim, 0.0, 1.0)) * 2.0)[:, :, None]


def _render_view(app: Appearance, pose: Pose3D, rng: np.random.Generator,
                 grid: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one view. Returns image uint8 (H, W, 3), keypoints float32 (18, 2) (-1 missing), figure mask (H, W)."""
    h, w = IMAGE_HW
    cam = _Camera(px=rng.uniform(205, 228), cx=w / 2 + rng.uniform(-8, 8), ground=h - rng.uniform(6, 14))
    j2 = cam.project(pose.joints)  # (18, 2)
    canvas = _background(rng, grid, cam, j2)
    fig = _figure(app, pose, cam, j2, grid)
    parts, torso_poly = _torso_parts(fig)
    parts += _head_parts(fig) + _arm_parts(fig) + _leg_parts(fig)
    coverage = _paint(canvas, parts, j2)
    _face_details(canvas, fig)
    _rim_shade(canvas, coverage)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    keypoints = _visible_keypoints(pose, j2, torso_poly, fig.torso_depth, rng)
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
