"""2-D drawing primitives of the synthetic renderer: anti-aliased shapes, garment prints, compositing.

Shapes are drawn with OpenCV at sub-pixel precision (``SHIFT`` fractional bits) into a uint8 mask;
:func:`composite` alpha-blends a colour or a texture through that mask onto a float canvas.
A :class:`Part` is one body part waiting to be painted: its depth (painter's algorithm), how to
draw its shape, what to fill it with and how much to darken it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

SHIFT = 2  # cv2 sub-pixel bits
SUB = 1 << SHIFT


def texture(kind: str, base: tuple[int, int, int], second: tuple[int, int, int], period: int,
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
class Part:
    depth: float
    draw: Callable[[np.ndarray, int], None]  # draws the shape into a uint8 mask with value 255, extra width
    fill: object  # (3,) colour or (H, W, 3) texture
    shade: float  # multiplicative darkening for far-side parts


def composite(canvas: np.ndarray, mask: np.ndarray, fill: object, shade: float,
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


def fixed_point(pt: np.ndarray) -> tuple[int, int]:
    """An image point in cv2's fixed-point coordinates (``SHIFT`` fractional bits)."""
    return int(round(pt[0] * SUB)), int(round(pt[1] * SUB))


def capsule(a: np.ndarray, b: np.ndarray, width: float) -> Callable[[np.ndarray, int], None]:
    def draw(mask: np.ndarray, extra: int) -> None:
        t = max(1, int(round(width + 2 * extra)))
        cv2.line(mask, fixed_point(a), fixed_point(b), 255, thickness=t, lineType=cv2.LINE_AA, shift=SHIFT)
    return draw


def polygon(pts: np.ndarray) -> Callable[[np.ndarray, int], None]:
    hull = cv2.convexHull(np.round(pts * SUB).astype(np.int32))

    def draw(mask: np.ndarray, extra: int) -> None:
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=SHIFT)
        if extra:
            cv2.polylines(mask, [hull], True, 255, thickness=2 * extra, lineType=cv2.LINE_AA, shift=SHIFT)
    return draw


def ellipse(c: np.ndarray, axes: tuple[float, float], angle: float) -> Callable[[np.ndarray, int], None]:
    def draw(mask: np.ndarray, extra: int) -> None:
        ax = (max(1, int(round((axes[0] + extra) * SUB))), max(1, int(round((axes[1] + extra) * SUB))))
        cv2.ellipse(mask, fixed_point(c), ax, angle, 0, 360, 255, thickness=-1, lineType=cv2.LINE_AA, shift=SHIFT)
    return draw


def box_points(centre_a: np.ndarray, centre_b: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
               depth_dir: np.ndarray, thick_a: float, thick_b: float) -> np.ndarray:
    """8 corners of a 3-D slab between two cross-sections (for torso, pelvis, skirt). (8, 3)"""
    pts = []
    for c, half, th in ((centre_a, half_a, thick_a), (centre_b, half_b, thick_b)):
        for sx in (-1, 1):
            for sz in (-1, 1):
                pts.append(c + sx * half + sz * depth_dir * th)
    return np.array(pts)
