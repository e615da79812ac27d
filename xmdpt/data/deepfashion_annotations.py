"""Keypoint annotations of a DeepFashion root and their conversion to an image's pixel frame.

- ``gfla``: ``fasion-resize-annotation-{train,test}.csv`` (``name:keypoints_y:keypoints_x``, JSON
  lists in the 256x176 frame), read once for the whole dataset;
- ``pidm``: ``pose/…/NN_V_view.txt`` (18 rows of ``x y`` in the 256x256 frame with a 40-px border),
  one file per image.

A GFLA row that cannot be used becomes a :class:`~xmdpt.data.deepfashion.Problem`; a bad PIDM file
raises ``ValueError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from xmdpt.data.deepfashion import (
    GFLA_ANNOTATION_FILES,
    Problem,
    fashion_name_to_path,
    file_exists,
    pose_txt_path,
    read_text,
)
from xmdpt.data.keypoints import GFLA_FRAME_HW, gfla_lists_to_kps, pidm_txt_to_image_frame, scale_keypoints
from xmdpt.data.schema import NUM_KEYPOINTS


@dataclass(frozen=True)
class Annotation:
    """Keypoints of one image as written in an annotation file, before conversion.

    Attributes:
        keypoints: (18, 2) float32 ``(x, y)`` in the layout's annotation frame, -1 = missing.
        layout: ``gfla`` or ``pidm`` (which frame ``keypoints`` are in).
        row_key: the file (and line) the annotation came from.
    """

    keypoints: np.ndarray
    layout: str
    row_key: str


def _keypoint_array(xs: list, ys: list, where: str) -> np.ndarray:
    """(18, 2) float32 from coordinate lists; ``ValueError`` naming ``where`` on a bad length/value."""
    if len(xs) != NUM_KEYPOINTS or len(ys) != NUM_KEYPOINTS:
        raise ValueError(f"{where}: expected {NUM_KEYPOINTS} keypoints, got {len(xs)} x and {len(ys)} y values")
    try:
        kps = np.stack([np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)], axis=1)  # (18, 2)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: non-numeric keypoint value ({e})") from None
    if not np.isfinite(kps).all():
        raise ValueError(f"{where}: non-finite keypoint value")
    return kps


def read_gfla_annotations(root: str) -> tuple[dict[str, Annotation], list[Problem]]:
    """``fasion-resize-annotation-*.csv`` -> ``{image path: Annotation}`` and the rejected rows.

    A rejected row whose name is readable is keyed by that image path; otherwise by ``file:line``.
    """
    annotations: dict[str, Annotation] = {}
    problems: list[Problem] = []
    for fname in GFLA_ANNOTATION_FILES.values():
        if not file_exists(root, fname):
            continue
        for lineno, line in enumerate(read_text(root, fname).splitlines(), start=1):
            if not line.strip() or (lineno == 1 and line.replace(" ", "").startswith("name:")):
                continue
            where = f"{fname}:line {lineno}"
            fields = line.split(":")
            try:
                path = fashion_name_to_path(fields[0].strip())
            except ValueError as e:
                problems.append(Problem(where, f"{where}: {e}"))
                continue
            try:
                if len(fields) != 3:
                    raise ValueError(f"malformed row ({len(fields)} ':'-separated fields, expected 3)")
                kps = gfla_lists_to_kps(fields[1].strip(), fields[2].strip())  # (18, 2) in the 256x176 frame
                if not np.isfinite(kps).all():
                    raise ValueError("non-finite keypoint value")
            except ValueError as e:
                problems.append(Problem(path, f"{where}: annotation of {path}: {e}"))
                continue
            annotations.setdefault(path, Annotation(kps, "gfla", where))
    return annotations, problems


def read_pidm_annotation(root: str, image_path: str) -> Optional[Annotation]:
    """``pose/…/NN_V_view.txt`` of one image (None if the file does not exist).

    Raises ``ValueError`` naming the file if it is not an 18x2 table of numbers.
    """
    rel = pose_txt_path(image_path)
    try:
        text = read_text(root, rel)
    except FileNotFoundError:
        return None
    try:
        rows = [[float(v) for v in line.replace(",", " ").split()] for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise ValueError(f"{rel}: non-numeric keypoint value ({e})") from None
    if len(rows) != NUM_KEYPOINTS or any(len(r) != 2 for r in rows):
        raise ValueError(f"{rel}: expected {NUM_KEYPOINTS} rows of 'x y', got {len(rows)} rows "
                         f"of {sorted({len(r) for r in rows})} values")
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    return Annotation(_keypoint_array(xs, ys, rel), "pidm", rel)


def annotation_to_image_frame(ann: Annotation, height: int, width: int) -> np.ndarray:
    """Keypoints of ``ann`` in the pixel frame of an image of ``height`` x ``width``.

    GFLA: ``x * W/176``, ``y * H/256``; PIDM: ``(x - 40) * W/176``, ``y * H/256`` (see
    :mod:`xmdpt.data.keypoints`). Missing stays -1.

    Returns:
        (18, 2) float32.
    """
    if ann.layout == "gfla":
        return scale_keypoints(ann.keypoints, GFLA_FRAME_HW, (height, width))
    return pidm_txt_to_image_frame(ann.keypoints, (height, width))
