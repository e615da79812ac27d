"""Fixture Parquet tables and manifests for the validation suites (no Ray: written directly)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmdpt.core.manifests import MANIFESTS

from xmdpt.data.schema import (
    CONFIDENCE,
    HEIGHT,
    IMAGE_PATH,
    KEYPOINTS,
    PAIR_ID,
    PAIRS_SCHEMA,
    PERSON_ID,
    POSE_SOURCE,
    POSES_SCHEMA,
    QUARANTINE_SCHEMA,
    SOURCE_PATH,
    SPLIT,
    TARGET_PATH,
    WIDTH,
)

PEOPLE = {"train": ["MEN/Denim/id_00000001", "WOMEN/Dresses/id_00000002"], "test": ["MEN/Denim/id_00000003"]}
VIEWS = ("01_1_front", "01_2_side")


def good_rows() -> tuple[list[dict], list[dict]]:
    """Pairs and poses of three identities x two views (every pose in range)."""
    pairs, poses = [], []
    for split, people in PEOPLE.items():
        for person in people:
            paths = [f"img/{person}/{v}.jpg" for v in VIEWS]
            for t in paths:
                for s in paths:
                    if s != t:
                        pairs.append({PAIR_ID: f"{split}:{s}_2_{t}", SPLIT: split, PERSON_ID: person,
                                      TARGET_PATH: t, SOURCE_PATH: s})
            for p in paths:
                kps = [float(10 + i) for i in range(36)]
                kps[-2:] = [-1.0, -1.0]
                poses.append({IMAGE_PATH: p, SPLIT: split, HEIGHT: 256, WIDTH: 176, KEYPOINTS: kps,
                              CONFIDENCE: [1.0] * 17 + [0.0], POSE_SOURCE: "annotation"})
    return pairs, poses


def write_stage(tmp: Path, stage: str, tables: dict[str, pa.Table], counts: dict | None = None) -> dict:
    """Write ``tables`` under ``tmp/store/stage`` and ``tmp/artifacts/stage/manifest.json``."""
    prefix = tmp / "store" / stage
    entries = {}
    for name, table in tables.items():
        (prefix / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, prefix / name / "part-00000.parquet")
        entries[name] = {"uri": str(prefix / name), "rows": table.num_rows, "columns": table.schema.names}
    main = next(iter(tables))
    q = entries["quarantine"]["rows"]
    counts = counts or {"input_rows": entries[main]["rows"] + q, "valid": entries[main]["rows"], "quarantined": q}
    if stage == "pairs":  # the parts validate does not read: an empty images table, no split counts
        entries.setdefault("images", {"uri": str(prefix / "images"), "rows": 0})
        counts = {"images": 0, "images_unusable": 0, "by_split": {}, **counts}
    else:
        counts = {"by_source": {}, **counts}
    cls = MANIFESTS[stage]
    manifest = cls.from_dict({
        "stage": stage, "format_version": cls.FORMAT_VERSION, "uri": str(prefix), "layout": "pidm",
        "params": {}, "dataset_root": str(tmp / "data"), "inputs": {}, "tables": entries, "counts": counts,
        "quarantine_reasons": {}, **({"num_keypoints": 18} if stage == "poses" else {}),
    }).to_dict()
    out = tmp / "artifacts" / stage / "manifest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest))
    return manifest


@pytest.fixture
def make_upstream(tmp_path):
    """``make_upstream(pairs_rows, poses_rows, pairs_schema=..., poses_schema=..., pairs_counts=...)``
    writes both upstream stages and returns a config pointing at them."""
    from tiny_config import tiny_config

    def make(pairs_rows, poses_rows, *, pairs_schema=PAIRS_SCHEMA, poses_schema=POSES_SCHEMA, pairs_counts=None):
        empty_q = pa.Table.from_pylist([], schema=QUARANTINE_SCHEMA)
        write_stage(tmp_path, "pairs", {"pairs": pa.Table.from_pylist(pairs_rows, schema=pairs_schema),
                                        "quarantine": empty_q}, pairs_counts)
        write_stage(tmp_path, "poses", {"poses": pa.Table.from_pylist(poses_rows, schema=poses_schema),
                                        "quarantine": empty_q})
        return tiny_config().replace(paths={"dataset_root": str(tmp_path / "ds"),
                                            "storage_root": str(tmp_path / "store"),
                                            "artifacts_dir": str(tmp_path / "artifacts")})

    return make


@pytest.fixture
def rows():
    return good_rows()
