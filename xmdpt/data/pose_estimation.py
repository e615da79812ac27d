"""COCO-18 keypoints from a photo: MediaPipe PoseLandmarker (BlazePose "full") mapped to OpenPose order.

The authors' data was annotated with OpenPose (18 COCO points, PAPER.md §2.3). Offline, the nearest
published estimator that runs on a CPU is MediaPipe's PoseLandmarker; its 33 BlazePose landmarks
map to COCO-18 as

    nose 0, neck = mid(11, 12), r_shoulder 12, r_elbow 14, r_wrist 16, l_shoulder 11, l_elbow 13,
    l_wrist 15, r_hip 24, r_knee 26, r_ankle 28, l_hip 23, l_knee 25, l_ankle 27, r_eye 5, l_eye 2,
    r_ear 8, l_ear 7

(the neck's visibility is the smaller of the two shoulders'). Landmarks whose visibility is below
``min_visibility`` or that fall outside the image are reported missing (``-1``, confidence 0).

No person found: :meth:`PoseEstimator.estimate` returns all ``-1`` / confidence 0 (the `poses`
stage records that row), and :meth:`PoseEstimator.estimate_or_raise` raises :class:`NoPersonFound`
(for ``xmdpt generate``, where a pose image without a person is the user's error).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from xmdpt.data.schema import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

__all__ = ["BLAZEPOSE_TO_COCO18", "NoPersonFound", "PoseEstimator"]

# COCO-18 index -> BlazePose landmark index; None = the neck (mid-shoulders).
BLAZEPOSE_TO_COCO18: tuple[Optional[int], ...] = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_L_SHOULDER, _R_SHOULDER = 11, 12
_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/"
              "float16/latest/pose_landmarker_full.task")


class NoPersonFound(ValueError):
    """The estimator found no person (or too few visible keypoints) in an image."""


class PoseEstimator:
    """MediaPipe PoseLandmarker (IMAGE mode, one person) returning COCO-18 keypoints.

    Use as a context manager or call :meth:`close`; one instance is not thread-safe.

    Args:
        model_path: the ``pose_landmarker_full.task`` bundle.
        min_visibility: landmarks with a lower visibility score are reported missing.
    """

    def __init__(self, model_path: str, min_visibility: float = 0.5) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"pose model not found: {model_path} — download MediaPipe's published "
                f"pose_landmarker_full.task ({_MODEL_URL}, see the 'Pose landmarker' model card) "
                "and point poses.model_path at it")
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility: must be in [0, 1], got {min_visibility}")
        from mediapipe.tasks.python import BaseOptions, vision  # heavy import, only when used

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=1,
        )
        self.model_path = str(path)
        self.min_visibility = float(min_visibility)
        self._landmarker = vision.PoseLandmarker.create_from_options(options)

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "PoseEstimator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- inference -------------------------------------------------------------------------

    def estimate(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of the (most prominent) person in an RGB image.

        Args:
            image: ``uint8 (H, W, 3)`` RGB.

        Returns:
            keypoints: ``float32 (18, 2)`` (x, y) in image pixels, ``-1`` missing (all ``-1`` when
                no person is found).
            confidence: ``float32 (18,)`` landmark visibility, 0 for missing points.
        """
        if self._landmarker is None:
            raise RuntimeError("PoseEstimator is closed")
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            raise ValueError(f"estimate: expected a uint8 (H, W, 3) RGB array, got {got}")
        from mediapipe.tasks.python.vision.core.image import Image, ImageFormat

        h, w = image.shape[:2]
        result = self._landmarker.detect(Image(ImageFormat.SRGB, np.ascontiguousarray(image)))
        keypoints = np.full((NUM_KEYPOINTS, 2), -1.0, dtype=np.float32)
        confidence = np.zeros(NUM_KEYPOINTS, dtype=np.float32)
        if not result.pose_landmarks:
            return keypoints, confidence
        lms = result.pose_landmarks[0]  # 33 normalised landmarks
        xy = np.array([[lm.x * w, lm.y * h] for lm in lms], dtype=np.float64)  # (33, 2)
        vis = np.array([lm.visibility if lm.visibility is not None else (lm.presence or 0.0) for lm in lms],
                       dtype=np.float64)  # (33,)
        for k, src in enumerate(BLAZEPOSE_TO_COCO18):
            if src is None:
                p = (xy[_L_SHOULDER] + xy[_R_SHOULDER]) / 2
                v = min(vis[_L_SHOULDER], vis[_R_SHOULDER])
            else:
                p, v = xy[src], vis[src]
            inside = 0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1
            if v >= self.min_visibility and inside:
                keypoints[k] = p
                confidence[k] = v
        return keypoints, confidence

    @staticmethod
    def found(keypoints: np.ndarray, min_points: int = 1) -> bool:
        """Whether ``estimate`` found a person (at least ``min_points`` keypoints present)."""
        return int(np.all(np.asarray(keypoints) >= 0, axis=-1).sum()) >= min_points

    def estimate_or_raise(self, image: np.ndarray, *, name: str, min_points: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`estimate`, raising :class:`NoPersonFound` (naming ``name``) below ``min_points`` keypoints."""
        keypoints, confidence = self.estimate(image)
        n = int(np.all(keypoints >= 0, axis=-1).sum())
        if n < min_points:
            raise NoPersonFound(f"{name}: no person found by the pose estimator ({n} of {NUM_KEYPOINTS} keypoints "
                                f"with visibility >= {self.min_visibility}, need {min_points})")
        return keypoints, confidence
