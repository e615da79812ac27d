"""Inputs of generation from arbitrary photos: source images, pose JSON files, poses from photos.

**Frame.** The model sees square images: DeepFashion's 256x176 (H x W) portraits squashed to a
square (the authors' preprocessing). An arbitrary photo is first padded to the same 176:256 (W:H)
aspect with its own background colour (the per-channel median of its border pixels), centred,
and then squashed exactly like a dataset image — so a person keeps the proportions the model
learned. Keypoints follow the same two steps (offset by the padding, then scaled).

**Pose JSON** (what ``xmdpt generate --pose`` and the service take)::

    {"format": "coco18", "image_size": [H, W], "keypoints": [[x, y], ... 18 ...]}

``(x, y)`` pixels in an ``H x W`` frame, ``[-1, -1]`` = missing, COCO-18 order
(:data:`xmdpt.data.schema.KEYPOINT_NAMES`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from xmdpt.data.schema import KEYPOINT_NAMES, NUM_KEYPOINTS
from xmdpt.data.images import load_rgb, resize_square
from xmdpt.data.keypoints import GFLA_FRAME_HW, gfla_lists_to_kps, pidm_txt_to_image_frame
from xmdpt.data.pose_estimation import NoPersonFound, PoseEstimator

logger = logging.getLogger(__name__)

DATASET_HW = (256, 176)  # the frame the dataset's portraits have (H, W)
POSE_FORMAT = "coco18"
POSE_SUFFIXES = (".json",)


# A person standing front-on in the 256x176 DeepFashion frame: a ready-made target pose for examples,
# smoke tests and benchmarks (``json.dumps(EXAMPLE_POSE)`` is a valid pose JSON file).
EXAMPLE_POSE = {"format": POSE_FORMAT, "image_size": [256, 176],
                "keypoints": [[88, 40], [88, 62], [68, 64], [60, 96], [58, 126], [108, 64], [116, 96], [118, 126],
                              [76, 132], [74, 182], [74, 228], [100, 132], [102, 182], [102, 228], [84, 36], [92, 36],
                              [80, 38], [96, 38]]}


class PoseError(ValueError):
    """A pose cannot be used: bad JSON, wrong keypoint count, or no person in a pose photo."""


@dataclass(frozen=True)
class Pose:
    """COCO-18 keypoints ``(18, 2)`` ``(x, y)``, -1 missing, in a frame of ``hw = (H, W)`` pixels."""

    keypoints: np.ndarray
    hw: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"format": POSE_FORMAT, "image_size": [int(self.hw[0]), int(self.hw[1])],
                "keypoints": [[float(x), float(y)] for x, y in self.keypoints]}


def parse_pose(obj: Any, *, name: str = "pose") -> Pose:
    """Validate a pose JSON object (already decoded). Raises :class:`PoseError` naming ``name`` and the field."""
    if not isinstance(obj, dict):
        raise PoseError(f"{name}: expected a JSON object with format, image_size, keypoints; got {type(obj).__name__}")
    fmt = obj.get("format", POSE_FORMAT)
    if fmt != POSE_FORMAT:
        raise PoseError(f"{name}: unknown pose format {fmt!r}; expected {POSE_FORMAT!r}")
    size = obj.get("image_size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size)):
        raise PoseError(f"{name}: image_size must be [H, W] with positive numbers, got {size!r}")
    kps = obj.get("keypoints")
    if not isinstance(kps, (list, tuple)):
        raise PoseError(f"{name}: keypoints must be a list of {NUM_KEYPOINTS} [x, y] pairs, got {type(kps).__name__}")
    if len(kps) != NUM_KEYPOINTS:
        raise PoseError(f"{name}: expected {NUM_KEYPOINTS} keypoints (COCO-18: {', '.join(KEYPOINT_NAMES)}), "
                        f"got {len(kps)}")
    arr = np.full((NUM_KEYPOINTS, 2), -1.0, dtype=np.float32)
    h, w = float(size[0]), float(size[1])
    for i, p in enumerate(kps):
        if (not isinstance(p, (list, tuple)) or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise PoseError(f"{name}: keypoint {i} ({KEYPOINT_NAMES[i]}) must be [x, y] numbers, got {p!r}")
        x, y = float(p[0]), float(p[1])
        if x < 0 or y < 0:
            continue  # missing
        if x > w or y > h:
            raise PoseError(f"{name}: keypoint {i} ({KEYPOINT_NAMES[i]}) = [{x}, {y}] lies outside the "
                            f"image_size [{size[0]}, {size[1]}] (H, W)")
        arr[i] = (x, y)
    if (arr < 0).any(axis=1).all():
        raise PoseError(f"{name}: all {NUM_KEYPOINTS} keypoints are missing")
    return Pose(arr, (int(round(h)), int(round(w))))


def load_pose_json(path: Union[str, Path]) -> Pose:
    """Read and validate a pose JSON file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise PoseError(f"{p}: pose file not found")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PoseError(f"{p}: not valid JSON ({e})") from None
    return parse_pose(obj, name=str(p))


