"""The training table: pair closure, the Ray Data join against the feature cache, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_damage import zero_inside_a_page

from xmdpt.core.config import ModelConfig
from xmdpt.data import schema
from xmdpt.training.data import (
    Collate, FeatureSpec, TrainDataError, build_train_table, read_train_table, train_examples,
)


def _pairs(tmp_path, rows):
    d = tmp_path / "pairs"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([
        {schema.PAIR_ID: f"train:{s}_2_{t}", schema.SPLIT: split, schema.PERSON_ID: "p",
         schema.TARGET_PATH: t, schema.SOURCE_PATH: s} for t, s, split in rows], schema=schema.PAIRS_SCHEMA),
        d / "part-0.parquet")
    return str(d)


def test_reversed_pairs_added_only_where_missing(tmp_path):
    uri = _pairs(tmp_path, [("a", "b", "train"), ("b", "a", "train"), ("c", "a", "train"), ("x", "y", "test")])
    ex = train_examples(uri, add_reversed=True)
    directed = set(zip(ex["target_path"].to_pylist(), ex["source_path"].to_pylist()))
    # (a,b) and (b,a) listed once each; (a,c) added for (c,a); the test pair left out
    assert directed == {("a", "b"), ("b", "a"), ("c", "a"), ("a", "c")}
    assert ex.num_rows == 2 * 4  # two flips per directed pair
    assert sorted(ex["flip"].to_pylist()) == [False] * 4 + [True] * 4
    as_listed = train_examples(uri, add_reversed=False)
    assert set(zip(as_listed["target_path"].to_pylist(), as_listed["source_path"].to_pylist())) == {
        ("a", "b"), ("b", "a"), ("c", "a")}


def test_feature_shapes_checked_against_model_config(fixture_cache):
    spec = FeatureSpec.from_manifest(fixture_cache["features"])
    bad = ModelConfig(preset="", input_size=16, in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                      decode_layer=1, pose_num_tokens=5, pose_token_dim=16, ref_num_tokens=5, ref_token_dim=16)
    with pytest.raises(TrainDataError, match=r"model.input_size=16 .*latent height H of features.latent_mean = 8"):
        spec.check_model(bad)
    bad_tokens = ModelConfig(**{**bad.__dict__, "input_size": 8, "pose_token_dim": 768})
    with pytest.raises(TrainDataError, match=r"model.pose_token_dim=768 .*pose_tokens = 16"):
        spec.check_model(bad_tokens)


@pytest.mark.ray
def test_join_matches_feature_rows_and_counts_missing(ray_local, tmp_path, write_cache, make_config):
    missing = "img/MEN/Denim/id_00000000/00_1_front.jpg"
    fx = write_cache(tmp_path, missing=(missing,))
    cfg = make_config(tmp_path)
    info = build_train_table(cfg, fx["features"], fx["validate"])
    # person 0 and 1 are train, 3 views each, both orders listed: 2 * 6 directed pairs x 2 flips
    assert info["pairs"] == fx["train_pairs"] == 12
    # every pair touching the missing view (4 of person 0's 6) is left out, for both flips
    assert info["dropped"] == 8 and info["rows"] == 24 - 8
    assert all(missing in k for k in info["dropped_examples"])

    feats = {(r[schema.IMAGE_PATH], r[schema.FLIP]): r for r in fx["rows"]}
    spec = info["spec"]
    rows = read_train_table(info["uri"]).take_all()
    assert len(rows) == info["rows"]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = Collate(spec)(batch)
    assert out["x0_mean"].shape == (16, 4, 8, 8) and out["pose_tokens"].shape == (16, 5, 16)
    assert out["ref_tokens"].dtype.is_floating_point and out["keypoints"].shape == (16, 18, 2)
    for i, r in enumerate(rows):
        t = feats[(r["target_path"], r["flip"])]
        s = feats[(r["source_path"], r["flip"])]
        np.testing.assert_array_equal(out["x0_mean"][i].numpy(),
                                      np.frombuffer(t[schema.LATENT_MEAN], np.float16).reshape(4, 8, 8))
        np.testing.assert_array_equal(out["pose_tokens"][i].numpy(),
                                      np.frombuffer(t[schema.POSE_TOKENS], np.float16).reshape(5, 16))
        np.testing.assert_array_equal(out["ref_tokens"][i].numpy(),
                                      np.frombuffer(s[schema.IMAGE_TOKENS], np.float16).reshape(5, 16))
        np.testing.assert_array_equal(out["ref_std"][i].numpy(),
                                      np.frombuffer(s[schema.LATENT_STD], np.float16).reshape(4, 8, 8))
    # a second build reuses the written table
    again = build_train_table(cfg, fx["features"], fx["validate"])
    assert again["uri"] == info["uri"] and again["rows"] == info["rows"]

    batch["target_latent_mean"][3] = b"\x00" * 10
    with pytest.raises(TrainDataError, match=rf"{rows[3]['example_key']}.*target_latent_mean has 10 bytes"):
        Collate(spec)(batch)


def test_join_refuses_a_feature_shard_with_damaged_page_bytes(fixture_cache):
    """The features stage writes a CRC32 per page; zeroed tensor bytes fail the join with the shard
    named, where a plain read would hand wrong latents to training."""
    from xmdpt.features.stage import _write_atomic
    from xmdpt.core.storage import filesystem
    from xmdpt.training.data import _JoinFeatures

    uri = fixture_cache["features"]["tables"]["features"]["uri"]
    shard = next(p for p in Path(uri).iterdir() if p.suffix == ".parquet")
    table = pq.read_table(shard)
    fs, _ = filesystem(str(shard))
    _write_atomic(fs, table, str(shard))  # the stage's own writer
    zero_inside_a_page(shard, schema.LATENT_MEAN)

    examples = train_examples(fixture_cache["validate"]["tables"]["pairs"]["uri"], add_reversed=True)
    with pytest.raises(TrainDataError, match=r"damaged feature shard") as err:
        _JoinFeatures(uri)(examples)
    assert uri in str(err.value) and "dvc repro -f features" in str(err.value)
