"""Rules for the pair table (stage `pairs`): schema, splits, pose coverage, identity leakage."""

from __future__ import annotations

import great_expectations.expectations as gxe
import pandas as pd

from xmdpt.data.schema import PAIR_ID, PAIRS_SCHEMA, PERSON_ID, SOURCE_PATH, SPLIT, SPLITS, TARGET_PATH

TABLE = "pairs"
SCHEMA = PAIRS_SCHEMA
ROW_KEY = [PAIR_ID]

# derived columns (exist only while validating)
TARGET_HAS_POSE = "target_has_pose"  # the target has a row in the clean poses table (exists, decodes, keypoints ok)
SOURCE_HAS_POSE = "source_has_pose"
SAME_PERSON = "same_person"  # target, source and person_id name one identity
PATHS_SAFE = "paths_safe"  # both paths are root-relative, without '..'
PERSON_SPLITS = "person_num_splits"  # in how many splits the pair's identity occurs


def _safe(path: str) -> bool:
    parts = str(path).split("/")
    return bool(path) and not str(path).startswith("/") and "\\" not in path and ":" not in path and ".." not in parts


def _person(path: str) -> str:
    return "/".join(str(path).split("/")[1:4])


def derive(df: pd.DataFrame, *, pose_keys: set[tuple[str, str]]) -> pd.DataFrame:
    """Add the derived columns; ``pose_keys`` = {(image path, split)} of the clean poses table."""
    return df.assign(**{
        TARGET_HAS_POSE: [(p, s) in pose_keys for p, s in zip(df[TARGET_PATH], df[SPLIT])],
        SOURCE_HAS_POSE: [(p, s) in pose_keys for p, s in zip(df[SOURCE_PATH], df[SPLIT])],
        SAME_PERSON: [_person(t) == _person(s) == p
                      for t, s, p in zip(df[TARGET_PATH], df[SOURCE_PATH], df[PERSON_ID])],
        PATHS_SAFE: [_safe(t) and _safe(s) for t, s in zip(df[TARGET_PATH], df[SOURCE_PATH])],
    })


def derive_clean(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns of the rows that passed (identity leakage is a property of the kept pairs)."""
    return df.assign(**{PERSON_SPLITS: df.groupby(PERSON_ID)[SPLIT].transform("nunique").astype("int64")})


def input_expectations() -> list:
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(SCHEMA.names),
                                                 meta={"reason": "pair table columns differ from schema.PAIRS_SCHEMA"}),
        gxe.ExpectTableRowCountToEqual(value={"$PARAMETER": "manifest_rows"},
                                       meta={"reason": "pair table row count differs from the pairs manifest"}),
    ]


def row_expectations() -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=c, meta={"reason": f"{c} is empty"}) for c in SCHEMA.names
    ] + [
        gxe.ExpectColumnValuesToBeInSet(column=SPLIT, value_set=list(SPLITS), meta={"reason": "unknown split"}),
        gxe.ExpectColumnValuesToBeInSet(column=PATHS_SAFE, value_set=[True],
                                        meta={"reason": "image path leaves the dataset root"}),
        gxe.ExpectColumnValuesToBeInSet(column=SAME_PERSON, value_set=[True],
                                        meta={"reason": "target, source and person_id are not one identity"}),
        gxe.ExpectColumnValuesToBeInSet(column=TARGET_HAS_POSE, value_set=[True],
                                        meta={"reason": "target image has no valid pose row (missing or undecodable "
                                                        "file, or bad keypoints: see its quarantine row)"}),
        gxe.ExpectColumnValuesToBeInSet(column=SOURCE_HAS_POSE, value_set=[True],
                                        meta={"reason": "source image has no valid pose row (missing or undecodable "
                                                        "file, or bad keypoints: see its quarantine row)"}),
    ]


def clean_expectations() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"reason": "no valid pairs left"}),
        gxe.ExpectColumnDistinctValuesToContainSet(column=SPLIT, value_set=list(SPLITS),
                                                   meta={"reason": "a split has no valid pairs (empty split)"}),
        gxe.ExpectColumnValuesToBeBetween(column=PERSON_SPLITS, min_value=1, max_value=1,
                                          meta={"reason": "identity occurs in both train and test (split leakage)"}),
        gxe.ExpectColumnValuesToBeUnique(column=PAIR_ID, meta={"reason": "duplicate pair id"}),
    ]
