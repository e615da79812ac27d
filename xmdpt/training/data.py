"""The training table: clean pairs joined with the cached features, as a Ray Dataset.

One row of the training table is one *directed* example (target, source, flip):

- target: VAE posterior mean/std (C, H, W), the pose tokens of its rendered skeleton (Sp, Dp),
  its keypoints (for sample grids);
- source: VAE posterior mean/std (C, H, W) and its image tokens (Sr, Dr);
- ``flip``: both images are taken from the horizontally flipped feature rows (the authors flip
  target and source jointly), so every pair appears once per flip.

Source/target swap. The authors swap the roles of the whole batch with p=0.5. Here the reversed
pair is a row of the table instead: for every train pair (t, s) whose reverse (s, t) is *not*
already in the pair table, a reversed row is added (``train.swap_prob > 0``); pairs that are
already present in both orders (the synthetic tables and the DeepFashion pair lists list both)
are not duplicated. Sampling rows uniformly from this symmetric table sees each order with
probability 1/2, as the authors' swap does. ``train.swap_prob = 0`` keeps the pairs as listed.

The join is a Ray Data pipeline without a driver-side table of tensors: the (small) example
table is a Ray Dataset, and each batch of examples reads just the feature rows it needs with a
filtered Parquet scan (no shuffle of tensor bytes; no ``polars`` needed for ``Dataset.join``). The joined table is written once as
Parquet under ``{storage_root}/train/data/{hash}/`` (content-addressed by the upstream manifests),
so reruns and resumed runs stream it directly. Tensors stay as raw fp16 bytes in the table; the
training-side :class:`Collate` decodes them with the shapes from the feature manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from xmdpt.core import storage
from xmdpt.core.config import ModelConfig, XMDPTConfig, section_hash
from xmdpt.data import schema
from xmdpt.encoders.inputs import read_table
from xmdpt.core.manifests import FeaturesManifest, ValidateManifest

logger = logging.getLogger(__name__)

# ---- training-table columns (composed from the feature-schema names, never retyped) ----------
KEY = "example_key"  # "{pair_id}|flip={0|1}" (+ "~reversed" on the pair id for added reverses)
TARGET_PATH = schema.TARGET_PATH
SOURCE_PATH = schema.SOURCE_PATH
FLIP = schema.FLIP
TARGET_KEYPOINTS = f"target_{schema.KEYPOINTS}"
TARGET_LATENT_MEAN = f"target_{schema.LATENT_MEAN}"
TARGET_LATENT_STD = f"target_{schema.LATENT_STD}"
TARGET_POSE_TOKENS = f"target_{schema.POSE_TOKENS}"
SOURCE_LATENT_MEAN = f"source_{schema.LATENT_MEAN}"
SOURCE_LATENT_STD = f"source_{schema.LATENT_STD}"
SOURCE_IMAGE_TOKENS = f"source_{schema.IMAGE_TOKENS}"

# tensor column of the training table -> tensor name in the feature manifest
TENSOR_COLUMNS: dict[str, str] = {
    TARGET_LATENT_MEAN: schema.LATENT_MEAN,
    TARGET_LATENT_STD: schema.LATENT_STD,
    TARGET_POSE_TOKENS: schema.POSE_TOKENS,
    SOURCE_LATENT_MEAN: schema.LATENT_MEAN,
    SOURCE_LATENT_STD: schema.LATENT_STD,
    SOURCE_IMAGE_TOKENS: schema.IMAGE_TOKENS,
}

TRAIN_TABLE_SCHEMA = pa.schema([
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(TARGET_PATH, pa.string(), nullable=False),
    pa.field(SOURCE_PATH, pa.string(), nullable=False),
    pa.field(FLIP, pa.bool_(), nullable=False),
    pa.field(TARGET_KEYPOINTS, pa.list_(pa.float32(), 2 * schema.NUM_KEYPOINTS), nullable=False),
    *[pa.field(name, pa.binary(), nullable=False) for name in TENSOR_COLUMNS],
])

_SUCCESS = "_SUCCESS.json"


class TrainDataError(ValueError):
    """The feature cache or pair table cannot feed this model; the message names file/row/key."""


# ---------------------------------------------------------------------------------------------
# Feature specification (shapes from the manifest, checked against the model config)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """Shapes and dtype of the cached tensors, from ``features/manifest.json``.

    Attributes:
        shapes: tensor name -> shape, e.g. ``latent_mean: (C, H, W)``, ``pose_tokens: (Sp, Dp)``.
        dtypes: tensor name -> numpy dtype name (``float16``).
        latent_scale: multiply VAE latents by this before diffusion (x_0 = z * latent_scale).
    """

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    latent_scale: float

    @classmethod
    def from_manifest(cls, manifest: FeaturesManifest | Mapping[str, Any],
                      source: str = "features manifest") -> "FeatureSpec":
        """From the `features` manifest (a dict is parsed as one)."""
        manifest = FeaturesManifest.coerce(manifest, source)
        shapes, dtypes = {}, {}
        for name in schema.FEATURE_TENSORS:
            if name not in manifest.tensors:
                raise TrainDataError(f"{source}: tensors.{name} missing; expected {list(schema.FEATURE_TENSORS)}")
            shapes[name] = tuple(manifest.tensors[name].shape)
            dtypes[name] = manifest.tensors[name].dtype
        return cls(shapes=shapes, dtypes=dtypes, latent_scale=float(manifest.latent_scale))

    def check_model(self, model: ModelConfig) -> None:
        """Raise :class:`TrainDataError` naming both sides if the cache cannot feed ``model``."""
        c, h, w = self.shapes[schema.LATENT_MEAN]
        sp, dp = self.shapes[schema.POSE_TOKENS]
        sr, dr = self.shapes[schema.IMAGE_TOKENS]
        checks = [
            ("model.in_channels", model.in_channels, "latent channels C of features.latent_mean", c),
            ("model.input_size", model.input_size, "latent height H of features.latent_mean", h),
            ("model.input_size", model.input_size, "latent width W of features.latent_mean", w),
            ("model.pose_num_tokens", model.pose_num_tokens, "tokens Sp of features.pose_tokens", sp),
            ("model.pose_token_dim", model.pose_token_dim, "width Dp of features.pose_tokens", dp),
            ("model.ref_num_tokens", model.ref_num_tokens, "tokens Sr of features.image_tokens", sr),
            ("model.ref_token_dim", model.ref_token_dim, "width Dr of features.image_tokens", dr),
        ]
        for key, want, what, got in checks:
            if want != got:
                raise TrainDataError(f"{key}={want} does not match the feature cache: {what} = {got}")
        if tuple(self.shapes[schema.LATENT_STD]) != (c, h, w):
            raise TrainDataError(f"features.latent_std shape {self.shapes[schema.LATENT_STD]} != latent_mean {(c, h, w)}")

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": {k: list(v) for k, v in self.shapes.items()}, "dtypes": dict(self.dtypes),
                "latent_scale": self.latent_scale}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        return cls(shapes={k: tuple(v) for k, v in d["shapes"].items()}, dtypes=dict(d["dtypes"]),
                   latent_scale=float(d["latent_scale"]))


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


def train_examples(pairs_uri: str, *, add_reversed: bool) -> pa.Table:
    """Directed train examples ``(key, target_path, source_path, flip)``, two flips per pair.

    Args:
        pairs_uri: Parquet folder of the clean pair table (``schema.PAIRS_SCHEMA``).
        add_reversed: add (s, t) for each train pair (t, s) whose reverse is not listed.

    Returns:
        A table with columns KEY, TARGET_PATH, SOURCE_PATH, FLIP (2 rows per directed pair).
    """
    pairs = read_table(pairs_uri, [schema.PAIR_ID, schema.SPLIT, schema.TARGET_PATH, schema.SOURCE_PATH])
    pairs = pairs.filter(pc.equal(pairs[schema.SPLIT], "train"))
    ids = pairs[schema.PAIR_ID].to_pylist()
    tgt = pairs[schema.TARGET_PATH].to_pylist()
    src = pairs[schema.SOURCE_PATH].to_pylist()
    directed = {(t, s): pid for pid, t, s in zip(ids, tgt, src)}  # duplicates collapse
    if add_reversed:
        for (t, s), pid in list(directed.items()):
            if (s, t) not in directed:
                directed[(s, t)] = f"{pid}~reversed"
    keys, targets, sources, flips = [], [], [], []
    for (t, s), pid in sorted(directed.items(), key=lambda kv: kv[1]):
        for flip in (False, True):
            keys.append(f"{pid}|flip={int(flip)}")
            targets.append(t)
            sources.append(s)
            flips.append(flip)
    logger.info("train examples: %d listed pairs -> %d directed pairs x 2 flips = %d rows",
                len(ids), len(directed), len(keys))
    return pa.table({KEY: keys, TARGET_PATH: targets, SOURCE_PATH: sources, FLIP: flips})


class _JoinFeatures:
    """A batch of examples -> training rows, reading the feature rows they need from Parquet.

    Each batch reads only the feature rows of its own target/source images (a filtered Parquet
    scan: row groups whose ``image_path`` statistics cannot match are skipped), so no shuffle of
    the tensor bytes is needed and the features never sit in one process.
    """

    _TARGET = (schema.KEYPOINTS, schema.LATENT_MEAN, schema.LATENT_STD, schema.POSE_TOKENS)
    _SOURCE = (schema.LATENT_MEAN, schema.LATENT_STD, schema.IMAGE_TOKENS)

    def __init__(self, features_uri: str):
        fs, path = storage.filesystem(features_uri)
        # the shards carry a CRC32 per page: damaged bytes fail the read instead of becoming wrong tensors
        fmt = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))
        self.features_uri = features_uri
        self.features = pads.dataset(path, filesystem=fs, format=fmt)

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = sorted(set(batch[TARGET_PATH].to_pylist()) | set(batch[SOURCE_PATH].to_pylist()))
        cols = [schema.IMAGE_PATH, FLIP, *self._TARGET, schema.IMAGE_TOKENS]
        try:
            feats = self.features.to_table(columns=cols, filter=pc.field(schema.IMAGE_PATH).isin(paths))
        except (OSError, pa.ArrowInvalid) as e:  # a checksum mismatch or a truncated shard names its file
            raise TrainDataError(f"{self.features_uri}: damaged feature shard ({e}); rerun the features "
                                 "stage (`dvc repro -f features`)") from e
        index = {(p, bool(f)): i for i, (p, f) in enumerate(zip(feats[schema.IMAGE_PATH].to_pylist(),
                                                                feats[FLIP].to_pylist()))}
        keep, t_idx, s_idx = [], [], []
        for i, (t, s, f) in enumerate(zip(batch[TARGET_PATH].to_pylist(), batch[SOURCE_PATH].to_pylist(),
                                          batch[FLIP].to_pylist())):
            ti, si = index.get((t, bool(f))), index.get((s, bool(f)))
            if ti is None or si is None:
                continue  # counted by the caller (examples minus written rows)
            keep.append(i)
            t_idx.append(ti)
            s_idx.append(si)
        rows = batch.take(pa.array(keep, pa.int64()))
        tgt = feats.take(pa.array(t_idx, pa.int64()))
        src = feats.take(pa.array(s_idx, pa.int64()))
        return pa.table({
            KEY: rows[KEY], TARGET_PATH: rows[TARGET_PATH], SOURCE_PATH: rows[SOURCE_PATH], FLIP: rows[FLIP],
            TARGET_KEYPOINTS: tgt[schema.KEYPOINTS].cast(TRAIN_TABLE_SCHEMA.field(TARGET_KEYPOINTS).type),
            TARGET_LATENT_MEAN: tgt[schema.LATENT_MEAN], TARGET_LATENT_STD: tgt[schema.LATENT_STD],
            TARGET_POSE_TOKENS: tgt[schema.POSE_TOKENS],
            SOURCE_LATENT_MEAN: src[schema.LATENT_MEAN], SOURCE_LATENT_STD: src[schema.LATENT_STD],
            SOURCE_IMAGE_TOKENS: src[schema.IMAGE_TOKENS],
        }, schema=TRAIN_TABLE_SCHEMA)


def _arrow_fs(uri: str):
    """A pyarrow filesystem over the project's fsspec filesystem, and the path inside it."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def data_hash(features_manifest: FeaturesManifest, pairs_manifest: ValidateManifest, add_reversed: bool) -> str:
    """Identity of the training table (upstream manifests and the reversal rule)."""
    return section_hash(features_manifest.key(), pairs_manifest.key(),
                        {"add_reversed": add_reversed, "table_version": 1})


