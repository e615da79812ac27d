"""`features` stage with a real Ray actor pool: resumable shards, quarantine, GE checks of the cache."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from xmdpt.data import schema
from xmdpt.core.manifests import FeaturesManifest

pytestmark = pytest.mark.ray

BAD = "img/MEN/Denim/id_00000005/01_1_front.jpg"


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 12-image fixture (one undecodable) with a 2-step autoencoder fitted on it."""
    from test_autoencoder import image_config, write_image_dataset

    from xmdpt.training.autoencoder import fit_autoencoder

    root = tmp_path_factory.mktemp("features")
    validate = write_image_dataset(root, n_train=8, n_test=4, corrupt=(BAD,))
    cfg = image_config(root, autoencoder={"train_steps": 2})
    return root, cfg, validate, fit_autoencoder(cfg, validate)


def read_rows(manifest) -> pa.Table:
    return pads.dataset(manifest["tables"]["features"]["uri"], format="parquet").to_table()


def test_interrupted_cache_resumes_without_duplicates(fitted, ray_local):
    from xmdpt.features.stage import build_feature_cache, shard_name

    root, cfg, validate, ae = fitted
    written = []

    def stop_after_first(chunk: int) -> None:
        written.append(chunk)
        raise Interrupted(f"stopped after {shard_name(chunk)}")

    with pytest.raises(Interrupted):
        build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, on_shard=stop_after_first)
    data_dirs = list((root / "store" / "features").glob("*/data"))
    assert len(data_dirs) == 1 and [p.name for p in data_dirs[0].glob("*.parquet")] == [shard_name(0)]
    # a half-written shard and a stale temp file, as a crash mid-write leaves them
    (data_dirs[0] / shard_name(1)).write_bytes(b"PAR1 truncated")
    (data_dirs[0] / f"{shard_name(2)}.tmp").write_bytes(b"junk")
    first = (data_dirs[0] / shard_name(0)).stat().st_mtime_ns

    m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate)
    assert m["shards_encoded"] == 2  # shard 0 kept, the truncated shard 1 and the missing shard 2 redone
    assert (data_dirs[0] / shard_name(0)).stat().st_mtime_ns == first
    assert not list(data_dirs[0].glob("*.tmp"))

    rows = read_rows(m)
    assert rows.schema.equals(schema.FEATURES_SCHEMA, check_metadata=False)
    keys = list(zip(rows.column(schema.IMAGE_PATH).to_pylist(), rows.column(schema.FLIP).to_pylist()))
    assert len(keys) == len(set(keys)) == m["tables"]["features"]["rows"] == 2 * 11
    assert m["images"] == {"total": 12, "cached": 11, "quarantined": 1}
    q = pads.dataset(m["tables"]["quarantine"]["uri"], format="parquet").to_table().to_pylist()
    assert [r[schema.ROW_KEY] for r in q] == [BAD] and "not a recognised image" in q[0][schema.REASON]
    assert m["validation"]["success"] and m["validation"]["evaluated"] >= 15

    # a complete cache: a third run encodes nothing
    assert build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, validate=False)["shards_encoded"] == 0


def test_cache_contents_match_the_manifest_and_the_encoders(fitted, ray_local):

    from xmdpt.encoders.dino import TokenEncoder, prepare_image
    from xmdpt.features.stage import build_feature_cache
    from xmdpt.encoders.vae import LatentCodec, from_uint8
    from xmdpt.encoders.inputs import load_square_image

    root, cfg, validate, ae = fitted
    m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, validate=False)
    assert m["standin"] is True and m["encoders"]["image"]["standin"] and m["encoders"]["pose"]["label"] == \
        "random-feature stand-in"
    assert m["tensors"]["latent_mean"]["shape"] == [4, 16, 16] and m["tensors"]["image_tokens"]["shape"] == [5, 384]
    assert m["latent_scale"] == ae["latent_scale"] and m["vae_uri"] == ae["uri"]
    assert FeaturesManifest.from_dict(json.loads(json.dumps(m))).to_dict() == m  # the typed contract round-trips

    rows = read_rows(m).to_pylist()
    by_key = {(r[schema.IMAGE_PATH], r[schema.FLIP]): r for r in rows}
    path = sorted(p for p, _ in by_key)[0]
    shape = lambda name: m["tensors"][name]["shape"]  # noqa: E731
    tensor = lambda r, name: np.frombuffer(r[name], "<f2").reshape(shape(name))  # noqa: E731

    # the cached latents and image tokens are what the saved encoders give for this image (fp16)
    img = load_square_image(cfg.paths.dataset_root, path, cfg.data.image_size)
    codec = LatentCodec.from_manifest(ae)
    mean, std = codec.encode(from_uint8(img[None]))
    np.testing.assert_allclose(tensor(by_key[(path, False)], "latent_mean"), mean[0].numpy(), atol=2e-3, rtol=2e-3)
    enc = TokenEncoder.from_weights(cfg.encoders, "image", m["encoder_weights"]["image"])
    tok = enc(prepare_image(from_uint8(img[None, :, ::-1].copy()), cfg.encoders.token_input_size))
    np.testing.assert_allclose(tensor(by_key[(path, True)], "image_tokens"), tok[0].numpy(), atol=5e-3, rtol=5e-3)
    assert enc.fingerprint() == m["encoders"]["image"]["sha256"]

    # flipped rows carry mirrored, left/right-swapped keypoints in the model frame
    k0 = np.asarray(by_key[(path, False)][schema.KEYPOINTS]).reshape(18, 2)
    k1 = np.asarray(by_key[(path, True)][schema.KEYPOINTS]).reshape(18, 2)
    from xmdpt.data.keypoints import flip_keypoints

    np.testing.assert_allclose(k1, flip_keypoints(k0, cfg.data.image_size), atol=1e-4)
    assert by_key[(path, False)][schema.POSE_TOKENS] != by_key[(path, True)][schema.POSE_TOKENS]


def test_cache_validation_fails_loudly_on_bad_values(fitted, ray_local, tmp_path):
    from xmdpt.features.validation import validate_feature_cache
    from xmdpt.features.stage import build_feature_cache

    root, cfg, validate, ae = fitted
    m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, validate=False)
    table = read_rows(m)
    mean = table.column(schema.LATENT_MEAN).to_pylist()
    broken = np.frombuffer(mean[3], "<f2").copy()
    broken[7] = np.nan
    mean[3] = broken.tobytes()
    table = table.set_column(table.schema.get_field_index(schema.LATENT_MEAN), schema.LATENT_MEAN,
                             pa.array(mean, pa.binary()))
    table = pa.concat_tables([table, table.slice(0, 1)])  # one duplicated row
    out = tmp_path / "bad"
    out.mkdir()
    pq.write_table(table, out / "part-00000.parquet")
    bad = {**m, "tables": {**m["tables"], "features": {"uri": str(out), "rows": table.num_rows}}}
    report = validate_feature_cache(bad)
    assert not report["success"]
    failed = {(f["expectation"], str(f["column"])) for f in report["failures"]}
    assert ("expect_column_values_to_be_in_set", "latent_mean_finite") in failed
    assert any(e == "expect_compound_columns_to_be_unique" for e, _ in failed)
    assert "latent_mean_finite" in report["text"] and "FAILED" in report["text"]
