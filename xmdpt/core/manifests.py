"""Typed stage contracts: one frozen dataclass per stage manifest.

Each class names its stage (``STAGE``) and the format version it writes (``FORMAT_VERSION``); the
reading, writing and strict checking they share is :class:`~xmdpt.core.contracts.StageManifest`'s
(see :mod:`xmdpt.core.contracts` for the JSON layout and the errors).

When a stage's manifest changes shape (a field added, removed, retyped or given a new meaning),
its ``FORMAT_VERSION`` goes up by one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional

from xmdpt.core.contracts import Record, StageManifest, optional_key, run_record

__all__ = [
    "TableEntry", "TensorSpec", "PairsTables", "PairsCounts", "PairsManifest", "PosesTables", "PosesCounts",
    "PosesManifest", "ValidateTables", "ValidateManifest", "AutoencoderManifest", "FeatureTables", "FeatureImages",
    "FeaturesManifest", "WorkerStart", "TrainManifest", "EvaluateLineage", "EvaluateManifest", "MANIFESTS",
]


# ------------------------------------------------------------------------------------------------
# Parts
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableEntry(Record):
    """A Parquet table a stage wrote (:func:`xmdpt.data.quarantine.write_table`)."""

    uri: str
    rows: int
    columns: Optional[tuple[str, ...]] = optional_key()
    shards: Optional[int] = optional_key()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec(Record):
    """Shape and dtype of a cached tensor column."""

    shape: tuple[int, ...]
    dtype: str


# ------------------------------------------------------------------------------------------------
# pairs, poses, validate
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairsTables(Record):
    pairs: TableEntry
    images: TableEntry
    quarantine: TableEntry


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairsCounts(Record):
    input_rows: int
    valid: int
    quarantined: int
    images: int
    images_unusable: int
    by_split: Mapping[str, int]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DatasetStageManifest(StageManifest):
    """The fields the dataset stages (pairs, poses) share; ``inputs`` maps what the output was
    made from to its identity, ``quarantine_reasons`` reason -> rows."""

    uri: str
    params: Mapping[str, Any]
    layout: str
    dataset_root: str
    inputs: Mapping[str, str]
    quarantine_reasons: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairsManifest(_DatasetStageManifest):
    STAGE: ClassVar[str] = "pairs"
    FORMAT_VERSION: ClassVar[int] = 1

    tables: PairsTables
    counts: PairsCounts


@dataclasses.dataclass(frozen=True, kw_only=True)
class PosesTables(Record):
    poses: TableEntry
    quarantine: TableEntry


@dataclasses.dataclass(frozen=True, kw_only=True)
class PosesCounts(Record):
    input_rows: int
    valid: int
    quarantined: int
    by_source: Mapping[str, int]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PosesManifest(_DatasetStageManifest):
    STAGE: ClassVar[str] = "poses"
    FORMAT_VERSION: ClassVar[int] = 1

    num_keypoints: int
    tables: PosesTables
    counts: PosesCounts


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidateTables(Record):
    pairs: TableEntry
    poses: TableEntry
    quarantine: TableEntry


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidateManifest(StageManifest):
    """The clean tables every later stage reads; ``counts`` has ``input_rows``, ``valid``,
    ``quarantined``, ``quarantined_upstream`` and ``<table>_<count>`` per suite."""

    STAGE: ClassVar[str] = "validate"
    FORMAT_VERSION: ClassVar[int] = 1

    uri: str
    params: Mapping[str, Any]
    dataset_root: str
    layout: Optional[str]
    inputs: Mapping[str, str]
    tables: ValidateTables
    counts: Mapping[str, int]


# ------------------------------------------------------------------------------------------------
# autoencoder, features
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderManifest(StageManifest):
    STAGE: ClassVar[str] = "autoencoder"
    FORMAT_VERSION: ClassVar[int] = 1

    uri: str
    vae_uri: str
    recon_uri: str
    source: str
    latent_scale: float
    latent_shape: tuple[int, ...]
    image_size: int
    config: Mapping[str, Any]
    metrics: Mapping[str, Any] = run_record()  # measured on the output (and the fit's wall time)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureTables(Record):
    features: TableEntry
    quarantine: TableEntry


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureImages(Record):
    total: int
    cached: int
    quarantined: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeaturesManifest(StageManifest):
    """The feature cache; ``encoders`` maps ``vae``/``image``/``pose`` to their descriptions,
    ``rows_by_node`` Ray node id -> rows its actors encoded in the run that wrote it, ``validation``
    the cache suite's outcome (absent when the suite was not run)."""

    STAGE: ClassVar[str] = "features"
    FORMAT_VERSION: ClassVar[int] = 1

    uri: str
    tables: FeatureTables
    images: FeatureImages
    augmentations: tuple[str, ...]
    tensors: Mapping[str, TensorSpec]
    keypoints_frame: tuple[int, ...]
    latent_scale: float
    image_size: int
    encoders: Mapping[str, Mapping[str, Any]]
    standin: bool
    encoder_weights: Mapping[str, str]
    vae_uri: str
    bytes: int
    bytes_per_image: int
    encode_seconds: float = run_record()
    shards_encoded: int = run_record()  # this run's share; the rest was reused
    rows_by_node: Mapping[str, int] = run_record()
    validation: Optional[Mapping[str, Any]] = optional_key()


# ------------------------------------------------------------------------------------------------
# train, evaluate
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerStart(Record):
    rank: int
    node_id: str
    time: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainManifest(StageManifest):
    STAGE: ClassVar[str] = "train"
    FORMAT_VERSION: ClassVar[int] = 1

    model_uri: str
    uri: str
    steps: int
    run_name: str
    run_id: str = run_record()
    tracking_uri: str = run_record()
    data_hash: str
    train_table: str
    train_rows: int
    dropped_examples: int
    world_size: Optional[int]
    start_step: int = run_record()
    worker_starts: tuple[WorkerStart, ...] = run_record()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateLineage(Record):
    train_run_id: Optional[str]
    train_manifest: str
    features_manifest: str
    model_folder: str
    evaluate_prefix: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateManifest(StageManifest):
    STAGE: ClassVar[str] = "evaluate"
    FORMAT_VERSION: ClassVar[int] = 1

    uri: str
    pipeline_uri: str
    pipeline_local: str
    standin_encoders: bool
    metrics_path: str
    grid_path: str
    num_pairs: int
    lineage: EvaluateLineage
    tracking_uri: Optional[str]


MANIFESTS: dict[str, type[StageManifest]] = {
    m.STAGE: m for m in (PairsManifest, PosesManifest, ValidateManifest, AutoencoderManifest, FeaturesManifest,
                         TrainManifest, EvaluateManifest)
}