def build_train_table(cfg: XMDPTConfig, features_manifest: FeaturesManifest | Mapping[str, Any],
                      pairs_manifest: ValidateManifest | Mapping[str, Any]) -> dict[str, Any]:
    """Join the train pairs with the cached features (Ray Data) and write the training table.

    Idempotent: if ``{storage_root}/train/data/{hash}/`` holds a complete table it is reused.

    Args:
        cfg: the config (``paths.storage_root``, ``train.swap_prob``, ``model`` for shape checks).
        features_manifest: the `features` manifest (a dict is parsed as one).
        pairs_manifest: the `validate` manifest (``tables.pairs.uri``; a dict is parsed as one).

    Returns:
        ``{"uri", "rows", "pairs", "dropped", "data_hash", "spec"}`` — ``dropped`` counts examples
        whose target or source has no cached feature row (``dropped_examples`` lists a few keys).
    """
    import ray

    features_manifest = FeaturesManifest.coerce(features_manifest)
    pairs_manifest = ValidateManifest.coerce(pairs_manifest)
    spec = FeatureSpec.from_manifest(features_manifest)
    spec.check_model(cfg.model)
    pairs_uri, features_uri = pairs_manifest.tables.pairs.uri, features_manifest.tables.features.uri
    add_reversed = cfg.train.swap_prob > 0
    dhash = data_hash(features_manifest, pairs_manifest, add_reversed)
    out_uri = storage.join(storage.absolute(cfg.paths.storage_root), "train", "data", dhash)
    fs, out_path = storage.filesystem(out_uri)
    marker = f"{out_path.rstrip('/')}/{_SUCCESS}"
    if fs.exists(marker):
        with fs.open(marker) as f:
            info = json.load(f)
        logger.info("training table %s exists (%d rows): reusing it", out_uri, info["rows"])
        return {**info, "uri": out_uri, "spec": spec}

    examples = train_examples(pairs_uri, add_reversed=add_reversed)
    if examples.num_rows == 0:
        raise TrainDataError(f"{pairs_uri}: no train pairs")
    # examples sorted by target path: each batch touches few feature row groups
    examples = examples.sort_by([(TARGET_PATH, "ascending"), (SOURCE_PATH, "ascending")])
    joined = ray.data.from_arrow(examples).map_batches(
        _JoinFeatures, fn_constructor_args=(features_uri,), batch_size=256, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cfg.data.num_cpus_per_task)
    if fs.exists(out_path):
        fs.rm(out_path, recursive=True)  # an incomplete earlier attempt
    out_fs, out_p = _arrow_fs(out_uri)
    joined.write_parquet(out_p, filesystem=out_fs)
    rows = ray.data.read_parquet(out_p, filesystem=out_fs).select_columns([KEY]).to_arrow_refs()
    written = pa.concat_tables(ray.get(rows))[KEY].to_pylist()
    missing = sorted(set(examples[KEY].to_pylist()) - set(written))
    if missing:
        logger.warning("%d of %d train examples have no cached features for target or source "
                       "(e.g. %s); they are left out", len(missing), examples.num_rows, missing[:3])
    if not written:
        raise TrainDataError(f"{features_uri}: no feature rows match the train pairs of {pairs_uri}")
    info = {"rows": len(written), "pairs": examples.num_rows // 2, "dropped": len(missing),
            "dropped_examples": missing[:20], "data_hash": dhash, "add_reversed": add_reversed,
            "spec": spec.to_dict()}
    with fs.open(marker, "w") as f:
        json.dump(info, f)
    logger.info("wrote training table %s: %d rows (%d dropped)", out_uri, len(written), len(missing))
    return {**info, "uri": out_uri, "spec": spec}


