"""The evaluate stage's library function on a tiny synthetic test split (Ray local, actor pool)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sampling"))
from tiny_pipeline_folder import build_tiny_pipeline_folder, tiny_config  # noqa: E402

from xmdpt.data import schema  # noqa: E402

PEOPLE = (("MEN", "Denim", 3), ("WOMEN", "Dresses", 4))
VIEWS = ("1_front", "2_side", "4_full")


def _write_split(root: Path) -> dict:
    """Two test identities x 3 views of the synthetic renderer, with pairs/poses tables and a validate manifest."""
    from xmdpt.data.synth import render_identity_views

    pairs, poses = [], []
    for gender, cat, seed in PEOPLE:
        person = f"{gender}/{cat}/id_{seed:08d}"
        paths = []
        for v in render_identity_views(seed, gender, cat, views=VIEWS):
            rel = f"img/{person}/01_{v.view}.jpg"
            (root / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(v.image).save(root / "data" / rel, quality=95)
            poses.append({schema.IMAGE_PATH: rel, schema.SPLIT: "test", schema.HEIGHT: 256, schema.WIDTH: 176,
                          schema.KEYPOINTS: v.keypoints.reshape(-1).tolist(),
                          schema.CONFIDENCE: [1.0] * 18, schema.POSE_SOURCE: "annotation"})
            paths.append(rel)
        for t in paths:
            for s in paths:
                if s != t:
                    pairs.append({schema.PAIR_ID: f"test:{s}_2_{t}".replace("/", "-"), schema.SPLIT: "test",
                                  schema.PERSON_ID: person, schema.TARGET_PATH: t, schema.SOURCE_PATH: s})
    (root / "tables").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs, schema.PAIRS_SCHEMA), root / "tables" / "pairs.parquet")
    pq.write_table(pa.Table.from_pylist(poses, schema.POSES_SCHEMA), root / "tables" / "poses.parquet")
    return {"tables": {"pairs": {"uri": str(root / "tables" / "pairs.parquet")},
                       "poses": {"uri": str(root / "tables" / "poses.parquet")}}}


def test_evaluate_generates_and_measures(tmp_path, ray_local):
    from xmdpt.evaluation import evaluate

    manifest = _write_split(tmp_path)
    folder = build_tiny_pipeline_folder(tmp_path / "model")
    cfg = tiny_config(paths={"dataset_root": str(tmp_path / "data")},
                      evaluate={"max_pairs": 8, "batch_size": 4, "unguided_pairs": 2, "grid_rows": 3},
                      sample={"num_steps": 2})
    out = tmp_path / "artifacts" / "evaluate"
    metrics = evaluate(cfg, str(folder), manifest, out_dir=out, images_uri=str(tmp_path / "store" / "images"))

    assert metrics["num_pairs"] == 8 and metrics["subset_size"] == 2
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["num_pairs"] == 8
    # no backbone weights configured: reported unavailable, never a number
    assert on_disk["fid"] is None and "Inception-v3" in on_disk["fid_unavailable"]
    assert on_disk["lpips"] is None and "evaluate.lpips_weights" in on_disk["lpips_unavailable"]
    for key in ("ssim", "ssim_256", "psnr", "synthetic_pose_iou", "synthetic_pose_iou_source_baseline",
                "synthetic_colour_error_legs", "synthetic_colour_error_legs_other_identity_baseline",
                "synthetic_consistency_pixel_l1", "synthetic_consistency_iou",
                "subset_guided_ssim", "subset_cond_only_ssim", "subset_null_cond_ssim",
                "synthetic_subset_null_cond_pose_iou"):
        assert isinstance(on_disk[key], float) and np.isfinite(on_disk[key]), key
    assert -1 <= on_disk["ssim"] <= 1 and 0 <= on_disk["synthetic_pose_iou"] <= 1
    # the source-image baseline is computed on real images: a person in another view overlaps the GT partly
    assert 0.2 < on_disk["synthetic_pose_iou_source_baseline"] < 1.0
    assert on_disk["synthetic_consistency_groups"] >= 1
    grid = Image.open(out / "grid.png")
    assert grid.size == (4 * 176, 3 * 256)
    pngs = sorted((tmp_path / "store" / "images").glob("*.png"))
    assert len(pngs) == 8 + 2 * 2
    # seeded: a second run gives the same images
    again = evaluate(cfg, str(folder), manifest, out_dir=tmp_path / "again")
    assert again["ssim"] == metrics["ssim"] and again["synthetic_pose_iou"] == metrics["synthetic_pose_iou"]
