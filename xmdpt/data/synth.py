"""Synthetic dataset in exactly the DeepFashion In-shop layout (what ``make run`` trains on offline).

Each identity is a clothed, person-like figure with its own appearance (skin tone, hair colour and
length, body proportions, a top and a bottom garment with colour + pattern chosen by the category),
photographed in several views (``01_1_front``, ``01_2_side``, ``01_3_back``, ``01_4_full``,
``01_7_additional``), each with a different pose. A view is made by

1. sampling joint angles (shoulder abduction/flexion, elbow, hip, knee, torso lean/twist, head yaw);
2. forward kinematics -> 3-D joints (x to the person's left, y up, z forward);
3. rotating by the view azimuth (front 0, side ~ +-90, back 180, others random) and projecting
   orthographically into a 256x176 (H x W) image;
4. drawing body parts (torso box, capsule limbs, head with hair, shoes) far-to-near (painter's
   algorithm on depth), with anti-aliased edges, outlines and pattern textures.

The 18 COCO keypoints written to the annotation files are the projected joints, so they land on the
drawn figure. Occluded points are missing (-1): face points facing away from the camera, far-side
joints hidden behind the torso, and ~5% dropped at random (as a real detector misses some).

Files written under ``out`` (PAPER.md §2):

- ``img/{MEN,WOMEN}/{Category}/id_XXXXXXXX/01_V_view.jpg`` — 256x176 JPEGs;
- PATN/GFLA: ``fasion-resize-pairs-{train,test}.csv`` (``,from,to``: index, source, target fashion
  names), ``fasion-resize-annotation-{train,test}.csv`` (``name:keypoints_y:keypoints_x``),
  ``train.lst`` / ``test.lst`` (one fashion name per line);
- PIDM/X-MDPT: ``{train,test}_pairs.txt`` (target path, then candidate source paths) and
  ``pose/.../01_V_view.txt`` (18x2 ``x y`` rows in the 40-px-border 256x256 frame).

Same seed -> byte-identical files (fixed JPEG quality, no metadata, sorted writes).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np
from PIL import Image

from xmdpt.data.deepfashion import path_to_fashion_name, pose_txt_path
from xmdpt.data.keypoints import image_frame_to_pidm_txt, kps_to_gfla_lists
from xmdpt.data.schema import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_HW", "VIEWS", "CATEGORIES", "SynthView", "write_synthetic_dataset", "render_identity_views"]

IMAGE_HW = (256, 176)  # DeepFashion low-res (H, W)
JPEG_QUALITY = 95
DROP_PROB = 0.05  # random keypoint misses

# (file stem suffix, azimuth sampler) — real DeepFashion view names
VIEWS: tuple[str, ...] = ("1_front", "2_side", "3_back", "4_full", "7_additional")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "MEN": ("Denim", "Jackets_Vests", "Pants", "Shirts_Polos", "Shorts", "Suiting", "Sweaters",
            "Sweatshirts_Hoodies", "Tees_Tanks"),
    "WOMEN": ("Blouses_Shirts", "Cardigans", "Denim", "Dresses", "Graphic_Tees", "Jackets_Coats", "Leggings",
              "Pants", "Rompers_Jumpsuits", "Shorts", "Skirts", "Sweaters", "Tees_Tanks"),
}
# The layout files this module writes; anything else in `out` is someone else's and stops us.
_OWN_ENTRIES = ("img", "pose", "fasion-resize-pairs-train.csv", "fasion-resize-pairs-test.csv",
                "fasion-resize-annotation-train.csv", "fasion-resize-annotation-test.csv",
                "train.lst", "test.lst", "train_pairs.txt", "test_pairs.txt")

# joint indices (COCO-18)
NOSE, NECK, R_SHO, R_ELB, R_WRI, L_SHO, L_ELB, L_WRI = 0, 1, 2, 3, 4, 5, 6, 7
R_HIP, R_KNEE, R_ANK, L_HIP, L_KNEE, L_ANK, R_EYE, L_EYE, R_EAR, L_EAR = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17

_SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 90), (160, 102, 62), (110, 70, 45))
_HAIR_COLOURS = ((25, 20, 18), (60, 40, 25), (105, 70, 40), (200, 160, 90), (140, 60, 30), (150, 150, 150))
_SHOE_COLOURS = ((30, 30, 30), (196, 196, 204), (110, 70, 40), (40, 40, 80), (150, 30, 40))
_PATTERNS = ("plain", "stripes", "dots", "checks")

# sleeve length / bottom type by category (a few choices each)
_SLEEVES = {"Tees_Tanks": ("short", "none"), "Graphic_Tees": ("short",), "Shirts_Polos": ("short", "long"),
            "Blouses_Shirts": ("short", "long", "none"), "Rompers_Jumpsuits": ("short", "none"),
            "Dresses": ("short", "none", "long")}
_BOTTOMS = {"Shorts": ("shorts",), "Skirts": ("skirt",), "Dresses": ("dress",), "Rompers_Jumpsuits": ("romper",),
            "Leggings": ("pants",), "Pants": ("pants",), "Denim": ("pants", "shorts")}


# --------------------------------------------------------------------------------------------
# Identity appearance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Appearance:
    """Everything about a person that stays the same across its views."""

    gender: str
    category: str
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_hair: bool
    height: float  # body height scale
    shoulder: float  # half shoulder width (body units)
    hip: float  # half hip width
    limb: float  # limb thickness scale
    top: tuple[int, int, int]
    top2: tuple[int, int, int]
    top_pattern: str
    top_period: int
    sleeves: str  # long | short | none
    bottom: tuple[int, int, int]
    bottom2: tuple[int, int, int]
    bottom_pattern: str
    bottom_period: int
    bottom_kind: str  # pants | shorts | skirt | dress | romper
    shoes: tuple[int, int, int]


def _hsv_colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*s) * 255, rng.uniform(*v) * 255]]], dtype=np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _second_colour(rng: np.random.Generator, c: tuple[int, int, int]) -> tuple[int, int, int]:
    """Pattern colour: white, near-black, or a strong shift of the base colour."""
    k = rng.integers(3)
    if k == 0:
        return (245, 245, 240)
    if k == 1:
        return (35, 35, 40)
    return tuple(int(v) for v in np.clip(255 - np.array(c) * 0.8, 0, 255))  # type: ignore[return-value]


def _sample_appearance(rng: np.random.Generator, gender: str, category: str) -> Appearance:
    female = gender == "WOMEN"
    top = _hsv_colour(rng, (0.35, 0.95), (0.35, 0.95))
    if category == "Denim" or (rng.random() < 0.3 and category in ("Pants", "Shorts")):
        bottom = (int(rng.integers(40, 90)), int(rng.integers(60, 110)), int(rng.integers(120, 180)))  # denim blue
    else:
        bottom = _hsv_colour(rng, (0.2, 0.8), (0.2, 0.7))
    sleeves = rng.choice(_SLEEVES.get(category, ("long",)))
    bottom_kind = rng.choice(_BOTTOMS.get(category, ("pants",) if not female else ("pants", "skirt")))
    return Appearance(
        gender=gender, category=category,
        skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))],
        hair=_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))],
        long_hair=bool(rng.random() < (0.75 if female else 0.1)),
        height=float(rng.uniform(0.93, 1.03)),
        shoulder=float(rng.uniform(0.105, 0.125) if female else rng.uniform(0.12, 0.145)),
        hip=float(rng.uniform(0.085, 0.1) if female else rng.uniform(0.075, 0.09)),
        limb=float(rng.uniform(0.9, 1.15)),
        top=top, top2=_second_colour(rng, top),
        top_pattern=str(rng.choice(_PATTERNS, p=(0.4, 0.25, 0.2, 0.15))),
        top_period=int(rng.integers(7, 15)),
        sleeves=str(sleeves),
        bottom=bottom, bottom2=_second_colour(rng, bottom),
        bottom_pattern=str(rng.choice(_PATTERNS, p=(0.6, 0.15, 0.1, 0.15))),
        bottom_period=int(rng.integers(8, 16)),
        bottom_kind=str(bottom_kind),
        shoes=_SHOE_COLOURS[rng.integers(len(_SHOE_COLOURS))],
    )


# --------------------------------------------------------------------------------------------
# Skeleton: joint angles -> 3-D joints -> view rotation -> projection
# --------------------------------------------------------------------------------------------


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _bend(d: np.ndarray, toward: np.ndarray, angle: float) -> np.ndarray:
    """Rotate unit direction ``d`` by ``angle`` toward ``toward`` (in the plane they span)."""
    perp = toward - np.dot(toward, d) * d
    return _unit(math.cos(angle) * d + math.sin(angle) * _unit(perp))


@dataclass
class Pose3D:
    """3-D joints (body units, y up, z toward the camera after the view rotation) + head/foot frames."""

    joints: np.ndarray  # (18, 3)
    head: np.ndarray  # (3,) head centre
    head_fwd: np.ndarray  # (3,) unit, where the face points
    head_side: np.ndarray  # (3,) unit, toward the person's left
    up: np.ndarray  # (3,) torso up
    fwd: np.ndarray  # (3,) torso forward
    hip_centre: np.ndarray  # (3,)


def _sample_pose(rng: np.random.Generator, app: Appearance, azimuth: float) -> Pose3D:
    """Joint angles -> forward kinematics -> rotate by the view azimuth (camera looks along -z)."""
    deg = math.radians
    s = app.height
    pelvis = np.array([0.0, 0.50 * s, 0.0])
    r_torso = _rot_y(deg(rng.uniform(-12, 12))) @ _rot_x(deg(rng.uniform(-6, 8)))
    up, fwd, left = r_torso @ [0, 1, 0], r_torso @ [0, 0, 1], r_torso @ [1, 0, 0]
    neck = pelvis + up * 0.30 * s
    j = np.zeros((NUM_KEYPOINTS, 3))
    j[NECK] = neck
    upper, fore, thigh, shin = 0.165 * s, 0.15 * s, 0.245 * s, 0.245 * s
    for side, (sho, elb, wri, hip, knee, ank) in ((1, (L_SHO, L_ELB, L_WRI, L_HIP, L_KNEE, L_ANK)),
                                                   (-1, (R_SHO, R_ELB, R_WRI, R_HIP, R_KNEE, R_ANK))):
        j[sho] = neck + left * side * app.shoulder * s - up * 0.015 * s
        abd, flex = deg(rng.uniform(4, 65)), deg(rng.uniform(-35, 55))
        d_up = _unit(r_torso @ [side * math.sin(abd) * math.cos(flex), -math.cos(abd) * math.cos(flex),
                                math.sin(flex)])
        d_fore = _bend(d_up, fwd + 0.4 * up, deg(rng.uniform(0, 110)))
        j[elb] = j[sho] + d_up * upper
        j[wri] = j[elb] + d_fore * fore
        j[hip] = pelvis + left * side * app.hip * s
        habd, hflex = deg(rng.uniform(0, 12)), deg(rng.uniform(-20, 30))
        d_thigh = _unit(r_torso @ [side * math.sin(habd), -math.cos(habd) * math.cos(hflex), math.sin(hflex)])
        d_shin = _bend(d_thigh, -fwd, deg(rng.uniform(0, 45)))
        d_shin = _unit(d_shin + [0, -0.3, 0])  # shins stay roughly vertical
        j[knee] = j[hip] + d_thigh * thigh
        j[ank] = j[knee] + d_shin * shin
    yaw = deg(rng.uniform(-25, 25))
    r_head = r_torso @ _rot_y(yaw) @ _rot_x(deg(rng.uniform(-10, 10)))
    head_up, head_fwd, head_side = r_head @ [0, 1, 0], r_head @ [0, 0, 1], r_head @ [1, 0, 0]
    hr = 0.062 * s
    head = neck + up * 0.105 * s
    j[NOSE] = head + head_fwd * 0.85 * hr - head_up * 0.1 * hr
    for side, eye, ear in ((1, L_EYE, L_EAR), (-1, R_EYE, R_EAR)):
        j[eye] = head + head_fwd * 0.7 * hr + head_side * side * 0.36 * hr + head_up * 0.2 * hr
        j[ear] = head + head_side * side * 0.88 * hr
    # stand on the ground: lowest ankle at y = 0.03
    lift = min(j[L_ANK, 1], j[R_ANK, 1]) - 0.03 * s
    j[:, 1] -= lift
    head = head - [0, lift, 0]
    hip_centre = pelvis - [0, lift, 0]
    r_view = _rot_y(azimuth)
    return Pose3D(joints=j @ r_view.T, head=r_view @ head, head_fwd=r_view @ head_fwd,
                  head_side=r_view @ head_side, up=r_view @ up, fwd=r_view @ fwd, hip_centre=r_view @ hip_centre)


def _view_azimuth(rng: np.random.Generator, view: str) -> float:
    deg = math.radians
    if view == "1_front":
        return deg(rng.uniform(-12, 12))
    if view == "2_side":
        return deg(rng.choice([-1, 1]) * rng.uniform(65, 100))
    if view == "3_back":
        return deg(180 + rng.uniform(-15, 15))
    if view == "4_full":
        return deg(rng.uniform(-35, 35))
    return deg(rng.uniform(-180, 180))


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
    left = _unit(j3[L_SHO] - j3[R_SHO])
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
        hand = j3[wri] + _unit(j3[wri] - j3[elb]) * 0.03
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
        toe = j3[ank] + _unit(pose.fwd * [1, 0, 1]) * 0.075 - pose.up * 0.012
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
        visible[eye] = _unit(0.8 * f + 0.6 * side * sd)[2] > 0.1
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
    app = _sample_appearance(rng, gender, category)
    h, w = IMAGE_HW
    grid = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    out = []
    for view in views:
        pose = _sample_pose(rng, app, _view_azimuth(rng, view))
        image, kps, mask = _render_view(app, pose, rng, (grid[0], grid[1]))
        out.append(SynthView(view, image, kps, mask))
    return out


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"{out}: not empty and holds files the synthetic generator did not write "
                                  f"({foreign[:5]}); choose an empty or new folder")
        for name in _OWN_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="\n", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def write_synthetic_dataset(out: str, identities: int = 40, seed: int = 0, test_fraction: float = 0.2) -> dict:
    """Write a synthetic DeepFashion In-shop dataset (both public annotation layouts) under ``out``.

    Args:
        out: local folder (created; a previous synthetic dataset there is replaced, any other
            content is an error).
        identities: number of people; each gets all 5 views.
        seed: same seed -> byte-identical files.
        test_fraction: share of identities held out for test (train and test identities are disjoint).

    Returns:
        summary: ``images, identities, train_identities, test_identities, train_images, test_images,
        train_pairs, test_pairs, keypoints_missing_fraction``.
    """
    if identities < 2:
        raise ValueError(f"identities: need at least 2 (one train, one test), got {identities}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    root = Path(out)
    _prepare_out(root)
    rng = np.random.default_rng(seed)
    n_test = min(identities - 1, max(1, int(round(identities * test_fraction))))
    test_ids = set(rng.permutation(identities)[:n_test].tolist())
    child_seeds = np.random.SeedSequence(seed).spawn(identities)

    images: dict[str, list[str]] = {"train": [], "test": []}
    annotations: dict[str, list[str]] = {"train": [], "test": []}
    groups: dict[str, list[list[str]]] = {"train": [], "test": []}  # image paths per identity
    missing = 0
    for i in range(identities):
        gender = "WOMEN" if rng.random() < 0.6 else "MEN"
        category = str(rng.choice(CATEGORIES[gender]))
        person = f"id_{i + 1:08d}"
        split = "test" if i in test_ids else "train"
        id_seed = int(child_seeds[i].generate_state(1)[0])
        paths = []
        for view, image, kps, _mask in render_identity_views(id_seed, gender, category):
            rel = f"img/{gender}/{category}/{person}/01_{view}.jpg"
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(dst, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
            pose_path = root / pose_txt_path(rel)
            pose_path.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(pose_path, image_frame_to_pidm_txt(kps, IMAGE_HW), fmt="%.1f")
            ys, xs = kps_to_gfla_lists(kps)
            name = path_to_fashion_name(rel)
            annotations[split].append(f"{name}: {ys}: {xs}")
            images[split].append(name)
            missing += int((kps[:, 0] < 0).sum())
            paths.append(rel)
        groups[split].append(paths)

    summary = {"images": 0, "identities": identities, "seed": seed}
    for split in ("train", "test"):
        pair_rows, pidm_lines = [",from,to"], []
        n_pairs = 0
        for paths in groups[split]:
            for target in paths:
                sources = [p for p in paths if p != target]
                for source in sources:
                    pair_rows.append(f"{n_pairs},{path_to_fashion_name(source)},{path_to_fashion_name(target)}")
                    n_pairs += 1
                if split == "train":  # PIDM train lines: one target, all candidate sources
                    pidm_lines.append(",".join([target] + sources))
                else:  # PIDM test lines: one (target, source) pair each
                    pidm_lines.extend(f"{target},{source}" for source in sources)
        _write_text(root / f"fasion-resize-pairs-{split}.csv", pair_rows)
        _write_text(root / f"fasion-resize-annotation-{split}.csv",
                    ["name:keypoints_y:keypoints_x"] + annotations[split])
        _write_text(root / f"{split}.lst", images[split])
        _write_text(root / f"{split}_pairs.txt", pidm_lines)
        summary[f"{split}_identities"] = len(groups[split])
        summary[f"{split}_images"] = len(images[split])
        summary[f"{split}_pairs"] = n_pairs
        summary["images"] += len(images[split])
    summary["keypoints_missing_fraction"] = round(missing / (summary["images"] * NUM_KEYPOINTS), 4)
    logger.info("synthetic DeepFashion: %d images of %d identities (%d train / %d test) in %s",
                summary["images"], identities, summary["train_identities"], summary["test_identities"], out)
    return summary
