"""The `features` stage: frozen-encoder features of every image and its flip, cached as fp16 Parquet.

Per validated image and per augmentation (identity, horizontal flip — keypoints mirrored with
left/right swapped *before* the skeleton is rendered) the cache holds:

- the VAE posterior ``latent_mean`` / ``latent_std`` (C, h, w), unscaled;
- ``image_tokens`` (S, Dr) of the image encoder on the image;
- ``pose_tokens`` (S, Dp) of the pose encoder on the image's own rendered skeleton;
- the keypoints in the model's square frame (``image_size`` x ``image_size``, flipped for flips).

Encoders run in a Ray Data actor pool (``features.num_actors`` actors, GPUs if
``num_gpus_per_actor > 0``). Images are processed in fixed chunks of ``features.shard_images``
(sorted by path), one shard ``data/part-00017.parquet`` per chunk, written to a temporary name and
renamed; a rerun skips chunks whose shard exists and is readable, so an interrupted stage redoes
only what is missing and never duplicates rows. Images that cannot be decoded are quarantined
with the reason (``quarantine/part-00017.parquet``); counts add up: images in = cached + quarantined.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xmdpt.core.config import EncodersConfig, XMDPTConfig
from xmdpt.data import schema
from xmdpt.core.manifests import (AutoencoderManifest, FeatureImages, FeaturesManifest, FeatureTables, TableEntry,
                             TensorSpec, ValidateManifest)
from xmdpt.core.storage import filesystem, join, portable, stage_prefix
from xmdpt.features.validation import FeatureCacheError, validate_feature_cache
from xmdpt.data.images import ImageError, load_rgb
from xmdpt.encoders.dino import TokenEncoder, prepare_image, prepare_pose, skeletons_to_tensor, token_spec
from xmdpt.encoders.encoding import CHUNK, ERROR, NODE, EncoderActor, augment
from xmdpt.encoders.inputs import read_image_bytes, read_image_table
from xmdpt.encoders.vae import from_uint8
from xmdpt.core.ray_utils import init_ray

logger = logging.getLogger(__name__)

STAGE = "features"


def token_params(enc: EncodersConfig, shard_images: int) -> dict[str, Any]:
    """The config fields that change the cached tokens or their shards (hashed into the cache prefix)."""
    keep = ("pretrained", "image_encoder", "pose_encoder", "standin_image_encoder", "standin_pose_encoder",
            "standin_depth", "standin_seed", "standin_pos_embed", "standin_standardize", "token_input_size")
    return {**{k: v for k, v in asdict(enc).items() if k in keep}, "shard_images": shard_images}


def shard_name(chunk: int) -> str:
    return f"part-{chunk:05d}.parquet"


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def _readable_rows(fs, path: str) -> Optional[int]:
    """Row count of a Parquet file, or None if it is missing or unreadable (e.g. truncated)."""
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    except (OSError, pa.ArrowInvalid) as e:
        logger.warning("shard %s is unreadable (%s); it will be redone", path, e)
        return None


def _write_atomic(fs, table: pa.Table, path: str) -> None:
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_page_checksum=True)  # a CRC32 per page, verified by the training join
    fs.mv(tmp, path)


def _chunk_done(fs, data_dir: str, quarantine_dir: str, chunk: int, n_images: int) -> bool:
    """A chunk is done when its data shard and quarantine shard are readable and the counts add up."""
    rows = _readable_rows(fs, f"{data_dir}/{shard_name(chunk)}")
    bad = _readable_rows(fs, f"{quarantine_dir}/{shard_name(chunk)}")
    return rows is not None and bad is not None and rows == 2 * (n_images - bad)


def _write_chunk(fs, data_dir: str, quarantine_dir: str, chunk: int, out: pa.Table) -> tuple[int, int]:
    """Split a chunk's actor output into the data shard and the quarantine shard. Returns (rows, bad images)."""
    errors = out.column(ERROR).to_pylist()
    ok_idx = [i for i, e in enumerate(errors) if not e]
    bad = {}
    for i, e in enumerate(errors):
        if e:
            bad.setdefault(out.column(schema.IMAGE_PATH)[i].as_py(), e)
    data = out.take(pa.array(ok_idx, pa.int64())).select(schema.FEATURES_SCHEMA.names).cast(schema.FEATURES_SCHEMA)
    data = data.sort_by([(schema.IMAGE_PATH, "ascending"), (schema.FLIP, "ascending")])
    quarantine = pa.Table.from_pydict({schema.STAGE: [STAGE] * len(bad), schema.ROW_KEY: list(bad),
                                       schema.REASON: list(bad.values())}, schema=schema.QUARANTINE_SCHEMA)
    _write_atomic(fs, quarantine, f"{quarantine_dir}/{shard_name(chunk)}")
    _write_atomic(fs, data, f"{data_dir}/{shard_name(chunk)}")  # last: its presence marks the chunk done
    return data.num_rows, len(bad)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