def read_train_table(uri: str):
    """The training table as a Ray Dataset (streamed, block order shuffled each epoch)."""
    import ray

    fs, path = _arrow_fs(uri)
    return ray.data.read_parquet(path, filesystem=fs, shuffle="files")



# ---------------------------------------------------------------------------------------------
# Collate (runs on the training workers)
# ---------------------------------------------------------------------------------------------


class Collate(NumpyBatchCollateFn):
    """Numpy batch of training-table rows -> float32 torch tensors.

    Output keys and shapes (N rows):
        ``x0_mean``, ``x0_std``: (N, C, H, W) target posterior (unscaled);
        ``ref_mean``, ``ref_std``: (N, C, H, W) source posterior (unscaled);
        ``pose_tokens``: (N, Sp, Dp); ``ref_tokens``: (N, Sr, Dr); ``keypoints``: (N, 18, 2).
    """

    OUT = {
        TARGET_LATENT_MEAN: "x0_mean", TARGET_LATENT_STD: "x0_std",
        SOURCE_LATENT_MEAN: "ref_mean", SOURCE_LATENT_STD: "ref_std",
        TARGET_POSE_TOKENS: "pose_tokens", SOURCE_IMAGE_TOKENS: "ref_tokens",
    }

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        keys = batch.get(KEY)
        for col, name in self.OUT.items():
            tensor = TENSOR_COLUMNS[col]
            shape = self.spec.shapes[tensor]
            dtype = np.dtype(self.spec.dtypes[tensor])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            arrs = []
            for i, b in enumerate(batch[col]):
                if len(b) != nbytes:
                    key = keys[i] if keys is not None else f"row {i}"
                    raise TrainDataError(f"training row {key!r}: column {col} has {len(b)} bytes; expected "
                                         f"{nbytes} for {dtype.name}{list(shape)} (features manifest)")
                arrs.append(np.frombuffer(b, dtype=dtype).reshape(shape))
            out[name] = torch.from_numpy(np.stack(arrs).astype(np.float32))
        kp = np.stack([np.asarray(k, dtype=np.float32) for k in batch[TARGET_KEYPOINTS]])
        out["keypoints"] = torch.from_numpy(kp.reshape(len(kp), schema.NUM_KEYPOINTS, 2))
        return out
