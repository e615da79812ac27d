"""The evaluate stage's library function on a tiny synthetic test split (Ray local, actor pool)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tiny_pipeline_folder import build_tiny_pipeline_folder, tiny_config

from xmdpt.data import schema

pytestmark = pytest.mark.slow  # the evaluate and register stages end to end

PEOPLE = (("MEN", "Denim", 3), ("WOMEN", "Dresses", 4))
VIEWS = ("1_front", "2_side", "4_full")


def _write_split(root: Path) -> dict:
    """Two test identities x 3 views of the synthetic renderer, with pairs/poses tables and a validate manifest."""
    from xmdpt.synth import render_identity_views

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
    from xmdpt.core.manifests import TableEntry, ValidateManifest, ValidateTables

    tables = ValidateTables(pairs=TableEntry(uri=str(root / "tables" / "pairs.parquet"), rows=len(pairs)),
                            poses=TableEntry(uri=str(root / "tables" / "poses.parquet"), rows=len(poses)),
                            quarantine=TableEntry(uri=str(root / "tables" / "quarantine"), rows=0))
    return ValidateManifest(uri=str(root / "tables"), params={}, dataset_root=str(root / "data"), layout="pidm",
                            inputs={}, tables=tables, counts={"input_rows": len(pairs), "valid": len(pairs),
                                                               "quarantined": 0}).to_dict()


def _stage_inputs(tmp_path: Path, monkeypatch, **evaluate) -> tuple[dict, Path]:
    """Upstream manifests shaped as the stages write them, and params.yaml; returns (validate manifest, artifacts)."""
    import yaml

    from xmdpt.core.manifests import (FeatureImages, FeaturesManifest, FeatureTables, TableEntry, TrainManifest,
                                 ValidateManifest)

    validate = _write_split(tmp_path)
    bad = tmp_path / "data" / "img/MEN/Denim/id_00000003/01_4_full.jpg"  # source of 2 pairs, target of 2
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    build_tiny_pipeline_folder(tmp_path / "up")  # writes up/autoencoder, up/encoders, up/model like the stages
    art = tmp_path / "artifacts"
    ValidateManifest.from_dict(validate).write(ValidateManifest.path(art))
    unused = TableEntry(uri=str(tmp_path / "up" / "unused"), rows=0)  # fields evaluate does not read
    FeaturesManifest(
        uri=str(tmp_path / "up"), tables=FeatureTables(features=unused, quarantine=unused),
        images=FeatureImages(total=0, cached=0, quarantined=0), augmentations=(), tensors={}, keypoints_frame=(),
        latent_scale=1.0, image_size=0, encoders={"image": {"standin": True}, "pose": {"standin": True}},
        standin=True, encoder_weights={r: str(tmp_path / "up" / "encoders" / f"{r}.safetensors")
                                       for r in ("image", "pose")},
        vae_uri=str(tmp_path / "up" / "autoencoder"), bytes=0, bytes_per_image=0, encode_seconds=0.0,
        shards_encoded=0, rows_by_node={},
    ).write(FeaturesManifest.path(art))
    TrainManifest(
        model_uri=str(tmp_path / "up" / "model"), uri=str(tmp_path / "up"), steps=0, run_name="",
        run_id="not-in-this-store", tracking_uri="", data_hash="", train_table="", train_rows=0, dropped_examples=0,
        world_size=1, start_step=0, worker_starts=(),
    ).write(TrainManifest.path(art))
    params = tiny_config(
        paths={"dataset_root": str(tmp_path / "data"), "storage_root": str(tmp_path / "store"),
               "artifacts_dir": str(art), "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
               "models_dir": str(tmp_path)},
        evaluate={"max_pairs": 12, "batch_size": 4, "unguided_pairs": 3, "grid_rows": 3, "protocol": "cfld",
                  **evaluate},
        sample={"num_steps": 2}).to_dict()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return validate, art


def test_evaluate_and_register_stages(tmp_path, ray_local, monkeypatch):
    """`python -m pipelines.evaluate` then `pipelines.register` on upstream manifests shaped as the stages write them."""
    import yaml

    from pipelines import evaluate as evaluate_entry
    from pipelines import register as register_entry

    validate, art = _stage_inputs(tmp_path, monkeypatch)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())

    manifest = evaluate_entry.main(["--params", str(tmp_path / "params.yaml"), "--no-submit"])
    out = art / "evaluate"
    from xmdpt.core.manifests import EvaluateManifest

    from xmdpt.core.storage import localized, portable

    on_disk = json.loads((out / "manifest.json").read_text())  # paths under the project folder: ./relative
    assert on_disk["uri"].startswith("./store/evaluate/") and str(tmp_path) not in json.dumps(on_disk)
    assert EvaluateManifest.read(out / "manifest.json").to_dict() == localized(on_disk)
    metrics = json.loads((out / "metrics.json").read_text())
    # the 4 pairs touching the truncated image are quarantined with the reason; the rest is evaluated
    assert metrics["num_pairs"] == 8 and metrics["num_pairs_quarantined"] == 4 and metrics["subset_size"] == 2
    assert len(metrics["quarantine"]) == 4 and all("01_4_full.jpg" in q for q in metrics["quarantine"])
    assert sum("source" in q for q in metrics["quarantine"]) == 2
    assert manifest["pipeline_local"].startswith(str(tmp_path / "store" / "evaluate"))
    # no backbone weights configured: reported unavailable, never a number
    assert metrics["fid"] is None and "Inception-v3" in metrics["fid_unavailable"]
    assert metrics["lpips"] is None and "evaluate.lpips_weights" in metrics["lpips_unavailable"]
    for key in ("ssim", "ssim_256", "psnr", "synthetic_pose_iou", "synthetic_pose_iou_source_baseline",
                "synthetic_colour_error_legs", "synthetic_colour_error_legs_other_identity_baseline",
                "synthetic_consistency_pixel_l1", "synthetic_consistency_iou",
                "subset_guided_ssim", "subset_cond_only_ssim", "subset_null_cond_ssim",
                "synthetic_subset_null_cond_pose_iou", "synthetic_pose_match", "synthetic_pose_match_source_baseline"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert -1 <= metrics["ssim"] <= 1 and 0 <= metrics["synthetic_pose_iou"] <= 1
    # the source-image baseline is computed on real images: a person in another view overlaps the GT partly
    assert 0.2 < metrics["synthetic_pose_iou_source_baseline"] < 1.0
    # pose match ranks the target among the person's other poses (the unreadable one is skipped)
    assert 0 <= metrics["synthetic_pose_match"] <= 1 and 0 <= metrics["synthetic_pose_match_source_baseline"] <= 1
    # the 2-pair subset's people have no third readable image here: reported as null, not as a number
    assert metrics["synthetic_subset_guided_pose_match"] is None
    # every comparison is paired: the model and its baseline on the same 8 pairs, guided and unguided on the 2
    comp = metrics["comparisons"]
    iou = comp["pose_iou_model_vs_source_image"]
    assert iou["n"] == 8 and iou["better"] in ("model", "source_image", "undecided")
    assert iou["mean_model"] == pytest.approx(metrics["synthetic_pose_iou"])
    assert iou["ci"][0] <= iou["diff"] <= iou["ci"][1]
    assert comp["colour_error_torso_model_vs_other_identity"]["n"] >= 2
    for unguided in ("cond_only", "null_cond"):
        ssim_cmp = comp[f"subset_ssim_guided_vs_{unguided}"]
        assert ssim_cmp["n"] == 2 and ssim_cmp["mean_guided"] == pytest.approx(metrics["subset_guided_ssim"])
        assert comp[f"subset_pose_match_guided_vs_{unguided}"] is None  # null values: nothing to compare
    assert metrics["synthetic_consistency_groups"] >= 1
    # one row per person (fewer test people here than grid_rows = 3); the worst rows fill all 3
    grid = Image.open(out / "grid.png")
    from xmdpt.evaluation.pairs import load_test_pairs

    evaluated = [p for p in load_test_pairs(validate, 12) if not any(p["pair_id"] in q for q in metrics["quarantine"])]
    people = {p["person_id"] for p in evaluated}
    assert len(evaluated) == 8 and 1 <= len(people) < 3
    assert grid.size == (4 * 176, len(people) * 256)
    assert Image.open(out / "grid_worst.png").size == (4 * 176, 3 * 256)
    # the same-person floor and the gap closed are reported beside the baselines
    for part in ("torso", "legs"):
        assert f"synthetic_colour_error_{part}_same_person_floor" in metrics
        assert f"synthetic_colour_gap_closed_{part}" in metrics
    pngs = sorted(Path(manifest["uri"], "images").glob("*.png"))
    assert len(pngs) == 8 + 2 * 2

    record = register_entry.main(["--params", str(tmp_path / "params.yaml"), "--no-submit"])
    on_disk = json.loads((art / "register" / "registered.json").read_text())
    assert on_disk == portable(json.loads(json.dumps(record, default=str))) and str(tmp_path) not in json.dumps(on_disk)
    assert record["version"] == 1 and record["aliases"] == ["candidate", "champion"]
    assert record["metric"]["value"] == metrics["synthetic_pose_iou"]
    assert record["lineage"]["manifest.train.path"].endswith("train/manifest.json")

    # seeded per pair: the generation actor (the one `xmdpt generate-batch` uses) gives the same images
    # for the same seeds in any batch, different ones for another seed
    from xmdpt.evaluation.pairs import load_test_pairs, pair_seed
    from xmdpt.sampling.generation_actor import GenerationActor

    pairs = load_test_pairs(validate, 2)
    poses = [json.dumps({"format": "coco18", "image_size": [int(p["height"]), int(p["width"])],
                         "keypoints": p["keypoints"].tolist()}) for p in pairs]

    def batch(seed: int, rows=(0, 1)):
        return {"row": np.array(rows), "id": np.array([f"p{r}" for r in rows], dtype=object),
                "source": np.array([str(tmp_path / "data" / pairs[r]["source_path"]) for r in rows], dtype=object),
                "pose": np.array([poses[r] for r in rows], dtype=object),
                "seed": np.array([pair_seed(seed, r) for r in rows]), "cfg_scale": np.array([2.0] * len(rows))}

    actor = GenerationActor(manifest["pipeline_local"], sample=params["sample"], square=True, return_images=True)
    first, second = actor(batch(0)), actor(batch(0))
    assert np.array_equal(first["image"], second["image"]) and list(first["error"]) == ["", ""]
    alone = actor(batch(0, rows=(1,)))
    assert np.array_equal(alone["image"][0], first["image"][1])  # batch-invariant
    other = actor(batch(1))
    assert not np.array_equal(first["image"], other["image"])


def test_a_pair_cap_spreads_over_every_identity():
    from xmdpt.evaluation.pairs import evenly_spaced

    rows = [f"id{i // 20:02d}_pair{i % 20:02d}" for i in range(160)]  # 8 identities x 20 pairs, sorted
    picked = evenly_spaced(rows, 16)
    assert len(picked) == 16 and picked == sorted(picked) and picked[0] == rows[0]
    assert {r[:4] for r in picked} == {r[:4] for r in rows}  # every identity, not the first one only
    assert evenly_spaced(rows, None) == rows and evenly_spaced(rows, 500) == rows


def test_a_failure_after_generation_keeps_the_images_and_the_rerun_reuses_them(tmp_path, ray_local, monkeypatch):
    """A metric backbone file that exists but is not Inception passes the preflight and fails in the
    metrics, after generation: the images are kept, and the rerun with the setting fixed does not
    generate again."""
    import torch
    import yaml

    from pipelines import evaluate as evaluate_entry

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "not_inception.pth")
    _stage_inputs(tmp_path, monkeypatch, inception_weights=str(tmp_path / "not_inception.pth"))
    with pytest.raises(ValueError, match="evaluate.inception_weights"):
        evaluate_entry.main(["--params", str(tmp_path / "params.yaml"), "--no-submit"])
    kept = list((tmp_path / "store" / "evaluate-generation").glob("*/generated/generated.json"))
    assert len(kept) == 1
    listing = json.loads(kept[0].read_text())
    # the 2 pairs whose source is the truncated image fail at generation (2 more at the metrics: their GT)
    assert len(listing["pair_ids"]) == 12 and len(listing["quarantined"]) == 2
    assert len(list(kept[0].parent.glob("guided/*.png"))) == 10

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["evaluate"]["inception_weights"] = ""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = evaluate_entry.main(["--params", str(tmp_path / "params.yaml"), "--no-submit"])
    metrics = json.loads(Path(manifest["metrics_path"]).read_text())
    assert metrics["generation_reused"] is True and metrics["num_pairs"] == 8 and metrics["fid"] is None
