"""Inputs of the encoder stages: the validated image table and the image files it names.

The `validate` stage's manifest (``{artifacts_dir}/validate/manifest.json``) points at the poses
table (one row per image: path relative to ``paths.dataset_root``, split, size, keypoints). Both
encoder stages read their image list from it, so they only ever see validated rows.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from xmdpt.data import schema
from xmdpt.core.manifests import ValidateManifest
from xmdpt.core.storage import filesystem
from xmdpt.data.images import ImageError, load_rgb, resize_square
from xmdpt.data.quarantine import read_table as read_stage_table

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = (schema.IMAGE_PATH, schema.SPLIT, schema.HEIGHT, schema.WIDTH, schema.KEYPOINTS)


def validate_manifest_path(artifacts_dir: str) -> Path:
    return ValidateManifest.path(artifacts_dir)


def read_table(uri: str, columns: Sequence[str] | None = None, rows: int | None = None) -> pa.Table:
    """Read a stage table from a local path or URL, file by file with page checksums, and check its
    row count against the manifest's ``rows`` when given (a damaged file is named, never skipped)."""

    table = read_stage_table(uri, rows=rows)
    return table.select(list(columns)) if columns else table


def read_image_table(validate_manifest: ValidateManifest | Mapping[str, Any]) -> pa.Table:
    """The validated images (poses table columns :data:`IMAGE_COLUMNS`), sorted by path.

    Args:
        validate_manifest: the `validate` stage manifest (``tables.poses``); a dict is parsed.

    Returns:
        Arrow table with one row per image, sorted by ``image_path`` (deterministic chunking).
    """
    entry = ValidateManifest.coerce(validate_manifest).tables.poses
    uri = entry.uri
    table = read_table(uri, rows=entry.rows)
    missing = [c for c in IMAGE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: poses table lacks columns {missing}")
    table = table.select(list(IMAGE_COLUMNS))
    table = table.sort_by(schema.IMAGE_PATH)
    paths = table.column(schema.IMAGE_PATH)
    if len(paths) != len(set(paths.to_pylist())):
        raise ValueError(f"{uri}: duplicate image_path rows in the validated poses table")
    return table


def read_image_bytes(dataset_root: str, rel_path: str) -> bytes:
    """Bytes of ``rel_path`` under the dataset root (local folder or fsspec URL)."""
    fs, root = filesystem(dataset_root)
    with fs.open(f"{root.rstrip('/')}/{rel_path}", "rb") as f:
        return f.read()


def load_square_image(dataset_root: str, rel_path: str, size: int) -> np.ndarray:
    """Decode ``rel_path`` and squash it to ``size`` x ``size`` (as the authors do).

    Returns:
        uint8 array (size, size, 3).
    """

    img = load_rgb(read_image_bytes(dataset_root, rel_path), name=rel_path)
    return np.asarray(resize_square(img, size), dtype=np.uint8)


def load_square_images(dataset_root: str, rel_paths: Sequence[str], size: int,
                       num_threads: int = 4) -> tuple[np.ndarray, dict[str, str]]:
    """Load many images (threads: decoding releases the GIL); undecodable ones are skipped.

    Returns:
        ``(images uint8 (N, size, size, 3), skipped {path: reason})`` with the images in input order.
    """

    def load(p: str):
        try:
            return load_square_image(dataset_root, p, size)
        except (ImageError, OSError) as e:
            return f"{p}: {e}"

    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        results = list(pool.map(load, rel_paths))
    skipped = {p: r for p, r in zip(rel_paths, results) if isinstance(r, str)}
    for reason in skipped.values():
        logger.warning("skipping image: %s", reason)
    imgs = [r for r in results if not isinstance(r, str)]
    return (np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)), skipped  # (N, size, size, 3)
