"""Content-addressed stage outputs and manifests, through fsspec.

A stage writes its bulk data under ``{storage_root}/{stage}/{key}/`` where ``key`` hashes the
stage's params and its upstream manifests, so reruns with the same inputs land in the same place
(idempotent) and different experiments never mix. It then writes a small local
``manifest.json`` (URIs, row counts, schema, sizes) that DVC tracks; downstream stages depend on
the manifest, never on the bulk folder.

``storage_root`` is a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://…``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import fsspec

from xmdpt.config import section_hash

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a local file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_url(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers and actors do not share the driver's working
    directory); URLs and MLflow URIs are returned as given."""
    path = str(path)
    if is_url(path) or path.startswith(("models:/", "runs:/")):
        return path
    return os.path.abspath(path)


def join(root: str, *parts: str) -> str:
    """Join path parts under a local folder or URL (always ``/``)."""
    root = str(root)
    if is_url(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a local path or URL. S3 endpoints come from the usual AWS env vars
    (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def stage_prefix(storage_root: str, stage: str, *inputs: Any) -> str:
    """``{storage_root}/{stage}/{hash(inputs)}`` — the content-addressed home of a stage's output.

    A local ``storage_root`` is made absolute, so the URIs recorded in manifests resolve from any
    process (Ray workers, actors, a later stage) whatever its working directory.
    """
    return join(absolute(storage_root), stage, section_hash(*inputs))


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write a manifest (local JSON, tracked by DVC) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    logger.info("wrote manifest %s", path)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run the upstream stage first (dvc repro)")
    with path.open() as f:
        return json.load(f)


def manifest_key(manifest: Any) -> str:
    """Identity of an upstream output (its JSON dict, or a typed manifest of
    :mod:`xmdpt.ops.manifests`), for hashing into downstream prefixes."""
    if hasattr(manifest, "to_dict"):
        manifest = manifest.to_dict()
    return section_hash(manifest)