STANDARDIZE_MAX_IMAGES = 512  # training images (each with its flip) the stand-in token statistics are fitted on


def _fit_standardization(cfg: XMDPTConfig, table: pa.Table, encoders: dict[str, TokenEncoder]) -> None:
    """Fit each stand-in's per-position token statistics on the training images (and their flips).

    Up to :data:`STANDARDIZE_MAX_IMAGES` training images, evenly spaced in path order; unreadable ones
    are skipped here (the encoding itself quarantines them).
    """
    import torch

    rows = [r for r in table.select([schema.IMAGE_PATH, schema.SPLIT, schema.KEYPOINTS]).to_pylist()
            if r[schema.SPLIT] == "train"]
    if not rows:
        raise ValueError("no training images to fit the stand-in token statistics on")
    rows = [rows[(i * len(rows)) // STANDARDIZE_MAX_IMAGES] for i in range(min(STANDARDIZE_MAX_IMAGES, len(rows)))]
    size, tis = cfg.data.image_size, cfg.encoders.token_input_size
    images, skeletons = [], []
    for r in rows:
        try:
            image = load_rgb(read_image_bytes(cfg.paths.dataset_root, r[schema.IMAGE_PATH]), name=r[schema.IMAGE_PATH])
        except (ImageError, OSError) as e:
            logger.warning("token statistics: %s skipped (%s)", r[schema.IMAGE_PATH], e)
            continue
        kps = np.asarray(r[schema.KEYPOINTS], np.float32).reshape(schema.NUM_KEYPOINTS, 2)
        for flip in (False, True):
            img, _, skel = augment(image, kps, size, flip)
            images.append(img)
            skeletons.append(skel)
    inputs = {"image": lambda sl: prepare_image(from_uint8(np.stack(images[sl])), tis),
              "pose": lambda sl: prepare_pose(skeletons_to_tensor(np.stack(skeletons[sl])), tis)}
    for role, encoder in encoders.items():
        with torch.no_grad():
            tokens = torch.cat([encoder.raw_tokens(inputs[role](slice(i, i + 64)))
                                for i in range(0, len(images), 64)])  # (M, S, D)
        encoder.fit_standardization(tokens)
    logger.info("stand-in token statistics fitted on %d training images (with flips)", len(images) // 2)


def _standin_weights(cfg: XMDPTConfig, prefix: str, table: pa.Table) -> tuple[dict[str, Optional[str]], dict[str, dict]]:
    """Save the stand-in encoders' weights (and, with ``encoders.standin_standardize``, their token
    statistics fitted on the training images) under the cache prefix, or reference the hub ids."""
    enc = cfg.encoders
    weights: dict[str, Optional[str]] = {}
    specs: dict[str, dict] = {}
    if enc.pretrained:
        for role in ("image", "pose"):
            specs[role] = token_spec(enc, role)
            weights[role] = None  # actors load the hub weights themselves
        return weights, specs
    encoders = {}
    for role in ("image", "pose"):
        uri = join(prefix, "encoders", f"{role}.safetensors")
        fs, path = filesystem(uri)
        encoders[role] = (TokenEncoder.from_weights(enc, role, uri) if fs.exists(path)
                          else TokenEncoder.from_config(enc, role))
        weights[role] = uri
    todo = {r: e for r, e in encoders.items() if enc.standin_standardize and e.token_mean is None}
    if todo:
        _fit_standardization(cfg, table, todo)
    for role, encoder in encoders.items():
        fs, path = filesystem(weights[role])
        if role in todo or not fs.exists(path):
            encoder.save(weights[role])
        specs[role] = {**encoder.spec, "sha256": encoder.fingerprint()}
    return weights, specs


def _cache_dirs(prefix: str) -> tuple[Any, str, str]:
    """``(fs, data_dir, quarantine_dir)`` of the cache under ``prefix``, created, without the
    temporary files an interrupted run left."""
    fs, data_dir = filesystem(join(prefix, "data"))
    _, quarantine_dir = filesystem(join(prefix, "quarantine"))
    fs.makedirs(data_dir, exist_ok=True)
    fs.makedirs(quarantine_dir, exist_ok=True)
    for stale in fs.glob(f"{data_dir}/*.tmp") + fs.glob(f"{quarantine_dir}/*.tmp"):
        fs.rm(stale)
    return fs, data_dir, quarantine_dir


def _count_rows(fs, prefix: str, data_dir: str, quarantine_dir: str, n: int, k: int) -> tuple[int, int, int]:
    """``(rows, quarantined images, bytes)`` of a complete cache of ``n`` images in chunks of ``k``;
    raises when a shard is missing or the counts do not add up (rows = 2 x (images - quarantined))."""
    num_chunks = math.ceil(n / k)
    missing = [c for c in range(num_chunks) if not _chunk_done(fs, data_dir, quarantine_dir, c, min(k, n - c * k))]
    if missing:
        raise RuntimeError(f"feature cache {prefix}: shards {[shard_name(c) for c in missing]} were not written")
    rows_total = sum(_readable_rows(fs, f"{data_dir}/{shard_name(c)}") for c in range(num_chunks))
    quarantined = sum(_readable_rows(fs, f"{quarantine_dir}/{shard_name(c)}") for c in range(num_chunks))
    if rows_total != 2 * (n - quarantined):
        raise RuntimeError(f"feature cache {prefix}: {rows_total} rows != 2 x ({n} images - {quarantined} quarantined)")
    return rows_total, quarantined, sum(fs.size(f"{data_dir}/{shard_name(c)}") for c in range(num_chunks))


def _encode_shards(cfg: XMDPTConfig, table: pa.Table, todo: list[int], vae_uri: str,
                   weights: dict[str, Optional[str]], data_dir: str, quarantine_dir: str, fs,
                   on_shard: Optional[Callable[[int], None]]) -> dict[str, int]:
    """Encode the images of the chunks in ``todo`` in the actor pool and write each chunk's shard as
    soon as all its rows are back; returns the rows encoded per Ray node id."""
    import ray

    fc, n, k = cfg.features, table.num_rows, cfg.features.shard_images
    init_ray(cfg=cfg)
    chunk_ids = np.arange(n) // k
    sel = np.isin(chunk_ids, todo)
    rows = table.filter(pa.array(sel)).select([schema.IMAGE_PATH, schema.SPLIT, schema.KEYPOINTS])
    rows = rows.append_column(CHUNK, pa.array(chunk_ids[sel], pa.int32()))
    expected = {c: 2 * min(k, n - c * k) for c in todo}
    blocks = [rows.slice(i, fc.batch_size) for i in range(0, rows.num_rows, fc.batch_size)]
    rows_by_node: dict[str, int] = {}  # Ray node id -> rows its actors encoded in this run
    ctx = ray.data.DataContext.get_current()
    old_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # chunks complete one after another
    try:
        ds = ray.data.from_arrow(blocks).map_batches(
            EncoderActor,
            fn_constructor_kwargs={"config": cfg.to_dict(), "vae_uri": vae_uri, "encoder_weights": weights},
            compute=ray.data.ActorPoolStrategy(size=fc.num_actors),
            num_gpus=fc.num_gpus_per_actor or None,
            num_cpus=fc.num_cpus_per_actor,
            batch_size=fc.batch_size,
            batch_format="pyarrow",
        )
        pending: dict[int, list[pa.Table]] = {}
        counts: dict[int, int] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for node in batch.column(NODE).to_pylist():
                rows_by_node[node] = rows_by_node.get(node, 0) + 1
            for c in sorted(set(batch.column(CHUNK).to_pylist())):
                part = batch.filter(pc.equal(batch.column(CHUNK), c))
                pending.setdefault(c, []).append(part)
                counts[c] = counts.get(c, 0) + part.num_rows
                if counts[c] == expected[c]:
                    rows_c, bad_c = _write_chunk(fs, data_dir, quarantine_dir, c, pa.concat_tables(pending.pop(c)))
                    logger.info("shard %s: %d rows, %d images quarantined", shard_name(c), rows_c, bad_c)
                    if on_shard is not None:
                        on_shard(c)
    finally:
        ctx.execution_options.preserve_order = old_order
    return rows_by_node


def _manifest(cfg: XMDPTConfig, ae_manifest: AutoencoderManifest, specs: dict[str, dict],
              weights: dict[str, Optional[str]], *, prefix: str, rows: int, shards: int, images: int,
              quarantined: int, nbytes: int, seconds: float, shards_encoded: int,
              rows_by_node: dict[str, int]) -> FeaturesManifest:
    """The stage manifest of a complete cache."""
    size, latent = cfg.data.image_size, tuple(int(v) for v in ae_manifest.latent_shape)
    return FeaturesManifest(
        uri=prefix,
        tables=FeatureTables(
            features=TableEntry(uri=join(prefix, "data"), rows=rows, shards=shards),
            quarantine=TableEntry(uri=join(prefix, "quarantine"), rows=quarantined),
        ),
        images=FeatureImages(total=images, cached=images - quarantined, quarantined=quarantined),
        augmentations=("identity", "hflip"),
        tensors={
            schema.LATENT_MEAN: TensorSpec(shape=latent, dtype="float16"),
            schema.LATENT_STD: TensorSpec(shape=latent, dtype="float16"),
            **{name: TensorSpec(shape=(specs[role]["num_tokens"], specs[role]["dim"]), dtype="float16")
               for name, role in ((schema.IMAGE_TOKENS, "image"), (schema.POSE_TOKENS, "pose"))},
        },
        keypoints_frame=(size, size),
        latent_scale=float(ae_manifest.latent_scale),
        image_size=size,
        encoders={
            "vae": {"source": ae_manifest.source, "uri": ae_manifest.uri, "latent_scale": ae_manifest.latent_scale},
            "image": specs["image"],
            "pose": specs["pose"],
        },
        standin=not cfg.encoders.pretrained,
        encoder_weights={r: weights[r] or f"hf-hub:timm/{specs[r]['id']}" for r in ("image", "pose")},
        vae_uri=ae_manifest.uri,
        bytes=int(nbytes),
        bytes_per_image=int(nbytes / max(1, images - quarantined)),
        encode_seconds=round(seconds, 1),
        shards_encoded=shards_encoded,
        rows_by_node=rows_by_node,  # this run's encoding, by Ray node id (empty when nothing was left to do)
    )


def build_feature_cache(
    cfg: XMDPTConfig,
    *,
    ae_manifest: Optional[AutoencoderManifest | dict[str, Any]] = None,
    validate_manifest: Optional[ValidateManifest | dict[str, Any]] = None,
    on_shard: Optional[Callable[[int], None]] = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Encode every validated image (and its flip) into fp16 Parquet shards; resumable.

    Args:
        cfg: the config (``encoders``, ``data.image_size``, ``paths``).
        ae_manifest: the `autoencoder` manifest (default ``{artifacts_dir}/autoencoder/manifest.json``).
        validate_manifest: the `validate` manifest (default ``{artifacts_dir}/validate/manifest.json``).
        on_shard: called with the chunk index after each shard is written (progress / tests).
        validate: run :func:`validate_feature_cache` at the end and raise if it fails.

    Returns:
        The stage manifest (:class:`~xmdpt.core.manifests.FeaturesManifest`) as its JSON dict (see the
        module docstring and ``DESIGN.md``).

    Raises:
        FeatureCacheError: the finished cache fails its Great Expectations checks.
    """
    enc, fc, size = cfg.encoders, cfg.features, cfg.data.image_size
    validate_manifest = ValidateManifest.coerce(validate_manifest or ValidateManifest.load(cfg.paths.artifacts_dir))
    ae_manifest = AutoencoderManifest.coerce(ae_manifest or AutoencoderManifest.load(cfg.paths.artifacts_dir))
    if ae_manifest.image_size != size:
        raise ValueError(f"autoencoder manifest image_size={ae_manifest.image_size} != data.image_size={size}; "
                         "rerun the autoencoder stage")
    prefix = stage_prefix(cfg.paths.storage_root, STAGE, token_params(enc, fc.shard_images), size,
                          validate_manifest.key(), {"uri": portable(ae_manifest.uri), "latent_scale": ae_manifest.latent_scale})
    fs, data_dir, quarantine_dir = _cache_dirs(prefix)

    table = read_image_table(validate_manifest)  # sorted by path: chunks are deterministic
    n = table.num_rows
    if n == 0:
        raise ValueError("validate manifest lists no images; nothing to encode")
    k = fc.shard_images
    num_chunks = math.ceil(n / k)
    todo = [c for c in range(num_chunks) if not _chunk_done(fs, data_dir, quarantine_dir, c, min(k, n - c * k))]
    weights, specs = _standin_weights(cfg, prefix, table)
    logger.info("feature cache %s: %d images in %d shards, %d to do (%s encoders)", prefix, n, num_chunks, len(todo),
                "STAND-IN random-feature" if not enc.pretrained else "pretrained")

    t0 = time.perf_counter()
    rows_by_node = _encode_shards(cfg, table, todo, ae_manifest.uri, weights, data_dir, quarantine_dir, fs,
                                  on_shard) if todo else {}
    seconds = time.perf_counter() - t0

    rows_total, quarantined, nbytes = _count_rows(fs, prefix, data_dir, quarantine_dir, n, k)
    manifest = _manifest(cfg, ae_manifest, specs, weights, prefix=prefix, rows=rows_total, shards=num_chunks,
                         images=n, quarantined=quarantined, nbytes=nbytes, seconds=seconds, shards_encoded=len(todo),
                         rows_by_node=rows_by_node)
    if validate:
        report = validate_feature_cache(manifest)
        manifest = replace(manifest, validation={
            "success": report["success"], "evaluated": report["evaluated"], "failures": report["failures"]})
        if not report["success"]:
            raise FeatureCacheError(report["text"])
    return manifest.to_dict()
