"""Fixtures for the training tests: a tiny feature cache and pair table in the real schemas.

The tensors are random (the point is the plumbing: join, decode, shapes, resume), written in
exactly ``schema.FEATURES_SCHEMA`` / ``schema.PAIRS_SCHEMA`` with manifests shaped like the
`features` and `validate` stages' manifests.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmdpt.core.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.core.manifests import (AutoencoderManifest, FeatureImages, FeaturesManifest, FeatureTables, TableEntry,
                             TensorSpec, ValidateManifest, ValidateTables)

from tiny_config import tiny_dict

# a model small enough for a CPU test step: 8x8x4 latents, 5 tokens of width 16
TINY_MODEL = dict(preset="", input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                  decode_layer=1, pose_num_tokens=5, pose_token_dim=16, ref_num_tokens=5, ref_token_dim=16)


def _tiny_config(tmp: Path, **train) -> XMDPTConfig:
    """Config for a CPU test run under ``tmp`` (storage, artifacts, MLflow all inside it)."""
    return XMDPTConfig.from_dict(tiny_dict({
        "paths": {"storage_root": str(tmp / "store"), "artifacts_dir": str(tmp / "artifacts"),
                  "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        "model": TINY_MODEL,
        "sample": {"num_steps": 2},
        "train": {"num_workers": 1, "batch_size_per_worker": 4, "max_steps": 6, "lr": 1e-3, "ema_decay": 0.9,
                  "log_every": 2, "checkpoint_every": 3, "sample_every": 3, "warmup_steps": 0, **train},
    }))


def _write_fixture_cache(root: Path, *, persons: int = 3, views: int = 3, latent=(4, 8, 8), tokens=(5, 16),
                        seed: int = 0, missing: tuple[str, ...] = ()) -> dict:
    """Write features + pairs Parquet and their manifests under ``root``; return a summary.

    ``missing`` lists image paths whose feature rows are left out (their pairs cannot be joined).
    """
    rng = np.random.default_rng(seed)
    images, pairs = [], []
    for p in range(persons):
        person = f"MEN/Denim/id_{p:08d}"
        split = "train" if p < persons - 1 else "test"
        paths = [f"img/{person}/{v:02d}_1_front.jpg" for v in range(views)]
        images += [(path, split) for path in paths]
        for t, s in itertools.permutations(paths, 2):  # both orders, as the pair tables list them
            pairs.append({schema.PAIR_ID: f"{split}:{s}_2_{t}", schema.SPLIT: split, schema.PERSON_ID: person,
                          schema.TARGET_PATH: t, schema.SOURCE_PATH: s})
    rows = []
    for (path, split), flip in itertools.product(images, (False, True)):
        if path in missing:
            continue
        rows.append({
            schema.IMAGE_PATH: path, schema.FLIP: flip, schema.SPLIT: split,
            schema.KEYPOINTS: rng.uniform(0, 64, 2 * schema.NUM_KEYPOINTS).astype(np.float32).tolist(),
            schema.LATENT_MEAN: rng.standard_normal(latent).astype(np.float16).tobytes(),
            schema.LATENT_STD: (0.1 * rng.random(latent)).astype(np.float16).tobytes(),
            schema.IMAGE_TOKENS: rng.standard_normal(tokens).astype(np.float16).tobytes(),
            schema.POSE_TOKENS: rng.standard_normal(tokens).astype(np.float16).tobytes(),
        })
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "pairs").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.FEATURES_SCHEMA), root / "features" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(pairs, schema=schema.PAIRS_SCHEMA), root / "pairs" / "part-0.parquet")
    tensor_meta = {
        schema.LATENT_MEAN: TensorSpec(shape=latent, dtype="float16"),
        schema.LATENT_STD: TensorSpec(shape=latent, dtype="float16"),
        schema.IMAGE_TOKENS: TensorSpec(shape=tokens, dtype="float16"),
        schema.POSE_TOKENS: TensorSpec(shape=tokens, dtype="float16"),
    }
    size = 4 * latent[1]
    cached = len({path for path, _ in images} - set(missing))
    features_manifest = FeaturesManifest(
        uri=str(root / "features"),
        tables=FeatureTables(features=TableEntry(uri=str(root / "features"), rows=len(rows)),
                             quarantine=TableEntry(uri=str(root / "features-quarantine"), rows=0)),
        images=FeatureImages(total=len(images), cached=cached, quarantined=len(images) - cached),
        augmentations=("identity", "hflip"), tensors=tensor_meta, keypoints_frame=(size, size), latent_scale=0.5,
        image_size=size, encoders={r: {"id": "fixture", "seed": seed} for r in ("image", "pose")}, standin=True,
        encoder_weights={}, vae_uri="", bytes=0, bytes_per_image=0, encode_seconds=0.0, shards_encoded=1,
        rows_by_node={},
    ).write(FeaturesManifest.path(root / "artifacts"))
    no_table = TableEntry(uri=str(root / "unused"), rows=0)  # not read by training
    validate_manifest = ValidateManifest(
        uri=str(root), params={}, dataset_root=str(root), layout="pidm", inputs={},
        tables=ValidateTables(pairs=TableEntry(uri=str(root / "pairs"), rows=len(pairs)), poses=no_table,
                              quarantine=no_table),
        counts={"input_rows": len(pairs), "valid": len(pairs), "quarantined": 0},
    ).write(ValidateManifest.path(root / "artifacts"))
    train_pairs = sum(1 for p in pairs if p[schema.SPLIT] == "train")
    return {"features": features_manifest, "validate": validate_manifest, "train_pairs": train_pairs,
            "images": images, "rows": rows}


def _write_fixture_autoencoder(root: Path, latent_scale: float = 0.5) -> dict:
    """A random-init fitted-type AutoencoderKL (32 px -> 4x8x8) saved as the autoencoder stage does."""
    from xmdpt.core.config import AutoencoderConfig
    from xmdpt.encoders.vae import LatentCodec, build_fitted_vae

    import torch

    torch.manual_seed(0)
    vae = build_fitted_vae(AutoencoderConfig(vae="fitted", block_channels=(8, 8, 8)), image_size=32)
    uri = str(root / "autoencoder")
    LatentCodec(vae, latent_scale, source="fitted").save(uri)
    return AutoencoderManifest(
        uri=uri, vae_uri=f"{uri}/vae", recon_uri=f"{uri}/recon.png", source="fitted", latent_scale=latent_scale,
        latent_shape=(4, 8, 8), image_size=32, config={}, metrics={},
    ).write(AutoencoderManifest.path(root / "artifacts"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning OpenMP threads are 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def fixture_cache(tmp_path: Path) -> dict:
    """Feature cache + pair table under ``tmp_path``; ``root`` is ``tmp_path``."""
    out = _write_fixture_cache(tmp_path)
    out["root"] = tmp_path
    return out


@pytest.fixture()
def fixture_cache_with_vae(fixture_cache: dict) -> dict:
    """:func:`fixture_cache` plus an `autoencoder` stage output, so sample grids are VAE-decoded."""
    fixture_cache["autoencoder"] = _write_fixture_autoencoder(fixture_cache["root"])
    return fixture_cache


@pytest.fixture()
def write_cache():
    """The fixture writer itself (for variants: missing images, other shapes)."""
    return _write_fixture_cache


@pytest.fixture()
def make_config():
    """``make_config(root, **train_overrides) -> XMDPTConfig`` for a tiny CPU run under ``root``."""
    return _tiny_config