def border_colour(img: np.ndarray, border: int = 2) -> tuple[int, int, int]:
    """Per-channel median of the outer ``border`` pixels of ``uint8 (H, W, 3)`` — the background colour."""
    frame = np.concatenate([img[:border].reshape(-1, 3), img[-border:].reshape(-1, 3),
                            img[:, :border].reshape(-1, 3), img[:, -border:].reshape(-1, 3)])
    return tuple(int(v) for v in np.median(frame, axis=0))


def pad_offsets(hw: tuple[int, int], aspect_hw: tuple[int, int] = DATASET_HW) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` padding that brings an ``hw`` frame to the ``aspect_hw`` aspect, centred."""
    h, w = hw
    ah, aw = aspect_hw
    if w * ah > h * aw:  # too wide: pad top and bottom
        new_h = int(round(w * ah / aw))
        extra = max(new_h - h, 0)
        return extra // 2, extra - extra // 2, 0, 0
    new_w = int(round(h * aw / ah))  # too tall (or exact): pad left and right
    extra = max(new_w - w, 0)
    return 0, 0, extra // 2, extra - extra // 2


def pad_to_aspect(img: np.ndarray, aspect_hw: tuple[int, int] = DATASET_HW) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad ``uint8 (H, W, 3)`` with its border colour to the ``aspect_hw`` aspect.

    Returns:
        (padded image ``(H', W', 3)``, ``(top, left)`` offset of the original inside it).
    """
    top, bottom, left, right = pad_offsets(img.shape[:2], aspect_hw)
    if top == bottom == left == right == 0:
        return img, (0, 0)
    out = np.empty((img.shape[0] + top + bottom, img.shape[1] + left + right, 3), np.uint8)
    out[:] = border_colour(img)
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out, (top, left)


def prepare_source(img: np.ndarray, size: int) -> np.ndarray:
    """Any photo -> the model's square frame: pad to 176:256 with the background colour, then squash.

    Args:
        img: ``uint8 (H, W, 3)`` RGB.
        size: the model's image side (``data.image_size``).

    Returns:
        ``uint8 (size, size, 3)``.
    """

    padded, _ = pad_to_aspect(img)
    return resize_square(padded, size)


def pad_pose(pose: Pose, aspect_hw: tuple[int, int] = DATASET_HW) -> Pose:
    """The same padding as :func:`pad_to_aspect`, applied to keypoints (missing stay -1)."""
    top, bottom, left, right = pad_offsets(pose.hw, aspect_hw)
    kps = pose.keypoints.copy()
    miss = (kps < 0).any(axis=1)
    kps[:, 0] += left
    kps[:, 1] += top
    kps[miss] = -1.0
    return Pose(kps, (pose.hw[0] + top + bottom, pose.hw[1] + left + right))


def pose_from_photo(img: np.ndarray, pose_model_path: Union[str, Path], *, min_visibility: float = 0.5,
                    name: str = "pose image") -> Pose:
    """Estimate COCO-18 keypoints on a photo with the MediaPipe pose estimator.

    Raises:
        PoseError: no person found.
    """

    if not Path(pose_model_path).is_file():
        raise PoseError(f"{name}: pose estimator model {pose_model_path} not found "
                        "(set poses.model_path in the model's config or pass --pose-model)")
    with PoseEstimator(str(pose_model_path), min_visibility) as est:
        try:
            kps, _conf = est.estimate_or_raise(img, name=name)
        except NoPersonFound as e:
            raise PoseError(str(e)) from None
    kps = np.asarray(kps, dtype=np.float32).reshape(NUM_KEYPOINTS, 2)
    return Pose(kps, (int(img.shape[0]), int(img.shape[1])))


def is_pose_json(path: Union[str, Path]) -> bool:
    return Path(path).suffix.lower() in POSE_SUFFIXES


ANNOTATION_SELECTOR = "::"  # `fasion-resize-annotation-test.csv::<fashion name>` picks one row


def is_pose_annotation(pose: Union[str, Path]) -> bool:
    """A PIDM ``pose/*.txt`` file, a PATN/GFLA annotation csv (``FILE.csv`` or ``FILE.csv::NAME``), or one
    annotation row given as text (``name: [y0, ...]: [x0, ...]``)."""
    s = str(pose)
    if ANNOTATION_SELECTOR in s:
        s = s.split(ANNOTATION_SELECTOR, 1)[0]
    if s.count(":") >= 2 and "[" in s:
        return True
    return Path(s).suffix.lower() in (".txt", ".csv")


def parse_annotation_row(row: str, *, name: str = "annotation row") -> Pose:
    """One PATN/GFLA annotation row ``name: [y0..y17]: [x0..x17]`` (256x176 frame, -1 missing)."""

    parts = row.strip().split(":")
    if len(parts) != 3:
        raise PoseError(f"{name}: expected 'name: [y0, ..., y17]: [x0, ..., x17]' (3 ':'-separated fields), "
                        f"got {len(parts)} fields")
    try:
        kps = gfla_lists_to_kps(parts[1], parts[2])
    except ValueError as e:
        raise PoseError(f"{name}: {e}") from None
    return _checked_pose(kps, GFLA_FRAME_HW, name)


def _checked_pose(kps: np.ndarray, hw: tuple[int, int], name: str) -> Pose:
    obj = {"format": POSE_FORMAT, "image_size": list(hw),
           "keypoints": [[float(x), float(y)] if x >= 0 and y >= 0 else [-1, -1] for x, y in kps]}
    return parse_pose(obj, name=name)


def load_pose_annotation(pose: Union[str, Path]) -> Pose:
    """A pose from the public DeepFashion annotation layouts (PAPER.md §2.2-2.3).

    - ``pose/…/NN_V_view.txt`` (PIDM / X-MDPT): 18 rows ``x y`` in the 256x256 frame with the 40-px
      border, converted to the 256x176 image frame;
    - ``fasion-resize-annotation-*.csv`` (PATN / GFLA): ``FILE.csv::NAME`` selects the row of image
      NAME (a file with one data row needs no selector);
    - a single annotation row as text.
    """

    s = str(pose)
    selector = None
    if ANNOTATION_SELECTOR in s:
        s, selector = s.split(ANNOTATION_SELECTOR, 1)
    elif s.count(":") >= 2 and "[" in s and not Path(s).is_file():
        return parse_annotation_row(s)
    p = Path(s)
    if not p.is_file():
        raise PoseError(f"{p}: pose file not found")
    if p.suffix.lower() == ".txt":
        try:
            arr = np.loadtxt(p, dtype=np.float32, ndmin=2)
        except ValueError as e:
            raise PoseError(f"{p}: not a PIDM pose txt (18 rows 'x y'): {e}") from None
        if arr.shape != (NUM_KEYPOINTS, 2):
            raise PoseError(f"{p}: expected {NUM_KEYPOINTS} rows of 'x y' (PIDM pose txt), got shape {arr.shape}")
        return _checked_pose(pidm_txt_to_image_frame(arr), GFLA_FRAME_HW, str(p))
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    rows = [ln for ln in lines if not ln.replace(" ", "").startswith("name:keypoints_y:keypoints_x")]
    if selector is not None:
        hits = [ln for ln in rows if ln.split(":", 1)[0].strip() == selector]
        if not hits:
            raise PoseError(f"{p}: no annotation row for {selector!r}")
        return parse_annotation_row(hits[0], name=f"{p}::{selector}")
    if len(rows) != 1:
        raise PoseError(f"{p}: {len(rows)} annotation rows; pick one with {p}{ANNOTATION_SELECTOR}<image name>")
    return parse_annotation_row(rows[0], name=str(p))


def restore_aspect(img: np.ndarray, source_hw: tuple[int, int], aspect_hw: tuple[int, int] = DATASET_HW,
                   padded: bool = True) -> np.ndarray:
    """Undo :func:`prepare_source` on a square generation: un-squash to the ``aspect_hw`` aspect (bicubic,
    the PIDM protocol's 256x256 -> 256x176), then crop away the padding that was added to the source.

    Args:
        img: ``uint8 (S, S, 3)``.
        source_hw: ``(H, W)`` of the source photo before padding.

    Returns:
        ``uint8 (S, W', 3)`` with the source's aspect (176x256 W x H at S = 256 for a DeepFashion source).
    """
    S = img.shape[0]
    if not padded:  # the source was squashed to the square as it was: stretch back to its own aspect
        w = max(1, int(round(S * source_hw[1] / source_hw[0])))
        return np.asarray(Image.fromarray(img).resize((w, S), Image.BICUBIC))
    out_w = max(1, int(round(S * aspect_hw[1] / aspect_hw[0])))
    unsquashed = np.asarray(Image.fromarray(img).resize((out_w, S), Image.BICUBIC))
    top, bottom, left, right = pad_offsets(source_hw, aspect_hw)
    ph, pw = source_hw[0] + top + bottom, source_hw[1] + left + right
    y0, y1 = int(round(top * S / ph)), int(round((ph - bottom) * S / ph))
    x0, x1 = int(round(left * out_w / pw)), int(round((pw - right) * out_w / pw))
    return np.ascontiguousarray(unsquashed[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])


def as_image_array(source: Any, *, name: str) -> np.ndarray:
    """A path, encoded bytes, PIL image or ``uint8 (H, W, 3)`` array -> ``uint8 (H, W, 3)`` RGB."""

    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"), dtype=np.uint8)
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 (H, W, 3), got {source.dtype} {source.shape}")
        return source
    return load_rgb(source, name=name)
