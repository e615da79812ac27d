"""Rules for the keypoint table (stage `poses`): schema, keypoint ranges, confidences, sources."""

from __future__ import annotations

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from xmdpt.data.schema import (
    CONFIDENCE,
    HEIGHT,
    IMAGE_PATH,
    KEYPOINTS,
    NUM_KEYPOINTS,
    POSE_SOURCE,
    POSE_SOURCES,
    POSES_SCHEMA,
    SPLIT,
    SPLITS,
    WIDTH,
)

TABLE = "poses"
SCHEMA = POSES_SCHEMA
ROW_KEY = [IMAGE_PATH, SPLIT]

# derived columns (exist only while validating)
NUM_VALUES = "num_keypoint_values"  # must be 2 * 18
NUM_CONFIDENCES = "num_confidence_values"  # must be 18
OUTSIDE = "keypoints_outside_image"  # present points with x outside [0, W] or y outside [0, H]
HALF_MISSING = "keypoints_half_missing"  # points with one coordinate -1 and the other not
BAD_MISSING = "keypoints_bad_missing_value"  # negative coordinates other than exactly -1
CONF_MIN = "confidence_min"
CONF_MAX = "confidence_max"


def _keypoint_stats(kps, h: int, w: int) -> tuple[int, int, int, int]:
    arr = np.asarray(kps if kps is not None else [], dtype=np.float64)
    n = arr.size
    if n != 2 * NUM_KEYPOINTS or not np.isfinite(arr).all():
        return n, NUM_KEYPOINTS, 0, 0
    pts = arr.reshape(NUM_KEYPOINTS, 2)  # (18, 2) x, y
    neg = pts < 0  # (18, 2)
    missing = neg.all(axis=1)
    half = int((neg.any(axis=1) & ~missing).sum())
    bad_missing = int((neg & (pts != -1)).sum())
    present = pts[~neg.any(axis=1)]
    outside = int(((present[:, 0] > w) | (present[:, 1] > h)).sum())
    return n, outside, half, bad_missing


def derive(df: pd.DataFrame) -> pd.DataFrame:
    stats = [_keypoint_stats(k, h, w) for k, h, w in zip(df[KEYPOINTS], df[HEIGHT], df[WIDTH])]
    conf = [np.asarray(c if c is not None else [], dtype=np.float64) for c in df[CONFIDENCE]]
    return df.assign(**{
        NUM_VALUES: [s[0] for s in stats],
        OUTSIDE: [s[1] for s in stats],
        HALF_MISSING: [s[2] for s in stats],
        BAD_MISSING: [s[3] for s in stats],
        NUM_CONFIDENCES: [c.size for c in conf],
        CONF_MIN: [float(c.min()) if c.size else -1.0 for c in conf],
        CONF_MAX: [float(c.max()) if c.size else 2.0 for c in conf],
    })


def derive_clean(df: pd.DataFrame) -> pd.DataFrame:
    return df


def input_expectations() -> list:
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(SCHEMA.names),
                                                 meta={"reason": "pose table columns differ from schema.POSES_SCHEMA"}),
        gxe.ExpectTableRowCountToEqual(value={"$PARAMETER": "manifest_rows"},
                                       meta={"reason": "pose table row count differs from the poses manifest"}),
    ]


def row_expectations() -> list:
    return [
        gxe.ExpectColumnValuesToBeInSet(column=SPLIT, value_set=list(SPLITS), meta={"reason": "unknown split"}),
        gxe.ExpectColumnValuesToBeInSet(column=POSE_SOURCE, value_set=list(POSE_SOURCES),
                                        meta={"reason": "unknown pose source"}),
        gxe.ExpectColumnValuesToBeBetween(column=HEIGHT, min_value=1, meta={"reason": "image height < 1"}),
        gxe.ExpectColumnValuesToBeBetween(column=WIDTH, min_value=1, meta={"reason": "image width < 1"}),
        gxe.ExpectColumnValuesToBeBetween(column=NUM_VALUES, min_value=2 * NUM_KEYPOINTS, max_value=2 * NUM_KEYPOINTS,
                                          meta={"reason": f"keypoint list is not {NUM_KEYPOINTS} finite (x, y) pairs"}),
        gxe.ExpectColumnValuesToBeBetween(column=NUM_CONFIDENCES, min_value=NUM_KEYPOINTS, max_value=NUM_KEYPOINTS,
                                          meta={"reason": f"confidence list is not {NUM_KEYPOINTS} long"}),
        gxe.ExpectColumnValuesToBeBetween(column=OUTSIDE, min_value=0, max_value=0,
                                          meta={"reason": "keypoints outside the image (x > width or y > height)"}),
        gxe.ExpectColumnValuesToBeBetween(column=HALF_MISSING, min_value=0, max_value=0,
                                          meta={"reason": "keypoints with one coordinate missing (-1) and one not"}),
        gxe.ExpectColumnValuesToBeBetween(column=BAD_MISSING, min_value=0, max_value=0,
                                          meta={"reason": "negative keypoint coordinates other than -1 (missing)"}),
        gxe.ExpectColumnValuesToBeBetween(column=CONF_MIN, min_value=0.0, meta={"reason": "confidence below 0"}),
        gxe.ExpectColumnValuesToBeBetween(column=CONF_MAX, max_value=1.0, meta={"reason": "confidence above 1"}),
    ]


def clean_expectations() -> list:
    return [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[IMAGE_PATH, SPLIT],
                                            meta={"reason": "duplicate (image_path, split) pose rows"}),
    ]
