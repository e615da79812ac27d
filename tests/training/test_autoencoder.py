"""`autoencoder` stage on a tiny image fixture: fit, held-out metrics, safetensors weights, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tiny_config import tiny_config
from xmdpt.core.config import XMDPTConfig
from xmdpt.data import schema
from xmdpt.core.manifests import AutoencoderManifest

IMAGE_HW = (40, 28)  # the DeepFashion aspect (256 x 176), small


def write_image_dataset(root: Path, n_train: int = 8, n_test: int = 4, corrupt: tuple[str, ...] = ()) -> dict:
    """Images of coloured blocks + a validated poses table + a `validate`-style manifest.

    ``corrupt``: relative paths written as garbage bytes (listed in the table as if valid).
    Returns the validate manifest (dict) and writes it to ``root/artifacts/validate/manifest.json``.
    """
    rng = np.random.default_rng(0)
    rows = {f.name: [] for f in schema.POSES_SCHEMA}
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        rel = f"img/MEN/Denim/id_{i:08d}/01_1_front.jpg"
        path = root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel in corrupt:
            path.write_bytes(b"\xff\xd8 not really a jpeg")
        else:
            img = np.full((*IMAGE_HW, 3), rng.integers(150, 250, 3), np.uint8)
            y0, x0 = rng.integers(0, 20), rng.integers(0, 14)
            img[y0:y0 + 18, x0:x0 + 12] = rng.integers(0, 120, 3)
            Image.fromarray(img).save(path, quality=95)
        kps = np.stack([rng.uniform(0, IMAGE_HW[1] - 1, 18), rng.uniform(0, IMAGE_HW[0] - 1, 18)], 1)
        kps[17] = -1
        for k, v in ((schema.IMAGE_PATH, rel), (schema.SPLIT, split), (schema.HEIGHT, IMAGE_HW[0]),
                     (schema.WIDTH, IMAGE_HW[1]), (schema.KEYPOINTS, kps.astype(np.float32).reshape(-1).tolist()),
                     (schema.CONFIDENCE, [1.0] * 18), (schema.POSE_SOURCE, "annotation")):
            rows[k].append(v)
    poses_dir = root / "store" / "validate" / "fixture" / "poses"
    poses_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=schema.POSES_SCHEMA), poses_dir / "part-0.parquet")
    from xmdpt.core.manifests import TableEntry, ValidateManifest, ValidateTables

    prefix, n = root / "store" / "validate" / "fixture", n_train + n_test
    unused = TableEntry(uri=str(prefix / "unused"), rows=0)  # the autoencoder reads the poses table only
    return ValidateManifest(
        uri=str(prefix), params={}, dataset_root=str(root / "data"), layout="pidm", inputs={},
        tables=ValidateTables(pairs=unused, poses=TableEntry(uri=str(poses_dir), rows=n), quarantine=unused),
        counts={"input_rows": n, "valid": n, "quarantined": 0},
    ).write(ValidateManifest.path(root / "artifacts"))


def image_config(root: Path, *, autoencoder: dict | None = None, features: dict | None = None) -> XMDPTConfig:
    """The tiny test config at 32 px, reading and writing under ``root``; ``autoencoder`` / ``features``
    override those sections."""
    return tiny_config(
        paths={"dataset_root": str(root / "data"), "storage_root": str(root / "store"),
               "artifacts_dir": str(root / "artifacts")},
        data={"image_size": 32},
        autoencoder={"block_channels": [8, 16], "train_steps": 3, "batch_size": 4, **(autoencoder or {})},
        encoders={"standin_depth": 1, "token_input_size": 28},
        features={"batch_size": 4, "shard_images": 4, "num_actors": 1, "num_cpus_per_actor": 1.0, **(features or {})},
    )


def test_autoencoder_stage_fits_measures_and_reuses(tmp_path):
    from pipelines.autoencoder import run
    from xmdpt.encoders.vae import LatentCodec

    write_image_dataset(tmp_path, corrupt=("img/MEN/Denim/id_00000001/01_1_front.jpg",))
    cfg = image_config(tmp_path)
    m = run(cfg)
    art = tmp_path / "artifacts" / "autoencoder"
    on_disk = json.loads((art / "manifest.json").read_text())
    assert on_disk["uri"] == m["uri"]
    assert AutoencoderManifest.read(art / "manifest.json").to_dict() == on_disk  # the typed contract round-trips
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["num_eval_images"] == 4 and metrics["num_train_images"] == 7 and metrics["num_skipped_images"] == 1
    assert 0 < metrics["heldout_psnr"] < 100 and -1 <= metrics["heldout_ssim"] <= 1
    grid = np.asarray(Image.open(art / "recon.png"))
    assert grid.shape == (2 * 32, 4 * 32, 3)  # originals over reconstructions
    assert m["source"] == "fitted" and m["latent_shape"] == [4, 16, 16] and list(m["config"]["block_out_channels"]) == [8, 16]
    # channels standardised by default (exact re-parametrisation), so 1 / std of the samples is ~1
    assert np.isfinite(m["latent_scale"]) and abs(m["latent_scale"] - 1) < 0.05
    codec_info = json.loads((Path(m["uri"]) / "codec.json").read_text())
    assert len(codec_info["standardized_channels"]["mean"]) == 4 and min(codec_info["standardized_channels"]["std"]) > 0
    assert (Path(m["vae_uri"]) / "diffusion_pytorch_model.safetensors").is_file()

    codec = LatentCodec.from_manifest(art / "manifest.json")
    assert codec.latent_scale == m["latent_scale"]
    # same params + data -> same prefix, reused without refitting
    again = run(cfg)
    assert again["uri"] == m["uri"] and again["metrics"] == m["metrics"]
    # an explicit scale is used as is and changes the prefix
    fixed = run(image_config(tmp_path, autoencoder={"latent_scale": 0.25}))
    assert fixed["latent_scale"] == 0.25 and fixed["uri"] != m["uri"]


def test_autoencoder_without_validated_images_is_a_clear_error(tmp_path):
    from xmdpt.training.autoencoder import fit_autoencoder

    with pytest.raises(FileNotFoundError, match="validate/manifest.json"):
        fit_autoencoder(image_config(tmp_path))


def test_fit_on_crops_feeds_aligned_windows_and_rejects_misaligned_crops():
    from xmdpt.training.autoencoder import _train_steps
    from xmdpt.encoders.vae import build_fitted_vae

    enc = tiny_config(autoencoder={"block_channels": [8, 16], "train_steps": 4, "batch_size": 2,
                                   "crop_size": 8}).autoencoder
    vae = build_fitted_vae(enc, 32)
    train = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    seen = []
    vae.encoder.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    last = _train_steps(vae, list(vae.parameters()), train, enc, encoder_frozen=False, seed=0)
    assert seen == [(2, 3, 8, 8)] * 4 and np.isfinite(last["loss"])  # every step sees an 8x8 window
    with pytest.raises(ValueError, match=r"autoencoder\.crop_size=7 is not a multiple"):
        _train_steps(vae, list(vae.parameters()), train,
                     tiny_config(autoencoder={"block_channels": [8, 16], "crop_size": 7}).autoencoder,
                     encoder_frozen=False, seed=0)


def test_fit_keeps_the_ema_weights():
    from xmdpt.training.autoencoder import _train_steps
    from xmdpt.encoders.vae import build_fitted_vae
    from xmdpt.training.ema import EMA

    train = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = {}
    for decay in (0.0, 0.9):
        enc = tiny_config(autoencoder={"block_channels": [8, 16], "train_steps": 6, "batch_size": 2,
                                       "ema_decay": decay}).autoencoder
        torch.manual_seed(0)
        vae = build_fitted_vae(enc, 16)
        init = {k: v.clone() for k, v in vae.state_dict().items()}
        _train_steps(vae, list(vae.parameters()), train, enc, encoder_frozen=False, seed=0)
        out[decay] = (init, vae.state_dict())
    (init, raw), (init_b, averaged) = out[0.0], out[0.9]
    w = "decoder.conv_out.weight"
    assert torch.equal(init[w], init_b[w]) and not torch.equal(raw[w], averaged[w])
    # the average lies between the start and the last step's weights, closer to the start than the raw fit
    assert (averaged[w] - init[w]).norm() < (raw[w] - init[w]).norm()
    assert EMA(vae, 0.9).current_decay() == min(0.9, 1 / 10)  # the warm-up the fit uses
