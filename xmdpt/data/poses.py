"""The `poses` stage: 18 COCO keypoints for every image referenced by a pair.

- Annotated images take their annotation (PIDM ``pose/*.txt`` or PATN/GFLA csv, whichever layout
  the `pairs` stage found), converted into the image's own pixel frame with the size `pairs`
  measured — no decode needed.
- Images without an annotation are decoded and go through the real pose estimator
  (:class:`xmdpt.data.pose_estimation.PoseEstimator`, ``poses.model_path``) in a Ray Data
  actor pool (``ActorPoolStrategy``, fractional CPUs): one MediaPipe graph per actor.
- An image whose annotation is malformed (not 18 points, non-numeric) or that cannot be decoded
  is quarantined with the reason; an annotation row that names no readable image is quarantined
  by its ``file:line``. Coordinates are **not** range-checked here: that rule lives in the
  `validate` stage's suite (``data_specs/``).

Output: ``poses`` (:data:`~xmdpt.data.schema.POSES_SCHEMA`) and ``quarantine`` under
``{storage_root}/poses/{hash(params, pairs manifest)}/`` and ``{artifacts_dir}/poses/manifest.json``.
Counts: ``input_rows`` (images + unattributable annotation rows) ``= valid + quarantined``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.deepfashion import read_bytes, resolve_root
from xmdpt.data.deepfashion_annotations import (
    Annotation,
    annotation_to_image_frame,
    read_gfla_annotations,
    read_pidm_annotation,
)
from xmdpt.data.pairs import STAGE_NAME as PAIRS_STAGE
from xmdpt.data.quarantine import fresh_prefix, quarantine_table, read_table, summarize_reasons, write_table
from xmdpt.data.schema import (
    CONFIDENCE,
    HEIGHT,
    IMAGE_PATH,
    KEYPOINTS,
    NUM_KEYPOINTS,
    POSE_SOURCE,
    POSE_SOURCES,
    POSES_SCHEMA,
    SPLIT,
    WIDTH,
)
from xmdpt.core.manifests import PairsManifest, PosesCounts, PosesManifest, PosesTables, TableEntry
from xmdpt.core.storage import stage_prefix
from xmdpt.data.images import ImageError, load_rgb
from xmdpt.data.pose_estimation import PoseEstimator
from xmdpt.core.ray_utils import init_ray

logger = logging.getLogger(__name__)

STAGE_NAME = "poses"
ANNOTATION, ESTIMATOR = POSE_SOURCES
_ERROR = "error"  # working column: why an image has no pose ("" if it has one)
_PENDING = "pending"  # working value of POSE_SOURCE: needs the estimator


def _pose_row(kps: np.ndarray, conf: np.ndarray) -> tuple[list[float], list[float]]:
    """(18, 2) keypoints + (18,) confidence -> the flattened Parquet lists (36 and 18 floats)."""
    return kps.astype(np.float32).reshape(-1).tolist(), conf.astype(np.float32).tolist()


def annotate_batch(batch: pd.DataFrame, root: str, layout: str,
                   gfla: Optional[dict[str, Annotation]] = None,
                   gfla_errors: Optional[dict[str, str]] = None) -> pd.DataFrame:
    """Ray Data UDF: attach the annotation of each image (converted to its frame), or mark it
    ``pending`` for the estimator, or give the error that makes it unusable."""
    keypoints, confidence, sources, errors = [], [], [], []
    for rel, h, w in zip(batch[IMAGE_PATH], batch[HEIGHT], batch[WIDTH]):
        kps_list, conf_list, source, err = None, None, _PENDING, ""
        try:
            if layout == "pidm":
                ann = read_pidm_annotation(root, rel)
            elif layout == "gfla":
                if gfla_errors and rel in gfla_errors:
                    raise ValueError(gfla_errors[rel])
                ann = (gfla or {}).get(rel)
            else:
                ann = None
            if ann is not None:
                present = ~(ann.keypoints < 0).any(axis=1)  # (18,)
                kps = annotation_to_image_frame(ann, int(h), int(w))  # (18, 2) in the image frame
                kps_list, conf_list = _pose_row(kps, present.astype(np.float32))
                source = ANNOTATION
        except ValueError as e:
            err = str(e) if rel in str(e) else f"{rel}: {e}"
            source = ""
        keypoints.append(kps_list)
        confidence.append(conf_list)
        sources.append(source)
        errors.append(err)
    return batch.assign(**{KEYPOINTS: keypoints, CONFIDENCE: confidence, POSE_SOURCE: sources, _ERROR: errors})


class EstimatePoses:
    """Ray Data actor: one PoseEstimator per actor, applied to each image of a batch."""

    def __init__(self, root: str, model_path: str, min_visibility: float) -> None:
        self.root = root
        self.estimator = PoseEstimator(model_path, min_visibility)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        keypoints, confidence, sources, errors = [], [], [], []
        for rel in batch[IMAGE_PATH]:
            try:
                rgb = load_rgb(read_bytes(self.root, rel), name=rel)  # (H, W, 3) uint8
                kps, conf = self.estimator.estimate(rgb)  # (18, 2), (18,)
                kps_list, conf_list = _pose_row(kps, conf)
                keypoints.append(kps_list)
                confidence.append(conf_list)
                sources.append(ESTIMATOR)
                errors.append("")
            except FileNotFoundError:
                keypoints.append(None)
                confidence.append(None)
                sources.append("")
                errors.append(f"{rel}: file not found under the dataset root")
            except (ImageError, ValueError, OSError) as e:
                keypoints.append(None)
                confidence.append(None)
                sources.append("")
                errors.append(str(e) if rel in str(e) else f"{rel}: {e}")
        return batch.assign(**{KEYPOINTS: keypoints, CONFIDENCE: confidence, POSE_SOURCE: sources, _ERROR: errors})


def _model_id(path: str) -> str:
    """Content hash of the estimator model (part of the output's address); '' if absent."""
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _gfla_annotations(root: str, images: pd.DataFrame) -> tuple[dict[str, Annotation], dict[str, str], list]:
    """GFLA annotations are two csv files: parse them once here (PIDM's are one file per image).

    Returns the annotations, the error of each referenced image whose row is unusable, and the
    ``(row key, reason)`` of rows that name no readable image.
    """
    gfla, problems = read_gfla_annotations(root)
    referenced = set(images[IMAGE_PATH])
    gfla_errors = {p.row_key: p.reason for p in problems if p.row_key in referenced}
    loose = [(p.row_key, p.reason) for p in problems if "/" not in p.row_key]  # names no image
    for p in problems:
        if p.row_key not in gfla_errors and "/" in p.row_key:
            logger.info("ignored (image not referenced by any pair): %s", p.reason)
    return gfla, gfla_errors, loose


def _annotate(images: pd.DataFrame, root: str, layout: str, gfla: Optional[dict[str, Annotation]],
              gfla_errors: Optional[dict[str, str]], num_cpus: float) -> pd.DataFrame:
    """:func:`annotate_batch` over every image, with Ray Data."""
    import ray  # heavy to import: only when the stage runs

    annotated = pd.DataFrame(columns=[*images.columns, KEYPOINTS, CONFIDENCE, POSE_SOURCE, _ERROR])
    if len(images):
        ds = ray.data.from_items(images.to_dict("records"), override_num_blocks=max(1, min(len(images) // 32, 64)))
        annotated = ds.map_batches(
            annotate_batch, fn_kwargs={"root": root, "layout": layout, "gfla": gfla, "gfla_errors": gfla_errors},
            batch_format="pandas", batch_size=64, num_cpus=num_cpus,
        ).to_pandas()
    return annotated


def _estimate(pending: pd.DataFrame, root: str, cfg: XMDPTConfig) -> pd.DataFrame:
    """:class:`EstimatePoses` over the images without an annotation, in a Ray Data actor pool."""
    import ray  # heavy to import: only when the stage runs
    from ray.data import ActorPoolStrategy

    if not os.path.isfile(cfg.poses.model_path):
        raise FileNotFoundError(f"poses.model_path: {cfg.poses.model_path} not found; "
                                f"{len(pending)} images have no annotation and need the pose estimator")
    return ray.data.from_items(pending.to_dict("records")).map_batches(
        EstimatePoses,
        fn_constructor_kwargs={"root": root, "model_path": os.path.abspath(cfg.poses.model_path),
                               "min_visibility": cfg.poses.min_visibility},
        compute=ActorPoolStrategy(size=cfg.poses.num_actors),
        num_cpus=cfg.poses.cpus_per_actor, batch_format="pandas", batch_size=4,
    ).to_pandas()


def _poses_table(ok: pd.DataFrame) -> pa.Table:
    """The ``poses`` table (:data:`~xmdpt.data.schema.POSES_SCHEMA`) of the images that have a pose."""
    return pa.Table.from_pydict({
        IMAGE_PATH: ok[IMAGE_PATH].tolist(),
        SPLIT: ok[SPLIT].tolist(),
        HEIGHT: ok[HEIGHT].astype("int32").tolist(),
        WIDTH: ok[WIDTH].astype("int32").tolist(),
        KEYPOINTS: [list(v) for v in ok[KEYPOINTS]],
        CONFIDENCE: [list(v) for v in ok[CONFIDENCE]],
        POSE_SOURCE: ok[POSE_SOURCE].tolist(),
    }, schema=POSES_SCHEMA)


def extract_poses(cfg: XMDPTConfig) -> dict:
    """Run the `poses` stage; return the manifest (also written to ``{artifacts_dir}/poses/manifest.json``)."""
    pairs_manifest = PairsManifest.load(cfg.paths.artifacts_dir)
    root, layout = resolve_root(cfg.paths.dataset_root), pairs_manifest.layout
    entry = pairs_manifest.tables.images
    images = read_table(entry.uri, rows=entry.rows).to_pandas()
    params = {"layout": layout, "pose_model": _model_id(cfg.poses.model_path),
              "pose_min_visibility": cfg.poses.min_visibility}
    prefix = fresh_prefix(stage_prefix(cfg.paths.storage_root, STAGE_NAME, params,
                                       {PAIRS_STAGE: pairs_manifest.key()}))

    gfla, gfla_errors, loose = None, None, []
    if layout == "gfla":
        gfla, gfla_errors, loose = _gfla_annotations(root, images)

    init_ray(cfg=cfg)
    annotated = _annotate(images, root, layout, gfla, gfla_errors, cfg.data.num_cpus_per_task)
    pending = annotated[annotated[POSE_SOURCE] == _PENDING]
    done = annotated[annotated[POSE_SOURCE] != _PENDING]
    logger.info("%d images: %d annotated, %d to the pose estimator, %d unusable annotations", len(annotated),
                int((done[_ERROR] == "").sum()), len(pending), int((done[_ERROR] != "").sum()))
    if len(pending):
        estimated = _estimate(pending[list(images.columns)], root, cfg)
        done = pd.concat([done, estimated], ignore_index=True)

    ok = done[done[_ERROR] == ""].sort_values([IMAGE_PATH, SPLIT])
    poses = _poses_table(ok)
    bad = done[done[_ERROR] != ""]
    problems = loose + list(zip(bad[IMAGE_PATH], bad[_ERROR]))
    quarantine = quarantine_table(STAGE_NAME, problems)
    for _, reason in problems[:20]:
        logger.warning("quarantined %s", reason)
    input_rows = len(images) + len(loose)
    if input_rows != poses.num_rows + quarantine.num_rows:  # internal invariant
        raise AssertionError(f"poses: {input_rows} input rows != {poses.num_rows} + {quarantine.num_rows}")

    by_source = ok[POSE_SOURCE].value_counts()
    manifest = PosesManifest(
        uri=prefix,
        params=params,
        layout=layout,
        dataset_root=cfg.paths.dataset_root,
        num_keypoints=NUM_KEYPOINTS,
        inputs={PAIRS_STAGE: pairs_manifest.key()},
        tables=PosesTables(
            poses=TableEntry(**write_table(prefix, "poses", poses)),
            quarantine=TableEntry(**write_table(prefix, "quarantine", quarantine)),
        ),
        counts=PosesCounts(
            input_rows=input_rows,
            valid=poses.num_rows,
            quarantined=quarantine.num_rows,
            by_source={s: int(by_source.get(s, 0)) for s in POSE_SOURCES},
        ),
        quarantine_reasons=summarize_reasons(quarantine),
    )
    logger.info("poses: %s", manifest.counts)
    return manifest.write(PosesManifest.path(cfg.paths.artifacts_dir))
