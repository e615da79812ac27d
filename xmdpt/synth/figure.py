"""Synthetic people: appearance per identity (skin, hair, garments) and posed 3-D skeletons per view.

A pose is sampled joint angles (shoulder abduction/flexion, elbow, hip, knee, torso lean/twist, head
yaw) turned into 3-D joints by forward kinematics (x to the person's left, y up, z forward); the
view azimuth (front 0, side ~ +-90, back 180, others random) is applied when rendering
(:mod:`xmdpt.synth.render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from xmdpt.data.schema import NUM_KEYPOINTS

IMAGE_HW = (256, 176)  # DeepFashion low-res (H, W)
DROP_PROB = 0.05  # random keypoint misses

# (file stem suffix, azimuth sampler) — real DeepFashion view names
VIEWS: tuple[str, ...] = ("1_front", "2_side", "3_back", "4_full", "7_additional")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "MEN": ("Denim", "Jackets_Vests", "Pants", "Shirts_Polos", "Shorts", "Suiting", "Sweaters",
            "Sweatshirts_Hoodies", "Tees_Tanks"),
    "WOMEN": ("Blouses_Shirts", "Cardigans", "Denim", "Dresses", "Graphic_Tees", "Jackets_Coats", "Leggings",
              "Pants", "Rompers_Jumpsuits", "Shorts", "Skirts", "Sweaters", "Tees_Tanks"),
}

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


def sample_appearance(rng: np.random.Generator, gender: str, category: str) -> Appearance:
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


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _bend(d: np.ndarray, toward: np.ndarray, angle: float) -> np.ndarray:
    """Rotate unit direction ``d`` by ``angle`` toward ``toward`` (in the plane they span)."""
    perp = toward - np.dot(toward, d) * d
    return unit(math.cos(angle) * d + math.sin(angle) * unit(perp))


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


def sample_pose(rng: np.random.Generator, app: Appearance, azimuth: float) -> Pose3D:
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
        d_up = unit(r_torso @ [side * math.sin(abd) * math.cos(flex), -math.cos(abd) * math.cos(flex),
                                math.sin(flex)])
        d_fore = _bend(d_up, fwd + 0.4 * up, deg(rng.uniform(0, 110)))
        j[elb] = j[sho] + d_up * upper
        j[wri] = j[elb] + d_fore * fore
        j[hip] = pelvis + left * side * app.hip * s
        habd, hflex = deg(rng.uniform(0, 12)), deg(rng.uniform(-20, 30))
        d_thigh = unit(r_torso @ [side * math.sin(habd), -math.cos(habd) * math.cos(hflex), math.sin(hflex)])
        d_shin = _bend(d_thigh, -fwd, deg(rng.uniform(0, 45)))
        d_shin = unit(d_shin + [0, -0.3, 0])  # shins stay roughly vertical
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


def view_azimuth(rng: np.random.Generator, view: str) -> float:
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
